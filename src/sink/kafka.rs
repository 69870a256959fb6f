//! Click events to Kafka through one `ThreadedProducer`.
//!
//! `send` only hands the message to librdkafka's bounded in-memory queue and returns:
//! the request never waits for the broker. Delivery reports arrive on the producer's
//! polling thread and feed the metrics. A queue that is full, or a producer that
//! refuses the message, is counted as `dropped` and logged (the disk spool takes
//! those in a later step).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};
use tracing::{debug, error, info, warn};

use crate::event::{SCHEMA_HEADER, SCHEMA_VERSION};
use crate::metrics::{EventResult, Metrics};

/// Producer settings chosen for clicks: nothing acknowledged is lost (`acks=all`,
/// idempotence), batches are compressed, and the queue is bounded so memory is too.
/// `--kafka-option` overrides any of them.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "200000"),
    ("queue.buffering.max.kbytes", "262144"),
    ("message.timeout.ms", "300000"),
];

/// Partitions of the click topic in the embedded development cluster.
const DEV_PARTITIONS: i32 = 3;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `None` starts the embedded development cluster.
    pub brokers: Option<String>,
    pub topic: String,
    /// `--kafka-option key=value`, applied after the defaults.
    pub options: Vec<(String, String)>,
    pub client_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot start the embedded development Kafka: {0}")]
    DevCluster(String),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] KafkaError),
}

/// Lets one warning through per second and says how many it stands for, so a
/// broker outage at 100k clicks/s does not become a logging outage. Every event is
/// still counted in the metrics.
#[derive(Debug)]
struct LogEverySecond {
    started: Instant,
    /// Milliseconds since `started` of the last line let through; 0 before any.
    last_ms: AtomicU64,
    since_last: AtomicU64,
}

impl LogEverySecond {
    fn new() -> LogEverySecond {
        LogEverySecond {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            since_last: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; `Some(n)` when a line is due, `n` occurrences since the
    /// last one.
    fn tick(&self) -> Option<u64> {
        let count = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = (self.started.elapsed().as_millis() as u64).max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= 1000;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_last.fetch_sub(count, Ordering::Relaxed);
            return Some(count);
        }
        None
    }
}

/// Receives librdkafka's callbacks.
pub struct EventContext {
    metrics: Arc<Metrics>,
    failures: LogEverySecond,
}

impl ClientContext for EventContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => error!(message = "librdkafka", fac, log_message),
            Warning => warn!(message = "librdkafka", fac, log_message),
            Notice | Info => info!(message = "librdkafka", fac, log_message),
            Debug => debug!(message = "librdkafka", fac, log_message),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(message = "Kafka client error.", %error, reason);
    }
}

impl ProducerContext for EventContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.metrics.event(EventResult::Delivered, 1),
            Err((error, message)) => {
                self.metrics.event(EventResult::Failed, 1);
                if let Some(failures) = self.failures.tick() {
                    warn!(
                        message = "Kafka delivery failed.",
                        %error,
                        topic = message.topic(),
                        failures
                    );
                }
            }
        }
    }
}

