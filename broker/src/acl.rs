//! Authorization of SUBSCRIBE and PUBLISH (DESIGN.md §3).
//!
//! The IM namespace (`users/`, `groups/`, `presence/`) has fixed rules that config
//! cannot loosen; `[[mqtt.acl]]` rules open other topics. A subscription is allowed
//! only when every topic it can match is allowed, so wildcards that could reach
//! another user's topics are refused. A user's outbox (`imqtt_wire`'s outbox rule)
//! is that user's alone: [`Acl::may_publish`] is the one place that says so, for a
//! client's PUBLISH, its will and the IM side's own publishes.

use std::sync::Arc;

use imqtt_wire::topic::outbox_owner;

use crate::config::{Access, AclRule};
use crate::topic;

/// Questions about the IM domain that only the bridge can answer.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `uid` is currently a member of group `gid`.
    fn is_group_member(&self, uid: &str, gid: &str) -> bool;
    /// Whether `watcher` may see the presence of `uid`.
    fn can_see_presence(&self, watcher: &str, uid: &str) -> bool;
}

/// Denies every group and presence question; used until the bridge provides one.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl Authorizer for DenyAll {
    fn is_group_member(&self, _uid: &str, _gid: &str) -> bool {
        false
    }
    fn can_see_presence(&self, _watcher: &str, _uid: &str) -> bool {
        false
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// The user id from the token.
    pub uid: &'a str,
    /// Role `admin`: every topic.
    pub superuser: bool,
}

/// Who publishes: a client, or the IM side through [`crate::BrokerHandle::publish`].
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    /// A connected client, as its token says.
    Client(Principal<'a>),
    /// The IM side: every topic but the users' outboxes.
    Server,
}

/// The ACL: fixed IM rules, config rules and the bridge's authorizer.
#[derive(Clone)]
pub struct Acl {
    rules: Arc<[AclRule]>,
    authorizer: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

const IM_ROOTS: [&str; 3] = ["users", "groups", "presence"];

impl Acl {
    /// An ACL with the config's extra rules and the bridge's authorizer.
    pub fn new(rules: Vec<AclRule>, authorizer: Arc<dyn Authorizer>) -> Self {
        Acl {
            rules: rules.into(),
            authorizer,
        }
    }

    /// Whether `who` may subscribe to `filter` (already syntactically valid).
    pub fn may_subscribe(&self, who: Principal<'_>, filter: &str) -> bool {
        if who.superuser {
            return true;
        }
        let mut levels = filter.split('/');
        let root = levels.next().unwrap_or_default();
        match root {
            // A first-level wildcard can match other users' IM topics.
            "+" | "#" => false,
            _ if root.starts_with('$') => false,
            "users" => {
                // users/{own uid}/anything: the user's own tree.
                levels.next() == Some(who.uid)
            }
            "groups" => match (levels.next(), levels.next()) {
                (Some(gid), None) if !topic::is_wildcard(gid) => {
                    self.authorizer.is_group_member(who.uid, gid)
                }
                _ => false,
            },
            "presence" => match (levels.next(), levels.next()) {
                (Some(uid), None) if !topic::is_wildcard(uid) => {
                    uid == who.uid || self.authorizer.can_see_presence(who.uid, uid)
                }
                _ => false,
            },
            _ => self.rule_allows(who.uid, filter, Access::Subscribe),
        }
    }

    /// Whether the answer for `filter` comes from the bridge's [`Authorizer`]
    /// (group and presence topics), so that it can change at any moment.
    pub fn asks_authorizer(&self, who: Principal<'_>, filter: &str) -> bool {
        !who.superuser
            && match filter.split_once('/') {
                Some(("groups", _)) => true,
                Some(("presence", uid)) => uid != who.uid,
                _ => false,
            }
    }

    /// Whether `who` may publish to `topic` (already syntactically valid). An
    /// outbox topic allowed here is the publisher's own, to be uplinked, never
    /// routed.
    pub fn may_publish(&self, who: Publisher<'_>, topic: &str) -> bool {
        // The outbox is its owner's uplink alone: not another user's, not a
        // superuser's, not the IM side's (DESIGN.md §3).
        if let Some(owner) = outbox_owner(topic) {
            return matches!(who, Publisher::Client(who) if who.uid == owner);
        }
        let who = match who {
            Publisher::Server => return true,
            Publisher::Client(who) if who.superuser => return true,
            Publisher::Client(who) => who,
        };
        let root = topic.split('/').next().unwrap_or_default();
        if IM_ROOTS.contains(&root) || root.starts_with('$') {
            return false;
        }
        self.rule_allows(who.uid, topic, Access::Publish)
    }

