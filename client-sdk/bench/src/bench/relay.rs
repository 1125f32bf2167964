//! Scenario `relay`: one subscriber on `bench/relay` at QoS 1, one publisher sending
//! M QoS 1 messages to it through a window of unacknowledged ones (or, `--qos 0`,
//! M QoS 0 messages through a window of ones not yet received); measures the
//! end-to-end rate and each message's latency. The payload carries the send time and
//! a sequence number, so losses, duplicates and reordering are reported too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::publisher::{self, Limits, PublishCounters};
use super::timed::{self, Tally};
use super::{BenchError, Target, per_sec, secs};

const TOPIC: &str = "bench/relay";
/// Payload size: the send time and sequence number, padded.
const PAYLOAD_BYTES: usize = 64;
const READ_CHUNK: usize = 64 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct RelayOptions {
    /// Messages to send.
    pub(crate) messages: usize,
    /// QoS 1 messages the publisher keeps unacknowledged (QoS 0: not yet received).
    pub(crate) window: usize,
    /// The publishes' QoS: 0 or 1.
    pub(crate) qos: u8,
    /// When the whole run must stop.
    pub(crate) deadline: Instant,
    /// How long deliveries may stop moving once the publisher has every PUBACK.
    pub(crate) stall: Duration,
}

/// Everything measured, filled as far as the run got.
#[derive(Debug, Default)]
pub(crate) struct RelayResult {
    /// The publishes' QoS.
    pub(crate) qos: u8,
    /// Messages asked for.
    pub(crate) messages: usize,
    /// PUBLISHes the publisher wrote.
    pub(crate) sent: usize,
    /// PUBACKs received by the publisher.
    pub(crate) acked: usize,
    /// Distinct messages the subscriber received.
    pub(crate) received: usize,
    /// Further copies of messages already received.
    pub(crate) duplicates: usize,
    /// Messages that arrived with a lower sequence number than one before them.
    pub(crate) out_of_order: usize,
    /// The lowest sequence number never received, if any was sent and not received.
    pub(crate) first_missing: Option<usize>,
    /// From the first PUBLISH until the subscriber had all of them.
    pub(crate) delivered_after: Option<Duration>,
    /// From the first PUBLISH until the publisher had every PUBACK.
    pub(crate) acked_after: Option<Duration>,
    /// End-to-end latencies, sorted, in microseconds.
    pub(crate) latencies_us: Vec<u64>,
    /// The first error of either client.
    pub(crate) error: Option<String>,
    /// The phase in which the deadline passed.
    pub(crate) timed_out: Option<&'static str>,
    /// Deliveries stopped while the publisher had every PUBACK.
    pub(crate) stalled: bool,
}

