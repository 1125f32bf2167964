//! A user's publishes on its own outbox: handed to the IM side's uplink, and
//! acknowledged only when it answers, in publish order.
//!
//! Acks owed to the client wait in `Conn::acks`, oldest first: an outbox publish
//! waits for its answer, and any ack behind it (of a later publish) waits too, as
//! MQTT wants acks in the order the PUBLISHes came (3.1.1 §4.6). While the uplink
//! queue is full, or `mqtt.max_inflight` acks are owed, the client is not read:
//! it is paused by TCP, nothing is dropped, and no other connection waits.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{self, PubAckReason, PubRecReason};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::super::Transport;
use super::super::codec::{Version, reply};
use super::Conn;
use super::close::Close;
use crate::QoS;
use crate::hub::session::{Receipt, Stale};
use crate::uplink::{Answer, Refusal, UplinkMessage};

type Verdict = Result<(), Refusal>;

/// An ack owed to the client.
#[derive(Debug)]
pub(super) enum Owed {
    /// Waiting for the IM side's answer.
    Asked {
        pkid: u16,
        qos: QoS,
        answer: oneshot::Receiver<Verdict>,
    },
    /// Answered (or the answer was dropped), not yet acknowledged.
    Answered {
        pkid: u16,
        qos: QoS,
        verdict: Option<Verdict>,
    },
    /// An ack ready to go, behind an earlier one.
    Ready(Ack),
}

/// An ack of an incoming PUBLISH.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ack {
    PubAck(u16, PubAckReason),
    PubRec(u16, PubRecReason),
}

impl Ack {
    fn packet(self) -> v5::Packet {
        match self {
            Ack::PubAck(pkid, reason) => reply::puback(pkid, reason),
            Ack::PubRec(pkid, reason) => reply::pubrec(pkid, reason),
        }
    }
}

/// An outbox publish that found the uplink queue full, with the ack it will owe.
#[derive(Debug)]
struct Held {
    msg: UplinkMessage,
    owed: Option<Owed>,
}

/// What a connection owes its client on the uplink's account; boxed and only
/// there while something is owed, so that an idle connection pays 8 bytes.
#[derive(Debug, Default)]
pub(super) struct Owing {
    acks: VecDeque<Owed>,
    held: Option<Held>,
}

impl Owing {
    fn front_is_asked(&self) -> bool {
        matches!(self.acks.front(), Some(Owed::Asked { .. }))
    }
}

impl<S: Transport> Conn<S> {
    /// Sends `packet` (an ack) now, or behind the acks still owed.
    pub(super) fn owe(&mut self, ack: Ack) {
        match self.owing.as_deref_mut() {
            Some(o) if !o.acks.is_empty() => o.acks.push_back(Owed::Ready(ack)),
            _ => self.push(&ack.packet()),
        }
    }

    /// Whether the client must not be read now: an outbox publish waits for room
    /// in the uplink, or as many acks are owed as we let a client have in flight.
    pub(super) fn reading_paused(&self) -> bool {
        let cap = usize::from(self.edge.cfg.max_inflight);
        self.owing
            .as_deref()
            .is_some_and(|o| o.held.is_some() || o.acks.len() >= cap)
    }

    /// Whether an outbox publish waits for room in the uplink.
    pub(super) fn holds_uplink(&self) -> bool {
        self.owing.as_deref().is_some_and(|o| o.held.is_some())
    }

    /// Whether the oldest owed ack waits for an answer.
    pub(super) fn awaiting_answer(&self) -> bool {
        self.owing.as_deref().is_some_and(Owing::front_is_asked)
    }

