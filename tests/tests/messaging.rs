//! Messaging through the real `imqtt` binary: sends over HTTP reach MQTT devices
//! after commit, retries are idempotent, seqs are contiguous under concurrency,
//! offline users sync and ack, history pages, QoS 0, sync hints for large
//! messages, batches, notices, and every refusal with its status and JSON error.

use std::collections::BTreeMap;
use std::time::Duration;

use broker::auth::Role;
use imqtt_tests::client::{Api, Device, TTL, seqs, user};
use imqtt_tests::{Server, token};
use rumqttc::QoS;
use serde_json::{Value, json};

#[tokio::test]
async fn a_stored_send_reaches_every_device_of_the_peer_and_the_senders_other_devices() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob_phone = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;
    let mut bob_laptop = Device::connect(&server, "bob", "laptop", &["users/bob/inbox"]).await;
    let mut alice_laptop =
        Device::connect(&server, "alice", "laptop", &["users/alice/inbox"]).await;

    let body = json!({"text": "你好世界"});
    let sent = api
        .post(
            "alice",
            "/v1/messages",
            &json!({"to": "bob", "body": body, "client_msg_id": "c-7f1"}),
        )
        .await
        .expect(201);
    assert_eq!(sent["conv"], "dm:alice:bob");
    assert_eq!(sent["seq"], 1);
    let id = sent["id"].as_str().expect("id");
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let expected = json!({
        "id": id, "conv": "dm:alice:bob", "seq": 1, "from": "alice", "to": "bob",
        "ts": sent["ts"], "client_msg_id": "c-7f1", "qos": 1, "body": body,
    });

    for (device, topic) in [
        (&mut bob_phone, "users/bob/inbox"),
        (&mut bob_laptop, "users/bob/inbox"),
        (&mut alice_laptop, "users/alice/inbox"),
    ] {
        let got = device.message().await;
        assert_eq!(got.topic, topic);
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert_eq!(got.json, expected);
    }
    // What was pushed is what is stored.
    let (stored, _) = api.page("bob", "dm:alice:bob", "after=0").await;
    assert_eq!(stored, [expected]);
    for device in [&mut bob_phone, &mut bob_laptop, &mut alice_laptop] {
        device.nothing_arrives().await;
    }
}

#[tokio::test]
async fn a_qos_2_send_is_stored_and_pushed_once_at_qos_2() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect_at(
        &server,
        "bob",
        "phone",
        &["users/bob/inbox"],
        QoS::ExactlyOnce,
    )
    .await;
    let sent = api
        .post(
            "alice",
            "/v1/messages",
            &json!({"to": "bob", "body": "exactly", "qos": 2}),
        )
        .await
        .expect(201);
    let got = bob.message().await;
    assert_eq!(got.qos, QoS::ExactlyOnce);
    assert_eq!(
        (&got.json["id"], &got.json["seq"]),
        (&sent["id"], &sent["seq"])
    );
    assert_eq!(got.json["qos"], 2);
    bob.nothing_arrives().await;
    let (stored, _) = api.page("bob", "dm:alice:bob", "after=0").await;
    assert_eq!(stored, [got.json]);
}

#[tokio::test]
async fn every_messaging_endpoint_wants_a_token() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let base = server.http_url();
    let requests = [
        api.http
            .post(format!("{base}/v1/messages"))
            .json(&json!({"to": "bob", "body": 1})),
        api.http
            .post(format!("{base}/v1/messages/batch"))
            .json(&json!({"messages": []})),
        api.http
            .post(format!("{base}/v1/notify"))
            .json(&json!({"to": ["bob"], "body": 1})),
        api.http.get(format!("{base}/v1/sync")),
        api.http.get(format!("{base}/v1/conversations")),
        api.http
            .get(format!("{base}/v1/conversations/dm:alice:bob/messages")),
        api.http
            .post(format!("{base}/v1/ack"))
            .json(&json!({"cursors": {}})),
    ];
    for req in requests {
        api.call(req).await.error(401, "unauthorized");
    }
}

