//! Groups and memberships in sled's keys (`g`, `M`, `G` and the cursors; see
//! `keys.rs`).
//!
//! A membership is 17 bytes: the role (0 owner, 1 admin, 2 member), the first
//! visible seq and the last (`u64::MAX` while a member), big-endian. A change's
//! keys are written in the round's one batch, so after a crash a user is in a
//! group's member list exactly when the group is in the user's.

use sled::IVec;

use super::keys::{CURSOR, GROUP, MEMBER, USER_GROUP, key1, key2, u64_at};
use crate::store::{GroupWrite, Membership, StoreError};
use imqtt_wire::GroupRole;

/// `until` of a current membership.
const CURRENT: u64 = u64::MAX;

pub(super) fn encode_membership(m: &Membership) -> [u8; 17] {
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

pub(super) fn decode_membership(v: &[u8]) -> Result<Membership, StoreError> {
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

/// A key and its new value (`None`: removed).
pub(super) type KeyWrite = (Vec<u8>, Option<IVec>);

/// The keys one group change sets (`Some`) or removes (`None`); `get` reads the
/// round's current value of a key (for the cursor, which only rises).
pub(super) fn keys_of(
    w: &GroupWrite,
    get: impl Fn(&[u8]) -> Result<Option<IVec>, StoreError>,
) -> Result<Vec<KeyWrite>, StoreError> {
    Ok(match w {
        GroupWrite::Put(g) => {
            let json = serde_json::to_vec(g).map_err(|e| StoreError::Engine(e.to_string()))?;
            vec![(key1(GROUP, &g.id), Some(json.into()))]
        }
        GroupWrite::Delete(gid) => vec![(key1(GROUP, gid), None)],
        GroupWrite::Member {
            gid,
            uid,
            membership,
            cursor,
        } => {
            let mut keys = vec![
                (
                    key2(MEMBER, gid, uid),
                    Some(IVec::from(&encode_membership(membership)[..])),
                ),
                (
                    key2(USER_GROUP, uid, gid),
                    membership.is_current().then(IVec::default),
                ),
            ];
            if let Some(seq) = cursor {
                let key = key2(CURSOR, uid, &format!("group:{gid}"));
                let now = get(&key)?.and_then(|v| u64_at(&v, 0));
                if now.is_none_or(|now| *seq > now) {
                    keys.push((key, Some(IVec::from(&seq.to_be_bytes()[..]))));
                }
            }
            keys
        }
        GroupWrite::Forget { gid, uid } => vec![
            (key2(MEMBER, gid, uid), None),
            (key2(USER_GROUP, uid, gid), None),
        ],
    })
}
