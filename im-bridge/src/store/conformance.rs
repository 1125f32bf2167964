//! The store's behaviour, written once against the [`Store`] trait and run on
//! every engine (`run`): seqs, heads, idempotency, cursors, conversation lists,
//! read windows, groups, contacts, accounts, retained messages, retention and
//! purge, and rounds (read-your-writes, all or nothing).

use std::any::Any;
use std::time::Duration;

use bytes::Bytes;
use imqtt_wire::{ConvId, Envelope, GroupRole, HistoryVisible, Qos};

use super::{
    Appended, GroupRecord, GroupWrite, Head, Membership, NewMessage, Range, Round, Store,
    StoreError, Window,
};

/// The idempotency TTL of the stores the suite is run on.
pub(crate) const TTL: Duration = Duration::from_secs(3600);

/// Makes an empty store, and whatever must live as long as it (a temporary
/// directory, a database).
pub(crate) type MakeStore<'a> = dyn FnMut() -> (Box<dyn Store>, Box<dyn Any>) + 'a;

/// A named behaviour, checked on an empty store.
type Case = (&'static str, fn(&dyn Store));

/// Runs every case, each on a new store from `make`.
pub(crate) fn run(make: &mut MakeStore<'_>) {
    let cases: [Case; 17] = [
        (
            "seqs and retries",
            seqs_are_contiguous_per_conversation_and_retries_return_the_original,
        ),
        (
            "pages",
            pages_are_contiguous_and_say_whether_more_lie_beyond,
        ),
        ("windows", pages_stay_inside_the_readers_window),
        (
            "cursors",
            cursors_move_forward_only_and_never_above_the_head,
        ),
        ("lists", a_users_conversations_come_most_recent_first),
        (
            "idempotency expiry",
            idempotency_keys_expire_and_then_a_retry_is_new,
        ),
        (
            "retention",
            retention_deletes_what_is_older_and_nothing_else,
        ),
        (
            "purge",
            purging_a_conversation_deletes_its_messages_and_nothing_else,
        ),
        (
            "revisions",
            an_edit_names_its_target_and_an_amend_replaces_it,
        ),
        ("webhook queues", webhook_events_queue_in_order_per_hook),
        ("accounts", accounts_are_created_once),
        (
            "groups",
            memberships_the_members_list_and_the_users_groups_agree,
        ),
        ("contacts", contacts_are_a_set_per_owner),
        ("retained", retained_messages_are_set_replaced_and_cleared),
        ("read your writes", a_round_reads_its_own_writes),
        ("rollback", a_round_dropped_without_commit_writes_nothing),
        ("sample", |s| {
            let now = write_sample(s);
            check_sample(s, now);
        }),
    ];
    for (name, case) in cases {
        let (store, _keep) = make();
        eprintln!("store conformance: {name}");
        case(&*store);
    }
}

/// Runs `f` in one round and commits it durably.
pub(crate) fn round<T>(
    store: &dyn Store,
    f: impl FnOnce(&mut dyn Round) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut r = store.begin()?;
    let out = f(&mut *r)?;
    r.commit(true)?;
    Ok(out)
}

fn append(store: &dyn Store, sends: &[NewMessage], now: u64) -> Vec<Appended> {
    round(store, |r| r.append(sends, now)).expect("append")
}

pub(crate) fn dm(a: &str, b: &str) -> ConvId {
    ConvId::dm(a, b).expect("conv")
}

pub(crate) fn send(from: &str, to: &str, cmid: Option<&str>, text: &str) -> NewMessage {
    NewMessage {
        from: from.into(),
        conv: dm(from, to),
        to: to.into(),
        client_msg_id: cmid.map(Into::into),
        idempotency_key: cmid.map(Into::into),
        qos: Qos::AtLeastOnce,
        body: serde_json::json!({ "text": text }),
        revision: None,
    }
}

fn group_send(from: &str, gid: &str, text: &str) -> NewMessage {
    NewMessage {
        from: from.into(),
        conv: ConvId::group(gid).expect("conv"),
        to: gid.into(),
        client_msg_id: None,
        idempotency_key: None,
        qos: Qos::AtLeastOnce,
        body: serde_json::json!({ "text": text }),
        revision: None,
    }
}

fn seqs(a: &[Appended]) -> Vec<u64> {
    a.iter().map(|m| m.envelope.seq).collect()
}

fn seqs_of(page: &[Bytes]) -> Vec<u64> {
    page.iter()
        .map(|b| serde_json::from_slice::<Envelope>(b).expect("json").seq)
        .collect()
}

fn seqs_are_contiguous_per_conversation_and_retries_return_the_original(s: &dyn Store) {
    let batch = [
        send("alice", "bob", Some("c1"), "1"),
        send("bob", "alice", None, "2"),
        send("alice", "carol", Some("c2"), "3"),
        // A retry inside the same round.
        send("alice", "bob", Some("c1"), "1 again"),
    ];
    let out = append(s, &batch, 1000);
    assert_eq!(seqs(&out), vec![1, 2, 1, 1]);
    assert_eq!(
        out.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
        vec![false, false, false, true]
    );
    assert_eq!(out[3].envelope.id, out[0].envelope.id);
    assert_eq!(out[3].envelope.body, serde_json::json!({"text": "1"}));
    assert_eq!(out[3].json, out[0].json, "the stored JSON, byte for byte");
    assert_eq!(out[0].envelope.ts, 1000);
    assert_eq!(out[0].envelope.client_msg_id.as_deref(), Some("c1"));
    assert_ne!(out[0].envelope.id, out[1].envelope.id);
    // A later retry too, and a new send goes on from the head.
    let later = append(
        s,
        &[
            send("alice", "bob", Some("c1"), "x"),
            send("alice", "bob", None, "4"),
        ],
        2000,
    );
    assert_eq!(seqs(&later), vec![1, 3]);
    assert!(later[0].duplicate);
    // The same client_msg_id from another sender is another send.
    let other = append(s, &[send("bob", "alice", Some("c1"), "5")], 2500);
    assert!(!other[0].duplicate);
    assert_eq!(other[0].envelope.seq, 4);
    assert_eq!(
        s.head(&dm("alice", "bob")).expect("head"),
        Head {
            seq: 4,
            last_ts: 2500
        }
    );
    assert_eq!(s.head(&dm("x", "y")).expect("head"), Head::default());
}

fn pages_are_contiguous_and_say_whether_more_lie_beyond(s: &dyn Store) {
    let sends: Vec<_> = (0..10)
        .map(|i| send("ann", "ben", None, &i.to_string()))
        .collect();
    append(s, &sends, 5);
    let conv = dm("ann", "ben");
    let page = |range, limit| {
        let (p, more) = s.messages(&conv, range, Window::ALL, limit).expect("page");
        (seqs_of(&p), more)
    };
    assert_eq!(page(Range::After(0), 4), (vec![1, 2, 3, 4], true));
    assert_eq!(page(Range::After(8), 4), (vec![9, 10], false));
    assert_eq!(page(Range::After(10), 4), (vec![], false));
    assert_eq!(page(Range::Before(8), 3), (vec![5, 6, 7], true));
    assert_eq!(page(Range::Before(3), 5), (vec![1, 2], false));
    assert_eq!(page(Range::Before(u64::MAX), 2), (vec![9, 10], true));
    // Another conversation's keys are never read.
    let other = dm("ann", "bea");
    assert!(
        s.messages(&other, Range::After(0), Window::ALL, 10)
            .expect("page")
            .0
            .is_empty()
    );
}

fn pages_stay_inside_the_readers_window(s: &dyn Store) {
    let sends: Vec<_> = (0..10)
        .map(|i| group_send("ann", "g", &i.to_string()))
        .collect();
    append(s, &sends, 5);
    let conv = ConvId::group("g").expect("conv");
    let w = Window { first: 3, last: 7 };
    let page = |range, limit| {
        let (p, more) = s.messages(&conv, range, w, limit).expect("page");
        (seqs_of(&p), more)
    };
    assert_eq!(page(Range::After(0), 3), (vec![3, 4, 5], true));
    assert_eq!(page(Range::After(5), 10), (vec![6, 7], false));
    assert_eq!(page(Range::After(7), 10), (vec![], false));
    assert_eq!(page(Range::Before(u64::MAX), 2), (vec![6, 7], true));
    assert_eq!(page(Range::Before(5), 10), (vec![3, 4], false));
    assert_eq!(page(Range::Before(3), 10), (vec![], false));
}

fn cursors_move_forward_only_and_never_above_the_head(s: &dyn Store) {
    let conv = dm("ann", "ben");
    let sends: Vec<_> = (0..5)
        .map(|i| send("ann", "ben", None, &i.to_string()))
        .collect();
    append(s, &sends, 5);
    // The sender has read its own messages; the recipient nothing.
    assert_eq!(s.cursor("ann", &conv).expect("cursor"), 5);
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 0);
    round(s, |r| r.ack("ben", &[(conv.clone(), 3)])).expect("ack");
    round(s, |r| r.ack("ben", &[(conv.clone(), 2)])).expect("ack lower");
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 3);
    let err =
        round(s, |r| r.ack("ben", &[(conv.clone(), 4), (conv.clone(), 6)])).expect_err("above");
    assert!(
        matches!(
            err,
            StoreError::AboveHead {
                seq: 6,
                head: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 3, "all or nothing");
    // A refused ack inside a round leaves the round's other writes standing.
    round(s, |r| {
        assert!(r.ack("ben", &[(conv.clone(), 9)]).is_err());
        r.ack("ben", &[(conv.clone(), 4)])
    })
    .expect("round");
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 4);
}

