//! The broker end to end: the real broker on an ephemeral port, real rumqttc v4 and
//! v5 clients and raw sockets. The broker runs in-process so that tests can also
//! drive the `BrokerHandle` the bridge uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::auth::Role;
use broker::{DisconnectReason, EventKind, QoS};
use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;
use common::{SECRET, TestBroker, WAIT, start, start_with, token};

struct V4 {
    client: rumqttc::AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<rumqttc::Incoming, String>>,
}

fn v4_options(
    addr: SocketAddr,
    uid: &str,
    client_id: &str,
    password: &str,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(uid, password);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

async fn v4_connect(opts: rumqttc::MqttOptions) -> V4 {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(i)) => {
                    if tx.send(Ok(i)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    V4 { client, rx }
}

impl V4 {
    async fn next(&mut self) -> Result<rumqttc::Incoming, String> {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("something arrives in time")
            .unwrap_or_else(|| Err("event loop ended".into()))
    }

    /// Waits for CONNACK; returns its code and session-present flag.
    async fn connack(&mut self) -> Result<(v4::ConnectReturnCode, bool), String> {
        loop {
            match self.next().await? {
                rumqttc::Incoming::ConnAck(c) => return Ok((c.code, c.session_present)),
                _ => continue,
            }
        }
    }

    async fn next_publish(&mut self) -> v4::Publish {
        loop {
            match self.next().await {
                Ok(rumqttc::Incoming::Publish(p)) => return p,
                Ok(_) => continue,
                Err(e) => panic!("connection ended before a publish: {e}"),
            }
        }
    }

    async fn suback(&mut self) -> Vec<v4::SubscribeReasonCode> {
        loop {
            match self.next().await {
                Ok(rumqttc::Incoming::SubAck(s)) => return s.return_codes,
                Ok(_) => continue,
                Err(e) => panic!("connection ended before SUBACK: {e}"),
            }
        }
    }

    /// Asserts that nothing but pings arrive for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(rumqttc::Incoming::PingResp))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

async fn user(b: &TestBroker, uid: &str) -> V4 {
    let mut c = v4_connect(v4_options(
        b.addr(),
        uid,
        &format!("{uid}-phone"),
        &token(uid, Role::User),
    ))
    .await;
    assert_eq!(
        c.connack().await.expect("connack").0,
        v4::ConnectReturnCode::Success
    );
    c
}

async fn subscribed(b: &TestBroker, uid: &str, filter: &str, qos: rumqttc::QoS) -> V4 {
    let mut c = user(b, uid).await;
    c.client.subscribe(filter, qos).await.expect("subscribe");
    assert_eq!(
        c.suback().await,
        vec![v4::SubscribeReasonCode::Success(qos)]
    );
    c
}

#[tokio::test]
async fn every_bad_credential_is_refused_with_not_authorized() {
    let b = start().await;
    let expired = {
        let claims = serde_json::json!({"sub": "alice", "exp": broker::auth::unix_now() - 3600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    };
    let cases: Vec<(&str, String)> = vec![
        ("alice", "not-a-jwt".into()),
        ("alice", expired),
        ("alice", token("bob", Role::User)),
        ("alice", token("alice", Role::User).replace('.', "x")),
        ("bad/uid", token("alice", Role::User)),
    ];
    for (uid, password) in cases {
        let mut c = v4_connect(v4_options(b.addr(), uid, "dev", &password)).await;
        let err = c.connack().await.expect_err("refused");
        assert!(err.contains("NotAuthorized"), "{uid} {password}: {err}");
    }
    // No credentials at all.
    let opts = rumqttc::MqttOptions::new("dev", b.addr().ip().to_string(), b.addr().port());
    let err = v4_connect(opts).await.connack().await.expect_err("refused");
    assert!(err.contains("NotAuthorized"), "{err}");

    // MQTT 5 gets 0x87.
    let mut o = rumqttc::v5::MqttOptions::new("dev", b.addr().ip().to_string(), b.addr().port());
    o.set_credentials("alice", "garbage");
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let err = timeout(WAIT, el.poll())
        .await
        .expect("answer")
        .expect_err("refused");
    assert!(err.to_string().contains("NotAuthorized"), "{err}");
    // None of them reached the hub.
    assert!(b.handle.connected_clients("alice").is_empty());
}

#[tokio::test]
async fn two_users_with_one_client_id_both_stay_connected() {
    let b = start().await;
    let mut alice = v4_connect(v4_options(
        b.addr(),
        "alice",
        "same-id",
        &token("alice", Role::User),
    ))
    .await;
    alice.connack().await.expect("alice connects");
    let mut bob = v4_connect(v4_options(
        b.addr(),
        "bob",
        "same-id",
        &token("bob", Role::User),
    ))
    .await;
    bob.connack().await.expect("bob connects");
    for (c, uid) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        c.client
            .subscribe(format!("users/{uid}/inbox"), rumqttc::QoS::AtLeastOnce)
            .await
            .expect("sub");
        assert_eq!(c.suback().await.len(), 1, "{uid} still served");
    }
    b.handle
        .publish(
            "users/alice/inbox",
            Bytes::from_static(b"a"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    b.handle
        .publish(
            "users/bob/inbox",
            Bytes::from_static(b"b"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    assert_eq!(&alice.next_publish().await.payload[..], b"a");
    assert_eq!(&bob.next_publish().await.payload[..], b"b");
}

#[tokio::test]
async fn same_user_same_client_id_takes_the_session_over() {
    let b = start().await;
    let mut events = b.handle.events();
    // v5 first connection, to see DISCONNECT 0x8E.
    let mut o = rumqttc::v5::MqttOptions::new("phone", b.addr().ip().to_string(), b.addr().port());
    o.set_credentials("alice", token("alice", Role::User));
    let (_old, mut old_loop) = rumqttc::v5::AsyncClient::new(o, 10);
    loop {
        if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(_)) =
            timeout(WAIT, old_loop.poll())
                .await
                .expect("in time")
                .expect("connects")
        {
            break;
        }
    }
    let mut new = v4_connect(v4_options(
        b.addr(),
        "alice",
        "phone",
        &token("alice", Role::User),
    ))
    .await;
    new.connack().await.expect("takeover accepted");
    let reason = loop {
        match timeout(WAIT, old_loop.poll())
            .await
            .expect("old connection told")
        {
            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Disconnect(d))) => {
                break Some(format!("{:?}", d.reason_code));
            }
            Ok(_) => continue,
            // rumqttc surfaces a server DISCONNECT as an error carrying the reason.
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("SessionTakenOver")),
        "{reason:?}"
    );
    // Exactly: the old generation connected, the new one connected, the old one
    // taken over; nothing later for the old one once its socket is gone.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = timeout(WAIT, events.recv())
            .await
            .expect("event")
            .expect("open");
        seen.push(e);
    }
    let (old, new_gen) = (seen[0].generation, seen[1].generation);
    assert_ne!(old, new_gen);
    let kinds: Vec<_> = seen
        .iter()
        .map(|e| (e.generation, e.kind, e.connections))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (old, EventKind::Connected, 1),
            (new_gen, EventKind::Connected, 2),
            (old, EventKind::Disconnected(DisconnectReason::TakenOver), 1),
        ]
    );
    assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    drop(old_loop);
    assert!(
        timeout(Duration::from_millis(1500), events.recv())
            .await
            .is_err(),
        "no second Disconnected for the old generation"
    );
    assert_eq!(b.handle.connections("alice"), 1);
    assert_eq!(
        b.handle.connected_clients("alice"),
        vec!["phone".to_owned()]
    );
}

#[tokio::test]
async fn acl_refuses_foreign_and_wildcard_filters_and_keeps_the_connection() {
    let b = start().await;
    let mut alice = user(&b, "alice").await;
    for filter in [
        "users/bob/inbox",
        "#",
        "users/+/inbox",
        "$SYS/#",
        "$share/g/users/x/inbox",
        "groups/g1",
        "presence/bob",
    ] {
        alice
            .client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("send");
        assert_eq!(
            alice.suback().await,
            vec![v4::SubscribeReasonCode::Failure],
            "{filter}"
        );
    }
    // Still connected, and allowed filters still work.
    alice
        .client
        .subscribe("users/alice/#", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("send");
    assert_eq!(
        alice.suback().await,
        vec![v4::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]
    );
    b.handle
        .publish(
            "users/bob/inbox",
            Bytes::from_static(b"secret"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    b.handle
        .publish(
            "users/alice/events",
            Bytes::from_static(b"mine"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    assert_eq!(&alice.next_publish().await.payload[..], b"mine");
}

#[tokio::test]
async fn forbidden_publish_closes_a_v4_connection() {
    let b = start().await;
    let mut alice = user(&b, "alice").await;
    let mut bob = subscribed(&b, "bob", "users/bob/inbox", rumqttc::QoS::AtLeastOnce).await;
    alice
        .client
        .publish("users/bob/inbox", rumqttc::QoS::AtLeastOnce, false, "spoof")
        .await
        .expect("send");
    loop {
        match alice.next().await {
            Err(_) => break,
            Ok(rumqttc::Incoming::PubAck(_)) => panic!("forbidden publish acknowledged"),
            Ok(_) => {}
        }
    }
    bob.quiet_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn forbidden_publish_gets_puback_0x87_on_v5_and_the_connection_stays() {
    let b = start().await;
    // The IM side accepts everything on the outbox.
    let mut uplink = b.handle.uplink().expect("uplink");
    tokio::spawn(async move {
        while let Some(m) = uplink.recv().await {
            m.answer.accept();
        }
    });
    let mut o = rumqttc::v5::MqttOptions::new("phone", b.addr().ip().to_string(), b.addr().port());
    o.set_credentials("alice", token("alice", Role::User));
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    client
        .publish(
            "users/bob/inbox",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "spoof",
        )
        .await
        .expect("send");
    client
        .publish(
            "users/alice/outbox",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .expect("send");
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        match timeout(WAIT, el.poll()).await.expect("in time") {
            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(a))) => {
                reasons.push(a.reason)
            }
            Ok(_) => {}
            // rumqttc reports a refused PUBACK as an error but keeps the connection.
            Err(e) => reasons.push_err(e.to_string()),
        }
    }
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    assert!(
        reasons.contains(&PubAckReason::NotAuthorized)
            || reasons.contains(&PubAckReason::UnspecifiedError),
        "{reasons:?}"
    );
    assert!(reasons.contains(&PubAckReason::Success), "{reasons:?}");
}

trait PushErr {
    fn push_err(&mut self, e: String);
}

impl PushErr for Vec<rumqttc::v5::mqttbytes::v5::PubAckReason> {
    fn push_err(&mut self, e: String) {
        assert!(
            e.contains("NotAuthorized") || e.contains("135"),
            "unexpected error {e}"
        );
        self.push(rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized);
    }
}

#[tokio::test]
async fn handle_publishes_at_qos_0_1_2_to_v4_subscribers() {
    let b = start().await;
    for (qos, wire) in [
        (QoS::AtMostOnce, rumqttc::QoS::AtMostOnce),
        (QoS::AtLeastOnce, rumqttc::QoS::AtLeastOnce),
        (QoS::ExactlyOnce, rumqttc::QoS::ExactlyOnce),
    ] {
        let uid = format!("q{}", qos as u8);
        let mut c = subscribed(
            &b,
            &uid,
            &format!("users/{uid}/inbox"),
            rumqttc::QoS::ExactlyOnce,
        )
        .await;
        b.handle
            .publish(
                &format!("users/{uid}/inbox"),
                Bytes::from_static(b"m"),
                qos,
                false,
            )
            .expect("pub");
        let p = c.next_publish().await;
        assert_eq!((p.qos, &p.payload[..]), (wire, &b"m"[..]));
    }
}

#[tokio::test]
async fn handle_publishes_to_v5_subscribers() {
    let b = start().await;
    let mut o = rumqttc::v5::MqttOptions::new("tab", b.addr().ip().to_string(), b.addr().port());
    o.set_credentials("carol", token("carol", Role::User));
    let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    client
        .subscribe(
            "users/carol/inbox",
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        )
        .await
        .expect("sub");
    loop {
        if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_)) =
            timeout(WAIT, el.poll())
                .await
                .expect("in time")
                .expect("ok")
        {
            break;
        }
    }
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        b.handle
            .publish(
                "users/carol/inbox",
                Bytes::from(vec![qos as u8]),
                qos,
                false,
            )
            .expect("pub");
        let p = loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) =
                timeout(WAIT, el.poll())
                    .await
                    .expect("in time")
                    .expect("ok")
            {
                break p;
            }
        };
        assert_eq!((p.qos, p.payload[0]), (qos, qos as u8));
    }
}

#[tokio::test]
async fn persistent_session_gets_what_arrived_while_offline() {
    let b = start().await;
    let mut opts = v4_options(b.addr(), "dave", "laptop", &token("dave", Role::User));
    opts.set_clean_session(false);
    let mut c = v4_connect(opts.clone()).await;
    assert_eq!(
        c.connack().await.expect("connack"),
        (v4::ConnectReturnCode::Success, false)
    );
    c.client
        .subscribe("users/dave/inbox", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    c.suback().await;
    c.client.disconnect().await.expect("disconnect");
    while c.next().await.is_ok() {}

    for i in 0..3u8 {
        b.handle
            .publish(
                "users/dave/inbox",
                Bytes::from(vec![i]),
                QoS::AtLeastOnce,
                false,
            )
            .expect("pub");
    }
    let mut c = v4_connect(opts).await;
    assert_eq!(
        c.connack().await.expect("connack"),
        (v4::ConnectReturnCode::Success, true)
    );
    for i in 0..3u8 {
        assert_eq!(c.next_publish().await.payload[..], [i]);
    }
}

/// Says yes to the first `grants` group questions, no after: a membership
/// revoked between the broker's check and its insert of the subscription.
struct RevokedAfter {
    grants: std::sync::atomic::AtomicUsize,
}

impl broker::Authorizer for RevokedAfter {
    fn is_group_member(&self, _uid: &str, _gid: &str) -> bool {
        self.grants
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
    }
    fn can_see_presence(&self, _watcher: &str, _uid: &str) -> bool {
        false
    }
}

#[tokio::test]
async fn a_group_subscription_revoked_while_it_is_made_is_refused_and_receives_nothing() {
    let revoked = Arc::new(RevokedAfter {
        grants: std::sync::atomic::AtomicUsize::new(1),
    });
    let b = common::start_authorized(revoked.clone()).await;
    let mut dora = user(&b, "dora").await;
    dora.client
        .subscribe("groups/g1", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("send");
    assert_eq!(dora.suback().await, vec![v4::SubscribeReasonCode::Failure]);
    b.handle
        .publish(
            "groups/g1",
            Bytes::from_static(b"members only"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    dora.quiet_for(Duration::from_millis(300)).await;
    // A grant that holds: subscribed, and it delivers.
    revoked.grants.store(2, std::sync::atomic::Ordering::SeqCst);
    dora.client
        .subscribe("groups/g1", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("send");
    assert_eq!(
        dora.suback().await,
        vec![v4::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]
    );
    b.handle
        .publish(
            "groups/g1",
            Bytes::from_static(b"welcome"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    assert_eq!(&dora.next_publish().await.payload[..], b"welcome");
}

#[tokio::test]
async fn server_side_unsubscribe_stops_delivery() {
    let b = start().await;
    let mut c = subscribed(&b, "erin", "users/erin/inbox", rumqttc::QoS::AtLeastOnce).await;
    assert_eq!(b.handle.unsubscribe_user("erin", "users/erin/inbox"), 1);
    b.handle
        .publish(
            "users/erin/inbox",
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    c.quiet_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn disconnect_user_closes_every_session_of_that_user() {
    let b = start().await;
    let mut one = user(&b, "frank").await;
    let mut two = v4_connect(v4_options(
        b.addr(),
        "frank",
        "tablet",
        &token("frank", Role::User),
    ))
    .await;
    two.connack().await.expect("second device");
    let mut other = user(&b, "gina").await;
    assert_eq!(b.handle.disconnect_user("frank"), 2);
    assert!(one.next().await.is_err());
    assert!(two.next().await.is_err());
    other
        .client
        .subscribe("users/gina/inbox", rumqttc::QoS::AtMostOnce)
        .await
        .expect("sub");
    assert_eq!(other.suback().await.len(), 1);
}

#[tokio::test]
async fn retained_message_reaches_new_and_wildcard_subscribers() {
    let b = start().await;
    b.handle
        .publish(
            "presence/alice",
            Bytes::from_static(b"online"),
            QoS::AtLeastOnce,
            true,
        )
        .expect("pub");
    let mut c = subscribed(&b, "alice", "presence/alice", rumqttc::QoS::AtLeastOnce).await;
    let p = c.next_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"online");
    // An admin's wildcard subscription finds it too.
    let mut admin = v4_connect(v4_options(
        b.addr(),
        "ops",
        "console",
        &token("ops", Role::Admin),
    ))
    .await;
    admin.connack().await.expect("admin");
    admin
        .client
        .subscribe("presence/+", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    admin.suback().await;
    assert_eq!(admin.next_publish().await.topic, "presence/alice");
}

fn connect_bytes(
    uid: &str,
    client_id: &str,
    keep_alive: u16,
    will: Option<(&str, &str)>,
) -> BytesMut {
    let mut c = v4::Connect::new(client_id);
    c.keep_alive = keep_alive;
    c.set_login(uid, token(uid, Role::User));
    if let Some((topic, payload)) = will {
        c.last_will = Some(v4::LastWill::new(
            topic,
            payload,
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
    }
    let mut buf = BytesMut::new();
    c.write(&mut buf).expect("encode");
    buf
}

async fn raw_connect(b: &TestBroker, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(b.addr()).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut ack = [0u8; 4];
    timeout(WAIT, s.read_exact(&mut ack))
        .await
        .expect("connack in time")
        .expect("read");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    s
}

#[tokio::test]
async fn will_is_sent_on_abnormal_close_but_not_after_disconnect() {
    let b = start_with(|c| {
        c.acl.push(broker::config::AclRule {
            pattern: "lastwords/#".into(),
            access: broker::config::Access::All,
            users: vec![],
        })
    })
    .await;
    let mut watcher = subscribed(&b, "watcher", "lastwords/#", rumqttc::QoS::AtLeastOnce).await;

    let s = raw_connect(
        &b,
        &connect_bytes("henry", "h1", 60, Some(("lastwords/henry", "gone"))),
    )
    .await;
    drop(s); // socket closed without DISCONNECT
    let p = watcher.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("lastwords/henry", &b"gone"[..])
    );

    let mut s = raw_connect(
        &b,
        &connect_bytes("ivy", "i1", 60, Some(("lastwords/ivy", "gone"))),
    )
    .await;
    s.write_all(&[0xE0, 0x00]).await.expect("DISCONNECT");
    drop(s);
    watcher.quiet_for(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn will_topic_must_pass_the_publish_rule() {
    let b = start().await;
    let mut s = TcpStream::connect(b.addr()).await.expect("connect");
    s.write_all(&connect_bytes(
        "jack",
        "j1",
        60,
        Some(("users/bob/inbox", "x")),
    ))
    .await
    .expect("write");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.expect("connack");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x05]);
}

#[tokio::test]
async fn silent_client_is_dropped_after_one_and_a_half_keepalives() {
    let b = start().await;
    let mut events = b.handle.events();
    let mut s = raw_connect(&b, &connect_bytes("kim", "k1", 1, None)).await;
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a packet on 3.1.1");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    loop {
        let e = timeout(WAIT, events.recv())
            .await
            .expect("event")
            .expect("open");
        if let EventKind::Disconnected(r) = e.kind {
            assert_eq!(r, DisconnectReason::KeepaliveTimeout);
            break;
        }
    }
}

#[tokio::test]
async fn garbage_and_oversized_packets_close_only_their_own_socket() {
    let b = start_with(|c| c.max_packet_size = broker::units::ByteSize(1024)).await;
    let mut good = subscribed(&b, "lena", "users/lena/inbox", rumqttc::QoS::AtLeastOnce).await;

    let mut garbage = TcpStream::connect(b.addr()).await.expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n\xff\xff\xff\xff\xff")
        .await
        .expect("write");
    let mut buf = [0u8; 8];
    assert_eq!(
        timeout(WAIT, garbage.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0),
        0
    );

    let mut big = raw_connect(&b, &connect_bytes("mo", "m1", 60, None)).await;
    let mut publish = BytesMut::new();
    publish.put_u8(0x30);
    // Remaining length 2 MiB, far over the 1 KiB limit.
    publish.put_slice(&[0x80, 0x80, 0x80, 0x01]);
    big.write_all(&publish).await.expect("write header");
    assert_eq!(
        timeout(WAIT, big.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0),
        0
    );

    b.handle
        .publish(
            "users/lena/inbox",
            Bytes::from_static(b"still here"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("pub");
    assert_eq!(&good.next_publish().await.payload[..], b"still here");
}

#[tokio::test]
async fn connection_limit_answers_server_unavailable() {
    let b = start_with(|c| c.max_connections = 2).await;
    let _a = user(&b, "n1").await;
    let _b = user(&b, "n2").await;
    let mut c = v4_connect(v4_options(b.addr(), "n3", "d", &token("n3", Role::User))).await;
    let err = c.connack().await.expect_err("refused");
    assert!(err.contains("ServiceUnavailable"), "{err}");
    // MQTT 5 gets 0x88 Server unavailable.
    let mut o = rumqttc::v5::MqttOptions::new("d5", b.addr().ip().to_string(), b.addr().port());
    o.set_credentials("n4", token("n4", Role::User));
    let (_c5, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let err = timeout(WAIT, el.poll())
        .await
        .expect("answer")
        .expect_err("refused");
    assert!(err.to_string().contains("ServerUnavailable"), "{err}");
}

#[tokio::test]
async fn a_thousand_connections_each_receive_one_publish() {
    let b = start().await;
    let mut clients = Vec::new();
    for i in 0..1000 {
        let uid = format!("p{i}");
        let mut s = raw_connect(&b, &connect_bytes(&uid, "d", 60, None)).await;
        let mut sub = BytesMut::new();
        v4::Subscribe::new(format!("users/{uid}/inbox"), rumqttc::QoS::AtLeastOnce)
            .write(&mut sub)
            .expect("encode");
        s.write_all(&sub).await.expect("subscribe");
        let mut suback = [0u8; 5];
        s.read_exact(&mut suback).await.expect("suback");
        assert_eq!(suback[4], 1, "granted QoS 1");
        clients.push((uid, s));
    }
    for (uid, _) in &clients {
        b.handle
            .publish(
                &format!("users/{uid}/inbox"),
                Bytes::from(uid.clone()),
                QoS::AtLeastOnce,
                false,
            )
            .expect("pub");
    }
    for (uid, s) in &mut clients {
        let mut buf = BytesMut::with_capacity(64);
        let p = loop {
            timeout(WAIT, s.read_buf(&mut buf))
                .await
                .expect("publish in time")
                .expect("read");
            if let Ok(v4::Packet::Publish(p)) = v4::Packet::read(&mut buf, 1 << 20) {
                break p;
            }
        };
        assert_eq!(p.payload, uid.as_bytes());
    }
}

#[tokio::test]
async fn packets_sent_together_with_connect_are_not_left_waiting() {
    let b = start().await;
    let mut bytes = connect_bytes("olga", "o1", 60, None);
    v4::Subscribe::new("users/olga/inbox", rumqttc::QoS::AtLeastOnce)
        .write(&mut bytes)
        .expect("encode");
    let mut s = TcpStream::connect(b.addr()).await.expect("connect");
    s.write_all(&bytes).await.expect("write");
    let mut reply = [0u8; 9];
    timeout(WAIT, s.read_exact(&mut reply))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&reply[..4], &[0x20, 0x02, 0x00, 0x00], "CONNACK");
    assert_eq!(reply[4], 0x90, "SUBACK follows without another write");
}

#[tokio::test]
async fn retained_message_published_while_offline_reaches_the_resumed_session() {
    let b = start().await;
    let mut opts = v4_options(b.addr(), "pat", "pat-phone", &token("pat", Role::User));
    opts.set_clean_session(false);
    let mut c = v4_connect(opts.clone()).await;
    c.connack().await.expect("connack");
    c.client
        .subscribe("presence/pat", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    c.suback().await;
    c.client.disconnect().await.expect("disconnect");
    while c.next().await.is_ok() {}

    b.handle
        .publish(
            "presence/pat",
            Bytes::from_static(b"{\"status\":\"online\"}"),
            QoS::AtLeastOnce,
            true,
        )
        .expect("pub");
    let mut back = v4_connect(opts).await;
    assert_eq!(
        back.connack().await.expect("connack"),
        (v4::ConnectReturnCode::Success, true)
    );
    assert_eq!(
        &back.next_publish().await.payload[..],
        b"{\"status\":\"online\"}"
    );
    // Subscribing again (as apps do after reconnecting) also yields the retained copy.
    back.client
        .subscribe("presence/pat", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    back.suback().await;
    let again = back.next_publish().await;
    assert!(again.retain);
}

/// A broker where every user may publish and subscribe under `relay/`.
async fn relay_broker() -> TestBroker {
    start_with(|c| {
        c.acl.push(broker::config::AclRule {
            pattern: "relay/#".into(),
            access: broker::config::Access::All,
            users: vec![],
        })
    })
    .await
}

/// Publishes `0..n` (big-endian payloads) at QoS 1 on `relay/x` as fast as the
/// broker lets a rumqttc client, in the background.
async fn relay_publisher(b: &TestBroker, n: u32) {
    let mut publisher = user(b, "source").await;
    let client = publisher.client.clone();
    tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    "relay/x",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await
                .expect("queue publish");
        }
    });
    tokio::spawn(async move { while publisher.next().await.is_ok() {} });
}

/// Expects `0..n` in order on `sub`.
async fn expect_relayed(sub: &mut V4, n: u32) {
    for i in 0..n {
        let p = timeout(Duration::from_secs(20), sub.next_publish())
            .await
            .unwrap_or_else(|_| panic!("message {i} never arrived"));
        assert_eq!(p.payload[..], i.to_be_bytes(), "in order, none lost");
    }
}

#[tokio::test]
async fn a_fast_publisher_does_not_overrun_an_online_subscriber() {
    // More messages than a session queue holds (mqtt.max_queued = 1000): the
    // publisher is paused instead of the subscriber losing messages.
    const N: u32 = 5000;
    let b = relay_broker().await;
    let mut sub = subscribed(&b, "sink", "relay/x", rumqttc::QoS::AtLeastOnce).await;
    relay_publisher(&b, N).await;
    expect_relayed(&mut sub, N).await;
}

#[tokio::test]
async fn session_limit_refuses_new_sessions_but_not_resumed_ones() {
    let b = start_with(|c| c.max_sessions = 1).await;
    let mut first = v4_options(b.addr(), "ned", "ned-phone", &token("ned", Role::User));
    first.set_clean_session(false);
    let mut c = v4_connect(first.clone()).await;
    c.connack().await.expect("first session");
    let mut other = v4_connect(v4_options(
        b.addr(),
        "ola",
        "ola-phone",
        &token("ola", Role::User),
    ))
    .await;
    let err = other.connack().await.expect_err("over mqtt.max_sessions");
    assert!(err.contains("ServiceUnavailable"), "{err}");
    // The existing session can still be taken over and resumed.
    let mut again = v4_connect(first).await;
    assert_eq!(
        again.connack().await.expect("resumed"),
        (v4::ConnectReturnCode::Success, true)
    );
}

#[tokio::test]
async fn persistent_3_1_1_sessions_expire_after_mqtt_session_expiry() {
    let b = start_with(|c| c.session_expiry = broker::units::Duration::secs(1)).await;
    let mut opts = v4_options(b.addr(), "pia", "pia-phone", &token("pia", Role::User));
    opts.set_clean_session(false);
    let mut c = v4_connect(opts.clone()).await;
    c.connack().await.expect("connack");
    c.client.disconnect().await.expect("disconnect");
    while c.next().await.is_ok() {}
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut back = v4_connect(opts).await;
    assert_eq!(
        back.connack().await.expect("connack"),
        (v4::ConnectReturnCode::Success, false)
    );
}

#[tokio::test]
async fn stalled_subscribers_neither_block_the_publisher_nor_the_others() {
    const N: u32 = 3000;
    let b = relay_broker().await;
    // Two clients subscribe, then never read again: their queues fill and drop.
    let mut stalled = Vec::new();
    for uid in ["stuck1", "stuck2"] {
        stalled.push(stalled_subscriber(&b, uid, "relay/x").await);
    }

    let mut healthy = subscribed(&b, "fine", "relay/x", rumqttc::QoS::AtLeastOnce).await;
    relay_publisher(&b, N).await;
    let started = tokio::time::Instant::now();
    expect_relayed(&mut healthy, N).await;
    // One bounded pause per stalled client at most, not one per message.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// A client that subscribes to `filter` at QoS 1 and then never reads again.
async fn stalled_subscriber(b: &TestBroker, uid: &str, filter: &str) -> TcpStream {
    let mut s = raw_connect(b, &connect_bytes(uid, "s1", 0, None)).await;
    let mut sub = BytesMut::new();
    v4::Subscribe::new(filter, rumqttc::QoS::AtLeastOnce)
        .write(&mut sub)
        .expect("encode");
    s.write_all(&sub).await.expect("subscribe");
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.expect("suback");
    s
}

#[tokio::test]
async fn a_fan_out_publisher_is_not_throttled_by_twenty_stalled_subscribers() {
    // The reported scenario, scaled to a test: 20 subscribers stop reading, 10
    // read; one publisher sends 1 KB QoS 1 messages round robin to all 30 inboxes.
    // Each stalled queue overflows (max_queued = 100), so each stalled inbox
    // congests; waiting up to a second for each of them cost 20 s and more.
    const STALLED: usize = 20;
    const HEALTHY: usize = 10;
    const PER_INBOX: u32 = 300;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = std::sync::Arc::new(broker::BrokerMetrics::register(&mut registry));
    let b = common::start_counted(|c| c.max_queued = 100, metrics).await;
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let uid = format!("stuck{i}");
        stalled.push(stalled_subscriber(&b, &uid, &format!("users/{uid}/inbox")).await);
    }
    let mut healthy = Vec::new();
    for i in 0..HEALTHY {
        let uid = format!("fine{i}");
        let filter = format!("users/{uid}/inbox");
        healthy.push(subscribed(&b, &uid, &filter, rumqttc::QoS::AtLeastOnce).await);
    }
    let mut publisher = v4_connect(v4_options(
        b.addr(),
        "ops",
        "fanout",
        &token("ops", Role::Admin),
    ))
    .await;
    publisher.connack().await.expect("publisher");
    let client = publisher.client.clone();
    let inboxes: Vec<String> = (0..STALLED)
        .map(|i| format!("users/stuck{i}/inbox"))
        .chain((0..HEALTHY).map(|i| format!("users/fine{i}/inbox")))
        .collect();
    let started = tokio::time::Instant::now();
    tokio::spawn(async move {
        for n in 0..PER_INBOX {
            for topic in &inboxes {
                let mut payload = vec![0u8; 1024];
                payload[..4].copy_from_slice(&n.to_be_bytes());
                client
                    .publish(topic.as_str(), rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("queue publish");
            }
        }
    });
    tokio::spawn(async move { while publisher.next().await.is_ok() {} });
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                for n in 0..PER_INBOX {
                    let p = timeout(Duration::from_secs(30), sub.next_publish())
                        .await
                        .unwrap_or_else(|_| panic!("message {n} never arrived"));
                    assert_eq!(p.payload[..4], n.to_be_bytes(), "in order, none lost");
                }
            })
        })
        .collect();
    for r in readers {
        r.await.expect("every healthy subscriber gets everything");
    }
    let took = started.elapsed();
    // The publisher's pauses are bounded in total (100 ms per subscriber that
    // stalls while waited for), not a second per stalled subscriber.
    assert!(
        took < Duration::from_secs(10),
        "healthy subscribers waited {took:?}"
    );
    // The stalled ones paid: their queues dropped, counted.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let drops: f64 = text
        .lines()
        .find(|l| l.starts_with("mqtt_queue_drops_total{qos=\"1_2\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in {text}"));
    assert!(drops > 0.0, "stalled queues overflowed: {drops}");
    drop(stalled);
}

#[tokio::test]
async fn a_burst_to_an_idle_subscriber_is_paced_not_dropped() {
    // An idle subscriber is not a stalled one: a burst far larger than its queue
    // (mqtt.max_queued = 50), written in one go by a raw publisher, must pause the
    // publisher rather than drop the subscriber's oldest messages.
    const N: u32 = 3000;
    let b = start_with(|c| {
        c.max_queued = 50;
        c.acl.push(broker::config::AclRule {
            pattern: "relay/#".into(),
            access: broker::config::Access::All,
            users: vec![],
        })
    })
    .await;
    let mut sub = subscribed(&b, "sink", "relay/x", rumqttc::QoS::AtLeastOnce).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut burst = BytesMut::new();
    for i in 0..N {
        let mut p = v4::Publish::new(
            "relay/x",
            rumqttc::QoS::AtLeastOnce,
            i.to_be_bytes().to_vec(),
        );
        p.pkid = u16::try_from(i % 60_000 + 1).expect("pkid");
        p.write(&mut burst).expect("encode");
    }
    let mut publisher = raw_connect(&b, &connect_bytes("source", "src", 0, None)).await;
    let (mut rd, mut wr) = publisher.split();
    let write = async {
        wr.write_all(&burst).await.expect("burst");
        // Keep reading PUBACKs so that the publisher side never blocks.
        std::future::pending::<()>().await;
    };
    let read_acks = async {
        let mut sink = [0u8; 4096];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let relayed = expect_relayed(&mut sub, N);
    tokio::select! {
        () = relayed => {}
        () = write => {}
        () = read_acks => panic!("publisher closed"),
    }
}