    /// A PUBLISH on the client's own outbox.
    pub(super) fn uplink(&mut self, pkid: u16, qos: QoS, payload: Bytes) -> Result<(), Close> {
        if qos == QoS::ExactlyOnce {
            let held = self
                .session
                .holds_incoming(self.generation, pkid)
                .map_err(|Stale| Close::taken_over())?;
            if held {
                // Accepted before; the client did not see our PUBREC.
                self.owe(Ack::PubRec(pkid, PubRecReason::Success));
                return Ok(());
            }
            let pending = self.owing.as_deref().map(|o| &o.acks);
            if pending.is_some_and(|acks| acks.iter().any(|o| o.is_qos2(pkid))) {
                // A retransmission while the IM side is still answering.
                return Ok(());
            }
        }
        let Some(tx) = self.edge.uplink.sender() else {
            return self.refuse_publish(pkid, qos);
        };
        let (answer, owed) = if qos == QoS::AtMostOnce {
            (Answer::none(), None)
        } else {
            let (answer, rx) = Answer::new();
            let owed = Owed::Asked {
                pkid,
                qos,
                answer: rx,
            };
            (answer, Some(owed))
        };
        let msg = UplinkMessage {
            uid: self.session.uid.to_string(),
            client_id: self.session.client_id().to_owned(),
            qos,
            payload,
            answer,
        };
        match tx.try_send(msg) {
            Ok(()) => {
                self.edge.hub.metrics.uplinked.inc();
                if let Some(owed) = owed {
                    self.owing.get_or_insert_default().acks.push_back(owed);
                }
                Ok(())
            }
            Err(TrySendError::Full(msg)) => {
                self.owing.get_or_insert_default().held = Some(Held { msg, owed });
                Ok(())
            }
            Err(TrySendError::Closed(_)) => self.refuse_publish(pkid, qos),
        }
    }

