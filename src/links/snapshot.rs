//! The links topic's state on disk, beside the spool: what the topic said last
//! time (the latest record or delete per key) and how far it was read (the next
//! offset per partition). A node started while the broker is unreachable serves
//! the file plus this snapshot, and resumes reading the topic from its offsets
//! when the broker answers (SPEC §5: Kafka is behind the edge, never in front).
//!
//! ## Format
//! NDJSON. The first line is a header:
//! `{"v":1,"topic":"links","offsets":{"0":42},"current_at_ms":1795258919625}`
//! (`current_at_ms`: when the state was last known current, read to the end
//! with the broker answering; `null` if never). Each further line is one key:
//! `{"key":"vanity|acme.pxf.io|x","record":"<the record's NDJSON>"}`, or
//! `"record":null` for a delete (a topic tombstone keeps a file record deleted).
//!
//! Written whole to a temporary file, fsynced, then renamed over the old one: a
//! crash leaves the old snapshot or the new one, never half of either.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::store::Change;
use super::{parse_record, RecordError, RecordKey};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopicSnapshot {
    pub topic: String,
    /// The next offset to read, per partition.
    pub offsets: BTreeMap<i32, i64>,
    /// When the state was last known current (Unix milliseconds).
    pub current_at_ms: Option<i64>,
    /// The latest value per record key (as text): the record's NDJSON, or
    /// `None` for a delete.
    pub records: HashMap<Box<str>, Option<Box<str>>>,
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    v: u32,
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    offsets: BTreeMap<i32, i64>,
    current_at_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    record: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("links topic snapshot {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("links topic snapshot {} line {line}: {reason}", path.display())]
    Format {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl TopicSnapshot {
    pub fn new(topic: &str) -> TopicSnapshot {
        TopicSnapshot {
            topic: topic.to_owned(),
            ..TopicSnapshot::default()
        }
    }

    /// Where the snapshot of `topic` lives in the spool directory `dir`.
    pub fn path(dir: &Path, topic: &str) -> PathBuf {
        dir.join(format!("links-topic-{topic}.snapshot"))
    }

    /// Reads a snapshot; `Ok(None)` when there is none (a first start).
    pub fn load(path: &Path) -> Result<Option<TopicSnapshot>, SnapshotError> {
        let io_error = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(error)),
        };
        let format = |line: usize, reason: String| SnapshotError::Format {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut lines = io::BufReader::new(file).lines();
        let header = lines
            .next()
            .ok_or_else(|| format(1, "empty".to_owned()))?
            .map_err(io_error)?;
        let header: Header<'_> =
            serde_json::from_str(&header).map_err(|e| format(1, e.to_string()))?;
        if header.v != 1 {
            return Err(format(1, format!("unknown version {}", header.v)));
        }
        let mut snapshot = TopicSnapshot {
            topic: header.topic.into_owned(),
            offsets: header.offsets,
            current_at_ms: header.current_at_ms,
            records: HashMap::new(),
        };
        for (index, line) in lines.enumerate() {
            let line = line.map_err(io_error)?;
            let entry: Line<'_> =
                serde_json::from_str(&line).map_err(|e| format(index + 2, e.to_string()))?;
            snapshot.records.insert(
                entry.key.into(),
                entry.record.map(|r| r.into_owned().into_boxed_str()),
            );
        }
        Ok(Some(snapshot))
    }

    /// Writes the snapshot atomically (temporary file, fsync, rename, fsync of
    /// the directory), readable by this user only.
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io_error = |source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        };
        let temporary = path.with_extension("snapshot.new");
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io_error)?;
        let mut out = BufWriter::new(file);
        let header = Header {
            v: 1,
            topic: self.topic.as_str().into(),
            offsets: self.offsets.clone(),
            current_at_ms: self.current_at_ms,
        };
        let written = (|| -> io::Result<()> {
            serde_json::to_writer(&mut out, &header)?;
            out.write_all(b"\n")?;
            for (key, record) in &self.records {
                let line = Line {
                    key: (&**key).into(),
                    record: record.as_deref().map(Into::into),
                };
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        })();
        written.map_err(io_error)?;
        fs::rename(&temporary, path).map_err(io_error)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }

    /// Records one message: an upsert (`Some(record text)`) or a delete of `key`,
    /// read at `offset` of `partition`.
    pub fn record(&mut self, partition: i32, offset: i64, key: Box<str>, record: Option<Box<str>>) {
        self.records.insert(key, record);
        self.offsets.insert(partition, offset + 1);
    }

    /// The snapshot as changes on top of the file, with the entries that no
    /// longer parse (named by key, and skipped).
    pub fn changes(&self) -> (Vec<Change>, Vec<(Box<str>, RecordError)>) {
        let mut changes = Vec::with_capacity(self.records.len());
        let mut invalid = Vec::new();
        for (key, record) in &self.records {
            let change = match record {
                Some(text) => parse_record(text).map(|r| (r.key(), Some(r))),
                None => RecordKey::parse_text(key).map(|k| (k, None)),
            };
            match change {
                Ok(change) => changes.push(change),
                Err(reason) => invalid.push((key.clone(), reason)),
            }
        }
        (changes, invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VANITY: &str = r#"{"type":"vanity","host":"new.pxf.io","slug":"fresh","partner_id":"9","campaign_id":"9","ad_id":"9","url":"https://www.acme.com/fresh"}"#;

    #[test]
    fn a_snapshot_reads_back_as_written_and_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = TopicSnapshot::path(dir.path(), "links");
        assert_eq!(TopicSnapshot::load(&path).unwrap(), None, "no snapshot yet");
        let mut snapshot = TopicSnapshot::new("links");
        snapshot.record(0, 41, "vanity|new.pxf.io|fresh".into(), Some(VANITY.into()));
        snapshot.record(1, 7, "fallback|acme.sjv.io".into(), None);
        snapshot.current_at_ms = Some(1_795_258_919_625);
        snapshot.write(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let read = TopicSnapshot::load(&path).unwrap().unwrap();
        assert_eq!(read, snapshot);
        assert_eq!(read.offsets, BTreeMap::from([(0, 42), (1, 8)]));

        let (changes, invalid) = read.changes();
        assert!(invalid.is_empty(), "{invalid:?}");
        assert_eq!(changes.len(), 2);
        assert!(changes
            .iter()
            .any(|(k, r)| k.to_string() == "vanity|new.pxf.io|fresh" && r.is_some()));
        assert!(changes
            .iter()
            .any(|(k, r)| k.to_string() == "fallback|acme.sjv.io" && r.is_none()));
    }

    #[test]
    fn a_rewrite_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = TopicSnapshot::path(dir.path(), "links");
        let mut snapshot = TopicSnapshot::new("links");
        snapshot.record(0, 0, "vanity|new.pxf.io|fresh".into(), Some(VANITY.into()));
        snapshot.write(&path).unwrap();
        snapshot.record(0, 1, "vanity|new.pxf.io|fresh".into(), None);
        snapshot.write(&path).unwrap();
        let read = TopicSnapshot::load(&path).unwrap().unwrap();
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.records["vanity|new.pxf.io|fresh"], None);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = TopicSnapshot::path(dir.path(), "links");
        fs::write(
            &path,
            "{\"v\":1,\"topic\":\"links\",\"offsets\":{},\"current_at_ms\":null}\n{\"key\":\n",
        )
        .unwrap();
        let error = TopicSnapshot::load(&path).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        // A record that no longer parses is named and skipped, not fatal.
        let mut snapshot = TopicSnapshot::new("links");
        snapshot.record(
            0,
            0,
            "vanity|x.io|y".into(),
            Some("{\"type\":\"nope\"}".into()),
        );
        let (changes, invalid) = snapshot.changes();
        assert!(changes.is_empty());
        assert_eq!(&*invalid[0].0, "vanity|x.io|y");
    }
}
