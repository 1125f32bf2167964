//! The hub: sessions, the subscription index and retained messages, shared by every
//! connection behind short, non-async locks.
//!
//! Lock order, to stay deadlock-free: `sessions` before `index` before a session's
//! state; `retained` is never held with another lock. No lock is held across an
//! `.await`. Every operation touches only the sessions, filters and topics it names:
//! nothing iterates over all sessions, filters or retained topics.

mod index;
mod retained;
pub(crate) mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::sync::broadcast;

use self::index::{Index, Subscriber};
use self::retained::Retained;
use self::session::{CloseReason, Dropped, Outgoing, Session, SessionId, SubOpts};
use crate::QoS;
use crate::metrics::BrokerMetrics;

/// A message as published, shared by every session it is queued to.
#[derive(Debug)]
pub(crate) struct Publication {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// MQTT 5 properties forwarded to subscribers (never the topic alias,
    /// subscription ids or the expiry, which are per delivery).
    pub(crate) props: Option<Box<PublishProperties>>,
    pub(crate) expires_at: Option<Instant>,
    /// The publishing session, for No Local.
    pub(crate) origin: Option<SessionId>,
}

impl Publication {
    /// A plain publication, as the bridge makes them.
    pub(crate) fn new(topic: &str, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Publication {
            topic: topic.into(),
            payload,
            qos,
            retain,
            props: None,
            expires_at: None,
            origin: None,
        }
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Why a connection ended, as reported in [`Event`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Normal,
    /// Nothing arrived for 1.5 times the keepalive.
    KeepaliveTimeout,
    /// The same user connected again with the same client id.
    TakenOver,
    /// The bridge disconnected the user.
    Kicked,
    /// The server is shutting down.
    ServerShutdown,
    /// A protocol or I/O error, or the socket closed without DISCONNECT.
    Error,
}

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// CONNECT was accepted.
    Connected,
    /// The connection ended.
    Disconnected(DisconnectReason),
}

/// A connection event, for presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The user.
    pub uid: String,
    /// The device (the client id).
    pub client_id: String,
    /// Connected or disconnected, and why.
    pub kind: EventKind,
}

/// Limits the hub enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HubLimits {
    pub(crate) max_sessions: usize,
    pub(crate) max_queued: usize,
    pub(crate) max_retained: usize,
}

/// Why a session could not be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachError {
    /// `mqtt.max_sessions` reached.
    TooManySessions,
}

/// A session attached to a connection.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) generation: u64,
    pub(crate) present: bool,
}

#[derive(Debug, Default)]
struct Sessions {
    by_key: HashMap<Arc<str>, Arc<Session>>,
    by_user: HashMap<Arc<str>, Vec<Arc<Session>>>,
}

/// The hub.
#[derive(Debug)]
pub(crate) struct Hub {
    limits: HubLimits,
    sessions: Mutex<Sessions>,
    index: RwLock<Index>,
    retained: RwLock<Retained>,
    next_id: AtomicU64,
    pub(crate) metrics: Arc<BrokerMetrics>,
    events: broadcast::Sender<Event>,
    me: Weak<Hub>,
}

