//! Sending (DESIGN.md §5): `POST /v1/messages` and its batch form, and the service
//! role's `POST /v1/notify`. The same send body goes over `users/{uid}/outbox`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::conv::ConvId;
use crate::envelope::Qos;
use crate::error::ErrorBody;

/// One send: to a user (`to`) or a group (`group`), exactly one of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    /// The recipient uid of a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The recipient gid of a group message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The payload: any JSON value, at most `limits.max_body_bytes` encoded.
    pub body: Value,
    /// The sender's own id; a retry with the same one creates nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The delivery class; absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// Whom a [`SendRequest`] is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipient<'a> {
    /// A user, in a direct conversation.
    User(&'a str),
    /// A group.
    Group(&'a str),
}

impl SendRequest {
    /// A direct message to `uid`.
    pub fn to_user(uid: impl Into<String>, body: Value) -> SendRequest {
        SendRequest {
            to: Some(uid.into()),
            group: None,
            body,
            client_msg_id: None,
            qos: None,
        }
    }

    /// A message to group `gid`.
    pub fn to_group(gid: impl Into<String>, body: Value) -> SendRequest {
        SendRequest {
            to: None,
            group: Some(gid.into()),
            body,
            client_msg_id: None,
            qos: None,
        }
    }

    /// The recipient, or `None` unless exactly one of `to` and `group` is set.
    pub fn recipient(&self) -> Option<Recipient<'_>> {
        match (&self.to, &self.group) {
            (Some(uid), None) => Some(Recipient::User(uid)),
            (None, Some(gid)) => Some(Recipient::Group(gid)),
            _ => None,
        }
    }

    /// The delivery class asked for (1 when absent).
    pub fn qos(&self) -> Qos {
        self.qos.unwrap_or_default()
    }
}

/// A stored send: `201` (or `200` for a retry of the same `client_msg_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    /// The message's server id.
    pub id: String,
    /// Its conversation.
    pub conv: ConvId,
    /// Its seq in the conversation.
    pub seq: u64,
    /// Commit time, Unix milliseconds.
    pub ts: u64,
}

/// A qos 0 send, not stored and without seq: `202 {id, ts}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSendResult {
    /// The message's server id.
    pub id: String,
    /// Server time, Unix milliseconds.
    pub ts: u64,
}

/// `POST /v1/messages/batch`: up to 1000 sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The sends, answered in this order.
    pub messages: Vec<SendRequest>,
}

/// The answer to a batch: one result per send, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// One entry per send of the request.
    pub results: Vec<BatchResult>,
}

/// What became of one send of a batch. In JSON it is the bare result object or the
/// error body; an object with `error` is a failure, one with `seq` a stored send,
/// anything else a qos 0 send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BatchResult {
    /// Stored, as the single send's `201 {id, conv, seq, ts}`.
    Stored(SendResult),
    /// Accepted at qos 0, as the single send's `202 {id, ts}`.
    Live(LiveSendResult),
    /// Refused: `{"error":{"code","message"}}`.
    Failed(ErrorBody),
}

impl<'de> Deserialize<'de> for BatchResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BatchResult, D::Error> {
        use serde::de::Error;
        // Dispatch on the keys rather than trying each shape in turn, so that a
        // malformed stored result is reported as such and not taken for a qos 0 one.
        let value = Value::deserialize(d)?;
        let object = value
            .as_object()
            .ok_or_else(|| D::Error::custom("a batch result must be a JSON object"))?;
        let result = if object.contains_key("error") {
            serde_json::from_value(value).map(BatchResult::Failed)
        } else if object.contains_key("seq") {
            serde_json::from_value(value).map(BatchResult::Stored)
        } else {
            serde_json::from_value(value).map(BatchResult::Live)
        };
        result.map_err(D::Error::custom)
    }
}

