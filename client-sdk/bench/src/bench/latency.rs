//! Scenario `latency`: one MQTT subscriber, user `r`, on `users/r/inbox` at QoS 1;
//! senders `l{k}` POST messages to `r` at a fixed offered rate (open loop: message
//! `i` is sent when it is due, whatever the answers to earlier ones), over enough
//! keep-alive connections to keep up. Each body carries the time its POST started
//! and its number, so the subscriber times POST start to MQTT receipt and counts
//! messages answered 2xx that never arrive. The open-loop sending ([`OpenLoop`],
//! [`open_loop_sender`]) serves the `group` scenario's latency phase too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use imqtt_client::wire::{SendRequest, topic};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::api::Api;
use super::histogram::{DELIVERY_QUANTILES, Latencies, REQUEST_QUANTILES};
use super::procfs::CpuMeter;
use super::publisher::{self, Limits};
use super::receiver::{Receiver, ReceiverKind};
use super::schedule::RateSchedule;
use super::send::{SenderTally, connect_all, join_senders};
use super::timed::Tally;
use super::{JwtSecret, Target, per_sec, secs};

/// The recipient user.
const RECIPIENT: &str = "r";
const READ_CHUNK: usize = 64 * 1024;
/// A send that starts later than this after it was due counts as late: the senders
/// did not keep up with the offered rate. Tokio's timer ticks every millisecond, so
/// up to one tick late is the timer, not the senders.
const LATE: Duration = Duration::from_millis(2);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct LatencyOptions {
    /// The HTTP API's base URL.
    pub(crate) base: String,
    /// Signs the senders' tokens.
    pub(crate) secret: JwtSecret,
    /// Offered rate, messages per second.
    pub(crate) rate: f64,
    /// Messages in all.
    pub(crate) messages: usize,
    /// Concurrent HTTP connections sending.
    pub(crate) senders: usize,
    /// Longest one request may take.
    pub(crate) request_timeout: Duration,
    /// The server's pid, for its CPU time per message.
    pub(crate) server_pid: Option<u32>,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
    /// How long deliveries may stop once every send is answered.
    pub(crate) stall: Duration,
    /// Which client receives.
    pub(crate) receiver: ReceiverKind,
}

/// An open-loop send shared by several senders: message `i` is sent when it is
/// due at the offered rate, whatever the answers to earlier ones, built by
/// `request(t, i)`, `t` being the time its send starts (µs from the start).
#[derive(Debug)]
pub(crate) struct OpenLoop {
    schedule: RateSchedule,
    start: Instant,
    deadline: Instant,
    request: fn(u64, usize) -> SendRequest,
    /// The next message number to send.
    next: AtomicUsize,
    /// Which messages got a 2xx.
    stored: Vec<AtomicBool>,
    /// Sends that started later than [`LATE`] after they were due.
    late: AtomicUsize,
    /// The latest start behind schedule, in microseconds.
    max_lag_us: AtomicU64,
    /// When the last 2xx came, in microseconds from the start.
    last_answer_us: AtomicU64,
}

impl OpenLoop {
    /// `messages` messages at `rate` per second from `start`, none due after
    /// `deadline`.
    pub(crate) fn new(
        rate: f64,
        messages: usize,
        start: Instant,
        deadline: Instant,
        request: fn(u64, usize) -> SendRequest,
    ) -> Self {
        Self {
            schedule: RateSchedule::new(rate),
            start,
            deadline,
            request,
            next: AtomicUsize::new(0),
            stored: (0..messages).map(|_| AtomicBool::new(false)).collect(),
            late: AtomicUsize::new(0),
            max_lag_us: AtomicU64::new(0),
            last_answer_us: AtomicU64::new(0),
        }
    }

