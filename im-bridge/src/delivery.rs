//! Delivery after commit: a stored envelope goes to its recipient's inbox and to
//! the sender's own inbox (its other devices), at the message's QoS, through the
//! broker; a group message is published once on `groups/{gid}`, and the hub fans
//! it out to the members' sessions (read fan-out: no copy per member). An envelope
//! larger than `delivery.inline_max_bytes` is announced as a `sync` event on each
//! recipient's `users/{uid}/events` instead, and the client pulls it over HTTP.
//!
//! Publishing never waits and may drop (a full session queue, DESIGN.md §9): the
//! store is the source of truth, and a client that missed something finds it with
//! `/v1/sync`. So a crash between commit and publish loses nothing either.

use std::sync::Arc;

use broker::{BrokerHandle, QoS};
use bytes::Bytes;
use imqtt_wire::{self as wire, ConvId, ConvKind, Envelope, Event, LiveMessage, Qos};
use prometheus_client::metrics::counter::Counter;

use crate::store::{NewMessage, Store};

/// The broker's QoS for a message's delivery class.
fn mqtt_qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Who gets a message of `conv` sent by `from` in its inbox: the other participant
/// and the sender's own devices for a direct conversation, the user for a notice
/// (a group's message goes on the group's topic).
pub fn recipients<'a>(conv: &'a ConvId, from: &'a str) -> Vec<&'a str> {
    match conv.kind() {
        ConvKind::Dm { a, b } => vec![if a == from { b } else { a }, from],
        ConvKind::Sys { uid } => vec![uid],
        ConvKind::Group { .. } => Vec::new(),
    }
}

/// The commit loop's hook: delivers every newly stored message of a batch, in
/// commit order (a retry's original was delivered back then), and counts them in
/// `stored`.
pub fn on_commit(
    broker: BrokerHandle,
    store: Arc<dyn Store>,
    inline_max: usize,
    stored: Counter,
) -> crate::commit::OnCommit {
    Box::new(move |appended| {
        let mut n = 0;
        for a in appended.iter().filter(|a| !a.duplicate) {
            deliver(&broker, &*store, &a.envelope, &a.json, inline_max);
            n += 1;
        }
        stored.inc_by(n);
    })
}

/// Publishes a stored envelope (`json` is its encoding) to everyone it is for.
pub fn deliver(
    broker: &BrokerHandle,
    store: &dyn Store,
    envelope: &Envelope,
    json: &Bytes,
    inline_max: usize,
) {
    let qos = mqtt_qos(envelope.qos);
    let inline = json.len() <= inline_max;
    if let ConvKind::Group { gid } = envelope.conv.kind() {
        if inline {
            publish(broker, wire::topic::group(gid), json.clone(), qos);
            return;
        }
        // Rare (large messages only): one hint per current member.
        match store.members(gid) {
            Ok(members) => {
                for (uid, _) in members.iter().filter(|(_, m)| m.is_current()) {
                    hint(broker, uid, envelope, qos);
                }
            }
            Err(e) => tracing::error!(error = %e, gid, "cannot list members for sync hints"),
        }
        return;
    }
    for uid in recipients(&envelope.conv, &envelope.from) {
        if inline {
            publish(broker, wire::topic::inbox(uid), json.clone(), qos);
        } else {
            hint(broker, uid, envelope, qos);
        }
    }
}

/// The `sync` hint for a stored envelope too large to push, on `uid`'s events.
fn hint(broker: &BrokerHandle, uid: &str, envelope: &Envelope, qos: QoS) {
    let hint = Event::Sync {
        conv: envelope.conv.clone(),
        seq: envelope.seq,
    };
    match serde_json::to_vec(&hint) {
        Ok(j) => publish(broker, wire::topic::events(uid), Bytes::from(j), qos),
        Err(e) => tracing::error!(error = %e, "cannot encode a sync hint"),
    }
}

fn publish(
    broker: &BrokerHandle,
    topic: Result<String, wire::InvalidId>,
    payload: Bytes,
    qos: QoS,
) {
    match topic {
        Ok(topic) => {
            if let Err(e) = broker.publish(&topic, payload, qos, false) {
                tracing::error!(error = %e, topic, "cannot publish");
            }
        }
        Err(e) => tracing::error!(error = %e, "no topic for this id"),
    }
}

/// Publishes `event` on `users/{uid}/events` at QoS 1.
pub fn tell(broker: &BrokerHandle, uid: &str, event: &Event) {
    match serde_json::to_vec(event) {
        Ok(json) => tell_json(broker, uid, Bytes::from(json)),
        Err(e) => tracing::error!(error = %e, "cannot encode an event"),
    }
}

/// Publishes an encoded event on `users/{uid}/events` at QoS 1.
pub fn tell_json(broker: &BrokerHandle, uid: &str, json: Bytes) {
    publish(broker, wire::topic::events(uid), json, QoS::AtLeastOnce);
}

/// Publishes a QoS 0 message `m`, which is never stored and has no seq: the
/// envelope without `seq`, to online recipients only.
pub fn deliver_live(broker: &BrokerHandle, m: &NewMessage, id: &str, ts: u64) {
    let live = LiveMessage {
        id: id.to_owned(),
        conv: m.conv.clone(),
        from: m.from.clone(),
        to: m.to.clone(),
        ts,
        client_msg_id: m.client_msg_id.clone(),
        qos: Qos::AtMostOnce,
        body: m.body.clone(),
    };
    let json = match serde_json::to_vec(&live) {
        Ok(j) => Bytes::from(j),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a live message");
            return;
        }
    };
    if let ConvKind::Group { gid } = m.conv.kind() {
        publish(broker, wire::topic::group(gid), json, QoS::AtMostOnce);
        return;
    }
    for uid in recipients(&m.conv, &m.from) {
        publish(
            broker,
            wire::topic::inbox(uid),
            json.clone(),
            QoS::AtMostOnce,
        );
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
