//! How a connection ends: the reason (for the event and the v5 DISCONNECT), the
//! farewell write, the hub told at once, the will, and a short linger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use imqtt_wire::topic::outbox_owner;
use rumqttc::v5::mqttbytes::v5::{self, DisconnectReasonCode, PublishProperties};
use tokio::io::AsyncWriteExt;

use super::super::Transport;
use super::super::codec::{self, CodecError, Version, Will, reply};
use super::Conn;
use crate::events::DisconnectReason;
use crate::hub::Publication;
use crate::hub::session::{CloseRequest, Ended};
use crate::uplink::{Answer, UplinkMessage};

/// How long a closing connection keeps reading after its DISCONNECT.
const LINGER: Duration = Duration::from_secs(1);
/// Longest a final DISCONNECT / CONNACK write may take.
pub(super) const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// How a connection ends.
#[derive(Debug)]
pub(super) struct Close {
    pub(super) reason: DisconnectReason,
    /// DISCONNECT reason code sent to a v5 client, if any.
    code: Option<DisconnectReasonCode>,
    /// Whether the will is published.
    will: bool,
}

impl Close {
    /// A protocol violation or failure, told to a v5 client with `code`; the will
    /// is sent.
    pub(super) fn error(code: DisconnectReasonCode) -> Close {
        Close {
            reason: DisconnectReason::Error,
            code: Some(code),
            will: true,
        }
    }

    /// The socket failed or closed without DISCONNECT: nothing to tell, the will
    /// is sent.
    pub(super) fn lost() -> Close {
        Close {
            reason: DisconnectReason::Error,
            code: None,
            will: true,
        }
    }

    /// A bad packet.
    pub(super) fn from_codec(e: &CodecError) -> Close {
        tracing::debug!(error = %e, "closing on a bad packet");
        Close::error(match e {
            CodecError::TooLarge => DisconnectReasonCode::PacketTooLarge,
            _ => DisconnectReasonCode::MalformedPacket,
        })
    }

    /// The client sent DISCONNECT; v5 reason 0x04 asks for the will anyway.
    pub(super) fn normal(with_will: bool) -> Close {
        Close {
            reason: DisconnectReason::Normal,
            code: None,
            will: with_will,
        }
    }

    /// Nothing came for 1.5 times the keepalive.
    pub(super) fn keepalive_timeout() -> Close {
        Close {
            reason: DisconnectReason::KeepaliveTimeout,
            code: Some(DisconnectReasonCode::KeepAliveTimeout),
            will: true,
        }
    }

    /// Another connection took the session over.
    pub(super) fn taken_over() -> Close {
        Close {
            reason: DisconnectReason::TakenOver,
            code: Some(DisconnectReasonCode::SessionTakenOver),
            will: true,
        }
    }

    /// The uplink consumer dropped an answer: no ack is sent, so the client sends
    /// the message again once it reconnects.
    pub(super) fn uplink_failed() -> Close {
        Close::error(DisconnectReasonCode::UnspecifiedError)
    }

    /// Why the session says this connection must stop.
    pub(super) fn ended(why: Ended) -> Close {
        match why {
            Ended::TakenOver => Close::taken_over(),
            Ended::Requested(CloseRequest::Disconnected) => Close {
                reason: DisconnectReason::Disconnected,
                code: Some(DisconnectReasonCode::AdministrativeAction),
                will: false,
            },
            Ended::Requested(CloseRequest::ShuttingDown) => Close {
                reason: DisconnectReason::ServerShutdown,
                code: Some(DisconnectReasonCode::ServerShuttingDown),
                will: false,
            },
        }
    }
}

/// Writes one last packet (a refusing CONNACK) and shuts the socket, bounded in time.
pub(super) async fn write_now<S: Transport>(io: &mut S, packet: &v5::Packet, version: Version) {
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

impl<S: Transport> Conn<S> {
    /// Says goodbye (v5: DISCONNECT with the reason), tells the hub, then lingers.
    pub(super) async fn finish(mut self, close: Close) {
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

    /// Detaches the session (the hub reports the disconnection) and sends the
    /// will when due.
    fn release(&mut self, close: &Close) {
        let hub = &self.edge.hub;
        let expiry = self.session.expiry();
        hub.detach(&self.session, self.generation, close.reason);
        tracing::debug!(reason = ?close.reason, "disconnected");
        let Some(will) = self.will.take().filter(|_| close.will) else {
            return;
        };
        let delay = Duration::from_secs(u64::from(will.delay)).min(expiry);
        if delay.is_zero() || close.reason == DisconnectReason::TakenOver {
            if delay.is_zero() {
                self.send_will(*will);
            }
            return;
        }
        // MQTT 5 §3.1.3.2.2: the will waits for the Will Delay Interval or the end
        // of the session, whichever comes first, and is not sent if a connection
        // resumes the session meanwhile. (`delay` is at most the session expiry.)
        let edge = Arc::downgrade(&self.edge);
        let session = Arc::downgrade(&self.session);
        let generation = self.generation;
        let uid = self.session.uid.to_string();
        let client_id = self.session.client_id().to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(edge) = edge.upgrade() else {
                return;
            };
            // A session that is gone ended without being resumed (resuming keeps
            // it); one that is still there may have been resumed.
            let resumed = session
                .upgrade()
                .is_some_and(|s| !s.last_held_by(generation));
            if !resumed {
                send_will(&edge, &uid, &client_id, *will);
            }
        });
    }

    fn send_will(&self, will: Will) {
        send_will(
            &self.edge,
            &self.session.uid,
            self.session.client_id(),
            will,
        );
    }
}

/// Publishes a will; one on the user's own outbox goes to the uplink instead,
/// like any outbox publish (its answer has nobody left to tell). CONNECT allowed
/// the will's topic, so an outbox is the user's own.
fn send_will(edge: &super::super::Edge, uid: &str, client_id: &str, will: Will) {
    if outbox_owner(&will.topic).is_some() {
        if let Some(tx) = edge.uplink.sender().cloned() {
            let msg = UplinkMessage {
                uid: uid.to_owned(),
                client_id: client_id.to_owned(),
                qos: will.qos,
                payload: will.payload,
                answer: Answer::none(),
            };
            edge.hub.metrics.uplinked.inc();
            // Bounded by the uplink queue; one task per will at most.
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
        return;
    }
    let _ = edge.hub.publish(will_publication(will));
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
        props: props
            .filter(|p| !super::inbound::is_empty_props(p))
            .map(Box::new),
        expires_at,
        origin: None,
        scope: crate::hub::Scope::Cluster,
    }
}
