//! The cluster's metrics, under `imqtt_cluster_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of the NATS link.
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    /// 1 while connected to NATS.
    pub nats_connected: Gauge,
    /// Live nodes, this one included.
    pub nodes: Gauge,
    /// Publications received from other nodes (before duplicates are dropped).
    pub messages_in: Counter,
    /// Publications sent to other nodes.
    pub messages_out: Counter,
    /// Publications dropped because the relay queue was full.
    pub relay_dropped: Counter,
    /// Publications NATS did not take (disconnected, an error, a subject too long).
    pub publish_failures: Counter,
    /// Second copies of a publication dropped (two subscriptions matched it).
    pub duplicates: Counter,
}

impl ClusterMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        let r = registry.sub_registry_with_prefix("cluster");
        r.register(
            "nats_connected",
            "1 while this node is connected to NATS",
            m.nats_connected.clone(),
        );
        r.register(
            "nodes",
            "Live nodes of the cluster, this one included",
            m.nodes.clone(),
        );
        r.register(
            "nats_messages_in",
            "Publications received from other nodes over NATS",
            m.messages_in.clone(),
        );
        r.register(
            "nats_messages_out",
            "Publications sent to other nodes over NATS",
            m.messages_out.clone(),
        );
        r.register(
            "relay_dropped",
            "Publications dropped because the relay queue to NATS was full",
            m.relay_dropped.clone(),
        );
        r.register(
            "nats_publish_failures",
            "Publications NATS did not take (disconnected or an error)",
            m.publish_failures.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Second copies of a publication from another node, dropped",
            m.duplicates.clone(),
        );
        m
    }
}
