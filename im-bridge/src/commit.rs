//! Group commit: every write of messages, memberships, contacts and cursors goes
//! through one commit loop, which takes whatever arrived while its last write and
//! flush ran, stores it and makes it durable with one flush, then answers each
//! caller.
//!
//! Under load a flush covers many writes (one fsync per batch, not per message);
//! alone, a write waits for its own flush only. The loop is the store's only
//! writer of messages and groups, so a conversation's seqs are assigned in commit
//! order and never skip, and a group change computed from what the loop read is
//! never stale: a member joins, leaves or is refused a send at one exact seq.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imqtt_wire::ConvKind;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::store::{Appended, NewMessage, Store, StoreError};

/// Jobs waiting for the loop before callers wait for room (each holds a request).
const QUEUE: usize = 4096;
/// Most sends stored by one round (one flush).
const MAX_BATCH: usize = 4096;

/// When a commit becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Flushed before anyone is answered (`store.flush = "always"`).
    Always,
    /// Flushed every so often; an answer may come before its flush, so a crash can
    /// lose up to one interval of answered writes (`store.flush = "interval"`).
    Interval(Duration),
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The commit loop is gone (the server is stopping).
    #[error("the commit loop has stopped")]
    Stopped,
}

/// Why the loop refused one send of a commit (the others go on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A group send whose sender is not (or no longer) a member when it commits.
    #[error("not a member of group {0:?}")]
    NotAMember(String),
}

/// What became of one send: stored (or found as a retry), or refused.
pub type Outcome = Result<Appended, Refusal>;

/// Runs in the commit loop once a write is durable, before its caller is answered
/// and before anything committed later is delivered: unsubscribing a removed
/// member here means no later group message can reach it. Must not block.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// What a write job leaves to do after the round's flush: told whether it held.
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// A write job: runs in the loop, returns what to do after the flush.
type WriteOp = Box<dyn FnOnce(&dyn Store) -> Finish + Send>;

/// Where a send job's outcomes go.
type ReplyTo = oneshot::Sender<Result<Vec<Outcome>, CommitError>>;

enum Job {
    Sends {
        sends: Vec<NewMessage>,
        reply: ReplyTo,
    },
    Write(WriteOp),
}

/// Called by the commit loop with every batch of sends once it is durable, in
/// commit order, before anyone is answered: delivery hangs here, so that pushes
/// leave in seq order. Must not block (publishing to the hub never does).
pub type OnCommit = Box<dyn Fn(&[&Appended]) + Send>;

/// The handle writers commit through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Sends { sends, .. } => f.debug_struct("Sends").field("n", &sends.len()).finish(),
            Job::Write(_) => f.write_str("Write"),
        }
    }
}

