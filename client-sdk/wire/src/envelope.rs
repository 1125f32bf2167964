//! The message envelope of DESIGN.md §4: what a stored message looks like over MQTT
//! (`users/{uid}/inbox`, `groups/{gid}`) and in HTTP sync and history pages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conv::ConvId;

/// One stored message: its conversation, its place in it and its body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Server-assigned, unique and sortable (a ULID).
    pub id: String,
    /// The conversation the message belongs to.
    pub conv: ConvId,
    /// Position in the conversation: from 1, no gaps, assigned at commit.
    pub seq: u64,
    /// The sender's uid.
    pub from: String,
    /// The peer uid (direct and notice conversations) or the gid (groups).
    pub to: String,
    /// Server time of the commit, Unix milliseconds.
    pub ts: u64,
    /// The sender's own id for the send, echoed back when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The delivery class the message was sent with.
    pub qos: Qos,
    /// The application's payload: any JSON value. None (`null`, left out of
    /// the JSON) in a recall, and in a message recalled since.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub body: Value,
    /// An edit or a recall of message `ref` of the conversation; `None` for an
    /// ordinary message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// The seq of the message an edit or a recall changes.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_seq: Option<u64>,
    /// In history and sync: when the message was last edited (its `body` is
    /// the latest one), Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    /// In history and sync: the sender (or a group's owner or admin) recalled
    /// the message; it has no body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
}

impl Envelope {
    /// An ordinary message: no kind, ref, edit or recall.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        conv: ConvId,
        seq: u64,
        from: String,
        to: String,
        ts: u64,
        client_msg_id: Option<String>,
        qos: Qos,
        body: Value,
    ) -> Envelope {
        Envelope {
            id,
            conv,
            seq,
            from,
            to,
            ts,
            client_msg_id,
            qos,
            body,
            kind: None,
            ref_seq: None,
            edited_ts: None,
            recalled: false,
        }
    }
}

/// What a message does to an earlier one (`"kind"` in the envelope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Replaces the body of message `ref`.
    Edit,
    /// Takes message `ref` back: it keeps its place, without its body.
    Recall,
}

/// A qos 0 message pushed live (DESIGN.md §6): never stored, so it has no seq and
/// reaches only recipients online at the time; otherwise shaped as [`Envelope`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveMessage {
    /// Server-assigned, unique and sortable.
    pub id: String,
    /// The conversation it was sent in.
    pub conv: ConvId,
    /// The sender's uid.
    pub from: String,
    /// The peer uid or the gid.
    pub to: String,
    /// Server time, Unix milliseconds.
    pub ts: u64,
    /// The sender's own id for the send, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// Always [`Qos::AtMostOnce`].
    pub qos: Qos,
    /// The application's payload.
    pub body: Value,
}

