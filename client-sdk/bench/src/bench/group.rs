//! Scenario `group`: group `bench-g`, owned by `go`, of M members `gm{i}`, of which
//! the first N connect over MQTT and subscribe `groups/bench-g` at QoS 1 (the server
//! publishes each group message once there, and the hub fans it out to them). With
//! those sessions live, three phases:
//!
//! 1. throughput: S members (`gm0` ..) send through `POST /v1/messages/batch` as
//!    fast as they are answered; every online member counts what it receives:
//!    durable messages/s, deliveries/s (receipts over the time from the first send
//!    to the last receipt), and what any member missed;
//! 2. latency: single sends at a fixed offered rate (open loop), each body stamped
//!    with its send start, timed to the receipt by every online member;
//! 3. membership: K cycles of adding a fresh user `gx{k}` and removing it, each
//!    request timed.
//!
//! Bodies carry their phase, so what a member receives late from one phase is not
//! counted in the next.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use imqtt_client::wire::{SendRequest, topic};
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::api::Api;
use super::histogram::{DELIVERY_QUANTILES, Latencies, REQUEST_QUANTILES};
use super::latency::{OpenLoop, open_loop_sender};
use super::procfs::CpuMeter;
use super::publisher::{self, Limits};
use super::schedule::share;
use super::send::{SenderTally, connect_all, join_senders, sender};
use super::subscriber::{self, Errors, Started, start_all};
use super::timed::Tally;
use super::{BenchError, JwtSecret, Target, per_sec, secs};

/// The group.
const GROUP: &str = "bench-g";
/// Its owner, who adds and removes members.
const OWNER: &str = "go";
/// Users one add request may name.
const MAX_ADD: usize = 1000;
/// Room a member's read asks for: a stream of envelopes.
const READ_CHUNK: usize = 16 * 1024;
const SUBSCRIBE_PKID: u16 = 1;
/// The `p` of each phase's bodies.
const THROUGHPUT: u8 = 1;
const LATENCY: u8 = 2;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct GroupOptions {
    /// The HTTP API's base URL.
    pub(crate) base: String,
    /// Signs the users' tokens.
    pub(crate) secret: JwtSecret,
    /// Members besides the owner (`gm0` .. `gm{M-1}`).
    pub(crate) members: usize,
    /// Members connected over MQTT (`gm0` .. `gm{N-1}`).
    pub(crate) online: usize,
    /// HTTP senders, members `gm0` .. `gm{S-1}`, one connection each.
    pub(crate) senders: usize,
    /// Messages of the throughput phase.
    pub(crate) messages: usize,
    /// Sends per batch request in the throughput phase.
    pub(crate) batch: usize,
    /// Offered rate of the latency phase, messages per second.
    pub(crate) rate: f64,
    /// How long the latency phase offers that rate.
    pub(crate) latency_for: Duration,
    /// Add-then-remove cycles of the membership phase.
    pub(crate) cycles: usize,
    /// MQTT connects in progress at once.
    pub(crate) connect_concurrency: usize,
    /// Longest one request may take.
    pub(crate) request_timeout: Duration,
    /// The server's pid, for its CPU time per message.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
    /// How long deliveries may stop once every send is answered.
    pub(crate) stall: Duration,
}

/// A bench body: its phase, its number in the phase, and when its send started
/// (µs from the phase's start).
#[derive(Deserialize)]
struct Stamp {
    p: u8,
    i: usize,
    t: u64,
}

/// What the bench reads of a group envelope: its seq in the group, and its body.
#[derive(Deserialize)]
struct Stamped {
    seq: u64,
    body: Stamp,
}

/// The seq and stamp of a group envelope, if it is one of the bench's.
fn envelope_stamp(payload: &Bytes) -> Option<(u64, Stamp)> {
    let Stamped { seq, body } = serde_json::from_slice(payload).ok()?;
    Some((seq, body))
}

/// The latency phase's message `i`, started at `t`.
fn latency_message(t: u64, i: usize) -> SendRequest {
    SendRequest::to_group(GROUP, serde_json::json!({ "p": LATENCY, "i": i, "t": t }))
}

