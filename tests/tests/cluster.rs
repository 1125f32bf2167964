//! imqtt as a cluster, with the real parts: each test starts PostgreSQL,
//! `nats-server` and three imqtt nodes on ephemeral ports, and talks to them
//! with real MQTT and HTTP clients. Without PostgreSQL or nats-server they say
//! so and pass, except under `CI=true`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::auth::Role;
use imqtt_tests::client::{Api, Device, WAIT, metric, user};
use imqtt_tests::cluster::{Cluster, HEARTBEAT};
use imqtt_tests::{Launch, Server, token};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::{Instant, sleep, timeout};

fn admin() -> String {
    token("root", Role::Admin, Duration::from_secs(600))
}

/// Waits until `check` holds, polling; panics with `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_direct_message_and_a_group_message_cross_nodes_once_each() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let mut alice = Device::connect(n0, "alice", "phone", &["users/alice/inbox"]).await;
    let mut bob = Device::connect(n1, "bob", "phone", &["users/bob/inbox"]).await;
    let mut carol = Device::connect(n2, "carol", "phone", &["users/carol/inbox"]).await;
    let third_in = metric(n2, "imqtt_cluster_nats_messages_in_total").await;

    // alice (node 0) to bob (node 1), sent through node 0.
    let api0 = Api::new(n0);
    let sent = api0.send("alice", "bob", json!({"text": "hi"})).await;
    let m = bob.message_on("users/bob/inbox").await;
    assert_eq!(m.json["id"], sent["id"]);
    assert_eq!(m.json["body"]["text"], "hi");
    // The sender's own device gets its copy too, on its own node.
    assert_eq!(
        alice.message_on("users/alice/inbox").await.json["id"],
        sent["id"]
    );
    bob.nothing_arrives().await;
    alice.nothing_arrives().await;
    // Node 2 holds neither user: NATS sent it nothing of that DM.
    assert_eq!(
        metric(n2, "imqtt_cluster_nats_messages_in_total").await,
        third_in,
        "a DM reached a node without its users"
    );

    // A group with a member on every node, each subscribed to the group topic.
    let created = api0
        .post("alice", "/v1/groups", &json!({"id": "g1", "name": "g1"}))
        .await;
    created.expect(201);
    api0.post(
        "alice",
        "/v1/groups/g1/members",
        &json!({"users": ["bob", "carol"]}),
    )
    .await
    .expect(200);
    for (d, n) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        assert!(
            matches!(
                d.subscribe("groups/g1").await,
                rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(_)
            ),
            "{n} may subscribe to its group"
        );
    }
    // Drain the membership events.
    sleep(Duration::from_millis(300)).await;
    for d in [&mut alice, &mut bob, &mut carol] {
        while timeout(Duration::from_millis(50), d.message())
            .await
            .is_ok()
        {}
    }
    let api2 = Api::new(n2);
    let g = api2
        .post(
            "carol",
            "/v1/messages",
            &json!({"group": "g1", "body": {"text": "all"}}),
        )
        .await
        .expect(201);
    for (d, n) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        let m = d.message_on("groups/g1").await;
        assert_eq!(m.json["id"], g["id"], "{n}");
        d.nothing_arrives().await;
    }
}

#[tokio::test]
async fn an_outbox_send_on_one_node_reaches_a_device_on_another() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let mut bob = Device::connect(&c.nodes[2], "bob", "phone", &["users/bob/inbox"]).await;
    let mut alice = Device::connect(&c.nodes[0], "alice", "phone", &["users/alice/events"]).await;
    alice
        .publish(
            "users/alice/outbox",
            &json!({"to": "bob", "body": {"text": "via mqtt"}, "client_msg_id": "o-1"}),
        )
        .await;
    let m = bob.message_on("users/bob/inbox").await;
    assert_eq!(m.json["body"]["text"], "via mqtt");
    assert_eq!(m.json["from"], "alice");
    bob.nothing_arrives().await;
}

#[tokio::test]
async fn sends_through_every_node_into_one_conversation_get_contiguous_seqs() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let per_node = 60;
    let mut tasks = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let url = node.http_url();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let bearer = user("alice");
            let mut seqs = Vec::new();
            for k in 0..per_node {
                let r: Value = client
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(&bearer)
                    .json(&json!({"to": "bob", "body": {"n": k, "node": i}}))
                    .send()
                    .await
                    .expect("send")
                    .json()
                    .await
                    .expect("json");
                seqs.push(r["seq"].as_u64().expect("seq"));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(3 * per_node) as u64).collect();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn a_connection_on_another_node_takes_the_session_over() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let mut first = Device::connect(&c.nodes[0], "alice", "phone", &["users/alice/inbox"]).await;
    let started = Instant::now();
    let mut second = Device::connect(&c.nodes[1], "alice", "phone", &["users/alice/inbox"]).await;
    assert!(
        first.until_closed().await,
        "the first connection stays open"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "taken over after {took:?}");
    // The new one serves: a message to alice reaches it.
    let sent = Api::new(&c.nodes[2])
        .send("bob", "alice", json!({"k": 1}))
        .await;
    assert_eq!(
        second.message_on("users/alice/inbox").await.json["id"],
        sent["id"]
    );
}

