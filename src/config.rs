//! Flags (each with a `CLICKEDGE_*` environment variable; the command line wins)
//! turned into a validated [`Config`], in this one place. Nothing here binds a socket
//! or reads the links file, so a bad configuration fails before anything starts.
//!
//! Why one long file: every flag is declared here with its help text and validated
//! here, by design (one place to read).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser};

use crate::links::{is_query_name, LinksSource};
use crate::sink::{KafkaSettings, SpoolSettings};

/// The edge's flags alone (the binary adds its subcommands around them).
#[derive(Debug, Parser)]
#[command(name = "clickedge")]
struct EdgeArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// `--kafka-option`, declared once for the edge and `clickedge consume`.
#[derive(Debug, Args, Clone, Default)]
pub struct KafkaOptions {
    /// A librdkafka setting, `key=value` (repeatable; in the environment variable,
    /// separate several with `;`), e.g. for SASL or TLS.
    #[arg(
        long = "kafka-option",
        env = "CLICKEDGE_KAFKA_OPTION",
        value_name = "KEY=VALUE",
        value_delimiter = ';'
    )]
    pub kafka_options: Vec<String>,
}

impl KafkaOptions {
    /// The settings as (key, value), empty entries skipped.
    pub fn parsed(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.kafka_options
            .iter()
            .filter(|o| !o.trim().is_empty())
            .map(|o| parse_kafka_option(o))
            .collect()
    }
}

