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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use imqtt_wire::topic::outbox_owner;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::sync::broadcast;

use self::index::{Index, Subscriber};
use self::retained::Retained;
use self::session::{
    CloseRequest, Dropped, Generation, Outgoing, QuotaExceeded, Session, SessionId, Stale, SubOpts,
};
use crate::QoS;
use crate::cluster::{Interest, Link, Settled};
use crate::events::{Device, DisconnectReason, Event, EventKind, PresenceSnapshot};
use crate::metrics::BrokerMetrics;

/// A message as published, shared by every session it is queued to.
#[derive(Debug)]
pub struct Publication {
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
    /// How far it goes.
    pub(crate) scope: Scope,
}

/// How far a publication goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every node: routed here and handed to the cluster link.
    Cluster,
    /// This node's sessions only (what each node works out for itself, such as
    /// presence).
    Node,
    /// It came from another node: routed here only, and a retained one is that
    /// node's to persist.
    Remote,
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
            scope: Scope::Cluster,
        }
    }

    /// A publication another node made, to route to this node's sessions.
    /// `expires_in` is what is left of its MQTT 5 Message Expiry Interval.
    pub fn remote(
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        props: Option<PublishProperties>,
        expires_in: Option<Duration>,
    ) -> Publication {
        Publication {
            topic: topic.into(),
            payload,
            qos,
            retain,
            props: props.map(Box::new),
            expires_at: expires_in.map(|d| Instant::now() + d),
            origin: None,
            scope: Scope::Remote,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The QoS it was published at.
    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// Whether it is retained.
    pub fn retain(&self) -> bool {
        self.retain
    }

    /// The MQTT 5 properties subscribers get (no alias, expiry or
    /// subscription ids).
    pub fn properties(&self) -> Option<&PublishProperties> {
        self.props.as_deref()
    }

    /// What is left of its lifetime, if it has one (zero: expired).
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
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
    pub(crate) generation: Generation,
    pub(crate) present: bool,
}

#[derive(Debug, Default)]
struct Sessions {
    by_key: HashMap<Arc<str>, Arc<Session>>,
    /// A user is a key while it has a session or a live connection.
    by_user: HashMap<Arc<str>, User>,
    /// `seq` of the last event sent.
    event_seq: u64,
}

/// One user's sessions, and how many connections it holds (kept here, where
/// sessions are attached and detached, so that "online" is a fact).
#[derive(Debug, Default)]
struct User {
    sessions: Vec<Arc<Session>>,
    online: usize,
}

impl User {
    fn is_gone(&self) -> bool {
        self.sessions.is_empty() && self.online == 0
    }
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
    /// Topics whose retained message changed since the last
    /// [`Hub::take_retained_changes`]; `None` until someone asks (no cost before).
    retained_dirty: Mutex<Option<HashSet<Arc<str>>>>,
    /// The rest of the cluster, when this node is part of one.
    link: OnceLock<Arc<dyn Link>>,
    me: Weak<Hub>,
}

/// Events buffered for a slow consumer before it starts missing them (it is told
/// how many it missed and rebuilds from [`Hub::presence_snapshot`]).
const EVENT_BUFFER: usize = 16_384;

/// A shared subscription's filter without its `$share/{group}/`.
fn inner_filter(filter: &str) -> &str {
    crate::topic::parse_shared(filter).map_or(filter, |(_, inner)| inner)
}

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
            retained_dirty: Mutex::new(None),
            link: OnceLock::new(),
            me: me.clone(),
        })
    }

    /// A number never returned before (for generated client ids and generations,
    /// which are therefore never zero).
    pub(crate) fn unique_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Joins this hub to a cluster; returns false when it has a link already.
    /// Set before any connection is served, so the link hears of every interest.
    pub(crate) fn set_link(&self, link: Arc<dyn Link>) -> bool {
        self.link.set(link).is_ok()
    }

    fn link(&self) -> Option<&Arc<dyn Link>> {
        self.link.get()
    }

    /// Resolves once what this node's sessions hold is in effect cluster-wide
    /// (at once without a cluster).
    pub(crate) fn settled(&self) -> Option<Settled> {
        self.link().map(|l| l.settled())
    }

    /// Applies a connection change to the user's count and sends its event; under
    /// the sessions lock, so counts, events and snapshots agree.
    /// Connections that are not devices (admin tools) change nothing and send
    /// nothing: they never make their user online.
    fn emit_locked(
        &self,
        sessions: &mut Sessions,
        session: &Session,
        generation: Generation,
        kind: EventKind,
        device: bool,
    ) {
        if !device {
            return;
        }
        let user = sessions.by_user.entry(session.uid.clone()).or_default();
        match kind {
            EventKind::Connected => user.online += 1,
            EventKind::Disconnected(_) => user.online = user.online.saturating_sub(1),
        }
        let connections = user.online;
        if user.is_gone() {
            sessions.by_user.remove(&session.uid);
        }
        sessions.event_seq += 1;
        // No receiver is fine: nobody follows presence.
        let _ = self.events.send(Event {
            seq: sessions.event_seq,
            uid: session.uid.to_string(),
            client_id: session.client_id().to_owned(),
            generation,
            kind,
            connections,
        });
    }

    /// Attaches a connection to the session `{uid}:{client_id}`: resumes it
    /// (taking it over from an older connection) or starts it anew. A `device`
    /// connection makes its user online; an admin's tool does not.
    pub(crate) fn attach(
        &self,
        uid: &str,
        client_id: &str,
        clean_start: bool,
        expiry: Duration,
        window: u16,
        device: bool,
    ) -> Result<Attached, AttachError> {
        let attached = self.attach_here(uid, client_id, clean_start, expiry, window, device)?;
        if let Some(link) = self.link() {
            link.attached(uid, client_id, attached.session.attached_ms());
        }
        Ok(attached)
    }

    fn attach_here(
        &self,
        uid: &str,
        client_id: &str,
        clean_start: bool,
        expiry: Duration,
        window: u16,
        device: bool,
    ) -> Result<Attached, AttachError> {
        let key: Arc<str> = format!("{uid}:{client_id}").into();
        let generation = self.unique_id();
        let mut sessions = lock(&self.sessions);
        if let Some(old) = sessions.by_key.get(&key).cloned() {
            if !clean_start {
                let before = old.attach(generation, expiry, window, device);
                self.emit_locked(
                    &mut sessions,
                    &old,
                    generation,
                    EventKind::Connected,
                    device,
                );
                if let Some(before) = before {
                    let taken = EventKind::Disconnected(DisconnectReason::TakenOver);
                    self.emit_locked(&mut sessions, &old, before.generation, taken, before.device);
                }
                return Ok(Attached {
                    session: old,
                    generation,
                    present: true,
                });
            }
            let before = old.evict(generation);
            self.end_locked(&mut sessions, &old);
            if let Some(before) = before {
                let session =
                    self.start_locked(&mut sessions, uid, key, generation, expiry, window, device);
                let taken = EventKind::Disconnected(DisconnectReason::TakenOver);
                self.emit_locked(&mut sessions, &old, before.generation, taken, before.device);
                return Ok(Attached {
                    session,
                    generation,
                    present: false,
                });
            }
        }
        if sessions.by_key.len() >= self.limits.max_sessions {
            return Err(AttachError::TooManySessions);
        }
        let session =
            self.start_locked(&mut sessions, uid, key, generation, expiry, window, device);
        Ok(Attached {
            session,
            generation,
            present: false,
        })
    }

    /// A new session attached to `generation`, in the maps, `Connected` sent.
    #[allow(clippy::too_many_arguments)]
    fn start_locked(
        &self,
        sessions: &mut Sessions,
        uid: &str,
        key: Arc<str>,
        generation: Generation,
        expiry: Duration,
        window: u16,
        device: bool,
    ) -> Arc<Session> {
        let uid: Arc<str> = sessions
            .by_user
            .get_key_value(uid)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| uid.into());
        let session = Arc::new(Session::new(generation, uid.clone(), key.clone()));
        session.attach(generation, expiry, window, device);
        sessions.by_key.insert(key, session.clone());
        let user = sessions.by_user.entry(uid.clone()).or_default();
        user.sessions.push(session.clone());
        if user.sessions.len() == 1
            && let Some(link) = self.link()
        {
            link.interest(Interest::User(&uid), true);
        }
        self.metrics.sessions.set(sessions.by_key.len() as i64);
        self.emit_locked(sessions, &session, generation, EventKind::Connected, device);
        session
    }

    /// The connection of `generation` ended for `reason`. Unless it had been taken
    /// over, `Disconnected` is sent and the session ends with it, or, when it has
    /// an expiry, is kept (and queues messages) until then.
    pub(crate) fn detach(
        &self,
        session: &Arc<Session>,
        generation: Generation,
        reason: DisconnectReason,
    ) {
        let mut sessions = lock(&self.sessions);
        let Some((expiry, device)) = session.detach(generation) else {
            return; // taken over: the session lives on with its new connection
        };
        self.emit_locked(
            &mut sessions,
            session,
            generation,
            EventKind::Disconnected(reason),
            device,
        );
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
    fn expire(&self, session: &Arc<Session>, detached: Generation) {
        let mut sessions = lock(&self.sessions);
        if session.expired_since(detached) {
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
        if let Some(user) = sessions.by_user.get_mut(&session.uid) {
            let before = user.sessions.len();
            user.sessions.retain(|s| !Arc::ptr_eq(s, session));
            if before > 0
                && user.sessions.is_empty()
                && let Some(link) = self.link()
            {
                link.interest(Interest::User(&session.uid), false);
            }
            // Kept while a taken-over connection of it is still counted.
            if user.is_gone() {
                sessions.by_user.remove(&session.uid);
            }
        }
        // Under the index lock: a subscribe racing this one either went in before
        // (and is removed here) or sees its generation gone (and changes nothing).
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for filter in session.end().keys() {
            if index.remove(filter, session.id) {
                self.filter_released(&index, filter);
            }
        }
        self.metrics.subscriptions.set(index.len() as i64);
        drop(index);
        self.metrics.sessions.set(sessions.by_key.len() as i64);
    }

    /// Subscribes for the connection of `generation`, unless the session has
    /// `max` other filters; returns whether the subscription is new (for Retain
    /// Handling 1). A connection that was taken over gets `Stale` and nothing
    /// changes: the check and both inserts happen under the index lock, which
    /// ending a session also takes, so an ended session never re-enters the index.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        generation: Generation,
        filter: &str,
        opts: SubOpts,
        max: usize,
    ) -> Result<Result<bool, QuotaExceeded>, Stale> {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Err(quota) = session.add_subscription(generation, filter, opts, max)? {
            return Ok(Err(quota));
        }
        if let Some(link) = self.link()
            && !index.holds(filter)
        {
            link.interest(Interest::Filter(inner_filter(filter)), true);
        }
        let new = index.insert(
            filter,
            Subscriber {
                session: session.clone(),
                opts,
            },
        );
        self.metrics.subscriptions.set(index.len() as i64);
        Ok(Ok(new))
    }

    /// Unsubscribes for the connection of `generation` (or, with `None`, for the
    /// bridge); returns whether the subscription existed.
    pub(crate) fn unsubscribe(
        &self,
        session: &Arc<Session>,
        generation: Option<Generation>,
        filter: &str,
    ) -> Result<bool, Stale> {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let had = session.remove_subscription(generation, filter)?;
        let hit = index.remove(filter, session.id);
        if hit {
            self.filter_released(&index, filter);
        }
        self.metrics.subscriptions.set(index.len() as i64);
        Ok(had || hit)
    }

    /// Tells the link that nobody here subscribes to `filter` any more, if so.
    fn filter_released(&self, index: &Index, filter: &str) {
        if let Some(link) = self.link()
            && !index.holds(filter)
        {
            link.interest(Interest::Filter(inner_filter(filter)), false);
        }
    }

    /// Routes a publication to every matching session (one copy per session, at
    /// the highest QoS among its matching subscriptions) and keeps it if retained.
    /// Returns the connected targets whose queues are more than half full (empty,
    /// and allocation-free, in the normal case), so that an MQTT publisher can
    /// pause (see `connection::wait_for_room`).
    pub(crate) fn publish(&self, publication: Publication) -> Vec<Arc<Session>> {
        // The outbox is the server's uplink (DESIGN.md §3): never routed, never
        // retained, whoever publishes there.
        if outbox_owner(&publication.topic).is_some() {
            return Vec::new();
        }
        let p = Arc::new(publication);
        if p.scope == Scope::Cluster
            && let Some(link) = self.link()
        {
            link.relay(&p);
        }
        if p.retain {
            // A payload read off a connection is a slice of its read buffer, which
            // a retained message kept alive for as long as it stays: the whole
            // buffer, not the payload. The kept one is a copy of its own size.
            let kept = Arc::new(Publication {
                topic: p.topic.clone(),
                payload: Bytes::copy_from_slice(&p.payload),
                qos: p.qos,
                retain: true,
                props: p.props.clone(),
                expires_at: p.expires_at,
                origin: p.origin,
                scope: p.scope,
            });
            let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
            if !retained.set(kept, self.limits.max_retained) {
                tracing::warn!(topic = %p.topic, "retained store full; message not retained");
            }
            self.metrics.retained.set(retained.len() as i64);
            drop(retained);
            // Another node's retained message is that node's to persist.
            if p.scope != Scope::Remote
                && let Some(dirty) = lock(&self.retained_dirty).as_mut()
            {
                dirty.insert(p.topic.clone());
            }
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
        let max = self.limits.max_queued;
        let (dropped, filling) = session.enqueue(out, max, max / 2);
        match dropped {
            Dropped::Nothing => {}
            Dropped::Qos0 => {
                self.metrics.dropped_qos0.inc();
            }
            Dropped::Qos12 => {
                self.metrics.dropped_qos12.inc();
            }
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
            .map(|u| u.sessions.clone())
            .unwrap_or_default()
    }

    /// Removes `filter` from every session of `uid`; returns how many had it.
    pub(crate) fn unsubscribe_user(&self, uid: &str, filter: &str) -> usize {
        self.sessions_of(uid)
            .iter()
            .filter(|s| self.unsubscribe(s, None, filter).unwrap_or(false))
            .count()
    }

    /// Asks every connection of `uid` to close; returns how many there were.
    pub(crate) fn disconnect_user(&self, uid: &str) -> usize {
        self.sessions_of(uid)
            .iter()
            .filter(|s| s.request_close(CloseRequest::Disconnected))
            .count()
    }

    /// Asks every connection to close because the server stops. Runs once, at
    /// shutdown, so visiting every session is fine here.
    pub(crate) fn close_all(&self) {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).by_key.values().cloned().collect();
        for s in sessions {
            s.request_close(CloseRequest::ShuttingDown);
        }
    }

    /// The users whose sessions hold a subscription matching `topic`, each once.
    pub(crate) fn subscribers(&self, topic: &str) -> Vec<Arc<str>> {
        let mut uids: std::collections::HashSet<Arc<str>> = std::collections::HashSet::new();
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.for_each_match(topic, |s| {
            uids.insert(s.session.uid.clone());
        });
        uids.into_iter().collect()
    }

    /// Client ids of `uid`'s connected devices (admin tools are not devices).
    pub(crate) fn connected_clients(&self, uid: &str) -> Vec<String> {
        self.sessions_of(uid)
            .iter()
            .filter(|s| s.attached_device().is_some())
            .map(|s| s.client_id().to_owned())
            .collect()
    }

    /// The retained messages that changed since the last call (`None`: cleared),
    /// and from now on keeps track. Visits only the changed topics.
    pub(crate) fn take_retained_changes(&self) -> Vec<(Arc<str>, Option<Arc<Publication>>)> {
        let changed = {
            let mut dirty = lock(&self.retained_dirty);
            match dirty.as_mut() {
                Some(d) => std::mem::take(d),
                None => {
                    *dirty = Some(HashSet::new());
                    return Vec::new();
                }
            }
        };
        let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
        changed
            .into_iter()
            .map(|topic| {
                // A topic name is a filter that matches only itself.
                let now = retained.matching(&topic).into_iter().next();
                (topic, now)
            })
            .collect()
    }

    /// Another node attached the session `{uid}:{client_id}` at `at_ms`: the one
    /// here ends (its connection gets DISCONNECT 0x8E), unless it attached later
    /// (or at the same millisecond, when `tie_is_ours`), in which case the other
    /// node ends its own on hearing of ours. Returns whether one ended.
    pub(crate) fn taken_over_elsewhere(
        &self,
        uid: &str,
        client_id: &str,
        at_ms: u64,
        tie_is_ours: bool,
    ) -> bool {
        let key = format!("{uid}:{client_id}");
        let mut sessions = lock(&self.sessions);
        let Some(old) = sessions.by_key.get(key.as_str()).cloned() else {
            return false;
        };
        let ours = old.attached_ms();
        if ours > at_ms || (ours == at_ms && tie_is_ours) {
            return false;
        }
        let before = old.evict(self.unique_id());
        self.end_locked(&mut sessions, &old);
        if let Some(before) = before {
            let taken = EventKind::Disconnected(DisconnectReason::TakenOver);
            self.emit_locked(&mut sessions, &old, before.generation, taken, before.device);
        }
        true
    }

    /// The filters of `uid`'s sessions starting with `prefix`.
    pub(crate) fn filters_of(&self, uid: &str, prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .sessions_of(uid)
            .iter()
            .flat_map(|s| s.filters())
            .filter(|f| f.starts_with(prefix))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every user with a session here. Visits every user: for recovery (a
    /// cluster link that came back), not for a hot path.
    pub(crate) fn users(&self) -> Vec<Arc<str>> {
        lock(&self.sessions)
            .by_user
            .iter()
            .filter(|(_, u)| !u.sessions.is_empty())
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Every (user, filter) subscription here whose filter starts with one of
    /// `prefixes`. Visits every session: for recovery, not for a hot path.
    pub(crate) fn subscriptions_under(&self, prefixes: &[&str]) -> Vec<(Arc<str>, String)> {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).by_key.values().cloned().collect();
        let mut out = Vec::new();
        for s in sessions {
            // An admin's tool may subscribe anywhere.
            if s.is_tool() {
                continue;
            }
            for filter in s.filters() {
                if prefixes.iter().any(|p| filter.starts_with(p)) {
                    out.push((s.uid.clone(), filter));
                }
            }
        }
        out
    }

    /// How many connections `uid` holds now.
    pub(crate) fn connections(&self, uid: &str) -> usize {
        lock(&self.sessions)
            .by_user
            .get(uid)
            .map_or(0, |u| u.online)
    }

    /// Every connected user with its devices, and the last event reflected. Visits
    /// every user with a session: for a consumer recovering from lag, not a hot
    /// path.
    pub(crate) fn presence_snapshot(&self) -> PresenceSnapshot {
        let sessions = lock(&self.sessions);
        let users = sessions
            .by_user
            .iter()
            .filter(|(_, user)| user.online > 0)
            .map(|(uid, user)| {
                let devices = user
                    .sessions
                    .iter()
                    .filter_map(|s| {
                        s.attached_device().map(|generation| Device {
                            client_id: s.client_id().to_owned(),
                            generation,
                        })
                    })
                    .collect();
                (uid.to_string(), devices)
            })
            .collect();
        PresenceSnapshot {
            as_of: sessions.event_seq,
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn hub() -> Arc<Hub> {
        Hub::new(
            HubLimits {
                max_sessions: 100,
                max_queued: 100,
                max_retained: 100,
            },
            Arc::new(BrokerMetrics::unregistered()),
        )
    }

    /// The sessions the index routes `topic` to.
    fn routed(hub: &Hub, topic: &str) -> Vec<SessionId> {
        let mut ids = Vec::new();
        hub.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .for_each_match(topic, |s| ids.push(s.session.id));
        ids
    }

    fn live(hub: &Hub, key: &str) -> Option<SessionId> {
        lock(&hub.sessions).by_key.get(key).map(|s| s.id)
    }

    #[test]
    fn a_subscribe_racing_a_clean_takeover_never_resurrects_the_ended_session() {
        let opts = SubOpts::new(QoS::AtLeastOnce);
        for round in 0..500 {
            let hub = hub();
            let old = hub
                .attach("alice", "phone", true, Duration::ZERO, 10, true)
                .expect("attach");
            let barrier = Arc::new(Barrier::new(2));
            let subscriber = {
                let (hub, barrier, session) = (hub.clone(), barrier.clone(), old.session.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    hub.subscribe(&session, old.generation, "users/alice/inbox", opts, 10)
                })
            };
            barrier.wait();
            let new = hub
                .attach("alice", "phone", true, Duration::ZERO, 10, true)
                .expect("takeover");
            let outcome = subscriber.join().expect("thread");
            // Whichever came first, only the live session may be in the index.
            let routed = routed(&hub, "users/alice/inbox");
            assert!(
                routed
                    .iter()
                    .all(|id| Some(*id) == live(&hub, "alice:phone")),
                "round {round}: {outcome:?}, index routes to {routed:?}, live is {:?}",
                live(&hub, "alice:phone")
            );
            assert!(
                routed.is_empty(),
                "round {round}: the new session never subscribed"
            );
            assert_eq!(live(&hub, "alice:phone"), Some(new.session.id));
        }
    }

    #[test]
    fn a_subscribe_after_the_takeover_is_refused_as_stale() {
        let hub = hub();
        let old = hub
            .attach("alice", "phone", false, Duration::from_secs(60), 10, true)
            .expect("attach");
        let new = hub
            .attach("alice", "phone", false, Duration::from_secs(60), 10, true)
            .expect("resume");
        assert!(Arc::ptr_eq(&old.session, &new.session));
        let opts = SubOpts::new(QoS::AtMostOnce);
        assert_eq!(
            hub.subscribe(&old.session, old.generation, "a/b", opts, 10),
            Err(Stale)
        );
        assert_eq!(
            hub.unsubscribe(&old.session, Some(old.generation), "a/b"),
            Err(Stale)
        );
        assert!(routed(&hub, "a/b").is_empty());
        assert_eq!(
            hub.subscribe(&new.session, new.generation, "a/b", opts, 10),
            Ok(Ok(true))
        );
        assert_eq!(routed(&hub, "a/b"), vec![new.session.id]);
    }

    #[test]
    fn an_admin_tool_is_not_a_device() {
        let hub = hub();
        let mut events = hub.subscribe_events();
        // A monitor with an admin token: a session, but its user stays offline.
        let tool = hub
            .attach("root", "monitor", true, Duration::ZERO, 10, false)
            .expect("tool");
        assert_eq!(hub.connections("root"), 0);
        assert!(hub.connected_clients("root").is_empty());
        assert!(hub.presence_snapshot().users.is_empty());
        // A device of the same user counts; the tool still does not.
        let phone = hub
            .attach("root", "phone", true, Duration::ZERO, 10, true)
            .expect("phone");
        assert_eq!(hub.connected_clients("root"), vec!["phone".to_owned()]);
        // The tool takes the phone's client id over: the phone is gone, and the
        // event says the user is now offline.
        let tool2 = hub
            .attach("root", "phone", false, Duration::ZERO, 10, false)
            .expect("tool2");
        assert_eq!(hub.connections("root"), 0);
        hub.detach(&tool.session, tool.generation, DisconnectReason::Normal);
        hub.detach(&tool2.session, tool2.generation, DisconnectReason::Normal);
        hub.detach(&phone.session, phone.generation, DisconnectReason::Normal);
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push((e.seq, e.client_id, e.kind, e.connections));
        }
        let taken = EventKind::Disconnected(DisconnectReason::TakenOver);
        assert_eq!(
            seen,
            vec![
                (1, "phone".to_owned(), EventKind::Connected, 1),
                (2, "phone".to_owned(), taken, 0),
            ]
        );
        assert_eq!(hub.disconnect_user("root"), 0);
    }

    #[test]
    fn takeovers_and_disconnects_keep_counts_events_and_snapshots_in_step() {
        let hub = hub();
        let mut events = hub.subscribe_events();
        let a = hub
            .attach("ann", "phone", true, Duration::ZERO, 10, true)
            .expect("a");
        let b = hub
            .attach("ann", "laptop", true, Duration::ZERO, 10, true)
            .expect("b");
        assert_eq!(hub.connections("ann"), 2);
        // The phone reconnects: the new generation connects, then the old one goes.
        let a2 = hub
            .attach("ann", "phone", true, Duration::ZERO, 10, true)
            .expect("a2");
        assert_eq!(hub.connections("ann"), 2);
        // The old phone connection ends late: nothing more is reported for it.
        hub.detach(&a.session, a.generation, DisconnectReason::Error);
        let snap = hub.presence_snapshot();
        assert_eq!(snap.users.len(), 1);
        let mut devices: Vec<_> = snap.users[0].1.iter().map(|d| d.generation).collect();
        devices.sort_unstable();
        assert_eq!(devices, vec![b.generation, a2.generation]);
        hub.detach(&b.session, b.generation, DisconnectReason::Normal);
        hub.detach(
            &a2.session,
            a2.generation,
            DisconnectReason::KeepaliveTimeout,
        );
        assert_eq!(hub.connections("ann"), 0);
        assert!(hub.presence_snapshot().users.is_empty());

        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push((e.seq, e.client_id, e.generation, e.kind, e.connections));
        }
        let (on, off) = (EventKind::Connected, EventKind::Disconnected);
        let expected = vec![
            (1, "phone".to_owned(), a.generation, on, 1),
            (2, "laptop".to_owned(), b.generation, on, 2),
            (3, "phone".to_owned(), a2.generation, on, 3),
            (
                4,
                "phone".to_owned(),
                a.generation,
                off(DisconnectReason::TakenOver),
                2,
            ),
            (
                5,
                "laptop".to_owned(),
                b.generation,
                off(DisconnectReason::Normal),
                1,
            ),
            (
                6,
                "phone".to_owned(),
                a2.generation,
                off(DisconnectReason::KeepaliveTimeout),
                0,
            ),
        ];
        assert_eq!(seen, expected);
        assert_eq!(hub.presence_snapshot().as_of, 6);
    }
}
