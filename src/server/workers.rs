//! The edge's threads: one per core, each a single-threaded runtime with its own
//! listening sockets, serving its connections from accept to close.
//!
//! Why: with one shared work-stealing runtime, a request's wake-up, its task and
//! its timers could sit on different threads, and every worker contended for the
//! same queues. Here a connection never leaves the thread that accepted it, and the
//! kernel spreads new connections over the workers' `SO_REUSEPORT` sockets (with
//! one worker, a plain socket: nobody else can bind the port). The control work
//! (admin API, reloads, the links topic, metrics upkeep) stays on the caller's
//! runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use super::connection::{accept_optional, admit, serve, serve_tls};
use super::{AppState, Limits};
use crate::metrics::Listener;

/// Binds `count` listening sockets to `address`, all in one `SO_REUSEPORT` group
/// when there are several (a port 0 is resolved by the first).
pub(super) fn bind_group(
    address: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_one(address, count > 1)?;
    let bound = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..count {
        group.push(bind_one(bound, true)?);
    }
    Ok(group)
}

fn bind_one(address: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{self, AddressFamily, SocketFlags, SocketType};
    let family = if address.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let socket = net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // As tokio's own bind: a restarted edge may bind over its predecessor's
    // TIME_WAIT connections.
    net::sockopt::set_socket_reuseaddr(&socket, true)?;
    if reuse_port {
        net::sockopt::set_socket_reuseport(&socket, true)?;
    }
    net::bind(&socket, &address)?;
    net::listen(&socket, 1024)?;
    Ok(std::net::TcpListener::from(socket))
}

/// One worker's sockets: its share of `--http` and of `--https`.
pub(super) struct WorkerSockets {
    pub http: std::net::TcpListener,
    pub https: Option<std::net::TcpListener>,
}

/// The running workers: [`Workers::stop_accepting`], then [`Workers::drain`].
pub(super) struct Workers {
    stop: watch::Sender<bool>,
    /// One message from each worker once its sockets are closed.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
    threads: Vec<thread::JoinHandle<bool>>,
}

impl Workers {
    /// Starts one thread per socket set; returns once each has its runtime and
    /// sockets registered (or the first error).
    pub async fn start(
        state: &Arc<AppState>,
        sockets: Vec<WorkerSockets>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
        limits: &Arc<Limits>,
        drain_timeout: Duration,
    ) -> anyhow::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        let mut threads = Vec::with_capacity(sockets.len());
        let mut ready = Vec::with_capacity(sockets.len());
        for (index, sockets) in sockets.into_iter().enumerate() {
            let (started, started_rx) = tokio::sync::oneshot::channel();
            let worker = Worker {
                state: state.clone(),
                acceptor: acceptor.clone(),
                limits: limits.clone(),
                stop: stopped.clone(),
                closed: closed_tx.clone(),
                drain_timeout,
            };
            let thread = thread::Builder::new()
                .name(format!("edge-{index}"))
                .spawn(move || worker.run(sockets, started))
                .context("cannot start an edge worker thread")?;
            threads.push(thread);
            ready.push(started_rx);
        }
        let workers = Workers {
            stop,
            closed,
            threads,
        };
        for started in ready {
            let started = started
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("an edge worker ended while starting")));
            if let Err(error) = started {
                workers.drain().await;
                return Err(error);
            }
        }
        Ok(workers)
    }

    /// Tells every worker to stop accepting; returns once all their listening
    /// sockets are closed (new connections are refused from then on).
    pub async fn stop_accepting(&mut self) {
        let _ = self.stop.send(true);
        for _ in 0..self.threads.len() {
            if self.closed.recv().await.is_none() {
                break;
            }
        }
    }

    /// Stops accepting (if not done yet) and waits while every worker finishes
    /// its in-flight requests (within the drain timeout; then they are closed).
    /// Returns whether every worker finished in time.
    pub async fn drain(self) -> bool {
        let _ = self.stop.send(true);
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            // Every thread is joined, whatever the others answer.
            let late = threads
                .into_iter()
                .map(|thread| thread.join().unwrap_or(false))
                .filter(|in_time| !in_time)
                .count();
            late == 0
        })
        .await
        .unwrap_or(false)
    }
}

