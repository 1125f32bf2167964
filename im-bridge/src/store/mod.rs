//! The durable store: conversations under contiguous seqs, their heads, per-user
//! read cursors and conversation index, idempotency keys, accounts, groups with
//! their memberships, and contacts.
//!
//! [`Store`] is the whole contract the API and delivery code use, and every engine
//! implements it: [`SledStore`] (embedded) and `PgStore` (PostgreSQL, shared by
//! several processes). Reads ([`Reads`]) may come from anywhere off the async
//! workers (they may wait on I/O). Writes have one door: a [`Round`], begun by the
//! group-commit loop (`commit.rs`) and only there, holds every write of one
//! round and makes them atomic and durable together in [`Round::commit`], one
//! flush or one transaction per round, never one per call. `conformance` holds the
//! behavioural tests every engine passes.

#[cfg(test)]
pub(crate) mod conformance;
mod postgres;
mod sled;

use imqtt_wire::{ConvId, ConvKind, Envelope, GroupRole, HistoryVisible, Qos};

pub use self::postgres::PgStore;
pub use self::sled::SledStore;

/// Opens the engine `store.engine` names. Blocks (sled reads its log; PostgreSQL
/// connects and migrates): call it off the async runtime.
pub fn open(
    cfg: &crate::config::StoreConfig,
    idempotency_ttl: std::time::Duration,
) -> Result<std::sync::Arc<dyn Store>, crate::error::Error> {
    Ok(match cfg.engine {
        crate::config::Engine::Sled => std::sync::Arc::new(SledStore::open(cfg, idempotency_ttl)?),
        crate::config::Engine::Postgres => {
            std::sync::Arc::new(PgStore::open(cfg, idempotency_ttl)?)
        }
    })
}

/// The users whose conversation list shows `conv`, and who may read and ack it:
/// both sides of a direct conversation, the user of a notice conversation.
pub fn participants(conv: &ConvId) -> Vec<&str> {
    match conv.kind() {
        ConvKind::Dm { a, b } => vec![a, b],
        ConvKind::Sys { uid } => vec![uid],
        // A group's members find it through their membership (read fan-out),
        // never through a copy per member.
        ConvKind::Group { .. } => Vec::new(),
    }
}

/// One send to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The sender's uid.
    pub from: String,
    /// The conversation.
    pub conv: ConvId,
    /// The peer uid or gid, as in the envelope.
    pub to: String,
    /// The sender's id for this send, echoed in the envelope.
    pub client_msg_id: Option<String>,
    /// What makes a retry a retry: a send with the same `(from, key)` within the
    /// idempotency TTL returns the original and stores nothing. The
    /// `client_msg_id`, or for a notice to many users, it and the user.
    pub idempotency_key: Option<String>,
    /// 1 or 2 (QoS 0 sends are never stored).
    pub qos: Qos,
    /// The application's JSON body.
    pub body: serde_json::Value,
    /// An edit or a recall of the conversation's message with this seq; `None`
    /// for an ordinary message.
    pub revision: Option<(imqtt_wire::Kind, u64)>,
}

/// What became of one send.
#[derive(Clone, Debug)]
pub struct Appended {
    /// The stored envelope (the original one for a retry).
    pub envelope: Envelope,
    /// The envelope's JSON, as stored and as published.
    pub json: bytes::Bytes,
    /// A retry of an earlier send: nothing new was stored.
    pub duplicate: bool,
}

/// A conversation's head: its last seq and the time of its last message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The last seq (0: no message yet).
    pub seq: u64,
    /// Commit time of the last message, Unix ms.
    pub last_ts: u64,
}

/// One of a user's conversations, as the conversation list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The conversation.
    pub conv: ConvId,
    /// Its head.
    pub head: Head,
    /// The user's read cursor in it.
    pub cursor: u64,
}

/// Which messages of a conversation to read: ascending, contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// Seqs after this one, the oldest first.
    After(u64),
    /// Seqs before this one (the newest `limit` of them), in ascending order.
    Before(u64),
}

/// The seqs of a conversation a reader may see, both ends included: all of a
/// direct conversation, a member's span of a group's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The first visible seq.
    pub first: u64,
    /// The last visible seq.
    pub last: u64,
}

