//! Messages, heads, cursors, the users' conversation lists and idempotency keys:
//! `imqtt_messages`, `imqtt_heads`, `imqtt_cursors` (a user's list is its rows
//! marked `listed`: its direct and notice conversations), `imqtt_idempotency`.
//!
//! An append is a fixed number of statements whatever its size (multi-row
//! `unnest` inserts): look the idempotency keys up (their originals are the
//! retries), raise each conversation's head by its number of new messages, then
//! insert the keys, the messages, the lists and the senders' cursors. The head
//! row is the lock: `INSERT .. ON CONFLICT DO UPDATE SET head = head + n
//! RETURNING head` holds it until the round commits, so two processes appending
//! to one conversation take turns and seqs stay contiguous. Each key is written
//! once, with its seq. When another process stored one of them between the
//! lookup and the insert (the insert waits for that process's commit and then
//! conflicts), the append goes back to a savepoint taken before the heads and
//! starts again, finding that send's original this time: a race that needs the
//! same key sent through two processes at once, so rare, and never a gap in
//! the seqs.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use imqtt_wire::{ConvId, ConvKind, Envelope};

use super::{i64_of, pg_error, u64_of};
use crate::store::{Appended, Head, NewMessage, Range, StoreError, Summary, Window, participants};

pub(super) async fn head(c: &ClientWrapper, conv: &ConvId) -> Result<Head, StoreError> {
    let st = c
        .prepare_cached("SELECT head, last_ts FROM imqtt_heads WHERE conv = $1")
        .await
        .map_err(pg_error)?;
    let row = c
        .query_opt(&st, &[&conv.as_str()])
        .await
        .map_err(pg_error)?;
    Ok(row.map_or(Head::default(), |r| Head {
        seq: u64_of(r.get(0)),
        last_ts: u64_of(r.get(1)),
    }))
}

pub(super) async fn messages(
    c: &ClientWrapper,
    conv: &ConvId,
    range: Range,
    window: Window,
    limit: usize,
) -> Result<(Vec<Bytes>, bool), StoreError> {
    // Both ends included: [first, last].
    let (first, last) = match range {
        Range::After(after) => (after.saturating_add(1).max(window.first), window.last),
        Range::Before(before) => (window.first, before.saturating_sub(1).min(window.last)),
    };
    if first > last || limit == 0 {
        return Ok((Vec::new(), false));
    }
    let sql = match range {
        Range::After(_) => {
            "SELECT envelope FROM imqtt_messages WHERE conv = $1 AND seq BETWEEN $2 AND $3
             ORDER BY seq LIMIT $4"
        }
        Range::Before(_) => {
            "SELECT envelope FROM imqtt_messages WHERE conv = $1 AND seq BETWEEN $2 AND $3
             ORDER BY seq DESC LIMIT $4"
        }
    };
    let st = c.prepare_cached(sql).await.map_err(pg_error)?;
    // One more than asked tells whether more lie beyond.
    let asked = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let rows = c
        .query(
            &st,
            &[&conv.as_str(), &i64_of(first), &i64_of(last), &asked],
        )
        .await
        .map_err(pg_error)?;
    let more = rows.len() > limit;
    let mut out: Vec<Bytes> = rows
        .iter()
        .take(limit)
        .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
        .collect();
    if matches!(range, Range::Before(_)) {
        out.reverse();
    }
    Ok((out, more))
}

pub(super) async fn cursor(c: &ClientWrapper, uid: &str, conv: &ConvId) -> Result<u64, StoreError> {
    let st = c
        .prepare_cached("SELECT seq FROM imqtt_cursors WHERE uid = $1 AND conv = $2")
        .await
        .map_err(pg_error)?;
    let row = c
        .query_opt(&st, &[&uid, &conv.as_str()])
        .await
        .map_err(pg_error)?;
    Ok(row.map_or(0, |r| u64_of(r.get(0))))
}

