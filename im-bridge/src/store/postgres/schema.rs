//! The schema and its versioned migrations. The binary makes its tables in an
//! empty database and moves an older schema of its own forward, each migration in
//! one transaction with its version, under an advisory lock so that processes
//! starting together migrate once. A newer schema than the binary knows, or a
//! table it did not make, stops startup.
//!
//! Ids and conversation ids are `text COLLATE "C"`, so that they sort by their
//! bytes as on sled; seqs and times are `bigint`.

use deadpool_postgres::ClientWrapper;

use super::pg_error;
use crate::store::StoreError;

/// The migrations, the schema's version `i + 1` being `MIGRATIONS[i]` applied.
pub(super) const MIGRATIONS: [&str; 4] = [
    r#"
CREATE TABLE imqtt_schema (version integer NOT NULL);
CREATE TABLE imqtt_messages (
    conv text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    ts bigint NOT NULL,
    envelope bytea NOT NULL,
    PRIMARY KEY (conv, seq)
);
CREATE INDEX imqtt_messages_by_time ON imqtt_messages (ts);
CREATE TABLE imqtt_heads (
    conv text COLLATE "C" PRIMARY KEY,
    head bigint NOT NULL,
    last_ts bigint NOT NULL
);
CREATE TABLE imqtt_cursors (
    uid text COLLATE "C" NOT NULL,
    conv text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (uid, conv)
);
CREATE TABLE imqtt_user_convs (
    uid text COLLATE "C" NOT NULL,
    conv text COLLATE "C" NOT NULL,
    PRIMARY KEY (uid, conv)
);
CREATE TABLE imqtt_idempotency (
    sender text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    conv text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    expires bigint NOT NULL,
    PRIMARY KEY (sender, key)
);
CREATE INDEX imqtt_idempotency_by_expiry ON imqtt_idempotency (expires);
CREATE TABLE imqtt_accounts (
    uid text COLLATE "C" PRIMARY KEY,
    hash text NOT NULL
);
CREATE TABLE imqtt_retained (
    topic text COLLATE "C" PRIMARY KEY,
    qos smallint NOT NULL,
    payload bytea NOT NULL
);
CREATE TABLE imqtt_groups (
    gid text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);
CREATE TABLE imqtt_members (
    gid text COLLATE "C" NOT NULL,
    uid text COLLATE "C" NOT NULL,
    role smallint NOT NULL,
    since bigint NOT NULL,
    until bigint,
    PRIMARY KEY (gid, uid)
);
CREATE INDEX imqtt_groups_of_user ON imqtt_members (uid, gid) WHERE until IS NULL;
CREATE TABLE imqtt_contacts (
    owner text COLLATE "C" NOT NULL,
    contact text COLLATE "C" NOT NULL,
    PRIMARY KEY (owner, contact)
);
"#,
    // 2: an edit names the seq it edits, so that a recall finds the edits to clear.
    r#"
ALTER TABLE imqtt_messages ADD COLUMN edits bigint;
CREATE INDEX imqtt_messages_edits ON imqtt_messages (conv, edits) WHERE edits IS NOT NULL;
"#,
    // 3: the webhooks' queues, written in the commit of the messages they tell of.
    r#"
CREATE TABLE imqtt_webhook_events (
    hook text COLLATE "C" NOT NULL,
    id bigserial,
    event bytea NOT NULL,
    PRIMARY KEY (hook, id)
);
"#,
    // 4: a user's conversation list is its cursor rows marked `listed`, so a
    // message to a new conversation writes one row per participant, not two.
    r#"
ALTER TABLE imqtt_cursors ADD COLUMN listed boolean NOT NULL DEFAULT false;
INSERT INTO imqtt_cursors (uid, conv, seq, listed)
    SELECT uid, conv, 0, true FROM imqtt_user_convs
    ON CONFLICT (uid, conv) DO UPDATE SET listed = true;
DROP TABLE imqtt_user_convs;
"#,
];

/// Tables of older schemas that a migration removes: found before migrating,
/// they are imqtt's own.
const RETIRED: [&str; 1] = ["imqtt_user_convs"];

/// Every table the migrations make.
pub(super) const TABLES: [&str; 11] = [
    "imqtt_schema",
    "imqtt_messages",
    "imqtt_heads",
    "imqtt_cursors",
    "imqtt_idempotency",
    "imqtt_accounts",
    "imqtt_retained",
    "imqtt_groups",
    "imqtt_members",
    "imqtt_contacts",
    "imqtt_webhook_events",
];

/// The advisory lock migrating processes take (any fixed number; "imqt").
const LOCK: i64 = 0x696d_7174;

/// What stops startup: the database is not one this binary may use.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The schema is newer than this binary's.
    Newer { found: i32, known: i32 },
    /// Tables imqtt did not make.
    Foreign(Vec<String>),
    /// The database failed.
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Refused {
    fn from(e: tokio_postgres::Error) -> Self {
        Refused::Store(pg_error(e))
    }
}

/// Makes or migrates the schema; returns the migrations applied.
pub(super) async fn migrate(c: &mut ClientWrapper) -> Result<usize, Refused> {
    c.execute("SELECT pg_advisory_lock($1)", &[&LOCK]).await?;
    let result = migrate_locked(c).await;
    // Released also when the connection closes.
    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&LOCK]).await;
    result
}

async fn migrate_locked(c: &mut ClientWrapper) -> Result<usize, Refused> {
    let rows = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema()",
            &[],
        )
        .await?;
    let tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let foreign: Vec<String> = tables
        .iter()
        .filter(|t| !TABLES.contains(&t.as_str()) && !RETIRED.contains(&t.as_str()))
        .cloned()
        .collect();
    if !foreign.is_empty() {
        return Err(Refused::Foreign(foreign));
    }
    let known = MIGRATIONS.len() as i32;
    let found: i32 = if tables.iter().any(|t| t == "imqtt_schema") {
        c.query_opt("SELECT version FROM imqtt_schema", &[])
            .await?
            .map_or(0, |r| r.get(0))
    } else {
        0
    };
    if found > known {
        return Err(Refused::Newer { found, known });
    }
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        let tx = c.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute("DELETE FROM imqtt_schema", &[]).await?;
        tx.execute(
            "INSERT INTO imqtt_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tx.commit().await?;
        applied += 1;
    }
    Ok(applied)
}

/// Whether any imqtt table holds a row (`imqtt store copy` wants none).
pub(super) async fn holds_data(c: &ClientWrapper) -> Result<bool, StoreError> {
    for table in TABLES.iter().filter(|t| **t != "imqtt_schema") {
        let row = c
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
            .await
            .map_err(pg_error)?;
        if row.get::<_, bool>(0) {
            return Ok(true);
        }
    }
    Ok(false)
}
