//! The subscription index: exact filters in a hash map (the common case,
//! `users/alice/inbox`), wildcard filters in a trie. A publish costs one hash lookup
//! plus a trie walk bounded by the topic's levels; subscribe and unsubscribe cost
//! O(filter levels). Nothing here iterates over all filters or sessions.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::session::{Session, SessionId, SubOpts};

/// One subscription of one session to one filter.
#[derive(Clone, Debug)]
pub(crate) struct Subscriber {
    pub(crate) session: Arc<Session>,
    pub(crate) opts: SubOpts,
}

/// The subscribers of one filter. Most IM filters have exactly one (a user's own
/// inbox), so that case holds no map.
#[derive(Debug)]
enum Subscribers {
    One(Subscriber),
    Many(HashMap<SessionId, Subscriber>),
}

impl Subscribers {
    /// Inserts or replaces; returns true when the session was not subscribed yet.
    fn insert(&mut self, sub: Subscriber) -> bool {
        match self {
            Subscribers::One(one) if one.session.id == sub.session.id => {
                *one = sub;
                false
            }
            Subscribers::One(one) => {
                let mut map = HashMap::with_capacity(2);
                map.insert(one.session.id, one.clone());
                map.insert(sub.session.id, sub);
                *self = Subscribers::Many(map);
                true
            }
            Subscribers::Many(map) => map.insert(sub.session.id, sub).is_none(),
        }
    }

    /// Removes `id`; returns (was present, now empty).
    fn remove(&mut self, id: SessionId) -> (bool, bool) {
        match self {
            Subscribers::One(one) => {
                let hit = one.session.id == id;
                (hit, hit)
            }
            Subscribers::Many(map) => {
                let hit = map.remove(&id).is_some();
                (hit, map.is_empty())
            }
        }
    }

    fn for_each(&self, f: &mut impl FnMut(&Subscriber)) {
        match self {
            Subscribers::One(one) => f(one),
            Subscribers::Many(map) => map.values().for_each(f),
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Option<Subscribers>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_none()
    }
}

/// Exact map plus wildcard trie.
#[derive(Debug, Default)]
pub(crate) struct Index {
    exact: HashMap<Box<str>, Subscribers>,
    wild: Node,
    count: usize,
}

impl Index {
    /// Number of (session, filter) subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces a subscription; returns true when it is new.
    pub(crate) fn insert(&mut self, filter: &str, sub: Subscriber) -> bool {
        let new = if crate::topic::is_wildcard(filter) {
            let mut node = &mut self.wild;
            for level in filter.split('/') {
                node = node.children.entry(level.into()).or_default();
            }
            match &mut node.subs {
                Some(s) => s.insert(sub),
                None => {
                    node.subs = Some(Subscribers::One(sub));
                    true
                }
            }
        } else {
            match self.exact.entry(filter.into()) {
                Entry::Occupied(mut e) => e.get_mut().insert(sub),
                Entry::Vacant(e) => {
                    e.insert(Subscribers::One(sub));
                    true
                }
            }
        };
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes `session`'s subscription to `filter`; returns true if it existed.
    pub(crate) fn remove(&mut self, filter: &str, session: SessionId) -> bool {
        let hit = if crate::topic::is_wildcard(filter) {
            let levels: Vec<&str> = filter.split('/').collect();
            remove_in(&mut self.wild, &levels, session)
        } else {
            match self.exact.get_mut(filter) {
                Some(subs) => {
                    let (hit, empty) = subs.remove(session);
                    if empty {
                        self.exact.remove(filter);
                    }
                    hit
                }
                None => false,
            }
        };
        if hit {
            self.count -= 1;
        }
        hit
    }

    /// Calls `f` for every subscription whose filter matches `topic`.
    pub(crate) fn for_each_match(&self, topic: &str, mut f: impl FnMut(&Subscriber)) {
        if let Some(subs) = self.exact.get(topic) {
            subs.for_each(&mut f);
        }
        if !self.wild.children.is_empty() {
            let dollar = topic.starts_with('$');
            walk(&self.wild, topic.split('/'), true, dollar, &mut f);
        }
    }
}

fn walk<'a>(
    node: &Node,
    mut levels: std::str::Split<'a, char>,
    root: bool,
    dollar: bool,
    f: &mut impl FnMut(&Subscriber),
) {
    // Wildcards at the first level never match `$` topics (MQTT §4.7.2).
    let wild_ok = !(root && dollar);
    if wild_ok
        && let Some(hash) = node.children.get("#")
        && let Some(subs) = &hash.subs
    {
        subs.for_each(f);
    }
    let Some(level) = levels.next() else {
        if let Some(subs) = &node.subs {
            subs.for_each(f);
        }
        return;
    };
    if let Some(child) = node.children.get(level) {
        walk(child, levels.clone(), false, dollar, f);
    }
    if wild_ok && let Some(plus) = node.children.get("+") {
        walk(plus, levels, false, dollar, f);
    }
}

fn remove_in(node: &mut Node, levels: &[&str], session: SessionId) -> bool {
    match levels.split_first() {
        None => match &mut node.subs {
            Some(subs) => {
                let (hit, empty) = subs.remove(session);
                if empty {
                    node.subs = None;
                }
                hit
            }
            None => false,
        },
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let hit = remove_in(child, rest, session);
            if child.is_empty() {
                node.children.remove(*first);
            }
            hit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QoS;

    fn sub(id: SessionId) -> Subscriber {
        Subscriber {
            session: Session::new_for_test(id),
            opts: SubOpts::new(QoS::AtLeastOnce),
        }
    }

    fn matched(index: &Index, topic: &str) -> Vec<SessionId> {
        let mut ids = Vec::new();
        index.for_each_match(topic, |s| ids.push(s.session.id));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn exact_and_wildcard_filters_match() {
        let mut index = Index::default();
        assert!(index.insert("users/a/inbox", sub(1)));
        assert!(index.insert("users/a/#", sub(2)));
        assert!(index.insert("users/+/inbox", sub(3)));
        assert!(index.insert("#", sub(4)));
        assert!(index.insert("users/a", sub(5)));
        assert!(
            !index.insert("users/a/inbox", sub(1)),
            "replacing is not new"
        );
        assert_eq!(index.len(), 5);
        assert_eq!(matched(&index, "users/a/inbox"), vec![1, 2, 3, 4]);
        assert_eq!(matched(&index, "users/b/inbox"), vec![3, 4]);
        assert_eq!(matched(&index, "users/a"), vec![2, 4, 5]);
        assert_eq!(matched(&index, "$SYS/x"), Vec::<SessionId>::new());
    }

    #[test]
    fn removal_prunes_and_counts() {
        let mut index = Index::default();
        index.insert("a/+/c", sub(1));
        index.insert("a/+/c", sub(2));
        index.insert("a/b", sub(1));
        assert!(index.remove("a/+/c", 1));
        assert!(!index.remove("a/+/c", 1));
        assert_eq!(matched(&index, "a/x/c"), vec![2]);
        assert!(index.remove("a/+/c", 2));
        assert!(index.wild.children.is_empty(), "trie pruned");
        assert!(index.remove("a/b", 1));
        assert!(index.exact.is_empty());
        assert_eq!(index.len(), 0);
    }
}
