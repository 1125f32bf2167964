//! CONNECT: read it under `mqtt.connect_timeout`, authenticate, check the will,
//! negotiate (expiry, window, keepalive, aliases), attach the session and answer
//! CONNACK. Every refusal answers and closes before the hub is touched.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use imqtt_wire::is_valid_id;
use rumqttc::v5::mqttbytes::v5::{self, ConnAck, ConnAckProperties, ConnectReturnCode};

use super::super::codec::{self, CodecError, ConnectInfo, Version, reply};
use super::super::{Edge, Transport};
use super::Conn;
use super::close::write_now;
use super::outbound::{OutAliases, TOPIC_ALIAS_MAX};
use crate::acl::{Principal, Publisher};
use crate::auth::{Role, TokenError};
use crate::hub::AttachError;
use crate::metrics::{ConnectRefusal, PacketKind};
use crate::topic;

/// A CONNECT we will not serve: the CONNACK code, the metric, and the log line.
struct Refused {
    code: ConnectReturnCode,
    why: ConnectRefusal,
}

impl Refused {
    fn new(code: ConnectReturnCode, why: ConnectRefusal) -> Self {
        Refused { code, why }
    }
}

/// Reads CONNECT, authenticates, attaches the session and queues CONNACK (and,
/// for a resumed session, what it had not acknowledged). `None` when the client
/// is refused or goes away; the refusal has been answered then.
pub(super) async fn handshake<S: Transport>(edge: Arc<Edge>, mut io: S) -> Option<Conn<S>> {
    let metrics = edge.hub.metrics.clone();
    let mut rbuf = BytesMut::new();
    let connect = match read_connect(&edge, &mut io, &mut rbuf).await {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            metrics.refused(ConnectRefusal::Protocol);
            tracing::debug!(error = %e, "bad CONNECT");
            if let Some((code, version)) = codec::connect_refusal(&e) {
                write_now(&mut io, &reply::refuse(code), version).await;
            }
            return None;
        }
    };
    metrics.received(PacketKind::Connect);
    let version = connect.version;
    match accept(&edge, connect, io, rbuf) {
        Ok(conn) => {
            // In a cluster, what other nodes publish to this user from now on
            // must come here before the CONNACK (queued, not yet written) says so.
            if let Some(settled) = edge.hub.settled() {
                settled.await;
            }
            Some(conn)
        }
        Err((mut io, refused)) => {
            metrics.refused(refused.why);
            write_now(&mut io, &reply::refuse(refused.code), version).await;
            None
        }
    }
}

