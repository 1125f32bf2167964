//! MQTT through the real `imqtt` binary: the listener it prints, token
//! authentication, the admin superuser, and the broker's metrics.

use std::time::Duration;

use broker::auth::Role;
use imqtt_tests::{Server, token};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn client(server: &Server, uid: &str, password: &str) -> (AsyncClient, EventLoop) {
    let addr = server.addr("mqtt.tcp");
    let mut o = MqttOptions::new(format!("{uid}-dev"), addr.ip().to_string(), addr.port());
    o.set_credentials(uid, password);
    AsyncClient::new(o, 10)
}

async fn until<T>(el: &mut EventLoop, mut want: impl FnMut(&Incoming) -> Option<T>) -> T {
    loop {
        match timeout(WAIT, el.poll()).await.expect("in time") {
            Ok(Event::Incoming(i)) => {
                if let Some(t) = want(&i) {
                    return t;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

#[tokio::test]
async fn user_with_a_token_subscribes_to_its_inbox_and_an_admin_sees_everything() {
    let server = Server::start().await;
    let (alice, mut alice_loop) = client(
        &server,
        "alice",
        &token("alice", Role::User, Duration::from_secs(600)),
    );
    alice
        .subscribe("users/alice/inbox", QoS::AtLeastOnce)
        .await
        .expect("sub");
    let codes = until(&mut alice_loop, |i| match i {
        Incoming::SubAck(s) => Some(s.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        codes,
        vec![rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(
            QoS::AtLeastOnce
        )]
    );

    let (admin, mut admin_loop) = client(
        &server,
        "ops",
        &token("ops", Role::Admin, Duration::from_secs(600)),
    );
    admin.subscribe("#", QoS::AtLeastOnce).await.expect("sub");
    until(&mut admin_loop, |i| {
        matches!(i, Incoming::SubAck(_)).then_some(())
    })
    .await;
    admin
        .publish("users/alice/inbox", QoS::AtLeastOnce, false, "from ops")
        .await
        .expect("publish");
    // The admin's event loop sends the publish; its `#` sees the message too
    // (beside the server's presence of alice and ops).
    let seen = until(&mut admin_loop, |i| match i {
        Incoming::Publish(p) if !p.topic.starts_with("presence/") => Some(p.topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(seen, "users/alice/inbox");
    let got = until(&mut alice_loop, |i| match i {
        Incoming::Publish(p) => Some(p.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"from ops");

    let metrics = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("imqtt_mqtt_connections 2"), "{metrics}");
    assert!(metrics.contains("imqtt_mqtt_subscriptions 2"), "{metrics}");
    assert!(
        metrics.contains("imqtt_mqtt_packets_received_total{type=\"subscribe\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn token_signed_with_another_secret_is_refused_and_counted() {
    let server = Server::start().await;
    let foreign = broker::auth::TokenVerifier::new(&broker::auth::AuthConfig {
        jwt_secret: broker::auth::Secret::new("some-other-secret-0123456789abcdef0123456"),
        ..broker::auth::AuthConfig::default()
    })
    .expect("verifier")
    .mint("mallory", Role::Admin, Duration::from_secs(600))
    .expect("mint");
    let (_c, mut el) = client(&server, "mallory", &foreign);
    let err = timeout(WAIT, el.poll())
        .await
        .expect("answer")
        .expect_err("refused");
    assert!(err.to_string().contains("NotAuthorized"), "{err}");
    let metrics = reqwest::get(format!("{}/metrics", server.http_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains("imqtt_mqtt_connects_refused_total{reason=\"not_authorized\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_tells_mqtt_5_clients_the_server_is_shutting_down() {
    let mut server = Server::start().await;
    let addr = server.addr("mqtt.tcp");
    let mut o = rumqttc::v5::MqttOptions::new("laptop", addr.ip().to_string(), addr.port());
    o.set_credentials(
        "quinn",
        token("quinn", Role::User, Duration::from_secs(600)),
    );
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    loop {
        if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(_)) =
            timeout(WAIT, el.poll())
                .await
                .expect("in time")
                .expect("connects")
        {
            break;
        }
    }
    let stop = tokio::spawn(async move {
        let status = server.terminate().await;
        (status, server)
    });
    let told = loop {
        match timeout(WAIT, el.poll()).await.expect("told in time") {
            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Disconnect(d))) => {
                break format!("{:?}", d.reason_code);
            }
            Ok(_) => {}
            Err(e) => break format!("{e:?}"),
        }
    };
    assert!(told.contains("ServerShuttingDown"), "{told}");
    let (status, server) = stop.await.expect("join");
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

/// A v5 client of `uid` whose events (`Incoming` only) come on a channel.
fn v5_client(
    server: &Server,
    uid: &str,
    client_id: &str,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Incoming, String>>,
) {
    let addr = server.addr("mqtt.tcp");
    let mut o = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(uid, token(uid, Role::User, Duration::from_secs(600)));
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let got = match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(i)) => Ok(i),
                Ok(_) => continue,
                Err(e) => Err(format!("{e:?}")),
            };
            let failed = got.is_err();
            if tx.send(got).is_err() || failed {
                return;
            }
        }
    });
    (client, rx)
}

/// The next incoming packet matching `want`, within `WAIT`.
async fn next_v5<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Incoming, String>>,
    mut want: impl FnMut(&Result<rumqttc::v5::Incoming, String>) -> Option<T>,
) -> T {
    loop {
        let got = timeout(WAIT, rx.recv())
            .await
            .expect("in time")
            .expect("client running");
        if let Some(t) = want(&got) {
            return t;
        }
    }
}

fn publish_on(got: &Result<rumqttc::v5::Incoming, String>) -> Option<(String, serde_json::Value)> {
    match got {
        Ok(rumqttc::v5::Incoming::Publish(p)) => Some((
            String::from_utf8_lossy(&p.topic).into_owned(),
            serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn an_outbox_send_is_stored_delivered_and_acked_and_its_result_is_an_event() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let server = Server::start().await;
    let (bob, mut bob_rx) = v5_client(&server, "bob", "bob-phone");
    bob.subscribe("users/bob/inbox", Q5::AtLeastOnce)
        .await
        .expect("sub");
    next_v5(&mut bob_rx, |g| {
        matches!(g, Ok(rumqttc::v5::Incoming::SubAck(_))).then_some(())
    })
    .await;
    // Alice's other device watches her whole tree.
    let (watch, mut watch_rx) = v5_client(&server, "alice", "alice-laptop");
    watch
        .subscribe("users/alice/#", Q5::AtLeastOnce)
        .await
        .expect("sub");
    next_v5(&mut watch_rx, |g| {
        matches!(g, Ok(rumqttc::v5::Incoming::SubAck(_))).then_some(())
    })
    .await;

    let (phone, mut phone_rx) = v5_client(&server, "alice", "alice-phone");
    let send = r#"{"to":"bob","body":{"text":"hi"},"client_msg_id":"m1"}"#;
    phone
        .publish("users/alice/outbox", Q5::AtLeastOnce, false, send)
        .await
        .expect("queue");
    let acked = next_v5(&mut phone_rx, |g| match g {
        Ok(rumqttc::v5::Incoming::PubAck(a)) => Some(format!("{:?}", a.reason)),
        Err(e) => Some(e.clone()),
        _ => None,
    })
    .await;
    assert_eq!(acked, "Success");

    let (topic, envelope) = next_v5(&mut bob_rx, publish_on).await;
    assert_eq!(topic, "users/bob/inbox");
    assert_eq!(envelope["body"]["text"], "hi");
    assert_eq!(envelope["seq"], 1);
    assert_eq!(envelope["conv"], "dm:alice:bob");

    // The other device: the echo on the inbox and the `sent` event, never the
    // outbox publish itself.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(next_v5(&mut watch_rx, publish_on).await);
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen[0].0, "users/alice/events");
    assert_eq!(seen[0].1["type"], "sent");
    assert_eq!(seen[0].1["client_msg_id"], "m1");
    assert_eq!(seen[0].1["seq"], 1);
    assert_eq!(seen[0].1["id"], envelope["id"]);
    assert_eq!(seen[1].0, "users/alice/inbox");
    assert_eq!(seen[1].1["id"], envelope["id"]);

    // Stored: bob syncs it over HTTP.
    let sync: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/sync", server.http_url()))
        .bearer_auth(token("bob", Role::User, Duration::from_secs(600)))
        .send()
        .await
        .expect("sync")
        .json()
        .await
        .expect("json");
    assert_eq!(
        sync["conversations"][0]["messages"][0]["id"],
        envelope["id"]
    );
}

#[tokio::test]
async fn a_malformed_outbox_send_is_refused_with_its_reason_and_an_error_event() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let server = Server::start().await;
    let (events, mut events_rx) = v5_client(&server, "alice", "alice-laptop");
    events
        .subscribe("users/alice/events", Q5::AtLeastOnce)
        .await
        .expect("sub");
    next_v5(&mut events_rx, |g| {
        matches!(g, Ok(rumqttc::v5::Incoming::SubAck(_))).then_some(())
    })
    .await;
    for bad in [
        r#"not json"#,
        r#"{"to":"bad id","body":1,"client_msg_id":"x1"}"#,
    ] {
        // A fresh client each round: rumqttc drops its state on a refused ack.
        let (phone, mut phone_rx) = v5_client(&server, "alice", "alice-phone");
        phone
            .publish("users/alice/outbox", Q5::AtLeastOnce, false, bad)
            .await
            .expect("queue");
        // rumqttc surfaces a refused PUBACK as an error carrying the reason.
        let answer = next_v5(&mut phone_rx, |g| match g {
            Ok(rumqttc::v5::Incoming::PubAck(a)) => Some(format!("{:?}", a.reason)),
            Err(e) => Some(e.clone()),
            _ => None,
        })
        .await;
        assert!(answer.contains("PayloadFormatInvalid"), "{answer}");
        let (_, event) = next_v5(&mut events_rx, publish_on).await;
        assert_eq!(event["type"], "error");
        assert_eq!(event["error"]["code"], "bad_request");
        if bad.contains("x1") {
            assert_eq!(event["client_msg_id"], "x1");
        }
    }
}

#[tokio::test]
async fn retained_messages_survive_a_restart_but_presence_does_not() {
    let mut server = Server::start().await;
    let admin = token("ops", Role::Admin, Duration::from_secs(600));
    let (ops, mut el) = client(&server, "ops", &admin);
    for (topic, payload) in [
        ("news/today", "hello"),
        ("presence/alice", "online"),
        ("news/gone", "soon cleared"),
        ("news/gone", ""),
    ] {
        ops.publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }
    for _ in 0..4 {
        until(&mut el, |i| matches!(i, Incoming::PubAck(_)).then_some(())).await;
    }
    drop(el);
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let (_, dir) = server.stopped().await;
    let server = imqtt_tests::Launch::spawn_in(dir, "", &[])
        .into_server()
        .await;

    let (ops, mut el) = client(&server, "ops", &admin);
    ops.subscribe("news/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    ops.subscribe("presence/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    // The server's own presence of the connected ops is live, not restored.
    let live = |p: &rumqttc::Publish| p.topic == "presence/ops";
    let p = until(&mut el, |i| match i {
        Incoming::Publish(p) if !live(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("news/today", &b"hello"[..])
    );
    assert!(p.retain);
    // Nothing else: the cleared topic stays cleared, presence starts over.
    let more = timeout(Duration::from_millis(700), async {
        loop {
            if let Ok(Event::Incoming(Incoming::Publish(p))) = el.poll().await
                && !live(&p)
            {
                return p;
            }
        }
    })
    .await;
    assert!(more.is_err(), "unexpected retained message: {more:?}");
}
