//! What a connection may take: a place under `--max-connections`, and time bounded
//! by `--header-read-timeout`, `--idle-timeout` and `--send-timeout`.
//!
//! The request head's size and count limits are hyper's, set where the
//! connections are built (`super::http1` and `super::http2`), and so is its time
//! on the admin listener; this module holds the rest: the edge's HTTP/1 head
//! deadline, the idle and the send timers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{info, warn};

use crate::metrics::{Metrics, Timeout};

/// The admin listener's own cap: probes and scrapes, never thousands.
pub const ADMIN_MAX_CONNECTIONS: usize = 1024;

/// The most connections a listener serves at once; a connection past the cap is
/// answered at once and closed, so a flood never queues up behind real clicks.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    places: Arc<Semaphore>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            places: Arc::new(Semaphore::new(max)),
        }
    }

    /// A place for one connection, held until it closes; `None` at the cap.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }
}

/// What an HTTP client past the cap reads before the connection closes.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\ncontent-length: 20\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
too many connections";

/// Turns a connection away without waiting on it: a plain HTTP client reads a 503
/// (written without blocking into the fresh socket's empty buffer); a TLS client
/// sees the connection close. Either way the client may retry elsewhere.
pub fn refuse(stream: tokio::net::TcpStream, http: bool) {
    if http {
        let _ = stream.try_write(REFUSAL);
        // Our FIN after the answer, rather than a reset that could discard it.
        let _ = rustix::net::shutdown(&stream, rustix::net::Shutdown::Write);
    }
}

/// `--max-connections` when it is not given, if the open-file limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Files kept for everything but edge connections: the admin listener's cap,
/// Kafka's sockets, the spool, certificates being read.
const RESERVED_FILES: u64 = ADMIN_MAX_CONNECTIONS as u64 + 256;

/// Raises this process's open-file limit to its hard limit (every connection is a
/// file descriptor) and returns the cap per edge listener: `configured`, with a
/// warning if the limit cannot hold it, or the default, lowered to fit.
pub fn connection_cap(configured: Option<usize>, edge_listeners: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            warn!(message = "Cannot raise the open-file limit.", %error);
            limit = getrlimit(Resource::Nofile);
        }
    }
    let open_files = limit.current.unwrap_or(u64::MAX);
    let cap = fitted_cap(configured, open_files, edge_listeners);
    match configured {
        Some(_) if cap.fits => {}
        Some(_) => warn!(
            message =
                "The open-file limit is below --max-connections; accepts will fail before the cap.",
            open_files,
            max_connections = cap.cap
        ),
        None => info!(
            message = "Connection cap per listener.",
            max_connections = cap.cap,
            open_files
        ),
    }
    cap.cap
}

/// The cap per edge listener for `open_files`, and whether it fits them.
#[derive(Debug, PartialEq, Eq)]
struct Cap {
    cap: usize,
    fits: bool,
}

/// `configured` as given (it may not fit: the operator is told), or the default
/// lowered to what the open files hold beside the reserve.
fn fitted_cap(configured: Option<usize>, open_files: u64, edge_listeners: usize) -> Cap {
    let room = (open_files.saturating_sub(RESERVED_FILES) / edge_listeners as u64).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    match configured {
        Some(cap) => Cap {
            cap,
            fits: cap <= room,
        },
        None => Cap {
            cap: DEFAULT_MAX_CONNECTIONS.min(room),
            fits: true,
        },
    }
}

