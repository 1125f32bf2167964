//! The key layout of the one sled tree: a kind byte, then the key of that kind.
//! `0` is a zero byte (ids and conversation ids never contain one) and integers
//! are big-endian, so that keys sort by them and a kind's keys for one user,
//! group or conversation are one contiguous range.
//!
//! | kind | key after the kind byte | value |
//! |---|---|---|
//! | `m` message | conv `0` seq | the envelope's JSON |
//! | `h` head | conv | head seq, last ts |
//! | `c` cursor | uid `0` conv | seq; a user's direct and notice ones are its conversation list |
//! | `l` list | uid `0` conv | nothing: the list of stores before it came from the cursors (`migrate.rs`) |
//! | `i` idempotency | sender `0` key | conv `0` seq, then the expiry |
//! | `x` expiry | expiry, round | the round's idempotency keys ([`list`]): which to forget when |
//! | `t` time | ts, round | the round's message keys ([`list`]): what `store.retention` deletes when |
//! | `u` account | uid | the argon2 hash |
//! | `R` retained | MQTT topic | QoS, then the payload |
//! | `g` group | gid | the group's settings (JSON) |
//! | `M` member | gid `0` uid | role, first visible seq, last visible seq (MAX: a member now) |
//! | `G` user's group | uid `0` gid | nothing: the user's current groups |
//! | `C` contact | owner `0` uid | nothing: who may see owner's presence |
//! | `E` edit | conv `0` ref seq | nothing: the edits of message `ref`, for its recall |
//! | `W` webhook event | hook `0` id | the event's JSON, queued until delivered |
//!
//! The two time indexes hold one key per round, not one per message: a new key
//! costs sled a leaf copy and, every few keys, a split, so a round of a thousand
//! sends writes two index keys instead of two thousand. "round" is a number
//! unique to the round (`SledStore::next_round`). Stores written before that
//! hold one key per message (`t ts conv 0 seq`, `x expiry sender 0 key`, empty
//! values), which the expiry code still reads: no migration needed.

use super::super::{Head, StoreError};

pub(super) const MSG: u8 = b'm';
pub(super) const HEAD: u8 = b'h';
pub(super) const CURSOR: u8 = b'c';
pub(super) const LIST: u8 = b'l';
pub(super) const IDEM: u8 = b'i';
pub(super) const EXPIRY: u8 = b'x';
pub(super) const TIME: u8 = b't';
pub(super) const ACCOUNT: u8 = b'u';
pub(super) const RETAINED: u8 = b'R';
pub(super) const GROUP: u8 = b'g';
pub(super) const MEMBER: u8 = b'M';
pub(super) const USER_GROUP: u8 = b'G';
pub(super) const CONTACT: u8 = b'C';
pub(super) const EDIT: u8 = b'E';
pub(super) const WEBHOOK: u8 = b'W';

/// `W hook 0 id`.
pub(super) fn event(hook: &str, id: u64) -> Vec<u8> {
    let mut k = prefix(WEBHOOK, hook);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `E conv 0 ref seq`, or its prefix without `seq`.
pub(super) fn edit(conv: &str, of: u64, seq: Option<u64>) -> Vec<u8> {
    let mut k = prefix(EDIT, conv);
    k.extend_from_slice(&of.to_be_bytes());
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

/// `kind a`.
pub(super) fn key1(kind: u8, a: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + a.len());
    k.push(kind);
    k.extend_from_slice(a.as_bytes());
    k
}

/// `kind a 0 b`.
pub(super) fn key2(kind: u8, a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + a.len() + b.len());
    k.push(kind);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

/// `kind a 0`: the start of `a`'s keys of that kind.
pub(super) fn prefix(kind: u8, a: &str) -> Vec<u8> {
    let mut k = key1(kind, a);
    k.push(0);
    k
}

/// `m conv 0 seq`.
pub(super) fn msg(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(MSG, conv);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `t ts conv 0 seq`, from a message's key: the per-message time index of
/// stores written before the per-round one.
#[cfg(test)]
pub(super) fn time(ts: u64, msg_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + msg_key.len());
    k.push(TIME);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(msg_key.get(1..).unwrap_or_default());
    k
}

/// `kind ts round`: one round's entry in a time index.
pub(super) fn bucket(kind: u8, ts: u64, round: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(kind);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&round.to_be_bytes());
    k
}

