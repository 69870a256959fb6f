//! The event path: request → the worker's batch → channel → pump → spool → Kafka.
//! Click events and action events take it alike; each frame names its topic.
//!
//! The request path writes its event, framed as the spool stores it, into its
//! worker's batch ([`super::batch`]) and returns. The worker hands the batch over
//! when its runtime is about to sleep or the batch is full; a channel holding
//! [`CHANNEL_CAPACITY`] events already (the pump stalled on a dead disk) is the
//! one place events are dropped there, counted and logged. One pump thread then,
//! per turn:
//!
//! 1. appends the batches to the spool, one write each, and hands them to the
//!    operating system;
//! 2. if nothing is waiting in the spool and the broker is not known to be down,
//!    sends them to Kafka from memory ("live");
//! 3. otherwise leaves them in the spool, from which they are replayed in order, at
//!    most `--spool-replay-rate` per second, once the broker is back;
//! 4. counts acknowledgements per segment, sends failed ones again, and deletes a
//!    segment once it is sealed, fully sent and fully acknowledged.
//!
//! Shutdown drains the channel into the spool, waits for acknowledgements up to the
//! deadline, and fsyncs: whatever was not acknowledged is on disk for the next start.
//!
//! Why one long file: the pump's paths (live, spooled, disk failing, resend,
//! replay, shutdown) are one state machine over the same counters; split, the
//! invariants of the delivery guarantee would be read in pieces.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tracing::{error, info, warn};

use super::batch::{self, FrameBatch};
use super::kafka::{Ack, BrokerHealth, Kafka, KafkaSettings, LogEverySecond};
use super::spool::{Appended, BuiltFrame, Frame, Spool, SpoolError};
use super::{SinkError, Topic};
use crate::metrics::{EventResult, Metrics};

/// Events the workers may have handed over before the pump catches up: about a
/// second of a busy node's clicks.
pub const CHANNEL_CAPACITY: usize = 65_536;
/// How long the pump sleeps when the channel is empty: at most this much is added
/// to an event's way to the spool (and to what a kill -9 can catch in the channel).
const POLL_TICK: Duration = Duration::from_micros(500);
/// Events the pump takes per turn, at least (whole batches).
const TURN_EVENTS: usize = 4096;
/// A segment is sealed at this size or age, so acknowledged events leave the disk.
const SEGMENT_MAX_BYTES: u64 = 16 << 20;
const SEGMENT_MAX_AGE: Duration = Duration::from_secs(1);
/// How much of a segment one replay step reads.
const REPLAY_READ_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub fsync_interval: Duration,
    /// Replayed events per second at most; 0 is unlimited.
    pub replay_rate: u64,
}

/// Where the edge hands an event (a click's, an action's): the seam between the
/// request path and the event pipeline. The server's is [`EventSink`]; unit tests
/// of the request path keep the events in memory.
pub trait EventIntake: Send + Sync {
    /// Adds one event for `topic` keyed by `key` (for a click, the visitor or
    /// click id), its bytes written in place by `write`. Never blocks.
    fn submit(&self, topic: Topic, key: &str, write: &mut dyn FnMut(&mut Vec<u8>));
}

impl EventIntake for EventSink {
    fn submit(&self, topic: Topic, key: &str, write: &mut dyn FnMut(&mut Vec<u8>)) {
        self.submit_with(topic, key, write);
    }
}

/// Tells sinks apart on a worker thread (a test process runs several servers).
static NEXT_SINK_ID: AtomicU64 = AtomicU64::new(1);

/// The handle the server holds.
pub struct EventSink {
    id: u64,
    tx: Sender<FrameBatch>,
    /// Events handed over and not yet taken by the pump: the channel's bound.
    queued: Arc<AtomicUsize>,
    kafka: Arc<Kafka>,
    metrics: Arc<Metrics>,
    drops: LogEverySecond,
    /// Mirrors the pump's view, for `/readyz`: whether a new event would be kept.
    journal: Arc<JournalState>,
    stop: Arc<AtomicBool>,
    /// Milliseconds the pump may still wait for acknowledgements once stopping.
    drain_ms: Arc<AtomicU64>,
    pump: Mutex<Option<thread::JoinHandle<bool>>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("kafka", &self.kafka)
            .finish()
    }
}

