//! Scenario `fanout`, the IM workload of DESIGN.md section 9: N users connect, each
//! subscribes its own `users/u{i}/inbox` and publishes a retained `presence/u{i}`;
//! then one publisher sends one QoS 1 message to every inbox.
//!
//! Clients connect in blocks (1,000 by default), one block after the other, so the
//! time of each block shows how the broker's cost of a new client grows with the
//! number already connected.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;

use super::publisher::{self, Limits, PublishCounters};
use super::subscriber::{self, Errors};
use super::{BenchError, Connection, Target, cpu_secs, per_sec, read_rss, secs};

/// Room a subscriber's read buffer asks for: its traffic is a few small packets.
const SUBSCRIBER_READ_CHUNK: usize = 256;
/// Room the publisher's read buffer asks for: a stream of 4-byte PUBACKs.
const PUBLISHER_READ_CHUNK: usize = 64 * 1024;
/// Packet ids of a subscriber's setup exchange.
const SUBSCRIBE_PKID: u16 = 1;
const PRESENCE_PKID: u16 = 2;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct FanoutOptions {
    /// Number of subscribing users (`u0` .. `u{N-1}`).
    pub(crate) clients: usize,
    /// Clients per timed block.
    pub(crate) block_size: usize,
    /// Connects in progress at once within a block.
    pub(crate) connect_concurrency: usize,
    /// QoS 1 messages the publisher keeps unacknowledged.
    pub(crate) window: usize,
    /// Whether each client publishes its retained `presence/u{i}`.
    pub(crate) presence: bool,
    /// The first level of that retained topic (`presence`; another one, such as
    /// `public`, is one a server may keep on disk).
    pub(crate) retained_root: String,
    /// A `role` claim for the subscribers' tokens (the publisher is always `admin`).
    pub(crate) client_role: Option<String>,
    /// The broker's process, to read its RSS and CPU time.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
    /// How long deliveries may stop moving once the publisher has every PUBACK.
    pub(crate) stall: Duration,
}

/// One block of connecting clients.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// Clients started in this block.
    pub(crate) clients: usize,
    /// Those that connected, subscribed (and published their presence).
    pub(crate) ok: usize,
    /// From the block's first connect to its last client done (or the deadline).
    pub(crate) elapsed: Duration,
}

/// CPU seconds (bench, server) used during one phase.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    /// This process.
    pub(crate) bench: f64,
    /// The broker, when its pid was given.
    pub(crate) server: Option<f64>,
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct FanoutResult {
    /// Clients asked for.
    pub(crate) clients: usize,
    /// Connect blocks, in order.
    pub(crate) blocks: Vec<Block>,
    /// Clients that failed to connect or subscribe, and the first such error.
    pub(crate) connect_failed: usize,
    /// The first connect error.
    pub(crate) connect_first_error: Option<String>,
    /// Broker RSS (KiB) before connecting, after connecting, after the fanout.
    pub(crate) rss_kib: [Option<u64>; 3],
    /// Why the RSS could not be read, if it could not.
    pub(crate) rss_error: Option<String>,
    /// CPU used while connecting.
    pub(crate) connect_cpu: Option<CpuUse>,
    /// Messages the publisher was to send (one per connected client).
    pub(crate) expected: usize,
    /// Subscribers that received their message (first copy).
    pub(crate) delivered: usize,
    /// Further copies received.
    pub(crate) duplicates: usize,
    /// PUBLISHes the publisher wrote.
    pub(crate) sent: usize,
    /// PUBACKs received by the publisher.
    pub(crate) acked: usize,
    /// From the first PUBLISH until every subscriber had its message.
    pub(crate) delivered_after: Option<Duration>,
    /// From the first PUBLISH until the publisher had every PUBACK.
    pub(crate) acked_after: Option<Duration>,
    /// Why the publisher failed (connect or later), if it did.
    pub(crate) publisher_error: Option<String>,
    /// CPU used during the fanout.
    pub(crate) fanout_cpu: Option<CpuUse>,
    /// Subscribers whose connection failed after setup, and the first error.
    pub(crate) subscriber_errors: usize,
    /// The first error of a connected subscriber.
    pub(crate) subscriber_first_error: Option<String>,
    /// The phase in which the deadline passed.
    pub(crate) timed_out: Option<&'static str>,
    /// Deliveries stopped while the publisher had every PUBACK.
    pub(crate) stalled: bool,
}