/// The edge's flags, as given.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Address of the plain HTTP listener.
    #[arg(
        long,
        env = "CLICKEDGE_HTTP",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub http: String,

    /// Address of the HTTPS listener (on when --tls-certs is given; default
    /// 127.0.0.1:8443 then).
    #[arg(long, env = "CLICKEDGE_HTTPS", value_name = "ADDR")]
    pub https: Option<String>,

    /// Directory of certificates: NAME.crt + NAME.key pairs, or folders holding
    /// tls.crt + tls.key (mounted Kubernetes TLS Secrets). Chosen by SNI against
    /// the names inside them; reloaded on SIGHUP and when the files change.
    #[arg(long, env = "CLICKEDGE_TLS_CERTS", value_name = "DIR")]
    pub tls_certs: Option<PathBuf>,

    /// Peers whose X-Forwarded-For / Forwarded headers are believed (CIDRs or
    /// addresses, comma-separated), e.g. the load balancers' subnet.
    #[arg(
        long,
        env = "CLICKEDGE_TRUSTED_PROXIES",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// The one forwarding header believed from --trusted-proxies peers:
    /// `x-forwarded-for` or `forwarded` (RFC 7239). The other is ignored, so a
    /// client cannot pass its own through a proxy that only appends to the first.
    #[arg(
        long,
        env = "CLICKEDGE_CLIENT_IP_HEADER",
        default_value = "x-forwarded-for",
        value_name = "HEADER"
    )]
    pub client_ip_header: String,

    /// Expect a PROXY protocol (v1 or v2) header on every connection of the
    /// --http and --https listeners, as AWS NLB and HAProxy send it.
    #[arg(long, env = "CLICKEDGE_PROXY_PROTOCOL", value_parser = BoolishValueParser::new())]
    pub proxy_protocol: bool,

    /// Connections served at once on each of --http and --https; one more is
    /// answered 503 (HTTP) or closed (HTTPS) at once and counted. Default: 50000,
    /// or fewer if the open-file limit cannot hold that many.
    #[arg(long, env = "CLICKEDGE_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<usize>,

    /// Edge worker threads: each runs its own single-threaded runtime and its own
    /// listening sockets (SO_REUSEPORT), and serves its connections start to end.
    /// Default: the CPUs this process may run on.
    #[arg(long, env = "CLICKEDGE_WORKERS", value_name = "COUNT")]
    pub workers: Option<usize>,

    /// Time a client has to send a complete request head, counted from the
    /// connection's start or the previous response (so it is also HTTP/1's
    /// keep-alive idle timeout); the TLS handshake and the PROXY header get as long.
    #[arg(
        long,
        env = "CLICKEDGE_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub header_read_timeout: String,

    /// A connection that receives nothing for this long is closed: HTTP/2
    /// connections with no streams, stalled request bodies.
    #[arg(
        long,
        env = "CLICKEDGE_IDLE_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub idle_timeout: String,

    /// A response the client does not read for this long (its receive window
    /// full, e.g. a client pipelining requests and never reading) closes the
    /// connection.
    #[arg(
        long,
        env = "CLICKEDGE_SEND_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub send_timeout: String,

    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(
        long,
        env = "CLICKEDGE_ADMIN",
        default_value = "127.0.0.1:9090",
        value_name = "ADDR"
    )]
    pub admin: String,

    /// Links file (NDJSON). Without it, the embedded sample links are served.
    #[arg(long, env = "CLICKEDGE_LINKS", value_name = "FILE")]
    pub links: Option<PathBuf>,

    /// Refuse a links file with any invalid record (by default invalid records are
    /// reported and skipped).
    #[arg(long, env = "CLICKEDGE_STRICT", value_parser = BoolishValueParser::new())]
    pub strict: bool,

    /// Validate the configuration and the links file, then exit.
    #[arg(long, env = "CLICKEDGE_CHECK", value_parser = BoolishValueParser::new())]
    pub check: bool,

    /// A MaxMind DB (GeoLite2-Country or any database with country.iso_code):
    /// the client's country for link rules and click events. Reloaded with the
    /// links (SIGHUP, POST /admin/reload).
    #[arg(long, env = "CLICKEDGE_GEOIP_DB", value_name = "FILE")]
    pub geoip_db: Option<PathBuf>,

    /// A compacted Kafka topic of link records applied live on top of the file
    /// (key: the record key as text; value: the NDJSON record; empty: delete).
    #[arg(long, env = "CLICKEDGE_LINKS_TOPIC", value_name = "TOPIC")]
    pub links_topic: Option<String>,

    /// How long a start waits to read the links topic to its end before it is
    /// ready anyway, serving the file plus the topic's last snapshot (kept beside
    /// the spool): a broker outage must not keep new nodes out of rotation.
    #[arg(
        long,
        env = "CLICKEDGE_LINKS_TOPIC_READY_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub links_topic_ready_timeout: String,

    /// Bearer token of the admin API's endpoints; without it, the write endpoints
    /// answer 403. Prefer the environment variable over the command line.
    #[arg(
        long,
        env = "CLICKEDGE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Kafka bootstrap servers. Without it, an embedded development Kafka is started.
    #[arg(long, env = "CLICKEDGE_KAFKA_BROKERS", value_name = "HOST:PORT,...")]
    pub kafka_brokers: Option<String>,

    /// Topic of the click events.
    #[arg(
        long,
        env = "CLICKEDGE_KAFKA_TOPIC",
        default_value = "clicks",
        value_name = "TOPIC"
    )]
    pub kafka_topic: String,

    /// Topic of the action events (conversions brands report).
    #[arg(
        long,
        env = "CLICKEDGE_ACTIONS_TOPIC",
        default_value = "actions",
        value_name = "TOPIC"
    )]
    pub actions_topic: String,

    #[command(flatten)]
    pub kafka_options: KafkaOptions,

    /// Written into every event as `node` (default: the host name).
    #[arg(long, env = "CLICKEDGE_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// Query parameter that carries the click id to the destination.
    #[arg(
        long,
        env = "CLICKEDGE_CLICK_ID_PARAM",
        default_value = "clickid",
        value_name = "NAME"
    )]
    pub click_id_param: String,

    /// Neither set nor read the `ce_vid` visitor cookie.
    #[arg(long, env = "CLICKEDGE_NO_VISITOR_COOKIE", value_parser = BoolishValueParser::new())]
    pub no_visitor_cookie: bool,

    /// Directory of the disk spool (every event is written there until Kafka
    /// acknowledges it; leftovers are replayed at start).
    #[arg(
        long,
        env = "CLICKEDGE_SPOOL_DIR",
        default_value = "/var/tmp/clickedge/spool",
        value_name = "DIR"
    )]
    pub spool_dir: PathBuf,

    /// Bound of the spool on disk; beyond it new events are dropped (and counted),
    /// e.g. `1GiB`, `512MiB`.
    #[arg(
        long,
        env = "CLICKEDGE_SPOOL_MAX_BYTES",
        default_value = "1GiB",
        value_name = "SIZE"
    )]
    pub spool_max_bytes: String,

    /// How often the spool is fsynced: a machine crash loses at most this much.
    #[arg(
        long,
        env = "CLICKEDGE_SPOOL_FSYNC_INTERVAL",
        default_value = "200ms",
        value_name = "DURATION"
    )]
    pub spool_fsync_interval: String,

    /// Spooled events replayed per second at most, so replay never starves redirects
    /// (0: unlimited). Keep it above the node's click rate so a backlog drains.
    #[arg(
        long,
        env = "CLICKEDGE_SPOOL_REPLAY_RATE",
        default_value = "50000",
        value_name = "EVENTS"
    )]
    pub spool_replay_rate: u64,

    /// How long shutdown waits for in-flight requests, then for Kafka to acknowledge
    /// queued events (each), e.g. `10s`, `500ms`.
    #[arg(
        long,
        env = "CLICKEDGE_SHUTDOWN_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub shutdown_timeout: String,
}

