//! Presence and contacts through the real `imqtt` binary: a user's retained
//! `presence/{uid}` turns online and offline with its devices (disconnect and
//! keepalive timeout alike), only contacts and co-members may watch it, removing
//! a contact ends its live subscription, and `GET /v1/presence` shows the same.

use std::time::Duration;

use imqtt_tests::Server;
use imqtt_tests::client::{Api, Device, user};
use rumqttc::mqttbytes::v4::SubscribeReasonCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// How long a presence change may take to reach a watcher (DESIGN.md §7 says
/// 1 s; the margin is for a busy test machine).
const CHANGE: Duration = Duration::from_secs(5);

/// The next presence of `uid` that `watcher` receives.
async fn presence_of(watcher: &mut Device, uid: &str) -> Value {
    let topic = format!("presence/{uid}");
    timeout(CHANGE, watcher.message_on(&topic))
        .await
        .expect("a presence change in time")
        .json
}

/// Waits until `watcher` sees `uid` with `status`.
async fn until_status(watcher: &mut Device, uid: &str, status: &str) -> Value {
    loop {
        let p = presence_of(watcher, uid).await;
        if p["status"] == status {
            return p;
        }
    }
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u16::try_from(s.len()).expect("short").to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An MQTT 3.1.1 connection made by hand with keepalive 1 s, which then says
/// nothing more: the broker must time it out after 1.5 s.
async fn silent_connection(server: &Server, uid: &str, client_id: &str) -> tokio::net::TcpStream {
    let mut body = Vec::new();
    encode_str(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0b1100_0010); // username, password, clean session
    body.extend_from_slice(&1u16.to_be_bytes()); // keepalive, seconds
    encode_str(&mut body, client_id);
    encode_str(&mut body, uid);
    encode_str(&mut body, &user(uid));
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    let mut socket = tokio::net::TcpStream::connect(server.addr("mqtt.tcp"))
        .await
        .expect("connect");
    socket.write_all(&packet).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    timeout(CHANGE, socket.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    socket
}

#[tokio::test]
async fn a_contact_sees_a_user_go_online_and_offline_with_its_devices() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    let mut bob = Device::connect(&server, "bob", "phone", &["presence/alice"]).await;
    let phone = Device::connect(&server, "alice", "phone", &["users/alice/inbox"]).await;
    let online = until_status(&mut bob, "alice", "online").await;
    assert_eq!(online["user"], "alice");
    assert_eq!(online["devices"], json!(["phone"]));
    assert!(online["ts"].as_u64().is_some_and(|t| t > 0), "{online}");
    let laptop = Device::connect(&server, "alice", "laptop", &["users/alice/inbox"]).await;
    let both = presence_of(&mut bob, "alice").await;
    assert_eq!(both["status"], "online");
    let mut devices: Vec<&str> = both["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    devices.sort_unstable();
    assert_eq!(devices, ["laptop", "phone"]);
    drop(phone);
    let one = presence_of(&mut bob, "alice").await;
    assert_eq!(one["status"], "online");
    assert_eq!(one["devices"], json!(["laptop"]));
    drop(laptop);
    let offline = until_status(&mut bob, "alice", "offline").await;
    assert_eq!(offline["devices"], json!([]));
    // Over HTTP: the same.
    let list = api.get("bob", "/v1/presence?users=alice").await.expect(200);
    assert_eq!(list["presence"][0]["user"], "alice");
    assert_eq!(list["presence"][0]["status"], "offline");
    assert_eq!(list["presence"][0]["ts"], offline["ts"]);
}

#[tokio::test]
async fn a_keepalive_timeout_turns_a_user_offline() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    let mut bob = Device::connect(&server, "bob", "phone", &["presence/alice"]).await;
    let _socket = silent_connection(&server, "alice", "sensor").await;
    let online = until_status(&mut bob, "alice", "online").await;
    assert_eq!(online["devices"], json!(["sensor"]));
    // The socket stays open; only the keepalive can end it.
    let offline = until_status(&mut bob, "alice", "offline").await;
    let held = offline["ts"].as_u64().unwrap_or(0) - online["ts"].as_u64().unwrap_or(0);
    assert!(
        held >= 1000,
        "offline after {held} ms, before 1.5 x keepalive"
    );
}

#[tokio::test]
async fn co_members_may_watch_presence_and_strangers_may_not() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.post(
        "alice",
        "/v1/groups",
        &json!({"id": "team", "name": "Team"}),
    )
    .await
    .expect(201);
    api.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["carol"]}),
    )
    .await
    .expect(200);
    let _alice = Device::connect(&server, "alice", "phone", &["users/alice/inbox"]).await;
    // The retained presence reaches a co-member who subscribes after the change.
    let mut carol = Device::connect(&server, "carol", "phone", &["presence/alice"]).await;
    assert_eq!(
        until_status(&mut carol, "alice", "online").await["user"],
        "alice"
    );
    let mut eve = Device::connect(&server, "eve", "phone", &["users/eve/inbox"]).await;
    assert_eq!(
        eve.subscribe("presence/alice").await,
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        eve.subscribe("presence/+").await,
        SubscribeReasonCode::Failure
    );
    // One's own presence is always visible.
    assert_eq!(
        eve.subscribe("presence/eve").await,
        SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
    );
    let seen = api
        .get("carol", "/v1/presence?users=alice,eve,bad%20id,alice")
        .await
        .expect(200);
    let users: Vec<&str> = seen["presence"]
        .as_array()
        .expect("presence")
        .iter()
        .filter_map(|p| p["user"].as_str())
        .collect();
    assert_eq!(users, ["alice"], "{seen}");
    assert_eq!(seen["presence"][0]["status"], "online");
    assert_eq!(seen["presence"][0]["devices"], json!(["phone"]));
    let none = api.get("eve", "/v1/presence?users=alice").await.expect(200);
    assert_eq!(none, json!({"presence": []}));
}