/// What one online member received of the current phase.
#[derive(Debug)]
struct Receipts {
    phase: u8,
    start: Instant,
    tally: Tally,
    /// Envelopes of another phase, or not the bench's.
    other: usize,
    /// The highest seq received, and the envelopes that came with a lower one
    /// (the group's order broken; the bodies' numbers say nothing of it, as
    /// several senders' messages interleave).
    last_seq: u64,
    behind: usize,
    /// Has every message of the phase, or has lost its connection.
    settled: bool,
    /// Lost its connection: nothing more will come.
    gone: bool,
}

/// The online members' receipts, and how many have settled the current phase.
#[derive(Debug)]
struct Online {
    members: Vec<Mutex<Receipts>>,
    /// Envelopes received in the current phase, copies included: its progress.
    arrived: AtomicUsize,
    /// Members that settled the current phase.
    settled: AtomicUsize,
    /// The latest receipt of the current phase, µs from its start.
    last_us: AtomicU64,
    /// Signalled when the last member settles.
    done: Notify,
    /// Members' connections that failed after setup.
    errors: Errors,
}

/// What the online members received in one phase, all together.
#[derive(Debug, Default)]
pub(crate) struct PhaseReceipts {
    /// Distinct messages received, over all members.
    pub(crate) received: usize,
    pub(crate) duplicates: usize,
    /// Envelopes that came after one with a higher seq.
    pub(crate) out_of_order: usize,
    /// Envelopes that were not of this phase.
    pub(crate) other: usize,
    /// Messages stored that members did not receive, over all members.
    pub(crate) lost: usize,
    /// Members that missed at least one stored message.
    pub(crate) members_incomplete: usize,
    /// From the phase's start to its last receipt.
    pub(crate) last_receipt: Option<Duration>,
    /// Send start to receipt, every member's receipts.
    pub(crate) delivery: Latencies,
}

impl Online {
    fn new(members: usize) -> Self {
        let now = Instant::now();
        Self {
            members: (0..members)
                .map(|_| {
                    Mutex::new(Receipts {
                        phase: 0,
                        start: now,
                        tally: Tally::new(0),
                        other: 0,
                        last_seq: 0,
                        behind: 0,
                        settled: false,
                        gone: false,
                    })
                })
                .collect(),
            arrived: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            last_us: AtomicU64::new(0),
            done: Notify::new(),
            errors: Errors::default(),
        }
    }

    fn lock(&self, member: usize) -> std::sync::MutexGuard<'_, Receipts> {
        self.members[member]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts phase `phase` of `messages` messages, timed from `start`; members
    /// whose connection is gone have settled it already.
    fn begin(&self, phase: u8, messages: usize, start: Instant) {
        self.arrived.store(0, Ordering::SeqCst);
        self.last_us.store(0, Ordering::SeqCst);
        self.settled.store(0, Ordering::SeqCst);
        for member in 0..self.members.len() {
            let mut r = self.lock(member);
            r.phase = phase;
            r.start = start;
            r.tally = Tally::new(messages);
            r.other = 0;
            r.behind = 0;
            r.settled = r.gone || messages == 0;
            if r.settled {
                self.settle();
            }
        }
    }

    fn settle(&self) {
        let settled = self.settled.fetch_add(1, Ordering::SeqCst) + 1;
        if settled >= self.members.len() {
            self.done.notify_one();
        }
    }

    /// Counts one envelope received by `member` on the group topic.
    fn receive(&self, member: usize, payload: &Bytes) {
        let mut r = self.lock(member);
        let now = r.start.elapsed().as_micros() as u64;
        let Some((seq, stamp)) = envelope_stamp(payload).filter(|(_, s)| s.p == r.phase) else {
            r.other += 1;
            return;
        };
        if r.tally.record(stamp.t, stamp.i, now).is_err() {
            r.other += 1;
            return;
        }
        if seq < r.last_seq {
            r.behind += 1;
        }
        r.last_seq = r.last_seq.max(seq);
        self.arrived.fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(now, Ordering::Relaxed);
        if !r.settled && r.tally.received == r.tally.expected() {
            r.settled = true;
            self.settle();
        }
    }

    /// `member`'s connection failed: it will receive nothing more.
    fn lose(&self, member: usize, error: &BenchError) {
        self.errors.record(error);
        let mut r = self.lock(member);
        r.gone = true;
        if !r.settled {
            r.settled = true;
            self.settle();
        }
    }

