//! Scenarios `send` and `batch`: N senders, each a distinct user `s{i}` sending to
//! its own recipient `r{i}` over its own keep-alive HTTP/1.1 connection, one request
//! after the answer to the previous one (closed loop), M messages in all: one
//! `POST /v1/messages` per message, or `POST /v1/messages/batch` of B sends. A 2xx
//! means the message is durable, so the rate printed is durable sends per second.

use std::time::Duration;

use imqtt_client::wire::{BatchRequest, BatchResult, SendRequest};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::api::{Api, Sent};
use super::histogram::{Latencies, REQUEST_QUANTILES};
use super::procfs::CpuMeter;
use super::schedule::share;
use super::{BenchError, JwtSecret, per_sec, secs};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct SendOptions {
    /// The HTTP API's base URL.
    pub(crate) base: String,
    /// Signs each sender's token.
    pub(crate) secret: JwtSecret,
    /// Concurrent senders, one connection each.
    pub(crate) senders: usize,
    /// Messages in all.
    pub(crate) messages: usize,
    /// `None`: one message per request; `Some(b)`: batches of up to `b`.
    pub(crate) batch: Option<usize>,
    /// Every message to a recipient of its own (a new conversation each), instead
    /// of sender `s{i}` always to `r{i}`.
    pub(crate) distinct: bool,
    /// Longest one request may take.
    pub(crate) request_timeout: Duration,
    /// The server's pid, for its CPU time per message.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
}

/// What one sender got back.
#[derive(Debug, Default)]
pub(crate) struct SenderTally {
    /// Messages answered as newly stored.
    pub(crate) stored: usize,
    /// Messages answered as retries of stored ones (`200`).
    pub(crate) duplicates: usize,
    /// Messages refused, or whose request failed.
    pub(crate) failed: usize,
    /// Requests made.
    pub(crate) requests: usize,
    /// Latency of each answered request.
    pub(crate) latencies: Latencies,
    /// The first failure.
    pub(crate) error: Option<String>,
    /// The deadline cut the sender short.
    pub(crate) timed_out: bool,
}

impl SenderTally {
    /// Adds another sender's answers to these.
    pub(crate) fn add(&mut self, other: SenderTally) {
        self.stored += other.stored;
        self.duplicates += other.duplicates;
        self.failed += other.failed;
        self.requests += other.requests;
        self.latencies.merge(&other.latencies);
        self.timed_out |= other.timed_out;
        if self.error.is_none() {
            self.error = other.error;
        }
    }

    fn fail(&mut self, messages: usize, error: impl ToString) {
        self.failed += messages;
        self.error.get_or_insert_with(|| error.to_string());
    }
}

/// A direct message to `to` for [`sender`]: send `j` has body `{"text":"m{j}"}` and
/// its own `client_msg_id`, `{id_prefix}-{j}`.
pub(crate) fn direct(to: String, id_prefix: String) -> impl Fn(usize) -> SendRequest {
    move |j| {
        let mut req =
            SendRequest::to_user(to.clone(), serde_json::json!({ "text": format!("m{j}") }));
        req.client_msg_id = Some(format!("{id_prefix}-{j}"));
        req
    }
}

/// Like [`direct`], but send `j` goes to its own recipient `{to_prefix}-{j}`: every
/// message starts a conversation, as a backend's notices to a population do.
pub(crate) fn distinct(to_prefix: String, id_prefix: String) -> impl Fn(usize) -> SendRequest {
    move |j| {
        let mut req = SendRequest::to_user(
            format!("{to_prefix}-{j}"),
            serde_json::json!({ "text": format!("m{j}") }),
        );
        req.client_msg_id = Some(format!("{id_prefix}-{j}"));
        req
    }
}

