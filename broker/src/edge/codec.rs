//! The wire format, by protocol version: rumqttc's `mqttbytes` v4 and v5 packet
//! types read and written on the server side. The connection works with v5 types
//! throughout; MQTT 3.1.1 packets are converted at this boundary, so there is one
//! set of packet types in the broker and none of our own.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{
    self, ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWillProperties, PubAck,
    PubComp, PubRec, PubRel, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
    Unsubscribe,
};

use crate::QoS;

mod connect;

/// The protocol level a client connected with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Most a CONNECT may take: the bound on what a client can make the server hold
/// before it has authenticated, ample for a client id, a token and a will.
/// `mqtt.max_packet_size` (1 MiB by default) applies from CONNACK on.
pub(crate) const CONNECT_MAX: usize = 64 * 1024;

/// Why bytes could not become a packet.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("packet larger than the maximum packet size")]
    TooLarge,
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("the first packet was not CONNECT")]
    NotConnect,
    /// A CONNECT of a known protocol level, refused for what it says;
    /// [`connect_refusal`] gives its CONNACK.
    #[error("{fault} ({version:?})")]
    Connect {
        version: Version,
        fault: ConnectFault,
    },
}

/// What is wrong with a CONNECT.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectFault {
    /// Its Remaining Length is over [`CONNECT_MAX`] (or `mqtt.max_packet_size`,
    /// if smaller); refused from the fixed header, before the rest is read.
    #[error("CONNECT announces {0} bytes, more than is read before login")]
    TooLarge(usize),
    /// Does not parse: a bad flag, an unknown property, a field cut short.
    #[error("malformed CONNECT: {0}")]
    Malformed(String),
    /// Parses, but breaks a rule that MQTT 5 calls a Protocol Error (§4.13).
    #[error("protocol error in CONNECT: {0}")]
    Protocol(&'static str),
    /// A property other than User Property appears twice (MQTT 5 §3.1.2.11,
    /// §3.1.3.2), a Protocol Error.
    #[error("protocol error in CONNECT: {0} appears more than once")]
    Duplicate(&'static str),
    /// Asks for enhanced authentication (MQTT 5 §4.12), which is not offered:
    /// the user name and a token are the only login.
    #[error("CONNECT asks for an Authentication Method, which is not supported")]
    AuthMethod,
}

/// The CONNACK code answering a CONNECT that [`read_connect`] refused, and the
/// version to write it in; `None`: close without one. MQTT 3.1.1 has a code only
/// for the protocol level (§3.1.2.2) and otherwise just closes (§3.1.4), and a
/// stream whose level is unknown gets no answer.
pub(crate) fn connect_refusal(e: &CodecError) -> Option<(ConnectReturnCode, Version)> {
    let fault = match e {
        CodecError::UnsupportedVersion(_) => {
            return Some((ConnectReturnCode::RefusedProtocolVersion, Version::V4));
        }
        CodecError::Connect {
            version: Version::V5,
            fault,
        } => fault,
        _ => return None,
    };
    let code = match fault {
        ConnectFault::TooLarge(_) => ConnectReturnCode::PacketTooLarge,
        ConnectFault::Malformed(_) => ConnectReturnCode::MalformedPacket,
        ConnectFault::Protocol(_) | ConnectFault::Duplicate(_) => ConnectReturnCode::ProtocolError,
        ConnectFault::AuthMethod => ConnectReturnCode::BadAuthenticationMethod,
    };
    Some((code, Version::V5))
}

fn malformed(e: impl std::fmt::Display) -> CodecError {
    CodecError::Malformed(e.to_string())
}

/// A will message from CONNECT.
#[derive(Clone, Debug)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) delay: u32,
    pub(crate) props: Option<LastWillProperties>,
}

/// CONNECT, whatever the version.
#[derive(Debug)]
pub(crate) struct ConnectInfo {
    pub(crate) version: Version,
    pub(crate) client_id: String,
    pub(crate) clean_start: bool,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) will: Option<Will>,
    pub(crate) session_expiry: Option<u32>,
    pub(crate) receive_max: Option<u16>,
    pub(crate) max_packet_size: Option<u32>,
    /// Topic aliases the client accepts from us (MQTT 5 Topic Alias Maximum).
    pub(crate) topic_alias_max: u16,
}

