//! Groups: who may do what to a group, and the store writes each change makes.
//!
//! Every change runs inside the commit loop (`Committer::write`), so it reads the
//! group as it is between the sends committed before and after it: a member joins
//! at an exact seq (it reads from the next one, or from the group's start with
//! `history_visible = "all"`), and a removed member's window ends at the head of
//! its removal; no send of it commits after that. Its subscription to
//! `groups/{gid}` is removed in the loop, after the flush and before any later
//! message is delivered.
//!
//! Service and admin tokens manage any group (DESIGN.md §2); users act by role:
//! the owner does everything, admins add and remove plain members, anyone joins an
//! open group or leaves one.

use broker::BrokerHandle;
use broker::auth::Role;
use imqtt_wire::{
    self as wire, ConvId, Event, Group, GroupInfo, GroupMember, GroupRole, GroupSummary,
    HistoryVisible,
};

use crate::auth::Caller;
use crate::commit::{AfterCommit, Committer};
use crate::error::Error;
use crate::store::{GroupRecord, GroupWrite, Membership, Reads, Round};

/// Longest group name, in bytes.
pub const MAX_NAME: usize = 256;
/// Most users one add request names.
pub const MAX_ADD: usize = 1000;

/// Events to publish once a change is durable: each to every uid listed.
pub type Notices = Vec<(Vec<String>, Event)>;

/// Co-memberships a change ended: `left` no longer share the group with each
/// other nor with `stay`. Their presence subscriptions that only the group
/// allowed are taken away ([`prune_presence`]).
#[derive(Debug, Default)]
pub struct Ended {
    /// Who left the group (everyone, when it was deleted).
    pub left: Vec<String>,
    /// Who is still in it.
    pub stay: Vec<String>,
}

/// A change's answer, with what the commit loop does after the flush.
type Change<T> = Result<(T, Option<AfterCommit>), Error>;

fn conv(gid: &str) -> Result<ConvId, Error> {
    ConvId::group(gid).map_err(|e| Error::BadRequest(e.to_string()))
}

fn is_manager(caller: &Caller) -> bool {
    matches!(caller.role(), Role::Service | Role::Admin)
}

/// The group, or 404.
pub fn existing(store: &dyn Reads, gid: &str) -> Result<GroupRecord, Error> {
    wire::check_id(gid).map_err(|e| Error::BadRequest(format!("group: {e}")))?;
    store
        .group(gid)?
        .ok_or_else(|| Error::NotFound(format!("no group {gid:?}")))
}

/// `uid`'s current role in `gid`, if it is a member.
fn role_of(store: &dyn Reads, gid: &str, uid: &str) -> Result<Option<GroupRole>, Error> {
    Ok(store
        .membership(gid, uid)?
        .filter(Membership::is_current)
        .map(|m| m.role))
}

/// The settings as the API shows them.
pub fn public(g: &GroupRecord) -> Group {
    Group {
        id: g.id.clone(),
        name: g.name.clone(),
        owner: g.owner.clone(),
        open: g.open,
        history_visible: g.history_visible,
    }
}

/// The current members of `gid`.
fn current_members(store: &dyn Reads, gid: &str) -> Result<Vec<(String, Membership)>, Error> {
    let mut all = store.members(gid)?;
    all.retain(|(_, m)| m.is_current());
    Ok(all)
}

/// `POST /v1/groups`: the caller creates a group and owns it.
pub fn create(
    store: &mut dyn Round,
    caller: &Caller,
    req: wire::CreateGroupRequest,
) -> Change<Group> {
    let id = match req.id {
        Some(id) => {
            wire::check_id(&id).map_err(|e| Error::BadRequest(format!("id: {e}")))?;
            id
        }
        None => ulid::Ulid::new().to_string(),
    };
    if req.name.trim().is_empty()
        || req.name.len() > MAX_NAME
        || req.name.chars().any(char::is_control)
    {
        return Err(Error::BadRequest(format!(
            "name: 1 to {MAX_NAME} bytes, not blank, no control characters"
        )));
    }
    if store.group(&id)?.is_some() {
        return Err(Error::GroupExists(id));
    }
    // A group made again under a deleted one's id goes on from its head.
    let base = store.head(&conv(&id)?)?.seq;
    let record = GroupRecord {
        id: id.clone(),
        name: req.name,
        owner: caller.uid().to_owned(),
        open: req.open.unwrap_or(false),
        history_visible: req.history_visible.unwrap_or_default(),
        base,
        members: 1,
    };
    store.write_groups(&[
        GroupWrite::Put(record.clone()),
        GroupWrite::Member {
            gid: id,
            uid: caller.uid().to_owned(),
            membership: Membership {
                role: GroupRole::Owner,
                since: base + 1,
                until: None,
            },
            cursor: Some(base),
        },
    ])?;
    Ok((public(&record), None))
}

