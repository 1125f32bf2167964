//! The NATS subjects of a cluster, all under `cluster.subject_prefix` (`P`):
//!
//! | subject | carries | who subscribes |
//! |---|---|---|
//! | `P.u.{uid}.m` | publications to any of `users/{uid}/...` | nodes with a session of `uid` |
//! | `P.u.{uid}.c` | the user's session changes (takeovers) | the same nodes |
//! | `P.t.{level}.{level}...` | publications to every other topic | nodes whose sessions' filters match |
//! | `P.r` | retained publications | every node (each keeps the cluster's retained set) |
//! | `P.hb` | heartbeats | every node |
//! | `P.presence` | each node's devices per user | every node |
//! | `P.ctl` | requests to every node (disconnect a user, revoke) | every node |
//! | `P.n.{node}.>` | answers to one node's requests | that node |
//!
//! A node holds one NATS subscription per user with a session on it (whatever
//! that user subscribes to under `users/{uid}/`) and one per other distinct
//! filter, so NATS sends a DM only to the nodes holding its users, and a group
//! message once to each node with members subscribed. Topic levels become
//! subject tokens: bytes other than letters, digits, `-` and `_` are written
//! `~XX` (hex), and an empty level is `~`.

use std::fmt::Write;

use broker::cluster::Interest;

/// Whether `prefix` is one or more NATS tokens made of safe bytes.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `node` can name a node (it is a subject token once encoded, and shows
/// in logs and the admin API as written).
pub fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 64
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One topic level as a subject token.
pub fn token(level: &str) -> String {
    if level.is_empty() {
        return "~".to_owned();
    }
    let mut out = String::with_capacity(level.len());
    for b in level.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "~{b:02X}");
        }
    }
    out
}

