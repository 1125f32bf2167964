//! Groups, memberships and contacts: `imqtt_groups`, `imqtt_members` (a past
//! membership keeps its row with `until` set; the partial index on current ones
//! is each user's list of groups) and `imqtt_contacts`.

use deadpool_postgres::ClientWrapper;
use imqtt_wire::GroupRole;

use super::{i64_of, pg_error, u64_of};
use crate::store::{GroupRecord, GroupWrite, Membership, StoreError};

pub(super) fn role_code(r: GroupRole) -> i16 {
    match r {
        GroupRole::Owner => 0,
        GroupRole::Admin => 1,
        GroupRole::Member => 2,
    }
}

fn membership(role: i16, since: i64, until: Option<i64>) -> Result<Membership, StoreError> {
    let role = match role {
        0 => GroupRole::Owner,
        1 => GroupRole::Admin,
        2 => GroupRole::Member,
        _ => return Err(StoreError::Corrupt("members")),
    };
    Ok(Membership {
        role,
        since: u64_of(since),
        until: until.map(u64_of),
    })
}

pub(super) async fn group(c: &ClientWrapper, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
    let st = c
        .prepare_cached("SELECT record FROM imqtt_groups WHERE gid = $1")
        .await
        .map_err(pg_error)?;
    match c.query_opt(&st, &[&gid]).await.map_err(pg_error)? {
        None => Ok(None),
        Some(r) => serde_json::from_str(r.get(0))
            .map(Some)
            .map_err(|_| StoreError::Corrupt("groups")),
    }
}

pub(super) async fn member(
    c: &ClientWrapper,
    gid: &str,
    uid: &str,
) -> Result<Option<Membership>, StoreError> {
    let st = c
        .prepare_cached("SELECT role, since, until FROM imqtt_members WHERE gid = $1 AND uid = $2")
        .await
        .map_err(pg_error)?;
    c.query_opt(&st, &[&gid, &uid])
        .await
        .map_err(pg_error)?
        .map(|r| membership(r.get(0), r.get(1), r.get(2)))
        .transpose()
}

pub(super) async fn members(
    c: &ClientWrapper,
    gid: &str,
) -> Result<Vec<(String, Membership)>, StoreError> {
    let st = c
        .prepare_cached(
            "SELECT uid, role, since, until FROM imqtt_members WHERE gid = $1 ORDER BY uid",
        )
        .await
        .map_err(pg_error)?;
    c.query(&st, &[&gid])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| Ok((r.get(0), membership(r.get(1), r.get(2), r.get(3))?)))
        .collect()
}

/// The ids `sql` ($1 the owner, $2 the limit) answers.
async fn ids(
    c: &ClientWrapper,
    sql: &str,
    owner: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(c.query(&st, &[&owner, &limit])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

pub(super) async fn user_groups(
    c: &ClientWrapper,
    uid: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    ids(
        c,
        "SELECT gid FROM imqtt_members WHERE uid = $1 AND until IS NULL ORDER BY gid LIMIT $2",
        uid,
        limit,
    )
    .await
}

pub(super) async fn contacts(
    c: &ClientWrapper,
    owner: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    ids(
        c,
        "SELECT contact FROM imqtt_contacts WHERE owner = $1 ORDER BY contact LIMIT $2",
        owner,
        limit,
    )
    .await
}

pub(super) async fn is_contact(
    c: &ClientWrapper,
    owner: &str,
    contact: &str,
) -> Result<bool, StoreError> {
    let st = c
        .prepare_cached("SELECT 1 FROM imqtt_contacts WHERE owner = $1 AND contact = $2")
        .await
        .map_err(pg_error)?;
    Ok(c.query_opt(&st, &[&owner, &contact])
        .await
        .map_err(pg_error)?
        .is_some())
}

pub(super) async fn set_contact(
    c: &ClientWrapper,
    owner: &str,
    contact: &str,
    on: bool,
) -> Result<bool, StoreError> {
    let sql = if on {
        "INSERT INTO imqtt_contacts (owner, contact) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM imqtt_contacts WHERE owner = $1 AND contact = $2"
    };
    let st = c.prepare_cached(sql).await.map_err(pg_error)?;
    Ok(c.execute(&st, &[&owner, &contact])
        .await
        .map_err(pg_error)?
        == 1)
}

pub(super) async fn write(c: &ClientWrapper, w: &GroupWrite) -> Result<(), StoreError> {
    match w {
        GroupWrite::Put(g) => {
            let json = serde_json::to_string(g).map_err(|e| StoreError::Engine(e.to_string()))?;
            let st = c
                .prepare_cached(
                    "INSERT INTO imqtt_groups (gid, record) VALUES ($1, $2)
                     ON CONFLICT (gid) DO UPDATE SET record = EXCLUDED.record",
                )
                .await
                .map_err(pg_error)?;
            c.execute(&st, &[&g.id, &json]).await.map_err(pg_error)?;
        }
        GroupWrite::Delete(gid) => {
            let st = c
                .prepare_cached("DELETE FROM imqtt_groups WHERE gid = $1")
                .await
                .map_err(pg_error)?;
            c.execute(&st, &[gid]).await.map_err(pg_error)?;
        }
        GroupWrite::Member {
            gid,
            uid,
            membership,
            cursor,
        } => {
            let st = c
                .prepare_cached(
                    "INSERT INTO imqtt_members (gid, uid, role, since, until)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (gid, uid) DO UPDATE
                     SET role = EXCLUDED.role, since = EXCLUDED.since, until = EXCLUDED.until",
                )
                .await
                .map_err(pg_error)?;
            let until = membership.until.map(i64_of);
            c.execute(
                &st,
                &[
                    gid,
                    uid,
                    &role_code(membership.role),
                    &i64_of(membership.since),
                    &until,
                ],
            )
            .await
            .map_err(pg_error)?;
            if let Some(seq) = cursor {
                let conv = format!("group:{gid}");
                let mut raise = std::collections::BTreeMap::new();
                raise.insert((uid.as_str(), conv.as_str()), (i64_of(*seq), false));
                super::messages::raise_cursors(c, raise).await?;
            }
        }
        GroupWrite::Forget { gid, uid } => {
            let st = c
                .prepare_cached("DELETE FROM imqtt_members WHERE gid = $1 AND uid = $2")
                .await
                .map_err(pg_error)?;
            c.execute(&st, &[gid, uid]).await.map_err(pg_error)?;
        }
    }
    Ok(())
}