impl EventSink {
    /// Opens the spool (replaying what an earlier run left), starts Kafka and the
    /// pump.
    pub fn start(
        kafka: &KafkaSettings,
        spool: &SpoolSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<EventSink>, SinkError> {
        let opened = Spool::open(&spool.dir, spool.max_bytes, SEGMENT_MAX_BYTES)?;
        metrics.spool_max_bytes.set(spool.max_bytes as f64);
        if opened.backlog_bytes() > 0 {
            info!(
                message = "Spool holds events from an earlier run; they will be replayed.",
                dir = %spool.dir.display(),
                bytes = opened.backlog_bytes(),
                segments = opened.segment_count()
            );
        }
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let kafka = Kafka::start(kafka, metrics.clone(), ack_tx)?;
        // Bounded by events, counted in `queued`, not by batches.
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let journal = Arc::new(JournalState {
            has_room: AtomicBool::new(true),
            room_bytes: AtomicU64::new(spool.max_bytes),
            writable: AtomicBool::new(true),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let drain_ms = Arc::new(AtomicU64::new(0));
        let pump = Pump {
            rx,
            queued: queued.clone(),
            acks: ack_rx,
            kafka: kafka.clone(),
            spool: opened,
            metrics: metrics.clone(),
            settings: spool.clone(),
            resend: VecDeque::new(),
            resend_after: Instant::now(),
            resend_backoff: Duration::ZERO,
            tokens: spool.replay_rate as f64,
            last_refill: Instant::now(),
            last_sync: Instant::now(),
            journal: journal.clone(),
            last_disk_probe: Instant::now(),
            unspooled_in_flight: [0; 2],
            unspooled_held: 0,
            stop: stop.clone(),
            drain_ms: drain_ms.clone(),
            spool_errors: LogEverySecond::new(),
            drops: LogEverySecond::new(),
        };
        let handle = thread::Builder::new()
            .name("event-pump".into())
            .spawn(move || pump.run())
            .map_err(|e| {
                SinkError::Spool(SpoolError::Io {
                    dir: spool.dir.clone(),
                    source: e,
                })
            })?;
        Ok(Arc::new(EventSink {
            id: NEXT_SINK_ID.fetch_add(1, Ordering::Relaxed),
            tx,
            queued,
            kafka,
            metrics,
            drops: LogEverySecond::new(),
            journal,
            stop,
            drain_ms,
            pump: Mutex::new(Some(handle)),
        }))
    }

    /// Adds one event, its value written in place by `write_value`, to this
    /// thread's batch (on a thread that called [`EventSink::attach_thread`]; on
    /// any other it is handed over alone). Never blocks.
    pub fn submit_with(&self, topic: Topic, key: &str, write_value: impl FnOnce(&mut Vec<u8>)) {
        match batch::push(self.id, topic, key.as_bytes(), write_value) {
            Ok(None) => {}
            Ok(Some(full)) => self.hand_over(full),
            // The one refusal: an event over the spool's frame size.
            Err(_) => self.dropped(topic, 1, "Events dropped: larger than a spool frame takes."),
        }
    }

    /// This thread (an edge worker) batches its events from now on: call
    /// [`EventSink::flush_thread`] whenever it is about to sleep, and
    /// [`EventSink::detach_thread`] before it ends.
    pub fn attach_thread(&self) {
        batch::attach(self.id);
    }

    /// Hands this thread's batch to the pump, if it holds any event.
    pub fn flush_thread(&self) {
        if let Some(held) = batch::take(self.id) {
            self.hand_over(held);
        }
    }

    /// Hands over what this thread holds and stops batching on it.
    pub fn detach_thread(&self) {
        if let Some(held) = batch::detach(self.id) {
            self.hand_over(held);
        }
    }

    /// One channel operation per batch; a batch that would take the channel over
    /// its bound is dropped whole, counted.
    fn hand_over(&self, held: FrameBatch) {
        let events = held.events();
        let before = self.queued.fetch_add(events, Ordering::Relaxed);
        let held = if before + events <= CHANNEL_CAPACITY {
            match self.tx.send(held) {
                Ok(()) => return,
                Err(crossbeam_channel::SendError(held)) => held,
            }
        } else {
            held
        };
        self.queued.fetch_sub(events, Ordering::Relaxed);
        for topic in Topic::ALL {
            self.dropped(
                topic,
                held.events_of(topic),
                "Events dropped: the event pump is not keeping up (disk stalled?).",
            );
        }
    }

    /// Counts `events` of `topic` lost for `why`, and logs it at most once a second.
    fn dropped(&self, topic: Topic, events: usize, why: &'static str) {
        if events == 0 {
            return;
        }
        self.metrics
            .event(topic, EventResult::Dropped, events as u64);
        if let Some(dropped) = self.drops.tick_n(events as u64) {
            error!(message = why, ?topic, dropped);
        }
    }

    pub fn bootstrap(&self) -> &str {
        self.kafka.bootstrap()
    }

    /// The Kafka topic of `topic`'s events.
    pub fn topic(&self, topic: Topic) -> &str {
        self.kafka.topic(topic)
    }

    /// What the health monitor last saw of the broker (probed every second).
    pub fn broker_health(&self) -> BrokerHealth {
        self.kafka.health()
    }

    /// Whether a new event would be kept: every event is journaled before it is
    /// sent, so this is the journal's say alone (room under `--spool-max-bytes`,
    /// and the disk taking writes), whatever the broker's state. A full spool
    /// drops events even while Kafka is up.
    pub fn keeps_new_events(&self) -> Result<(), NotKept> {
        if !self.journal.writable.load(Ordering::Relaxed) {
            return Err(NotKept::DiskFailing);
        }
        if !self.journal.has_room.load(Ordering::Relaxed) {
            return Err(NotKept::SpoolFull);
        }
        Ok(())
    }

    /// Whether the journal had room for about `bytes` more as of the pump's
    /// last turn (events handed over since are not counted): what a reporter
    /// that can retry is told before its events are accepted, so that a
    /// nearly full spool refuses a request rather than drop part of it.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.journal.room_bytes.load(Ordering::Relaxed) >= bytes
    }

    /// Stops the pump after it has spooled every submitted event and waited up to
    /// `timeout` for acknowledgements. Returns whether all were acknowledged (what
    /// was not stays in the spool for the next start).
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.drain_ms
            .store(timeout.as_millis() as u64, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.pump.lock().expect("pump handle lock").take();
        match handle.map(thread::JoinHandle::join) {
            Some(Ok(done)) => done,
            Some(Err(_)) => {
                error!(
                    message = "The event pump panicked; unacknowledged events stay in the spool."
                );
                false
            }
            None => true,
        }
    }
}

/// A sink dropped without [`EventSink::shutdown`] (a failed start, a test) stops its
/// pump without waiting: what is not acknowledged stays in the spool.
impl Drop for EventSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.pump.lock().ok().and_then(|mut p| p.take()) {
            let _ = handle.join();
        }
    }
}

