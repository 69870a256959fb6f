//! The Kafka side of the event path: one `BaseProducer`, its delivery reports,
//! the broker's health, and the embedded development cluster.
//!
//! `try_send` only hands a message to librdkafka's bounded in-memory queue and
//! returns. Delivery reports are served by [`Kafka::poll`], which the event pump
//! calls on every turn of its loop (no polling thread of our own, no wake-up per
//! report), and go to the pump as [`Ack`]s, which decides what is done (see
//! `sink::pipeline`).
//!
//! Why one long file: the producer, its delivery context, the health monitor and
//! the producer's renewal share one lifecycle.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use arc_swap::ArcSwap;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};
use tracing::{debug, error, info, warn};

use super::{SinkError, Topic};
use crate::event::SCHEMA_HEADER;
use crate::metrics::Metrics;

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
    // An event not acknowledged in this time fails, and is sent again from the spool.
    ("message.timeout.ms", "30000"),
];

/// Partitions of the event topics in the embedded development cluster.
const DEV_PARTITIONS: i32 = 3;

/// The `schema` header of each topic's events.
fn schema(topic: Topic) -> &'static str {
    match topic {
        Topic::Clicks => crate::event::SCHEMA_VERSION,
        Topic::Actions => crate::action::event::SCHEMA_VERSION,
    }
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `None` starts the embedded development cluster.
    pub brokers: Option<String>,
    /// `--kafka-topic`: click events.
    pub topic: String,
    /// `--actions-topic`: action events.
    pub actions_topic: String,
    /// `--kafka-option key=value`, applied after the defaults.
    pub options: Vec<(String, String)>,
    pub client_id: String,
    /// Created in the embedded development cluster too, when given.
    pub links_topic: Option<String>,
}

/// Lets one warning through per second and says how many it stands for, so a
/// broker outage at 100k clicks/s does not become a logging outage. Every event is
/// still counted in the metrics.
#[derive(Debug)]
pub(crate) struct LogEverySecond {
    started: Instant,
    /// Milliseconds since `started` of the last line let through; 0 before any.
    last_ms: AtomicU64,
    since_last: AtomicU64,
}