#[tokio::test]
async fn an_admin_disconnects_a_user_on_every_node() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    // Subscribed, so connected before the request.
    let mut phone = Device::connect(&c.nodes[0], "alice", "phone", &["users/alice/inbox"]).await;
    let mut laptop = Device::connect(&c.nodes[1], "alice", "laptop", &["users/alice/inbox"]).await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/admin/users/alice/disconnect",
            c.nodes[2].http_url()
        ))
        .bearer_auth(admin())
        .send()
        .await
        .expect("disconnect");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["disconnected"], 2, "{body}");
    assert!(phone.until_closed().await);
    assert!(laptop.until_closed().await);

    let r: Value = reqwest::Client::new()
        .get(format!("{}/v1/admin/cluster", c.nodes[1].http_url()))
        .bearer_auth(admin())
        .send()
        .await
        .expect("cluster")
        .json()
        .await
        .expect("json");
    let names: BTreeSet<&str> = r["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["node"].as_str().expect("name"))
        .collect();
    assert_eq!(names, BTreeSet::from(["node-0", "node-1", "node-2"]));
    for n in r["nodes"].as_array().expect("nodes") {
        for key in ["connections", "sessions", "uptime_s", "last_seen_ms"] {
            assert!(n[key].is_u64(), "{key} in {n}");
        }
    }
    let user_view = reqwest::Client::new()
        .get(format!("{}/v1/admin/cluster", c.nodes[1].http_url()))
        .bearer_auth(user("alice"))
        .send()
        .await
        .expect("cluster");
    assert_eq!(user_view.status(), 403);
}

/// The devices in a presence payload.
fn devices(p: &Value) -> Vec<String> {
    p["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn presence_is_every_node_s_devices_and_a_killed_node_s_go_offline() {
    let Some(mut c) = Cluster::start(3).await else {
        return;
    };
    // bob may see alice's presence: she has him as a contact.
    Api::new(&c.nodes[0])
        .put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    let mut watcher = Device::connect(&c.nodes[0], "bob", "phone", &["presence/alice"]).await;
    let _phone = Device::connect(&c.nodes[1], "alice", "phone", &["users/alice/inbox"]).await;
    loop {
        let p = watcher.message_on("presence/alice").await.json;
        if devices(&p) == ["phone"] {
            assert_eq!(p["status"], "online");
            break;
        }
    }
    let _laptop = Device::connect(&c.nodes[2], "alice", "laptop", &["users/alice/inbox"]).await;
    loop {
        let p = watcher.message_on("presence/alice").await.json;
        if devices(&p) == ["laptop", "phone"] {
            break;
        }
    }
    // The same retained presence on every node, for a watcher subscribing now.
    let mut payloads = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let mut late =
            Device::connect(node, "bob", &format!("late-{i}"), &["presence/alice"]).await;
        let p = late.message_on("presence/alice").await.json;
        payloads.push(p);
    }
    for p in &payloads {
        assert_eq!(devices(p), ["laptop", "phone"], "{p}");
        assert_eq!(p["status"], "online");
    }
    assert!(
        payloads.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree: {payloads:?}"
    );
    // The HTTP view agrees.
    let list = Api::new(&c.nodes[1])
        .get("bob", "/v1/presence?users=alice")
        .await
        .expect(200);
    assert_eq!(devices(&list["presence"][0]), ["laptop", "phone"], "{list}");

    // Node 2 dies: its laptop is counted out within three heartbeats and a bit.
    let killed = Instant::now();
    c.nodes[2].kill().await;
    loop {
        let p = watcher.message_on("presence/alice").await.json;
        if devices(&p) == ["phone"] {
            break;
        }
    }
    let took = killed.elapsed();
    assert!(
        took < HEARTBEAT * 3 + Duration::from_secs(3),
        "counted out after {took:?}"
    );
}