/// Why a new event would not be kept (`/readyz` says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    SpoolFull,
    DiskFailing,
}

/// What the pump last saw of the journal, shared with `/readyz`.
#[derive(Debug)]
struct JournalState {
    /// Under `--spool-max-bytes` with room for one more event.
    has_room: AtomicBool,
    /// Bytes the spool could still take, as of the pump's last turn.
    room_bytes: AtomicU64,
    /// The last write reached the disk (or the disk has room again since).
    writable: AtomicBool,
}

/// An event of a pump turn: where it was appended (none if the disk refused it),
/// its topic, key and value.
type Journaled<'b> = (Option<Appended>, Topic, &'b [u8], &'b [u8]);

/// Events the disk refused that are held in memory for another try, at most:
/// beyond it they are dropped (counted) rather than grow memory without bound
/// while both the disk and Kafka fail.
const MAX_HELD_UNSPOOLED: usize = 65_536;
/// Failed deliveries wait this long before they are sent again, doubling while
/// failures go on, up to the maximum: no error (a fenced producer, a refused
/// record) can turn the pump into a hot loop of instant failures.
const RESEND_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RESEND_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long shutdown waits for the reports of purged messages.
const PURGE_WAIT: Duration = Duration::from_secs(2);
/// Free bytes on the spool's filesystem that count as "the disk takes writes
/// again" after a write error.
const DISK_ROOM_AGAIN: u64 = 1 << 20;

