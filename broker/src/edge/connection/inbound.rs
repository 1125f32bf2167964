//! From the client: reading packets off the socket and handling each one.
//! PUBLISH is checked against the ACL and routed (or, on the client's own outbox,
//! uplinked); SUBSCRIBE and UNSUBSCRIBE change the session through the hub; acks
//! and releases go to the session, which applies them only for the connection
//! that holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use imqtt_wire::topic::outbox_owner;
use rumqttc::v5::mqttbytes::v5::{
    self, DisconnectReasonCode, PubAckReason, PubRecReason, Publish, PublishProperties,
    RetainForwardRule, SubscribeReasonCode, UnsubAckReason,
};

use super::super::Transport;
use super::super::codec::{self, Inbound, Version, reply};
use super::Conn;
use super::close::Close;
use super::outbound::TOPIC_ALIAS_MAX;
use super::uplink::Ack;
use crate::QoS;
use crate::acl::{Principal, Publisher};
use crate::hub::Publication;
use crate::hub::session::{Outgoing, Receipt, Stale, SubOpts};
use crate::metrics::PacketKind;
use crate::topic;

impl<S: Transport> Conn<S> {
    /// Reads what the socket has without waiting (readiness can be stale, and a
    /// read that waited here would not see the session's wake-ups).
    pub(super) fn read_packets(&mut self) -> Result<(), Close> {
        let n = match self.io.try_read(&mut self.rbuf) {
            Ok(None) => {
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                return Ok(());
            }
            Ok(Some(0)) | Err(_) => return Err(Close::lost()),
            Ok(Some(n)) => n,
        };
        self.edge.hub.metrics.bytes_in.inc_by(n as u64);
        self.last_rx = Instant::now();
        self.handle_buffered()
    }

