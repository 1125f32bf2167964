//! The rules of CONNECT that rumqttc's parser does not check, checked on the raw
//! frame before it parses: connect flags, and MQTT 5's property lists. rumqttc
//! keeps the last of a duplicated property, accepts values the spec forbids, and
//! lets a property run past its list's length; the walk here reads each property
//! by the type MQTT 5 §2.2.2.2 gives its identifier, so none of that gets through.

use super::{ConnectFault, Version};

/// The value types of MQTT 5 properties (§1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Byte,
    TwoByte,
    FourByte,
    Utf8,
    Binary,
    Utf8Pair,
}

/// The property lists of a CONNECT: its own, and its will's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    Connect,
    Will,
}

const SESSION_EXPIRY: u8 = 0x11;
const AUTH_METHOD: u8 = 0x15;
const AUTH_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFO: u8 = 0x17;
const REQUEST_RESPONSE_INFO: u8 = 0x19;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// Every property CONNECT may carry: identifier, name, value type, list (MQTT 5
/// §3.1.2.11 and §3.1.3.2). Any other identifier is a Malformed Packet there.
const PROPERTIES: &[(u8, &str, Kind, Scope)] = &[
    (
        SESSION_EXPIRY,
        "Session Expiry Interval",
        Kind::FourByte,
        Scope::Connect,
    ),
    (
        RECEIVE_MAXIMUM,
        "Receive Maximum",
        Kind::TwoByte,
        Scope::Connect,
    ),
    (
        MAXIMUM_PACKET_SIZE,
        "Maximum Packet Size",
        Kind::FourByte,
        Scope::Connect,
    ),
    (
        TOPIC_ALIAS_MAXIMUM,
        "Topic Alias Maximum",
        Kind::TwoByte,
        Scope::Connect,
    ),
    (
        REQUEST_RESPONSE_INFO,
        "Request Response Information",
        Kind::Byte,
        Scope::Connect,
    ),
    (
        REQUEST_PROBLEM_INFO,
        "Request Problem Information",
        Kind::Byte,
        Scope::Connect,
    ),
    (
        USER_PROPERTY,
        "User Property",
        Kind::Utf8Pair,
        Scope::Connect,
    ),
    (
        AUTH_METHOD,
        "Authentication Method",
        Kind::Utf8,
        Scope::Connect,
    ),
    (
        AUTH_DATA,
        "Authentication Data",
        Kind::Binary,
        Scope::Connect,
    ),
    (0x18, "Will Delay Interval", Kind::FourByte, Scope::Will),
    (0x01, "Payload Format Indicator", Kind::Byte, Scope::Will),
    (0x02, "Message Expiry Interval", Kind::FourByte, Scope::Will),
    (0x03, "Content Type", Kind::Utf8, Scope::Will),
    (0x08, "Response Topic", Kind::Utf8, Scope::Will),
    (0x09, "Correlation Data", Kind::Binary, Scope::Will),
    (USER_PROPERTY, "User Property", Kind::Utf8Pair, Scope::Will),
];

/// Connect flags (MQTT 3.1.1 and 5 §3.1.2.3).
const RESERVED: u8 = 0x01;
const WILL: u8 = 0x04;
const WILL_QOS: u8 = 0x18;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// The identifiers a property list held, one bit each (all are below 64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Seen(u64);

impl Seen {
    pub(super) fn has(self, id: u8) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }
}

/// A reader over a byte slice that fails, never panics, when the slice ends.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConnectFault> {
        if n > self.0.len() {
            return Err(truncated());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ConnectFault> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ConnectFault> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ConnectFault> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Two-byte length, then that many bytes (a UTF-8 string or binary data).
    fn prefixed(&mut self) -> Result<&'a [u8], ConnectFault> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A Variable Byte Integer: at most four bytes (MQTT 5 §1.5.5).
    fn var_int(&mut self) -> Result<usize, ConnectFault> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            value |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ConnectFault::Malformed(
            "variable byte integer longer than four bytes".into(),
        ))
    }
}

