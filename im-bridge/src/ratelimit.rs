//! The per-user limit on message sends: a token bucket per user that holds at most
//! `limits.rate_burst` tokens and refills at `limits.rate_per_user` tokens a second.
//! One send costs one token, a batch of N sends N. A `rate_per_user` of 0 turns the
//! limit off.
//!
//! A bucket is kept as the one instant it will be full again (`full_at`; the
//! "virtual scheduling" form of a token bucket, GCRA): the bucket lacks
//! `(full_at - now) / per_token` tokens, and spending `cost` tokens moves `full_at`
//! `cost * per_token` later. A check is one hash lookup under the lock of one of
//! [`SHARDS`] shards, so concurrent senders contend only when their users share a
//! shard, and no lock is ever held across an `.await`.
//!
//! # Which buckets are kept (the eviction invariant)
//!
//! **A user without an entry has a full bucket.** So an entry whose `full_at` has
//! passed says nothing that its absence does not, and dropping it changes no answer:
//! each shard drops such entries as it goes, [`SWEEP_STEPS`] entries examined per
//! check (more than the one entry a check can add, so the sweep laps a shard faster
//! than the shard grows; no check ever scans all users). A shard also holds at most
//! its share of `max_users` entries: when a new user arrives at a full shard, a full
//! bucket is dropped if the next few examined hold one, otherwise the one among them
//! nearest to full. Dropping a bucket that is not full forgets spent tokens: that
//! user may briefly send more than its rate, but it is never refused a send that an
//! exact limiter, charged with the same accepted sends, would allow. Memory is thus
//! bounded by the cap, and under ordinary load by the users who sent within the last
//! `rate_burst / rate_per_user` seconds.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use crate::config::LimitsConfig;

/// Shards of the user map (a power of two).
const SHARDS: usize = 64;
/// Users tracked at once by [`RateLimiter::new`], over all shards: each costs about
/// 80 bytes plus its uid, so the map stays under about 25 MB whatever the traffic.
const MAX_USERS: usize = 1 << 18;
/// Entries the sweep examines per check. More than 1 (the most a check adds), so the
/// sweep reaches every entry within a bounded number of checks of its shard.
const SWEEP_STEPS: usize = 2;
/// Entries examined to choose one to drop when a new user arrives at a full shard.
const EVICT_SAMPLE: usize = 8;
/// A shard's map is not shrunk below this capacity.
const MIN_CAPACITY: usize = 64;

/// Per-user token buckets for message sends. Cheap to share (`Arc`); every method
/// takes `&self`.
pub struct RateLimiter {
    /// `None` when the limit is off (`rate_per_user = 0`): nothing is allocated and a
    /// check touches no map.
    limited: Option<Box<Limited>>,
}

struct Limited {
    per_second: u32,
    burst: u32,
    /// The time one token takes to come back, rounded up to a whole nanosecond so
    /// that the configured rate is never exceeded.
    per_token: Duration,
    /// `burst * per_token`: a bucket's `full_at` is never further than this ahead of
    /// the shard's clock.
    window: Duration,
    max_per_shard: usize,
    /// Picks the shard. Each shard's map has its own (differently keyed) hasher, so
    /// the keys of one shard, which share these bits, still spread over its map.
    shard_of: RandomState,
    shards: Box<[Padded<Mutex<Shard>>]>,
}

/// One cache line pair per shard, so that locking one shard does not slow its
/// neighbours (false sharing).
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
struct Shard {
    /// User -> the instant its bucket is full again. An entry whose instant has
    /// passed is the same as no entry (see the module docs).
    buckets: IndexMap<Box<str>, Instant>,
    /// The sweep's position in `buckets`. Entries before it have been examined this
    /// lap; entries added or moved (by a removal) land at or after it.
    hand: usize,
    /// The latest `now` this shard has seen. A check's time is the later of its own
    /// `now` and this, so two threads that read the clock before taking the lock are
    /// judged in the order they are served, and the sweep never drops a bucket that
    /// a check with an earlier `now` would still have found not full.
    clock: Option<Instant>,
}

/// Why a check did not pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not enough tokens now; the send may be retried later.
    #[error("rate limited: retry after {} s", .0.secs())]
    RetryAfter(RetryAfter),
    /// The cost is more than the burst: no wait will ever let it pass, so the
    /// caller must split it (HTTP: 413, not 429, whose retry would never succeed).
    #[error("{cost} sends at once exceed the per-user burst of {burst}")]
    OverBurst {
        /// What the check asked for.
        cost: u32,
        /// `limits.rate_burst`.
        burst: u32,
    },
}

