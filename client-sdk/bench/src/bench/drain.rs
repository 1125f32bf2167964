//! Scenario `drain`: M messages are stored for one offline user, `d`, through the
//! batch endpoint (not timed), from `conversations` senders `f{k}` (one
//! conversation each); then `d` fetches them all with `GET /v1/sync?limit=N`, acking
//! each page with `POST /v1/ack`, until sync has nothing more. The drain is timed,
//! and every conversation's seqs are checked to arrive once each, in order.

use std::collections::BTreeMap;
use std::time::Duration;

use imqtt_client::wire::ConvId;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::api::Api;
use super::histogram::{Latencies, REQUEST_QUANTILES};
use super::procfs::CpuMeter;
use super::schedule::share;
use super::send::{SenderTally, connect_all, direct, sender};
use super::{BenchError, JwtSecret, per_sec, secs};

/// The user whose messages pile up.
const RECIPIENT: &str = "d";

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct DrainOptions {
    /// The HTTP API's base URL.
    pub(crate) base: String,
    /// Signs the users' tokens.
    pub(crate) secret: JwtSecret,
    /// Messages stored, then drained.
    pub(crate) messages: usize,
    /// Conversations they are spread over (one sender each).
    pub(crate) conversations: usize,
    /// Sends per batch while storing.
    pub(crate) batch: usize,
    /// `limit` of each sync.
    pub(crate) limit: u32,
    /// Longest one request may take.
    pub(crate) request_timeout: Duration,
    /// The server's pid, for its CPU time per message.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct DrainReport {
    pub(crate) messages: usize,
    pub(crate) conversations: usize,
    pub(crate) limit: u32,
    /// The filling phase's answers.
    pub(crate) fill: SenderTally,
    pub(crate) fill_elapsed: Option<Duration>,
    /// Messages the drain fetched (all pages).
    pub(crate) drained: usize,
    /// Messages whose seq was not the one after the previous in its conversation.
    pub(crate) out_of_sequence: usize,
    /// Sync requests, the last (empty) one included.
    pub(crate) syncs: usize,
    pub(crate) sync_latencies: Latencies,
    pub(crate) ack_latencies: Latencies,
    /// From the first sync until sync came back empty.
    pub(crate) drain_elapsed: Option<Duration>,
    pub(crate) cpu: Vec<String>,
    pub(crate) error: Option<String>,
    pub(crate) timed_out: bool,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(opts: DrainOptions) -> DrainReport {
    let mut report = DrainReport {
        messages: opts.messages,
        conversations: opts.conversations,
        limit: opts.limit,
        ..DrainReport::default()
    };
    if let Err(e) = fill(&opts, &mut report).await {
        report.error = Some(format!("storing: {e}"));
        return report;
    }
    if report.fill.failed > 0 || report.fill.timed_out {
        report.error = report.fill.error.clone();
        report.timed_out = report.fill.timed_out;
        return report;
    }
    let api = match Api::new(&opts.base, &opts.secret, RECIPIENT, opts.request_timeout) {
        Ok(api) => api,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    match tokio::time::timeout_at(opts.deadline, drain(&api, opts.limit, &mut report)).await {
        Ok(Ok(())) => report.drain_elapsed = Some(start.elapsed()),
        Ok(Err(e)) => report.error = Some(e.to_string()),
        Err(_) => report.timed_out = true,
    }
    report.cpu = cpu.lines(report.drained);
    report
}

/// Stores the messages: each conversation's sender sends its share in batches.
async fn fill(opts: &DrainOptions, report: &mut DrainReport) -> Result<(), BenchError> {
    let apis = connect_all(
        &opts.base,
        &opts.secret,
        "f",
        opts.conversations,
        opts.request_timeout,
    )
    .await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (k, api) in apis.into_iter().enumerate() {
        set.spawn(sender(
            api,
            share(opts.messages, opts.conversations, k),
            Some(opts.batch),
            opts.deadline,
            direct(RECIPIENT.to_owned(), format!("{run:x}-f{k}")),
        ));
    }
    while let Some(joined) = set.join_next().await {
        let tally = joined.map_err(|e| BenchError::Unexpected(format!("sender: {e}")))?;
        report.fill.stored += tally.stored;
        report.fill.failed += tally.failed;
        report.fill.timed_out |= tally.timed_out;
        if report.fill.error.is_none() {
            report.fill.error = tally.error;
        }
    }
    report.fill_elapsed = Some(start.elapsed());
    Ok(())
}

/// Syncs and acks until sync returns no conversation.
async fn drain(api: &Api, limit: u32, report: &mut DrainReport) -> Result<(), BenchError> {
    let mut last_seq: BTreeMap<ConvId, u64> = BTreeMap::new();
    loop {
        let started = Instant::now();
        let page = api.sync(limit).await?;
        report.sync_latencies.record(started.elapsed());
        report.syncs += 1;
        if page.conversations.is_empty() {
            return Ok(());
        }
        let mut cursors = BTreeMap::new();
        for conv in page.conversations {
            let last = last_seq.entry(conv.conv.clone()).or_insert(conv.cursor);
            for m in &conv.messages {
                if m.seq != *last + 1 {
                    report.out_of_sequence += 1;
                }
                *last = m.seq;
            }
            report.drained += conv.messages.len();
            if let Some(m) = conv.messages.last() {
                cursors.insert(conv.conv, m.seq);
            }
        }
        if cursors.is_empty() {
            return Err(BenchError::Unexpected(
                "sync listed conversations without any message".to_owned(),
            ));
        }
        let started = Instant::now();
        api.ack(cursors).await?;
        report.ack_latencies.record(started.elapsed());
    }
}

impl DrainReport {
    /// Whether every stored message was drained once, in order, in time.
    pub(crate) fn complete(&self) -> bool {
        self.error.is_none()
            && !self.timed_out
            && self.drain_elapsed.is_some()
            && self.drained == self.messages
            && self.out_of_sequence == 0
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=drain".to_owned(),
            format!("messages={}", self.messages),
            format!("conversations={}", self.conversations),
            format!("sync_limit={}", self.limit),
            format!("drain_stored={}", self.fill.stored),
        ];
        if let Some(d) = self.fill_elapsed {
            out.push(format!("drain_store_secs={}", secs(d)));
        }
        out.extend([
            format!("drain_fetched={}", self.drained),
            format!("drain_out_of_sequence={}", self.out_of_sequence),
            format!("drain_syncs={}", self.syncs),
        ]);
        if let Some(d) = self.drain_elapsed {
            out.push(format!("drain_secs={}", secs(d)));
            out.push(format!(
                "drain_messages_per_sec={:.1}",
                per_sec(self.drained, d)
            ));
        }
        out.extend(self.sync_latencies.lines("drain_sync", REQUEST_QUANTILES));
        out.extend(self.ack_latencies.lines("drain_ack", REQUEST_QUANTILES));
        out.extend(self.cpu.iter().cloned());
        if let Some(e) = &self.error {
            out.push(format!("error={e}"));
        }
        if self.timed_out {
            out.push("timed_out_in=drain".to_owned());
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// A sentence for a human.
    pub(crate) fn summary(&self) -> String {
        let mut s = match self.drain_elapsed {
            Some(d) => format!(
                "drain: {} messages in {} conversations fetched and acked in {} s = {:.0}/s \
                 ({} syncs of up to {}; sync {}, ack {})",
                self.drained,
                self.conversations,
                secs(d),
                per_sec(self.drained, d),
                self.syncs,
                self.limit,
                self.sync_latencies.summary(REQUEST_QUANTILES),
                self.ack_latencies.summary(REQUEST_QUANTILES),
            ),
            None => format!(
                "drain: {} of {} stored, {} fetched",
                self.fill.stored, self.messages, self.drained
            ),
        };
        s += ".";
        if self.out_of_sequence > 0 {
            s += &format!(" {} messages out of sequence.", self.out_of_sequence);
        }
        if let Some(e) = &self.error {
            s += &format!(" Error: {e}.");
        }
        if self.timed_out {
            s += " Timed out.";
        }
        s
    }
}