/// A packet from a connected client, in v5 terms.
#[derive(Debug)]
pub(crate) enum Inbound {
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    PingReq,
    Disconnect {
        reason: DisconnectReasonCode,
        session_expiry: Option<u32>,
    },
    /// A packet a client must not send at this point (a second CONNECT, AUTH, or
    /// a server-to-client type).
    Unexpected(&'static str),
}

/// Reads the first packet, which must be CONNECT; `Ok(None)` means more bytes are
/// needed. The protocol level byte decides which codec parses it, after the
/// checks rumqttc does not make (`connect::check`).
pub(crate) fn read_connect(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<ConnectInfo>, CodecError> {
    // Refuse a stream that does not start with CONNECT at once, rather than waiting
    // for the whole frame its garbage length announces.
    if buf.first().is_some_and(|b| b >> 4 != 1) {
        return Err(CodecError::NotConnect);
    }
    // The bound is applied to the Remaining Length the fixed header announces, so
    // a CONNECT that would be too large is refused before the rest is read: the
    // buffer of an unauthenticated socket never holds more than the bound plus
    // one read.
    let header = match rumqttc::mqttbytes::check(buf.iter(), max.min(CONNECT_MAX)) {
        Ok(header) => header,
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(len)) => {
            // The level is a dozen bytes in, normally in the same read: a v5
            // client is then told 0x95. It is not waited for.
            return Err(match connect::protocol_level(buf).and_then(version_of) {
                Some(version) => CodecError::Connect {
                    version,
                    fault: ConnectFault::TooLarge(len),
                },
                None => CodecError::TooLarge,
            });
        }
        Err(e) => return Err(malformed(e)),
    };
    let frame = &buf[..header.frame_length()];
    let level = connect::protocol_level(frame).ok_or_else(|| malformed("short CONNECT"))?;
    let version = version_of(level).ok_or(CodecError::UnsupportedVersion(level))?;
    let refused = |fault| CodecError::Connect { version, fault };
    connect::check(frame, version).map_err(refused)?;
    let unreadable = |e: &dyn std::fmt::Display| refused(ConnectFault::Malformed(e.to_string()));
    match version {
        Version::V4 => match v4::Packet::read(buf, max).map_err(|e| unreadable(&e))? {
            v4::Packet::Connect(c) => Ok(Some(from_v4_connect(c))),
            _ => Err(CodecError::NotConnect),
        },
        Version::V5 => match v5::Packet::read(buf, None).map_err(|e| unreadable(&e))? {
            v5::Packet::Connect(c, will, login) => from_v5_connect(c, will, login)
                .map(Some)
                .map_err(|e| unreadable(&e)),
            _ => Err(CodecError::NotConnect),
        },
    }
}

fn version_of(level: u8) -> Option<Version> {
    match level {
        4 => Some(Version::V4),
        5 => Some(Version::V5),
        _ => None,
    }
}

fn from_v4_connect(c: v4::Connect) -> ConnectInfo {
    let (username, password) = match c.login {
        Some(l) => (Some(l.username), Some(l.password)),
        None => (None, None),
    };
    ConnectInfo {
        version: Version::V4,
        client_id: c.client_id,
        clean_start: c.clean_session,
        keep_alive: c.keep_alive,
        username,
        password,
        will: c.last_will.map(|w| Will {
            topic: w.topic,
            payload: w.message,
            qos: qos_from_v4(w.qos),
            retain: w.retain,
            delay: 0,
            props: None,
        }),
        session_expiry: None,
        receive_max: None,
        max_packet_size: None,
        topic_alias_max: 0,
    }
}

fn from_v5_connect(
    c: v5::Connect,
    will: Option<v5::LastWill>,
    login: Option<v5::Login>,
) -> Result<ConnectInfo, &'static str> {
    let props = c.properties.as_ref();
    let will = match will {
        Some(w) => Some(Will {
            topic: String::from_utf8(w.topic.to_vec()).map_err(|_| "will topic is not UTF-8")?,
            payload: w.message,
            qos: w.qos,
            retain: w.retain,
            delay: w
                .properties
                .as_ref()
                .and_then(|p| p.delay_interval)
                .unwrap_or(0),
            props: w.properties,
        }),
        None => None,
    };
    let (username, password) = match login {
        Some(l) => (Some(l.username), Some(l.password)),
        None => (None, None),
    };
    Ok(ConnectInfo {
        version: Version::V5,
        client_id: c.client_id,
        clean_start: c.clean_start,
        keep_alive: c.keep_alive,
        username,
        password,
        will,
        session_expiry: props.and_then(|p| p.session_expiry_interval),
        receive_max: props.and_then(|p| p.receive_maximum),
        max_packet_size: props.and_then(|p| p.max_packet_size),
        topic_alias_max: props.and_then(|p| p.topic_alias_max).unwrap_or(0),
    })
}