/// How long until a refused cost would be available, if the user spent nothing
/// meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(Duration);

impl RetryAfter {
    /// The exact wait.
    pub fn duration(self) -> Duration {
        self.0
    }

    /// The wait in whole seconds, rounded up and at least 1: the `Retry-After`
    /// header's value, which a client may honour literally.
    pub fn secs(self) -> u64 {
        let whole = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        whole.max(1)
    }
}

impl RateLimiter {
    /// A limiter of `per_second` sends a second per user, with buckets of `burst`
    /// tokens (a user idle long enough may send `burst` at once). `per_second = 0`
    /// means unlimited. A `burst` of 0 would refuse every send and is taken as 1
    /// (the config refuses it). Rates above 10^9 a second are taken as 10^9.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimiter::with_max_users(per_second, burst, MAX_USERS)
    }

    /// The limiter `limits.rate_per_user` and `limits.rate_burst` describe.
    pub fn from_config(limits: &LimitsConfig) -> Self {
        RateLimiter::new(limits.rate_per_user, limits.rate_burst)
    }

    /// As [`RateLimiter::new`], tracking at most about `max_users` users at once.
    fn with_max_users(per_second: u32, burst: u32, max_users: usize) -> Self {
        if per_second == 0 {
            return RateLimiter { limited: None };
        }
        let burst = burst.max(1);
        let per_token = Duration::from_nanos(1_000_000_000u64.div_ceil(u64::from(per_second)));
        let shards = (0..SHARDS)
            .map(|_| Padded(Mutex::new(Shard::default())))
            .collect();
        RateLimiter {
            limited: Some(Box::new(Limited {
                per_second,
                burst,
                per_token,
                window: per_token * burst,
                max_per_shard: max_users.div_ceil(SHARDS).max(1),
                shard_of: RandomState::new(),
                shards,
            })),
        }
    }

    /// Spends `cost` tokens of `uid`'s bucket at `now`, or refuses and spends none.
    ///
    /// Unlimited, or a cost of 0: always `Ok`. A cost above the burst:
    /// [`Refused::OverBurst`], whatever the bucket holds. Otherwise
    /// [`Refused::RetryAfter`] when the bucket holds fewer than `cost` tokens. O(1):
    /// one hash lookup and a few entries swept, under one shard's lock, which is
    /// held for no I/O and no `.await`. `now` should not go backwards (callers pass
    /// `Instant::now()`; tests a clock of their own); a `now` earlier than one its
    /// shard has already seen counts as that later instant.
    pub fn check(&self, uid: &str, cost: u32, now: Instant) -> Result<(), Refused> {
        let Some(l) = &self.limited else {
            return Ok(());
        };
        if cost == 0 {
            return Ok(());
        }
        if cost > l.burst {
            return Err(Refused::OverBurst {
                cost,
                burst: l.burst,
            });
        }
        let mut shard = l.shard(uid);
        let now = shard.advance(now);
        shard.sweep(now, SWEEP_STEPS);
        let need = l.per_token * cost;
        if let Some(full_at) = shard.buckets.get_mut(uid) {
            let owed = full_at.saturating_duration_since(now) + need;
            if owed > l.window {
                return Err(Refused::RetryAfter(RetryAfter(owed - l.window)));
            }
            *full_at = now + owed;
        } else {
            // No bucket is a full bucket, and `cost <= burst`: it passes.
            shard.insert(uid, now + need, now, l.max_per_shard);
        }
        Ok(())
    }

    /// Whether the limit is on (`rate_per_user > 0`).
    pub fn is_limited(&self) -> bool {
        self.limited.is_some()
    }

    /// The users whose buckets are currently kept (not full, or full and not yet
    /// swept). Locks each shard in turn: for metrics and tests, not per request.
    pub fn tracked_users(&self) -> usize {
        self.limited.as_ref().map_or(0, |l| {
            l.shards.iter().map(|s| lock(&s.0).buckets.len()).sum()
        })
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.limited {
            None => f.write_str("RateLimiter(unlimited)"),
            Some(l) => f
                .debug_struct("RateLimiter")
                .field("per_second", &l.per_second)
                .field("burst", &l.burst)
                .field("max_users", &(l.max_per_shard * SHARDS))
                .finish(),
        }
    }
}

