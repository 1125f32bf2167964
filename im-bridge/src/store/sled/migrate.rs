//! From the earlier layout, a sled tree per kind of key, to the one tree: each
//! old tree's keys are the new keys without their kind byte, so moving is a copy
//! under a prefix, a batch at a time, then the old tree is dropped. A crash
//! halfway leaves the old tree in place and the next open copies it again (the
//! same keys and values; nothing else writes before `open` returns).

use sled::IVec;

use super::keys;

/// Old tree, the kind its keys move under, and whether values are kept (the old
/// `activity` index held a timestamp the conversation lists no longer need).
const MOVES: [(&str, u8, bool); 13] = [
    ("msgs", keys::MSG, true),
    ("heads", keys::HEAD, true),
    ("cursors", keys::CURSOR, true),
    ("activity", keys::LIST, false),
    ("idem", keys::IDEM, true),
    ("idem_exp", keys::EXPIRY, true),
    ("msgs_by_time", keys::TIME, true),
    ("accounts", keys::ACCOUNT, true),
    ("retained", keys::RETAINED, true),
    ("groups", keys::GROUP, true),
    ("members", keys::MEMBER, true),
    ("user_groups", keys::USER_GROUP, true),
    ("contacts", keys::CONTACT, true),
];

/// Old trees whose content nothing reads any more.
const DROPPED: [&str; 1] = ["recent"];

/// Keys copied per batch.
const CHUNK: usize = 10_000;

/// Moves whatever the old layout holds into `tree`; returns how many keys moved.
pub(super) fn from_tree_per_kind(db: &sled::Db, tree: &sled::Tree) -> sled::Result<usize> {
    let names: Vec<IVec> = db.tree_names();
    let exists = |name: &str| names.iter().any(|n| n.as_ref() == name.as_bytes());
    let mut moved = 0;
    for (name, kind, keep_value) in MOVES {
        if !exists(name) {
            continue;
        }
        let old = db.open_tree(name)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in old.iter() {
            let (k, v) = kv?;
            let mut key = Vec::with_capacity(1 + k.len());
            key.push(kind);
            key.extend_from_slice(&k);
            batch.insert(key, if keep_value { v } else { IVec::default() });
            in_batch += 1;
            if in_batch == CHUNK {
                tree.apply_batch(std::mem::take(&mut batch))?;
                moved += in_batch;
                in_batch = 0;
            }
        }
        tree.apply_batch(batch)?;
        moved += in_batch;
        // Durable before the old copy goes.
        db.flush()?;
        db.drop_tree(name)?;
    }
    for name in DROPPED {
        if exists(name) {
            db.drop_tree(name)?;
        }
    }
    Ok(moved)
}

/// Moves retained messages kept as tree keys (`R topic`, the layout before
/// `retained.log`) into the log; returns how many.
pub(super) fn retained_out_of_the_tree(
    tree: &sled::Tree,
    log: &super::retained::RetainedLog,
) -> Result<usize, crate::store::StoreError> {
    let mut changes = Vec::new();
    let mut batch = sled::Batch::default();
    for kv in tree.range([keys::RETAINED].as_slice()..[keys::RETAINED + 1].as_slice()) {
        let (k, v) = kv?;
        let (Ok(topic), Some((qos, payload))) = (std::str::from_utf8(&k[1..]), v.split_first())
        else {
            return Err(crate::store::StoreError::Corrupt("retained"));
        };
        changes.push((
            topic.to_owned(),
            Some((bytes::Bytes::copy_from_slice(payload), *qos)),
        ));
        batch.remove(k);
    }
    if changes.is_empty() {
        return Ok(0);
    }
    // In the log and durable before the keys go.
    log.append(&changes)?;
    log.sync()?;
    tree.apply_batch(batch)?;
    Ok(changes.len())
}

