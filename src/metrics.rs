//! Prometheus metrics (SPEC §7): every name in one place, and the handles the
//! request path uses.
//!
//! Each server owns its recorder rather than installing a global one, so several
//! servers in one process (the tests) keep separate counts. Handles are registered
//! once and kept, so the request path increments an atomic and looks nothing up.
//!
//! Why one long file: every metric name and handle in one place, by design
//! (Vector's way).

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::links::LinkCounts;
use crate::sink::Topic;

pub const REQUESTS_TOTAL: &str = "clickedge_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "clickedge_request_duration_seconds";
pub const CLICK_EVENTS_TOTAL: &str = "clickedge_click_events_total";
pub const ACTION_EVENTS_TOTAL: &str = "clickedge_action_events_total";
pub const ACTIONS_TOTAL: &str = "clickedge_actions_total";
pub const SPOOL_SIZE_BYTES: &str = "clickedge_spool_size_bytes";
/// `--spool-max-bytes`, so alerts can say how full the spool is.
pub const SPOOL_MAX_BYTES: &str = "clickedge_spool_max_bytes";
pub const SPOOL_SEGMENTS: &str = "clickedge_spool_segments";
/// Bytes in the spool not yet sent to Kafka: what replay still has to do.
pub const SPOOL_BACKLOG_BYTES: &str = "clickedge_spool_backlog_bytes";
pub const SPOOL_CORRUPT_RECORDS_TOTAL: &str = "clickedge_spool_corrupt_records_total";
pub const KAFKA_QUEUE_MESSAGES: &str = "clickedge_kafka_queue_messages";
pub const KAFKA_BROKER_UP: &str = "clickedge_kafka_broker_up";
/// Producers replaced after a fatal error (fenced, out of sequence).
pub const KAFKA_PRODUCER_RENEWALS_TOTAL: &str = "clickedge_kafka_producer_renewals_total";
pub const LINKS: &str = "clickedge_links";
pub const LINKS_RELOADS_TOTAL: &str = "clickedge_links_reloads_total";
pub const LINKS_LAST_RELOAD_TIMESTAMP_SECONDS: &str =
    "clickedge_links_last_reload_timestamp_seconds";
pub const CONNECTIONS_ACTIVE: &str = "clickedge_connections_active";
/// Connections turned away at `--max-connections`, and closed by a timeout.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "clickedge_connections_refused_total";
pub const CONNECTIONS_TIMED_OUT_TOTAL: &str = "clickedge_connections_timed_out_total";
pub const BUILD_INFO: &str = "clickedge_build_info";
/// How stale the links topic's changes may be: 0 while the topic is read to its
/// end with the broker answering. Only with `--links-topic`.
pub const LINKS_TOPIC_LAG_SECONDS: &str = "clickedge_links_topic_lag_seconds";
pub const TLS_CERTIFICATES: &str = "clickedge_tls_certificates";
pub const GEOIP_INFO: &str = "clickedge_geoip_info";
pub const TLS_RELOADS_TOTAL: &str = "clickedge_tls_reloads_total";
/// Rendered by the certificate store itself (one series per loaded certificate).
pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "clickedge_tls_certificate_expiry_timestamp_seconds";

