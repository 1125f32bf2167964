//! Conversation ids (DESIGN.md §4): `dm:{a}:{b}` with a < b in byte order,
//! `group:{gid}`, `sys:{uid}`. A [`ConvId`] always holds the canonical form, so two
//! ids of the same conversation compare equal and print the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{InvalidId, check_id, quoted};

/// A valid conversation id in canonical form (ids checked, a direct conversation's
/// users in byte order). Serialized as its string, also as a JSON map key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConvId {
    text: String,
}

/// What a [`ConvId`] names, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind<'a> {
    /// A direct conversation between two users, `a < b` in byte order.
    Dm {
        /// The user whose id sorts first.
        a: &'a str,
        /// The user whose id sorts last.
        b: &'a str,
    },
    /// A group's conversation.
    Group {
        /// The group id.
        gid: &'a str,
    },
    /// Notices pushed by a backend to one user.
    Sys {
        /// The user id.
        uid: &'a str,
    },
}

impl ConvId {
    /// The direct conversation between `x` and `y`, in either order.
    pub fn dm(x: &str, y: &str) -> Result<ConvId, ConvIdError> {
        check_id(x)?;
        check_id(y)?;
        let (a, b) = match x.cmp(y) {
            std::cmp::Ordering::Less => (x, y),
            std::cmp::Ordering::Greater => (y, x),
            std::cmp::Ordering::Equal => {
                return Err(ConvIdError::NotTwoUsers(quoted(&format!("dm:{x}:{y}"))));
            }
        };
        Ok(ConvId {
            text: format!("dm:{a}:{b}"),
        })
    }

    /// The conversation of group `gid`.
    pub fn group(gid: &str) -> Result<ConvId, ConvIdError> {
        Ok(ConvId {
            text: format!("group:{}", check_id(gid)?),
        })
    }

    /// The notice conversation of user `uid`.
    pub fn sys(uid: &str) -> Result<ConvId, ConvIdError> {
        Ok(ConvId {
            text: format!("sys:{}", check_id(uid)?),
        })
    }

    /// The canonical text, e.g. `dm:alice:bob`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What the id names.
    pub fn kind(&self) -> ConvKind<'_> {
        // The text was checked on construction: a known prefix, then one id, or
        // two ids for dm (ids cannot contain ':').
        let (prefix, rest) = self.text.split_once(':').unwrap_or(("", ""));
        match prefix {
            "dm" => {
                let (a, b) = rest.split_once(':').unwrap_or((rest, ""));
                ConvKind::Dm { a, b }
            }
            "group" => ConvKind::Group { gid: rest },
            _ => ConvKind::Sys { uid: rest },
        }
    }

    /// In a direct conversation that includes `me`, the other user.
    pub fn peer(&self, me: &str) -> Option<&str> {
        match self.kind() {
            ConvKind::Dm { a, b } if a == me => Some(b),
            ConvKind::Dm { a, b } if b == me => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ConvId {
    type Err = ConvIdError;

    /// Parses and checks a conversation id; `dm:bob:alice` becomes `dm:alice:bob`.
    fn from_str(s: &str) -> Result<ConvId, ConvIdError> {
        match s.split_once(':') {
            Some(("dm", rest)) => match rest.split_once(':') {
                Some((x, y)) => ConvId::dm(x, y),
                None => Err(ConvIdError::NotTwoUsers(quoted(s))),
            },
            Some(("group", gid)) => ConvId::group(gid),
            Some(("sys", uid)) => ConvId::sys(uid),
            _ => Err(ConvIdError::UnknownKind(quoted(s))),
        }
    }
}

impl Serialize for ConvId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConvId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ConvId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a conversation id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvIdError {
    /// It does not start with `dm:`, `group:` or `sys:` (the input, shortened).
    UnknownKind(String),
    /// A `dm:` id that does not name two different users (the input, shortened).
    NotTwoUsers(String),
    /// One of its ids breaks the id rule.
    InvalidId(InvalidId),
}

impl From<InvalidId> for ConvIdError {
    fn from(e: InvalidId) -> Self {
        ConvIdError::InvalidId(e)
    }
}

impl fmt::Display for ConvIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvIdError::UnknownKind(s) => write!(
                f,
                "{s} is not a conversation id (dm:{{a}}:{{b}}, group:{{gid}} or sys:{{uid}})"
            ),
            ConvIdError::NotTwoUsers(s) => {
                write!(
                    f,
                    "{s} is not a direct conversation between two different users"
                )
            }
            ConvIdError::InvalidId(e) => write!(f, "bad conversation id: {e}"),
        }
    }
}

