//! `--links-topic`: a compacted topic of link records applied live on top of the
//! file (SPEC §5). Every partition is assigned from the beginning and nothing is
//! committed, so each edge reads the whole topic. A message's key is the record key
//! as text; its value the NDJSON record; an empty value deletes the key.
//!
//! `/readyz` waits until every partition has reported its end once, so a node does
//! not take traffic with half its links; but no longer than
//! `--links-topic-ready-timeout`: Kafka is behind the edge, never in front of it.
//! What was read is kept in a snapshot beside the spool (`links::TopicSnapshot`):
//! a node that starts while the broker is unreachable serves the file plus that
//! snapshot once the bound has passed, and resumes reading from the snapshot's
//! offsets when the broker answers.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::reload::unix_millis;
use super::AppState;
use crate::links::{parse_record, Change, RecordKey, TopicSnapshot};
use crate::sink::kafka::EndIsNotAnError;
use crate::sink::BrokerHealth;

/// Changes are applied in batches: at most this many, or this long after the
/// first, so a topic of a million records is not a million map swaps.
const BATCH_RECORDS: usize = 50_000;
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Changes reach the snapshot on disk at most this long after they were applied.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// With no change, the snapshot's "current at" is refreshed this often, so a
/// restart after a quiet spell does not count the links as stale.
const SNAPSHOT_REFRESH_MS: i64 = 60_000;

/// The snapshot the last run left, or an empty one (none yet, unreadable, or of
/// another topic: each said in the log).
pub fn load_snapshot(path: &std::path::Path, topic: &str) -> TopicSnapshot {
    match TopicSnapshot::load(path) {
        Ok(Some(snapshot)) if snapshot.topic == topic => snapshot,
        Ok(Some(other)) => {
            warn!(message = "The links topic snapshot is of another topic; ignored.", path = %path.display(), snapshot_topic = %other.topic, topic);
            TopicSnapshot::new(topic)
        }
        Ok(None) => TopicSnapshot::new(topic),
        Err(error) => {
            warn!(message = "The links topic snapshot cannot be read; starting without it.", %error);
            TopicSnapshot::new(topic)
        }
    }
}

/// Applies the last run's snapshot on top of the file, before anything is read
/// from the broker.
pub fn apply_snapshot(state: &AppState, snapshot: &TopicSnapshot) {
    if snapshot.records.is_empty() {
        return;
    }
    let (changes, invalid) = snapshot.changes();
    for (key, reason) in &invalid {
        warn!(message = "Links topic snapshot entry skipped.", key = &**key, %reason);
    }
    let applied = changes.len();
    let (map, _) = state.links.apply(changes);
    state.metrics.links_changed(map.counts());
    info!(
        message = "Links topic snapshot applied on top of the file.",
        topic = %snapshot.topic,
        changes = applied,
        current_at_ms = snapshot.current_at_ms
    );
}

/// After `timeout`, a node that has not read the links topic to its end is
/// ready anyway, with the file and the snapshot, and says so loudly.
pub async fn ready_after(
    state: Arc<AppState>,
    timeout: Duration,
    snapshot_changes: usize,
    snapshot_current_at_ms: Option<i64>,
) {
    tokio::time::sleep(timeout).await;
    if state.control.links_ready.swap(true, Ordering::SeqCst) {
        return;
    }
    match snapshot_current_at_ms {
        Some(at) => warn!(
            message = "The links topic was not read to its end in time; ready with the links file and the topic's last snapshot. Links changed since may be missing until the broker answers.",
            timeout_ms = timeout.as_millis() as u64,
            snapshot_changes,
            snapshot_age_s = (unix_millis() - at) / 1000
        ),
        None => error!(
            message = "The links topic was not read to its end in time and no snapshot of it exists; ready with the links FILE ALONE. Every link changed through the topic is missing until the broker answers.",
            timeout_ms = timeout.as_millis() as u64,
            snapshot_changes
        ),
    }
}

