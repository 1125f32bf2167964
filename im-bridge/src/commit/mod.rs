//! Group commit: every write of the store goes through one commit loop, which
//! takes whatever arrived while its last round ran, writes it in one store round
//! ([`Store::begin`]) and makes it durable with one commit (one flush, or one
//! transaction), then answers each caller.
//!
//! Under load a flush covers many writes (one fsync per batch, not per message);
//! alone, a write waits for its own flush only. The loop is the store's only
//! writer of messages and groups, so a conversation's seqs are assigned in commit
//! order and never skip, and a group change computed from what the loop read is
//! never stale: a member joins, leaves or is refused a send at one exact seq.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use imqtt_wire::{ConvId, ConvKind};
use tokio::sync::{mpsc, oneshot};

use crate::cache::{AccessCache, Change};
use crate::error::Error;
mod lanes;

use crate::store::{
    Appended, GroupRecord, GroupWrite, Head, Membership, NewMessage, Range, Reads, Round, Store,
    StoreError, Summary, Window,
};

/// Jobs waiting for the loop before callers wait for room (each holds a request).
const QUEUE: usize = 4096;
/// Most sends stored by one round (one flush).
const MAX_BATCH: usize = 4096;
/// The fewest sends a run needs to go in lanes: a smaller round commits faster
/// alone than its lanes wait for each other's commits (measured: 64 single
/// sends at a time lost a tenth of their rate in lanes, and latency at 5,000
/// sends/s its p99).
const LANE_MIN_SENDS: usize = 256;

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

/// What a write job leaves to do after the round's commit: told whether it held.
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// A write job: runs in the round, returns what to do after the commit, and
/// the store's failure if it met one (the round may then be half-written).
type WriteOp = Box<dyn FnOnce(&mut dyn Round) -> (Finish, Option<StoreError>) + Send>;

/// Where a send job's outcomes go.
type ReplyTo = oneshot::Sender<Result<Vec<Outcome>, CommitError>>;

enum Job {
    Sends {
        sends: Vec<NewMessage>,
        reply: ReplyTo,
    },
    Write(WriteOp),
    /// Makes everything committed so far durable, whatever the flush policy.
    Sync(oneshot::Sender<Result<(), CommitError>>),
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

/// A handle that does not keep the loop running (for background tasks that
/// should end with the server).
#[derive(Clone, Debug)]
pub struct WeakCommitter {
    tx: mpsc::WeakSender<Job>,
}

impl WeakCommitter {
    /// The committer, while the loop runs.
    pub fn upgrade(&self) -> Option<Committer> {
        self.tx.upgrade().map(|tx| Committer { tx })
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Sends { sends, .. } => f.debug_struct("Sends").field("n", &sends.len()).finish(),
            Job::Write(_) => f.write_str("Write"),
            Job::Sync(_) => f.write_str("Sync"),
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
    /// `cache` is told of every durable change of a membership or a contact.
    pub fn start(
        store: Arc<dyn Store>,
        policy: FlushPolicy,
        cache: Arc<AccessCache>,
        on_commit: OnCommit,
    ) -> Committer {
        Committer::start_with_hooks(
            store,
            policy,
            cache,
            on_commit,
            Arc::default(),
            Box::new(|_| true),
        )
    }

    /// [`Committer::start`], queueing the events of `hooks` in the rounds of the
    /// messages they tell of; `online` says who has a device online.
    pub fn start_with_hooks(
        store: Arc<dyn Store>,
        policy: FlushPolicy,
        cache: Arc<AccessCache>,
        on_commit: OnCommit,
        hooks: Arc<crate::webhooks::Hooks>,
        online: crate::webhooks::Online,
    ) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let looped = store.clone();
        let spawned = std::thread::Builder::new()
            .name("imqtt-commit".into())
            .spawn(move || {
                let mut l = Loop {
                    store: &*looped,
                    policy,
                    cache,
                    on_commit,
                    hooks,
                    online,
                };
                l.run(rx)
            });
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

    /// A handle that lets the loop end when every `Committer` is gone.
    pub fn downgrade(&self) -> WeakCommitter {
        WeakCommitter {
            tx: self.tx.downgrade(),
        }
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

    /// Runs `op` in the commit loop's round, between the sends committed before
    /// and after it, and returns its value once what it wrote is durable. `op`
    /// reads what it needs through the round (which shows the round's earlier
    /// writes) and writes, or refuses having written nothing; its
    /// [`AfterCommit`] runs after the commit, before the answer.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Round) -> Result<(T, Option<AfterCommit>), Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Write(Box::new(move |round| -> (Finish, Option<StoreError>) {
            match op(round) {
                Err(e) => {
                    // A refusal wrote nothing; a store failure may have written
                    // half, and the loop drops the round.
                    let broke = match &e {
                        Error::Storage(StoreError::AboveHead { .. }) => None,
                        Error::Storage(s) => Some(again(s)),
                        _ => None,
                    };
                    let _ = tx.send(Err(e));
                    (Box::new(|_| {}), broke)
                }
                Ok((value, after)) => (
                    Box::new(move |committed| match committed {
                        Ok(()) => {
                            if let Some(after) = after {
                                after();
                            }
                            let _ = tx.send(Ok(value));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Error::Storage(again(e))));
                        }
                    }),
                    None,
                ),
            }
        }));
        self.tx.send(job).await.map_err(|_| Error::Stopping)?;
        rx.await.map_err(|_| Error::Stopping)?
    }

    /// Returns once everything committed before it is durable, whatever the
    /// flush policy (at shutdown).
    pub async fn sync(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job::Sync(tx))
            .await
            .map_err(|_| CommitError::Stopped)?;
        rx.await.map_err(|_| CommitError::Stopped)?
    }
}