fn truncated() -> ConnectFault {
    ConnectFault::Malformed("CONNECT ends inside a field".into())
}

/// The protocol level of the CONNECT at the start of `bytes`, once enough of it is
/// there: the fixed header, the length-prefixed protocol name, then the level.
pub(super) fn protocol_level(bytes: &[u8]) -> Option<u8> {
    let mut r = Reader(bytes.get(1..)?);
    r.var_int().ok()?;
    r.prefixed().ok()?;
    r.u8().ok()
}

/// Checks a whole CONNECT frame (fixed header included) of `version` for what
/// rumqttc's parser lets through.
pub(super) fn check(frame: &[u8], version: Version) -> Result<(), ConnectFault> {
    let mut r = Reader(frame);
    // MQTT 3.1.1 and 5 §2.1.3: CONNECT's fixed-header flags are reserved, 0.
    if r.u8()? != 0x10 {
        return Err(ConnectFault::Malformed("fixed-header flags not 0".into()));
    }
    r.var_int()?;
    r.prefixed()?; // protocol name: rumqttc insists on "MQTT"
    r.u8()?; // protocol level, already read
    let flags = r.u8()?;
    check_flags(flags, version)?;
    if version == Version::V4 {
        return Ok(());
    }
    r.u16()?; // keep alive
    let seen = walk_properties(&mut r, Scope::Connect)?;
    r.prefixed()?; // client id
    if flags & WILL != 0 {
        walk_properties(&mut r, Scope::Will)?;
    }
    // §3.1.2.11.10: Authentication Data without a method is a Protocol Error.
    if seen.has(AUTH_DATA) && !seen.has(AUTH_METHOD) {
        return Err(ConnectFault::Protocol(
            "Authentication Data without Authentication Method",
        ));
    }
    // §4.12: enhanced authentication, which is not offered here; checked last so
    // that an otherwise broken CONNECT gets the more precise code.
    if seen.has(AUTH_METHOD) {
        return Err(ConnectFault::AuthMethod);
    }
    Ok(())
}

/// MQTT 3.1.1 and 5 §3.1.2.3 - §3.1.2.9.
fn check_flags(flags: u8, version: Version) -> Result<(), ConnectFault> {
    if flags & RESERVED != 0 {
        return Err(ConnectFault::Malformed("reserved connect flag set".into()));
    }
    if flags & WILL_QOS == WILL_QOS {
        return Err(ConnectFault::Malformed("will QoS 3".into()));
    }
    if flags & WILL == 0 && flags & (WILL_QOS | WILL_RETAIN) != 0 {
        return Err(ConnectFault::Protocol(
            "will QoS or will retain set without a will",
        ));
    }
    // 3.1.1 [MQTT-3.1.2-22]; MQTT 5 allows a password without a user name.
    if version == Version::V4 && flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return Err(ConnectFault::Protocol("password without user name"));
    }
    Ok(())
}

