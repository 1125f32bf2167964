//! The outbox uplink (DESIGN.md §3): publishes on `users/{uid}/outbox` reach the
//! IM side's consumer and nobody else, and are acknowledged only once the consumer
//! answers, in publish order, over raw MQTT 3.1.1 and 5.0 sockets.

use std::time::Duration;

use broker::auth::Role;
use broker::{PublishError, QoS, Refusal, Uplink, UplinkMessage};
use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{
    self, ConnectReturnCode, Filter, Login, PubAckReason, PubRecReason, Publish,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

mod common;
use common::{TestBroker, WAIT, start, token};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// An MQTT client on a raw socket, to see exactly which packets come and when.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
    v5: bool,
    next_pkid: u16,
}

/// What a read saw.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test's packets, one at a time
enum Got {
    V5(v5::Packet),
    V4(v4::Packet),
    Closed,
}

impl Raw {
    async fn connect(b: &TestBroker, uid: &str, client_id: &str, role: Role, v5: bool) -> Raw {
        let s = TcpStream::connect(b.addr()).await.expect("tcp");
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
            v5,
            next_pkid: 0,
        };
        let mut out = BytesMut::new();
        if v5 {
            let connect = v5::Connect {
                keep_alive: 60,
                client_id: client_id.into(),
                clean_start: true,
                properties: None,
            };
            v5::Packet::Connect(connect, None, Some(Login::new(uid, token(uid, role))))
                .write(&mut out, None)
                .expect("encode");
        } else {
            let mut connect = v4::Connect::new(client_id);
            connect.set_login(uid, token(uid, role));
            connect.write(&mut out).expect("encode");
        }
        raw.s.write_all(&out).await.expect("send CONNECT");
        match raw.recv().await {
            Got::V5(v5::Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::Success),
            Got::V4(v4::Packet::ConnAck(a)) => assert_eq!(a.code, v4::ConnectReturnCode::Success),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        raw
    }