/// The `# HELP` text of every family, as Prometheus shows it to whoever reads a
/// scrape or builds a dashboard.
const HELP: &[(&str, &str)] = &[
    (REQUESTS_TOTAL, "Requests answered on the edge listeners, by record type, outcome and status."),
    (REQUEST_DURATION_SECONDS, "Time to answer an edge request, from its head parsed to its response built (the action endpoints are not in it: their time includes the upload)."),
    (CLICK_EVENTS_TOTAL, "Click events by what happened to them: queued to Kafka, delivered, spooled to disk, replayed from the spool, failed (and sent again), dropped (lost)."),
    (ACTION_EVENTS_TOTAL, "Action events (action.v1) by what happened to them, as for click events: queued, delivered, spooled, replayed, failed, dropped."),
    (ACTIONS_TOTAL, "Action reports by channel (api, pixel, tag) and result: accepted (an event each), rejected (invalid: no event), unauthorized (no or a wrong key)."),
    (SPOOL_SIZE_BYTES, "Bytes of the disk spool's segment files."),
    (SPOOL_MAX_BYTES, "The spool's bound (--spool-max-bytes); beyond it new events are dropped."),
    (SPOOL_SEGMENTS, "Segment files in the spool."),
    (SPOOL_BACKLOG_BYTES, "Bytes in the spool not yet sent to Kafka: what replay still has to do."),
    (SPOOL_CORRUPT_RECORDS_TOTAL, "Torn or corrupt records found in the spool and skipped."),
    (KAFKA_QUEUE_MESSAGES, "Messages in the Kafka producer's queue, not yet acknowledged."),
    (KAFKA_BROKER_UP, "1 while the broker answers for both event topics (clicks and actions), else 0."),
    (KAFKA_PRODUCER_RENEWALS_TOTAL, "Kafka producers replaced after a fatal error (fenced by the broker, or out of sequence); their messages were sent again."),
    (LINKS, "Records in the link map, by type."),
    (LINKS_RELOADS_TOTAL, "Loads of the links file, by result; a failed one keeps the previous map."),
    (LINKS_LAST_RELOAD_TIMESTAMP_SECONDS, "When the links file was last loaded successfully (Unix time)."),
    (CONNECTIONS_ACTIVE, "Open connections, by listener."),
    (CONNECTIONS_REFUSED_TOTAL, "Connections turned away at --max-connections, by listener."),
    (CONNECTIONS_TIMED_OUT_TOTAL, "Connections closed by a timeout: header, idle, handshake or send."),
    (BUILD_INFO, "Always 1; the version of the running build as a label."),
    (LINKS_TOPIC_LAG_SECONDS, "Seconds since the links topic was last known read to its end with the broker answering (0 while it is); since start when never."),
    (TLS_CERTIFICATES, "Certificates loaded for the HTTPS listener."),
    (GEOIP_INFO, "1 for the GeoIP database in service (--geoip-db), by its type and build time (Unix seconds); 0 for one a reload replaced."),
    (TLS_RELOADS_TOTAL, "Loads of the certificate directory, by result; a failed one keeps the previous set."),
    (TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, "When each loaded certificate expires (Unix time), by the name it was loaded under."),
];

/// The `# HELP` text of `name`.
pub fn help(name: &str) -> &'static str {
    HELP.iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, text)| text)
}

/// Redirects are answered in tens of microseconds; the upper buckets catch stalls.
const DURATION_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// What happened to an event (`clickedge_click_events_total{result}`, and the
/// same for actions in `clickedge_action_events_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    /// Handed to the producer's queue (sent live, replayed, or sent again).
    Queued,
    /// Acknowledged by the broker, sent live.
    Delivered,
    /// Kept in the disk spool to be replayed (broker down, queue full, backlog).
    Spooled,
    /// Acknowledged by the broker, sent from the spool.
    Replayed,
    /// Lost: the spool was full or the pump did not keep up. Always logged.
    Dropped,
    /// A delivery that failed; the event is sent again.
    Failed,
}

impl EventResult {
    const ALL: [EventResult; 6] = [
        EventResult::Queued,
        EventResult::Delivered,
        EventResult::Spooled,
        EventResult::Replayed,
        EventResult::Dropped,
        EventResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Queued => "queued",
            EventResult::Delivered => "delivered",
            EventResult::Spooled => "spooled",
            EventResult::Replayed => "replayed",
            EventResult::Dropped => "dropped",
            EventResult::Failed => "failed",
        }
    }
}

/// How an action reached the edge: the `channel` of `action.v1` and of
/// `clickedge_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionChannel {
    /// `POST /v1/actions` with a key.
    Api,
    /// `/v1/px` from a page's own pixel or beacon.
    Pixel,
    /// `/v1/px` sent by the first-party tag (`clickedge.track`).
    Tag,
}

impl ActionChannel {
    const ALL: [ActionChannel; 3] = [ActionChannel::Api, ActionChannel::Pixel, ActionChannel::Tag];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionChannel::Api => "api",
            ActionChannel::Pixel => "pixel",
            ActionChannel::Tag => "tag",
        }
    }
}

/// The `result` of `clickedge_actions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    Accepted,
    Rejected,
    Unauthorized,
}

impl ActionResult {
    const ALL: [ActionResult; 3] = [
        ActionResult::Accepted,
        ActionResult::Rejected,
        ActionResult::Unauthorized,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ActionResult::Accepted => "accepted",
            ActionResult::Rejected => "rejected",
            ActionResult::Unauthorized => "unauthorized",
        }
    }
}

/// The `type` label of `clickedge_requests_total`: the record type that answered, or
/// `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    Tracking,
    Vanity,
    Domain,
    Fallback,
    AppSite,
    None,
    /// The action endpoints, on a brand's hosts.
    Brand,
}

impl RequestType {
    const COUNT: usize = 7;

