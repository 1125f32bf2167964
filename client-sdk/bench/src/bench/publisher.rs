//! A QoS 1 publisher that keeps a window of unacknowledged messages in flight, a
//! QoS 0 one paced by what the subscriber has seen, and the race between a
//! publisher and the subscribers it feeds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
use tokio::time::Instant;

use super::{BenchError, Connection};

/// Packet ids in use are tracked in a table indexed by id; the window stays well
/// below the 65,535 ids so a free one is always near.
const MAX_WINDOW: usize = 32_768;

/// Queued bytes past which the publisher writes before filling the rest of the window.
const FLUSH_BYTES: usize = 64 * 1024;

/// How far a publisher got; readable after a timeout cut it short.
#[derive(Debug, Default)]
pub(crate) struct PublishCounters {
    /// PUBLISH packets written to the socket.
    pub(crate) sent: AtomicUsize,
    /// PUBACKs received for them.
    pub(crate) acked: AtomicUsize,
}

/// Publishes every `(topic, payload)` at QoS 1, keeping at most `window` of them
/// unacknowledged, and returns once the broker has acknowledged them all.
///
/// One task does both directions: it fills the window, writes it in as few writes as
/// possible, then reads acknowledgements (every one already buffered, not just one)
/// before refilling. The window is small enough (at most a few hundred KiB of small
/// messages) that writing it never waits on the broker draining its own PUBACKs.
pub(crate) async fn publish_all(
    conn: &mut Connection,
    messages: impl Iterator<Item = (String, Bytes)>,
    window: usize,
    counters: &PublishCounters,
) -> Result<(), BenchError> {
    let window = window.clamp(1, MAX_WINDOW);
    let mut messages = messages.fuse();
    let mut in_use = vec![false; usize::from(u16::MAX) + 1];
    let mut in_flight = 0usize;
    let mut last_pkid = 0u16;
    let mut exhausted = false;
    let (mut reader, mut writer) = conn.split();
    loop {
        while in_flight < window && !exhausted {
            let Some((topic, payload)) = messages.next() else {
                exhausted = true;
                break;
            };
            // Ids 1..=65535 in turn, skipping any still unacknowledged.
            loop {
                last_pkid = last_pkid.checked_add(1).unwrap_or(1);
                if !in_use[usize::from(last_pkid)] {
                    break;
                }
            }
            in_use[usize::from(last_pkid)] = true;
            in_flight += 1;
            let mut publish = Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
            publish.pkid = last_pkid;
            writer.queue(&Packet::Publish(publish))?;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            if writer.queued() >= FLUSH_BYTES {
                writer.flush().await?;
            }
        }
        writer.flush().await?;
        if exhausted && in_flight == 0 {
            return Ok(());
        }
        let mut next = Some(reader.recv().await?);
        while let Some(packet) = next {
            match packet {
                Packet::PubAck(ack) => {
                    let slot = &mut in_use[usize::from(ack.pkid)];
                    if !*slot {
                        return Err(BenchError::Unexpected(format!(
                            "PUBACK for packet id {} not in flight",
                            ack.pkid
                        )));
                    }
                    *slot = false;
                    in_flight -= 1;
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
                // Not subscribed to anything, but a broker may still route to it
                // (e.g. an admin's session matched by some rule): acknowledge, ignore.
                Packet::Publish(publish) if publish.qos == QoS::AtLeastOnce => {
                    writer.queue(&Packet::PubAck(PubAck::new(publish.pkid)))?;
                }
                Packet::Publish(_) | Packet::PingResp => {}
                other => {
                    return Err(BenchError::Unexpected(format!(
                        "{other:?} while publishing"
                    )));
                }
            }
            next = reader.buffered()?;
        }
    }
}

/// Publishes every `(topic, payload)` at QoS 0, keeping at most `window` of them
/// not yet seen by the subscriber (`arrived`, which it counts): QoS 0 has no
/// acknowledgement to pace by, and an unpaced burst would only measure how much
/// the broker drops from a full queue.
pub(crate) async fn publish_all_qos0(
    conn: &mut Connection,
    messages: impl Iterator<Item = (String, Bytes)>,
    window: usize,
    counters: &PublishCounters,
    arrived: &AtomicUsize,
) -> Result<(), BenchError> {
    let window = window.max(1);
    let mut messages = messages.peekable();
    let (_, mut writer) = conn.split();
    while messages.peek().is_some() {
        let sent = counters.sent.load(Ordering::Relaxed);
        let room = window.saturating_sub(sent.saturating_sub(arrived.load(Ordering::Relaxed)));
        if room == 0 {
            writer.flush().await?;
            // The subscriber runs in the same task (the race): let it read. A
            // timer tick rather than a busy yield, so the bench does not take the
            // broker's CPU while it waits; the window is sized so that a tick's
            // pause does not bound the rate.
            tokio::time::sleep(Duration::from_micros(500)).await;
            continue;
        }
        for (topic, payload) in messages.by_ref().take(room) {
            let publish = Publish::from_bytes(topic, QoS::AtMostOnce, payload);
            writer.queue(&Packet::Publish(publish))?;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            if writer.queued() >= FLUSH_BYTES {
                writer.flush().await?;
            }
        }
        writer.flush().await?;
    }
    Ok(())
}

/// When the publisher got all its PUBACKs and when the subscribers had everything,
/// each measured from the start of publishing; `None` if it did not happen.
#[derive(Debug, Default)]
pub(crate) struct Race {
    pub(crate) acked: Option<Result<Duration, BenchError>>,
    pub(crate) delivered: Option<Result<Duration, BenchError>>,
    /// The deadline passed first.
    pub(crate) timed_out: bool,
    /// The publisher was done, and nothing more arrived for the stall time.
    pub(crate) stalled: bool,
}

/// When a race gives up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The end of the whole run.
    pub(crate) deadline: Instant,
    /// How long deliveries may make no progress once the publisher has every PUBACK
    /// (a broker that acknowledged and then lost messages would otherwise keep the
    /// bench waiting until the deadline).
    pub(crate) stall: Duration,
}

