//! Flow control for MQTT publishers: a publisher whose messages fill a live
//! subscriber's queue is not read for a while, so that TCP slows it to the
//! subscriber's pace instead of the queue dropping messages.
//!
//! Only subscribers that keep taking messages are waited for. One that stopped
//! (it does not read, its window is full) costs only itself: its queue fills and
//! then drops by the policy of DESIGN.md §9, counted, and no publisher waits for
//! it. So a publisher's pause is bounded in total: by `STALL` for each
//! subscriber that stops while being waited for, and `MAX_PAUSE` per wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::Transport;
use super::Conn;
use super::close::Close;
use crate::hub::session::Session;

/// Longest a publisher is paused in one wait.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// A subscriber that has not taken a message for this long is stalled: nobody
/// waits for it.
const STALL: Duration = Duration::from_millis(100);

impl<S: Transport> Conn<S> {
    /// Remembers the first congested subscriber worth waiting for: not this
    /// session itself, and one that is still taking messages.
    pub(super) fn note_pressure(&mut self, targets: Vec<Arc<Session>>) {
        if self.congested.is_some() || targets.is_empty() {
            return;
        }
        let now = Instant::now();
        let low = self.edge.hub.low_watermark();
        self.congested = targets
            .into_iter()
            .find(|t| t.id != self.session.id && t.backlog(now, STALL).is_some_and(|n| n > low));
    }

    /// While the congested subscriber is above the low watermark and keeps
    /// taking messages, this client is not read (TCP pushes back). Our own
    /// deliveries go on meanwhile.
    pub(super) async fn wait_for_room(&mut self) -> Result<(), Close> {
        let Some(target) = self.congested.take() else {
            return Ok(());
        };
        let low = self.edge.hub.low_watermark();
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let now = Instant::now();
            match target.backlog(now, STALL) {
                Some(len) if len > low && now - start < MAX_PAUSE => {}
                // Room enough, gone, stalled, or waited long enough.
                _ => return Ok(()),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.session.wake.notified() => {
                    self.drain()?;
                    self.flush().await?;
                }
            }
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }
}
