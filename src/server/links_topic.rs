//! `--links-topic`: a compacted topic of link records applied live on top of the
//! file (SPEC §5). Every partition is assigned from the beginning and nothing is
//! committed, so each edge reads the whole topic. A message's key is the record key
//! as text; its value the NDJSON record; an empty value deletes the key.
//!
//! `/readyz` waits until every partition has reported its end once, so a node does
//! not take traffic with half its links.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::AppState;
use crate::consume::EndIsNotAnError;
use crate::links::{parse_record, Change, RecordKey};

/// Changes are applied in batches: at most this many, or this long after the
/// first, so a topic of a million records is not a million map swaps.
const BATCH_RECORDS: usize = 50_000;
const BATCH_WAIT: Duration = Duration::from_millis(50);

/// Starts the consumer thread; it runs for the life of the process.
pub fn spawn(
    state: Arc<AppState>,
    bootstrap: String,
    options: Vec<(String, String)>,
    topic: String,
) {
    let spawned = thread::Builder::new()
        .name("links-topic".into())
        .spawn(move || {
            if let Err(error) = consume(&state, &bootstrap, &options, &topic) {
                warn!(message = "The links topic consumer stopped.", %error, topic = %topic);
            }
        });
    if let Err(error) = spawned {
        warn!(message = "Cannot start the links topic consumer.", %error);
    }
}

fn consume(
    state: &AppState,
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
) -> Result<(), KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "clickedge-links")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    for (key, value) in options {
        config.set(key, value);
    }
    let consumer: BaseConsumer<EndIsNotAnError> = config.create_with_context(EndIsNotAnError)?;

    // Wait for the topic: the broker may be down at start.
    let partitions = loop {
        if state.draining.load(Ordering::SeqCst) {
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
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    info!(
        message = "Reading the links topic.",
        topic,
        partitions = partitions.len()
    );

    let mut not_at_end: HashSet<i32> = partitions.into_iter().collect();
    let mut batch: Vec<Change> = Vec::new();
    let mut batch_started = Instant::now();
    let mut applied = 0usize;
    loop {
        match consumer.poll(Duration::from_millis(20)) {
            None => {}
            Some(Ok(message)) => {
                if batch.is_empty() {
                    batch_started = Instant::now();
                }
                if let Some(change) = change_of(&message) {
                    batch.push(change);
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
        }
        if caught_up && batch.is_empty() && !state.links_ready.swap(true, Ordering::SeqCst) {
            info!(
                message = "Links topic read to its end; ready.",
                topic,
                changes = applied
            );
        }
    }
}

/// A message as a change: an upsert of its record, or a delete of its key.
fn change_of<M: Message>(message: &M) -> Option<Change> {
    let offset = message.offset();
    let key_text = message.key().and_then(|k| std::str::from_utf8(k).ok());
    match message.payload().filter(|p| !p.is_empty()) {
        None => match key_text.map(RecordKey::parse_text) {
            Some(Ok(key)) => Some((key, None)),
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
            let record = std::str::from_utf8(payload)
                .map_err(|_| crate::links::RecordError("the value is not UTF-8".into()))
                .and_then(parse_record);
            match record {
                Ok(record) => {
                    let key = record.key();
                    if key_text.is_some_and(|text| text != key.to_string()) {
                        warn!(
                            message = "Links topic message key differs from its record's key; the record's is used.",
                            offset,
                            key = key_text.unwrap_or_default(),
                            record_key = %key
                        );
                    }
                    Some((key, Some(record)))
                }
                Err(reason) => {
                    warn!(message = "Invalid record in the links topic skipped.", offset, %reason);
                    None
                }
            }
        }
    }
}
