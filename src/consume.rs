//! `clickedge consume`: print a topic's messages as JSON lines, the operator's way to
//! look at clicks and links (Debian's kcat is too old for some brokers).
//!
//! It assigns every partition from the beginning and commits nothing, so it never
//! disturbs a consumer group. Without `--follow` it stops once every partition has
//! reported its end (librdkafka's partition EOF, taken from fetch responses). It
//! does not stop at the high watermarks listed at start: tansu 0.6 can list them
//! too low after batched produces, and on a compacted topic the last offset may
//! not exist at all.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::builder::BoolishValueParser;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::config::{parse_duration, KafkaOptions};
use crate::sink::kafka::EndIsNotAnError;

#[derive(Debug, Args, Clone)]
pub struct ConsumeArgs {
    /// Kafka bootstrap servers (the edge logs the embedded cluster's at start).
    #[arg(long, env = "CLICKEDGE_BROKERS", value_name = "HOST:PORT,...")]
    pub brokers: String,

    /// Topic to print.
    #[arg(
        long,
        env = "CLICKEDGE_TOPIC",
        default_value = "clicks",
        value_name = "TOPIC"
    )]
    pub topic: String,

    /// Keep printing new messages instead of stopping at the end.
    #[arg(long, env = "CLICKEDGE_FOLLOW", value_parser = BoolishValueParser::new())]
    pub follow: bool,

    /// Give up if the end is not reached within this time (without --follow).
    #[arg(
        long,
        env = "CLICKEDGE_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub timeout: String,

    #[command(flatten)]
    pub kafka_options: KafkaOptions,
}

/// Prints the messages to `out`; returns how many were printed.
pub fn run(args: &ConsumeArgs, out: &mut impl Write) -> anyhow::Result<u64> {
    let timeout = parse_duration(&args.timeout)
        .with_context(|| format!("--timeout {:?} is not a duration", args.timeout))?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", "clickedge-consume")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    for (key, value) in args.kafka_options.parsed()? {
        config.set(key, value);
    }
    let consumer: BaseConsumer<EndIsNotAnError> = config
        .create_with_context(EndIsNotAnError)
        .context("cannot create a Kafka consumer")?;

    let metadata = consumer
        .fetch_metadata(Some(&args.topic), timeout)
        .with_context(|| format!("cannot reach Kafka at {}", args.brokers))?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == args.topic) else {
        bail!("topic {:?} not found", args.topic);
    };
    if let Some(error) = topic.error() {
        bail!("topic {:?}: {:?}", args.topic, error);
    }
    if topic.partitions().is_empty() {
        bail!("topic {:?} does not exist", args.topic);
    }

    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        assignment.add_partition_offset(&args.topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    // Partitions that have not reported their end yet.
    let mut reading: HashSet<i32> = topic.partitions().iter().map(|p| p.id()).collect();

    let deadline = Instant::now() + timeout;
    let mut printed = 0;
    while args.follow || !reading.is_empty() {
        if !args.follow && Instant::now() > deadline {
            bail!(
                "gave up after {:?} with {} partition(s) not read to the end (use --follow on a busy topic)",
                timeout,
                reading.len()
            );
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                writeln!(out, "{}", message_json(&message))?;
                printed += 1;
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                reading.remove(&partition);
            }
            Some(Err(error)) => return Err(error).context("reading from Kafka"),
        }
    }
    out.flush()?;
    Ok(printed)
}

/// One message as a JSON object: a JSON value stays JSON, other bytes become text.
fn message_json(message: &BorrowedMessage<'_>) -> Value {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut headers = Map::new();
    if let Some(list) = message.headers() {
        for header in list.iter() {
            headers.insert(
                header.key.to_owned(),
                header.value.map_or(Value::Null, |v| Value::String(text(v))),
            );
        }
    }
    let value = message.payload().map_or(Value::Null, |bytes| {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(text(bytes)))
    });
    json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp().to_millis(),
        "key": message.key().map(text),
        "headers": headers,
        "value": value,
    })
}
