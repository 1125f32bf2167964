//! Retained messages in a topic trie, so that a subscription finds its retained
//! messages by walking the filter's levels, not by scanning every retained topic.

use std::collections::HashMap;
use std::sync::Arc;

use super::Publication;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    msg: Option<Arc<Publication>>,
}

/// The retained store.
#[derive(Debug, Default)]
pub(crate) struct Retained {
    root: Node,
    count: usize,
}

impl Retained {
    /// Number of retained messages.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Stores `msg` as the retained message of its topic, or clears the topic when
    /// the payload is empty. Returns false when the store is full and `msg` is new.
    pub(crate) fn set(&mut self, msg: Arc<Publication>, max: usize) -> bool {
        if msg.payload.is_empty() {
            let levels: Vec<&str> = msg.topic.split('/').collect();
            if clear(&mut self.root, &levels) {
                self.count -= 1;
            }
            return true;
        }
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            if !node.children.contains_key(level) {
                if self.count >= max {
                    return false;
                }
                node.children.insert(level.into(), Node::default());
            }
            node = node.children.get_mut(level).expect("inserted above");
        }
        if node.msg.is_none() {
            if self.count >= max {
                return false;
            }
            self.count += 1;
        }
        node.msg = Some(msg);
        true
    }

    /// Every retained message whose topic matches `filter`.
    pub(crate) fn matching(&self, filter: &str) -> Vec<Arc<Publication>> {
        let mut out = Vec::new();
        let levels: Vec<&str> = filter.split('/').collect();
        collect(&self.root, &levels, true, &mut out);
        out
    }
}

fn clear(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.msg.take().is_some(),
        Some((first, rest)) => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let hit = clear(child, rest);
            if child.msg.is_none() && child.children.is_empty() {
                node.children.remove(*first);
            }
            hit
        }
    }
}

fn collect(node: &Node, levels: &[&str], root: bool, out: &mut Vec<Arc<Publication>>) {
    let Some((first, rest)) = levels.split_first() else {
        out.extend(node.msg.iter().cloned());
        return;
    };
    // Wildcards at the first level skip `$` topics (MQTT §4.7.2).
    let visible = |name: &str| !(root && name.starts_with('$'));
    match *first {
        "#" => {
            // `#` also matches the parent level itself.
            out.extend(node.msg.iter().cloned());
            for (name, child) in &node.children {
                if visible(name) {
                    subtree(child, out);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    collect(child, rest, false, out);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                collect(child, rest, false, out);
            }
        }
    }
}

fn subtree(node: &Node, out: &mut Vec<Arc<Publication>>) {
    out.extend(node.msg.iter().cloned());
    for child in node.children.values() {
        subtree(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QoS;
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static str) -> Arc<Publication> {
        Arc::new(Publication::new(
            topic,
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
        ))
    }

    fn topics(r: &Retained, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = r
            .matching(filter)
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn filters_find_their_retained_messages() {
        let mut r = Retained::default();
        for t in ["presence/a", "presence/b", "a/b/c", "$SYS/up", "a"] {
            assert!(r.set(msg(t, "x"), 100));
        }
        assert_eq!(topics(&r, "presence/+"), vec!["presence/a", "presence/b"]);
        assert_eq!(topics(&r, "presence/a"), vec!["presence/a"]);
        assert_eq!(topics(&r, "a/#"), vec!["a", "a/b/c"]);
        assert_eq!(topics(&r, "#").len(), 4, "no $SYS under #");
        assert_eq!(topics(&r, "$SYS/#"), vec!["$SYS/up"]);
        assert!(r.set(msg("presence/a", ""), 100));
        assert_eq!(topics(&r, "presence/+"), vec!["presence/b"]);
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn the_store_is_bounded() {
        let mut r = Retained::default();
        assert!(r.set(msg("a", "1"), 1));
        assert!(!r.set(msg("b", "1"), 1));
        assert!(r.set(msg("a", "2"), 1), "replacing is allowed when full");
    }
}