/// One sender's messages: sends `request(0)` .. `request(count - 1)`, `batch` per
/// request (`None` = single sends), one request at a time.
pub(crate) async fn sender(
    api: Api,
    count: usize,
    batch: Option<usize>,
    deadline: Instant,
    request: impl Fn(usize) -> SendRequest,
) -> SenderTally {
    let mut tally = SenderTally::default();
    let mut next = 0;
    while next < count {
        let n = batch.unwrap_or(1).clamp(1, count - next);
        let mut sends: Vec<SendRequest> = (next..next + n).map(&request).collect();
        next += n;
        let started = Instant::now();
        tally.requests += 1;
        let answer = async {
            match batch {
                None => api.send(&sends[0]).await.map(|sent| match sent {
                    Sent::Stored => (1, 0, None),
                    Sent::Retry => (0, 1, None),
                }),
                Some(_) => {
                    let req = BatchRequest {
                        messages: std::mem::take(&mut sends),
                    };
                    api.batch(&req)
                        .await
                        .map(|resp| batch_outcome(&resp.results, n))
                }
            }
        };
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok((stored, duplicates, error))) => {
                tally.latencies.record(started.elapsed());
                tally.stored += stored;
                tally.duplicates += duplicates;
                if let Some((failed, error)) = error {
                    tally.fail(failed, error);
                }
            }
            Ok(Err(error)) => tally.fail(n, error),
            Err(_) => {
                tally.timed_out = true;
                break;
            }
        }
    }
    tally
}

/// Waits for every sender of `set`, adding its answers to `into` as it finishes (so
/// what finished is counted even if this is cut short).
pub(crate) async fn join_senders(
    set: &mut JoinSet<SenderTally>,
    into: &mut SenderTally,
) -> Result<(), BenchError> {
    while let Some(joined) = set.join_next().await {
        into.add(joined.map_err(|e| BenchError::Unexpected(format!("sender task: {e}")))?);
    }
    Ok(())
}

/// Counts a batch's results: (stored, duplicates, Some((failed, first error))).
/// Missing results count as failed.
fn batch_outcome(results: &[BatchResult], asked: usize) -> (usize, usize, Option<(usize, String)>) {
    let mut stored = 0;
    let mut failed = asked.saturating_sub(results.len());
    let mut error = (failed > 0).then(|| format!("{failed} results missing from a batch"));
    for result in results {
        match result {
            BatchResult::Stored(_) => stored += 1,
            BatchResult::Failed(e) => {
                failed += 1;
                error.get_or_insert_with(|| format!("{}: {}", e.error.code, e.error.message));
            }
            BatchResult::Live(_) => {
                failed += 1;
                error.get_or_insert_with(|| "a stored send answered as qos 0".to_owned());
            }
        }
    }
    (stored, 0, error.map(|e| (failed, e)))
}

/// Builds one client per sender and opens its connection (a `GET /v1/sync?limit=1`
/// of a user with nothing stored), so the timed phase starts with every connection
/// up. Sender `i` is user `{prefix}{i}`.
pub(crate) async fn connect_all(
    base: &str,
    secret: &JwtSecret,
    prefix: &str,
    senders: usize,
    timeout: Duration,
) -> Result<Vec<Api>, BenchError> {
    let mut apis = Vec::with_capacity(senders);
    for i in 0..senders {
        let api = Api::new(base, secret, &format!("{prefix}{i}"), timeout)?;
        api.sync(1).await?;
        apis.push(api);
    }
    Ok(apis)
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct SendReport {
    /// `None` for single sends, the batch size otherwise.
    pub(crate) batch: Option<usize>,
    pub(crate) senders: usize,
    pub(crate) messages: usize,
    /// Every sender's answers together.
    pub(crate) tally: SenderTally,
    /// From the first request until the last sender had its last answer.
    pub(crate) elapsed: Option<Duration>,
    /// CPU time lines (server and bench).
    pub(crate) cpu: Vec<String>,
    /// Setting up failed (connecting the senders).
    pub(crate) setup_error: Option<String>,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(opts: SendOptions) -> SendReport {
    let mut report = SendReport {
        batch: opts.batch,
        senders: opts.senders,
        messages: opts.messages,
        ..SendReport::default()
    };
    let connect = connect_all(
        &opts.base,
        &opts.secret,
        "s",
        opts.senders,
        opts.request_timeout,
    );
    let apis = match tokio::time::timeout_at(opts.deadline, connect).await {
        Ok(Ok(apis)) => apis,
        Ok(Err(e)) => {
            report.setup_error = Some(e.to_string());
            return report;
        }
        Err(_) => {
            report.setup_error = Some("timed out connecting the senders".to_owned());
            return report;
        }
    };
    // Distinct client_msg_ids on every run, so a second run against the same store
    // is not answered as retries of the first.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (i, api) in apis.into_iter().enumerate() {
        let (count, batch, deadline) = (
            share(opts.messages, opts.senders, i),
            opts.batch,
            opts.deadline,
        );
        let ids = format!("{run:x}-{i}");
        if opts.distinct {
            set.spawn(sender(
                api,
                count,
                batch,
                deadline,
                distinct(format!("r{run:x}-{i}"), ids),
            ));
        } else {
            set.spawn(sender(
                api,
                count,
                batch,
                deadline,
                direct(format!("r{i}"), ids),
            ));
        }
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(tally) => report.tally.add(tally),
            Err(e) => report.setup_error = Some(format!("sender task: {e}")),
        }
    }
    let elapsed = start.elapsed();
    if !report.tally.timed_out {
        report.elapsed = Some(elapsed);
    }
    report.cpu = cpu.lines(report.tally.stored);
    report
}