/// Events buffered for a slow consumer before it starts missing them (it is told
/// how many it missed and can resynchronise from [`Hub::connected_clients`]).
const EVENT_BUFFER: usize = 16_384;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub(crate) fn new(limits: HubLimits, metrics: Arc<BrokerMetrics>) -> Arc<Hub> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new_cyclic(|me| Hub {
            limits,
            sessions: Mutex::default(),
            index: RwLock::default(),
            retained: RwLock::default(),
            next_id: AtomicU64::new(1),
            metrics,
            events,
            me: me.clone(),
        })
    }

    /// A number never returned before (for generated client ids).
    pub(crate) fn unique_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, session: &Session, kind: EventKind) {
        // No receiver is fine: nobody listens for presence.
        let _ = self.events.send(Event {
            uid: session.uid.to_string(),
            client_id: session.client_id().to_owned(),
            kind,
        });
    }

    /// Attaches a connection to the session `{uid}:{client_id}`: resumes it
    /// (taking it over from an older connection) or starts it anew.
    pub(crate) fn attach(
        &self,
        uid: &str,
        client_id: &str,
        clean_start: bool,
        expiry: Duration,
        window: u16,
    ) -> Result<Attached, AttachError> {
        let key: Arc<str> = format!("{uid}:{client_id}").into();
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sessions = lock(&self.sessions);
        if let Some(old) = sessions.by_key.get(&key).cloned() {
            if !clean_start {
                let mut st = old.state();
                // A different generation tells the older connection it was taken over.
                let was_online = st.conn != 0;
                st.conn = generation;
                st.last_conn = generation;
                st.close = None;
                st.expiry = expiry;
                st.window = window;
                drop(st);
                if was_online {
                    old.wake.notify_one();
                }
                return Ok(Attached {
                    session: old,
                    generation,
                    present: true,
                });
            }
            let mut st = old.state();
            let was_online = st.conn != 0;
            st.conn = generation; // never ours: makes the old connection close
            drop(st);
            if was_online {
                old.wake.notify_one();
            }
            self.end_locked(&mut sessions, &old);
        }
        if sessions.by_key.len() >= self.limits.max_sessions {
            return Err(AttachError::TooManySessions);
        }
        let uid: Arc<str> = sessions
            .by_user
            .get_key_value(uid)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| uid.into());
        let session = Arc::new(Session::new(generation, uid.clone(), key.clone()));
        {
            let mut st = session.state();
            st.conn = generation;
            st.last_conn = generation;
            st.expiry = expiry;
            st.window = window;
        }
        sessions.by_key.insert(key, session.clone());
        sessions
            .by_user
            .entry(uid)
            .or_default()
            .push(session.clone());
        self.metrics.sessions.set(sessions.by_key.len() as i64);
        Ok(Attached {
            session,
            generation,
            present: false,
        })
    }

    /// The connection of `generation` ended. The session ends with it unless it has
    /// an expiry, in which case it is kept (and queues messages) until then.
    pub(crate) fn detach(&self, session: &Arc<Session>, generation: u64) {
        let mut sessions = lock(&self.sessions);
        let mut st = session.state();
        if st.conn != generation {
            return; // taken over: the session lives on with its new connection
        }
        st.conn = 0;
        st.close = None;
        let expiry = st.expiry;
        st.shrink_if_idle();
        drop(st);
        if expiry.is_zero() {
            self.end_locked(&mut sessions, session);
            return;
        }
        drop(sessions);
        let hub = self.me.clone();
        let session = Arc::downgrade(session);
        tokio::spawn(async move {
            tokio::time::sleep(expiry).await;
            if let (Some(hub), Some(session)) = (hub.upgrade(), session.upgrade()) {
                hub.expire(&session, generation);
            }
        });
    }

    /// Ends a persistent session whose expiry ran out, unless a connection came
    /// back since (it would have a newer generation).
    fn expire(&self, session: &Arc<Session>, detached_generation: u64) {
        let mut sessions = lock(&self.sessions);
        let st = session.state();
        let untouched = st.conn == 0 && st.last_conn == detached_generation;
        drop(st);
        if untouched {
            self.end_locked(&mut sessions, session);
        }
    }

    /// Removes `session` from the maps and its subscriptions from the index.
    fn end_locked(&self, sessions: &mut Sessions, session: &Arc<Session>) {
        if sessions
            .by_key
            .get(&session.key)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.by_key.remove(&session.key);
        }
        if let Some(list) = sessions.by_user.get_mut(&session.uid) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                sessions.by_user.remove(&session.uid);
            }
        }
        let filters = std::mem::take(&mut session.state().subscriptions);
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for filter in filters.keys() {
            index.remove(filter, session.id);
        }
        self.metrics.subscriptions.set(index.len() as i64);
        drop(index);
        let mut st = session.state();
        st.queue.clear();
        st.inflight.clear();
        st.incoming_qos2.clear();
        st.shrink_if_idle();
        self.metrics.sessions.set(sessions.by_key.len() as i64);
    }

    /// Subscribes; returns true when the subscription is new (for Retain Handling 1).
    pub(crate) fn subscribe(&self, session: &Arc<Session>, filter: &str, opts: SubOpts) -> bool {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let new = index.insert(
            filter,
            Subscriber {
                session: session.clone(),
                opts,
            },
        );
        self.metrics.subscriptions.set(index.len() as i64);
        session.state().subscriptions.insert(filter.into(), opts);
        new
    }

    /// Unsubscribes; returns true when the subscription existed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let hit = index.remove(filter, session.id);
        self.metrics.subscriptions.set(index.len() as i64);
        session.state().subscriptions.remove(filter);
        hit
    }

    /// Routes a publication to every matching session (one copy per session, at
    /// the highest QoS among its matching subscriptions) and keeps it if retained.
    /// Returns the connected targets whose queues are more than half full (empty,
    /// and allocation-free, in the normal case), so that an MQTT publisher can
    /// pause (see `connection::wait_for_room`).
    pub(crate) fn publish(&self, publication: Publication) -> Vec<Arc<Session>> {
        let p = Arc::new(publication);
        if p.retain {
            let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
            if !retained.set(p.clone(), self.limits.max_retained) {
                tracing::warn!(topic = %p.topic, "retained store full; message not retained");
            }
            self.metrics.retained.set(retained.len() as i64);
        }
        let mut targets: Vec<Subscriber> = Vec::new();
        {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            index.for_each_match(&p.topic, |s| {
                if !(s.opts.no_local && p.origin == Some(s.session.id)) {
                    targets.push(s.clone());
                }
            });
        }
        if targets.len() > 1 {
            // Overlapping subscriptions: one delivery per session at the highest QoS,
            // carrying the identifiers of all of them.
            targets.sort_by(|a, b| {
                a.session
                    .id
                    .cmp(&b.session.id)
                    .then((b.opts.qos as u8).cmp(&(a.opts.qos as u8)))
            });
        }
        let mut congested = Vec::new();
        let mut i = 0;
        while i < targets.len() {
            let first = &targets[i];
            let mut j = i + 1;
            while j < targets.len() && targets[j].session.id == first.session.id {
                j += 1;
            }
            let ids: Box<[u32]> = targets[i..j].iter().filter_map(|t| t.opts.id).collect();
            // Retain As Published if any matching subscription asks for it.
            let keep_retain = targets[i..j].iter().any(|t| t.opts.retain_as_published);
            let out = Outgoing {
                msg: p.clone(),
                qos: crate::min_qos(p.qos, first.opts.qos),
                retain: p.retain && keep_retain,
                sub_ids: ids,
            };
            if self.deliver(&first.session, out) {
                congested.push(first.session.clone());
            }
            i = j;
        }
        congested
    }

    /// Queues `out` on `session` and wakes its connection. Returns whether the
    /// session is connected and its queue more than half full.
    pub(crate) fn deliver(&self, session: &Session, out: Outgoing) -> bool {
        let mut st = session.state();
        let dropped = st.enqueue(out, self.limits.max_queued);
        let online = st.conn != 0;
        let filling = online && st.queue.len() > self.limits.max_queued / 2;
        drop(st);
        match dropped {
            Dropped::Nothing => {}
            Dropped::Qos0 => {
                self.metrics.dropped_qos0.inc();
            }
            Dropped::Qos12 => {
                self.metrics.dropped_qos12.inc();
            }
        }
        if online {
            session.wake.notify_one();
        }
        filling
    }

    /// The queue length under which a paused publisher goes on.
    pub(crate) fn low_watermark(&self) -> usize {
        self.limits.max_queued / 4
    }

    /// Retained messages matching `filter`.
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Publication>> {
        self.retained
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matching(filter)
    }

    fn sessions_of(&self, uid: &str) -> Vec<Arc<Session>> {
        lock(&self.sessions)
            .by_user
            .get(uid)
            .cloned()
            .unwrap_or_default()
    }

    /// Removes `filter` from every session of `uid`.
    pub(crate) fn unsubscribe_user(&self, uid: &str, filter: &str) -> usize {
        self.sessions_of(uid)
            .iter()
            .filter(|s| self.unsubscribe(s, filter))
            .count()
    }

    /// Asks every connection of `uid` to close.
    pub(crate) fn kick_user(&self, uid: &str) -> usize {
        let mut n = 0;
        for s in self.sessions_of(uid) {
            let mut st = s.state();
            if st.conn != 0 {
                st.close = Some(CloseReason::Kicked);
                n += 1;
                drop(st);
                s.wake.notify_one();
            }
        }
        n
    }

    /// Asks every connection to close because the server stops. Runs once, at
    /// shutdown, so visiting every session is fine here.
    pub(crate) fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).by_key.values().cloned().collect();
        for s in sessions {
            let mut st = s.state();
            if st.conn != 0 {
                st.close = Some(CloseReason::ShuttingDown);
                drop(st);
                s.wake.notify_one();
            }
        }
    }

    /// Client ids of `uid`'s connected sessions.
    pub(crate) fn connected_clients(&self, uid: &str) -> Vec<String> {
        self.sessions_of(uid)
            .iter()
            .filter(|s| s.state().conn != 0)
            .map(|s| s.client_id().to_owned())
            .collect()
    }
}
