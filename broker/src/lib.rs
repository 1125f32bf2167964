//! The embedded MQTT broker of imqtt: MQTT 3.1.1 and 5.0 on rumqttc's codec, JWT
//! authentication and per-topic authorization at the edge, and a hub whose costs do
//! not grow with the number of users.
//!
//! Modules: `edge` (listeners, the per-connection loop, the codec boundary), `hub`
//! (sessions, the subscription index, retained messages), `events` (connection
//! events for presence), `uplink` (users' outbox publishes for the IM side), `acl`
//! (who may subscribe and publish where), `auth` (JWT verification, shared with the
//! HTTP API), `topic` (filter syntax and matching), `config` (the `[mqtt]`
//! section), `metrics`, `units` (durations, sizes, listen addresses in config),
//! `error`. The id rule and the outbox rule are `imqtt_wire`'s, the one copy the
//! IM side and the clients use too; `acl`'s `may_publish` applies the outbox rule
//! for every publisher.

pub mod acl;
pub mod auth;
pub mod cluster;
pub mod config;
mod edge;
pub mod error;
pub mod events;
mod hub;
pub mod metrics;
pub mod topic;
pub mod units;
pub mod uplink;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use tokio::sync::broadcast;

pub use acl::{Authorizer, DenyAll};
pub use error::{PublishError, StartError};
pub use events::{Device, DisconnectReason, Event, EventKind, PresenceSnapshot};
pub use hub::Publication;
pub use metrics::{BrokerMetrics, BrokerStats};
/// Quality of service, as on the wire.
pub use rumqttc::v5::mqttbytes::QoS;
/// MQTT 5 properties a publication carries to its subscribers.
pub use rumqttc::v5::mqttbytes::v5::PublishProperties;
pub use uplink::{Answer, Refusal, Uplink, UplinkMessage};

use crate::acl::{Acl, Publisher};
use crate::auth::TokenVerifier;
use crate::config::MqttConfig;
use crate::edge::Edge;
use crate::edge::listener::Listeners;
use crate::hub::{Hub, HubLimits, Scope};
use crate::uplink::UplinkSlot;

/// The lower of two QoS levels.
pub(crate) fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

/// A broker whose listeners are bound, not yet accepting.
#[derive(Debug)]
pub struct Broker {
    listeners: Listeners,
    edge: Arc<Edge>,
}

impl Broker {
    /// Binds the listeners of `cfg`; tokens are checked with `verifier`, group and
    /// presence questions go to `authorizer`.
    pub async fn bind(
        cfg: MqttConfig,
        verifier: Arc<TokenVerifier>,
        authorizer: Arc<dyn Authorizer>,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Broker, StartError> {
        let listeners = Listeners::bind(&cfg).await?;
        let hub = Hub::new(
            HubLimits {
                max_sessions: cfg.max_sessions,
                max_queued: cfg.max_queued,
                max_retained: cfg.max_retained,
            },
            metrics,
        );
        let edge = Arc::new(Edge {
            acl: Acl::new(cfg.acl.clone(), authorizer),
            cfg,
            verifier,
            hub,
            uplink: Arc::new(UplinkSlot::default()),
            connections: AtomicUsize::new(0),
        });
        Ok(Broker { listeners, edge })
    }

    /// The actual address of each listener, keyed like the config (`mqtt.tcp`, ...).
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.local_addrs()
    }

    /// What the bridge uses to publish, to follow connections and to take the
    /// uplink.
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            hub: self.edge.hub.clone(),
            acl: self.edge.acl.clone(),
            uplink: self.edge.uplink.clone(),
        }
    }

    /// Accepts and serves clients until `shutdown` resolves; then stops accepting,
    /// tells every client (v5: DISCONNECT 0x8B) and waits up to `grace` for the
    /// connections to close.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: std::time::Duration) {
        let edge = self.edge.clone();
        self.listeners.run(self.edge, shutdown).await;
        edge.hub.close_all();
        let closed = async {
            while edge.connections.load(std::sync::atomic::Ordering::Acquire) > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, closed).await.is_err() {
            tracing::warn!("MQTT connections still open after the grace period");
        }
    }
}

