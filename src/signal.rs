//! The process's shutdown signal: SIGTERM or SIGINT (Ctrl-C), whichever comes first.

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        tokio::select! {
            _ = term.recv() => tracing::info!(message = "Received SIGTERM; draining."),
            _ = int.recv() => tracing::info!(message = "Received SIGINT; draining."),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(message = "Received Ctrl-C; draining.");
    }
}
