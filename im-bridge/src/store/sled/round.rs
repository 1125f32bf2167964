//! One commit round on sled: writes staged in an ordered map over the tree, read
//! through (a round sees its own writes), applied as one `sled::Batch` at commit.
//! sled applies a batch atomically, also across a crash, so a round is the unit
//! of recovery: a message is never found without its head, list and idempotency
//! entries, nor a membership without the user's group list.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::iter::Peekable;

use bytes::Bytes;
use imqtt_wire::{ConvId, ConvKind, Envelope};
use sled::IVec;

use super::keys::{
    ACCOUNT, CONTACT, CURSOR, EXPIRY, HEAD, IDEM, MSG, TIME, bucket, decode_head, encode_head,
    key1, key2, listed, push_listed, u64_at,
};
use super::{Entries, SledStore, View, engine, reads_of_view};
use crate::store::{
    Appended, GroupWrite, Head, NewMessage, Reads, Round, Store, StoreError, participants,
};

/// A round's staged writes over the store's tree.
pub(super) struct SledRound<'s> {
    store: &'s SledStore,
    /// Key to its new value, `None` for a removal.
    staged: BTreeMap<Vec<u8>, Option<IVec>>,
    /// Retained messages' changes, for their own file.
    retained: Vec<super::retained::Change>,
    /// The round's entries in the time indexes, by time: the message keys
    /// appended at a ts, the idempotency keys expiring at a time (`keys.rs`).
    times: BTreeMap<u64, Vec<u8>>,
    expiries: BTreeMap<u64, Vec<u8>>,
}

impl<'s> SledRound<'s> {
    pub(super) fn new(store: &'s SledStore) -> SledRound<'s> {
        SledRound {
            store,
            staged: BTreeMap::new(),
            retained: Vec::new(),
            times: BTreeMap::new(),
            expiries: BTreeMap::new(),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: impl Into<IVec>) {
        self.staged.insert(key, Some(value.into()));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.staged.insert(key, None);
    }

    /// The keys in `lo..hi` as the round sees them, the first `limit`.
    fn collect(
        &self,
        lo: Vec<u8>,
        hi: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(IVec, IVec)>, StoreError> {
        self.scan(lo, hi, false).take(limit).collect()
    }
}

impl View for SledRound<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        match self.staged.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.store.get(key),
        }
    }

    fn scan(&self, lo: Vec<u8>, hi: Vec<u8>, rev: bool) -> Entries<'_> {
        let staged = self.staged.range(lo.clone()..hi.clone());
        let staged: Staged<'_> = if rev {
            Box::new(staged.rev())
        } else {
            Box::new(staged)
        };
        Box::new(Merged {
            tree: self.store.scan(lo, hi, rev).peekable(),
            staged: staged.peekable(),
            rev,
        })
    }
}

/// Staged writes in key order (or reversed).
type Staged<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<IVec>)> + 'a>;

/// The tree's entries with the staged writes laid over them, in one direction.
struct Merged<'a> {
    tree: Peekable<Entries<'a>>,
    staged: Peekable<Staged<'a>>,
    rev: bool,
}

impl Iterator for Merged<'_> {
    type Item = Result<(IVec, IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Which side holds the next key: `Less` the tree's, `Greater` the
            // staged one, `Equal` both (the staged write wins).
            let next = match (self.tree.peek(), self.staged.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.tree.next(),
                (Some(Ok(_)), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok((t, _))), Some((s, _))) => {
                    let ord = t.as_ref().cmp(s.as_slice());
                    if self.rev { ord.reverse() } else { ord }
                }
            };
            if next == Ordering::Less {
                return self.tree.next();
            }
            if next == Ordering::Equal {
                self.tree.next();
            }
            match self.staged.next() {
                Some((k, Some(v))) => return Some(Ok((IVec::from(k.as_slice()), v.clone()))),
                // A staged removal hides the tree's entry.
                Some((_, None)) => continue,
                None => return None,
            }
        }
    }
}