    /// Until every member has settled the current phase.
    async fn wait(&self) -> Result<(), BenchError> {
        while self.settled.load(Ordering::SeqCst) < self.members.len() {
            self.done.notified().await;
        }
        Ok(())
    }

    /// The phase's receipts; `stored(i)` says whether message `i` was stored, so
    /// that its absence is a loss.
    fn tally(&self, stored: impl Fn(usize) -> bool) -> PhaseReceipts {
        let mut out = PhaseReceipts::default();
        for member in 0..self.members.len() {
            let r = self.lock(member);
            let t = &r.tally;
            out.received += t.received;
            out.duplicates += t.duplicates;
            out.out_of_order += r.behind;
            out.other += r.other;
            let lost = (0..t.expected())
                .filter(|&i| stored(i) && !t.has(i))
                .count();
            out.lost += lost;
            out.members_incomplete += usize::from(lost > 0);
            for &us in &t.latencies {
                out.delivery.record_us(us);
            }
        }
        let last = self.last_us.load(Ordering::SeqCst);
        out.last_receipt = (last > 0).then(|| Duration::from_micros(last));
        out
    }
}

/// Phase 1's figures.
#[derive(Debug, Default)]
pub(crate) struct Throughput {
    pub(crate) sends: SenderTally,
    /// From the first send until the last sender's last answer.
    pub(crate) sending: Option<Duration>,
    pub(crate) receipts: PhaseReceipts,
    pub(crate) cpu: Vec<String>,
}

/// Phase 2's figures.
#[derive(Debug, Default)]
pub(crate) struct LatencyPhase {
    pub(crate) messages: usize,
    pub(crate) sends: SenderTally,
    pub(crate) late_starts: usize,
    pub(crate) max_lag: Duration,
    /// From the start until the last 2xx.
    pub(crate) sending: Option<Duration>,
    pub(crate) receipts: PhaseReceipts,
    pub(crate) cpu: Vec<String>,
}

