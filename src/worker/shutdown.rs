//! A shutdown flag that tasks can both poll (between chunks, steps, messages) and await.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Shutdown {
    requested: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once [`Shutdown::trigger`] was called (immediately if it already was).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// What `worker` and `serve` do on SIGINT/SIGTERM: the first stops claiming and stops
/// running executions at a checkpoint (`shutdown`); the second exits at once.
pub async fn on_signals(shutdown: std::sync::Arc<Shutdown>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    let mut received = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        received += 1;
        if received == 1 {
            tracing::info!(
                "stopping: no new claims; running executions stop now at a checkpoint, their commands killed (signal again to exit at once)"
            );
            shutdown.trigger();
        } else {
            // Every file is replaced atomically or appended whole, so what is on disk
            // stays readable; the interrupted step is repeated by the next worker. No
            // command may outlive the worker: exit skips the calls' own clean-up.
            crate::tools::process::kill_all();
            // Nor may a lease outlive it, keeping the next worker waiting.
            crate::store::release_before_exit(std::time::Duration::from_secs(2));
            std::process::exit(i32::from(crate::error::exit::CANCELLED));
        }
    }
}
