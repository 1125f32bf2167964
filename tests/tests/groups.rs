//! Groups through the real `imqtt` binary: one publish on `groups/{gid}` reaches
//! every online member, non-members can neither subscribe nor send, a removed
//! member's live subscription stops at once, history is visible from the join
//! (or all of it), open and closed groups, membership events, an offline member's
//! backlog through sync, roles, ownership transfer and deletion, bad input.

use std::collections::BTreeSet;

use imqtt_tests::Server;
use imqtt_tests::client::{Api, Device, seqs};
use rumqttc::mqttbytes::v4::SubscribeReasonCode;
use serde_json::{Value, json};

/// Alice creates group `gid` (closed, default visibility unless `extra` says)
/// and adds `members`.
async fn group(api: &Api, gid: &str, extra: Value, members: &[&str]) {
    let mut body = json!({"id": gid, "name": "Team"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let made = api.post("alice", "/v1/groups", &body).await.expect(201);
    assert_eq!(made["id"], gid);
    assert_eq!(made["owner"], "alice");
    if !members.is_empty() {
        let added = api
            .post(
                "alice",
                &format!("/v1/groups/{gid}/members"),
                &json!({ "users": members }),
            )
            .await
            .expect(200);
        assert_eq!(added["added"], json!(members), "{added}");
    }
}

async fn send_group(api: &Api, from: &str, gid: &str, text: &str) -> Value {
    api.post(
        from,
        "/v1/messages",
        &json!({"group": gid, "body": {"text": text}}),
    )
    .await
    .expect(201)
}

#[tokio::test]
async fn one_group_send_reaches_every_online_member_and_the_senders_other_devices() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob", "carol"]).await;
    let mut bob = Device::connect(&server, "bob", "phone", &["groups/team"]).await;
    let mut carol = Device::connect(&server, "carol", "laptop", &["groups/team"]).await;
    let mut alice = Device::connect(&server, "alice", "tablet", &["groups/team"]).await;
    let sent = send_group(&api, "alice", "team", "hi all").await;
    assert_eq!(sent["conv"], "group:team");
    assert_eq!(sent["seq"], 1);
    for device in [&mut bob, &mut carol, &mut alice] {
        let m = device.message().await;
        assert_eq!(m.topic, "groups/team");
        assert_eq!(m.json["conv"], "group:team");
        assert_eq!(m.json["seq"], 1);
        assert_eq!(m.json["from"], "alice");
        assert_eq!(m.json["to"], "team");
        assert_eq!(m.json["body"]["text"], "hi all");
        assert_eq!(m.json["id"], sent["id"]);
    }
    // A member's send too; the group's seqs go on.
    let second = send_group(&api, "bob", "team", "hello").await;
    assert_eq!(second["seq"], 2);
    assert_eq!(alice.message().await.json["seq"], 2);
}

#[tokio::test]
async fn a_non_member_can_neither_subscribe_nor_send_nor_read() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob"]).await;
    send_group(&api, "bob", "team", "secret").await;
    let mut eve = Device::connect(&server, "eve", "phone", &["users/eve/inbox"]).await;
    assert_eq!(
        eve.subscribe("groups/team").await,
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        eve.subscribe("groups/+").await,
        SubscribeReasonCode::Failure
    );
    // The connection stays up and still works.
    assert_eq!(
        eve.subscribe("users/eve/events").await,
        SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
    );
    api.post(
        "eve",
        "/v1/messages",
        &json!({"group": "team", "body": "let me in"}),
    )
    .await
    .error(403, "not_a_member");
    api.post(
        "eve",
        "/v1/messages",
        &json!({"group": "nope", "body": "x"}),
    )
    .await
    .error(404, "not_found");
    api.get("eve", "/v1/conversations/group:team/messages")
        .await
        .error(403, "not_a_member");
    api.get("eve", "/v1/groups/team")
        .await
        .error(403, "not_a_member");
    api.post("eve", "/v1/ack", &json!({"cursors": {"group:team": 1}}))
        .await
        .error(403, "not_a_member");
    assert!(api.sync("eve", 10).await.is_empty());
}