/// The cluster's subjects.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (checked by the config).
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Where a publication to `topic` goes; `retained` ones go to every node.
    pub fn publication(&self, topic: &str, retained: bool) -> String {
        if retained {
            return self.retained();
        }
        let mut levels = topic.split('/');
        if let (Some("users"), Some(uid)) = (levels.next(), levels.next()) {
            // Every `users/{uid}/...` topic, so one subscription per user serves.
            return format!("{}.u.{}.m", self.prefix, token(uid));
        }
        let mut out = format!("{}.t", self.prefix);
        for level in topic.split('/') {
            out.push('.');
            out.push_str(&token(level));
        }
        out
    }

    /// The session changes of `uid`.
    pub fn user_control(&self, uid: &str) -> String {
        format!("{}.u.{}.c", self.prefix, token(uid))
    }

    /// What a node subscribes to for `interest`.
    pub fn interest(&self, interest: Interest<'_>) -> Vec<String> {
        match interest {
            Interest::User(uid) => vec![self.user(uid)],
            Interest::Filter(filter) => self.filter(filter),
        }
    }

    /// Everything for `uid`: its publications and its session changes.
    fn user(&self, uid: &str) -> String {
        format!("{}.u.{}.>", self.prefix, token(uid))
    }

    /// The subjects a filter's topics may be published on.
    fn filter(&self, filter: &str) -> Vec<String> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        // Presence never crosses: every node publishes it for itself.
        if let ["presence", uid] = levels.as_slice()
            && !matches!(*uid, "+" | "#")
        {
            return out;
        }
        // Topics `users/{uid}/...` (two levels or more) are on `P.u.{uid}.m`.
        let (first, second) = (levels[0], levels.get(1).copied());
        if matches!(first, "users" | "+" | "#") {
            match (first, second) {
                ("#", _) | (_, Some("+" | "#")) => out.push(format!("{}.u.*.m", self.prefix)),
                (_, Some(uid)) => out.push(self.user(uid)),
                (_, None) => {}
            }
        }
        // Every other topic is on `P.t.{levels}`; of those starting with `users`,
        // only `users` itself.
        let t_side = !(first == "users" && second.is_some());
        if first == "users" && second == Some("#") {
            // Of `users/#`'s topics, only `users` itself is on this side.
            out.push(format!("{}.t.users", self.prefix));
        } else if t_side {
            let mut subject = format!("{}.t", self.prefix);
            for (i, level) in levels.iter().enumerate() {
                match *level {
                    "#" => {
                        // MQTT's `a/#` also matches `a` itself.
                        if i > 0 {
                            out.push(subject.clone());
                        }
                        subject.push_str(".>");
                        break;
                    }
                    "+" => subject.push_str(".*"),
                    l => {
                        subject.push('.');
                        subject.push_str(&token(l));
                    }
                }
            }
            out.push(subject);
        }
        out
    }

    /// Retained publications, which every node keeps.
    pub fn retained(&self) -> String {
        format!("{}.r", self.prefix)
    }

    /// Heartbeats.
    pub fn heartbeat(&self) -> String {
        format!("{}.hb", self.prefix)
    }

    /// Each node's devices per user.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// Requests to every node.
    pub fn control(&self) -> String {
        format!("{}.ctl", self.prefix)
    }

    /// Everything addressed to one node.
    pub fn node(&self, node: &str) -> String {
        format!("{}.n.{}.>", self.prefix, token(node))
    }

    /// The answer to request `id` of `node`.
    pub fn reply(&self, node: &str, id: u64) -> String {
        format!("{}.n.{}.r.{id}", self.prefix, token(node))
    }

    /// The request id in an answer's subject.
    pub fn reply_id(subject: &str) -> Option<u64> {
        let (rest, id) = subject.rsplit_once('.')?;
        rest.ends_with(".r").then_some(())?;
        id.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_become_safe_tokens() {
        assert_eq!(token("alice"), "alice");
        assert_eq!(token("a.b c"), "a~2Eb~20c");
        assert_eq!(token(""), "~");
        assert_eq!(token("~"), "~7E");
        assert_eq!(token("*"), "~2A");
        assert_eq!(token(">"), "~3E");
        assert_eq!(token("é"), "~C3~A9");
    }

    #[test]
    fn a_user_s_topics_share_one_subject() {
        let s = Subjects::new("imqtt");
        assert_eq!(s.publication("users/alice/inbox", false), "imqtt.u.alice.m");
        assert_eq!(
            s.publication("users/alice/events", false),
            "imqtt.u.alice.m"
        );
        assert_eq!(s.publication("users/alice/inbox", true), "imqtt.r");
        assert_eq!(s.publication("groups/g1", false), "imqtt.t.groups.g1");
        assert_eq!(s.publication("a//b", false), "imqtt.t.a.~.b");
        assert_eq!(s.interest(Interest::User("alice")), vec!["imqtt.u.alice.>"]);
        assert_eq!(
            s.interest(Interest::Filter("users/alice/inbox")),
            vec!["imqtt.u.alice.>"]
        );
        // Each node publishes presence for itself: watching needs no subject.
        assert!(s.interest(Interest::Filter("presence/alice")).is_empty());
    }

    #[test]
    fn every_topic_a_filter_matches_is_on_one_of_its_subjects() {
        let s = Subjects::new("p");
        let cases: &[(&str, &[&str])] = &[
            ("groups/g1", &["groups/g1"]),
            ("groups/+", &["groups/g1", "groups/g2"]),
            ("sensors/#", &["sensors", "sensors/a", "sensors/a/b"]),
            ("#", &["a", "a/b", "users/alice/inbox"]),
            ("+/alice/inbox", &["users/alice/inbox", "x/alice/inbox"]),
            ("users/+/inbox", &["users/bob/inbox"]),
            ("users/#", &["users/bob/events"]),
            ("+/#", &["users/bob/events", "a/b", "a"]),
            ("users", &["users"]),
            ("users/x", &["users/x"]),
            ("users/#", &["users", "users/x"]),
            ("+", &["users", "a"]),
            ("+/+", &["users/x", "a/b"]),
            ("$SYS/#", &["$SYS/broker"]),
        ];
        for (filter, topics) in cases {
            let subjects = s.interest(Interest::Filter(filter));
            for topic in *topics {
                let subject = s.publication(topic, false);
                assert!(
                    subjects.iter().any(|sub| nats_matches(sub, &subject)),
                    "{filter}: {topic} goes to {subject}, not in {subjects:?}"
                );
            }
        }
    }

    /// NATS's own matching rule, for the test.
    fn nats_matches(filter: &str, subject: &str) -> bool {
        let f: Vec<&str> = filter.split('.').collect();
        let t: Vec<&str> = subject.split('.').collect();
        for (i, token) in f.iter().enumerate() {
            match *token {
                ">" => return t.len() > i,
                "*" if i < t.len() => continue,
                x if i < t.len() && x == t[i] => continue,
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    #[test]
    fn reply_subjects_carry_their_id() {
        let s = Subjects::new("imqtt");
        let r = s.reply("node-1", 42);
        assert_eq!(r, "imqtt.n.node-1.r.42");
        assert_eq!(Subjects::reply_id(&r), Some(42));
        assert_eq!(Subjects::reply_id("imqtt.n.node-1.x.42"), None);
    }
}
