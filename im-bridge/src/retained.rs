//! MQTT retained messages that survive a restart, as they do with mosquitto's
//! persistence: kept in the store, written behind the publish path (a task takes
//! the broker's list of changed topics every second, and once more at shutdown),
//! and put back into the broker at startup. Presence (`presence/{uid}`) is never
//! kept: it is rebuilt from live connections, and after a restart everyone starts
//! offline.

use std::sync::Arc;
use std::time::Duration;

use broker::{BrokerHandle, QoS};

use crate::commit::{Committer, WeakCommitter};
use crate::error::{Error, Result};
use crate::store::Store;

/// How often changed retained messages are written.
const EVERY: Duration = Duration::from_secs(1);
/// Changes written per commit job.
const CHUNK: usize = 1024;

fn kept(topic: &str) -> bool {
    !topic.starts_with("presence/")
}

fn qos_byte(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn qos_of(b: u8) -> QoS {
    match b {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Puts the stored retained messages back into the broker and starts tracking
/// changes; returns how many came back.
pub async fn restore(broker: &BrokerHandle, store: &Arc<dyn Store>) -> Result<usize> {
    let reader = store.clone();
    let stored = tokio::task::spawn_blocking(move || reader.retained())
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let mut n = 0;
    for (topic, payload, qos) in stored {
        if kept(&topic) && broker.publish(&topic, payload, qos_of(qos), true).is_ok() {
            n += 1;
        }
    }
    // The first call starts the tracking (what was just restored is not news).
    broker.retained_changes();
    Ok(n)
}

/// Retained changes not yet written: topic to its latest value (`None`: cleared).
/// Bounded by the broker's `mqtt.max_retained` topics.
pub type Pending = std::collections::HashMap<String, Option<(bytes::Bytes, u8)>>;

/// Writes the retained messages that changed since the last call (and what an
/// earlier call could not write), durably, through the commit loop. What fails
/// stays in `pending` for the next call; otherwise `pending` holds nothing, not
/// even its allocation (a burst of 19,000 changes would keep a map of that size
/// for good).
pub async fn persist(
    broker: &BrokerHandle,
    committer: &Committer,
    pending: &mut Pending,
) -> Result<()> {
    // The broker's changes are one per topic already; only what an earlier call
    // left needs merging under them.
    let fresh = broker
        .retained_changes()
        .into_iter()
        .filter(|(topic, _)| kept(topic))
        .map(|(topic, now)| (topic, now.map(|(payload, qos)| (payload, qos_byte(qos)))));
    let changes: Vec<_> = if pending.is_empty() {
        fresh.collect()
    } else {
        let mut merged = std::mem::take(pending);
        merged.extend(fresh);
        merged.into_iter().collect()
    };
    // A chunk at a time, so that what a burst costs in copies on the way to the
    // store stays bounded.
    let mut changes = changes.into_iter();
    loop {
        let chunk: Vec<_> = changes.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        let written = Arc::new(chunk);
        let job = written.clone();
        let result = committer
            .write(move |r| Ok((r.put_retained(&job)?, None)))
            .await;
        if let Err(e) = result {
            pending.extend(Arc::unwrap_or_clone(written));
            pending.extend(changes);
            return Err(e);
        }
    }
}

/// What [`spawn`]'s task has not yet written, shared with the server's last
/// write at shutdown.
pub type Shared = std::sync::Arc<tokio::sync::Mutex<Pending>>;

/// Persists changes every second, in the background, while the server runs.
pub fn spawn(broker: BrokerHandle, committer: WeakCommitter, pending: Shared) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(committer) = committer.upgrade() else {
                return;
            };
            let mut pending = pending.lock().await;
            if let Err(e) = persist(&broker, &committer, &mut pending).await {
                tracing::warn!(error = %e, "cannot persist retained messages");
            }
        }
    });
}