#[tokio::test]
async fn a_removed_member_stops_receiving_at_once_and_can_no_longer_send() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob", "carol"]).await;
    let mut bob = Device::connect(&server, "bob", "phone", &["groups/team"]).await;
    let mut bob_events = Device::connect(&server, "bob", "watch", &["users/bob/events"]).await;
    let mut carol = Device::connect(&server, "carol", "phone", &["groups/team"]).await;
    send_group(&api, "alice", "team", "before").await;
    assert_eq!(bob.message().await.json["seq"], 1);
    assert_eq!(carol.message().await.json["seq"], 1);

    api.delete("alice", "/v1/groups/team/members/bob")
        .await
        .expect(204);
    let removed = bob_events.message().await;
    assert_eq!(
        removed.json,
        json!({"type": "member_removed", "group": "team", "user": "bob", "by": "alice"})
    );
    // Sent right after the 204: carol gets it, bob's live subscription nothing.
    send_group(&api, "alice", "team", "after").await;
    assert_eq!(carol.message().await.json["seq"], 2);
    bob.nothing_arrives().await;
    assert_eq!(
        bob.subscribe("groups/team").await,
        SubscribeReasonCode::Failure
    );
    api.post("bob", "/v1/messages", &json!({"group": "team", "body": 1}))
        .await
        .error(403, "not_a_member");
    // What he could see up to his removal stays readable, nothing after.
    let (page, more) = api.page("bob", "group:team", "after=0&limit=10").await;
    assert_eq!(seqs(&page), [1]);
    assert!(!more);
    // Removing him again: he is not a member.
    api.delete("alice", "/v1/groups/team/members/bob")
        .await
        .error(404, "not_found");
}

#[tokio::test]
async fn a_member_sees_history_from_its_join_unless_the_group_shows_all() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "since", json!({}), &[]).await;
    group(&api, "all", json!({"history_visible": "all"}), &[]).await;
    for gid in ["since", "all"] {
        for i in 1..=3 {
            send_group(&api, "alice", gid, &format!("early {i}")).await;
        }
        api.post(
            "alice",
            &format!("/v1/groups/{gid}/members"),
            &json!({"users": ["dave"]}),
        )
        .await
        .expect(200);
        send_group(&api, "alice", gid, "late").await;
    }
    // since_join: only seq 4, from both ends of paging.
    let (page, more) = api.page("dave", "group:since", "after=0&limit=10").await;
    assert_eq!(seqs(&page), [4]);
    assert!(!more);
    let (page, more) = api.page("dave", "group:since", "before=4&limit=10").await;
    assert!(page.is_empty());
    assert!(!more);
    // all: everything, but only what came after the join is unread.
    let (page, _) = api.page("dave", "group:all", "after=0&limit=10").await;
    assert_eq!(seqs(&page), [1, 2, 3, 4]);
    let (page, more) = api.page("dave", "group:all", "before=4&limit=2").await;
    assert_eq!(seqs(&page), [2, 3]);
    assert!(more);
    let convs = api.conversations("dave").await;
    for gid in ["group:since", "group:all"] {
        assert_eq!(convs[gid]["head"], 4, "{gid}");
        assert_eq!(convs[gid]["cursor"], 3, "{gid}");
        assert_eq!(convs[gid]["unread"], 1, "{gid}");
    }
    let sync = api.sync("dave", 100).await;
    assert_eq!(sync.len(), 2);
    for c in &sync {
        assert_eq!(seqs(c["messages"].as_array().expect("messages")), [4]);
    }
    // Dave leaves at 5: 6 is not his; he keeps 4..=5, and no sync of it.
    send_group(&api, "alice", "since", "5").await;
    api.delete("dave", "/v1/groups/since/members/dave")
        .await
        .expect(204);
    send_group(&api, "alice", "since", "6").await;
    let (page, more) = api.page("dave", "group:since", "after=0&limit=10").await;
    assert_eq!(seqs(&page), [4, 5]);
    assert!(!more);
    assert!(!api.conversations("dave").await.contains_key("group:since"));
}

#[tokio::test]
async fn anyone_joins_an_open_group_and_nobody_joins_a_closed_one_alone() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "lobby", json!({"open": true}), &[]).await;
    group(&api, "club", json!({}), &[]).await;
    // An open group shows itself to strangers, so that they can decide.
    let info = api.get("zed", "/v1/groups/lobby").await.expect(200);
    assert_eq!(info["open"], true);
    let joined = api
        .post(
            "zed",
            "/v1/groups/lobby/members",
            &json!({"users": ["zed"]}),
        )
        .await
        .expect(200);
    assert_eq!(joined["added"], json!(["zed"]));
    // Joining twice adds nothing.
    let again = api
        .post(
            "zed",
            "/v1/groups/lobby/members",
            &json!({"users": ["zed"]}),
        )
        .await
        .expect(200);
    assert_eq!(again["added"], json!([]));
    // A plain member may not add others, even to an open group.
    api.post(
        "zed",
        "/v1/groups/lobby/members",
        &json!({"users": ["yan"]}),
    )
    .await
    .error(403, "forbidden");
    api.post("zed", "/v1/groups/club/members", &json!({"users": ["zed"]}))
        .await
        .error(403, "forbidden");
    let mine = api.get("zed", "/v1/groups").await.expect(200);
    let ids: Vec<&str> = mine["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["lobby"]);
    assert_eq!(mine["groups"][0]["role"], "member");
    send_group(&api, "zed", "lobby", "hello").await;
}