impl Limited {
    fn shard(&self, uid: &str) -> MutexGuard<'_, Shard> {
        let i = self.shard_of.hash_one(uid) as usize & (SHARDS - 1);
        lock(&self.shards[i].0)
    }
}

/// A shard's state is valid after any panic (each update is a single store), so a
/// poisoned lock is simply taken.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// The time this check is judged at: `now`, or the latest already seen.
    fn advance(&mut self, now: Instant) -> Instant {
        let now = self.clock.map_or(now, |seen| seen.max(now));
        self.clock = Some(now);
        now
    }

    /// Examines up to `steps` entries from the hand, dropping full buckets.
    fn sweep(&mut self, now: Instant, steps: usize) {
        let mut dropped = false;
        for _ in 0..steps {
            if self.hand >= self.buckets.len() {
                self.hand = 0;
            }
            let Some((_, full_at)) = self.buckets.get_index(self.hand) else {
                break;
            };
            if *full_at <= now {
                // The last entry moves into the hand's place and is examined next.
                self.buckets.swap_remove_index(self.hand);
                dropped = true;
            } else {
                self.hand += 1;
            }
        }
        // Give back the memory of a past crowd: shrinking to twice the length once
        // the length is a quarter of the capacity costs O(1) per removal, amortized.
        let capacity = self.buckets.capacity();
        if dropped && capacity > MIN_CAPACITY && self.buckets.len() < capacity / 4 {
            self.buckets
                .shrink_to((self.buckets.len() * 2).max(MIN_CAPACITY));
        }
    }

    /// Adds a bucket for a user that had none, first making room if the shard is at
    /// its cap.
    fn insert(&mut self, uid: &str, full_at: Instant, now: Instant, cap: usize) {
        if self.buckets.len() >= cap {
            self.make_room(now);
        }
        self.buckets.insert(uid.into(), full_at);
    }

    /// Drops one entry: the first full bucket among the next [`EVICT_SAMPLE`], else
    /// the one among them nearest to full (the least lenient to forget).
    fn make_room(&mut self, now: Instant) {
        let mut nearest: Option<(usize, Instant)> = None;
        for _ in 0..EVICT_SAMPLE {
            if self.hand >= self.buckets.len() {
                self.hand = 0;
            }
            let Some((_, &full_at)) = self.buckets.get_index(self.hand) else {
                return;
            };
            if full_at <= now {
                self.buckets.swap_remove_index(self.hand);
                return;
            }
            if nearest.is_none_or(|(_, t)| full_at < t) {
                nearest = Some((self.hand, full_at));
            }
            self.hand += 1;
        }
        if let Some((i, _)) = nearest {
            self.buckets.swap_remove_index(i);
            // The entry moved into `i` has not been examined this lap: if `i` is
            // behind the hand (the sample did not wrap), go back to it.
            self.hand = self.hand.min(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn passes(l: &RateLimiter, uid: &str, now: Instant) -> u32 {
        let mut n = 0;
        while l.check(uid, 1, now).is_ok() {
            n += 1;
            assert!(n <= 1_000_000, "never refused");
        }
        n
    }

    fn wait(r: Result<(), Refused>) -> RetryAfter {
        match r {
            Err(Refused::RetryAfter(w)) => w,
            other => panic!("expected RetryAfter, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_passes_then_tokens_come_back_at_the_rate() {
        let l = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        assert_eq!(passes(&l, "alice", t0), 20);
        assert_eq!(wait(l.check("alice", 1, t0)).duration(), ms(100));
        // One token every 100 ms.
        assert_eq!(passes(&l, "alice", t0 + ms(99)), 0);
        assert_eq!(passes(&l, "alice", t0 + ms(100)), 1);
        assert_eq!(passes(&l, "alice", t0 + ms(1100)), 10);
        assert_eq!(passes(&l, "alice", t0 + ms(1150)), 0);
        // A long idle refills to the burst, never beyond it.
        assert_eq!(passes(&l, "alice", t0 + Duration::from_secs(3600)), 20);
    }

    #[test]
    fn retry_after_is_the_time_until_cost_tokens_are_back() {
        let l = RateLimiter::new(1, 5);
        let t0 = Instant::now();
        l.check("bob", 5, t0).expect("a full bucket");
        let w = wait(l.check("bob", 3, t0));
        assert_eq!((w.duration(), w.secs()), (Duration::from_secs(3), 3));
        let w = wait(l.check("bob", 3, t0 + ms(300)));
        assert_eq!((w.duration(), w.secs()), (ms(2700), 3));
        let w = wait(l.check("bob", 5, t0 + ms(4999)));
        assert_eq!((w.duration(), w.secs()), (ms(1), 1));
        l.check("bob", 5, t0 + ms(5000)).expect("refilled");

        // Faster rates: a wait under a second is still "1" in the header.
        let l = RateLimiter::new(100, 2);
        l.check("carol", 2, t0).expect("full");
        let w = wait(l.check("carol", 1, t0));
        assert_eq!((w.duration(), w.secs()), (ms(10), 1));
    }

    #[test]
    fn retry_after_seconds_round_up_and_are_at_least_one() {
        let secs = |d| RetryAfter(d).secs();
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_nanos(1)), 1);
        assert_eq!(secs(Duration::from_secs(2)), 2);
        assert_eq!(secs(Duration::from_secs(2) + Duration::from_nanos(1)), 3);
    }

    #[test]
    fn a_cost_above_the_burst_is_refused_apart_and_spends_nothing() {
        let l = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        assert_eq!(
            l.check("dave", 21, t0),
            Err(Refused::OverBurst {
                cost: 21,
                burst: 20
            })
        );
        // Even a full bucket and any wait: the answer does not depend on the state.
        assert_eq!(
            l.check("dave", 21, t0 + Duration::from_secs(3600)),
            Err(Refused::OverBurst {
                cost: 21,
                burst: 20
            })
        );
        assert_eq!(l.tracked_users(), 0);
        l.check("dave", 20, t0).expect("exactly the burst passes");
    }

    #[test]
    fn zero_rate_is_unlimited_and_keeps_nothing() {
        let l = RateLimiter::new(0, 0);
        assert!(!l.is_limited());
        let t0 = Instant::now();
        for i in 0..10_000 {
            l.check(&format!("u{i}"), u32::MAX, t0).expect("unlimited");
        }
        assert_eq!(l.tracked_users(), 0);
        assert_eq!(format!("{l:?}"), "RateLimiter(unlimited)");
    }

    #[test]
    fn a_zero_cost_passes_and_a_zero_burst_is_one() {
        let l = RateLimiter::new(1, 0);
        let t0 = Instant::now();
        l.check("erin", 0, t0).expect("free");
        assert_eq!(l.tracked_users(), 0);
        assert_eq!(passes(&l, "erin", t0), 1);
        l.check("erin", 0, t0).expect("still free");
    }

    #[test]
    fn users_do_not_share_buckets() {
        let l = RateLimiter::new(1, 3);
        let t0 = Instant::now();
        assert_eq!(passes(&l, "frank", t0), 3);
        for i in 0..1000 {
            assert_eq!(passes(&l, &format!("other{i}"), t0), 3, "other{i}");
        }
        assert_eq!(passes(&l, "frank", t0), 0);
    }

    #[test]
    fn refilled_buckets_are_dropped_as_checks_go_by() {
        // 100,000 users, one send each, 1 ms apart: a bucket is full again 10 ms
        // after its send, so only the last few users' buckets say anything.
        let l = RateLimiter::new(100, 200);
        let t0 = Instant::now();
        let mut most = 0;
        for i in 0..100_000u64 {
            l.check(&format!("user{i}"), 1, t0 + ms(i))
                .expect("first send");
            if i % 1000 == 0 {
                most = most.max(l.tracked_users());
            }
        }
        most = most.max(l.tracked_users());
        assert!(most <= 300, "{most} buckets kept");
    }

    #[test]
    fn the_cap_bounds_memory_when_every_bucket_is_busy() {
        // 100,000 users exhaust their buckets at one instant: none is full, so only
        // the cap can keep the map small.
        let l = RateLimiter::with_max_users(1, 3, 1024);
        let t0 = Instant::now();
        for i in 0..100_000u64 {
            l.check(&format!("user{i}"), 3, t0 + Duration::from_nanos(i))
                .expect("a new user starts full");
            if i % 1000 == 0 {
                assert!(l.tracked_users() <= 1024, "at {i}");
            }
        }
        assert!(l.tracked_users() <= 1024);
    }

    #[test]
    fn an_evicted_user_starts_full_again() {
        let l = RateLimiter::with_max_users(1, 3, SHARDS);
        let t0 = Instant::now();
        assert_eq!(passes(&l, "grace", t0), 3);
        for i in 0..10_000 {
            l.check(&format!("crowd{i}"), 3, t0)
                .expect("new users start full");
        }
        assert!(l.tracked_users() <= SHARDS);
        // Grace's empty bucket was dropped to make room: she is lenient, not refused.
        assert_eq!(passes(&l, "grace", t0), 3);
    }

    /// A tiny deterministic generator (xorshift64*), to need no `rand`.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    #[test]
    fn eviction_never_refuses_what_an_exact_limiter_would_allow() {
        // An exact limiter (a bucket for every user, kept forever) is charged with
        // the sends this bounded one accepted. Whenever the bounded one refuses, the
        // exact one must refuse too, and ask for no shorter a wait than this one.
        let (rate, burst) = (10u32, 5u32);
        let l = RateLimiter::with_max_users(rate, burst, 256);
        let per_token = ms(100);
        let window = per_token * burst;
        let mut exact: HashMap<String, Instant> = HashMap::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut now = Instant::now();
        let (mut refused, mut lenient) = (0, 0);
        for step in 0..200_000 {
            now += Duration::from_micros(rng.below(200));
            // A few hot users among 100,000 that come and go.
            let uid = if rng.below(2) == 0 {
                format!("hot{}", rng.below(50))
            } else {
                format!("user{}", rng.below(100_000))
            };
            let cost = 1 + rng.below(u64::from(burst)) as u32;
            let owed = exact
                .get(&uid)
                .map_or(Duration::ZERO, |f| f.saturating_duration_since(now))
                + per_token * cost;
            let exact_wait = owed.checked_sub(window).filter(|w| !w.is_zero());
            match l.check(&uid, cost, now) {
                Ok(()) => {
                    exact.insert(uid, now + owed);
                    lenient += usize::from(exact_wait.is_some());
                }
                Err(Refused::RetryAfter(w)) => {
                    refused += 1;
                    let exact_wait = exact_wait.expect("the exact limiter refuses too");
                    assert!(w.duration() <= exact_wait, "{w:?} > {exact_wait:?}");
                }
                Err(e) => panic!("{e}"),
            }
            if step % 100 == 0 {
                assert!(l.tracked_users() <= 256, "at step {step}");
            }
        }
        // Both paths were taken: the hot users were limited, and the cap forgot some.
        assert!(refused > 1000, "{refused} refused");
        assert!(lenient > 0, "the cap never evicted a busy bucket");
    }

    #[test]
    fn concurrent_checks_never_pass_more_than_burst_plus_rate_times_elapsed() {
        const THREADS: usize = 8;
        const ROUNDS: u64 = 100;
        let (rate, burst) = (2_000u32, 50u32);
        let l = Arc::new(RateLimiter::new(rate, burst));
        let shared = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        // Each thread runs for this long and at least `ROUNDS` rounds, so that the
        // lower bounds hold even when a thread is not scheduled in time.
        let run_for = ms(300);
        let own: Vec<u64> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (l, shared) = (l.clone(), shared.clone());
                    s.spawn(move || {
                        let me = format!("own{t}");
                        let mut mine = 0u64;
                        let mut n = 0u64;
                        loop {
                            let now = Instant::now();
                            if now >= start + run_for && n >= ROUNDS {
                                break mine;
                            }
                            if l.check("shared", 1, now).is_ok() {
                                shared.fetch_add(1, Ordering::Relaxed);
                            }
                            if l.check(&me, 1, now).is_ok() {
                                mine += 1;
                            }
                            // Others too, to fill shards and drive the sweep.
                            let _ = l.check(&format!("other{t}-{}", n % 512), 1, now);
                            n += 1;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
        // Every `now` a check used lies in [start, end]. The first `burst` checks of
        // a user find its bucket full, whatever the timing, hence the lower bounds.
        let elapsed = start.elapsed();
        let most =
            u64::from(burst) + (elapsed.as_nanos() / (1_000_000_000 / u128::from(rate))) as u64;
        let shared = shared.load(Ordering::Relaxed);
        assert!(
            (u64::from(burst)..=most).contains(&shared),
            "shared: {shared} passes in {elapsed:?}, at most {most}"
        );
        for (t, mine) in own.iter().enumerate() {
            assert!(
                (u64::from(burst)..=most).contains(mine),
                "own{t}: {mine} passes in {elapsed:?}, at most {most}"
            );
        }
    }
}