#[tokio::test]
async fn a_retry_with_the_same_client_msg_id_returns_the_original_and_stores_nothing() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;
    let send = json!({"to": "bob", "body": {"text": "once"}, "client_msg_id": "r-1"});
    let first = api.post("alice", "/v1/messages", &send).await.expect(201);
    assert_eq!(bob.message().await.json["id"], first["id"]);

    // The same client_msg_id, even with another body, is the same send.
    let retry = json!({"to": "bob", "body": {"text": "twice"}, "client_msg_id": "r-1"});
    for _ in 0..2 {
        let again = api.post("alice", "/v1/messages", &retry).await.expect(200);
        assert_eq!(again, first);
    }
    bob.nothing_arrives().await;
    for uid in ["alice", "bob"] {
        let convs = api.conversations(uid).await;
        assert_eq!(convs["dm:alice:bob"]["head"], 1, "{uid}: {convs:?}");
    }
    let (stored, _) = api.page("alice", "dm:alice:bob", "after=0").await;
    assert_eq!(seqs(&stored), [1]);
    assert_eq!(stored[0]["body"], json!({"text": "once"}));

    // The key belongs to the sender: bob's "r-1" is a send of its own.
    let bobs = json!({"to": "alice", "body": 2, "client_msg_id": "r-1"});
    let other = api.post("bob", "/v1/messages", &bobs).await.expect(201);
    assert_eq!(other["seq"], 2);
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn two_hundred_concurrent_sends_from_both_sides_get_seqs_one_to_two_hundred() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;
    let tasks: Vec<_> = (0..200u64)
        .map(|n| {
            let api = api.clone();
            let (from, to) = if n % 2 == 0 {
                ("alice", "bob")
            } else {
                ("bob", "alice")
            };
            tokio::spawn(async move { (n, from, api.send(from, to, json!({ "n": n })).await) })
        })
        .collect();
    let mut by_seq = BTreeMap::new();
    for t in tasks {
        let (n, from, sent) = t.await.expect("send task");
        assert_eq!(sent["conv"], "dm:alice:bob");
        let seq = sent["seq"].as_u64().expect("seq");
        let earlier = by_seq.insert(seq, (n, from, sent["id"].clone()));
        assert!(earlier.is_none(), "seq {seq} given twice");
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );

    let (stored, has_more) = api.page("bob", "dm:alice:bob", "after=0&limit=1000").await;
    assert!(!has_more);
    assert_eq!(seqs(&stored), (1..=200).collect::<Vec<_>>());
    for m in &stored {
        let (n, from, id) = &by_seq[&m["seq"].as_u64().expect("seq")];
        assert_eq!(&m["id"], id);
        assert_eq!(m["from"], *from);
        assert_eq!(m["body"], json!({ "n": n }));
    }
    assert_eq!(
        api.conversations("alice").await["dm:alice:bob"]["head"],
        200
    );

    // An online device of bob's gets each of them, its own sends included, once
    // and in seq order: delivery follows commit order.
    let mut pushed = Vec::new();
    for _ in 0..200 {
        pushed.push(bob.message().await.json["seq"].as_u64().expect("seq"));
    }
    bob.nothing_arrives().await;
    assert_eq!(pushed, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_offline_user_syncs_everything_in_order_and_acks_it_away() {
    // 250 sends from one user at once: more than the default burst of the per-user
    // rate limit, which is not what this test is about.
    let server = Server::start_env("", &[("IMQTT_LIMITS__RATE_PER_USER", "0")]).await;
    let api = Api::new(&server);
    for n in 1..=250u64 {
        api.send("alice", "bob", json!({ "n": n })).await;
    }

    let all = api.sync("bob", 1000).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let conv = &all[0];
    assert_eq!(conv["conv"], "dm:alice:bob");
    assert_eq!(
        (conv["head"].as_u64(), conv["cursor"].as_u64()),
        (Some(250), Some(0))
    );
    assert_eq!(conv["has_more"], false);
    let messages = conv["messages"].as_array().expect("messages");
    assert_eq!(seqs(messages), (1..=250).collect::<Vec<_>>());
    for m in messages {
        assert_eq!(m["body"]["n"], m["seq"]);
        assert_eq!((&m["from"], &m["to"]), (&json!("alice"), &json!("bob")));
    }

    let first = api.sync("bob", 100).await;
    assert_eq!(first[0]["has_more"], true);
    let messages = first[0]["messages"].as_array().expect("messages");
    assert_eq!(seqs(messages), (1..=100).collect::<Vec<_>>());

    let before = &api.conversations("bob").await["dm:alice:bob"];
    assert_eq!(
        (before["unread"].as_u64(), before["cursor"].as_u64()),
        (Some(250), Some(0))
    );
    // One's own messages are read.
    assert_eq!(
        api.conversations("alice").await["dm:alice:bob"]["unread"],
        0
    );

    api.ack("bob", json!({"dm:alice:bob": 100}))
        .await
        .expect(204);
    let partial = &api.conversations("bob").await["dm:alice:bob"];
    assert_eq!(
        (partial["unread"].as_u64(), partial["cursor"].as_u64()),
        (Some(150), Some(100))
    );
    let rest = api.sync("bob", 1000).await;
    assert_eq!(rest[0]["cursor"], 100);
    let messages = rest[0]["messages"].as_array().expect("messages");
    assert_eq!(seqs(messages), (101..=250).collect::<Vec<_>>());

    api.ack("bob", json!({"dm:alice:bob": 250}))
        .await
        .expect(204);
    assert_eq!(api.sync("bob", 1000).await, Vec::<Value>::new());
    let done = &api.conversations("bob").await["dm:alice:bob"];
    assert_eq!(
        (done["unread"].as_u64(), done["head"].as_u64()),
        (Some(0), Some(250))
    );

    for bad in [0, 1001] {
        api.get("bob", &format!("/v1/sync?limit={bad}"))
            .await
            .error(400, "bad_request");
    }
}

#[tokio::test]
async fn acks_never_move_a_cursor_back_and_are_refused_above_the_head_or_outside_ones_conversations()
 {
    let server = Server::start().await;
    let api = Api::new(&server);
    for n in 1..=3 {
        api.send("alice", "bob", json!(n)).await;
    }
    let cursor = |api: Api| async move {
        api.conversations("bob").await["dm:alice:bob"]["cursor"]
            .as_u64()
            .expect("cursor")
    };
    api.ack("bob", json!({"dm:alice:bob": 2})).await.expect(204);
    assert_eq!(cursor(api.clone()).await, 2);
    api.ack("bob", json!({"dm:alice:bob": 1})).await.expect(204);
    assert_eq!(
        cursor(api.clone()).await,
        2,
        "a lower ack moved the cursor back"
    );

    let message = api
        .ack("bob", json!({"dm:alice:bob": 4}))
        .await
        .error(400, "bad_request");
    assert!(message.contains("head"), "{message}");
    // All or nothing: a good cursor beside a bad one does not move either.
    api.ack("bob", json!({"dm:alice:bob": 3, "sys:bob": 1}))
        .await
        .error(400, "bad_request");
    assert_eq!(cursor(api.clone()).await, 2);

    // The same conversation written the other way round is the same conversation.
    api.ack("bob", json!({"dm:bob:alice": 3})).await.expect(204);
    assert_eq!(cursor(api.clone()).await, 3);

    for conv in ["dm:alice:bob", "sys:bob", "group:g1"] {
        api.ack("carol", json!({ conv: 1 }))
            .await
            .error(403, "not_a_member");
    }
    api.ack("bob", json!({"nonsense": 1}))
        .await
        .error(400, "bad_request");
}

#[tokio::test]
async fn history_pages_go_both_ways_and_say_whether_more_lie_beyond() {
    let server = Server::start().await;
    let api = Api::new(&server);
    for n in 1..=10 {
        api.send("alice", "bob", json!(n)).await;
    }
    let cases: [(&str, &[u64], bool); 11] = [
        ("", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], false),
        ("after=0&limit=4", &[1, 2, 3, 4], true),
        ("after=4&limit=6", &[5, 6, 7, 8, 9, 10], false),
        ("after=8&limit=4", &[9, 10], false),
        ("after=10", &[], false),
        ("limit=1000&after=99", &[], false),
        ("before=8&limit=3", &[5, 6, 7], true),
        ("before=3&limit=5", &[1, 2], false),
        (
            "before=11&limit=10",
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            false,
        ),
        ("before=1", &[], false),
        ("before=0", &[], false),
    ];
    for (query, want, more) in cases {
        for reader in ["alice", "bob"] {
            let (page, has_more) = api.page(reader, "dm:alice:bob", query).await;
            assert_eq!((seqs(&page).as_slice(), has_more), (want, more), "{query}");
        }
    }
    for query in [
        "after=1&before=5",
        "limit=0",
        "limit=1001",
        "after=0&limit=0",
        "before=5&limit=1001",
    ] {
        api.get(
            "bob",
            &format!("/v1/conversations/dm:alice:bob/messages?{query}"),
        )
        .await
        .error(400, "bad_request");
    }
}

