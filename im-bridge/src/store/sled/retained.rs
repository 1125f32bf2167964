//! MQTT retained messages on the sled engine: an append-only file of changes
//! beside sled's (`retained.log` in `store.path`), not sled keys. Kept in sled,
//! each retained message cost about 4 KiB of the server's memory (sled's
//! copy-on-write pages for a key written once and seldom read); here it costs
//! nothing in memory, since the broker holds the retained set anyway and the
//! file is read only at startup.
//!
//! A record is `op(1) topic_len(u16) topic qos(1) payload_len(u32) payload`, op
//! 1 setting the topic's message and 0 clearing it (no qos or payload). A round
//! appends its changes and the commit fsyncs the file with sled's. A torn tail
//! (a crash mid-append, before any answer) is cut off when the file is read.
//! When the file has grown past [`COMPACT_AT`] and twice what is live, it is
//! rewritten with the live messages alone (a new file, fsynced, renamed over).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;

use crate::store::StoreError;

/// The file's name in `store.path`.
pub(super) const FILE: &str = "retained.log";
/// Below this size the file is never rewritten.
const COMPACT_AT: u64 = 4 << 20;

/// One change: a topic's new message (payload, qos), or `None` to clear it.
pub(super) type Change = (String, Option<(Bytes, u8)>);

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("retained messages: {e}"))
}

/// Where the records go.
#[derive(Debug)]
enum Sink {
    File {
        path: PathBuf,
        file: File,
    },
    /// A temporary store's.
    Memory(Vec<u8>),
}

#[derive(Debug)]
struct State {
    sink: Sink,
    /// Bytes in the file.
    len: u64,
    /// Bytes of the records of the live messages.
    live: u64,
    /// Each live topic's record size, by a hash of the topic (16 bytes a topic;
    /// a collision only misjudges when to compact).
    sizes: std::collections::HashMap<u64, u32>,
}

fn topic_hash(topic: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    h.finish()
}

/// The retained messages' file.
#[derive(Debug)]
pub(super) struct RetainedLog {
    state: Mutex<State>,
}

