//! Filling an empty database with another engine's [`Record`]s (`imqtt store
//! copy`): one transaction, so a copy that fails leaves the database empty; rows
//! inserted a few thousand at a time with multi-row `unnest` statements.

use std::collections::BTreeMap;

use deadpool_postgres::ClientWrapper;

use super::{PgStore, i64_of, pg_error};
use crate::store::{Record, StoreError};

/// Rows per insert.
const CHUNK: usize = 2000;

impl PgStore {
    /// Copies `records` in, in one transaction, into a database that holds no
    /// imqtt data (else [`StoreError::Engine`] saying so, and nothing is
    /// written); returns how many of each kind.
    pub fn import(
        &self,
        records: impl Iterator<Item = Result<Record, StoreError>>,
    ) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        if self.holds_data()? {
            return Err(StoreError::Engine(
                "the database already holds imqtt data; copy into an empty one".into(),
            ));
        }
        let c = self.connection()?;
        self.run(async { c.batch_execute("BEGIN").await.map_err(pg_error) })?;
        let mut counts = BTreeMap::new();
        let mut chunk: Vec<Record> = Vec::with_capacity(CHUNK);
        for record in records {
            let record = record?;
            if chunk.len() == CHUNK
                || chunk
                    .first()
                    .is_some_and(|first| first.kind() != record.kind())
            {
                self.run(insert(&c, &chunk))?;
                chunk.clear();
            }
            *counts.entry(record.kind()).or_insert(0) += 1;
            chunk.push(record);
        }
        self.run(insert(&c, &chunk))?;
        self.run(async { c.batch_execute("COMMIT").await.map_err(pg_error) })?;
        Ok(counts)
    }
}

