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
    // The admin's event loop sends the publish; its `#` sees the message too.
    let seen = until(&mut admin_loop, |i| match i {
        Incoming::Publish(p) => Some(p.topic.clone()),
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

#[tokio::test]
async fn the_outbox_is_refused_until_the_im_side_consumes_it_and_routed_to_nobody() {
    let server = Server::start().await;
    let addr = server.addr("mqtt.tcp");
    // The owner watches its whole tree: the outbox must not come back to it.
    let (watcher, mut watcher_loop) = client(
        &server,
        "alice",
        &token("alice", Role::User, Duration::from_secs(600)),
    );
    watcher
        .subscribe("users/alice/#", QoS::AtLeastOnce)
        .await
        .expect("sub");
    until(&mut watcher_loop, |i| {
        matches!(i, Incoming::SubAck(_)).then_some(())
    })
    .await;

    let mut o = rumqttc::v5::MqttOptions::new("phone", addr.ip().to_string(), addr.port());
    o.set_credentials(
        "alice",
        token("alice", Role::User, Duration::from_secs(600)),
    );
    let (phone, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    phone
        .publish(
            "users/alice/outbox",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"to":"bob","body":{"text":"hi"}}"#,
        )
        .await
        .expect("queue");
    let answer = loop {
        match timeout(WAIT, el.poll()).await.expect("answered in time") {
            Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::PubAck(a))) => {
                break format!("{:?}", a.reason);
            }
            Ok(_) => {}
            // rumqttc reports a refused PUBACK as an error carrying the reason.
            Err(e) => break format!("{e:?}"),
        }
    };
    assert!(answer.contains("NotAuthorized"), "{answer}");
    // Nothing reached the subscriber of users/alice/#.
    let echoed = timeout(Duration::from_millis(500), async {
        loop {
            if let Ok(Event::Incoming(Incoming::Publish(p))) = watcher_loop.poll().await {
                return p;
            }
        }
    })
    .await;
    assert!(echoed.is_err(), "the outbox was routed: {echoed:?}");
}