impl std::error::Error for ConvIdError {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn conv(s: &str) -> ConvId {
        s.parse().expect("valid conversation id")
    }

    #[test]
    fn the_three_kinds_parse_print_and_round_trip() {
        for s in ["dm:alice:bob", "group:g-1", "sys:u.9"] {
            let c = conv(s);
            assert_eq!(c.to_string(), s);
            assert_eq!(c.as_str(), s);
            let json = serde_json::to_string(&c).expect("serialize");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<ConvId>(&json).expect("parse"), c);
        }
        assert_eq!(
            conv("dm:alice:bob").kind(),
            ConvKind::Dm {
                a: "alice",
                b: "bob"
            }
        );
        assert_eq!(conv("group:g-1").kind(), ConvKind::Group { gid: "g-1" });
        assert_eq!(conv("sys:u.9").kind(), ConvKind::Sys { uid: "u.9" });
    }

    #[test]
    fn a_direct_conversation_is_normalised_to_byte_order() {
        assert_eq!(conv("dm:bob:alice").as_str(), "dm:alice:bob");
        assert_eq!(ConvId::dm("bob", "alice"), ConvId::dm("alice", "bob"));
        // Byte order: upper case sorts before lower case, '-' before digits.
        assert_eq!(conv("dm:b:B").as_str(), "dm:B:b");
        assert_eq!(conv("dm:1:-").as_str(), "dm:-:1");
        let json: ConvId = serde_json::from_str("\"dm:zed:amy\"").expect("parse");
        assert_eq!(json.as_str(), "dm:amy:zed");
        let c = conv("dm:alice:bob");
        assert_eq!(c.peer("alice"), Some("bob"));
        assert_eq!(c.peer("bob"), Some("alice"));
        assert_eq!(c.peer("carol"), None);
        assert_eq!(conv("group:g").peer("g"), None);
    }

    #[test]
    fn bad_conversation_ids_are_rejected() {
        for bad in [
            "",
            "alice",
            "dm",
            "dm:",
            "dm:alice",
            "dm:alice:",
            "dm::bob",
            "dm:alice:alice",
            "dm:a:b:c",
            "dm:a/b:c",
            "group:",
            "group:a/b",
            "group:#",
            "group:g:h",
            "sys:",
            "sys:+",
            "chan:x",
            "DM:a:b",
            " group:g",
            &format!("group:{}", "x".repeat(65)),
        ] {
            let err = bad.parse::<ConvId>().expect_err(bad);
            assert!(!err.to_string().is_empty());
            let json = serde_json::to_string(bad).expect("string");
            assert!(serde_json::from_str::<ConvId>(&json).is_err(), "{bad}");
        }
        assert!(matches!(
            ConvId::dm("a", "a"),
            Err(ConvIdError::NotTwoUsers(_))
        ));
        assert!(matches!(
            ConvId::group("a b"),
            Err(ConvIdError::InvalidId(_))
        ));
        assert!(matches!(
            "x:y".parse::<ConvId>(),
            Err(ConvIdError::UnknownKind(_))
        ));
        assert!(serde_json::from_str::<ConvId>("42").is_err());
    }

    #[test]
    fn conversation_ids_are_json_map_keys() {
        let mut cursors = BTreeMap::new();
        cursors.insert(conv("dm:alice:bob"), 7u64);
        cursors.insert(conv("group:g"), 3);
        let json = serde_json::to_string(&cursors).expect("serialize");
        assert_eq!(json, r#"{"dm:alice:bob":7,"group:g":3}"#);
        let back: BTreeMap<ConvId, u64> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, cursors);
        assert!(serde_json::from_str::<BTreeMap<ConvId, u64>>(r#"{"nope":1}"#).is_err());
    }
}
