//! One client connection: CONNECT (authenticate, attach a session), then a loop
//! that reads packets, applies the ACL, talks to the hub, and drains the session's
//! outbound queue when woken. It ends with DISCONNECT (v5 reason code where there
//! is one), the will when due, and a connection event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    self, ConnAck, ConnAckProperties, ConnectReturnCode, DisconnectReasonCode, PubAckReason,
    PubRecReason, Publish, PublishProperties, RetainForwardRule, SubscribeReasonCode,
    UnsubAckReason,
};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::codec::{self, CodecError, ConnectInfo, Inbound, Version, Will, reply};
use super::{Edge, Transport};
use crate::QoS;
use crate::acl::Principal;
use crate::auth::{Role, is_valid_id};
use crate::hub::session::{CloseReason, Inflight, Outgoing, Session, Stage, SubOpts};
use crate::hub::{AttachError, DisconnectReason, EventKind, Publication};
use crate::topic;

/// Topic aliases a v5 client may use towards us.
const TOPIC_ALIAS_MAX: u16 = 32;
/// Longest a publisher is paused for one congested subscriber.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Stalled subscribers a publisher remembers not to wait for.
const MAX_GIVE_UPS: usize = 64;
/// How long a closing v5 connection keeps reading after its DISCONNECT.
const LINGER: Duration = Duration::from_secs(1);
/// Longest a final DISCONNECT / CONNACK write may take.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Decrements the connection count however the task ends.
struct Counted(Arc<Edge>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.hub.metrics.connections.dec();
    }
}

/// Serves one accepted socket to the end. The caller has already counted it in
/// `edge.connections`.
pub(crate) async fn serve<S: Transport>(edge: Arc<Edge>, io: S, peer: SocketAddr) {
    edge.hub.metrics.connections.inc();
    let counted = Counted(edge.clone());
    let span = tracing::info_span!(
        "mqtt",
        %peer,
        user = tracing::field::Empty,
        client_id = tracing::field::Empty
    );
    let Some(mut conn) = handshake(edge, io).instrument(span).await else {
        return;
    };
    conn.counted = Some(counted);
    // A span that lives as long as the connection costs about 500 bytes at the
    // level it is enabled at, a sixth of the per-client budget (DESIGN.md §9); so
    // the long-lived span is a debug one, and the connection's info-level events
    // name their user and client id themselves.
    let span = tracing::debug_span!(
        "mqtt",
        %peer,
        user = %conn.session.uid,
        client_id = conn.session.client_id()
    );
    // The connection lives on in a task of its own, sized for the loop alone and
    // not for the handshake before it: this is most of an idle connection's cost.
    tokio::spawn(conn.run().instrument(span));
}

/// How a connection ends.
#[derive(Debug)]
struct Close {
    reason: DisconnectReason,
    /// DISCONNECT reason code sent to a v5 client, if any.
    code: Option<DisconnectReasonCode>,
    /// Whether the will is published.
    will: bool,
}

impl Close {
    fn error(code: DisconnectReasonCode) -> Close {
        Close {
            reason: DisconnectReason::Error,
            code: Some(code),
            will: true,
        }
    }

    fn from_codec(e: &CodecError) -> Close {
        tracing::debug!(error = %e, "closing on a bad packet");
        Close::error(match e {
            CodecError::TooLarge => DisconnectReasonCode::PacketTooLarge,
            _ => DisconnectReasonCode::MalformedPacket,
        })
    }
}

struct Conn<S> {
    edge: Arc<Edge>,
    io: S,
    version: Version,
    session: Arc<Session>,
    generation: u64,
    superuser: bool,
    keep_alive: Option<Duration>,
    /// The client's Maximum Packet Size (ours when it set none).
    client_max: usize,
    will: Option<Box<Will>>,
    aliases: Vec<Option<Arc<str>>>,
    /// Aliases we assign to topics we send, when the client accepts them.
    out_aliases: Option<Box<OutAliases>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    last_rx: Instant,
    /// Releases the connection count when the connection ends.
    counted: Option<Counted>,
    /// A subscriber whose queue this client's publishes are filling.
    congested: Option<Arc<Session>>,
    /// Subscribers we waited on in vain, and when: not waited on again for
    /// `MAX_PAUSE` × 10, so stalled clients cannot throttle a publisher. At most
    /// `MAX_GIVE_UPS`, oldest forgotten first; empty (no allocation) normally.
    gave_up_on: Vec<(u64, Instant)>,
}

