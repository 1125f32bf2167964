//! Built-in accounts and MQTT retained messages: `imqtt_accounts`,
//! `imqtt_retained`.

use bytes::Bytes;
use deadpool_postgres::ClientWrapper;

use super::pg_error;
use crate::store::StoreError;

pub(super) async fn password_hash(
    c: &ClientWrapper,
    uid: &str,
) -> Result<Option<String>, StoreError> {
    let st = c
        .prepare_cached("SELECT hash FROM imqtt_accounts WHERE uid = $1")
        .await
        .map_err(pg_error)?;
    Ok(c.query_opt(&st, &[&uid])
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0)))
}

/// Creates the account once: a second insert of the id (in this round, or by
/// another process, which this one waits for) inserts nothing.
pub(super) async fn create(c: &ClientWrapper, uid: &str, hash: &str) -> Result<bool, StoreError> {
    let st = c
        .prepare_cached(
            "INSERT INTO imqtt_accounts (uid, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    Ok(c.execute(&st, &[&uid, &hash]).await.map_err(pg_error)? == 1)
}

pub(super) async fn put_retained(
    c: &ClientWrapper,
    changes: &[(String, Option<(Bytes, u8)>)],
) -> Result<(), StoreError> {
    let (mut topics, mut qos, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    let mut cleared = Vec::new();
    // The latest change of a topic wins (one row may be touched once per statement).
    let mut latest = std::collections::HashMap::new();
    for (topic, now) in changes {
        latest.insert(topic.as_str(), now);
    }
    for (topic, now) in latest {
        match now {
            Some((payload, q)) => {
                topics.push(topic);
                qos.push(i16::from(*q));
                payloads.push(payload.to_vec());
            }
            None => cleared.push(topic),
        }
    }
    if !topics.is_empty() {
        let st = c
            .prepare_cached(
                "INSERT INTO imqtt_retained (topic, qos, payload)
                 SELECT * FROM unnest($1::text[], $2::smallint[], $3::bytea[])
                 ON CONFLICT (topic) DO UPDATE SET qos = EXCLUDED.qos, payload = EXCLUDED.payload",
            )
            .await
            .map_err(pg_error)?;
        c.execute(&st, &[&topics, &qos, &payloads])
            .await
            .map_err(pg_error)?;
    }
    if !cleared.is_empty() {
        let st = c
            .prepare_cached("DELETE FROM imqtt_retained WHERE topic = ANY($1::text[])")
            .await
            .map_err(pg_error)?;
        c.execute(&st, &[&cleared]).await.map_err(pg_error)?;
    }
    Ok(())
}

pub(super) async fn retained(c: &ClientWrapper) -> Result<Vec<(String, Bytes, u8)>, StoreError> {
    let rows = c
        .query(
            "SELECT topic, payload, qos FROM imqtt_retained ORDER BY topic",
            &[],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            let qos: i16 = r.get(2);
            Ok((
                r.get(0),
                Bytes::from(r.get::<_, Vec<u8>>(1)),
                u8::try_from(qos).map_err(|_| StoreError::Corrupt("retained"))?,
            ))
        })
        .collect()
}
