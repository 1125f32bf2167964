//! Slows password guessing and mass sign-ups on the built-in accounts: failed
//! sign-ins are counted per account (from one client address) and per client
//! address (whatever the account), sign-ups per address. A sign-in counts as it
//! starts, so that a burst of concurrent guesses is counted too, and is taken
//! back when its password is right. Each key has a few free
//! tries; past them, every further counted one makes the next wait twice as long
//! as the one before, from 1 s up to a cap. An attempt during a wait is answered
//! 429 `too_many_attempts` with `Retry-After`, costs no password hash and is not
//! counted, so waiting always helps: whoever gets the password right after the
//! wait signs in, and a success forgets the account's failures. The account key
//! includes the address, so that guessing someone's password from one machine
//! never locks its owner out on another; the address key stops one machine
//! guessing across many accounts. A key quiet for [`FORGET`] starts afresh.
//!
//! IPv6 addresses count by their /64 (one host usually holds a whole /64). The
//! counts are this process's: each node of a cluster keeps its own.
//!
//! Memory is bounded: at most [`MAX_KEYS`] keys a table, and every call drops a
//! couple of forgotten keys as it goes, never scanning the table.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

/// A key quiet this long is forgotten.
pub const FORGET: Duration = Duration::from_secs(15 * 60);
/// Keys kept a table; past it the oldest examined is dropped.
const MAX_KEYS: usize = 100_000;
/// Keys examined for forgetting per call.
const SWEEP: usize = 2;

/// How a table counts.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Counted attempts without any wait.
    pub free: u32,
    /// The longest wait.
    pub cap: Duration,
}

/// Failed sign-ins per account and address: 5 free, waits up to 30 s.
pub const ACCOUNT: Policy = Policy {
    free: 5,
    cap: Duration::from_secs(30),
};
/// Failed sign-ins per address, any account: 20 free, waits up to 5 min.
pub const ADDRESS: Policy = Policy {
    free: 20,
    cap: Duration::from_secs(300),
};
/// Sign-ups per address: 10 free, waits up to 5 min.
pub const SIGN_UP: Policy = Policy {
    free: 10,
    cap: Duration::from_secs(300),
};

#[derive(Clone, Copy, Debug)]
struct Entry {
    counted: u32,
    last: Instant,
    /// No attempt before this.
    until: Instant,
}

/// One table of counts.
#[derive(Debug)]
pub struct Throttle<K> {
    policy: Policy,
    table: Mutex<Table<K>>,
}

#[derive(Debug)]
struct Table<K> {
    keys: IndexMap<K, Entry>,
    /// Where the sweep goes on.
    sweep_at: usize,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub fn new(policy: Policy) -> Self {
        Throttle {
            policy,
            table: Mutex::new(Table {
                keys: IndexMap::new(),
                sweep_at: 0,
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table<K>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err(wait)` while `key` must wait.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut t = self.table();
        t.sweep(now);
        match t.keys.get(key) {
            Some(e) if e.until > now => Err(e.until - now),
            _ => Ok(()),
        }
    }

    /// Counts an attempt of `key` (a failed sign-in, a sign-up).
    pub fn count(&self, key: &K, now: Instant) {
        let mut t = self.table();
        t.sweep(now);
        if !t.keys.contains_key(key) && t.keys.len() >= MAX_KEYS {
            // The oldest of the few the sweep looks at next.
            let at = t.sweep_at % t.keys.len();
            t.keys.swap_remove_index(at);
        }
        let entry = t.keys.entry(key.clone()).or_insert(Entry {
            counted: 0,
            last: now,
            until: now,
        });
        entry.counted = entry.counted.saturating_add(1);
        entry.last = now;
        if let Some(over) = entry.counted.checked_sub(self.policy.free + 1) {
            // 1 s for the first attempt past the free ones, doubling to the cap.
            let wait = Duration::from_secs(1u64 << over.min(20)).min(self.policy.cap);
            entry.until = now + wait;
        }
    }

    /// Takes back one counted attempt of `key` that turned out well (a sign-in
    /// counted before its password was checked, so that concurrent guesses are
    /// counted as they start), lifting the wait it caused.
    pub fn refund(&self, key: &K, now: Instant) {
        let mut t = self.table();
        let Some(entry) = t.keys.get_mut(key) else {
            return;
        };
        entry.counted = entry.counted.saturating_sub(1);
        if entry.counted <= self.policy.free {
            entry.until = entry.until.min(now);
        }
        if entry.counted == 0 {
            t.keys.swap_remove(key);
        }
    }

    /// Forgets `key` (the right password).
    pub fn clear(&self, key: &K) {
        self.table().keys.swap_remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().keys.len()
    }
}

impl<K: Hash + Eq> Table<K> {
    /// Drops up to [`SWEEP`] forgotten keys, going round the table.
    fn sweep(&mut self, now: Instant) {
        for _ in 0..SWEEP {
            if self.keys.is_empty() {
                return;
            }
            let at = self.sweep_at % self.keys.len();
            let forgotten = self
                .keys
                .get_index(at)
                .is_some_and(|(_, e)| now.duration_since(e.last) >= FORGET && e.until <= now);
            if forgotten {
                self.keys.swap_remove_index(at);
            } else {
                self.sweep_at = at + 1;
            }
        }
    }
}

/// The part of a client address that counts: an IPv4 address whole, an IPv6
/// one by its /64 (an IPv4-mapped one as IPv4).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The sign-in and sign-up tables of one server.
#[derive(Debug)]
pub struct SignIns {
    pub accounts: Throttle<(String, IpAddr)>,
    pub addresses: Throttle<IpAddr>,
    pub sign_ups: Throttle<IpAddr>,
}

impl Default for SignIns {
    fn default() -> Self {
        SignIns {
            accounts: Throttle::new(ACCOUNT),
            addresses: Throttle::new(ADDRESS),
            sign_ups: Throttle::new(SIGN_UP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        free: 3,
        cap: Duration::from_secs(8),
    };

    #[test]
    fn free_tries_then_waits_that_double_up_to_the_cap() {
        let t = Throttle::new(P);
        let mut now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.check(&"k", now), Ok(()));
            t.count(&"k", now);
        }
        assert_eq!(t.check(&"k", now), Ok(()), "the free ones cost no wait");
        let mut waits = Vec::new();
        for _ in 0..6 {
            t.count(&"k", now);
            let wait = t.check(&"k", now).expect_err("waits");
            waits.push(wait.as_secs());
            now += wait;
            assert_eq!(t.check(&"k", now), Ok(()), "after the wait it may try");
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(t.check(&"other", now), Ok(()), "keys are apart");
    }

    #[test]
    fn a_success_and_a_quiet_spell_forget() {
        let t = Throttle::new(P);
        let now = Instant::now();
        for _ in 0..5 {
            t.count(&"k", now);
        }
        assert!(t.check(&"k", now).is_err());
        t.clear(&"k");
        assert_eq!(t.check(&"k", now), Ok(()));
        for _ in 0..4 {
            t.count(&"r", now);
        }
        assert!(t.check(&"r", now).is_err());
        t.refund(&"r", now);
        assert_eq!(
            t.check(&"r", now),
            Ok(()),
            "the refunded one's wait is lifted"
        );
        for _ in 0..5 {
            t.count(&"q", now);
        }
        let later = now + FORGET + Duration::from_secs(9);
        for _ in 0..4 {
            let _ = t.check(&"x", later);
        }
        assert_eq!(t.len(), 0, "the sweep dropped the quiet key");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