/// Starts the consumer thread; it runs until the edge drains, when it writes
/// the snapshot a last time. The receiver hangs up when the thread has ended.
pub fn spawn(
    state: Arc<AppState>,
    bootstrap: String,
    options: Vec<(String, String)>,
    snapshot: TopicSnapshot,
    snapshot_path: std::path::PathBuf,
) -> std::sync::mpsc::Receiver<()> {
    let (ended, ended_rx) = std::sync::mpsc::channel::<()>();
    let spawned = thread::Builder::new()
        .name("links-topic".into())
        .spawn(move || {
            let _ended = ended;
            let topic = snapshot.topic.clone();
            let mut reader = Reader {
                snapshot,
                path: snapshot_path,
                dirty: false,
                last_write: Instant::now(),
                last_write_took: Duration::ZERO,
                written_current_at_ms: None,
            };
            if let Err(error) = consume(&state, &bootstrap, &options, &mut reader) {
                warn!(message = "The links topic consumer stopped.", %error, topic = %topic);
            }
        });
    if let Err(error) = spawned {
        warn!(message = "Cannot start the links topic consumer.", %error);
    }
    ended_rx
}

/// What the consumer has read, and when it last reached the disk.
struct Reader {
    snapshot: TopicSnapshot,
    path: std::path::PathBuf,
    /// Changes applied since the last write.
    dirty: bool,
    last_write: Instant,
    /// How long the last write took: writes are spaced ten times that apart.
    last_write_took: Duration,
    written_current_at_ms: Option<i64>,
}

impl Reader {
    /// Writes the snapshot when changes wait (at most once a second), when
    /// "current at" moved on by a minute, or, with `now`, at once if anything is
    /// newer than the file (the first catch-up, and shutdown).
    fn maybe_write(&mut self, now: bool) {
        let current_at = self.snapshot.current_at_ms;
        let moved_on = current_at != self.written_current_at_ms;
        let refresh_due = match (current_at, self.written_current_at_ms) {
            (Some(now), Some(written)) => now - written >= SNAPSHOT_REFRESH_MS,
            (Some(_), None) => true,
            _ => false,
        };
        // The whole topic is rewritten each time: at most once a second, and
        // never more than a tenth of the time, however large it grows.
        let gap = SNAPSHOT_EVERY.max(self.last_write_took * 10);
        let changes_due = self.dirty && self.last_write.elapsed() >= gap;
        // At shutdown, anything newer than the file: the next start's staleness.
        let due = changes_due || refresh_due || now && (self.dirty || moved_on);
        if !due {
            return;
        }
        let started = Instant::now();
        match self.snapshot.write(&self.path) {
            Ok(()) => {
                self.dirty = false;
                self.written_current_at_ms = self.snapshot.current_at_ms;
            }
            Err(error) => warn!(message = "Cannot write the links topic snapshot.", %error),
        }
        self.last_write = Instant::now();
        self.last_write_took = started.elapsed();
    }
}