pub(super) async fn conversations(
    c: &ClientWrapper,
    uid: &str,
    limit: usize,
) -> Result<Vec<Summary>, StoreError> {
    let st = c
        .prepare_cached(
            // The user's listed rows, each with its head looked up by key
            // (`LIMIT 1`: never a join over all heads).
            "SELECT l.conv, h.head, h.last_ts, l.seq
             FROM imqtt_cursors l
             CROSS JOIN LATERAL (SELECT head, last_ts FROM imqtt_heads
                 WHERE conv = l.conv LIMIT 1) h
             WHERE l.uid = $1 AND l.listed
             ORDER BY h.last_ts DESC, l.conv
             LIMIT $2",
        )
        .await
        .map_err(pg_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c.query(&st, &[&uid, &limit]).await.map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            let conv: String = r.get(0);
            Ok(Summary {
                conv: conv.parse().map_err(|_| StoreError::Corrupt("cursors"))?,
                head: Head {
                    seq: u64_of(r.get(1)),
                    last_ts: u64_of(r.get(2)),
                },
                cursor: u64_of(r.get(3)),
            })
        })
        .collect()
}

/// One send's place in an append: a new message, or the original of a retry.
enum Slot {
    New,
    Retry {
        of: (String, String),
    },
    /// A second send with the key of an earlier one in the same call.
    Again {
        first: usize,
    },
}

/// The savepoint an append goes back to when another process took one of its
/// idempotency keys first.
const BEFORE_SEQS: &str = "SAVEPOINT imqtt_append";
const UNDO_SEQS: &str = "ROLLBACK TO SAVEPOINT imqtt_append";

/// How often an append starts again after losing a key to another process
/// before it gives up: each loss turns a send into a retry, so this bounds
/// only keys raced again and again.
const ATTEMPTS: usize = 8;