/// The same failure again, for each caller that shares it.
fn again(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::AboveHead { conv, seq, head } => StoreError::AboveHead {
            conv: conv.clone(),
            seq: *seq,
            head: *head,
        },
        StoreError::Corrupt(what) => StoreError::Corrupt(what),
        StoreError::Engine(m) => StoreError::Engine(m.clone()),
    }
}

/// Whether `send` may be stored now: a group send only from a current member.
/// Asked in the round, so no membership change can slip between check and write.
fn admit(round: &dyn Round, send: &NewMessage) -> Result<Result<(), Refusal>, StoreError> {
    if let ConvKind::Group { gid } = send.conv.kind() {
        match round.membership(gid, &send.from)? {
            Some(m) if m.is_current() => {}
            _ => return Ok(Err(Refusal::NotAMember(gid.to_owned()))),
        }
    }
    Ok(Ok(()))
}

/// One run of consecutive send jobs, stored by one `append`.
struct SendRun {
    replies: Vec<(ReplyTo, usize)>,
    outcomes: Vec<Outcome>,
}

/// What a round did, in job order.
enum Done {
    Sends(SendRun),
    Write(Finish),
    Sync(oneshot::Sender<Result<(), CommitError>>),
}

impl Done {
    /// Answers with `e` instead.
    fn fail(self, e: &StoreError) {
        match self {
            Done::Sends(run) => fail(run.replies, e),
            Done::Write(finish) => finish(Err(e)),
            Done::Sync(tx) => {
                let _ = tx.send(Err(CommitError::Store(again(e))));
            }
        }
    }
}

