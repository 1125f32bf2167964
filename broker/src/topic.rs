//! Topic names and filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7): validation, and whether
//! one filter covers another (used by the ACL to decide whether every topic a
//! subscription can match is allowed).

/// Whether `topic` is a valid topic name for PUBLISH: non-empty, no wildcards, no NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid topic filter for SUBSCRIBE.
pub fn valid_filter(filter: &str) -> bool {
    !filter.contains('\0') && crate::config::check_filter(filter).is_ok()
}

/// Splits a shared subscription `$share/{group}/{filter}` (MQTT 5 §4.8.2) into
/// group and filter; `None` if `filter` is not a well-formed shared subscription.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, inner) = rest.split_once('/')?;
    let ok = !group.is_empty() && !group.contains(['+', '#']) && valid_filter(inner);
    ok.then_some((group, inner))
}

/// Whether `filter` has a wildcard level.
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Whether `topic` matches `filter`. Wildcards at the first level never match
/// topics starting with `$` (MQTT §4.7.2).
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    let mut f = filter.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic that `inner` can match is also matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            // `+` covers any single level, but not `#` (which spans several).
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il && ol != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(matches("sport/tennis/player1", "sport/tennis/player1/#"));
        assert!(matches(
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/#"
        ));
        assert!(matches("sport", "sport/#"));
        assert!(matches("sport/tennis", "sport/+"));
        assert!(!matches("sport/tennis/x", "sport/+"));
        assert!(!matches("sport", "sport/+"));
        assert!(matches("/finance", "+/+"));
        assert!(matches("/finance", "/+"));
        assert!(!matches("/finance", "+"));
        assert!(!matches("$SYS/x", "#"));
        assert!(!matches("$SYS/x", "+/x"));
        assert!(matches("$SYS/x", "$SYS/#"));
    }

    #[test]
    fn covering_is_containment_of_match_sets() {
        assert!(covers("users/alice/#", "users/alice/inbox"));
        assert!(covers("users/alice/#", "users/alice/#"));
        assert!(covers("users/alice/#", "users/alice/+"));
        assert!(covers("public/#", "public/+/x"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("users/alice/#", "users/+/inbox"));
        assert!(!covers("public/#", "#"));
    }

    #[test]
    fn topic_and_filter_syntax() {
        assert!(valid_topic("users/a/outbox"));
        assert!(!valid_topic("users/+/outbox"));
        assert!(!valid_topic(""));
        assert!(valid_filter("users/+/inbox"));
        assert!(!valid_filter("users/#/inbox"));
    }
}
