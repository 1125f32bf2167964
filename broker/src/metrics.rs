//! The broker's counters and gauges, registered into the server's Prometheus
//! registry. Hot paths hold pre-resolved counters, never a label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QosLabel {
    qos: &'static str,
}

/// MQTT control packet types, in the order of [`PACKET_TYPES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PacketKind {
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    PingReq,
    PingResp,
    Disconnect,
    Auth,
}

/// Why a CONNECT was refused, in the order of [`REFUSALS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectRefusal {
    NotAuthorized,
    ServerUnavailable,
    BadClientId,
    Protocol,
    Timeout,
    WillNotAuthorized,
}

/// MQTT control packet types, as metric labels.
const PACKET_TYPES: [&str; 15] = [
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// Why a CONNECT was refused, as metric labels.
const REFUSALS: [&str; 6] = [
    "not_authorized",
    "server_unavailable",
    "bad_client_id",
    "protocol",
    "timeout",
    "will_not_authorized",
];

/// Everything the broker counts.
#[derive(Debug)]
pub struct BrokerMetrics {
    pub(crate) connections: Gauge,
    pub(crate) sessions: Gauge,
    pub(crate) subscriptions: Gauge,
    pub(crate) retained: Gauge,
    packets_in: Vec<Counter>,
    packets_out: Vec<Counter>,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    refused_connects: Vec<Counter>,
    pub(crate) refused_subscriptions: Counter,
    pub(crate) refused_publishes: Counter,
    pub(crate) dropped_qos0: Counter,
    pub(crate) dropped_qos12: Counter,
    pub(crate) dropped_expired: Counter,
    pub(crate) dropped_too_large: Counter,
    pub(crate) uplinked: Counter,
    pub(crate) uplink_refused: Counter,
}

impl BrokerMetrics {
    /// Creates the metrics and registers them under `imqtt_mqtt_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("mqtt");
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let connections = gauge(r, "connections", "Open MQTT connections");
        let sessions = gauge(r, "sessions", "Sessions, connected or persisted");
        let subscriptions = gauge(r, "subscriptions", "Subscriptions in the index");
        let retained = gauge(r, "retained_messages", "Retained messages");
        let by_type = |r: &mut Registry, name: &str, help: &str| {
            let family = Family::<TypeLabel, Counter>::default();
            r.register(name, help, family.clone());
            PACKET_TYPES
                .iter()
                .map(|t| family.get_or_create(&TypeLabel { r#type: t }).clone())
                .collect::<Vec<_>>()
        };
        let packets_in = by_type(r, "packets_received", "MQTT packets received, by type");
        let packets_out = by_type(r, "packets_sent", "MQTT packets sent, by type");
        let bytes_in = counter(r, "bytes_received", "Bytes received on MQTT connections");
        let bytes_out = counter(r, "bytes_sent", "Bytes sent on MQTT connections");
        let refused = Family::<ReasonLabel, Counter>::default();
        r.register(
            "connects_refused",
            "CONNECTs refused, by reason",
            refused.clone(),
        );
        let refused_connects = REFUSALS
            .iter()
            .map(|reason| refused.get_or_create(&ReasonLabel { reason }).clone())
            .collect();
        let refused_subscriptions = counter(
            r,
            "subscriptions_refused",
            "SUBSCRIBE filters refused by the ACL or as invalid",
        );
        let refused_publishes = counter(r, "publishes_refused", "PUBLISHes refused by the ACL");
        let drops = Family::<QosLabel, Counter>::default();
        r.register(
            "queue_drops",
            "Messages dropped from full session queues, expired, or too large for the client",
            drops.clone(),
        );
        let drop = |qos| drops.get_or_create(&QosLabel { qos }).clone();
        let uplinked = counter(
            r,
            "uplink_messages",
            "Publishes on users' outboxes handed to the IM side",
        );
        let uplink_refused = counter(r, "uplink_refused", "Outbox publishes the IM side refused");
        BrokerMetrics {
            connections,
            sessions,
            subscriptions,
            retained,
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            refused_connects,
            refused_subscriptions,
            refused_publishes,
            dropped_qos0: drop("0"),
            dropped_qos12: drop("1_2"),
            dropped_expired: drop("expired"),
            dropped_too_large: drop("too_large"),
            uplinked,
            uplink_refused,
        }
    }

    /// Metrics registered nowhere, for tests and embedders without `/metrics`.
    pub fn unregistered() -> Self {
        BrokerMetrics::register(&mut Registry::default())
    }

    /// Counts a refused CONNECT.
    pub(crate) fn refused(&self, why: ConnectRefusal) {
        self.refused_connects[why as usize].inc();
    }

    /// Counts a packet received.
    pub(crate) fn received(&self, kind: PacketKind) {
        self.packets_in[kind as usize].inc();
    }

    /// Counts `n` PUBLISH packets sent.
    pub(crate) fn sent_publishes(&self, n: u64) {
        self.packets_out[PacketKind::Publish as usize].inc_by(n);
    }

    /// Counts a packet sent.
    pub(crate) fn sent(&self, kind: PacketKind) {
        self.packets_out[kind as usize].inc();
    }

    /// The figures an operator's page shows, read now.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            connections: self.connections.get().max(0).unsigned_abs(),
            sessions: self.sessions.get().max(0).unsigned_abs(),
            subscriptions: self.subscriptions.get().max(0).unsigned_abs(),
            retained: self.retained.get().max(0).unsigned_abs(),
            publishes_received: self.packets_in[PacketKind::Publish as usize].get(),
            publishes_sent: self.packets_out[PacketKind::Publish as usize].get(),
            queue_drops: self.dropped_qos0.get()
                + self.dropped_qos12.get()
                + self.dropped_expired.get()
                + self.dropped_too_large.get(),
            bytes_received: self.bytes_in.get(),
            bytes_sent: self.bytes_out.get(),
        }
    }
}

/// A snapshot of the broker's gauges and counters (counters count from the start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Open MQTT connections.
    pub connections: u64,
    /// Sessions, connected or persisted.
    pub sessions: u64,
    /// Subscriptions in the index.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
    /// PUBLISH packets received from clients.
    pub publishes_received: u64,
    /// PUBLISH packets sent to clients: the deliveries.
    pub publishes_sent: u64,
    /// Messages dropped from full queues, expired, or too large for their client.
    pub queue_drops: u64,
    /// Bytes read off MQTT connections.
    pub bytes_received: u64,
    /// Bytes written to MQTT connections.
    pub bytes_sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_kinds_and_refusals_index_their_labels() {
        assert_eq!(PACKET_TYPES[PacketKind::Connect as usize], "connect");
        assert_eq!(PACKET_TYPES[PacketKind::PubRel as usize], "pubrel");
        assert_eq!(PACKET_TYPES[PacketKind::UnsubAck as usize], "unsuback");
        assert_eq!(PACKET_TYPES[PacketKind::Auth as usize], "auth");
        assert_eq!(
            REFUSALS[ConnectRefusal::NotAuthorized as usize],
            "not_authorized"
        );
        assert_eq!(REFUSALS[ConnectRefusal::Timeout as usize], "timeout");
        assert_eq!(
            REFUSALS[ConnectRefusal::WillNotAuthorized as usize],
            "will_not_authorized"
        );
    }
}
