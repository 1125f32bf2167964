//! Who may subscribe to what, as far as only the IM side knows: the broker's
//! [`Authorizer`], answered from the store. `groups/{gid}` is for current members;
//! `presence/{uid}` for uid's contacts and co-members of its groups (DESIGN.md §3).
//!
//! Each answer costs one key read, or for a co-member one read per group of the
//! watcher: never a scan of all users or groups.

use std::sync::Arc;

use broker::Authorizer;

use crate::store::{Store, StoreError};

/// The bridge's answers to the broker's group and presence questions.
#[derive(Debug, Clone)]
pub struct Access {
    store: Arc<dyn Store>,
}

impl Access {
    /// Answers from `store`.
    pub fn new(store: Arc<dyn Store>) -> Access {
        Access { store }
    }
}

/// Whether `watcher` may see `uid`'s presence: itself, one of uid's contacts, or
/// a current member of a group uid is in.
pub fn can_see_presence(store: &dyn Store, watcher: &str, uid: &str) -> Result<bool, StoreError> {
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

impl Authorizer for Access {
    fn is_group_member(&self, uid: &str, gid: &str) -> bool {
        match self.store.membership(gid, uid) {
            Ok(m) => m.is_some_and(|m| m.is_current()),
            Err(e) => {
                tracing::error!(error = %e, gid, "cannot read a membership");
                false
            }
        }
    }

    fn can_see_presence(&self, watcher: &str, uid: &str) -> bool {
        can_see_presence(&*self.store, watcher, uid).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read presence visibility");
            false
        })
    }
}