struct Pump {
    rx: Receiver<FrameBatch>,
    /// Shared with the sink: events handed over and not yet taken.
    queued: Arc<AtomicUsize>,
    acks: Receiver<Ack>,
    kafka: Arc<Kafka>,
    spool: Spool,
    metrics: Arc<Metrics>,
    settings: SpoolSettings,
    /// Failed deliveries to send again.
    resend: VecDeque<(Delivery, Vec<u8>, Vec<u8>)>,
    /// Not before this are failed deliveries sent again.
    resend_after: Instant,
    /// The current wait after a failure; zero after a success.
    resend_backoff: Duration,
    /// Events the disk refused, sent to Kafka and not yet reported: held by
    /// librdkafka only. A failure report brings each back.
    /// By topic.
    unspooled_in_flight: [u64; 2],
    /// Of `resend`, the events the disk refused (held in memory only).
    unspooled_held: usize,
    /// Replay token bucket.
    tokens: f64,
    last_refill: Instant,
    last_sync: Instant,
    journal: Arc<JournalState>,
    /// When the filesystem was last asked for free space after a write error.
    last_disk_probe: Instant,
    stop: Arc<AtomicBool>,
    drain_ms: Arc<AtomicU64>,
    spool_errors: LogEverySecond,
    drops: LogEverySecond,
}

/// What a message handed to Kafka is, for what its delivery report settles:
/// it travels as the message's opaque and comes back with the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// A record of this journal segment, sent live or replayed from the backlog.
    Journaled {
        topic: Topic,
        segment: u64,
        replayed: bool,
    },
    /// An event the disk refused: only memory (librdkafka's queue or the pump's
    /// resend queue) holds it.
    Unspooled { topic: Topic },
}

impl Delivery {
    /// The one place the token is packed: bit 0 replayed, bit 1 the topic, the
    /// rest the segment; segment ids count up from 1 and never reach
    /// `usize::MAX >> 2`, and 0 is left to `Unspooled`.
    fn opaque(self) -> usize {
        match self {
            Delivery::Journaled {
                topic,
                segment,
                replayed,
            } => ((segment as usize) << 2) | ((topic as usize) << 1) | usize::from(replayed),
            Delivery::Unspooled { topic } => (topic as usize) << 1,
        }
    }

    fn from_opaque(opaque: usize) -> Delivery {
        let topic = if opaque & 2 == 0 {
            Topic::Clicks
        } else {
            Topic::Actions
        };
        match opaque >> 2 {
            0 => Delivery::Unspooled { topic },
            segment => Delivery::Journaled {
                topic,
                segment: segment as u64,
                replayed: opaque & 1 == 1,
            },
        }
    }

    fn topic(self) -> Topic {
        match self {
            Delivery::Journaled { topic, .. } | Delivery::Unspooled { topic } => topic,
        }
    }
}

