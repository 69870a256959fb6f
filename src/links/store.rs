//! The live link map, and how changes reach it (SPEC §5).
//!
//! Requests read one snapshot (`ArcSwap`): a lock-free load, never waiting for a
//! writer. Writers (file reloads, the admin API, the links topic) take turns on a
//! mutex requests never touch, build the next map and swap it in whole.
//!
//! Precedence: the file is the base. Topic messages and API calls are changes on
//! top of it, an upsert or a delete per record key, the later one winning whatever
//! its source. A reload of the file replaces the base and applies every change
//! again, so upserts and deletes from the topic or the API survive reloads. Changes
//! live in memory: at restart the topic is read again; API changes are gone (make
//! them permanent in the file or the topic).

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};

use super::map::LinkMap;
use super::{Record, RecordKey};

/// One change on top of the file: a record, or `None` to delete the key.
pub type Change = (RecordKey, Option<Record>);

#[derive(Debug)]
pub struct LinkStore {
    current: ArcSwap<LinkMap>,
    writer: Mutex<Writer>,
}

#[derive(Debug, Default)]
struct Writer {
    /// The last file loaded, without changes.
    file: Arc<LinkMap>,
    /// Every change since start, by key: the latest wins.
    changes: HashMap<RecordKey, Option<Record>>,
}

impl LinkStore {
    pub fn new(file: LinkMap) -> LinkStore {
        let file = Arc::new(file);
        LinkStore {
            current: ArcSwap::new(file.clone()),
            writer: Mutex::new(Writer {
                file,
                changes: HashMap::new(),
            }),
        }
    }

    /// The map requests use; keep it for the whole request.
    pub fn load(&self) -> Guard<Arc<LinkMap>> {
        self.current.load()
    }

    /// A full snapshot, for writers and reports.
    pub fn snapshot(&self) -> Arc<LinkMap> {
        self.current.load_full()
    }

    /// Replaces the file's records, then applies every change again on top.
    pub fn replace_file(&self, file: LinkMap) -> Arc<LinkMap> {
        let mut writer = self.writer.lock().expect("link writer lock");
        let file = Arc::new(file);
        let mut next = (*file).clone();
        for (key, change) in &writer.changes {
            apply(&mut next, key, change.clone());
        }
        writer.file = file;
        let next = Arc::new(next);
        retire(self.current.swap(next.clone()));
        next
    }

    /// Applies changes (in order) on top of the current map. Returns how many
    /// deletes found a record to delete.
    pub fn apply(&self, changes: Vec<Change>) -> (Arc<LinkMap>, usize) {
        let mut writer = self.writer.lock().expect("link writer lock");
        let mut next = (*self.current.load_full()).clone();
        let mut deleted = 0;
        for (key, change) in changes {
            let is_delete = change.is_none();
            if apply(&mut next, &key, change.clone()) && is_delete {
                deleted += 1;
            }
            writer.changes.insert(key, change);
        }
        let next = Arc::new(next);
        retire(self.current.swap(next.clone()));
        (next, deleted)
    }
}

/// Frees replaced maps on a thread of their own. Left to chance, the last request
/// holding a map would free millions of records in the middle of a request; and a
/// writer need not wait for readers either.
fn retire(old: Arc<LinkMap>) {
    static REAPER: OnceLock<Mutex<mpsc::Sender<Arc<LinkMap>>>> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<LinkMap>>();
        let spawned = std::thread::Builder::new()
            .name("link-map-reaper".into())
            .spawn(move || {
                crate::background::lower_this_thread();
                for map in rx {
                    // Readers hold a map for one request: this wait is short. Past
                    // the bound, let the last holder free it rather than stall.
                    let bound = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while Arc::strong_count(&map) > 1 && std::time::Instant::now() < bound {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    drop(map);
                }
            });
        if spawned.is_err() {
            tracing::warn!(
                message = "Cannot start the link map reaper; old maps are freed where they fall."
            );
        }
        Mutex::new(tx)
    });
    if let Ok(reaper) = reaper.lock() {
        // If the reaper is gone, the map is simply dropped here.
        let _ = reaper.send(old);
    }
}

/// Returns whether the map changed (a delete found its record, or an upsert).
fn apply(map: &mut LinkMap, key: &RecordKey, change: Option<Record>) -> bool {
    match change {
        Some(record) => {
            map.upsert(record);
            true
        }
        None => map.remove(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{load_str, parse_record};

    fn record(line: &str) -> (RecordKey, Option<Record>) {
        let record = parse_record(line).unwrap();
        (record.key(), Some(record))
    }

    const FILE: &str = r#"{"type":"fallback","host":"a.io","url":"https://file.example/"}
{"type":"domain","host":"b.io","partner_id":"1","campaign_id":"1","ad_id":"1","url":"https://b.example/"}"#;

    #[test]
    fn changes_survive_a_file_reload_and_the_latest_wins() {
        let store = LinkStore::new(load_str(FILE, "t", true).unwrap().map);
        let upsert = record(r#"{"type":"fallback","host":"a.io","url":"https://topic.example/"}"#);
        let delete_b = (
            parse_record(FILE.lines().nth(1).unwrap()).unwrap().key(),
            None,
        );
        let (_, deleted) = store.apply(vec![upsert, delete_b]);
        assert_eq!(deleted, 1);
        let url = |store: &LinkStore| {
            store
                .load()
                .host("a.io")
                .unwrap()
                .fallback
                .as_ref()
                .unwrap()
                .destination
                .to_url_string()
        };
        assert_eq!(url(&store), "https://topic.example/");
        assert!(store.load().host("b.io").is_none());

        // The file is reloaded: both changes are applied again.
        store.replace_file(load_str(FILE, "t", true).unwrap().map);
        assert_eq!(url(&store), "https://topic.example/");
        assert!(store.load().host("b.io").is_none());

        // A later change to the same key wins.
        store.apply(vec![record(
            r#"{"type":"fallback","host":"a.io","url":"https://api.example/"}"#,
        )]);
        assert_eq!(url(&store), "https://api.example/");
    }

    #[test]
    fn a_reader_keeps_its_snapshot_while_a_writer_swaps() {
        let store = LinkStore::new(load_str(FILE, "t", true).unwrap().map);
        let before = store.load();
        store.apply(vec![(
            parse_record(FILE.lines().next().unwrap()).unwrap().key(),
            None,
        )]);
        assert!(
            before.host("a.io").is_some(),
            "the old snapshot is untouched"
        );
        assert!(store.load().host("a.io").is_none());
    }
}
