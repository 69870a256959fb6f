//! The in-memory link map: built whole off the request path, then read without locks.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::key::RecordKey;
use super::record::{AppSite, Brand, Id, Link, LinkKind, Promo, Record};

/// Everything one host answers. Tracking links sit in a table hashed by their own
/// `(campaign_id, ad_id)`, so the ids are stored once, in the link.
#[derive(Debug, Default, Clone)]
pub struct HostLinks {
    hasher: DefaultHashBuilder,
    tracking: HashTable<Arc<Link>>,
    vanity: HashMap<Id, Arc<Link>>,
    pub domain: Option<Arc<Link>>,
    pub fallback: Option<Arc<Link>>,
    pub app_site: Option<Arc<AppSite>>,
    /// The tracking record with `"stat": true`, for `/stat.js` (one per host:
    /// the latest such record has it).
    pub stat: Option<Arc<Link>>,
}

fn ids(link: &Link) -> (&str, &str) {
    link.campaign_and_ad()
}

impl HostLinks {
    pub fn tracking(&self, campaign_id: &str, ad_id: &str) -> Option<&Arc<Link>> {
        let hash = self.hasher.hash_one((campaign_id, ad_id));
        self.tracking
            .find(hash, |link| ids(link) == (campaign_id, ad_id))
    }

    /// `slug` must already be lowercase.
    pub fn vanity(&self, slug: &str) -> Option<&Arc<Link>> {
        self.vanity.get(slug)
    }

    /// Inserts or replaces a tracking link; returns whether it replaced one.
    fn put_tracking(&mut self, link: Arc<Link>) -> bool {
        if link.is_stat() {
            self.stat = Some(link.clone());
        } else if self
            .stat
            .as_ref()
            .is_some_and(|stat| ids(stat) == ids(&link))
        {
            self.stat = None;
        }
        let hash = self.hasher.hash_one(ids(&link));
        let hasher = &self.hasher;
        match self.tracking.entry(
            hash,
            |other| ids(other) == ids(&link),
            |other| hasher.hash_one(ids(other)),
        ) {
            Entry::Occupied(mut occupied) => {
                *occupied.get_mut() = link;
                true
            }
            Entry::Vacant(vacant) => {
                vacant.insert(link);
                false
            }
        }
    }

    fn remove_tracking(&mut self, campaign_id: &str, ad_id: &str) -> bool {
        if self
            .stat
            .as_ref()
            .is_some_and(|stat| ids(stat) == (campaign_id, ad_id))
        {
            self.stat = None;
        }
        let hash = self.hasher.hash_one((campaign_id, ad_id));
        match self
            .tracking
            .find_entry(hash, |link| ids(link) == (campaign_id, ad_id))
        {
            Ok(found) => {
                found.remove();
                true
            }
            Err(_) => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.tracking.is_empty()
            && self.vanity.is_empty()
            && self.domain.is_none()
            && self.fallback.is_none()
            && self.app_site.is_none()
    }
}

/// All records by host. A host's links sit behind an `Arc`, so the next map after a
/// single-key change shares every host but the one that changed.
#[derive(Debug, Default, Clone)]
pub struct LinkMap {
    hosts: HashMap<Box<str>, Arc<HostLinks>>,
    /// Brands by id; a brand's hosts lead to it through `brand_hosts`.
    brands: HashMap<Box<str>, Arc<Brand>>,
    /// Host → the brand whose reports it takes (the latest brand record to
    /// name a host has it).
    brand_hosts: HashMap<Box<str>, Box<str>>,
    /// Promo codes by brand id, then lowercase code (found without a copy of
    /// either).
    promos: HashMap<Box<str>, HashMap<Box<str>, Arc<Promo>>>,
    len: usize,
}

/// Record counts by type, for `clickedge_links{type}`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkCounts {
    pub tracking: usize,
    pub vanity: usize,
    pub domain: usize,
    pub fallback: usize,
    pub app_site: usize,
    pub brand: usize,
    pub promo: usize,
}

