//! Presence (DESIGN.md §3, §7): the retained payload on `presence/{uid}`, the
//! `GET /v1/presence` answer, and the contact list that decides who may see it.

use serde::{Deserialize, Serialize};

/// A user's presence, as published retained on `presence/{uid}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The user.
    pub user: String,
    /// Online while at least one device holds a connection.
    pub status: PresenceStatus,
    /// The connected devices (their MQTT client ids); empty when offline.
    pub devices: Vec<String>,
    /// When the status last changed, Unix milliseconds.
    pub ts: u64,
}

/// Whether a user has a device connected: `"online"` or `"offline"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// At least one device is connected.
    Online,
    /// No device is connected.
    Offline,
}

/// `GET /v1/presence?users=a,b`: the presence of the asked users the caller may see.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceList {
    /// One entry per visible user; users the caller may not see are left out.
    pub presence: Vec<Presence>,
}

/// The query of `GET /v1/presence`: `users=a,b,c`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceQuery {
    /// Comma-separated user ids.
    pub users: String,
}

impl PresenceQuery {
    /// The query for `users`.
    pub fn new<'a>(users: impl IntoIterator<Item = &'a str>) -> PresenceQuery {
        PresenceQuery {
            users: users.into_iter().collect::<Vec<_>>().join(","),
        }
    }

    /// The user ids asked for, empty entries skipped.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.split(',').filter(|u| !u.is_empty())
    }
}

/// `GET /v1/contacts`: whom the caller lets see its presence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactList {
    /// User ids.
    pub contacts: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_has_the_design_shape() {
        let p = Presence {
            user: "alice".to_owned(),
            status: PresenceStatus::Online,
            devices: vec!["phone".to_owned(), "aa:bb:cc".to_owned()],
            ts: 1_732_262_400_123,
        };
        let text = r#"{"user":"alice","status":"online","devices":["phone","aa:bb:cc"],"ts":1732262400123}"#;
        assert_eq!(serde_json::to_string(&p).expect("serialize"), text);
        assert_eq!(serde_json::from_str::<Presence>(text).expect("parse"), p);
        let off = r#"{"user":"bob","status":"offline","devices":[],"ts":1}"#;
        let p: Presence = serde_json::from_str(off).expect("parse");
        assert_eq!(p.status, PresenceStatus::Offline);
        assert!(
            serde_json::from_str::<Presence>(r#"{"user":"b","status":"away","devices":[],"ts":1}"#)
                .is_err()
        );
    }

    #[test]
    fn presence_list_query_and_contacts_round_trip() {
        let list = PresenceList {
            presence: vec![Presence {
                user: "bob".to_owned(),
                status: PresenceStatus::Offline,
                devices: vec![],
                ts: 5,
            }],
        };
        let text = r#"{"presence":[{"user":"bob","status":"offline","devices":[],"ts":5}]}"#;
        assert_eq!(serde_json::to_string(&list).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<PresenceList>(text).expect("parse"),
            list
        );

        let q = PresenceQuery::new(["a", "b"]);
        assert_eq!(q.users, "a,b");
        assert_eq!(q.users().collect::<Vec<_>>(), ["a", "b"]);
        let sparse = PresenceQuery {
            users: ",a,,b,".to_owned(),
        };
        assert_eq!(sparse.users().collect::<Vec<_>>(), ["a", "b"]);

        let contacts = ContactList {
            contacts: vec!["bob".to_owned()],
        };
        let text = r#"{"contacts":["bob"]}"#;
        assert_eq!(serde_json::to_string(&contacts).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<ContactList>(text).expect("parse"),
            contacts
        );
    }
}