async fn write_now<S: Transport>(io: &mut S, packet: &v5::Packet, version: Version) {
    let mut buf = BytesMut::new();
    if codec::write(packet, version, &mut buf, usize::MAX).is_ok() {
        let farewell = async {
            io.write_all(&buf).await?;
            io.flush().await?;
            io.shutdown().await
        };
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await;
    }
}

/// Reads CONNECT under `mqtt.connect_timeout`, authenticates, attaches the session
/// and answers CONNACK. Every refusal answers and closes before the hub is touched.
async fn handshake<S: Transport>(edge: Arc<Edge>, mut io: S) -> Option<Conn<S>> {
    let max = edge.cfg.max_packet_size.as_usize();
    let metrics = edge.hub.metrics.clone();
    let mut rbuf = BytesMut::new();
    let read = async {
        loop {
            io.ready().await?;
            match io.try_read(&mut rbuf)? {
                None => continue,
                Some(0) => return Ok::<_, std::io::Error>(None),
                Some(n) => {
                    metrics.bytes_in.inc_by(n as u64);
                }
            }
            match codec::read_connect(&mut rbuf, max) {
                Ok(Some(c)) => return Ok(Some(Ok(c))),
                Ok(None) => continue,
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    };
    let connect = match tokio::time::timeout(edge.cfg.connect_timeout.get(), read).await {
        Err(_) => {
            metrics.refused("timeout");
            tracing::debug!("no CONNECT in time");
            return None;
        }
        Ok(Err(_) | Ok(None)) => return None,
        Ok(Ok(Some(Err(e)))) => {
            metrics.refused("protocol");
            tracing::debug!(error = %e, "bad CONNECT");
            if let Some((code, version)) = codec::connect_refusal(&e) {
                write_now(&mut io, &reply::refuse(code), version).await;
            }
            return None;
        }
        Ok(Ok(Some(Ok(c)))) => c,
    };
    metrics.packets_in[0].inc();
    let version = connect.version;
    let refuse = |code: ConnectReturnCode, reason: &'static str| {
        metrics.refused(reason);
        reply::refuse(code)
    };

    if edge.connections.load(Ordering::Acquire) > edge.cfg.max_connections {
        tracing::warn!(max = edge.cfg.max_connections, "connection limit reached");
        let p = refuse(ConnectReturnCode::ServerUnavailable, "server_unavailable");
        write_now(&mut io, &p, version).await;
        return None;
    }
    let (uid, superuser) = match authenticate(&edge, &connect) {
        Ok(v) => v,
        Err(why) => {
            tracing::info!(
                user = connect.username.as_deref().unwrap_or(""),
                why,
                "CONNECT refused"
            );
            let p = refuse(ConnectReturnCode::NotAuthorized, "not_authorized");
            write_now(&mut io, &p, version).await;
            return None;
        }
    };
    if let Some(will) = &connect.will {
        let who = Principal {
            uid: &uid,
            superuser,
        };
        if !topic::valid_topic(&will.topic) || !edge.acl.may_publish(who, &will.topic) {
            tracing::info!(topic = %will.topic, "CONNECT refused: will topic not allowed");
            let p = refuse(ConnectReturnCode::NotAuthorized, "will_not_authorized");
            write_now(&mut io, &p, version).await;
            return None;
        }
    }
    let assigned = connect.client_id.is_empty();
    if assigned && version == Version::V4 && !connect.clean_start {
        // MQTT 3.1.1 §3.1.3.1: an empty client id needs clean session.
        let p = refuse(ConnectReturnCode::BadClientId, "bad_client_id");
        write_now(&mut io, &p, version).await;
        return None;
    }
    let client_id = if assigned {
        format!("auto-{:x}-{:x}", std::process::id(), edge.hub.unique_id())
    } else {
        connect.client_id.clone()
    };
    tracing::Span::current().record("user", uid.as_str());
    tracing::Span::current().record("client_id", client_id.as_str());

    let max_expiry = edge.cfg.max_session_expiry.get();
    let expiry = match version {
        Version::V5 => {
            Duration::from_secs(u64::from(connect.session_expiry.unwrap_or(0))).min(max_expiry)
        }
        Version::V4 if connect.clean_start => Duration::ZERO,
        Version::V4 => edge.cfg.session_expiry.get(),
    };
    let window = connect
        .receive_max
        .unwrap_or(u16::MAX)
        .min(edge.cfg.max_inflight)
        .max(1);
    let attached = match edge
        .hub
        .attach(&uid, &client_id, connect.clean_start, expiry, window)
    {
        Ok(a) => a,
        Err(AttachError::TooManySessions) => {
            tracing::warn!(max = edge.cfg.max_sessions, "session limit reached");
            let code = match version {
                Version::V5 => ConnectReturnCode::QuotaExceeded,
                Version::V4 => ConnectReturnCode::ServerUnavailable,
            };
            write_now(&mut io, &refuse(code, "server_unavailable"), version).await;
            return None;
        }
    };

    // `mqtt.max_keepalive` can only be imposed where the client is told: MQTT 5's
    // Server Keep Alive. A 3.1.1 client keeps the keepalive it asked for.
    let mut keep_alive = connect.keep_alive;
    let server_keep_alive = match edge.cfg.max_keepalive {
        0 => None,
        _ if version == Version::V4 => None,
        cap if keep_alive == 0 || keep_alive > cap => {
            keep_alive = cap;
            Some(cap)
        }
        _ => None,
    };
    let properties = (version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: (connect.session_expiry.is_some()
            && Some(expiry.as_secs()) != connect.session_expiry.map(u64::from))
        .then(|| u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX)),
        receive_max: Some(edge.cfg.max_inflight),
        max_qos: None,
        retain_available: None,
        max_packet_size: u32::try_from(max).ok(),
        // Only for an empty client id: some clients reject it otherwise.
        assigned_client_identifier: assigned.then(|| client_id.clone()),
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    });
    let connack = v5::Packet::ConnAck(ConnAck {
        session_present: attached.present,
        code: ConnectReturnCode::Success,
        properties,
    });
    let client_max = connect
        .max_packet_size
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let mut conn = Conn {
        edge: edge.clone(),
        io,
        version,
        session: attached.session,
        generation: attached.generation,
        superuser,
        keep_alive: (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
        client_max,
        will: connect.will.map(|mut w| {
            // Like a PUBLISH payload, the will must not pin the read buffer.
            w.payload = Bytes::copy_from_slice(&w.payload);
            Box::new(w)
        }),
        aliases: Vec::new(),
        out_aliases: (connect.topic_alias_max > 0).then(|| {
            Box::new(OutAliases {
                // Ours to bound: the client allows up to its maximum, we use at
                // most as many as we accept.
                max: connect.topic_alias_max.min(TOPIC_ALIAS_MAX),
                by_topic: std::collections::HashMap::new(),
            })
        }),
        rbuf,
        wbuf: BytesMut::new(),
        last_rx: Instant::now(),
        counted: None,
        congested: None,
        gave_up_on: Vec::new(),
    };
    conn.push(&connack);
    edge.hub.emit(&conn.session, EventKind::Connected);
    tracing::debug!(present = attached.present, "connected");
    if attached.present {
        conn.resend_inflight();
    }
    Some(conn)
}

