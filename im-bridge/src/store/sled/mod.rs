//! The embedded store on sled 0.34: one tree, its keys prefixed by kind
//! (`keys.rs`), so that a commit round is one `apply_batch`, atomic across every
//! kind of key, and after a crash recovered whole or not at all.
//!
//! A round (`round.rs`) stages its writes in memory, reads through them, and
//! applies them as one batch at commit, then flushes sled and fsyncs its log
//! once. Reads outside a round read the tree. `migrate.rs` moves a store of the
//! earlier layout (a tree per kind) into this one when it is opened.

mod export;
mod groups;
mod keys;
mod migrate;
mod retained;
mod round;

use std::time::Duration;

use bytes::Bytes;
use imqtt_wire::ConvId;
use sled::IVec;

use self::keys::{
    ACCOUNT, CURSOR, GROUP, HEAD, MEMBER, decode_head, end_of, id_after, key1, key2, prefix, u64_at,
};
use super::{GroupRecord, Head, Membership, Range, Round, Store, StoreError, Summary, Window};
use crate::config::StoreConfig;
use crate::error::{Error, Result};

/// The sled database under `store.path`.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// How long a `(sender, client_msg_id)` keeps retries idempotent.
    idempotency_ttl: Duration,
    /// MQTT retained messages, in a file of their own (`retained.rs`).
    retained: std::sync::Arc<retained::RetainedLog>,
    /// sled's log file, opened again to fsync it: sled 0.34 makes its writes
    /// durable on Linux with `sync_file_range`, which flushes neither the disk's
    /// write cache nor the file's size, so a power loss could lose what it called
    /// flushed. An fsync of the same file (fsync is per file, not per descriptor)
    /// after sled's flush closes that gap. `None` for a temporary store.
    log: Option<std::sync::Arc<std::fs::File>>,
    /// Numbers the rounds' time index entries (`keys.rs`); it starts at the
    /// clock's nanoseconds, so that a restart never reuses one.
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        engine(e)
    }
}

/// The tree's name.
const TREE: &str = "imqtt";

impl SledStore {
    /// Opens (creating if needed) the store, moving an earlier layout's data into
    /// this one. sled locks the directory, so a second server on the same path
    /// fails here with [`Error::StoreInUse`] instead of corrupting it. Blocks while
    /// sled reads its log: call it off the runtime.
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
        let open_error = |cause| Error::StoreOpen {
            path: cfg.path.clone(),
            cause,
        };
        let mut store = SledStore::with_tree(db, idempotency_ttl).map_err(open_error)?;
        let log =
            std::fs::File::open(cfg.path.join("db")).map_err(|e| open_error(sled::Error::Io(e)))?;
        store.log = Some(std::sync::Arc::new(log));
        store.retained = std::sync::Arc::new(
            retained::RetainedLog::open(&cfg.path)
                .map_err(|e| open_error(sled::Error::Io(std::io::Error::other(e))))?,
        );
        let moved = migrate::from_tree_per_kind(&store.db, &store.tree).map_err(open_error)?;
        let moved = moved
            + migrate::retained_out_of_the_tree(&store.tree, &store.retained)
                .map_err(|e| open_error(sled::Error::Io(std::io::Error::other(e))))?
            + migrate::lists_into_cursors(&store.tree).map_err(open_error)?;
        if moved > 0 {
            store
                .flush()
                .map_err(|e| open_error(sled::Error::Io(std::io::Error::other(e))))?;
            tracing::info!(keys = moved, "store moved to the one-tree layout");
        }
        tracing::info!(path = %cfg.path.display(), "store opened");
        Ok(store)
    }

    /// A store in a temporary directory, deleted when the last handle is dropped
    /// (for tests and tools).
    pub fn temporary(idempotency_ttl: Duration) -> Result<SledStore> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(SledStore::with_tree(db, idempotency_ttl)?)
    }

    fn with_tree(db: sled::Db, idempotency_ttl: Duration) -> sled::Result<SledStore> {
        Ok(SledStore {
            tree: db.open_tree(TREE)?,
            db,
            idempotency_ttl,
            retained: std::sync::Arc::new(retained::RetainedLog::memory()),
            log: None,
            rounds: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            )),
        })
    }
}

impl SledStore {
    /// A number no other round of this store has had.
    fn next_round(&self) -> u64 {
        self.rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

/// Entries in key order (or reversed), as the reads walk them.
type Entries<'a> = Box<dyn Iterator<Item = Result<(IVec, IVec), StoreError>> + 'a>;

/// What the reads read: the tree, or a round's writes over it.
trait View {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError>;
    /// The entries with keys in `lo..hi`, ascending, or descending if `rev`.
    fn scan(&self, lo: Vec<u8>, hi: Vec<u8>, rev: bool) -> Entries<'_>;
}

impl View for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        Ok(self.tree.get(key)?)
    }

