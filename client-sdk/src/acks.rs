//! Batched acks: the application takes messages one by one, the server hears of
//! it at most every [`ACK_INTERVAL`] (or every [`ACK_BATCH`] messages), one
//! `POST /v1/ack` carrying the highest seq per conversation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::Api;
use crate::wire::{AckRequest, ConvId};

/// The longest an ack waits to be sent. Each ack is a durable write on the
/// server, in the commit loop that messages go through too: at 250 ms (and one
/// ack per 500 messages) the client library's p99 at 5,000 messages/s was 23%
/// above a plain subscriber's, at 1 s and 10,000 within 3%.
pub(crate) const ACK_INTERVAL: Duration = Duration::from_secs(1);
/// Messages taken after which the ack goes at once.
const ACK_BATCH: usize = 10_000;
/// The server takes at most this many cursors per ack.
const MAX_CURSORS: usize = 1000;

/// The acks not yet sent.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    waiting: Mutex<Waiting>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Waiting {
    cursors: HashMap<ConvId, u64>,
    taken: usize,
}

impl Acks {
    /// The application took `seq` of `conv`.
    pub(crate) fn record(&self, conv: &ConvId, seq: u64) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let c = w.cursors.entry(conv.clone()).or_default();
        *c = (*c).max(seq);
        w.taken += 1;
        if w.taken >= ACK_BATCH {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> HashMap<ConvId, u64> {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.taken = 0;
        std::mem::take(&mut w.cursors)
    }

    /// Puts back cursors whose ack failed (a newer value wins).
    fn restore(&self, cursors: HashMap<ConvId, u64>) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for (conv, seq) in cursors {
            let c = w.cursors.entry(conv).or_default();
            *c = (*c).max(seq);
        }
    }

    /// Sends acks until `shutdown` fires, then sends what is left once.
    pub(crate) async fn run(&self, api: Api, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stopping = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(ACK_INTERVAL) => false,
                _ = shutdown.changed() => true,
            };
            self.flush(&api).await;
            if stopping {
                return;
            }
        }
    }

    /// Sends every waiting cursor: a transport or server failure keeps them for
    /// the next round; a refusal (a conversation the user may no longer ack, a
    /// deleted group) is retried one conversation at a time, so one refused
    /// cursor does not hold back the others.
    pub(crate) async fn flush(&self, api: &Api) {
        let cursors = self.take();
        if cursors.is_empty() {
            return;
        }
        let all: Vec<(ConvId, u64)> = cursors.into_iter().collect();
        for chunk in all.chunks(MAX_CURSORS) {
            let req = AckRequest {
                cursors: chunk.iter().cloned().collect::<BTreeMap<_, _>>(),
            };
            match api.ack(&req).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    tracing::debug!(error = %e, "ack failed, kept for later");
                    self.restore(chunk.iter().cloned().collect());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ack refused, acking one by one");
                    for (conv, seq) in chunk {
                        let one = AckRequest {
                            cursors: BTreeMap::from([(conv.clone(), *seq)]),
                        };
                        if let Err(e) = api.ack(&one).await {
                            if e.is_retryable() {
                                self.restore(HashMap::from([(conv.clone(), *seq)]));
                            } else {
                                tracing::warn!(error = %e, %conv, seq, "ack refused");
                            }
                        }
                    }
                }
            }
        }
    }
}