/// username = uid, password = a JWT whose `sub` is that uid.
fn authenticate(edge: &Edge, c: &ConnectInfo) -> Result<(String, bool), &'static str> {
    let uid = c.username.as_deref().ok_or("no username")?;
    let token = c.password.as_deref().ok_or("no password (token)")?;
    if !is_valid_id(uid) {
        return Err("username is not a valid id");
    }
    let claims = edge.verifier.verify(token).map_err(|e| match e {
        crate::auth::TokenError::Expired => "token expired",
        crate::auth::TokenError::BadSignature => "bad token signature",
        _ => "invalid token",
    })?;
    if claims.sub != uid {
        return Err("token subject is not the username");
    }
    Ok((claims.sub, claims.role == Role::Admin))
}

/// Topic aliases towards a v5 client: a topic's first PUBLISH carries topic and
/// alias, later ones only the alias, up to the client's Topic Alias Maximum.
#[derive(Debug)]
struct OutAliases {
    max: u16,
    by_topic: std::collections::HashMap<Arc<str>, u16>,
}

impl OutAliases {
    /// The alias to send with `topic`, and whether the topic name can be omitted.
    /// A new alias counts only once [`OutAliases::commit`] records it, after the
    /// PUBLISH that introduces it was written.
    fn plan(&self, topic: &str) -> Option<(u16, bool)> {
        if let Some(a) = self.by_topic.get(topic) {
            return Some((*a, true));
        }
        let next = u16::try_from(self.by_topic.len() + 1).ok()?;
        (next <= self.max).then_some((next, false))
    }

    fn commit(&mut self, topic: &Arc<str>, planned: Option<(u16, bool)>) {
        if let Some((alias, false)) = planned {
            self.by_topic.insert(topic.clone(), alias);
        }
    }
}

enum Wake {
    Readable(std::io::Result<()>),
    Notified,
    KeepAlive,
}

