//! The uplink: what users publish on their own `users/{uid}/outbox` (DESIGN.md §3),
//! handed to the IM side instead of being routed.
//!
//! Each message comes with an [`Answer`]. The publishing connection acknowledges
//! (PUBACK for QoS 1, PUBREC for QoS 2) only once the answer is given, in publish
//! order, so an ack can mean "stored durably". A consumer that is slow to take
//! messages pauses the publishers (they are not read until there is room), never
//! drops a message and never blocks other connections.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::QoS;

/// Messages waiting for the consumer before publishers are paused.
pub(crate) const UPLINK_QUEUE: usize = 1024;

/// One publish on a user's outbox.
#[derive(Debug)]
pub struct UplinkMessage {
    /// The publishing user (the outbox's owner).
    pub uid: String,
    /// The publishing device.
    pub client_id: String,
    /// The PUBLISH's QoS; QoS 0 publishes have no ack, so their answer is ignored.
    pub qos: QoS,
    /// The payload, as published.
    pub payload: Bytes,
    /// How the publisher's ack is released.
    pub answer: Answer,
}

/// Why the IM side refuses an uplinked message; a v5 client sees it as the
/// PUBACK / PUBREC reason code, a 3.1.1 client (which has no negative ack) gets a
/// plain ack, and either way the IM side reports details on `users/{uid}/events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 0x80: no more specific reason.
    Unspecified,
    /// 0x83: valid, but not accepted (for example a rate limit or a store error).
    ImplementationSpecific,
    /// 0x87: the user may not send this (for example to a group it left).
    NotAuthorized,
    /// 0x97: a quota is exceeded.
    QuotaExceeded,
    /// 0x99: the payload is not what the outbox accepts (bad JSON, say).
    PayloadFormatInvalid,
}

/// The answer to one uplinked message. Dropping it unanswered (a failing
/// consumer) closes the publisher's connection without an ack, so the client
/// sends the message again after reconnecting: nothing is acknowledged that the
/// IM side did not accept.
#[derive(Debug)]
pub struct Answer(Option<oneshot::Sender<Result<(), Refusal>>>);

impl Answer {
    pub(crate) fn new() -> (Answer, oneshot::Receiver<Result<(), Refusal>>) {
        let (tx, rx) = oneshot::channel();
        (Answer(Some(tx)), rx)
    }

    /// An answer nobody waits for (QoS 0, or a will).
    pub(crate) fn none() -> Answer {
        Answer(None)
    }

    /// The message is accepted: the publisher gets its ack.
    pub fn accept(mut self) {
        if let Some(tx) = self.0.take() {
            // The connection may be gone already; then nobody needs the ack.
            let _ = tx.send(Ok(()));
        }
    }

    /// The message is refused: the publisher gets `why` (v5) or a plain ack (3.1.1).
    pub fn refuse(mut self, why: Refusal) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Err(why));
        }
    }
}

/// The receiving end: every user's outbox publishes, in each connection's order.
#[derive(Debug)]
pub struct Uplink {
    rx: mpsc::Receiver<UplinkMessage>,
}

impl Uplink {
    /// The next message; `None` once the broker is gone.
    pub async fn recv(&mut self) -> Option<UplinkMessage> {
        self.rx.recv().await
    }
}

/// Where the edge finds the consumer, once the IM side has taken the uplink.
#[derive(Debug, Default)]
pub(crate) struct UplinkSlot(OnceLock<mpsc::Sender<UplinkMessage>>);

impl UplinkSlot {
    /// The receiving end, the first time only.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Uplink> {
        let (tx, rx) = mpsc::channel(UPLINK_QUEUE);
        self.0.set(tx).ok()?;
        Some(Uplink { rx })
    }

    /// The sender, while a consumer listens.
    pub(crate) fn sender(&self) -> Option<&mpsc::Sender<UplinkMessage>> {
        self.0.get().filter(|tx| !tx.is_closed())
    }
}