/// The embedded development Kafka: librdkafka's mock cluster, kept on a thread of
/// its own because its handle may not move between threads.
struct DevCluster {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DevCluster {
    fn start(topic: &str) -> Result<DevCluster, SinkError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topic = topic.to_owned();
        let thread = thread::Builder::new()
            .name("dev-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if let Err(e) = cluster.create_topic(&topic, DEV_PARTITIONS, 1) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serve until the sink is dropped.
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| SinkError::DevCluster(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| SinkError::DevCluster("the cluster thread exited".into()))?
            .map_err(SinkError::DevCluster)?;
        Ok(DevCluster {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where click events go.
pub struct KafkaSink {
    producer: ThreadedProducer<EventContext>,
    topic: String,
    bootstrap: String,
    metrics: Arc<Metrics>,
    drops: LogEverySecond,
    /// Set by the health monitor; read by `/readyz`.
    broker_up: Arc<AtomicBool>,
    monitor_stop: Arc<AtomicBool>,
    /// Declared last: dropped after the producer, which must be gone first.
    _dev_cluster: Option<DevCluster>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl KafkaSink {
    pub fn start(
        settings: &KafkaSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<KafkaSink>, SinkError> {
        let dev_cluster = match &settings.brokers {
            Some(_) => None,
            None => Some(DevCluster::start(&settings.topic)?),
        };
        let bootstrap = match (&settings.brokers, &dev_cluster) {
            (Some(brokers), _) => brokers.clone(),
            (None, Some(dev)) => dev.bootstrap.clone(),
            (None, None) => unreachable!("a dev cluster is started when no brokers are given"),
        };
        if dev_cluster.is_some() {
            info!(
                message = "Started the embedded development Kafka (not for production: events live in memory).",
                bootstrap = %bootstrap,
                topic = %settings.topic,
            );
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap);
        config.set("client.id", &settings.client_id);
        for (key, value) in PRODUCER_DEFAULTS {
            config.set(*key, *value);
        }
        for (key, value) in &settings.options {
            config.set(key, value);
        }
        let context = EventContext {
            metrics: metrics.clone(),
            failures: LogEverySecond::new(),
        };
        let producer: ThreadedProducer<EventContext> = config.create_with_context(context)?;
        let sink = Arc::new(KafkaSink {
            producer,
            topic: settings.topic.clone(),
            bootstrap,
            metrics,
            drops: LogEverySecond::new(),
            broker_up: Arc::new(AtomicBool::new(false)),
            monitor_stop: Arc::new(AtomicBool::new(false)),
            _dev_cluster: dev_cluster,
        });
        spawn_monitor(Arc::downgrade(&sink), sink.monitor_stop.clone());
        Ok(sink)
    }

    /// The bootstrap servers in use (the embedded cluster's when it runs).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether the topic's metadata was fetched lately: the event path is writable.
    pub fn is_broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// Hands one event to the producer's queue. Never blocks.
    pub fn send(&self, key: &[u8], payload: &[u8]) {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: SCHEMA_HEADER,
            value: Some(SCHEMA_VERSION),
        });
        let record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        match self.producer.send(record) {
            Ok(()) => self.metrics.event(EventResult::Queued, 1),
            Err((error, _)) => {
                self.metrics.event(EventResult::Dropped, 1);
                if let Some(dropped) = self.drops.tick() {
                    let queue_full = matches!(
                        error,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    );
                    warn!(
                        message = "Click events dropped: the producer did not take them.",
                        %error,
                        queue_full,
                        dropped
                    );
                }
            }
        }
    }

    /// Waits up to `timeout` for every queued event to be acknowledged. Returns how
    /// many were still in flight when it gave up.
    pub fn flush(&self, timeout: Duration) -> usize {
        let started = Instant::now();
        let pending = self.producer.in_flight_count();
        match self.producer.flush(timeout) {
            Ok(()) => {
                info!(
                    message = "Kafka producer flushed.",
                    events = pending,
                    elapsed_ms = started.elapsed().as_millis() as u64
                );
                0
            }
            Err(error) => {
                let left = self.producer.in_flight_count().max(0) as usize;
                error!(message = "Kafka flush timed out; events not acknowledged.", %error, left);
                left
            }
        }
    }

    /// Events queued or in flight, not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.monitor_stop.store(true, Ordering::Relaxed);
    }
}

/// Every second: whether the broker answers for the topic (readiness), and the
/// producer's queue depth (`clickedge_kafka_queue_messages`).
fn spawn_monitor(sink: std::sync::Weak<KafkaSink>, stop: Arc<AtomicBool>) {
    let spawned = thread::Builder::new()
        .name("kafka-monitor".into())
        .spawn(move || {
            let mut was_up: Option<bool> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(sink) = sink.upgrade() else { return };
                let up = match sink
                    .producer
                    .client()
                    .fetch_metadata(Some(&sink.topic), Duration::from_secs(2))
                {
                    Ok(metadata) => metadata.topics().iter().any(|t| {
                        t.name() == sink.topic && t.error().is_none() && !t.partitions().is_empty()
                    }),
                    Err(_) => false,
                };
                sink.broker_up.store(up, Ordering::Relaxed);
                sink.metrics.kafka_broker_up.set(if up { 1.0 } else { 0.0 });
                sink.metrics
                    .kafka_queue_messages
                    .set(sink.producer.in_flight_count().max(0) as f64);
                if was_up != Some(up) {
                    if up {
                        info!(message = "Kafka topic reachable.", topic = %sink.topic);
                    } else {
                        warn!(
                            message = "Kafka topic not reachable (broker down or topic missing).",
                            topic = %sink.topic,
                            bootstrap = %sink.bootstrap
                        );
                    }
                    was_up = Some(up);
                }
                drop(sink);
                thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(error) = spawned {
        error!(message = "Cannot start the Kafka monitor thread.", %error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_every_second_lets_the_first_through_then_counts() {
        let limiter = LogEverySecond::new();
        assert_eq!(limiter.tick(), Some(1));
        for _ in 0..99 {
            assert_eq!(limiter.tick(), None);
        }
        // Pretend the last line was long ago: the next one reports all it stands for.
        limiter.last_ms.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1005));
        assert_eq!(limiter.tick(), Some(100));
        assert_eq!(limiter.tick(), None);
    }
}
