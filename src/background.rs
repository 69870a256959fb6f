//! Bulk work (reloading a million links, freeing an old map) runs at the lowest
//! CPU priority, so it takes only the time requests leave: a reload may take
//! longer on a busy node, a redirect does not.

/// Runs `work` on a new thread at the lowest priority and waits for its result.
/// Threads `work` starts inherit the priority (as Linux threads do).
pub fn run_at_low_priority<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(scope, || {
                lower_this_thread();
                work()
            })
            .expect("a thread can be started")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Lowers the calling thread to the lowest priority (nice 19).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let this = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(this), 19) {
            tracing::debug!(message = "Cannot lower a background thread's priority.", %error);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn work_runs_niced_and_returns_its_result() {
        let niceness = run_at_low_priority("test", || {
            let inner = std::thread::spawn(|| {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            });
            (
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap(),
                inner.join().unwrap(),
            )
        });
        assert_eq!(niceness, (19, 19), "the thread and the threads it starts");
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_ne!(here, 19, "the caller keeps its priority");
    }
}
