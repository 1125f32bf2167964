//! Commit lanes: on an engine whose rounds are transactions of their own
//! (PostgreSQL, [`Store::lanes`]), a run of send jobs is spread over several
//! rounds committed at once, each on its own connection, so that the database
//! executes them on several cores instead of one backend.
//!
//! Jobs that share a conversation stay in one lane, in their order of arrival:
//! a device's messages to one conversation keep the order it sent them in, and
//! no two lanes wait on each other's head rows. Deliveries wait until every lane
//! has committed and then go out in seq order per conversation, as after one
//! round. Each job is in exactly one lane, so it is stored or refused whole.
//! Writes other than sends (acks, groups, accounts) never run in lanes: they
//! are rounds of their own between the runs of sends, as before.

use std::collections::HashMap;

use crate::cache::Change;
use crate::store::{NewMessage, Store, StoreError};
use crate::webhooks::{Hooks, Online, Queued};

use super::{ReplyTo, SendRun, Tracked, store_sends};

/// Send jobs as the loop took them.
pub(super) type Jobs = Vec<(Vec<NewMessage>, ReplyTo)>;

/// What one lane's round did.
pub(super) enum Lane {
    Committed {
        run: SendRun,
        changes: Vec<Change>,
        queued: Queued,
    },
    Failed {
        error: StoreError,
        replies: Vec<(ReplyTo, usize)>,
    },
}

/// Splits `jobs` into at most `lanes` lanes: jobs connected by a conversation
/// go together, the groups dealt largest first to the emptiest lane, each
/// lane's jobs in their order of arrival. Empty lanes are left out.
pub(super) fn split(jobs: Jobs, lanes: usize) -> Vec<Jobs> {
    let group = groups(&jobs);
    let mut size: HashMap<usize, usize> = HashMap::new();
    for (j, (sends, _)) in jobs.iter().enumerate() {
        *size.entry(group[j]).or_default() += sends.len().max(1);
    }
    let mut by_size: Vec<(usize, usize)> = size.into_iter().collect();
    by_size.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut load = vec![0usize; lanes.max(1)];
    let mut lane_of: HashMap<usize, usize> = HashMap::new();
    for (g, n) in by_size {
        let (emptiest, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .unwrap_or((0, &0));
        load[emptiest] += n;
        lane_of.insert(g, emptiest);
    }
    let mut out: Vec<Jobs> = (0..load.len()).map(|_| Vec::new()).collect();
    for (j, job) in jobs.into_iter().enumerate() {
        let lane = lane_of.get(&group[j]).copied().unwrap_or(0);
        out[lane].push(job);
    }
    out.retain(|l| !l.is_empty());
    out
}

/// Each job's group: the smallest index of the jobs it shares a conversation
/// with, directly or through others (union-find over the conversations).
fn groups(jobs: &Jobs) -> Vec<usize> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..jobs.len()).collect();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (j, (sends, _)) in jobs.iter().enumerate() {
        for s in sends {
            let first = *owner.entry(s.conv.as_str()).or_insert(j);
            let (a, b) = (root(&mut parent, first), root(&mut parent, j));
            if a != b {
                let (lo, hi) = (a.min(b), a.max(b));
                parent[hi] = lo;
            }
        }
    }
    (0..jobs.len()).map(|j| root(&mut parent, j)).collect()
}

/// Stores one lane's jobs in a round of their own and commits it.
pub(super) fn run(
    store: &dyn Store,
    hooks: &Hooks,
    online: &Online,
    durable: bool,
    jobs: Jobs,
) -> Lane {
    let round = match store.begin() {
        Ok(r) => r,
        Err(error) => {
            let replies = jobs.into_iter().map(|(s, r)| (r, s.len())).collect();
            return Lane::Failed { error, replies };
        }
    };
    let mut round = Tracked {
        inner: round,
        changes: Vec::new(),
        hooks,
        online,
        queued: Vec::new(),
    };
    let stored = store_sends(&mut round, jobs);
    let Tracked {
        inner,
        changes,
        queued,
        ..
    } = round;
    match stored {
        Err((error, replies)) => {
            drop(inner);
            Lane::Failed { error, replies }
        }
        Ok(run) => match inner.commit(durable) {
            Ok(()) => Lane::Committed {
                run,
                changes,
                queued,
            },
            Err(error) => Lane::Failed {
                error,
                replies: run.replies,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn job(convs: &[&str]) -> (Vec<NewMessage>, ReplyTo) {
        let sends = convs
            .iter()
            .map(|c| NewMessage {
                from: "ann".into(),
                conv: c.parse().expect("conv"),
                to: "x".into(),
                client_msg_id: None,
                idempotency_key: None,
                qos: imqtt_wire::Qos::AtLeastOnce,
                body: serde_json::json!(1),
                revision: None,
            })
            .collect();
        (sends, oneshot::channel().0)
    }

    fn convs(lane: &Jobs) -> Vec<Vec<String>> {
        lane.iter()
            .map(|(s, _)| s.iter().map(|m| m.conv.as_str().to_owned()).collect())
            .collect()
    }

    #[test]
    fn jobs_that_share_a_conversation_stay_in_one_lane_in_order() {
        let jobs = vec![
            job(&["dm:ann:bob", "dm:ann:cat"]),
            job(&["dm:ann:dan"]),
            job(&["dm:ann:eve", "dm:ann:cat"]),
            job(&["dm:ann:fay"]),
            job(&["dm:ann:eve"]),
        ];
        let lanes = split(jobs, 2);
        assert_eq!(lanes.len(), 2);
        // Jobs 0, 2 and 4 are connected through cat and eve: five sends.
        let first = convs(&lanes[0]);
        assert_eq!(
            first,
            vec![
                vec!["dm:ann:bob", "dm:ann:cat"],
                vec!["dm:ann:eve", "dm:ann:cat"],
                vec!["dm:ann:eve"],
            ]
        );
        assert_eq!(
            convs(&lanes[1]),
            vec![vec!["dm:ann:dan"], vec!["dm:ann:fay"]]
        );
    }

    #[test]
    fn unrelated_jobs_are_dealt_to_the_emptiest_lane() {
        let jobs = vec![
            job(&["dm:ann:a1", "dm:ann:a2", "dm:ann:a3"]),
            job(&["dm:ann:b1", "dm:ann:b2"]),
            job(&["dm:ann:c1", "dm:ann:c2"]),
            job(&["dm:ann:d1"]),
        ];
        let loads: Vec<usize> = split(jobs, 2)
            .iter()
            .map(|l| l.iter().map(|(s, _)| s.len()).sum())
            .collect();
        assert_eq!(loads, vec![4, 4]);
        // One lane: everything, in order.
        let one = split(vec![job(&["dm:ann:x"]), job(&["dm:ann:y"])], 1);
        assert_eq!(convs(&one[0]), vec![vec!["dm:ann:x"], vec!["dm:ann:y"]]);
    }
}
