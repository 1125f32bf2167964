//! Events on `users/{uid}/events` (DESIGN.md §4): JSON objects told apart by their
//! `type`. An unknown `type` is a parse error, never a panic.

use serde::{Deserialize, Serialize};

use crate::conv::ConvId;
use crate::error::ErrorDetail;

/// One event for a user, tagged by `"type"`, with exactly the fields of §4's table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A message too large to push inline was stored: pull it over HTTP.
    Sync {
        /// The conversation to pull.
        conv: ConvId,
        /// The stored message's seq.
        seq: u64,
    },
    /// A send over `users/{uid}/outbox` was accepted (it is durable).
    Sent {
        /// The id the client gave the send, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// The message's server id.
        id: String,
        /// Its conversation.
        conv: ConvId,
        /// Its seq in the conversation.
        seq: u64,
        /// Commit time, Unix milliseconds.
        ts: u64,
    },
    /// A send over the outbox was refused; codes as in the HTTP API.
    Error {
        /// The id the client gave the send, when it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// Why it was refused.
        error: ErrorDetail,
    },
    /// `user` joined `group` (told to the member and to the group's other members).
    MemberAdded {
        /// The group.
        group: String,
        /// The member added.
        user: String,
        /// Who added them (the member itself when joining an open group).
        by: String,
    },
    /// `user` left or was removed from `group`.
    MemberRemoved {
        /// The group.
        group: String,
        /// The member removed.
        user: String,
        /// Who removed them (the member itself when leaving).
        by: String,
    },
    /// `group` was deleted (told to every member).
    GroupDeleted {
        /// The group.
        group: String,
        /// Who deleted it.
        by: String,
    },
    /// `user`, the other party of direct conversation `conv`, has read it up to
    /// `seq` (its cursor moved there at `ts`, Unix milliseconds). At most one a
    /// second per conversation and reader: the latest seq.
    Read {
        /// The direct conversation.
        conv: ConvId,
        /// Who read.
        user: String,
        /// Read up to and including this seq.
        seq: u64,
        /// When, Unix milliseconds.
        ts: u64,
    },
    /// The server's node was cut off from the rest of its cluster and is back:
    /// messages pushed meanwhile may be missing. Read the heads and fetch what is
    /// missing, as after a reconnection.
    Resync,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(event: &Event, text: &str) {
        assert_eq!(serde_json::to_string(event).expect("serialize"), text);
        assert_eq!(&serde_json::from_str::<Event>(text).expect("parse"), event);
    }

    #[test]
    fn every_event_has_the_json_of_the_design_table() {
        round_trip(&Event::Resync, r#"{"type":"resync"}"#);
        round_trip(
            &Event::Read {
                conv: "dm:ann:bob".parse().expect("conv"),
                user: "bob".to_owned(),
                seq: 7,
                ts: 1_732_262_400_123,
            },
            r#"{"type":"read","conv":"dm:ann:bob","user":"bob","seq":7,"ts":1732262400123}"#,
        );
        let conv: ConvId = "group:g1".parse().expect("conv");
        round_trip(
            &Event::Sync {
                conv: conv.clone(),
                seq: 9,
            },
            r#"{"type":"sync","conv":"group:g1","seq":9}"#,
        );
        round_trip(
            &Event::Sent {
                client_msg_id: Some("c-1".to_owned()),
                id: "01J".to_owned(),
                conv,
                seq: 10,
                ts: 1_732_262_400_123,
            },
            r#"{"type":"sent","client_msg_id":"c-1","id":"01J","conv":"group:g1","seq":10,"ts":1732262400123}"#,
        );
        round_trip(
            &Event::Error {
                client_msg_id: Some("c-2".to_owned()),
                error: ErrorDetail::new("not_a_member", "not a member of g1"),
            },
            r#"{"type":"error","client_msg_id":"c-2","error":{"code":"not_a_member","message":"not a member of g1"}}"#,
        );
        round_trip(
            &Event::Error {
                client_msg_id: None,
                error: ErrorDetail::new("bad_request", "no body"),
            },
            r#"{"type":"error","error":{"code":"bad_request","message":"no body"}}"#,
        );
        round_trip(
            &Event::MemberAdded {
                group: "g1".to_owned(),
                user: "bob".to_owned(),
                by: "alice".to_owned(),
            },
            r#"{"type":"member_added","group":"g1","user":"bob","by":"alice"}"#,
        );
        round_trip(
            &Event::MemberRemoved {
                group: "g1".to_owned(),
                user: "bob".to_owned(),
                by: "bob".to_owned(),
            },
            r#"{"type":"member_removed","group":"g1","user":"bob","by":"bob"}"#,
        );
        round_trip(
            &Event::GroupDeleted {
                group: "g1".to_owned(),
                by: "alice".to_owned(),
            },
            r#"{"type":"group_deleted","group":"g1","by":"alice"}"#,
        );
    }

    #[test]
    fn the_type_may_come_anywhere_in_the_object() {
        let e: Event =
            serde_json::from_str(r#"{"conv":"dm:b:a","seq":3,"type":"sync"}"#).expect("parse");
        assert_eq!(
            e,
            Event::Sync {
                conv: "dm:a:b".parse().expect("conv"),
                seq: 3
            }
        );
    }

    #[test]
    fn unknown_or_malformed_events_are_errors_not_panics() {
        for bad in [
            r#"{"type":"typing","conv":"dm:a:b"}"#,
            r#"{"type":"SYNC","conv":"dm:a:b","seq":1}"#,
            r#"{"type":7}"#,
            r#"{"conv":"dm:a:b","seq":1}"#,
            r#"{"type":"sync","conv":"dm:a:b"}"#,
            r#"{"type":"sync","conv":"nowhere","seq":1}"#,
            r#"{"type":"error","client_msg_id":"c"}"#,
            r#"{"type":"group_deleted","group":"g"}"#,
            r#"[]"#,
            r#""sync""#,
            r#"{"type":"sync""#,
            "",
        ] {
            let err = serde_json::from_str::<Event>(bad).expect_err(bad);
            assert!(!err.to_string().is_empty());
        }
        let err = serde_json::from_str::<Event>(r#"{"type":"typing"}"#).expect_err("unknown");
        assert!(err.to_string().contains("typing"), "{err}");
    }
}