fn a_users_conversations_come_most_recent_first(s: &dyn Store) {
    append(s, &[send("ann", "ben", None, "a")], 10);
    append(s, &[send("ann", "cat", None, "b")], 20);
    append(s, &[send("dan", "ann", None, "c")], 30);
    append(s, &[send("ben", "ann", None, "d")], 40);
    let list = s.conversations("ann", 10).expect("list");
    let convs: Vec<_> = list.iter().map(|c| c.conv.to_string()).collect();
    assert_eq!(convs, vec!["dm:ann:ben", "dm:ann:dan", "dm:ann:cat"]);
    assert_eq!(
        list[0].head,
        Head {
            seq: 2,
            last_ts: 40
        }
    );
    assert_eq!(list[0].cursor, 1);
    assert_eq!(list[1].cursor, 0);
    assert_eq!(s.conversations("ann", 1).expect("list").len(), 1);
    assert_eq!(s.conversations("ben", 10).expect("list").len(), 1);
    assert!(s.conversations("zed", 10).expect("list").is_empty());
    // Groups are not in the list (members find them through their groups).
    append(s, &[group_send("ann", "g", "e")], 50);
    assert_eq!(s.conversations("ann", 10).expect("list").len(), 3);
}

fn idempotency_keys_expire_and_then_a_retry_is_new(s: &dyn Store) {
    let first = append(s, &[send("ann", "ben", Some("k"), "x")], 1_000);
    let ttl = u64::try_from(TTL.as_millis()).expect("ttl");
    assert_eq!(
        round(s, |r| r.expire_idempotency(1_000 + ttl - 1, 100)).expect("sweep"),
        0
    );
    assert!(append(s, &[send("ann", "ben", Some("k"), "x")], 2_000)[0].duplicate);
    assert_eq!(
        round(s, |r| r.expire_idempotency(1_000 + ttl, 100)).expect("sweep"),
        1
    );
    let again = append(s, &[send("ann", "ben", Some("k"), "x")], 1_000 + ttl + 1);
    assert!(!again[0].duplicate);
    assert_eq!(again[0].envelope.seq, first[0].envelope.seq + 1);
    // A sweep takes at most its limit.
    let many: Vec<_> = (0..5)
        .map(|i| send("cat", "dan", Some(&format!("m{i}")), "y"))
        .collect();
    append(s, &many, 3_000);
    let later = 3_000 + ttl;
    assert_eq!(
        round(s, |r| r.expire_idempotency(later, 2)).expect("sweep"),
        2
    );
    assert_eq!(
        round(s, |r| r.expire_idempotency(later, 10)).expect("sweep"),
        3
    );
    assert_eq!(
        round(s, |r| r.expire_idempotency(later, 10)).expect("sweep"),
        0
    );
}

