//! The stop request: SIGTERM or SIGINT (Ctrl-C), listened for from the moment a
//! [`Shutdown`] exists, so a signal that arrives while the server is still starting
//! is seen, not fatal.

use tokio::sync::watch;

/// Whether the process has been asked to stop. Cheap to clone; every clone sees the
/// same request.
#[derive(Clone, Debug)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers now, replacing the default action
    /// (terminate at once) for the rest of the process's life. Must run inside the
    /// Tokio runtime, and before anything that must be flushed or closed is opened.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let (tx, requested) = watch::channel(false);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // `signal()` installs the handler when called, not when first polled:
            // from here on a signal is recorded even if nobody is waiting yet.
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::spawn(async move {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                tracing::info!("{name} received");
                let _ = tx.send(true);
            });
        }
        #[cfg(not(unix))]
        {
            let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
            tokio::spawn(async move {
                ctrl_c.recv().await;
                tracing::info!("Ctrl-C received");
                let _ = tx.send(true);
            });
        }
        Ok(Shutdown { requested })
    }

    /// Whether a stop has been requested by now.
    pub fn is_requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Resolves once a stop is requested (at once if it already was).
    pub async fn requested(&mut self) {
        // An error means the sender is gone, which only happens as the runtime
        // shuts down: that is a stop too.
        let _ = self.requested.wait_for(|stop| *stop).await;
    }
}