    /// Handles the whole packets in the read buffer, stopping early while reading
    /// is paused or a subscriber is congested (the rest waits in the buffer: one
    /// read can hold hundreds of small PUBLISHes).
    pub(super) fn handle_buffered(&mut self) -> Result<(), Close> {
        let max = self.edge.cfg.max_packet_size.as_usize();
        while !self.reading_paused() && self.congested.is_none() {
            match codec::read(&mut self.rbuf, self.version, max) {
                Ok(Some(packet)) => {
                    self.edge.hub.metrics.received(packet.kind());
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
        let generation = self.generation;
        let stale = |Stale| Close::taken_over();
        match packet {
            Inbound::Publish(p) => self.on_publish(p)?,
            Inbound::PubAck(pkid) => self.session.acked(generation, pkid).map_err(stale)?,
            Inbound::PubRec(pkid) => {
                self.session.received(generation, pkid).map_err(stale)?;
                self.push(&reply::pubrel(pkid));
            }
            Inbound::PubComp(pkid) => self.session.completed(generation, pkid).map_err(stale)?,
            Inbound::PubRel(pkid) => {
                let found = self
                    .session
                    .release_incoming(generation, pkid)
                    .map_err(stale)?;
                self.push(&reply::pubcomp(pkid, found));
            }
            Inbound::Subscribe(s) => self.on_subscribe(s)?,
            Inbound::Unsubscribe(u) => self.on_unsubscribe(u)?,
            Inbound::PingReq => self.push(&v5::Packet::PingResp(v5::PingResp)),
            Inbound::Disconnect {
                reason,
                session_expiry,
            } => {
                if let Some(secs) = session_expiry {
                    let cap = self.edge.cfg.max_session_expiry.get();
                    let expiry = Duration::from_secs(u64::from(secs)).min(cap);
                    self.session.set_expiry(generation, expiry).map_err(stale)?;
                }
                return Err(Close::normal(
                    reason == DisconnectReasonCode::DisconnectWithWillMessage,
                ));
            }
            Inbound::Unexpected(what) => {
                tracing::debug!(packet = what, "protocol error");
                return Err(Close::error(DisconnectReasonCode::ProtocolError));
            }
        }
        Ok(())
    }

    fn principal(&self) -> Principal<'_> {
        Principal {
            uid: &self.session.uid,
            superuser: self.superuser,
        }
    }

    /// The topic of a PUBLISH, with v5 topic aliases resolved and recorded.
    fn topic_of(&mut self, raw: &Bytes, alias: Option<u16>) -> Result<Arc<str>, Close> {
        if raw.is_empty() {
            let slot = alias.and_then(|a| self.aliases.get(usize::from(a)).cloned().flatten());
            return slot.ok_or_else(|| Close::error(DisconnectReasonCode::TopicAliasInvalid));
        }
        let t: Arc<str> = std::str::from_utf8(raw)
            .map_err(|_| Close::error(DisconnectReasonCode::TopicNameInvalid))?
            .into();
        if let Some(a) = alias {
            if a == 0 || a > TOPIC_ALIAS_MAX {
                return Err(Close::error(DisconnectReasonCode::TopicAliasInvalid));
            }
            if self.aliases.is_empty() {
                self.aliases = vec![None; usize::from(TOPIC_ALIAS_MAX) + 1].into_boxed_slice();
            }
            self.aliases[usize::from(a)] = Some(t.clone());
        }
        Ok(t)
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let mut props = p.properties;
        let alias = props.as_mut().and_then(|pr| pr.topic_alias.take());
        let topic = self.topic_of(&p.topic, alias)?;
        if !topic::valid_topic(&topic) {
            return Err(Close::error(DisconnectReasonCode::TopicNameInvalid));
        }
        if !self
            .edge
            .acl
            .may_publish(Publisher::Client(self.principal()), &topic)
        {
            tracing::info!(
                user = %self.session.uid,
                client_id = self.session.client_id(),
                %topic,
                "PUBLISH refused"
            );
            return self.refuse_publish(p.pkid, p.qos);
        }
        // A copy: the parsed payload shares the whole read buffer it came in,
        // which a retained, queued or uplinked message would otherwise keep alive.
        let payload = Bytes::copy_from_slice(&p.payload);
        // Allowed, so an outbox is the client's own.
        if outbox_owner(&topic).is_some() {
            return self.uplink(p.pkid, p.qos, payload);
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
            payload,
            qos: p.qos,
            retain: p.retain,
            props: props.filter(|pr| !is_empty_props(pr)).map(Box::new),
            expires_at,
            origin: Some(self.session.id),
            scope: crate::hub::Scope::Cluster,
        };
        match p.qos {
            QoS::AtMostOnce => {
                let full = self.edge.hub.publish(publication);
                self.note_pressure(full);
            }
            QoS::AtLeastOnce => {
                let full = self.edge.hub.publish(publication);
                self.note_pressure(full);
                self.owe(Ack::PubAck(p.pkid, PubAckReason::Success));
            }
            QoS::ExactlyOnce => {
                let max = usize::from(self.edge.cfg.max_inflight);
                match self
                    .session
                    .receive_qos2(self.generation, p.pkid, max)
                    .map_err(|Stale| Close::taken_over())?
                {
                    Receipt::TooMany => {
                        return Err(Close::error(DisconnectReasonCode::ReceiveMaximumExceeded));
                    }
                    // Delivered on first receipt; the id stays until PUBREL so a
                    // retransmission is acknowledged without a second delivery.
                    Receipt::New => {
                        let full = self.edge.hub.publish(publication);
                        self.note_pressure(full);
                    }
                    Receipt::Duplicate => {}
                }
                self.owe(Ack::PubRec(p.pkid, PubRecReason::Success));
            }
        }
        Ok(())
    }

    /// A PUBLISH the client may not make: v5 gets PUBACK / PUBREC 0x87, 3.1.1
    /// (which has no negative ack) a closed connection.
    pub(super) fn refuse_publish(&mut self, pkid: u16, qos: QoS) -> Result<(), Close> {
        self.edge.hub.metrics.refused_publishes.inc();
        if self.version == Version::V4 {
            return Err(Close::error(DisconnectReasonCode::NotAuthorized));
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.owe(Ack::PubAck(pkid, PubAckReason::NotAuthorized)),
            QoS::ExactlyOnce => self.owe(Ack::PubRec(pkid, PubRecReason::NotAuthorized)),
        }
        Ok(())
    }

    fn on_subscribe(&mut self, s: v5::Subscribe) -> Result<(), Close> {
        let sub_id = s
            .properties
            .as_ref()
            .and_then(|p| p.id)
            .and_then(|id| u32::try_from(id).ok());
        let v5 = self.version == Version::V5;
        let refuse = |code| {
            if v5 {
                code
            } else {
                SubscribeReasonCode::Failure
            }
        };
        let metrics = self.edge.hub.metrics.clone();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            if !topic::valid_filter(&f.path) {
                metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::TopicFilterInvalid));
                continue;
            }
            // Shared subscriptions are for superusers (monitoring, workers): a user's
            // own topics have a single reader anyway.
            let shared = f.path.starts_with("$share/");
            if shared && topic::parse_shared(&f.path).is_none() {
                metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::TopicFilterInvalid));
                continue;
            }
            if !self.edge.acl.may_subscribe(self.principal(), &f.path) {
                metrics.refused_subscriptions.inc();
                tracing::info!(
                    user = %self.session.uid,
                    client_id = self.session.client_id(),
                    filter = %f.path,
                    "SUBSCRIBE refused"
                );
                codes.push(refuse(SubscribeReasonCode::NotAuthorized));
                continue;
            }
            let opts = SubOpts {
                qos: f.qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                id: sub_id,
            };
            let max = self.edge.cfg.max_subscriptions;
            let added = self
                .edge
                .hub
                .subscribe(&self.session, self.generation, &f.path, opts, max)
                .map_err(|Stale| Close::taken_over())?;
            let Ok(new) = added else {
                metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::QuotaExceeded));
                continue;
            };
            // The bridge revokes (a member removed, a contact dropped) by first
            // recording it and then unsubscribing the user's sessions. Asking again
            // once the subscription is in place closes the gap between the first
            // answer and the insert: either the revocation's unsubscribe comes after
            // the insert and removes it, or this second answer already sees it.
            if self.edge.acl.asks_authorizer(self.principal(), &f.path)
                && !self.edge.acl.may_subscribe(self.principal(), &f.path)
            {
                self.edge
                    .hub
                    .unsubscribe(&self.session, Some(self.generation), &f.path)
                    .map_err(|Stale| Close::taken_over())?;
                metrics.refused_subscriptions.inc();
                codes.push(refuse(SubscribeReasonCode::NotAuthorized));
                continue;
            }
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
        self.settle = true;
        // After the SUBACK, in the session's own order.
        for out in retained {
            let _ = self.edge.hub.deliver(&self.session, out);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: v5::Unsubscribe) -> Result<(), Close> {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let existed = self
                .edge
                .hub
                .unsubscribe(&self.session, Some(self.generation), f)
                .map_err(|Stale| Close::taken_over())?;
            reasons.push(if existed {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
        }
        self.push(&reply::unsuback(u.pkid, reasons));
        Ok(())
    }
}

pub(super) fn is_empty_props(p: &PublishProperties) -> bool {
    p.payload_format_indicator.is_none()
        && p.message_expiry_interval.is_none()
        && p.topic_alias.is_none()
        && p.response_topic.is_none()
        && p.correlation_data.is_none()
        && p.user_properties.is_empty()
        && p.subscription_identifiers.is_empty()
        && p.content_type.is_none()
}

impl Inbound {
    /// The metric kind of a packet received.
    fn kind(&self) -> PacketKind {
        match self {
            Inbound::Publish(_) => PacketKind::Publish,
            Inbound::PubAck(_) => PacketKind::PubAck,
            Inbound::PubRec(_) => PacketKind::PubRec,
            Inbound::PubRel(_) => PacketKind::PubRel,
            Inbound::PubComp(_) => PacketKind::PubComp,
            Inbound::Subscribe(_) => PacketKind::Subscribe,
            Inbound::Unsubscribe(_) => PacketKind::Unsubscribe,
            Inbound::PingReq => PacketKind::PingReq,
            Inbound::Disconnect { .. } => PacketKind::Disconnect,
            Inbound::Unexpected(_) => PacketKind::Auth,
        }
    }
}
