//! Group commit: every message write goes through one commit loop, which takes
//! whatever sends arrived while its last write and flush ran, stores them in one
//! atomic write and makes them durable with one flush, then answers each sender.
//!
//! Under load a flush covers many sends (one fsync per batch, not per message);
//! alone, a send waits for its own flush only. The loop is the store's only
//! writer of messages, so a conversation's seqs are assigned in commit order and
//! never skip, without any lock held by request handlers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::store::{Appended, NewMessage, Store, StoreError};

/// Sends waiting for the loop before senders wait for room (each holds a request).
const QUEUE: usize = 4096;
/// Most sends stored by one write and one flush.
const MAX_BATCH: usize = 4096;

/// When a commit becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Flushed before anyone is answered (`store.flush = "always"`).
    Always,
    /// Flushed every so often; an answer may come before its flush, so a crash can
    /// lose up to one interval of answered sends (`store.flush = "interval"`).
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

struct Job {
    sends: Vec<NewMessage>,
    reply: oneshot::Sender<Result<Vec<Appended>, CommitError>>,
}

/// Called by the commit loop with every batch once it is durable, in commit order,
/// before anyone is answered: delivery hangs here, so that pushes leave in seq
/// order. Must not block (publishing to the hub never does).
pub type OnCommit = Box<dyn Fn(&[Appended]) + Send>;

/// The handle senders commit through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("sends", &self.sends.len())
            .finish()
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
            .spawn(move || commit_loop(looped, rx, policy, on_commit));
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
    /// under the flush policy. Waits while the loop's queue is full.
    pub async fn commit(&self, sends: Vec<NewMessage>) -> Result<Vec<Appended>, CommitError> {
        self.submit(sends).await?.await
    }

    /// Queues `sends` for the commit loop and returns what resolves once they are
    /// durable: jobs are committed in the order they were submitted, so a caller
    /// that submits one after the other keeps its order without waiting for each.
    pub async fn submit(
        &self,
        sends: Vec<NewMessage>,
    ) -> Result<impl Future<Output = Result<Vec<Appended>, CommitError>> + use<>, CommitError> {
        let (reply, answer) = oneshot::channel();
        if sends.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
        } else {
            self.tx
                .send(Job { sends, reply })
                .await
                .map_err(|_| CommitError::Stopped)?;
        }
        Ok(async move { answer.await.map_err(|_| CommitError::Stopped)? })
    }
}

fn commit_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    policy: FlushPolicy,
    on_commit: OnCommit,
) {
    while let Some(first) = rx.blocking_recv() {
        // Everything that arrived meanwhile shares this write and flush.
        let mut jobs = vec![first];
        let mut total = jobs[0].sends.len();
        while total < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    total += job.sends.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut sends = Vec::with_capacity(total);
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            sizes.push(job.sends.len());
            sends.extend(job.sends);
            replies.push(job.reply);
        }
        let result = store.append(&sends, now_ms()).and_then(|appended| {
            if policy == FlushPolicy::Always {
                store.flush()?;
            }
            Ok(appended)
        });
        match result {
            Ok(appended) => {
                on_commit(&appended);
                let mut rest = appended.into_iter();
                for (reply, n) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(rest.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, sends = total, "commit failed");
                let text = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(CommitError::Store(StoreError::Engine(text.clone()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use imqtt_client::wire::{ConvId, Qos};

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
            seqs.push(out[0].envelope.seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        let conv = ConvId::dm("ann", "ben").expect("conv");
        assert_eq!(store.head(&conv).expect("head").seq, 200);
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
        let a = a.expect("a");
        let b = b.expect("b");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].envelope.body, serde_json::json!(1));
        assert_eq!(a[1].envelope.body, serde_json::json!(2));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].envelope.body, serde_json::json!(3));
    }
}
