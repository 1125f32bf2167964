//! Presence (DESIGN.md §7): a user is online while at least one of its devices
//! holds a connection. Every change is published retained on `presence/{uid}` as
//! `{"user","status","devices","ts"}`, from the broker's connection events.
//!
//! The events are lossless and numbered, and the per-user connection counts are
//! kept where sessions attach and detach, so the payload is built from facts read
//! at publish time (`connected_clients`), never from a count inferred here; this
//! task keeps no state per user. If it ever falls behind the event stream
//! (`Lagged`), it republishes every user of the broker's snapshot, and every
//! retained presence that says online while the user is not connected.
//! Presence is never restored from the store: a restart starts everyone offline.
//!
//! In a cluster every node holds the others' devices per user (announced over
//! NATS, see `cluster`), and publishes the union here: the retained presence is
//! the same on every node, and each node's own watchers get it from their node.

use std::sync::Arc;

use broker::{BrokerHandle, DisconnectReason, EventKind, QoS};
use bytes::Bytes;
use imqtt_wire::{self as wire, Presence, PresenceStatus};
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::Cluster;

/// Follows the broker's connection events and publishes presence, until the
/// broker is gone. Subscribes before returning, so no event after this call is
/// missed. In a cluster, each change is also announced to the other nodes.
pub fn spawn(
    broker: BrokerHandle,
    cluster: Option<Cluster>,
    hooks: Option<Arc<crate::webhooks::Hooks>>,
) {
    let hooks = hooks.filter(|h| h.wants_users());
    let mut events = broker.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                // The device stays connected through a takeover: the new
                // connection's `Connected` has published it already (unless the
                // new one is an admin's tool, which is no device: then the count
                // says so).
                Ok(e)
                    if e.kind == EventKind::Disconnected(DisconnectReason::TakenOver)
                        && e.connections > 0 => {}
                Ok(e) => {
                    // What the webhooks hear: a change of the user's status.
                    // (the status published before this change, and after it).
                    let was = hooks.as_ref().map(|_| {
                        retained(&broker, &e.uid)
                            .is_some_and(|p| p.status == PresenceStatus::Online)
                    });
                    changed(&broker, cluster.as_ref(), &e.uid);
                    if let (Some(h), Some(was)) = (&hooks, was) {
                        let remote = cluster.as_ref().map(|c| c.remote_devices(&e.uid));
                        let devices = devices(&broker, remote, &e.uid);
                        let now = !devices.is_empty();
                        if now != was {
                            h.user_changed(&e.uid, now, &devices);
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "presence fell behind; rebuilding from a snapshot");
                    catch_up(&broker, cluster.as_ref());
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// This node's devices of `uid` changed.
fn changed(broker: &BrokerHandle, cluster: Option<&Cluster>, uid: &str) {
    let ts = crate::commit::now_ms();
    publish_here(
        broker,
        cluster.map(|c| c.remote_devices(uid)),
        uid,
        ts,
        true,
    );
    if let Some(c) = cluster {
        c.devices_changed(uid, ts);
    }
}

/// After a lag: everyone connected now, and everyone whose retained presence
/// still says online but who is not.
fn catch_up(broker: &BrokerHandle, cluster: Option<&Cluster>) {
    let snapshot = broker.presence_snapshot();
    for (uid, _) in &snapshot.users {
        changed(broker, cluster, uid);
    }
    for (_, payload) in broker.retained("presence/+") {
        if let Ok(p) = serde_json::from_slice::<Presence>(&payload)
            && p.status == PresenceStatus::Online
            && broker.connections(&p.user) == 0
        {
            changed(broker, cluster, &p.user);
        }
    }
}

/// `uid`'s devices: this node's, and in a cluster the other nodes' too (sorted,
/// so that every node writes the same list).
fn devices(broker: &BrokerHandle, remote: Option<Vec<String>>, uid: &str) -> Vec<String> {
    let mut devices = broker.connected_clients(uid);
    if let Some(remote) = remote {
        devices.extend(remote);
        devices.sort();
        devices.dedup();
    }
    devices
}

/// Whether `uid` has a device online, on this node or (in a cluster) another.
pub fn is_online(broker: &BrokerHandle, cluster: Option<&Cluster>, uid: &str) -> bool {
    !devices(broker, cluster.map(|c| c.remote_devices(uid)), uid).is_empty()
}

/// The presence retained here for `uid`, if any.
fn retained(broker: &BrokerHandle, uid: &str) -> Option<Presence> {
    wire::topic::presence(uid)
        .ok()
        .and_then(|t| broker.retained(&t).pop())
        .and_then(|(_, p)| serde_json::from_slice::<Presence>(&p).ok())
}

/// `uid`'s presence now, as this node sees it (in a cluster, every node's
/// devices).
pub fn current(broker: &BrokerHandle, cluster: Option<&Cluster>, uid: &str) -> Presence {
    let devices = devices(broker, cluster.map(|c| c.remote_devices(uid)), uid);
    let status = if devices.is_empty() {
        PresenceStatus::Offline
    } else {
        PresenceStatus::Online
    };
    // The time of the last change is the one published, when it says the same.
    let ts = retained(broker, uid)
        .filter(|p| p.status == status)
        .map_or(0, |p| p.ts);
    Presence {
        user: uid.to_owned(),
        status,
        devices,
        ts,
    }
}

/// Publishes `uid`'s presence, retained, to this node's sessions (each node
/// works it out for itself). A change another node announced (`always` false)
/// is not published when it says what the retained one says. `remote` is the
/// other nodes' devices in a cluster (then the time is the later of `ts` and the
/// retained one's, so every node writes the same).
pub fn publish_here(
    broker: &BrokerHandle,
    remote: Option<Vec<String>>,
    uid: &str,
    ts: u64,
    always: bool,
) {
    let in_cluster = remote.is_some();
    let devices = devices(broker, remote, uid);
    let status = if devices.is_empty() {
        PresenceStatus::Offline
    } else {
        PresenceStatus::Online
    };
    // Read only when it decides something: a single node's own changes are
    // published as they come.
    let before = (!always || in_cluster)
        .then(|| retained(broker, uid))
        .flatten();
    if !always
        && let Some(b) = &before
        && b.status == status
        && b.devices == devices
    {
        return;
    }
    let ts = match (&before, in_cluster) {
        (Some(b), true) => ts.max(b.ts),
        _ => ts,
    };
    let presence = Presence {
        user: uid.to_owned(),
        status,
        devices,
        ts,
    };
    let (Ok(topic), Ok(json)) = (wire::topic::presence(uid), serde_json::to_vec(&presence)) else {
        return;
    };
    if let Err(e) = broker.publish_node(&topic, Bytes::from(json), QoS::AtLeastOnce, true) {
        tracing::error!(error = %e, uid, "cannot publish presence");
    }
}