#[tokio::test]
async fn malformed_query_strings_get_the_json_error_body() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.send("alice", "bob", json!(1)).await;
    for path in [
        "/v1/sync?limit=abc",
        "/v1/sync?limit=-1",
        "/v1/conversations/dm:alice:bob/messages?after=x",
        "/v1/conversations/dm:alice:bob/messages?limit=",
        "/v1/conversations/dm:alice:bob/messages?before=-3",
    ] {
        api.get("bob", path).await.error(400, "bad_request");
    }
}

#[tokio::test]
async fn a_stranger_cannot_read_a_conversation_and_a_malformed_conv_id_is_400() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.send("alice", "bob", json!("private")).await;
    let msg = api
        .get("carol", "/v1/conversations/dm:alice:bob/messages")
        .await
        .error(403, "not_a_member");
    assert!(!msg.contains("private"), "{msg}");
    api.get("carol", "/v1/conversations/sys:bob/messages")
        .await
        .error(403, "not_a_member");
    // The peer may name it either way round.
    let (page, _) = api.page("bob", "dm:bob:alice", "after=0").await;
    assert_eq!(seqs(&page), [1]);
    // An admin may read everything (DESIGN.md §2); a service token may not.
    let admin = token("ops", Role::Admin, TTL);
    let read = api
        .call(
            api.http
                .get(format!(
                    "{}/v1/conversations/dm:alice:bob/messages",
                    api.base
                ))
                .bearer_auth(&admin),
        )
        .await
        .expect(200);
    assert_eq!(seqs(read["messages"].as_array().expect("messages")), [1]);
    let service = token("backend", Role::Service, TTL);
    api.call(
        api.http
            .get(format!(
                "{}/v1/conversations/dm:alice:bob/messages",
                api.base
            ))
            .bearer_auth(&service),
    )
    .await
    .error(403, "not_a_member");

    for conv in [
        "nonsense",
        "dm:alice",
        "dm:alice:alice",
        "dm:alice:bob:carol",
        "dm:al%20ice:bob",
        "sys:",
        "group:",
        "chat:alice",
        "%FF",
    ] {
        api.get("alice", &format!("/v1/conversations/{conv}/messages"))
            .await
            .error(400, "bad_request");
    }
}

