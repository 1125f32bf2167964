//! Edit and recall: a change to a stored message is itself a message of the
//! same conversation (`"kind":"edit"` with the new body, or `"kind":"recall"`
//! without one, and `"ref"`: the seq it changes), so that order, sync, acks and
//! offline delivery hold for it as for any message. In the same commit round the
//! original's stored envelope is rewritten (the latest body and `edited_ts`, or
//! no body and `recalled`), so history and sync show the message as it now is
//! without reading its revisions.
//!
//! Who may: the sender edits within `limits.edit_window` and recalls within
//! `limits.recall_window`; a group's owner and admins recall any of the group's
//! messages at any time. A recalled message is changed no more; an edit or a
//! recall is not itself a target. Everything is checked inside the round, so two
//! racing recalls give one recall and one 409. A recall clears the bodies of the
//! message's edits too (each engine keeps which messages edit which).

use imqtt_wire::{ConvId, ConvKind, Envelope, GroupRole, Kind};
use serde_json::Value;

use crate::config::Config;
use crate::error::Error;
use crate::store::{Appended, NewMessage, Range, Round, Window};

/// One asked change.
#[derive(Clone, Debug)]
pub struct Revision {
    /// Who asks.
    pub by: String,
    pub conv: ConvId,
    /// The seq to change.
    pub seq: u64,
    /// An edit's new body; `None` for a recall.
    pub body: Option<Value>,
    pub client_msg_id: Option<String>,
}

/// Checks `r` against the stored message and the caller's rights, stores the
/// revision as a message and rewrites the original; returns the revision as
/// appended (a retry of it: `duplicate`, nothing rewritten again).
pub fn revise(
    round: &mut dyn Round,
    config: &Config,
    r: &Revision,
    now_ms: u64,
) -> Result<Appended, Error> {
    let kind = if r.body.is_some() {
        Kind::Edit
    } else {
        Kind::Recall
    };
    let what = match kind {
        Kind::Edit => "edit",
        Kind::Recall => "recall",
    };
    // Who may read the conversation, and what of it; a group's role.
    let (window, role) = match r.conv.kind() {
        ConvKind::Group { gid } => match round.membership(gid, &r.by)? {
            Some(m) if m.is_current() => (m.window(), Some(m.role)),
            _ => return Err(Error::NotAMember),
        },
        _ if crate::store::participants(&r.conv).contains(&r.by.as_str()) => (Window::ALL, None),
        _ => return Err(Error::NotAMember),
    };
    let (page, _) = round.messages(&r.conv, Range::After(r.seq.saturating_sub(1)), window, 1)?;
    let original: Envelope = match page.first() {
        Some(json) => serde_json::from_slice(json)
            .map_err(|_| Error::Storage(crate::store::StoreError::Corrupt("messages")))?,
        None => {
            return Err(Error::NotFound(format!(
                "no message {} in {}",
                r.seq, r.conv
            )));
        }
    };
    if original.seq != r.seq {
        return Err(Error::NotFound(format!(
            "no message {} in {}",
            r.seq, r.conv
        )));
    }
    if original.kind.is_some() {
        return Err(Error::BadRequest(
            "an edit or a recall cannot itself be edited or recalled".into(),
        ));
    }
    // Who may first, then whether it still can be.
    let moderator =
        kind == Kind::Recall && matches!(role, Some(GroupRole::Owner | GroupRole::Admin));
    if original.from != r.by && !moderator {
        return Err(Error::NotSender);
    }
    if original.recalled {
        return Err(Error::Recalled);
    }
    let age = std::time::Duration::from_millis(now_ms.saturating_sub(original.ts));
    let window = match kind {
        Kind::Edit => config.limits.edit_window.get(),
        Kind::Recall => config.limits.recall_window.get(),
    };
    if age > window && !moderator {
        return Err(Error::WindowPassed(what));
    }
    let body = r.body.clone().unwrap_or(Value::Null);
    if let Some(b) = &r.body {
        crate::sending::check_body(config, b)?;
    }
    let to = match r.conv.kind() {
        ConvKind::Group { gid } => gid.to_owned(),
        _ => crate::delivery::recipients(&r.conv, &r.by)
            .first()
            .map_or_else(|| original.to.clone(), |u| (*u).to_owned()),
    };
    let send = NewMessage {
        from: r.by.clone(),
        conv: r.conv.clone(),
        to,
        client_msg_id: r.client_msg_id.clone(),
        idempotency_key: r.client_msg_id.clone(),
        qos: original.qos,
        body: body.clone(),
        revision: Some((kind, r.seq)),
    };
    let appended = round
        .append(std::slice::from_ref(&send), now_ms)?
        .into_iter()
        .next()
        .ok_or(Error::Stopping)?;
    if appended.duplicate {
        return Ok(appended);
    }
    let mut changed = original;
    match kind {
        Kind::Edit => {
            changed.body = body;
            changed.edited_ts = Some(appended.envelope.ts);
        }
        Kind::Recall => {
            changed.body = Value::Null;
            changed.recalled = true;
        }
    }
    amend(round, &r.conv, &changed)?;
    if kind == Kind::Recall {
        // What the message said through its edits goes too.
        for seq in round.edits_of(&r.conv, r.seq)? {
            let (page, _) = round.messages(&r.conv, Range::After(seq - 1), Window::ALL, 1)?;
            let Some(json) = page.first() else { continue };
            let mut edit: Envelope = serde_json::from_slice(json)
                .map_err(|_| Error::Storage(crate::store::StoreError::Corrupt("messages")))?;
            edit.body = Value::Null;
            edit.recalled = true;
            amend(round, &r.conv, &edit)?;
        }
    }
    Ok(appended)
}

fn amend(round: &mut dyn Round, conv: &ConvId, e: &Envelope) -> Result<(), Error> {
    let json = serde_json::to_vec(e)
        .map_err(|e| Error::Storage(crate::store::StoreError::Engine(e.to_string())))?;
    round.amend(conv, e.seq, &json)?;
    Ok(())
}