    fn rule_allows(&self, uid: &str, filter: &str, want: Access) -> bool {
        self.rules.iter().any(|rule| {
            (rule.access == want || rule.access == Access::All)
                && (rule.users.is_empty() || rule.users.iter().any(|u| u == uid))
                && topic::covers(&rule.pattern.replace("{uid}", uid), filter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Groups;
    impl Authorizer for Groups {
        fn is_group_member(&self, uid: &str, gid: &str) -> bool {
            uid == "alice" && gid == "team"
        }
        fn can_see_presence(&self, watcher: &str, uid: &str) -> bool {
            watcher == "alice" && uid == "bob"
        }
    }

    fn acl(rules: Vec<AclRule>) -> Acl {
        Acl::new(rules, Arc::new(Groups))
    }

    const ALICE: Principal<'static> = Principal {
        uid: "alice",
        superuser: false,
    };

    #[test]
    fn im_subscriptions_follow_the_table() {
        let acl = acl(vec![]);
        for ok in [
            "users/alice/inbox",
            "users/alice/events",
            "users/alice/#",
            "users/alice/+",
            "groups/team",
            "presence/bob",
            "presence/alice",
        ] {
            assert!(acl.may_subscribe(ALICE, ok), "{ok}");
        }
        for refused in [
            "users/bob/inbox",
            "users/+/inbox",
            "users/#",
            "#",
            "+/alice/inbox",
            "$SYS/#",
            "$share/g/users/alice/inbox",
            "groups/other",
            "groups/+",
            "groups/team/#",
            "presence/carol",
            "presence/+",
            "public/x",
        ] {
            assert!(!acl.may_subscribe(ALICE, refused), "{refused}");
        }
    }

    #[test]
    fn only_group_and_other_users_presence_topics_ask_the_authorizer() {
        let acl = acl(vec![]);
        assert!(acl.asks_authorizer(ALICE, "groups/team"));
        assert!(acl.asks_authorizer(ALICE, "presence/bob"));
        assert!(!acl.asks_authorizer(ALICE, "presence/alice"));
        assert!(!acl.asks_authorizer(ALICE, "users/alice/inbox"));
        let admin = Principal {
            uid: "ops",
            superuser: true,
        };
        assert!(!acl.asks_authorizer(admin, "groups/team"));
    }

    #[test]
    fn publishing_is_limited_to_the_own_outbox() {
        let acl = acl(vec![]);
        assert!(acl.may_publish(Publisher::Client(ALICE), "users/alice/outbox"));
        for refused in [
            "users/bob/outbox",
            "users/alice/inbox",
            "groups/team",
            "presence/alice",
            "$SYS/x",
            "anything",
        ] {
            assert!(
                !acl.may_publish(Publisher::Client(ALICE), refused),
                "{refused}"
            );
        }
    }

    #[test]
    fn an_outbox_is_its_owners_alone_superusers_and_the_server_included() {
        let acl = acl(vec![AclRule {
            pattern: "#".into(),
            access: Access::All,
            users: vec![],
        }]);
        let admin = Publisher::Client(Principal {
            uid: "root",
            superuser: true,
        });
        for who in [admin, Publisher::Server, Publisher::Client(ALICE)] {
            assert!(!acl.may_publish(who, "users/bob/outbox"), "{who:?}");
            // Not a valid id, but an outbox all the same: nobody's.
            assert!(!acl.may_publish(who, "users/b b/outbox"), "{who:?}");
        }
        assert!(acl.may_publish(admin, "users/root/outbox"));
        assert!(acl.may_publish(Publisher::Server, "users/bob/inbox"));
        assert!(acl.may_publish(Publisher::Server, "$SYS/x"));
    }

    #[test]
    fn config_rules_open_other_topics_but_never_the_im_namespace() {
        let acl = acl(vec![
            AclRule {
                pattern: "public/#".into(),
                access: Access::All,
                users: vec![],
            },
            AclRule {
                pattern: "devices/{uid}/#".into(),
                access: Access::Publish,
                users: vec![],
            },
            AclRule {
                pattern: "#".into(),
                access: Access::Subscribe,
                users: vec!["ops".into()],
            },
        ]);
        assert!(acl.may_subscribe(ALICE, "public/+/temp"));
        assert!(acl.may_publish(Publisher::Client(ALICE), "public/x"));
        assert!(acl.may_publish(Publisher::Client(ALICE), "devices/alice/t"));
        assert!(!acl.may_publish(Publisher::Client(ALICE), "devices/bob/t"));
        assert!(!acl.may_subscribe(ALICE, "devices/alice/t"));
        let ops = Principal {
            uid: "ops",
            superuser: false,
        };
        assert!(acl.may_subscribe(ops, "anything/here"));
        // `#` would reach other users' inboxes: the IM rules still hold.
        assert!(!acl.may_subscribe(ops, "#"));
        assert!(!acl.may_subscribe(ops, "users/alice/inbox"));
    }

    #[test]
    fn superuser_may_do_everything() {
        let admin = Principal {
            uid: "root",
            superuser: true,
        };
        let acl = acl(vec![]);
        assert!(acl.may_subscribe(admin, "#"));
        assert!(acl.may_publish(Publisher::Client(admin), "users/bob/inbox"));
    }
}
