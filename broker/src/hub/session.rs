//! A session: what the broker keeps for one `{uid}:{client_id}`, connected or not.
//! Its outbound path is a bounded queue plus the in-flight window; the connection
//! that owns the session drains it when woken. Nothing is allocated per session
//! until there is something to hold.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::Publication;
use crate::QoS;

/// Process-unique id of a session.
pub(crate) type SessionId = u64;

/// Options of one subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SubOpts {
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) id: Option<u32>,
}

impl SubOpts {
    #[cfg(test)]
    pub(crate) fn new(qos: QoS) -> Self {
        SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        }
    }
}

/// A message on its way to one session.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) msg: Arc<Publication>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// Subscription identifiers of every matching subscription (MQTT 5 §3.3.4).
    pub(crate) sub_ids: Box<[u32]>,
}

/// Where a sent QoS 1/2 message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) pkid: u16,
    pub(crate) out: Outgoing,
    pub(crate) stage: Stage,
}

/// Why the hub asks a connection to close (a takeover is seen by its generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The server is shutting down.
    ShuttingDown,
    /// The bridge disconnected the user (blocked, say).
    Kicked,
}

/// What a queue drop threw away, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    Nothing,
    Qos0,
    Qos12,
}

#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// Generation of the attached connection; 0 while offline.
    pub(crate) conn: u64,
    /// Generation of the last connection attached, online or not.
    pub(crate) last_conn: u64,
    /// Set by the hub to make the attached connection close.
    pub(crate) close: Option<CloseReason>,
    pub(crate) queue: VecDeque<Outgoing>,
    pub(crate) inflight: VecDeque<Inflight>,
    next_pkid: u16,
    /// Packet ids of QoS 2 PUBLISHes received and not yet released.
    pub(crate) incoming_qos2: Vec<u16>,
    pub(crate) subscriptions: HashMap<Box<str>, SubOpts>,
    /// How long the session outlives its connection; zero ends it at disconnect.
    pub(crate) expiry: Duration,
    /// The in-flight window: the client's Receive Maximum capped by config.
    pub(crate) window: u16,
}

impl SessionState {
    /// Queues `out`, dropping per DESIGN.md §9 when the queue is full: QoS 0 first,
    /// then the oldest QoS 1/2 (the store is the source of truth, sync recovers it).
    pub(crate) fn enqueue(&mut self, out: Outgoing, max: usize) -> Dropped {
        if self.queue.len() < max {
            self.queue.push_back(out);
            return Dropped::Nothing;
        }
        if out.qos == QoS::AtMostOnce {
            return Dropped::Qos0;
        }
        let dropped = match self.queue.iter().position(|o| o.qos == QoS::AtMostOnce) {
            Some(i) => {
                self.queue.remove(i);
                Dropped::Qos0
            }
            None => {
                self.queue.pop_front();
                Dropped::Qos12
            }
        };
        self.queue.push_back(out);
        dropped
    }

    /// The next packet id not in flight.
    pub(crate) fn next_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                continue;
            }
            let id = self.next_pkid;
            if !self.inflight.iter().any(|i| i.pkid == id) {
                return id;
            }
        }
    }

    /// Releases in-flight memory once nothing is pending, so an idle session
    /// holds no buffers.
    pub(crate) fn shrink_if_idle(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
        if self.inflight.is_empty() && self.inflight.capacity() > 0 {
            self.inflight = VecDeque::new();
        }
    }
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    /// `{uid}:{client_id}`; ids cannot contain `:`, so the split is unambiguous.
    pub(crate) key: Arc<str>,
    pub(crate) uid: Arc<str>,
    state: Mutex<SessionState>,
    /// Wakes the attached connection: something to send, or a close request.
    pub(crate) wake: Notify,
}

impl Session {
    pub(crate) fn new(id: SessionId, uid: Arc<str>, key: Arc<str>) -> Self {
        Session {
            id,
            key,
            uid,
            state: Mutex::new(SessionState::default()),
            wake: Notify::new(),
        }
    }

    /// The client id part of the key.
    pub(crate) fn client_id(&self) -> &str {
        &self.key[self.uid.len() + 1..]
    }

    /// Locks the state. A poisoned lock only means another thread panicked while
    /// holding it; the state itself is still consistent enough to go on.
    pub(crate) fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn new_for_test(id: SessionId) -> Arc<Self> {
        Arc::new(Session::new(id, "u".into(), format!("u:{id}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn out(qos: QoS, tag: u8) -> Outgoing {
        Outgoing {
            msg: Arc::new(Publication::new("t", Bytes::from(vec![tag]), qos, false)),
            qos,
            retain: false,
            sub_ids: Box::new([]),
        }
    }

    fn tags(st: &SessionState) -> Vec<u8> {
        st.queue.iter().map(|o| o.msg.payload[0]).collect()
    }

    #[test]
    fn a_full_queue_drops_qos_0_first_then_the_oldest_qos_1() {
        let mut st = SessionState::default();
        assert_eq!(st.enqueue(out(QoS::AtLeastOnce, 1), 3), Dropped::Nothing);
        assert_eq!(st.enqueue(out(QoS::AtMostOnce, 2), 3), Dropped::Nothing);
        assert_eq!(st.enqueue(out(QoS::AtLeastOnce, 3), 3), Dropped::Nothing);
        // Full: a new QoS 0 message is the one dropped.
        assert_eq!(st.enqueue(out(QoS::AtMostOnce, 4), 3), Dropped::Qos0);
        assert_eq!(tags(&st), vec![1, 2, 3]);
        // A QoS 1 message makes room by dropping the queued QoS 0 one...
        assert_eq!(st.enqueue(out(QoS::ExactlyOnce, 5), 3), Dropped::Qos0);
        assert_eq!(tags(&st), vec![1, 3, 5]);
        // ...and then the oldest QoS 1/2 one.
        assert_eq!(st.enqueue(out(QoS::AtLeastOnce, 6), 3), Dropped::Qos12);
        assert_eq!(tags(&st), vec![3, 5, 6]);
    }

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let mut st = SessionState {
            next_pkid: u16::MAX - 1,
            ..SessionState::default()
        };
        st.inflight.push_back(Inflight {
            pkid: u16::MAX,
            out: out(QoS::AtLeastOnce, 0),
            stage: Stage::Published,
        });
        st.inflight.push_back(Inflight {
            pkid: 1,
            out: out(QoS::AtLeastOnce, 0),
            stage: Stage::Published,
        });
        assert_eq!(st.next_pkid(), 2);
    }
}