/// `POST /v1/groups/{gid}/members`: owner and admins add anyone; on an open group
/// anyone adds itself. Users who are members already are left as they are.
pub fn add(
    store: &mut dyn Round,
    caller: &Caller,
    gid: &str,
    users: Vec<String>,
    max_size: usize,
) -> Change<(wire::AddMembersResponse, Notices)> {
    let mut group = existing(store, gid)?;
    if users.is_empty() || users.len() > MAX_ADD {
        return Err(Error::BadRequest(format!("users: 1 to {MAX_ADD} user ids")));
    }
    for u in &users {
        wire::check_id(u).map_err(|e| Error::BadRequest(format!("users: {e}")))?;
    }
    let joining_self = users.iter().all(|u| u == caller.uid());
    let allowed = is_manager(caller)
        || matches!(
            role_of(store, gid, caller.uid())?,
            Some(GroupRole::Owner | GroupRole::Admin)
        )
        || (joining_self && group.open);
    if !allowed {
        return Err(Error::Forbidden(if joining_self {
            format!("group {gid:?} is closed: its owner or an admin adds members")
        } else {
            "only the group's owner and admins add members".to_owned()
        }));
    }
    let head = store.head(&conv(gid)?)?.seq;
    let since = match group.history_visible {
        HistoryVisible::SinceJoin => head + 1,
        HistoryVisible::All => group.base + 1,
    };
    let mut added: Vec<String> = Vec::new();
    let mut writes = Vec::new();
    for u in users {
        if added.contains(&u) || role_of(store, gid, &u)?.is_some() {
            continue;
        }
        writes.push(GroupWrite::Member {
            gid: gid.to_owned(),
            uid: u.clone(),
            membership: Membership {
                role: GroupRole::Member,
                since,
                until: None,
            },
            // What it joins to is read: unread counts start at the join.
            cursor: Some(head),
        });
        added.push(u);
    }
    if group.members as usize + added.len() > max_size {
        return Err(Error::GroupFull { limit: max_size });
    }
    let mut notices = Notices::new();
    if !added.is_empty() {
        group.members += added.len() as u32;
        writes.push(GroupWrite::Put(group));
        store.write_groups(&writes)?;
        let everyone: Vec<String> = current_members(store, gid)?
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        for u in &added {
            notices.push((
                everyone.clone(),
                Event::MemberAdded {
                    group: gid.to_owned(),
                    user: u.clone(),
                    by: caller.uid().to_owned(),
                },
            ));
        }
    }
    let answer = wire::AddMembersResponse {
        group: gid.to_owned(),
        added,
    };
    Ok(((answer, notices), None))
}

/// `DELETE /v1/groups/{gid}/members/{uid}`: a member leaves, or the owner or an
/// admin removes one (admins only plain members). The owner cannot leave: it
/// transfers the ownership or deletes the group.
pub fn remove(
    store: &mut dyn Round,
    broker: &BrokerHandle,
    caller: &Caller,
    gid: &str,
    uid: &str,
) -> Change<(Notices, Ended)> {
    let mut group = existing(store, gid)?;
    wire::check_id(uid).map_err(|e| Error::BadRequest(format!("member: {e}")))?;
    let Some(target) = store.membership(gid, uid)?.filter(Membership::is_current) else {
        return Err(Error::NotFound(format!(
            "{uid:?} is not a member of {gid:?}"
        )));
    };
    if target.role == GroupRole::Owner {
        return Err(Error::Conflict(
            "the owner cannot leave or be removed: transfer the ownership or delete the group"
                .into(),
        ));
    }
    let leaving = uid == caller.uid();
    let allowed = leaving
        || is_manager(caller)
        || match role_of(store, gid, caller.uid())? {
            Some(GroupRole::Owner) => true,
            Some(GroupRole::Admin) => target.role == GroupRole::Member,
            _ => false,
        };
    if !allowed {
        return Err(Error::Forbidden(
            "only the owner removes admins, and the owner and admins members".into(),
        ));
    }
    let head = store.head(&conv(gid)?)?.seq;
    group.members = group.members.saturating_sub(1);
    store.write_groups(&[
        GroupWrite::Member {
            gid: gid.to_owned(),
            uid: uid.to_owned(),
            membership: Membership {
                until: Some(head),
                ..target
            },
            cursor: None,
        },
        GroupWrite::Put(group),
    ])?;
    let stay: Vec<String> = current_members(store, gid)?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    let mut told = stay.clone();
    told.push(uid.to_owned());
    let notices = vec![(
        told,
        Event::MemberRemoved {
            group: gid.to_owned(),
            user: uid.to_owned(),
            by: caller.uid().to_owned(),
        },
    )];
    let ended = Ended {
        left: vec![uid.to_owned()],
        stay,
    };
    let (broker, uid, filter) = (broker.clone(), uid.to_owned(), group_topic(gid)?);
    let after: AfterCommit = Box::new(move || {
        broker.unsubscribe_user(&uid, &filter);
    });
    Ok(((notices, ended), Some(after)))
}

