//! Presence (DESIGN.md §7): a user is online while at least one of its devices
//! holds a connection. Every change is published retained on `presence/{uid}` as
//! `{"user","status","devices","ts"}`, from the broker's connection events.
//!
//! The events are lossless and numbered, and the per-user connection counts are
//! kept where sessions attach and detach, so the payload is built from facts read
//! at publish time (`connected_clients`), never from a count inferred here. If
//! this task ever falls behind the event stream (`Lagged`), it republishes every
//! user of the broker's snapshot and sets offline whoever it last saw online and
//! the snapshot lacks. What it keeps is the set of online users, for that.
//! Presence is never restored from the store: a restart starts everyone offline.

use std::collections::HashSet;

use broker::{BrokerHandle, DisconnectReason, EventKind, QoS};
use bytes::Bytes;
use imqtt_client::wire::{self, Presence, PresenceStatus};
use tokio::sync::broadcast::error::RecvError;

/// Follows the broker's connection events and publishes presence, until the
/// broker is gone. Subscribes before returning, so no event after this call is
/// missed.
pub fn spawn(broker: BrokerHandle) {
    let mut events = broker.events();
    tokio::spawn(async move {
        let mut online: HashSet<Box<str>> = HashSet::new();
        loop {
            match events.recv().await {
                // The device stays connected through a takeover: the new
                // connection's `Connected` has published it already.
                Ok(e) if e.kind == EventKind::Disconnected(DisconnectReason::TakenOver) => {}
                Ok(e) => publish(&broker, &e.uid, &mut online),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "presence fell behind; rebuilding from a snapshot");
                    let snapshot = broker.presence_snapshot();
                    let now: HashSet<Box<str>> = snapshot
                        .users
                        .iter()
                        .map(|(uid, _)| uid.as_str().into())
                        .collect();
                    let gone: Vec<Box<str>> = online.difference(&now).cloned().collect();
                    for uid in gone.iter().chain(now.iter()) {
                        publish(&broker, uid, &mut online);
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
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
        .and_then(|t| broker.retained(&t))
        .and_then(|p| serde_json::from_slice::<Presence>(&p).ok())
        .filter(|p| p.status == status)
        .map_or(0, |p| p.ts);
    Presence {
        user: uid.to_owned(),
        status,
        devices,
        ts,
    }
}

fn publish(broker: &BrokerHandle, uid: &str, online: &mut HashSet<Box<str>>) {
    let devices = broker.connected_clients(uid);
    let status = if devices.is_empty() {
        online.remove(uid);
        PresenceStatus::Offline
    } else {
        if !online.contains(uid) {
            online.insert(uid.into());
        }
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