/// Stores the sends of `jobs`: refused ones keep their place as refusals. On a
/// store failure the replies come back with it, unanswered.
fn store_sends(
    round: &mut dyn Round,
    jobs: Vec<(Vec<NewMessage>, ReplyTo)>,
) -> Result<SendRun, (StoreError, Vec<(ReplyTo, usize)>)> {
    let mut replies = Vec::with_capacity(jobs.len());
    let mut admitted = Vec::new();
    // For each send in order: its refusal, or None for "next appended".
    let mut slots = Vec::new();
    let mut broke = None;
    for (sends, reply) in jobs {
        replies.push((reply, sends.len()));
        for send in sends {
            if broke.is_some() {
                continue;
            }
            match admit(round, &send) {
                Ok(Ok(())) => {
                    admitted.push(send);
                    slots.push(None);
                }
                Ok(Err(r)) => slots.push(Some(r)),
                Err(e) => broke = Some(e),
            }
        }
    }
    if let Some(e) = broke {
        return Err((e, replies));
    }
    match round.append(&admitted, now_ms()) {
        // One result per admitted send, in order, is the store's contract.
        Ok(appended) if appended.len() == admitted.len() => {
            let mut appended = appended.into_iter();
            let outcomes = slots
                .into_iter()
                .filter_map(|slot| match slot {
                    Some(refused) => Some(Err(refused)),
                    None => appended.next().map(Ok),
                })
                .collect();
            Ok(SendRun { replies, outcomes })
        }
        Ok(appended) => Err((
            StoreError::Engine(format!(
                "the store answered {} of {} sends",
                appended.len(),
                admitted.len()
            )),
            replies,
        )),
        Err(e) => Err((e, replies)),
    }
}

/// The loop's state.
struct Loop<'s> {
    store: &'s dyn Store,
    policy: FlushPolicy,
    cache: Arc<AccessCache>,
    on_commit: OnCommit,
    hooks: Arc<crate::webhooks::Hooks>,
    online: crate::webhooks::Online,
}

