//! Where click events go once the redirect is answered.

pub mod kafka;

pub use kafka::{KafkaSettings, KafkaSink, SinkError};