/// A connection's timers.
///
/// - **Idle**: closed when nothing arrives for `idle`: HTTP/2 connections (which
///   hyper would keep forever) and stalled HTTP/1 bodies. Reads only mark the
///   connection active; the timer wakes four times per `idle`, so a silent
///   connection closes between `idle` and 1.25 × `idle` after its last byte, and
///   a busy one costs a store per read, not a timer reset.
/// - **Request head** (HTTP/1 edge connections, once enabled): the next request
///   must arrive within `--header-read-timeout` of the connection's start or of
///   the previous response. Checked on the same coarse tick (then four times per
///   the shorter of the two timeouts), instead of hyper's timer, which armed a
///   new sleep for every request; a request costs a clock read.
/// - **Send**: closed when a write stays blocked for `send`: the client does not
///   read what it asked for (a pipelining client that never reads fills the
///   socket's buffers, and hyper then stops reading too, so the idle timer alone
///   would never fire). The timer is armed only when a write would block, so
///   writes that go through cost nothing.
pub struct Timed<S> {
    inner: S,
    quarter: Duration,
    /// Ticks with nothing read, and how many make `idle`.
    silent: u32,
    idle_ticks: u32,
    idle: Duration,
    active: bool,
    timer: Pin<Box<Sleep>>,
    /// `--header-read-timeout`, when this wrapper enforces it.
    head_timeout: Option<Duration>,
    /// When the awaited request head must have arrived.
    head_deadline: Option<Instant>,
    /// Bytes were written since the deadline was last armed: a response went
    /// out, so the next read starts the wait for the next head. (Flushes do not
    /// count: hyper flushes on every turn.)
    answered: bool,
    send: Duration,
    /// Armed while a write is blocked: when it must have gone through.
    send_timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

/// Which timer a silent connection ran out of.
enum Expired {
    Idle,
    Head,
}

impl<S> Timed<S> {
    pub fn new(inner: S, idle: Duration, send: Duration, metrics: Arc<Metrics>) -> Timed<S> {
        let quarter = idle / 4;
        Timed {
            inner,
            quarter,
            silent: 0,
            idle_ticks: 4,
            idle,
            active: false,
            timer: Box::pin(tokio::time::sleep(quarter)),
            head_timeout: None,
            head_deadline: None,
            answered: false,
            send,
            send_timer: None,
            metrics,
        }
    }

    /// Enforces the request-head deadline from now on (see the type's doc).
    pub fn enforce_head_timeout(&mut self, head: Duration) {
        let now = Instant::now();
        self.head_timeout = Some(head);
        self.head_deadline = Some(now + head);
        self.answered = false;
        self.quarter = self.idle.min(head) / 4;
        self.idle_ticks = u32::try_from(
            self.idle
                .as_nanos()
                .div_ceil(self.quarter.as_nanos().max(1)),
        )
        .unwrap_or(u32::MAX)
        .max(1);
        self.silent = 0;
        self.timer.as_mut().reset(now + self.quarter);
    }

    /// Whether the connection has been silent for `idle`, or its request head
    /// is late; keeps the timer armed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.head_deadline.is_some_and(|deadline| now >= deadline) {
                return Some(Expired::Head);
            }
            if std::mem::take(&mut self.active) {
                self.silent = 0;
            } else {
                self.silent += 1;
                if self.silent >= self.idle_ticks {
                    return Some(Expired::Idle);
                }
            }
            self.timer.as_mut().reset(now + self.quarter);
        }
        None
    }

    /// Passes a write's outcome on: a completed one disarms the send timer; a
    /// blocked one arms it (once) and fails when it has run out.
    fn timed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.send_timer = None;
            return polled;
        }
        let send = self.send;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        if timer.as_mut().poll(cx).is_ready() {
            self.metrics.connection_timed_out(Timeout::Send);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send timeout: the client does not read",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if std::mem::take(&mut this.answered) {
            if let Some(head) = this.head_timeout {
                this.head_deadline = Some(Instant::now() + head);
            }
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.active = true;
                Poll::Ready(result)
            }
            Poll::Pending => match this.expired(cx) {
                None => Poll::Pending,
                Some(Expired::Idle) => {
                    this.metrics.connection_timed_out(Timeout::Idle);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle timeout: nothing received",
                    )))
                }
                Some(Expired::Head) => {
                    this.metrics.connection_timed_out(Timeout::Header);
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "header read timeout: no complete request in time",
                    )))
                }
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.answered |= matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.timed_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.answered |= matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.timed_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed_write(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_fits_the_open_files_and_a_configured_one_is_kept() {
        let reserve = RESERVED_FILES;
        assert_eq!(fitted_cap(None, 1 << 20, 2).cap, DEFAULT_MAX_CONNECTIONS);
        // 20,000 open files, HTTP and HTTPS: what is left after the reserve, halved.
        assert_eq!(
            fitted_cap(None, 20_000, 2),
            Cap {
                cap: ((20_000 - reserve) / 2) as usize,
                fits: true
            }
        );
        assert_eq!(fitted_cap(None, 20_000, 1).cap, (20_000 - reserve) as usize);
        assert_eq!(fitted_cap(None, 10, 1).cap, 1);
        assert_eq!(
            fitted_cap(Some(50_000), 20_000, 1),
            Cap {
                cap: 50_000,
                fits: false
            }
        );
        assert_eq!(
            fitted_cap(Some(100), 20_000, 2),
            Cap {
                cap: 100,
                fits: true
            }
        );
    }
}