/// The validated configuration of one edge.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which forwarding header names the client, from a trusted peer.
    pub client_ip_header: ClientIpHeader,
    pub proxy_protocol: bool,
    /// The HTTPS listener and its certificate directory, when TLS is on.
    pub https: Option<(SocketAddr, PathBuf)>,
    pub admin: SocketAddr,
    pub links: LinksSource,
    pub strict: bool,
    pub check: bool,
    /// `--geoip-db`: opened at start, reloaded with the links.
    pub geoip_db: Option<PathBuf>,
    pub kafka: KafkaSettings,
    pub spool: SpoolSettings,
    /// Empty tokens are refused: a token nobody can guess must be chosen.
    pub admin_token: Option<String>,
    pub node_id: String,
    pub click_id_param: String,
    pub visitor_cookie: bool,
    pub shutdown_timeout: Duration,
    /// `--max-connections`, per edge listener; `None`: fit the open-file limit.
    pub max_connections: Option<usize>,
    /// `--workers`: edge threads, each with its own runtime and sockets.
    pub workers: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    /// `--links-topic-ready-timeout`.
    pub links_topic_ready_timeout: Duration,
}

/// `--client-ip-header`: the forwarding header a trusted proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default: what load
    /// balancers append).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} {value:?} is not a socket address (like 127.0.0.1:8080 or [::]:8080)")]
    Address { flag: &'static str, value: String },
    #[error("--kafka-option {0:?} must be key=value")]
    KafkaOption(String),
    #[error("{0:?} is not a Kafka topic name (1-249 characters of [A-Za-z0-9._-])")]
    Topic(String),
    #[error("--actions-topic and --kafka-topic are both {0:?}: actions and clicks need topics of their own (their consumers read different schemas)")]
    SameTopic(String),
    #[error("--trusted-proxies {0:?} is not an address or CIDR (like 10.0.0.0/8)")]
    TrustedProxy(String),
    #[error("--https needs --tls-certs (a directory of certificates)")]
    HttpsWithoutCerts,
    #[error("--admin-token must be at least 16 characters")]
    AdminToken,
    #[error("--kafka-brokers is empty")]
    Brokers,
    #[error("--click-id-param {0:?} must be 1-64 characters of [A-Za-z0-9_.-]")]
    ClickIdParam(String),
    #[error("--node-id {0:?} must be 1-255 printable characters")]
    NodeId(String),
    #[error("--{flag} {value:?} is not a duration (like 10s, 500ms or 1m)")]
    Duration { flag: &'static str, value: String },
    #[error("--{flag} {value:?} must be more than zero")]
    Zero { flag: &'static str, value: String },
    #[error("--{flag} {value:?} is too long (at most 24h)")]
    TooLong { flag: &'static str, value: String },
    #[error("--spool-dir: {0}")]
    SpoolDir(crate::sink::SpoolError),
    #[error("--client-ip-header {0:?} must be x-forwarded-for or forwarded")]
    ClientIpHeader(String),
    #[error(
        "--spool-max-bytes {0:?} is not a size (like 1GiB, 512MiB or 1000000; at least 64KiB)"
    )]
    Size(String),
}

impl Config {
    /// Validates raw flags.
    pub fn from_args(args: RunArgs) -> Result<Config, ConfigError> {
        let address = |flag: &'static str, value: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::Address {
                    flag,
                    value: value.to_owned(),
                })
        };
        let http = address("http", &args.http)?;
        let admin = address("admin", &args.admin)?;
        let trusted_proxies = args
            .trusted_proxies
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| ConfigError::TrustedProxy(s.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client_ip_header = match args.client_ip_header.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ClientIpHeader::XForwardedFor,
            "forwarded" => ClientIpHeader::Forwarded,
            _ => return Err(ConfigError::ClientIpHeader(args.client_ip_header)),
        };
        let https = match (&args.https, args.tls_certs) {
            (_, Some(dir)) => Some((
                address("https", args.https.as_deref().unwrap_or("127.0.0.1:8443"))?,
                dir,
            )),
            (Some(_), None) => return Err(ConfigError::HttpsWithoutCerts),
            (None, None) => None,
        };

        let brokers = match args.kafka_brokers {
            Some(b) if b.trim().is_empty() => return Err(ConfigError::Brokers),
            other => other,
        };
        let topic = args.kafka_topic;
        if !is_topic_name(&topic) {
            return Err(ConfigError::Topic(topic));
        }
        let actions_topic = args.actions_topic;
        for name in std::iter::once(&actions_topic).chain(&args.links_topic) {
            if !is_topic_name(name) {
                return Err(ConfigError::Topic(name.clone()));
            }
        }
        if actions_topic == topic {
            return Err(ConfigError::SameTopic(topic));
        }
        if args.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError::AdminToken);
        }
        let options = args.kafka_options.parsed()?;

        let node_id = match args.node_id {
            Some(id) => id,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        if node_id.is_empty() || node_id.len() > 255 || node_id.chars().any(char::is_control) {
            return Err(ConfigError::NodeId(node_id));
        }
        if !is_query_name(&args.click_id_param) {
            return Err(ConfigError::ClickIdParam(args.click_id_param));
        }
        // Bounded, so no deadline computed from a duration can overflow a clock.
        let duration = |flag: &'static str, value: &str| match parse_duration(value) {
            None => Err(ConfigError::Duration {
                flag,
                value: value.to_owned(),
            }),
            Some(d) if d > MAX_DURATION => Err(ConfigError::TooLong {
                flag,
                value: value.to_owned(),
            }),
            Some(d) => Ok(d),
        };
        let shutdown_timeout = duration("shutdown-timeout", &args.shutdown_timeout)?;
        // A zero would close every connection at once: refused, not taken literally.
        let positive = |flag: &'static str, value: &str| match duration(flag, value)? {
            Duration::ZERO => Err(ConfigError::Zero {
                flag,
                value: value.to_owned(),
            }),
            positive => Ok(positive),
        };
        let header_read_timeout = positive("header-read-timeout", &args.header_read_timeout)?;
        let idle_timeout = positive("idle-timeout", &args.idle_timeout)?;
        let send_timeout = positive("send-timeout", &args.send_timeout)?;
        let links_topic_ready_timeout =
            duration("links-topic-ready-timeout", &args.links_topic_ready_timeout)?;
        let nonzero = |flag, count: Option<usize>| match count {
            Some(0) => Err(ConfigError::Zero {
                flag,
                value: "0".to_owned(),
            }),
            count => Ok(count),
        };
        let max_connections = nonzero("max-connections", args.max_connections)?;
        let workers = nonzero("workers", args.workers)?
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let fsync_interval = duration("spool-fsync-interval", &args.spool_fsync_interval)?;
        // Replayed segments become click events: nobody else may write there.
        crate::sink::check_spool_dir(&args.spool_dir).map_err(ConfigError::SpoolDir)?;
        let max_bytes = parse_size(&args.spool_max_bytes)
            .filter(|bytes| *bytes >= 64 * 1024)
            .ok_or_else(|| ConfigError::Size(args.spool_max_bytes.clone()))?;

        Ok(Config {
            http,
            trusted_proxies,
            client_ip_header,
            proxy_protocol: args.proxy_protocol,
            https,
            admin,
            links: args.links.map_or(LinksSource::Sample, LinksSource::File),
            geoip_db: args.geoip_db,
            strict: args.strict,
            check: args.check,
            kafka: KafkaSettings {
                brokers,
                topic,
                actions_topic,
                options,
                client_id: format!("clickedge-{node_id}"),
                links_topic: args.links_topic,
            },
            spool: SpoolSettings {
                dir: args.spool_dir,
                max_bytes,
                fsync_interval,
                replay_rate: args.spool_replay_rate,
            },
            admin_token: args.admin_token,
            node_id,
            click_id_param: args.click_id_param,
            visitor_cookie: !args.no_visitor_cookie,
            shutdown_timeout,
            max_connections,
            workers,
            header_read_timeout,
            idle_timeout,
            send_timeout,
            links_topic_ready_timeout,
        })
    }

    /// Parses and validates a command line (`argv[0]` first) as `main` would, for the
    /// edge itself (not a subcommand).
    pub fn from_argv<I, T>(argv: I) -> anyhow::Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = EdgeArgs::try_parse_from(argv)?;
        Ok(Config::from_args(args.run)?)
    }
}

