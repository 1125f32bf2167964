//! MQTT retained messages that survive a restart, as they do with mosquitto's
//! persistence: kept in the store, written behind the publish path (a task takes
//! the broker's list of changed topics every second, and once more at shutdown),
//! and put back into the broker at startup. Presence (`presence/{uid}`) is never
//! kept: it is rebuilt from live connections, and after a restart everyone starts
//! offline.

use std::sync::Arc;
use std::time::Duration;

use broker::{BrokerHandle, QoS};

use crate::error::{Error, Result};
use crate::store::Store;

/// How often changed retained messages are written.
const EVERY: Duration = Duration::from_secs(1);

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

/// Writes the retained messages that changed since the last call, durably.
pub async fn persist(broker: &BrokerHandle, store: &Arc<dyn Store>) -> Result<()> {
    let changes: Vec<_> = broker
        .retained_changes()
        .into_iter()
        .filter(|(topic, _)| kept(topic))
        .map(|(topic, now)| (topic, now.map(|(payload, qos)| (payload, qos_byte(qos)))))
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    let writer = store.clone();
    tokio::task::spawn_blocking(move || {
        writer.put_retained(&changes)?;
        writer.flush()
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    Ok(())
}

/// Persists changes every second, in the background, while the store is open.
pub fn spawn(broker: BrokerHandle, store: &Arc<dyn Store>) {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(store) = weak.upgrade() else { return };
            if let Err(e) = persist(&broker, &store).await {
                tracing::warn!(error = %e, "cannot persist retained messages");
            }
        }
    });
}