    fn scan(&self, lo: Vec<u8>, hi: Vec<u8>, rev: bool) -> Entries<'_> {
        let it = self.tree.range(lo..hi);
        if rev {
            Box::new(it.rev().map(|kv| kv.map_err(StoreError::from)))
        } else {
            Box::new(it.map(|kv| kv.map_err(StoreError::from)))
        }
    }
}

/// The values of the first `limit` entries, and whether there are more.
fn take(mut it: Entries<'_>, limit: usize) -> Result<(Vec<Bytes>, bool), StoreError> {
    let mut out = Vec::with_capacity(limit.min(1024));
    for kv in it.by_ref().take(limit) {
        let (_, v) = kv?;
        out.push(Bytes::copy_from_slice(&v));
    }
    let more = it.next().transpose()?.is_some();
    Ok((out, more))
}

/// The ids after `owner 0` in the keys of `kind`, at most `limit`.
fn ids(v: &impl View, kind: u8, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
    let p = prefix(kind, owner);
    let mut out = Vec::new();
    for kv in v.scan(p.clone(), end_of(&p), false).take(limit) {
        let (k, _) = kv?;
        out.push(id_after(&k, &p)?.to_owned());
    }
    Ok(out)
}

// The reads, written once for the tree and for a round.
fn head(v: &impl View, conv: &ConvId) -> Result<Head, StoreError> {
    match v.get(&key1(HEAD, conv.as_str()))? {
        Some(h) => decode_head(&h),
        None => Ok(Head::default()),
    }
}

fn messages(
    v: &impl View,
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
    let (lo, hi) = (keys::msg(c, first), keys::after(&keys::msg(c, last)));
    match range {
        Range::After(_) => take(v.scan(lo, hi, false), limit),
        Range::Before(_) => {
            let (mut out, more) = take(v.scan(lo, hi, true), limit)?;
            out.reverse();
            Ok((out, more))
        }
    }
}

fn cursor(v: &impl View, uid: &str, conv: &ConvId) -> Result<u64, StoreError> {
    Ok(v.get(&key2(CURSOR, uid, conv.as_str()))?
        .and_then(|c| u64_at(&c, 0))
        .unwrap_or(0))
}

fn conversations(v: &impl View, uid: &str, limit: usize) -> Result<Vec<Summary>, StoreError> {
    let p = prefix(CURSOR, uid);
    let mut out = Vec::new();
    // The user's list is its cursors in direct and notice conversations (groups
    // are found through memberships); its order by activity comes from the heads.
    for kv in v.scan(p.clone(), end_of(&p), false) {
        let (k, c) = kv?;
        let conv = id_after(&k, &p)?
            .parse::<ConvId>()
            .map_err(|_| StoreError::Corrupt("cursors"))?;
        if matches!(conv.kind(), imqtt_wire::ConvKind::Group { .. }) {
            continue;
        }
        out.push(Summary {
            head: head(v, &conv)?,
            cursor: u64_at(&c, 0).ok_or(StoreError::Corrupt("cursors"))?,
            conv,
        });
    }
    out.sort_by(|a, b| {
        b.head
            .last_ts
            .cmp(&a.head.last_ts)
            .then_with(|| a.conv.as_str().cmp(b.conv.as_str()))
    });
    out.truncate(limit);
    Ok(out)
}

fn password_hash(v: &impl View, uid: &str) -> Result<Option<String>, StoreError> {
    match v.get(&key1(ACCOUNT, uid))? {
        None => Ok(None),
        Some(h) => String::from_utf8(h.to_vec())
            .map(Some)
            .map_err(|_| StoreError::Corrupt("accounts")),
    }
}

fn group(v: &impl View, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
    match v.get(&key1(GROUP, gid))? {
        None => Ok(None),
        Some(g) => serde_json::from_slice(&g)
            .map(Some)
            .map_err(|_| StoreError::Corrupt("groups")),
    }
}

fn membership(v: &impl View, gid: &str, uid: &str) -> Result<Option<Membership>, StoreError> {
    v.get(&key2(MEMBER, gid, uid))?
        .map(|m| groups::decode_membership(&m))
        .transpose()
}

fn members(v: &impl View, gid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
    let p = prefix(MEMBER, gid);
    let mut out = Vec::new();
    for kv in v.scan(p.clone(), end_of(&p), false) {
        let (k, m) = kv?;
        out.push((id_after(&k, &p)?.to_owned(), groups::decode_membership(&m)?));
    }
    Ok(out)
}

