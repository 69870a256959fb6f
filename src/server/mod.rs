//! The listeners and the shutdown sequence.
//!
//! [`Server::bind`] loads the links, starts the event sink and binds the sockets, so
//! a caller (a test with `127.0.0.1:0`) can learn the addresses before serving.
//! [`Server::run`] starts the edge workers (one thread and runtime per core, see
//! `workers`), serves the admin listener on the caller's runtime until the
//! shutdown future completes, then drains: the edge stops accepting, `/readyz`
//! turns 503, in-flight requests finish within `--shutdown-timeout`, and the
//! producer is flushed within it too.

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
mod edge;
mod interstitial;
mod limits;
mod links_topic;
pub mod reload;
pub mod request;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::links::{LinkStore, LinksSource, Loaded, TopicSnapshot};
use crate::metrics::{Listener, Metrics, Timeout};
use crate::sink::EventSink;
use crate::tls::CertStore;
use crate::useragent::Classifier;

/// The largest request head (request line and headers; on HTTP/2 the decoded
/// header list) accepted: far above any real click, far below memory trouble.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// HTTP/2 streams open at once on one connection; more are refused by the protocol.
const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a client may open and reset before they are served, per
/// connection, before it is told to go away (rapid reset, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// How long shutdown waits for the links topic's reader to write its snapshot.
const LINKS_TOPIC_STOP: Duration = Duration::from_secs(3);
/// The admin listener outlives the edge's drain by at most this, to answer probes.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);

/// What every request handler shares. Reads never wait: the map is an `ArcSwap`
/// snapshot and everything else is immutable or atomic.
pub struct AppState {
    /// The live link map; a request keeps the snapshot it started with.
    pub links: LinkStore,
    /// Where reloads read from, and whether they are strict.
    pub links_source: LinksSource,
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
    pub metrics: Arc<Metrics>,
    /// Where click events go: the spool and Kafka, never waited for.
    pub sink: Arc<EventSink>,
    pub classifier: Classifier,
    pub node_id: Box<str>,
    /// `--click-id-param`, unless a record overrides it.
    pub click_id_param: Box<str>,
    /// False with `--no-visitor-cookie`.
    pub visitor_cookie: bool,
    /// Set at the start of shutdown: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// The certificates of the HTTPS listener, when TLS is on.
    pub certs: Option<Arc<CertStore>>,
    /// Peers whose forwarding headers (and PROXY headers) are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `--client-ip-header`: the one forwarding header believed.
    pub client_ip_header: crate::config::ClientIpHeader,
    /// Every edge connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// `--header-read-timeout`, `--idle-timeout` and `--send-timeout`.
    pub timeouts: Timeouts,
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
            links_source: config.links.clone(),
            strict: config.strict,
            reload_lock: Mutex::new(()),
            links_ready: AtomicBool::new(links_topic.is_none()),
            links_topic_current_at_ms: links_topic
                .as_ref()
                .map(|t| AtomicI64::new(t.snapshot.current_at_ms.unwrap_or(0))),
            started_at_ms: reload::unix_millis(),
            admin_token_digest: config.admin_token.as_deref().map(admin::admin_token_digest),
            metrics,
            sink,
            classifier: Classifier::new(),
            node_id: config.node_id.into(),
            click_id_param: config.click_id_param.into(),
            visitor_cookie: config.visitor_cookie,
            draining: AtomicBool::new(false),
            certs,
            trusted_proxies: config.trusted_proxies,
            client_ip_header: config.client_ip_header,
            proxy_protocol: config.proxy_protocol,
            timeouts: Timeouts {
                header_read: config.header_read_timeout,
                idle: config.idle_timeout,
                send: config.send_timeout,
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
        if let Some(store) = &state.certs {
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
            topic = %state.sink.topic(),
            links = state.links.load().len(),
            links_topic = if state.links_ready.load(Ordering::SeqCst) { "none" } else { "reading" },
        );
        let upkeep = tokio::spawn(metrics_upkeep(state.metrics.clone()));
        let admin_connections = GracefulShutdown::new();

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = admin.accept() => {
                    if let Some(accepted) = admit(&state, &limits.admin, Listener::Admin, accepted).await {
                        serve(&state, &admin_connections, accepted, Listener::Admin);
                    }
                }
            }
        }

        // Closed before /readyz turns 503: once a probe sees the drain, new
        // connections are refused.
        edge.stop_accepting().await;
        state.draining.store(true, Ordering::SeqCst);
        info!(message = "Draining: no new connections; finishing in-flight requests.");
        // Keep answering probes (503) while the edge drains.
        let (admin_stop, mut admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_state = state.clone();
        let admin_loop = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut admin_stopped => break,
                    accepted = admin.accept() => {
                        if let Some(accepted) = admit(&admin_state, &limits.admin, Listener::Admin, accepted).await {
                            serve(&admin_state, &admin_connections, accepted, Listener::Admin);
                        }
                    }
                }
            }
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
                    if let Some(store) = &reloading.certs {
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

/// Accepts on the HTTPS listener, or never when there is none.
async fn accept_optional(
    https: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match https {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A connection accepted, with its place under the listener's cap.
struct Accepted {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    /// Released when the connection's task ends.
    place: tokio::sync::OwnedSemaphorePermit,
}

/// Takes an accepted connection if the listener is under its cap, or turns it
/// away (counted); on a failed accept (out of file descriptors and the like)
/// backs off instead of spinning.
async fn admit(
    state: &AppState,
    limit: &limits::ConnectionLimit,
    listener: Listener,
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
) -> Option<Accepted> {
    let (stream, peer) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            warn!(message = "Accept failed.", %error);
            tokio::time::sleep(Duration::from_millis(50)).await;
            return None;
        }
    };
    let Some(place) = limit.admit() else {
        state.metrics.connection_refused(listener);
        debug!(message = "Connection refused: at --max-connections.", %peer, ?listener);
        limits::refuse(stream, listener != Listener::Https);
        return None;
    };
    // Answers are small writes; nothing is gained by holding them back.
    let _ = stream.set_nodelay(true);
    Some(Accepted {
        stream,
        peer,
        place,
    })
}

/// HTTP/1.1 as every listener speaks it: request heads bounded in size, count
/// (hyper's 100 headers) and time. `hyper_head_timer`: the head's time is
/// hyper's to enforce (the admin listener); `None` where the connection's
/// [`limits::Timed`] enforces it (the edge: hyper's timer armed a new sleep per
/// request, ~4% of the request path's instructions).
fn http1(hyper_head_timer: Option<Duration>) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(hyper_head_timer)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
}