impl Loop<'_> {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            // Everything that arrived meanwhile shares this round's commit.
            let mut jobs = VecDeque::from([first]);
            let mut total = 0;
            while total < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        total += match &job {
                            Job::Sends { sends, .. } => sends.len(),
                            Job::Write(_) | Job::Sync(_) => 1,
                        };
                        jobs.push_back(job);
                    }
                    Err(_) => break,
                }
            }
            // A round that breaks is dropped and what it had not reached goes on
            // in the next one.
            while !jobs.is_empty() {
                self.round(&mut jobs);
            }
        }
    }

    /// Runs jobs from the front of `jobs`: a run of two or more send jobs with
    /// [`LANE_MIN_SENDS`] between them in lanes when the store has them
    /// (`lanes.rs`), anything else in one round.
    fn round(&mut self, jobs: &mut VecDeque<Job>) {
        let lanes = self.store.lanes();
        let (mut run, mut sends) = (0, 0);
        for job in jobs.iter() {
            let Job::Sends { sends: s, .. } = job else {
                break;
            };
            run += 1;
            sends += s.len();
        }
        if lanes > 1 && run > 1 && sends >= LANE_MIN_SENDS {
            let mut taken = Vec::with_capacity(run);
            while let Some(Job::Sends { .. }) = jobs.front() {
                if let Some(Job::Sends { sends, reply }) = jobs.pop_front() {
                    taken.push((sends, reply));
                }
            }
            let split = lanes::split(taken, lanes);
            if split.len() > 1 {
                return self.in_lanes(split);
            }
            // All connected: one round, as without lanes.
            for (sends, reply) in split.into_iter().flatten().rev() {
                jobs.push_front(Job::Sends { sends, reply });
            }
        }
        self.one_round(jobs)
    }

    /// Commits each lane's round at once, each on a thread of its own, then
    /// answers and delivers what committed as one round would.
    fn in_lanes(&mut self, split: Vec<lanes::Jobs>) {
        let durable = self.policy == FlushPolicy::Always;
        let (store, hooks, online) = (self.store, &*self.hooks, &self.online);
        let outcomes: Vec<lanes::Lane> = std::thread::scope(|scope| {
            let mut split = split.into_iter();
            let first = split.next();
            let others: Vec<_> = split
                .map(|jobs| scope.spawn(move || lanes::run(store, hooks, online, durable, jobs)))
                .collect();
            let mut done: Vec<lanes::Lane> = first
                .map(|jobs| lanes::run(store, hooks, online, durable, jobs))
                .into_iter()
                .collect();
            for lane in others {
                match lane.join() {
                    Ok(lane) => done.push(lane),
                    // Its callers' replies were dropped with it: they see the
                    // loop as stopped, and nothing of theirs is delivered.
                    Err(_) => tracing::error!("a commit lane panicked"),
                }
            }
            done
        });
        let mut committed = Vec::new();
        for lane in outcomes {
            match lane {
                lanes::Lane::Committed {
                    run,
                    changes,
                    queued,
                } => {
                    for c in &changes {
                        self.cache.committed(c);
                    }
                    self.hooks.queued(&queued);
                    committed.push(run);
                }
                lanes::Lane::Failed { error, replies } => {
                    tracing::error!(error = %error, "commit round failed; nothing of it was written");
                    fail(replies, &error);
                }
            }
        }
        // A conversation's messages are all in one lane, in seq order: lane
        // after lane they go out as they would after one round.
        let stored: Vec<&Appended> = committed
            .iter()
            .flat_map(|r| r.outcomes.iter().filter_map(|o| o.as_ref().ok()))
            .collect();
        (self.on_commit)(&stored);
        for SendRun { replies, outcomes } in committed {
            let mut rest = outcomes.into_iter();
            for (reply, n) in replies {
                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
            }
        }
    }

    /// Runs jobs from the front of `jobs` in one round and commits it, or drops
    /// it at the first store failure (answering what it ran with that failure).
    fn one_round(&mut self, jobs: &mut VecDeque<Job>) {
        let round = match self.store.begin() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a commit round");
                for job in jobs.drain(..) {
                    refuse(job, &e);
                }
                return;
            }
        };
        let mut round = Tracked {
            inner: round,
            changes: Vec::new(),
            hooks: &self.hooks,
            online: &self.online,
            queued: Vec::new(),
        };
        let mut done = Vec::new();
        let mut durable = self.policy == FlushPolicy::Always;
        let mut broke = None;
        let mut run = Vec::new();
        while let Some(job) = jobs.pop_front() {
            match job {
                Job::Sends { sends, reply } => {
                    run.push((sends, reply));
                    // A run ends where another kind of job starts.
                    if matches!(jobs.front(), Some(Job::Sends { .. })) {
                        continue;
                    }
                    match store_sends(&mut round, std::mem::take(&mut run)) {
                        Ok(r) => done.push(Done::Sends(r)),
                        Err((e, replies)) => {
                            done.push(Done::Sends(SendRun {
                                replies,
                                outcomes: Vec::new(),
                            }));
                            broke = Some(e);
                        }
                    }
                }
                Job::Write(op) => {
                    let (finish, failed) = op(&mut round);
                    done.push(Done::Write(finish));
                    if failed.is_some() {
                        broke = failed;
                    }
                }
                Job::Sync(tx) => {
                    durable = true;
                    done.push(Done::Sync(tx));
                }
            }
            if broke.is_some() {
                break;
            }
        }
        let Tracked {
            inner: round,
            changes,
            queued,
            ..
        } = round;
        let committed = match broke {
            Some(e) => {
                drop(round);
                Err(e)
            }
            None => round.commit(durable),
        };
        match committed {
            Err(e) => {
                tracing::error!(error = %e, "commit round failed; nothing of it was written");
                for d in done {
                    d.fail(&e);
                }
            }
            Ok(()) => {
                // Before anyone is answered or anything later delivered.
                for c in &changes {
                    self.cache.committed(c);
                }
                self.hooks.queued(&queued);
                for d in done {
                    match d {
                        Done::Write(finish) => finish(Ok(())),
                        Done::Sync(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        Done::Sends(SendRun { replies, outcomes }) => {
                            let stored: Vec<&Appended> =
                                outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
                            (self.on_commit)(&stored);
                            let mut rest = outcomes.into_iter();
                            for (reply, n) in replies {
                                let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Answers a job that never ran with `e`.
fn refuse(job: Job, e: &StoreError) {
    match job {
        Job::Sends { reply, .. } => {
            let _ = reply.send(Err(CommitError::Store(again(e))));
        }
        Job::Write(op) => {
            // Its reply is inside the op; a round that refuses everything gets
            // it out: run it against a round that fails every call.
            let mut dead = Dead(again(e));
            let (finish, _) = op(&mut dead);
            finish(Err(e));
        }
        Job::Sync(tx) => {
            let _ = tx.send(Err(CommitError::Store(again(e))));
        }
    }
}

fn fail(replies: Vec<(ReplyTo, usize)>, e: &StoreError) {
    for (reply, _) in replies {
        let _ = reply.send(Err(CommitError::Store(again(e))));
    }
}

/// A round over a store that cannot be reached: every call fails with its error.
struct Dead(StoreError);

impl Reads for Dead {
    fn head(&self, _: &ConvId) -> Result<Head, StoreError> {
        Err(again(&self.0))
    }
    fn messages(
        &self,
        _: &ConvId,
        _: Range,
        _: Window,
        _: usize,
    ) -> Result<(Vec<Bytes>, bool), StoreError> {
        Err(again(&self.0))
    }
    fn cursor(&self, _: &str, _: &ConvId) -> Result<u64, StoreError> {
        Err(again(&self.0))
    }
    fn conversations(&self, _: &str, _: usize) -> Result<Vec<Summary>, StoreError> {
        Err(again(&self.0))
    }
    fn group(&self, _: &str) -> Result<Option<GroupRecord>, StoreError> {
        Err(again(&self.0))
    }
    fn membership(&self, _: &str, _: &str) -> Result<Option<Membership>, StoreError> {
        Err(again(&self.0))
    }
    fn members(&self, _: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        Err(again(&self.0))
    }
    fn user_groups(&self, _: &str, _: usize) -> Result<Vec<String>, StoreError> {
        Err(again(&self.0))
    }
    fn is_contact(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(again(&self.0))
    }
    fn contacts(&self, _: &str, _: usize) -> Result<Vec<String>, StoreError> {
        Err(again(&self.0))
    }
    fn password_hash(&self, _: &str) -> Result<Option<String>, StoreError> {
        Err(again(&self.0))
    }
}

impl Round for Dead {
    fn append(&mut self, _: &[NewMessage], _: u64) -> Result<Vec<Appended>, StoreError> {
        Err(again(&self.0))
    }
    fn ack(&mut self, _: &str, _: &[(ConvId, u64)]) -> Result<(), StoreError> {
        Err(again(&self.0))
    }
    fn write_groups(&mut self, _: &[GroupWrite]) -> Result<(), StoreError> {
        Err(again(&self.0))
    }
    fn set_contact(&mut self, _: &str, _: &str, _: bool) -> Result<bool, StoreError> {
        Err(again(&self.0))
    }
    fn create_account(&mut self, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(again(&self.0))
    }
    fn put_retained(&mut self, _: &[(String, Option<(Bytes, u8)>)]) -> Result<(), StoreError> {
        Err(again(&self.0))
    }
    fn expire_idempotency(&mut self, _: u64, _: usize) -> Result<usize, StoreError> {
        Err(again(&self.0))
    }
    fn expire_messages(&mut self, _: u64, _: usize) -> Result<usize, StoreError> {
        Err(again(&self.0))
    }
    fn purge(&mut self, _: &ConvId, _: u64, _: usize) -> Result<usize, StoreError> {
        Err(again(&self.0))
    }
    fn amend(&mut self, _: &ConvId, _: u64, _: &[u8]) -> Result<bool, StoreError> {
        Err(again(&self.0))
    }
    fn edits_of(&mut self, _: &ConvId, _: u64) -> Result<Vec<u64>, StoreError> {
        Err(again(&self.0))
    }
    fn enqueue_events(&mut self, _: &str, _: &[Vec<u8>]) -> Result<(), StoreError> {
        Err(again(&self.0))
    }
    fn drop_events(&mut self, _: &str, _: &[u64]) -> Result<(), StoreError> {
        Err(again(&self.0))
    }
    fn commit(self: Box<Self>, _: bool) -> Result<(), StoreError> {
        Err(self.0)
    }
}

/// A round that notes the membership and contact changes written through it,
/// for the cache once they are durable.
struct Tracked<'s> {
    inner: Box<dyn Round + 's>,
    changes: Vec<Change>,
    /// The webhooks, whose events of a stored message go into its round.
    hooks: &'s crate::webhooks::Hooks,
    online: &'s crate::webhooks::Online,
    queued: crate::webhooks::Queued,
}

impl Reads for Tracked<'_> {
    fn head(&self, conv: &ConvId) -> Result<Head, StoreError> {
        self.inner.head(conv)
    }
    fn messages(
        &self,
        conv: &ConvId,
        range: Range,
        window: Window,
        limit: usize,
    ) -> Result<(Vec<Bytes>, bool), StoreError> {
        self.inner.messages(conv, range, window, limit)
    }
    fn cursor(&self, uid: &str, conv: &ConvId) -> Result<u64, StoreError> {
        self.inner.cursor(uid, conv)
    }
    fn conversations(&self, uid: &str, limit: usize) -> Result<Vec<Summary>, StoreError> {
        self.inner.conversations(uid, limit)
    }
    fn group(&self, gid: &str) -> Result<Option<GroupRecord>, StoreError> {
        self.inner.group(gid)
    }
    fn membership(&self, gid: &str, uid: &str) -> Result<Option<Membership>, StoreError> {
        self.inner.membership(gid, uid)
    }
    fn members(&self, gid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        self.inner.members(gid)
    }
    fn user_groups(&self, uid: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.inner.user_groups(uid, limit)
    }
    fn is_contact(&self, owner: &str, contact: &str) -> Result<bool, StoreError> {
        self.inner.is_contact(owner, contact)
    }
    fn contacts(&self, owner: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        self.inner.contacts(owner, limit)
    }
    fn password_hash(&self, uid: &str) -> Result<Option<String>, StoreError> {
        self.inner.password_hash(uid)
    }
}

impl Round for Tracked<'_> {
    fn append(&mut self, sends: &[NewMessage], now_ms: u64) -> Result<Vec<Appended>, StoreError> {
        let appended = self.inner.append(sends, now_ms)?;
        if !self.hooks.is_empty() {
            let queued = self
                .hooks
                .on_append(&mut *self.inner, &appended, self.online)?;
            self.queued.extend(queued);
        }
        Ok(appended)
    }
    fn ack(&mut self, uid: &str, cursors: &[(ConvId, u64)]) -> Result<(), StoreError> {
        self.inner.ack(uid, cursors)
    }
    fn write_groups(&mut self, writes: &[GroupWrite]) -> Result<(), StoreError> {
        self.inner.write_groups(writes)?;
        for w in writes {
            if let GroupWrite::Member { gid, uid, .. } | GroupWrite::Forget { gid, uid } = w {
                self.changes.push(Change::Member {
                    gid: gid.clone(),
                    uid: uid.clone(),
                });
            }
        }
        Ok(())
    }
    fn set_contact(&mut self, owner: &str, contact: &str, on: bool) -> Result<bool, StoreError> {
        let changed = self.inner.set_contact(owner, contact, on)?;
        self.changes.push(Change::Contact {
            owner: owner.to_owned(),
            contact: contact.to_owned(),
        });
        Ok(changed)
    }
    fn create_account(&mut self, uid: &str, password_hash: &str) -> Result<bool, StoreError> {
        self.inner.create_account(uid, password_hash)
    }
    fn put_retained(
        &mut self,
        changes: &[(String, Option<(Bytes, u8)>)],
    ) -> Result<(), StoreError> {
        self.inner.put_retained(changes)
    }
    fn expire_idempotency(&mut self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.inner.expire_idempotency(now_ms, limit)
    }
    fn expire_messages(&mut self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.inner.expire_messages(before_ms, limit)
    }
    fn amend(&mut self, conv: &ConvId, seq: u64, json: &[u8]) -> Result<bool, StoreError> {
        self.inner.amend(conv, seq, json)
    }
    fn edits_of(&mut self, conv: &ConvId, seq: u64) -> Result<Vec<u64>, StoreError> {
        self.inner.edits_of(conv, seq)
    }
    fn enqueue_events(&mut self, hook: &str, events: &[Vec<u8>]) -> Result<(), StoreError> {
        self.inner.enqueue_events(hook, events)
    }
    fn drop_events(&mut self, hook: &str, ids: &[u64]) -> Result<(), StoreError> {
        self.inner.drop_events(hook, ids)
    }
    fn purge(&mut self, conv: &ConvId, through: u64, limit: usize) -> Result<usize, StoreError> {
        self.inner.purge(conv, through, limit)
    }
    fn commit(self: Box<Self>, durable: bool) -> Result<(), StoreError> {
        self.inner.commit(durable)
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
            revision: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_hundred_concurrent_sends_get_seqs_one_to_two_hundred() {
        let store = SledStore::temporary(Duration::from_secs(60)).expect("store");
        let c = Committer::start(
            Arc::new(store.clone()),
            FlushPolicy::Always,
            Arc::default(),
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
            revision: None,
        }
    }

    #[tokio::test]
    async fn a_group_send_commits_only_while_its_sender_is_a_member() {
        let store = SledStore::temporary(Duration::from_secs(60)).expect("store");
        let c = Committer::start(
            Arc::new(store),
            FlushPolicy::Always,
            Arc::default(),
            Box::new(|_| {}),
        );
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
            Arc::default(),
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
            Arc::default(),
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

    /// A PostgreSQL store on a server of the test's own, or `None` without one.
    async fn on_postgres() -> Option<(imqtt_tests::postgres::Postgres, crate::store::PgStore)> {
        let pg = imqtt_tests::postgres::Postgres::start()?;
        let url = pg.database();
        let store = tokio::task::spawn_blocking(move || {
            let cfg = crate::config::StoreConfig {
                engine: crate::config::Engine::Postgres,
                url: crate::config::DatabaseUrl::new(url),
                pool: 8,
                ..crate::config::StoreConfig::default()
            };
            crate::store::PgStore::open(&cfg, Duration::from_secs(60))
        })
        .await
        .expect("task")
        .expect("open");
        Some((pg, store))
    }

    /// Batches in lanes (`lanes.rs`): 8 writers each queue 12 batches of 50
    /// sends at once, half to conversations of their own and half to one they
    /// share with another writer. Every conversation's seqs are contiguous and
    /// delivered once in order, and a writer's messages to the shared
    /// conversation have seqs in the order it queued them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn on_postgres_batches_in_lanes_keep_each_conversation_whole_and_in_order() {
        let Some((_pg, store)) = on_postgres().await else {
            return;
        };
        let delivered = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
        let seen = delivered.clone();
        let c = Committer::start(
            Arc::new(store),
            FlushPolicy::Always,
            Arc::default(),
            Box::new(move |stored| {
                let mut seen = seen.lock().expect("lock");
                for a in stored.iter().filter(|a| !a.duplicate) {
                    seen.push((a.envelope.conv.as_str().to_owned(), a.envelope.seq));
                }
            }),
        );
        let tasks: Vec<_> = (0..8u64)
            .map(|w| {
                let c = c.clone();
                tokio::spawn(async move {
                    let me = format!("w{w}");
                    let partner = format!("w{}", w ^ 1);
                    let mut queued = Vec::new();
                    for b in 0..12u64 {
                        let batch = (0..50u64)
                            .map(|i| {
                                let n = w * 10_000 + b * 100 + i;
                                if i % 2 == 0 {
                                    send(&me, &partner, n)
                                } else {
                                    send(&me, &format!("r{w}-{b}-{i}"), n)
                                }
                            })
                            .collect();
                        queued.push(c.submit(batch).await.expect("queued"));
                    }
                    let mut out = Vec::new();
                    for q in queued {
                        out.extend(q.await.expect("commit"));
                    }
                    out
                })
            })
            .collect();
        // Per writer, its seqs in the shared conversation in the order queued.
        let mut stored = 0;
        for t in tasks {
            let mut last = 0;
            for o in t.await.expect("task") {
                let a = o.expect("stored");
                assert!(!a.duplicate);
                if a.envelope.to.starts_with('w') {
                    assert!(a.envelope.seq > last, "{} reordered", a.envelope.conv);
                    last = a.envelope.seq;
                }
                stored += 1;
            }
        }
        assert_eq!(stored, 8 * 12 * 50);
        let delivered = delivered.lock().expect("lock").clone();
        assert_eq!(delivered.len(), stored, "each message delivered once");
        let mut next: std::collections::HashMap<String, u64> = Default::default();
        for (conv, seq) in delivered {
            let want = next.entry(conv.clone()).or_insert(1);
            assert_eq!(seq, *want, "{conv} delivered out of order");
            *want += 1;
        }
        // Each shared conversation holds both writers' 600 messages.
        assert_eq!(next.get("dm:w0:w1"), Some(&601));
    }

    /// The loop on PostgreSQL, under 64 writers with retries: seqs contiguous per
    /// conversation, delivery in seq order and once, retries answered with their
    /// original, and a group removal seen by every send queued after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn on_postgres_concurrent_sends_keep_seqs_contiguous_and_delivery_in_order() {
        let Some((_pg, store)) = on_postgres().await else {
            return;
        };
        let delivered = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
        let seen = delivered.clone();
        let c = Committer::start(
            Arc::new(store),
            FlushPolicy::Always,
            Arc::default(),
            Box::new(move |stored| {
                let mut seen = seen.lock().expect("lock");
                for a in stored.iter().filter(|a| !a.duplicate) {
                    seen.push((a.envelope.conv.as_str().to_owned(), a.envelope.seq));
                }
            }),
        );
        c.write(|s| Ok((s.write_groups(&[member("g", "ann", None)])?, None)))
            .await
            .expect("join");
        let users = ["ann", "ben", "cat", "dan", "eve"];
        // 64 writers, each with 10 sends to 4 conversations, every third one
        // sent twice with one key (a retry).
        let tasks: Vec<_> = (0..64u64)
            .map(|w| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0..10u64 {
                        let n = w * 100 + i;
                        let from = users[(w % 5) as usize];
                        let to = users[((w + 1 + i % 4) % 5) as usize];
                        let to = if to == from { "zed" } else { to };
                        let mut batch = vec![send(from, to, n)];
                        if n % 3 == 0 {
                            batch.push(send(from, to, n));
                        }
                        out.push(c.commit(batch).await.expect("commit"));
                    }
                    out
                })
            })
            .collect();
        // A removal in the middle: every group send queued after it is refused.
        let before = c.submit(vec![group_send("ann", 1)]).await.expect("queued");
        let removal = c.write(|s| Ok((s.write_groups(&[member("g", "ann", Some(1))])?, None)));
        let (before, removal) = tokio::join!(before, removal);
        removal.expect("removal");
        assert_eq!(
            before.expect("commit")[0]
                .as_ref()
                .expect("stored")
                .envelope
                .seq,
            1
        );
        let after = c.commit(vec![group_send("ann", 2)]).await.expect("commit");
        assert_eq!(
            after[0].as_ref().err(),
            Some(&Refusal::NotAMember("g".into()))
        );
        let mut stored = 0;
        for t in tasks {
            for outcomes in t.await.expect("task") {
                let first = outcomes[0].as_ref().expect("stored");
                assert!(!first.duplicate);
                if let Some(again) = outcomes.get(1) {
                    let again = again.as_ref().expect("retry");
                    assert!(again.duplicate);
                    assert_eq!(again.envelope.id, first.envelope.id);
                    assert_eq!(again.envelope.seq, first.envelope.seq);
                }
                stored += 1;
            }
        }
        assert_eq!(stored, 640);
        let delivered = delivered.lock().expect("lock").clone();
        assert_eq!(delivered.len(), 641, "each new message delivered once");
        let mut next: std::collections::HashMap<String, u64> = Default::default();
        for (conv, seq) in delivered {
            let want = next.entry(conv.clone()).or_insert(1);
            assert_eq!(seq, *want, "{conv} delivered out of order");
            *want += 1;
        }
    }
}