#[tokio::test]
async fn membership_changes_are_told_to_the_member_and_to_the_others() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob"]).await;
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/events"]).await;
    let mut carol = Device::connect(&server, "carol", "phone", &["users/carol/events"]).await;
    api.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["carol"]}),
    )
    .await
    .expect(200);
    let added = json!({"type": "member_added", "group": "team", "user": "carol", "by": "alice"});
    assert_eq!(carol.message().await.json, added);
    assert_eq!(bob.message().await.json, added);
    api.delete("carol", "/v1/groups/team/members/carol")
        .await
        .expect(204);
    let left = json!({"type": "member_removed", "group": "team", "user": "carol", "by": "carol"});
    assert_eq!(carol.message().await.json, left);
    assert_eq!(bob.message().await.json, left);
}

#[tokio::test]
async fn an_offline_member_finds_its_group_backlog_through_sync() {
    // 250 sends at once are past the default per-user burst.
    let server = Server::start_with("[limits]\nrate_per_user = 0\n").await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob"]).await;
    let batch: Vec<Value> = (1..=250)
        .map(|i| json!({"group": "team", "body": {"n": i}}))
        .collect();
    let results = api
        .post("alice", "/v1/messages/batch", &json!({ "messages": batch }))
        .await
        .expect(200);
    assert_eq!(results["results"].as_array().expect("results").len(), 250);
    let mut got = Vec::new();
    loop {
        let sync = api.sync("bob", 100).await;
        let Some(c) = sync.iter().find(|c| c["conv"] == "group:team") else {
            break;
        };
        let messages = c["messages"].as_array().expect("messages");
        got.extend(seqs(messages));
        let last = *got.last().expect("a message");
        api.ack("bob", json!({ "group:team": last }))
            .await
            .expect(204);
    }
    assert_eq!(got, (1..=250).collect::<Vec<u64>>());
    let convs = api.conversations("bob").await;
    assert_eq!(convs["group:team"]["unread"], 0);
    // The sender's own messages are read.
    assert_eq!(api.conversations("alice").await["group:team"]["unread"], 0);
}

#[tokio::test]
async fn the_owner_hands_the_group_over_and_the_new_owner_deletes_it() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob", "carol"]).await;
    let mut carol = Device::connect(
        &server,
        "carol",
        "phone",
        &["groups/team", "users/carol/events"],
    )
    .await;
    // Roles: only the owner changes them; admins add and remove plain members.
    api.put(
        "bob",
        "/v1/groups/team/members/carol",
        &json!({"role": "admin"}),
    )
    .await
    .error(403, "forbidden");
    api.put(
        "alice",
        "/v1/groups/team/members/bob",
        &json!({"role": "admin"}),
    )
    .await
    .expect(204);
    api.post("bob", "/v1/groups/team/members", &json!({"users": ["dan"]}))
        .await
        .expect(200);
    api.delete("bob", "/v1/groups/team/members/dan")
        .await
        .expect(204);
    // The owner cannot leave; it transfers first.
    api.delete("alice", "/v1/groups/team/members/alice")
        .await
        .error(409, "conflict");
    api.put(
        "alice",
        "/v1/groups/team/members/bob",
        &json!({"role": "owner"}),
    )
    .await
    .expect(204);
    let info = api.get("carol", "/v1/groups/team").await.expect(200);
    assert_eq!(info["owner"], "bob");
    let roles: BTreeSet<(String, String)> = info["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap_or_default().to_owned(),
                m["role"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from([
            ("alice".to_owned(), "admin".to_owned()),
            ("bob".to_owned(), "owner".to_owned()),
            ("carol".to_owned(), "member".to_owned()),
        ])
    );
    // An admin cannot remove the owner, nor delete the group.
    api.delete("alice", "/v1/groups/team/members/bob")
        .await
        .error(409, "conflict");
    api.delete("alice", "/v1/groups/team")
        .await
        .error(403, "forbidden");
    api.delete("bob", "/v1/groups/team").await.expect(204);
    let mut told = None;
    while told.is_none() {
        let m = carol.message().await;
        if m.topic == "users/carol/events" && m.json["type"] == "group_deleted" {
            told = Some(m.json);
        }
    }
    assert_eq!(
        told,
        Some(json!({"type": "group_deleted", "group": "team", "by": "bob"}))
    );
    api.get("carol", "/v1/groups/team")
        .await
        .error(404, "not_found");
    api.post(
        "carol",
        "/v1/messages",
        &json!({"group": "team", "body": 1}),
    )
    .await
    .error(404, "not_found");
    assert_eq!(
        carol.subscribe("groups/team").await,
        SubscribeReasonCode::Failure
    );
    assert!(
        api.get("carol", "/v1/groups").await.expect(200)["groups"]
            .as_array()
            .expect("groups")
            .is_empty()
    );
    // The id is free again, and the new group shows nothing of the old one.
    api.post(
        "carol",
        "/v1/groups",
        &json!({"id": "team", "name": "New", "history_visible": "all"}),
    )
    .await
    .expect(201);
    let (page, _) = api.page("carol", "group:team", "after=0&limit=10").await;
    assert!(page.is_empty(), "{page:?}");
}

