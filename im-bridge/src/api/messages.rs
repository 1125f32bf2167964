//! Sending: `POST /v1/messages`, `POST /v1/messages/batch`, `POST /v1/notify`.
//!
//! A stored send is answered only once it is durable (the commit loop flushes
//! before it answers, and delivers through the broker in commit order); a QoS 0
//! send is delivered only, never stored.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use broker::auth::Role;
use imqtt_wire::{
    BatchRequest, BatchResponse, BatchResult, ConvId, EditRequest, ErrorBody, LiveSendResult,
    NotifyRequest, SendRequest, SendResult,
};

use super::{AppState, Json};
use crate::auth::Caller;
use crate::delivery;
use crate::error::Error;
use crate::revisions::{self, Revision};
use crate::sending::{self, Checked};
use crate::store::{Appended, NewMessage};

/// Most sends in one batch.
pub(super) const MAX_BATCH: usize = 1000;

pub(super) fn result(a: &Appended) -> SendResult {
    SendResult {
        id: a.envelope.id.clone(),
        conv: a.envelope.conv.clone(),
        seq: a.envelope.seq,
        ts: a.envelope.ts,
    }
}

/// Delivers a QoS 0 send now and says what it was.
fn deliver_live(state: &AppState, m: &NewMessage) -> LiveSendResult {
    let id = ulid::Ulid::new().to_string();
    let ts = crate::commit::now_ms();
    delivery::deliver_live(&state.broker, m, &id, ts);
    LiveSendResult { id, ts }
}

/// `POST /v1/messages`: 201 with the stored message's place, 200 for a retry, 202
/// for QoS 0.
pub(super) async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<SendRequest>,
) -> Result<Response, Error> {
    charge(&state, &caller, 1)?;
    match sending::check(&state.config, &state.access, caller.uid(), req)? {
        Checked::Live(m) => {
            Ok((StatusCode::ACCEPTED, Json(deliver_live(&state, &m))).into_response())
        }
        Checked::Stored(m) => {
            let outcomes = state.committer.commit(vec![m]).await?;
            let a = match outcomes.into_iter().next() {
                Some(Ok(a)) => a,
                Some(Err(refused)) => return Err(refused.into()),
                None => return Err(Error::Stopping),
            };
            let status = if a.duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(result(&a))).into_response())
        }
    }
}

/// `PATCH /v1/conversations/{conv}/messages/{seq} {body, client_msg_id?}`: the
/// sender edits its message (`revisions.rs`).
pub(super) async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    Json(req): Json<EditRequest>,
) -> Result<Response, Error> {
    let (conv, seq) = target(path)?;
    sending::check_client_msg_id(req.client_msg_id.as_deref())?;
    sending::check_body(&state.config, &req.body)?;
    revise(
        &state,
        &caller,
        conv,
        seq,
        Some(req.body),
        req.client_msg_id,
    )
    .await
}

/// `DELETE /v1/conversations/{conv}/messages/{seq}`: the sender (or a group's
/// owner or admin) recalls a message.
pub(super) async fn recall(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Error> {
    let (conv, seq) = target(path)?;
    revise(&state, &caller, conv, seq, None, None).await
}

/// The conversation and seq of a message's path.
fn target(path: Result<Path<(String, String)>, PathRejection>) -> Result<(ConvId, u64), Error> {
    let Path((conv, seq)) = path.map_err(|e| Error::BadRequest(e.to_string()))?;
    let conv = super::sync::conv_id(&conv)?;
    match seq.parse::<u64>() {
        Ok(seq) if seq >= 1 => Ok((conv, seq)),
        _ => Err(Error::BadRequest(format!(
            "seq: a number from 1, not {seq:?}"
        ))),
    }
}

/// Stores an edit or recall through the commit loop and delivers it after the
/// commit, like a send.
async fn revise(
    state: &AppState,
    caller: &Caller,
    conv: ConvId,
    seq: u64,
    body: Option<serde_json::Value>,
    client_msg_id: Option<String>,
) -> Result<Response, Error> {
    charge(state, caller, 1)?;
    let r = Revision {
        by: caller.uid().to_owned(),
        conv,
        seq,
        body,
        client_msg_id,
    };
    let config = state.config.clone();
    let (broker, store) = (state.broker.clone(), state.store.clone());
    let stored = state.metrics.messages_stored.clone();
    let inline_max = state.config.delivery.inline_max_bytes.as_usize();
    let a = state
        .committer
        .write(move |round| {
            let a = revisions::revise(round, &config, &r, crate::commit::now_ms())?;
            let after: Option<crate::commit::AfterCommit> = (!a.duplicate).then(|| {
                let (envelope, json) = (a.envelope.clone(), a.json.clone());
                Box::new(move || {
                    delivery::deliver(&broker, &*store, &envelope, &json, inline_max);
                    stored.inc();
                }) as crate::commit::AfterCommit
            });
            Ok((a, after))
        })
        .await?;
    let status = if a.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(result(&a))).into_response())
}

