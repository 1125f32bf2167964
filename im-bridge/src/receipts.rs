//! Read receipts: when a reader's cursor in a direct conversation moves forward,
//! the other party hears `{"type":"read","conv","user","seq","ts"}` on its
//! `users/{peer}/events`, at most once a second per conversation and reader.
//! The first ack of a quiet spell is told at once; acks within the next second
//! only raise the seq that a timer tells when the second is over (the latest
//! wins), so a reader scrolling through a backlog sends two events, not two
//! hundred. Group acks tell nobody: that would cost an event per member per ack;
//! members ask `GET /v1/conversations/{conv}/reads` instead.
//!
//! A pending receipt lives in memory only, at most [`MAX_PENDING`] of them: a
//! receipt lost in a restart is caught up by the next ack, and by the reads
//! endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use broker::BrokerHandle;
use imqtt_wire::{ConvId, ConvKind, Event};

/// The shortest time between two receipts of one reader in one conversation.
const EVERY: Duration = Duration::from_secs(1);
/// Conversations with a receipt in its second at once; past it, receipts of
/// further ones are not sent (counted in the log at debug level).
const MAX_PENDING: usize = 100_000;

/// A receipt's second: what is to be told when it is over.
#[derive(Debug)]
struct Slot {
    seq: u64,
    ts: u64,
    /// Raised since the last one told.
    newer: bool,
}

/// The receipts being coalesced.
#[derive(Debug)]
pub struct Receipts {
    broker: BrokerHandle,
    on: bool,
    /// By (reader, conversation).
    slots: Mutex<HashMap<(String, ConvId), Slot>>,
}

/// The other party of a direct conversation.
pub fn peer_of<'c>(conv: &'c ConvId, reader: &str) -> Option<&'c str> {
    match conv.kind() {
        ConvKind::Dm { a, b } if a == reader => Some(b),
        ConvKind::Dm { a, b } if b == reader => Some(a),
        _ => None,
    }
}

impl Receipts {
    /// `on`: `delivery.read_receipts`.
    pub fn new(broker: BrokerHandle, on: bool) -> Arc<Receipts> {
        Arc::new(Receipts {
            broker,
            on,
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<(String, ConvId), Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `reader` has read direct conversation `conv` up to `seq` (its cursor
    /// moved there, durably). Call from the runtime.
    pub fn read(self: &Arc<Self>, reader: &str, conv: &ConvId, seq: u64, ts: u64) {
        if !self.on || peer_of(conv, reader).is_none() {
            return;
        }
        let key = (reader.to_owned(), conv.clone());
        {
            let mut slots = self.slots();
            if let Some(slot) = slots.get_mut(&key) {
                if seq > slot.seq {
                    *slot = Slot {
                        seq,
                        ts,
                        newer: true,
                    };
                }
                return;
            }
            if slots.len() >= MAX_PENDING {
                tracing::debug!(%conv, "too many receipts pending; this one is not sent");
                return;
            }
            slots.insert(
                key.clone(),
                Slot {
                    seq,
                    ts,
                    newer: false,
                },
            );
        }
        self.tell(&key.0, &key.1, seq, ts);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EVERY).await;
                let due = {
                    let mut slots = this.slots();
                    match slots.get_mut(&key) {
                        Some(slot) if slot.newer => {
                            slot.newer = false;
                            Some((slot.seq, slot.ts))
                        }
                        _ => {
                            slots.remove(&key);
                            None
                        }
                    }
                };
                match due {
                    Some((seq, ts)) => this.tell(&key.0, &key.1, seq, ts),
                    None => return,
                }
            }
        });
    }

    fn tell(&self, reader: &str, conv: &ConvId, seq: u64, ts: u64) {
        let Some(peer) = peer_of(conv, reader) else {
            return;
        };
        crate::delivery::tell(
            &self.broker,
            peer,
            &Event::Read {
                conv: conv.clone(),
                user: reader.to_owned(),
                seq,
                ts,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_direct_conversation_is_the_other_one() {
        let dm: ConvId = "dm:ann:bob".parse().expect("conv");
        assert_eq!(peer_of(&dm, "ann"), Some("bob"));
        assert_eq!(peer_of(&dm, "bob"), Some("ann"));
        assert_eq!(peer_of(&dm, "cat"), None);
        let group: ConvId = "group:team".parse().expect("conv");
        assert_eq!(peer_of(&group, "ann"), None);
    }
}
