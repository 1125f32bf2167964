//! MQTT 5 behaviour through a real rumqttc v5 client: Assigned Client Identifier,
//! Receive Maximum, Topic Alias, Message Expiry, Will Delay, Session Expiry.

use std::time::Duration;

use broker::QoS;
use broker::auth::Role;
use broker::config::{Access, AclRule};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use tokio::sync::mpsc;
use tokio::time::timeout;

mod common;
use common::{TestBroker, WAIT};

async fn start() -> TestBroker {
    common::start_with(|c| {
        c.acl = vec![AclRule {
            pattern: "t/#".into(),
            access: Access::All,
            users: vec![],
        }]
    })
    .await
}

fn token(uid: &str) -> String {
    common::token(uid, Role::User)
}

fn token_with(uid: &str, role: Role) -> String {
    common::token(uid, role)
}

fn options(b: &TestBroker, uid: &str, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, b.addr().ip().to_string(), b.addr().port());
    o.set_credentials(uid, token(uid));
    o
}

struct V5 {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

fn connect(opts: MqttOptions) -> V5 {
    let (client, mut el) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(Ok(p)).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    V5 { client, rx }
}

impl V5 {
    async fn next(&mut self) -> Result<Incoming, String> {
        timeout(WAIT, self.rx.recv())
            .await
            .expect("something arrives")
            .unwrap_or_else(|| Err("ended".into()))
    }

    async fn until<T>(&mut self, mut want: impl FnMut(&Incoming) -> Option<T>) -> T {
        loop {
            let p = self
                .next()
                .await
                .unwrap_or_else(|e| panic!("connection ended: {e}"));
            if let Some(t) = want(&p) {
                return t;
            }
        }
    }

