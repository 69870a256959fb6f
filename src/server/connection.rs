//! One accepted connection, from admission to close: the cap on connections,
//! the PROXY header, the timeouts, TLS and the protocol (HTTP/1.1, or HTTP/2 as
//! ALPN chooses), and the service that hands each request to its listener's
//! handler.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{admin, client_ip, edge, limits, AppState};
use crate::metrics::{Listener, Timeout};

/// The largest request head (request line and headers; on HTTP/2 the decoded
/// header list) accepted: far above any real click, far below memory trouble.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// HTTP/2 streams open at once on one connection; more are refused by the protocol.
const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 streams a client may open and reset before they are served, per
/// connection, before it is told to go away (rapid reset, CVE-2023-44487).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Accepts on the HTTPS listener, or never when there is none.
pub(super) async fn accept_optional(
    https: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match https {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts and serves admin connections until `stop` completes.
pub(super) async fn serve_admin_until(
    state: &Arc<AppState>,
    admin: &TcpListener,
    limit: &limits::ConnectionLimit,
    connections: &GracefulShutdown,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = admin.accept() => {
                if let Some(accepted) = admit(state, limit, Listener::Admin, accepted).await {
                    serve(state, connections, accepted, Listener::Admin);
                }
            }
        }
    }
}

/// A connection accepted, with its place under the listener's cap.
pub(super) struct Accepted {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    /// Released when the connection's task ends.
    place: tokio::sync::OwnedSemaphorePermit,
}

/// Takes an accepted connection if the listener is under its cap, or turns it
/// away (counted); on a failed accept (out of file descriptors and the like)
/// backs off instead of spinning.
pub(super) async fn admit(
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
                state.connection.timeouts.idle,
                state.connection.timeouts.send,
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
            let secure = listener == Listener::Https;
            Ok::<_, Infallible>(match listener {
                Listener::Admin => admin::handle(&state, request).await,
                // A brand's action endpoints read a body; a click never does.
                _ => match edge::actions::route(&state, &request) {
                    Some((route, brand)) => {
                        edge::actions::handle(&state, route, brand, request, peer, secure).await
                    }
                    None => edge::handle(&state, &request, peer, secure),
                },
            })
        }
    })
}

/// Completes the TLS handshake and serves HTTP/2 or HTTP/1.1, as ALPN chose.
pub(super) fn serve_tls(
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
            let timeouts = state.connection.timeouts;
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
pub(super) fn serve(
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
                Listener::Admin => Some(state.connection.timeouts.header_read),
                _ => {
                    stream.enforce_head_timeout(state.connection.timeouts.header_read);
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
    if !state.connection.proxy_protocol {
        return Some((client_ip::PrefixedStream::new(Vec::new(), stream), peer));
    }
    // With --trusted-proxies, only those may say who the client is.
    let trusted = &state.connection.trusted_proxies;
    if !trusted.is_empty() && !client_ip::is_trusted(trusted, peer.ip()) {
        warn!(message = "PROXY protocol connection from a peer outside --trusted-proxies; closed.", %peer);
        return None;
    }
    match tokio::time::timeout(
        state.connection.timeouts.header_read,
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