impl LinkMap {
    /// `host` must already be normalized (see `crate::host::normalize`).
    pub fn host(&self, host: &str) -> Option<&HostLinks> {
        self.hosts.get(host).map(|links| &**links)
    }

    /// The number of records in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The brand with this id.
    pub fn brand(&self, brand_id: &str) -> Option<&Arc<Brand>> {
        self.brands.get(brand_id)
    }

    /// The brand whose reports `host` (normalized) takes.
    pub fn brand_for_host(&self, host: &str) -> Option<&Arc<Brand>> {
        self.brands.get(self.brand_hosts.get(host)?)
    }

    /// A brand's promo code (`code` lowercase), whatever its window.
    pub fn promo(&self, brand_id: &str, code: &str) -> Option<&Arc<Promo>> {
        self.promos.get(brand_id)?.get(code)
    }

    /// Adds a record, replacing one with the same key. Returns whether it replaced.
    pub fn upsert(&mut self, record: Record) -> bool {
        let host_name: &str = match &record {
            Record::Link(link) => &link.host,
            Record::AppSite(site) => &site.host,
            Record::Brand(brand) => return self.upsert_brand(brand.clone()),
            Record::Promo(promo) => {
                let replaced = self
                    .promos
                    .entry(promo.brand_id.clone())
                    .or_default()
                    .insert(promo.code.clone(), promo.clone())
                    .is_some();
                self.len += usize::from(!replaced);
                return replaced;
            }
        };
        // Allocate the host's name only the first time it is seen.
        if !self.hosts.contains_key(host_name) {
            self.hosts.insert(host_name.into(), Arc::default());
        }
        let host = Arc::make_mut(self.hosts.get_mut(host_name).expect("just ensured"));
        let replaced = match record {
            Record::Brand(_) | Record::Promo(_) => unreachable!("kept apart above"),
            Record::AppSite(site) => host.app_site.replace(site).is_some(),
            Record::Link(link) => match link.kind {
                LinkKind::Tracking => host.put_tracking(link),
                LinkKind::Vanity => {
                    let slug = Id::from(link.slug().unwrap_or_default());
                    host.vanity.insert(slug, link).is_some()
                }
                LinkKind::Domain => host.domain.replace(link).is_some(),
                LinkKind::Fallback => host.fallback.replace(link).is_some(),
            },
        };
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    fn upsert_brand(&mut self, brand: Arc<Brand>) -> bool {
        let replaced = self.remove_brand(&brand.brand_id);
        for host in brand.hosts.iter() {
            self.brand_hosts
                .insert(host.clone(), brand.brand_id.clone());
        }
        self.brands.insert(brand.brand_id.clone(), brand);
        self.len += 1;
        replaced
    }

    fn remove_brand(&mut self, brand_id: &str) -> bool {
        let Some(old) = self.brands.remove(brand_id) else {
            return false;
        };
        // Its hosts, unless a later brand took them.
        for host in old.hosts.iter() {
            if self
                .brand_hosts
                .get(host)
                .is_some_and(|owner| **owner == *brand_id)
            {
                self.brand_hosts.remove(host);
            }
        }
        self.len -= 1;
        true
    }

    /// Removes the record with `key`. Returns whether there was one.
    pub fn remove(&mut self, key: &RecordKey) -> bool {
        let host_name = match key {
            RecordKey::Tracking { host, .. }
            | RecordKey::Vanity { host, .. }
            | RecordKey::Domain { host }
            | RecordKey::Fallback { host }
            | RecordKey::AppSite { host } => host,
            RecordKey::Brand { brand_id } => return self.remove_brand(brand_id),
            RecordKey::Promo { brand_id, code } => {
                let Some(codes) = self.promos.get_mut(&**brand_id) else {
                    return false;
                };
                let removed = codes.remove(&**code).is_some();
                if codes.is_empty() {
                    self.promos.remove(&**brand_id);
                }
                self.len -= usize::from(removed);
                return removed;
            }
        };
        let Some(host) = self.hosts.get_mut(&**host_name) else {
            return false;
        };
        let host = Arc::make_mut(host);
        let removed = match key {
            RecordKey::Tracking {
                campaign_id, ad_id, ..
            } => host.remove_tracking(campaign_id, ad_id),
            RecordKey::Vanity { slug, .. } => host.vanity.remove(&**slug).is_some(),
            RecordKey::Domain { .. } => host.domain.take().is_some(),
            RecordKey::Fallback { .. } => host.fallback.take().is_some(),
            RecordKey::AppSite { .. } => host.app_site.take().is_some(),
            RecordKey::Brand { .. } | RecordKey::Promo { .. } => unreachable!("kept apart above"),
        };
        if host.is_empty() {
            self.hosts.remove(&**host_name);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn counts(&self) -> LinkCounts {
        let mut counts = LinkCounts::default();
        for host in self.hosts.values() {
            counts.tracking += host.tracking.len();
            counts.vanity += host.vanity.len();
            counts.domain += usize::from(host.domain.is_some());
            counts.fallback += usize::from(host.fallback.is_some());
            counts.app_site += usize::from(host.app_site.is_some());
        }
        counts.brand = self.brands.len();
        counts.promo = self.promos.values().map(HashMap::len).sum();
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::parse_record;

    #[test]
    fn upsert_replaces_by_key_and_remove_forgets() {
        let mut map = LinkMap::default();
        let first = parse_record(r#"{"type":"tracking","host":"a.io","campaign_id":"1","ad_id":"2","url":"https://one.example/"}"#).unwrap();
        let second = parse_record(r#"{"type":"tracking","host":"A.io","campaign_id":"1","ad_id":"2","url":"https://two.example/"}"#).unwrap();
        let key = first.key();
        assert!(!map.upsert(first));
        assert!(map.upsert(second));
        assert_eq!(map.len(), 1);
        let found = map.host("a.io").unwrap().tracking("1", "2").unwrap();
        assert_eq!(found.destination.to_url_string(), "https://two.example/");
        assert!(map.host("a.io").unwrap().tracking("2", "1").is_none());
        assert!(map.remove(&key));
        assert!(!map.remove(&key));
        assert!(map.host("a.io").is_none());
        assert!(map.is_empty());
    }

    #[test]
    fn brands_lead_from_their_hosts_and_promos_are_found_by_code() {
        let mut map = LinkMap::default();
        let brand = |id: &str, hosts: &str| {
            parse_record(&format!(
                r#"{{"type":"brand","brand_id":"{id}","hosts":{hosts}}}"#
            ))
            .unwrap()
        };
        assert!(!map.upsert(brand("acme", r#"["a.io","b.io"]"#)));
        assert_eq!(
            map.brand_for_host("a.io").unwrap().brand_id.as_ref(),
            "acme"
        );
        // A later record of the same brand replaces its hosts.
        assert!(map.upsert(brand("acme", r#"["b.io"]"#)));
        assert!(map.brand_for_host("a.io").is_none());
        // Another brand naming a host takes it; removing the first keeps it.
        assert!(!map.upsert(brand("other", r#"["b.io"]"#)));
        assert!(map.remove(&RecordKey::Brand {
            brand_id: "acme".into()
        }));
        assert_eq!(
            map.brand_for_host("b.io").unwrap().brand_id.as_ref(),
            "other"
        );
        assert!(map.brand("acme").is_none());

        let promo =
            parse_record(r#"{"type":"promo","brand_id":"other","code":"Jane10","partner_id":"7"}"#)
                .unwrap();
        let key = promo.key();
        assert!(!map.upsert(promo));
        assert_eq!(
            map.promo("other", "jane10").unwrap().partner_id.as_ref(),
            "7"
        );
        let counts = map.counts();
        assert_eq!((counts.brand, counts.promo, map.len()), (1, 1, 2));
        assert!(map.remove(&key));
        assert!(map.promo("other", "jane10").is_none());
        assert_eq!(map.len(), 1);
    }
}
