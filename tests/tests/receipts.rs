//! Read receipts through the real binary: a DM's reader moving its cursor tells
//! the other party (`{"type":"read"}` on its events topic), at most once a
//! second per conversation with the latest seq; `delivery.read_receipts = false`
//! tells nobody; `GET /v1/conversations/{conv}/reads` gives each member's cursor.

use std::time::Duration;

use imqtt_tests::Server;
use imqtt_tests::client::{Api, Device};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The `read` events `device` gets within `within`.
async fn reads_within(device: &mut Device, within: Duration) -> Vec<(Instant, Value)> {
    let mut out = Vec::new();
    let until = Instant::now() + within;
    while let Ok(m) = tokio::time::timeout_at(until, device.message_on("users/ann/events")).await {
        if m.json["type"] == "read" {
            out.push((Instant::now(), m.json));
        }
    }
    out
}

#[tokio::test]
async fn a_reader_moving_its_cursor_tells_the_sender_once_a_second_with_the_latest_seq() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut ann = Device::connect(&server, "ann", "ann-phone", &["users/ann/events"]).await;
    for i in 0..5 {
        api.send("ann", "bob", json!({ "text": format!("m{i}") }))
            .await;
    }

    api.ack("bob", json!({"dm:ann:bob": 1})).await.expect(204);
    let first = ann.message_on("users/ann/events").await;
    assert_eq!(first.json["type"], "read", "{}", first.json);
    assert_eq!(first.json["conv"], "dm:ann:bob");
    assert_eq!(first.json["user"], "bob");
    assert_eq!(first.json["seq"], 1);
    assert!(
        first.json["ts"]
            .as_u64()
            .is_some_and(|ts| ts > 1_600_000_000_000)
    );
    let told = Instant::now();

    // Three more acks within the second: one receipt, the latest seq, a second on.
    for seq in [2, 3, 4] {
        api.ack("bob", json!({"dm:ann:bob": seq})).await.expect(204);
    }
    let later = reads_within(&mut ann, Duration::from_millis(2500)).await;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].1["seq"], 4);
    assert!(
        later[0].0 - told >= Duration::from_millis(900),
        "{:?}",
        later[0].0 - told
    );

    // An ack that moves nothing, and the sender's own acks, tell nobody.
    api.ack("bob", json!({"dm:ann:bob": 2})).await.expect(204);
    api.ack("ann", json!({"dm:ann:bob": 5})).await.expect(204);
    assert_eq!(
        reads_within(&mut ann, Duration::from_millis(1500))
            .await
            .len(),
        0
    );

    // After a quiet second the next one is told at once.
    let t = Instant::now();
    api.ack("bob", json!({"dm:ann:bob": 5})).await.expect(204);
    let now = ann.message_on("users/ann/events").await;
    assert_eq!(
        (now.json["type"].clone(), now.json["seq"].clone()),
        (json!("read"), json!(5))
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn receipts_off_tell_nobody() {
    let server = Server::start_env("", &[("IMQTT_DELIVERY__READ_RECEIPTS", "false")]).await;
    let api = Api::new(&server);
    let mut ann = Device::connect(&server, "ann", "ann-phone", &["users/ann/events"]).await;
    api.send("ann", "bob", json!({"text": "hi"})).await;
    api.ack("bob", json!({"dm:ann:bob": 1})).await.expect(204);
    assert!(
        reads_within(&mut ann, Duration::from_millis(1500))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn members_read_how_far_each_member_has_read() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.group("ann", "team", &["bob", "cat", "dan"]).await;
    for i in 0..3 {
        api.post(
            "ann",
            "/v1/messages",
            &json!({"group": "team", "body": {"text": i}}),
        )
        .await
        .expect(201);
    }
    api.ack("bob", json!({"group:team": 2})).await.expect(204);
    api.delete("ann", "/v1/groups/team/members/dan")
        .await
        .expect(204);

    let page = api
        .get("cat", "/v1/conversations/group:team/reads")
        .await
        .expect(200);
    let reads: Vec<(String, u64)> = page["reads"]
        .as_array()
        .expect("reads")
        .iter()
        .map(|r| {
            (
                r["user"].as_str().expect("user").to_owned(),
                r["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    // The sender has read its own; a removed member is not listed.
    assert_eq!(
        reads,
        vec![
            ("ann".to_owned(), 3),
            ("bob".to_owned(), 2),
            ("cat".to_owned(), 0)
        ]
    );
    assert_eq!(page["has_more"], false);

    let first = api
        .get("cat", "/v1/conversations/group:team/reads?limit=1")
        .await
        .expect(200);
    assert_eq!(first["reads"][0]["user"], "ann");
    assert_eq!(first["has_more"], true);
    let next = api
        .get(
            "cat",
            "/v1/conversations/group:team/reads?after=ann&limit=5",
        )
        .await
        .expect(200);
    assert_eq!(next["reads"][0]["user"], "bob");

    // A DM's two parties; outsiders are refused.
    api.send("ann", "bob", json!({"text": "hi"})).await;
    let dm = api
        .get("bob", "/v1/conversations/dm:ann:bob/reads")
        .await
        .expect(200);
    assert_eq!(
        dm["reads"],
        json!([{"user": "ann", "seq": 1}, {"user": "bob", "seq": 0}])
    );
    api.get("eve", "/v1/conversations/dm:ann:bob/reads")
        .await
        .error(403, "not_a_member");
    api.get("eve", "/v1/conversations/group:team/reads")
        .await
        .error(403, "not_a_member");
    api.get("dan", "/v1/conversations/group:team/reads?limit=0")
        .await
        .error(400, "bad_request");
}
