//! The broker under test and how bench clients present themselves to it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnectReturnCode, Packet, Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use serde::Serialize;

use super::{BenchError, Connection};

/// An HS256 secret; `Debug` never prints it.
#[derive(Clone)]
pub(crate) struct JwtSecret(String);

impl JwtSecret {
    /// Wraps the secret shared with the broker.
    pub(crate) fn new(secret: String) -> Self {
        Self(secret)
    }

    /// An HS256 token for `user` (with a `role` claim when given), valid for an
    /// hour: the MQTT password, or the HTTP bearer token.
    pub(crate) fn token(
        &self,
        user: &str,
        role: Option<&str>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user,
            exp: now + 3600,
            role,
        };
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(self.0.as_bytes()),
        )
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// JWT claims as imqtt reads them (DESIGN.md section 2).
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
}

/// Where clients connect and with which credentials.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The broker's MQTT listener; always a loopback address.
    pub(crate) server: SocketAddr,
    /// More MQTT listeners of the same cluster (other nodes, other ports of the
    /// same host): clients are spread over `server` and these by client id.
    pub(crate) spread: Vec<SocketAddr>,
    /// When set, every client sends username = uid and password = a JWT signed with
    /// it; when not, clients send no credentials (anonymous brokers).
    pub(crate) jwt_secret: Option<JwtSecret>,
    /// Keepalive announced in CONNECT, in seconds (0 = none).
    pub(crate) keep_alive: u16,
    /// Longest one client may take for one protocol step (CONNACK, SUBACK, PUBACK).
    pub(crate) step_timeout: Duration,
    /// Clients' socket receive buffer in bytes; `None` leaves the kernel's default.
    pub(crate) recv_buffer: Option<u32>,
}

