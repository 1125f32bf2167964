//! MQTT over WebSocket, TLS and secure WebSocket: the same broker, real handshakes,
//! raw MQTT 3.1.1 packets on top.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::QoS;
use broker::auth::Role;
use broker::units::ListenAddr;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod common;
use common::{TestBroker, WAIT, any_port, verifier};

struct Running {
    broker: TestBroker,
    _dir: tempfile::TempDir,
    cert_der: CertificateDer<'static>,
}

impl Running {
    fn addr(&self, name: &str) -> SocketAddr {
        self.broker.listener(name)
    }

    /// A TLS connection to listener `name`, trusting the test certificate.
    async fn tls_connect(&self, name: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr(name)).await.expect("tcp");
        self.client_tls()
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake")
    }

    fn client_tls(&self) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("root");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A broker with WebSocket, TLS and secure WebSocket listeners on a fresh
/// self-signed certificate.
async fn start() -> Running {
    let dir = tempfile::tempdir().expect("tmp");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).expect("write key");
    let broker = common::start_with(|c| {
        c.tcp = ListenAddr::default();
        c.ws = any_port();
        c.tls = any_port();
        c.wss = any_port();
        c.tls_cert = Some(cert_path);
        c.tls_key = Some(key_path);
    })
    .await;
    Running {
        broker,
        _dir: dir,
        cert_der: ck.cert.der().clone(),
    }
}

fn connect_and_subscribe(uid: &str) -> (BytesMut, BytesMut) {
    let token = verifier()
        .mint(uid, Role::User, Duration::from_secs(600))
        .expect("mint");
    let mut c = v4::Connect::new(format!("{uid}-dev"));
    c.set_login(uid, token);
    let mut connect = BytesMut::new();
    c.write(&mut connect).expect("encode");
    let mut sub = BytesMut::new();
    v4::Subscribe::new(format!("users/{uid}/inbox"), rumqttc::QoS::AtLeastOnce)
        .write(&mut sub)
        .expect("encode");
    (connect, sub)
}

/// Speaks MQTT 3.1.1 over any byte stream: CONNECT, SUBSCRIBE, then expects the
/// publish made through the handle.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, running: &Running, uid: &str) {
    let (connect, sub) = connect_and_subscribe(uid);
    s.write_all(&connect).await.expect("connect");
    s.write_all(&sub).await.expect("subscribe");
    s.flush().await.expect("flush");
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Ok(p) = v4::Packet::read(&mut buf, 1 << 20) {
            match p {
                v4::Packet::SubAck(_) => {
                    running
                        .broker
                        .handle
                        .publish(
                            &format!("users/{uid}/inbox"),
                            Bytes::from_static(b"hello"),
                            QoS::AtLeastOnce,
                            false,
                        )
                        .expect("publish");
                }
                v4::Packet::Publish(p) => {
                    assert_eq!(&p.payload[..], b"hello");
                    return;
                }
                other => seen.push(other),
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read_buf(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out; saw {seen:?}"))
            .expect("read");
        assert!(n > 0, "closed; saw {seen:?}");
    }
}

/// The WebSocket handshake a browser's MQTT client makes: `/mqtt`, subprotocol
/// `mqtt`, which the server must agree to.
async fn ws_connect<S>(stream: S) -> tokio_tungstenite::WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = "ws://localhost/mqtt"
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
    let (ws, resp) = timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    ws
}

