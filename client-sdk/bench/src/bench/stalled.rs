//! Scenario `stalled`: subscribers that stop reading must not slow the others down.
//! N users subscribe their `users/u{i}/inbox` at QoS 1 over a socket with a small
//! receive buffer and never read again (their sockets stay open until the end); M
//! users read and acknowledge everything; one publisher sends QoS 1 messages
//! round-robin to all N+M inboxes. Reports what the healthy subscribers received, at
//! what rate and how late, and the publisher's rate: a broker whose flow control
//! waits for the stalled subscribers throttles the publisher, and so everyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::fanout::inbox;
use super::publisher::{self, Limits, PublishCounters};
use super::timed::{self, Tally};
use super::{BenchError, Connection, Target, per_sec, read_rss, secs};

/// Receive buffer of a stalled subscriber's socket (Linux doubles it): the broker
/// can push only a few messages into it before its own send buffer fills.
const STALLED_RECV_BUFFER: u32 = 4096;
/// Room a read asks for: a stream of PUBLISHes or PUBACKs.
const READ_CHUNK: usize = 64 * 1024;
/// Packet id of a subscriber's SUBSCRIBE.
const SUBSCRIBE_PKID: u16 = 1;
/// How long healthy subscribers get to hand in their tallies once the run is over.
const REPORT_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct StalledOptions {
    /// Subscribers that never read (`u0` .. `u{N-1}`).
    pub(crate) stalled: usize,
    /// Subscribers that read and acknowledge everything (`u{N}` .. `u{N+M-1}`).
    pub(crate) healthy: usize,
    /// Messages sent, round-robin over all N+M inboxes.
    pub(crate) messages: usize,
    /// Size of each message's payload (at least the 16-byte stamp).
    pub(crate) payload_bytes: usize,
    /// QoS 1 messages the publisher keeps unacknowledged.
    pub(crate) window: usize,
    /// A `role` claim for the subscribers' tokens (the publisher is always `admin`).
    pub(crate) client_role: Option<String>,
    /// The broker's process, to read its RSS.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
    /// How long healthy deliveries may stop moving once the publisher has every PUBACK.
    pub(crate) stall: Duration,
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct StalledResult {
    /// Stalled subscribers asked for.
    pub(crate) stalled: usize,
    /// Healthy subscribers asked for.
    pub(crate) healthy: usize,
    /// Messages asked for.
    pub(crate) messages: usize,
    /// Their payload size.
    pub(crate) payload_bytes: usize,
    /// Broker RSS (KiB) before connecting and at the end, stalled clients still connected.
    pub(crate) rss_kib: [Option<u64>; 2],
    /// Why the RSS could not be read, if it could not.
    pub(crate) rss_error: Option<String>,
    /// PUBLISHes the publisher wrote.
    pub(crate) sent: usize,
    /// PUBACKs received by the publisher.
    pub(crate) acked: usize,
    /// Messages addressed to the healthy subscribers.
    pub(crate) healthy_expected: usize,
    /// Distinct messages they received.
    pub(crate) healthy_received: usize,
    /// Further copies of messages already received.
    pub(crate) healthy_duplicates: usize,
    /// Messages that reached their subscriber after a later one.
    pub(crate) healthy_out_of_order: usize,
    /// From the first PUBLISH until every healthy subscriber had all its messages.
    pub(crate) healthy_after: Option<Duration>,
    /// From the first PUBLISH until the publisher had every PUBACK.
    pub(crate) acked_after: Option<Duration>,
    /// From the first PUBLISH until the run ended, complete or not.
    pub(crate) duration: Option<Duration>,
    /// Healthy subscribers' end-to-end latencies, sorted, in microseconds.
    pub(crate) latencies_us: Vec<u64>,
    /// The first error of any client.
    pub(crate) error: Option<String>,
    /// The phase in which the deadline passed.
    pub(crate) timed_out: Option<&'static str>,
    /// Healthy deliveries stopped while the publisher had every PUBACK.
    pub(crate) deliveries_stopped: bool,
}

/// What a healthy subscriber hands in: its tally, and why it stopped receiving.
type Report = (Tally, Result<(), BenchError>);

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(target: Target, opts: StalledOptions) -> StalledResult {
    let mut result = StalledResult {
        stalled: opts.stalled,
        healthy: opts.healthy,
        messages: opts.messages,
        payload_bytes: opts.payload_bytes,
        ..StalledResult::default()
    };
    result.rss_kib[0] = read_rss(opts.server_pid, &mut result.rss_error);
    let users = opts.stalled + opts.healthy;
    let clients = async {
        let small_window = Target {
            recv_buffer: Some(STALLED_RECV_BUFFER),
            ..target.clone()
        };
        let mut stalled = Vec::with_capacity(opts.stalled);
        for index in 0..opts.stalled {
            let conn = subscriber(&small_window, index, opts.client_role.as_deref())
                .await
                .map_err(|e| format!("stalled subscriber u{index}: {e}"))?;
            stalled.push(conn);
        }
        let mut healthy = Vec::with_capacity(opts.healthy);
        for index in opts.stalled..users {
            let conn = subscriber(&target, index, opts.client_role.as_deref())
                .await
                .map_err(|e| format!("healthy subscriber u{index}: {e}"))?;
            healthy.push((index, conn));
        }
        let publisher = target
            .connect("bench-pub", "pub", Some("admin"), None, READ_CHUNK)
            .await
            .map_err(|e| format!("publisher: {e}"))?;
        Ok::<_, String>((stalled, healthy, publisher))
    };
    // The stalled subscribers' connections are held, unread, until the run returns.
    let (_stalled, healthy, mut publisher) =
        match tokio::time::timeout_at(opts.deadline, clients).await {
            Ok(Ok(clients)) => clients,
            Ok(Err(error)) => {
                result.error = Some(error);
                return result;
            }
            Err(_) => {
                result.timed_out = Some("connect");
                return result;
            }
        };

    let start = Instant::now();
    let arrived = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(());
    let (report, mut reports) = mpsc::unbounded_channel();
    for (index, conn) in healthy {
        let expected = opts.messages / users + usize::from(index < opts.messages % users);
        result.healthy_expected += expected;
        tokio::spawn(healthy_subscriber(
            conn,
            index,
            Tally::new(expected),
            start,
            Arc::clone(&arrived),
            stopped.clone(),
            report.clone(),
        ));
    }
    drop(report);
    // Message k goes to user k mod N+M, as that inbox's message number k div N+M.
    let messages = (0..opts.messages).map(|k| {
        let sent = start.elapsed().as_micros() as u64;
        (
            inbox(k % users),
            timed::payload(sent, k / users, opts.payload_bytes),
        )
    });
    let counters = PublishCounters::default();
    let mut tallies = Vec::with_capacity(opts.healthy);
    let race = publisher::race(
        start,
        Limits {
            deadline: opts.deadline,
            stall: opts.stall,
        },
        async {
            publisher::publish_all(&mut publisher, messages, opts.window, &counters)
                .await
                .map_err(|e| BenchError::Unexpected(format!("publisher: {e}")))
        },
        // A healthy subscriber reports once it has all its messages, or has failed.
        async {
            while tallies.len() < opts.healthy {
                let Some((tally, outcome)) = reports.recv().await else {
                    break;
                };
                tallies.push(tally);
                outcome?;
            }
            Ok(())
        },
        || arrived.load(Ordering::Relaxed),
    )
    .await;
    result.duration = Some(start.elapsed());
    result.rss_kib[1] = read_rss(opts.server_pid, &mut result.rss_error);
    // The rest hand in what they have.
    drop(stop);
    let _ = tokio::time::timeout(REPORT_GRACE, async {
        while let Some((tally, _)) = reports.recv().await {
            tallies.push(tally);
        }
    })
    .await;

    result.sent = counters.sent.load(Ordering::Relaxed);
    result.acked = counters.acked.load(Ordering::Relaxed);
    for tally in tallies {
        result.healthy_received += tally.received;
        result.healthy_duplicates += tally.duplicates;
        result.healthy_out_of_order += tally.out_of_order;
        result.latencies_us.extend(tally.latencies);
    }
    result.latencies_us.sort_unstable();
    for outcome in [&race.acked, &race.delivered] {
        if let Some(Err(error)) = outcome {
            result.error.get_or_insert_with(|| error.to_string());
        }
    }
    result.acked_after = race.acked.and_then(Result::ok);
    result.healthy_after = race.delivered.and_then(Result::ok);
    if race.timed_out {
        result.timed_out = Some("publishing");
    }
    result.deliveries_stopped = race.stalled;
    result
}

/// Connects user `u{index}` and subscribes it to its inbox at QoS 1.
async fn subscriber(
    target: &Target,
    index: usize,
    role: Option<&str>,
) -> Result<Connection, BenchError> {
    let mut conn = target
        .connect(
            &format!("bench-{index}"),
            &format!("u{index}"),
            role,
            target.source_for(index),
            READ_CHUNK,
        )
        .await?;
    target
        .subscribe(&mut conn, &inbox(index), SUBSCRIBE_PKID)
        .await?;
    Ok(conn)
}

/// Receives, acknowledges and times this user's messages until it has all of them
/// or the run is over (`stopped` changes or closes), then reports its tally.
async fn healthy_subscriber(
    mut conn: Connection,
    index: usize,
    mut tally: Tally,
    start: Instant,
    arrived: Arc<AtomicUsize>,
    mut stopped: watch::Receiver<()>,
    report: mpsc::UnboundedSender<Report>,
) {
    let topic = inbox(index);
    let outcome = tokio::select! {
        r = timed::receive(&mut conn, &topic, start, &mut tally, &arrived) => r,
        _ = stopped.changed() => Ok(()),
    };
    let _ = report.send((tally, outcome));
}

impl StalledResult {
    /// Whether the healthy subscribers got everything and the publisher every
    /// PUBACK, in time.
    pub(crate) fn complete(&self) -> bool {
        self.timed_out.is_none()
            && !self.deliveries_stopped
            && self.error.is_none()
            && self.healthy_after.is_some()
            && self.acked_after.is_some()
    }

    /// How long the healthy subscribers took: until the last of their messages,
    /// or the whole run when they did not get them all.
    fn healthy_secs(&self) -> Option<Duration> {
        self.healthy_after.or(self.duration)
    }

    /// How long the publisher took: until its last PUBACK, or the whole run.
    fn publisher_secs(&self) -> Option<Duration> {
        self.acked_after.or(self.duration)
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=stalled".to_owned(),
            format!("stalled_subscribers={}", self.stalled),
            format!("healthy_subscribers={}", self.healthy),
            format!("messages={}", self.messages),
            format!("payload_bytes={}", self.payload_bytes),
            format!("publisher_sent={}", self.sent),
            format!("publisher_acked={}", self.acked),
            format!("healthy_expected={}", self.healthy_expected),
            format!("healthy_received={}", self.healthy_received),
            format!("healthy_duplicates={}", self.healthy_duplicates),
            format!("healthy_out_of_order={}", self.healthy_out_of_order),
        ];
        if let Some(d) = self.healthy_secs() {
            out.push(format!("healthy_secs={}", secs(d)));
            out.push(format!(
                "healthy_msgs_per_sec={:.1}",
                per_sec(self.healthy_received, d)
            ));
        }
        for (name, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            if let Some(d) = timed::percentile(&self.latencies_us, p) {
                out.push(format!(
                    "healthy_latency_{name}_ms={:.3}",
                    d.as_secs_f64() * 1e3
                ));
            }
        }
        if let Some(d) = self.publisher_secs() {
            out.push(format!("publisher_secs={}", secs(d)));
            out.push(format!(
                "publisher_msgs_per_sec={:.1}",
                per_sec(self.acked, d)
            ));
        }
        if let Some(d) = self.duration {
            out.push(format!("duration_secs={}", secs(d)));
        }
        for (name, kib) in ["before", "after"].iter().zip(self.rss_kib) {
            if let Some(kib) = kib {
                out.push(format!("server_rss_{name}_kib={kib}"));
            }
        }
        if let Some(e) = &self.rss_error {
            out.push(format!("server_rss_error={e}"));
        }
        if let Some(e) = &self.error {
            out.push(format!("error={e}"));
        }
        if let Some(phase) = self.timed_out {
            out.push(format!("timed_out_in={phase}"));
        }
        if self.deliveries_stopped {
            out.push("deliveries_stopped=true".to_owned());
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// A few sentences for a human.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "stalled: {} stalled and {} healthy subscribers; the healthy got {}/{} messages",
            self.stalled, self.healthy, self.healthy_received, self.healthy_expected
        );
        if let Some(d) = self.healthy_secs() {
            s += &format!(
                " in {} s = {:.0}/s",
                secs(d),
                per_sec(self.healthy_received, d)
            );
        }
        if let (Some(p50), Some(p99)) = (
            timed::percentile(&self.latencies_us, 0.5),
            timed::percentile(&self.latencies_us, 0.99),
        ) {
            s += &format!(
                ", latency p50 {:.1} ms, p99 {:.1} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        s += ".";
        if let Some(d) = self.publisher_secs() {
            s += &format!(
                " The publisher had {}/{} PUBACKs in {} s = {:.0}/s.",
                self.acked,
                self.messages,
                secs(d),
                per_sec(self.acked, d)
            );
        }
        if self.healthy_duplicates + self.healthy_out_of_order > 0 {
            s += &format!(
                " {} duplicates, {} out of order.",
                self.healthy_duplicates, self.healthy_out_of_order
            );
        }
        if let Some(e) = &self.error {
            s += &format!(" Error: {e}.");
        }
        if let Some(phase) = self.timed_out {
            s += &format!(" Timed out during {phase}.");
        }
        if self.deliveries_stopped {
            s += " Healthy deliveries stopped although the publisher had every PUBACK.";
        }
        s
    }
}