#[tokio::test]
async fn removing_a_contact_ends_its_live_subscription_at_once() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    api.put("alice", "/v1/contacts/carol", &json!({}))
        .await
        .expect(204);
    let list = api.get("alice", "/v1/contacts").await.expect(200);
    assert_eq!(list, json!({"contacts": ["bob", "carol"]}));
    let mut bob = Device::connect(&server, "bob", "phone", &["presence/alice"]).await;
    api.delete("alice", "/v1/contacts/bob").await.expect(204);
    let _alice = Device::connect(&server, "alice", "phone", &["users/alice/inbox"]).await;
    bob.nothing_arrives().await;
    assert_eq!(
        bob.subscribe("presence/alice").await,
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        api.get("alice", "/v1/contacts").await.expect(200),
        json!({"contacts": ["carol"]})
    );
    api.put("alice", "/v1/contacts/alice", &json!({}))
        .await
        .error(400, "bad_request");
    api.put("alice", "/v1/contacts/a%20b", &json!({}))
        .await
        .error(400, "bad_request");
}

#[tokio::test]
async fn leaving_a_shared_group_ends_the_presence_watch_it_allowed_both_ways() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.post(
        "alice",
        "/v1/groups",
        &json!({"id": "team", "name": "Team"}),
    )
    .await
    .expect(201);
    api.post(
        "alice",
        "/v1/groups/team/members",
        &json!({"users": ["carol", "dan"]}),
    )
    .await
    .expect(200);
    // Dan is also alice's contact: that watch stays.
    api.put("alice", "/v1/contacts/dan", &json!({}))
        .await
        .expect(204);
    let mut carol = Device::connect(&server, "carol", "phone", &["presence/alice"]).await;
    let mut dan = Device::connect(&server, "dan", "phone", &["presence/alice"]).await;
    let mut alice = Device::connect(&server, "alice", "phone", &["presence/carol"]).await;
    assert_eq!(
        until_status(&mut carol, "alice", "online").await["user"],
        "alice"
    );
    assert_eq!(
        until_status(&mut dan, "alice", "online").await["user"],
        "alice"
    );
    assert_eq!(
        until_status(&mut alice, "carol", "online").await["user"],
        "carol"
    );
    api.delete("alice", "/v1/groups/team/members/carol")
        .await
        .expect(204);
    api.delete("alice", "/v1/groups/team/members/dan")
        .await
        .expect(204);
    // Alice's second device changes her presence; carol, no longer a co-member,
    // hears nothing; dan, a contact, does.
    let _laptop = Device::connect(&server, "alice", "laptop", &["users/alice/inbox"]).await;
    let seen = presence_of(&mut dan, "alice").await;
    assert_eq!(seen["devices"].as_array().map(Vec::len), Some(2), "{seen}");
    carol.nothing_arrives().await;
    // Nor does alice hear of carol any more.
    let _carol_laptop = Device::connect(&server, "carol", "laptop", &["users/carol/inbox"]).await;
    alice.nothing_arrives().await;
}

#[tokio::test]
async fn a_takeover_keeps_the_user_online_without_an_offline_in_between() {
    let server = Server::start().await;
    let api = Api::new(&server);
    api.put("alice", "/v1/contacts/bob", &json!({}))
        .await
        .expect(204);
    let mut bob = Device::connect(&server, "bob", "phone", &["presence/alice"]).await;
    let first = Device::connect(&server, "alice", "phone", &["users/alice/inbox"]).await;
    until_status(&mut bob, "alice", "online").await;
    // The same device connects again: the old connection is taken over.
    let _second = Device::connect(&server, "alice", "phone", &["users/alice/inbox"]).await;
    let again = presence_of(&mut bob, "alice").await;
    assert_eq!(again["status"], "online");
    assert_eq!(again["devices"], json!(["phone"]));
    drop(first);
    bob.nothing_arrives().await;
}