/// `POST /v1/notify` (service role): one notice into each `sys:{uid}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotifyRequest {
    /// The users to notify.
    pub to: Vec<String>,
    /// The notice: any JSON value.
    pub body: Value,
    /// The sender's own id, for idempotent retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_send_request_omits_what_it_does_not_set() {
        let dm = SendRequest::to_user("bob", json!({"text": "hi"}));
        let text = r#"{"to":"bob","body":{"text":"hi"}}"#;
        assert_eq!(serde_json::to_string(&dm).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<SendRequest>(text).expect("parse"),
            dm
        );
        assert_eq!(dm.recipient(), Some(Recipient::User("bob")));
        assert_eq!(dm.qos(), Qos::AtLeastOnce);

        let full = SendRequest {
            client_msg_id: Some("c-7f1".to_owned()),
            qos: Some(Qos::AtMostOnce),
            ..SendRequest::to_group("g1", json!("typing"))
        };
        let text = r#"{"group":"g1","body":"typing","client_msg_id":"c-7f1","qos":0}"#;
        assert_eq!(serde_json::to_string(&full).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<SendRequest>(text).expect("parse"),
            full
        );
        assert_eq!(full.recipient(), Some(Recipient::Group("g1")));
        assert_eq!(full.qos(), Qos::AtMostOnce);
    }

    #[test]
    fn a_send_needs_a_body_and_exactly_one_recipient() {
        assert!(serde_json::from_str::<SendRequest>(r#"{"to":"bob"}"#).is_err());
        let null_body: SendRequest =
            serde_json::from_str(r#"{"to":"bob","body":null}"#).expect("null is a JSON value");
        assert_eq!(null_body.body, Value::Null);
        let both: SendRequest =
            serde_json::from_str(r#"{"to":"bob","group":"g","body":1}"#).expect("parse");
        assert_eq!(both.recipient(), None);
        let neither: SendRequest = serde_json::from_str(r#"{"body":1}"#).expect("parse");
        assert_eq!(neither.recipient(), None);
        assert!(serde_json::from_str::<SendRequest>(r#"{"to":"b","body":1,"qos":5}"#).is_err());
    }

    #[test]
    fn send_results_have_the_design_shapes() {
        let stored = SendResult {
            id: "01J".to_owned(),
            conv: "dm:alice:bob".parse().expect("conv"),
            seq: 42,
            ts: 1_732_262_400_123,
        };
        let text = r#"{"id":"01J","conv":"dm:alice:bob","seq":42,"ts":1732262400123}"#;
        assert_eq!(serde_json::to_string(&stored).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<SendResult>(text).expect("parse"),
            stored
        );

        let live = LiveSendResult {
            id: "01K".to_owned(),
            ts: 7,
        };
        let text = r#"{"id":"01K","ts":7}"#;
        assert_eq!(serde_json::to_string(&live).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<LiveSendResult>(text).expect("parse"),
            live
        );
    }

    #[test]
    fn a_batch_answers_each_send_with_a_result_or_an_error() {
        let request = BatchRequest {
            messages: vec![
                SendRequest::to_user("bob", json!(1)),
                SendRequest::to_group("g", json!(2)),
            ],
        };
        let text = r#"{"messages":[{"to":"bob","body":1},{"group":"g","body":2}]}"#;
        assert_eq!(serde_json::to_string(&request).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<BatchRequest>(text).expect("parse"),
            request
        );

        let response = BatchResponse {
            results: vec![
                BatchResult::Stored(SendResult {
                    id: "a".to_owned(),
                    conv: "group:g".parse().expect("conv"),
                    seq: 1,
                    ts: 2,
                }),
                BatchResult::Live(LiveSendResult {
                    id: "b".to_owned(),
                    ts: 3,
                }),
                BatchResult::Failed(ErrorBody::new("not_a_member", "not a member of g")),
            ],
        };
        let text = r#"{"results":[{"id":"a","conv":"group:g","seq":1,"ts":2},{"id":"b","ts":3},{"error":{"code":"not_a_member","message":"not a member of g"}}]}"#;
        assert_eq!(serde_json::to_string(&response).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<BatchResponse>(text).expect("parse"),
            response
        );
    }

    #[test]
    fn a_malformed_batch_result_is_an_error() {
        for bad in [
            r#"{"id":"a","conv":"nowhere","seq":1,"ts":2}"#,
            r#"{"id":"a","seq":1,"ts":2}"#,
            r#"{"error":{"code":"x"}}"#,
            r#"{"ts":1}"#,
            r#"[1]"#,
            r#"null"#,
        ] {
            assert!(serde_json::from_str::<BatchResult>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn notify_round_trips() {
        let n = NotifyRequest {
            to: vec!["alice".to_owned(), "bob".to_owned()],
            body: json!({"title": "maintenance"}),
            client_msg_id: None,
        };
        let text = r#"{"to":["alice","bob"],"body":{"title":"maintenance"}}"#;
        assert_eq!(serde_json::to_string(&n).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<NotifyRequest>(text).expect("parse"),
            n
        );
    }
}

/// `PATCH /v1/conversations/{conv}/messages/{seq}`: the sender's new body for its
/// message, answered like a send (`201` with the edit's own id, seq and ts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    /// The new body (any JSON value).
    pub body: serde_json::Value,
    /// The sender's id for this edit: a retry with it is the same edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}
