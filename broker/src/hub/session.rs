//! A session: what the broker keeps for one `{uid}:{client_id}`, connected or not.
//! Its outbound path is a bounded queue plus the in-flight window; the connection
//! that owns the session drains it when woken. Nothing is allocated per session
//! until there is something to hold.
//!
//! The generation rule lives here and nowhere else: every connection attached to
//! a session gets a new, never-zero generation, and a connection may change the
//! session (ack, release, drain, set its expiry) only while its generation is the
//! attached one. A connection that was taken over gets [`Stale`] and closes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Publication;
use crate::QoS;

/// Process-unique id of a session.
pub(crate) type SessionId = u64;

/// The generation of a connection attached to a session; never zero.
pub(crate) type Generation = u64;

/// The `conn` of a session that no connection holds.
const OFFLINE: Generation = 0;

/// The connection asking is no longer the one attached to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stale;

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
struct Inflight {
    pkid: u16,
    out: Outgoing,
    stage: Stage,
}

/// Why the hub asks a connection to close (a takeover is seen by its generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseRequest {
    /// The server is shutting down.
    ShuttingDown,
    /// The bridge disconnected the user (blocked, say).
    Disconnected,
}

/// Why a connection must stop serving its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Another connection took the session over.
    TakenOver,
    /// The hub asked it to close.
    Requested(CloseRequest),
}

/// What a queue drop threw away, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    Nothing,
    Qos0,
    Qos12,
}

/// What became of an incoming QoS 2 packet id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// First receipt: deliver it.
    New,
    /// A retransmission of an unreleased id: acknowledge, do not deliver again.
    Duplicate,
    /// More unreleased ids than the Receive Maximum we advertised.
    TooMany,
}

/// What the connection's write of one message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    Sent,
    /// Over the client's Maximum Packet Size: dropped.
    TooLarge,
}

/// What a drain did, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    pub(crate) sent: usize,
    pub(crate) expired: usize,
    pub(crate) too_large: usize,
}

#[derive(Debug, Default)]
struct SessionState {
    /// Generation of the attached connection; `OFFLINE` while none is.
    conn: Generation,
    /// Whether the attached connection is one of its user's devices, which make
    /// the user online; an admin's tool (a monitor, a conformance suite) is not.
    device: bool,
    /// Generation of the last connection attached, online or not.
    last_conn: Generation,
    /// Set by the hub to make the attached connection close.
    close: Option<CloseRequest>,
    queue: VecDeque<Outgoing>,
    inflight: VecDeque<Inflight>,
    next_pkid: u16,
    /// Packet ids of QoS 2 PUBLISHes received and not yet released.
    incoming_qos2: Vec<u16>,
    subscriptions: HashMap<Box<str>, SubOpts>,
    /// How long the session outlives its connection; zero ends it at disconnect.
    expiry: Duration,
    /// The in-flight window: the client's Receive Maximum capped by config.
    window: u16,
    /// When the last connection attached, Unix milliseconds: of two nodes holding
    /// the same session, the later one keeps it.
    attached_ms: u64,
    /// The last connection attached was an admin's tool, not a device.
    tool: bool,
    /// When the connection last took messages off the queue or freed window
    /// slots, or got work it could take at once: a subscriber that has not for a
    /// while is stalled, and publishers do not wait for it (`Session::backlog`).
    progressed_at: Option<Instant>,
}

impl SessionState {
    fn is_online(&self) -> bool {
        self.conn != OFFLINE
    }

    /// Queues `out`, dropping per DESIGN.md §9 when the queue is full: QoS 0 first,
    /// then the oldest QoS 1/2 (the store is the source of truth, sync recovers it).
    fn enqueue(&mut self, out: Outgoing, max: usize) -> Dropped {
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
    fn next_pkid(&mut self) -> u16 {
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
    fn shrink_if_idle(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
        if self.inflight.is_empty() && self.inflight.capacity() > 0 {
            self.inflight = VecDeque::new();
        }
    }
}

/// A connection that held a session before another took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) generation: Generation,
    /// It was a device of the user (see `SessionState::device`).
    pub(super) device: bool,
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
    fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, if `generation` is the attached connection.
    fn owned(&self, generation: Generation) -> Result<MutexGuard<'_, SessionState>, Stale> {
        let st = self.state();
        if st.conn == generation {
            Ok(st)
        } else {
            Err(Stale)
        }
    }

    /// Whether a connection holds the session.
    pub(crate) fn is_online(&self) -> bool {
        self.state().is_online()
    }