impl SendReport {
    fn name(&self) -> &'static str {
        if self.batch.is_some() {
            "batch"
        } else {
            "send"
        }
    }

    /// Whether every message was stored, in time.
    pub(crate) fn complete(&self) -> bool {
        self.setup_error.is_none()
            && self.elapsed.is_some()
            && self.tally.failed == 0
            && self.tally.stored + self.tally.duplicates == self.messages
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let name = self.name();
        let t = &self.tally;
        let mut out = vec![
            format!("scenario={name}"),
            format!("senders={}", self.senders),
            format!("messages={}", self.messages),
        ];
        if let Some(b) = self.batch {
            out.push(format!("batch_size={b}"));
        }
        out.extend([
            format!("{name}_requests={}", t.requests),
            format!("{name}_stored={}", t.stored),
            format!("{name}_duplicates={}", t.duplicates),
            format!("{name}_errors={}", t.failed),
        ]);
        if let Some(d) = self.elapsed {
            out.push(format!("{name}_secs={}", secs(d)));
            out.push(format!(
                "{name}_durable_messages_per_sec={:.1}",
                per_sec(t.stored + t.duplicates, d)
            ));
        }
        out.extend(
            t.latencies
                .lines(&format!("{name}_request"), REQUEST_QUANTILES),
        );
        out.extend(self.cpu.iter().cloned());
        if let Some(e) = self.setup_error.as_ref().or(t.error.as_ref()) {
            out.push(format!("error={e}"));
        }
        if t.timed_out {
            out.push(format!("timed_out_in={name}"));
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// A sentence for a human.
    pub(crate) fn summary(&self) -> String {
        let t = &self.tally;
        let what = match self.batch {
            Some(b) => format!("{} senders, batches of {b}", self.senders),
            None => format!("{} senders, one message per request", self.senders),
        };
        let mut s = match self.elapsed {
            Some(d) => format!(
                "{}: {what}: {} durable messages in {} s = {:.0}/s",
                self.name(),
                t.stored + t.duplicates,
                secs(d),
                per_sec(t.stored + t.duplicates, d)
            ),
            None => format!(
                "{}: {what}: only {}/{} messages stored",
                self.name(),
                t.stored + t.duplicates,
                self.messages
            ),
        };
        if t.latencies.count() > 0 {
            s += &format!(
                ", request latency {}",
                t.latencies.summary(REQUEST_QUANTILES)
            );
        }
        s += &format!(", {} errors.", t.failed);
        if let Some(e) = self.setup_error.as_ref().or(t.error.as_ref()) {
            s += &format!(" Error: {e}.");
        }
        if t.timed_out {
            s += " Timed out.";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use imqtt_client::wire::{ConvId, ErrorBody, SendResult};

    use super::*;

    #[test]
    fn batch_results_count_stored_failed_and_missing() {
        let stored = BatchResult::Stored(SendResult {
            id: "x".to_owned(),
            conv: ConvId::dm("a", "b").expect("conv"),
            seq: 1,
            ts: 0,
        });
        let failed = BatchResult::Failed(ErrorBody::new("bad_request", "no".to_owned()));
        let (ok, dup, error) = batch_outcome(&[stored.clone(), failed, stored], 4);
        assert_eq!((ok, dup), (2, 0));
        let (n, first) = error.expect("failures");
        assert_eq!(n, 2);
        assert_eq!(first, "1 results missing from a batch");
        assert_eq!(batch_outcome(&[], 0), (0, 0, None));
    }
}