/// Reads one packet after CONNECT; `Ok(None)` means more bytes are needed.
pub(crate) fn read(
    buf: &mut BytesMut,
    version: Version,
    max: usize,
) -> Result<Option<Inbound>, CodecError> {
    match version {
        Version::V4 => match v4::Packet::read(buf, max) {
            Ok(p) => Ok(Some(from_v4(p))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                Err(CodecError::TooLarge)
            }
            Err(e) => Err(malformed(e)),
        },
        Version::V5 => {
            // rumqttc wants a body for DISCONNECT and AUTH, but Remaining Length 0
            // is legal (MQTT 5 §3.14.2.1) and is what paho sends on every normal
            // disconnect: a missed `E0 00` would fire wills on clean disconnects.
            if buf.len() >= 2 && buf[1] == 0 && (buf[0] == 0xE0 || buf[0] == 0xF0) {
                let first = buf[0];
                let _ = buf.split_to(2);
                return Ok(Some(if first == 0xE0 {
                    Inbound::Disconnect {
                        reason: DisconnectReasonCode::NormalDisconnection,
                        session_expiry: None,
                    }
                } else {
                    Inbound::Unexpected("AUTH")
                }));
            }
            match v5::Packet::read(buf, Some(u32::try_from(max).unwrap_or(u32::MAX))) {
                Ok(p) => Ok(Some(from_v5(p))),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                    Err(CodecError::TooLarge)
                }
                Err(e) => Err(malformed(e)),
            }
        }
    }
}

fn from_v4(p: v4::Packet) -> Inbound {
    match p {
        v4::Packet::Publish(p) => Inbound::Publish(Publish {
            dup: p.dup,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe(Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| v5::Filter {
                    path: f.path,
                    qos: qos_from_v4(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
            properties: None,
        }),
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect {
            reason: DisconnectReasonCode::NormalDisconnection,
            session_expiry: None,
        },
        v4::Packet::Connect(_) => Inbound::Unexpected("CONNECT"),
        _ => Inbound::Unexpected("server-to-client packet"),
    }
}

fn from_v5(p: v5::Packet) -> Inbound {
    match p {
        v5::Packet::Publish(p) => Inbound::Publish(p),
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe(s),
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe(u),
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            reason: d.reason_code,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        v5::Packet::Connect(..) => Inbound::Unexpected("CONNECT"),
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        _ => Inbound::Unexpected("server-to-client packet"),
    }
}

/// Appends `packet` to `buf` in the connection's version; packets that MQTT 3.1.1
/// lacks (DISCONNECT from the server) write nothing there. Fails when the packet
/// exceeds `max` (the client's Maximum Packet Size).
pub(crate) fn write(
    packet: &v5::Packet,
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<usize, CodecError> {
    match version {
        // rumqttc 0.25 encodes a DISCONNECT with a reason code and no properties as
        // Remaining Length 1 plus a stray property-length byte, and one with empty
        // properties as a normal disconnect; the wire form is written here instead:
        // reason code, then a zero property length (MQTT 5 §3.14.2).
        Version::V5 if matches!(packet, v5::Packet::Disconnect(d) if d.properties.is_none()) => {
            let v5::Packet::Disconnect(d) = packet else {
                return Ok(0);
            };
            buf.extend_from_slice(&[0xE0, 0x02, d.reason_code as u8, 0x00]);
            Ok(4)
        }
        Version::V5 => packet
            .write(buf, Some(u32::try_from(max).unwrap_or(u32::MAX)))
            .map_err(|e| match e {
                rumqttc::v5::mqttbytes::Error::OutgoingPacketTooLarge { .. } => {
                    CodecError::TooLarge
                }
                e => malformed(e),
            }),
        Version::V4 => {
            let Some(p) = to_v4(packet) else { return Ok(0) };
            p.write(buf, max).map_err(|e| match e {
                rumqttc::mqttbytes::Error::OutgoingPacketTooLarge { .. } => CodecError::TooLarge,
                e => malformed(e),
            })
        }
    }
}

fn to_v4(p: &v5::Packet) -> Option<v4::Packet> {
    Some(match p {
        v5::Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: c.session_present,
            code: match c.code {
                ConnectReturnCode::Success => v4::ConnectReturnCode::Success,
                ConnectReturnCode::UnsupportedProtocolVersion
                | ConnectReturnCode::RefusedProtocolVersion => {
                    v4::ConnectReturnCode::RefusedProtocolVersion
                }
                ConnectReturnCode::ClientIdentifierNotValid | ConnectReturnCode::BadClientId => {
                    v4::ConnectReturnCode::BadClientId
                }
                ConnectReturnCode::BadUserNamePassword => {
                    v4::ConnectReturnCode::BadUserNamePassword
                }
                ConnectReturnCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                _ => v4::ConnectReturnCode::ServiceUnavailable,
            },
        }),
        v5::Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to_v4(p.qos),
            retain: p.retain,
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        v5::Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck { pkid: a.pkid }),
        v5::Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec { pkid: a.pkid }),
        v5::Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel { pkid: a.pkid }),
        v5::Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp { pkid: a.pkid }),
        v5::Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => {
                        v4::SubscribeReasonCode::Success(qos_to_v4(*q))
                    }
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        v5::Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck { pkid: u.pkid }),
        v5::Packet::PingResp(_) => v4::Packet::PingResp,
        _ => return None,
    })
}