/// The bridge's side of the broker: publish, follow connections, take users'
/// outbox publishes, and act on a user's sessions. Cheap to clone. No method
/// waits, and none visits more than the sessions of the user it names, except
/// [`BrokerHandle::presence_snapshot`].
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    hub: Arc<Hub>,
    acl: Acl,
    uplink: Arc<UplinkSlot>,
}

impl BrokerHandle {
    /// Publishes `payload` on `topic` to every matching subscriber at up to `qos`,
    /// retained if `retain`. Never waits: each subscriber's message goes on its
    /// session's bounded queue, and a full queue drops per DESIGN.md §9 (counted),
    /// so the store stays the source of truth. Messages published by one caller
    /// reach each subscriber in publish order. An outbox topic is refused.
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishError> {
        self.check(topic)?;
        self.hub
            .publish(Publication::new(topic, payload, qos, retain));
        Ok(())
    }

    /// Whether the IM side may publish on `topic`: a valid topic, and anywhere
    /// but on an outbox.
    fn check(&self, topic: &str) -> Result<(), PublishError> {
        if !topic::valid_topic(topic) {
            return Err(PublishError::InvalidTopic(topic.to_owned()));
        }
        if !self.acl.may_publish(Publisher::Server, topic) {
            return Err(PublishError::Outbox(topic.to_owned()));
        }
        Ok(())
    }

    /// Like [`BrokerHandle::publish`], to this node's sessions only: for what
    /// every node of a cluster works out for itself (presence) or tells only its
    /// own users.
    pub fn publish_node(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishError> {
        self.check(topic)?;
        let mut p = Publication::new(topic, payload, qos, retain);
        p.scope = Scope::Node;
        self.hub.publish(p);
        Ok(())
    }

    /// Routes a publication another node made (see [`Publication::remote`]) to
    /// this node's sessions, and keeps it if retained. It is not handed back to
    /// the cluster link.
    pub fn publish_remote(&self, publication: Publication) -> Result<(), PublishError> {
        self.check(&publication.topic)?;
        self.hub.publish(publication);
        Ok(())
    }

    /// Joins this node to a cluster: from now on every publication made here is
    /// handed to `link`, and `link` hears what this node's sessions hold and which
    /// attach. Call it before serving. Returns false when a link is set already.
    pub fn set_link(&self, link: Arc<dyn cluster::Link>) -> bool {
        self.hub.set_link(link)
    }

    /// Another node attached the session `{uid}:{client_id}` at `at_ms` (Unix
    /// ms): ends the one here (v5 DISCONNECT 0x8E, connected or persistent)
    /// unless it attached later, or at the same millisecond and `tie_is_ours`.
    /// Returns whether one ended.
    pub fn taken_over_elsewhere(
        &self,
        uid: &str,
        client_id: &str,
        at_ms: u64,
        tie_is_ours: bool,
    ) -> bool {
        self.hub
            .taken_over_elsewhere(uid, client_id, at_ms, tie_is_ours)
    }

    /// Every user with a session on this node. Visits every user: for recovery,
    /// not for a hot path.
    pub fn users(&self) -> Vec<String> {
        self.hub.users().iter().map(|u| u.to_string()).collect()
    }

    /// The filters of `uid`'s sessions on this node that start with `prefix`.
    /// Visits only that user's sessions.
    pub fn filters_of(&self, uid: &str, prefix: &str) -> Vec<String> {
        self.hub.filters_of(uid, prefix)
    }

    /// Every (user, filter) subscription of this node whose filter starts with
    /// one of `prefixes`. Visits every session: for recovery, not a hot path.
    pub fn subscriptions_under(&self, prefixes: &[&str]) -> Vec<(String, String)> {
        self.hub
            .subscriptions_under(prefixes)
            .into_iter()
            .map(|(u, f)| (u.to_string(), f))
            .collect()
    }

    /// The users' outbox publishes, from now on; `Some` the first time only. Until
    /// it is taken (or once it is dropped), an outbox publish is refused like a
    /// forbidden topic (v5 PUBACK / PUBREC 0x87, 3.1.1 a closed connection).
    ///
    /// Guarantees: every message gets exactly one [`Answer`]; the publisher's ack
    /// leaves only after it (so it can mean "stored durably"), and one
    /// connection's acks leave in its publish order. A consumer slower than the
    /// publishers pauses them (they are not read) once 1,024 messages wait;
    /// nothing is dropped and other connections do not wait.
    pub fn uplink(&self) -> Option<Uplink> {
        self.uplink.take()
    }

    /// Connection events from now on (see [`Event`] for what they guarantee). A
    /// receiver that falls more than 16,384 events behind is told how many it
    /// missed (`RecvError::Lagged`); it then rebuilds its view from
    /// [`BrokerHandle::presence_snapshot`], applying only events with a later `seq`.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.hub.subscribe_events()
    }