/// Inserts records of one kind.
async fn insert(c: &ClientWrapper, records: &[Record]) -> Result<(), StoreError> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    macro_rules! columns {
        ($($v:ident),*) => { $(let mut $v = Vec::with_capacity(records.len());)* };
    }
    match first {
        Record::Message { .. } => {
            columns!(conv, seq, ts, json, edits);
            for r in records {
                if let Record::Message { conv: c0, seq: s, ts: t, json: j } = r {
                    conv.push(c0.as_str());
                    seq.push(i64_of(*s));
                    ts.push(i64_of(*t));
                    json.push(j.as_slice());
                    // What an edit edits, as the engine keeps it beside the envelope.
                    let e = serde_json::from_slice::<imqtt_wire::Envelope>(j)
                        .ok()
                        .filter(|e| e.kind == Some(imqtt_wire::Kind::Edit))
                        .and_then(|e| e.ref_seq)
                        .map(i64_of);
                    edits.push(e);
                }
            }
            c.execute(
                "INSERT INTO imqtt_messages (conv, seq, ts, envelope, edits)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[],
                     $5::bigint[])",
                &[&conv, &seq, &ts, &json, &edits],
            )
            .await
        }
        Record::Head { .. } => {
            columns!(conv, head, last_ts);
            for r in records {
                if let Record::Head { conv: c0, head: h } = r {
                    conv.push(c0.as_str());
                    head.push(i64_of(h.seq));
                    last_ts.push(i64_of(h.last_ts));
                }
            }
            c.execute(
                "INSERT INTO imqtt_heads (conv, head, last_ts)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])",
                &[&conv, &head, &last_ts],
            )
            .await
        }
        Record::Cursor { .. } => {
            columns!(uid, conv, seq);
            for r in records {
                if let Record::Cursor { uid: u, conv: c0, seq: s } = r {
                    uid.push(u.as_str());
                    conv.push(c0.as_str());
                    seq.push(i64_of(*s));
                }
            }
            c.execute(
                // A user's list entry may have come first (`Listed` below).
                "INSERT INTO imqtt_cursors (uid, conv, seq)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                 ON CONFLICT (uid, conv) DO UPDATE SET seq = EXCLUDED.seq",
                &[&uid, &conv, &seq],
            )
            .await
        }
        Record::Listed { .. } => {
            columns!(uid, conv);
            for r in records {
                if let Record::Listed { uid: u, conv: c0 } = r {
                    uid.push(u.as_str());
                    conv.push(c0.as_str());
                }
            }
            c.execute(
                // A listed conversation is a cursor row marked so, at 0 until
                // its `Cursor` record says more.
                "INSERT INTO imqtt_cursors (uid, conv, seq, listed)
                 SELECT uid, conv, 0, true FROM unnest($1::text[], $2::text[]) AS t(uid, conv)
                 ON CONFLICT (uid, conv) DO UPDATE SET listed = true",
                &[&uid, &conv],
            )
            .await
        }
        Record::Idempotency { .. } => {
            columns!(sender, key, conv, seq, expires);
            for r in records {
                if let Record::Idempotency { sender: s0, key: k, conv: c0, seq: s, expires: e } = r {
                    sender.push(s0.as_str());
                    key.push(k.as_str());
                    conv.push(c0.as_str());
                    seq.push(i64_of(*s));
                    expires.push(i64_of(*e));
                }
            }
            c.execute(
                "INSERT INTO imqtt_idempotency (sender, key, conv, seq, expires)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])",
                &[&sender, &key, &conv, &seq, &expires],
            )
            .await
        }
        Record::Account { .. } => {
            columns!(uid, hash);
            for r in records {
                if let Record::Account { uid: u, hash: h } = r {
                    uid.push(u.as_str());
                    hash.push(h.as_str());
                }
            }
            c.execute(
                "INSERT INTO imqtt_accounts (uid, hash) SELECT * FROM unnest($1::text[], $2::text[])",
                &[&uid, &hash],
            )
            .await
        }
        Record::Retained { .. } => {
            columns!(topic, qos, payload);
            for r in records {
                if let Record::Retained { topic: t, qos: q, payload: p } = r {
                    topic.push(t.as_str());
                    qos.push(i16::from(*q));
                    payload.push(p.as_slice());
                }
            }
            c.execute(
                "INSERT INTO imqtt_retained (topic, qos, payload)
                 SELECT * FROM unnest($1::text[], $2::smallint[], $3::bytea[])",
                &[&topic, &qos, &payload],
            )
            .await
        }
        Record::Group(_) => {
            columns!(gid, record);
            for r in records {
                if let Record::Group(g) = r {
                    gid.push(g.id.as_str());
                    record.push(
                        serde_json::to_string(g).map_err(|e| StoreError::Engine(e.to_string()))?,
                    );
                }
            }
            c.execute(
                "INSERT INTO imqtt_groups (gid, record) SELECT * FROM unnest($1::text[], $2::text[])",
                &[&gid, &record],
            )
            .await
        }
        Record::Member { .. } => {
            columns!(gid, uid, role, since, until);
            for r in records {
                if let Record::Member { gid: g, uid: u, membership: m } = r {
                    gid.push(g.as_str());
                    uid.push(u.as_str());
                    role.push(super::groups::role_code(m.role));
                    since.push(i64_of(m.since));
                    until.push(m.until.map(i64_of));
                }
            }
            c.execute(
                "INSERT INTO imqtt_members (gid, uid, role, since, until)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[], $5::bigint[])",
                &[&gid, &uid, &role, &since, &until],
            )
            .await
        }
        Record::Contact { .. } => {
            columns!(owner, contact);
            for r in records {
                if let Record::Contact { owner: o, contact: k } = r {
                    owner.push(o.as_str());
                    contact.push(k.as_str());
                }
            }
            c.execute(
                "INSERT INTO imqtt_contacts (owner, contact) SELECT * FROM unnest($1::text[], $2::text[])",
                &[&owner, &contact],
            )
            .await
        }
    }
    .map(|_| ())
    .map_err(pg_error)
}