/// `Reads` for a type that is a [`View`].
macro_rules! reads_of_view {
    ($t:ty) => {
        impl $crate::store::Reads for $t {
            fn head(
                &self,
                conv: &imqtt_wire::ConvId,
            ) -> Result<$crate::store::Head, $crate::store::StoreError> {
                $crate::store::sled::head(self, conv)
            }
            fn messages(
                &self,
                conv: &imqtt_wire::ConvId,
                range: $crate::store::Range,
                window: $crate::store::Window,
                limit: usize,
            ) -> Result<(Vec<bytes::Bytes>, bool), $crate::store::StoreError> {
                $crate::store::sled::messages(self, conv, range, window, limit)
            }
            fn cursor(
                &self,
                uid: &str,
                conv: &imqtt_wire::ConvId,
            ) -> Result<u64, $crate::store::StoreError> {
                $crate::store::sled::cursor(self, uid, conv)
            }
            fn conversations(
                &self,
                uid: &str,
                limit: usize,
            ) -> Result<Vec<$crate::store::Summary>, $crate::store::StoreError> {
                $crate::store::sled::conversations(self, uid, limit)
            }
            fn group(
                &self,
                gid: &str,
            ) -> Result<Option<$crate::store::GroupRecord>, $crate::store::StoreError> {
                $crate::store::sled::group(self, gid)
            }
            fn membership(
                &self,
                gid: &str,
                uid: &str,
            ) -> Result<Option<$crate::store::Membership>, $crate::store::StoreError> {
                $crate::store::sled::membership(self, gid, uid)
            }
            fn members(
                &self,
                gid: &str,
            ) -> Result<Vec<(String, $crate::store::Membership)>, $crate::store::StoreError> {
                $crate::store::sled::members(self, gid)
            }
            fn user_groups(
                &self,
                uid: &str,
                limit: usize,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                $crate::store::sled::ids(self, $crate::store::sled::keys::USER_GROUP, uid, limit)
            }
            fn is_contact(
                &self,
                owner: &str,
                contact: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok($crate::store::sled::View::get(
                    self,
                    &$crate::store::sled::keys::key2(
                        $crate::store::sled::keys::CONTACT,
                        owner,
                        contact,
                    ),
                )?
                .is_some())
            }
            fn contacts(
                &self,
                owner: &str,
                limit: usize,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                $crate::store::sled::ids(self, $crate::store::sled::keys::CONTACT, owner, limit)
            }
            fn password_hash(
                &self,
                uid: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                $crate::store::sled::password_hash(self, uid)
            }
        }
    };
}
use reads_of_view;

reads_of_view!(SledStore);

impl Store for SledStore {
    fn begin(&self) -> Result<Box<dyn Round + '_>, StoreError> {
        Ok(Box::new(round::SledRound::new(self)))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if let Some(log) = &self.log {
            log.sync_data().map_err(engine)?;
        }
        self.retained.sync()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn retained(&self) -> Result<Vec<(String, Bytes, u8)>, StoreError> {
        self.retained.read()
    }

    fn queued_events(&self, hook: &str, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let p = prefix(keys::WEBHOOK, hook);
        let mut out = Vec::new();
        for kv in self.scan(p.clone(), end_of(&p), false).take(limit) {
            let (k, v) = kv?;
            let id = u64_at(&k, p.len()).ok_or(StoreError::Corrupt("webhook events"))?;
            out.push((id, Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    fn count_events(&self, hook: &str) -> Result<usize, StoreError> {
        let p = prefix(keys::WEBHOOK, hook);
        Ok(self.tree.scan_prefix(&p).keys().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn open(dir: &tempfile::TempDir) -> Result<SledStore> {
        let cfg = StoreConfig {
            path: dir.path().join("data"),
            ..StoreConfig::default()
        };
        SledStore::open(&cfg, conformance::TTL)
    }

    /// Opens the store again once an earlier handle in this process is
    /// dropped. sled's flusher thread holds the directory's lock until it has
    /// noticed the drop, a moment later; a second process (the real restart)
    /// never meets this, as the lock goes with the first one's exit.
    fn reopen(dir: &tempfile::TempDir) -> SledStore {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match open(dir) {
                Err(Error::StoreInUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => return opened.expect("reopen"),
            }
        }
    }

    #[test]
    fn the_sled_engine_passes_the_store_conformance_suite() {
        conformance::run(&mut || {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = open(&dir).expect("open");
            (
                Box::new(store) as Box<dyn Store>,
                Box::new(dir) as Box<dyn std::any::Any>,
            )
        });
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_store_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _first = open(&dir).expect("first open");
        let err = open(&dir).expect_err("locked");
        assert!(matches!(err, Error::StoreInUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "store.path {:?} is in use by another imqtt process",
                dir.path().join("data")
            )
        );
    }

    #[test]
    fn what_was_committed_durably_is_there_after_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let now;
        {
            let s = open(&dir).expect("open");
            now = conformance::write_sample(&s);
        }
        let s = reopen(&dir);
        conformance::check_sample(&s, now);
    }

    #[test]
    fn a_store_of_the_tree_per_kind_layout_is_moved_over_when_opened() {
        let dir = tempfile::tempdir().expect("tmp");
        migrate::tests::write_old_layout(&dir.path().join("data"));
        let s = reopen(&dir);
        migrate::tests::check_moved(&s);
    }
}
