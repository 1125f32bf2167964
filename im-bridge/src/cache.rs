//! A bounded cache of the answers the SUBSCRIBE and send paths ask most: a
//! user's membership of a group, whether one user is another's contact, and a
//! user's list of groups. It keeps the broker's `Authorizer` off the store (a
//! database round trip on PostgreSQL) for every group or presence SUBSCRIBE.
//!
//! Invalidated by the commit loop, after a round that changed a membership or a
//! contact is durable and before anyone is answered or any later message is
//! delivered. A load that raced with such a change is not kept: every shard has
//! a generation, bumped by each invalidation in it, and a loaded value is kept
//! only if its shard's generation did not move while it was read, so the cache
//! never holds an answer older than the last change it was told about.
//!
//! Bounded: at most [`CAPACITY`] entries; a full shard drops an entry picked
//! round-robin by position (O(1)), never scans. On a store that other processes
//! write too (PostgreSQL), their changes are not reported here, so answers are
//! trusted for a few seconds only ([`AccessCache::with_max_age`]).

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

/// Entries kept at most, all shards together.
pub const CAPACITY: usize = 100_000;
const SHARDS: usize = 16;
/// Longest group list kept (a user in more groups is read from the store).
const MAX_LIST: usize = 64;

/// What an answer is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Member { gid: String, uid: String },
    Contact { owner: String, contact: String },
    Groups { uid: String },
}

#[derive(Clone, Debug)]
enum Value {
    Yes(bool),
    List(Arc<[String]>),
}

/// A change the commit loop reports once it is durable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// `uid`'s membership of `gid` was set or forgotten.
    Member {
        /// The group.
        gid: String,
        /// The user.
        uid: String,
    },
    /// `contact` was added to or removed from `owner`'s contacts.
    Contact {
        /// Whose contacts.
        owner: String,
        /// Who.
        contact: String,
    },
}

#[derive(Debug, Default)]
struct Shard {
    generation: u64,
    /// Each answer with when it was loaded.
    map: IndexMap<Key, (Value, Instant)>,
    /// Where the next eviction takes an entry from.
    evict_at: usize,
}

/// The cache. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AccessCache {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
    /// How long an answer is trusted, when other processes write the same store
    /// (PostgreSQL) and their changes are not reported here; `None`: until
    /// invalidated.
    max_age: Option<Duration>,
    observer: std::sync::OnceLock<Observer>,
}