#[tokio::test]
async fn bad_group_requests_get_their_status_and_a_json_error() {
    let server = Server::start_with("[limits]\nmax_group_size = 3\n").await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob"]).await;
    api.post(
        "alice",
        "/v1/groups",
        &json!({"id": "team", "name": "Again"}),
    )
    .await
    .error(409, "group_exists");
    api.post("alice", "/v1/groups", &json!({"id": "bad id", "name": "x"}))
        .await
        .error(400, "bad_request");
    api.post("alice", "/v1/groups", &json!({"name": " "}))
        .await
        .error(400, "bad_request");
    api.post(
        "alice",
        "/v1/groups",
        &json!({"name": "x", "history_visible": "some"}),
    )
    .await
    .error(400, "bad_request");
    api.post("alice", "/v1/groups", &json!({"name": "x", "open": "yes"}))
        .await
        .error(400, "bad_request");
    api.post(
        "alice",
        "/v1/groups/nope/members",
        &json!({"users": ["bob"]}),
    )
    .await
    .error(404, "not_found");
    api.post("alice", "/v1/groups/team/members", &json!({"users": []}))
        .await
        .error(400, "bad_request");
    api.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["x/y"]}),
    )
    .await
    .error(400, "bad_request");
    api.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["carol", "dan"]}),
    )
    .await
    .error(409, "group_full");
    api.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["carol"]}),
    )
    .await
    .expect(200);
    api.put(
        "alice",
        "/v1/groups/team/members/zed",
        &json!({"role": "admin"}),
    )
    .await
    .error(404, "not_found");
    api.put(
        "alice",
        "/v1/groups/team/members/bob",
        &json!({"role": "king"}),
    )
    .await
    .error(400, "bad_request");
    api.get("alice", "/v1/groups/no%20pe")
        .await
        .error(400, "bad_request");
    // A server-picked id is a valid id.
    let made = api
        .post("alice", "/v1/groups", &json!({"name": "Anon"}))
        .await
        .expect(201);
    let id = made["id"].as_str().expect("id");
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_eq!(made["history_visible"], "since_join");
    assert_eq!(made["open"], false);
}

#[tokio::test]
async fn a_member_sends_to_its_group_over_the_mqtt_outbox_and_a_stranger_is_refused() {
    let server = Server::start().await;
    let api = Api::new(&server);
    group(&api, "team", json!({}), &["bob", "carol"]).await;
    let mut carol = Device::connect(&server, "carol", "phone", &["groups/team"]).await;
    let mut bob = Device::connect(&server, "bob", "phone", &["users/bob/events"]).await;
    let send = json!({"group": "team", "body": {"text": "from mqtt"}, "client_msg_id": "m-1"});
    // The PUBACK leaves once the message is stored; the `sent` event with it.
    let mut meanwhile = bob.publish("users/bob/outbox", &send).await;
    let got = carol.message().await;
    assert_eq!(got.topic, "groups/team");
    assert_eq!(got.json["from"], "bob");
    assert_eq!(got.json["client_msg_id"], "m-1");
    let sent = match meanwhile.pop() {
        Some(m) => m,
        None => bob.message().await,
    };
    assert_eq!(sent.json["type"], "sent");
    assert_eq!(sent.json["conv"], "group:team");
    assert_eq!(sent.json["seq"], got.json["seq"]);

    let mut eve = Device::connect(&server, "eve", "phone", &["users/eve/events"]).await;
    let intrude = json!({"group": "team", "body": 1, "client_msg_id": "e-1"});
    // MQTT 3.1.1 has no reason code: a plain PUBACK, and the error event.
    let mut meanwhile = eve.publish("users/eve/outbox", &intrude).await;
    let refused = match meanwhile.pop() {
        Some(m) => m,
        None => eve.message().await,
    };
    assert_eq!(refused.json["type"], "error");
    assert_eq!(refused.json["client_msg_id"], "e-1");
    assert_eq!(refused.json["error"]["code"], "not_a_member");
    carol.nothing_arrives().await;
}
