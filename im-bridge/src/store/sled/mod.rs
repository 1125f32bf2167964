//! The embedded store on sled 0.34.
//!
//! Trees and keys (`0` is a zero byte: ids and conversation ids never contain one,
//! and integers are big-endian so that keys sort by them):
//!
//! | tree | key | value |
//! |---|---|---|
//! | `msgs` | conv `0` seq | the envelope's JSON |
//! | `heads` | conv | head seq, last ts |
//! | `cursors` | uid `0` conv | seq |
//! | `recent` | uid `0` (u64::MAX - last ts) conv | nothing: the user's conversations, most recent first |
//! | `activity` | uid `0` conv | last ts (finds the `recent` key to replace) |
//! | `idem` | sender `0` client_msg_id | conv `0` seq, then the expiry |
//! | `idem_exp` | expiry sender `0` client_msg_id | nothing: what to forget when |
//! | `msgs_by_time` | ts conv `0` seq | nothing: what `store.retention` deletes when |
//! | `accounts` | uid | the argon2 hash |
//! | `retained` | MQTT topic | QoS, then the payload |
//! | `groups` | gid | the group's settings (JSON) |
//! | `members` | gid `0` uid | role, first visible seq, last visible seq (MAX: a member now) |
//! | `user_groups` | uid `0` gid | nothing: the user's current groups |
//! | `contacts` | owner `0` uid | nothing: who may see owner's presence |
//!
//! A send touches its conversation's keys, its participants' keys and its
//! idempotency key, all in one sled transaction, so they are written (and after a
//! crash, recovered) together or not at all; so does each group change
//! (`groups.rs`).

mod groups;

use std::time::Duration;

use bytes::Bytes;
use imqtt_wire::{ConvId, ConvKind, Envelope, GroupRole};
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use super::{
    Appended, GroupRecord, GroupWrite, Head, Membership, NewMessage, Range, Store, StoreError,
    Summary, Window, participants,
};
use crate::config::StoreConfig;
use crate::error::{Error, Result};

/// The sled database under `store.path`.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
    msgs: sled::Tree,
    heads: sled::Tree,
    cursors: sled::Tree,
    recent: sled::Tree,
    activity: sled::Tree,
    idem: sled::Tree,
    idem_exp: sled::Tree,
    msgs_by_time: sled::Tree,
    accounts: sled::Tree,
    retained: sled::Tree,
    groups: sled::Tree,
    members: sled::Tree,
    user_groups: sled::Tree,
    contacts: sled::Tree,
    /// How long a `(sender, client_msg_id)` keeps retries idempotent.
    idempotency_ttl: Duration,
    /// sled's log file, opened again to fsync it: sled 0.34 makes its writes
    /// durable on Linux with `sync_file_range`, which flushes neither the disk's
    /// write cache nor the file's size, so a power loss could lose what it called
    /// flushed. An fsync of the same file (fsync is per file, not per descriptor)
    /// after sled's flush closes that gap. `None` for a temporary store.
    log: Option<std::sync::Arc<std::fs::File>>,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        engine(e)
    }
}

impl SledStore {
    /// Opens (creating if needed) the store. sled locks the directory, so a second
    /// server on the same path fails here with [`Error::StoreInUse`] instead of
    /// corrupting it. Blocks while sled reads its log: call it off the runtime.
    pub fn open(cfg: &StoreConfig, idempotency_ttl: Duration) -> Result<SledStore> {
        let opened = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(cfg.cache_capacity.0)
            .open();
        let db = match opened {
            Ok(db) => db,
            Err(e) if is_lock_conflict(&e) => {
                return Err(Error::StoreInUse {
                    path: cfg.path.clone(),
                });
            }
            Err(cause) => {
                return Err(Error::StoreOpen {
                    path: cfg.path.clone(),
                    cause,
                });
            }
        };
        let mut store =
            SledStore::with_trees(db, idempotency_ttl).map_err(|cause| Error::StoreOpen {
                path: cfg.path.clone(),
                cause,
            })?;
        let log = std::fs::File::open(cfg.path.join("db")).map_err(|e| Error::StoreOpen {
            path: cfg.path.clone(),
            cause: sled::Error::Io(e),
        })?;
        store.log = Some(std::sync::Arc::new(log));
        tracing::info!(path = %cfg.path.display(), "store opened");
        Ok(store)
    }

