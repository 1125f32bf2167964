//! Other nodes' devices per user, as each node announces them: a user is online
//! while any node lists a device of it. Kept per node too, so that a node that
//! dies is counted out by visiting only its own users.

use std::collections::{HashMap, HashSet};

/// The devices every other node holds.
#[derive(Debug, Default)]
pub(super) struct RemoteDevices {
    users: HashMap<String, Vec<(String, Vec<String>)>>,
    by_node: HashMap<String, HashSet<String>>,
}

impl RemoteDevices {
    /// `node` now holds `devices` of `uid` (none: it holds no device of it).
    pub(super) fn set(&mut self, node: &str, uid: &str, devices: Vec<String>) {
        let parts = self.users.entry(uid.to_owned()).or_default();
        parts.retain(|(n, _)| n != node);
        if devices.is_empty() {
            if parts.is_empty() {
                self.users.remove(uid);
            }
            if let Some(set) = self.by_node.get_mut(node) {
                set.remove(uid);
                if set.is_empty() {
                    self.by_node.remove(node);
                }
            }
        } else {
            parts.push((node.to_owned(), devices));
            self.by_node
                .entry(node.to_owned())
                .or_default()
                .insert(uid.to_owned());
        }
    }

    /// Forgets everything `node` held; returns the users it had devices of.
    pub(super) fn drop_node(&mut self, node: &str) -> Vec<String> {
        let Some(uids) = self.by_node.remove(node) else {
            return Vec::new();
        };
        for uid in &uids {
            if let Some(parts) = self.users.get_mut(uid) {
                parts.retain(|(n, _)| n != node);
                if parts.is_empty() {
                    self.users.remove(uid);
                }
            }
        }
        uids.into_iter().collect()
    }

    /// `uid`'s devices on other nodes.
    pub(super) fn devices(&self, uid: &str) -> Vec<String> {
        self.users
            .get(uid)
            .map(|parts| parts.iter().flat_map(|(_, d)| d.iter().cloned()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_node_takes_only_its_own_devices_away() {
        let mut r = RemoteDevices::default();
        r.set("n2", "alice", vec!["phone".into()]);
        r.set("n3", "alice", vec!["laptop".into()]);
        r.set("n3", "bob", vec!["tab".into()]);
        let mut d = r.devices("alice");
        d.sort();
        assert_eq!(d, vec!["laptop", "phone"]);
        let mut gone = r.drop_node("n3");
        gone.sort();
        assert_eq!(gone, vec!["alice", "bob"]);
        assert_eq!(r.devices("alice"), vec!["phone"]);
        assert!(r.devices("bob").is_empty());
        r.set("n2", "alice", Vec::new());
        assert!(r.devices("alice").is_empty());
        assert!(r.users.is_empty() && r.by_node.is_empty());
    }
}