    fn as_str(self) -> &'static str {
        match self {
            RequestType::Tracking => "tracking",
            RequestType::Vanity => "vanity",
            RequestType::Domain => "domain",
            RequestType::Fallback => "fallback",
            RequestType::AppSite => "app_site",
            RequestType::None => "none",
            RequestType::Brand => "brand",
        }
    }
}

/// The `outcome` label of `clickedge_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Redirect,
    Interstitial,
    AppStore,
    AppSite,
    Robots,
    NotFound,
    UnknownHost,
    MethodNotAllowed,
    BadRequest,
    /// `POST /v1/actions`, whatever its answer.
    Actions,
    /// `/v1/px`.
    Pixel,
    /// `/v1/tag.js`.
    Tag,
    /// `/stat.js`, the STAT tag.
    StatScript,
}

impl Outcome {
    const COUNT: usize = 13;

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Redirect => "redirect",
            Outcome::Interstitial => "interstitial",
            Outcome::AppStore => "app_store",
            Outcome::AppSite => "app_site",
            Outcome::Robots => "robots",
            Outcome::NotFound => "not_found",
            Outcome::UnknownHost => "unknown_host",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::BadRequest => "bad_request",
            Outcome::Actions => "actions",
            Outcome::Pixel => "pixel",
            Outcome::Tag => "tag",
            Outcome::StatScript => "stat_script",
        }
    }
}

/// Statuses the edge answers with; the label must stay bounded.
const STATUSES: [(u16, &str); 14] = [
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (302, "302"),
    (304, "304"),
    (307, "307"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (413, "413"),
    (503, "503"),
    (500, "500"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Admin,
    Https,
}

/// Why a connection was closed on a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// No complete request head within `--header-read-timeout`.
    Header,
    /// Nothing received within `--idle-timeout`.
    Idle,
    /// No TLS handshake or PROXY header within `--header-read-timeout`.
    Handshake,
    /// A response the client did not read within `--send-timeout`.
    Send,
}

impl Timeout {
    const ALL: [Timeout; 4] = [
        Timeout::Header,
        Timeout::Idle,
        Timeout::Handshake,
        Timeout::Send,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Timeout::Header => "header",
            Timeout::Idle => "idle",
            Timeout::Handshake => "handshake",
            Timeout::Send => "send",
        }
    }
}