/// The time now, Unix milliseconds (a commit's `ts`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Committer {
    /// Starts the commit loop on a thread of its own (it blocks on the store); it
    /// ends once every `Committer` is dropped, after answering what it took.
    pub fn start(store: Arc<dyn Store>, policy: FlushPolicy, on_commit: OnCommit) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let looped = store.clone();
        let spawned = std::thread::Builder::new()
            .name("imqtt-commit".into())
            .spawn(move || commit_loop(&*looped, rx, policy, on_commit));
        if let Err(e) = spawned {
            // Without the thread every commit answers `Stopped`.
            tracing::error!(error = %e, "cannot start the commit loop");
        }
        if let FlushPolicy::Interval(every) = policy {
            let weak = Arc::downgrade(&store);
            let _ = std::thread::Builder::new()
                .name("imqtt-flush".into())
                .spawn(move || {
                    while let Some(store) = weak.upgrade() {
                        if let Err(e) = store.flush() {
                            tracing::error!(error = %e, "interval flush failed");
                        }
                        drop(store);
                        std::thread::sleep(every);
                    }
                });
        }
        Committer { tx }
    }

    /// Stores `sends` (in order, atomically) and returns once they are durable
    /// under the flush policy, one outcome per send. Waits while the loop's queue
    /// is full.
    pub async fn commit(&self, sends: Vec<NewMessage>) -> Result<Vec<Outcome>, CommitError> {
        self.submit(sends).await?.await
    }

    /// Queues `sends` for the commit loop and returns what resolves once they are
    /// durable: jobs are committed in the order they were submitted, so a caller
    /// that submits one after the other keeps its order without waiting for each.
    pub async fn submit(
        &self,
        sends: Vec<NewMessage>,
    ) -> Result<impl Future<Output = Result<Vec<Outcome>, CommitError>> + use<>, CommitError> {
        let (reply, answer) = oneshot::channel();
        if sends.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
        } else {
            self.tx
                .send(Job::Sends { sends, reply })
                .await
                .map_err(|_| CommitError::Stopped)?;
        }
        Ok(async move { answer.await.map_err(|_| CommitError::Stopped)? })
    }

    /// Runs `op` in the commit loop, between the sends committed before and after
    /// it, and returns its value once what it wrote is durable. `op` reads what it
    /// needs and writes with one atomic store call, or fails having written
    /// nothing; its [`AfterCommit`] runs after the flush, before the answer.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&dyn Store) -> Result<(T, Option<AfterCommit>), Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Write(Box::new(move |store| -> Finish {
            match op(store) {
                Err(e) => {
                    // Nothing was written: the answer need not wait for the flush.
                    let _ = tx.send(Err(e));
                    Box::new(|_| {})
                }
                Ok((value, after)) => Box::new(move |flushed| match flushed {
                    Ok(()) => {
                        if let Some(after) = after {
                            after();
                        }
                        let _ = tx.send(Ok(value));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::Storage(StoreError::Engine(e.to_string()))));
                    }
                }),
            }
        }));
        self.tx.send(job).await.map_err(|_| Error::Stopping)?;
        rx.await.map_err(|_| Error::Stopping)?
    }
}

/// Whether `send` may be stored now: a group send only from a current member.
/// Asked in the loop, so no membership change can slip between check and write.
fn admit(store: &dyn Store, send: &NewMessage) -> Result<(), Refusal> {
    if let ConvKind::Group { gid } = send.conv.kind() {
        match store.membership(gid, &send.from) {
            Ok(Some(m)) if m.is_current() => {}
            Ok(_) => return Err(Refusal::NotAMember(gid.to_owned())),
            Err(e) => {
                tracing::error!(error = %e, gid, "cannot read a membership");
                return Err(Refusal::NotAMember(gid.to_owned()));
            }
        }
    }
    Ok(())
}

/// One run of consecutive send jobs, stored by one `append`.
struct SendRun {
    replies: Vec<(ReplyTo, usize)>,
    outcomes: Result<Vec<Outcome>, String>,
}

/// What a round did, in job order.
enum Done {
    Sends(SendRun),
    Write(Finish),
}

