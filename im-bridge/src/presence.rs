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

use broker::{BrokerHandle, DisconnectReason, EventKind, QoS};
use bytes::Bytes;
use imqtt_wire::{self as wire, Presence, PresenceStatus};
use tokio::sync::broadcast::error::RecvError;

/// Follows the broker's connection events and publishes presence, until the
/// broker is gone. Subscribes before returning, so no event after this call is
/// missed.
pub fn spawn(broker: BrokerHandle) {
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
                Ok(e) => publish(&broker, &e.uid),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "presence fell behind; rebuilding from a snapshot");
                    catch_up(&broker);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// After a lag: everyone connected now, and everyone whose retained presence
/// still says online but who is not.
fn catch_up(broker: &BrokerHandle) {
    let snapshot = broker.presence_snapshot();
    for (uid, _) in &snapshot.users {
        publish(broker, uid);
    }
    for (_, payload) in broker.retained("presence/+") {
        if let Ok(p) = serde_json::from_slice::<Presence>(&payload)
            && p.status == PresenceStatus::Online
            && broker.connections(&p.user) == 0
        {
            publish(broker, &p.user);
        }
    }
}

/// `uid`'s presence now, as the broker sees it.
pub fn current(broker: &BrokerHandle, uid: &str) -> Presence {
    let devices = broker.connected_clients(uid);
    let status = if devices.is_empty() {
        PresenceStatus::Offline
    } else {
        PresenceStatus::Online
    };
    // The time of the last change is the one published, when it says the same.
    let ts = wire::topic::presence(uid)
        .ok()
        .and_then(|t| broker.retained(&t).pop())
        .and_then(|(_, p)| serde_json::from_slice::<Presence>(&p).ok())
        .filter(|p| p.status == status)
        .map_or(0, |p| p.ts);
    Presence {
        user: uid.to_owned(),
        status,
        devices,
        ts,
    }
}

fn publish(broker: &BrokerHandle, uid: &str) {
    let devices = broker.connected_clients(uid);
    let status = if devices.is_empty() {
        PresenceStatus::Offline
    } else {
        PresenceStatus::Online
    };
    let presence = Presence {
        user: uid.to_owned(),
        status,
        devices,
        ts: crate::commit::now_ms(),
    };
    let (Ok(topic), Ok(json)) = (wire::topic::presence(uid), serde_json::to_vec(&presence)) else {
        return;
    };
    if let Err(e) = broker.publish(&topic, Bytes::from(json), QoS::AtLeastOnce, true) {
        tracing::error!(error = %e, uid, "cannot publish presence");
    }
}