    /// Waits for room in the uplink for the held publish, serving our deliveries
    /// and earlier answers meanwhile.
    pub(super) async fn wait_for_uplink(&mut self) -> Result<(), Close> {
        while self.holds_uplink() {
            let Some(tx) = self.edge.uplink.sender().cloned() else {
                return self.refuse_held();
            };
            tokio::select! {
                permit = tx.reserve_owned() => {
                    let Ok(permit) = permit else {
                        return self.refuse_held();
                    };
                    let Some(o) = self.owing.as_deref_mut() else { break };
                    let Some(held) = o.held.take() else { break };
                    permit.send(held.msg);
                    o.acks.extend(held.owed);
                    self.edge.hub.metrics.uplinked.inc();
                    // Packets that waited in the buffer (which may hold again).
                    self.handle_buffered()?;
                }
                () = self.session.wake.notified() => {
                    self.drain()?;
                    self.flush().await?;
                }
                () = answered(&mut self.owing), if self.awaiting_answer() => {
                    self.settle()?;
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    /// The held publish cannot be uplinked (the consumer is gone): refused.
    fn refuse_held(&mut self) -> Result<(), Close> {
        let held = self.owing.as_deref_mut().and_then(|o| o.held.take());
        let (pkid, qos) = held
            .and_then(|h| h.owed)
            .map_or((0, QoS::AtMostOnce), |o| o.id());
        self.refuse_publish(pkid, qos)
    }

    /// Sends every owed ack from the front whose answer is in.
    pub(super) fn settle(&mut self) -> Result<(), Close> {
        loop {
            let Some(o) = self.owing.as_deref_mut() else {
                return Ok(());
            };
            if let Some(Owed::Asked { pkid, qos, answer }) = o.acks.front_mut() {
                let verdict = match answer.try_recv() {
                    Ok(v) => Some(v),
                    Err(oneshot::error::TryRecvError::Empty) => return Ok(()),
                    Err(oneshot::error::TryRecvError::Closed) => None,
                };
                let (pkid, qos) = (*pkid, *qos);
                o.acks[0] = Owed::Answered { pkid, qos, verdict };
            }
            match o.acks.pop_front() {
                None => {
                    if o.held.is_none() {
                        // Nothing owed: the connection holds nothing for it.
                        self.owing = None;
                    }
                    return Ok(());
                }
                Some(Owed::Ready(ack)) => self.push(&ack.packet()),
                Some(Owed::Answered { pkid, qos, verdict }) => self.answer(pkid, qos, verdict)?,
                Some(Owed::Asked { .. }) => return Ok(()),
            }
        }
    }

    /// The ack for one answered outbox publish.
    fn answer(&mut self, pkid: u16, qos: QoS, verdict: Option<Verdict>) -> Result<(), Close> {
        let Some(verdict) = verdict else {
            tracing::warn!(
                user = %self.session.uid,
                client_id = self.session.client_id(),
                "uplink answer dropped; closing without ack so that the client retries"
            );
            return Err(Close::uplink_failed());
        };
        if verdict.is_err() {
            self.edge.hub.metrics.uplink_refused.inc();
        }
        // MQTT 3.1.1 has no negative ack: a refused message is acknowledged, and
        // the IM side tells the user why on its events topic.
        let refusal = verdict.err().filter(|_| self.version == Version::V5);
        match (qos, refusal) {
            (QoS::AtMostOnce, _) => {}
            (QoS::AtLeastOnce, None) => self.push(&reply::puback(pkid, PubAckReason::Success)),
            (QoS::AtLeastOnce, Some(why)) => self.push(&reply::puback(pkid, puback_reason(why))),
            (QoS::ExactlyOnce, Some(why)) => self.push(&reply::pubrec(pkid, pubrec_reason(why))),
            (QoS::ExactlyOnce, None) => {
                let max = usize::from(self.edge.cfg.max_inflight);
                match self.session.receive_qos2(self.generation, pkid, max) {
                    Err(Stale) => return Err(Close::taken_over()),
                    Ok(Receipt::TooMany) => {
                        return Err(Close::error(
                            v5::DisconnectReasonCode::ReceiveMaximumExceeded,
                        ));
                    }
                    Ok(Receipt::New | Receipt::Duplicate) => {
                        self.push(&reply::pubrec(pkid, PubRecReason::Success));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Owed {
    fn id(&self) -> (u16, QoS) {
        match self {
            Owed::Asked { pkid, qos, .. } | Owed::Answered { pkid, qos, .. } => (*pkid, *qos),
            Owed::Ready(_) => (0, QoS::AtMostOnce),
        }
    }

    fn is_qos2(&self, id: u16) -> bool {
        self.id() == (id, QoS::ExactlyOnce)
    }
}

/// Resolves once the oldest owed ack has its answer (which stays for `settle`).
pub(super) async fn answered(owing: &mut Option<Box<Owing>>) {
    poll_fn(|cx| {
        let Some(acks) = owing.as_deref_mut().map(|o| &mut o.acks) else {
            return Poll::Ready(());
        };
        let Some(Owed::Asked { pkid, qos, answer }) = acks.front_mut() else {
            return Poll::Ready(());
        };
        let verdict = match Pin::new(answer).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r.ok(),
        };
        let (pkid, qos) = (*pkid, *qos);
        acks[0] = Owed::Answered { pkid, qos, verdict };
        Poll::Ready(())
    })
    .await
}

fn puback_reason(why: Refusal) -> PubAckReason {
    match why {
        Refusal::Unspecified => PubAckReason::UnspecifiedError,
        Refusal::ImplementationSpecific => PubAckReason::ImplementationSpecificError,
        Refusal::NotAuthorized => PubAckReason::NotAuthorized,
        Refusal::QuotaExceeded => PubAckReason::QuotaExceeded,
        Refusal::PayloadFormatInvalid => PubAckReason::PayloadFormatInvalid,
    }
}

fn pubrec_reason(why: Refusal) -> PubRecReason {
    match why {
        Refusal::Unspecified => PubRecReason::UnspecifiedError,
        Refusal::ImplementationSpecific => PubRecReason::ImplementationSpecificError,
        Refusal::NotAuthorized => PubRecReason::NotAuthorized,
        Refusal::QuotaExceeded => PubRecReason::QuotaExceeded,
        Refusal::PayloadFormatInvalid => PubRecReason::PayloadFormatInvalid,
    }
}