/// Phase 3's figures.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// Cycles completed (added, then removed).
    pub(crate) done: usize,
    pub(crate) add: Latencies,
    pub(crate) remove: Latencies,
    pub(crate) elapsed: Option<Duration>,
    pub(crate) cpu: Vec<String>,
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct GroupReport {
    pub(crate) members: usize,
    pub(crate) online: usize,
    pub(crate) senders: usize,
    pub(crate) messages: usize,
    pub(crate) batch: usize,
    pub(crate) rate: f64,
    pub(crate) cycles: usize,
    /// Creating the group and adding its members.
    pub(crate) setup: Option<Duration>,
    /// Connecting and subscribing the online members.
    pub(crate) connect: Started,
    pub(crate) throughput: Throughput,
    pub(crate) latency: LatencyPhase,
    pub(crate) membership: Membership,
    pub(crate) subscriber_errors: usize,
    pub(crate) subscriber_first_error: Option<String>,
    /// The first error of a request or of the setup.
    pub(crate) error: Option<String>,
    /// The phase in which the deadline passed.
    pub(crate) timed_out: Option<&'static str>,
    /// Phases whose deliveries stopped while every send was answered.
    pub(crate) stalled: Vec<&'static str>,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(target: Target, opts: GroupOptions) -> GroupReport {
    let mut report = GroupReport {
        members: opts.members,
        online: opts.online,
        senders: opts.senders,
        messages: opts.messages,
        batch: opts.batch,
        rate: opts.rate,
        cycles: opts.cycles,
        ..GroupReport::default()
    };
    let group_topic = match topic::group(GROUP) {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let setup_start = Instant::now();
    let owner = match tokio::time::timeout_at(opts.deadline, create(&opts)).await {
        Ok(Ok(owner)) => owner,
        Ok(Err(e)) => {
            report.error = Some(format!("creating the group: {e}"));
            return report;
        }
        Err(_) => {
            report.timed_out = Some("setup");
            return report;
        }
    };
    report.setup = Some(setup_start.elapsed());

    let online = Arc::new(Online::new(opts.online));
    let slots = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    report.connect = start_all(opts.online, opts.deadline, |index, ready| {
        member(
            index,
            target.clone(),
            group_topic.clone(),
            Arc::clone(&online),
            Arc::clone(&slots),
            ready,
        )
    })
    .await;
    eprintln!(
        "{} of {} members connected in {} s",
        report.connect.ok,
        opts.online,
        secs(report.connect.elapsed)
    );
    if report.connect.timed_out {
        report.timed_out = Some("connect");
        return report;
    }
    if let Some(e) = &report.connect.first_error {
        report.error = Some(format!("member: {e}"));
        return report;
    }
    let apis = connect_all(
        &opts.base,
        &opts.secret,
        "gm",
        opts.senders,
        opts.request_timeout,
    );
    let apis = match tokio::time::timeout_at(opts.deadline, apis).await {
        Ok(Ok(apis)) => apis,
        Ok(Err(e)) => {
            report.error = Some(format!("senders: {e}"));
            return report;
        }
        Err(_) => {
            report.timed_out = Some("setup");
            return report;
        }
    };

    throughput(&opts, &online, &apis, &mut report).await;
    if report.timed_out.is_none() {
        latency(&opts, &online, &apis, &mut report).await;
    }
    if report.timed_out.is_none() {
        membership(&opts, &owner, &mut report).await;
    }
    report.subscriber_errors = online.errors.count();
    report.subscriber_first_error = online.errors.first();
    report
}

/// Creates the group as its owner and adds its members; returns the owner's
/// client.
async fn create(opts: &GroupOptions) -> Result<Api, BenchError> {
    let owner = Api::new(&opts.base, &opts.secret, OWNER, opts.request_timeout)?;
    owner.create_group(GROUP, "Bench").await?;
    let mut added = 0;
    for first in (0..opts.members).step_by(MAX_ADD) {
        let users = (first..(first + MAX_ADD).min(opts.members))
            .map(member_name)
            .collect();
        added += owner.add_members(GROUP, users).await?.added.len();
    }
    if added != opts.members {
        return Err(BenchError::Unexpected(format!(
            "{added} of {} members added (run on a fresh store)",
            opts.members
        )));
    }
    Ok(owner)
}

fn member_name(index: usize) -> String {
    format!("gm{index}")
}

/// Online member `gm{index}`: connects, subscribes the group, reports, then counts
/// what arrives on it until the process ends.
async fn member(
    index: usize,
    target: Target,
    group_topic: String,
    online: Arc<Online>,
    slots: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), BenchError>>,
) {
    let setup = async {
        // The semaphore is never closed, so acquiring only fails in theory.
        let _slot = slots.acquire().await;
        let mut conn = target
            .connect(
                &format!("bench-{}", member_name(index)),
                &member_name(index),
                None,
                target.source_for(index),
                READ_CHUNK,
            )
            .await?;
        target
            .subscribe(&mut conn, &group_topic, SUBSCRIBE_PKID)
            .await?;
        Ok(conn)
    };
    let mut conn = match setup.await {
        Ok(conn) => conn,
        Err(error) => {
            let _ = ready.send(Err(error)).await;
            return;
        }
    };
    let _ = ready.send(Ok(())).await;
    drop(ready);
    let serving = subscriber::serve(
        &mut conn,
        target.keep_alive,
        std::future::pending::<Infallible>(),
        |publish| {
            if publish.topic == group_topic {
                online.receive(index, &publish.payload);
            }
        },
    );
    let Err(error) = serving.await;
    online.lose(index, &error);
}

/// Phase 1: batches as fast as they are answered, every member counting.
async fn throughput(opts: &GroupOptions, online: &Online, apis: &[Api], report: &mut GroupReport) {
    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    online.begin(THROUGHPUT, opts.messages, start);
    let mut set = JoinSet::new();
    let mut offset = 0;
    for (k, api) in apis.iter().enumerate() {
        let count = share(opts.messages, opts.senders, k);
        let first = offset;
        offset += count;
        // Stamped when its batch is built, just before the request starts.
        let message = move |j: usize| {
            let t = start.elapsed().as_micros() as u64;
            SendRequest::to_group(
                GROUP,
                serde_json::json!({ "p": THROUGHPUT, "i": first + j, "t": t }),
            )
        };
        set.spawn(sender(
            api.clone(),
            count,
            Some(opts.batch),
            opts.deadline,
            message,
        ));
    }
    let phase = &mut report.throughput;
    let race = publisher::race(
        start,
        Limits {
            deadline: opts.deadline,
            stall: opts.stall,
        },
        join_senders(&mut set, &mut phase.sends),
        online.wait(),
        || online.arrived.load(Ordering::Relaxed),
    )
    .await;
    phase.sending = race.acked.as_ref().and_then(|r| r.as_ref().ok()).copied();
    // With no failed send every message was stored, so what a member lacks is
    // lost. A failed send leaves a gap the bench cannot place: losses are then
    // what was stored less what arrived.
    let stored = phase.sends.stored;
    let all_stored = phase.sends.failed == 0;
    phase.receipts = online.tally(|_| all_stored);
    if !all_stored {
        phase.receipts.lost = (stored * opts.online).saturating_sub(phase.receipts.received);
    }
    let deliveries = phase.receipts.received;
    phase.cpu = cpu.phase_lines(
        "group_throughput_",
        &[(stored, "message"), (deliveries, "delivery")],
    );
    settle_race(report, "throughput", race);
}