/// Drives `publishing` and `delivering` together until both finish, one fails, the
/// deliveries stall (`progress`, a count of messages that arrived, stops moving after
/// the publisher is done), or the deadline passes.
pub(crate) async fn race(
    start: Instant,
    limits: Limits,
    publishing: impl Future<Output = Result<(), BenchError>>,
    delivering: impl Future<Output = Result<(), BenchError>>,
    progress: impl Fn() -> usize,
) -> Race {
    let mut race = Race::default();
    let both = async {
        tokio::pin!(publishing, delivering);
        let mut check = tokio::time::interval((limits.stall / 10).max(Duration::from_millis(10)));
        let mut last = (progress(), Instant::now());
        while race.acked.is_none() || race.delivered.is_none() {
            let published = matches!(race.acked, Some(Ok(_)));
            tokio::select! {
                r = &mut publishing, if race.acked.is_none() => {
                    let failed = r.is_err();
                    race.acked = Some(r.map(|()| start.elapsed()));
                    if failed {
                        break;
                    }
                }
                r = &mut delivering, if race.delivered.is_none() => {
                    let failed = r.is_err();
                    race.delivered = Some(r.map(|()| start.elapsed()));
                    if failed {
                        break;
                    }
                }
                _ = check.tick(), if published => {
                    let now = progress();
                    if now != last.0 {
                        last = (now, Instant::now());
                    } else if last.1.elapsed() >= limits.stall {
                        race.stalled = true;
                        break;
                    }
                }
            }
        }
    };
    let timed_out = tokio::time::timeout_at(limits.deadline, both)
        .await
        .is_err();
    race.timed_out = timed_out;
    race
}