/// Walks one property list (a Variable Byte Integer length, then identifier and
/// value pairs) and returns the identifiers it held. Every property must end
/// inside the list; one that is not allowed in `scope` is malformed; one that
/// appears twice (User Property aside) or has a value the spec forbids is a
/// Protocol Error (MQTT 5 §3.1.2.11, §3.1.3.2).
fn walk_properties(r: &mut Reader<'_>, scope: Scope) -> Result<Seen, ConnectFault> {
    let len = r.var_int()?;
    let mut list = Reader(
        r.take(len)
            .map_err(|_| ConnectFault::Malformed("property length runs past the packet".into()))?,
    );
    let mut seen = Seen::default();
    while !list.0.is_empty() {
        let id = list.u8()?;
        let Some(&(_, name, kind, _)) = PROPERTIES
            .iter()
            .find(|(i, _, _, s)| *i == id && *s == scope)
        else {
            return Err(ConnectFault::Malformed(format!(
                "property 0x{id:02X} is not allowed in a CONNECT's {scope:?} properties"
            )));
        };
        if seen.has(id) && id != USER_PROPERTY {
            return Err(ConnectFault::Duplicate(name));
        }
        seen.0 |= 1 << id;
        let value = match kind {
            Kind::Byte => u32::from(list.u8()?),
            Kind::TwoByte => u32::from(list.u16()?),
            Kind::FourByte => list.u32()?,
            Kind::Utf8 | Kind::Binary => {
                list.prefixed()?;
                continue;
            }
            Kind::Utf8Pair => {
                list.prefixed()?;
                list.prefixed()?;
                continue;
            }
        };
        match id {
            // §3.1.2.11.3, §3.1.2.11.4: zero is a Protocol Error.
            RECEIVE_MAXIMUM | MAXIMUM_PACKET_SIZE if scope == Scope::Connect && value == 0 => {
                return Err(ConnectFault::Protocol(if id == RECEIVE_MAXIMUM {
                    "Receive Maximum 0"
                } else {
                    "Maximum Packet Size 0"
                }));
            }
            // §3.1.2.11.6, §3.1.2.11.7: only 0 or 1.
            REQUEST_RESPONSE_INFO | REQUEST_PROBLEM_INFO
                if scope == Scope::Connect && value > 1 =>
            {
                return Err(ConnectFault::Protocol(
                    "Request Response or Problem Information other than 0 or 1",
                ));
            }
            _ => {}
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v5 CONNECT frame: `props` as the CONNECT's property list bytes (without
    /// the length), `will_props` likewise when there is a will.
    fn v5_connect(flags: u8, props: &[u8], will_props: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60];
        push_list(&mut body, props);
        body.extend_from_slice(&[0, 1, b'c']);
        if let Some(w) = will_props {
            push_list(&mut body, w);
            body.extend_from_slice(&[0, 1, b't', 0, 1, b'x']);
        }
        let mut frame = vec![0x10];
        push_var_int(&mut frame, body.len());
        frame.extend_from_slice(&body);
        frame
    }

    fn push_list(out: &mut Vec<u8>, list: &[u8]) {
        push_var_int(out, list.len());
        out.extend_from_slice(list);
    }

    fn push_var_int(out: &mut Vec<u8>, mut n: usize) {
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

    fn v5(props: &[u8]) -> Result<(), ConnectFault> {
        check(&v5_connect(0, props, None), Version::V5)
    }

    #[test]
    fn valid_properties_pass_and_user_property_may_repeat() {
        let props = [
            &[SESSION_EXPIRY, 0, 0, 0, 60][..],
            &[RECEIVE_MAXIMUM, 0, 10],
            &[MAXIMUM_PACKET_SIZE, 0, 1, 0, 0],
            &[TOPIC_ALIAS_MAXIMUM, 0, 0],
            &[REQUEST_RESPONSE_INFO, 1, REQUEST_PROBLEM_INFO, 0],
            &[USER_PROPERTY, 0, 1, b'k', 0, 1, b'v'],
            &[USER_PROPERTY, 0, 1, b'k', 0, 1, b'w'],
        ]
        .concat();
        assert!(v5(&props).is_ok());
        assert!(v5(&[]).is_ok());
        let will = [&[0x18, 0, 0, 0, 5][..], &[0x01, 1], &[0x09, 0, 2, 7, 7]].concat();
        assert!(check(&v5_connect(WILL, &props, Some(&will)), Version::V5).is_ok());
    }

    #[test]
    fn zero_receive_maximum_or_maximum_packet_size_is_a_protocol_error() {
        assert!(matches!(
            v5(&[RECEIVE_MAXIMUM, 0, 0]),
            Err(ConnectFault::Protocol("Receive Maximum 0"))
        ));
        assert!(matches!(
            v5(&[MAXIMUM_PACKET_SIZE, 0, 0, 0, 0]),
            Err(ConnectFault::Protocol("Maximum Packet Size 0"))
        ));
        assert!(matches!(
            v5(&[REQUEST_PROBLEM_INFO, 2]),
            Err(ConnectFault::Protocol(_))
        ));
    }

    #[test]
    fn a_duplicated_property_is_a_protocol_error_in_either_list() {
        let twice = [SESSION_EXPIRY, 0, 0, 0, 1, SESSION_EXPIRY, 0, 0, 0, 2];
        assert!(matches!(
            v5(&twice),
            Err(ConnectFault::Duplicate("Session Expiry Interval"))
        ));
        let will = [0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 1];
        assert!(matches!(
            check(&v5_connect(WILL, &[], Some(&will)), Version::V5),
            Err(ConnectFault::Duplicate("Message Expiry Interval"))
        ));
    }

    #[test]
    fn unknown_or_misplaced_properties_and_overruns_are_malformed() {
        // 0x23 Topic Alias belongs to PUBLISH; 0x18 Will Delay to the will.
        for props in [&[0x23, 0, 1][..], &[0x18, 0, 0, 0, 1], &[0xFF]] {
            assert!(
                matches!(v5(props), Err(ConnectFault::Malformed(_))),
                "{props:?}"
            );
        }
        // A value that runs past the list's end, though the packet goes on.
        let mut frame = v5_connect(0, &[SESSION_EXPIRY, 0, 0, 0, 1], None);
        frame[12] = 3; // the list's length byte
        assert!(matches!(
            check(&frame, Version::V5),
            Err(ConnectFault::Malformed(_))
        ));
    }

    #[test]
    fn authentication_method_is_refused_and_data_alone_is_a_protocol_error() {
        let method = [AUTH_METHOD, 0, 5, b'S', b'C', b'R', b'A', b'M'];
        assert!(matches!(v5(&method), Err(ConnectFault::AuthMethod)));
        assert!(matches!(
            v5(&[AUTH_DATA, 0, 1, 9]),
            Err(ConnectFault::Protocol(_))
        ));
    }

    #[test]
    fn connect_flags_are_checked_per_version() {
        assert!(matches!(
            check(&v5_connect(RESERVED, &[], None), Version::V5),
            Err(ConnectFault::Malformed(_))
        ));
        assert!(matches!(
            check(&v5_connect(WILL_RETAIN, &[], None), Version::V5),
            Err(ConnectFault::Protocol(_))
        ));
        assert!(matches!(
            check(&v5_connect(0x08, &[], None), Version::V5),
            Err(ConnectFault::Protocol(_))
        ));
        assert!(matches!(
            check(&v5_connect(WILL | WILL_QOS, &[], Some(&[])), Version::V5),
            Err(ConnectFault::Malformed(_))
        ));
        // Password without user name: fine in MQTT 5, not in 3.1.1.
        let mut frame = v5_connect(PASSWORD, &[], None);
        assert!(check(&frame, Version::V5).is_ok());
        frame[8] = 4;
        assert!(matches!(
            check(&frame, Version::V4),
            Err(ConnectFault::Protocol("password without user name"))
        ));
    }

    #[test]
    fn protocol_level_needs_only_the_start_of_the_frame() {
        let frame = v5_connect(0, &[], None);
        assert_eq!(protocol_level(&frame), Some(5));
        assert_eq!(protocol_level(&frame[..9]), Some(5));
        assert_eq!(protocol_level(&frame[..8]), None);
        assert_eq!(protocol_level(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(protocol_level(&[]), None);
    }

    /// Every prefix of valid frames, and random bytes after a valid start: the
    /// walk fails or succeeds, never panics.
    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let props = [
            &[SESSION_EXPIRY, 0, 0, 0, 60][..],
            &[USER_PROPERTY, 0, 1, b'k', 0, 1, b'v'],
            &[AUTH_DATA, 0, 1, 9],
        ]
        .concat();
        let frame = v5_connect(WILL | 0x08, &props, Some(&[0x03, 0, 1, b'j']));
        for n in 0..frame.len() {
            let _ = check(&frame[..n], Version::V5);
            let _ = check(&frame[..n], Version::V4);
            let _ = protocol_level(&frame[..n]);
        }
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = frame[..10].to_vec();
            bytes.extend((0..(x % 40)).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8));
            let _ = check(&bytes, Version::V5);
            let _ = protocol_level(&bytes);
        }
    }
}
