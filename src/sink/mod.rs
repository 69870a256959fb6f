//! Where events go once the request is answered (click events, and the actions
//! brands report): the worker's batch (`batch`), a bounded channel, the event
//! pump, the disk spool ([`spool`]), then Kafka (`pipeline`, `kafka`). Both kinds
//! share that one path, so actions get the clicks' delivery guarantee.

mod batch;
pub(crate) mod kafka;
mod pipeline;
pub mod spool;

pub use kafka::{BrokerHealth, KafkaSettings};
pub use pipeline::{EventIntake, EventSink, NotKept, SpoolSettings};
pub use spool::{check_spool_dir, SpoolError};

/// Which Kafka topic an event goes to. Kept in every spool frame, so a replay
/// sends each event where it belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `--kafka-topic`: `click.v1` events.
    Clicks = 0,
    /// `--actions-topic`: `action.v1` events.
    Actions = 1,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::Clicks, Topic::Actions];

    /// The topic a spool frame's byte names; `None` for a byte no build writes.
    pub fn from_byte(byte: u8) -> Option<Topic> {
        match byte {
            0 => Some(Topic::Clicks),
            1 => Some(Topic::Actions),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot start the embedded development Kafka: {0}")]
    DevCluster(String),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}