    /// Whether the session is still held by the connection of `generation`, or
    /// was last held by it and nobody came since.
    pub(crate) fn last_held_by(&self, generation: Generation) -> bool {
        self.state().last_conn == generation
    }

    /// When the last connection attached, Unix milliseconds.
    pub(crate) fn attached_ms(&self) -> u64 {
        self.state().attached_ms
    }

    /// Whether the last connection attached was an admin's tool.
    pub(crate) fn is_tool(&self) -> bool {
        self.state().tool
    }

    /// The session's filters.
    pub(crate) fn filters(&self) -> Vec<String> {
        self.state()
            .subscriptions
            .keys()
            .map(|f| f.to_string())
            .collect()
    }

    /// How long the session outlives its connection.
    pub(crate) fn expiry(&self) -> Duration {
        self.state().expiry
    }

    // ---- the hub's side: attaching, detaching, ending ----

    /// Makes `generation` the attached connection, with its expiry and window.
    /// Returns the generation that held it before (and must now close), if any.
    pub(super) fn attach(
        &self,
        generation: Generation,
        expiry: Duration,
        window: u16,
        device: bool,
    ) -> Option<Held> {
        let mut st = self.state();
        let before = st.is_online().then_some(Held {
            generation: st.conn,
            device: st.device,
        });
        st.conn = generation;
        st.device = device;
        st.tool = !device;
        st.attached_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        st.last_conn = generation;
        st.close = None;
        st.expiry = expiry;
        st.window = window;
        st.progressed_at = None;
        drop(st);
        if before.is_some() {
            self.wake.notify_one();
        }
        before
    }

    /// Tells the attached connection, if any, that it was taken over by `by`,
    /// without attaching it (the session is about to end). Returns the generation
    /// that held it, if any.
    pub(super) fn evict(&self, by: Generation) -> Option<Held> {
        let mut st = self.state();
        let before = st.is_online().then_some(Held {
            generation: st.conn,
            device: st.device,
        });
        st.device = false;
        // Never a generation a connection of this session holds: the old one sees
        // it and closes.
        st.conn = by;
        drop(st);
        if before.is_some() {
            self.wake.notify_one();
        }
        before
    }

    /// The generation of the attached connection, if it is a device of the user.
    pub(crate) fn attached_device(&self) -> Option<Generation> {
        let st = self.state();
        (st.is_online() && st.device).then_some(st.conn)
    }

    /// The connection of `generation` went away. Returns the session's expiry and
    /// whether that connection was a device, if it was the attached one; `None`
    /// if it had been taken over already.
    pub(super) fn detach(&self, generation: Generation) -> Option<(Duration, bool)> {
        let mut st = self.owned(generation).ok()?;
        let device = std::mem::take(&mut st.device);
        st.conn = OFFLINE;
        st.close = None;
        st.shrink_if_idle();
        Some((st.expiry, device))
    }

    /// Whether the session is offline and the last connection is `generation`
    /// (its expiry timer is still the one that counts).
    pub(super) fn expired_since(&self, generation: Generation) -> bool {
        let st = self.state();
        !st.is_online() && st.last_conn == generation
    }

    /// Takes the subscriptions and drops everything queued: the session ends.
    /// Called with the index write lock held, so no subscribe slips in between.
    pub(super) fn end(&self) -> HashMap<Box<str>, SubOpts> {
        let mut st = self.state();
        st.queue.clear();
        st.inflight.clear();
        st.incoming_qos2.clear();
        st.shrink_if_idle();
        std::mem::take(&mut st.subscriptions)
    }

    /// Records a subscription for the connection of `generation`, unless the
    /// session already has `max` other filters. Called with the index write lock
    /// held, which makes the generation check and both inserts one step.
    pub(super) fn add_subscription(
        &self,
        generation: Generation,
        filter: &str,
        opts: SubOpts,
        max: usize,
    ) -> Result<Result<(), QuotaExceeded>, Stale> {
        let mut st = self.owned(generation)?;
        if st.subscriptions.len() >= max && !st.subscriptions.contains_key(filter) {
            return Ok(Err(QuotaExceeded));
        }
        st.subscriptions.insert(filter.into(), opts);
        Ok(Ok(()))
    }

    /// Forgets a subscription; returns whether it existed. `generation` is the
    /// connection asking, or `None` for the bridge acting on a user.
    pub(super) fn remove_subscription(
        &self,
        generation: Option<Generation>,
        filter: &str,
    ) -> Result<bool, Stale> {
        let mut st = match generation {
            Some(g) => self.owned(g)?,
            None => self.state(),
        };
        Ok(st.subscriptions.remove(filter).is_some())
    }

