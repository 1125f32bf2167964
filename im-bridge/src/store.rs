//! The durable store. For now it opens the data directory (readiness depends on it)
//! and flushes on shutdown; conversations, cursors and the rest build on it.

use crate::config::StoreConfig;
use crate::error::{Error, Result};

/// The sled database under `store.path`.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (creating if needed) the store. sled locks the directory, so a second
    /// server on the same path fails here with [`Error::StoreInUse`] instead of
    /// corrupting it. Blocks while sled reads its log: call it off the runtime.
    pub fn open(cfg: &StoreConfig) -> Result<Store> {
        let opened = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(cfg.cache_capacity.0)
            .open();
        match opened {
            Ok(db) => {
                tracing::info!(path = %cfg.path.display(), "store opened");
                Ok(Store { db })
            }
            Err(e) if is_lock_conflict(&e) => Err(Error::StoreInUse {
                path: cfg.path.clone(),
            }),
            Err(cause) => Err(Error::StoreOpen {
                path: cfg.path.clone(),
                cause,
            }),
        }
    }

    /// Writes every pending change to disk.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_the_same_directory_is_store_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = StoreConfig {
            path: dir.path().join("data"),
            ..StoreConfig::default()
        };
        let _first = Store::open(&cfg).expect("first open");
        let err = Store::open(&cfg).expect_err("locked");
        assert!(matches!(err, Error::StoreInUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "store.path {:?} is in use by another imqtt process",
                cfg.path
            )
        );
    }
}