impl LogEverySecond {
    pub(crate) fn new() -> LogEverySecond {
        LogEverySecond {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            since_last: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; `Some(n)` when a line is due, `n` occurrences since the
    /// last one.
    pub(crate) fn tick(&self) -> Option<u64> {
        self.tick_n(1)
    }

    /// Counts `n` occurrences at once, as [`LogEverySecond::tick`].
    pub(crate) fn tick_n(&self, n: u64) -> Option<u64> {
        let count = self.since_last.fetch_add(n, Ordering::Relaxed) + n;
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

/// A delivery report for the event pump. `opaque` is what the message was sent
/// with; a failed message comes back whole so it can be sent again.
#[derive(Debug)]
pub struct Ack {
    pub opaque: usize,
    pub failed: Option<(Vec<u8>, Vec<u8>)>,
    /// The broker fenced this producer (its id or epoch is stale): every later
    /// message of this instance would fail the same way.
    pub fenced: bool,
}

/// Receives librdkafka's callbacks.
pub struct EventContext {
    acks: crossbeam_channel::Sender<Ack>,
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
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        use rdkafka::types::RDKafkaErrorCode::{Fenced, InvalidProducerEpoch, ProducerFenced};
        let fenced = matches!(
            result,
            Err((error, _)) if matches!(
                error.rdkafka_error_code(),
                Some(ProducerFenced | InvalidProducerEpoch | Fenced)
            )
        );
        let failed = match result {
            Ok(_) => None,
            Err((error, message)) => {
                if let Some(failures) = self.failures.tick() {
                    warn!(
                        message = "Kafka delivery failed; the events will be sent again.",
                        %error,
                        topic = message.topic(),
                        failures
                    );
                }
                Some((
                    message.key().unwrap_or_default().to_vec(),
                    message.payload().unwrap_or_default().to_vec(),
                ))
            }
        };
        // The pump outlives the producer; a closed channel means shutdown is over.
        let _ = self.acks.send(Ack {
            opaque,
            failed,
            fenced,
        });
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
    fn start(topics: &[(&str, i32)]) -> Result<DevCluster, SinkError> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
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
                for (topic, partitions) in &topics {
                    if let Err(e) = cluster.create_topic(topic, *partitions, 1) {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
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

/// What the health monitor last saw of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Not probed yet: sending is allowed.
    Unknown,
    Up,
    /// The last probe failed: new events wait in the spool.
    Down,
}

/// The producer and the broker's health.
pub struct Kafka {
    /// Replaced whole after a fatal error (see [`Kafka::renew_if_fatal`]); only
    /// the event pump sends, so a load per send is all the request path never
    /// sees.
    producer: ArcSwap<BaseProducer<EventContext>>,
    /// To build a replacement producer.
    config: ClientConfig,
    acks: crossbeam_channel::Sender<Ack>,
    /// Producers replaced after a fatal error, kept until their last delivery
    /// report (a purge failure) has come back.
    retiring: Mutex<Vec<Arc<BaseProducer<EventContext>>>>,
    last_renewal: Mutex<Option<Instant>>,
    /// By [`Topic`]: the clicks', the actions'.
    topics: [String; 2],
    bootstrap: String,
    metrics: Arc<Metrics>,
    /// Written by the health monitor: 0 unknown, 1 up, 2 down.
    health: Arc<AtomicU8>,
    monitor_stop: Arc<AtomicBool>,
    /// Declared last: dropped after the producer, which must be gone first.
    _dev_cluster: Option<DevCluster>,
}

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("topics", &self.topics)
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl Kafka {
    /// Creates the producer (starting the development cluster when no brokers are
    /// given) and its health monitor. Delivery reports go to `acks`.
    pub fn start(
        settings: &KafkaSettings,
        metrics: Arc<Metrics>,
        acks: crossbeam_channel::Sender<Ack>,
    ) -> Result<Arc<Kafka>, SinkError> {
        let dev_cluster = match &settings.brokers {
            Some(_) => None,
            None => {
                let mut topics = vec![
                    (settings.topic.as_str(), DEV_PARTITIONS),
                    (settings.actions_topic.as_str(), DEV_PARTITIONS),
                ];
                if let Some(links) = &settings.links_topic {
                    topics.push((links.as_str(), 1));
                }
                Some(DevCluster::start(&topics)?)
            }
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
                actions_topic = %settings.actions_topic,
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
        let producer = create_producer(&config, &acks)?;
        let kafka = Arc::new(Kafka {
            producer: ArcSwap::from_pointee(producer),
            config,
            acks,
            retiring: Mutex::new(Vec::new()),
            last_renewal: Mutex::new(None),
            topics: [settings.topic.clone(), settings.actions_topic.clone()],
            bootstrap,
            metrics,
            health: Arc::new(AtomicU8::new(0)),
            monitor_stop: Arc::new(AtomicBool::new(false)),
            _dev_cluster: dev_cluster,
        });
        spawn_monitor(Arc::downgrade(&kafka), kafka.monitor_stop.clone());
        Ok(kafka)
    }

    /// The bootstrap servers in use (the embedded cluster's when it runs).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The Kafka topic `topic`'s events go to.
    pub fn topic(&self, topic: Topic) -> &str {
        &self.topics[topic as usize]
    }

    pub fn health(&self) -> BrokerHealth {
        match self.health.load(Ordering::Relaxed) {
            1 => BrokerHealth::Up,
            2 => BrokerHealth::Down,
            _ => BrokerHealth::Unknown,
        }
    }

    /// Hands one message to the producer's queue; never blocks. `opaque` comes back
    /// in its [`Ack`].
    pub fn try_send(
        &self,
        topic: Topic,
        key: &[u8],
        payload: &[u8],
        opaque: usize,
    ) -> Result<(), KafkaError> {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: SCHEMA_HEADER,
            value: Some(schema(topic)),
        });
        let record = BaseRecord::with_opaque_to(self.topic(topic), opaque)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .load()
            .send(record)
            .map_err(|(error, _)| error)
    }

    /// Serves the delivery reports that have arrived (the current producer's and
    /// the retiring ones'), without waiting: their [`Ack`]s are in the channel
    /// when this returns.
    pub fn poll(&self) {
        self.producer.load().poll(Duration::ZERO);
        if let Ok(retiring) = self.retiring.lock() {
            for producer in retiring.iter() {
                producer.poll(Duration::ZERO);
            }
        }
    }

    /// Events queued or in flight, not yet acknowledged (retiring producers'
    /// included: their reports are still to come).
    pub fn in_flight(&self) -> usize {
        let retiring: i32 = self
            .retiring
            .lock()
            .map_or(0, |r| r.iter().map(|p| p.in_flight_count().max(0)).sum());
        (self.producer.load().in_flight_count().max(0) + retiring) as usize
    }

    /// Forgets every queued and in-flight message. Called once the spool holds
    /// them, so that a producer outliving shutdown cannot send them a second time.
    pub fn purge(&self) {
        self.producer
            .load()
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    /// After a fatal error, or once the broker fences it, the producer can send
    /// nothing more: every message it is given fails at once (seen with tansu,
    /// which fenced the producer of a node started while it hung). A new
    /// instance takes its place (a new producer id); the old one's messages are
    /// purged and come back as failed deliveries, to be sent again through the
    /// new one. At most once a second (the old instance's own fenced reports
    /// must not replace the new one). Returns whether it was replaced. Cheap
    /// when there is nothing to do.
    pub fn renew_if_unusable(&self, fenced: bool) -> bool {
        let current = self.producer.load_full();
        let (code, reason) = match current.client().fatal_error() {
            Some((code, reason)) => (code, reason),
            None if fenced => (
                rdkafka::types::RDKafkaErrorCode::ProducerFenced,
                "deliveries fenced by the broker".to_owned(),
            ),
            None => return false,
        };
        {
            let mut last = self.last_renewal.lock().expect("renewal lock");
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let fresh = match create_producer(&self.config, &self.acks) {
            Ok(fresh) => fresh,
            Err(error) => {
                error!(message = "The Kafka producer cannot send and cannot be replaced.", ?code, reason, %error);
                return false;
            }
        };
        error!(message = "The Kafka producer cannot send any more (fatal error, or fenced); a new one replaces it and its messages are sent again.", ?code, reason);
        self.producer.store(Arc::new(fresh));
        current.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        if let Ok(mut retiring) = self.retiring.lock() {
            retiring.push(current);
        }
        self.metrics.kafka_producer_renewed();
        true
    }

    /// Whether the broker answers for `topic`: it exists and has partitions.
    fn answers_for(&self, topic: &str) -> bool {
        match self
            .producer
            .load()
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(2))
        {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()),
            Err(_) => false,
        }
    }

    /// Drops retired producers whose reports have all come back.
    pub fn reap_retired(&self) {
        if let Ok(mut retiring) = self.retiring.lock() {
            retiring.retain(|p| p.in_flight_count() > 0);
        }
    }
}

/// A producer whose delivery reports go to `acks`.
fn create_producer(
    config: &ClientConfig,
    acks: &crossbeam_channel::Sender<Ack>,
) -> Result<BaseProducer<EventContext>, KafkaError> {
    config.create_with_context(EventContext {
        acks: acks.clone(),
        failures: LogEverySecond::new(),
    })
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.monitor_stop.store(true, Ordering::Relaxed);
    }
}

/// Every second: a producer with a fatal error replaced, whether the broker
/// answers for the event topics (whether new events are sent or wait in the spool),
/// and the producer's queue depth.
fn spawn_monitor(kafka: std::sync::Weak<Kafka>, stop: Arc<AtomicBool>) {
    let spawned = thread::Builder::new()
        .name("kafka-monitor".into())
        .spawn(move || {
            let mut was_up: Option<bool> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(kafka) = kafka.upgrade() else { return };
                // A producer with a fatal error answers no probe either: it would
                // look like a broker down forever, with nothing sent to fail.
                kafka.renew_if_unusable(false);
                // Up only when every event topic answers: one journal feeds them
                // in order, so a missing topic holds back the other's events too.
                // The first that does not answer settles it (a hung broker costs
                // one probe's timeout, not one per topic).
                let missing = kafka.topics.iter().find(|topic| !kafka.answers_for(topic));
                let up = missing.is_none();
                kafka.health.store(if up { 1 } else { 2 }, Ordering::Relaxed);
                kafka.metrics.kafka_broker_up.set(if up { 1.0 } else { 0.0 });
                kafka.metrics.kafka_queue_messages.set(kafka.in_flight() as f64);
                if was_up != Some(up) {
                    if up {
                        info!(message = "Kafka topic reachable.", topics = ?kafka.topics);
                    } else {
                        warn!(
                            message = "Kafka topic not reachable (broker down or topic missing); new events wait in the spool.",
                            topic = missing.map_or("", String::as_str),
                            bootstrap = %kafka.bootstrap
                        );
                    }
                    was_up = Some(up);
                }
                drop(kafka);
                thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(error) = spawned {
        error!(message = "Cannot start the Kafka monitor thread.", %error);
    }
}

/// A consumer's context for readers that stop at a partition's end (`clickedge
/// consume`, the links topic): reaching it is how they know they are done, not
/// an error worth a log line; everything else librdkafka reports is logged.
pub(crate) struct EndIsNotAnError;

impl ClientContext for EndIsNotAnError {
    fn error(&self, error: KafkaError, reason: &str) {
        let end =
            error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !end {
            tracing::warn!(message = "Kafka client error.", %error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for EndIsNotAnError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Managed Kafka needs TLS and SASL (PLAIN, SCRAM) in the librdkafka we link.
    #[test]
    fn librdkafka_is_built_with_tls_and_sasl() {
        let native = rdkafka::ClientConfig::new()
            .create_native_config()
            .expect("an empty configuration");
        let features = native.get("builtin.features").expect("builtin.features");
        for wanted in ["ssl", "sasl_plain", "sasl_scram"] {
            assert!(
                features.split(',').any(|f| f == wanted),
                "{wanted} missing from {features}"
            );
        }
    }

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