    /// Asks the attached connection to close; returns whether there was one.
    pub(super) fn request_close(&self, why: CloseRequest) -> bool {
        let mut st = self.state();
        if !st.is_online() {
            return false;
        }
        st.close = Some(why);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Queues `out` and wakes the connection. Returns what was dropped to make
    /// room, and whether the session is online with its queue above `high`.
    pub(super) fn enqueue(&self, out: Outgoing, max: usize, high: usize) -> (Dropped, bool) {
        let mut st = self.state();
        if st.queue.is_empty() && st.inflight.len() < usize::from(st.window) {
            // Work for a subscriber that can take it at once: its stall clock
            // starts now, not at its last delivery (an idle subscriber is not a
            // stalled one).
            st.progressed_at = Some(Instant::now());
        }
        let dropped = st.enqueue(out, max);
        let online = st.is_online();
        let filling = online && st.queue.len() > high;
        drop(st);
        if online {
            self.wake.notify_one();
        }
        (dropped, filling)
    }

    // ---- the connection's side: every call names its generation ----

    /// The queue length of a subscriber a publisher may wait for: online, and it
    /// took messages within `stall`. `None` for one that stopped reading: it costs
    /// only itself (its queue fills and drops) and nobody waits for it.
    pub(crate) fn backlog(&self, now: Instant, stall: Duration) -> Option<usize> {
        let st = self.state();
        let progressing = st
            .progressed_at
            .is_some_and(|t| now.saturating_duration_since(t) < stall);
        (st.is_online() && progressing).then_some(st.queue.len())
    }

    /// PUBACK for a QoS 1 delivery: frees its window slot.
    pub(crate) fn acked(&self, generation: Generation, pkid: u16) -> Result<(), Stale> {
        self.free_slot(generation, pkid, Stage::Published)
    }

    /// PUBREC for a QoS 2 delivery: the message stays in flight until PUBCOMP.
    pub(crate) fn received(&self, generation: Generation, pkid: u16) -> Result<(), Stale> {
        let mut st = self.owned(generation)?;
        if let Some(i) = st.inflight.iter_mut().find(|i| i.pkid == pkid) {
            i.stage = Stage::Released;
        }
        Ok(())
    }

    /// PUBCOMP for a QoS 2 delivery: frees its window slot.
    pub(crate) fn completed(&self, generation: Generation, pkid: u16) -> Result<(), Stale> {
        self.free_slot(generation, pkid, Stage::Released)
    }

    /// Ends the flight of `pkid` if it is at `stage`.
    fn free_slot(&self, generation: Generation, pkid: u16, stage: Stage) -> Result<(), Stale> {
        let mut st = self.owned(generation)?;
        if let Some(i) = st
            .inflight
            .iter()
            .position(|i| i.pkid == pkid && i.stage == stage)
        {
            st.inflight.remove(i);
            st.progressed_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether the incoming QoS 2 id `pkid` is received and not yet released.
    pub(crate) fn holds_incoming(&self, generation: Generation, pkid: u16) -> Result<bool, Stale> {
        Ok(self.owned(generation)?.incoming_qos2.contains(&pkid))
    }

    /// An incoming QoS 2 PUBLISH: remembers its id until PUBREL, so that a
    /// retransmission is acknowledged without a second delivery. `max` is the
    /// Receive Maximum we advertised.
    pub(crate) fn receive_qos2(
        &self,
        generation: Generation,
        pkid: u16,
        max: usize,
    ) -> Result<Receipt, Stale> {
        let mut st = self.owned(generation)?;
        if st.incoming_qos2.contains(&pkid) {
            return Ok(Receipt::Duplicate);
        }
        if st.incoming_qos2.len() >= max {
            return Ok(Receipt::TooMany);
        }
        st.incoming_qos2.push(pkid);
        Ok(Receipt::New)
    }

    /// PUBREL for an incoming QoS 2 id; returns whether it was held.
    pub(crate) fn release_incoming(
        &self,
        generation: Generation,
        pkid: u16,
    ) -> Result<bool, Stale> {
        let mut st = self.owned(generation)?;
        Ok(match st.incoming_qos2.iter().position(|p| *p == pkid) {
            Some(i) => {
                st.incoming_qos2.swap_remove(i);
                true
            }
            None => false,
        })
    }

    /// A v5 DISCONNECT changed the Session Expiry Interval.
    pub(crate) fn set_expiry(&self, generation: Generation, expiry: Duration) -> Result<(), Stale> {
        self.owned(generation)?.expiry = expiry;
        Ok(())
    }

    /// Hands the queued messages to `write` within the in-flight window, giving
    /// each QoS 1/2 one a packet id; dropped on the way: expired messages and those
    /// `write` finds too large. Fails when the connection must stop.
    pub(crate) fn drain(
        &self,
        generation: Generation,
        now: Instant,
        mut write: impl FnMut(&Outgoing, u16) -> Written,
    ) -> Result<Drained, Ended> {
        let mut st = self.owned(generation).map_err(|Stale| Ended::TakenOver)?;
        if let Some(why) = st.close {
            return Err(Ended::Requested(why));
        }
        let mut drained = Drained::default();
        while let Some(front) = st.queue.front() {
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= usize::from(st.window) {
                break;
            }
            let Some(out) = st.queue.pop_front() else {
                break;
            };
            if out.msg.expired(now) {
                drained.expired += 1;
                continue;
            }
            let pkid = if out.qos == QoS::AtMostOnce {
                0
            } else {
                st.next_pkid()
            };
            match write(&out, pkid) {
                Written::Sent => {
                    drained.sent += 1;
                    if pkid != 0 {
                        st.inflight.push_back(Inflight {
                            pkid,
                            out,
                            stage: Stage::Published,
                        });
                    }
                }
                Written::TooLarge => drained.too_large += 1,
            }
        }
        if drained != Drained::default() {
            st.progressed_at = Some(now);
        }
        st.shrink_if_idle();
        Ok(drained)
    }

    /// After a session resumes: each unacknowledged delivery in order, with its
    /// packet id and stage (to be sent again as a DUP PUBLISH, or as PUBREL).
    pub(crate) fn unacknowledged<T>(
        &self,
        generation: Generation,
        mut f: impl FnMut(&Outgoing, u16, Stage) -> T,
    ) -> Result<Vec<T>, Stale> {
        let st = self.owned(generation)?;
        Ok(st
            .inflight
            .iter()
            .map(|i| f(&i.out, i.pkid, i.stage))
            .collect())
    }

    #[cfg(test)]
    pub(crate) fn new_for_test(id: SessionId) -> Arc<Self> {
        Arc::new(Session::new(id, "u".into(), format!("u:{id}").into()))
    }

    #[cfg(test)]
    pub(crate) fn subscription_count(&self) -> usize {
        self.state().subscriptions.len()
    }
}

/// The session already has `mqtt.max_subscriptions` filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QuotaExceeded;

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

    #[test]
    fn a_taken_over_connection_changes_nothing() {
        let s = Session::new_for_test(7);
        s.attach(1, Duration::ZERO, 10, true);
        assert_eq!(s.receive_qos2(1, 5, 10), Ok(Receipt::New));
        s.attach(2, Duration::ZERO, 10, true);
        // Generation 1 was taken over: its acks, releases and drains are refused.
        assert_eq!(s.release_incoming(1, 5), Err(Stale));
        assert_eq!(s.acked(1, 5), Err(Stale));
        assert_eq!(s.set_expiry(1, Duration::from_secs(9)), Err(Stale));
        assert!(s.drain(1, Instant::now(), |_, _| Written::Sent).is_err());
        assert_eq!(
            s.add_subscription(1, "a/b", SubOpts::new(QoS::AtMostOnce), 10),
            Err(Stale)
        );
        assert_eq!(s.subscription_count(), 0);
        // The new one still holds the unreleased id.
        assert_eq!(s.release_incoming(2, 5), Ok(true));
        assert_eq!(s.detach(1), None);
        assert_eq!(s.detach(2), Some((Duration::ZERO, true)));
        assert!(!s.is_online());
    }

    #[test]
    fn a_subscriber_is_stalled_only_after_work_it_does_not_take() {
        let s = Session::new_for_test(1);
        s.attach(1, Duration::ZERO, 1, true);
        let stall = Duration::from_millis(100);
        let t0 = Instant::now();
        // Work for an idle subscriber starts its clock: it is not stalled yet.
        for i in 0..10 {
            s.enqueue(out(QoS::AtLeastOnce, i), 100, 50);
        }
        assert_eq!(s.backlog(t0 + Duration::from_millis(50), stall), Some(10));
        // Taken nothing for longer than `stall`: stalled, nobody waits for it.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(s.backlog(t1, stall), None);
        // One message taken (the window is 1): progressing again.
        let d = s.drain(1, t1, |_, _| Written::Sent).expect("drain");
        assert_eq!(d.sent, 1);
        assert_eq!(s.backlog(t1, stall), Some(9));
        // With its window full, more work does not restart the clock.
        s.enqueue(out(QoS::AtLeastOnce, 10), 100, 50);
        assert_eq!(s.backlog(t1 + Duration::from_millis(200), stall), None);
    }
}