/// Charges a user's sends to its rate limit (`limits.rate_per_user`); backends'
/// service and admin tokens are not limited.
fn charge(state: &AppState, caller: &Caller, sends: u32) -> Result<(), Error> {
    if caller.role() == Role::User {
        state
            .send_limit
            .check(caller.uid(), sends, std::time::Instant::now())?;
    }
    Ok(())
}

fn failed(e: &Error) -> BatchResult {
    let (_, code) = e.status_and_code();
    BatchResult::Failed(ErrorBody::new(code, e.to_string()))
}

/// `POST /v1/messages/batch`: up to 1,000 sends, one result or error each, in
/// order; every stored one in one commit (one flush).
pub(super) async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<BatchRequest>,
) -> Result<Json<BatchResponse>, Error> {
    if req.messages.len() > MAX_BATCH {
        return Err(Error::BadRequest(format!(
            "at most {MAX_BATCH} messages per batch, got {}",
            req.messages.len()
        )));
    }
    charge(
        &state,
        &caller,
        u32::try_from(req.messages.len()).unwrap_or(u32::MAX),
    )?;
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(req.messages.len());
    let mut stored = Vec::new();
    let mut slots = Vec::new();
    for send in req.messages {
        match sending::check(&state.config, &state.access, caller.uid(), send) {
            Ok(Checked::Stored(m)) => {
                slots.push(results.len());
                stored.push(m);
                results.push(None);
            }
            Ok(Checked::Live(m)) => results.push(Some(BatchResult::Live(deliver_live(&state, &m)))),
            Err(e) => results.push(Some(failed(&e))),
        }
    }
    let outcomes = state.committer.commit(stored).await?;
    for (slot, o) in slots.into_iter().zip(outcomes) {
        results[slot] = Some(match o {
            Ok(a) => BatchResult::Stored(result(&a)),
            Err(refused) => failed(&refused.into()),
        });
    }
    Ok(Json(BatchResponse {
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| failed(&Error::Stopping)))
            .collect(),
    }))
}

/// `POST /v1/notify` (service or admin tokens): one notice into each `sys:{uid}`.
pub(super) async fn notify(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<NotifyRequest>,
) -> Result<Json<BatchResponse>, Error> {
    if !matches!(caller.role(), Role::Service | Role::Admin) {
        return Err(Error::Forbidden("notify needs a service token".into()));
    }
    if req.to.is_empty() || req.to.len() > MAX_BATCH {
        return Err(Error::BadRequest(format!("to: 1 to {MAX_BATCH} users")));
    }
    let mut notices = Vec::with_capacity(req.to.len());
    for uid in &req.to {
        notices.push(sending::notice(
            &state.config,
            caller.uid(),
            uid,
            req.client_msg_id.clone(),
            req.body.clone(),
        )?);
    }
    let outcomes = state.committer.commit(notices).await?;
    Ok(Json(BatchResponse {
        results: outcomes
            .into_iter()
            .map(|o| match o {
                Ok(a) => BatchResult::Stored(result(&a)),
                Err(refused) => failed(&refused.into()),
            })
            .collect(),
    }))
}
