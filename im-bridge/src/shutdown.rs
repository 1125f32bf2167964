//! The stop request: SIGTERM or SIGINT (Ctrl-C), listened for from the moment a
//! [`Shutdown`] exists, so a signal that arrives while the server is still starting
//! is seen, not fatal.
//!
//! Installing a handler has a gap: signal-hook-registry (under tokio) swaps in
//! its handler before it records what the handler should do, and tokio enables a
//! signal before it subscribes its listener; a signal in either gap is handled
//! and forgotten. So [`hold_signals`] blocks both signals before the runtime's
//! threads exist (they inherit the mask), and [`Shutdown::on_signals`] unblocks
//! them on the calling thread once everything is in place: a signal sent
//! meanwhile waits, then is delivered to that thread and heard.

use tokio::sync::watch;

/// Whether the process has been asked to stop. Cheap to clone; every clone sees the
/// same request.
#[derive(Clone, Debug)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
}

/// Blocks SIGTERM and SIGINT on this thread, and so on every thread it starts
/// from now on; call it first in `main`, before the runtime is built.
/// [`Shutdown::on_signals`], on the same thread, lets them through again.
pub fn hold_signals() -> std::io::Result<()> {
    mask_stop_signals(true)
}

/// Blocks (`true`) or unblocks SIGTERM and SIGINT on this thread; unblocked, a
/// signal that came meanwhile is delivered now.
fn mask_stop_signals(block: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        let how = if block {
            SigmaskHow::SIG_BLOCK
        } else {
            SigmaskHow::SIG_UNBLOCK
        };
        pthread_sigmask(how, Some(&set), None)?;
    }
    #[cfg(not(unix))]
    let _ = block;
    Ok(())
}

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers now, replacing the default action
    /// (terminate at once) for the rest of the process's life, then lets the
    /// signals [`hold_signals`] blocked through to this thread. Must run inside
    /// the Tokio runtime, on the thread that called [`hold_signals`] (the one
    /// that runs `block_on`), and before anything that must be flushed or closed
    /// is opened.
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
        mask_stop_signals(false)?;
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