#[tokio::test]
async fn qos_0_reaches_online_devices_without_a_seq_and_is_never_stored() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;
    let mut alice_laptop =
        Device::connect(&server, "alice", "laptop", &["users/alice/inbox"]).await;

    let live = api
        .post(
            "alice",
            "/v1/messages",
            &json!({"to": "bob", "body": {"typing": true}, "qos": 0, "client_msg_id": "t-1"}),
        )
        .await
        .expect(202);
    let keys: Vec<&String> = live.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["id", "ts"], "{live}");

    for device in [&mut bob, &mut alice_laptop] {
        let got = device.message().await;
        assert_eq!(got.qos, QoS::AtMostOnce);
        let m = got.json;
        assert_eq!(m.get("seq"), None, "{m}");
        assert_eq!((&m["id"], &m["ts"]), (&live["id"], &live["ts"]));
        assert_eq!(m["conv"], "dm:alice:bob");
        assert_eq!((&m["from"], &m["to"]), (&json!("alice"), &json!("bob")));
        assert_eq!(
            (&m["qos"], &m["body"]),
            (&json!(0), &json!({"typing": true}))
        );
        assert_eq!(m["client_msg_id"], "t-1");
    }

    for uid in ["alice", "bob"] {
        assert_eq!(api.sync(uid, 100).await, Vec::<Value>::new(), "{uid}");
        assert!(api.conversations(uid).await.is_empty(), "{uid}");
        let (page, _) = api.page(uid, "dm:alice:bob", "after=0").await;
        assert!(page.is_empty(), "{page:?}");
    }

    // Online recipients only: a device that comes later gets nothing.
    let mut carol = Device::connect(&server, "carol", "phone", &["users/carol/inbox"]).await;
    let live = json!({"to": "dave", "body": "ping", "qos": 0});
    api.post("carol", "/v1/messages", &live).await.expect(202);
    let mut dave = Device::connect(&server, "dave", "phone", &["users/dave/inbox"]).await;
    dave.nothing_arrives().await;
    assert_eq!(carol.message().await.json["body"], "ping");
}

