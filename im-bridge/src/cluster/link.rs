//! The hub's [`Link`]: what this node publishes goes on a bounded queue to the
//! relay task, which frames it and publishes it on NATS; what this node's
//! sessions hold becomes NATS subscriptions, counted per subject and made by
//! one task, so that the hub never waits for NATS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::Publication;
use broker::cluster::{Interest, Link, Settled};
use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};

use super::metrics::ClusterMetrics;
use super::subjects::Subjects;

/// Publications waiting for the relay task; beyond it they are dropped (and
/// counted): the store is the source of truth, and a slow NATS must not stall
/// a publisher.
pub(super) const RELAY_QUEUE: usize = 65_536;
/// Control messages (heartbeats, presence, takeovers, requests) waiting: their
/// own queue, served first, so a backlog of publications never delays or
/// drops a heartbeat and gets a live node counted dead.
pub(super) const CONTROL_QUEUE: usize = 4_096;
/// Longest a CONNACK or SUBACK waits for this node's NATS subscriptions.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the relay task publishes.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// A publication made here.
    Publication(Arc<Publication>),
    /// A control message, as is.
    Raw(String, Bytes),
}

/// The subjects this node's sessions need, counted.
#[derive(Debug, Default)]
pub(super) struct Interests {
    counts: HashMap<String, usize>,
    /// Subjects whose count went to or from zero since the worker last looked.
    dirty: HashSet<String>,
    /// Changes reported so far.
    requested: u64,
}

impl Interests {
    /// Takes the subjects to look at, and the change count they cover.
    pub(super) fn take_dirty(&mut self) -> (Vec<(String, bool)>, u64) {
        let dirty = std::mem::take(&mut self.dirty);
        let out = dirty
            .into_iter()
            .map(|s| {
                let want = self.counts.contains_key(&s);
                (s, want)
            })
            .collect();
        (out, self.requested)
    }
}

/// The link.
#[derive(Debug)]
pub(super) struct NatsLink {
    subjects: Subjects,
    queue: mpsc::Sender<Outgoing>,
    control: mpsc::Sender<Outgoing>,
    pub(super) interests: Mutex<Interests>,
    /// Wakes the interest worker.
    pub(super) wake: Notify,
    /// The change count the worker has put in effect.
    pub(super) done: watch::Sender<u64>,
    pub(super) connected: Arc<AtomicBool>,
    node: String,
    metrics: ClusterMetrics,
}

impl NatsLink {
    /// A link whose relay queues are `queue` (publications) and `control`.
    pub(super) fn new(
        subjects: Subjects,
        queue: mpsc::Sender<Outgoing>,
        control: mpsc::Sender<Outgoing>,
        connected: Arc<AtomicBool>,
        node: String,
        metrics: ClusterMetrics,
    ) -> NatsLink {
        NatsLink {
            subjects,
            queue,
            control,
            interests: Mutex::default(),
            wake: Notify::new(),
            done: watch::channel(0).0,
            connected,
            node,
            metrics,
        }
    }

    fn send(&self, out: Outgoing) {
        if self.queue.try_send(out).is_err() {
            self.metrics.relay_dropped.inc();
        }
    }

    /// Queues a control message.
    pub(super) fn send_raw(&self, subject: String, payload: Bytes) {
        if self
            .control
            .try_send(Outgoing::Raw(subject, payload))
            .is_err()
        {
            self.metrics.relay_dropped.inc();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link for NatsLink {
    fn relay(&self, publication: &Arc<Publication>) {
        self.send(Outgoing::Publication(publication.clone()));
    }

    fn interest(&self, interest: Interest<'_>, held: bool) {
        let subjects = self.subjects.interest(interest);
        let mut t = lock(&self.interests);
        for s in subjects {
            if held {
                let n = t.counts.entry(s.clone()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    t.dirty.insert(s);
                }
            } else if let Some(n) = t.counts.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    t.counts.remove(&s);
                    t.dirty.insert(s);
                }
            }
        }
        t.requested += 1;
        drop(t);
        self.wake.notify_one();
    }

    fn attached(&self, uid: &str, client_id: &str, at_ms: u64) {
        let msg = super::Control::Takeover {
            user: uid.to_owned(),
            client_id: client_id.to_owned(),
            at_ms,
            node: self.node.clone(),
        };
        if let Ok(json) = serde_json::to_vec(&msg) {
            self.send_raw(self.subjects.user_control(uid), Bytes::from(json));
        }
    }

    fn settled(&self) -> Settled {
        if !self.connected.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(()));
        }
        let target = lock(&self.interests).requested;
        let mut done = self.done.subscribe();
        if *done.borrow() >= target {
            return Box::pin(std::future::ready(()));
        }
        Box::pin(async move {
            let _ = tokio::time::timeout(SETTLE_TIMEOUT, done.wait_for(|d| *d >= target)).await;
        })
    }
}