impl Target {
    /// The source address for client number `index`: 250 clients per address over
    /// 127.0.0.0/8, so no single source address runs out of ephemeral ports. `None`
    /// (let the kernel choose) unless the server is IPv4 loopback.
    pub(crate) fn source_for(&self, index: usize) -> Option<IpAddr> {
        match self.server.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let host = (index % 250) as u8 + 1;
                let net = ((index / 250) % 256) as u8;
                let high = ((index / (250 * 256)) % 255) as u8;
                Some(IpAddr::V4(Ipv4Addr::new(127, high, net, host)))
            }
            _ => None,
        }
    }

    /// The listener `client_id` connects to: `server`, or with `spread` one of
    /// all, picked by a hash of the id (FNV-1a), so a client always goes to the
    /// same one.
    pub(crate) fn server_for(&self, client_id: &str) -> SocketAddr {
        if self.spread.is_empty() {
            return self.server;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in client_id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let i = (h % (self.spread.len() as u64 + 1)) as usize;
        if i == 0 {
            self.server
        } else {
            self.spread[i - 1]
        }
    }

    /// Username and password for `user`: `None` without a JWT secret.
    fn login(
        &self,
        user: &str,
        role: Option<&str>,
    ) -> Result<Option<(String, String)>, BenchError> {
        let Some(secret) = &self.jwt_secret else {
            return Ok(None);
        };
        Ok(Some((user.to_owned(), secret.token(user, role)?)))
    }

    /// Opens a TCP connection and completes the MQTT 3.1.1 CONNECT / CONNACK exchange
    /// with a clean session.
    pub(crate) async fn connect(
        &self,
        client_id: &str,
        user: &str,
        role: Option<&str>,
        source: Option<IpAddr>,
        read_chunk: usize,
    ) -> Result<Connection, BenchError> {
        let login = self.login(user, role)?;
        let server = self.server_for(client_id);
        let mut conn = self
            .step(
                "TCP connect",
                Connection::open(server, source, read_chunk, self.recv_buffer),
            )
            .await?;
        let mut connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
        connect.keep_alive = self.keep_alive;
        connect.clean_session = true;
        if let Some((username, password)) = login {
            connect.set_login(username, password);
        }
        conn.send(&Packet::Connect(connect)).await?;
        match self.step("CONNACK", conn.recv()).await? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(conn),
            Packet::ConnAck(ack) => Err(BenchError::Refused(ack.code)),
            other => Err(BenchError::Unexpected(format!("{other:?} before CONNACK"))),
        }
    }

    /// Subscribes `conn` to `topic` at QoS 1 with packet id `pkid`; done when the
    /// SUBACK grants it.
    pub(crate) async fn subscribe(
        &self,
        conn: &mut Connection,
        topic: &str,
        pkid: u16,
    ) -> Result<(), BenchError> {
        self.subscribe_all(conn, &[topic.to_owned()], pkid).await
    }

    /// Subscribes `conn` to every topic of `topics` at QoS 1 in one SUBSCRIBE with
    /// packet id `pkid`; done when the SUBACK grants them all.
    pub(crate) async fn subscribe_all(
        &self,
        conn: &mut Connection,
        topics: &[String],
        pkid: u16,
    ) -> Result<(), BenchError> {
        let mut subscribe = Subscribe::new_many(
            topics
                .iter()
                .map(|topic| SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce)),
        );
        subscribe.pkid = pkid;
        conn.send(&Packet::Subscribe(subscribe)).await?;
        match self.step("SUBACK", conn.recv()).await? {
            Packet::SubAck(ack) if ack.pkid == pkid => {
                let granted =
                    |code: &SubscribeReasonCode| matches!(code, SubscribeReasonCode::Success(_));
                // A SUBACK with fewer codes than filters refuses the ones it lacks.
                match topics
                    .iter()
                    .enumerate()
                    .find(|&(i, _)| !ack.return_codes.get(i).is_some_and(granted))
                {
                    None => Ok(()),
                    Some((_, topic)) => Err(BenchError::SubscribeRefused(topic.clone())),
                }
            }
            other => Err(BenchError::Unexpected(format!(
                "{other:?} while waiting for SUBACK"
            ))),
        }
    }

    /// Runs one protocol step under [`Target::step_timeout`].
    pub(crate) async fn step<T>(
        &self,
        what: &'static str,
        step: impl Future<Output = Result<T, BenchError>>,
    ) -> Result<T, BenchError> {
        match tokio::time::timeout(self.step_timeout, step).await {
            Ok(Err(BenchError::Closed)) => Err(BenchError::ClosedAwaiting(what)),
            Ok(result) => result,
            Err(_) => Err(BenchError::Timeout(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str) -> Target {
        Target {
            server: server.parse().expect("address"),
            spread: Vec::new(),
            jwt_secret: None,
            keep_alive: 0,
            step_timeout: Duration::from_secs(1),
            recv_buffer: None,
        }
    }

    #[test]
    fn sources_spread_250_clients_per_loopback_address() {
        let t = target("127.0.0.1:1883");
        let ip = |i| t.source_for(i).expect("v4 loopback").to_string();
        assert_eq!(ip(0), "127.0.0.1");
        assert_eq!(ip(249), "127.0.0.250");
        assert_eq!(ip(250), "127.0.1.1");
        assert_eq!(ip(18_999), "127.0.75.250");
        assert_ne!(ip(0), ip(250 * 256));
    }

    #[test]
    fn ipv6_and_non_loopback_targets_get_no_source_address() {
        assert_eq!(target("[::1]:1883").source_for(3), None);
        assert_eq!(target("10.0.0.1:1883").source_for(3), None);
    }

    #[test]
    fn without_a_secret_no_credentials_are_sent() {
        assert!(
            target("127.0.0.1:1")
                .login("u1", None)
                .expect("login")
                .is_none()
        );
    }

    #[test]
    fn token_carries_sub_and_role() {
        let mut t = target("127.0.0.1:1");
        t.jwt_secret = Some(JwtSecret::new("s".repeat(32)));
        let (user, token) = t.login("pub", Some("admin")).expect("sign").expect("login");
        assert_eq!(user, "pub");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret("s".repeat(32).as_bytes()),
            &validation,
        )
        .expect("valid token");
        assert_eq!(data.claims["sub"], "pub");
        assert_eq!(data.claims["role"], "admin");
    }
}