fn retention_deletes_what_is_older_and_nothing_else(s: &dyn Store) {
    append(s, &[send("ann", "ben", None, "old")], 1_000);
    append(s, &[send("ann", "ben", None, "new")], 5_000);
    assert_eq!(
        round(s, |r| r.expire_messages(1_000, 100)).expect("none"),
        0
    );
    assert_eq!(
        round(s, |r| r.expire_messages(2_000, 100)).expect("expire"),
        1
    );
    let conv = dm("ann", "ben");
    let (page, _) = s
        .messages(&conv, Range::After(0), Window::ALL, 10)
        .expect("page");
    assert_eq!(seqs_of(&page), vec![2]);
    assert_eq!(s.head(&conv).expect("head").seq, 2, "the head stays");
    assert_eq!(
        round(s, |r| r.expire_messages(2_000, 100)).expect("again"),
        0
    );
    // At most its limit, the oldest first.
    let sends: Vec<_> = (0..3)
        .map(|i| send("cat", "dan", None, &i.to_string()))
        .collect();
    append(s, &sends, 6_000);
    assert_eq!(round(s, |r| r.expire_messages(9_000, 2)).expect("some"), 2);
    let (page, _) = s
        .messages(&conv, Range::After(0), Window::ALL, 10)
        .expect("page");
    assert!(page.is_empty(), "the older one went first");
    assert_eq!(round(s, |r| r.expire_messages(9_000, 10)).expect("rest"), 2);
}