impl Window {
    /// Every seq.
    pub const ALL: Window = Window {
        first: 1,
        last: u64::MAX,
    };
}

/// A group's settings as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupRecord {
    /// The group id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The current owner.
    pub owner: String,
    /// Whether anyone may join by adding themselves.
    pub open: bool,
    /// What new members may read of the history.
    pub history_visible: HistoryVisible,
    /// The head of `group:{id}` when the group was created: a group created again
    /// under a deleted one's id goes on from the old head, and nobody sees the old
    /// messages.
    pub base: u64,
    /// How many current members it has.
    pub members: u32,
}

/// One user's membership of a group, current or past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The role while a member.
    pub role: GroupRole,
    /// The first seq the user may read.
    pub since: u64,
    /// The last seq the user may read once it has left or was removed; `None`
    /// while it is a member.
    pub until: Option<u64>,
}

impl Membership {
    /// Whether the user is a member now.
    pub fn is_current(&self) -> bool {
        self.until.is_none()
    }

    /// The seqs of the group's conversation the user may read.
    pub fn window(&self) -> Window {
        Window {
            first: self.since,
            last: self.until.unwrap_or(u64::MAX),
        }
    }
}

/// One change of [`Store::write_groups`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupWrite {
    /// Creates or replaces a group's settings.
    Put(GroupRecord),
    /// Forgets a group's settings (its memberships go with `Forget` writes).
    Delete(String),
    /// Sets `uid`'s membership of `gid`: a current one puts the group in the user's
    /// list of groups, a past one takes it out. `cursor` raises the user's read
    /// cursor in the group (a new member starts having read what it may not see).
    Member {
        /// The group.
        gid: String,
        /// The user.
        uid: String,
        /// The membership.
        membership: Membership,
        /// A cursor to raise to, if any.
        cursor: Option<u64>,
    },
    /// Forgets `uid`'s membership of `gid`, current or past.
    Forget {
        /// The group.
        gid: String,
        /// The user.
        uid: String,
    },
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A cursor was set past the conversation's head.
    #[error("seq {seq} is above the head {head} of {conv}")]
    AboveHead {
        /// The conversation.
        conv: ConvId,
        /// The seq asked for.
        seq: u64,
        /// The conversation's head.
        head: u64,
    },
    /// The engine cannot be reached now (a database down or restarting): the
    /// write was not made, and the same call may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The engine failed (I/O, corruption).
    #[error("store engine: {0}")]
    Engine(String),
    /// Stored bytes that do not decode: a bug or corruption.
    #[error("corrupt record in {0}")]
    Corrupt(&'static str),
}

/// Everything that can be read. Blocking: a read may wait on a disk or a database,
/// so callers on the async runtime run it on the blocking pool. Nothing here scans
/// more than the keys of the conversation, group or user it names.
pub trait Reads {
    /// The head of `conv` (all zero when it has no message).
    fn head(&self, conv: &ConvId) -> Result<Head, StoreError>;

    /// Up to `limit` messages of `conv` in `range` and inside `window`, ascending,
    /// as stored JSON; and whether more lie beyond them in that direction, inside
    /// the window.
    fn messages(
        &self,
        conv: &ConvId,
        range: Range,
        window: Window,
        limit: usize,
    ) -> Result<(Vec<bytes::Bytes>, bool), StoreError>;

    /// `uid`'s read cursor in `conv` (0 when it never acked).
    fn cursor(&self, uid: &str, conv: &ConvId) -> Result<u64, StoreError>;

    /// `uid`'s direct and notice conversations, the most recently active first, at
    /// most `limit` (its groups come from [`Reads::user_groups`]).
    fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Summary>, StoreError>;

    /// A group's settings.
    fn group(&self, gid: &str) -> Result<Option<GroupRecord>, StoreError>;

    /// `uid`'s membership of `gid`, current or past (one key read: the send and
    /// subscribe paths ask this).
    fn membership(&self, gid: &str, uid: &str) -> Result<Option<Membership>, StoreError>;

    /// Every membership of `gid`, current and past, in uid order (reads only that
    /// group's keys).
    fn members(&self, gid: &str) -> Result<Vec<(String, Membership)>, StoreError>;