/// Deliveries seen by all subscribers.
#[derive(Debug)]
struct Deliveries {
    /// Set once publishing starts; nothing can be delivered before.
    expected: AtomicUsize,
    delivered: AtomicUsize,
    duplicates: AtomicUsize,
    /// Subscribers that died before receiving their message: it will never arrive.
    lost: AtomicUsize,
    /// Signalled by whichever subscriber completes `delivered + lost == expected`.
    done: Notify,
}

impl Deliveries {
    fn settled(&self) -> bool {
        self.delivered.load(Ordering::SeqCst) + self.lost.load(Ordering::SeqCst)
            >= self.expected.load(Ordering::SeqCst)
    }

    fn count(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
        if self.settled() {
            self.done.notify_one();
        }
    }

    /// Messages that arrived (copies included) or will never arrive.
    fn arrived(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
            + self.duplicates.load(Ordering::SeqCst)
            + self.lost.load(Ordering::SeqCst)
    }

    async fn wait(&self) -> Result<(), BenchError> {
        while !self.settled() {
            self.done.notified().await;
        }
        Ok(())
    }
}

/// What every subscriber task shares.
#[derive(Debug)]
struct Shared {
    target: Target,
    role: Option<String>,
    presence: bool,
    retained_root: String,
    connect_slots: Semaphore,
    deliveries: Deliveries,
    errors: Errors,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(target: Target, opts: FanoutOptions) -> FanoutResult {
    let mut result = FanoutResult {
        clients: opts.clients,
        ..FanoutResult::default()
    };
    result.rss_kib[0] = read_rss(opts.server_pid, &mut result.rss_error);
    let shared = Arc::new(Shared {
        target: target.clone(),
        role: opts.client_role.clone(),
        presence: opts.presence,
        retained_root: opts.retained_root.clone(),
        connect_slots: Semaphore::new(opts.connect_concurrency.max(1)),
        deliveries: Deliveries {
            expected: AtomicUsize::new(usize::MAX),
            delivered: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            done: Notify::new(),
        },
        errors: Errors::default(),
    });

    let cpu = CpuMark::now(opts.server_pid);
    let connected = connect_all(&shared, &opts, &mut result).await;
    result.connect_cpu = cpu.since();
    result.rss_kib[1] = read_rss(opts.server_pid, &mut result.rss_error);
    if result.timed_out.is_none() && !connected.is_empty() {
        let cpu = CpuMark::now(opts.server_pid);
        fan_out(&target, &shared, &connected, &opts, &mut result).await;
        result.fanout_cpu = cpu.since();
        result.rss_kib[2] = read_rss(opts.server_pid, &mut result.rss_error);
    }
    let deliveries = &shared.deliveries;
    result.delivered = deliveries.delivered.load(Ordering::SeqCst);
    result.duplicates = deliveries.duplicates.load(Ordering::SeqCst);
    result.subscriber_errors = shared.errors.count();
    result.subscriber_first_error = shared.errors.first();
    result
}

/// Starts every subscriber, block by block; returns the indices of those connected.
async fn connect_all(
    shared: &Arc<Shared>,
    opts: &FanoutOptions,
    result: &mut FanoutResult,
) -> Vec<usize> {
    let block_size = opts.block_size.max(1);
    // Each subscriber reports once, and a block waits for all of its reports before
    // the next starts, so a channel of one block's size never makes a sender wait.
    let (ready_tx, mut ready_rx) = mpsc::channel(block_size);
    let mut connected = Vec::with_capacity(opts.clients);
    for first in (0..opts.clients).step_by(block_size) {
        let last = (first + block_size).min(opts.clients);
        let start = Instant::now();
        for index in first..last {
            tokio::spawn(subscriber(index, Arc::clone(shared), ready_tx.clone()));
        }
        let mut block = Block {
            clients: last - first,
            ok: 0,
            elapsed: Duration::ZERO,
        };
        let mut reported = 0;
        while reported < block.clients {
            match tokio::time::timeout_at(opts.deadline, ready_rx.recv()).await {
                Ok(Some((index, Ok(())))) => {
                    block.ok += 1;
                    connected.push(index);
                }
                Ok(Some((_, Err(error)))) => {
                    result.connect_failed += 1;
                    result
                        .connect_first_error
                        .get_or_insert_with(|| error.to_string());
                }
                // Unreachable while `ready_tx` is held here.
                Ok(None) => break,
                Err(_) => {
                    result.timed_out = Some("connect");
                    break;
                }
            }
            reported += 1;
        }
        block.elapsed = start.elapsed();
        eprintln!(
            "block {}: {}/{} clients in {} s ({:.0}/s), {} connected so far",
            result.blocks.len() + 1,
            block.ok,
            block.clients,
            secs(block.elapsed),
            per_sec(block.ok, block.elapsed),
            connected.len()
        );
        result.blocks.push(block);
        if result.timed_out.is_some() {
            break;
        }
    }
    connected
}

/// One user's connection for the whole run: connect, subscribe, publish presence,
/// report, then acknowledge and count deliveries until the process ends.
async fn subscriber(
    index: usize,
    shared: Arc<Shared>,
    ready: mpsc::Sender<(usize, Result<(), BenchError>)>,
) {
    let setup = {
        // The semaphore is never closed, so acquiring only fails in theory.
        let _slot = shared.connect_slots.acquire().await;
        setup(index, &shared).await
    };
    let mut conn = match setup {
        Ok(conn) => conn,
        Err(error) => {
            let _ = ready.send((index, Err(error))).await;
            return;
        }
    };
    let _ = ready.send((index, Ok(()))).await;
    drop(ready);
    let inbox = inbox(index);
    let deliveries = &shared.deliveries;
    let mut received = false;
    let serving = subscriber::serve(
        &mut conn,
        shared.target.keep_alive,
        std::future::pending::<Infallible>(),
        |publish| {
            if publish.topic == inbox {
                if received {
                    deliveries.count(&deliveries.duplicates);
                } else {
                    received = true;
                    deliveries.count(&deliveries.delivered);
                }
            }
        },
    );
    let Err(error) = serving.await;
    shared.errors.record(&error);
    if !received {
        shared.deliveries.count(&shared.deliveries.lost);
    }
}

/// CONNECT, SUBSCRIBE to the inbox, PUBLISH the retained presence; done when the
/// CONNACK, SUBACK and PUBACK are in.
///
/// Each request waits for its reply before the next goes out. Pipelined, the broker
/// answers with two small writes back to back, and a broker without TCP_NODELAY
/// (mosquitto's default) holds the second until this side's delayed ACK of the
/// first, up to 40 ms: the bench would then time Nagle's algorithm, not the broker.
async fn setup(index: usize, shared: &Shared) -> Result<Connection, BenchError> {
    let target = &shared.target;
    let user = format!("u{index}");
    let mut conn = target
        .connect(
            &format!("bench-{index}"),
            &user,
            shared.role.as_deref(),
            target.source_for(index),
            SUBSCRIBER_READ_CHUNK,
        )
        .await?;
    target
        .subscribe(&mut conn, &inbox(index), SUBSCRIBE_PKID)
        .await?;
    if shared.presence {
        let payload = format!(r#"{{"user":"{user}","status":"online"}}"#);
        let mut presence = Publish::new(
            format!("{}/{user}", shared.retained_root),
            QoS::AtLeastOnce,
            payload,
        );
        presence.retain = true;
        presence.pkid = PRESENCE_PKID;
        conn.send(&Packet::Publish(presence)).await?;
        match target.step("PUBACK", conn.recv()).await? {
            Packet::PubAck(ack) if ack.pkid == PRESENCE_PKID => {}
            other => {
                return Err(BenchError::Unexpected(format!(
                    "{other:?} while waiting for PUBACK"
                )));
            }
        }
    }
    Ok(conn)
}

/// One publisher sends one QoS 1 message to every connected user's inbox.
async fn fan_out(
    target: &Target,
    shared: &Shared,
    connected: &[usize],
    opts: &FanoutOptions,
    result: &mut FanoutResult,
) {
    result.expected = connected.len();
    let connecting = tokio::time::timeout_at(
        opts.deadline,
        target.connect(
            "bench-pub",
            "pub",
            Some("admin"),
            None,
            PUBLISHER_READ_CHUNK,
        ),
    );
    let mut conn = match connecting.await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            result.publisher_error = Some(format!("publisher connect: {error}"));
            return;
        }
        Err(_) => {
            result.timed_out = Some("publisher connect");
            return;
        }
    };
    let deliveries = &shared.deliveries;
    deliveries.expected.store(connected.len(), Ordering::SeqCst);
    let messages = connected.iter().map(|&index| {
        let payload = format!(r#"{{"to":"u{index}","body":"fanout"}}"#);
        (inbox(index), Bytes::from(payload))
    });
    let counters = PublishCounters::default();
    let start = Instant::now();
    let race = publisher::race(
        start,
        Limits {
            deadline: opts.deadline,
            stall: opts.stall,
        },
        publisher::publish_all(&mut conn, messages, opts.window, &counters),
        deliveries.wait(),
        || deliveries.arrived(),
    )
    .await;
    result.sent = counters.sent.load(Ordering::Relaxed);
    result.acked = counters.acked.load(Ordering::Relaxed);
    match race.acked {
        Some(Ok(after)) => result.acked_after = Some(after),
        Some(Err(error)) => result.publisher_error = Some(error.to_string()),
        None => {}
    }
    // Only complete if nothing was lost on the way.
    if let Some(Ok(after)) = race.delivered
        && deliveries.lost.load(Ordering::SeqCst) == 0
    {
        result.delivered_after = Some(after);
    }
    if race.timed_out {
        result.timed_out = Some("fanout");
    }
    result.stalled = race.stalled;
}

/// User `u{index}`'s inbox topic.
pub(crate) fn inbox(index: usize) -> String {
    format!("users/u{index}/inbox")
}

/// CPU times at the start of a phase.
#[derive(Debug)]
struct CpuMark {
    pid: Option<u32>,
    bench: Option<f64>,
    server: Option<f64>,
}

impl CpuMark {
    fn now(pid: Option<u32>) -> Self {
        Self {
            pid,
            bench: cpu_secs(None).ok(),
            server: pid.and_then(|pid| cpu_secs(Some(pid)).ok()),
        }
    }