/// The delivery class of a message (DESIGN.md §6), written as the number 0, 1 or 2.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// 0: not stored, no seq; online recipients only.
    AtMostOnce,
    /// 1 (the default): stored before the 2xx, delivered at least once.
    #[default]
    AtLeastOnce,
    /// 2: as 1, and the broker hop is exactly once.
    ExactlyOnce,
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        match q {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

impl TryFrom<u8> for Qos {
    type Error = String;

    fn try_from(n: u8) -> Result<Qos, String> {
        match n {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            _ => Err(format!("qos must be 0, 1 or 2, not {n}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The example of DESIGN.md §4, byte for byte.
    const EXAMPLE: &str = r#"{"id":"01JD7Y3X3W6K0Q8S3R2Y1N5V4C","conv":"dm:alice:bob","seq":42,"from":"alice","to":"bob","ts":1732262400123,"client_msg_id":"c-7f1","qos":1,"body":{"text":"你好世界"}}"#;

    fn example() -> Envelope {
        Envelope {
            id: "01JD7Y3X3W6K0Q8S3R2Y1N5V4C".to_owned(),
            conv: "dm:alice:bob".parse().expect("conv"),
            seq: 42,
            from: "alice".to_owned(),
            to: "bob".to_owned(),
            ts: 1_732_262_400_123,
            client_msg_id: Some("c-7f1".to_owned()),
            qos: Qos::AtLeastOnce,
            body: json!({"text": "你好世界"}),
            kind: None,
            ref_seq: None,
            edited_ts: None,
            recalled: false,
        }
    }

    #[test]
    fn an_edit_and_a_recall_name_their_kind_and_ref_and_a_recall_has_no_body() {
        let edit = Envelope {
            kind: Some(Kind::Edit),
            ref_seq: Some(41),
            body: json!({"text": "fixed"}),
            ..example()
        };
        let text = serde_json::to_string(&edit).expect("serialize");
        assert!(text.contains(r#""kind":"edit","ref":41"#), "{text}");
        assert_eq!(
            serde_json::from_str::<Envelope>(&text).expect("parse"),
            edit
        );
        let recall = Envelope {
            kind: Some(Kind::Recall),
            ref_seq: Some(41),
            body: Value::Null,
            ..example()
        };
        let text = serde_json::to_string(&recall).expect("serialize");
        assert!(!text.contains("body"), "{text}");
        assert!(text.contains(r#""kind":"recall""#), "{text}");
        assert_eq!(
            serde_json::from_str::<Envelope>(&text).expect("parse"),
            recall
        );
        let recalled = Envelope {
            recalled: true,
            body: Value::Null,
            ..example()
        };
        let text = serde_json::to_string(&recalled).expect("serialize");
        assert!(
            text.contains(r#""recalled":true"#) && !text.contains("body"),
            "{text}"
        );
    }

    #[test]
    fn the_design_example_is_exactly_this_envelope() {
        assert_eq!(
            serde_json::to_string(&example()).expect("serialize"),
            EXAMPLE
        );
        let parsed: Envelope = serde_json::from_str(EXAMPLE).expect("parse");
        assert_eq!(parsed, example());
    }

    #[test]
    fn client_msg_id_is_omitted_when_absent() {
        let env = Envelope {
            client_msg_id: None,
            qos: Qos::ExactlyOnce,
            body: json!([1, null, "x"]),
            ..example()
        };
        let text = serde_json::to_string(&env).expect("serialize");
        assert!(!text.contains("client_msg_id"), "{text}");
        assert!(text.contains(r#""qos":2"#), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).expect("parse"), env);
    }

    #[test]
    fn a_bad_envelope_is_an_error() {
        let mut v: Value = serde_json::from_str(EXAMPLE).expect("parse");
        v["qos"] = json!(3);
        assert!(serde_json::from_value::<Envelope>(v.clone()).is_err());
        v["qos"] = json!(1);
        v["conv"] = json!("dm:alice:alice");
        assert!(serde_json::from_value::<Envelope>(v.clone()).is_err());
        v["conv"] = json!("dm:alice:bob");
        v["seq"] = json!(-1);
        assert!(serde_json::from_value::<Envelope>(v.clone()).is_err());
        v["seq"] = json!(1);
        v.as_object_mut().expect("object").remove("body");
        // A recall, and a message recalled since, have no body.
        assert_eq!(
            serde_json::from_value::<Envelope>(v).expect("no body").body,
            Value::Null
        );
        assert!(serde_json::from_str::<Envelope>("[]").is_err());
    }

    #[test]
    fn qos_is_a_number_and_defaults_to_one() {
        assert_eq!(Qos::default(), Qos::AtLeastOnce);
        for (q, n) in [
            (Qos::AtMostOnce, "0"),
            (Qos::AtLeastOnce, "1"),
            (Qos::ExactlyOnce, "2"),
        ] {
            assert_eq!(serde_json::to_string(&q).expect("serialize"), n);
            assert_eq!(serde_json::from_str::<Qos>(n).expect("parse"), q);
        }
        for bad in ["3", "-1", "1.5", "\"1\"", "256"] {
            assert!(serde_json::from_str::<Qos>(bad).is_err(), "{bad}");
        }
    }
}