reads_of_view!(SledRound<'_>);

impl SledRound<'_> {
    /// The original of a retried send, if its key is still known.
    fn original(&self, idem_key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        let Some(v) = self.get(idem_key)? else {
            return Ok(None);
        };
        // conv 0 seq(8) expiry(8)
        let split = v.len().checked_sub(17).ok_or(StoreError::Corrupt("idem"))?;
        let conv = std::str::from_utf8(&v[..split]).map_err(|_| StoreError::Corrupt("idem"))?;
        let seq = u64_at(&v, split + 1).ok_or(StoreError::Corrupt("idem"))?;
        Ok(self
            .get(&super::keys::msg(conv, seq))?
            .map(|json| Bytes::copy_from_slice(&json)))
    }

    /// Raises `uid`'s cursor in `conv` to `seq` (never lowers it).
    fn raise_cursor(&mut self, uid: &str, conv: &str, seq: u64) -> Result<(), StoreError> {
        let key = key2(CURSOR, uid, conv);
        let now = self.get(&key)?.and_then(|v| u64_at(&v, 0)).unwrap_or(0);
        if seq > now {
            self.put(key, &seq.to_be_bytes());
        }
        Ok(())
    }

    fn append_one(&mut self, send: &NewMessage, now_ms: u64) -> Result<Appended, StoreError> {
        let idem_key = send
            .idempotency_key
            .as_deref()
            .map(|c| key2(IDEM, &send.from, c));
        if let Some(k) = &idem_key
            && let Some(json) = self.original(k)?
        {
            let envelope = serde_json::from_slice::<Envelope>(&json)
                .map_err(|_| StoreError::Corrupt("msgs"))?;
            return Ok(Appended {
                envelope,
                json,
                duplicate: true,
            });
        }
        let conv = send.conv.as_str();
        let head_key = key1(HEAD, conv);
        let stored_head = self.get(&head_key)?;
        // A conversation without a head has never had a message, so none of its
        // direct or notice cursors exist, and a group cursor there is at 0: its
        // cursors are written without reading them first (a lookup of an absent
        // key costs sled a descent of the tree).
        let new_conv = stored_head.is_none();
        let head = match stored_head {
            Some(v) => decode_head(&v)?,
            None => Head::default(),
        };
        let seq = head.seq + 1;
        let envelope = Envelope {
            id: ulid::Ulid::new().to_string(),
            conv: send.conv.clone(),
            seq,
            from: send.from.clone(),
            to: send.to.clone(),
            ts: now_ms,
            client_msg_id: send.client_msg_id.clone(),
            qos: send.qos,
            body: send.body.clone(),
            kind: send.revision.map(|(k, _)| k),
            ref_seq: send.revision.map(|(_, of)| of),
            edited_ts: None,
            recalled: false,
        };
        let json = serde_json::to_vec(&envelope).map_err(engine)?;
        let msg_key = super::keys::msg(conv, seq);
        push_listed(self.times.entry(now_ms).or_default(), &msg_key);
        if let Some((imqtt_wire::Kind::Edit, of)) = send.revision {
            self.put(super::keys::edit(conv, of, Some(seq)), IVec::default());
        }
        self.put(msg_key, json.as_slice());
        self.put(
            head_key,
            &encode_head(Head {
                seq,
                last_ts: now_ms,
            }),
        );
        // A conversation joins its participants' lists once, as their cursors in
        // it (`keys.rs`); its activity is its head's, so nothing else changes
        // per message.
        for uid in participants(&send.conv) {
            let key = key2(CURSOR, uid, conv);
            if new_conv || self.get(&key)?.is_none() {
                self.put(key, &0u64.to_be_bytes());
            }
        }
        if matches!(
            send.conv.kind(),
            ConvKind::Dm { .. } | ConvKind::Group { .. }
        ) {
            // One's own message is read.
            if new_conv {
                self.put(key2(CURSOR, &send.from, conv), &seq.to_be_bytes());
            } else {
                self.raise_cursor(&send.from, conv, seq)?;
            }
        }
        if let Some(k) = idem_key {
            let ttl = u64::try_from(self.store.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
            let expires = now_ms.saturating_add(ttl);
            let mut v = super::keys::prefix(0, conv)[1..].to_vec();
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&expires.to_be_bytes());
            push_listed(self.expiries.entry(expires).or_default(), &k);
            self.put(k, v);
        }
        Ok(Appended {
            envelope,
            json: Bytes::from(json),
            duplicate: false,
        })
    }
}