impl<S: Transport> Conn<S> {
    /// Appends a packet to the write buffer, counting it.
    fn push(&mut self, packet: &v5::Packet) {
        match codec::write(packet, self.version, &mut self.wbuf, self.client_max) {
            Ok(n) => {
                self.edge.hub.metrics.bytes_out.inc_by(n as u64);
                self.edge.hub.metrics.packets_out[out_type(packet)].inc();
            }
            Err(e) => tracing::debug!(error = %e, "packet not sent"),
        }
    }

    async fn run(mut self) {
        let close = match self.serve().await {
            Ok(()) => Close {
                reason: DisconnectReason::Error,
                code: None,
                will: true,
            },
            Err(c) => c,
        };
        Box::pin(self.finish(close)).await;
    }

    async fn serve(&mut self) -> Result<(), Close> {
        // Packets that arrived with CONNECT, then anything the handshake queued
        // (and a resumed session's backlog).
        self.handle_buffered()?;
        self.drain()?;
        self.flush().await?;
        // One timer for the connection's life, re-armed only when it fires: a
        // timer per loop turn cost a timer-wheel insert and removal per packet.
        let timer = tokio::time::sleep_until(self.keep_alive_deadline().into());
        tokio::pin!(timer);
        loop {
            let wake = tokio::select! {
                r = self.io.ready() => Wake::Readable(r),
                () = self.session.wake.notified() => Wake::Notified,
                () = &mut timer, if self.keep_alive.is_some() => Wake::KeepAlive,
            };
            if let Wake::KeepAlive = wake {
                let deadline = self.keep_alive_deadline();
                if deadline > Instant::now() {
                    timer.as_mut().reset(deadline.into());
                    continue;
                }
            }
            match wake {
                Wake::Readable(Err(_)) => {
                    return Err(Close::error(DisconnectReasonCode::UnspecifiedError));
                }
                Wake::Readable(Ok(())) => self.read_packets()?,
                Wake::Notified => {}
                Wake::KeepAlive => {
                    tracing::info!(
                        user = %self.session.uid,
                        client_id = self.session.client_id(),
                        "keepalive timeout"
                    );
                    return Err(Close {
                        reason: DisconnectReason::KeepaliveTimeout,
                        code: Some(DisconnectReasonCode::KeepAliveTimeout),
                        will: true,
                    });
                }
            }
            self.drain()?;
            self.flush().await?;
            self.wait_for_room().await?;
        }
    }

    /// When the client must have sent something by (1.5 × its keepalive after the
    /// last bytes); far in the future without a keepalive.
    fn keep_alive_deadline(&self) -> Instant {
        let k = self
            .keep_alive
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        self.last_rx + k
    }

    /// Remembers the first congested subscriber worth waiting for: not this
    /// session itself, and not one we recently gave up on.
    fn note_pressure(&mut self, targets: Vec<Arc<Session>>) {
        if self.congested.is_some() {
            return;
        }
        let skipped = |t: &Session| {
            self.gave_up_on
                .iter()
                .any(|(id, at)| *id == t.id && at.elapsed() < MAX_PAUSE * 10)
        };
        self.congested = targets
            .into_iter()
            .find(|t| t.id != self.session.id && !skipped(t));
    }