    /// A store in a temporary directory, deleted when the last handle is dropped
    /// (for tests and tools).
    pub fn temporary(idempotency_ttl: Duration) -> Result<SledStore> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(SledStore::with_trees(db, idempotency_ttl)?)
    }

    fn with_trees(db: sled::Db, idempotency_ttl: Duration) -> sled::Result<SledStore> {
        let tree = |name: &str| db.open_tree(name);
        Ok(SledStore {
            msgs: tree("msgs")?,
            heads: tree("heads")?,
            cursors: tree("cursors")?,
            recent: tree("recent")?,
            activity: tree("activity")?,
            idem: tree("idem")?,
            idem_exp: tree("idem_exp")?,
            msgs_by_time: tree("msgs_by_time")?,
            accounts: tree("accounts")?,
            retained: tree("retained")?,
            groups: tree("groups")?,
            members: tree("members")?,
            user_groups: tree("user_groups")?,
            contacts: tree("contacts")?,
            db,
            idempotency_ttl,
            log: None,
        })
    }
}

/// Whether sled refused to open because another process holds the directory's
/// lock. sled 0.34 reports that only as text: `Error::Io` of kind `Other` whose
/// message starts "could not acquire lock on" (`sled::Config::open`, config.rs).
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::Other
            && io.to_string().starts_with("could not acquire lock"))
}

/// `a 0 b`.
fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `conv 0 seq`.
fn msg_key(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(conv.len() + 9);
    k.extend_from_slice(conv.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `uid 0 (MAX - ts) conv`.
fn recent_key(uid: &str, ts: u64, conv: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(uid.len() + 9 + conv.len());
    k.extend_from_slice(uid.as_bytes());
    k.push(0);
    k.extend_from_slice(&(u64::MAX - ts).to_be_bytes());
    k.extend_from_slice(conv.as_bytes());
    k
}

/// The values of the first `limit` entries, and whether there are more.
fn take(
    mut it: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    limit: usize,
) -> Result<(Vec<Bytes>, bool), StoreError> {
    let mut out = Vec::with_capacity(limit.min(1024));
    for kv in it.by_ref().take(limit) {
        let (_, v) = kv?;
        out.push(Bytes::copy_from_slice(&v));
    }
    let more = it.next().transpose()?.is_some();
    Ok((out, more))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn decode_head(v: &[u8]) -> Result<Head, StoreError> {
    match (u64_at(v, 0), u64_at(v, 8)) {
        (Some(seq), Some(last_ts)) => Ok(Head { seq, last_ts }),
        _ => Err(StoreError::Corrupt("heads")),
    }
}

fn encode_head(h: Head) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&h.seq.to_be_bytes());
    v[8..].copy_from_slice(&h.last_ts.to_be_bytes());
    v
}

type Tx<'a> = &'a TransactionalTree;
type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn from_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => engine(e),
    }
}

/// The trees one send writes.
struct Trees<'a> {
    msgs: Tx<'a>,
    heads: Tx<'a>,
    cursors: Tx<'a>,
    recent: Tx<'a>,
    activity: Tx<'a>,
    idem: Tx<'a>,
    idem_exp: Tx<'a>,
    msgs_by_time: Tx<'a>,
}

impl Trees<'_> {
    /// The original of a retried send, if its key is still known.
    fn original(&self, idem_key: &[u8]) -> TxResult<Option<Bytes>> {
        let Some(v) = self.idem.get(idem_key)? else {
            return Ok(None);
        };
        // conv 0 seq(8) expiry(8)
        let Some(split) = v.len().checked_sub(17) else {
            return abort(StoreError::Corrupt("idem"));
        };
        let conv = &v[..split];
        let Some(seq) = u64_at(&v, split + 1) else {
            return abort(StoreError::Corrupt("idem"));
        };
        let conv = std::str::from_utf8(conv)
            .map_err(|_| ConflictableTransactionError::Abort(StoreError::Corrupt("idem")))?;
        Ok(self
            .msgs
            .get(msg_key(conv, seq))?
            .map(|json| Bytes::copy_from_slice(&json)))
    }

    /// Moves `uid`'s entry for `conv` in its recent list to `ts`.
    fn touch(
        &self,
        uid: &str,
        conv: &str,
        ts: u64,
    ) -> std::result::Result<(), UnabortableTransactionError> {
        let akey = key2(uid, conv);
        if let Some(old) = self.activity.get(&akey)?
            && let Some(old_ts) = u64_at(&old, 0)
        {
            self.recent.remove(recent_key(uid, old_ts, conv))?;
        }
        self.activity.insert(akey, &ts.to_be_bytes())?;
        self.recent.insert(recent_key(uid, ts, conv), &[])?;
        Ok(())
    }

    /// Raises `uid`'s cursor in `conv` to `seq` (never lowers it).
    fn raise_cursor(
        &self,
        uid: &str,
        conv: &str,
        seq: u64,
    ) -> std::result::Result<(), UnabortableTransactionError> {
        let key = key2(uid, conv);
        let now = self
            .cursors
            .get(&key)?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0);
        if seq > now {
            self.cursors.insert(key, &seq.to_be_bytes())?;
        }
        Ok(())
    }
}

