//! imqtt as a cluster (`[cluster]`): nodes share one PostgreSQL store, and NATS
//! carries what one node publishes to the sessions another holds. The store
//! stays the source of truth; what crosses NATS is a push, and a push lost in a
//! partition is found again by the clients' sync (each node tells its users to
//! `resync` when its NATS link comes back).
//!
//! Parts: `subjects` (which subject carries what), `frame` (a publication on
//! the wire), `link` (the hub's side: the relay queue and the NATS
//! subscriptions this node's sessions need), `presence` (other nodes' devices),
//! `metrics`. This module runs the tasks: the relay, the subscription worker,
//! the heartbeats and the dead-node check, presence announcements, and the
//! requests every node answers (disconnect a user, revoke subscriptions).

mod frame;
mod link;
mod metrics;
mod presence;
pub mod subjects;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_nats::Client;
use broker::BrokerHandle;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::access::Access;
use crate::cache::Change;
use crate::config::ClusterConfig;
use crate::error::{Error, Result};

use self::link::{CONTROL_QUEUE, NatsLink, Outgoing, RELAY_QUEUE};
pub use self::metrics::ClusterMetrics;
use self::presence::RemoteDevices;
use self::subjects::Subjects;

/// Messages NATS buffers per subscription before it drops for this node (a
/// slow consumer); the store and sync recover what a drop loses.
const SUBSCRIPTION_CAPACITY: usize = 8_192;
/// Longest a request to every node waits for their answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often this node announces its users' device changes, batched.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(20);
/// Users per presence announcement.
const ANNOUNCE_CHUNK: usize = 500;
/// Longest NATS subject imqtt publishes on (NATS's control line is 4 KiB).
const MAX_SUBJECT: usize = 3_500;
/// Sequence numbers per sending node within which a second copy is recognised.
const SEEN_WINDOW: u64 = 65_536;

/// A control message between nodes (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Control {
    /// On `P.u.{uid}.c`: `node` attached the session `{user}:{client_id}`.
    Takeover {
        user: String,
        client_id: String,
        at_ms: u64,
        node: String,
    },
    /// On `P.ctl`, answered: close every connection of `user`.
    Disconnect { user: String },
    /// On `P.ctl`, answered: these changes are durable; forget cached answers
    /// about them and end the subscriptions they no longer allow.
    Revoke { changes: Vec<Change> },
    /// On `P.ctl`, unanswered: these changes are durable; forget cached answers.
    Invalidate { changes: Vec<Change> },
}

/// An answer to a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    node: String,
    count: u64,
}

/// On `P.presence`, in each node's order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum PresenceMsg {
    /// `node` (re)joined: every node sends its whole table.
    Hello { node: String, instance: u64 },
    /// Devices `node` holds now, per user; `reset`: forget what it said before.
    Devices {
        node: String,
        instance: u64,
        reset: bool,
        users: Vec<UserDevices>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct UserDevices {
    user: String,
    devices: Vec<String>,
    ts: u64,
}

/// On `P.hb`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Heartbeat {
    node: String,
    instance: u64,
    connections: u64,
    sessions: u64,
    uptime_s: u64,
}

/// A live node, as `GET /v1/admin/cluster` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name.
    pub node: String,
    /// Open MQTT connections.
    pub connections: u64,
    /// MQTT sessions, connected or not.
    pub sessions: u64,
    /// How long it has run.
    pub uptime_s: u64,
    /// When it was last heard of, Unix milliseconds.
    pub last_seen_ms: u64,
}

#[derive(Debug)]
struct NodeState {
    instance: u64,
    seen: Instant,
    info: NodeInfo,
}

/// Which sequence numbers of one sending instance came already.
#[derive(Debug)]
struct Seen {
    top: u64,
    bits: Box<[u64]>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            top: 0,
            bits: vec![0; (SEEN_WINDOW / 64) as usize].into_boxed_slice(),
        }
    }

    fn bit(&mut self, seq: u64) -> (&mut u64, u64) {
        let i = seq % SEEN_WINDOW;
        (&mut self.bits[(i / 64) as usize], 1 << (i % 64))
    }

    /// Whether `seq` comes for the first time (one older than the window is
    /// taken as a copy).
    fn first(&mut self, seq: u64) -> bool {
        if seq > self.top {
            if seq - self.top >= SEEN_WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.top + 1..seq {
                    let (w, b) = self.bit(s);
                    *w &= !b;
                }
            }
            self.top = seq;
            let (w, b) = self.bit(seq);
            *w |= b;
            return true;
        }
        if self.top - seq >= SEEN_WINDOW {
            return false;
        }
        let (w, b) = self.bit(seq);
        let first = *w & b == 0;
        *w |= b;
        first
    }
}

