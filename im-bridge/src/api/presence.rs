//! Contacts and presence: `PUT|DELETE /v1/contacts/{uid}`, `GET /v1/contacts`,
//! `GET /v1/presence?users=a,b`.
//!
//! My contacts are the users I let see my presence. Removing one takes away its
//! live subscription to `presence/{me}` before the answer (unless it may still see
//! me as a co-member of a group).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use imqtt_wire::{self as wire, ContactList, PresenceList, PresenceQuery};

use super::{AppState, Json, path_id};
use crate::access;
use crate::auth::Caller;
use crate::error::Error;

/// Most contacts a list shows.
const MAX_CONTACTS: usize = 10_000;
/// Most users one presence query asks about.
const MAX_PRESENCE_QUERY: usize = 1000;

/// `PUT /v1/contacts/{uid}`: 204; `uid` may see my presence from now on.
pub(super) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Error> {
    let contact = path_id(path, "contact")?;
    if contact == caller.uid() {
        return Err(Error::BadRequest("contact: one sees oneself anyway".into()));
    }
    let owner = caller.uid().to_owned();
    state
        .committer
        .write(move |store| {
            store.set_contact(&owner, &contact, true)?;
            Ok(((), None))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/contacts/{uid}`: 204; `uid` no longer sees my presence, and its
/// live subscription to it is gone (unless a group we share still shows it).
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Error> {
    let contact = path_id(path, "contact")?;
    let owner = caller.uid().to_owned();
    let change = crate::cache::Change::Contact {
        owner: owner.clone(),
        contact: contact.clone(),
    };
    let broker = state.broker.clone();
    state
        .committer
        .write(move |store| {
            store.set_contact(&owner, &contact, false)?;
            let still = access::can_see_presence(&*store, &contact, &owner)?;
            let topic =
                wire::topic::presence(&owner).map_err(|e| Error::BadRequest(e.to_string()))?;
            let after: crate::commit::AfterCommit = Box::new(move || {
                if !still {
                    broker.unsubscribe_user(&contact, &topic);
                }
            });
            Ok(((), Some(after)))
        })
        .await?;
    if let Some(cluster) = &state.cluster {
        cluster.revoke(vec![change]).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/contacts`: whom I let see my presence.
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ContactList>, Error> {
    let owner = caller.uid().to_owned();
    let contacts = state
        .read(move |s| Ok(s.contacts(&owner, MAX_CONTACTS)?))
        .await?;
    Ok(Json(ContactList { contacts }))
}

/// `GET /v1/presence?users=a,b`: the presence of those asked that I may see; the
/// others are left out (as are invalid ids).
pub(super) async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<PresenceList>, Error> {
    let Query(q) = q.map_err(|e| Error::BadRequest(e.to_string()))?;
    let asked: Vec<String> = q.users().map(str::to_owned).collect();
    if asked.len() > MAX_PRESENCE_QUERY {
        return Err(Error::BadRequest(format!(
            "users: at most {MAX_PRESENCE_QUERY} per query"
        )));
    }
    let access = state.access.clone();
    let watcher = caller.uid().to_owned();
    let admin = caller.role() == broker::auth::Role::Admin;
    let visible = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for uid in asked {
            if !wire::is_valid_id(&uid) || out.contains(&uid) {
                continue;
            }
            if admin || access.can_see_presence(&watcher, &uid)? {
                out.push(uid);
            }
        }
        Ok::<_, Error>(out)
    })
    .await
    .map_err(|_| Error::Stopping)??;
    Ok(Json(PresenceList {
        presence: visible
            .iter()
            .map(|uid| crate::presence::current(&state.broker, state.cluster.as_ref(), uid))
            .collect(),
    }))
}