/// Reads until a whole CONNECT is in, under `mqtt.connect_timeout`. `Ok(None)`:
/// the client left or took too long.
async fn read_connect<S: Transport>(
    edge: &Edge,
    io: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Option<ConnectInfo>, CodecError> {
    let max = edge.cfg.max_packet_size.as_usize();
    let metrics = &edge.hub.metrics;
    let read = async {
        loop {
            io.ready().await?;
            match io.try_read(rbuf)? {
                None => continue,
                Some(0) => return Ok::<_, std::io::Error>(None),
                Some(n) => {
                    metrics.bytes_in.inc_by(n as u64);
                }
            }
            match codec::read_connect(rbuf, max) {
                Ok(Some(c)) => return Ok(Some(Ok(c))),
                Ok(None) => continue,
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    };
    match tokio::time::timeout(edge.cfg.connect_timeout.get(), read).await {
        Err(_) => {
            metrics.refused(ConnectRefusal::Timeout);
            tracing::debug!("no CONNECT in time");
            Ok(None)
        }
        Ok(Err(_) | Ok(None)) => Ok(None),
        Ok(Ok(Some(parsed))) => parsed.map(Some),
    }
}

/// Decides on a parsed CONNECT: a connection with its CONNACK queued, or the
/// refusal (with the socket back, to answer on).
fn accept<S: Transport>(
    edge: &Arc<Edge>,
    connect: ConnectInfo,
    io: S,
    rbuf: BytesMut,
) -> Result<Conn<S>, (S, Refused)> {
    let version = connect.version;
    if edge.connections.load(Ordering::Acquire) > edge.cfg.max_connections {
        tracing::warn!(max = edge.cfg.max_connections, "connection limit reached");
        let code = ConnectReturnCode::ServerUnavailable;
        return Err((io, Refused::new(code, ConnectRefusal::ServerUnavailable)));
    }
    let (uid, superuser) = match authenticate(edge, &connect) {
        Ok(v) => v,
        Err(why) => {
            let user = connect.username.as_deref().unwrap_or("");
            tracing::info!(user, why, "CONNECT refused");
            let code = ConnectReturnCode::NotAuthorized;
            return Err((io, Refused::new(code, ConnectRefusal::NotAuthorized)));
        }
    };
    if let Some(will) = &connect.will {
        let who = Publisher::Client(Principal {
            uid: &uid,
            superuser,
        });
        if !topic::valid_topic(&will.topic) || !edge.acl.may_publish(who, &will.topic) {
            tracing::info!(topic = %will.topic, "CONNECT refused: will topic not allowed");
            let code = ConnectReturnCode::NotAuthorized;
            return Err((io, Refused::new(code, ConnectRefusal::WillNotAuthorized)));
        }
    }
    let assigned = connect.client_id.is_empty();
    if assigned && version == Version::V4 && !connect.clean_start {
        // MQTT 3.1.1 §3.1.3.1: an empty client id needs clean session.
        let code = ConnectReturnCode::BadClientId;
        return Err((io, Refused::new(code, ConnectRefusal::BadClientId)));
    }
    let client_id = if assigned {
        format!("auto-{:x}-{:x}", std::process::id(), edge.hub.unique_id())
    } else {
        connect.client_id.clone()
    };
    tracing::Span::current().record("user", uid.as_str());
    tracing::Span::current().record("client_id", client_id.as_str());

    let terms = Terms::negotiate(edge, &connect);
    let attached = match edge.hub.attach(
        &uid,
        &client_id,
        connect.clean_start,
        terms.expiry,
        terms.window,
        // An admin's connection is a tool (a monitor, a conformance suite), not
        // one of its user's devices: it does not make the user online.
        !superuser,
    ) {
        Ok(a) => a,
        Err(AttachError::TooManySessions) => {
            tracing::warn!(max = edge.cfg.max_sessions, "session limit reached");
            let code = match version {
                Version::V5 => ConnectReturnCode::QuotaExceeded,
                Version::V4 => ConnectReturnCode::ServerUnavailable,
            };
            return Err((io, Refused::new(code, ConnectRefusal::ServerUnavailable)));
        }
    };
    let connack = v5::Packet::ConnAck(ConnAck {
        session_present: attached.present,
        code: ConnectReturnCode::Success,
        properties: (version == Version::V5)
            .then(|| terms.connack_properties(edge, &connect, assigned.then_some(&client_id))),
    });
    let mut conn = Conn {
        edge: edge.clone(),
        io,
        version,
        session: attached.session,
        generation: attached.generation,
        superuser,
        // At most 65,535 × 1,500 ms: fits.
        keep_alive_ms: u32::from(terms.keep_alive) * 1500,
        client_max: connect.max_packet_size.unwrap_or(u32::MAX),
        will: connect.will.map(|mut w| {
            // Like a PUBLISH payload, the will must not pin the read buffer.
            w.payload = Bytes::copy_from_slice(&w.payload);
            Box::new(w)
        }),
        aliases: Box::default(),
        out_aliases: (connect.topic_alias_max > 0)
            .then(|| Box::new(OutAliases::new(connect.topic_alias_max))),
        rbuf,
        wbuf: BytesMut::new(),
        last_rx: Instant::now(),
        counted: None,
        congested: None,
        owing: None,
        settle: false,
    };
    conn.io.logged_in();
    conn.push(&connack);
    tracing::debug!(present = attached.present, "connected");
    if attached.present && conn.resend_unacknowledged().is_err() {
        // Taken over already, between attach and here: the loop will see it.
        tracing::debug!("taken over during CONNECT");
    }
    Ok(conn)
}

/// username = uid, password = a JWT whose `sub` is that uid.
fn authenticate(edge: &Edge, c: &ConnectInfo) -> Result<(String, bool), &'static str> {
    let uid = c.username.as_deref().ok_or("no username")?;
    let token = c.password.as_deref().ok_or("no password (token)")?;
    if !is_valid_id(uid) {
        return Err("username is not a valid id");
    }
    let claims = edge.verifier.verify(token).map_err(|e| match e {
        TokenError::Expired => "token expired",
        TokenError::BadSignature => "bad token signature",
        _ => "invalid token",
    })?;
    if claims.sub != uid {
        return Err("token subject is not the username");
    }
    Ok((claims.sub, claims.role == Role::Admin))
}

/// What the client asked for, within the server's limits.
struct Terms {
    expiry: Duration,
    window: u16,
    keep_alive: u16,
    /// Set when `mqtt.max_keepalive` lowered the client's keepalive (v5 only).
    server_keep_alive: Option<u16>,
}

impl Terms {
    fn negotiate(edge: &Edge, connect: &ConnectInfo) -> Terms {
        let expiry = match connect.version {
            Version::V5 => Duration::from_secs(u64::from(connect.session_expiry.unwrap_or(0)))
                .min(edge.cfg.max_session_expiry.get()),
            Version::V4 if connect.clean_start => Duration::ZERO,
            Version::V4 => edge.cfg.session_expiry.get(),
        };
        let window = connect
            .receive_max
            .unwrap_or(u16::MAX)
            .min(edge.cfg.max_inflight)
            .max(1);
        // `mqtt.max_keepalive` can only be imposed where the client is told: MQTT
        // 5's Server Keep Alive. A 3.1.1 client keeps the keepalive it asked for.
        let mut keep_alive = connect.keep_alive;
        let server_keep_alive = match edge.cfg.max_keepalive {
            0 => None,
            _ if connect.version == Version::V4 => None,
            cap if keep_alive == 0 || keep_alive > cap => {
                keep_alive = cap;
                Some(cap)
            }
            _ => None,
        };
        Terms {
            expiry,
            window,
            keep_alive,
            server_keep_alive,
        }
    }

    fn connack_properties(
        &self,
        edge: &Edge,
        connect: &ConnectInfo,
        assigned_id: Option<&String>,
    ) -> ConnAckProperties {
        let asked = connect.session_expiry.map(u64::from);
        ConnAckProperties {
            // Told only when it differs from what the client asked for.
            session_expiry_interval: (asked.is_some() && Some(self.expiry.as_secs()) != asked)
                .then(|| u32::try_from(self.expiry.as_secs()).unwrap_or(u32::MAX)),
            receive_max: Some(edge.cfg.max_inflight),
            max_qos: None,
            retain_available: None,
            max_packet_size: u32::try_from(edge.cfg.max_packet_size.as_usize()).ok(),
            // Only for an empty client id: some clients reject it otherwise.
            assigned_client_identifier: assigned_id.cloned(),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: self.server_keep_alive,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }
    }
}