    /// Whether message `i` got a 2xx.
    pub(crate) fn is_stored(&self, i: usize) -> bool {
        self.stored
            .get(i)
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Sends that started more than [`LATE`] after they were due.
    pub(crate) fn late_starts(&self) -> usize {
        self.late.load(Ordering::Relaxed)
    }

    /// The latest start behind schedule.
    pub(crate) fn max_lag(&self) -> Duration {
        Duration::from_micros(self.max_lag_us.load(Ordering::Relaxed))
    }

    /// From the start until the last 2xx; `None` when nothing was stored.
    pub(crate) fn sending(&self) -> Option<Duration> {
        let us = self.last_answer_us.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }
}

/// The stamp a message body carries: POST start (µs from the start) and number.
#[derive(Deserialize)]
struct Stamp {
    t: u64,
    i: usize,
}

#[derive(Deserialize)]
struct Stamped {
    body: Stamp,
}

/// The stamp of an inbox envelope, if it is one of the bench's.
fn envelope_stamp(payload: &Bytes) -> Option<(u64, usize)> {
    let Stamped { body } = serde_json::from_slice(payload).ok()?;
    Some((body.t, body.i))
}

/// The stamp of a message body the client library handed over.
fn body_stamp(body: &serde_json::Value) -> Option<(u64, usize)> {
    let Stamp { t, i } = Stamp::deserialize(body).ok()?;
    Some((t, i))
}

/// Sends messages in turn as they fall due until none is left; several of these
/// share the work.
pub(crate) async fn open_loop_sender(api: Api, shared: Arc<OpenLoop>) -> SenderTally {
    let mut tally = SenderTally::default();
    let messages = shared.stored.len();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= messages {
            break;
        }
        let due = shared.start + shared.schedule.due(i);
        if due > shared.deadline {
            tally.timed_out = true;
            break;
        }
        tokio::time::sleep_until(due).await;
        let started = Instant::now();
        let lag = started.saturating_duration_since(due);
        if lag > LATE {
            shared.late.fetch_add(1, Ordering::Relaxed);
        }
        shared
            .max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        let t = started.duration_since(shared.start).as_micros() as u64;
        let req = (shared.request)(t, i);
        tally.requests += 1;
        match tokio::time::timeout_at(shared.deadline, api.send(&req)).await {
            Ok(Ok(_)) => {
                tally.latencies.record(started.elapsed());
                tally.stored += 1;
                shared.stored[i].store(true, Ordering::Relaxed);
                shared
                    .last_answer_us
                    .fetch_max(shared.start.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tally.failed += 1;
                tally.error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                tally.timed_out = true;
                break;
            }
        }
    }
    tally
}

/// The message `open_loop_sender` sends as number `i`, started at `t`.
fn stamped(t: u64, i: usize) -> SendRequest {
    SendRequest::to_user(RECIPIENT, serde_json::json!({ "t": t, "i": i }))
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct LatencyReport {
    /// `bench`, `rumqttc` or `sdk`.
    pub(crate) receiver: &'static str,
    pub(crate) rate: f64,
    pub(crate) messages: usize,
    pub(crate) senders: usize,
    /// The senders' answers together.
    pub(crate) sends: SenderTally,
    /// Messages that arrived over MQTT (distinct).
    pub(crate) received: usize,
    pub(crate) duplicates: usize,
    /// Messages answered 2xx that never arrived.
    pub(crate) lost: usize,
    pub(crate) late_starts: usize,
    pub(crate) max_lag: Duration,
    /// From the start until the last 2xx.
    pub(crate) sending: Option<Duration>,
    /// POST start to MQTT receipt.
    pub(crate) delivery: Latencies,
    pub(crate) cpu: Vec<String>,
    pub(crate) error: Option<String>,
    pub(crate) timed_out: bool,
    pub(crate) stalled: bool,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(target: Target, opts: LatencyOptions) -> LatencyReport {
    let mut report = LatencyReport {
        receiver: match opts.receiver {
            ReceiverKind::Bench => "bench",
            ReceiverKind::Rumqttc => "rumqttc",
            ReceiverKind::Sdk => "sdk",
        },
        rate: opts.rate,
        messages: opts.messages,
        senders: opts.senders,
        ..LatencyReport::default()
    };
    let inbox = match topic::inbox(RECIPIENT) {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let setup = async {
        let sub = Receiver::connect(
            opts.receiver,
            &target,
            &opts.base,
            RECIPIENT,
            &inbox,
            READ_CHUNK,
        )
        .await
        .map_err(|e| format!("subscriber: {e}"))?;
        let apis = connect_all(
            &opts.base,
            &opts.secret,
            "l",
            opts.senders,
            opts.request_timeout,
        )
        .await
        .map_err(|e| format!("senders: {e}"))?;
        Ok::<_, String>((sub, apis))
    };
    let (mut sub, apis) = match tokio::time::timeout_at(opts.deadline, setup).await {
        Ok(Ok(setup)) => setup,
        Ok(Err(e)) => {
            report.error = Some(e);
            return report;
        }
        Err(_) => {
            report.error = Some("timed out connecting".to_owned());
            report.timed_out = true;
            return report;
        }
    };

    let cpu = CpuMeter::start(opts.server_pid);
    let start = Instant::now();
    let shared = Arc::new(OpenLoop::new(
        opts.rate,
        opts.messages,
        start,
        opts.deadline,
        stamped,
    ));
    let mut set = JoinSet::new();
    for api in apis {
        set.spawn(open_loop_sender(api, Arc::clone(&shared)));
    }
    let mut sends = SenderTally::default();
    let mut tally = Tally::new(opts.messages);
    let arrived = AtomicUsize::new(0);
    let race = publisher::race(
        start,
        Limits {
            deadline: opts.deadline,
            stall: opts.stall,
        },
        join_senders(&mut set, &mut sends),
        sub.receive(
            &inbox,
            start,
            &mut tally,
            &arrived,
            envelope_stamp,
            body_stamp,
        ),
        || arrived.load(Ordering::Relaxed),
    )
    .await;
    sub.close().await;
    report.cpu = cpu.lines(sends.stored);
    report.sends = sends;
    report.received = tally.received;
    report.duplicates = tally.duplicates;
    report.lost = (0..opts.messages)
        .filter(|&i| shared.is_stored(i) && !tally.has(i))
        .count();
    report.late_starts = shared.late_starts();
    report.max_lag = shared.max_lag();
    report.sending = shared.sending();
    for us in &tally.latencies {
        report.delivery.record_us(*us);
    }
    for outcome in [&race.acked, &race.delivered] {
        if let Some(Err(e)) = outcome {
            report.error.get_or_insert_with(|| e.to_string());
        }
    }
    report.timed_out = race.timed_out || report.sends.timed_out;
    report.stalled = race.stalled;
    report
}

impl LatencyReport {
    /// Whether every message was sent, answered and delivered, in time.
    pub(crate) fn complete(&self) -> bool {
        self.error.is_none()
            && self.sends.error.is_none()
            && !self.timed_out
            && !self.stalled
            && self.received == self.messages
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=latency".to_owned(),
            format!("receiver={}", self.receiver),
            format!("offered_per_sec={:.0}", self.rate),
            format!("messages={}", self.messages),
            format!("senders={}", self.senders),
            format!("latency_stored={}", self.sends.stored),
            format!("latency_errors={}", self.sends.failed),
            format!("latency_received={}", self.received),
            format!("latency_duplicates={}", self.duplicates),
            format!("latency_lost={}", self.lost),
            format!("latency_late_starts={}", self.late_starts),
            format!(
                "latency_max_start_lag_ms={:.3}",
                self.max_lag.as_secs_f64() * 1e3
            ),
        ];
        if let Some(d) = self.sending {
            out.push(format!("latency_sending_secs={}", secs(d)));
            out.push(format!(
                "latency_achieved_per_sec={:.1}",
                per_sec(self.sends.stored, d)
            ));
        }
        out.extend(self.delivery.lines("latency_delivery", DELIVERY_QUANTILES));
        out.extend(
            self.sends
                .latencies
                .lines("latency_request", REQUEST_QUANTILES),
        );
        out.extend(self.cpu.iter().cloned());
        if let Some(e) = self.error.as_ref().or(self.sends.error.as_ref()) {
            out.push(format!("error={e}"));
        }
        if self.timed_out {
            out.push("timed_out_in=latency".to_owned());
        }
        if self.stalled {
            out.push("stalled=true".to_owned());
        }
        out.push(format!("complete={}", self.complete()));
        out
    }

    /// A sentence for a human.
    pub(crate) fn summary(&self) -> String {
        let achieved = self.sending.map_or(0.0, |d| per_sec(self.sends.stored, d));
        let mut s = format!(
            "latency ({} receiving): offered {:.0}/s, achieved {achieved:.0}/s; POST start to MQTT receipt {}; \
             {} of {} received, {} lost, {} errors",
            self.receiver,
            self.rate,
            self.delivery.summary(DELIVERY_QUANTILES),
            self.received,
            self.messages,
            self.lost,
            self.sends.failed,
        );
        if self.late_starts > 0 {
            s += &format!(
                "; {} sends started over 2 ms late (at most {:.1} ms)",
                self.late_starts,
                self.max_lag.as_secs_f64() * 1e3
            );
        }
        s += ".";
        if let Some(e) = self.error.as_ref().or(self.sends.error.as_ref()) {
            s += &format!(" Error: {e}.");
        }
        if self.timed_out {
            s += " Timed out.";
        }
        if self.stalled {
            s += " Deliveries stopped although every send was answered.";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_read_from_the_envelope_body() {
        let envelope = br#"{"id":"01J","conv":"dm:l0:r","seq":3,"from":"l0","to":"r",
            "ts":1,"qos":1,"body":{"t":1500,"i":42}}"#;
        assert_eq!(
            envelope_stamp(&Bytes::from_static(envelope)),
            Some((1500, 42))
        );
        assert_eq!(envelope_stamp(&Bytes::from_static(b"{}")), None);
    }
}
