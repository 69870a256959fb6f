//! The listeners and the shutdown sequence.
//!
//! [`Server::bind`] loads the links, starts the event sink and binds the sockets, so
//! a caller (a test with `127.0.0.1:0`) can learn the addresses before serving.
//! [`Server::run`] serves until its shutdown future completes, then drains: `/readyz`
//! turns 503, the edge stops accepting, in-flight requests finish within
//! `--shutdown-timeout`, and the producer is flushed within it too.

mod admin;
mod client_ip;
mod edge;
mod interstitial;
mod links_topic;
pub mod reload;
pub mod request;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::links::{LinkStore, LinksSource, Loaded};
use crate::metrics::{Listener, Metrics};
use crate::sink::EventSink;
use crate::tls::CertStore;
use crate::useragent::Classifier;

/// Slow clients get this long to send their request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// False until the links topic (if any) was read to its end once.
    pub links_ready: AtomicBool,
    /// `--admin-token`; `None` turns the admin API's write endpoints off.
    pub admin_token: Option<Box<str>>,
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
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every edge connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
}

pub struct Server {
    state: Arc<AppState>,
    http: TcpListener,
    /// With the TLS acceptor built from the certificate store.
    https: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    admin: TcpListener,
    shutdown_timeout: Duration,
    links_topic: Option<LinksTopic>,
}

/// `--links-topic`, with the Kafka settings to read it.
struct LinksTopic {
    topic: String,
    bootstrap: String,
    options: Vec<(String, String)>,
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

        let http = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("cannot listen on --http {}", config.http))?;
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
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on --https {address}"))?;
                (Some((listener, acceptor)), Some(store))
            }
        };

        let links_topic = config.kafka.links_topic.clone().map(|topic| LinksTopic {
            topic,
            bootstrap: sink.bootstrap().to_owned(),
            options: config.kafka.options.clone(),
        });
        let state = Arc::new(AppState {
            links: LinkStore::new(loaded.map),
            links_source: config.links.clone(),
            strict: config.strict,
            reload_lock: Mutex::new(()),
            links_ready: AtomicBool::new(links_topic.is_none()),
            admin_token: config.admin_token.map(Into::into),
            metrics,
            sink,
            classifier: Classifier::new(),
            node_id: config.node_id.into(),
            click_id_param: config.click_id_param.into(),
            visitor_cookie: config.visitor_cookie,
            draining: AtomicBool::new(false),
            certs,
            trusted_proxies: config.trusted_proxies,
            proxy_protocol: config.proxy_protocol,
        });
        Ok(Server {
            state,
            http,
            https,
            admin,
            shutdown_timeout: config.shutdown_timeout,
            links_topic,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The HTTPS listener's address, when TLS is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
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
            http,
            https,
            admin,
            shutdown_timeout,
            links_topic,
        } = self;
        if let Some(LinksTopic {
            topic,
            bootstrap,
            options,
        }) = links_topic
        {
            links_topic::spawn(state.clone(), bootstrap, options, topic);
        }
        let reloads = tokio::spawn(reload_on_hangup(state.clone()));
        if let Some(store) = &state.certs {
            let watching = state.clone();
            crate::tls::watch(store.clone(), Duration::from_secs(2), move |outcome| {
                record_cert_reload(&watching, outcome);
            });
        }
        info!(
            message = "Serving.",
            http = %http.local_addr()?,
            https = %https.as_ref().and_then(|(l, _)| l.local_addr().ok()).map_or("off".to_owned(), |a| a.to_string()),
            admin = %admin.local_addr()?,
            kafka = %state.sink.bootstrap(),
            topic = %state.sink.topic(),
            links = state.links.load().len(),
            links_topic = if state.links_ready.load(Ordering::SeqCst) { "none" } else { "reading" },
        );
        let upkeep = tokio::spawn(metrics_upkeep(state.metrics.clone()));
        let edge_connections = GracefulShutdown::new();
        let admin_connections = GracefulShutdown::new();

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = http.accept() => {
                    serve(&state, &edge_connections, accepted, Listener::Http).await;
                }
                accepted = accept_optional(&https) => {
                    if let Some((_, acceptor)) = &https {
                        serve_tls(&state, &edge_connections, acceptor.clone(), accepted).await;
                    }
                }
                accepted = admin.accept() => {
                    serve(&state, &admin_connections, accepted, Listener::Admin).await;
                }
            }
        }

        state.draining.store(true, Ordering::SeqCst);
        drop(http);
        drop(https);
        info!(message = "Draining: no new connections; finishing in-flight requests.");
        // Keep answering probes (503) while the edge drains.
        let (admin_stop, mut admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_state = state.clone();
        let admin_loop = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut admin_stopped => break,
                    accepted = admin.accept() => {
                        serve(&admin_state, &admin_connections, accepted, Listener::Admin).await;
                    }
                }
            }
            admin_connections
        });

        if tokio::time::timeout(shutdown_timeout, edge_connections.shutdown())
            .await
            .is_err()
        {
            warn!(
                message = "Shutdown timeout reached with requests still in flight; closing them.",
                timeout_ms = shutdown_timeout.as_millis() as u64
            );
        }

        // Every answered click is in the spool by now or soon; wait for Kafka's
        // acknowledgements, then sync what is left for the next start.
        let sink = state.sink.clone();
        tokio::task::spawn_blocking(move || sink.shutdown(shutdown_timeout))
            .await
            .context("the event sink shutdown task panicked")?;

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

