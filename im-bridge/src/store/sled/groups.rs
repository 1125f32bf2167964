//! Groups, memberships and contacts in sled: the `groups`, `members`,
//! `user_groups` and `contacts` trees (keys in the table of `mod.rs`).
//!
//! A membership is 17 bytes: the role (0 owner, 1 admin, 2 member), the first
//! visible seq and the last (`u64::MAX` while a member), big-endian. A group's
//! changes are one transaction over its settings, memberships, the users' group
//! lists and cursors, so after a crash a user is in a group's member list exactly
//! when the group is in the user's.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{
    GroupRecord, GroupRole, GroupWrite, Membership, SledStore, StoreError, TxResult, from_tx, key2,
    u64_at,
};

/// `until` of a current membership.
const CURRENT: u64 = u64::MAX;

fn encode_membership(m: &Membership) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = match m.role {
        GroupRole::Owner => 0,
        GroupRole::Admin => 1,
        GroupRole::Member => 2,
    };
    v[1..9].copy_from_slice(&m.since.to_be_bytes());
    v[9..].copy_from_slice(&m.until.unwrap_or(CURRENT).to_be_bytes());
    v
}

fn decode_membership(v: &[u8]) -> Result<Membership, StoreError> {
    let role = match v.first() {
        Some(0) => GroupRole::Owner,
        Some(1) => GroupRole::Admin,
        Some(2) => GroupRole::Member,
        _ => return Err(StoreError::Corrupt("members")),
    };
    match (u64_at(v, 1), u64_at(v, 9)) {
        (Some(since), Some(until)) => Ok(Membership {
            role,
            since,
            until: (until != CURRENT).then_some(until),
        }),
        _ => Err(StoreError::Corrupt("members")),
    }
}

/// The ids after `prefix` in the keys of `tree` (at most `limit`).
fn ids_after(tree: &sled::Tree, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
    let mut prefix = owner.as_bytes().to_vec();
    prefix.push(0);
    let mut out = Vec::new();
    for kv in tree.scan_prefix(&prefix).take(limit) {
        let (k, _) = kv?;
        let id = k
            .get(prefix.len()..)
            .and_then(|id| std::str::from_utf8(id).ok())
            .ok_or(StoreError::Corrupt("index"))?;
        out.push(id.to_owned());
    }
    Ok(out)
}

