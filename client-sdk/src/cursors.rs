//! Where the client remembers, per conversation, the highest seq the application
//! has taken, so that a restarted app resumes exactly there: [`CursorStore`], with
//! [`MemoryCursors`] (the default: a restart resumes from the server's cursor,
//! what was acked) and [`FileCursors`] (an append-only file).

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::Error;
use crate::wire::ConvId;

/// Keeps the highest seq handed to the application per conversation. `save` is
/// called for every message as the application takes it, so it must be cheap;
/// a value saved is never lower than one saved before for the same conversation.
pub trait CursorStore: Send + Sync + fmt::Debug {
    /// Every cursor saved so far.
    fn load(&self) -> Result<HashMap<ConvId, u64>, Error>;
    /// Records that the application took `seq` of `conv`.
    fn save(&self, conv: &ConvId, seq: u64) -> Result<(), Error>;
}

/// Cursors in memory only: a restarted app resumes from the server's cursors.
#[derive(Debug, Default)]
pub struct MemoryCursors {
    map: Mutex<HashMap<ConvId, u64>>,
}

impl CursorStore for MemoryCursors {
    fn load(&self) -> Result<HashMap<ConvId, u64>, Error> {
        Ok(self.map.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn save(&self, conv: &ConvId, seq: u64) -> Result<(), Error> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let c = map.entry(conv.clone()).or_default();
        *c = (*c).max(seq);
        Ok(())
    }
}

/// Lines of the log beyond the live cursors after which it is rewritten.
const COMPACT_AFTER: usize = 4096;

/// Cursors in a file: one `conv seq` line appended per save (a write to the
/// kernel, so a crash of the app loses nothing it wrote; no fsync, so a power loss
/// may lose the last ones and replay those messages), rewritten to one line per
/// conversation (temp file, then rename) once it has grown by 4,096
/// lines. A torn or unreadable line is skipped on load.
#[derive(Debug)]
pub struct FileCursors {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    file: File,
    map: HashMap<ConvId, u64>,
    appended: usize,
}

impl FileCursors {
    /// Opens (or creates) the cursor file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<FileCursors, Error> {
        let path = path.as_ref().to_owned();
        let map = read(&path)?;
        let file = append(&path)?;
        let cursors = FileCursors {
            path,
            state: Mutex::new(FileState {
                file,
                map,
                appended: 0,
            }),
        };
        // Start from a compact file, so the log never outgrows its live cursors
        // by more than COMPACT_AFTER lines.
        {
            let mut s = cursors.state.lock().unwrap_or_else(|p| p.into_inner());
            cursors.compact(&mut s)?;
        }
        Ok(cursors)
    }

    fn compact(&self, s: &mut FileState) -> Result<(), Error> {
        let tmp = self.path.with_extension("tmp");
        let mut text = String::new();
        for (conv, seq) in &s.map {
            text.push_str(&format!("{conv} {seq}\n"));
        }
        std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io(&self.path, e))?;
        s.file = append(&self.path)?;
        s.appended = 0;
        Ok(())
    }
}

impl CursorStore for FileCursors {
    fn load(&self) -> Result<HashMap<ConvId, u64>, Error> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .clone())
    }

    fn save(&self, conv: &ConvId, seq: u64) -> Result<(), Error> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let c = s.map.entry(conv.clone()).or_default();
        if *c >= seq {
            return Ok(());
        }
        *c = seq;
        let line = format!("{conv} {seq}\n");
        s.file
            .write_all(line.as_bytes())
            .map_err(|e| io(&self.path, e))?;
        s.appended += 1;
        if s.appended >= COMPACT_AFTER + s.map.len() {
            self.compact(&mut s)?;
        }
        Ok(())
    }
}

fn append(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io(path, e))
}

fn read(path: &Path) -> Result<HashMap<ConvId, u64>, Error> {
    let mut map: HashMap<ConvId, u64> = HashMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => return Err(io(path, e)),
    };
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| io(path, e))?;
        let parsed = line
            .split_once(' ')
            .and_then(|(c, s)| Some((c.parse::<ConvId>().ok()?, s.trim().parse::<u64>().ok()?)));
        // A line torn by a crash mid-write is the last one; skipping it replays
        // at most that message.
        if let Some((conv, seq)) = parsed {
            let c = map.entry(conv).or_default();
            *c = (*c).max(seq);
        }
    }
    Ok(map)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Cursors(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &str) -> ConvId {
        s.parse().expect("conv")
    }

    #[test]
    fn file_cursors_survive_a_reopen_and_never_go_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cursors");
        {
            let c = FileCursors::open(&path).expect("open");
            c.save(&conv("dm:a:b"), 3).expect("save");
            c.save(&conv("dm:a:b"), 5).expect("save");
            c.save(&conv("dm:a:b"), 4).expect("save");
            c.save(&conv("group:g"), 1).expect("save");
        }
        let c = FileCursors::open(&path).expect("reopen");
        let map = c.load().expect("load");
        assert_eq!(map.get(&conv("dm:a:b")), Some(&5));
        assert_eq!(map.get(&conv("group:g")), Some(&1));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn the_log_is_compacted_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cursors");
        let c = FileCursors::open(&path).expect("open");
        for seq in 1..=10_000 {
            c.save(&conv("dm:a:b"), seq).expect("save");
        }
        drop(c);
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines <= COMPACT_AFTER + 1, "{lines} lines");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        // A crash mid-write leaves a torn last line.
        f.write_all(b"dm:a:b 20000\nnot a line\ngroup:g 7\ngroup:g")
            .expect("write");
        let map = FileCursors::open(&path)
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(map.get(&conv("dm:a:b")), Some(&20_000));
        assert_eq!(map.get(&conv("group:g")), Some(&7));
    }

    #[test]
    fn memory_cursors_keep_the_highest() {
        let c = MemoryCursors::default();
        c.save(&conv("sys:u"), 9).expect("save");
        c.save(&conv("sys:u"), 2).expect("save");
        assert_eq!(c.load().expect("load").get(&conv("sys:u")), Some(&9));
    }
}
