//! The PostgreSQL engine (`store.engine = "postgres"`): the store that several
//! imqtt processes share. Plain SQL, one module per group of tables
//! (`messages.rs`, `groups.rs`, `accounts.rs`), the schema and its migrations in
//! `schema.rs`.
//!
//! The `Store` contract is blocking, so the engine runs tokio-postgres on a
//! runtime of its own (one thread, "imqtt-pg") and its callers, the commit
//! loop's thread and the blocking pool, wait on it: a slow database never
//! holds an async worker of the server. deadpool-postgres keeps up to
//! `store.pool` connections, each opened with `synchronous_commit = on`.
//!
//! A round is one transaction on one connection (`BEGIN` at
//! [`Store::begin`], `COMMIT` at [`Round::commit`]); a round dropped without
//! commit closes its connection, and the server rolls the transaction back. A
//! connection lost or refused, a timed-out query, a deadlock or a
//! serialization failure is [`StoreError::Unavailable`]: the API answers 503
//! `store_unavailable` and the next round tries again on a fresh connection. A
//! probe asks `SELECT 1` every second, so `/readyz` follows the database.

mod accounts;
mod groups;
mod import;
mod messages;
mod schema;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, RecyclingMethod};
use imqtt_wire::ConvId;

use super::{
    Appended, GroupRecord, GroupWrite, Head, Membership, NewMessage, Range, Reads, Round, Store,
    StoreError, Summary, Window,
};
use crate::config::StoreConfig;

/// The most send rounds committed at once ([`Store::lanes`]).
const LANES: usize = 2;
use crate::error::Error;