/// SIGHUP reloads the links file.
async fn reload_on_hangup(state: Arc<AppState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
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
    #[cfg(not(unix))]
    let _ = state;
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

/// Completes the TLS handshake and serves HTTP/2 or HTTP/1.1, as ALPN chose, on a
/// task of its own.
async fn serve_tls(
    state: &Arc<AppState>,
    connections: &GracefulShutdown,
    acceptor: tokio_rustls::TlsAcceptor,
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
) {
    let Some((stream, peer)) = accepted_stream(accepted).await else {
        return;
    };
    let watcher = connections.watcher();
    let state = state.clone();
    tokio::spawn(async move {
        let metrics = state.metrics.clone();
        metrics.connection_opened(Listener::Https);
        let Some((stream, peer)) = proxied(&state, stream, peer).await else {
            metrics.connection_closed(Listener::Https);
            return;
        };
        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let handler_state = state.clone();
                let service = service_fn(move |request| {
                    let state = handler_state.clone();
                    async move { Ok::<_, Infallible>(edge::handle(&state, &request, peer, true)) }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                if let Err(error) = watcher.watch(connection).await {
                    debug!(message = "TLS connection ended with an error.", %error, %peer);
                }
            }
            Ok(Err(error)) => debug!(message = "TLS handshake failed.", %error, %peer),
            Err(_) => debug!(message = "TLS handshake timed out.", %peer),
        }
        metrics.connection_closed(Listener::Https);
    });
}

/// Starts serving one accepted connection on its own task.
async fn serve(
    state: &Arc<AppState>,
    connections: &GracefulShutdown,
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    listener: Listener,
) {
    let Some((stream, peer)) = accepted_stream(accepted).await else {
        return;
    };
    let watcher = connections.watcher();
    let state = state.clone();
    tokio::spawn(async move {
        let metrics = state.metrics.clone();
        metrics.connection_opened(listener);
        let proxied = match listener {
            Listener::Admin => Some((client_ip::PrefixedStream::new(Vec::new(), stream), peer)),
            _ => proxied(&state, stream, peer).await,
        };
        if let Some((stream, peer)) = proxied {
            let handler_state = state.clone();
            let service = service_fn(move |request| {
                let state = handler_state.clone();
                async move {
                    Ok::<_, Infallible>(match listener {
                        Listener::Http => edge::handle(&state, &request, peer, false),
                        Listener::Https => edge::handle(&state, &request, peer, true),
                        Listener::Admin => admin::handle(&state, request).await,
                    })
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                debug!(message = "Connection ended with an error.", %error, %peer);
            }
        }
        metrics.connection_closed(listener);
    });
}

/// The connection an accept gave, ready for small writes; on a failed accept (out
/// of file descriptors and the like) backs off instead of spinning.
async fn accepted_stream(
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match accepted {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        Err(error) => {
            warn!(message = "Accept failed.", %error);
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// With `--proxy-protocol`, reads the PROXY header: the client's address replaces
/// the peer's. A malformed or late header closes the connection (`None`).
async fn proxied(
    state: &AppState,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(client_ip::PrefixedStream, SocketAddr)> {
    if !state.proxy_protocol {
        return Some((client_ip::PrefixedStream::new(Vec::new(), stream), peer));
    }
    match tokio::time::timeout(
        HEADER_READ_TIMEOUT,
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