/// `PUT /v1/groups/{gid}/members/{uid} {role}` (the owner, or a service token):
/// `admin` / `member` promote and demote; `owner` hands the group over and the old
/// owner becomes an admin.
pub fn set_role(
    store: &mut dyn Round,
    caller: &Caller,
    gid: &str,
    uid: &str,
    role: GroupRole,
) -> Change<()> {
    let mut group = existing(store, gid)?;
    wire::check_id(uid).map_err(|e| Error::BadRequest(format!("member: {e}")))?;
    if !is_manager(caller) && role_of(store, gid, caller.uid())? != Some(GroupRole::Owner) {
        return Err(Error::Forbidden(
            "only the group's owner changes roles".into(),
        ));
    }
    let Some(target) = store.membership(gid, uid)?.filter(Membership::is_current) else {
        return Err(Error::NotFound(format!(
            "{uid:?} is not a member of {gid:?}"
        )));
    };
    let member = |uid: &str, m: Membership, role| GroupWrite::Member {
        gid: gid.to_owned(),
        uid: uid.to_owned(),
        membership: Membership { role, ..m },
        cursor: None,
    };
    let mut writes = Vec::new();
    match (target.role, role) {
        (GroupRole::Owner, GroupRole::Owner) => {}
        (GroupRole::Owner, _) => {
            return Err(Error::Conflict(
                "the owner's role changes only by transferring the ownership to another member"
                    .into(),
            ));
        }
        (_, GroupRole::Owner) => {
            if let Some(old) = store
                .membership(gid, &group.owner)?
                .filter(Membership::is_current)
            {
                writes.push(member(&group.owner, old, GroupRole::Admin));
            }
            writes.push(member(uid, target, GroupRole::Owner));
            group.owner = uid.to_owned();
            writes.push(GroupWrite::Put(group));
        }
        (_, role) => writes.push(member(uid, target, role)),
    }
    if !writes.is_empty() {
        store.write_groups(&writes)?;
    }
    Ok(((), None))
}

/// `DELETE /v1/groups/{gid}` (the owner, or a service token): every membership,
/// current and past, goes with it, so nobody reads the group any more; a group
/// made again under the same id starts after the old head and shows none of it.
/// The messages are deleted afterwards, in the background ([`purge`]), up to the
/// head this returns.
pub fn delete(
    store: &mut dyn Round,
    broker: &BrokerHandle,
    caller: &Caller,
    gid: &str,
) -> Change<(Notices, Ended, u64)> {
    let group = existing(store, gid)?;
    if !is_manager(caller) && role_of(store, gid, caller.uid())? != Some(GroupRole::Owner) {
        return Err(Error::Forbidden("only the group's owner deletes it".into()));
    }
    let head = store.head(&conv(gid)?)?.seq;
    let all = store.members(gid)?;
    let mut writes: Vec<GroupWrite> = all
        .iter()
        .map(|(uid, _)| GroupWrite::Forget {
            gid: gid.to_owned(),
            uid: uid.clone(),
        })
        .collect();
    writes.push(GroupWrite::Delete(group.id));
    store.write_groups(&writes)?;
    let current: Vec<String> = all
        .into_iter()
        .filter(|(_, m)| m.is_current())
        .map(|(u, _)| u)
        .collect();
    let notices = vec![(
        current.clone(),
        Event::GroupDeleted {
            group: gid.to_owned(),
            by: caller.uid().to_owned(),
        },
    )];
    let ended = Ended {
        left: current.clone(),
        stay: Vec::new(),
    };
    let (broker, filter) = (broker.clone(), group_topic(gid)?);
    let after: AfterCommit = Box::new(move || {
        for uid in &current {
            broker.unsubscribe_user(uid, &filter);
        }
    });
    Ok(((notices, ended, head), Some(after)))
}

