//! The process's shutdown signal: SIGTERM or SIGINT (Ctrl-C), whichever comes first.

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now, and completes on the first of
/// them. Installed at the call, not at the first poll: a signal that arrives
/// between "Serving." and the server's first look at this future is caught
/// rather than killing the process with the default action. Call it within the
/// runtime.
pub fn shutdown() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(message = "Received SIGTERM; draining."),
                _ = int.recv() => tracing::info!(message = "Received SIGINT; draining."),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(message = "Received Ctrl-C; draining.");
    }
}
