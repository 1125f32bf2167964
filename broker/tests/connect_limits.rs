//! What a CONNECT may be: bounded before login (a socket that has not finished
//! CONNECT holds at most 64 KiB), and strict on MQTT 5 (a forbidden property value,
//! a duplicated property, an Authentication Method are refused with their reason
//! codes). Raw bytes on a real socket to the in-process broker.

use std::sync::Arc;
use std::time::Duration;

use broker::BrokerMetrics;
use broker::auth::Role;
use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{self, ConnAck, ConnectReturnCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

mod common;
use common::{TestBroker, WAIT, start, start_counted, token};

/// "At once": far below `mqtt.connect_timeout` (10 s by default).
const AT_ONCE: Duration = Duration::from_secs(2);

const SESSION_EXPIRY: u8 = 0x11;
const AUTH_METHOD: u8 = 0x15;
const RECEIVE_MAXIMUM: u8 = 0x21;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// Connect flags: user name, password, clean start.
const LOGIN: u8 = 0x80 | 0x40 | 0x02;

fn var_int(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u16::try_from(s.len()).expect("short").to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A CONNECT at `level` for `uid` with a valid token, `flags` as its connect
/// flags and, on v5, `props` as its raw property list.
fn connect_at(level: u8, uid: &str, flags: u8, props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60];
    if level == 5 {
        var_int(&mut body, props.len());
        body.extend_from_slice(props);
    }
    string(&mut body, &format!("{uid}-phone"));
    if flags & 0x80 != 0 {
        string(&mut body, uid);
    }
    if flags & 0x40 != 0 {
        string(&mut body, &token(uid, Role::User));
    }
    let mut frame = vec![0x10];
    var_int(&mut frame, body.len());
    frame.extend_from_slice(&body);
    frame
}

fn v5_connect(uid: &str, props: &[u8]) -> Vec<u8> {
    connect_at(5, uid, LOGIN, props)
}

/// The start of a CONNECT at `level` whose fixed header announces `len` bytes.
fn announcing(level: u8, len: usize) -> Vec<u8> {
    let mut bytes = vec![0x10];
    var_int(&mut bytes, len);
    bytes.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', level]);
    bytes
}

async fn send(b: &TestBroker, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(b.addr()).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    s
}

/// Reads the v5 CONNACK.
async fn connack(s: &mut TcpStream) -> ConnAck {
    let mut buf = BytesMut::new();
    loop {
        if let Ok(p) = v5::Packet::read(&mut buf.clone(), None) {
            match p {
                v5::Packet::ConnAck(c) => return c,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        let n = timeout(WAIT, s.read_buf(&mut buf))
            .await
            .expect("CONNACK in time")
            .expect("read");
        assert!(n > 0, "closed before a whole CONNACK: {buf:?}");
    }
}

/// The server closes the socket within `within`, sending nothing (more).
async fn closed(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    match timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("expected a close, got {:?}", &buf[..n]),
        Err(_) => panic!("not closed within {within:?}"),
    }
}

/// A CONNECT that the server answers with `code` and a close.
async fn refused_with(b: &TestBroker, bytes: &[u8], code: ConnectReturnCode) {
    let mut s = send(b, bytes).await;
    let ack = connack(&mut s).await;
    assert_eq!(ack.code, code);
    closed(&mut s, WAIT).await;
}

/// A CONNECT that the server accepts; the connection then answers PINGREQ.
async fn accepted(b: &TestBroker, bytes: &[u8]) {
    let mut s = send(b, bytes).await;
    let ack = connack(&mut s).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    s.write_all(&[0xC0, 0x00]).await.expect("PINGREQ");
    let mut pong = [0u8; 2];
    timeout(WAIT, s.read_exact(&mut pong))
        .await
        .expect("PINGRESP in time")
        .expect("read");
    assert_eq!(pong, [0xD0, 0x00]);
}

#[tokio::test]
async fn connect_announcing_a_mebibyte_is_refused_from_its_header() {
    let b = start().await;
    // MQTT 5: CONNACK 0x95 Packet Too Large, without waiting for the body.
    let mut s = send(&b, &announcing(5, 1 << 20)).await;
    let ack = timeout(AT_ONCE, connack(&mut s))
        .await
        .expect("answered at once");
    assert_eq!(ack.code, ConnectReturnCode::PacketTooLarge);
    closed(&mut s, AT_ONCE).await;
    // MQTT 3.1.1 has no code for it: closed at once.
    let mut s = send(&b, &announcing(4, 1 << 20)).await;
    closed(&mut s, AT_ONCE).await;
    // Only the fixed header: the level is unknown, so closed without a word.
    let mut s = send(&b, &[0x10, 0x80, 0x80, 0x40]).await;
    closed(&mut s, AT_ONCE).await;
}

#[tokio::test]
async fn connect_over_the_bound_is_refused_even_below_max_packet_size() {
    let b = start().await;
    let mut s = send(&b, &announcing(5, 64 * 1024 + 1)).await;
    assert_eq!(
        timeout(AT_ONCE, connack(&mut s))
            .await
            .expect("at once")
            .code,
        ConnectReturnCode::PacketTooLarge
    );
}

#[tokio::test]
async fn many_unfinished_connects_leave_the_server_serving() {
    let b = start().await;
    // Each announces 60 KiB, under the bound, and sends a quarter of it.
    let mut partial = announcing(4, 60 * 1024);
    partial.resize(15 * 1024, 0);
    let mut hanging = Vec::new();
    for _ in 0..400 {
        hanging.push(send(&b, &partial).await);
    }
    accepted(&b, &v5_connect("ann", &[])).await;
    let mut s = send(&b, &connect_at(4, "bea", LOGIN, &[])).await;
    let mut ack = [0u8; 4];
    timeout(WAIT, s.read_exact(&mut ack))
        .await
        .expect("CONNACK in time")
        .expect("read");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    drop(hanging);
}

#[tokio::test]
async fn receive_maximum_or_maximum_packet_size_zero_is_a_protocol_error() {
    let b = start().await;
    let zero_rm = [RECEIVE_MAXIMUM, 0, 0];
    refused_with(
        &b,
        &v5_connect("cal", &zero_rm),
        ConnectReturnCode::ProtocolError,
    )
    .await;
    let zero_mps = [MAXIMUM_PACKET_SIZE, 0, 0, 0, 0];
    refused_with(
        &b,
        &v5_connect("cal", &zero_mps),
        ConnectReturnCode::ProtocolError,
    )
    .await;
    // Topic Alias Maximum 0 is allowed (it means none).
    accepted(&b, &v5_connect("cal", &[0x22, 0, 0])).await;
}

#[tokio::test]
async fn a_duplicated_property_is_a_protocol_error_but_user_properties_repeat() {
    let b = start().await;
    let twice = [SESSION_EXPIRY, 0, 0, 0, 60, SESSION_EXPIRY, 0, 0, 0, 0];
    refused_with(
        &b,
        &v5_connect("dan", &twice),
        ConnectReturnCode::ProtocolError,
    )
    .await;
    let users = [
        USER_PROPERTY,
        0,
        1,
        b'k',
        0,
        1,
        b'v',
        USER_PROPERTY,
        0,
        1,
        b'k',
        0,
        1,
        b'w',
    ];
    accepted(&b, &v5_connect("dan", &users)).await;
}

#[tokio::test]
async fn a_valid_v5_connect_with_properties_is_accepted() {
    let b = start().await;
    let props = [
        &[SESSION_EXPIRY, 0, 0, 0, 60][..],
        &[RECEIVE_MAXIMUM, 0, 10],
        &[MAXIMUM_PACKET_SIZE, 0, 1, 0, 0],
        &[0x22, 0, 4],
        &[0x17, 1],
    ]
    .concat();
    accepted(&b, &v5_connect("eve", &props)).await;
}

#[tokio::test]
async fn enhanced_authentication_is_refused_as_a_bad_method() {
    let b = start().await;
    let scram = [AUTH_METHOD, 0, 5, b'S', b'C', b'R', b'A', b'M'];
    refused_with(
        &b,
        &v5_connect("fay", &scram),
        ConnectReturnCode::BadAuthenticationMethod,
    )
    .await;
}

#[tokio::test]
async fn bad_connect_flags_are_refused() {
    let b = start().await;
    // MQTT 5: the reserved flag is a Malformed Packet, a will QoS or retain
    // without a will a Protocol Error, an unknown property Malformed.
    refused_with(
        &b,
        &connect_at(5, "gil", LOGIN | 0x01, &[]),
        ConnectReturnCode::MalformedPacket,
    )
    .await;
    refused_with(
        &b,
        &connect_at(5, "gil", LOGIN | 0x20, &[]),
        ConnectReturnCode::ProtocolError,
    )
    .await;
    refused_with(
        &b,
        &v5_connect("gil", &[0x23, 0, 1]),
        ConnectReturnCode::MalformedPacket,
    )
    .await;
    // MQTT 3.1.1 closes: reserved flag, will retain without a will, and a
    // password without a user name [MQTT-3.1.2-22].
    for flags in [LOGIN | 0x01, LOGIN | 0x20, 0x40 | 0x02] {
        let mut s = send(&b, &connect_at(4, "gil", flags, &[])).await;
        closed(&mut s, WAIT).await;
    }
}

#[tokio::test]
async fn refused_connects_are_counted_as_protocol_refusals() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(BrokerMetrics::register(&mut registry));
    let b = start_counted(|_| {}, metrics).await;
    let refusals = [
        v5_connect("hal", &[RECEIVE_MAXIMUM, 0, 0]),
        announcing(5, 1 << 20),
        connect_at(4, "hal", 0x40 | 0x02, &[]),
    ];
    for bytes in &refusals {
        let mut s = send(&b, bytes).await;
        closed_after_any_connack(&mut s).await;
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let line = text
        .lines()
        .find(|l| l.contains("connects_refused_total{reason=\"protocol\"}"))
        .unwrap_or_else(|| panic!("no protocol refusals in {text}"));
    assert!(line.ends_with(" 3"), "{line}");
}

/// Reads to the close, whatever comes before it.
async fn closed_after_any_connack(s: &mut TcpStream) {
    let mut sink = Vec::new();
    timeout(WAIT, s.read_to_end(&mut sink))
        .await
        .expect("closed in time")
        .ok();
}
