//! Client-made ids: `client_msg_id`s that stay unique across devices and restarts.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 64 random bits. `RandomState` is seeded from the OS's randomness once per
/// process and varied per instance, which is all a retry id needs (not a secret).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A new `client_msg_id`: milliseconds since the epoch, then 64 random bits, in
/// hex (`c-0193a1b2c3d4-9f3e...`). Made once per logical send and reused by its
/// retries, which is what makes them idempotent.
pub fn new_client_msg_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("c-{ms:012x}-{:016x}", random_u64())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn client_msg_ids_are_distinct_and_valid_ids() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_client_msg_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| crate::wire::is_valid_id(id)));
    }
}
