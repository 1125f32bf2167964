//! The disk's fsync rate, measured beside the server's data directory, so a durable
//! send rate can be read against it: with group commit, sends per second above
//! fsyncs per second mean several sends shared each flush.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes written before each fsync: one page, as a small commit appends.
const BLOCK: usize = 4096;

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FsyncRate {
    /// Blocks written and fsynced.
    pub(crate) fsyncs: u64,
    /// How long that took.
    pub(crate) elapsed: Duration,
}

impl FsyncRate {
    /// Fsyncs per second.
    pub(crate) fn per_sec(&self) -> f64 {
        super::per_sec(self.fsyncs as usize, self.elapsed)
    }
}

/// Appends 4 KiB blocks to a fresh temporary file in `dir`, each followed by an
/// fsync, for about `duration`; the file is removed afterwards. Blocking.
pub(crate) fn probe(dir: &Path, duration: Duration) -> io::Result<FsyncRate> {
    let mut file = tempfile::tempfile_in(dir)?;
    let block = [0x5au8; BLOCK];
    let start = Instant::now();
    let mut fsyncs = 0;
    while fsyncs == 0 || start.elapsed() < duration {
        file.write_all(&block)?;
        file.sync_all()?;
        fsyncs += 1;
    }
    Ok(FsyncRate {
        fsyncs,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_counts_at_least_one_fsync_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rate = probe(dir.path(), Duration::ZERO).expect("probe");
        assert_eq!(rate.fsyncs, 1);
        assert!(rate.per_sec() > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }
}