    /// Flow control for MQTT publishers: while a subscriber this client publishes
    /// to has more than half a queue pending, stop reading this client (TCP pushes
    /// back) until that queue is down to a quarter, for at most `MAX_PAUSE`. Without
    /// it a fast publisher outruns a subscriber and the full queue drops messages.
    /// The bridge's publishes never wait (the store is the source of truth).
    async fn wait_for_room(&mut self) -> Result<(), Close> {
        let Some(target) = self.congested.take() else {
            return Ok(());
        };
        let low = self.edge.hub.low_watermark();
        let deadline = tokio::time::Instant::now() + MAX_PAUSE;
        let mut pause = Duration::from_millis(1);
        loop {
            {
                let st = target.state();
                if st.conn == 0 || st.queue.len() <= low {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.gave_up_on
                    .retain(|(_, at)| at.elapsed() < MAX_PAUSE * 10);
                if self.gave_up_on.len() >= MAX_GIVE_UPS {
                    self.gave_up_on.remove(0);
                }
                self.gave_up_on.push((target.id, Instant::now()));
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Our own deliveries go on meanwhile.
                () = self.session.wake.notified() => {
                    self.drain()?;
                    self.flush().await?;
                }
            }
            pause = (pause * 2).min(Duration::from_millis(16));
        }
    }

    /// Reads what the socket has without waiting (readiness can be stale, and a
    /// read that waited here would not see the session's wake-ups).
    fn read_packets(&mut self) -> Result<(), Close> {
        let n = match self.io.try_read(&mut self.rbuf) {
            Ok(None) => {
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                return Ok(());
            }
            Ok(Some(0)) | Err(_) => {
                return Err(Close {
                    reason: DisconnectReason::Error,
                    code: None,
                    will: true,
                });
            }
            Ok(Some(n)) => n,
        };
        self.edge.hub.metrics.bytes_in.inc_by(n as u64);
        self.last_rx = Instant::now();
        self.handle_buffered()
    }

    /// Handles every whole packet in the read buffer.
    fn handle_buffered(&mut self) -> Result<(), Close> {
        let max = self.edge.cfg.max_packet_size.as_usize();
        loop {
            match codec::read(&mut self.rbuf, self.version, max) {
                Ok(Some(packet)) => {
                    self.edge.hub.metrics.packets_in[packet.type_index()].inc();
                    self.handle(packet)?;
                }
                Ok(None) => break,
                Err(e) => return Err(Close::from_codec(&e)),
            }
        }
        if self.rbuf.is_empty() {
            // Release the buffer: an idle connection holds none.
            self.rbuf = BytesMut::new();
        }
        Ok(())
    }

    fn handle(&mut self, packet: Inbound) -> Result<(), Close> {
        match packet {
            Inbound::Publish(p) => self.on_publish(p),
            Inbound::PubAck(pkid) => {
                let mut st = self.session.state();
                if let Some(i) = st
                    .inflight
                    .iter()
                    .position(|i| i.pkid == pkid && i.stage == Stage::Published)
                {
                    st.inflight.remove(i);
                }
                Ok(())
            }
            Inbound::PubRec(pkid) => {
                let mut st = self.session.state();
                if let Some(i) = st.inflight.iter_mut().find(|i| i.pkid == pkid) {
                    i.stage = Stage::Released;
                }
                drop(st);
                self.push(&reply::pubrel(pkid));
                Ok(())
            }
            Inbound::PubComp(pkid) => {
                let mut st = self.session.state();
                if let Some(i) = st
                    .inflight
                    .iter()
                    .position(|i| i.pkid == pkid && i.stage == Stage::Released)
                {
                    st.inflight.remove(i);
                }
                Ok(())
            }
            Inbound::PubRel(pkid) => {
                let mut st = self.session.state();
                let found = st
                    .incoming_qos2
                    .iter()
                    .position(|p| *p == pkid)
                    .map(|i| st.incoming_qos2.swap_remove(i));
                drop(st);
                self.push(&reply::pubcomp(pkid, found.is_some()));
                Ok(())
            }
            Inbound::Subscribe(s) => {
                self.on_subscribe(s);
                Ok(())
            }
            Inbound::Unsubscribe(u) => {
                let reasons = u
                    .filters
                    .iter()
                    .map(|f| {
                        if self.edge.hub.unsubscribe(&self.session, f) {
                            UnsubAckReason::Success
                        } else {
                            UnsubAckReason::NoSubscriptionExisted
                        }
                    })
                    .collect();
                self.push(&reply::unsuback(u.pkid, reasons));
                Ok(())
            }
            Inbound::PingReq => {
                self.push(&v5::Packet::PingResp(v5::PingResp));
                Ok(())
            }
            Inbound::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(secs) = session_expiry {
                    let cap = self.edge.cfg.max_session_expiry.get();
                    self.session.state().expiry = Duration::from_secs(u64::from(secs)).min(cap);
                }
                Err(Close {
                    reason: DisconnectReason::Normal,
                    code: None,
                    // MQTT 5 reason 0x04 asks for the will despite a clean close.
                    will: reason == DisconnectReasonCode::DisconnectWithWillMessage,
                })
            }
            Inbound::Unexpected(what) => {
                tracing::debug!(packet = what, "protocol error");
                Err(Close::error(DisconnectReasonCode::ProtocolError))
            }
        }
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let mut props = p.properties;
        let alias = props.as_mut().and_then(|pr| pr.topic_alias.take());
        let topic: Arc<str> = if p.topic.is_empty() {
            let slot = alias.and_then(|a| self.aliases.get(usize::from(a)).cloned().flatten());
            slot.ok_or_else(|| Close::error(DisconnectReasonCode::TopicAliasInvalid))?
        } else {
            let t: Arc<str> = std::str::from_utf8(&p.topic)
                .map_err(|_| Close::error(DisconnectReasonCode::TopicNameInvalid))?
                .into();
            if let Some(a) = alias {
                if a == 0 || a > TOPIC_ALIAS_MAX {
                    return Err(Close::error(DisconnectReasonCode::TopicAliasInvalid));
                }
                if self.aliases.is_empty() {
                    self.aliases = vec![None; usize::from(TOPIC_ALIAS_MAX) + 1];
                }
                self.aliases[usize::from(a)] = Some(t.clone());
            }
            t
        };
        if !topic::valid_topic(&topic) {
            return Err(Close::error(DisconnectReasonCode::TopicNameInvalid));
        }
        let who = Principal {
            uid: &self.session.uid,
            superuser: self.superuser,
        };
        if !self.edge.acl.may_publish(who, &topic) {
            self.edge.hub.metrics.refused_publishes.inc();
            tracing::info!(
                user = %self.session.uid,
                client_id = self.session.client_id(),
                %topic,
                "PUBLISH refused"
            );
            if self.version == Version::V4 {
                // MQTT 3.1.1 has no negative ack: the connection is closed.
                return Err(Close::error(DisconnectReasonCode::NotAuthorized));
            }
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.push(&reply::puback(p.pkid, PubAckReason::NotAuthorized)),
                QoS::ExactlyOnce => self.push(&reply::pubrec(p.pkid, PubRecReason::NotAuthorized)),
            }
            return Ok(());
        }
        let expires_at = props
            .as_mut()
            .and_then(|pr| pr.message_expiry_interval.take())
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        if let Some(pr) = props.as_mut() {
            pr.subscription_identifiers.clear();
        }
        let publication = Publication {
            topic,
            // A copy: the parsed payload shares the whole read buffer it came in,
            // which a retained or queued message would otherwise keep alive.
            payload: Bytes::copy_from_slice(&p.payload),
            qos: p.qos,
            retain: p.retain,
            props: props.filter(|pr| !is_empty_props(pr)).map(Box::new),
            expires_at,
            origin: Some(self.session.id),
        };
        match p.qos {
            QoS::AtMostOnce => {
                let full = self.edge.hub.publish(publication);
                self.note_pressure(full);
            }
            QoS::AtLeastOnce => {
                let full = self.edge.hub.publish(publication);
                self.note_pressure(full);
                self.push(&reply::puback(p.pkid, PubAckReason::Success));
            }
            QoS::ExactlyOnce => {
                let mut st = self.session.state();
                if !st.incoming_qos2.contains(&p.pkid) {
                    if st.incoming_qos2.len() >= usize::from(self.edge.cfg.max_inflight) {
                        return Err(Close::error(DisconnectReasonCode::ReceiveMaximumExceeded));
                    }
                    st.incoming_qos2.push(p.pkid);
                    drop(st);
                    // Delivered on first receipt; the pkid stays until PUBREL so a
                    // retransmission is acknowledged without a second delivery.
                    let full = self.edge.hub.publish(publication);
                    self.note_pressure(full);
                } else {
                    drop(st);
                }
                self.push(&reply::pubrec(p.pkid, PubRecReason::Success));
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: v5::Subscribe) {
        let sub_id = s
            .properties
            .as_ref()
            .and_then(|p| p.id)
            .and_then(|id| u32::try_from(id).ok());
        let who = Principal {
            uid: &self.session.uid,
            superuser: self.superuser,
        };
        let v5 = self.version == Version::V5;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            let refuse = |code| {
                if v5 {
                    code
                } else {
                    SubscribeReasonCode::Failure
                }
            };
            if !topic::valid_filter(&f.path) {
                self.edge.hub.metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::TopicFilterInvalid));
                continue;
            }
            // Shared subscriptions are for superusers (monitoring, workers): a user's
            // own topics have a single reader anyway.
            let shared = f.path.starts_with("$share/");
            if shared && topic::parse_shared(&f.path).is_none() {
                self.edge.hub.metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::TopicFilterInvalid));
                continue;
            }
            if !self.edge.acl.may_subscribe(who, &f.path) {
                self.edge.hub.metrics.refused_subscriptions.inc();
                tracing::info!(
                    user = %self.session.uid,
                    client_id = self.session.client_id(),
                    filter = %f.path,
                    "SUBSCRIBE refused"
                );
                codes.push(refuse(SubscribeReasonCode::NotAuthorized));
                continue;
            }
            let at_quota = {
                let st = self.session.state();
                st.subscriptions.len() >= self.edge.cfg.max_subscriptions
                    && !st.subscriptions.contains_key(f.path.as_str())
            };
            if at_quota {
                self.edge.hub.metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::QuotaExceeded));
                continue;
            }
            let opts = SubOpts {
                qos: f.qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                id: sub_id,
            };
            let new = self.edge.hub.subscribe(&self.session, &f.path, opts);
            codes.push(SubscribeReasonCode::Success(f.qos));
            let send_retained = match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => true,
                RetainForwardRule::OnNewSubscribe => new,
                RetainForwardRule::Never => false,
            };
            // MQTT 5 §4.8.2: no retained messages for a shared subscription.
            if send_retained && !shared {
                for msg in self.edge.hub.retained_matching(&f.path) {
                    retained.push(Outgoing {
                        qos: crate::min_qos(msg.qos, f.qos),
                        msg,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                    });
                }
            }
        }
        self.push(&reply::suback(s.pkid, codes));
        // After the SUBACK, in the session's own order.
        for out in retained {
            let _ = self.edge.hub.deliver(&self.session, out);
        }
    }

    /// Moves what the session has queued into the write buffer, within the
    /// in-flight window. Fails when the session was taken over or kicked.
    fn drain(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let metrics = &self.edge.hub.metrics;
        let mut st = self.session.state();
        if st.conn != self.generation {
            return Err(Close {
                reason: DisconnectReason::TakenOver,
                code: Some(DisconnectReasonCode::SessionTakenOver),
                will: true,
            });
        }
        match st.close {
            Some(CloseReason::Kicked) => {
                return Err(Close {
                    reason: DisconnectReason::Kicked,
                    code: Some(DisconnectReasonCode::AdministrativeAction),
                    will: false,
                });
            }
            Some(CloseReason::ShuttingDown) => {
                return Err(Close {
                    reason: DisconnectReason::ServerShutdown,
                    code: Some(DisconnectReasonCode::ServerShuttingDown),
                    will: false,
                });
            }
            None => {}
        }
        while let Some(front) = st.queue.front() {
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= usize::from(st.window) {
                break;
            }
            let Some(out) = st.queue.pop_front() else {
                break;
            };
            if out.msg.expired(now) {
                metrics.dropped_expired.inc();
                continue;
            }
            let pkid = if out.qos == QoS::AtMostOnce {
                0
            } else {
                st.next_pkid()
            };
            let alias = self
                .out_aliases
                .as_deref()
                .and_then(|a| a.plan(&out.msg.topic));
            let packet = publish_packet(&out, pkid, false, self.version, now, alias);
            match codec::write(&packet, self.version, &mut self.wbuf, self.client_max) {
                Ok(n) => {
                    metrics.bytes_out.inc_by(n as u64);
                    metrics.packets_out[2].inc();
                    if let Some(a) = self.out_aliases.as_deref_mut() {
                        a.commit(&out.msg.topic, alias);
                    }
                    if pkid != 0 {
                        st.inflight.push_back(Inflight {
                            pkid,
                            out,
                            stage: Stage::Published,
                        });
                    }
                }
                Err(_) => {
                    metrics.dropped_too_large.inc();
                }
            }
        }
        st.shrink_if_idle();
        Ok(())
    }

    /// After a session resumes: PUBLISH again (DUP) what was not acknowledged, and
    /// PUBREL what was received but not completed (MQTT §4.4).
    fn resend_inflight(&mut self) {
        let now = Instant::now();
        let st = self.session.state();
        // Resent without aliases: simpler, and always valid.
        let packets: Vec<v5::Packet> = st
            .inflight
            .iter()
            .map(|i| match i.stage {
                Stage::Published => publish_packet(&i.out, i.pkid, true, self.version, now, None),
                Stage::Released => reply::pubrel(i.pkid),
            })
            .collect();
        drop(st);
        for p in &packets {
            self.push(p);
        }
    }

    async fn flush(&mut self) -> Result<(), Close> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let io_error = |_| Close {
            reason: DisconnectReason::Error,
            code: None,
            will: true,
        };
        self.io.write_all(&buf).await.map_err(io_error)?;
        // TLS and WebSocket buffer writes; TCP's flush costs nothing.
        self.io.flush().await.map_err(io_error)?;
        Ok(())
    }

    async fn finish(mut self, close: Close) {
        if self.version == Version::V5
            && let Some(code) = close.code
        {
            self.push(&reply::disconnect(code));
        }
        if !self.wbuf.is_empty() {
            let buf = std::mem::take(&mut self.wbuf);
            let farewell = async {
                self.io.write_all(&buf).await?;
                self.io.flush().await
            };
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await;
        }
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, self.io.shutdown()).await;
        // The hub learns at once (presence must follow within a second); only then
        // does the socket linger.
        self.release(&close);
        // Keep reading (and discarding) briefly until the client closes too: a
        // client still sending then sees our DISCONNECT and its reason instead of a
        // reset, and a WebSocket gets its closing handshake.
        let mut sink = BytesMut::new();
        let linger = async {
            while self.io.ready().await.is_ok() {
                match self.io.try_read(&mut sink) {
                    Ok(Some(0)) | Err(_) => break,
                    _ => sink.clear(),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }

    /// Detaches the session, reports the disconnection and sends the will when due.
    fn release(&mut self, close: &Close) {
        let hub = &self.edge.hub;
        let expiry = self.session.state().expiry;
        hub.detach(&self.session, self.generation);
        hub.emit(&self.session, EventKind::Disconnected(close.reason));
        tracing::debug!(reason = ?close.reason, "disconnected");
        let Some(will) = self.will.take().filter(|_| close.will) else {
            return;
        };
        let delay = Duration::from_secs(u64::from(will.delay)).min(expiry);
        let publication = will_publication(*will);
        if delay.is_zero() || close.reason == DisconnectReason::TakenOver {
            if delay.is_zero() {
                let _ = hub.publish(publication);
            }
            return;
        }
        // MQTT 5 Will Delay: sent only if the session is not resumed in time.
        let hub = Arc::downgrade(hub);
        let session = Arc::downgrade(&self.session);
        let generation = self.generation;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let (Some(hub), Some(session)) = (hub.upgrade(), session.upgrade()) else {
                return;
            };
            let st = session.state();
            let resumed = st.last_conn != generation;
            drop(st);
            if !resumed {
                let _ = hub.publish(publication);
            }
        });
    }
}