    /// The groups `uid` is a member of now, in gid order, at most `limit`.
    fn user_groups(&self, uid: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Whether `contact` is one of `owner`'s contacts (one key read).
    fn is_contact(&self, owner: &str, contact: &str) -> Result<bool, StoreError>;

    /// `owner`'s contacts in uid order, at most `limit`.
    fn contacts(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// The password hash of `uid`'s account, if it has one.
    fn password_hash(&self, uid: &str) -> Result<Option<String>, StoreError>;
}

/// A durable store: its reads, and the rounds that write it.
pub trait Store: Reads + Send + Sync + std::fmt::Debug + 'static {
    /// Begins a round of writes. Only the commit loop calls this, one round at a
    /// time (beyond [`Store::lanes`], only for sends that share no conversation), so that a write computed from what the round read is never stale
    /// within this process (across processes, the engine's locks keep seqs and
    /// group changes exact).
    fn begin(&self) -> Result<Box<dyn Round + '_>, StoreError>;

    /// How many send rounds the commit loop may run at once, each in a
    /// transaction of its own, when they share no conversation (`commit/lanes.rs`).
    /// 1 for an engine whose rounds go through one writer.
    fn lanes(&self) -> usize {
        1
    }

    /// Makes the rounds committed without `durable` durable (`store.flush =
    /// "interval"`); a no-op for an engine whose commits are always durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// The bytes the store takes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Every recorded retained message: topic, payload, QoS (read at startup; at
    /// most `mqtt.max_retained` of them).
    fn retained(&self) -> Result<Vec<(String, bytes::Bytes, u8)>, StoreError>;

    /// The oldest `limit` events queued for webhook `hook`: queue id and the
    /// event's JSON, in queue order.
    fn queued_events(
        &self,
        hook: &str,
        limit: usize,
    ) -> Result<Vec<(u64, bytes::Bytes)>, StoreError>;

    /// How many events are queued for `hook` (read at startup).
    fn count_events(&self, hook: &str) -> Result<usize, StoreError>;

    /// Claims `job` for this process among every process sharing the store
    /// (one node of a cluster delivers a webhook's queue); `None` while another
    /// holds it. The claim lasts as long as the lease, or its process.
    fn lead(&self, job: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        let _ = job;
        // One process has the embedded store.
        Ok(Some(Box::new(Sole)))
    }

    /// Whether the engine answers now (`/readyz`); an embedded engine always does.
    fn is_available(&self) -> bool {
        true
    }
}

/// A job claimed by this process ([`Store::lead`]).
pub trait Lease: Send + Sync {
    /// Whether it still holds (a database connection that broke loses it).
    fn held(&self) -> bool;
}

/// The lease of the only process.
struct Sole;

impl Lease for Sole {
    fn held(&self) -> bool {
        true
    }
}

/// One round of the commit loop: its writes become visible to other readers and
/// durable together, at [`Round::commit`], or not at all (a round dropped without
/// commit, or whose commit fails, wrote nothing). Its reads see its own writes.
/// A write that fails with [`StoreError::AboveHead`] wrote nothing; any other
/// failure may leave the round half-written, and the loop then drops it.
pub trait Round: Reads {
    /// Stores `sends` in order, assigning each new message the next seq of its
    /// conversation, a ULID and `now_ms`; retries (same sender and idempotency key,
    /// within the TTL) get their original instead.
    fn append(&mut self, sends: &[NewMessage], now_ms: u64) -> Result<Vec<Appended>, StoreError>;

    /// Moves `uid`'s cursors forward, never back; a seq above a head fails the
    /// whole call and moves nothing.
    fn ack(&mut self, uid: &str, cursors: &[(ConvId, u64)]) -> Result<(), StoreError>;

    /// Applies group changes.
    fn write_groups(&mut self, writes: &[GroupWrite]) -> Result<(), StoreError>;

    /// Adds (`true`) or removes `contact` from `owner`'s contacts, the users who may
    /// see `owner`'s presence; whether that changed anything.
    fn set_contact(&mut self, owner: &str, contact: &str, on: bool) -> Result<bool, StoreError>;

    /// Creates an account; `false` if the user exists (across processes too).
    fn create_account(&mut self, uid: &str, password_hash: &str) -> Result<bool, StoreError>;

