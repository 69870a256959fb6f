//! The listeners and the shutdown sequence.
//!
//! [`Server::bind`] loads the links, starts the event sink and binds the sockets, so
//! a caller (a test with `127.0.0.1:0`) can learn the addresses before serving.
//! [`Server::run`] starts the edge workers (one thread and runtime per core, see
//! `workers`), serves the admin listener on the caller's runtime until the
//! shutdown future completes, then drains: the edge stops accepting, `/readyz`
//! turns 503, in-flight requests finish within `--shutdown-timeout`, and the
//! producer is flushed within it too.
//!
//! Why one long file: `Server::bind` and `Server::run` are the start-up and drain
//! order, meant to be read top to bottom.

/// `AsyncWrite` for a stream wrapper that writes straight to its `inner` field
/// (reads are where the wrappers differ).
macro_rules! forward_async_write {
    ($wrapper:ty) => {
        impl tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
use forward_async_write;

mod admin;
mod client_ip;
mod connection;
mod edge;
mod interstitial;
mod limits;
mod links_topic;
pub mod reload;
pub mod request;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{info, warn};

use self::connection::serve_admin_until;
use crate::config::Config;
use crate::geoip::GeoIp;
use crate::links::{LinkStore, LinksSource, Loaded, TopicSnapshot};
use crate::metrics::Metrics;
use crate::sink::{EventSink, Topic};
use crate::tls::CertStore;
use crate::useragent::Classifier;

/// How long shutdown waits for the links topic's reader to write its snapshot.
const LINKS_TOPIC_STOP: Duration = Duration::from_secs(3);
/// The admin listener outlives the edge's drain by at most this, to answer probes.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);

/// What the listeners share, grouped by who reads it. Reads never wait: the map
/// is an `ArcSwap` snapshot and everything else is immutable or atomic.
pub struct AppState {
    /// The live link map; a request keeps the snapshot it started with.
    pub links: LinkStore,
    pub metrics: Arc<Metrics>,
    /// Where click events go: the spool and Kafka, never waited for.
    pub sink: Arc<EventSink>,
    /// What the edge's request path reads.
    pub edge: EdgeSettings,
    /// What a connection needs before its requests are read.
    pub connection: ConnectionSettings,
    /// What the admin listener, the reloads and the drain own.
    pub control: Control,
}

/// The edge's request path: how a click is answered and recorded.
pub struct EdgeSettings {
    pub classifier: Classifier,
    pub node_id: Box<str>,
    /// `--click-id-param`, unless a record overrides it.
    pub click_id_param: Box<str>,
    /// False with `--no-visitor-cookie`.
    pub visitor_cookie: bool,
    /// `/v1/tag.js`, built once with `--click-id-param` in it.
    pub tag: edge::actions::TagScript,
    /// `--geoip-db`, replaced whole on a reload; `None` without the flag.
    pub geoip: arc_swap::ArcSwapOption<GeoIp>,
}

/// A connection, from admission to its requests.
pub struct ConnectionSettings {
    /// Peers whose forwarding headers (and PROXY headers) are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `--client-ip-header`: the one forwarding header believed.
    pub client_ip_header: crate::config::ClientIpHeader,
    /// Every edge connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// `--header-read-timeout`, `--idle-timeout` and `--send-timeout`.
    pub timeouts: Timeouts,
}

/// The admin listener's, the reloads' and the drain's state.
pub struct Control {
    /// Where reloads read from, and whether they are strict.
    pub links_source: LinksSource,
    /// `--geoip-db`, read again with every links reload.
    pub geoip_path: Option<std::path::PathBuf>,
    pub strict: bool,
    /// One reload at a time (SIGHUP and the API may race); requests never take it.
    pub reload_lock: Mutex<()>,
    /// False until the links topic (if any) was read to its end once, or
    /// `--links-topic-ready-timeout` passed (then the file and the topic's last
    /// snapshot serve).
    pub links_ready: AtomicBool,
    /// With `--links-topic`: when the topic was last known read to its end with
    /// the broker answering (Unix ms; 0: never, not even in the snapshot), for
    /// `clickedge_links_topic_lag_seconds`.
    pub links_topic_current_at_ms: Option<AtomicI64>,
    /// When this edge started (Unix ms): the links' staleness when the topic's
    /// is unknown.
    pub started_at_ms: i64,
    /// SHA-256 of `--admin-token` (the token itself is not kept); `None` turns
    /// the admin API off (403).
    pub admin_token_digest: Option<[u8; 32]>,
    /// Set at the start of shutdown: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// The certificates of the HTTPS listener, when TLS is on.
    pub certs: Option<Arc<CertStore>>,
}

/// How long a client may take, per connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the TLS handshake, the PROXY header, and each request head.
    pub header_read: Duration,
    /// With nothing received.
    pub idle: Duration,
    /// With a response blocked, unread by the client.
    pub send: Duration,
}

/// `--max-connections` for each listener, shared by every worker.
struct Limits {
    http: limits::ConnectionLimit,
    https: limits::ConnectionLimit,
    admin: limits::ConnectionLimit,
}

pub struct Server {
    state: Arc<AppState>,
    /// Each edge worker's sockets (`--workers` of them), bound but not yet
    /// registered with a runtime: each worker registers its own.
    edge_sockets: Vec<workers::WorkerSockets>,
    /// Built from the certificate store, when TLS is on.
    tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin: TcpListener,
    shutdown_timeout: Duration,
    links_topic: Option<LinksTopic>,
    limits: Arc<Limits>,
}

/// `--links-topic`, with the Kafka settings to read it and what the last run
/// left of it.
struct LinksTopic {
    bootstrap: String,
    options: Vec<(String, String)>,
    snapshot: TopicSnapshot,
    snapshot_path: PathBuf,
    ready_timeout: Duration,
}

impl Server {
    /// Loads the links, starts the event sink and binds both listeners.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let metrics = Metrics::new();
        let loaded = load_links(&config, &metrics)?;
        let geoip = match &config.geoip_db {
            None => None,
            Some(path) => {
                let geoip = GeoIp::open(path)?;
                info!(message = "GeoIP database loaded.", path = %path.display(), database = %geoip.database, build_epoch = geoip.build_epoch);
                metrics.geoip_loaded(&geoip.database, geoip.build_epoch);
                Some(Arc::new(geoip))
            }
        };

        let (kafka, spool) = (config.kafka.clone(), config.spool.clone());
        let sink_metrics = metrics.clone();
        let sink =
            tokio::task::spawn_blocking(move || EventSink::start(&kafka, &spool, sink_metrics))
                .await
                .context("the event sink start-up task panicked")??;

        let http = workers::bind_group(config.http, config.workers)
            .with_context(|| format!("cannot listen on --http {}", config.http))?;
        let http_addr = http[0].local_addr()?;
        let admin = TcpListener::bind(config.admin)
            .await
            .with_context(|| format!("cannot listen on --admin {}", config.admin))?;

        let (https, certs) = match &config.https {
            None => (None, None),
            Some((address, dir)) => {
                let (store, errors) = CertStore::load(dir)
                    .with_context(|| format!("cannot read --tls-certs {}", dir.display()))?;
                report_cert_errors(&errors);
                let count = store.index().certs.len();
                metrics.tls_loaded(Some(count));
                info!(message = "Certificates loaded.", dir = %dir.display(), certificates = count, skipped = errors.len());
                let acceptor = tokio_rustls::TlsAcceptor::from(
                    crate::tls::server_config(store.clone()).context("TLS configuration")?,
                );
                let listeners = workers::bind_group(*address, config.workers)
                    .with_context(|| format!("cannot listen on --https {address}"))?;
                (Some((listeners, acceptor)), Some(store))
            }
        };

        let links_topic = config.kafka.links_topic.clone().map(|topic| {
            let snapshot_path = TopicSnapshot::path(&config.spool.dir, &topic);
            LinksTopic {
                snapshot: links_topic::load_snapshot(&snapshot_path, &topic),
                snapshot_path,
                bootstrap: sink.bootstrap().to_owned(),
                options: config.kafka.options.clone(),
                ready_timeout: config.links_topic_ready_timeout,
            }
        });
        let state = Arc::new(AppState {
            links: LinkStore::new(loaded.map),
            metrics,
            sink,
            edge: EdgeSettings {
                classifier: Classifier::new(),
                node_id: config.node_id.into(),
                tag: edge::actions::TagScript::new(&config.click_id_param),
                click_id_param: config.click_id_param.into(),
                visitor_cookie: config.visitor_cookie,
                geoip: arc_swap::ArcSwapOption::new(geoip),
            },
            connection: ConnectionSettings {
                trusted_proxies: config.trusted_proxies,
                client_ip_header: config.client_ip_header,
                proxy_protocol: config.proxy_protocol,
                timeouts: Timeouts {
                    header_read: config.header_read_timeout,
                    idle: config.idle_timeout,
                    send: config.send_timeout,
                },
            },
            control: Control {
                links_source: config.links.clone(),
                geoip_path: config.geoip_db.clone(),
                strict: config.strict,
                reload_lock: Mutex::new(()),
                links_ready: AtomicBool::new(links_topic.is_none()),
                links_topic_current_at_ms: links_topic
                    .as_ref()
                    .map(|t| AtomicI64::new(t.snapshot.current_at_ms.unwrap_or(0))),
                started_at_ms: reload::unix_millis(),
                admin_token_digest: config.admin_token.as_deref().map(edge::secret_digest),
                draining: AtomicBool::new(false),
                certs,
            },
        });
        let edge_listeners = if https.is_some() { 2 } else { 1 };
        let cap = limits::connection_cap(config.max_connections, edge_listeners);
        let limits = Arc::new(Limits {
            http: limits::ConnectionLimit::new(cap),
            https: limits::ConnectionLimit::new(cap),
            admin: limits::ConnectionLimit::new(limits::ADMIN_MAX_CONNECTIONS),
        });
        let https_addr = match &https {
            Some((listeners, _)) => Some(listeners[0].local_addr()?),
            None => None,
        };
        let (https_sockets, tls_acceptor): (Vec<Option<std::net::TcpListener>>, _) = match https {
            Some((listeners, acceptor)) => {
                (listeners.into_iter().map(Some).collect(), Some(acceptor))
            }
            None => (
                std::iter::repeat_with(|| None).take(http.len()).collect(),
                None,
            ),
        };
        let edge_sockets = http
            .into_iter()
            .zip(https_sockets)
            .map(|(http, https)| workers::WorkerSockets { http, https })
            .collect();
        Ok(Server {
            state,
            edge_sockets,
            tls_acceptor,
            http_addr,
            https_addr,
            admin,
            shutdown_timeout: config.shutdown_timeout,
            links_topic,
            limits,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS listener's address, when TLS is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The Kafka bootstrap servers events go to (the embedded cluster's when no
    /// `--kafka-brokers` was given).
    pub fn kafka_bootstrap(&self) -> &str {
        self.state.sink.bootstrap()
    }

    /// Serves until `shutdown` completes, then drains and flushes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server {
            state,
            edge_sockets,
            tls_acceptor,
            http_addr,
            https_addr,
            admin,
            shutdown_timeout,
            links_topic,
            limits,
        } = self;
        let mut links_topic_ended = None;
        if let Some(LinksTopic {
            bootstrap,
            options,
            snapshot,
            snapshot_path,
            ready_timeout,
        }) = links_topic
        {
            links_topic::apply_snapshot(&state, &snapshot);
            tokio::spawn(links_topic::ready_after(
                state.clone(),
                ready_timeout,
                snapshot.records.len(),
                snapshot.current_at_ms,
            ));
            links_topic_ended = Some(links_topic::spawn(
                state.clone(),
                bootstrap,
                options,
                snapshot,
                snapshot_path,
            ));
        }
        let reloads = tokio::spawn(reload_on_hangup(state.clone()));
        if let Some(store) = &state.control.certs {
            let watching = state.clone();
            crate::tls::watch(store.clone(), Duration::from_secs(2), move |outcome| {
                record_cert_reload(&watching, outcome);
            });
        }
        let worker_count = edge_sockets.len();
        let mut edge = workers::Workers::start(
            &state,
            edge_sockets,
            tls_acceptor,
            &limits,
            shutdown_timeout,
        )
        .await?;
        info!(
            message = "Serving.",
            http = %http_addr,
            https = %https_addr.map_or("off".to_owned(), |a| a.to_string()),
            workers = worker_count,
            admin = %admin.local_addr()?,
            kafka = %state.sink.bootstrap(),
            topic = %state.sink.topic(Topic::Clicks),
            actions_topic = %state.sink.topic(Topic::Actions),
            links = state.links.load().len(),
            links_topic = if state.control.links_ready.load(Ordering::SeqCst) { "none" } else { "reading" },
        );
        let upkeep = tokio::spawn(metrics_upkeep(state.metrics.clone()));
        let admin_connections = GracefulShutdown::new();

        serve_admin_until(&state, &admin, &limits.admin, &admin_connections, shutdown).await;

        // Closed before /readyz turns 503: once a probe sees the drain, new
        // connections are refused.
        edge.stop_accepting().await;
        state.control.draining.store(true, Ordering::SeqCst);
        info!(message = "Draining: no new connections; finishing in-flight requests.");
        // Keep answering probes (503) while the edge drains.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_state = state.clone();
        let admin_loop = tokio::spawn(async move {
            let stopped = async {
                let _ = admin_stopped.await;
            };
            serve_admin_until(
                &admin_state,
                &admin,
                &limits.admin,
                &admin_connections,
                stopped,
            )
            .await;
            admin_connections
        });

        // Each worker stops accepting, finishes its requests within the timeout
        // (logging when it cannot), and closes the rest.
        edge.drain().await;

        // Every answered click is in the spool by now or soon; wait for Kafka's
        // acknowledgements, then sync what is left for the next start.
        let sink = state.sink.clone();
        tokio::task::spawn_blocking(move || sink.shutdown(shutdown_timeout))
            .await
            .context("the event sink shutdown task panicked")?;

        // The links topic's reader saw the drain and writes its snapshot a last
        // time: the next start's links (it may be waiting on a broker: bounded).
        if let Some(ended) = links_topic_ended {
            let _ = tokio::task::spawn_blocking(move || ended.recv_timeout(LINKS_TOPIC_STOP)).await;
        }

        let _ = admin_stop.send(());
        if let Ok(admin_connections) = admin_loop.await {
            let _ = tokio::time::timeout(ADMIN_DRAIN, admin_connections.shutdown()).await;
        }
        upkeep.abort();
        reloads.abort();
        info!(message = "Stopped.");
        Ok(())
    }
}

fn load_links(config: &Config, metrics: &Metrics) -> anyhow::Result<Loaded> {
    let loaded = match config.links.load(config.strict) {
        Ok(loaded) => loaded,
        Err(error) => {
            metrics.links_load_failed();
            return Err(error.into());
        }
    };
    reload::log_skipped(&config.links, &loaded.invalid);
    let counts = loaded.map.counts();
    metrics.links_loaded(counts, reload::unix_seconds());
    info!(
        message = "Links loaded.",
        source = %config.links,
        records = loaded.map.len(),
        invalid = loaded.invalid.len(),
        tracking = counts.tracking,
        vanity = counts.vanity,
        domain = counts.domain,
        fallback = counts.fallback,
        app_site = counts.app_site,
    );
    Ok(loaded)
}

/// SIGHUP reloads the links file. The handler is installed at the call (before
/// "Serving."), not at the first poll: SIGHUP's default action ends the process.
fn reload_on_hangup(state: Arc<AppState>) -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let hangups = signal(SignalKind::hangup());
        async move {
            let Ok(mut hangups) = hangups else {
                warn!(message = "Cannot listen for SIGHUP; reload through POST /admin/reload.");
                return;
            };
            while hangups.recv().await.is_some() {
                info!(message = "Received SIGHUP; reloading the links and certificates.");
                let reloading = state.clone();
                // The outcomes are logged and counted where they happen.
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = reload::reload_links(&reloading);
                    if let Some(store) = &reloading.control.certs {
                        record_cert_reload(&reloading, store.reload());
                    }
                })
                .await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = state;
        std::future::ready(())
    }
}

fn report_cert_errors(errors: &[crate::tls::CertError]) {
    for error in errors {
        warn!(
            message = "Certificate skipped.",
            path = %error.path.display(),
            reason = %error.reason
        );
    }
}

fn record_cert_reload(
    state: &AppState,
    outcome: std::io::Result<(usize, Vec<crate::tls::CertError>)>,
) {
    match outcome {
        Ok((count, errors)) => {
            report_cert_errors(&errors);
            state.metrics.tls_loaded(Some(count));
            info!(
                message = "Certificates reloaded.",
                certificates = count,
                skipped = errors.len()
            );
        }
        Err(error) => {
            state.metrics.tls_loaded(None);
            warn!(message = "Certificate reload failed; the previous set stays in service.", %error);
        }
    }
}

async fn metrics_upkeep(metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        metrics.upkeep();
    }
}
