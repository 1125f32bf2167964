//! The key layout of the one sled tree: a kind byte, then the key of that kind.
//! `0` is a zero byte (ids and conversation ids never contain one) and integers
//! are big-endian, so that keys sort by them and a kind's keys for one user,
//! group or conversation are one contiguous range.
//!
//! | kind | key after the kind byte | value |
//! |---|---|---|
//! | `m` message | conv `0` seq | the envelope's JSON |
//! | `h` head | conv | head seq, last ts |
//! | `c` cursor | uid `0` conv | seq |
//! | `l` list | uid `0` conv | nothing: the user's direct and notice conversations |
//! | `i` idempotency | sender `0` key | conv `0` seq, then the expiry |
//! | `x` expiry | expiry sender `0` key | nothing: which idempotency keys to forget when |
//! | `t` time | ts conv `0` seq | nothing: what `store.retention` deletes when |
//! | `u` account | uid | the argon2 hash |
//! | `R` retained | MQTT topic | QoS, then the payload |
//! | `g` group | gid | the group's settings (JSON) |
//! | `M` member | gid `0` uid | role, first visible seq, last visible seq (MAX: a member now) |
//! | `G` user's group | uid `0` gid | nothing: the user's current groups |
//! | `C` contact | owner `0` uid | nothing: who may see owner's presence |

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

/// `t ts conv 0 seq`, from a message's key.
pub(super) fn time(ts: u64, msg_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + msg_key.len());
    k.push(TIME);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(msg_key.get(1..).unwrap_or_default());
    k
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
}