impl SledStore {
    pub(super) fn group_record(&self, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
        match self.groups.get(gid)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("groups")),
        }
    }

    pub(super) fn group_membership(
        &self,
        gid: &str,
        uid: &str,
    ) -> Result<Option<Membership>, StoreError> {
        self.members
            .get(key2(gid, uid))?
            .map(|v| decode_membership(&v))
            .transpose()
    }

    pub(super) fn group_members(&self, gid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        let mut prefix = gid.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.members.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let m = decode_membership(&v)?;
            let uid = k
                .get(prefix.len()..)
                .and_then(|u| std::str::from_utf8(u).ok())
                .ok_or(StoreError::Corrupt("members"))?;
            out.push((uid.to_owned(), m));
        }
        Ok(out)
    }

    pub(super) fn groups_of(&self, uid: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        ids_after(&self.user_groups, uid, limit)
    }

    pub(super) fn apply_group_writes(&self, writes: &[GroupWrite]) -> Result<(), StoreError> {
        (
            &self.groups,
            &self.members,
            &self.user_groups,
            &self.cursors,
        )
            .transaction(|(groups, members, user_groups, cursors)| {
                for w in writes {
                    match w {
                        GroupWrite::Put(g) => {
                            let json = serde_json::to_vec(g).map_err(|e| {
                                ConflictableTransactionError::Abort(StoreError::Engine(
                                    e.to_string(),
                                ))
                            })?;
                            groups.insert(g.id.as_bytes(), json)?;
                        }
                        GroupWrite::Delete(gid) => {
                            groups.remove(gid.as_bytes())?;
                        }
                        GroupWrite::Member {
                            gid,
                            uid,
                            membership,
                            cursor,
                        } => {
                            members.insert(key2(gid, uid), &encode_membership(membership))?;
                            if membership.is_current() {
                                user_groups.insert(key2(uid, gid), &[])?;
                            } else {
                                user_groups.remove(key2(uid, gid))?;
                            }
                            if let Some(seq) = cursor {
                                let conv = format!("group:{gid}");
                                let key = key2(uid, &conv);
                                let now = cursors.get(&key)?.and_then(|v| u64_at(&v, 0));
                                if now.is_none_or(|now| *seq > now) {
                                    cursors.insert(key, &seq.to_be_bytes())?;
                                }
                            }
                        }
                        GroupWrite::Forget { gid, uid } => {
                            members.remove(key2(gid, uid))?;
                            user_groups.remove(key2(uid, gid))?;
                        }
                    }
                }
                TxResult::Ok(())
            })
            .map_err(from_tx)
    }

    pub(super) fn put_contact(
        &self,
        owner: &str,
        contact: &str,
        on: bool,
    ) -> Result<bool, StoreError> {
        let key = key2(owner, contact);
        let before = if on {
            self.contacts.insert(key, &[])?
        } else {
            self.contacts.remove(key)?
        };
        Ok(before.is_some() != on)
    }

    pub(super) fn has_contact(&self, owner: &str, contact: &str) -> Result<bool, StoreError> {
        Ok(self.contacts.contains_key(key2(owner, contact))?)
    }

    pub(super) fn contacts_of(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        ids_after(&self.contacts, owner, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, Window};
    use imqtt_wire::HistoryVisible;
    use std::time::Duration;

    fn record(id: &str, members: u32) -> GroupRecord {
        GroupRecord {
            id: id.into(),
            name: "Team".into(),
            owner: "ann".into(),
            open: false,
            history_visible: HistoryVisible::SinceJoin,
            base: 0,
            members,
        }
    }

    fn member(gid: &str, uid: &str, role: GroupRole, since: u64, cursor: u64) -> GroupWrite {
        GroupWrite::Member {
            gid: gid.into(),
            uid: uid.into(),
            membership: Membership {
                role,
                since,
                until: None,
            },
            cursor: Some(cursor),
        }
    }

    #[test]
    fn memberships_the_members_list_and_the_users_groups_agree() {
        let s = SledStore::temporary(Duration::from_secs(60)).expect("store");
        s.write_groups(&[
            GroupWrite::Put(record("team", 2)),
            member("team", "ann", GroupRole::Owner, 1, 0),
            member("team", "ben", GroupRole::Member, 5, 4),
        ])
        .expect("create");
        assert_eq!(s.group("team").expect("get"), Some(record("team", 2)));
        let roles = |s: &SledStore| -> Vec<(String, GroupRole)> {
            s.members("team")
                .expect("members")
                .into_iter()
                .filter(|(_, m)| m.is_current())
                .map(|(u, m)| (u, m.role))
                .collect()
        };
        assert_eq!(
            roles(&s),
            vec![
                ("ann".to_owned(), GroupRole::Owner),
                ("ben".to_owned(), GroupRole::Member)
            ]
        );
        assert_eq!(s.user_groups("ben", 10).expect("groups"), vec!["team"]);
        let conv = imqtt_wire::ConvId::group("team").expect("conv");
        assert_eq!(s.cursor("ben", &conv).expect("cursor"), 4);

        // Ben leaves at seq 9: he keeps 5..=9, leaves the list, the group his.
        s.write_groups(&[GroupWrite::Member {
            gid: "team".into(),
            uid: "ben".into(),
            membership: Membership {
                role: GroupRole::Member,
                since: 5,
                until: Some(9),
            },
            cursor: None,
        }])
        .expect("leave");
        let left = s.membership("team", "ben").expect("get").expect("past");
        assert!(!left.is_current());
        assert_eq!(left.window(), Window { first: 5, last: 9 });
        assert_eq!(roles(&s).len(), 1);
        assert_eq!(
            s.members("team").expect("all").len(),
            2,
            "the past one stays"
        );
        assert!(s.user_groups("ben", 10).expect("groups").is_empty());

        // A cursor is only ever raised.
        s.write_groups(&[member("team", "ann", GroupRole::Owner, 1, 0)])
            .expect("again");
        s.write_groups(&[GroupWrite::Forget {
            gid: "team".into(),
            uid: "ann".into(),
        }])
        .expect("forget");
        assert_eq!(s.membership("team", "ann").expect("get"), None);
        assert!(s.user_groups("ann", 10).expect("groups").is_empty());
        s.write_groups(&[GroupWrite::Delete("team".into())])
            .expect("delete");
        assert_eq!(s.group("team").expect("get"), None);
    }

    #[test]
    fn contacts_are_a_set_per_owner() {
        let s = SledStore::temporary(Duration::from_secs(60)).expect("store");
        assert!(s.set_contact("ann", "ben", true).expect("add"));
        assert!(!s.set_contact("ann", "ben", true).expect("again"));
        assert!(s.set_contact("ann", "cat", true).expect("add"));
        assert!(s.is_contact("ann", "ben").expect("is"));
        assert!(!s.is_contact("ben", "ann").expect("not mutual"));
        assert_eq!(s.contacts("ann", 10).expect("list"), vec!["ben", "cat"]);
        assert!(s.set_contact("ann", "ben", false).expect("remove"));
        assert!(!s.set_contact("ann", "ben", false).expect("gone"));
        assert_eq!(s.contacts("ann", 10).expect("list"), vec!["cat"]);
    }
}