/// Phase 2: single sends at the offered rate, every receipt timed.
async fn latency(opts: &GroupOptions, online: &Online, apis: &[Api], report: &mut GroupReport) {
    let messages = ((opts.rate * opts.latency_for.as_secs_f64()).round() as usize).max(1);
    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    online.begin(LATENCY, messages, start);
    let shared = Arc::new(OpenLoop::new(
        opts.rate,
        messages,
        start,
        opts.deadline,
        latency_message,
    ));
    let mut set = JoinSet::new();
    for api in apis {
        set.spawn(open_loop_sender(api.clone(), Arc::clone(&shared)));
    }
    let phase = &mut report.latency;
    phase.messages = messages;
    let race = publisher::race(
        start,
        Limits {
            deadline: opts.deadline,
            stall: opts.stall,
        },
        join_senders(&mut set, &mut phase.sends),
        online.wait(),
        || online.arrived.load(Ordering::Relaxed),
    )
    .await;
    phase.late_starts = shared.late_starts();
    phase.max_lag = shared.max_lag();
    phase.sending = shared.sending();
    phase.receipts = online.tally(|i| shared.is_stored(i));
    let deliveries = phase.receipts.received;
    phase.cpu = cpu.phase_lines(
        "group_latency_",
        &[(phase.sends.stored, "message"), (deliveries, "delivery")],
    );
    settle_race(report, "latency", race);
}

/// Records how a phase's race ended.
fn settle_race(report: &mut GroupReport, phase: &'static str, race: publisher::Race) {
    for outcome in [&race.acked, &race.delivered] {
        if let Some(Err(e)) = outcome {
            report.error.get_or_insert_with(|| format!("{phase}: {e}"));
        }
    }
    if race.timed_out {
        report.timed_out = Some(phase);
    }
    if race.stalled {
        report.stalled.push(phase);
    }
}

/// Phase 3: add a fresh user, remove it, `cycles` times, one request at a time.
async fn membership(opts: &GroupOptions, owner: &Api, report: &mut GroupReport) {
    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    let phase = &mut report.membership;
    let cycles = async {
        for k in 0..opts.cycles {
            let user = format!("gx{k}");
            let started = Instant::now();
            let added = owner.add_members(GROUP, vec![user.clone()]).await?;
            phase.add.record(started.elapsed());
            if added.added != [user.clone()] {
                return Err(BenchError::Unexpected(format!(
                    "adding {user} answered added={:?}",
                    added.added
                )));
            }
            let started = Instant::now();
            owner.remove_member(GROUP, &user).await?;
            phase.remove.record(started.elapsed());
            phase.done += 1;
        }
        Ok::<_, BenchError>(())
    };
    match tokio::time::timeout_at(opts.deadline, cycles).await {
        Ok(Ok(())) => phase.elapsed = Some(start.elapsed()),
        Ok(Err(e)) => {
            report
                .error
                .get_or_insert_with(|| format!("membership: {e}"));
        }
        Err(_) => report.timed_out = Some("membership"),
    }
    let phase = &mut report.membership;
    phase.cpu = cpu.phase_lines("group_membership_", &[(phase.done, "cycle")]);
}

