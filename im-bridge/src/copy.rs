//! `imqtt store copy --to URL`: the embedded store that the config names (the
//! server stopped: sled's lock refuses a running one) copied into an empty
//! PostgreSQL database, with everything in it; how an embedded deployment moves
//! to a cluster.

use std::collections::BTreeMap;

use crate::config::{Config, DatabaseUrl, Engine, StoreConfig};
use crate::error::{Error, Result};
use crate::store::{PgStore, SledStore};

/// Copies the config's sled store into the database at `url`; how many of each
/// kind of record it copied.
pub fn copy(config: &Config, url: &str) -> Result<BTreeMap<&'static str, u64>> {
    if config.store.engine != Engine::Sled {
        return Err(Error::BadRequest(
            "store copy reads the embedded store: the config's store.engine must be \"sled\""
                .into(),
        ));
    }
    let from = SledStore::open(&config.store, config.delivery.idempotency_ttl.get())?;
    let target = StoreConfig {
        engine: Engine::Postgres,
        url: DatabaseUrl::new(url),
        pool: 2,
        ..StoreConfig::default()
    };
    let problems = target.validate();
    if let Some((key, why)) = problems.first() {
        return Err(Error::BadRequest(format!("--to: {key} {why}")));
    }
    let to = PgStore::open(&target, config.delivery.idempotency_ttl.get())?;
    let counts = to
        .import(from.records(crate::commit::now_ms()))
        .map_err(|e| Error::Database {
            url: target.url.redacted(),
            message: e.to_string(),
        })?;
    Ok(counts)
}