    async fn connack(&mut self) -> rumqttc::v5::mqttbytes::v5::ConnAck {
        self.until(|p| match p {
            Incoming::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    async fn publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        self.until(|p| match p {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        self.until(|p| matches!(p, Incoming::SubAck(_)).then_some(()))
            .await;
    }

    async fn quiet_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Incoming::PingResp(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_one() {
    let b = start().await;
    let mut c = connect(options(&b, "ann", ""));
    let assigned = c
        .connack()
        .await
        .properties
        .and_then(|pr| pr.assigned_client_identifier);
    let id = assigned.expect("Assigned Client Identifier");
    assert!(!id.is_empty());
    assert_eq!(b.handle.connected_clients("ann"), vec![id]);
    // A client that chose its id gets none back.
    let mut named = connect(options(&b, "ann", "ann-phone"));
    let none = named
        .connack()
        .await
        .properties
        .and_then(|pr| pr.assigned_client_identifier);
    assert_eq!(none, None);
}

#[tokio::test]
async fn receive_maximum_holds_back_messages_until_acked() {
    let b = start().await;
    let mut o = options(&b, "ben", "ben-phone");
    o.set_receive_maximum(Some(1));
    o.set_manual_acks(true);
    let mut c = connect(o);
    c.subscribe("users/ben/inbox").await;
    for i in 0..3u8 {
        b.handle
            .publish(
                "users/ben/inbox",
                Bytes::from(vec![i]),
                QoS::AtLeastOnce,
                false,
            )
            .expect("publish");
    }
    let first = c.publish().await;
    assert_eq!(first.payload[..], [0]);
    c.quiet_for(Duration::from_millis(300)).await;
    c.client.ack(&first).await.expect("ack");
    let second = c.publish().await;
    assert_eq!(second.payload[..], [1]);
    c.client.ack(&second).await.expect("ack");
    assert_eq!(c.publish().await.payload[..], [2]);
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    let b = start().await;
    let mut sub = connect(options(&b, "cat", "cat-sub"));
    sub.subscribe("t/alias").await;
    let mut publisher = connect(options(&b, "dan", "dan-pub"));
    publisher.connack().await;
    let with_alias = |alias| PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: Some(alias),
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: None,
    };
    publisher
        .client
        .publish_with_properties("t/alias", QoS::AtLeastOnce, false, "one", with_alias(1))
        .await
        .expect("publish");
    publisher
        .client
        .publish_with_properties("", QoS::AtLeastOnce, false, "two", with_alias(1))
        .await
        .expect("publish");
    for want in ["one", "two"] {
        let p = sub.publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            (&b"t/alias"[..], want.as_bytes())
        );
    }
}

#[tokio::test]
async fn expired_messages_are_not_delivered_to_a_returning_session() {
    let b = start().await;
    let mut o = options(&b, "eve", "eve-phone");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut c = connect(o.clone());
    c.subscribe("t/news").await;
    c.client.disconnect().await.expect("disconnect");
    while c.rx.recv().await.is_some() {}

    let mut publisher = connect(options(&b, "fay", "fay-pub"));
    publisher.connack().await;
    let expiring = PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: Some(1),
        topic_alias: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: None,
    };
    publisher
        .client
        .publish_with_properties("t/news", QoS::AtLeastOnce, false, "stale", expiring)
        .await
        .expect("publish");
    publisher
        .client
        .publish("t/news", QoS::AtLeastOnce, false, "fresh")
        .await
        .expect("publish");
    publisher
        .until(|p| matches!(p, Incoming::PubAck(_)).then_some(()))
        .await;
    publisher
        .until(|p| matches!(p, Incoming::PubAck(_)).then_some(()))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut back = connect(o);
    let present = back.connack().await.session_present;
    assert!(present, "session kept for its expiry interval");
    assert_eq!(&back.publish().await.payload[..], b"fresh");
}

fn will(delay: u32) -> LastWill {
    LastWill::new(
        "t/will",
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

async fn raw_v5_connect_then_drop(
    b: &TestBroker,
    uid: &str,
    client_id: &str,
    delay: u32,
    expiry: u32,
) {
    // A rumqttc client whose socket simply goes away: abort its event loop task.
    let mut o = options(b, uid, client_id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(expiry));
    o.set_last_will(will(delay));
    let (_client, mut el) = AsyncClient::new(o, 10);
    loop {
        if let Ok(Event::Incoming(Incoming::ConnAck(_))) =
            timeout(WAIT, el.poll()).await.expect("in time")
        {
            break;
        }
    }
    drop(el); // closes the socket without DISCONNECT
}

#[tokio::test]
async fn will_delay_holds_the_will_and_a_quick_return_cancels_it() {
    let b = start().await;
    let mut watcher = connect(options(&b, "gus", "gus-watch"));
    watcher.subscribe("t/will").await;

    // Returns within the delay: no will.
    raw_v5_connect_then_drop(&b, "hal", "hal-phone", 2, 30).await;
    let mut o = options(&b, "hal", "hal-phone");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(30));
    let mut back = connect(o);
    back.connack().await;
    watcher.quiet_for(Duration::from_millis(2500)).await;

    // Stays away: the will comes after the delay, not before.
    raw_v5_connect_then_drop(&b, "ida", "ida-phone", 1, 30).await;
    let started = tokio::time::Instant::now();
    let p = watcher.publish().await;
    assert_eq!(&p.payload[..], b"gone");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_session_ending_before_the_will_delay_sends_the_will_then() {
    // MQTT 5 §3.1.3.2.2: the will waits for the delay or the end of the session,
    // whichever comes first (here the session expires after 1 s, the delay is 30 s).
    let b = start().await;
    let mut watcher = connect(options(&b, "gus", "gus-watch"));
    watcher.subscribe("t/will").await;
    raw_v5_connect_then_drop(&b, "joe", "joe-phone", 30, 1).await;
    let started = tokio::time::Instant::now();
    let p = watcher.publish().await;
    assert_eq!(&p.payload[..], b"gone");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}

fn admin(b: &TestBroker, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, b.addr().ip().to_string(), b.addr().port());
    o.set_credentials("ops", token_with("ops", Role::Admin));
    o
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let b = start().await;
    let mut w1 = connect(admin(&b, "worker-1"));
    w1.subscribe("$share/workers/jobs/+").await;
    let mut w2 = connect(admin(&b, "worker-2"));
    w2.subscribe("$share/workers/jobs/+").await;
    for i in 0..10u8 {
        b.handle
            .publish("jobs/x", Bytes::from(vec![i]), QoS::AtLeastOnce, false)
            .expect("publish");
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        tokio::select! {
            p = w1.publish() => got.push((1, p.payload[0])),
            p = w2.publish() => got.push((2, p.payload[0])),
        }
    }
    let mut payloads: Vec<u8> = got.iter().map(|(_, p)| *p).collect();
    payloads.sort_unstable();
    assert_eq!(
        payloads,
        (0..10).collect::<Vec<u8>>(),
        "each message exactly once"
    );
    assert!(
        got.iter().any(|(w, _)| *w == 1) && got.iter().any(|(w, _)| *w == 2),
        "{got:?}"
    );
    w1.quiet_for(Duration::from_millis(200)).await;
    w2.quiet_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn shared_subscriptions_are_refused_to_ordinary_users() {
    let b = start().await;
    let mut c = connect(options(&b, "joe", "joe-phone"));
    c.client
        .subscribe("$share/g/users/joe/inbox", QoS::AtLeastOnce)
        .await
        .expect("send");
    let codes = c
        .until(|p| match p {
            Incoming::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized]
    );
}

#[tokio::test]
async fn overlapping_subscriptions_carry_every_subscription_identifier() {
    let b = start().await;
    let mut c = connect(admin(&b, "ids"));
    for (filter, id) in [("t/a", 2), ("t/#", 3)] {
        let props = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        c.client
            .subscribe_with_properties(filter, QoS::AtLeastOnce, props)
            .await
            .expect("subscribe");
        c.until(|p| matches!(p, Incoming::SubAck(_)).then_some(()))
            .await;
    }
    b.handle
        .publish("t/a", Bytes::from_static(b"x"), QoS::AtLeastOnce, false)
        .expect("publish");
    let p = c.publish().await;
    let mut ids = p.properties.expect("properties").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![2, 3]);
    c.quiet_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn server_uses_topic_aliases_when_the_client_accepts_them() {
    let b = start().await;
    let mut o = options(&b, "kay", "kay-phone");
    o.set_topic_alias_max(Some(2));
    let mut c = connect(o);
    c.subscribe("users/kay/#").await;
    for topic in ["users/kay/inbox", "users/kay/inbox", "users/kay/events"] {
        b.handle
            .publish(topic, Bytes::from_static(b"m"), QoS::AtLeastOnce, false)
            .expect("publish");
    }
    let first = c.publish().await;
    let second = c.publish().await;
    let third = c.publish().await;
    let alias = |p: &rumqttc::v5::mqttbytes::v5::Publish| {
        p.properties.as_ref().and_then(|pr| pr.topic_alias)
    };
    assert_eq!(
        (&first.topic[..], alias(&first)),
        (&b"users/kay/inbox"[..], Some(1))
    );
    assert_eq!((&second.topic[..], alias(&second)), (&b""[..], Some(1)));
    assert_eq!(
        (&third.topic[..], alias(&third)),
        (&b"users/kay/events"[..], Some(2))
    );
}

#[tokio::test]
async fn messages_over_the_clients_maximum_packet_size_are_not_sent() {
    let b = start().await;
    let mut o = options(&b, "lou", "lou-phone");
    o.set_max_packet_size(Some(200));
    let mut c = connect(o);
    c.subscribe("users/lou/inbox").await;
    b.handle
        .publish(
            "users/lou/inbox",
            Bytes::from(vec![b'x'; 500]),
            QoS::AtLeastOnce,
            false,
        )
        .expect("publish");
    b.handle
        .publish(
            "users/lou/inbox",
            Bytes::from_static(b"small"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("publish");
    assert_eq!(&c.publish().await.payload[..], b"small");
}

#[tokio::test]
async fn a_session_ends_when_its_expiry_interval_runs_out() {
    let b = start().await;
    let mut o = options(&b, "max", "max-phone");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    let mut c = connect(o.clone());
    c.subscribe("users/max/inbox").await;
    c.client.disconnect().await.expect("disconnect");
    while c.rx.recv().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut back = connect(o);
    let present = back.connack().await.session_present;
    assert!(!present, "expired session is gone");
    // And its subscription went with it.
    b.handle
        .publish(
            "users/max/inbox",
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("publish");
    back.quiet_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn server_keep_alive_caps_mqtt_5_clients_only() {
    let b = common::start_with(|c| c.max_keepalive = 30).await;
    let mut o = options(&b, "rae", "rae-phone");
    o.set_keep_alive(Duration::from_secs(120));
    let mut c = connect(o);
    let told = c
        .connack()
        .await
        .properties
        .and_then(|pr| pr.server_keep_alive);
    assert_eq!(told, Some(30));
}

#[tokio::test]
async fn subscriptions_per_session_are_bounded() {
    let b = common::start_with(|c| c.max_subscriptions = 2).await;
    let mut c = connect(options(&b, "sam", "sam-phone"));
    let mut codes = Vec::new();
    for filter in [
        "users/sam/inbox",
        "users/sam/events",
        "users/sam/inbox",
        "users/sam/x",
    ] {
        c.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("send");
        codes.push(
            c.until(|p| match p {
                Incoming::SubAck(s) => Some(s.return_codes[0]),
                _ => None,
            })
            .await,
        );
    }
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as Code;
    assert_eq!(
        codes,
        vec![
            Code::Success(QoS::AtLeastOnce),
            Code::Success(QoS::AtLeastOnce),
            Code::Success(QoS::AtLeastOnce),
            Code::QuotaExceeded
        ],
        "re-subscribing an existing filter is not a new one"
    );
}
