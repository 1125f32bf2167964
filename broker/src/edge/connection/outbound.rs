//! Towards the client: the session's queue drained into the write buffer within
//! the in-flight window, PUBLISH packets built per delivery (expiry, subscription
//! ids, topic aliases), the resend of a resumed session, and the flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{self, Publish, PublishProperties};
use tokio::io::AsyncWriteExt;

use super::super::Transport;
use super::super::codec::{self, Version, reply};
use super::Conn;
use super::close::Close;
use crate::hub::session::{Outgoing, Stage, Written};
use crate::metrics::PacketKind;

/// Topic aliases a v5 client may use towards us, and the most we assign.
pub(super) const TOPIC_ALIAS_MAX: u16 = 32;

/// Topic aliases towards a v5 client: a topic's first PUBLISH carries topic and
/// alias, later ones only the alias, up to the client's Topic Alias Maximum.
#[derive(Debug)]
pub(super) struct OutAliases {
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

impl OutAliases {
    /// Aliases for a client that accepts `client_max`: ours to bound, we use at
    /// most as many as we accept.
    pub(super) fn new(client_max: u16) -> Self {
        OutAliases {
            max: client_max.min(TOPIC_ALIAS_MAX),
            by_topic: HashMap::new(),
        }
    }

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

impl<S: Transport> Conn<S> {
    /// The client's Maximum Packet Size, as the codec takes it.
    fn client_max(&self) -> usize {
        usize::try_from(self.client_max).unwrap_or(usize::MAX)
    }

    /// Appends a packet to the write buffer, counting it.
    pub(super) fn push(&mut self, packet: &v5::Packet) {
        let client_max = self.client_max();
        match codec::write(packet, self.version, &mut self.wbuf, client_max) {
            Ok(n) => {
                let metrics = &self.edge.hub.metrics;
                metrics.bytes_out.inc_by(n as u64);
                metrics.sent(kind_of(packet));
            }
            Err(e) => tracing::debug!(error = %e, "packet not sent"),
        }
    }

    /// Moves what the session has queued into the write buffer, within the
    /// in-flight window. Fails when the session was taken over or closed.
    pub(super) fn drain(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let metrics = &self.edge.hub.metrics;
        let (version, client_max) = (self.version, self.client_max());
        let wbuf = &mut self.wbuf;
        let aliases = &mut self.out_aliases;
        let drained = self
            .session
            .drain(self.generation, now, |out, pkid| {
                let alias = aliases.as_deref().and_then(|a| a.plan(&out.msg.topic));
                let packet = publish_packet(out, pkid, false, version, now, alias);
                match codec::write(&packet, version, wbuf, client_max) {
                    Ok(n) => {
                        metrics.bytes_out.inc_by(n as u64);
                        if let Some(a) = aliases.as_deref_mut() {
                            a.commit(&out.msg.topic, alias);
                        }
                        Written::Sent
                    }
                    Err(_) => Written::TooLarge,
                }
            })
            .map_err(Close::ended)?;
        metrics.sent_publishes(drained.sent as u64);
        metrics.dropped_expired.inc_by(drained.expired as u64);
        metrics.dropped_too_large.inc_by(drained.too_large as u64);
        Ok(())
    }

    /// After a session resumes: PUBLISH again (DUP) what was not acknowledged, and
    /// PUBREL what was received but not completed (MQTT §4.4).
    pub(super) fn resend_unacknowledged(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let version = self.version;
        // Resent without aliases: simpler, and always valid.
        let packets = self
            .session
            .unacknowledged(self.generation, |out, pkid, stage| match stage {
                Stage::Published => publish_packet(out, pkid, true, version, now, None),
                Stage::Released => reply::pubrel(pkid),
            })
            .map_err(|_| Close::taken_over())?;
        for p in &packets {
            self.push(p);
        }
        Ok(())
    }

    /// Writes out the write buffer.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        self.io.write_all(&buf).await.map_err(|_| Close::lost())?;
        // TLS and WebSocket buffer writes; TCP's flush costs nothing.
        self.io.flush().await.map_err(|_| Close::lost())?;
        Ok(())
    }
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

/// The metric kind of a packet we send.
fn kind_of(p: &v5::Packet) -> PacketKind {
    match p {
        v5::Packet::ConnAck(_) => PacketKind::ConnAck,
        v5::Packet::Publish(_) => PacketKind::Publish,
        v5::Packet::PubAck(_) => PacketKind::PubAck,
        v5::Packet::PubRec(_) => PacketKind::PubRec,
        v5::Packet::PubRel(_) => PacketKind::PubRel,
        v5::Packet::PubComp(_) => PacketKind::PubComp,
        v5::Packet::SubAck(_) => PacketKind::SubAck,
        v5::Packet::UnsubAck(_) => PacketKind::UnsubAck,
        v5::Packet::PingResp(_) => PacketKind::PingResp,
        v5::Packet::Disconnect(_) => PacketKind::Disconnect,
        _ => PacketKind::Auth,
    }
}