/// Runs the scenario; never fails as a whole, but reports how far it got.
pub(crate) async fn run(target: Target, opts: RelayOptions) -> RelayResult {
    let mut result = RelayResult {
        qos: opts.qos,
        messages: opts.messages,
        ..RelayResult::default()
    };
    let clients = async {
        let mut sub = target
            .connect(
                "bench-relay-sub",
                "relay-sub",
                Some("admin"),
                None,
                READ_CHUNK,
            )
            .await
            .map_err(|e| format!("subscriber: {e}"))?;
        target
            .subscribe(&mut sub, TOPIC, 1)
            .await
            .map_err(|e| format!("subscriber: {e}"))?;
        let publisher = target
            .connect("bench-relay-pub", "pub", Some("admin"), None, READ_CHUNK)
            .await
            .map_err(|e| format!("publisher: {e}"))?;
        Ok::<_, String>((sub, publisher))
    };
    let (mut sub, mut publisher) = match tokio::time::timeout_at(opts.deadline, clients).await {
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
    let messages = (0..opts.messages).map(|seq| {
        let sent = start.elapsed().as_micros() as u64;
        (TOPIC.to_owned(), timed::payload(sent, seq, PAYLOAD_BYTES))
    });
    let counters = PublishCounters::default();
    let mut tally = Tally::new(opts.messages);
    let arrived = AtomicUsize::new(0);
    let race = publisher::race(
        start,
        Limits {
            deadline: opts.deadline,
            stall: opts.stall,
        },
        async {
            let published = if opts.qos == 0 {
                publisher::publish_all_qos0(
                    &mut publisher,
                    messages,
                    opts.window,
                    &counters,
                    &arrived,
                )
                .await
            } else {
                publisher::publish_all(&mut publisher, messages, opts.window, &counters).await
            };
            published.map_err(|e| BenchError::Unexpected(format!("publisher: {e}")))
        },
        timed::receive(&mut sub, TOPIC, start, &mut tally, &arrived),
        || arrived.load(Ordering::Relaxed),
    )
    .await;
    result.sent = counters.sent.load(Ordering::Relaxed);
    result.acked = counters.acked.load(Ordering::Relaxed);
    result.received = tally.received;
    result.duplicates = tally.duplicates;
    result.out_of_order = tally.out_of_order;
    result.first_missing = tally.first_missing();
    for outcome in [&race.acked, &race.delivered] {
        if let Some(Err(error)) = outcome {
            result.error.get_or_insert_with(|| error.to_string());
        }
    }
    result.acked_after = race.acked.and_then(Result::ok);
    result.delivered_after = race.delivered.and_then(Result::ok);
    if race.timed_out {
        result.timed_out = Some("relay");
    }
    result.stalled = race.stalled;
    tally.latencies.sort_unstable();
    result.latencies_us = tally.latencies;
    result
}

impl RelayResult {
    /// Whether every message arrived and was acknowledged, in time.
    pub(crate) fn complete(&self) -> bool {
        self.timed_out.is_none()
            && !self.stalled
            && self.error.is_none()
            && self.delivered_after.is_some()
            && self.acked_after.is_some()
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        timed::percentile(&self.latencies_us, p)
    }

    /// The result as `key=value` lines, in a fixed order.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "scenario=relay".to_owned(),
            format!("relay_qos={}", self.qos),
            format!("messages={}", self.messages),
            format!("relay_sent={}", self.sent),
            format!("relay_acked={}", self.acked),
            format!("relay_received={}", self.received),
            format!("relay_duplicates={}", self.duplicates),
            format!("relay_out_of_order={}", self.out_of_order),
        ];
        if let Some(seq) = self.first_missing.filter(|_| self.sent > 0) {
            out.push(format!("relay_first_missing_seq={seq}"));
        }
        if let Some(d) = self.delivered_after {
            out.push(format!("relay_secs={}", secs(d)));
            out.push(format!(
                "relay_messages_per_sec={:.1}",
                per_sec(self.received, d)
            ));
        }
        if let Some(d) = self.acked_after {
            out.push(format!("relay_publisher_acked_secs={}", secs(d)));
        }
        for (name, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
            if let Some(d) = self.percentile(p) {
                out.push(format!(
                    "relay_latency_{name}_ms={:.3}",
                    d.as_secs_f64() * 1e3
                ));
            }
        }
        if let Some(e) = &self.error {
            out.push(format!("error={e}"));
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

    /// A sentence for a human.
    pub(crate) fn summary(&self) -> String {
        let mut s = match self.delivered_after {
            Some(d) => format!(
                "relay: {} QoS {} messages in {} s = {:.0}/s end to end",
                self.received,
                self.qos,
                secs(d),
                per_sec(self.received, d)
            ),
            None => format!(
                "relay: only {}/{} messages arrived",
                self.received, self.messages
            ),
        };
        if let (Some(p50), Some(p99)) = (self.percentile(0.5), self.percentile(0.99)) {
            s += &format!(
                ", latency p50 {:.2} ms, p99 {:.2} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        s += ".";
        if let Some(seq) = self.first_missing.filter(|_| self.sent > 0) {
            s += &format!(" First missing: message #{seq}.");
        }
        if self.duplicates + self.out_of_order > 0 {
            s += &format!(
                " {} duplicates, {} out of order.",
                self.duplicates, self.out_of_order
            );
        }
        if let Some(e) = &self.error {
            s += &format!(" Error: {e}.");
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