#[tokio::test]
async fn a_message_over_inline_max_bytes_is_announced_on_events_and_read_over_http() {
    let server = Server::start_env("", &[("IMQTT_DELIVERY__INLINE_MAX_BYTES", "200")]).await;
    let api = Api::new(&server);
    let mut bob = Device::connect(
        &server,
        "bob",
        "phone",
        &["users/bob/inbox", "users/bob/events"],
    )
    .await;
    let mut alice_laptop = Device::connect(
        &server,
        "alice",
        "laptop",
        &["users/alice/inbox", "users/alice/events"],
    )
    .await;

    let big = json!({"text": "x".repeat(500)});
    let sent = api.send("alice", "bob", big.clone()).await;
    for (device, uid) in [(&mut bob, "bob"), (&mut alice_laptop, "alice")] {
        let got = device.message().await;
        assert_eq!(got.topic, format!("users/{uid}/events"));
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert_eq!(
            got.json,
            json!({"type": "sync", "conv": "dm:alice:bob", "seq": sent["seq"]})
        );
        device.nothing_arrives().await;
    }
    let (page, _) = api.page("bob", "dm:alice:bob", "after=0").await;
    assert_eq!(page.len(), 1);
    assert_eq!((&page[0]["id"], &page[0]["body"]), (&sent["id"], &big));

    // A small one still comes inline.
    let small = api.send("alice", "bob", json!("hi")).await;
    let got = bob.message().await;
    assert_eq!(got.topic, "users/bob/inbox");
    assert_eq!(
        (&got.json["seq"], &got.json["body"]),
        (&small["seq"], &json!("hi"))
    );
}

#[tokio::test]
async fn a_batch_answers_each_send_in_order_with_a_result_or_an_error() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;
    let batch = json!({"messages": [
        {"to": "bob", "body": "first"},
        {"to": "not a user", "body": "bad"},
        {"to": "bob", "body": "third", "client_msg_id": "b-3"},
    ]});
    let answer = api
        .post("alice", "/v1/messages/batch", &batch)
        .await
        .expect(200);
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{answer}");
    assert_eq!(
        (&results[0]["conv"], &results[0]["seq"]),
        (&json!("dm:alice:bob"), &json!(1))
    );
    assert_eq!(results[1]["error"]["code"], "bad_request", "{answer}");
    assert!(results[1]["error"]["message"].is_string(), "{answer}");
    assert_eq!(results[1].get("seq"), None);
    assert_eq!(
        (&results[2]["conv"], &results[2]["seq"]),
        (&json!("dm:alice:bob"), &json!(2))
    );
    for (want, body) in [(&results[0], "first"), (&results[2], "third")] {
        let got = bob.message().await.json;
        assert_eq!((&got["id"], &got["body"]), (&want["id"], &json!(body)));
    }

    // A retry inside a later batch is the original.
    let retry = json!({"messages": [{"to": "bob", "body": "3", "client_msg_id": "b-3"}]});
    let again = api
        .post("alice", "/v1/messages/batch", &retry)
        .await
        .expect(200);
    assert_eq!(again["results"][0], results[2]);
    bob.nothing_arrives().await;

    // A QoS 0 send in a batch is pushed, not stored.
    let live = json!({"messages": [{"to": "bob", "body": "typing", "qos": 0}]});
    let answer = api
        .post("alice", "/v1/messages/batch", &live)
        .await
        .expect(200);
    let result = &answer["results"][0];
    let keys: Vec<&String> = result.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["id", "ts"], "{answer}");
    let got = bob.message().await;
    assert_eq!((got.qos, &got.json["id"]), (QoS::AtMostOnce, &result["id"]));

    let over: Vec<Value> = (0..1001).map(|n| json!({"to": "bob", "body": n})).collect();
    api.post("alice", "/v1/messages/batch", &json!({ "messages": over }))
        .await
        .error(400, "bad_request");
    assert_eq!(api.conversations("bob").await["dm:alice:bob"]["head"], 2);
}