pub(super) async fn append(
    c: &ClientWrapper,
    sends: &[NewMessage],
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Vec<Appended>, StoreError> {
    // Keys first seen in this call, and where.
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    let (mut key_s, mut key_k) = (Vec::new(), Vec::new());
    for (i, s) in sends.iter().enumerate() {
        if let Some(k) = s.idempotency_key.as_deref()
            && !first_of.contains_key(&(s.from.as_str(), k))
        {
            first_of.insert((s.from.as_str(), k), i);
            key_s.push(s.from.as_str());
            key_k.push(k);
        }
    }
    for _ in 0..ATTEMPTS {
        let originals = if key_s.is_empty() {
            HashMap::new()
        } else {
            let (originals, ()) = tokio::try_join!(originals(c, &key_s, &key_k), async {
                c.batch_execute(BEFORE_SEQS).await.map_err(pg_error)
            })?;
            originals
        };
        if let Some(out) = attempt(c, sends, &first_of, &originals, now_ms, ttl_ms).await? {
            return Ok(out);
        }
        // Another process stored one of the keys after it was looked up: its
        // send is a retry now, and the seqs taken for it are given back.
        c.batch_execute(UNDO_SEQS).await.map_err(pg_error)?;
    }
    Err(StoreError::Engine(
        "idempotency keys kept being taken by other processes".into(),
    ))
}

/// The originals of the keys already stored, by `(sender, key)`. A key whose
/// message is gone (expired or purged) is freed here for its new send.
async fn originals(
    c: &ClientWrapper,
    senders: &[&str],
    keys: &[&str],
) -> Result<HashMap<(String, String), Bytes>, StoreError> {
    let st = c
        .prepare_cached(
            // Lookups by key, one per asked row (`LIMIT 1` keeps the planner from
            // turning them into joins over whole tables).
            "SELECT t.sender, t.key, i.conv, i.seq, m.envelope
             FROM unnest($1::text[], $2::text[]) AS t(sender, key)
             CROSS JOIN LATERAL (SELECT conv, seq FROM imqtt_idempotency
                 WHERE sender = t.sender AND key = t.key LIMIT 1) i
             LEFT JOIN LATERAL (SELECT envelope FROM imqtt_messages
                 WHERE conv = i.conv AND seq = i.seq LIMIT 1) m ON true",
        )
        .await
        .map_err(pg_error)?;
    let mut originals = HashMap::new();
    let mut freed = Vec::new();
    for r in c.query(&st, &[&senders, &keys]).await.map_err(pg_error)? {
        let (sender, key): (String, String) = (r.get(0), r.get(1));
        match r.get::<_, Option<Vec<u8>>>(4) {
            Some(json) => {
                originals.insert((sender, key), Bytes::from(json));
            }
            None => freed.push((sender, key, r.get::<_, String>(2), r.get::<_, i64>(3))),
        }
    }
    if !freed.is_empty() {
        // Rare (a key reused after its message left the store), so one
        // statement per key, each found through the key's index.
        let st = c
            .prepare_cached(
                "DELETE FROM imqtt_idempotency
                 WHERE sender = $1 AND key = $2 AND conv = $3 AND seq = $4",
            )
            .await
            .map_err(pg_error)?;
        for (sender, key, conv, seq) in &freed {
            c.execute(&st, &[sender, key, conv, seq])
                .await
                .map_err(pg_error)?;
        }
    }
    Ok(originals)
}

/// One try at storing `sends`: `None` when another process stored one of the
/// new keys meanwhile (the caller undoes the try and starts again).
async fn attempt(
    c: &ClientWrapper,
    sends: &[NewMessage],
    first_of: &HashMap<(&str, &str), usize>,
    originals: &HashMap<(String, String), Bytes>,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Option<Vec<Appended>>, StoreError> {
    let now = i64_of(now_ms);
    let expires = i64_of(now_ms.saturating_add(ttl_ms));
    // Each send's slot; new ones counted per conversation (sorted, so that
    // processes lock heads in one order).
    let mut per_conv: BTreeMap<&str, i64> = BTreeMap::new();
    let mut slots = Vec::with_capacity(sends.len());
    for (i, s) in sends.iter().enumerate() {
        let key = s.idempotency_key.as_deref().map(|k| (s.from.as_str(), k));
        let slot = match key {
            Some(k) if first_of.get(&k) != Some(&i) => Slot::Again {
                first: first_of.get(&k).copied().unwrap_or(i),
            },
            Some((from, k)) if originals.contains_key(&(from.to_owned(), k.to_owned())) => {
                Slot::Retry {
                    of: (from.to_owned(), k.to_owned()),
                }
            }
            _ => {
                *per_conv.entry(s.conv.as_str()).or_default() += 1;
                Slot::New
            }
        };
        slots.push(slot);
    }
    // Raise the heads; each conversation's new seqs end at its new head.
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    if !per_conv.is_empty() {
        let (convs, counts): (Vec<&str>, Vec<i64>) = per_conv.iter().map(|(c, n)| (*c, *n)).unzip();
        let st = c
            .prepare_cached(
                "INSERT INTO imqtt_heads (conv, head, last_ts)
                 SELECT conv, n, $3 FROM unnest($1::text[], $2::bigint[]) AS t(conv, n)
                 ORDER BY conv
                 ON CONFLICT (conv) DO UPDATE
                 SET head = imqtt_heads.head + EXCLUDED.head, last_ts = EXCLUDED.last_ts
                 RETURNING conv, head",
            )
            .await
            .map_err(pg_error)?;
        for r in c
            .query(&st, &[&convs, &counts, &now])
            .await
            .map_err(pg_error)?
        {
            let conv: String = r.get(0);
            let head = u64_of(r.get(1));
            let n = per_conv.get(conv.as_str()).copied().unwrap_or(0) as u64;
            next_seq.insert(conv, head + 1 - n);
        }
    }
    // The envelopes, and the rows that go with them.
    let mut out: Vec<Appended> = Vec::with_capacity(sends.len());
    let (mut m_conv, mut m_seq, mut m_ts, mut m_json) = (vec![], vec![], vec![], vec![]);
    let mut m_edits: Vec<Option<i64>> = Vec::new();
    let (mut i_s, mut i_k, mut i_conv, mut i_seq) = (vec![], vec![], vec![], vec![]);
    // Each (uid, conv) row: its seq, and whether it lists the conversation.
    let mut cursors: BTreeMap<(&str, &str), (i64, bool)> = BTreeMap::new();
    for (s, slot) in sends.iter().zip(&slots) {
        let appended = match slot {
            Slot::Again { first } => {
                let first = out.get(*first).ok_or(StoreError::Corrupt("idempotency"))?;
                Appended {
                    envelope: first.envelope.clone(),
                    json: first.json.clone(),
                    duplicate: true,
                }
            }
            Slot::Retry { of } => {
                let json = originals
                    .get(of)
                    .cloned()
                    .ok_or(StoreError::Corrupt("idempotency"))?;
                let envelope = serde_json::from_slice::<Envelope>(&json)
                    .map_err(|_| StoreError::Corrupt("messages"))?;
                Appended {
                    envelope,
                    json,
                    duplicate: true,
                }
            }
            Slot::New => {
                let conv = s.conv.as_str();
                let seq = next_seq.get_mut(conv).ok_or(StoreError::Corrupt("heads"))?;
                let envelope = Envelope {
                    id: ulid::Ulid::new().to_string(),
                    conv: s.conv.clone(),
                    seq: *seq,
                    from: s.from.clone(),
                    to: s.to.clone(),
                    ts: now_ms,
                    client_msg_id: s.client_msg_id.clone(),
                    qos: s.qos,
                    body: s.body.clone(),
                    kind: s.revision.map(|(k, _)| k),
                    ref_seq: s.revision.map(|(_, of)| of),
                    edited_ts: None,
                    recalled: false,
                };
                *seq += 1;
                let json =
                    serde_json::to_vec(&envelope).map_err(|e| StoreError::Engine(e.to_string()))?;
                m_conv.push(conv);
                m_seq.push(i64_of(envelope.seq));
                m_ts.push(now);
                m_json.push(json.clone());
                m_edits.push(match s.revision {
                    Some((imqtt_wire::Kind::Edit, of)) => Some(i64_of(of)),
                    _ => None,
                });
                if let Some(k) = s.idempotency_key.as_deref() {
                    i_s.push(s.from.as_str());
                    i_k.push(k);
                    i_conv.push(conv);
                    i_seq.push(i64_of(envelope.seq));
                }
                for uid in participants(&s.conv) {
                    cursors.entry((uid, conv)).or_default().1 = true;
                }
                if matches!(s.conv.kind(), ConvKind::Dm { .. } | ConvKind::Group { .. }) {
                    // One's own message is read.
                    let c = cursors.entry((s.from.as_str(), conv)).or_default();
                    c.0 = c.0.max(i64_of(envelope.seq));
                }
                Appended {
                    envelope,
                    json: Bytes::from(json),
                    duplicate: false,
                }
            }
        };
        out.push(appended);
    }
    // Three statements that depend on nothing but the seqs: sent at once,
    // pipelined on the connection (one round trip instead of three).
    let keys = async {
        if i_s.is_empty() {
            return Ok(0);
        }
        let st = c
            .prepare_cached(
                // A key that conflicts was stored by another process since it
                // was looked up (waiting for that process's commit if need be).
                "INSERT INTO imqtt_idempotency (sender, key, conv, seq, expires)
                 SELECT sender, key, conv, seq, $5
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                     AS t(sender, key, conv, seq)
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(pg_error)?;
        c.execute(&st, &[&i_s, &i_k, &i_conv, &i_seq, &expires])
            .await
            .map_err(pg_error)
    };
    let messages = async {
        if m_conv.is_empty() {
            return Ok(());
        }
        let st = c
            .prepare_cached(
                "INSERT INTO imqtt_messages (conv, seq, ts, envelope, edits)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[],
                     $5::bigint[])",
            )
            .await
            .map_err(pg_error)?;
        c.execute(&st, &[&m_conv, &m_seq, &m_ts, &m_json, &m_edits])
            .await
            .map_err(pg_error)?;
        Ok(())
    };
    let (stored_keys, (), ()) = tokio::try_join!(keys, messages, raise_cursors(c, cursors))?;
    if stored_keys < i_s.len() as u64 {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Raises each `(uid, conv)` cursor to its seq, never lowering one, and marks
/// it listed where asked (never unmarking one). A row that would not change is
/// left alone: a message to a known conversation rewrites nothing but the
/// sender's cursor.
pub(super) async fn raise_cursors(
    c: &ClientWrapper,
    cursors: BTreeMap<(&str, &str), (i64, bool)>,
) -> Result<(), StoreError> {
    if cursors.is_empty() {
        return Ok(());
    }
    let mut u = Vec::with_capacity(cursors.len());
    let mut cv = Vec::with_capacity(cursors.len());
    let mut seq = Vec::with_capacity(cursors.len());
    let mut listed = Vec::with_capacity(cursors.len());
    for ((uid, conv), (s, l)) in cursors {
        u.push(uid);
        cv.push(conv);
        seq.push(s);
        listed.push(l);
    }
    let st = c
        .prepare_cached(
            "INSERT INTO imqtt_cursors (uid, conv, seq, listed)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[])
             ON CONFLICT (uid, conv) DO UPDATE
             SET seq = GREATEST(imqtt_cursors.seq, EXCLUDED.seq),
                 listed = imqtt_cursors.listed OR EXCLUDED.listed
             WHERE EXCLUDED.seq > imqtt_cursors.seq
                 OR (EXCLUDED.listed AND NOT imqtt_cursors.listed)",
        )
        .await
        .map_err(pg_error)?;
    c.execute(&st, &[&u, &cv, &seq, &listed])
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(super) async fn ack(
    c: &ClientWrapper,
    uid: &str,
    cursors: &[(ConvId, u64)],
) -> Result<(), StoreError> {
    if cursors.is_empty() {
        return Ok(());
    }
    let convs: Vec<&str> = cursors.iter().map(|(c, _)| c.as_str()).collect();
    let st = c
        .prepare_cached("SELECT conv, head FROM imqtt_heads WHERE conv = ANY($1::text[])")
        .await
        .map_err(pg_error)?;
    let heads: HashMap<String, u64> = c
        .query(&st, &[&convs])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| (r.get(0), u64_of(r.get(1))))
        .collect();
    // Every seq is checked before any cursor moves: all or nothing.
    let mut raise = BTreeMap::new();
    for (conv, seq) in cursors {
        let head = heads.get(conv.as_str()).copied().unwrap_or(0);
        if *seq > head {
            return Err(StoreError::AboveHead {
                conv: conv.clone(),
                seq: *seq,
                head,
            });
        }
        let c = raise.entry((uid, conv.as_str())).or_insert((0, false));
        c.0 = c.0.max(i64_of(*seq));
    }
    raise_cursors(c, raise).await
}

/// Deletes up to `limit` rows of `table` whose `column` is below `below`, the
/// lowest first; returns how many.
async fn delete_below(
    c: &ClientWrapper,
    sql: &str,
    below: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let n = c.execute(&st, &[&below, &limit]).await.map_err(pg_error)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(super) async fn expire_idempotency(
    c: &ClientWrapper,
    now_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    delete_below(
        c,
        "DELETE FROM imqtt_idempotency WHERE ctid IN (
            SELECT ctid FROM imqtt_idempotency WHERE expires < $1 ORDER BY expires LIMIT $2)",
        i64_of(now_ms.saturating_add(1)),
        limit,
    )
    .await
}

pub(super) async fn expire_messages(
    c: &ClientWrapper,
    before_ms: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    delete_below(
        c,
        "DELETE FROM imqtt_messages WHERE ctid IN (
            SELECT ctid FROM imqtt_messages WHERE ts < $1 ORDER BY ts LIMIT $2)",
        i64_of(before_ms),
        limit,
    )
    .await
}

pub(super) async fn purge(
    c: &ClientWrapper,
    conv: &ConvId,
    through: u64,
    limit: usize,
) -> Result<usize, StoreError> {
    let st = c
        .prepare_cached(
            "DELETE FROM imqtt_messages WHERE ctid IN (
                SELECT ctid FROM imqtt_messages WHERE conv = $1 AND seq <= $2
                ORDER BY seq LIMIT $3)",
        )
        .await
        .map_err(pg_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let n = c
        .execute(&st, &[&conv.as_str(), &i64_of(through), &limit])
        .await
        .map_err(pg_error)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Replaces the envelope of `conv`'s message `seq`; whether it was there.
pub(super) async fn amend(
    c: &ClientWrapper,
    conv: &ConvId,
    seq: u64,
    json: &[u8],
) -> Result<bool, StoreError> {
    let st = c
        .prepare_cached("UPDATE imqtt_messages SET envelope = $3 WHERE conv = $1 AND seq = $2")
        .await
        .map_err(pg_error)?;
    let n = c
        .execute(&st, &[&conv.as_str(), &i64_of(seq), &json])
        .await
        .map_err(pg_error)?;
    Ok(n == 1)
}

/// The seqs of the edits of `conv`'s message `seq`, ascending.
pub(super) async fn edits_of(
    c: &ClientWrapper,
    conv: &ConvId,
    seq: u64,
) -> Result<Vec<u64>, StoreError> {
    let st = c
        .prepare_cached(
            "SELECT seq FROM imqtt_messages WHERE conv = $1 AND edits = $2 ORDER BY seq",
        )
        .await
        .map_err(pg_error)?;
    let rows = c
        .query(&st, &[&conv.as_str(), &i64_of(seq)])
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|r| u64_of(r.get(0))).collect())
}

/// Queues `events` for `hook`; the table's sequence orders them.
pub(super) async fn enqueue_events(
    c: &ClientWrapper,
    hook: &str,
    events: &[Vec<u8>],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let st = c
        .prepare_cached(
            "INSERT INTO imqtt_webhook_events (hook, event)
             SELECT $1, e FROM unnest($2::bytea[]) WITH ORDINALITY AS t(e, n) ORDER BY n",
        )
        .await
        .map_err(pg_error)?;
    c.execute(&st, &[&hook, &events]).await.map_err(pg_error)?;
    Ok(())
}

/// Forgets `ids` of `hook`'s queue.
pub(super) async fn drop_events(
    c: &ClientWrapper,
    hook: &str,
    ids: &[u64],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = ids.iter().map(|i| i64_of(*i)).collect();
    let st = c
        .prepare_cached(
            "DELETE FROM imqtt_webhook_events WHERE hook = $1 AND id = ANY($2::bigint[])",
        )
        .await
        .map_err(pg_error)?;
    c.execute(&st, &[&hook, &ids]).await.map_err(pg_error)?;
    Ok(())
}

/// The oldest `limit` events of `hook`'s queue.
pub(super) async fn queued_events(
    c: &ClientWrapper,
    hook: &str,
    limit: usize,
) -> Result<Vec<(u64, Bytes)>, StoreError> {
    let st = c
        .prepare_cached(
            "SELECT id, event FROM imqtt_webhook_events WHERE hook = $1 ORDER BY id LIMIT $2",
        )
        .await
        .map_err(pg_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c.query(&st, &[&hook, &limit]).await.map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|r| (u64_of(r.get(0)), Bytes::from(r.get::<_, Vec<u8>>(1))))
        .collect())
}

/// How many events `hook`'s queue holds.
pub(super) async fn count_events(c: &ClientWrapper, hook: &str) -> Result<usize, StoreError> {
    let row = c
        .query_one(
            "SELECT count(*) FROM imqtt_webhook_events WHERE hook = $1",
            &[&hook],
        )
        .await
        .map_err(pg_error)?;
    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}