impl GroupReport {
    /// Whether every phase ran in full, every send was stored and every online
    /// member received every message.
    pub(crate) fn complete(&self) -> bool {
        let t = &self.throughput;
        let l = &self.latency;
        self.error.is_none()
            && self.timed_out.is_none()
            && self.stalled.is_empty()
            && self.subscriber_errors == 0
            && self.connect.ok == self.online
            && t.sends.failed == 0
            && t.sends.stored == self.messages
            && t.receipts.lost == 0
            && t.receipts.received == self.messages * self.online
            && l.sends.failed == 0
            && l.sends.stored == l.messages
            && l.receipts.lost == 0
            && l.receipts.received == l.messages * self.online
            && self.membership.done == self.cycles
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=group".to_owned(),
            format!("members={}", self.members),
            format!("online={}", self.online),
            format!("senders={}", self.senders),
            format!("messages={}", self.messages),
            format!("batch_size={}", self.batch),
        ];
        if let Some(d) = self.setup {
            out.push(format!("group_setup_secs={}", secs(d)));
        }
        out.push(format!("group_connected={}", self.connect.ok));
        out.push(format!("group_connect_failed={}", self.connect.failed));
        out.push(format!("group_connect_secs={}", secs(self.connect.elapsed)));

        let t = &self.throughput;
        out.extend(sends_lines("group_throughput", &t.sends));
        if let Some(d) = t.sending {
            out.push(format!("group_throughput_sending_secs={}", secs(d)));
            out.push(format!(
                "group_throughput_durable_messages_per_sec={:.1}",
                per_sec(t.sends.stored, d)
            ));
        }
        out.push(format!(
            "group_throughput_expected_deliveries={}",
            t.sends.stored * self.online
        ));
        out.extend(receipts_lines("group_throughput", &t.receipts));
        if let Some(d) = t.receipts.last_receipt {
            out.push(format!(
                "group_throughput_deliveries_per_sec={:.1}",
                per_sec(t.receipts.received, d)
            ));
        }
        out.extend(t.cpu.iter().cloned());

        let l = &self.latency;
        out.push(format!("group_latency_offered_per_sec={:.0}", self.rate));
        out.push(format!("group_latency_messages={}", l.messages));
        out.extend(sends_lines("group_latency", &l.sends));
        out.push(format!("group_latency_late_starts={}", l.late_starts));
        out.push(format!(
            "group_latency_max_start_lag_ms={:.3}",
            l.max_lag.as_secs_f64() * 1e3
        ));
        if let Some(d) = l.sending {
            out.push(format!(
                "group_latency_achieved_per_sec={:.1}",
                per_sec(l.sends.stored, d)
            ));
        }
        out.extend(receipts_lines("group_latency", &l.receipts));
        out.extend(l.cpu.iter().cloned());

        let m = &self.membership;
        out.push(format!("group_membership_cycles={}", self.cycles));
        out.push(format!("group_membership_done={}", m.done));
        if let Some(d) = m.elapsed {
            out.push(format!("group_membership_secs={}", secs(d)));
        }
        out.extend(m.add.lines("group_membership_add", REQUEST_QUANTILES));
        out.extend(m.remove.lines("group_membership_remove", REQUEST_QUANTILES));
        out.extend(m.cpu.iter().cloned());