fn purging_a_conversation_deletes_its_messages_and_nothing_else(s: &dyn Store) {
    let sends: Vec<_> = (0..5)
        .map(|i| send("ann", "ben", None, &i.to_string()))
        .collect();
    append(s, &sends, 1_000);
    append(s, &[send("ann", "cat", None, "other")], 1_000);
    let conv = dm("ann", "ben");
    assert_eq!(round(s, |r| r.purge(&conv, 4, 3)).expect("purge"), 3);
    assert_eq!(round(s, |r| r.purge(&conv, 4, 3)).expect("purge"), 1);
    assert_eq!(round(s, |r| r.purge(&conv, 4, 3)).expect("purge"), 0);
    let (page, _) = s
        .messages(&conv, Range::After(0), Window::ALL, 10)
        .expect("page");
    assert_eq!(seqs_of(&page), vec![5], "seq 5 stays");
    assert_eq!(s.head(&conv).expect("head").seq, 5, "the head stays");
    let (page, _) = s
        .messages(&dm("ann", "cat"), Range::After(0), Window::ALL, 10)
        .expect("page");
    assert_eq!(page.len(), 1);
    // Their retention entries went with them: only the two left expire.
    assert_eq!(
        round(s, |r| r.expire_messages(2_000, 100)).expect("expire"),
        2
    );
}

fn an_edit_names_its_target_and_an_amend_replaces_it(s: &dyn Store) {
    let original = append(s, &[send("ann", "ben", None, "tpyo")], 1_000);
    let mut edit = send("ann", "ben", Some("e1"), "typo");
    edit.revision = Some((imqtt_wire::Kind::Edit, original[0].envelope.seq));
    let conv = dm("ann", "ben");
    let edited = round(s, |r| {
        let a = r.append(std::slice::from_ref(&edit), 2_000)?;
        let mut changed = original[0].envelope.clone();
        changed.body = serde_json::json!({"text": "typo"});
        changed.edited_ts = Some(2_000);
        let json = serde_json::to_vec(&changed).expect("json");
        assert!(r.amend(&conv, 1, &json)?);
        assert!(!r.amend(&conv, 99, &json)?, "no message 99");
        assert_eq!(
            r.edits_of(&conv, 1)?,
            vec![2],
            "the round sees its own edit"
        );
        Ok(a)
    })
    .expect("edit");
    assert_eq!(edited[0].envelope.seq, 2);
    assert_eq!(edited[0].envelope.kind, Some(imqtt_wire::Kind::Edit));
    assert_eq!(edited[0].envelope.ref_seq, Some(1));
    let (page, _) = s
        .messages(&conv, Range::After(0), Window::ALL, 10)
        .expect("page");
    let first: Envelope = serde_json::from_slice(&page[0]).expect("json");
    assert_eq!(first.body, serde_json::json!({"text": "typo"}));
    assert_eq!(first.edited_ts, Some(2_000));
    let second: Envelope = serde_json::from_slice(&page[1]).expect("json");
    assert_eq!(
        (second.kind, second.ref_seq),
        (Some(imqtt_wire::Kind::Edit), Some(1))
    );
    // A retry of the edit is the edit.
    let again = append(s, &[edit], 3_000);
    assert!(again[0].duplicate);
    assert_eq!(again[0].envelope.seq, 2);
    let mut second = send("ann", "ben", Some("e2"), "typo!");
    second.revision = Some((imqtt_wire::Kind::Edit, 1));
    append(s, &[second, send("ann", "ben", None, "other")], 4_000);
    let mut recall = send("ann", "ben", None, "");
    recall.revision = Some((imqtt_wire::Kind::Recall, 1));
    append(s, &[recall], 5_000);
    assert_eq!(
        round(s, |r| r.edits_of(&conv, 1)).expect("edits"),
        vec![2, 3],
        "edits only, not the recall or other messages"
    );
    assert!(round(s, |r| r.edits_of(&conv, 2)).expect("none").is_empty());
}

