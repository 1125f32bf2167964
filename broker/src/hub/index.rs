//! The subscription index: exact filters in a hash map (the common case,
//! `users/alice/inbox`), wildcard filters in a trie. A publish costs one hash lookup
//! plus a trie walk bounded by the topic's levels; subscribe and unsubscribe cost
//! O(filter levels). Nothing here iterates over all filters or sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// The members of one shared-subscription group (`$share/{group}/{filter}`); each
/// message goes to one of them, round robin, preferring connected sessions.
#[derive(Debug, Default)]
struct Group {
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl Group {
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.members[(start + k) % n])
            .find(|m| m.session.is_online())
            .or_else(|| self.members.get(start % n))
    }
}

/// Everything subscribed to one filter: plain subscribers and shared groups.
#[derive(Debug, Default)]
struct Entry {
    subs: Option<Subscribers>,
    // Boxed: 8 bytes on every filter instead of a 48-byte map, since almost no
    // filter has shared groups.
    #[allow(clippy::box_collection)]
    shared: Option<Box<HashMap<Box<str>, Group>>>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.subs.is_none() && self.shared.is_none()
    }

    fn insert(&mut self, group: Option<&str>, sub: Subscriber) -> bool {
        match group {
            None => match &mut self.subs {
                Some(s) => s.insert(sub),
                None => {
                    self.subs = Some(Subscribers::One(sub));
                    true
                }
            },
            Some(g) => {
                let group = self
                    .shared
                    .get_or_insert_with(Default::default)
                    .entry(g.into())
                    .or_default();
                match group
                    .members
                    .iter_mut()
                    .find(|m| m.session.id == sub.session.id)
                {
                    Some(m) => {
                        *m = sub;
                        false
                    }
                    None => {
                        group.members.push(sub);
                        true
                    }
                }
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, session: SessionId) -> bool {
        match group {
            None => match &mut self.subs {
                Some(subs) => {
                    let (hit, empty) = subs.remove(session);
                    if empty {
                        self.subs = None;
                    }
                    hit
                }
                None => false,
            },
            Some(g) => {
                let Some(groups) = &mut self.shared else {
                    return false;
                };
                let Some(members) = groups.get_mut(g).map(|grp| &mut grp.members) else {
                    return false;
                };
                let before = members.len();
                members.retain(|m| m.session.id != session);
                let hit = members.len() != before;
                if members.is_empty() {
                    groups.remove(g);
                }
                if groups.is_empty() {
                    self.shared = None;
                }
                hit
            }
        }
    }

    fn for_each(&self, f: &mut impl FnMut(&Subscriber)) {
        if let Some(subs) = &self.subs {
            subs.for_each(f);
        }
        if let Some(groups) = &self.shared {
            for group in groups.values() {
                if let Some(m) = group.pick() {
                    f(m);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    entry: Entry,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.entry.is_empty()
    }
}

/// Exact map plus wildcard trie.
#[derive(Debug, Default)]
pub(crate) struct Index {
    exact: HashMap<Box<str>, Entry>,
    wild: Node,
    count: usize,
}

/// Splits `$share/{group}/{filter}` into its group and filter.
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match crate::topic::parse_shared(filter) {
        Some((group, inner)) => (Some(group), inner),
        None => (None, filter),
    }
}

impl Index {
    /// Number of (session, filter) subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Adds or replaces a subscription; returns true when it is new. `filter` may
    /// be a shared subscription (`$share/{group}/{filter}`).
    pub(crate) fn insert(&mut self, filter: &str, sub: Subscriber) -> bool {
        let (group, filter) = split_shared(filter);
        let entry = if crate::topic::is_wildcard(filter) {
            let mut node = &mut self.wild;
            for level in filter.split('/') {
                node = node.children.entry(level.into()).or_default();
            }
            &mut node.entry
        } else {
            self.exact.entry(filter.into()).or_default()
        };
        let new = entry.insert(group, sub);
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes `session`'s subscription to `filter`; returns true if it existed.
    pub(crate) fn remove(&mut self, filter: &str, session: SessionId) -> bool {
        let (group, filter) = split_shared(filter);
        let hit = if crate::topic::is_wildcard(filter) {
            let levels: Vec<&str> = filter.split('/').collect();
            remove_in(&mut self.wild, &levels, group, session)
        } else {
            match self.exact.get_mut(filter) {
                Some(entry) => {
                    let hit = entry.remove(group, session);
                    if entry.is_empty() {
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

    /// Whether any session subscribes to `filter` (a shared subscription's
    /// filter counts as its inner filter), in O(filter levels).
    pub(crate) fn holds(&self, filter: &str) -> bool {
        let (_, filter) = split_shared(filter);
        if !crate::topic::is_wildcard(filter) {
            return self.exact.contains_key(filter);
        }
        let mut node = &self.wild;
        for level in filter.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        !node.entry.is_empty()
    }

    /// Calls `f` for every subscription whose filter matches `topic` (one member
    /// per shared group).
    pub(crate) fn for_each_match(&self, topic: &str, mut f: impl FnMut(&Subscriber)) {
        if let Some(entry) = self.exact.get(topic) {
            entry.for_each(&mut f);
        }
        if !self.wild.children.is_empty() {
            let dollar = topic.starts_with('$');
            walk(&self.wild, topic.split('/'), true, dollar, &mut f);
        }
    }
}

fn walk(
    node: &Node,
    mut levels: std::str::Split<'_, char>,
    root: bool,
    dollar: bool,
    f: &mut impl FnMut(&Subscriber),
) {
    // Wildcards at the first level never match `$` topics (MQTT §4.7.2).
    let wild_ok = !(root && dollar);
    if wild_ok && let Some(hash) = node.children.get("#") {
        hash.entry.for_each(f);
    }
    let Some(level) = levels.next() else {
        node.entry.for_each(f);
        return;
    };
    if let Some(child) = node.children.get(level) {
        walk(child, levels.clone(), false, dollar, f);
    }
    if wild_ok && let Some(plus) = node.children.get("+") {
        walk(plus, levels, false, dollar, f);
    }
}

fn remove_in(node: &mut Node, levels: &[&str], group: Option<&str>, session: SessionId) -> bool {
    match levels.split_first() {
        None => node.entry.remove(group, session),
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let hit = remove_in(child, rest, group, session);
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
    fn holds_follows_the_first_and_last_subscriber_of_a_filter() {
        let mut index = Index::default();
        for f in ["a/b", "a/+", "a/#", "$share/g/a/+"] {
            assert!(!index.holds(f) || f.starts_with("$share"), "{f}");
        }
        index.insert("a/b", sub(1));
        index.insert("a/b", sub(2));
        index.insert("$share/g/a/+", sub(3));
        assert!(index.holds("a/b"));
        assert!(
            index.holds("a/+"),
            "a shared subscription holds its inner filter"
        );
        assert!(!index.holds("a/#"));
        assert!(!index.holds("a"));
        index.remove("a/b", 1);
        assert!(index.holds("a/b"));
        index.remove("a/b", 2);
        assert!(!index.holds("a/b"));
        index.remove("$share/g/a/+", 3);
        assert!(!index.holds("a/+"));
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
    fn a_shared_group_gets_each_message_once() {
        let mut index = Index::default();
        assert!(index.insert("$share/g/t/x", sub(1)));
        assert!(index.insert("$share/g/t/x", sub(2)));
        assert!(index.insert("$share/h/t/+", sub(3)));
        assert!(index.insert("t/x", sub(1)));
        let first = matched(&index, "t/x");
        let second = matched(&index, "t/x");
        // Plain subscriber 1, one of group g, and 3 alone in group h.
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.contains(&3) && second.contains(&3));
        assert_ne!(first, second, "round robin within group g");
        assert!(index.remove("$share/g/t/x", 1));
        assert!(index.remove("$share/g/t/x", 2));
        assert!(index.remove("$share/h/t/+", 3));
        assert!(index.remove("t/x", 1));
        assert_eq!(index.len(), 0);
        assert!(index.exact.is_empty() && index.wild.children.is_empty());
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