#[tokio::test]
async fn notify_puts_one_notice_into_each_users_sys_conversation() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/inbox"]).await;
    let service = token("backend", Role::Service, TTL);
    let notice =
        json!({"to": ["bob", "carol"], "body": {"title": "maintenance"}, "client_msg_id": "n-1"});
    let answer = api
        .post_with(Some(&service), "/v1/notify", &notice)
        .await
        .expect(200);
    let results = answer["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2, "{answer}");
    for (r, uid) in results.iter().zip(["bob", "carol"]) {
        assert_eq!(
            (&r["conv"], &r["seq"]),
            (&json!(format!("sys:{uid}")), &json!(1))
        );
        let (page, _) = api.page(uid, &format!("sys:{uid}"), "after=0").await;
        assert_eq!(page.len(), 1);
        let m = &page[0];
        assert_eq!((&m["id"], &m["seq"]), (&r["id"], &json!(1)));
        assert_eq!((&m["from"], &m["to"]), (&json!("backend"), &json!(uid)));
        assert_eq!(m["body"], json!({"title": "maintenance"}));
        assert_eq!(
            api.conversations(uid).await[&format!("sys:{uid}")]["unread"],
            1
        );
    }
    let pushed = bob.message().await;
    assert_eq!(pushed.topic, "users/bob/inbox");
    assert_eq!(
        (&pushed.json["conv"], &pushed.json["id"]),
        (&json!("sys:bob"), &results[0]["id"])
    );
    api.get("bob", "/v1/conversations/sys:carol/messages")
        .await
        .error(403, "not_a_member");

    let again = api
        .post_with(Some(&service), "/v1/notify", &notice)
        .await
        .expect(200);
    assert_eq!(again["results"], json!(results));
    bob.nothing_arrives().await;
    assert_eq!(api.conversations("bob").await["sys:bob"]["head"], 1);

    let msg = api
        .post("alice", "/v1/notify", &notice)
        .await
        .error(403, "forbidden");
    assert!(msg.contains("service"), "{msg}");
    assert_eq!(api.conversations("carol").await["sys:carol"]["head"], 1);
}