/// Turns list entries (`l uid conv`, the list before it came from the cursors)
/// into cursors at 0 where the user has none, a batch at a time; returns how
/// many. Each batch removes what it turned, so a crash halfway resumes.
pub(super) fn lists_into_cursors(tree: &sled::Tree) -> sled::Result<usize> {
    let mut moved = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in tree
            .range([keys::LIST].as_slice()..[keys::LIST + 1].as_slice())
            .take(CHUNK)
        {
            let (k, _) = kv?;
            let mut cursor = k.to_vec();
            cursor[0] = keys::CURSOR;
            if !tree.contains_key(&cursor)? {
                batch.insert(cursor, &0u64.to_be_bytes());
            }
            batch.remove(k);
            in_batch += 1;
        }
        if in_batch == 0 {
            return Ok(moved);
        }
        tree.apply_batch(batch)?;
        moved += in_batch;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use super::super::SledStore;
    use crate::store::{Range, Reads, Store, Window};
    use imqtt_wire::{ConvId, Envelope, GroupRole};

    /// A store as the earlier layout wrote it: one DM message, an account, a
    /// group with a member, a contact and a retained message.
    pub(crate) fn write_old_layout(path: &Path) {
        let db = sled::open(path).expect("open");
        let tree = |n: &str| db.open_tree(n).expect("tree");
        let env = serde_json::json!({"id":"01JD7Y3X3W6K0Q8S3R2Y1N5V4C","conv":"dm:ann:ben","seq":1,
            "from":"ann","to":"ben","ts":1000,"qos":1,"body":{"text":"hi"}});
        let mut msg = b"dm:ann:ben\0".to_vec();
        msg.extend_from_slice(&1u64.to_be_bytes());
        tree("msgs")
            .insert(&msg, serde_json::to_vec(&env).expect("json"))
            .expect("msg");
        let mut head = 1u64.to_be_bytes().to_vec();
        head.extend_from_slice(&1000u64.to_be_bytes());
        tree("heads").insert("dm:ann:ben", head).expect("head");
        tree("cursors")
            .insert("ann\0dm:ann:ben", &1u64.to_be_bytes())
            .expect("cursor");
        for uid in ["ann", "ben"] {
            tree("activity")
                .insert(format!("{uid}\0dm:ann:ben"), &1000u64.to_be_bytes())
                .expect("activity");
            let mut recent = format!("{uid}\0").into_bytes();
            recent.extend_from_slice(&(u64::MAX - 1000).to_be_bytes());
            recent.extend_from_slice(b"dm:ann:ben");
            tree("recent").insert(recent, &[]).expect("recent");
        }
        tree("accounts")
            .insert("ann", "$argon2id$x")
            .expect("account");
        let group = serde_json::json!({"id":"team","name":"Team","owner":"ann","open":false,
            "history_visible":"since_join","base":0,"members":1});
        tree("groups")
            .insert("team", serde_json::to_vec(&group).expect("json"))
            .expect("group");
        let mut m = vec![0u8];
        m.extend_from_slice(&1u64.to_be_bytes());
        m.extend_from_slice(&u64::MAX.to_be_bytes());
        tree("members").insert("team\0ann", m).expect("member");
        tree("user_groups").insert("ann\0team", &[]).expect("ug");
        tree("contacts").insert("ann\0ben", &[]).expect("contact");
        tree("retained")
            .insert("public/x", b"\x01on")
            .expect("retained");
        db.flush().expect("flush");
    }

    pub(crate) fn check_moved(s: &SledStore) {
        let dm = ConvId::dm("ann", "ben").expect("conv");
        assert_eq!(s.head(&dm).expect("head").seq, 1);
        let (page, _) = s
            .messages(&dm, Range::After(0), Window::ALL, 10)
            .expect("page");
        let e: Envelope = serde_json::from_slice(&page[0]).expect("json");
        assert_eq!(e.body, serde_json::json!({"text":"hi"}));
        assert_eq!(s.cursor("ann", &dm).expect("cursor"), 1);
        let list = s.conversations("ben", 10).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].conv, dm);
        assert_eq!(list[0].head.last_ts, 1000);
        assert_eq!(
            s.password_hash("ann").expect("hash").as_deref(),
            Some("$argon2id$x")
        );
        assert_eq!(s.group("team").expect("group").expect("some").owner, "ann");
        assert_eq!(
            s.membership("team", "ann").expect("m").expect("some").role,
            GroupRole::Owner
        );
        assert_eq!(s.user_groups("ann", 10).expect("groups"), vec!["team"]);
        assert!(s.is_contact("ann", "ben").expect("contact"));
        let retained = s.retained().expect("retained");
        assert_eq!(retained.len(), 1);
        assert_eq!(retained[0].0, "public/x");
        assert_eq!(&retained[0].1[..], b"on");
        assert_eq!(retained[0].2, 1);
        let names: Vec<_> = s.db.tree_names();
        assert!(
            !names
                .iter()
                .any(|n| n.as_ref() == b"msgs" || n.as_ref() == b"recent"),
            "old trees dropped"
        );
    }
}

#[cfg(test)]
mod lists {
    use super::super::keys::{CURSOR, LIST, key2, u64_at};

    #[test]
    fn list_entries_become_cursors_and_a_cursor_already_there_stays() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let tree = db.open_tree("t").expect("tree");
        for uid in ["ann", "ben"] {
            tree.insert(key2(LIST, uid, "dm:ann:ben"), &[])
                .expect("list");
        }
        tree.insert(key2(CURSOR, "ann", "dm:ann:ben"), &3u64.to_be_bytes())
            .expect("cursor");
        assert_eq!(super::lists_into_cursors(&tree).expect("move"), 2);
        let cursor = |uid| {
            tree.get(key2(CURSOR, uid, "dm:ann:ben"))
                .expect("get")
                .and_then(|v| u64_at(&v, 0))
        };
        assert_eq!((cursor("ann"), cursor("ben")), (Some(3), Some(0)));
        assert_eq!(tree.scan_prefix([LIST]).count(), 0);
        assert_eq!(super::lists_into_cursors(&tree).expect("again"), 0);
    }
}