/// Stores the sends of `jobs`: refused ones keep their place as refusals.
fn store_sends(store: &dyn Store, jobs: Vec<(Vec<NewMessage>, ReplyTo)>) -> SendRun {
    let mut replies = Vec::with_capacity(jobs.len());
    let mut admitted = Vec::new();
    // For each send in order: its refusal, or None for "next appended".
    let mut slots = Vec::new();
    for (sends, reply) in jobs {
        replies.push((reply, sends.len()));
        for send in sends {
            match admit(store, &send) {
                Ok(()) => {
                    admitted.push(send);
                    slots.push(None);
                }
                Err(r) => slots.push(Some(r)),
            }
        }
    }
    let outcomes = match store.append(&admitted, now_ms()) {
        // One result per admitted send, in order, is the store's contract.
        Ok(appended) if appended.len() == admitted.len() => {
            let mut appended = appended.into_iter();
            Ok(slots
                .into_iter()
                .filter_map(|slot| match slot {
                    Some(refused) => Some(Err(refused)),
                    None => appended.next().map(Ok),
                })
                .collect())
        }
        Ok(appended) => {
            tracing::error!(
                sends = admitted.len(),
                results = appended.len(),
                "append miscounted"
            );
            Err(format!(
                "the store answered {} of {} sends",
                appended.len(),
                admitted.len()
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, sends = admitted.len(), "commit failed");
            Err(e.to_string())
        }
    };
    SendRun { replies, outcomes }
}

fn commit_loop(
    store: &dyn Store,
    mut rx: mpsc::Receiver<Job>,
    policy: FlushPolicy,
    on_commit: OnCommit,
) {
    while let Some(first) = rx.blocking_recv() {
        // Everything that arrived meanwhile shares this round's flush.
        let mut jobs = vec![first];
        let mut total = 0;
        while total < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    total += match &job {
                        Job::Sends { sends, .. } => sends.len(),
                        Job::Write(_) => 1,
                    };
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // In job order: each run of sends in one append, each write on its own.
        let mut done = Vec::new();
        let mut run = Vec::new();
        for job in jobs {
            match job {
                Job::Sends { sends, reply } => run.push((sends, reply)),
                Job::Write(op) => {
                    if !run.is_empty() {
                        done.push(Done::Sends(store_sends(store, std::mem::take(&mut run))));
                    }
                    done.push(Done::Write(op(store)));
                }
            }
        }
        if !run.is_empty() {
            done.push(Done::Sends(store_sends(store, run)));
        }
        let flushed = match policy {
            FlushPolicy::Always => store.flush(),
            FlushPolicy::Interval(_) => Ok(()),
        };
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "flush failed");
        }
        for d in done {
            match d {
                Done::Write(finish) => finish(flushed.as_ref().map(|_| ())),
                Done::Sends(SendRun { replies, outcomes }) => {
                    let outcomes = match (&flushed, outcomes) {
                        (Ok(()), Ok(o)) => o,
                        (Err(e), _) => {
                            fail(replies, &e.to_string());
                            continue;
                        }
                        (_, Err(text)) => {
                            fail(replies, &text);
                            continue;
                        }
                    };
                    let stored: Vec<&Appended> =
                        outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
                    on_commit(&stored);
                    let mut rest = outcomes.into_iter();
                    for (reply, n) in replies {
                        let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
                    }
                }
            }
        }
    }
}