/// Who hears of committed changes.
struct Observer(Box<dyn Fn(&Change) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Default for AccessCache {
    fn default() -> Self {
        AccessCache::with_capacity(CAPACITY)
    }
}

impl AccessCache {
    /// A cache of at most `capacity` entries (at least one per shard).
    pub fn with_capacity(capacity: usize) -> AccessCache {
        AccessCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            max_age: None,
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Answers are trusted for `max_age` at most (a store other processes write).
    pub fn with_max_age(mut self, max_age: Duration) -> AccessCache {
        self.max_age = Some(max_age);
        self
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-insert; its map is
        // still a valid map.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get_or_load<E>(
        &self,
        key: Key,
        load: impl FnOnce() -> Result<Value, E>,
    ) -> Result<Value, E> {
        let generation = {
            let shard = self.shard(&key);
            if let Some((v, at)) = shard.map.get(&key)
                && self.max_age.is_none_or(|age| at.elapsed() < age)
            {
                return Ok(v.clone());
            }
            shard.generation
        };
        let value = load()?;
        let keep = !matches!(&value, Value::List(l) if l.len() > MAX_LIST);
        let mut shard = self.shard(&key);
        if keep && shard.generation == generation {
            if shard.map.len() >= self.per_shard {
                let at = shard.evict_at % shard.map.len();
                shard.map.swap_remove_index(at);
                shard.evict_at = at + 1;
            }
            shard.map.insert(key, (value.clone(), Instant::now()));
        }
        Ok(value)
    }

    /// Whether `uid` is a current member of `gid`; `load` asks the store.
    pub fn is_member<E>(
        &self,
        gid: &str,
        uid: &str,
        load: impl FnOnce() -> Result<bool, E>,
    ) -> Result<bool, E> {
        let key = Key::Member {
            gid: gid.to_owned(),
            uid: uid.to_owned(),
        };
        match self.get_or_load(key, || load().map(Value::Yes))? {
            Value::Yes(b) => Ok(b),
            Value::List(_) => Ok(false),
        }
    }

    /// Whether `contact` is one of `owner`'s contacts.
    pub fn is_contact<E>(
        &self,
        owner: &str,
        contact: &str,
        load: impl FnOnce() -> Result<bool, E>,
    ) -> Result<bool, E> {
        let key = Key::Contact {
            owner: owner.to_owned(),
            contact: contact.to_owned(),
        };
        match self.get_or_load(key, || load().map(Value::Yes))? {
            Value::Yes(b) => Ok(b),
            Value::List(_) => Ok(false),
        }
    }

    /// `uid`'s current groups.
    pub fn groups_of<E>(
        &self,
        uid: &str,
        load: impl FnOnce() -> Result<Vec<String>, E>,
    ) -> Result<Arc<[String]>, E> {
        let key = Key::Groups {
            uid: uid.to_owned(),
        };
        match self.get_or_load(key, || load().map(|l| Value::List(l.into())))? {
            Value::List(l) => Ok(l),
            Value::Yes(_) => Ok(Arc::from(Vec::new())),
        }
    }

    /// Calls `observer` with every change the commit loop reports from now on
    /// (the cluster tells the other nodes); false if one is set already.
    pub fn observe(&self, observer: Box<dyn Fn(&Change) + Send + Sync>) -> bool {
        self.observer.set(Observer(observer)).is_ok()
    }

    /// The commit loop's report of a durable change: forgets what it may have
    /// made wrong, and tells the observer.
    pub fn committed(&self, change: &Change) {
        self.invalidate(change);
        if let Some(observe) = self.observer.get() {
            (observe.0)(change);
        }
    }

    /// Forgets every entry (a node that was cut off from the others cannot
    /// know what changed meanwhile).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.generation += 1;
            shard.map.clear();
        }
    }

    /// Forgets what `change` may have made wrong.
    pub fn invalidate(&self, change: &Change) {
        let keys = match change {
            Change::Member { gid, uid } => vec![
                Key::Member {
                    gid: gid.clone(),
                    uid: uid.clone(),
                },
                Key::Groups { uid: uid.clone() },
            ],
            Change::Contact { owner, contact } => vec![Key::Contact {
                owner: owner.clone(),
                contact: contact.clone(),
            }],
        };
        for key in keys {
            let mut shard = self.shard(&key);
            shard.generation += 1;
            shard.map.swap_remove(&key);
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.map.len()))
            .sum()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn ok(b: bool) -> impl FnOnce() -> Result<bool, Infallible> {
        move || Ok(b)
    }

    #[test]
    fn an_answer_is_kept_until_the_change_that_makes_it_wrong() {
        let c = AccessCache::default();
        assert_eq!(c.is_member("g", "ann", ok(true)), Ok(true));
        // Kept: the store is not asked again.
        assert_eq!(c.is_member("g", "ann", ok(false)), Ok(true));
        c.invalidate(&Change::Member {
            gid: "g".into(),
            uid: "ben".into(),
        });
        assert_eq!(c.is_member("g", "ann", ok(false)), Ok(true), "another user");
        c.invalidate(&Change::Member {
            gid: "g".into(),
            uid: "ann".into(),
        });
        assert_eq!(c.is_member("g", "ann", ok(false)), Ok(false));
        let groups = c.groups_of("ann", || Ok::<_, Infallible>(vec!["g".into()]));
        assert_eq!(groups.expect("list").len(), 1);
        c.invalidate(&Change::Member {
            gid: "h".into(),
            uid: "ann".into(),
        });
        let groups = c.groups_of("ann", || Ok::<_, Infallible>(vec![]));
        assert!(groups.expect("list").is_empty(), "the list went too");
        assert_eq!(c.is_contact("ann", "ben", ok(true)), Ok(true));
        c.invalidate(&Change::Contact {
            owner: "ann".into(),
            contact: "ben".into(),
        });
        assert_eq!(c.is_contact("ann", "ben", ok(false)), Ok(false));
    }

    #[test]
    fn a_load_that_raced_with_a_change_is_answered_but_not_kept() {
        let c = AccessCache::default();
        // The store said "member", but the removal was reported while it read.
        let answer = c.is_member("g", "ann", || {
            c.invalidate(&Change::Member {
                gid: "g".into(),
                uid: "ann".into(),
            });
            Ok::<_, Infallible>(true)
        });
        assert_eq!(answer, Ok(true));
        assert_eq!(c.is_member("g", "ann", ok(false)), Ok(false), "not kept");
    }

    #[test]
    fn with_a_max_age_an_answer_is_asked_again_once_it_is_older() {
        let c = AccessCache::default().with_max_age(Duration::from_millis(30));
        assert_eq!(c.is_member("g", "ann", ok(true)), Ok(true));
        assert_eq!(c.is_member("g", "ann", ok(false)), Ok(true), "still fresh");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.is_member("g", "ann", ok(false)), Ok(false), "asked again");
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let c = AccessCache::with_capacity(64);
        for i in 0..10_000 {
            let _ = c.is_member("g", &format!("u{i}"), ok(true));
        }
        assert!(c.len() <= 64, "{}", c.len());
        assert!(!c.is_empty());
        // Errors are not kept.
        let err = c.is_member("g", "x", || Err::<bool, _>("down"));
        assert_eq!(err, Err("down"));
        assert_eq!(c.is_member("g", "x", || Ok::<_, &str>(true)), Ok(true));
    }
}
