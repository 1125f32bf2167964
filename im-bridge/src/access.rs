//! Who may subscribe to what, as far as only the IM side knows: the broker's
//! [`Authorizer`], answered from the [`AccessCache`] and, on a miss, the store.
//! `groups/{gid}` is for current members; `presence/{uid}` for uid's contacts and
//! co-members of its groups (DESIGN.md §3).
//!
//! Each answer costs one key read, or for a co-member one read per group of the
//! watcher: never a scan of all users or groups; cached, none. The broker asks on
//! its connection tasks, so a miss reads the store inside
//! `tokio::task::block_in_place`: the worker's other tasks move to another
//! thread while the read waits.

use std::sync::Arc;

use broker::Authorizer;

use crate::cache::AccessCache;
use crate::store::{Reads, Store, StoreError};

/// The bridge's answers to the broker's group and presence questions.
#[derive(Debug, Clone)]
pub struct Access {
    store: Arc<dyn Store>,
    cache: Arc<AccessCache>,
}

/// Whether `watcher` may see `uid`'s presence: itself, one of uid's contacts, or
/// a current member of a group uid is in. Reads `store` (or a round) directly.
pub fn can_see_presence(store: &dyn Reads, watcher: &str, uid: &str) -> Result<bool, StoreError> {
    if watcher == uid || store.is_contact(uid, watcher)? {
        return Ok(true);
    }
    for gid in store.user_groups(watcher, crate::groups::MAX_GROUPS)? {
        if store.membership(&gid, uid)?.is_some_and(|m| m.is_current()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs a read that may wait on I/O from wherever the caller is: on a worker of
/// the multi-threaded runtime, inside `block_in_place`; elsewhere (a blocking
/// thread, the commit loop, a single-threaded test runtime) as it is.
pub fn blocking<T>(read: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(read)
        }
        _ => read(),
    }
}

impl Access {
    /// Answers from `store`, through `cache`.
    pub fn new(store: Arc<dyn Store>, cache: Arc<AccessCache>) -> Access {
        Access { store, cache }
    }

    /// The cache the commit loop invalidates.
    pub fn cache(&self) -> &Arc<AccessCache> {
        &self.cache
    }

    /// Whether `uid` is a current member of `gid`.
    pub fn is_member(&self, gid: &str, uid: &str) -> Result<bool, StoreError> {
        self.cache.is_member(gid, uid, || {
            blocking(|| {
                Ok(self
                    .store
                    .membership(gid, uid)?
                    .is_some_and(|m| m.is_current()))
            })
        })
    }

    /// Whether `gid` exists (not cached: asked when a send is refused).
    pub fn group_exists(&self, gid: &str) -> Result<bool, StoreError> {
        blocking(|| Ok(self.store.group(gid)?.is_some()))
    }

    /// Whether `watcher` may see `uid`'s presence (as [`can_see_presence`]).
    pub fn can_see_presence(&self, watcher: &str, uid: &str) -> Result<bool, StoreError> {
        if watcher == uid {
            return Ok(true);
        }
        let contact = self.cache.is_contact(uid, watcher, || {
            blocking(|| self.store.is_contact(uid, watcher))
        })?;
        if contact {
            return Ok(true);
        }
        let groups = self.cache.groups_of(watcher, || {
            blocking(|| self.store.user_groups(watcher, crate::groups::MAX_GROUPS))
        })?;
        for gid in groups.iter() {
            if self.is_member(gid, uid)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Authorizer for Access {
    fn is_group_member(&self, uid: &str, gid: &str) -> bool {
        self.is_member(gid, uid).unwrap_or_else(|e| {
            tracing::error!(error = %e, gid, "cannot read a membership");
            false
        })
    }

    fn can_see_presence(&self, watcher: &str, uid: &str) -> bool {
        Access::can_see_presence(self, watcher, uid).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read presence visibility");
            false
        })
    }
}