impl Pump {
    /// Runs until stopped; returns whether every event was acknowledged.
    fn run(mut self) -> bool {
        let mut batches: Vec<FrameBatch> = Vec::new();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let mut stopping = self.stop.load(Ordering::SeqCst);
            // Poll on a short tick rather than block: a blocked receiver must be
            // woken by every hand-over, and those wake-ups (a syscall and a
            // context switch each) cost more than the events' own work.
            let mut took = 0;
            match self.rx.try_recv() {
                Ok(first) => {
                    took += first.events();
                    batches.push(first);
                }
                Err(TryRecvError::Empty) => thread::sleep(POLL_TICK),
                // The sink is gone: nothing more can arrive.
                Err(TryRecvError::Disconnected) => stopping = true,
            }
            while took < TURN_EVENTS {
                let Ok(next) = self.rx.try_recv() else { break };
                took += next.events();
                batches.push(next);
            }
            self.queued.fetch_sub(took, Ordering::Relaxed);
            self.append_and_send(&batches);
            batches.clear();
            self.take_acks();
            self.resend_failed();
            self.replay();
            self.housekeeping();

            if stopping && took == 0 {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    Instant::now() + Duration::from_millis(self.drain_ms.load(Ordering::SeqCst))
                });
                if self.all_acknowledged() || Instant::now() >= deadline {
                    return self.finish();
                }
            }
        }
    }

    fn append_and_send(&mut self, batches: &[FrameBatch]) {
        if batches.is_empty() {
            return;
        }
        // Live only when nothing waits before these events and Kafka may take them.
        let mut live = !self.spool.has_backlog()
            && self.resend.is_empty()
            && self.kafka.health() != BrokerHealth::Down;
        // Every event of the turn, and where it went on disk if it was appended.
        let mut appended: Vec<Journaled<'_>> = Vec::new();
        let mut failure = None;
        for held in batches {
            if self.append_run(held.bytes(), held.frames(), &mut appended, &mut failure) {
                continue;
            }
            // The batch does not fit whole: frame by frame, as many as fit.
            let mut start = 0;
            for (topic, key, value, end) in held.frames() {
                let frame = &held.bytes()[start..end];
                let one = std::iter::once((topic, key, value, end - start));
                start = end;
                if !self.append_run(frame, one, &mut appended, &mut failure) {
                    self.drop_event(
                        topic,
                        "Events dropped: the spool is full (--spool-max-bytes).",
                    );
                }
            }
        }
        let failure = match failure {
            Some(error) => Some(error),
            None => self.spool.flush().err(),
        };
        if let Some(error) = failure {
            self.journal.writable.store(false, Ordering::Relaxed);
            if let Some(errors) = self.spool_errors.tick() {
                error!(message = "Cannot write the spool; events it could not take go to Kafka directly.", %error, errors);
            }
            // The failed write abandoned the segment at what reached the file:
            // frames within it are on disk and replay from there (sending them
            // too would duplicate them); the rest exist only here.
            let mut spooled = [0; 2];
            for (at, topic, key, value) in appended {
                if at.is_some_and(|at| self.spool.holds(at)) {
                    spooled[topic as usize] += 1;
                } else {
                    self.send_unspooled(topic, key, value);
                }
            }
            self.metrics.events_by_topic(EventResult::Spooled, spooled);
            return;
        }
        self.journal.writable.store(true, Ordering::Relaxed);
        let mut spooled = [0; 2];
        for (at, topic, key, value) in appended {
            let at = at.expect("appended: no write failed");
            if live {
                let delivery = Delivery::Journaled {
                    topic,
                    segment: at.segment,
                    replayed: false,
                };
                match self.kafka.try_send(topic, key, value, delivery.opaque()) {
                    Ok(()) => {
                        self.metrics.event(topic, EventResult::Queued, 1);
                        self.spool.sent(at);
                        continue;
                    }
                    // Queue full or the like: this and what follows wait in the spool.
                    Err(_) => live = false,
                }
            }
            spooled[topic as usize] += 1;
        }
        self.metrics.events_by_topic(EventResult::Spooled, spooled);
    }

    /// Appends `bytes`, whole frames (`frames`: each one's key, value and end
    /// within `bytes`), with one write, noting where each went in `appended`;
    /// after a write error (in `failure`), frames are noted with no place. Returns
    /// false, noting nothing, when the spool has no room for them all.
    fn append_run<'b>(
        &mut self,
        bytes: &'b [u8],
        frames: impl Iterator<Item = BuiltFrame<'b>>,
        appended: &mut Vec<Journaled<'b>>,
        failure: &mut Option<SpoolError>,
    ) -> bool {
        let placed = if failure.is_some() {
            None
        } else {
            match self.spool.append_frames(bytes) {
                Ok(placed) => Some(placed),
                Err((SpoolError::Full { .. }, _)) => return false,
                Err((error, placed)) => {
                    *failure = Some(error);
                    placed
                }
            }
        };
        appended.extend(frames.map(|(topic, key, value, end)| {
            (
                placed.map(|placed| placed.frame_ending(end)),
                topic,
                key,
                value,
            )
        }));
        true
    }

    /// The disk failed for this event: Kafka directly rather than lose it, whatever
    /// the broker's state (librdkafka holds it until `message.timeout.ms`). It is
    /// tracked in memory only: a failed delivery comes back whole and is tried on
    /// the disk again, then held for another send.
    fn send_unspooled(&mut self, topic: Topic, key: &[u8], value: &[u8]) {
        let delivery = Delivery::Unspooled { topic };
        match self.kafka.try_send(topic, key, value, delivery.opaque()) {
            Ok(()) => {
                self.unspooled_in_flight[topic as usize] += 1;
                self.metrics.event(topic, EventResult::Queued, 1);
            }
            Err(_) => self.drop_event(
                topic,
                "Events dropped: the spool cannot be written and Kafka's queue is full.",
            ),
        }
    }

    /// A delivery of an event the disk had refused failed: onto the disk if it
    /// takes writes again, else held for another send (within a bound). While
    /// the disk is known to fail, no write is tried (each would make a segment
    /// file) until the free-space probe sees room; shutdown tries regardless.
    fn keep_unspooled(&mut self, topic: Topic, key: Vec<u8>, value: Vec<u8>) {
        if self.journal.writable.load(Ordering::Relaxed) && self.journal_one(topic, &key, &value) {
            self.metrics.event(topic, EventResult::Spooled, 1);
        } else if self.unspooled_held < MAX_HELD_UNSPOOLED {
            self.unspooled_held += 1;
            self.resend
                .push_back((Delivery::Unspooled { topic }, key, value));
        } else {
            self.drop_event(
                topic,
                "Events dropped: neither the spool nor Kafka takes them, and the memory for them is full.",
            );
        }
    }

    /// Appends one event and flushes it; whether it is on disk now.
    fn journal_one(&mut self, topic: Topic, key: &[u8], value: &[u8]) -> bool {
        let on_disk = match self.spool.append(topic, key, value) {
            Ok(at) => self.spool.flush().is_ok() && self.spool.holds(at),
            Err(_) => false,
        };
        self.journal.writable.store(on_disk, Ordering::Relaxed);
        on_disk
    }

    /// Counts and logs (once a second, with the count) an event lost for `why`.
    fn drop_event(&self, topic: Topic, why: &'static str) {
        self.metrics.event(topic, EventResult::Dropped, 1);
        if let Some(dropped) = self.drops.tick() {
            error!(
                message = why,
                ?topic,
                dropped,
                spool_bytes = self.spool.total_bytes()
            );
        }
    }

    fn take_acks(&mut self) {
        self.kafka.poll();
        let (mut failed, mut succeeded, mut fenced) = (false, false, false);
        while let Ok(ack) = self.acks.try_recv() {
            failed |= ack.failed.is_some();
            fenced |= ack.fenced;
            succeeded |= ack.failed.is_none();
            let delivery = Delivery::from_opaque(ack.opaque);
            let topic = delivery.topic();
            match (delivery, ack.failed) {
                (Delivery::Unspooled { .. }, None) => {
                    let in_flight = &mut self.unspooled_in_flight[topic as usize];
                    *in_flight = in_flight.saturating_sub(1);
                    self.metrics.event(topic, EventResult::Delivered, 1);
                }
                (Delivery::Unspooled { .. }, Some((key, value))) => {
                    let in_flight = &mut self.unspooled_in_flight[topic as usize];
                    *in_flight = in_flight.saturating_sub(1);
                    self.metrics.event(topic, EventResult::Failed, 1);
                    self.keep_unspooled(topic, key, value);
                }
                (
                    Delivery::Journaled {
                        segment, replayed, ..
                    },
                    None,
                ) => {
                    self.spool.acknowledged(segment);
                    let result = if replayed {
                        EventResult::Replayed
                    } else {
                        EventResult::Delivered
                    };
                    self.metrics.event(topic, result, 1);
                }
                (Delivery::Journaled { .. }, Some((key, value))) => {
                    self.metrics.event(topic, EventResult::Failed, 1);
                    self.resend.push_back((delivery, key, value));
                }
            }
        }
        if failed {
            // A producer with a fatal error, or fenced, fails everything at once:
            // replace it.
            self.kafka.renew_if_unusable(fenced);
            self.resend_backoff =
                (self.resend_backoff * 2).clamp(RESEND_BACKOFF_MIN, RESEND_BACKOFF_MAX);
            self.resend_after = Instant::now() + self.resend_backoff;
        } else if succeeded {
            self.resend_backoff = Duration::ZERO;
        }
    }

    fn resend_failed(&mut self) {
        if self.kafka.health() == BrokerHealth::Down || Instant::now() < self.resend_after {
            return;
        }
        while let Some((delivery, key, value)) = self.resend.front() {
            let topic = delivery.topic();
            if self
                .kafka
                .try_send(topic, key, value, delivery.opaque())
                .is_err()
            {
                return;
            }
            self.metrics.event(topic, EventResult::Queued, 1);
            if matches!(delivery, Delivery::Unspooled { .. }) {
                self.unspooled_held -= 1;
                self.unspooled_in_flight[topic as usize] += 1;
            }
            self.resend.pop_front();
        }
    }

    /// Sends spooled events in order, within the rate limit, while Kafka takes them.
    fn replay(&mut self) {
        if self.kafka.health() == BrokerHealth::Down || !self.resend.is_empty() {
            return;
        }
        let rate = self.settings.replay_rate as f64;
        let now = Instant::now();
        if rate > 0.0 {
            let elapsed = now.duration_since(self.last_refill).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        }
        self.last_refill = now;
        if rate > 0.0 && self.tokens < 1.0 {
            return;
        }
        // One read per pump turn, so a long backlog never keeps new events waiting
        // in the channel.
        let Some(segment) = self.spool.first_unsent() else {
            return;
        };
        let frames = match self.spool.read_unsent(segment, REPLAY_READ_BYTES) {
            Ok(frames) => frames,
            Err(error) => {
                if let Some(errors) = self.spool_errors.tick() {
                    error!(message = "Cannot read the spool for replay.", %error, errors);
                }
                return;
            }
        };
        for frame in frames {
            match frame {
                Frame::Corrupt { end } => {
                    self.metrics.spool_corrupt_records.increment(1);
                    warn!(
                        message = "Corrupt or torn record in the spool skipped.",
                        segment, end
                    );
                    self.spool.skipped(Appended { segment, end });
                }
                Frame::Record {
                    topic,
                    key,
                    value,
                    end,
                } => {
                    if rate > 0.0 && self.tokens < 1.0 {
                        return;
                    }
                    let delivery = Delivery::Journaled {
                        topic,
                        segment,
                        replayed: true,
                    };
                    if self
                        .kafka
                        .try_send(topic, &key, &value, delivery.opaque())
                        .is_err()
                    {
                        return;
                    }
                    self.metrics.event(topic, EventResult::Queued, 1);
                    self.spool.sent(Appended { segment, end });
                    self.tokens -= 1.0;
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        self.kafka.reap_retired();
        let result = (|| -> Result<(), SpoolError> {
            self.spool.seal_if_older(SEGMENT_MAX_AGE)?;
            if self.last_sync.elapsed() >= self.settings.fsync_interval {
                self.spool.sync()?;
                self.last_sync = Instant::now();
            }
            self.spool.remove_done()?;
            Ok(())
        })();
        if let Err(error) = result {
            if let Some(errors) = self.spool_errors.tick() {
                error!(message = "Spool housekeeping failed.", %error, errors);
            }
        }
        let total = self.spool.total_bytes();
        self.metrics.spool_size_bytes.set(total as f64);
        self.metrics
            .spool_segments
            .set(self.spool.segment_count() as f64);
        self.metrics
            .spool_backlog_bytes
            .set(self.spool.backlog_bytes() as f64);
        self.journal
            .has_room
            .store(self.spool.has_room_for(4096), Ordering::Relaxed);
        self.journal.room_bytes.store(
            self.settings.max_bytes.saturating_sub(total),
            Ordering::Relaxed,
        );
        self.probe_disk();
    }

    /// After a write error, readiness stays off until the disk shows room again
    /// (checked once a second), so a node taken out of rotation comes back
    /// without needing traffic to find out; the next write tells the truth.
    fn probe_disk(&mut self) {
        if self.journal.writable.load(Ordering::Relaxed)
            || self.last_disk_probe.elapsed() < Duration::from_secs(1)
        {
            return;
        }
        self.last_disk_probe = Instant::now();
        if let Ok(stats) = rustix::fs::statvfs(self.spool.dir()) {
            if stats.f_bavail.saturating_mul(stats.f_frsize) >= DISK_ROOM_AGAIN {
                self.journal.writable.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Whether every event taken so far is acknowledged.
    fn all_acknowledged(&self) -> bool {
        self.spool.unacknowledged() == 0
            && self.unspooled_in_flight == [0; 2]
            && self.resend.is_empty()
            && !self.spool.has_backlog()
    }

    fn finish(mut self) -> bool {
        // What is not acknowledged is in the spool for the next start; nothing more
        // may leave from memory.
        self.kafka.purge();
        // Purged messages come back as failed deliveries; those the disk never held
        // are written to it now (it may have room again), or counted as lost.
        let purged_by = Instant::now() + PURGE_WAIT;
        while self.unspooled_in_flight != [0; 2] && Instant::now() < purged_by {
            thread::sleep(Duration::from_millis(5));
            self.take_acks();
        }
        let held: Vec<(Topic, Vec<u8>, Vec<u8>)> = {
            let resend = std::mem::take(&mut self.resend);
            resend
                .into_iter()
                .filter_map(|(delivery, key, value)| match delivery {
                    Delivery::Unspooled { topic } => Some((topic, key, value)),
                    Delivery::Journaled { .. } => None,
                })
                .collect()
        };
        self.unspooled_held = 0;
        // No report came for these: librdkafka kept them; they are gone with it.
        let mut lost = std::mem::take(&mut self.unspooled_in_flight);
        for (topic, key, value) in held {
            if self.journal_one(topic, &key, &value) {
                self.metrics.event(topic, EventResult::Spooled, 1);
            } else {
                lost[topic as usize] += 1;
            }
        }
        self.metrics.events_by_topic(EventResult::Dropped, lost);
        let lost: u64 = lost.iter().sum();
        if lost > 0 {
            error!(
                message = "Events lost at shutdown: the spool could not take them and Kafka did not acknowledge them.",
                dropped = lost,
                dir = %self.spool.dir().display()
            );
        }
        let unacked = self.spool.unacknowledged();
        if let Err(error) = self.spool.seal_active() {
            error!(message = "Cannot sync the spool at shutdown.", %error);
        }
        let backlog = self.spool.backlog_bytes();
        let done = unacked == 0 && backlog == 0 && lost == 0;
        if done {
            info!(message = "Every event acknowledged by Kafka.");
        } else if unacked > 0 || backlog > 0 {
            warn!(
                message = "Events not acknowledged at shutdown stay in the spool for the next start.",
                in_flight = unacked,
                backlog_bytes = backlog,
                dir = %self.spool.dir().display()
            );
        }
        // Segments are deleted only once acknowledged: what is pending stays.
        let _ = self.spool.remove_done();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::Delivery;
    use crate::sink::Topic;

    #[test]
    fn a_delivery_token_comes_back_as_it_was_sent() {
        for delivery in [
            Delivery::Unspooled {
                topic: Topic::Clicks,
            },
            Delivery::Unspooled {
                topic: Topic::Actions,
            },
            Delivery::Journaled {
                topic: Topic::Clicks,
                segment: 1,
                replayed: false,
            },
            Delivery::Journaled {
                topic: Topic::Actions,
                segment: 1,
                replayed: true,
            },
            Delivery::Journaled {
                topic: Topic::Actions,
                segment: (usize::MAX >> 3) as u64,
                replayed: false,
            },
        ] {
            assert_eq!(Delivery::from_opaque(delivery.opaque()), delivery);
        }
    }
}