#[tokio::test]
async fn bad_sends_get_their_status_and_a_json_error() {
    let server = Server::start().await;
    let api = Api::new(&server);
    let url = format!("{}/v1/messages", server.http_url());
    let alice = user("alice");
    let raw = |content_type: &str, body: &'static str| {
        api.http
            .post(&url)
            .bearer_auth(&alice)
            .header("content-type", content_type)
            .body(body)
    };
    let good = json!({"to": "bob", "body": "hi"});

    api.call(raw("application/json", "{\"to\": \"bob\", "))
        .await
        .error(400, "bad_request");
    api.call(raw("application/json", "hello"))
        .await
        .error(400, "bad_request");
    api.call(raw("text/plain", "{\"to\":\"bob\",\"body\":1}"))
        .await
        .error(415, "unsupported_media_type");
    api.call(
        api.http
            .post(&url)
            .bearer_auth(&alice)
            .body("{\"to\":\"bob\",\"body\":1}"),
    )
    .await
    .error(415, "unsupported_media_type");
    api.post_with(None, "/v1/messages", &good)
        .await
        .error(401, "unauthorized");
    api.post_with(Some("not.a.jwt"), "/v1/messages", &good)
        .await
        .error(401, "invalid_token");
    let foreign = broker::auth::TokenVerifier::new(&broker::auth::AuthConfig {
        jwt_secret: broker::auth::Secret::new("another-secret-0123456789abcdef0123456789"),
        ..broker::auth::AuthConfig::default()
    })
    .expect("verifier")
    .mint("alice", Role::User, TTL)
    .expect("mint");
    api.post_with(Some(&foreign), "/v1/messages", &good)
        .await
        .error(401, "invalid_token");

    let over_limit = "x".repeat(64 * 1024);
    let cmid_200 = "c".repeat(200);
    let cases = [
        (json!({"to": "bob/inbox", "body": 1}), 400, "bad_request"),
        (json!({"to": "", "body": 1}), 400, "bad_request"),
        (json!({"to": "b".repeat(65), "body": 1}), 400, "bad_request"),
        (json!({"to": "alice", "body": 1}), 400, "bad_request"),
        (json!({"body": 1}), 400, "bad_request"),
        (json!({"to": "bob"}), 400, "bad_request"),
        (
            json!({"to": "bob", "group": "g1", "body": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"to": "bob", "body": over_limit}),
            413,
            "body_too_large",
        ),
        (
            json!({"to": "bob", "body": 1, "qos": 3}),
            400,
            "bad_request",
        ),
        (
            json!({"to": "bob", "body": 1, "qos": "1"}),
            400,
            "bad_request",
        ),
        (
            json!({"to": "bob", "body": 1, "client_msg_id": ""}),
            400,
            "bad_request",
        ),
        (
            json!({"to": "bob", "body": 1, "client_msg_id": cmid_200}),
            400,
            "bad_request",
        ),
        (json!({"to": 7, "body": 1}), 400, "bad_request"),
        (json!({"group": "g1", "body": 1}), 404, "not_found"),
        (json!({"group": "bad gid", "body": 1}), 400, "bad_request"),
    ];
    for (send, status, code) in cases {
        let reply = api.post("alice", "/v1/messages", &send).await;
        assert_eq!(reply.status, status, "{send}: {}", reply.text);
        reply.error(status, code);
    }
    // The limits themselves are allowed.
    let at_limit = json!({
        "to": "bob",
        "body": "x".repeat(64 * 1024 - 2),
        "client_msg_id": "c".repeat(128),
    });
    let sent = api
        .post("alice", "/v1/messages", &at_limit)
        .await
        .expect(201);
    assert_eq!(sent["seq"], 1, "nothing refused was stored");
}

#[tokio::test]
async fn a_user_over_its_send_rate_gets_429_with_retry_after_and_backends_do_not() {
    let server = Server::start_env(
        "",
        &[
            ("IMQTT_LIMITS__RATE_PER_USER", "1"),
            ("IMQTT_LIMITS__RATE_BURST", "2"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let post = |uid: &'static str, role: Role, path: &'static str, body: Value| {
        let http = http.clone();
        let url = format!("{}{path}", server.http_url());
        async move {
            http.post(url)
                .bearer_auth(token(uid, role, Duration::from_secs(600)))
                .json(&body)
                .send()
                .await
                .expect("request")
        }
    };
    for _ in 0..2 {
        let r = post(
            "alice",
            Role::User,
            "/v1/messages",
            json!({"to": "bob", "body": 1}),
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    let r = post(
        "alice",
        Role::User,
        "/v1/messages",
        json!({"to": "bob", "body": 1}),
    )
    .await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user is not affected; a batch larger than the burst can never pass.
    let r = post(
        "carol",
        Role::User,
        "/v1/messages",
        json!({"to": "bob", "body": 1}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let three = json!({"messages": [{"to": "bob", "body": 1}, {"to": "bob", "body": 2}, {"to": "bob", "body": 3}]});
    let r = post("dave", Role::User, "/v1/messages/batch", three.clone()).await;
    assert_eq!(r.status(), 413);
    // A backend's service token is not limited.
    for _ in 0..5 {
        let r = post(
            "backend",
            Role::Service,
            "/v1/messages/batch",
            three.clone(),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
}