    fn since(&self) -> Option<CpuUse> {
        let bench = cpu_secs(None).ok()? - self.bench?;
        let server = match (self.pid, self.server) {
            (Some(pid), Some(before)) => cpu_secs(Some(pid)).ok().map(|now| now - before),
            _ => None,
        };
        Some(CpuUse { bench, server })
    }
}

impl FanoutResult {
    /// Whether every client connected and got its message, in time.
    pub(crate) fn complete(&self) -> bool {
        self.timed_out.is_none()
            && !self.stalled
            && self.connect_failed == 0
            && self.publisher_error.is_none()
            && self.delivered_after.is_some()
            && self.acked_after.is_some()
    }

    /// Clients connected.
    pub(crate) fn connected(&self) -> usize {
        self.blocks.iter().map(|b| b.ok).sum()
    }

    /// Server RSS growth per connected client, in bytes.
    pub(crate) fn bytes_per_client(&self) -> Option<f64> {
        let (before, after) = (self.rss_kib[0]?, self.rss_kib[1]?);
        let connected = self.connected();
        (connected > 0).then(|| (after as f64 - before as f64) * 1024.0 / connected as f64)
    }

    /// Seconds per client of the last full-size block over that of the first: 1 when
    /// connecting costs the same however many clients are already connected.
    pub(crate) fn block_ratio(&self) -> Option<f64> {
        let per_client = |b: &Block| b.elapsed.as_secs_f64() / b.ok as f64;
        let first = self.blocks.first().filter(|b| b.ok > 0)?;
        let last = self
            .blocks
            .iter()
            .rev()
            .find(|b| b.clients == first.clients && b.ok > 0)?;
        let base = per_client(first);
        (base > 0.0).then(|| per_client(last) / base)
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=fanout".to_owned(),
            format!("clients={}", self.clients),
            format!("connected={}", self.connected()),
            format!("connect_failed={}", self.connect_failed),
        ];
        if let Some(e) = &self.connect_first_error {
            out.push(format!("connect_first_error={e}"));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let n = i + 1;
            out.push(format!("connect_block_{n}_clients={}", b.ok));
            out.push(format!("connect_block_{n}_secs={}", secs(b.elapsed)));
            out.push(format!(
                "connect_block_{n}_per_sec={:.1}",
                per_sec(b.ok, b.elapsed)
            ));
        }
        let total: Duration = self.blocks.iter().map(|b| b.elapsed).sum();
        out.push(format!("connect_secs={}", secs(total)));
        out.push(format!(
            "connect_per_sec={:.1}",
            per_sec(self.connected(), total)
        ));
        if let Some(ratio) = self.block_ratio() {
            out.push(format!("connect_last_first_ratio={ratio:.2}"));
        }
        push_cpu(
            &mut out,
            "connect",
            self.connect_cpu,
            (self.connected(), "client"),
        );
        for (name, kib) in ["before", "connected", "after_fanout"]
            .iter()
            .zip(self.rss_kib)
        {
            if let Some(kib) = kib {
                out.push(format!("server_rss_{name}_kib={kib}"));
            }
        }
        if let Some(b) = self.bytes_per_client() {
            out.push(format!("server_bytes_per_client={b:.0}"));
        }
        if let Some(e) = &self.rss_error {
            out.push(format!("server_rss_error={e}"));
        }
        out.push(format!("fanout_expected={}", self.expected));
        out.push(format!("fanout_sent={}", self.sent));
        out.push(format!("fanout_acked={}", self.acked));
        out.push(format!("fanout_delivered={}", self.delivered));
        out.push(format!("fanout_duplicates={}", self.duplicates));
        if let Some(d) = self.delivered_after {
            out.push(format!("fanout_secs={}", secs(d)));
            out.push(format!(
                "fanout_deliveries_per_sec={:.1}",
                per_sec(self.delivered, d)
            ));
        }
        if let Some(d) = self.acked_after {
            out.push(format!("fanout_publisher_acked_secs={}", secs(d)));
        }
        if let Some(e) = &self.publisher_error {
            out.push(format!("publisher_error={e}"));
        }
        push_cpu(
            &mut out,
            "fanout",
            self.fanout_cpu,
            (self.delivered, "delivery"),
        );
        out.push(format!("subscriber_errors={}", self.subscriber_errors));
        if let Some(e) = &self.subscriber_first_error {
            out.push(format!("subscriber_first_error={e}"));
        }
        if let Some(phase) = self.timed_out {
            out.push(format!("timed_out_in={phase}"));
        }
        if self.stalled {
            out.push("stalled=true".to_owned());
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// A few sentences for a human.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "fanout: {}/{} clients connected",
            self.connected(),
            self.clients
        );
        if let (Some(first), Some(last)) = (self.blocks.first(), self.blocks.last()) {
            s += &format!(
                " in {} blocks; first block {:.0}/s, last {:.0}/s",
                self.blocks.len(),
                per_sec(first.ok, first.elapsed),
                per_sec(last.ok, last.elapsed)
            );
        }
        if let Some(ratio) = self.block_ratio() {
            s += &format!(" (time per client last/first = {ratio:.2})");
        }
        s += ".";
        if self.connect_failed > 0 {
            s += &format!(
                " {} failed, first: {}.",
                self.connect_failed,
                self.connect_first_error.as_deref().unwrap_or("?")
            );
        }
        if let Some(b) = self.bytes_per_client() {
            s += &format!(" Server RSS {:.0} bytes per client.", b);
        }
        match self.delivered_after {
            Some(d) => {
                s += &format!(
                    " {} deliveries in {} s = {:.0}/s.",
                    self.delivered,
                    secs(d),
                    per_sec(self.delivered, d)
                );
            }
            None if self.expected > 0 => {
                s += &format!(
                    " Only {}/{} deliveries arrived.",
                    self.delivered, self.expected
                );
            }
            None => {}
        }
        if let Some(e) = &self.publisher_error {
            s += &format!(" Publisher failed: {e}.");
        }
        if self.subscriber_errors > 0 {
            s += &format!(
                " {} subscribers dropped, first: {}.",
                self.subscriber_errors,
                self.subscriber_first_error.as_deref().unwrap_or("?")
            );
        }
        if let Some(phase) = self.timed_out {
            s += &format!(" Timed out during {phase}.");
        }
        if self.stalled {
            s += " Deliveries stopped although the publisher had every PUBACK.";
        }
        s
    }
}

/// CPU seconds of a phase, and the broker's CPU per unit of work (client connected,
/// message delivered): a cost that does not depend on the bench's own share.
fn push_cpu(out: &mut Vec<String>, phase: &str, cpu: Option<CpuUse>, work: (usize, &str)) {
    let (units, unit) = work;
    if let Some(cpu) = cpu {
        out.push(format!("{phase}_bench_cpu_secs={:.2}", cpu.bench));
        if let Some(server) = cpu.server {
            out.push(format!("{phase}_server_cpu_secs={server:.2}"));
            if units > 0 {
                out.push(format!(
                    "{phase}_server_cpu_us_per_{unit}={:.1}",
                    server * 1e6 / units as f64
                ));
            }
        }
    }
}