    /// How many connections `uid` holds now (0: offline). Kept where sessions are
    /// attached and detached, so it is a fact, not an inference from events.
    pub fn connections(&self, uid: &str) -> usize {
        self.hub.connections(uid)
    }

    /// Every connected user with its devices, and the `seq` of the last event it
    /// reflects. Visits every connected user: for recovery after lag, not for a
    /// hot path.
    pub fn presence_snapshot(&self) -> PresenceSnapshot {
        self.hub.presence_snapshot()
    }

    /// The retained messages that changed since the last call: each topic with its
    /// current payload and QoS, or `None` when it was cleared. The first call starts
    /// the tracking and returns nothing. Costs the publish path one short lock per
    /// retained publish, and visits only changed topics: for persisting retained
    /// messages behind the publish path.
    pub fn retained_changes(&self) -> Vec<(String, Option<(Bytes, QoS)>)> {
        self.hub
            .take_retained_changes()
            .into_iter()
            .map(|(topic, now)| (topic.to_string(), now.map(|p| (p.payload.clone(), p.qos))))
            .collect()
    }

    /// The retained messages matching `filter`, with their topics: at most one for
    /// a topic without wildcards. A wildcard filter visits every retained message
    /// it matches: for recovery, not for a hot path.
    pub fn retained(&self, filter: &str) -> Vec<(String, Bytes)> {
        if !topic::valid_filter(filter) {
            return Vec::new();
        }
        self.hub
            .retained_matching(filter)
            .into_iter()
            .map(|p| (p.topic.to_string(), p.payload.clone()))
            .collect()
    }

    /// The users with a session (connected or not) subscribed to `topic`, through
    /// an exact filter or a wildcard, each once. Costs what a publish to `topic`
    /// costs: the filter levels plus the subscribers.
    pub fn subscribers(&self, topic: &str) -> Vec<String> {
        if !topic::valid_topic(topic) {
            return Vec::new();
        }
        self.hub
            .subscribers(topic)
            .iter()
            .map(|u| u.to_string())
            .collect()
    }

    /// The broker's gauges and counters, read now.
    pub fn stats(&self) -> BrokerStats {
        self.hub.metrics.stats()
    }

    /// Client ids of `uid`'s connected devices.
    pub fn connected_clients(&self, uid: &str) -> Vec<String> {
        self.hub.connected_clients(uid)
    }

    /// Removes `filter` from every session of `uid` (connected or not), at once:
    /// no message published after this returns reaches them through it. Returns
    /// how many sessions had it.
    pub fn unsubscribe_user(&self, uid: &str, filter: &str) -> usize {
        self.hub.unsubscribe_user(uid, filter)
    }

    /// Closes every connection of `uid` (v5: DISCONNECT 0x98 Administrative
    /// action; no will); returns how many there were. Each reports
    /// `Disconnected(Disconnected)`.
    pub fn disconnect_user(&self, uid: &str) -> usize {
        self.hub.disconnect_user(uid)
    }
}