/// Local users whose devices changed, to announce.
#[derive(Debug, Default)]
struct Announce {
    users: HashMap<String, u64>,
    /// Announce the whole table (someone joined).
    full: bool,
}

/// This node's part of the cluster. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    instance: u64,
    subjects: Subjects,
    client: Client,
    broker: BrokerHandle,
    access: Access,
    heartbeat: Duration,
    started: Instant,
    connected: Arc<AtomicBool>,
    link: Arc<NatsLink>,
    nodes: Mutex<HashMap<String, NodeState>>,
    remote: Mutex<RemoteDevices>,
    seen: Mutex<HashMap<u64, Seen>>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
    next_request: AtomicU64,
    announce: Mutex<Announce>,
    /// Send a heartbeat at the next check, not at the next beat (a node just
    /// connected, or one that just heard of a new node, says it is there).
    beat_now: AtomicBool,
    metrics: ClusterMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's name: `cluster.node`, or `hostname-pid`.
pub fn node_name(cfg: &ClusterConfig) -> String {
    if cfg.node.is_empty() {
        default_node()
    } else {
        cfg.node.clone()
    }
}

/// `hostname-pid`, as a node name.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "imqtt".to_owned());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    format!(
        "{}-{}",
        if host.is_empty() { "imqtt" } else { &host },
        std::process::id()
    )
}

fn now_ms() -> u64 {
    crate::commit::now_ms()
}