fn fail(replies: Vec<(ReplyTo, usize)>, text: &str) {
    for (reply, _) in replies {
        let _ = reply.send(Err(CommitError::Store(StoreError::Engine(text.to_owned()))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use imqtt_wire::{ConvId, Qos};

    fn send(from: &str, to: &str, n: u64) -> NewMessage {
        NewMessage {
            from: from.into(),
            conv: ConvId::dm(from, to).expect("conv"),
            to: to.into(),
            client_msg_id: Some(format!("c{n}")),
            idempotency_key: Some(format!("c{n}")),
            qos: Qos::AtLeastOnce,
            body: serde_json::json!(n),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_hundred_concurrent_sends_get_seqs_one_to_two_hundred() {
        let store = SledStore::temporary(Duration::from_secs(60)).expect("store");
        let c = Committer::start(
            Arc::new(store.clone()),
            FlushPolicy::Always,
            Box::new(|_| {}),
        );
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let c = c.clone();
                let from = if n % 2 == 0 { "ann" } else { "ben" };
                let to = if n % 2 == 0 { "ben" } else { "ann" };
                tokio::spawn(async move { c.commit(vec![send(from, to, n)]).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            let out = t.await.expect("task").expect("commit");
            seqs.push(out[0].as_ref().expect("stored").envelope.seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        let conv = ConvId::dm("ann", "ben").expect("conv");
        assert_eq!(store.head(&conv).expect("head").seq, 200);
    }

    fn member(gid: &str, uid: &str, until: Option<u64>) -> crate::store::GroupWrite {
        crate::store::GroupWrite::Member {
            gid: gid.into(),
            uid: uid.into(),
            membership: crate::store::Membership {
                role: imqtt_wire::GroupRole::Member,
                since: 1,
                until,
            },
            cursor: None,
        }
    }

    fn group_send(from: &str, n: u64) -> NewMessage {
        NewMessage {
            from: from.into(),
            conv: ConvId::group("g").expect("conv"),
            to: "g".into(),
            client_msg_id: None,
            idempotency_key: None,
            qos: Qos::AtLeastOnce,
            body: serde_json::json!(n),
        }
    }

    #[tokio::test]
    async fn a_group_send_commits_only_while_its_sender_is_a_member() {
        let store = SledStore::temporary(Duration::from_secs(60)).expect("store");
        let c = Committer::start(Arc::new(store), FlushPolicy::Always, Box::new(|_| {}));
        c.write(|s| Ok((s.write_groups(&[member("g", "ann", None)])?, None)))
            .await
            .expect("join");
        // Queued before the removal, so it commits before it; the one queued
        // after is refused in the loop, whatever a check before it said.
        let before = c.submit(vec![group_send("ann", 1)]).await.expect("queued");
        let removal = c.write(|s| Ok((s.write_groups(&[member("g", "ann", Some(1))])?, None)));
        let (before, removal) = tokio::join!(before, removal);
        removal.expect("removal");
        let before = before.expect("commit");
        assert_eq!(before[0].as_ref().expect("stored").envelope.seq, 1);
        let after = c
            .commit(vec![group_send("ann", 2), send("ann", "ben", 3)])
            .await;
        let after = after.expect("commit");
        assert_eq!(
            after[0].as_ref().err(),
            Some(&Refusal::NotAMember("g".into()))
        );
        assert_eq!(
            after[1]
                .as_ref()
                .expect("a direct send is not held up")
                .envelope
                .seq,
            1
        );
        assert_eq!(
            c.commit(vec![group_send("bob", 4)]).await.expect("commit")[0]
                .as_ref()
                .err(),
            Some(&Refusal::NotAMember("g".into())),
            "never a member"
        );
    }

    #[tokio::test]
    async fn a_refused_write_gets_its_error_and_an_accepted_one_runs_its_after_commit_before_the_answer()
     {
        let store = SledStore::temporary(Duration::from_secs(60)).expect("store");
        let c = Committer::start(
            Arc::new(store.clone()),
            FlushPolicy::Always,
            Box::new(|_| {}),
        );
        let refused: Result<(), Error> = c.write(|_| Err(Error::Conflict("no".into()))).await;
        assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let v = c
            .write(move |_| {
                let after: AfterCommit =
                    Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
                Ok((7, Some(after)))
            })
            .await
            .expect("write");
        assert_eq!(v, 7);
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "after-commit ran first"
        );
    }

    #[tokio::test]
    async fn each_sender_gets_its_own_results_in_order() {
        let store = SledStore::temporary(Duration::from_secs(60)).expect("store");
        let c = Committer::start(
            Arc::new(store),
            FlushPolicy::Interval(Duration::from_millis(5)),
            Box::new(|_| {}),
        );
        let (a, b) = tokio::join!(
            c.commit(vec![send("ann", "ben", 1), send("ann", "cat", 2)]),
            c.commit(vec![send("dan", "eve", 3)]),
        );
        let body = |o: &Outcome| o.as_ref().expect("stored").envelope.body.clone();
        let a = a.expect("a");
        let b = b.expect("b");
        assert_eq!(a.len(), 2);
        assert_eq!(body(&a[0]), serde_json::json!(1));
        assert_eq!(body(&a[1]), serde_json::json!(2));
        assert_eq!(b.len(), 1);
        assert_eq!(body(&b[0]), serde_json::json!(3));
    }
}