/// Messages a purge deletes per round.
const PURGE_CHUNK: usize = 1000;

/// Deletes a deleted group's messages up to `through`, a chunk per commit round,
/// in the background; nobody can read them any more.
pub fn purge(committer: Committer, gid: &str, through: u64) {
    let Ok(conv) = conv(gid) else { return };
    tokio::spawn(async move {
        let mut total = 0;
        loop {
            let chunk = conv.clone();
            match committer
                .write(move |r| Ok((r.purge(&chunk, through, PURGE_CHUNK)?, None)))
                .await
            {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(error = %e, %conv, "purging a deleted group stopped");
                    return;
                }
            }
        }
        tracing::debug!(%conv, messages = total, "deleted group purged");
    });
}

fn group_topic(gid: &str) -> Result<String, Error> {
    wire::topic::group(gid).map_err(|e| Error::BadRequest(e.to_string()))
}

/// `GET /v1/groups/{gid}`: settings and members, for members, service tokens, and
/// anyone when the group is open (so that they can decide to join).
pub fn info(store: &dyn Reads, caller: &Caller, gid: &str) -> Result<GroupInfo, Error> {
    let group = existing(store, gid)?;
    if !group.open && !is_manager(caller) && role_of(store, gid, caller.uid())?.is_none() {
        return Err(Error::NotAMember);
    }
    let members = current_members(store, gid)?
        .into_iter()
        .map(|(user, m)| GroupMember { user, role: m.role })
        .collect();
    let Group {
        id,
        name,
        owner,
        open,
        history_visible,
    } = public(&group);
    Ok(GroupInfo {
        id,
        name,
        owner,
        open,
        history_visible,
        members,
    })
}

/// Most groups one user's list shows.
pub const MAX_GROUPS: usize = 10_000;

/// `GET /v1/groups`: the caller's groups with its role in each.
pub fn mine(store: &dyn Reads, uid: &str) -> Result<Vec<GroupSummary>, Error> {
    let mut out = Vec::new();
    for gid in store.user_groups(uid, MAX_GROUPS)? {
        let (Some(g), Some(role)) = (store.group(&gid)?, role_of(store, &gid, uid)?) else {
            continue;
        };
        out.push(GroupSummary {
            id: g.id,
            name: g.name,
            owner: g.owner,
            role,
            open: g.open,
            history_visible: g.history_visible,
        });
    }
    Ok(out)
}

/// Takes away the presence subscriptions that only the ended co-memberships
/// allowed: for each user who left, its watchers among the others, and its own
/// watching of them, unless a contact or another shared group still allows it.
/// Visits the watchers of each user concerned (the hub's subscribers of its
/// `presence/{uid}`), never all users. Reads the store: run it off the runtime,
/// once the change is durable.
pub fn prune_presence(store: &dyn Reads, broker: &BrokerHandle, ended: &Ended) {
    use std::collections::HashSet;
    let left: HashSet<&str> = ended.left.iter().map(String::as_str).collect();
    let everyone: HashSet<&str> = left
        .iter()
        .copied()
        .chain(ended.stay.iter().map(String::as_str))
        .collect();
    let prune = |watched: &str, former: &HashSet<&str>| {
        let Ok(topic) = wire::topic::presence(watched) else {
            return;
        };
        for watcher in broker.subscribers(&topic) {
            if watcher == watched || !former.contains(watcher.as_str()) {
                continue;
            }
            match crate::access::can_see_presence(store, &watcher, watched) {
                Ok(true) => {}
                Ok(false) => {
                    broker.unsubscribe_user(&watcher, &topic);
                }
                Err(e) => tracing::error!(error = %e, "cannot read presence visibility"),
            }
        }
    };
    for u in &ended.left {
        prune(u, &everyone);
    }
    for u in &ended.stay {
        prune(u, &left);
    }
}

/// Publishes each notice on `users/{uid}/events` of its uids, at QoS 1.
pub fn publish(broker: &BrokerHandle, notices: &Notices) {
    for (uids, event) in notices {
        let Ok(json) = serde_json::to_vec(event) else {
            continue;
        };
        let json = bytes::Bytes::from(json);
        for uid in uids {
            crate::delivery::tell_json(broker, uid, json.clone());
        }
    }
}