fn webhook_events_queue_in_order_per_hook(s: &dyn Store) {
    let events =
        |names: &[&str]| -> Vec<Vec<u8>> { names.iter().map(|n| n.as_bytes().to_vec()).collect() };
    round(s, |r| r.enqueue_events("a", &events(&["1", "2"]))).expect("queue");
    round(s, |r| {
        r.enqueue_events("b", &events(&["x"]))?;
        r.enqueue_events("a", &events(&["3"]))
    })
    .expect("queue");
    let a = s.queued_events("a", 10).expect("read");
    let bodies: Vec<&[u8]> = a.iter().map(|(_, e)| e.as_ref()).collect();
    assert_eq!(bodies, vec![&b"1"[..], b"2", b"3"]);
    assert!(a.windows(2).all(|w| w[0].0 < w[1].0), "ids rise");
    assert_eq!(s.count_events("a").expect("count"), 3);
    assert_eq!(s.count_events("b").expect("count"), 1);
    assert_eq!(s.queued_events("a", 2).expect("read").len(), 2);
    let first_two: Vec<u64> = a.iter().take(2).map(|(id, _)| *id).collect();
    round(s, |r| r.drop_events("a", &first_two)).expect("drop");
    let left = s.queued_events("a", 10).expect("read");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.as_ref(), b"3");
    assert_eq!(
        s.queued_events("b", 10).expect("read").len(),
        1,
        "hooks apart"
    );
}

fn accounts_are_created_once(s: &dyn Store) {
    assert!(round(s, |r| r.create_account("ann", "$argon2id$x")).expect("create"));
    assert!(!round(s, |r| r.create_account("ann", "$argon2id$y")).expect("exists"));
    // Twice in one round: once.
    let both = round(s, |r| {
        Ok((
            r.create_account("bob", "$argon2id$1")?,
            r.create_account("bob", "$argon2id$2")?,
        ))
    })
    .expect("round");
    assert_eq!(both, (true, false));
    assert_eq!(
        s.password_hash("ann").expect("get").as_deref(),
        Some("$argon2id$x")
    );
    assert_eq!(
        s.password_hash("bob").expect("get").as_deref(),
        Some("$argon2id$1")
    );
    assert_eq!(s.password_hash("cat").expect("get"), None);
}

fn record(id: &str, members: u32) -> GroupRecord {
    GroupRecord {
        id: id.into(),
        name: "Team".into(),
        owner: "ann".into(),
        open: false,
        history_visible: HistoryVisible::SinceJoin,
        base: 0,
        members,
    }
}

fn member(gid: &str, uid: &str, role: GroupRole, since: u64, cursor: Option<u64>) -> GroupWrite {
    GroupWrite::Member {
        gid: gid.into(),
        uid: uid.into(),
        membership: Membership {
            role,
            since,
            until: None,
        },
        cursor,
    }
}

