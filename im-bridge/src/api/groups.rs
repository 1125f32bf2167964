//! Groups: `POST /v1/groups`, `GET /v1/groups`, `GET|DELETE /v1/groups/{gid}`,
//! `POST /v1/groups/{gid}/members`, `PUT|DELETE /v1/groups/{gid}/members/{uid}`.
//!
//! Changes run in the commit loop (`groups.rs` says who may do what) and are
//! answered once durable; membership events go out after that, to the member
//! concerned and the group's other members.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use imqtt_wire::{
    AddMembersRequest, AddMembersResponse, CreateGroupRequest, GroupInfo, GroupList, SetRoleRequest,
};

use super::{AppState, Json};
use crate::auth::Caller;
use crate::cache::Change;
use crate::error::Error;
use crate::groups;

fn parsed<T>(extracted: Result<T, PathRejection>) -> Result<T, Error> {
    extracted.map_err(|e| Error::BadRequest(e.to_string()))
}

/// Ends the presence subscriptions the ended co-memberships allowed, before the
/// answer; in a cluster, on every live node, as well as the group's own
/// subscriptions there.
async fn prune(state: &AppState, gid: &str, ended: groups::Ended) -> Result<(), Error> {
    let broker = state.broker.clone();
    let changes: Vec<Change> = ended
        .left
        .iter()
        .map(|uid| Change::Member {
            gid: gid.to_owned(),
            uid: uid.clone(),
        })
        .collect();
    state
        .read(move |store| {
            groups::prune_presence(store, &broker, &ended);
            Ok(())
        })
        .await?;
    if let Some(cluster) = &state.cluster {
        cluster.revoke(changes).await;
    }
    Ok(())
}

/// `POST /v1/groups`: 201 with the new group; 409 `group_exists` for a taken id.
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateGroupRequest>,
) -> Result<Response, Error> {
    let group = state
        .committer
        .write(move |store| groups::create(store, &caller, req))
        .await?;
    Ok((StatusCode::CREATED, Json(group)).into_response())
}

/// `GET /v1/groups`: the caller's groups.
pub(super) async fn mine(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<GroupList>, Error> {
    let uid = caller.uid().to_owned();
    let groups = state.read(move |store| groups::mine(store, &uid)).await?;
    Ok(Json(GroupList { groups }))
}

/// `GET /v1/groups/{gid}`: settings and members.
pub(super) async fn info(
    State(state): State<AppState>,
    caller: Caller,
    gid: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupInfo>, Error> {
    let Path(gid) = parsed(gid)?;
    let info = state
        .read(move |store| groups::info(store, &caller, &gid))
        .await?;
    Ok(Json(info))
}

/// `DELETE /v1/groups/{gid}`: 204; every member is told `group_deleted`, and the
/// messages are deleted in the background.
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    gid: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Error> {
    let Path(gid) = parsed(gid)?;
    let broker = state.broker.clone();
    let deleted = gid.clone();
    let (notices, ended, head) = state
        .committer
        .write(move |store| groups::delete(store, &broker, &caller, &gid))
        .await?;
    prune(&state, &deleted, ended).await?;
    groups::publish(&state.broker, &notices);
    groups::purge(state.committer.clone(), &deleted, head);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/groups/{gid}/members {users}`: 200 with the users added.
pub(super) async fn add(
    State(state): State<AppState>,
    caller: Caller,
    gid: Result<Path<String>, PathRejection>,
    Json(req): Json<AddMembersRequest>,
) -> Result<Json<AddMembersResponse>, Error> {
    let Path(gid) = parsed(gid)?;
    let max = state.config.limits.max_group_size;
    let (answer, notices) = state
        .committer
        .write(move |store| groups::add(store, &caller, &gid, req.users, max))
        .await?;
    groups::publish(&state.broker, &notices);
    Ok(Json(answer))
}

/// `DELETE /v1/groups/{gid}/members/{uid}`: 204 once removed, its live
/// subscriptions to the group gone, and those to presence that only the group
/// allowed.
pub(super) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, Error> {
    let Path((gid, uid)) = parsed(path)?;
    let broker = state.broker.clone();
    let group = gid.clone();
    let (notices, ended) = state
        .committer
        .write(move |store| groups::remove(store, &broker, &caller, &gid, &uid))
        .await?;
    prune(&state, &group, ended).await?;
    groups::publish(&state.broker, &notices);
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/groups/{gid}/members/{uid} {role}`: 204.
pub(super) async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    Json(req): Json<SetRoleRequest>,
) -> Result<StatusCode, Error> {
    let Path((gid, uid)) = parsed(path)?;
    state
        .committer
        .write(move |store| groups::set_role(store, &caller, &gid, &uid, req.role))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