fn will_publication(will: Will) -> Publication {
    let expires_at = will
        .props
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
    let props = will.props.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Publication {
        topic: will.topic.into(),
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        props: props.filter(|p| !is_empty_props(p)).map(Box::new),
        expires_at,
        origin: None,
    }
}

fn is_empty_props(p: &PublishProperties) -> bool {
    p.payload_format_indicator.is_none()
        && p.message_expiry_interval.is_none()
        && p.topic_alias.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
        && p.subscription_identifiers.is_empty()
        && p.content_type.is_none()
}

/// The PUBLISH for one delivery: the shared message plus this subscriber's QoS,
/// retain flag, subscription id and remaining expiry.
fn publish_packet(
    out: &Outgoing,
    pkid: u16,
    dup: bool,
    version: Version,
    now: Instant,
    alias: Option<(u16, bool)>,
) -> v5::Packet {
    let msg = &out.msg;
    let properties = if version == Version::V5 {
        let remaining = msg.expires_at.map(|t| {
            u32::try_from(t.saturating_duration_since(now).as_secs().max(1)).unwrap_or(u32::MAX)
        });
        if msg.props.is_none() && remaining.is_none() && out.sub_ids.is_empty() && alias.is_none() {
            None
        } else {
            let mut p = msg.props.as_deref().cloned().unwrap_or(PublishProperties {
                payload_format_indicator: None,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
                subscription_identifiers: Vec::new(),
                content_type: None,
            });
            p.message_expiry_interval = remaining;
            p.subscription_identifiers = out.sub_ids.iter().map(|id| *id as usize).collect();
            p.topic_alias = alias.map(|(a, _)| a);
            Some(p)
        }
    } else {
        None
    };
    v5::Packet::Publish(Publish {
        dup,
        qos: out.qos,
        retain: out.retain,
        topic: match alias {
            Some((_, true)) => Bytes::new(),
            _ => Bytes::copy_from_slice(msg.topic.as_bytes()),
        },
        pkid,
        payload: msg.payload.clone(),
        properties,
    })
}

fn out_type(p: &v5::Packet) -> usize {
    match p {
        v5::Packet::ConnAck(_) => 1,
        v5::Packet::Publish(_) => 2,
        v5::Packet::PubAck(_) => 3,
        v5::Packet::PubRec(_) => 4,
        v5::Packet::PubRel(_) => 5,
        v5::Packet::PubComp(_) => 6,
        v5::Packet::SubAck(_) => 8,
        v5::Packet::UnsubAck(_) => 10,
        v5::Packet::PingResp(_) => 12,
        v5::Packet::Disconnect(_) => 13,
        _ => 14,
    }
}
#[cfg(test)]
mod tests {
    /// The size of the future `F` returns.
    fn returned_size<S: super::Transport, R>(_: fn(super::Conn<S>) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // The task of a connected client is this future (plus tokio's header): it
        // is most of the per-connection memory DESIGN.md §9 budgets at 3 KiB.
        let run = returned_size(super::Conn::<tokio::net::TcpStream>::run);
        assert!(run <= 1024, "connection loop future is {run} bytes");
    }
}