/// Longest one store call waits for the database.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection attempt takes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the availability probe asks.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A PostgreSQL database shared by every imqtt process of a deployment.
#[derive(Clone, Debug)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The engine's runtime; `None` once dropped (shut down in the background, as
    /// a drop may happen on an async worker, where a blocking shutdown panics).
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    available: Arc<AtomicBool>,
    idempotency_ttl_ms: u64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .field("available", &self.available.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether a database error is the database being away or busy (the same call
/// may succeed later) rather than a bug or bad data.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let transient = match e.code() {
        // No SQLSTATE: the connection broke, closed or never opened.
        None => true,
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 53: insufficient resources; 57P0x:
            // shutting down or starting up; 40001/40P01: serialization failure,
            // deadlock.
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
        }
    };
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Engine(e.to_string())
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A seq or time as PostgreSQL's `bigint` (seqs and Unix ms never reach 2^63;
/// larger values, such as an open window's end, saturate).
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` column as a seq or time (never negative as written).
fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PgStore {
    /// Connects to `store.url`, makes or migrates the schema, and starts the
    /// availability probe. Blocks: call it off the async runtime.
    pub fn open(cfg: &StoreConfig, idempotency_ttl: Duration) -> Result<PgStore, Error> {
        let url = cfg.url.redacted();
        let fail = |message: String| Error::Database {
            url: url.clone(),
            message,
        };
        let mut pg: tokio_postgres::Config = cfg
            .url
            .expose()
            .parse()
            .map_err(|e: tokio_postgres::Error| fail(format!("not a PostgreSQL URL: {e}")))?;
        pg.connect_timeout(CONNECT_TIMEOUT)
            .application_name("imqtt")
            // Every commit is durable before its answer, whatever the server's
            // default.
            .options("-c synchronous_commit=on");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("imqtt-pg")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start the engine's runtime: {e}")))?;
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| fail(format!("cannot make the connection pool: {e}")))?;
        let migrated = runtime.block_on(async {
            let mut c = pool
                .get()
                .await
                .map_err(|e| fail(format!("cannot connect: {}", pool_error(e))))?;
            schema::migrate(&mut c).await.map_err(|r| match r {
                schema::Refused::Newer { found, known } => fail(format!(
                    "the database's imqtt schema is version {found}, newer than this binary's {known}"
                )),
                schema::Refused::Foreign(tables) => fail(format!(
                    "the database holds tables imqtt did not make ({}); use an empty database",
                    tables.join(", ")
                )),
                schema::Refused::Store(e) => fail(e.to_string()),
            })
        })?;
        if migrated > 0 {
            tracing::info!(url = %url, migrations = migrated, "database schema made or migrated");
        }
        let available = Arc::new(AtomicBool::new(true));
        runtime.spawn(probe(pool.clone(), available.clone()));
        tracing::info!(url = %url, pool = cfg.pool, "store opened");
        let handle = runtime.handle().clone();
        Ok(PgStore {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                handle,
                pool,
                available,
                idempotency_ttl_ms: u64::try_from(idempotency_ttl.as_millis()).unwrap_or(u64::MAX),
            }),
        })
    }

    /// Runs `call` on the engine's runtime and waits for it (at most
    /// [`CALL_TIMEOUT`]). Never call it from inside that runtime.
    fn run<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let out = self.inner.handle.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the database did not answer in time".into(),
                    ))
                })
        });
        if matches!(out, Err(StoreError::Unavailable(_))) {
            self.inner.available.store(false, Ordering::Release);
        }
        out
    }

    /// A pooled connection.
    fn connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.run(async { self.inner.pool.get().await.map_err(pool_error) })
    }

    /// Whether the database holds any imqtt data (for `imqtt store copy`).
    pub fn holds_data(&self) -> Result<bool, StoreError> {
        let c = self.connection()?;
        self.run(schema::holds_data(&c))
    }
}

/// Asks the database every second whether it answers, for `/readyz`.
async fn probe(pool: Pool, available: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let asked = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let c = pool.get().await.map_err(pool_error)?;
            c.simple_query("SELECT 1").await.map_err(pg_error)
        })
        .await;
        let up = matches!(asked, Ok(Ok(_)));
        if available.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!("the database answers again");
            } else {
                tracing::warn!("the database does not answer");
            }
        }
    }
}

/// Reads over one connection.
struct On<'a> {
    store: &'a PgStore,
    c: &'a ClientWrapper,
}

impl Reads for On<'_> {
    fn head(&self, conv: &ConvId) -> Result<Head, StoreError> {
        self.store.run(messages::head(self.c, conv))
    }
    fn messages(
        &self,
        conv: &ConvId,
        range: Range,
        window: Window,
        limit: usize,
    ) -> Result<(Vec<Bytes>, bool), StoreError> {
        self.store
            .run(messages::messages(self.c, conv, range, window, limit))
    }
    fn cursor(&self, uid: &str, conv: &ConvId) -> Result<u64, StoreError> {
        self.store.run(messages::cursor(self.c, uid, conv))
    }
    fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Summary>, StoreError> {
        self.store.run(messages::conversations(self.c, uid, limit))
    }
    fn group(&self, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.store.run(groups::group(self.c, gid))
    }
    fn membership(&self, gid: &str, uid: &str) -> Result<Option<Membership>, StoreError> {
        self.store.run(groups::member(self.c, gid, uid))
    }
    fn members(&self, gid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        self.store.run(groups::members(self.c, gid))
    }
    fn user_groups(&self, uid: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.store.run(groups::user_groups(self.c, uid, limit))
    }
    fn is_contact(&self, owner: &str, contact: &str) -> Result<bool, StoreError> {
        self.store.run(groups::is_contact(self.c, owner, contact))
    }
    fn contacts(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.store.run(groups::contacts(self.c, owner, limit))
    }
    fn password_hash(&self, uid: &str) -> Result<Option<String>, StoreError> {
        self.store.run(accounts::password_hash(self.c, uid))
    }
}

/// `Reads` for a type whose `on()` gives reads over a connection.
macro_rules! reads_by_on {
    ($t:ty) => {
        impl Reads for $t {
            fn head(&self, conv: &ConvId) -> Result<Head, StoreError> {
                self.with(|on| on.head(conv))
            }
            fn messages(
                &self,
                conv: &ConvId,
                range: Range,
                window: Window,
                limit: usize,
            ) -> Result<(Vec<Bytes>, bool), StoreError> {
                self.with(|on| on.messages(conv, range, window, limit))
            }
            fn cursor(&self, uid: &str, conv: &ConvId) -> Result<u64, StoreError> {
                self.with(|on| on.cursor(uid, conv))
            }
            fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Summary>, StoreError> {
                self.with(|on| on.conversations(uid, limit))
            }
            fn group(&self, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
                self.with(|on| on.group(gid))
            }
            fn membership(&self, gid: &str, uid: &str) -> Result<Option<Membership>, StoreError> {
                self.with(|on| on.membership(gid, uid))
            }
            fn members(&self, gid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
                self.with(|on| on.members(gid))
            }
            fn user_groups(&self, uid: &str, limit: usize) -> Result<Vec<String>, StoreError> {
                self.with(|on| on.user_groups(uid, limit))
            }
            fn is_contact(&self, owner: &str, contact: &str) -> Result<bool, StoreError> {
                self.with(|on| on.is_contact(owner, contact))
            }
            fn contacts(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
                self.with(|on| on.contacts(owner, limit))
            }
            fn password_hash(&self, uid: &str) -> Result<Option<String>, StoreError> {
                self.with(|on| on.password_hash(uid))
            }
        }
    };
}

impl PgStore {
    /// Runs `read` over a pooled connection.
    fn with<T>(
        &self,
        read: impl FnOnce(&On<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let c = self.connection()?;
        read(&On { store: self, c: &c })
    }
}

reads_by_on!(PgStore);

impl Store for PgStore {
    fn lanes(&self) -> usize {
        // Two transactions at once keep two backends busy, which is what a
        // round of distinct conversations needs; a connection stays for reads.
        let pool = self.inner.pool.status().max_size;
        LANES.min(pool.saturating_sub(1)).max(1)
    }

    fn begin(&self) -> Result<Box<dyn Round + '_>, StoreError> {
        // BEGIN goes with the round's first statement (`PgRound::call`).
        Ok(Box::new(PgRound {
            store: self,
            c: Some(self.connection()?),
            begun: std::cell::Cell::new(false),
        }))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every commit made durable was durable before it returned.
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let c = self.connection()?;
        self.run(async {
            let row = c
                .query_one("SELECT pg_database_size(current_database())::bigint", &[])
                .await
                .map_err(pg_error)?;
            Ok(u64_of(row.get(0)))
        })
    }

    fn retained(&self) -> Result<Vec<(String, Bytes, u8)>, StoreError> {
        let c = self.connection()?;
        self.run(accounts::retained(&c))
    }

    fn queued_events(&self, hook: &str, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let c = self.connection()?;
        self.run(messages::queued_events(&c, hook, limit))
    }

    fn count_events(&self, hook: &str) -> Result<usize, StoreError> {
        let c = self.connection()?;
        self.run(messages::count_events(&c, hook))
    }

    fn lead(&self, job: &str) -> Result<Option<Box<dyn super::Lease>>, StoreError> {
        let c = self.connection()?;
        // A session-level advisory lock, keyed by a hash every process computes
        // alike (FNV-1a; the migrations' lock is a small constant apart).
        let key = job.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let key = i64::from_ne_bytes(key.to_ne_bytes());
        let got: bool = self.run(async {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map(|r| r.get(0))
                .map_err(pg_error)
        })?;
        if !got {
            return Ok(None);
        }
        // The lock lives with this session: the connection leaves the pool for
        // the lease, and closes (releasing it) when the lease goes.
        Ok(Some(Box::new(PgLease {
            client: deadpool_postgres::Object::take(c),
        })))
    }

    fn is_available(&self) -> bool {
        self.inner.available.load(Ordering::Acquire)
    }
}

/// An advisory lock held on a connection of its own.
struct PgLease {
    client: ClientWrapper,
}

impl super::Lease for PgLease {
    fn held(&self) -> bool {
        !self.client.is_closed()
    }
}

/// One commit round: a transaction on one pooled connection.
struct PgRound<'s> {
    store: &'s PgStore,
    /// `None` once committed.
    c: Option<deadpool_postgres::Object>,
    /// Whether BEGIN was sent: a round that ran nothing commits nothing.
    begun: std::cell::Cell<bool>,
}

impl Drop for PgRound<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.c.take() {
            // Not committed: the connection leaves the pool and closes, and the
            // server rolls the transaction back.
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

impl PgRound<'_> {
    fn client(&self) -> Result<&ClientWrapper, StoreError> {
        self.c
            .as_deref()
            .ok_or_else(|| StoreError::Engine("the round is over".into()))
    }

    fn with<T>(
        &self,
        read: impl FnOnce(&On<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if !self.begun.get() {
            self.call(|_| async { Ok(()) })?;
        }
        read(&On {
            store: self.store,
            c: self.client()?,
        })
    }

    /// Runs `op` in the round's transaction, sending BEGIN first if the round
    /// has not yet: both go out at once, pipelined on the connection, which
    /// saves a round trip per round. (BEGIN on a pooled connection fails only
    /// with the connection, and then `op` fails too.)
    fn call<'c, T, F>(&'c self, op: impl FnOnce(&'c ClientWrapper) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + 'c,
    {
        let c = self.client()?;
        if self.begun.replace(true) {
            return self.store.run(op(c));
        }
        self.store.run(async {
            let begin = async { c.batch_execute("BEGIN").await.map_err(pg_error) };
            let ((), out) = tokio::try_join!(begin, op(c))?;
            Ok(out)
        })
    }
}

reads_by_on!(PgRound<'_>);

impl Round for PgRound<'_> {
    fn append(&mut self, sends: &[NewMessage], now_ms: u64) -> Result<Vec<Appended>, StoreError> {
        if sends.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = self.store.inner.idempotency_ttl_ms;
        self.call(|c| messages::append(c, sends, now_ms, ttl))
    }

    fn ack(&mut self, uid: &str, cursors: &[(ConvId, u64)]) -> Result<(), StoreError> {
        self.call(|c| messages::ack(c, uid, cursors))
    }

    fn write_groups(&mut self, writes: &[GroupWrite]) -> Result<(), StoreError> {
        self.call(|c| async move {
            for w in writes {
                groups::write(c, w).await?;
            }
            Ok(())
        })
    }

    fn set_contact(&mut self, owner: &str, contact: &str, on: bool) -> Result<bool, StoreError> {
        self.call(|c| groups::set_contact(c, owner, contact, on))
    }

    fn create_account(&mut self, uid: &str, password_hash: &str) -> Result<bool, StoreError> {
        self.call(|c| accounts::create(c, uid, password_hash))
    }

    fn put_retained(
        &mut self,
        changes: &[(String, Option<(Bytes, u8)>)],
    ) -> Result<(), StoreError> {
        self.call(|c| accounts::put_retained(c, changes))
    }

    fn expire_idempotency(&mut self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.call(|c| messages::expire_idempotency(c, now_ms, limit))
    }

    fn expire_messages(&mut self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.call(|c| messages::expire_messages(c, before_ms, limit))
    }

    fn purge(&mut self, conv: &ConvId, through: u64, limit: usize) -> Result<usize, StoreError> {
        self.call(|c| messages::purge(c, conv, through, limit))
    }

    fn amend(&mut self, conv: &ConvId, seq: u64, json: &[u8]) -> Result<bool, StoreError> {
        self.call(|c| messages::amend(c, conv, seq, json))
    }

    fn edits_of(&mut self, conv: &ConvId, seq: u64) -> Result<Vec<u64>, StoreError> {
        self.call(|c| messages::edits_of(c, conv, seq))
    }

    fn enqueue_events(&mut self, hook: &str, events: &[Vec<u8>]) -> Result<(), StoreError> {
        self.call(|c| messages::enqueue_events(c, hook, events))
    }

    fn drop_events(&mut self, hook: &str, ids: &[u64]) -> Result<(), StoreError> {
        self.call(|c| messages::drop_events(c, hook, ids))
    }

    fn commit(mut self: Box<Self>, durable: bool) -> Result<(), StoreError> {
        let c = self
            .c
            .take()
            .ok_or_else(|| StoreError::Engine("the round is over".into()))?;
        if !self.begun.get() {
            // Nothing ran: nothing to commit, and the connection goes back.
            return Ok(());
        }
        // `store.flush = "interval"`: this commit need not wait for the WAL.
        let sql = if durable {
            "COMMIT"
        } else {
            "SET LOCAL synchronous_commit = off; COMMIT"
        };
        let committed = self
            .store
            .run(async { c.batch_execute(sql).await.map_err(pg_error) });
        if committed.is_err() {
            // Whatever state the connection is in, it is not reused.
            drop(deadpool_postgres::Object::take(c));
        }
        committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatabaseUrl, Engine};
    use crate::store::conformance;
    use imqtt_tests::postgres::Postgres;

    fn open(url: String) -> PgStore {
        let cfg = StoreConfig {
            engine: Engine::Postgres,
            url: DatabaseUrl::new(url),
            pool: 4,
            ..StoreConfig::default()
        };
        PgStore::open(&cfg, conformance::TTL).expect("open")
    }

    #[test]
    fn the_postgres_engine_passes_the_store_conformance_suite() {
        let Some(pg) = Postgres::start() else { return };
        conformance::run(&mut || {
            let store = open(pg.database());
            (
                Box::new(store) as Box<dyn Store>,
                Box::new(()) as Box<dyn std::any::Any>,
            )
        });
        // A reopened database has its data, and its schema is not made twice.
        let url = pg.database();
        let now = conformance::write_sample(&open(url.clone()));
        conformance::check_sample(&open(url), now);
    }

    fn send(to: &str, key: Option<&str>) -> NewMessage {
        let conv: ConvId = format!("dm:ann:{to}").parse().expect("conv");
        NewMessage {
            from: "ann".into(),
            conv,
            to: to.into(),
            client_msg_id: key.map(str::to_owned),
            idempotency_key: key.map(str::to_owned),
            qos: imqtt_wire::Qos::AtLeastOnce,
            body: serde_json::json!("hi"),
            revision: None,
        }
    }

    #[test]
    fn a_key_another_process_stores_first_turns_a_send_into_its_retry_without_a_gap() {
        let Some(pg) = Postgres::start() else { return };
        let url = pg.database();
        let (one, two) = (open(url.clone()), open(url));
        let mut first = one.begin().expect("begin");
        let stored = first
            .append(&[send("bob", Some("k"))], 1_000)
            .expect("append");
        let original = stored[0].envelope.clone();
        std::thread::scope(|scope| {
            // The second process looks "k" up before the first commits, so it
            // meets the key only at its insert, which waits for that commit.
            let racing = scope.spawn(|| {
                let mut round = two.begin().expect("begin");
                let out = round
                    .append(&[send("carl", Some("k")), send("carl", Some("k2"))], 2_000)
                    .expect("append");
                round.commit(true).expect("commit");
                out
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            first.commit(true).expect("commit");
            let out = racing.join().expect("thread");
            assert!(out[0].duplicate, "{out:?}");
            assert_eq!(out[0].envelope.id, original.id);
            assert_eq!(out[0].envelope.conv.as_str(), "dm:ann:bob");
            assert!(!out[1].duplicate);
            assert_eq!(
                out[1].envelope.seq, 1,
                "the seq taken for the retry is given back"
            );
        });
        let carl: ConvId = "dm:ann:carl".parse().expect("conv");
        assert_eq!(two.head(&carl).expect("head").seq, 1);
        let bob: ConvId = "dm:ann:bob".parse().expect("conv");
        assert_eq!(two.head(&bob).expect("head").seq, 1);
    }

    #[test]
    fn a_version_3_schema_moves_its_conversation_lists_into_the_cursors() {
        let Some(pg) = Postgres::start() else { return };
        let url = pg.database();
        let db = url.rsplit('/').next().expect("db").to_owned();
        for sql in &schema::MIGRATIONS[..3] {
            pg.psql(&db, sql);
        }
        pg.psql(
            &db,
            "INSERT INTO imqtt_schema VALUES (3);
             INSERT INTO imqtt_heads VALUES ('dm:ann:bob', 4, 10), ('dm:ann:cat', 1, 20),
                 ('group:g', 9, 30);
             INSERT INTO imqtt_user_convs VALUES ('bob', 'dm:ann:bob'), ('ann', 'dm:ann:bob'),
                 ('ann', 'dm:ann:cat');
             INSERT INTO imqtt_cursors VALUES ('ann', 'dm:ann:bob', 4), ('ann', 'group:g', 9);",
        );
        let store = open(url);
        assert_eq!(pg.psql(&db, "SELECT version FROM imqtt_schema"), "4");
        let listed = |uid: &str| -> Vec<(String, u64, u64)> {
            store
                .conversations(uid, 10)
                .expect("list")
                .into_iter()
                .map(|s| (s.conv.as_str().to_owned(), s.head.seq, s.cursor))
                .collect()
        };
        // The group's cursor stays, unlisted; a list entry without a cursor
        // is listed at 0.
        assert_eq!(
            listed("ann"),
            vec![("dm:ann:cat".into(), 1, 0), ("dm:ann:bob".into(), 4, 4)]
        );
        assert_eq!(listed("bob"), vec![("dm:ann:bob".into(), 4, 0)]);
        let group: ConvId = "group:g".parse().expect("conv");
        assert_eq!(store.cursor("ann", &group).expect("cursor"), 9);
    }

    #[test]
    fn a_copy_of_a_sled_store_holds_everything_and_a_second_copy_is_refused() {
        let Some(pg) = Postgres::start() else { return };
        let sled = crate::store::SledStore::temporary(conformance::TTL).expect("sled");
        let now = conformance::write_sample(&sled);
        let url = pg.database();
        let to = open(url.clone());
        let counts = to
            .import(sled.records(crate::commit::now_ms()))
            .expect("copy");
        assert_eq!(counts.get("messages"), Some(&3));
        assert_eq!(counts.get("accounts"), Some(&1));
        assert_eq!(counts.get("groups"), Some(&1));
        assert_eq!(counts.get("idempotency keys"), Some(&1));
        conformance::check_sample(&to, now);
        let again = open(url).import(sled.records(crate::commit::now_ms()));
        assert!(
            matches!(&again, Err(StoreError::Engine(m)) if m.contains("already holds")),
            "{again:?}"
        );
    }

    #[test]
    fn a_database_with_foreign_tables_or_a_newer_schema_is_refused_naming_store_url() {
        let Some(pg) = Postgres::start() else { return };
        let url = pg.database();
        let db = url.rsplit('/').next().expect("db").to_owned();
        pg.psql(&db, "CREATE TABLE someone_elses (x int)");
        let cfg = |url: &str| StoreConfig {
            engine: Engine::Postgres,
            url: DatabaseUrl::new(url),
            ..StoreConfig::default()
        };
        let err = PgStore::open(&cfg(&url), conformance::TTL).expect_err("foreign");
        let line = err.to_string();
        assert!(line.starts_with("store.url "), "{line}");
        assert!(line.contains("someone_elses"), "{line}");
        let newer = pg.database();
        drop(open(newer.clone()));
        let db = newer.rsplit('/').next().expect("db").to_owned();
        pg.psql(&db, "UPDATE imqtt_schema SET version = 99");
        let line = PgStore::open(&cfg(&newer), conformance::TTL)
            .expect_err("newer")
            .to_string();
        assert!(line.contains("version 99"), "{line}");
    }

    #[test]
    fn a_password_in_store_url_is_never_printed() {
        let url = DatabaseUrl::new("postgres://imqtt:s3cret@127.0.0.1:1/db?host=/tmp");
        assert_eq!(
            url.redacted(),
            "postgres://imqtt:<redacted>@127.0.0.1:1/db?host=/tmp"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        // Nothing listens on port 1: the error names the key, not the password.
        let cfg = StoreConfig {
            engine: Engine::Postgres,
            url,
            ..StoreConfig::default()
        };
        let line = PgStore::open(&cfg, conformance::TTL)
            .expect_err("no server")
            .to_string();
        assert!(line.starts_with("store.url "), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
    }
}
