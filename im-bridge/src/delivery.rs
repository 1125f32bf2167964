//! Delivery after commit: a stored envelope goes to its recipient's inbox and to
//! the sender's own inbox (its other devices), at the message's QoS, through the
//! broker. An envelope larger than `delivery.inline_max_bytes` is announced as a
//! `sync` event instead, and the client pulls it over HTTP.
//!
//! Publishing never waits and may drop (a full session queue, DESIGN.md §9): the
//! store is the source of truth, and a client that missed something finds it with
//! `/v1/sync`. So a crash between commit and publish loses nothing either.

use broker::{BrokerHandle, QoS};
use bytes::Bytes;
use imqtt_client::wire::{self, ConvId, ConvKind, Envelope, Qos};

use crate::store::NewMessage;

/// The broker's QoS for a message's delivery class.
fn mqtt_qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Who gets a message of `conv` sent by `from`: the other participant and the
/// sender's own devices for a direct conversation, the user for a notice.
pub fn recipients<'a>(conv: &'a ConvId, from: &'a str) -> Vec<&'a str> {
    match conv.kind() {
        ConvKind::Dm { a, b } => vec![if a == from { b } else { a }, from],
        ConvKind::Sys { uid } => vec![uid],
        ConvKind::Group { .. } => Vec::new(),
    }
}

/// The commit loop's hook: delivers every newly stored message of a batch, in
/// commit order (a retry's original was delivered back then).
pub fn on_commit(broker: BrokerHandle, inline_max: usize) -> crate::commit::OnCommit {
    Box::new(move |appended| {
        for a in appended.iter().filter(|a| !a.duplicate) {
            deliver(&broker, &a.envelope, &a.json, inline_max);
        }
    })
}

/// Publishes a stored envelope (`json` is its encoding) to everyone it is for.
pub fn deliver(broker: &BrokerHandle, envelope: &Envelope, json: &Bytes, inline_max: usize) {
    let qos = mqtt_qos(envelope.qos);
    for uid in recipients(&envelope.conv, &envelope.from) {
        let published = if json.len() <= inline_max {
            wire::topic::inbox(uid).map(|topic| broker.publish(&topic, json.clone(), qos, false))
        } else {
            let hint = wire::Event::Sync {
                conv: envelope.conv.clone(),
                seq: envelope.seq,
            };
            wire::topic::events(uid).map(|topic| match serde_json::to_vec(&hint) {
                Ok(j) => broker.publish(&topic, Bytes::from(j), qos, false),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a sync hint");
                    Ok(())
                }
            })
        };
        match published {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, uid, "cannot publish"),
            Err(e) => tracing::error!(error = %e, uid, "no topic for this uid"),
        }
    }
}

/// Publishes a QoS 0 message `m`, which is never stored and has no seq: the
/// envelope without `seq`, to online recipients only.
pub fn deliver_live(broker: &BrokerHandle, m: &NewMessage, id: &str, ts: u64) {
    let mut live = serde_json::json!({
        "id": id, "conv": m.conv, "from": m.from, "to": m.to, "ts": ts, "qos": 0,
        "body": m.body,
    });
    if let (Some(cmid), Some(map)) = (&m.client_msg_id, live.as_object_mut()) {
        map.insert("client_msg_id".into(), cmid.as_str().into());
    }
    let json = match serde_json::to_vec(&live) {
        Ok(j) => Bytes::from(j),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a live message");
            return;
        }
    };
    for uid in recipients(&m.conv, &m.from) {
        if let Ok(topic) = wire::topic::inbox(uid)
            && let Err(e) = broker.publish(&topic, json.clone(), QoS::AtMostOnce, false)
        {
            tracing::error!(error = %e, uid, "cannot publish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_message_goes_to_the_peer_and_the_senders_devices() {
        let conv = ConvId::dm("bob", "alice").expect("conv");
        assert_eq!(recipients(&conv, "alice"), vec!["bob", "alice"]);
        assert_eq!(recipients(&conv, "bob"), vec!["alice", "bob"]);
        let sys = ConvId::sys("carol").expect("conv");
        assert_eq!(recipients(&sys, "backend"), vec!["carol"]);
    }
}