/// HTTP/2 over TLS: streams, header lists and early resets bounded.
fn http2() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_REQUEST_HEAD as u32)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS);
    builder
}

/// Logs how a connection ended, counting hyper's request-head timeout.
fn connection_ended(state: &AppState, outcome: hyper::Result<()>, peer: SocketAddr) {
    if let Err(error) = outcome {
        if error.is_timeout() {
            state.metrics.connection_timed_out(Timeout::Header);
        }
        debug!(message = "Connection ended with an error.", %error, %peer);
    }
}

/// Runs one accepted connection on a task of its own: counted while open, its
/// PROXY header read first on the edge listeners, closed when silent for
/// `--idle-timeout` or unread for `--send-timeout`, its place under the cap held until `speak` is done with it.
fn spawn_connection<Speak, Spoken>(
    state: &Arc<AppState>,
    accepted: Accepted,
    listener: Listener,
    speak: Speak,
) where
    Speak: FnOnce(Arc<AppState>, limits::Timed<client_ip::PrefixedStream>, SocketAddr) -> Spoken
        + Send
        + 'static,
    Spoken: Future<Output = ()> + Send,
{
    let Accepted {
        stream,
        peer,
        place,
    } = accepted;
    let state = state.clone();
    tokio::spawn(async move {
        let metrics = state.metrics.clone();
        metrics.connection_opened(listener);
        let proxied = match listener {
            Listener::Admin => Some((client_ip::PrefixedStream::new(Vec::new(), stream), peer)),
            _ => proxied(&state, stream, peer).await,
        };
        if let Some((stream, peer)) = proxied {
            let stream = limits::Timed::new(
                stream,
                state.timeouts.idle,
                state.timeouts.send,
                metrics.clone(),
            );
            speak(state, stream, peer).await;
        }
        metrics.connection_closed(listener);
        drop(place);
    });
}