impl SledRound<'_> {
    /// Takes up to `limit` keys from the time index `kind` below `end`, oldest
    /// first, handing each to `forget` with its index time; returns how many
    /// `forget` found still there. A round's entry lists many keys (`keys.rs`):
    /// one taken in part is written back with the rest. An entry of the older
    /// per-message index is its key.
    fn expire_listed(
        &mut self,
        kind: u8,
        end: Vec<u8>,
        limit: usize,
        mut forget: impl FnMut(&mut Self, u64, &[u8]) -> Result<bool, StoreError>,
    ) -> Result<usize, StoreError> {
        let due = self.collect(vec![kind], end, limit)?;
        let (mut taken, mut forgotten) = (0, 0);
        for (index_key, list) in &due {
            let at = u64_at(index_key, 1).ok_or(StoreError::Corrupt("index"))?;
            let keys: Vec<Vec<u8>> = if list.is_empty() {
                let rest = index_key.get(9..).ok_or(StoreError::Corrupt("index"))?;
                vec![[&[if kind == TIME { MSG } else { IDEM }][..], rest].concat()]
            } else {
                listed(list)?.into_iter().map(<[u8]>::to_vec).collect()
            };
            let room = limit - taken;
            for key in keys.iter().take(room) {
                forgotten += usize::from(forget(self, at, key)?);
            }
            if keys.len() > room {
                let mut rest = Vec::new();
                for key in &keys[room..] {
                    push_listed(&mut rest, key);
                }
                self.put(index_key.to_vec(), rest);
                break;
            }
            self.remove(index_key.to_vec());
            taken += keys.len();
        }
        Ok(forgotten)
    }
}

