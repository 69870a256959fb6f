//! Where click events go once the redirect is answered: the worker's batch
//! (`batch`), a bounded channel, the event pump, the disk spool ([`spool`]),
//! then Kafka (`pipeline`, `kafka`).

mod batch;
pub(crate) mod kafka;
mod pipeline;
pub mod spool;

pub use kafka::{BrokerHealth, KafkaSettings};
pub use pipeline::{ClickSink, EventSink, NotKept, SpoolSettings};
pub use spool::{check_spool_dir, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot start the embedded development Kafka: {0}")]
    DevCluster(String),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}