fn memberships_the_members_list_and_the_users_groups_agree(s: &dyn Store) {
    round(s, |r| {
        r.write_groups(&[
            GroupWrite::Put(record("team", 2)),
            member("team", "ann", GroupRole::Owner, 1, Some(0)),
            member("team", "ben", GroupRole::Member, 5, Some(4)),
        ])
    })
    .expect("create");
    assert_eq!(s.group("team").expect("get"), Some(record("team", 2)));
    assert_eq!(s.group("other").expect("get"), None);
    let roles = |s: &dyn Store| -> Vec<(String, GroupRole)> {
        s.members("team")
            .expect("members")
            .into_iter()
            .filter(|(_, m)| m.is_current())
            .map(|(u, m)| (u, m.role))
            .collect()
    };
    assert_eq!(
        roles(s),
        vec![
            ("ann".to_owned(), GroupRole::Owner),
            ("ben".to_owned(), GroupRole::Member)
        ]
    );
    assert_eq!(s.user_groups("ben", 10).expect("groups"), vec!["team"]);
    let conv = ConvId::group("team").expect("conv");
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 4);

    // Ben leaves at seq 9: he keeps 5..=9, leaves the list, the group his.
    round(s, |r| {
        r.write_groups(&[GroupWrite::Member {
            gid: "team".into(),
            uid: "ben".into(),
            membership: Membership {
                role: GroupRole::Member,
                since: 5,
                until: Some(9),
            },
            cursor: None,
        }])
    })
    .expect("leave");
    let left = s.membership("team", "ben").expect("get").expect("past");
    assert!(!left.is_current());
    assert_eq!(left.window(), Window { first: 5, last: 9 });
    assert_eq!(roles(s).len(), 1);
    assert_eq!(
        s.members("team").expect("all").len(),
        2,
        "the past one stays"
    );
    assert!(s.user_groups("ben", 10).expect("groups").is_empty());

    // A cursor is only ever raised.
    round(s, |r| {
        r.write_groups(&[member("team", "ben", GroupRole::Admin, 5, Some(2))])
    })
    .expect("again");
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 4);
    assert_eq!(
        s.membership("team", "ben").expect("get").map(|m| m.role),
        Some(GroupRole::Admin)
    );
    // user_groups is in gid order and takes its limit.
    round(s, |r| {
        r.write_groups(&[
            GroupWrite::Put(record("alpha", 1)),
            member("alpha", "ben", GroupRole::Owner, 1, None),
        ])
    })
    .expect("alpha");
    assert_eq!(
        s.user_groups("ben", 10).expect("groups"),
        vec!["alpha", "team"]
    );
    assert_eq!(s.user_groups("ben", 1).expect("groups"), vec!["alpha"]);

    round(s, |r| {
        r.write_groups(&[GroupWrite::Forget {
            gid: "team".into(),
            uid: "ann".into(),
        }])
    })
    .expect("forget");
    assert_eq!(s.membership("team", "ann").expect("get"), None);
    assert!(s.user_groups("ann", 10).expect("groups").is_empty());
    round(s, |r| r.write_groups(&[GroupWrite::Delete("team".into())])).expect("delete");
    assert_eq!(s.group("team").expect("get"), None);
}

fn contacts_are_a_set_per_owner(s: &dyn Store) {
    let set = |owner: &str, contact: &str, on: bool| {
        round(s, |r| r.set_contact(owner, contact, on)).expect("set")
    };
    assert!(set("ann", "ben", true));
    assert!(!set("ann", "ben", true));
    assert!(set("ann", "cat", true));
    assert!(s.is_contact("ann", "ben").expect("is"));
    assert!(!s.is_contact("ben", "ann").expect("not mutual"));
    assert_eq!(s.contacts("ann", 10).expect("list"), vec!["ben", "cat"]);
    assert_eq!(s.contacts("ann", 1).expect("list"), vec!["ben"]);
    assert!(set("ann", "ben", false));
    assert!(!set("ann", "ben", false));
    assert_eq!(s.contacts("ann", 10).expect("list"), vec!["cat"]);
    assert!(s.contacts("zed", 10).expect("list").is_empty());
}

fn retained_messages_are_set_replaced_and_cleared(s: &dyn Store) {
    let set = |t: &str, p: &'static [u8], q: u8| (t.to_owned(), Some((Bytes::from_static(p), q)));
    let clear = |t: &str| (t.to_owned(), None);
    round(s, |r| {
        r.put_retained(&[set("a/1", b"one", 1), set("a/2", b"two", 0)])
    })
    .expect("put");
    round(s, |r| {
        r.put_retained(&[set("a/1", b"uno", 2), clear("a/2"), clear("a/3")])
    })
    .expect("put");
    let mut all = s.retained().expect("retained");
    all.sort();
    assert_eq!(all, vec![("a/1".to_owned(), Bytes::from_static(b"uno"), 2)]);
}