    /// Records MQTT retained messages: `Some((payload, qos))` sets a topic's,
    /// `None` clears it.
    fn put_retained(
        &mut self,
        changes: &[(String, Option<(bytes::Bytes, u8)>)],
    ) -> Result<(), StoreError>;

    /// Forgets up to `limit` idempotency keys that expired by `now_ms`, the oldest
    /// first; returns how many.
    fn expire_idempotency(&mut self, now_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Deletes up to `limit` of the messages committed before `before_ms`
    /// (`store.retention`), the oldest first; returns how many. Reads only those.
    fn expire_messages(&mut self, before_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Deletes the messages of `conv` up to seq `through` (a deleted group's), at
    /// most `limit` of them, oldest first; returns how many. The head stays, so
    /// seqs are never reused. Reads only that conversation's keys.
    fn purge(&mut self, conv: &ConvId, through: u64, limit: usize) -> Result<usize, StoreError>;

    /// Replaces the stored envelope of `conv`'s message `seq` with `json` (an
    /// edit's new body, a recall's removal); false when there is none.
    fn amend(&mut self, conv: &ConvId, seq: u64, json: &[u8]) -> Result<bool, StoreError>;

    /// Queues `events` (JSON each) for webhook `hook`, after what it holds.
    fn enqueue_events(&mut self, hook: &str, events: &[Vec<u8>]) -> Result<(), StoreError>;

    /// Forgets the queued events `ids` of `hook` (delivered, or dropped).
    fn drop_events(&mut self, hook: &str, ids: &[u64]) -> Result<(), StoreError>;

    /// The seqs of the edits of `conv`'s message `seq` (appended with
    /// `revision: Some((Kind::Edit, seq))`), ascending: what a recall clears too.
    fn edits_of(&mut self, conv: &ConvId, seq: u64) -> Result<Vec<u64>, StoreError>;

    /// Makes the round's writes visible and, if `durable`, durable (flushed, or a
    /// synchronous commit) before returning.
    fn commit(self: Box<Self>, durable: bool) -> Result<(), StoreError>;
}

/// One stored fact, engine-neutral: what `imqtt store copy` moves from one
/// engine to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A message: its conversation, seq, commit time and envelope JSON.
    Message {
        /// The conversation.
        conv: String,
        /// Its seq.
        seq: u64,
        /// Commit time, Unix ms.
        ts: u64,
        /// The envelope's JSON, as stored.
        json: Vec<u8>,
    },
    /// A conversation's head.
    Head {
        /// The conversation.
        conv: String,
        /// Its head.
        head: Head,
    },
    /// A read cursor.
    Cursor {
        /// Whose.
        uid: String,
        /// In which conversation.
        conv: String,
        /// Up to which seq.
        seq: u64,
    },
    /// A direct or notice conversation in a user's list.
    Listed {
        /// Whose list.
        uid: String,
        /// The conversation.
        conv: String,
    },
    /// An idempotency key and the message it stands for.
    Idempotency {
        /// The sender.
        sender: String,
        /// The key.
        key: String,
        /// The original's conversation.
        conv: String,
        /// The original's seq.
        seq: u64,
        /// When the key is forgotten, Unix ms.
        expires: u64,
    },
    /// An account.
    Account {
        /// The user.
        uid: String,
        /// Its password hash (PHC string).
        hash: String,
    },
    /// An MQTT retained message.
    Retained {
        /// The topic.
        topic: String,
        /// Its QoS.
        qos: u8,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A group's settings.
    Group(GroupRecord),
    /// A membership, current or past.
    Member {
        /// The group.
        gid: String,
        /// The user.
        uid: String,
        /// The membership.
        membership: Membership,
    },
    /// A contact.
    Contact {
        /// Whose contacts.
        owner: String,
        /// Who.
        contact: String,
    },
}

impl Record {
    /// The record's kind, as `imqtt store copy` counts them.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Message { .. } => "messages",
            Record::Head { .. } => "conversations",
            Record::Cursor { .. } => "cursors",
            Record::Listed { .. } => "conversation list entries",
            Record::Idempotency { .. } => "idempotency keys",
            Record::Account { .. } => "accounts",
            Record::Retained { .. } => "retained messages",
            Record::Group(_) => "groups",
            Record::Member { .. } => "memberships",
            Record::Contact { .. } => "contacts",
        }
    }
}