        out.push(format!("subscriber_errors={}", self.subscriber_errors));
        if let Some(e) = &self.subscriber_first_error {
            out.push(format!("subscriber_first_error={e}"));
        }
        if let Some(e) = self.first_error() {
            out.push(format!("error={e}"));
        }
        if let Some(phase) = self.timed_out {
            out.push(format!("timed_out_in={phase}"));
        }
        if !self.stalled.is_empty() {
            out.push(format!("stalled_in={}", self.stalled.join(",")));
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// The first error of the run, a sender's included.
    fn first_error(&self) -> Option<&String> {
        self.error
            .as_ref()
            .or(self.throughput.sends.error.as_ref())
            .or(self.latency.sends.error.as_ref())
    }

    /// A sentence for a human.
    pub(crate) fn summary(&self) -> String {
        let t = &self.throughput;
        let l = &self.latency;
        let m = &self.membership;
        let mut s = format!(
            "group: {} members, {}/{} online",
            self.members, self.connect.ok, self.online
        );
        if let Some(d) = t.sending {
            s += &format!(
                "; {} messages stored at {:.0}/s",
                t.sends.stored,
                per_sec(t.sends.stored, d)
            );
        }
        if let Some(d) = t.receipts.last_receipt {
            s += &format!(
                ", {} deliveries at {:.0}/s",
                t.receipts.received,
                per_sec(t.receipts.received, d)
            );
        }
        s += &format!(
            ", {} lost ({} members missed some)",
            t.receipts.lost, t.receipts.members_incomplete
        );
        if l.receipts.delivery.count() > 0 {
            s += &format!(
                "; at {:.0}/s offered, send to receipt {} ({} lost)",
                self.rate,
                l.receipts.delivery.summary(DELIVERY_QUANTILES),
                l.receipts.lost
            );
        }
        let two = &[("p50", 0.5), ("p99", 0.99)];
        if m.done > 0 {
            s += &format!(
                "; {} add/remove cycles: add {}, remove {}",
                m.done,
                m.add.summary(two),
                m.remove.summary(two)
            );
        }
        s += ".";
        if let Some(e) = self.first_error() {
            s += &format!(" Error: {e}.");
        }
        if self.subscriber_errors > 0 {
            s += &format!(
                " {} members dropped, first: {}.",
                self.subscriber_errors,
                self.subscriber_first_error.as_deref().unwrap_or("?")
            );
        }
        if let Some(phase) = self.timed_out {
            s += &format!(" Timed out during {phase}.");
        }
        for phase in &self.stalled {
            s += &format!(" {phase}: deliveries stopped although every send was answered.");
        }
        s
    }
}

/// A phase's send counts.
fn sends_lines(prefix: &str, sends: &SenderTally) -> Vec<String> {
    let mut out = vec![
        format!("{prefix}_requests={}", sends.requests),
        format!("{prefix}_stored={}", sends.stored),
        format!("{prefix}_errors={}", sends.failed),
    ];
    out.extend(
        sends
            .latencies
            .lines(&format!("{prefix}_request"), REQUEST_QUANTILES),
    );
    out
}

/// A phase's receipts over all online members.
fn receipts_lines(prefix: &str, r: &PhaseReceipts) -> Vec<String> {
    let mut out = vec![
        format!("{prefix}_deliveries={}", r.received),
        format!("{prefix}_duplicates={}", r.duplicates),
        format!("{prefix}_out_of_order={}", r.out_of_order),
        format!("{prefix}_other_envelopes={}", r.other),
        format!("{prefix}_lost={}", r.lost),
        format!("{prefix}_members_incomplete={}", r.members_incomplete),
    ];
    if let Some(d) = r.last_receipt {
        out.push(format!("{prefix}_last_receipt_secs={}", secs(d)));
    }
    out.extend(
        r.delivery
            .lines(&format!("{prefix}_delivery"), DELIVERY_QUANTILES),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_read_from_the_group_envelope() {
        let envelope = br#"{"id":"01J","conv":"group:bench-g","seq":3,"from":"gm0",
            "to":"bench-g","ts":1,"qos":1,"body":{"p":2,"i":42,"t":1500}}"#;
        let (seq, stamp) = envelope_stamp(&Bytes::from_static(envelope)).expect("stamp");
        assert_eq!((seq, stamp.p, stamp.i, stamp.t), (3, 2, 42, 1500));
        assert!(envelope_stamp(&Bytes::from_static(br#"{"body":{"i":1}}"#)).is_none());
    }

    #[test]
    fn members_settle_when_complete_or_gone_and_losses_are_counted() {
        let online = Online::new(2);
        let start = Instant::now();
        online.begin(LATENCY, 2, start);
        let msg = |seq: u64, p: u8, i: usize| {
            let body = format!(r#"{{"p":{p},"i":{i},"t":0}}"#);
            Bytes::from(format!(r#"{{"seq":{seq},"body":{body}}}"#))
        };
        online.receive(0, &msg(8, LATENCY, 1));
        online.receive(0, &msg(6, THROUGHPUT, 1));
        online.receive(0, &msg(7, LATENCY, 0));
        online.receive(1, &msg(8, LATENCY, 1));
        assert_eq!(online.settled.load(Ordering::SeqCst), 1);
        online.lose(1, &BenchError::Closed);
        assert_eq!(online.settled.load(Ordering::SeqCst), 2);
        let r = online.tally(|_| true);
        assert_eq!((r.received, r.other, r.lost), (3, 1, 1));
        assert_eq!(r.out_of_order, 1);
        assert_eq!(r.members_incomplete, 1);
        // The gone member has settled the next phase before it starts.
        online.begin(THROUGHPUT, 1, start);
        assert_eq!(online.settled.load(Ordering::SeqCst), 1);
    }
}
