//! Reading and acknowledging (DESIGN.md §5): `GET /v1/sync`, `GET /v1/conversations`,
//! a conversation's history pages, and `POST /v1/ack`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::conv::ConvId;
use crate::envelope::Envelope;

/// The query of `GET /v1/sync`: at most `limit` messages per conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncQuery {
    /// Messages per conversation; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/sync`: every conversation of the caller with messages after its cursor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The conversations to catch up on.
    pub conversations: Vec<SyncConversation>,
}

/// One conversation in a sync answer: where it stands and the first missed messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncConversation {
    /// The conversation.
    pub conv: ConvId,
    /// Its highest seq.
    pub head: u64,
    /// The caller's cursor (the highest seq it acknowledged).
    pub cursor: u64,
    /// Messages after the cursor, ascending, at most the query's limit.
    pub messages: Vec<Envelope>,
    /// Whether more messages follow the last one given.
    pub has_more: bool,
}

/// `GET /v1/conversations`: the caller's conversations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    /// One entry per conversation.
    pub conversations: Vec<ConversationSummary>,
}

/// Where one conversation stands for the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    /// The conversation.
    pub conv: ConvId,
    /// Its highest seq.
    pub head: u64,
    /// The caller's cursor.
    pub cursor: u64,
    /// Messages after the cursor.
    pub unread: u64,
    /// Time of the last message, Unix milliseconds.
    pub last_ts: u64,
}

/// The query of `GET /v1/conversations/{conv}/messages`: `after=S` or `before=S`,
/// and `limit=N`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesQuery {
    /// Messages with a seq above this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Messages with a seq below this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// At most this many; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of a conversation's history: a contiguous range, ascending.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessagesPage {
    /// The messages.
    pub messages: Vec<Envelope>,
    /// Whether more messages lie beyond the page in the direction asked.
    pub has_more: bool,
}

/// `GET /v1/conversations/{conv}/reads?after=UID&limit=N`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadsQuery {
    /// Members whose id sorts after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// How far one member has read a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRead {
    /// The member.
    pub user: String,
    /// Its cursor: read up to and including this seq (0: nothing yet).
    pub seq: u64,
}

/// A page of a conversation's members' cursors, by user id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadsPage {
    /// The members, in id order.
    pub reads: Vec<MemberRead>,
    /// Whether more members follow the page.
    pub has_more: bool,
}

/// `POST /v1/ack`: move the caller's cursors forward (a lower value never moves one
/// back); answered with 204.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    /// The highest seq read, per conversation.
    pub cursors: BTreeMap<ConvId, u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Qos;

    fn conv(s: &str) -> ConvId {
        s.parse().expect("conv")
    }

    fn message(seq: u64) -> Envelope {
        Envelope {
            id: format!("m{seq}"),
            conv: conv("group:g"),
            seq,
            from: "alice".to_owned(),
            to: "g".to_owned(),
            ts: 100 + seq,
            client_msg_id: None,
            qos: Qos::AtLeastOnce,
            body: json!(seq),
            kind: None,
            ref_seq: None,
            edited_ts: None,
            recalled: false,
        }
    }

    #[test]
    fn sync_response_round_trips() {
        let sync = SyncResponse {
            conversations: vec![SyncConversation {
                conv: conv("group:g"),
                head: 5,
                cursor: 3,
                messages: vec![message(4)],
                has_more: true,
            }],
        };
        let text = r#"{"conversations":[{"conv":"group:g","head":5,"cursor":3,"messages":[{"id":"m4","conv":"group:g","seq":4,"from":"alice","to":"g","ts":104,"qos":1,"body":4}],"has_more":true}]}"#;
        assert_eq!(serde_json::to_string(&sync).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<SyncResponse>(text).expect("parse"),
            sync
        );
        assert_eq!(
            serde_json::to_string(&SyncQuery { limit: Some(50) }).expect("serialize"),
            r#"{"limit":50}"#
        );
    }

    #[test]
    fn conversation_list_round_trips() {
        let list = ConversationList {
            conversations: vec![ConversationSummary {
                conv: conv("dm:alice:bob"),
                head: 9,
                cursor: 7,
                unread: 2,
                last_ts: 1_732_262_400_123,
            }],
        };
        let text = r#"{"conversations":[{"conv":"dm:alice:bob","head":9,"cursor":7,"unread":2,"last_ts":1732262400123}]}"#;
        assert_eq!(serde_json::to_string(&list).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<ConversationList>(text).expect("parse"),
            list
        );
    }

    #[test]
    fn messages_page_and_query_round_trip() {
        let page = MessagesPage {
            messages: vec![message(1), message(2)],
            has_more: false,
        };
        let text = serde_json::to_string(&page).expect("serialize");
        assert!(text.ends_with(r#""has_more":false}"#), "{text}");
        assert_eq!(
            serde_json::from_str::<MessagesPage>(&text).expect("parse"),
            page
        );
        assert!(serde_json::from_str::<MessagesPage>(r#"{"messages":[]}"#).is_err());

        let q = MessagesQuery {
            before: Some(10),
            limit: Some(20),
            ..MessagesQuery::default()
        };
        assert_eq!(
            serde_json::to_string(&q).expect("serialize"),
            r#"{"before":10,"limit":20}"#
        );
    }

    #[test]
    fn ack_is_a_map_from_conversation_to_seq() {
        let text = r#"{"cursors":{"dm:alice:bob":42,"group:g1":7}}"#;
        let ack: AckRequest = serde_json::from_str(text).expect("parse");
        assert_eq!(ack.cursors.get(&conv("dm:alice:bob")), Some(&42));
        assert_eq!(serde_json::to_string(&ack).expect("serialize"), text);
        // A non-canonical key is normalised; a bad one is refused.
        let ack: AckRequest =
            serde_json::from_str(r#"{"cursors":{"dm:bob:alice":1}}"#).expect("parse");
        assert_eq!(ack.cursors.get(&conv("dm:alice:bob")), Some(&1));
        for bad in [
            r#"{"cursors":{"dm:a/b:c":1}}"#,
            r#"{"cursors":{"group:g":-1}}"#,
            r#"{"cursors":{"group:g":"1"}}"#,
            r#"{"cursors":[]}"#,
        ] {
            assert!(serde_json::from_str::<AckRequest>(bad).is_err(), "{bad}");
        }
    }
}
