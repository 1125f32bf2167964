//! Durability through a crash: the server is killed with SIGKILL while eight
//! senders are sending, restarted on the same data directory, and every message
//! that got a 2xx must be there, at the seq it was given, with its conversation's
//! seqs contiguous and nothing stored twice.
//!
//! `IMQTT_CRASH_ROUNDS` repeats the kill and restart (scripts/soak.sh runs 50).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker::auth::Role;
use imqtt_tests::{Launch, Server, token};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const SENDERS: usize = 8;

/// What the server acknowledged: client_msg_id -> (id, seq), per sender.
type Acked = Arc<Mutex<HashMap<String, (String, u64)>>>;

/// Sends as `from` to `sink` until a request fails; records every 2xx.
async fn sender(url: String, from: String, round: usize, acked: Acked, total: Arc<AtomicUsize>) {
    let client = reqwest::Client::new();
    let bearer = token(&from, Role::User, Duration::from_secs(600));
    for n in 0.. {
        let cmid = format!("{from}-r{round}-{n}");
        let sent = client
            .post(format!("{url}/v1/messages"))
            .bearer_auth(&bearer)
            .json(&json!({"to": "sink", "body": {"n": n}, "client_msg_id": cmid}))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let Ok(resp) = sent else { return };
        if !resp.status().is_success() {
            return;
        }
        let Ok(v) = resp.json::<Value>().await else {
            return;
        };
        let (Some(id), Some(seq)) = (v["id"].as_str(), v["seq"].as_u64()) else {
            return;
        };
        acked.lock().await.insert(cmid, (id.to_owned(), seq));
        total.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every message of `conv`, in pages.
async fn read_all(server: &Server, conv: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let bearer = token("sink", Role::User, Duration::from_secs(600));
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().and_then(|m| m["seq"].as_u64()).unwrap_or(0);
        let page: Value = client
            .get(format!(
                "{}/v1/conversations/{conv}/messages?after={after}&limit=1000",
                server.http_url()
            ))
            .bearer_auth(&bearer)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        out.extend(messages);
        if page["has_more"] != json!(true) {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_send_survives_a_sigkill() {
    let rounds: usize = std::env::var("IMQTT_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut server = Server::start().await;
    let acked: Vec<Acked> = (0..SENDERS).map(|_| Acked::default()).collect();
    for round in 0..rounds {
        let total = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..SENDERS)
            .map(|i| {
                tokio::spawn(sender(
                    server.http_url(),
                    format!("s{i}"),
                    round,
                    acked[i].clone(),
                    total.clone(),
                ))
            })
            .collect();
        // Kill mid-stream: once a few hundred sends were acknowledged.
        let want = 200 + 37 * (round % 7);
        tokio::time::timeout(Duration::from_secs(60), async {
            while total.load(Ordering::Relaxed) < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("sends are acknowledged");
        server.kill().await;
        for t in tasks {
            t.await.expect("sender");
        }
        let (_, dir) = server.stopped().await;
        server = Launch::spawn_in(dir, "", &[]).into_server().await;

        for (i, acked) in acked.iter().enumerate() {
            let conv = format!("dm:s{i}:sink");
            let stored = read_all(&server, &conv).await;
            // Contiguous from 1, each client_msg_id once.
            let mut seen = HashMap::new();
            for (k, m) in stored.iter().enumerate() {
                assert_eq!(
                    m["seq"].as_u64(),
                    Some(k as u64 + 1),
                    "round {round}: {conv} has a gap"
                );
                let cmid = m["client_msg_id"].as_str().unwrap_or_default().to_owned();
                assert!(
                    seen.insert(cmid.clone(), (m["id"].clone(), m["seq"].clone()))
                        .is_none(),
                    "round {round}: {cmid} stored twice"
                );
            }
            // Every acknowledged send is there, as acknowledged.
            for (cmid, (id, seq)) in acked.lock().await.iter() {
                let found = seen.get(cmid);
                assert_eq!(
                    found,
                    Some(&(json!(id), json!(seq))),
                    "round {round}: acknowledged {cmid} (seq {seq}) lost after the crash"
                );
            }
        }
    }
}