/// What one worker thread owns besides its sockets.
struct Worker {
    state: Arc<AppState>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
    closed: tokio::sync::mpsc::UnboundedSender<()>,
    drain_timeout: Duration,
}

impl Worker {
    /// The thread's body: returns whether its connections finished within the
    /// drain timeout.
    fn run(
        self,
        sockets: WorkerSockets,
        started: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    ) -> bool {
        // The worker's click events collect in a batch of its own, handed to the
        // event pump whenever the runtime is about to sleep (or the batch is full).
        let sink = self.state.sink.clone();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || sink.flush_thread())
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ =
                    started
                        .send(Err(anyhow::Error::new(error)
                            .context("cannot start an edge worker's runtime")));
                return false;
            }
        };
        let sink = self.state.sink.clone();
        sink.attach_thread();
        // Dropping the runtime at the end closes what the drain left open.
        let in_time = runtime.block_on(self.serve(sockets, started));
        sink.detach_thread();
        in_time
    }

    async fn serve(
        mut self,
        sockets: WorkerSockets,
        started: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    ) -> bool {
        let registered = (|| {
            let http = TcpListener::from_std(sockets.http)?;
            let https = match (sockets.https, &self.acceptor) {
                (Some(https), Some(acceptor)) => {
                    Some((TcpListener::from_std(https)?, acceptor.clone()))
                }
                _ => None,
            };
            std::io::Result::Ok((http, https))
        })();
        let (http, https) = match registered {
            Ok(listeners) => {
                let _ = started.send(Ok(()));
                listeners
            }
            Err(error) => {
                let _ = started
                    .send(Err(anyhow::Error::new(error)
                        .context("cannot register an edge worker's sockets")));
                return false;
            }
        };
        let state = &self.state;
        let connections = GracefulShutdown::new();
        loop {
            tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => break,
                accepted = http.accept() => {
                    if let Some(accepted) = admit(state, &self.limits.http, Listener::Http, accepted).await {
                        serve(state, &connections, accepted, Listener::Http);
                    }
                }
                accepted = accept_optional(&https) => {
                    if let (Some((_, acceptor)), Some(accepted)) =
                        (&https, admit(state, &self.limits.https, Listener::Https, accepted).await)
                    {
                        serve_tls(state, &connections, acceptor.clone(), accepted);
                    }
                }
            }
        }
        drop(http);
        drop(https);
        let _ = self.closed.send(());
        let in_time = tokio::time::timeout(self.drain_timeout, connections.shutdown())
            .await
            .is_ok();
        if !in_time {
            warn!(
                message = "Shutdown timeout reached with requests still in flight; closing them.",
                timeout_ms = self.drain_timeout.as_millis() as u64,
                worker = thread::current().name().unwrap_or("edge")
            );
        }
        in_time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_shares_one_port_and_a_plain_socket_does_not_join_it() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for socket in &group {
            assert_eq!(socket.local_addr().unwrap().port(), port);
        }
        // A second edge with one worker (a plain socket) cannot take the port.
        let taken = bind_group(group[0].local_addr().unwrap(), 1).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        // Nor can anything bind over a lone worker's plain socket.
        let single = bind_group("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let over = bind_group(single[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(over.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn every_socket_of_a_group_accepts() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 4).unwrap();
        let address = group[0].local_addr().unwrap();
        // Connections from many source ports spread over the group (the kernel
        // hashes them); every one is accepted by some member.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        let mut accepted = 0;
        let mut members_used = 0;
        for socket in &group {
            let mut here = 0;
            while socket.accept().is_ok() {
                here += 1;
            }
            accepted += here;
            members_used += usize::from(here > 0);
        }
        assert_eq!(accepted, clients.len());
        assert!(members_used > 1, "all 64 connections went to one socket");
    }
}