#[tokio::test]
async fn a_removed_member_gets_nothing_more_on_any_node() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let api0 = Api::new(&c.nodes[0]);
    api0.post("alice", "/v1/groups", &json!({"id": "g2", "name": "g2"}))
        .await
        .expect(201);
    api0.post(
        "alice",
        "/v1/groups/g2/members",
        &json!({"users": ["bob", "carol"]}),
    )
    .await
    .expect(200);
    let mut bob = Device::connect(&c.nodes[1], "bob", "phone", &["groups/g2"]).await;
    let mut carol = Device::connect(&c.nodes[2], "carol", "phone", &["groups/g2"]).await;
    api0.delete("alice", "/v1/groups/g2/members/bob")
        .await
        .expect(204);
    // Right after the 204, through another node.
    let m = Api::new(&c.nodes[2])
        .post(
            "alice",
            "/v1/messages",
            &json!({"group": "g2", "body": {"after": true}}),
        )
        .await
        .expect(201);
    assert_eq!(carol.message_on("groups/g2").await.json["id"], m["id"]);
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(d) = tokio::time::timeout_at(until, bob.message()).await {
        assert_ne!(d.topic, "groups/g2", "a removed member got {}", d.json);
    }
}

#[tokio::test]
async fn a_node_killed_during_sends_loses_nothing_it_acknowledged() {
    let Some(mut c) = Cluster::start(3).await else {
        return;
    };
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for (i, node) in c.nodes.iter().enumerate().take(2) {
        let (url, acked, stop) = (node.http_url(), acked.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let bearer = user(&format!("s{i}"));
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let cmid = format!("s{i}-{k}");
                k += 1;
                let r = client
                    .post(format!("{url}/v1/messages"))
                    .bearer_auth(&bearer)
                    .json(&json!({"to": "sink", "body": {}, "client_msg_id": cmid}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.expect("json");
                        acked
                            .lock()
                            .await
                            .insert(cmid, v["seq"].as_u64().expect("seq"));
                    }
                    // The killed node refuses from now on.
                    _ => sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    eventually("some sends acknowledged", || async {
        acked.lock().await.len() > 50
    })
    .await;
    c.nodes[1].kill().await;
    sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.expect("sender");
    }
    // Every acknowledged send is in the store, read through a surviving node.
    let api = Api::new(&c.nodes[2]);
    let acked = acked.lock().await;
    for i in 0..2 {
        let conv = format!("dm:s{i}:sink");
        let mut stored = BTreeSet::new();
        let mut after = 0;
        loop {
            let (page, more) = api
                .page("sink", &conv, &format!("after={after}&limit=500"))
                .await;
            for m in &page {
                stored.insert(m["client_msg_id"].as_str().unwrap_or_default().to_owned());
                after = m["seq"].as_u64().expect("seq");
            }
            if !more {
                break;
            }
        }
        for cmid in acked.keys().filter(|k| k.starts_with(&format!("s{i}-"))) {
            assert!(stored.contains(cmid), "{cmid} was acknowledged and is lost");
        }
    }
}

#[tokio::test]
async fn without_nats_each_node_serves_its_own_and_resyncs_when_it_returns() {
    let Some(mut c) = Cluster::start(3).await else {
        return;
    };
    let mut alice = Device::connect(
        &c.nodes[0],
        "alice",
        "phone",
        &["users/alice/inbox", "users/alice/events"],
    )
    .await;
    let mut bob = Device::connect(&c.nodes[0], "bob", "phone", &["users/bob/inbox"]).await;
    c.nats.stop();
    eventually("node 0 sees NATS down", || async {
        metric(&c.nodes[0], "imqtt_cluster_nats_connected").await == 0.0
    })
    .await;
    // Sends are accepted everywhere, and delivered on their own node.
    let sent = Api::new(&c.nodes[0])
        .send("bob", "alice", json!({"local": 1}))
        .await;
    assert_eq!(
        alice.message_on("users/alice/inbox").await.json["id"],
        sent["id"]
    );
    Api::new(&c.nodes[1])
        .send("carol", "alice", json!({"far": 1}))
        .await;
    c.nats.restart();
    loop {
        let m = alice.message().await;
        if m.topic == "users/alice/events" && m.json["type"] == "resync" {
            break;
        }
    }
    // And the link serves again: a send through another node reaches bob.
    c.wait_for_nodes_alive(&[0, 1, 2]).await;
    let sent = Api::new(&c.nodes[2])
        .send("alice", "bob", json!({"again": 1}))
        .await;
    loop {
        // bob's own earlier send is in his inbox too.
        if bob.message_on("users/bob/inbox").await.json["id"] == sent["id"] {
            break;
        }
    }
}

#[tokio::test]
async fn a_cluster_on_the_embedded_store_refuses_to_start() {
    let mut launch = Launch::spawn("", &[("IMQTT_CLUSTER__NATS", "nats://127.0.0.1:4222")]);
    let status = launch.wait().await;
    assert_eq!(status.code(), Some(2), "{}", launch.log());
    let log = launch.log();
    assert!(
        log.contains("cluster.nats") && log.contains("store.engine"),
        "{log}"
    );
}

/// An MQTT connection with an admin token (admins may publish and subscribe
/// anywhere but on outboxes).
fn admin_client(server: &Server, id: &str) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let addr = server.addr("mqtt.tcp");
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials("root", admin());
    rumqttc::AsyncClient::new(o, 10)
}

/// Polls until `pick` returns something.
async fn until<T>(
    events: &mut rumqttc::EventLoop,
    mut pick: impl FnMut(&rumqttc::Incoming) -> Option<T>,
) -> T {
    timeout(WAIT, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(i)) = events.poll().await
                && let Some(t) = pick(&i)
            {
                return t;
            }
        }
    })
    .await
    .expect("in time")
}

