//! What a send must be before it is stored, whether it came over HTTP or the
//! MQTT outbox: exactly one recipient, a valid id that is not the sender's own (or
//! a group the sender is a member of), a body within `limits.max_body_bytes`, a
//! sane `client_msg_id`. The commit loop asks about membership again when it
//! stores the send, so a member removed in between is refused there.

use imqtt_wire::{self as wire, ConvId, Qos, Recipient, SendRequest};

use crate::access::Access;
use crate::config::Config;
use crate::error::Error;
use crate::store::NewMessage;

/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;

/// A checked send.
#[derive(Clone, Debug)]
pub enum Checked {
    /// QoS 1 or 2: stored, then delivered.
    Stored(NewMessage),
    /// QoS 0: delivered to online recipients only, never stored.
    Live(NewMessage),
}

/// Checks `req` from `from`.
pub fn check(
    config: &Config,
    access: &Access,
    from: &str,
    req: SendRequest,
) -> Result<Checked, Error> {
    let qos = req.qos();
    let (conv, to) = match req.recipient() {
        Some(Recipient::User(to)) => {
            wire::check_id(to).map_err(|e| Error::BadRequest(format!("to: {e}")))?;
            if to == from {
                return Err(Error::BadRequest("to: cannot send to oneself".into()));
            }
            let conv = ConvId::dm(from, to).map_err(|e| Error::BadRequest(e.to_string()))?;
            (conv, to.to_owned())
        }
        Some(Recipient::Group(gid)) => {
            wire::check_id(gid).map_err(|e| Error::BadRequest(format!("group: {e}")))?;
            // A member's send asks the cache; only a refusal reads the group.
            if !access.is_member(gid, from)? {
                return Err(if access.group_exists(gid)? {
                    Error::NotAMember
                } else {
                    Error::NotFound(format!("no group {gid:?}"))
                });
            }
            let conv = ConvId::group(gid).map_err(|e| Error::BadRequest(e.to_string()))?;
            (conv, gid.to_owned())
        }
        None => {
            return Err(Error::BadRequest(
                "exactly one of \"to\" and \"group\" is required".into(),
            ));
        }
    };
    let new = message(config, from, conv, to, req.client_msg_id, qos, req.body)?;
    Ok(match qos {
        Qos::AtMostOnce => Checked::Live(new),
        _ => Checked::Stored(new),
    })
}

/// A notice from a backend into `sys:{uid}`.
pub fn notice(
    config: &Config,
    from: &str,
    uid: &str,
    client_msg_id: Option<String>,
    body: serde_json::Value,
) -> Result<NewMessage, Error> {
    wire::check_id(uid).map_err(|e| Error::BadRequest(format!("to: {e}")))?;
    let conv = ConvId::sys(uid).map_err(|e| Error::BadRequest(e.to_string()))?;
    let mut new = message(
        config,
        from,
        conv,
        uid.to_owned(),
        client_msg_id,
        Qos::AtLeastOnce,
        body,
    )?;
    // One client_msg_id covers the whole notice: each user's copy is retried on
    // its own (ids have no control characters, so the key is unambiguous).
    new.idempotency_key = new
        .client_msg_id
        .as_ref()
        .map(|c| format!("{c}\u{1f}{uid}"));
    Ok(new)
}

/// A `client_msg_id` is 1 to [`MAX_CLIENT_MSG_ID`] bytes without control
/// characters.
pub fn check_client_msg_id(client_msg_id: Option<&str>) -> Result<(), Error> {
    match client_msg_id {
        Some(c)
            if c.is_empty() || c.len() > MAX_CLIENT_MSG_ID || c.chars().any(char::is_control) =>
        {
            Err(Error::BadRequest(format!(
                "client_msg_id: 1 to {MAX_CLIENT_MSG_ID} bytes, no control characters"
            )))
        }
        _ => Ok(()),
    }
}

/// A body within `limits.max_body_bytes`, encoded.
pub fn check_body(config: &Config, body: &serde_json::Value) -> Result<(), Error> {
    let limit = config.limits.max_body_bytes.0;
    let size = serde_json::to_vec(body)
        .map(|v| v.len() as u64)
        .unwrap_or(u64::MAX);
    if size > limit {
        return Err(Error::BodyTooLarge { limit });
    }
    Ok(())
}

fn message(
    config: &Config,
    from: &str,
    conv: ConvId,
    to: String,
    client_msg_id: Option<String>,
    qos: Qos,
    body: serde_json::Value,
) -> Result<NewMessage, Error> {
    check_client_msg_id(client_msg_id.as_deref())?;
    check_body(config, &body)?;
    Ok(NewMessage {
        from: from.to_owned(),
        conv,
        to,
        idempotency_key: client_msg_id.clone(),
        client_msg_id,
        qos,
        body,
        revision: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> SendRequest {
        serde_json::from_value(v).expect("request")
    }

    fn store() -> Access {
        let store =
            crate::store::SledStore::temporary(std::time::Duration::from_secs(60)).expect("store");
        Access::new(std::sync::Arc::new(store), Default::default())
    }

    #[test]
    fn each_bad_send_is_refused_with_its_reason() {
        let cfg = Config::default();
        let store = store();
        let cases = [
            (json!({"body": 1}), "exactly one"),
            (json!({"to": "bob", "group": "g", "body": 1}), "exactly one"),
            (json!({"to": "bad id", "body": 1}), "to:"),
            (json!({"to": "alice", "body": 1}), "oneself"),
            (
                json!({"to": "bob", "body": 1, "client_msg_id": ""}),
                "client_msg_id",
            ),
            (
                json!({"to": "bob", "body": 1, "client_msg_id": "a\u{0}b"}),
                "client_msg_id",
            ),
        ];
        for (body, why) in cases {
            match check(&cfg, &store, "alice", req(body.clone())) {
                Err(Error::BadRequest(m)) => assert!(m.contains(why), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let big = json!({"to": "bob", "body": "x".repeat(70_000)});
        assert!(matches!(
            check(&cfg, &store, "alice", req(big)),
            Err(Error::BodyTooLarge { .. })
        ));
        let group = json!({"group": "g1", "body": 1});
        assert!(matches!(
            check(&cfg, &store, "alice", req(group)),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn a_good_send_is_stored_unless_it_is_qos_0() {
        let cfg = Config::default();
        let store = store();
        let Ok(Checked::Stored(m)) = check(
            &cfg,
            &store,
            "bob",
            req(json!({"to": "alice", "body": {"t": 1}})),
        ) else {
            panic!("stored");
        };
        assert_eq!(m.conv.as_str(), "dm:alice:bob");
        assert_eq!(m.to, "alice");
        assert!(matches!(
            check(
                &cfg,
                &store,
                "bob",
                req(json!({"to": "alice", "body": 1, "qos": 0}))
            ),
            Ok(Checked::Live(_))
        ));
    }
}