fn a_round_reads_its_own_writes(s: &dyn Store) {
    round(s, |r| {
        r.append(&[send("ann", "ben", Some("k"), "1")], 10)?;
        assert_eq!(r.head(&dm("ann", "ben"))?.seq, 1);
        assert_eq!(r.cursor("ann", &dm("ann", "ben"))?, 1);
        assert_eq!(r.conversations("ben", 10)?.len(), 1);
        let again = r.append(&[send("ann", "ben", None, "2")], 11)?;
        assert_eq!(again[0].envelope.seq, 2);
        let (page, _) = r.messages(&dm("ann", "ben"), Range::After(0), Window::ALL, 10)?;
        assert_eq!(seqs_of(&page), vec![1, 2]);
        r.write_groups(&[
            GroupWrite::Put(record("g", 1)),
            member("g", "ann", GroupRole::Owner, 1, None),
        ])?;
        assert_eq!(r.group("g")?.map(|g| g.members), Some(1));
        assert!(r.membership("g", "ann")?.is_some_and(|m| m.is_current()));
        assert_eq!(r.members("g")?.len(), 1);
        assert_eq!(r.user_groups("ann", 10)?, vec!["g"]);
        r.set_contact("ann", "ben", true)?;
        assert!(r.is_contact("ann", "ben")?);
        assert_eq!(r.contacts("ann", 10)?, vec!["ben"]);
        r.create_account("ann", "$h")?;
        assert_eq!(r.password_hash("ann")?.as_deref(), Some("$h"));
        r.purge(&dm("ann", "ben"), 1, 10)?;
        let (page, _) = r.messages(&dm("ann", "ben"), Range::After(0), Window::ALL, 10)?;
        assert_eq!(seqs_of(&page), vec![2]);
        Ok(())
    })
    .expect("round");
    assert_eq!(s.head(&dm("ann", "ben")).expect("head").seq, 2);
}

fn a_round_dropped_without_commit_writes_nothing(s: &dyn Store) {
    {
        let mut r = s.begin().expect("begin");
        r.append(&[send("ann", "ben", Some("k"), "x")], 5)
            .expect("append");
        r.write_groups(&[GroupWrite::Put(record("g", 1))])
            .expect("group");
        assert_eq!(r.head(&dm("ann", "ben")).expect("head").seq, 1);
    }
    assert_eq!(s.head(&dm("ann", "ben")).expect("head").seq, 0);
    assert!(s.conversations("ann", 10).expect("list").is_empty());
    assert_eq!(s.group("g").expect("group"), None);
    // The key was never kept: the same send is new.
    assert!(!append(s, &[send("ann", "ben", Some("k"), "x")], 6)[0].duplicate);
}

/// A little of everything, for an engine's reopen and copy tests; the commit
/// time it used (now, so that its idempotency key is in force).
pub(crate) fn write_sample(s: &dyn Store) -> u64 {
    let now = crate::commit::now_ms();
    append(
        s,
        &[
            send("ann", "ben", Some("k1"), "hello"),
            send("ben", "ann", None, "hi"),
            group_send("ann", "team", "all"),
        ],
        now,
    );
    round(s, |r| {
        r.ack("ben", &[(dm("ann", "ben"), 1)])?;
        r.write_groups(&[
            GroupWrite::Put(record("team", 1)),
            member("team", "ann", GroupRole::Owner, 1, None),
        ])?;
        r.set_contact("ann", "ben", true)?;
        r.create_account("ann", "$argon2id$sample")?;
        r.put_retained(&[("public/t".to_owned(), Some((Bytes::from_static(b"v"), 1)))])
    })
    .expect("sample");
    now
}

/// What [`write_sample`] wrote at `now`, read back.
pub(crate) fn check_sample(s: &dyn Store, now: u64) {
    let conv = dm("ann", "ben");
    assert_eq!(
        s.head(&conv).expect("head"),
        Head {
            seq: 2,
            last_ts: now
        }
    );
    let (page, more) = s
        .messages(&conv, Range::After(0), Window::ALL, 10)
        .expect("page");
    assert_eq!(seqs_of(&page), vec![1, 2]);
    assert!(!more);
    assert_eq!(s.cursor("ben", &conv).expect("cursor"), 2);
    assert_eq!(s.conversations("ben", 10).expect("list").len(), 1);
    assert!(
        append(s, &[send("ann", "ben", Some("k1"), "hello")], now + 1)[0].duplicate,
        "the idempotency key is there"
    );
    let team = ConvId::group("team").expect("conv");
    assert_eq!(s.head(&team).expect("head").seq, 1);
    assert_eq!(
        s.group("team").expect("group").map(|g| g.owner),
        Some("ann".into())
    );
    assert_eq!(s.user_groups("ann", 10).expect("groups"), vec!["team"]);
    assert!(s.is_contact("ann", "ben").expect("contact"));
    assert_eq!(
        s.password_hash("ann").expect("hash").as_deref(),
        Some("$argon2id$sample")
    );
    assert_eq!(
        s.retained().expect("retained"),
        vec![("public/t".to_owned(), Bytes::from_static(b"v"), 1)]
    );
}