fn consume(
    state: &AppState,
    bootstrap: &str,
    options: &[(String, String)],
    reader: &mut Reader,
) -> Result<(), KafkaError> {
    let topic = reader.snapshot.topic.clone();
    let topic = topic.as_str();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "clickedge-links")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // A snapshot's offset the topic no longer has (recreated, or compacted
        // past it): read that partition from its start.
        .set("auto.offset.reset", "earliest");
    for (key, value) in options {
        config.set(key, value);
    }
    let consumer: BaseConsumer<EndIsNotAnError> = config.create_with_context(EndIsNotAnError)?;

    // Wait for the topic: the broker may be down at start.
    let partitions = loop {
        if state.control.draining.load(Ordering::SeqCst) {
            return Ok(());
        }
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(metadata) => {
                let found: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !found.is_empty() {
                    break found;
                }
                warn!(message = "Links topic not found; retrying.", topic);
            }
            Err(error) => {
                warn!(message = "Cannot reach Kafka for the links topic; retrying.", %error)
            }
        }
        thread::sleep(Duration::from_secs(1));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        let from = match reader.snapshot.offsets.get(partition) {
            Some(next) => Offset::Offset(*next),
            None => Offset::Beginning,
        };
        assignment.add_partition_offset(topic, *partition, from)?;
    }
    consumer.assign(&assignment)?;
    info!(
        message = "Reading the links topic.",
        topic,
        partitions = partitions.len(),
        resumed_from_snapshot = !reader.snapshot.offsets.is_empty()
    );

    let mut not_at_end: HashSet<i32> = partitions.into_iter().collect();
    let mut batch: Vec<Change> = Vec::new();
    let mut batch_started = Instant::now();
    let mut applied = 0usize;
    let mut said_caught_up = false;
    loop {
        match consumer.poll(Duration::from_millis(20)) {
            None => {}
            Some(Ok(message)) => {
                if batch.is_empty() {
                    batch_started = Instant::now();
                }
                let (partition, offset) = (message.partition(), message.offset());
                match change_of(&message) {
                    Some((change, key, record)) => {
                        batch.push(change);
                        reader.snapshot.record(partition, offset, key, record);
                    }
                    None => {
                        reader.snapshot.offsets.insert(partition, offset + 1);
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                not_at_end.remove(&partition);
            }
            Some(Err(error)) => warn!(message = "Links topic read error.", %error),
        }
        let caught_up = not_at_end.is_empty();
        let due = batch.len() >= BATCH_RECORDS
            || (!batch.is_empty() && (caught_up || batch_started.elapsed() >= BATCH_WAIT));
        if due {
            applied += batch.len();
            let (map, _) = state.links.apply(std::mem::take(&mut batch));
            state.metrics.links_changed(map.counts());
            reader.dirty = true;
        }
        let current = caught_up && batch.is_empty();
        let first_catch_up = current && !said_caught_up;
        if first_catch_up {
            said_caught_up = true;
            state.control.links_ready.store(true, Ordering::SeqCst);
            info!(
                message = "Links topic read to its end; ready.",
                topic,
                changes = applied
            );
        }
        // Current means read to the end with the broker answering now.
        if current && state.sink.broker_health() == BrokerHealth::Up {
            let now = unix_millis();
            reader.snapshot.current_at_ms = Some(now);
            if let Some(at) = &state.control.links_topic_current_at_ms {
                at.store(now, Ordering::Relaxed);
            }
        }
        let stopping = state.control.draining.load(Ordering::SeqCst);
        reader.maybe_write(stopping || first_catch_up);
        if stopping {
            return Ok(());
        }
    }
}

/// A message as a change (an upsert of its record, or a delete of its key), with
/// the key as text and the record's NDJSON, as the snapshot keeps them.
fn change_of<M: Message>(message: &M) -> Option<(Change, Box<str>, Option<Box<str>>)> {
    let offset = message.offset();
    let key_text = message.key().and_then(|k| std::str::from_utf8(k).ok());
    match message.payload().filter(|p| !p.is_empty()) {
        None => match key_text.map(RecordKey::parse_text) {
            Some(Ok(key)) => {
                let text = key.to_string().into_boxed_str();
                Some(((key, None), text, None))
            }
            Some(Err(reason)) => {
                warn!(message = "Links topic tombstone with a bad key skipped.", offset, %reason);
                None
            }
            None => {
                warn!(
                    message = "Links topic tombstone without a key skipped.",
                    offset
                );
                None
            }
        },
        Some(payload) => {
            let text = std::str::from_utf8(payload)
                .map_err(|_| crate::links::RecordError("the value is not UTF-8".into()));
            match text.and_then(|text| parse_record(text).map(|record| (text, record))) {
                Ok((text, record)) => {
                    let key = record.key();
                    if key_text.is_some_and(|text| text != key.to_string()) {
                        warn!(
                            message = "Links topic message key differs from its record's key; the record's is used.",
                            offset,
                            key = key_text.unwrap_or_default(),
                            record_key = %key
                        );
                    }
                    let key_text = key.to_string().into_boxed_str();
                    Some(((key, Some(record)), key_text, Some(text.into())))
                }
                Err(reason) => {
                    warn!(message = "Invalid record in the links topic skipped.", offset, %reason);
                    None
                }
            }
        }
    }
}