#[tokio::test]
async fn a_retained_message_published_on_one_node_is_retained_on_every_node() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let (publisher, mut publisher_loop) = admin_client(&c.nodes[0], "pub");
    publisher
        .publish("public/news", rumqttc::QoS::AtLeastOnce, true, "v1")
        .await
        .expect("publish");
    until(&mut publisher_loop, |i| {
        matches!(i, rumqttc::Incoming::PubAck(_)).then_some(())
    })
    .await;
    // Every node keeps it (it crosses NATS right after the PUBACK)...
    for node in &c.nodes {
        eventually("every node keeps the retained message", || async {
            metric(node, "imqtt_mqtt_retained_messages").await == 1.0
        })
        .await;
    }
    // ...so a subscriber that comes later, on any node, gets it retained.
    for (i, node) in c.nodes.iter().enumerate().skip(1) {
        let (sub, mut sub_loop) = admin_client(node, &format!("late-{i}"));
        sub.subscribe("public/news", rumqttc::QoS::AtLeastOnce)
            .await
            .expect("sub");
        let (retain, payload) = until(&mut sub_loop, |i| match i {
            rumqttc::Incoming::Publish(p) => Some((p.retain, p.payload.clone())),
            _ => None,
        })
        .await;
        assert!(retain, "node {i}: not flagged retained");
        assert_eq!(&payload[..], b"v1", "node {i}");
    }
    // Clearing it clears it everywhere.
    publisher
        .publish("public/news", rumqttc::QoS::AtLeastOnce, true, "")
        .await
        .expect("clear");
    until(&mut publisher_loop, |i| {
        matches!(i, rumqttc::Incoming::PubAck(_)).then_some(())
    })
    .await;
    eventually("node 2 forgets the retained message", || async {
        metric(&c.nodes[2], "imqtt_mqtt_retained_messages").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_dropped_contact_stops_watching_on_every_node_before_the_204() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    let api0 = Api::new(&c.nodes[0]);
    api0.put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    // bob watches alice from node 1.
    let mut bob = Device::connect(&c.nodes[1], "bob", "phone", &["presence/alice"]).await;
    let _first = Device::connect(&c.nodes[2], "alice", "phone", &["users/alice/inbox"]).await;
    loop {
        if devices(&bob.message_on("presence/alice").await.json) == ["phone"] {
            break;
        }
    }
    // alice drops bob on node 0; from the 204 on, nothing of hers reaches him.
    api0.delete("alice", "/v1/contacts/bob").await.expect(204);
    let _second = Device::connect(&c.nodes[2], "alice", "laptop", &["users/alice/inbox"]).await;
    let until = Instant::now() + Duration::from_millis(800);
    while let Ok(d) = tokio::time::timeout_at(until, bob.message()).await {
        assert_ne!(
            d.topic, "presence/alice",
            "a dropped contact got {}",
            d.json
        );
    }
}

#[tokio::test]
async fn a_node_starts_while_nats_is_down_and_joins_when_it_comes() {
    let Some(mut c) = Cluster::start(1).await else {
        return;
    };
    c.nats.stop();
    // A second node started now cannot reach NATS; it starts and serves anyway.
    let lonely = c.node(1).await;
    let mut bob = Device::connect(&lonely, "bob", "phone", &["users/bob/inbox"]).await;
    let sent = Api::new(&lonely)
        .send("alice", "bob", json!({"k": 1}))
        .await;
    assert_eq!(
        bob.message_on("users/bob/inbox").await.json["id"],
        sent["id"]
    );
    assert_eq!(metric(&lonely, "imqtt_cluster_nats_connected").await, 0.0);
    c.nats.restart();
    c.nodes.push(lonely);
    c.wait_for_nodes_alive(&[0, 1]).await;
    // Now node 0's sends reach bob on node 1.
    let sent = Api::new(&c.nodes[0])
        .send("carol", "bob", json!({"k": 2}))
        .await;
    loop {
        if bob.message_on("users/bob/inbox").await.json["id"] == sent["id"] {
            break;
        }
    }
}