const REQUEST_SLOTS: usize = RequestType::COUNT * Outcome::COUNT * STATUSES.len();

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// One lazily registered counter per (type, outcome, status).
    requests: Box<[OnceLock<Counter>]>,
    request_duration: Histogram,
    /// By topic (clicks, actions), then result.
    events: [[Counter; 6]; 2],
    /// By channel, then result.
    actions: [[Counter; 3]; 3],
    pub spool_size_bytes: Gauge,
    pub spool_max_bytes: Gauge,
    pub spool_segments: Gauge,
    pub spool_backlog_bytes: Gauge,
    pub spool_corrupt_records: Counter,
    pub kafka_queue_messages: Gauge,
    pub kafka_broker_up: Gauge,
    kafka_producer_renewals: Counter,
    links: [Gauge; 7],
    reloads_success: Counter,
    reloads_error: Counter,
    last_reload: Gauge,
    connections: [Gauge; 3],
    connections_refused: [Counter; 3],
    /// By [`Timeout`]: the request head, the idle connection, the TLS handshake,
    /// the unread response.
    connections_timed_out: [Counter; 4],
    tls_certificates: Gauge,
    tls_reloads_success: Counter,
    tls_reloads_error: Counter,
    /// Registered on first use, so an edge without `--links-topic` has none.
    links_topic_lag: OnceLock<Gauge>,
    /// The GeoIP database in service's info gauge (its labels change with it).
    geoip_info: std::sync::Mutex<Option<Gauge>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
                DURATION_BUCKETS,
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        for (name, text) in HELP {
            // The exporter writes one HELP line per family, whatever its type.
            recorder.describe_counter(KeyName::from_const_str(name), None, (*text).into());
        }
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &metadata())
        };
        let gauge = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_gauge(&key(name, labels), &metadata())
        };
        let events = [CLICK_EVENTS_TOTAL, ACTION_EVENTS_TOTAL]
            .map(|family| EventResult::ALL.map(|r| counter(family, &[("result", r.as_str())])));
        let actions = ActionChannel::ALL.map(|channel| {
            ActionResult::ALL.map(|result| {
                counter(
                    ACTIONS_TOTAL,
                    &[("channel", channel.as_str()), ("result", result.as_str())],
                )
            })
        });
        let links = [
            "tracking", "vanity", "domain", "fallback", "app_site", "brand", "promo",
        ]
        .map(|t| gauge(LINKS, &[("type", t)]));
        let connections =
            ["http", "admin", "https"].map(|l| gauge(CONNECTIONS_ACTIVE, &[("listener", l)]));
        let connections_refused = ["http", "admin", "https"]
            .map(|l| counter(CONNECTIONS_REFUSED_TOTAL, &[("listener", l)]));
        let connections_timed_out =
            Timeout::ALL.map(|t| counter(CONNECTIONS_TIMED_OUT_TOTAL, &[("timeout", t.as_str())]));
        gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        let metrics = Metrics {
            requests: (0..REQUEST_SLOTS).map(|_| OnceLock::new()).collect(),
            request_duration: recorder.register_histogram(
                &Key::from_static_name(REQUEST_DURATION_SECONDS),
                &metadata(),
            ),
            events,
            actions,
            spool_size_bytes: gauge(SPOOL_SIZE_BYTES, &[]),
            spool_max_bytes: gauge(SPOOL_MAX_BYTES, &[]),
            spool_segments: gauge(SPOOL_SEGMENTS, &[]),
            spool_backlog_bytes: gauge(SPOOL_BACKLOG_BYTES, &[]),
            spool_corrupt_records: counter(SPOOL_CORRUPT_RECORDS_TOTAL, &[]),
            kafka_queue_messages: gauge(KAFKA_QUEUE_MESSAGES, &[]),
            kafka_broker_up: gauge(KAFKA_BROKER_UP, &[]),
            kafka_producer_renewals: counter(KAFKA_PRODUCER_RENEWALS_TOTAL, &[]),
            links,
            reloads_success: counter(LINKS_RELOADS_TOTAL, &[("result", "success")]),
            reloads_error: counter(LINKS_RELOADS_TOTAL, &[("result", "error")]),
            last_reload: gauge(LINKS_LAST_RELOAD_TIMESTAMP_SECONDS, &[]),
            connections,
            connections_refused,
            connections_timed_out,
            tls_certificates: gauge(TLS_CERTIFICATES, &[]),
            tls_reloads_success: counter(TLS_RELOADS_TOTAL, &[("result", "success")]),
            tls_reloads_error: counter(TLS_RELOADS_TOTAL, &[("result", "error")]),
            links_topic_lag: OnceLock::new(),
            geoip_info: std::sync::Mutex::new(None),
            handle,
            recorder,
        };
        Arc::new(metrics)
    }

    /// Counts an answered request and its duration.
    pub fn request(&self, kind: RequestType, outcome: Outcome, status: u16, seconds: f64) {
        self.answered(kind, outcome, status);
        self.request_duration.record(seconds);
    }

    /// Counts an answered request whose time says nothing of the edge: an
    /// action report's includes its upload (a 1 MiB batch from a slow
    /// network), which would drown the redirects' latency.
    pub fn answered(&self, kind: RequestType, outcome: Outcome, status: u16) {
        let status_index = STATUSES
            .iter()
            .position(|(code, _)| *code == status)
            .unwrap_or(STATUSES.len() - 1);
        let slot =
            (kind as usize * Outcome::COUNT + outcome as usize) * STATUSES.len() + status_index;
        self.requests[slot]
            .get_or_init(|| {
                self.recorder.register_counter(
                    &key(
                        REQUESTS_TOTAL,
                        &[
                            ("type", kind.as_str()),
                            ("outcome", outcome.as_str()),
                            ("status", STATUSES[status_index].1),
                        ],
                    ),
                    &metadata(),
                )
            })
            .increment(1);
    }

    pub fn kafka_producer_renewed(&self) {
        self.kafka_producer_renewals.increment(1);
    }

    pub fn event(&self, topic: Topic, result: EventResult, count: u64) {
        self.events[topic as usize][result as usize].increment(count);
    }

    /// Counts events of both topics at once (`counts` by [`Topic`]), skipping
    /// a topic with none.
    pub fn events_by_topic(&self, result: EventResult, counts: [u64; 2]) {
        for topic in Topic::ALL {
            if counts[topic as usize] > 0 {
                self.event(topic, result, counts[topic as usize]);
            }
        }
    }

    /// Counts `count` action reports of a request on `channel`.
    pub fn actions(&self, channel: ActionChannel, result: ActionResult, count: u64) {
        self.actions[channel as usize][result as usize].increment(count);
    }

    /// Records a (re)load of the link map.
    pub fn links_loaded(&self, counts: LinkCounts, unix_seconds: f64) {
        self.links_changed(counts);
        self.reloads_success.increment(1);
        self.last_reload.set(unix_seconds);
    }

    /// Updates the record counts after a change from the API or the links topic
    /// (not a reload: the reload counters stay as they are).
    pub fn links_changed(&self, counts: LinkCounts) {
        let values = [
            counts.tracking,
            counts.vanity,
            counts.domain,
            counts.fallback,
            counts.app_site,
            counts.brand,
            counts.promo,
        ];
        for (gauge, value) in self.links.iter().zip(values) {
            gauge.set(value as f64);
        }
    }

    pub fn links_load_failed(&self) {
        self.reloads_error.increment(1);
    }

    /// Records a (re)load of the certificate directory.
    pub fn tls_loaded(&self, certificates: Option<usize>) {
        match certificates {
            Some(count) => {
                self.tls_certificates.set(count as f64);
                self.tls_reloads_success.increment(1);
            }
            None => self.tls_reloads_error.increment(1),
        }
    }

    pub fn connection_opened(&self, listener: Listener) {
        self.connections[listener as usize].increment(1.0);
    }

    pub fn connection_closed(&self, listener: Listener) {
        self.connections[listener as usize].decrement(1.0);
    }

    /// A connection beyond `--max-connections`, closed at once.
    pub fn connection_refused(&self, listener: Listener) {
        self.connections_refused[listener as usize].increment(1);
    }

    pub fn connection_timed_out(&self, timeout: Timeout) {
        self.connections_timed_out[timeout as usize].increment(1);
    }

    /// How stale the links topic's changes are, in seconds.
    pub fn links_topic_lag(&self, seconds: f64) {
        self.links_topic_lag
            .get_or_init(|| {
                self.recorder
                    .register_gauge(&Key::from_static_name(LINKS_TOPIC_LAG_SECONDS), &metadata())
            })
            .set(seconds);
    }

    /// A GeoIP database went into service: its info gauge 1, the previous 0.
    pub fn geoip_loaded(&self, database: &str, build_epoch: u64) {
        let key = Key::from_parts(
            GEOIP_INFO,
            vec![
                Label::new("database", database.to_owned()),
                Label::new("build_epoch", build_epoch.to_string()),
            ],
        );
        let gauge = self.recorder.register_gauge(&key, &metadata());
        let mut current = self.geoip_info.lock().expect("geoip gauge lock");
        if let Some(previous) = current.replace(gauge.clone()) {
            previous.set(0.0);
        }
        gauge.set(1.0);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; must run periodically, or
    /// samples pile up between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::from_static_parts(k, v))
        .collect();
    Key::from_parts(name, labels)
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels_and_a_bucketed_histogram() {
        let m = Metrics::new();
        m.request(RequestType::Tracking, Outcome::Redirect, 302, 0.0001);
        m.request(RequestType::Tracking, Outcome::Redirect, 302, 0.0001);
        m.request(RequestType::None, Outcome::UnknownHost, 404, 0.00001);
        m.event(Topic::Clicks, EventResult::Queued, 3);
        m.upkeep();
        let text = m.render();
        assert!(
            text.contains(
                r#"clickedge_requests_total{type="tracking",outcome="redirect",status="302"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"clickedge_click_events_total{result="queued"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"clickedge_click_events_total{result="dropped"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("clickedge_request_duration_seconds_bucket{le=\"0.00025\"} 3"),
            "{text}"
        );
        assert!(
            !text.contains("quantile"),
            "a histogram, not a summary: {text}"
        );
        assert!(text.contains(r#"clickedge_build_info{version=""#), "{text}");
    }

    /// Issue 13, item 5: every family a scrape shows has a HELP line (the real
    /// check, `promtool check metrics` on a live edge's scrape, is in tests/it).
    #[test]
    fn every_family_has_help() {
        let m = Metrics::new();
        m.request(RequestType::Tracking, Outcome::Redirect, 302, 0.0001);
        m.upkeep();
        let text = m.render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert!(families.len() >= 19, "{text}");
        for family in families {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} has no HELP:\n{text}"
            );
            assert!(!help(family).is_empty(), "{family}");
        }
    }

    #[test]
    fn servers_do_not_share_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.event(Topic::Clicks, EventResult::Dropped, 1);
        assert!(a.render().contains(r#"result="dropped"} 1"#));
        assert!(b.render().contains(r#"result="dropped"} 0"#));
    }
}