fn qos_from_v4(q: rumqttc::mqttbytes::QoS) -> QoS {
    match q {
        rumqttc::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(q: QoS) -> rumqttc::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => rumqttc::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Builders for the acks and replies the server sends, with empty properties.
pub(crate) mod reply {
    use super::*;

    pub(crate) fn puback(pkid: u16, reason: v5::PubAckReason) -> v5::Packet {
        v5::Packet::PubAck(PubAck {
            pkid,
            reason,
            properties: None,
        })
    }

    pub(crate) fn pubrec(pkid: u16, reason: v5::PubRecReason) -> v5::Packet {
        v5::Packet::PubRec(PubRec {
            pkid,
            reason,
            properties: None,
        })
    }

    pub(crate) fn pubrel(pkid: u16) -> v5::Packet {
        v5::Packet::PubRel(PubRel {
            pkid,
            reason: v5::PubRelReason::Success,
            properties: None,
        })
    }

    pub(crate) fn pubcomp(pkid: u16, found: bool) -> v5::Packet {
        v5::Packet::PubComp(PubComp {
            pkid,
            reason: if found {
                v5::PubCompReason::Success
            } else {
                v5::PubCompReason::PacketIdentifierNotFound
            },
            properties: None,
        })
    }

    pub(crate) fn suback(pkid: u16, return_codes: Vec<SubscribeReasonCode>) -> v5::Packet {
        v5::Packet::SubAck(SubAck {
            pkid,
            return_codes,
            properties: None,
        })
    }

    pub(crate) fn unsuback(pkid: u16, reasons: Vec<v5::UnsubAckReason>) -> v5::Packet {
        v5::Packet::UnsubAck(UnsubAck {
            pkid,
            reasons,
            properties: None,
        })
    }

    pub(crate) fn disconnect(reason: DisconnectReasonCode) -> v5::Packet {
        v5::Packet::Disconnect(Disconnect {
            reason_code: reason,
            properties: None,
        })
    }

    /// CONNACK refusing the connection.
    pub(crate) fn refuse(code: ConnectReturnCode) -> v5::Packet {
        v5::Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_disconnect_carries_its_reason_and_an_empty_property_length() {
        let mut buf = BytesMut::new();
        let p = reply::disconnect(DisconnectReasonCode::SessionTakenOver);
        write(&p, Version::V5, &mut buf, usize::MAX).expect("encode");
        assert_eq!(&buf[..], &[0xE0, 0x02, 0x8E, 0x00]);
        // And rumqttc's own reader accepts it.
        let back = v5::Packet::read(&mut buf, None).expect("decodes");
        assert!(
            matches!(back, v5::Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::SessionTakenOver)
        );
        // MQTT 3.1.1 has no server DISCONNECT: nothing is written.
        let mut v4buf = BytesMut::new();
        assert_eq!(
            write(&p, Version::V4, &mut v4buf, usize::MAX).expect("ok"),
            0
        );
        assert!(v4buf.is_empty());
    }

    #[test]
    fn v5_disconnect_with_remaining_length_zero_is_a_normal_disconnect() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        let p = read(&mut buf, Version::V5, 1024)
            .expect("ok")
            .expect("a packet");
        assert!(matches!(
            p,
            Inbound::Disconnect {
                reason: DisconnectReasonCode::NormalDisconnection,
                ..
            }
        ));
        assert!(buf.is_empty());
    }

    /// Valid packets of both versions, then mutated: bytes flipped, lengths
    /// changed, frames cut. Reading them must fail or succeed, never panic.
    #[test]
    fn mutated_packets_never_panic_the_reader() {
        let mut seeds: Vec<(Version, Vec<u8>)> = Vec::new();
        let mut connect = v4::Connect::new("dev");
        connect.set_login("alice", "token");
        connect.last_will = Some(v4::LastWill::new(
            "w/t",
            "bye",
            rumqttc::mqttbytes::QoS::AtLeastOnce,
            true,
        ));
        let mut publish =
            v4::Publish::new("a/b", rumqttc::mqttbytes::QoS::ExactlyOnce, vec![1, 2, 3]);
        publish.pkid = 5;
        let mut subscribe = v4::Subscribe::new("a/+/#", rumqttc::mqttbytes::QoS::AtLeastOnce);
        subscribe.pkid = 6;
        let mut unsubscribe = v4::Unsubscribe::new("a/b");
        unsubscribe.pkid = 8;
        let v4_packets = [
            v4::Packet::Connect(connect),
            v4::Packet::Publish(publish),
            v4::Packet::Subscribe(subscribe),
            v4::Packet::Unsubscribe(unsubscribe),
            v4::Packet::PubRel(v4::PubRel::new(7)),
        ];
        for p in &v4_packets {
            let mut b = BytesMut::new();
            p.write(&mut b, 1 << 20).expect("encode");
            seeds.push((Version::V4, b.to_vec()));
        }
        let mut props = v5::ConnectProperties::new();
        props.session_expiry_interval = Some(60);
        props.receive_maximum = Some(10);
        props.topic_alias_max = Some(4);
        props.user_properties = vec![("k".into(), "v".into())];
        let v5_connect = v5::Packet::Connect(
            v5::Connect {
                keep_alive: 30,
                client_id: "dev".into(),
                clean_start: false,
                properties: Some(props),
            },
            Some(v5::LastWill::new(
                "w/t",
                "bye",
                QoS::AtLeastOnce,
                false,
                None,
            )),
            Some(v5::Login::new("alice", "token")),
        );
        let v5_packets = [
            v5_connect,
            v5::Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Bytes::from_static(b"a/b"),
                pkid: 3,
                payload: Bytes::from_static(b"xyz"),
                properties: None,
            }),
            v5::Packet::Subscribe(Subscribe {
                pkid: 9,
                filters: vec![v5::Filter::new("a/#", QoS::ExactlyOnce)],
                properties: None,
            }),
            reply::disconnect(DisconnectReasonCode::NormalDisconnection),
        ];
        for p in &v5_packets {
            let mut b = BytesMut::new();
            p.write(&mut b, None).expect("encode");
            seeds.push((Version::V5, b.to_vec()));
        }
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..100_000 {
            let (version, seed) = &seeds[(next() % seeds.len() as u64) as usize];
            let mut bytes = seed.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[i] = next() as u8,
                    1 => bytes.truncate(i.max(1)),
                    _ => bytes.insert(i, next() as u8),
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = read_connect(&mut buf, 1 << 16);
            for v in [*version, Version::V4, Version::V5] {
                let mut buf = BytesMut::from(&bytes[..]);
                while let Ok(Some(_)) = read(&mut buf, v, 1 << 16) {}
            }
        }
    }

    #[test]
    fn oversized_connect_is_refused_from_its_fixed_header() {
        // Remaining Length 1 MiB, then the protocol name and level: no body.
        let start = |level| {
            let mut b = vec![0x10, 0x80, 0x80, 0x40, 0, 4, b'M', b'Q', b'T', b'T'];
            b.push(level);
            BytesMut::from(&b[..])
        };
        let e = read_connect(&mut start(5), 1 << 20).expect_err("refused");
        assert!(matches!(
            e,
            CodecError::Connect {
                version: Version::V5,
                fault: ConnectFault::TooLarge(1_048_576)
            }
        ));
        assert!(matches!(
            connect_refusal(&e),
            Some((ConnectReturnCode::PacketTooLarge, Version::V5))
        ));
        // 3.1.1 has no code for it; without a level there is no version to answer in.
        let e = read_connect(&mut start(4), 1 << 20).expect_err("refused");
        assert!(connect_refusal(&e).is_none());
        let e = read_connect(
            &mut BytesMut::from(&[0x10u8, 0x80, 0x80, 0x40][..]),
            1 << 20,
        )
        .expect_err("refused");
        assert!(matches!(e, CodecError::TooLarge));
        assert!(connect_refusal(&e).is_none());
        // A smaller `mqtt.max_packet_size` bounds it further.
        let mut buf = BytesMut::from(&[0x10u8, 0x64, 0, 4, b'M', b'Q', b'T', b'T', 5][..]);
        assert!(read_connect(&mut buf, 64).is_err());
    }

    #[test]
    fn connect_up_to_the_bound_waits_for_the_rest() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0x10, 0x80, 0x80, 0x04, 0, 4, b'M', b'Q', b'T', b'T', 5]);
        assert!(matches!(read_connect(&mut b, 1 << 20), Ok(None)));
    }

    #[test]
    fn valid_connects_of_both_versions_are_read() {
        let mut buf = BytesMut::new();
        let mut c = v4::Connect::new("dev");
        c.set_login("alice", "token");
        v4::Packet::Connect(c)
            .write(&mut buf, 1 << 20)
            .expect("encode");
        let info = read_connect(&mut buf, 1 << 20).expect("ok").expect("whole");
        assert_eq!(
            (info.version, info.client_id.as_str()),
            (Version::V4, "dev")
        );
        let mut props = v5::ConnectProperties::new();
        props.receive_maximum = Some(5);
        props.topic_alias_max = Some(0);
        props.user_properties = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        let connect = v5::Connect {
            keep_alive: 30,
            client_id: "dev".into(),
            clean_start: true,
            properties: Some(props),
        };
        v5::Packet::Connect(connect, None, Some(v5::Login::new("alice", "token")))
            .write(&mut buf, None)
            .expect("encode");
        let info = read_connect(&mut buf, 1 << 20).expect("ok").expect("whole");
        assert_eq!((info.version, info.receive_max), (Version::V5, Some(5)));
        assert!(buf.is_empty());
    }

    #[test]
    fn refusals_map_to_their_connack_codes() {
        let v5 = |fault| CodecError::Connect {
            version: Version::V5,
            fault,
        };
        let cases = [
            (
                v5(ConnectFault::Protocol("x")),
                ConnectReturnCode::ProtocolError,
            ),
            (
                v5(ConnectFault::Duplicate("x")),
                ConnectReturnCode::ProtocolError,
            ),
            (
                v5(ConnectFault::Malformed("x".into())),
                ConnectReturnCode::MalformedPacket,
            ),
            (
                v5(ConnectFault::AuthMethod),
                ConnectReturnCode::BadAuthenticationMethod,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(connect_refusal(&e), Some((code, Version::V5)));
        }
        assert_eq!(
            connect_refusal(&CodecError::UnsupportedVersion(3)),
            Some((ConnectReturnCode::RefusedProtocolVersion, Version::V4))
        );
        let v4 = CodecError::Connect {
            version: Version::V4,
            fault: ConnectFault::Protocol("x"),
        };
        assert_eq!(connect_refusal(&v4), None);
        assert_eq!(connect_refusal(&CodecError::NotConnect), None);
    }

    #[test]
    fn first_packet_other_than_connect_is_refused_without_waiting() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            read_connect(&mut buf, 1024),
            Err(CodecError::NotConnect)
        ));
    }
}
