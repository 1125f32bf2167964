//! Every fact of the store as engine-neutral [`Record`]s, in key order, for
//! `imqtt store copy`. The indexes derived from other keys (expiries, commit
//! times, the users' group lists) are left out: the target makes its own.

use sled::IVec;

use super::SledStore;
use super::groups::decode_membership;
use super::keys::{
    ACCOUNT, CONTACT, CURSOR, GROUP, HEAD, IDEM, MEMBER, MSG, RETAINED, decode_head, u64_at,
};
use crate::store::Store;
use crate::store::{Record, StoreError};

impl SledStore {
    /// Every record; idempotency keys that expired by `now_ms` are left out.
    pub fn records(&self, now_ms: u64) -> impl Iterator<Item = Result<Record, StoreError>> + '_ {
        let keys = self.tree.iter().flat_map(move |kv| {
            let record = match kv {
                Ok((k, v)) => decode(&k, &v, now_ms),
                Err(e) => Err(e.into()),
            };
            // A cursor in a direct or notice conversation is also its list entry.
            let listed = match &record {
                Ok(Some(Record::Cursor { uid, conv, .. }))
                    if conv
                        .parse::<imqtt_wire::ConvId>()
                        .is_ok_and(|c| !matches!(c.kind(), imqtt_wire::ConvKind::Group { .. })) =>
                {
                    Some(Ok(Record::Listed {
                        uid: uid.clone(),
                        conv: conv.clone(),
                    }))
                }
                _ => None,
            };
            record.transpose().into_iter().chain(listed)
        });
        // Then the retained messages, from their own file.
        let retained = std::iter::once(()).flat_map(move |()| match self.retained() {
            Ok(all) => all
                .into_iter()
                .map(|(topic, payload, qos)| {
                    Ok(Record::Retained {
                        topic,
                        qos,
                        payload: payload.to_vec(),
                    })
                })
                .collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        });
        keys.chain(retained)
    }
}

fn text(b: &[u8], what: &'static str) -> Result<String, StoreError> {
    String::from_utf8(b.to_vec()).map_err(|_| StoreError::Corrupt(what))
}

/// `a 0 b` after the kind byte.
fn pair(k: &[u8], what: &'static str) -> Result<(String, String), StoreError> {
    let rest = k.get(1..).ok_or(StoreError::Corrupt(what))?;
    let at = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or(StoreError::Corrupt(what))?;
    Ok((text(&rest[..at], what)?, text(&rest[at + 1..], what)?))
}

/// `conv 0 seq(8)` at the start of `b`, which is `extra` bytes longer.
fn place(b: &[u8], extra: usize, what: &'static str) -> Result<(String, u64), StoreError> {
    let split = b
        .len()
        .checked_sub(9 + extra)
        .ok_or(StoreError::Corrupt(what))?;
    let seq = u64_at(b, split + 1).ok_or(StoreError::Corrupt(what))?;
    Ok((text(&b[..split], what)?, seq))
}

fn decode(k: &IVec, v: &IVec, now_ms: u64) -> Result<Option<Record>, StoreError> {
    let Some(kind) = k.first() else {
        return Ok(None);
    };
    Ok(Some(match *kind {
        MSG => {
            let (conv, seq) = place(&k[1..], 0, "msgs")?;
            #[derive(serde::Deserialize)]
            struct Ts {
                ts: u64,
            }
            let ts = serde_json::from_slice::<Ts>(v)
                .map_err(|_| StoreError::Corrupt("msgs"))?
                .ts;
            Record::Message {
                conv,
                seq,
                ts,
                json: v.to_vec(),
            }
        }
        HEAD => Record::Head {
            conv: text(&k[1..], "heads")?,
            head: decode_head(v)?,
        },
        CURSOR => {
            let (uid, conv) = pair(k, "cursors")?;
            let seq = u64_at(v, 0).ok_or(StoreError::Corrupt("cursors"))?;
            Record::Cursor { uid, conv, seq }
        }
        IDEM => {
            let (sender, key) = pair(k, "idem")?;
            let (conv, seq) = place(v, 8, "idem")?;
            let expires =
                u64_at(v, v.len().saturating_sub(8)).ok_or(StoreError::Corrupt("idem"))?;
            if expires <= now_ms {
                return Ok(None);
            }
            Record::Idempotency {
                sender,
                key,
                conv,
                seq,
                expires,
            }
        }
        ACCOUNT => Record::Account {
            uid: text(&k[1..], "accounts")?,
            hash: text(v, "accounts")?,
        },
        RETAINED => {
            let (qos, payload) = v.split_first().ok_or(StoreError::Corrupt("retained"))?;
            Record::Retained {
                topic: text(&k[1..], "retained")?,
                qos: *qos,
                payload: payload.to_vec(),
            }
        }
        GROUP => {
            Record::Group(serde_json::from_slice(v).map_err(|_| StoreError::Corrupt("groups"))?)
        }
        MEMBER => {
            let (gid, uid) = pair(k, "members")?;
            Record::Member {
                gid,
                uid,
                membership: decode_membership(v)?,
            }
        }
        CONTACT => {
            let (owner, contact) = pair(k, "contacts")?;
            Record::Contact { owner, contact }
        }
        // Derived: expiries, commit times, the users' group lists.
        _ => return Ok(None),
    }))
}
