//! Sends over MQTT: what users publish on their own `users/{uid}/outbox`, taken
//! from the broker's uplink and handled exactly like `POST /v1/messages`.
//!
//! The publisher's PUBACK (QoS 1) or PUBREC (QoS 2) is released only once the
//! message is durable, so the MQTT path carries the guarantee of a 2xx. The result
//! is a `sent` event on `users/{uid}/events`, a refusal an `error` event (with the
//! request's `client_msg_id`), and the connection stays up either way.
//!
//! Order: the broker hands over one connection's publishes in order, and they are
//! submitted to the commit loop in that order without waiting for each commit, so
//! a device's messages keep their order in a conversation while many commit
//! together.

use broker::{Refusal, Uplink, UplinkMessage};
use imqtt_wire::{ErrorDetail, Event, SendRequest};

use crate::api::AppState;
use crate::delivery;
use crate::error::Error;
use crate::sending::{self, Checked};

/// Serves the uplink until the broker is gone.
pub fn spawn(mut uplink: Uplink, state: AppState) {
    tokio::spawn(async move {
        while let Some(msg) = uplink.recv().await {
            handle(&state, msg).await;
        }
    });
}

async fn handle(state: &AppState, msg: UplinkMessage) {
    let UplinkMessage {
        uid,
        payload,
        answer,
        ..
    } = msg;
    let req: SendRequest = match serde_json::from_slice(&payload) {
        Ok(r) => r,
        Err(e) => {
            let cmid = client_msg_id_of(&payload);
            let err = Error::BadRequest(format!(
                "the outbox takes the body of POST /v1/messages: {e}"
            ));
            tell_error(state, &uid, cmid, &err);
            answer.refuse(Refusal::PayloadFormatInvalid);
            return;
        }
    };
    let cmid = req.client_msg_id.clone();
    if let Err(refused) = state.send_limit.check(&uid, 1, std::time::Instant::now()) {
        let e = Error::from(refused);
        tell_error(state, &uid, cmid, &e);
        answer.refuse(Refusal::QuotaExceeded);
        return;
    }
    match sending::check(&state.config, &state.access, &uid, req) {
        Err(e) => {
            tell_error(state, &uid, cmid, &e);
            answer.refuse(refusal(&e));
        }
        Ok(Checked::Live(m)) => {
            let id = ulid::Ulid::new().to_string();
            delivery::deliver_live(&state.broker, &m, &id, crate::commit::now_ms());
            answer.accept();
        }
        Ok(Checked::Stored(m)) => {
            let committed = match state.committer.submit(vec![m]).await {
                Ok(c) => c,
                Err(e) => {
                    let e = Error::from(e);
                    tell_error(state, &uid, cmid, &e);
                    // Not stored: no ack, the client sends it again.
                    drop(answer);
                    return;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                match committed.await {
                    Ok(outcomes) => {
                        // Delivered by the commit loop; here only the sender's event.
                        let mut refused = None;
                        for o in outcomes {
                            match o {
                                Ok(a) => tell(
                                    &state,
                                    &uid,
                                    &Event::Sent {
                                        client_msg_id: a.envelope.client_msg_id.clone(),
                                        id: a.envelope.id.clone(),
                                        conv: a.envelope.conv.clone(),
                                        seq: a.envelope.seq,
                                        ts: a.envelope.ts,
                                    },
                                ),
                                Err(r) => refused = Some(Error::from(r)),
                            }
                        }
                        match refused {
                            None => answer.accept(),
                            Some(e) => {
                                tell_error(&state, &uid, cmid, &e);
                                answer.refuse(refusal(&e));
                            }
                        }
                    }
                    Err(e) => {
                        let e = Error::from(e);
                        tell_error(&state, &uid, cmid, &e);
                        if is_unavailable(&e) {
                            // The database is away: a v5 client gets 0x80 and the
                            // connection stays up; the error event says retry.
                            answer.refuse(Refusal::Unspecified);
                        } else {
                            // Not durable: no ack, the client sends it again.
                            drop(answer);
                        }
                    }
                }
            });
        }
    }
}

/// Whether `e` is the store being unreachable for now.
fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Storage(crate::store::StoreError::Unavailable(_)))
}

/// The MQTT 5 reason code for a refused send.
fn refusal(e: &Error) -> Refusal {
    match e {
        Error::BadRequest(_) | Error::BodyTooLarge { .. } => Refusal::PayloadFormatInvalid,
        Error::Forbidden(_) | Error::NotAMember | Error::NotFound(_) => Refusal::NotAuthorized,
        _ => Refusal::ImplementationSpecific,
    }
}

/// The `client_msg_id` of a payload that is not a valid send, if it has one.
fn client_msg_id_of(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(v.get("client_msg_id")?.as_str()?.to_owned())
}

fn tell_error(state: &AppState, uid: &str, client_msg_id: Option<String>, e: &Error) {
    let (_, code) = e.status_and_code();
    let message = if is_unavailable(e) {
        "the store is unavailable; send again shortly".to_owned()
    } else if matches!(e, Error::Storage(_)) {
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    tell(
        state,
        uid,
        &Event::Error {
            client_msg_id,
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        },
    );
}

fn tell(state: &AppState, uid: &str, event: &Event) {
    delivery::tell(&state.broker, uid, event);
}