    async fn send(&mut self, packet: v5::Packet) {
        let mut out = BytesMut::new();
        if self.v5 {
            packet.write(&mut out, None).expect("encode");
        } else {
            let p = match packet {
                v5::Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
                    dup: p.dup,
                    qos: v4_qos(p.qos),
                    retain: p.retain,
                    topic: String::from_utf8(p.topic.to_vec()).expect("utf-8"),
                    pkid: p.pkid,
                    payload: p.payload,
                }),
                v5::Packet::PubRel(r) => v4::Packet::PubRel(v4::PubRel { pkid: r.pkid }),
                v5::Packet::Subscribe(s) => {
                    let f = &s.filters[0];
                    let mut sub = v4::Subscribe::new(&f.path, v4_qos(f.qos));
                    sub.pkid = s.pkid;
                    v4::Packet::Subscribe(sub)
                }
                other => panic!("no v4 form for {other:?}"),
            };
            p.write(&mut out, usize::MAX).expect("encode");
        }
        self.s.write_all(&out).await.expect("send");
    }

    /// Publishes `payload` on `topic`; returns the packet id.
    async fn publish(&mut self, topic: &str, qos: QoS, payload: &str) -> u16 {
        self.next_pkid += 1;
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pkid
        };
        let mut p = Publish::new(topic, qos, Bytes::copy_from_slice(payload.as_bytes()), None);
        p.pkid = pkid;
        self.send(v5::Packet::Publish(p)).await;
        pkid
    }

    async fn subscribe(&mut self, filter: &str) {
        self.next_pkid += 1;
        let sub = v5::Subscribe {
            pkid: self.next_pkid,
            filters: vec![Filter::new(filter, QoS::AtLeastOnce)],
            properties: None,
        };
        self.send(v5::Packet::Subscribe(sub)).await;
        match self.recv().await {
            Got::V5(v5::Packet::SubAck(a)) => {
                assert!(matches!(
                    a.return_codes[0],
                    v5::SubscribeReasonCode::Success(_)
                ))
            }
            Got::V4(v4::Packet::SubAck(a)) => {
                assert!(matches!(
                    a.return_codes[0],
                    v4::SubscribeReasonCode::Success(_)
                ))
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next packet, or `Closed`; panics if nothing comes within `WAIT`.
    async fn recv(&mut self) -> Got {
        timeout(WAIT, self.read())
            .await
            .expect("a packet or the close in time")
    }

    /// Whether nothing arrives for `QUIET`.
    async fn quiet(&mut self) -> bool {
        match timeout(QUIET, self.read()).await {
            Err(_) => true,
            Ok(got) => {
                eprintln!("unexpected: {got:?}");
                false
            }
        }
    }

    async fn read(&mut self) -> Got {
        loop {
            if !self.buf.is_empty() {
                if self.v5 {
                    match v5::Packet::read(&mut self.buf, None) {
                        Ok(p) => return Got::V5(p),
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("bad packet from the server: {e}"),
                    }
                } else {
                    match v4::Packet::read(&mut self.buf, usize::MAX) {
                        Ok(p) => return Got::V4(p),
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                        Err(e) => panic!("bad packet from the server: {e}"),
                    }
                }
            }
            match self.s.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Got::Closed,
                Ok(_) => {}
            }
        }
    }

    /// The reason of the next PUBACK for `pkid` (v4: Success).
    async fn puback(&mut self, pkid: u16) -> PubAckReason {
        match self.recv().await {
            Got::V5(v5::Packet::PubAck(a)) if a.pkid == pkid => a.reason,
            Got::V4(v4::Packet::PubAck(a)) if a.pkid == pkid => PubAckReason::Success,
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        }
    }
}

fn v4_qos(q: QoS) -> rumqttc::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

/// The next uplinked message.
async fn next(uplink: &mut Uplink) -> UplinkMessage {
    timeout(WAIT, uplink.recv())
        .await
        .expect("uplinked in time")
        .expect("uplink open")
}

#[tokio::test]
async fn outbox_publishes_reach_the_consumer_and_no_subscriber() {
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("first take");
    assert!(b.handle.uplink().is_none(), "one consumer only");

    // Everyone who could match the outbox: its owner's own tree, an admin's `#`
    // and a shared subscription of an admin.
    let mut own = Raw::connect(&b, "alice", "tablet", Role::User, true).await;
    own.subscribe("users/alice/#").await;
    let mut admin = Raw::connect(&b, "ops", "console", Role::Admin, true).await;
    admin.subscribe("#").await;
    let mut worker = Raw::connect(&b, "ops", "worker", Role::Admin, true).await;
    worker.subscribe("$share/g/users/#").await;

    let mut phone = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    let pkid = phone
        .publish("users/alice/outbox", QoS::AtLeastOnce, r#"{"to":"bob"}"#)
        .await;
    let msg = next(&mut uplink).await;
    assert_eq!(msg.uid, "alice");
    assert_eq!(msg.client_id, "phone");
    assert_eq!(msg.qos, QoS::AtLeastOnce);
    assert_eq!(&msg.payload[..], br#"{"to":"bob"}"#);
    msg.answer.accept();
    assert_eq!(phone.puback(pkid).await, PubAckReason::Success);

    // The bridge cannot publish there either.
    assert!(
        b.handle
            .publish(
                "users/alice/outbox",
                Bytes::from_static(b"x"),
                QoS::AtMostOnce,
                true
            )
            .is_err()
    );
    assert!(own.quiet().await && admin.quiet().await && worker.quiet().await);

    // The subscriptions themselves work: a message next door reaches all three.
    b.handle
        .publish(
            "users/alice/inbox",
            Bytes::from_static(b"hi"),
            QoS::AtMostOnce,
            false,
        )
        .expect("publish");
    for c in [&mut own, &mut admin, &mut worker] {
        assert!(matches!(c.recv().await, Got::V5(v5::Packet::Publish(_))));
    }
}

#[tokio::test]
async fn an_outbox_publish_is_acked_only_after_its_answer_and_in_publish_order() {
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let mut phone = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    let first = phone
        .publish("users/alice/outbox", QoS::AtLeastOnce, "1")
        .await;
    let second = phone
        .publish("users/alice/outbox", QoS::AtLeastOnce, "2")
        .await;
    let m1 = next(&mut uplink).await;
    let m2 = next(&mut uplink).await;
    assert_eq!((&m1.payload[..], &m2.payload[..]), (&b"1"[..], &b"2"[..]));
    assert!(phone.quiet().await, "no ack before an answer");
    // The second is answered first: it still waits behind the first.
    m2.answer.accept();
    assert!(phone.quiet().await, "no ack overtakes an earlier one");
    m1.answer.accept();
    assert_eq!(phone.puback(first).await, PubAckReason::Success);
    assert_eq!(phone.puback(second).await, PubAckReason::Success);
}

#[tokio::test]
async fn a_refusal_is_a_reason_code_on_v5_and_a_plain_ack_on_v4() {
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let mut v5c = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    let pkid = v5c
        .publish("users/alice/outbox", QoS::AtLeastOnce, "not json")
        .await;
    next(&mut uplink)
        .await
        .answer
        .refuse(Refusal::PayloadFormatInvalid);
    assert_eq!(v5c.puback(pkid).await, PubAckReason::PayloadFormatInvalid);

    let mut v4c = Raw::connect(&b, "bob", "phone", Role::User, false).await;
    let pkid = v4c
        .publish("users/bob/outbox", QoS::AtLeastOnce, "not json")
        .await;
    next(&mut uplink)
        .await
        .answer
        .refuse(Refusal::NotAuthorized);
    assert_eq!(v4c.puback(pkid).await, PubAckReason::Success);
    // Both connections stay.
    let again = v4c
        .publish("users/bob/outbox", QoS::AtLeastOnce, "{}")
        .await;
    next(&mut uplink).await.answer.accept();
    assert_eq!(v4c.puback(again).await, PubAckReason::Success);
    let again = v5c
        .publish("users/alice/outbox", QoS::AtLeastOnce, "{}")
        .await;
    next(&mut uplink).await.answer.accept();
    assert_eq!(v5c.puback(again).await, PubAckReason::Success);
}

#[tokio::test]
async fn qos_2_on_the_outbox_is_uplinked_once_and_completed_after_the_answer() {
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let mut phone = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    let pkid = phone
        .publish("users/alice/outbox", QoS::ExactlyOnce, "{}")
        .await;
    let msg = next(&mut uplink).await;
    assert_eq!(msg.qos, QoS::ExactlyOnce);
    // A retransmission while the answer is pending is not uplinked again.
    let mut dup = Publish::new("users/alice/outbox", QoS::ExactlyOnce, "{}", None);
    dup.pkid = pkid;
    dup.dup = true;
    phone.send(v5::Packet::Publish(dup.clone())).await;
    assert!(phone.quiet().await);
    msg.answer.accept();
    match phone.recv().await {
        Got::V5(v5::Packet::PubRec(r)) => {
            assert_eq!((r.pkid, r.reason), (pkid, PubRecReason::Success))
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // And one after the PUBREC is acknowledged again without a second uplink.
    phone.send(v5::Packet::Publish(dup)).await;
    assert!(matches!(phone.recv().await, Got::V5(v5::Packet::PubRec(_))));
    phone
        .send(v5::Packet::PubRel(v5::PubRel::new(pkid, None)))
        .await;
    match phone.recv().await {
        Got::V5(v5::Packet::PubComp(c)) => {
            assert_eq!((c.pkid, c.reason), (pkid, v5::PubCompReason::Success))
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    assert!(
        timeout(QUIET, uplink.recv()).await.is_err(),
        "uplinked once"
    );
}

#[tokio::test]
async fn without_a_consumer_the_outbox_is_refused_like_a_forbidden_topic() {
    let b = start().await;
    let mut v5c = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    let pkid = v5c
        .publish("users/alice/outbox", QoS::AtLeastOnce, "{}")
        .await;
    assert_eq!(v5c.puback(pkid).await, PubAckReason::NotAuthorized);
    let mut v4c = Raw::connect(&b, "bob", "phone", Role::User, false).await;
    v4c.publish("users/bob/outbox", QoS::AtLeastOnce, "{}")
        .await;
    assert!(matches!(v4c.recv().await, Got::Closed));

    // Once the consumer is gone again, the same.
    drop(b.handle.uplink().expect("uplink"));
    let pkid = v5c
        .publish("users/alice/outbox", QoS::AtLeastOnce, "{}")
        .await;
    assert_eq!(v5c.puback(pkid).await, PubAckReason::NotAuthorized);
}

#[tokio::test]
async fn someone_elses_outbox_is_refused_even_to_an_admin() {
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let mut admin = Raw::connect(&b, "ops", "console", Role::Admin, true).await;
    let pkid = admin
        .publish("users/alice/outbox", QoS::AtLeastOnce, "{}")
        .await;
    assert_eq!(admin.puback(pkid).await, PubAckReason::NotAuthorized);
    assert!(timeout(QUIET, uplink.recv()).await.is_err());
}

#[tokio::test]
async fn an_outbox_whose_owner_is_not_a_valid_id_is_still_an_outbox() {
    // No user has the id "no body", so nobody may publish on its outbox, and
    // nothing published there is ever routed.
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let mut watcher = Raw::connect(&b, "ops", "console", Role::Admin, true).await;
    watcher.subscribe("#").await;
    let mut admin = Raw::connect(&b, "ops", "tool", Role::Admin, true).await;
    let pkid = admin
        .publish("users/no body/outbox", QoS::AtLeastOnce, "{}")
        .await;
    assert_eq!(admin.puback(pkid).await, PubAckReason::NotAuthorized);
    assert_eq!(
        b.handle.publish(
            "users/no body/outbox",
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            false
        ),
        Err(PublishError::Outbox("users/no body/outbox".into()))
    );
    assert!(watcher.quiet().await);
    assert!(timeout(QUIET, uplink.recv()).await.is_err());
}

#[tokio::test]
async fn a_dropped_answer_closes_the_connection_without_an_ack() {
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let mut phone = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    phone
        .publish("users/alice/outbox", QoS::AtLeastOnce, "{}")
        .await;
    drop(next(&mut uplink).await);
    match phone.recv().await {
        Got::V5(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::UnspecifiedError)
        }
        other => panic!("expected DISCONNECT and no PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_consumer_pauses_its_publisher_loses_nothing_and_blocks_no_one_else() {
    // More than the uplink queue holds (1,024), at QoS 0: nothing is dropped.
    const N: usize = 3000;
    let b = start().await;
    let mut uplink = b.handle.uplink().expect("uplink");
    let phone = Raw::connect(&b, "alice", "phone", Role::User, true).await;
    let mut out = BytesMut::new();
    for i in 0..N {
        let p = Publish::new("users/alice/outbox", QoS::AtMostOnce, i.to_string(), None);
        v5::Packet::Publish(p)
            .write(&mut out, None)
            .expect("encode");
    }
    // Written in the background: the broker stops reading it at some point.
    let (mut rd, mut wr) = phone.s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&out).await.expect("write");
        wr
    });
    let drain = tokio::spawn(async move {
        let mut sink = [0u8; 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    // Meanwhile another user is served as usual.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bob = Raw::connect(&b, "bob", "phone", Role::User, true).await;
    bob.subscribe("users/bob/inbox").await;
    b.handle
        .publish(
            "users/bob/inbox",
            Bytes::from_static(b"hi"),
            QoS::AtLeastOnce,
            false,
        )
        .expect("publish");
    assert!(matches!(bob.recv().await, Got::V5(v5::Packet::Publish(_))));

    // Now the consumer reads: every message, in order.
    for i in 0..N {
        let m = next(&mut uplink).await;
        assert_eq!(m.payload, i.to_string().into_bytes(), "message {i}");
    }
    let _wr = timeout(WAIT, writer)
        .await
        .expect("writer done")
        .expect("task");
    drain.abort();
}