/// Answers one connection's requests as its listener does.
fn service(
    state: Arc<AppState>,
    peer: SocketAddr,
    listener: Listener,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<http_body_util::Full<bytes::Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(move |request| {
        let state = state.clone();
        async move {
            Ok::<_, Infallible>(match listener {
                Listener::Http => edge::handle(&state, &request, peer, false),
                Listener::Https => edge::handle(&state, &request, peer, true),
                Listener::Admin => admin::handle(&state, request).await,
            })
        }
    })
}

/// Completes the TLS handshake and serves HTTP/2 or HTTP/1.1, as ALPN chose.
fn serve_tls(
    state: &Arc<AppState>,
    connections: &GracefulShutdown,
    acceptor: tokio_rustls::TlsAcceptor,
    accepted: Accepted,
) {
    let watcher = connections.watcher();
    spawn_connection(
        state,
        accepted,
        Listener::Https,
        move |state, stream, peer| async move {
            let timeouts = state.timeouts;
            let tls = match tokio::time::timeout(timeouts.header_read, acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return debug!(message = "TLS handshake failed.", %error, %peer),
                Err(_) => {
                    state.metrics.connection_timed_out(Timeout::Handshake);
                    return debug!(message = "TLS handshake timed out.", %peer);
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service(state.clone(), peer, Listener::Https);
            let mut tls = tls;
            let outcome = if h2 {
                watcher
                    .watch(http2().serve_connection(TokioIo::new(tls), service))
                    .await
            } else {
                // Counted from the handshake's end, as after a response.
                tls.get_mut().0.enforce_head_timeout(timeouts.header_read);
                watcher
                    .watch(http1(None).serve_connection(TokioIo::new(tls), service))
                    .await
            };
            connection_ended(&state, outcome, peer);
        },
    );
}

/// Serves HTTP/1.1 on a plain connection (the HTTP and admin listeners).
fn serve(
    state: &Arc<AppState>,
    connections: &GracefulShutdown,
    accepted: Accepted,
    listener: Listener,
) {
    let watcher = connections.watcher();
    spawn_connection(
        state,
        accepted,
        listener,
        move |state, mut stream, peer| async move {
            let service = service(state.clone(), peer, listener);
            let hyper_head_timer = match listener {
                // Admin requests may take long to answer (a reload): hyper's
                // timer stops at the head's end, the connection's would not.
                Listener::Admin => Some(state.timeouts.header_read),
                _ => {
                    stream.enforce_head_timeout(state.timeouts.header_read);
                    None
                }
            };
            let connection =
                http1(hyper_head_timer).serve_connection(TokioIo::new(stream), service);
            connection_ended(&state, watcher.watch(connection).await, peer);
        },
    );
}

/// With `--proxy-protocol`, reads the PROXY header: the client's address replaces
/// the peer's. A malformed or late header, or (with `--trusted-proxies`) a peer
/// outside the trusted ones, closes the connection (`None`).
async fn proxied(
    state: &AppState,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(client_ip::PrefixedStream, SocketAddr)> {
    if !state.proxy_protocol {
        return Some((client_ip::PrefixedStream::new(Vec::new(), stream), peer));
    }
    // With --trusted-proxies, only those may say who the client is.
    let trusted = &state.trusted_proxies;
    if !trusted.is_empty() && !client_ip::is_trusted(trusted, peer.ip()) {
        warn!(message = "PROXY protocol connection from a peer outside --trusted-proxies; closed.", %peer);
        return None;
    }
    match tokio::time::timeout(
        state.timeouts.header_read,
        client_ip::read_proxy_header(&mut stream, peer),
    )
    .await
    {
        Ok(Ok((client, rest))) => Some((client_ip::PrefixedStream::new(rest, stream), client)),
        Ok(Err(error)) => {
            warn!(message = "Bad PROXY protocol header; connection closed.", %error, %peer);
            None
        }
        Err(_) => {
            state.metrics.connection_timed_out(Timeout::Handshake);
            warn!(message = "No PROXY protocol header in time; connection closed.", %peer);
            None
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