impl SledStore {
    fn append_one(&self, t: &Trees<'_>, send: &NewMessage, now_ms: u64) -> TxResult<Appended> {
        let idem_key = send.idempotency_key.as_deref().map(|c| key2(&send.from, c));
        if let Some(k) = &idem_key
            && let Some(json) = t.original(k)?
        {
            let Ok(envelope) = serde_json::from_slice::<Envelope>(&json) else {
                return abort(StoreError::Corrupt("msgs"));
            };
            return Ok(Appended {
                envelope,
                json,
                duplicate: true,
            });
        }
        let conv = send.conv.as_str();
        let head = match t.heads.get(conv)? {
            Some(v) => decode_head(&v).or_else(abort)?,
            None => Head::default(),
        };
        let seq = head.seq + 1;
        let envelope = Envelope {
            id: ulid::Ulid::new().to_string(),
            conv: send.conv.clone(),
            seq,
            from: send.from.clone(),
            to: send.to.clone(),
            ts: now_ms,
            client_msg_id: send.client_msg_id.clone(),
            qos: send.qos,
            body: send.body.clone(),
        };
        let json = match serde_json::to_vec(&envelope) {
            Ok(j) => j,
            Err(e) => return abort(engine(e)),
        };
        t.msgs.insert(msg_key(conv, seq), json.as_slice())?;
        let mut by_time = now_ms.to_be_bytes().to_vec();
        by_time.extend_from_slice(&msg_key(conv, seq));
        t.msgs_by_time.insert(by_time, &[])?;
        t.heads.insert(
            conv.as_bytes(),
            &encode_head(Head {
                seq,
                last_ts: now_ms,
            }),
        )?;
        for uid in participants(&send.conv) {
            t.touch(uid, conv, now_ms)?;
        }
        if matches!(
            send.conv.kind(),
            ConvKind::Dm { .. } | ConvKind::Group { .. }
        ) {
            // One's own message is read.
            t.raise_cursor(&send.from, conv, seq)?;
        }
        if let Some(k) = idem_key {
            let ttl = u64::try_from(self.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
            let expires = now_ms.saturating_add(ttl);
            let mut v = msg_key(conv, seq);
            v.extend_from_slice(&expires.to_be_bytes());
            t.idem.insert(k.as_slice(), v)?;
            let mut e = expires.to_be_bytes().to_vec();
            e.extend_from_slice(&k);
            t.idem_exp.insert(e, &[])?;
        }
        Ok(Appended {
            envelope,
            json: Bytes::from(json),
            duplicate: false,
        })
    }
}

impl Store for SledStore {
    fn append(&self, sends: &[NewMessage], now_ms: u64) -> Result<Vec<Appended>, StoreError> {
        let trees = (
            &self.msgs,
            &self.heads,
            &self.cursors,
            &self.recent,
            &self.activity,
            &self.idem,
            &self.idem_exp,
            &self.msgs_by_time,
        );
        trees
            .transaction(
                |(msgs, heads, cursors, recent, activity, idem, idem_exp, msgs_by_time)| {
                    let t = Trees {
                        msgs,
                        heads,
                        cursors,
                        recent,
                        activity,
                        idem,
                        idem_exp,
                        msgs_by_time,
                    };
                    sends
                        .iter()
                        .map(|send| self.append_one(&t, send, now_ms))
                        .collect::<TxResult<Vec<_>>>()
                },
            )
            .map_err(from_tx)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Some(log) = &self.log {
            log.sync_data().map_err(engine)?;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn head(&self, conv: &ConvId) -> Result<Head, StoreError> {
        match self.heads.get(conv.as_str())? {
            Some(v) => decode_head(&v),
            None => Ok(Head::default()),
        }
    }

    fn messages(
        &self,
        conv: &ConvId,
        range: Range,
        window: Window,
        limit: usize,
    ) -> Result<(Vec<Bytes>, bool), StoreError> {
        let c = conv.as_str();
        // Both ends included: [first, last].
        let (first, last) = match range {
            Range::After(after) => (after.saturating_add(1).max(window.first), window.last),
            Range::Before(before) => (window.first, before.saturating_sub(1).min(window.last)),
        };
        if first > last {
            return Ok((Vec::new(), false));
        }
        let span = msg_key(c, first)..=msg_key(c, last);
        match range {
            Range::After(_) => take(self.msgs.range(span), limit),
            Range::Before(_) => {
                let (mut out, more) = take(self.msgs.range(span).rev(), limit)?;
                out.reverse();
                Ok((out, more))
            }
        }
    }

    fn cursor(&self, uid: &str, conv: &ConvId) -> Result<u64, StoreError> {
        Ok(self
            .cursors
            .get(key2(uid, conv.as_str()))?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    fn ack(&self, uid: &str, cursors: &[(ConvId, u64)]) -> Result<(), StoreError> {
        (&self.cursors, &self.heads)
            .transaction(|(cur, heads)| {
                for (conv, seq) in cursors {
                    let head = match heads.get(conv.as_str())? {
                        Some(v) => decode_head(&v).or_else(abort)?.seq,
                        None => 0,
                    };
                    if *seq > head {
                        return abort(StoreError::AboveHead {
                            conv: conv.clone(),
                            seq: *seq,
                            head,
                        });
                    }
                    let key = key2(uid, conv.as_str());
                    let now = cur.get(&key)?.and_then(|v| u64_at(&v, 0)).unwrap_or(0);
                    if *seq > now {
                        cur.insert(key, &seq.to_be_bytes())?;
                    }
                }
                Ok(())
            })
            .map_err(from_tx)
    }

    fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Summary>, StoreError> {
        let mut prefix = uid.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.recent.scan_prefix(&prefix).take(limit) {
            let (k, _) = kv?;
            let conv = k
                .get(prefix.len() + 8..)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse::<ConvId>().ok())
                .ok_or(StoreError::Corrupt("recent"))?;
            let head = self.head(&conv)?;
            let cursor = self.cursor(uid, &conv)?;
            out.push(Summary { conv, head, cursor });
        }
        Ok(out)
    }

    fn group(&self, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.group_record(gid)
    }

    fn membership(&self, gid: &str, uid: &str) -> Result<Option<Membership>, StoreError> {
        self.group_membership(gid, uid)
    }

    fn members(&self, gid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        self.group_members(gid)
    }

    fn user_groups(&self, uid: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.groups_of(uid, limit)
    }

    fn write_groups(&self, writes: &[GroupWrite]) -> Result<(), StoreError> {
        self.apply_group_writes(writes)
    }

    fn set_contact(&self, owner: &str, contact: &str, on: bool) -> Result<bool, StoreError> {
        self.put_contact(owner, contact, on)
    }

    fn is_contact(&self, owner: &str, contact: &str) -> Result<bool, StoreError> {
        self.has_contact(owner, contact)
    }

    fn contacts(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.contacts_of(owner, limit)
    }

    fn create_account(&self, uid: &str, password_hash: &str) -> Result<bool, StoreError> {
        let created = self.accounts.compare_and_swap(
            uid,
            None as Option<&[u8]>,
            Some(password_hash.as_bytes()),
        )?;
        Ok(created.is_ok())
    }

    fn password_hash(&self, uid: &str) -> Result<Option<String>, StoreError> {
        match self.accounts.get(uid)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt("accounts")),
        }
    }

    fn expire_messages(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        let end = before_ms.to_be_bytes();
        for kv in self.msgs_by_time.range(..end.as_slice()) {
            let (k, _) = kv?;
            // Heads, cursors and the index stay: seqs are never reused, and a
            // conversation's history simply starts later.
            self.msgs.remove(&k[8..])?;
            self.msgs_by_time.remove(&k)?;
            n += 1;
        }
        Ok(n)
    }

    fn purge(&self, conv: &ConvId, through: u64, limit: usize) -> Result<usize, StoreError> {
        let c = conv.as_str();
        let mut n = 0;
        for kv in self
            .msgs
            .range(msg_key(c, 1)..=msg_key(c, through))
            .take(limit)
        {
            let (k, v) = kv?;
            // Its retention index entry goes with it (keyed by commit time).
            if let Ok(e) = serde_json::from_slice::<Envelope>(&v) {
                let mut by_time = e.ts.to_be_bytes().to_vec();
                by_time.extend_from_slice(&k);
                self.msgs_by_time.remove(by_time)?;
            }
            self.msgs.remove(&k)?;
            n += 1;
        }
        Ok(n)
    }

    fn put_retained(&self, changes: &[(String, Option<(Bytes, u8)>)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (topic, now) in changes {
            match now {
                Some((payload, qos)) => {
                    let mut v = Vec::with_capacity(1 + payload.len());
                    v.push(*qos);
                    v.extend_from_slice(payload);
                    batch.insert(topic.as_bytes(), v);
                }
                None => batch.remove(topic.as_bytes()),
            }
        }
        self.retained.apply_batch(batch)?;
        Ok(())
    }

    fn retained(&self) -> Result<Vec<(String, Bytes, u8)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.retained.iter() {
            let (k, v) = kv?;
            let (Ok(topic), Some((qos, payload))) = (std::str::from_utf8(&k), v.split_first())
            else {
                return Err(StoreError::Corrupt("retained"));
            };
            out.push((topic.to_owned(), Bytes::copy_from_slice(payload), *qos));
        }
        Ok(out)
    }

    fn expire_idempotency(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        let end = now_ms.saturating_add(1).to_be_bytes();
        for kv in self.idem_exp.range(..end.as_slice()) {
            let (k, _) = kv?;
            let idem_key = &k[8..];
            // Only if it still holds this expiry: a later send may have reused it.
            if let Some(v) = self.idem.get(idem_key)?
                && v.len() >= 8
                && v[v.len() - 8..] == k[..8]
            {
                self.idem.remove(idem_key)?;
            }
            self.idem_exp.remove(&k)?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imqtt_wire::Qos;

    fn open(dir: &tempfile::TempDir) -> SledStore {
        let cfg = StoreConfig {
            path: dir.path().join("data"),
            ..StoreConfig::default()
        };
        SledStore::open(&cfg, Duration::from_secs(3600)).expect("open")
    }

    /// Opens the store again once an earlier handle in this process is
    /// dropped. sled's flusher thread holds the directory's lock until it has
    /// noticed the drop, a moment later; a second process (the real restart)
    /// never meets this, as the lock goes with the first one's exit.
    fn reopen(dir: &tempfile::TempDir) -> SledStore {
        let cfg = StoreConfig {
            path: dir.path().join("data"),
            ..StoreConfig::default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match SledStore::open(&cfg, Duration::from_secs(3600)) {
                Err(Error::StoreInUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => return opened.expect("reopen"),
            }
        }
    }

    fn send(from: &str, to: &str, cmid: Option<&str>, text: &str) -> NewMessage {
        NewMessage {
            from: from.into(),
            conv: ConvId::dm(from, to).expect("conv"),
            to: to.into(),
            client_msg_id: cmid.map(Into::into),
            idempotency_key: cmid.map(Into::into),
            qos: Qos::AtLeastOnce,
            body: serde_json::json!({ "text": text }),
        }
    }

    fn seqs(a: &[Appended]) -> Vec<u64> {
        a.iter().map(|m| m.envelope.seq).collect()
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_store_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = StoreConfig {
            path: dir.path().join("data"),
            ..StoreConfig::default()
        };
        let _first = SledStore::open(&cfg, Duration::from_secs(1)).expect("first open");
        let err = SledStore::open(&cfg, Duration::from_secs(1)).expect_err("locked");
        assert!(matches!(err, Error::StoreInUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "store.path {:?} is in use by another imqtt process",
                cfg.path
            )
        );
    }

    #[test]
    fn seqs_are_contiguous_per_conversation_and_retries_return_the_original() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        let batch = [
            send("alice", "bob", Some("c1"), "1"),
            send("bob", "alice", None, "2"),
            send("alice", "carol", Some("c2"), "3"),
            // A retry inside the same batch.
            send("alice", "bob", Some("c1"), "1 again"),
        ];
        let out = s.append(&batch, 1000).expect("append");
        assert_eq!(seqs(&out), vec![1, 2, 1, 1]);
        assert_eq!(
            out.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
            vec![false, false, false, true]
        );
        assert_eq!(out[3].envelope.id, out[0].envelope.id);
        assert_eq!(out[3].envelope.body, serde_json::json!({"text": "1"}));
        // A later retry too, and a new send goes on from the head.
        let later = s
            .append(
                &[
                    send("alice", "bob", Some("c1"), "x"),
                    send("alice", "bob", None, "4"),
                ],
                2000,
            )
            .expect("append");
        assert_eq!(seqs(&later), vec![1, 3]);
        assert!(later[0].duplicate);
        let dm = ConvId::dm("alice", "bob").expect("conv");
        assert_eq!(
            s.head(&dm).expect("head"),
            Head {
                seq: 3,
                last_ts: 2000
            }
        );
    }

    #[test]
    fn pages_are_contiguous_and_say_whether_more_lie_beyond() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        let sends: Vec<_> = (0..10)
            .map(|i| send("ann", "ben", None, &i.to_string()))
            .collect();
        s.append(&sends, 5).expect("append");
        let conv = ConvId::dm("ann", "ben").expect("conv");
        let seq_of = |b: &Bytes| serde_json::from_slice::<Envelope>(b).expect("json").seq;
        let (page, more) = s
            .messages(&conv, Range::After(0), Window::ALL, 4)
            .expect("page");
        assert_eq!(
            page.iter().map(seq_of).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(more);
        let (page, more) = s
            .messages(&conv, Range::After(8), Window::ALL, 4)
            .expect("page");
        assert_eq!(page.iter().map(seq_of).collect::<Vec<_>>(), vec![9, 10]);
        assert!(!more);
        let (page, more) = s
            .messages(&conv, Range::Before(8), Window::ALL, 3)
            .expect("page");
        assert_eq!(page.iter().map(seq_of).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(more);
        let (page, more) = s
            .messages(&conv, Range::Before(3), Window::ALL, 5)
            .expect("page");
        assert_eq!(page.iter().map(seq_of).collect::<Vec<_>>(), vec![1, 2]);
        assert!(!more);
        // Another conversation's keys are never read.
        let other = ConvId::dm("ann", "bea").expect("conv");
        assert!(
            s.messages(&other, Range::After(0), Window::ALL, 10)
                .expect("page")
                .0
                .is_empty()
        );
    }

    #[test]
    fn cursors_move_forward_only_and_never_above_the_head() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        let conv = ConvId::dm("ann", "ben").expect("conv");
        let sends: Vec<_> = (0..5)
            .map(|i| send("ann", "ben", None, &i.to_string()))
            .collect();
        s.append(&sends, 5).expect("append");
        // The sender has read its own messages; the recipient nothing.
        assert_eq!(s.cursor("ann", &conv).expect("cursor"), 5);
        assert_eq!(s.cursor("ben", &conv).expect("cursor"), 0);
        s.ack("ben", &[(conv.clone(), 3)]).expect("ack");
        s.ack("ben", &[(conv.clone(), 2)]).expect("ack lower");
        assert_eq!(s.cursor("ben", &conv).expect("cursor"), 3);
        let err = s
            .ack("ben", &[(conv.clone(), 4), (conv.clone(), 6)])
            .expect_err("above");
        assert!(
            matches!(
                err,
                StoreError::AboveHead {
                    seq: 6,
                    head: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(s.cursor("ben", &conv).expect("cursor"), 3, "all or nothing");
    }

    #[test]
    fn a_users_conversations_come_most_recent_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        s.append(&[send("ann", "ben", None, "a")], 10)
            .expect("append");
        s.append(&[send("ann", "cat", None, "b")], 20)
            .expect("append");
        s.append(&[send("dan", "ann", None, "c")], 30)
            .expect("append");
        s.append(&[send("ben", "ann", None, "d")], 40)
            .expect("append");
        let list = s.conversations("ann", 10).expect("list");
        let convs: Vec<_> = list.iter().map(|c| c.conv.to_string()).collect();
        assert_eq!(convs, vec!["dm:ann:ben", "dm:ann:dan", "dm:ann:cat"]);
        assert_eq!(
            list[0].head,
            Head {
                seq: 2,
                last_ts: 40
            }
        );
        assert_eq!(list[0].cursor, 1);
        assert_eq!(s.conversations("ann", 1).expect("list").len(), 1);
        assert_eq!(s.conversations("ben", 10).expect("list").len(), 1);
        assert!(s.conversations("zed", 10).expect("list").is_empty());
    }

    #[test]
    fn idempotency_keys_expire_and_then_a_retry_is_new() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        let first = s
            .append(&[send("ann", "ben", Some("k"), "x")], 1_000)
            .expect("append");
        let ttl = 3_600_000;
        assert_eq!(s.expire_idempotency(1_000 + ttl - 1).expect("sweep"), 0);
        assert!(
            s.append(&[send("ann", "ben", Some("k"), "x")], 2_000)
                .expect("retry")[0]
                .duplicate
        );
        assert_eq!(s.expire_idempotency(1_000 + ttl).expect("sweep"), 1);
        let again = s
            .append(&[send("ann", "ben", Some("k"), "x")], 1_000 + ttl + 1)
            .expect("new");
        assert!(!again[0].duplicate);
        assert_eq!(again[0].envelope.seq, first[0].envelope.seq + 1);
    }

    #[test]
    fn retention_deletes_what_is_older_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        s.append(&[send("ann", "ben", None, "old")], 1_000)
            .expect("append");
        s.append(&[send("ann", "ben", None, "new")], 5_000)
            .expect("append");
        assert_eq!(s.expire_messages(1_000).expect("none yet"), 0);
        assert_eq!(s.expire_messages(2_000).expect("expire"), 1);
        let conv = ConvId::dm("ann", "ben").expect("conv");
        let (page, _) = s
            .messages(&conv, Range::After(0), Window::ALL, 10)
            .expect("page");
        let seqs: Vec<u64> = page
            .iter()
            .map(|b| serde_json::from_slice::<Envelope>(b).expect("json").seq)
            .collect();
        assert_eq!(seqs, vec![2]);
        assert_eq!(s.head(&conv).expect("head").seq, 2, "the head stays");
        assert_eq!(s.expire_messages(2_000).expect("again"), 0);
    }

    #[test]
    fn purging_a_conversation_deletes_its_messages_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        let sends: Vec<_> = (0..5)
            .map(|i| send("ann", "ben", None, &i.to_string()))
            .collect();
        s.append(&sends, 1_000).expect("append");
        s.append(&[send("ann", "cat", None, "other")], 1_000)
            .expect("append");
        let conv = ConvId::dm("ann", "ben").expect("conv");
        assert_eq!(s.purge(&conv, 4, 3).expect("purge"), 3);
        assert_eq!(s.purge(&conv, 4, 3).expect("purge"), 1);
        let (page, _) = s
            .messages(&conv, Range::After(0), Window::ALL, 10)
            .expect("page");
        assert_eq!(page.len(), 1, "seq 5 stays");
        assert_eq!(s.head(&conv).expect("head").seq, 5, "the head stays");
        let other = ConvId::dm("ann", "cat").expect("conv");
        let (page, _) = s
            .messages(&other, Range::After(0), Window::ALL, 10)
            .expect("page");
        assert_eq!(page.len(), 1);
        // Their retention entries went with them: only the two left expire.
        assert_eq!(s.expire_messages(2_000).expect("expire"), 2);
    }

    #[test]
    fn accounts_are_created_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = open(&dir);
        assert!(s.create_account("ann", "$argon2id$x").expect("create"));
        assert!(!s.create_account("ann", "$argon2id$y").expect("exists"));
        assert_eq!(
            s.password_hash("ann").expect("get").as_deref(),
            Some("$argon2id$x")
        );
        assert_eq!(s.password_hash("bob").expect("get"), None);
    }

    #[test]
    fn what_was_flushed_is_there_after_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let s = open(&dir);
            s.append(&[send("ann", "ben", Some("k"), "x")], 7)
                .expect("append");
            s.flush().expect("flush");
        }
        let s = reopen(&dir);
        let conv = ConvId::dm("ann", "ben").expect("conv");
        assert_eq!(s.head(&conv).expect("head").seq, 1);
        assert!(
            s.append(&[send("ann", "ben", Some("k"), "x")], 8)
                .expect("retry")[0]
                .duplicate
        );
    }
}
