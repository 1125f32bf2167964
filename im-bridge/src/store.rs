//! The durable store. For now it opens the data directory (readiness depends on it)
//! and flushes on shutdown; conversations, cursors and the rest build on it.

use crate::config::StoreConfig;
use crate::error::Result;

/// The sled database under `store.path`.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (creating if needed) the store. sled locks the directory, so a second
    /// server on the same path fails here with a clear error instead of corrupting it.
    pub fn open(cfg: &StoreConfig) -> Result<Store> {
        let db = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(cfg.cache_capacity.0)
            .open()?;
        Ok(Store { db })
    }

    /// Writes every pending change to disk.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }
}
