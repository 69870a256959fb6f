//! The in-memory link map: built whole off the request path, then read without locks.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};

use super::record::{AppSite, Link, LinkKind, Record, RecordKey};

/// Tracking links are found by `(campaign_id, ad_id)` within a host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TrackingKey {
    campaign_id: Box<str>,
    ad_id: Box<str>,
}

/// Borrowed form of [`TrackingKey`] so a lookup allocates nothing. Its `Hash` must
/// feed the hasher exactly as the derived one of `TrackingKey` does.
struct TrackingRef<'a> {
    campaign_id: &'a str,
    ad_id: &'a str,
}

impl Hash for TrackingRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.campaign_id.hash(state);
        self.ad_id.hash(state);
    }
}

impl Equivalent<TrackingKey> for TrackingRef<'_> {
    fn equivalent(&self, key: &TrackingKey) -> bool {
        *key.campaign_id == *self.campaign_id && *key.ad_id == *self.ad_id
    }
}

/// Everything one host answers.
#[derive(Debug, Default, Clone)]
pub struct HostLinks {
    tracking: HashMap<TrackingKey, Arc<Link>>,
    vanity: HashMap<Box<str>, Arc<Link>>,
    pub domain: Option<Arc<Link>>,
    pub fallback: Option<Arc<Link>>,
    pub app_site: Option<Arc<AppSite>>,
}

impl HostLinks {
    pub fn tracking(&self, campaign_id: &str, ad_id: &str) -> Option<&Arc<Link>> {
        self.tracking.get(&TrackingRef { campaign_id, ad_id })
    }

    /// `slug` must already be lowercase.
    pub fn vanity(&self, slug: &str) -> Option<&Arc<Link>> {
        self.vanity.get(slug)
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
    /// `host` must already be normalized (see `server::request::normalize_host`).
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
        let host_name = match &record {
            Record::Link(link) => link.host.clone(),
            Record::AppSite(site) => site.host.clone(),
        };
        let host = Arc::make_mut(self.hosts.entry(host_name).or_default());
        let replaced = match record {
            Record::AppSite(site) => host.app_site.replace(site).is_some(),
            Record::Link(link) => match link.kind {
                LinkKind::Tracking => {
                    let key = TrackingKey {
                        campaign_id: link.campaign_id.clone().unwrap_or_default(),
                        ad_id: link.ad_id.clone().unwrap_or_default(),
                    };
                    host.tracking.insert(key, link).is_some()
                }
                LinkKind::Vanity => {
                    let slug = link.slug.clone().unwrap_or_default();
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
            } => host
                .tracking
                .remove(&TrackingRef { campaign_id, ad_id })
                .is_some(),
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
    use crate::links::record::parse_record;

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