impl Cluster {
    /// Connects to NATS (in the background: a node starts, and serves its own
    /// clients, while NATS is down), joins the hub to the cluster and starts the
    /// cluster's tasks. Call before serving.
    pub async fn start(
        cfg: &ClusterConfig,
        broker: BrokerHandle,
        access: Access,
        metrics: ClusterMetrics,
    ) -> Result<Cluster> {
        let node = node_name(cfg);
        let instance = (ulid::Ulid::new().0 as u64) | 1;
        let subjects = Subjects::new(&cfg.subject_prefix);
        let (events_tx, events_rx) = mpsc::channel(64);
        let options = async_nats::ConnectOptions::new()
            .name(format!("imqtt {node}"))
            // Our own publishes never come back to us.
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).clamp(100, 1_000))
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.try_send(event);
                }
            });
        let client = options
            .connect(cfg.servers())
            .await
            .map_err(|e| Error::Cluster(format!("cluster.nats: {e}")))?;
        let connected = Arc::new(AtomicBool::new(false));
        let (queue_tx, queue_rx) = mpsc::channel(RELAY_QUEUE);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let link = Arc::new(NatsLink::new(
            subjects.clone(),
            queue_tx,
            control_tx,
            connected.clone(),
            node.clone(),
            metrics.clone(),
        ));
        let inner = Arc::new(Inner {
            node,
            instance,
            subjects,
            client,
            broker: broker.clone(),
            access,
            heartbeat: cfg.heartbeat.get(),
            started: Instant::now(),
            connected,
            link: link.clone(),
            nodes: Mutex::default(),
            remote: Mutex::default(),
            seen: Mutex::default(),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            announce: Mutex::default(),
            beat_now: AtomicBool::new(false),
            metrics,
        });
        inner.metrics.nodes.set(1);
        if !broker.set_link(link) {
            return Err(Error::Cluster("the broker is in a cluster already".into()));
        }
        let cluster = Cluster { inner };
        cluster.subscribe_base().await?;
        let weak = Arc::downgrade(&cluster.inner);
        tokio::spawn(relay(weak.clone(), queue_rx, control_rx));
        tokio::spawn(interests(weak.clone()));
        tokio::spawn(heartbeats(weak.clone()));
        tokio::spawn(announcer(weak.clone()));
        tokio::spawn(link_events(weak, events_rx));
        tracing::info!(node = %cluster.inner.node, nats = %cfg.nats, "cluster node started");
        Ok(cluster)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether NATS is connected now.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Every live node, this one first.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let stats = self.inner.broker.stats();
        let mut out = vec![NodeInfo {
            node: self.inner.node.clone(),
            connections: stats.connections,
            sessions: stats.sessions,
            uptime_s: self.inner.started.elapsed().as_secs(),
            last_seen_ms: now_ms(),
        }];
        let mut others: Vec<NodeInfo> = lock(&self.inner.nodes)
            .values()
            .map(|n| n.info.clone())
            .collect();
        others.sort_by(|a, b| a.node.cmp(&b.node));
        out.extend(others);
        out
    }

    /// `uid`'s devices on the other nodes.
    pub fn remote_devices(&self, uid: &str) -> Vec<String> {
        lock(&self.inner.remote).devices(uid)
    }

    /// The devices this node holds of `uid` changed at `ts`: the other nodes
    /// hear of it (batched, within a few milliseconds).
    pub fn devices_changed(&self, uid: &str, ts: u64) {
        lock(&self.inner.announce).users.insert(uid.to_owned(), ts);
    }

    /// Closes `uid`'s connections on the other nodes; returns how many there were.
    pub async fn disconnect_user(&self, uid: &str) -> u64 {
        let answers = self
            .inner
            .request(&Control::Disconnect {
                user: uid.to_owned(),
            })
            .await;
        answers.iter().map(|a| a.count).sum()
    }

    /// Tells every live node that `changes` are durable and waits (a bounded
    /// time) until each has ended the subscriptions they no longer allow.
    pub async fn revoke(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let answers = self.inner.request(&Control::Revoke { changes }).await;
        tracing::debug!(nodes = answers.len(), "revocation answered");
    }

    /// Tells the other nodes to forget cached answers about `change` (for the
    /// commit loop: never waits).
    pub fn invalidate(&self, change: &Change) {
        let msg = Control::Invalidate {
            changes: vec![change.clone()],
        };
        if let Ok(json) = serde_json::to_vec(&msg) {
            self.inner
                .link
                .send_raw(self.inner.subjects.control(), Bytes::from(json));
        }
    }

    /// The subscriptions every node holds whatever its sessions do.
    async fn subscribe_base(&self) -> Result<()> {
        let i = &self.inner;
        let base = [
            (i.subjects.retained(), Base::Publications),
            (i.subjects.heartbeat(), Base::Heartbeats),
            (i.subjects.presence(), Base::Presence),
            (i.subjects.control(), Base::Control),
            (i.subjects.node(&i.node), Base::Answers),
        ];
        for (subject, kind) in base {
            let mut sub = i
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::Cluster(format!("cannot subscribe to {subject}: {e}")))?;
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.on_base(kind, msg);
                }
            });
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Base {
    Publications,
    Heartbeats,
    Presence,
    Control,
    Answers,
}

