//! How a publication crosses NATS: a small binary frame with the sender's
//! instance and sequence number (to drop a second copy when two of a node's
//! NATS subscriptions match one subject), the MQTT fields and properties
//! subscribers get, and the payload as is, uncopied into JSON or base64.
//!
//! ```text
//! version 1 | instance u64 | seq u64 | flags u8 (qos:2, retain, expiry, props)
//! [expiry ms u32] | topic (u32 length + bytes) | [properties] | payload
//! ```

use broker::PublishProperties;
use broker::{Publication, QoS};
use bytes::{Buf, BufMut, Bytes, BytesMut};

const VERSION: u8 = 1;
const RETAIN: u8 = 1 << 2;
const EXPIRY: u8 = 1 << 3;
const PROPS: u8 = 1 << 4;
/// Marks an absent optional field.
const NONE: u32 = u32::MAX;

/// A frame that could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadFrame(&'static str);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A publication read off NATS.
#[derive(Debug)]
pub(super) struct Frame {
    /// The sending node's instance.
    pub(super) instance: u64,
    /// Its sequence number on that instance.
    pub(super) seq: u64,
    /// The publication, ready for this node's hub.
    pub(super) publication: Publication,
}

/// Whether `payload` is a frame (control messages are JSON objects).
pub(super) fn is_frame(payload: &[u8]) -> bool {
    payload.first() == Some(&VERSION)
}

fn qos_bits(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(NONE - 1));
    out.put_slice(b);
}

fn put_opt(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(out, b),
        None => out.put_u32(NONE),
    }
}

/// The frame of `p`, sent by `instance` as its `seq`th.
pub(super) fn encode(instance: u64, seq: u64, p: &Publication) -> Bytes {
    let props = p.properties();
    let mut out = BytesMut::with_capacity(32 + p.topic().len() + p.payload().len());
    out.put_u8(VERSION);
    out.put_u64(instance);
    out.put_u64(seq);
    let expiry = p.expires_in();
    let mut flags = qos_bits(p.qos());
    if p.retain() {
        flags |= RETAIN;
    }
    if expiry.is_some() {
        flags |= EXPIRY;
    }
    if props.is_some() {
        flags |= PROPS;
    }
    out.put_u8(flags);
    if let Some(e) = expiry {
        out.put_u32(u32::try_from(e.as_millis()).unwrap_or(u32::MAX));
    }
    put_bytes(&mut out, p.topic().as_bytes());
    if let Some(pr) = props {
        out.put_u8(pr.payload_format_indicator.unwrap_or(u8::MAX));
        put_opt(&mut out, pr.content_type.as_deref().map(str::as_bytes));
        put_opt(&mut out, pr.response_topic.as_deref().map(str::as_bytes));
        put_opt(&mut out, pr.correlation_data.as_deref());
        out.put_u32(u32::try_from(pr.user_properties.len()).unwrap_or(0));
        for (k, v) in &pr.user_properties {
            put_bytes(&mut out, k.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
    }
    out.put_slice(p.payload());
    out.freeze()
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), BadFrame> {
        if self.0.remaining() < n {
            Err(BadFrame("frame cut short"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, BadFrame> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, BadFrame> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, BadFrame> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bytes(&mut self) -> Result<Option<Bytes>, BadFrame> {
        let n = self.u32()?;
        if n == NONE {
            return Ok(None);
        }
        let n = n as usize;
        self.need(n)?;
        Ok(Some(self.0.split_to(n)))
    }
    fn string(&mut self) -> Result<Option<String>, BadFrame> {
        self.bytes()?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| BadFrame("text is not UTF-8")))
            .transpose()
    }
}

/// Reads a frame.
pub(super) fn decode(payload: Bytes) -> Result<Frame, BadFrame> {
    let mut r = Reader(payload);
    if r.u8()? != VERSION {
        return Err(BadFrame("unknown frame version"));
    }
    let instance = r.u64()?;
    let seq = r.u64()?;
    let flags = r.u8()?;
    let qos = match flags & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(BadFrame("bad QoS")),
    };
    let expires_in = if flags & EXPIRY != 0 {
        Some(std::time::Duration::from_millis(u64::from(r.u32()?)))
    } else {
        None
    };
    let topic = r.string()?.ok_or(BadFrame("no topic"))?;
    let props = if flags & PROPS != 0 {
        let pfi = r.u8()?;
        let content_type = r.string()?;
        let response_topic = r.string()?;
        let correlation_data = r.bytes()?;
        let n = r.u32()? as usize;
        let mut user_properties = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = r.string()?.ok_or(BadFrame("no property name"))?;
            let v = r.string()?.ok_or(BadFrame("no property value"))?;
            user_properties.push((k, v));
        }
        Some(PublishProperties {
            payload_format_indicator: (pfi != u8::MAX).then_some(pfi),
            message_expiry_interval: None,
            topic_alias: None,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers: Vec::new(),
            content_type,
        })
    } else {
        None
    };
    let payload = r.0;
    Ok(Frame {
        instance,
        seq,
        publication: Publication::remote(
            &topic,
            payload,
            qos,
            flags & RETAIN != 0,
            props,
            expires_in,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_crosses_whole() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".into()),
            response_topic: Some("a/b".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let p = Publication::remote(
            "users/alice/inbox",
            Bytes::from_static(b"{\"x\":1}"),
            QoS::ExactlyOnce,
            true,
            Some(props.clone()),
            Some(std::time::Duration::from_secs(30)),
        );
        let wire = encode(7, 9, &p);
        assert!(is_frame(&wire));
        let f = decode(wire).expect("decode");
        assert_eq!((f.instance, f.seq), (7, 9));
        let q = f.publication;
        assert_eq!(q.topic(), "users/alice/inbox");
        assert_eq!(q.payload().as_ref(), b"{\"x\":1}");
        assert_eq!(q.qos(), QoS::ExactlyOnce);
        assert!(q.retain());
        assert_eq!(q.properties(), Some(&props));
        let left = q.expires_in().expect("expiry");
        assert!(left > std::time::Duration::from_secs(28), "{left:?}");

        let plain = Publication::remote("a", Bytes::new(), QoS::AtMostOnce, false, None, None);
        let f = decode(encode(1, 2, &plain)).expect("decode");
        assert!(f.publication.properties().is_none());
        assert!(f.publication.expires_in().is_none());
        assert!(f.publication.payload().is_empty());
    }

    #[test]
    fn a_broken_frame_is_an_error_not_a_panic() {
        let p = Publication::remote(
            "t/x",
            Bytes::from_static(b"hello"),
            QoS::AtLeastOnce,
            false,
            None,
            None,
        );
        let wire = encode(1, 1, &p);
        for cut in 0..wire.len() - 5 {
            assert!(decode(wire.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(decode(Bytes::from_static(b"{\"kind\":1}")).is_err());
        let mut bad = BytesMut::from(&wire[..]);
        bad[17] = 3; // QoS 3
        assert!(decode(bad.freeze()).is_err());
    }
}