/// Appends `key` to a list value: its length (u16), then its bytes.
pub(super) fn push_listed(list: &mut Vec<u8>, key: &[u8]) {
    // Keys are ids of at most a few hundred bytes; a longer one cannot be listed.
    let len = u16::try_from(key.len()).unwrap_or(u16::MAX);
    list.extend_from_slice(&len.to_be_bytes());
    list.extend_from_slice(key.get(..usize::from(len)).unwrap_or(key));
}

/// The keys of a list value, in the order they were pushed.
pub(super) fn listed(mut list: &[u8]) -> Result<Vec<&[u8]>, StoreError> {
    let mut keys = Vec::new();
    while !list.is_empty() {
        let (len, rest) = list
            .split_at_checked(2)
            .ok_or(StoreError::Corrupt("index"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (key, rest) = rest
            .split_at_checked(len)
            .ok_or(StoreError::Corrupt("index"))?;
        keys.push(key);
        list = rest;
    }
    Ok(keys)
}

/// The first key after every key that starts with `prefix`.
pub(super) fn end_of(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    // Prefixes end in a kind byte or a 0 separator, never in 0xFF.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The first key after every key that starts with `prefix`, whatever its last
/// byte (an integer may end in 0xFF).
pub(super) fn after_all(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// The first key after `key` itself (an inclusive end made exclusive).
pub(super) fn after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The id after `prefix` in `key`.
pub(super) fn id_after<'k>(key: &'k [u8], prefix: &[u8]) -> Result<&'k str, StoreError> {
    key.get(prefix.len()..)
        .and_then(|id| std::str::from_utf8(id).ok())
        .ok_or(StoreError::Corrupt("index"))
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub(super) fn decode_head(v: &[u8]) -> Result<Head, StoreError> {
    match (u64_at(v, 0), u64_at(v, 8)) {
        (Some(seq), Some(last_ts)) => Ok(Head { seq, last_ts }),
        _ => Err(StoreError::Corrupt("heads")),
    }
}

pub(super) fn encode_head(h: Head) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&h.seq.to_be_bytes());
    v[8..].copy_from_slice(&h.last_ts.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kinds_keys_for_one_owner_are_one_range_in_seq_order() {
        let p = prefix(MSG, "dm:a:b");
        let end = end_of(&p);
        for seq in [1u64, 255, 256, 1 << 40, u64::MAX] {
            let k = msg("dm:a:b", seq);
            assert!(k.as_slice() >= p.as_slice() && k < end, "{seq}");
        }
        assert!(msg("dm:a:b", 255) < msg("dm:a:b", 256));
        // Another conversation whose id extends this one's is outside the range.
        let longer = msg("dm:a:bc", 1);
        assert!(longer >= end || longer < p);
        assert!(after(&msg("dm:a:b", 7)) < msg("dm:a:b", 8));
    }

    #[test]
    fn a_list_gives_back_its_keys_and_a_torn_one_is_corrupt() {
        let mut list = Vec::new();
        for k in [&b"m1"[..], b"", b"i-sender\0key"] {
            push_listed(&mut list, k);
        }
        let keys = listed(&list).expect("list");
        assert_eq!(keys, vec![&b"m1"[..], b"", b"i-sender\0key"]);
        assert!(listed(&list[..list.len() - 1]).is_err());
        assert!(listed(&[0]).is_err());
    }

    #[test]
    fn a_rounds_time_key_never_meets_a_per_message_one() {
        // Per-message keys have a conversation id, a 0 and a seq after the ts.
        let old = time(7, &msg("c", 1));
        let new = bucket(TIME, 7, u64::MAX);
        assert!(old.len() > new.len());
        assert_eq!(new.len(), 17);
    }
}
