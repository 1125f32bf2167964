//! The MQTT topics of the IM namespace (DESIGN.md §3). The builders check the id,
//! so a topic built here never reaches into another user's tree.

use std::fmt;

use crate::id::{InvalidId, check_id, is_valid_id};

/// One topic of the IM namespace, borrowing its id. [`Topic::parse`] and the
/// builder functions check the id; a value built by hand is printed as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic<'a> {
    /// `users/{uid}/inbox`: direct messages, notices and copies of one's own sends.
    Inbox(&'a str),
    /// `users/{uid}/events`: receipts, membership changes, sync hints, errors.
    Events(&'a str),
    /// `users/{uid}/outbox`: sends over MQTT, consumed by the server.
    Outbox(&'a str),
    /// `groups/{gid}`: group messages, to current members.
    Group(&'a str),
    /// `presence/{uid}`: the user's retained presence.
    Presence(&'a str),
}

impl<'a> Topic<'a> {
    /// The IM topic `topic` names, or `None` when it is not one (or its id is
    /// invalid).
    pub fn parse(topic: &'a str) -> Option<Topic<'a>> {
        if let Some(uid) = outbox_owner(topic) {
            return is_valid_id(uid).then_some(Topic::Outbox(uid));
        }
        let parts: Vec<&str> = topic.split('/').collect();
        let parsed = match parts.as_slice() {
            ["users", uid, "inbox"] => Topic::Inbox(uid),
            ["users", uid, "events"] => Topic::Events(uid),
            ["groups", gid] => Topic::Group(gid),
            ["presence", uid] => Topic::Presence(uid),
            _ => return None,
        };
        is_valid_id(parsed.id()).then_some(parsed)
    }

    /// The uid or gid in the topic.
    pub fn id(&self) -> &'a str {
        match *self {
            Topic::Inbox(id)
            | Topic::Events(id)
            | Topic::Outbox(id)
            | Topic::Group(id)
            | Topic::Presence(id) => id,
        }
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Inbox(uid) => write!(f, "users/{uid}/inbox"),
            Topic::Events(uid) => write!(f, "users/{uid}/events"),
            Topic::Outbox(uid) => write!(f, "users/{uid}/outbox"),
            Topic::Group(gid) => write!(f, "groups/{gid}"),
            Topic::Presence(uid) => write!(f, "presence/{uid}"),
        }
    }
}

/// The user whose outbox `topic` is, when it is `users/{uid}/outbox` with `uid` one
/// non-empty level. This is the outbox rule, written once: the server consumes
/// every such topic and routes none of them, and only `uid` may publish there. An
/// owner that is not a valid id still makes an outbox (one nobody may publish on),
/// so that no spelling of a topic escapes the rule; [`Topic::parse`] finds
/// [`Topic::Outbox`] where the owner is a valid id.
pub fn outbox_owner(topic: &str) -> Option<&str> {
    let uid = topic.strip_prefix("users/")?.strip_suffix("/outbox")?;
    (!uid.is_empty() && !uid.contains('/')).then_some(uid)
}

/// `users/{uid}/inbox`.
pub fn inbox(uid: &str) -> Result<String, InvalidId> {
    Ok(Topic::Inbox(check_id(uid)?).to_string())
}

/// `users/{uid}/events`.
pub fn events(uid: &str) -> Result<String, InvalidId> {
    Ok(Topic::Events(check_id(uid)?).to_string())
}

/// `users/{uid}/outbox`.
pub fn outbox(uid: &str) -> Result<String, InvalidId> {
    Ok(Topic::Outbox(check_id(uid)?).to_string())
}

/// `groups/{gid}`.
pub fn group(gid: &str) -> Result<String, InvalidId> {
    Ok(Topic::Group(check_id(gid)?).to_string())
}

/// `presence/{uid}`.
pub fn presence(uid: &str) -> Result<String, InvalidId> {
    Ok(Topic::Presence(check_id(uid)?).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_make_the_design_topics() {
        assert_eq!(inbox("alice").as_deref(), Ok("users/alice/inbox"));
        assert_eq!(events("alice").as_deref(), Ok("users/alice/events"));
        assert_eq!(outbox("alice").as_deref(), Ok("users/alice/outbox"));
        assert_eq!(group("g-1").as_deref(), Ok("groups/g-1"));
        assert_eq!(presence("bob").as_deref(), Ok("presence/bob"));
    }

    #[test]
    fn builders_refuse_ids_that_would_escape_the_namespace() {
        for bad in ["", "+", "#", "bob/inbox", "a/../b", "$SYS", "x y"] {
            assert!(inbox(bad).is_err(), "{bad}");
            assert!(events(bad).is_err(), "{bad}");
            assert!(outbox(bad).is_err(), "{bad}");
            assert!(group(bad).is_err(), "{bad}");
            assert!(presence(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outbox_topics_name_their_owner() {
        assert_eq!(outbox_owner("users/alice/outbox"), Some("alice"));
        assert_eq!(outbox_owner("users/a b/outbox"), Some("a b"));
        assert_eq!(outbox_owner("users/alice/inbox"), None);
        assert_eq!(outbox_owner("users//outbox"), None);
        assert_eq!(outbox_owner("users/a/b/outbox"), None);
        assert_eq!(outbox_owner("users/alice/outbox/x"), None);
        assert_eq!(outbox_owner("groups/alice/outbox"), None);
        assert_eq!(outbox_owner("/users/alice/outbox"), None);
        assert_eq!(Topic::parse("users/a b/outbox"), None);
    }

    #[test]
    fn parse_is_the_inverse_of_display() {
        for t in [
            Topic::Inbox("alice"),
            Topic::Events("alice"),
            Topic::Outbox("alice"),
            Topic::Group("g"),
            Topic::Presence("bob"),
        ] {
            let text = t.to_string();
            assert_eq!(Topic::parse(&text), Some(t), "{text}");
        }
        assert_eq!(
            Topic::parse("users/alice/inbox").map(|t| t.id()),
            Some("alice")
        );
        for not_im in [
            "",
            "users/alice",
            "users/alice/inbox/x",
            "users//inbox",
            "users/+/inbox",
            "users/alice/#",
            "groups/g/x",
            "groups/",
            "presence/a b",
            "public/x",
            "/users/alice/inbox",
        ] {
            assert_eq!(Topic::parse(not_im), None, "{not_im}");
        }
    }
}