/// The longest duration any flag takes: a day is beyond every sensible timeout.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn is_topic_name(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && topic != "."
        && topic != ".."
}

fn parse_kafka_option(option: &str) -> Result<(String, String), ConfigError> {
    match option.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(ConfigError::KafkaOption(option.to_owned())),
    }
}

/// `1GiB`, `512MiB`, `64KiB`, `100MB`, `1G`, or a bare number of bytes.
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    // `try_`: a number too large for a Duration is refused, not a panic.
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_defaults() {
        let c = Config::from_argv(["clickedge"]).unwrap();
        assert_eq!(c.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.kafka.topic, "clicks");
        assert_eq!(c.kafka.actions_topic, "actions");
        assert_eq!(c.kafka.brokers, None);
        assert_eq!(c.click_id_param, "clickid");
        assert!(c.visitor_cookie);
        assert_eq!(c.links, LinksSource::Sample);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.spool.max_bytes, 1 << 30);
        assert_eq!(c.spool.fsync_interval, Duration::from_millis(200));
        assert!(!c.node_id.is_empty());
        assert_eq!(c.max_connections, None);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (argv, needle) in [
            (vec!["clickedge", "--http", "localhost"], "--http"),
            (
                vec!["clickedge", "--kafka-option", "novalue"],
                "--kafka-option",
            ),
            (
                vec!["clickedge", "--kafka-topic", "a b"],
                "not a Kafka topic name",
            ),
            (
                vec!["clickedge", "--links-topic", "a/b"],
                "not a Kafka topic name",
            ),
            (
                vec!["clickedge", "--actions-topic", "a:b"],
                "not a Kafka topic name",
            ),
            (
                vec!["clickedge", "--actions-topic", "clicks"],
                "--actions-topic and --kafka-topic are both",
            ),
            (vec!["clickedge", "--admin-token", "short"], "--admin-token"),
            (
                vec!["clickedge", "--click-id-param", "a&b"],
                "--click-id-param",
            ),
            (
                vec!["clickedge", "--shutdown-timeout", "soon"],
                "--shutdown-timeout",
            ),
            (vec!["clickedge", "--kafka-brokers", " "], "--kafka-brokers"),
            (
                vec!["clickedge", "--spool-max-bytes", "12"],
                "--spool-max-bytes",
            ),
            (
                vec!["clickedge", "--spool-fsync-interval", "often"],
                "--spool-fsync-interval",
            ),
            (
                vec!["clickedge", "--max-connections", "0"],
                "--max-connections \"0\" must be more than zero",
            ),
            (
                vec!["clickedge", "--workers", "0"],
                "--workers \"0\" must be more than zero",
            ),
            (
                vec!["clickedge", "--header-read-timeout", "0s"],
                "--header-read-timeout \"0s\" must be more than zero",
            ),
            (
                vec!["clickedge", "--idle-timeout", "forever"],
                "--idle-timeout",
            ),
            (
                vec!["clickedge", "--send-timeout", "0"],
                "--send-timeout \"0\" must be more than zero",
            ),
            (
                vec!["clickedge", "--client-ip-header", "x-real-ip"],
                "--client-ip-header",
            ),
        ] {
            let err = Config::from_argv(argv.clone()).unwrap_err();
            assert!(err.to_string().contains(needle), "{argv:?}: {err}");
        }
    }

    /// Numbers beyond what a `Duration` or a day holds are refused with the flag
    /// named, never a panic (`Duration::from_secs_f64` panics on them).
    #[test]
    fn every_duration_and_size_flag_refuses_huge_values() {
        for flag in [
            "--shutdown-timeout",
            "--header-read-timeout",
            "--idle-timeout",
            "--send-timeout",
            "--spool-fsync-interval",
            "--links-topic-ready-timeout",
        ] {
            for value in ["100000000000000000000000", "1e400", "25h", "inf", "NaN"] {
                let err = Config::from_argv(["clickedge", flag, value]).unwrap_err();
                assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
            }
            assert!(
                Config::from_argv(["clickedge", flag, "24h"]).is_ok(),
                "{flag}"
            );
        }
        for value in ["100000000000000000000000", "99999999999TiB", "1e9"] {
            let err = Config::from_argv(["clickedge", "--spool-max-bytes", value]).unwrap_err();
            assert!(
                err.to_string().contains("--spool-max-bytes"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn the_client_ip_header_is_one_of_two() {
        let c = Config::from_argv(["clickedge"]).unwrap();
        assert_eq!(c.client_ip_header, ClientIpHeader::XForwardedFor);
        let c = Config::from_argv(["clickedge", "--client-ip-header", "Forwarded"]).unwrap();
        assert_eq!(c.client_ip_header, ClientIpHeader::Forwarded);
        assert_eq!(c.send_timeout, Duration::from_secs(10));
    }

    #[test]
    fn kafka_options_and_durations_parse() {
        let c = Config::from_argv([
            "clickedge",
            "--kafka-option",
            "linger.ms=20",
            "--kafka-option",
            "sasl.mechanism=PLAIN",
            "--shutdown-timeout",
            "1500ms",
        ])
        .unwrap();
        assert_eq!(
            c.kafka.options,
            vec![
                ("linger.ms".to_owned(), "20".to_owned()),
                ("sasl.mechanism".to_owned(), "PLAIN".to_owned())
            ]
        );
        assert_eq!(c.shutdown_timeout, Duration::from_millis(1500));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("100MB"), Some(100_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1"), None);
    }
}
