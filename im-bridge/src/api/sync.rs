//! Reading: `GET /v1/sync`, `GET /v1/conversations`,
//! `GET /v1/conversations/{conv}/messages`, and `POST /v1/ack`.
//!
//! Everything here reads only the caller's own conversation index, its list of
//! groups, and the keys of the conversations they name. A group member reads the
//! group's messages from the seq at which it joined (or all, per the group), and a
//! past member up to the head at its removal.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use broker::auth::Role;
use bytes::Bytes;
use imqtt_wire::{
    AckRequest, ConvId, ConvKind, ConversationList, ConversationSummary, Envelope, MemberRead,
    MessagesPage, MessagesQuery, ReadsPage, ReadsQuery, SyncConversation, SyncQuery, SyncResponse,
};

use super::{AppState, Json};
use crate::auth::Caller;
use crate::error::Error;
use crate::store::{Range, Reads, Summary, Window};

/// Messages per conversation or page when the request does not say.
const DEFAULT_LIMIT: u32 = 100;
/// Most messages per conversation or page.
const MAX_LIMIT: u32 = 1000;
/// Most conversations one sync or list looks at.
const MAX_CONVERSATIONS: usize = 10_000;

fn limit(asked: Option<u32>) -> Result<usize, Error> {
    match asked.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n as usize),
        n => Err(Error::BadRequest(format!(
            "limit: 1 to {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// The seqs of `conv` that `uid` may read and ack, if any: all of its own direct
/// and notice conversations, its span of a group it is or was in.
fn window(store: &dyn Reads, uid: &str, conv: &ConvId) -> Result<Option<Window>, Error> {
    Ok(match conv.kind() {
        ConvKind::Group { gid } => store.membership(gid, uid)?.map(|m| m.window()),
        _ => crate::store::participants(conv)
            .contains(&uid)
            .then_some(Window::ALL),
    })
}

/// `uid`'s conversations with what it may read of each, the most recent first:
/// its direct and notice conversations from its index, and its current groups.
fn summaries(store: &dyn Reads, uid: &str) -> Result<Vec<(Summary, Window)>, Error> {
    let mut all: Vec<(Summary, Window)> = store
        .conversations(uid, MAX_CONVERSATIONS)?
        .into_iter()
        .map(|s| (s, Window::ALL))
        .collect();
    for gid in store.user_groups(uid, crate::groups::MAX_GROUPS)? {
        let Some(m) = store.membership(&gid, uid)?.filter(|m| m.is_current()) else {
            continue;
        };
        let conv = ConvId::group(&gid).map_err(|e| Error::BadRequest(e.to_string()))?;
        let head = store.head(&conv)?;
        let cursor = store.cursor(uid, &conv)?;
        all.push((Summary { conv, head, cursor }, m.window()));
    }
    all.sort_by_key(|(s, _)| std::cmp::Reverse(s.head.last_ts));
    all.truncate(MAX_CONVERSATIONS);
    Ok(all)
}

/// A query string or path segment that did not parse is 400 with the JSON error
/// body, like every other refusal (axum's own rejections are plain text).
/// A conversation id from a path, or 400.
pub(super) fn conv_id(raw: &str) -> Result<ConvId, Error> {
    raw.parse()
        .map_err(|e| Error::BadRequest(format!("conversation: {e}")))
}

fn parsed<T>(extracted: Result<T, impl std::fmt::Display>) -> Result<T, Error> {
    extracted.map_err(|e| Error::BadRequest(e.to_string()))
}

fn decode(stored: Vec<Bytes>) -> Result<Vec<Envelope>, Error> {
    stored
        .iter()
        .map(|b| {
            serde_json::from_slice(b)
                .map_err(|_| Error::from(crate::store::StoreError::Corrupt("msgs")))
        })
        .collect()
}

/// `GET /v1/sync?limit=N`: the caller's conversations with messages after its
/// cursor, up to N messages each.
pub(super) async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<SyncQuery>, QueryRejection>,
) -> Result<Json<SyncResponse>, Error> {
    let Query(q) = parsed(q)?;
    let limit = limit(q.limit)?;
    let uid = caller.uid().to_owned();
    let conversations = state
        .read(move |store| {
            let mut out = Vec::new();
            for (c, window) in summaries(store, &uid)? {
                if c.head.seq <= c.cursor {
                    continue;
                }
                let (stored, has_more) =
                    store.messages(&c.conv, Range::After(c.cursor), window, limit)?;
                out.push(SyncConversation {
                    conv: c.conv,
                    head: c.head.seq,
                    cursor: c.cursor,
                    messages: decode(stored)?,
                    has_more,
                });
            }
            Ok(out)
        })
        .await?;
    Ok(Json(SyncResponse { conversations }))
}

/// `GET /v1/conversations`: the caller's conversations, the most recent first.
pub(super) async fn conversations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ConversationList>, Error> {
    let uid = caller.uid().to_owned();
    let conversations = state
        .read(move |store| conversation_list(store, &uid))
        .await?;
    Ok(Json(ConversationList { conversations }))
}

/// `uid`'s conversations as `GET /v1/conversations` lists them (blocking).
pub(super) fn conversation_list(
    store: &dyn Reads,
    uid: &str,
) -> Result<Vec<ConversationSummary>, Error> {
    Ok(summaries(store, uid)?
        .into_iter()
        .map(|(c, _)| ConversationSummary {
            unread: c.head.seq.saturating_sub(c.cursor),
            head: c.head.seq,
            cursor: c.cursor,
            last_ts: c.head.last_ts,
            conv: c.conv,
        })
        .collect())
}

/// `GET /v1/conversations/{conv}/messages?after=S&limit=N` (or `before=S`): a
/// contiguous, ascending page; members only (and admins, who may read all).
pub(super) async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    conv: Result<Path<String>, PathRejection>,
    q: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<MessagesPage>, Error> {
    let Path(conv) = parsed(conv)?;
    let Query(q) = parsed(q)?;
    let conv = conv_id(&conv)?;
    let limit = limit(q.limit)?;
    let range = match (q.after, q.before) {
        (Some(_), Some(_)) => {
            return Err(Error::BadRequest("after or before, not both".into()));
        }
        (None, Some(before)) => Range::Before(before),
        (after, None) => Range::After(after.unwrap_or(0)),
    };
    let (uid, admin) = (caller.uid().to_owned(), caller.role() == Role::Admin);
    let (messages, has_more) = state
        .read(move |store| {
            let visible = match window(store, &uid, &conv)? {
                Some(w) => w,
                None if admin => Window::ALL,
                None => return Err(Error::NotAMember),
            };
            let (stored, has_more) = store.messages(&conv, range, visible, limit)?;
            Ok((decode(stored)?, has_more))
        })
        .await?;
    Ok(Json(MessagesPage { messages, has_more }))
}

/// `GET /v1/conversations/{conv}/reads?after=UID&limit=N`: each member's cursor,
/// by user id ("read by 5 of 8"); members only (and admins). A group's current
/// members; a direct conversation's two parties.
pub(super) async fn reads(
    State(state): State<AppState>,
    caller: Caller,
    conv: Result<Path<String>, PathRejection>,
    q: Result<Query<ReadsQuery>, QueryRejection>,
) -> Result<Json<ReadsPage>, Error> {
    let Path(conv) = parsed(conv)?;
    let Query(q) = parsed(q)?;
    let conv = conv_id(&conv)?;
    let limit = limit(q.limit)?;
    let (uid, admin) = (caller.uid().to_owned(), caller.role() == Role::Admin);
    let after = q.after.unwrap_or_default();
    let page = state
        .read(move |store| {
            if window(store, &uid, &conv)?.is_none() && !admin {
                return Err(Error::NotAMember);
            }
            let mut members: Vec<String> = match conv.kind() {
                ConvKind::Group { gid } => store
                    .members(gid)?
                    .into_iter()
                    .filter(|(_, m)| m.is_current())
                    .map(|(u, _)| u)
                    .collect(),
                _ => crate::store::participants(&conv)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            };
            members.retain(|u| *u > after);
            members.sort_unstable();
            members.dedup();
            let has_more = members.len() > limit;
            let reads = members
                .into_iter()
                .take(limit)
                .map(|user| {
                    let seq = store.cursor(&user, &conv)?;
                    Ok(MemberRead { user, seq })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(ReadsPage { reads, has_more })
        })
        .await?;
    Ok(Json(page))
}

/// `POST /v1/ack {cursors: {conv: seq}}`: moves the caller's cursors forward
/// (never back); a seq above a head is 400 and moves nothing. Answered once the
/// cursors are durable (they go through the commit loop, sharing its flushes).
pub(super) async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<AckRequest>,
) -> Result<StatusCode, Error> {
    if req.cursors.len() > MAX_LIMIT as usize {
        return Err(Error::BadRequest(format!(
            "at most {MAX_LIMIT} cursors per ack"
        )));
    }
    let uid = caller.uid().to_owned();
    let cursors: Vec<(ConvId, u64)> = req.cursors.into_iter().collect();
    let reader = uid.clone();
    let receipts = state.config.delivery.read_receipts;
    // The direct conversations whose cursor moved forward: their receipts.
    let moved = state
        .committer
        .write(move |store| {
            let mut was = Vec::new();
            for (conv, seq) in &cursors {
                if window(&*store, &uid, conv)?.is_none() {
                    tracing::debug!(%conv, "ack refused");
                    return Err(Error::NotAMember);
                }
                if receipts && crate::receipts::peer_of(conv, &uid).is_some() {
                    was.push((conv.clone(), *seq, store.cursor(&uid, conv)?));
                }
            }
            store.ack(&uid, &cursors)?;
            let moved: Vec<(ConvId, u64)> = was
                .into_iter()
                .filter(|(_, seq, before)| seq > before)
                .map(|(conv, seq, _)| (conv, seq))
                .collect();
            Ok((moved, None))
        })
        .await?;
    let now = crate::commit::now_ms();
    for (conv, seq) in moved {
        state.receipts.read(&reader, &conv, seq, now);
    }
    Ok(StatusCode::NO_CONTENT)
}
