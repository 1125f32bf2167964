//! Groups (DESIGN.md §5): create, list, look at one, add members, change a member's
//! role (ownership transfer included). Removing a member
//! (`DELETE /v1/groups/{gid}/members/{uid}`) and deleting a group have no body.

use serde::{Deserialize, Serialize};

/// `POST /v1/groups`: the caller creates a group and becomes its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroupRequest {
    /// The group id to use; the server picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Display name.
    pub name: String,
    /// Whether anyone may join by adding themselves; server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,
    /// What a member may read of the messages from before it joined; server
    /// default (`"since_join"`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_visible: Option<HistoryVisible>,
}

/// What a member may read of a group's messages from before it joined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryVisible {
    /// Only what was sent from its joining on (the default).
    #[default]
    SinceJoin,
    /// Everything the group holds.
    All,
}

/// A group's settings: the `201` answer to a create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The user who created it.
    pub owner: String,
    /// Whether anyone may join by adding themselves.
    pub open: bool,
    /// What new members may read of the messages from before they joined.
    pub history_visible: HistoryVisible,
}

/// `GET /v1/groups/{gid}`: a group's settings and members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The user who created it.
    pub owner: String,
    /// Whether anyone may join by adding themselves.
    pub open: bool,
    /// What new members may read of the messages from before they joined.
    pub history_visible: HistoryVisible,
    /// Every member with its role.
    pub members: Vec<GroupMember>,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The member's uid.
    pub user: String,
    /// What the member may do.
    pub role: GroupRole,
}

/// A member's standing in a group: `"owner"`, `"admin"` or `"member"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    /// Created the group; may do everything, including delete it.
    Owner,
    /// May add and remove members.
    Admin,
    /// May read and send.
    Member,
}

/// `GET /v1/groups`: the groups the caller belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupList {
    /// One entry per group.
    pub groups: Vec<GroupSummary>,
}

/// One of the caller's groups, with the caller's role in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The user who created it.
    pub owner: String,
    /// The caller's role in it.
    pub role: GroupRole,
    /// Whether anyone may join by adding themselves.
    pub open: bool,
    /// What new members may read of the messages from before they joined.
    pub history_visible: HistoryVisible,
}

/// `POST /v1/groups/{gid}/members`: add users (owner and admins, or oneself on an
/// open group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMembersRequest {
    /// The uids to add.
    pub users: Vec<String>,
}

/// The `200` answer to `POST /v1/groups/{gid}/members`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMembersResponse {
    /// The group.
    pub group: String,
    /// The users that became members (those who already were are left out).
    pub added: Vec<String>,
}

/// `PUT /v1/groups/{gid}/members/{uid}`: change a member's role. `"admin"` and
/// `"member"` promote and demote (owner only); `"owner"` transfers the ownership,
/// and the old owner becomes an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRoleRequest {
    /// The new role.
    pub role: GroupRole,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_omits_what_it_leaves_to_the_server() {
        let minimal = CreateGroupRequest {
            id: None,
            name: "Team".to_owned(),
            open: None,
            history_visible: None,
        };
        let text = r#"{"name":"Team"}"#;
        assert_eq!(serde_json::to_string(&minimal).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<CreateGroupRequest>(text).expect("parse"),
            minimal
        );
        let full = CreateGroupRequest {
            id: Some("team".to_owned()),
            open: Some(true),
            history_visible: Some(HistoryVisible::All),
            ..minimal
        };
        let text = r#"{"id":"team","name":"Team","open":true,"history_visible":"all"}"#;
        assert_eq!(serde_json::to_string(&full).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<CreateGroupRequest>(text).expect("parse"),
            full
        );
        assert!(serde_json::from_str::<CreateGroupRequest>(r#"{"id":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<CreateGroupRequest>(r#"{"name":"x","history_visible":"some"}"#)
                .is_err()
        );
    }

    #[test]
    fn group_answers_round_trip() {
        let group = Group {
            id: "team".to_owned(),
            name: "Team".to_owned(),
            owner: "alice".to_owned(),
            open: false,
            history_visible: HistoryVisible::SinceJoin,
        };
        let text = r#"{"id":"team","name":"Team","owner":"alice","open":false,"history_visible":"since_join"}"#;
        assert_eq!(serde_json::to_string(&group).expect("serialize"), text);
        assert_eq!(serde_json::from_str::<Group>(text).expect("parse"), group);

        let info = GroupInfo {
            id: "team".to_owned(),
            name: "Team".to_owned(),
            owner: "alice".to_owned(),
            open: false,
            history_visible: HistoryVisible::All,
            members: vec![
                GroupMember {
                    user: "alice".to_owned(),
                    role: GroupRole::Owner,
                },
                GroupMember {
                    user: "bob".to_owned(),
                    role: GroupRole::Member,
                },
            ],
        };
        let text = r#"{"id":"team","name":"Team","owner":"alice","open":false,"history_visible":"all","members":[{"user":"alice","role":"owner"},{"user":"bob","role":"member"}]}"#;
        assert_eq!(serde_json::to_string(&info).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<GroupInfo>(text).expect("parse"),
            info
        );

        let list = GroupList {
            groups: vec![GroupSummary {
                id: "team".to_owned(),
                name: "Team".to_owned(),
                owner: "alice".to_owned(),
                role: GroupRole::Admin,
                open: true,
                history_visible: HistoryVisible::SinceJoin,
            }],
        };
        let text = r#"{"groups":[{"id":"team","name":"Team","owner":"alice","role":"admin","open":true,"history_visible":"since_join"}]}"#;
        assert_eq!(serde_json::to_string(&list).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<GroupList>(text).expect("parse"),
            list
        );
        assert!(serde_json::from_str::<GroupMember>(r#"{"user":"x","role":"king"}"#).is_err());
    }

    #[test]
    fn add_members_round_trips() {
        let add = AddMembersRequest {
            users: vec!["bob".to_owned(), "carol".to_owned()],
        };
        let text = r#"{"users":["bob","carol"]}"#;
        assert_eq!(serde_json::to_string(&add).expect("serialize"), text);
        assert_eq!(
            serde_json::from_str::<AddMembersRequest>(text).expect("parse"),
            add
        );
    }
}
