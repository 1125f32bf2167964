//! A local cluster for the tests: one PostgreSQL database, one `nats-server`,
//! and `n` imqtt nodes on ephemeral ports, each named `node-{i}`. Nodes can be
//! killed (SIGKILL) and NATS stopped and started again.

use std::time::Duration;

use crate::Server;
use crate::nats::Nats;
use crate::postgres::Postgres;

/// The heartbeat the test clusters run with: a dead node is counted out after
/// three of them (plus the check's period), quickly enough for a test.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// PostgreSQL, NATS and the nodes.
#[derive(Debug)]
pub struct Cluster {
    pub pg: Postgres,
    pub nats: Nats,
    /// The database every node shares.
    pub url: String,
    /// The nodes, `node-0` first; a killed node stays in its slot.
    pub nodes: Vec<Server>,
    /// Config every node gets besides the cluster's (TOML).
    pub extra: String,
}

impl Cluster {
    /// Starts PostgreSQL, NATS and `n` nodes; `None` (said why) where
    /// PostgreSQL or `nats-server` is missing, except under `CI=true`.
    pub async fn start(n: usize) -> Option<Cluster> {
        Cluster::start_with(n, "").await
    }

    /// [`Cluster::start`], every node's config followed by `extra` (TOML).
    pub async fn start_with(n: usize, extra: &str) -> Option<Cluster> {
        let pg = Postgres::start()?;
        let nats = Nats::start()?;
        let url = pg.database();
        let mut cluster = Cluster {
            pg,
            nats,
            url,
            nodes: Vec::new(),
            extra: extra.to_owned(),
        };
        for i in 0..n {
            let node = cluster.node(i).await;
            cluster.nodes.push(node);
        }
        let all: Vec<usize> = (0..n).collect();
        cluster.wait_for_nodes_alive(&all).await;
        Some(cluster)
    }

    /// Starts node `i` (not yet in `nodes`).
    pub async fn node(&self, i: usize) -> Server {
        let name = format!("node-{i}");
        let heartbeat = format!("{}ms", HEARTBEAT.as_millis());
        Server::start_env(
            &self.extra,
            &[
                ("IMQTT_STORE__ENGINE", "postgres"),
                ("IMQTT_STORE__URL", &self.url),
                ("IMQTT_STORE__POOL", "4"),
                ("IMQTT_CLUSTER__NATS", &self.nats.url()),
                ("IMQTT_CLUSTER__NODE", &name),
                ("IMQTT_CLUSTER__HEARTBEAT", &heartbeat),
                // The tests send in bursts; the per-user limit is not theirs.
                ("IMQTT_LIMITS__RATE_PER_USER", "0"),
            ],
        )
        .await
    }

    /// Waits until each of the nodes `live` lists exactly `live.len()` live nodes.
    pub async fn wait_for_nodes_alive(&self, live: &[usize]) {
        let n = live.len();
        let client = reqwest::Client::new();
        let admin = crate::token("root", broker::auth::Role::Admin, Duration::from_secs(600));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for node in live.iter().map(|&i| &self.nodes[i]) {
            loop {
                let listed = client
                    .get(format!("{}/v1/admin/cluster", node.http_url()))
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .ok();
                let count = match listed {
                    Some(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["nodes"].as_array().map(Vec::len))
                        .unwrap_or(0),
                    None => 0,
                };
                if count == n {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} lists {count} nodes, not {n}; log:\n{}",
                    node.http_url(),
                    node.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
