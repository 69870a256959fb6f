//! The in-memory link map: built whole off the request path, then read without locks.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::key::RecordKey;
use super::record::{AppSite, Id, Link, LinkKind, Record};

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

    /// Adds a record, replacing one with the same key. Returns whether it replaced.
    pub fn upsert(&mut self, record: Record) -> bool {
        let host_name: &str = match &record {
            Record::Link(link) => &link.host,
            Record::AppSite(site) => &site.host,
        };
        // Allocate the host's name only the first time it is seen.
        if !self.hosts.contains_key(host_name) {
            self.hosts.insert(host_name.into(), Arc::default());
        }
        let host = Arc::make_mut(self.hosts.get_mut(host_name).expect("just ensured"));
        let replaced = match record {
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

    /// Removes the record with `key`. Returns whether there was one.
    pub fn remove(&mut self, key: &RecordKey) -> bool {
        let host_name = match key {
            RecordKey::Tracking { host, .. }
            | RecordKey::Vanity { host, .. }
            | RecordKey::Domain { host }
            | RecordKey::Fallback { host }
            | RecordKey::AppSite { host } => host,
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
}