/// A WebSocket client as a byte stream: every write is one binary message.
async fn ws_roundtrip<S>(stream: S, running: &Running, uid: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws = ws_connect(stream).await;
    let (connect, sub) = connect_and_subscribe(uid);
    // CONNECT and SUBSCRIBE in one message: packets need not align with messages.
    let mut both = connect.clone();
    both.extend_from_slice(&sub);
    ws.send(Message::Binary(both.freeze())).await.expect("send");
    let mut buf = BytesMut::new();
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        if let Message::Binary(b) = msg {
            buf.extend_from_slice(&b);
        }
        while let Ok(p) = v4::Packet::read(&mut buf, 1 << 20) {
            match p {
                v4::Packet::SubAck(_) => running
                    .broker
                    .handle
                    .publish(
                        &format!("users/{uid}/inbox"),
                        Bytes::from_static(b"hello"),
                        QoS::AtLeastOnce,
                        false,
                    )
                    .expect("publish"),
                v4::Packet::Publish(p) => {
                    assert_eq!(&p.payload[..], b"hello");
                    return;
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn websocket_client_is_served_on_slash_mqtt() {
    let running = start().await;
    let tcp = TcpStream::connect(running.addr("mqtt.ws"))
        .await
        .expect("tcp");
    ws_roundtrip(tcp, &running, "wsuser").await;
}

#[tokio::test]
async fn websocket_on_another_path_is_refused() {
    let running = start().await;
    let tcp = TcpStream::connect(running.addr("mqtt.ws"))
        .await
        .expect("tcp");
    let req = "ws://localhost/other"
        .into_client_request()
        .expect("request");
    let err = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn tls_client_is_served() {
    let running = start().await;
    let mut tls = running.tls_connect("mqtt.tls").await;
    exchange(&mut tls, &running, "tlsuser").await;
}

#[tokio::test]
async fn secure_websocket_client_is_served() {
    let running = start().await;
    let tls = running.tls_connect("mqtt.wss").await;
    ws_roundtrip(tls, &running, "wssuser").await;
}

#[tokio::test]
async fn plain_bytes_on_the_tls_port_fail_alone() {
    let running = start().await;
    let mut plain = TcpStream::connect(running.addr("mqtt.tls"))
        .await
        .expect("tcp");
    let (connect, _) = connect_and_subscribe("oops");
    plain.write_all(&connect).await.expect("write");
    let mut buf = [0u8; 64];
    let n = timeout(WAIT, plain.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    // A TLS alert at most, never a CONNACK.
    assert!(n == 0 || buf[0] == 0x15, "{:?}", &buf[..n]);
    let mut tls = running.tls_connect("mqtt.tls").await;
    exchange(&mut tls, &running, "after").await;
}

#[tokio::test]
async fn websocket_disconnect_ends_with_a_closing_handshake() {
    let running = start().await;
    let tcp = TcpStream::connect(running.addr("mqtt.ws"))
        .await
        .expect("tcp");
    let mut ws = ws_connect(tcp).await;
    let (connect, _) = connect_and_subscribe("closer");
    ws.send(Message::Binary(connect.freeze()))
        .await
        .expect("send");
    let connack = timeout(WAIT, ws.next()).await.expect("in time");
    assert!(
        matches!(connack, Some(Ok(Message::Binary(_)))),
        "{connack:?}"
    );
    ws.send(Message::Binary(Bytes::from_static(&[0xE0, 0x00])))
        .await
        .expect("DISCONNECT");
    // The server closes the WebSocket properly: a Close frame, then the end, and
    // never a reset without the closing handshake.
    loop {
        match timeout(WAIT, ws.next()).await.expect("closed in time") {
            None => break,
            Some(Ok(Message::Close(_))) => {}
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => panic!("closed without a handshake: {e}"),
        }
    }
}

#[tokio::test]
async fn a_websocket_holds_no_more_than_a_connect_before_login() {
    let running = start().await;
    let tcp = TcpStream::connect(running.addr("mqtt.ws"))
        .await
        .expect("tcp");
    let mut ws = ws_connect(tcp).await;
    // A binary message announcing 1 MiB (masked with a zero key, as a client
    // must mask), of which 100 KiB are sent: more than any CONNECT may be.
    let raw = ws.get_mut();
    let mut frame = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0];
    frame.extend(std::iter::repeat_n(0x10u8, 100 * 1024));
    let _ = raw.write_all(&frame).await;
    // The server gives up at once instead of buffering the message for the
    // connect timeout (10 s).
    let mut sink = [0u8; 1024];
    let closed = timeout(Duration::from_secs(2), async {
        loop {
            match raw.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "still open 2 s after 100 KiB before CONNECT"
    );
}

#[tokio::test]
async fn a_websocket_carries_large_messages_after_login() {
    let running = start().await;
    let tcp = TcpStream::connect(running.addr("mqtt.ws"))
        .await
        .expect("tcp");
    let mut ws = ws_connect(tcp).await;
    let token = verifier()
        .mint("ops", Role::Admin, Duration::from_secs(600))
        .expect("mint");
    let mut c = v4::Connect::new("ops-dev");
    c.set_login("ops", token);
    let mut out = BytesMut::new();
    c.write(&mut out).expect("encode");
    v4::Subscribe::new("big/x", rumqttc::QoS::AtMostOnce)
        .write(&mut out)
        .expect("encode");
    ws.send(Message::Binary(out.freeze())).await.expect("send");
    // 200 KiB in one message, well past what is allowed before login.
    let payload = vec![7u8; 200 * 1024];
    let mut big = BytesMut::new();
    v4::Publish::new("big/x", rumqttc::QoS::AtMostOnce, payload.clone())
        .write(&mut big)
        .expect("encode");
    let mut buf = BytesMut::new();
    let mut sent = false;
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        if let Message::Binary(b) = msg {
            buf.extend_from_slice(&b);
        }
        while let Ok(p) = v4::Packet::read(&mut buf, 1 << 20) {
            match p {
                v4::Packet::SubAck(_) if !sent => {
                    sent = true;
                    ws.send(Message::Binary(big.clone().freeze()))
                        .await
                        .expect("send");
                }
                v4::Packet::Publish(p) => {
                    assert_eq!(p.payload.len(), payload.len());
                    return;
                }
                _ => {}
            }
        }
    }
}
