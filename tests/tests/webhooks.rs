//! Webhooks through the real binary and a real HTTP receiver: `message.stored`
//! and `message.offline` arrive signed, a receiver that fails is retried until it
//! takes them, and events queued while the receiver is down survive a kill -9
//! of imqtt and arrive after the restart.

use std::collections::HashSet;
use std::time::Duration;

use hmac::{Hmac, Mac};
use imqtt_tests::client::{Api, Device, metric, series};
use imqtt_tests::receiver::Receiver;
use imqtt_tests::{Launch, Server};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "a webhook secret for the tests";
const WAIT: Duration = Duration::from_secs(20);

fn hook(receiver: &Receiver, events: &str) -> String {
    format!(
        "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [{events}]\n",
        receiver.url
    )
}

/// Whether `post` is signed with [`SECRET`] as the docs say.
fn signed(post: &imqtt_tests::receiver::Post) -> bool {
    let (Some(ts), Some(sig)) = (
        post.headers.get("x-imqtt-timestamp"),
        post.headers.get("x-imqtt-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&post.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    *sig == format!("sha256={hex}")
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test]
async fn stored_and_offline_events_arrive_signed_and_a_failing_receiver_gets_them_later() {
    let receiver = Receiver::start().await;
    receiver.fail_next(2);
    let server =
        Server::start_with(&hook(&receiver, r#""message.stored", "message.offline""#)).await;
    let api = Api::new(&server);
    // bob is online, cat is not.
    let _bob = Device::connect(&server, "bob", "bob-phone", &["users/bob/inbox"]).await;
    let to_bob = api.send("ann", "bob", json!({"text": "hi bob"})).await;
    let to_cat = api.send("ann", "cat", json!({"text": "hi cat"})).await;

    let events = receiver.wait_events(3, WAIT).await;
    let stored = of_type(&events, "message.stored");
    let offline = of_type(&events, "message.offline");
    assert_eq!(stored.len(), 2, "{events:#?}");
    assert_eq!(offline.len(), 1, "only cat was offline: {events:#?}");
    assert_eq!(offline[0]["user"], "cat");
    assert_eq!(offline[0]["message"]["id"], to_cat["id"]);
    assert_eq!(offline[0]["message"]["body"], json!({"text": "hi cat"}));
    assert_eq!(stored[0]["message"]["id"], to_bob["id"], "in commit order");
    for e in &events {
        assert_eq!(e["id"].as_str().map(str::len), Some(26), "{e}");
        assert!(e["ts"].as_u64().is_some(), "{e}");
    }
    let posts = receiver.posts();
    assert!(
        posts.iter().take(2).all(|p| !p.accepted),
        "the first two failed"
    );
    assert!(posts.iter().all(signed), "every POST is signed");
    assert!(
        posts
            .iter()
            .all(|p| p.headers.get("content-type").map(String::as_str) == Some("application/json"))
    );

    // Delivered events leave the queue: nothing comes again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.events().len(), 3);
    let label = format!("{{webhook=\"{}\"}}", receiver.url);
    let of = |name: &str| format!("{name}{label}");
    let delivered = series(&server, &of("imqtt_webhook_events_delivered_total")).await;
    assert_eq!(delivered, Some(3.0));
    assert!(series(&server, &of("imqtt_webhook_events_retried_total")).await >= Some(2.0));
    assert_eq!(
        series(&server, &of("imqtt_webhook_events_queued")).await,
        Some(0.0)
    );
}

#[tokio::test]
async fn events_queued_while_the_receiver_is_down_survive_a_kill_and_arrive_after_the_restart() {
    let receiver = Receiver::start().await;
    receiver.set_down(true);
    let extra = hook(&receiver, r#""message.stored""#);
    let mut server = Server::start_with(&extra).await;
    let api = Api::new(&server);
    let mut sent = HashSet::new();
    for i in 0..20 {
        let r = api.send("ann", "bob", json!({ "n": i })).await;
        sent.insert(r["id"].as_str().expect("id").to_owned());
    }
    // The receiver has been refusing; imqtt dies without a chance to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill().await;
    let (_, dir) = server.stopped().await;
    receiver.set_down(false);
    let server = Launch::spawn_in(dir, &extra, &[]).into_server().await;

    let events = receiver.wait_events(20, WAIT).await;
    let got: HashSet<String> = events
        .iter()
        .filter_map(|e| e["message"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(got, sent, "every acknowledged send's event arrived");
    // In order: the seqs rise.
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| e["message"]["seq"].as_u64())
        .collect();
    let mut unique = seqs.clone();
    unique.dedup();
    assert!(unique.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    drop(server);
}

#[tokio::test]
async fn a_users_first_device_online_and_last_offline_are_told() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&hook(&receiver, r#""user.online", "user.offline""#)).await;
    let phone = Device::connect(&server, "bob", "bob-phone", &["users/bob/inbox"]).await;
    let events = receiver.wait_events(1, WAIT).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "user.online");
    assert_eq!(events[0]["user"], "bob");
    assert_eq!(events[0]["devices"], json!(["bob-phone"]));
    // A second device changes nothing; the last one leaving does.
    let laptop = Device::connect(&server, "bob", "bob-laptop", &["users/bob/inbox"]).await;
    drop(phone);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.events().len(), 1, "{:#?}", receiver.events());
    drop(laptop);
    let events = receiver.wait_events(2, WAIT).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[1]["type"], "user.offline");
    assert_eq!(events[1]["devices"], json!([]));
    assert!(receiver.posts().iter().all(signed));
    // Messages are not told to a webhook that did not ask for them.
    Api::new(&server).send("ann", "bob", json!("hi")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(receiver.events().len(), 2);
}

#[tokio::test]
async fn in_a_cluster_one_node_delivers_each_event_and_another_takes_over_when_it_dies() {
    let receiver = Receiver::start().await;
    let Some(mut cluster) =
        imqtt_tests::cluster::Cluster::start_with(3, &hook(&receiver, r#""message.stored""#)).await
    else {
        return;
    };
    let mut sent = Vec::new();
    for i in 0..9 {
        let api = Api::new(&cluster.nodes[i % 3]);
        let r = api.send("ann", "bob", json!({ "n": i })).await;
        sent.push(r["id"].as_str().expect("id").to_owned());
    }
    let events = receiver.wait_events(9, WAIT).await;
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 9, "each event once, by one node: {events:#?}");
    let got: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(got, sent.iter().map(String::as_str).collect::<HashSet<_>>());

    // The node that delivers (its metrics say so) dies; another takes over.
    let mut leader = None;
    for (i, node) in cluster.nodes.iter().enumerate() {
        if metric(node, "imqtt_webhook_events_delivered_total").await > 0.0 {
            assert!(leader.is_none(), "two nodes delivered");
            leader = Some(i);
        }
    }
    let leader = leader.expect("a node delivered");
    cluster.nodes[leader].kill().await;
    let api = Api::new(&cluster.nodes[(leader + 1) % 3]);
    for i in 0..3 {
        let r = api.send("ann", "bob", json!({ "after": i })).await;
        sent.push(r["id"].as_str().expect("id").to_owned());
    }
    let events = receiver.wait_events(12, WAIT).await;
    let got: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["message"]["id"].as_str())
        .collect();
    assert_eq!(got, sent.iter().map(String::as_str).collect::<HashSet<_>>());
}

#[tokio::test]
async fn each_offline_member_of_a_group_is_told_and_the_queue_keeps_its_bounds() {
    let receiver = Receiver::start().await;
    let server = Server::start_with(&format!(
        "{}max_queued = 3\n",
        hook(&receiver, r#""message.offline""#)
    ))
    .await;
    let api = Api::new(&server);
    api.group("ann", "team", &["bob", "cat", "dan"]).await;
    let _cat = Device::connect(&server, "cat", "cat-phone", &["users/cat/inbox"]).await;
    api.post(
        "ann",
        "/v1/messages",
        &json!({"group": "team", "body": "hi all"}),
    )
    .await
    .expect(201);
    let events = receiver.wait_events(2, WAIT).await;
    let mut users: Vec<&str> = events.iter().filter_map(|e| e["user"].as_str()).collect();
    users.sort_unstable();
    assert_eq!(
        users,
        vec!["bob", "dan"],
        "not the sender, not cat (online): {events:#?}"
    );
    assert!(events.iter().all(|e| e["message"]["conv"] == "group:team"));

    // Down, the queue holds at most max_queued: the oldest go, counted.
    receiver.set_down(true);
    for i in 0..4 {
        api.send("ann", "eve", json!({ "n": i })).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.set_down(false);
    let before = receiver.events().len();
    let events = receiver.wait_events(before + 3, WAIT).await;
    let later: Vec<u64> = events[before..]
        .iter()
        .filter_map(|e| e["message"]["body"]["n"].as_u64())
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.events().len(),
        before + 3,
        "{:#?}",
        receiver.events()
    );
    assert_eq!(later, vec![1, 2, 3], "the oldest was dropped");
    let dropped = format!(
        "imqtt_webhook_events_dropped_total{{webhook=\"{}\"}}",
        receiver.url
    );
    assert_eq!(series(&server, &dropped).await, Some(1.0));
}

#[tokio::test]
async fn events_older_than_max_age_are_dropped_counted_and_later_ones_still_arrive() {
    let receiver = Receiver::start().await;
    receiver.set_down(true);
    let server = Server::start_with(&format!(
        "{}max_age = \"2s\"\n",
        hook(&receiver, r#""message.stored""#)
    ))
    .await;
    let api = Api::new(&server);
    for i in 0..3 {
        api.send("ann", "bob", json!({ "n": i })).await;
    }
    // Retried (1 s, then 2 s later) until older than 2 s: then dropped, counted.
    let dropped = format!(
        "imqtt_webhook_events_dropped_total{{webhook=\"{}\"}}",
        receiver.url
    );
    let until = tokio::time::Instant::now() + WAIT;
    while series(&server, &dropped).await != Some(3.0) {
        assert!(
            tokio::time::Instant::now() < until,
            "not dropped: {:?}",
            series(&server, &dropped).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = receiver.posts().len();
    assert!(refused >= 2, "retried before the drop: {refused} POSTs");
    let queued = format!(
        "imqtt_webhook_events_queued{{webhook=\"{}\"}}",
        receiver.url
    );
    assert_eq!(series(&server, &queued).await, Some(0.0));

    // The receiver is back: the dropped events never come, a new one does.
    receiver.set_down(false);
    let later = api.send("ann", "bob", json!({ "n": 3 })).await;
    receiver.wait_events(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = receiver.events();
    let ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["message"]["id"].as_str())
        .map(|id| {
            if id == later["id"] {
                "later"
            } else {
                "dropped one"
            }
        })
        .collect();
    assert_eq!(ids, vec!["later"]);
    assert_eq!(series(&server, &dropped).await, Some(3.0));
}