fn encode(out: &mut Vec<u8>, (topic, now): &Change) {
    match now {
        Some((payload, qos)) => {
            out.push(1);
            out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.push(*qos);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        None => {
            out.push(0);
            out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
        }
    }
}

/// The live messages of `bytes`, and where its last whole record ends.
fn fold(bytes: &[u8]) -> (BTreeMap<String, (Bytes, u8)>, usize) {
    let mut live = BTreeMap::new();
    let mut at = 0;
    loop {
        let record = (|| {
            let op = *bytes.get(at)?;
            let n = u16::from_be_bytes(bytes.get(at + 1..at + 3)?.try_into().ok()?) as usize;
            let topic = std::str::from_utf8(bytes.get(at + 3..at + 3 + n)?).ok()?;
            let mut end = at + 3 + n;
            let value = match op {
                0 => None,
                1 => {
                    let qos = *bytes.get(end)?;
                    let len =
                        u32::from_be_bytes(bytes.get(end + 1..end + 5)?.try_into().ok()?) as usize;
                    let payload = bytes.get(end + 5..end + 5 + len)?;
                    end += 5 + len;
                    Some((Bytes::copy_from_slice(payload), qos))
                }
                _ => return None,
            };
            Some((topic.to_owned(), value, end))
        })();
        let Some((topic, value, end)) = record else {
            return (live, at);
        };
        match value {
            Some(v) => live.insert(topic, v),
            None => live.remove(&topic),
        };
        at = end;
    }
}

impl RetainedLog {
    /// Opens (creating) `dir/retained.log`, cutting off a torn tail.
    pub(super) fn open(dir: &Path) -> Result<RetainedLog, StoreError> {
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (live, whole) = fold(&bytes);
        if whole < bytes.len() {
            file.set_len(whole as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        let sizes: std::collections::HashMap<u64, u32> = live
            .iter()
            .map(|(t, (p, _))| (topic_hash(t), (8 + t.len() + p.len()) as u32))
            .collect();
        Ok(RetainedLog {
            state: Mutex::new(State {
                sink: Sink::File { path, file },
                len: whole as u64,
                live: sizes.values().map(|n| u64::from(*n)).sum(),
                sizes,
            }),
        })
    }

    /// A log in memory (a temporary store).
    pub(super) fn memory() -> RetainedLog {
        RetainedLog {
            state: Mutex::new(State {
                sink: Sink::Memory(Vec::new()),
                len: 0,
                live: 0,
                sizes: Default::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `changes` (durable after [`RetainedLog::sync`]).
    pub(super) fn append(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for c in changes {
            encode(&mut out, c);
        }
        let mut state = self.lock();
        match &mut state.sink {
            Sink::File { file, .. } => file.write_all(&out).map_err(io)?,
            Sink::Memory(buf) => buf.extend_from_slice(&out),
        }
        state.len += out.len() as u64;
        for (topic, now) in changes {
            let was = match now {
                Some((payload, _)) => state
                    .sizes
                    .insert(topic_hash(topic), (8 + topic.len() + payload.len()) as u32),
                None => state.sizes.remove(&topic_hash(topic)),
            };
            state.live -= was.map_or(0, u64::from).min(state.live);
            if let Some((payload, _)) = now {
                state.live += (8 + topic.len() + payload.len()) as u64;
            }
        }
        Ok(())
    }

    /// Makes what was appended durable, rewriting the file first when mostly dead.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let State {
            sink, len, live, ..
        } = &mut *state;
        let Sink::File { path, file } = sink else {
            return Ok(());
        };
        file.sync_data().map_err(io)?;
        if *len > COMPACT_AT && *len > 2 * *live {
            let (messages, _) = fold(&std::fs::read(&*path).map_err(io)?);
            let tmp = path.with_extension("tmp");
            let mut out = Vec::new();
            for (topic, (payload, qos)) in &messages {
                encode(&mut out, &(topic.clone(), Some((payload.clone(), *qos))));
            }
            let mut fresh = File::create(&tmp).map_err(io)?;
            fresh.write_all(&out).map_err(io)?;
            fresh.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &*path).map_err(io)?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            *file = OpenOptions::new().append(true).open(&*path).map_err(io)?;
            *len = out.len() as u64;
            *live = *len;
        }
        Ok(())
    }

    /// Every live retained message: topic, payload, qos.
    pub(super) fn read(&self) -> Result<Vec<(String, Bytes, u8)>, StoreError> {
        let state = self.lock();
        let bytes = match &state.sink {
            Sink::File { path, .. } => std::fs::read(path).map_err(io)?,
            Sink::Memory(buf) => buf.clone(),
        };
        Ok(fold(&bytes)
            .0
            .into_iter()
            .map(|(t, (p, q))| (t, p, q))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: &str, p: &'static [u8]) -> Change {
        (t.to_owned(), Some((Bytes::from_static(p), 1)))
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_what_was_whole_stays() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let log = RetainedLog::open(dir.path()).expect("open");
            log.append(&[set("a/1", b"one"), set("a/2", b"two")])
                .expect("append");
            log.append(&[("a/1".to_owned(), None)]).expect("clear");
            log.sync().expect("sync");
        }
        // A crash in the middle of the next record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .expect("file");
        f.write_all(&[1, 0, 3, b'a', b'/']).expect("torn");
        drop(f);
        let log = RetainedLog::open(dir.path()).expect("reopen");
        assert_eq!(
            log.read().expect("read"),
            vec![("a/2".to_owned(), Bytes::from_static(b"two"), 1)]
        );
        log.append(&[set("a/3", b"three")]).expect("append");
        log.sync().expect("sync");
        assert_eq!(
            log.read().expect("read").len(),
            2,
            "appends go after the cut"
        );
    }

    #[test]
    fn a_mostly_dead_file_is_rewritten_with_what_is_live() {
        let dir = tempfile::tempdir().expect("dir");
        let log = RetainedLog::open(dir.path()).expect("open");
        let payload = vec![7u8; 1000];
        for round in 0..10 {
            let changes: Vec<Change> = (0..1000)
                .map(|i| {
                    (
                        format!("t/{i}"),
                        Some((Bytes::from(payload.clone()), round as u8)),
                    )
                })
                .collect();
            log.append(&changes).expect("append");
            log.sync().expect("sync");
        }
        let size = std::fs::metadata(dir.path().join(FILE))
            .expect("meta")
            .len();
        assert!(size < 3 * 1000 * 1010, "rewritten: {size} bytes");
        let all = log.read().expect("read");
        assert_eq!(all.len(), 1000);
        assert!(all.iter().all(|(_, p, q)| p.len() == 1000 && *q == 9));
    }
}
