//! The embedded MQTT broker of imqtt: MQTT 3.1.1 and 5.0 on rumqttc's codec, JWT
//! authentication and per-topic authorization at the edge, and a hub whose costs do
//! not grow with the number of users.
//!
//! Modules: `edge` (listeners, the per-connection loop, the codec boundary), `hub`
//! (sessions, the subscription index, retained messages), `acl` (who may subscribe
//! and publish where), `auth` (JWT verification, shared with the HTTP API), `topic`
//! (filter syntax and matching), `config` (the `[mqtt]` section), `metrics`, `units`
//! (durations, sizes, listen addresses in config), `error`.

pub mod acl;
pub mod auth;
pub mod config;
mod edge;
pub mod error;
mod hub;
pub mod metrics;
pub mod topic;
pub mod units;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use tokio::sync::broadcast;

pub use acl::{Authorizer, DenyAll};
pub use error::Error;
pub use hub::{DisconnectReason, Event, EventKind};
pub use metrics::BrokerMetrics;
/// Quality of service, as on the wire.
pub use rumqttc::v5::mqttbytes::QoS;

use crate::acl::Acl;
use crate::auth::TokenVerifier;
use crate::config::MqttConfig;
use crate::edge::Edge;
use crate::edge::listener::Listeners;
use crate::hub::{Hub, HubLimits, Publication};

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
    ) -> Result<Broker, Error> {
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
            connections: AtomicUsize::new(0),
        });
        Ok(Broker { listeners, edge })
    }

    /// The actual address of each listener, keyed like the config (`mqtt.tcp`, ...).
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.local_addrs()
    }

    /// What the bridge uses to publish and to follow connections.
    pub fn handle(&self) -> BrokerHandle {
        BrokerHandle {
            hub: self.edge.hub.clone(),
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

/// The bridge's side of the broker: publish, follow connections, and act on a
/// user's sessions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    hub: Arc<Hub>,
}

impl BrokerHandle {
    /// Publishes `payload` on `topic` to every matching subscriber at up to `qos`.
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Result<(), Error> {
        if !topic::valid_topic(topic) {
            return Err(Error::InvalidTopic(topic.to_owned()));
        }
        self.hub
            .publish(Publication::new(topic, payload, qos, retain));
        Ok(())
    }

    /// Connection events from now on. A receiver that falls more than 16,384 events
    /// behind is told how many it missed and can resynchronise with
    /// [`BrokerHandle::connected_clients`].
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.hub.subscribe_events()
    }

    /// Removes `filter` from every session of `uid`; returns how many had it.
    pub fn unsubscribe_user(&self, uid: &str, filter: &str) -> usize {
        self.hub.unsubscribe_user(uid, filter)
    }

    /// Closes every connection of `uid`; returns how many there were.
    pub fn disconnect_user(&self, uid: &str) -> usize {
        self.hub.kick_user(uid)
    }

    /// Client ids of `uid`'s connected devices.
    pub fn connected_clients(&self, uid: &str) -> Vec<String> {
        self.hub.connected_clients(uid)
    }
}