impl Round for SledRound<'_> {
    fn append(&mut self, sends: &[NewMessage], now_ms: u64) -> Result<Vec<Appended>, StoreError> {
        sends.iter().map(|s| self.append_one(s, now_ms)).collect()
    }

    fn ack(&mut self, uid: &str, cursors: &[(ConvId, u64)]) -> Result<(), StoreError> {
        // Every seq is checked before any cursor moves: all or nothing.
        for (conv, seq) in cursors {
            let head = self.head(conv)?.seq;
            if *seq > head {
                return Err(StoreError::AboveHead {
                    conv: conv.clone(),
                    seq: *seq,
                    head,
                });
            }
        }
        for (conv, seq) in cursors {
            self.raise_cursor(uid, conv.as_str(), *seq)?;
        }
        Ok(())
    }

    fn write_groups(&mut self, writes: &[GroupWrite]) -> Result<(), StoreError> {
        for w in writes {
            for (key, value) in super::groups::keys_of(w, |k| self.get(k))? {
                match value {
                    Some(v) => self.put(key, v),
                    None => self.remove(key),
                }
            }
        }
        Ok(())
    }

    fn set_contact(&mut self, owner: &str, contact: &str, on: bool) -> Result<bool, StoreError> {
        let key = key2(CONTACT, owner, contact);
        let was = self.get(&key)?.is_some();
        if on {
            self.put(key, IVec::default());
        } else {
            self.remove(key);
        }
        Ok(was != on)
    }

    fn create_account(&mut self, uid: &str, password_hash: &str) -> Result<bool, StoreError> {
        let key = key1(ACCOUNT, uid);
        if self.get(&key)?.is_some() {
            return Ok(false);
        }
        self.put(key, password_hash.as_bytes());
        Ok(true)
    }

    fn put_retained(
        &mut self,
        changes: &[(String, Option<(Bytes, u8)>)],
    ) -> Result<(), StoreError> {
        self.retained.extend_from_slice(changes);
        Ok(())
    }

    fn expire_idempotency(&mut self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut end = vec![EXPIRY];
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        self.expire_listed(EXPIRY, end, limit, |round, expiry, idem_key| {
            // Only if it still holds this expiry: a later send may have reused it.
            let holds = round
                .get(idem_key)?
                .is_some_and(|v| v.len() >= 8 && v[v.len() - 8..] == expiry.to_be_bytes());
            if holds {
                round.remove(idem_key.to_vec());
            }
            Ok(holds)
        })
    }

    fn expire_messages(&mut self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut end = vec![TIME];
        end.extend_from_slice(&before_ms.to_be_bytes());
        // Heads, cursors and lists stay: seqs are never reused, and a
        // conversation's history simply starts later.
        // A purge may have taken the message already.
        self.expire_listed(TIME, end, limit, |round, _, msg_key| {
            let there = round.get(msg_key)?.is_some();
            if there {
                round.remove(msg_key.to_vec());
            }
            Ok(there)
        })
    }

    fn purge(&mut self, conv: &ConvId, through: u64, limit: usize) -> Result<usize, StoreError> {
        let c = conv.as_str();
        let lo = super::keys::msg(c, 1);
        let hi = super::keys::after(&super::keys::msg(c, through));
        let doomed = self.collect(lo, hi, limit)?;
        // Their time index entries stay until retention reaches them and removes
        // keys that are gone: harmless, as the head stays and seqs are never
        // reused.
        for (k, _) in &doomed {
            self.remove(k.to_vec());
        }
        Ok(doomed.len())
    }

    fn amend(&mut self, conv: &ConvId, seq: u64, json: &[u8]) -> Result<bool, StoreError> {
        let key = super::keys::msg(conv.as_str(), seq);
        if self.get(&key)?.is_none() {
            return Ok(false);
        }
        self.put(key, json);
        Ok(true)
    }

    fn enqueue_events(&mut self, hook: &str, events: &[Vec<u8>]) -> Result<(), StoreError> {
        for e in events {
            // Unique and rising across rounds and restarts (`SledStore::next_round`).
            let id = self.store.next_round();
            self.put(super::keys::event(hook, id), e.as_slice());
        }
        Ok(())
    }

    fn drop_events(&mut self, hook: &str, ids: &[u64]) -> Result<(), StoreError> {
        for id in ids {
            self.remove(super::keys::event(hook, *id));
        }
        Ok(())
    }

    fn edits_of(&mut self, conv: &ConvId, seq: u64) -> Result<Vec<u64>, StoreError> {
        let p = super::keys::edit(conv.as_str(), seq, None);
        let mut out = Vec::new();
        for kv in self.scan(p.clone(), super::keys::after_all(&p), false) {
            let (k, _) = kv?;
            out.push(u64_at(&k, p.len()).ok_or(StoreError::Corrupt("edits"))?);
        }
        Ok(out)
    }

    fn commit(self: Box<Self>, durable: bool) -> Result<(), StoreError> {
        let SledRound {
            store,
            mut staged,
            retained,
            times,
            expiries,
        } = *self;
        if !(times.is_empty() && expiries.is_empty()) {
            let round = store.next_round();
            for (kind, index) in [(TIME, times), (EXPIRY, expiries)] {
                for (at, list) in index {
                    staged.insert(bucket(kind, at, round), Some(list.into()));
                }
            }
        }
        if !staged.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in staged {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            store.tree.apply_batch(batch)?;
        }
        store.retained.append(&retained)?;
        if durable {
            store.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_scans_lay_its_writes_over_the_tree_both_ways() {
        let s = SledStore::temporary(std::time::Duration::from_secs(60)).expect("store");
        for k in [b"a1", b"a3", b"a5"] {
            s.tree.insert(k, &k[..]).expect("insert");
        }
        let mut r = SledRound::new(&s);
        r.put(b"a2".to_vec(), &b"new"[..]);
        r.put(b"a3".to_vec(), &b"over"[..]);
        r.remove(b"a5".to_vec());
        r.put(b"a6".to_vec(), &b"six"[..]);
        r.put(b"b0".to_vec(), &b"outside"[..]);
        let seen = |rev| -> Vec<(String, String)> {
            r.scan(b"a".to_vec(), b"b".to_vec(), rev)
                .map(|kv| {
                    let (k, v) = kv.expect("entry");
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect()
        };
        let forward = vec![
            ("a1".to_owned(), "a1".to_owned()),
            ("a2".to_owned(), "new".to_owned()),
            ("a3".to_owned(), "over".to_owned()),
            ("a6".to_owned(), "six".to_owned()),
        ];
        assert_eq!(seen(false), forward);
        let mut backward = forward.clone();
        backward.reverse();
        assert_eq!(seen(true), backward);
        assert_eq!(r.get(b"a5").expect("get"), None);
        assert_eq!(r.get(b"a1").expect("get").as_deref(), Some(&b"a1"[..]));
    }

    #[test]
    fn entries_of_the_per_message_indexes_still_expire() {
        let s = SledStore::temporary(std::time::Duration::from_secs(60)).expect("store");
        let msg = super::super::keys::msg("dm:a:b", 1);
        s.tree.insert(&msg, &b"{}"[..]).expect("message");
        s.tree
            .insert(super::super::keys::time(1_000, &msg), &b""[..])
            .expect("time");
        let idem = key2(IDEM, "a", "k1");
        let mut held = b"dm:a:b\0".to_vec();
        held.extend_from_slice(&1u64.to_be_bytes());
        held.extend_from_slice(&5_000u64.to_be_bytes());
        s.tree.insert(&idem, held).expect("idem");
        let mut x = vec![EXPIRY];
        x.extend_from_slice(&5_000u64.to_be_bytes());
        x.extend_from_slice(&idem[1..]);
        s.tree.insert(x, &b""[..]).expect("expiry");

        let mut r = Box::new(SledRound::new(&s));
        assert_eq!(r.expire_messages(1_000, 10).expect("none yet"), 0);
        assert_eq!(r.expire_messages(1_001, 10).expect("expire"), 1);
        assert_eq!(r.expire_idempotency(4_999, 10).expect("none yet"), 0);
        assert_eq!(r.expire_idempotency(5_000, 10).expect("expire"), 1);
        r.commit(false).expect("commit");
        assert_eq!(s.tree.get(&msg).expect("get"), None);
        assert_eq!(s.tree.get(&idem).expect("get"), None);
        assert_eq!(s.tree.len(), 0, "the index entries went too");
    }

    #[test]
    fn a_round_writes_one_entry_per_index_whatever_its_size() {
        let s = SledStore::temporary(std::time::Duration::from_secs(60)).expect("store");
        let sends: Vec<NewMessage> = (0..50)
            .map(|i| NewMessage {
                conv: ConvId::dm("a", &format!("r{i}")).expect("conv"),
                from: "a".into(),
                to: format!("r{i}"),
                client_msg_id: Some(format!("k{i}")),
                idempotency_key: Some(format!("k{i}")),
                qos: imqtt_wire::Qos::AtLeastOnce,
                body: serde_json::json!({"text": "x"}),
                revision: None,
            })
            .collect();
        let mut r = Box::new(SledRound::new(&s));
        r.append(&sends, 1_000).expect("append");
        r.commit(false).expect("commit");
        let count = |kind: u8| s.tree.scan_prefix([kind]).count();
        assert_eq!((count(TIME), count(EXPIRY)), (1, 1));
        assert_eq!(count(MSG), 50);
    }

    #[test]
    fn end_of_a_kind_is_past_all_its_keys() {
        let r = super::super::keys::RETAINED;
        assert!(key1(r, "zzz") < super::super::keys::end_of(&[r]));
    }
}