impl Inner {
    fn on_base(self: &Arc<Self>, kind: Base, msg: async_nats::Message) {
        match kind {
            Base::Publications => self.on_publication(msg.payload),
            Base::Heartbeats => match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                Ok(hb) => self.on_heartbeat(hb),
                Err(e) => tracing::warn!(error = %e, "bad heartbeat"),
            },
            Base::Presence => match serde_json::from_slice::<PresenceMsg>(&msg.payload) {
                Ok(p) => self.on_presence(p),
                Err(e) => tracing::warn!(error = %e, "bad presence message"),
            },
            Base::Control => match serde_json::from_slice::<Control>(&msg.payload) {
                Ok(c) => self.on_control(c, msg.reply.map(|r| r.to_string())),
                Err(e) => tracing::warn!(error = %e, "bad control message"),
            },
            Base::Answers => {
                let Some(id) = Subjects::reply_id(&msg.subject) else {
                    return;
                };
                let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload) else {
                    return;
                };
                if let Some(tx) = lock(&self.pending).get(&id) {
                    let _ = tx.try_send(answer);
                }
            }
        }
    }

    /// A message on one of the subscriptions this node's sessions asked for.
    fn on_interest(self: &Arc<Self>, msg: async_nats::Message) {
        if frame::is_frame(&msg.payload) {
            self.on_publication(msg.payload);
            return;
        }
        match serde_json::from_slice::<Control>(&msg.payload) {
            Ok(Control::Takeover {
                user,
                client_id,
                at_ms,
                node,
            }) => {
                if node == self.node {
                    return;
                }
                let tie_is_ours = self.node > node;
                if self
                    .broker
                    .taken_over_elsewhere(&user, &client_id, at_ms, tie_is_ours)
                {
                    tracing::info!(user, client_id, by = %node, "session taken over on another node");
                }
            }
            Ok(other) => tracing::warn!(?other, "unexpected control message on a user subject"),
            Err(e) => tracing::warn!(error = %e, "bad message on a user subject"),
        }
    }

    fn on_publication(&self, payload: Bytes) {
        self.metrics.messages_in.inc();
        let f = match frame::decode(payload) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "bad publication from another node");
                return;
            }
        };
        let first = lock(&self.seen)
            .entry(f.instance)
            .or_insert_with(Seen::new)
            .first(f.seq);
        if !first {
            self.metrics.duplicates.inc();
            return;
        }
        if let Err(e) = self.broker.publish_remote(f.publication) {
            tracing::warn!(error = %e, "publication from another node refused");
        }
    }

    fn on_heartbeat(self: &Arc<Self>, hb: Heartbeat) {
        if hb.node == self.node {
            if hb.instance != self.instance {
                tracing::error!(node = %hb.node, "another process uses this node's name (cluster.node must be unique)");
            }
            return;
        }
        let info = NodeInfo {
            node: hb.node.clone(),
            connections: hb.connections,
            sessions: hb.sessions,
            uptime_s: hb.uptime_s,
            last_seen_ms: now_ms(),
        };
        let (new, restarted) = {
            let mut nodes = lock(&self.nodes);
            let before = nodes.insert(
                hb.node.clone(),
                NodeState {
                    instance: hb.instance,
                    seen: Instant::now(),
                    info,
                },
            );
            self.metrics.nodes.set(nodes.len() as i64 + 1);
            match before {
                None => (true, false),
                Some(b) => (false, b.instance != hb.instance),
            }
        };
        if restarted {
            self.forget_node(&hb.node);
        }
        if new || restarted {
            // A node we did not know, or had counted dead: everyone's table,
            // theirs included, comes again.
            tracing::info!(node = %hb.node, "node joined");
            self.send_hello();
        }
    }

    /// Forgets a node's devices and republishes its users' presence.
    fn forget_node(&self, node: &str) {
        let uids = lock(&self.remote).drop_node(node);
        for uid in uids {
            let remote = lock(&self.remote).devices(&uid);
            crate::presence::publish_here(&self.broker, Some(remote), &uid, now_ms(), false);
        }
    }

    fn on_presence(self: &Arc<Self>, msg: PresenceMsg) {
        match msg {
            PresenceMsg::Hello { node, .. } => {
                if node != self.node {
                    lock(&self.announce).full = true;
                    self.beat_now.store(true, Ordering::Release);
                }
            }
            PresenceMsg::Devices {
                node, reset, users, ..
            } => {
                if node == self.node {
                    return;
                }
                let mut touched: Vec<(String, u64)> = Vec::new();
                {
                    let mut remote = lock(&self.remote);
                    if reset {
                        touched.extend(remote.drop_node(&node).into_iter().map(|u| (u, 0)));
                    }
                    for u in users {
                        remote.set(&node, &u.user, u.devices);
                        touched.push((u.user, u.ts));
                    }
                }
                for (uid, ts) in touched {
                    let remote = lock(&self.remote).devices(&uid);
                    crate::presence::publish_here(&self.broker, Some(remote), &uid, ts, false);
                }
            }
        }
    }

    fn on_control(self: &Arc<Self>, c: Control, reply: Option<String>) {
        let me = self.clone();
        tokio::spawn(async move {
            let count = match c {
                Control::Disconnect { user } => me.broker.disconnect_user(&user) as u64,
                Control::Revoke { changes } => {
                    let worker = me.clone();
                    let _ = tokio::task::spawn_blocking(move || worker.recheck(&changes)).await;
                    0
                }
                Control::Invalidate { changes } => {
                    for c in &changes {
                        me.access.cache().invalidate(c);
                    }
                    0
                }
                Control::Takeover { .. } => 0,
            };
            if let Some(reply) = reply {
                let answer = Answer {
                    node: me.node.clone(),
                    count,
                };
                if let Ok(json) = serde_json::to_vec(&answer) {
                    let _ = me.client.publish(reply, Bytes::from(json)).await;
                }
            }
        });
    }

    /// After `changes`: forgets cached answers about them, and ends this
    /// node's group and presence subscriptions they no longer allow.
    fn recheck(&self, changes: &[Change]) {
        let cache = self.access.cache();
        for c in changes {
            cache.invalidate(c);
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for c in changes {
            match c {
                Change::Member { gid, uid } => {
                    if let Ok(topic) = imqtt_wire::topic::group(gid)
                        && !self.access.is_member(gid, uid).unwrap_or(false)
                    {
                        self.broker.unsubscribe_user(uid, &topic);
                    }
                    // Presence seen through the group, both ways.
                    for f in self.broker.filters_of(uid, "presence/") {
                        if let Some(watched) = f.strip_prefix("presence/") {
                            pairs.push((uid.clone(), watched.to_owned()));
                        }
                    }
                    if let Ok(topic) = imqtt_wire::topic::presence(uid) {
                        for watcher in self.broker.subscribers(&topic) {
                            pairs.push((watcher, uid.clone()));
                        }
                    }
                }
                Change::Contact { owner, contact } => {
                    pairs.push((contact.clone(), owner.clone()));
                    pairs.push((owner.clone(), contact.clone()));
                }
            }
        }
        pairs.sort();
        pairs.dedup();
        for (watcher, watched) in pairs {
            if watcher == watched {
                continue;
            }
            match self.access.can_see_presence(&watcher, &watched) {
                Ok(true) => {}
                Ok(false) => {
                    if let Ok(topic) = imqtt_wire::topic::presence(&watched) {
                        self.broker.unsubscribe_user(&watcher, &topic);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read presence visibility"),
            }
        }
    }

    /// Sends `control` to every node and gathers the answers of the live ones
    /// (at most [`REQUEST_TIMEOUT`]; none while NATS is down).
    async fn request(&self, control: &Control) -> Vec<Answer> {
        let expected = lock(&self.nodes).len();
        if expected == 0 || !self.connected.load(Ordering::Acquire) {
            return Vec::new();
        }
        let Ok(json) = serde_json::to_vec(control) else {
            return Vec::new();
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(expected.max(1) * 2);
        lock(&self.pending).insert(id, tx);
        let reply = self.subjects.reply(&self.node, id);
        let mut answers = Vec::new();
        if self
            .client
            .publish_with_reply(self.subjects.control(), reply, Bytes::from(json))
            .await
            .is_ok()
        {
            let gather = async {
                while let Some(a) = rx.recv().await {
                    if !answers.iter().any(|b: &Answer| b.node == a.node) {
                        answers.push(a);
                    }
                    if answers.len() >= expected {
                        break;
                    }
                }
            };
            if tokio::time::timeout(REQUEST_TIMEOUT, gather).await.is_err() {
                tracing::warn!(
                    answered = answers.len(),
                    expected,
                    "not every node answered in time"
                );
            }
        }
        lock(&self.pending).remove(&id);
        answers
    }

    fn send_hello(&self) {
        let hello = PresenceMsg::Hello {
            node: self.node.clone(),
            instance: self.instance,
        };
        if let Ok(json) = serde_json::to_vec(&hello) {
            self.link
                .send_raw(self.subjects.presence(), Bytes::from(json));
        }
        lock(&self.announce).full = true;
    }

    /// NATS came back: tell local users to resync, authorize group and presence
    /// subscriptions again, and exchange presence tables.
    fn after_partition(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let users = me.broker.users();
            let resync = Bytes::from_static(br#"{"type":"resync"}"#);
            for uid in &users {
                if let Ok(topic) = imqtt_wire::topic::events(uid) {
                    let _ = me.broker.publish_node(
                        &topic,
                        resync.clone(),
                        broker::QoS::AtLeastOnce,
                        false,
                    );
                }
            }
            tracing::info!(
                users = users.len(),
                "NATS is back: resync sent to local users"
            );
            let worker = me.clone();
            let _ = tokio::task::spawn_blocking(move || worker.reauthorize()).await;
        });
    }

    /// Checks every group and presence subscription of this node against the
    /// store again, ending the ones revoked while it was cut off.
    fn reauthorize(&self) {
        self.access.cache().clear();
        let mut ended = 0;
        for (uid, filter) in self.broker.subscriptions_under(&["groups/", "presence/"]) {
            let allowed = if let Some(gid) = filter.strip_prefix("groups/") {
                self.access.is_member(gid, &uid)
            } else if let Some(watched) = filter.strip_prefix("presence/") {
                if watched == uid {
                    Ok(true)
                } else {
                    self.access.can_see_presence(&uid, watched)
                }
            } else {
                Ok(true)
            };
            match allowed {
                Ok(true) => {}
                Ok(false) => {
                    ended += self.broker.unsubscribe_user(&uid, &filter);
                }
                Err(e) => tracing::warn!(error = %e, "cannot authorize a subscription again"),
            }
        }
        tracing::info!(ended, "subscriptions authorized again");
    }
}

/// Publishes what the hub hands the link, each queue in order, control
/// messages first.
async fn relay(
    inner: Weak<Inner>,
    mut queue: mpsc::Receiver<Outgoing>,
    mut control: mpsc::Receiver<Outgoing>,
) {
    let mut seq: u64 = 0;
    loop {
        let out = tokio::select! {
            biased;
            Some(c) = control.recv() => c,
            Some(p) = queue.recv() => p,
            else => return,
        };
        let Some(i) = inner.upgrade() else { return };
        if !i.connected.load(Ordering::Acquire) {
            i.metrics.publish_failures.inc();
            continue;
        }
        let (subject, payload, counted) = match out {
            Outgoing::Publication(p) => {
                seq += 1;
                let subject = i.subjects.publication(p.topic(), p.retain());
                (subject, frame::encode(i.instance, seq, &p), true)
            }
            Outgoing::Raw(subject, payload) => (subject, payload, false),
        };
        if subject.len() > MAX_SUBJECT {
            i.metrics.publish_failures.inc();
            tracing::warn!(len = subject.len(), "topic too long to cross NATS");
            continue;
        }
        match i.client.publish(subject, payload).await {
            Ok(()) if counted => {
                i.metrics.messages_out.inc();
            }
            Ok(()) => {}
            Err(e) => {
                i.metrics.publish_failures.inc();
                tracing::debug!(error = %e, "NATS publish failed");
            }
        }
    }
}

/// Makes and ends the NATS subscriptions this node's sessions need.
async fn interests(inner: Weak<Inner>) {
    let mut subs: HashMap<String, AbortHandle> = HashMap::new();
    loop {
        let Some(i) = inner.upgrade() else { return };
        let link = i.link.clone();
        drop(i);
        link.wake.notified().await;
        let Some(i) = inner.upgrade() else { return };
        let (dirty, epoch) = lock(&link.interests).take_dirty();
        for (subject, want) in dirty {
            match (want, subs.contains_key(&subject)) {
                (true, false) => match i.client.subscribe(subject.clone()).await {
                    Ok(mut sub) => {
                        let weak = Arc::downgrade(&i);
                        let task = tokio::spawn(async move {
                            while let Some(msg) = sub.next().await {
                                let Some(inner) = weak.upgrade() else { return };
                                inner.on_interest(msg);
                            }
                        });
                        subs.insert(subject, task.abort_handle());
                    }
                    Err(e) => tracing::warn!(error = %e, subject, "cannot subscribe on NATS"),
                },
                (false, true) => {
                    if let Some(task) = subs.remove(&subject) {
                        // Dropping the subscriber unsubscribes on NATS.
                        task.abort();
                    }
                }
                _ => {}
            }
        }
        let _ = i.client.flush().await;
        link.done.send_replace(epoch);
    }
}

/// Announces this node every heartbeat, and counts out nodes silent for three.
async fn heartbeats(inner: Weak<Inner>) {
    let Some(every) = inner.upgrade().map(|i| i.heartbeat) else {
        return;
    };
    let check = (every / 4).max(Duration::from_millis(100));
    let mut next_beat = Instant::now();
    loop {
        let Some(i) = inner.upgrade() else { return };
        if Instant::now() >= next_beat || i.beat_now.swap(false, Ordering::AcqRel) {
            next_beat = Instant::now() + every;
            let stats = i.broker.stats();
            let hb = Heartbeat {
                node: i.node.clone(),
                instance: i.instance,
                connections: stats.connections,
                sessions: stats.sessions,
                uptime_s: i.started.elapsed().as_secs(),
            };
            if let Ok(json) = serde_json::to_vec(&hb) {
                i.link.send_raw(i.subjects.heartbeat(), Bytes::from(json));
            }
        }
        let dead: Vec<(String, u64)> = {
            let mut nodes = lock(&i.nodes);
            let dead: Vec<(String, u64)> = nodes
                .iter()
                .filter(|(_, n)| n.seen.elapsed() > every * 3)
                .map(|(name, n)| (name.clone(), n.instance))
                .collect();
            for (name, _) in &dead {
                nodes.remove(name);
            }
            i.metrics.nodes.set(nodes.len() as i64 + 1);
            dead
        };
        for (name, instance) in dead {
            tracing::warn!(node = %name, "node silent for three heartbeats: counted out");
            lock(&i.seen).remove(&instance);
            i.forget_node(&name);
        }
        drop(i);
        tokio::time::sleep(check).await;
    }
}

/// Sends this node's device changes (or its whole table) every few ms.
async fn announcer(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        let Some(i) = inner.upgrade() else { return };
        let (users, full) = {
            let mut a = lock(&i.announce);
            (std::mem::take(&mut a.users), std::mem::take(&mut a.full))
        };
        let mut list: Vec<UserDevices> = if full {
            let snapshot = i.broker.presence_snapshot();
            snapshot
                .users
                .into_iter()
                .map(|(user, devices)| UserDevices {
                    ts: users.get(&user).copied().unwrap_or(0),
                    user,
                    devices: devices.into_iter().map(|d| d.client_id).collect(),
                })
                .collect()
        } else {
            users
                .into_iter()
                .map(|(user, ts)| UserDevices {
                    devices: i.broker.connected_clients(&user),
                    user,
                    ts,
                })
                .collect()
        };
        if list.is_empty() && !full {
            continue;
        }
        let mut reset = full;
        loop {
            let rest = list.split_off(list.len().min(ANNOUNCE_CHUNK));
            let msg = PresenceMsg::Devices {
                node: i.node.clone(),
                instance: i.instance,
                reset,
                users: std::mem::replace(&mut list, rest),
            };
            reset = false;
            if let Ok(json) = serde_json::to_vec(&msg) {
                i.link.send_raw(i.subjects.presence(), Bytes::from(json));
            }
            if list.is_empty() {
                break;
            }
        }
    }
}

/// Follows the NATS connection: up, down, and back after a partition.
async fn link_events(inner: Weak<Inner>, mut events: mpsc::Receiver<async_nats::Event>) {
    let mut ever = false;
    let mut up = false;
    while let Some(event) = events.recv().await {
        let Some(i) = inner.upgrade() else { return };
        match event {
            async_nats::Event::Connected => {
                i.connected.store(true, Ordering::Release);
                i.metrics.nats_connected.set(1);
                tracing::info!("connected to NATS");
                if ever && !up {
                    i.after_partition();
                }
                ever = true;
                up = true;
                i.send_hello();
                i.beat_now.store(true, Ordering::Release);
                // Interests made while down are in effect now.
                i.link.wake.notify_one();
            }
            async_nats::Event::Disconnected => {
                i.connected.store(false, Ordering::Release);
                i.metrics.nats_connected.set(0);
                up = false;
                tracing::warn!("NATS connection lost: serving local sessions only");
            }
            async_nats::Event::SlowConsumer(sid) => {
                tracing::warn!(sid, "NATS dropped messages for a slow subscription");
            }
            other => tracing::info!(event = %other, "NATS"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn a_second_copy_is_recognised_and_a_first_one_is_not_lost() {
        let mut s = Seen::new();
        assert!(s.first(1));
        assert!(s.first(3));
        assert!(!s.first(1));
        assert!(s.first(2), "late but new");
        assert!(!s.first(2));
        assert!(s.first(100_000));
        assert!(!s.first(3), "far behind the window: taken as a copy");
        assert!(s.first(99_999));
        assert!(!s.first(100_000));
    }
}
