//! Timed messages: a payload that carries its send time and a sequence number, and
//! the receiving side that acknowledges, checks and times them, so a scenario
//! reports losses, duplicates, reordering and end-to-end latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck};
use tokio::time::Instant;

use super::{BenchError, Connection};

/// The stamp at the head of a payload: an 8-byte send time and an 8-byte sequence
/// number; a payload is never shorter.
pub(crate) const STAMP_BYTES: usize = 16;

/// A payload of `size` bytes (at least [`STAMP_BYTES`]) stamped with `sent` (in
/// microseconds from the start of publishing) and `seq`, padded with dots.
pub(crate) fn payload(sent: u64, seq: usize, size: usize) -> Bytes {
    let size = size.max(STAMP_BYTES);
    let mut payload = BytesMut::with_capacity(size);
    payload.put_u64(sent);
    payload.put_u64(seq as u64);
    payload.resize(size, b'.');
    payload.freeze()
}

/// The send time and sequence number at the head of a payload.
fn stamp(payload: &Bytes) -> Option<(u64, usize)> {
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((sent, usize::try_from(seq).ok()?))
}

/// What one receiver saw of the messages meant for it.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Indexed by sequence number.
    seen: Vec<bool>,
    last_seq: Option<usize>,
    /// Distinct messages received.
    pub(crate) received: usize,
    /// Further copies of messages already received.
    pub(crate) duplicates: usize,
    /// Messages that arrived with a lower sequence number than one before them.
    pub(crate) out_of_order: usize,
    /// End-to-end latency of each distinct message, in arrival order, in microseconds.
    pub(crate) latencies: Vec<u64>,
}

impl Tally {
    /// A tally for messages numbered `0..messages`.
    pub(crate) fn new(messages: usize) -> Self {
        Self {
            seen: vec![false; messages],
            last_seq: None,
            received: 0,
            duplicates: 0,
            out_of_order: 0,
            latencies: Vec::with_capacity(messages),
        }
    }

    /// Messages this receiver is to get.
    pub(crate) fn expected(&self) -> usize {
        self.seen.len()
    }

    /// Whether message `seq` has arrived.
    pub(crate) fn has(&self, seq: usize) -> bool {
        self.seen.get(seq).copied().unwrap_or(false)
    }

    /// The lowest sequence number not received, if any.
    pub(crate) fn first_missing(&self) -> Option<usize> {
        self.seen.iter().position(|seen| !seen)
    }

    /// Counts one message given its send time and sequence number, at `now` (both
    /// times in microseconds from the start of publishing).
    pub(crate) fn record(&mut self, sent: u64, seq: usize, now: u64) -> Result<(), BenchError> {
        let Some(seen) = self.seen.get_mut(seq) else {
            return Err(BenchError::Unexpected(format!(
                "message with sequence number {seq}, never sent"
            )));
        };
        if *seen {
            self.duplicates += 1;
            return Ok(());
        }
        *seen = true;
        self.received += 1;
        if self.last_seq.is_some_and(|last| seq < last) {
            self.out_of_order += 1;
        }
        self.last_seq = Some(seq);
        self.latencies.push(now.saturating_sub(sent));
        Ok(())
    }
}

/// Acknowledges every PUBLISH and times those on `topic` until every message of
/// the tally has arrived; `arrived` counts them (copies included) as they come.
pub(crate) async fn receive(
    conn: &mut Connection,
    topic: &str,
    start: Instant,
    tally: &mut Tally,
    arrived: &AtomicUsize,
) -> Result<(), BenchError> {
    receive_with(conn, topic, start, tally, arrived, stamp).await
}

/// [`receive`] for payloads of another shape: `stamp` reads a payload's send time
/// (microseconds from `start`) and sequence number.
pub(crate) async fn receive_with(
    conn: &mut Connection,
    topic: &str,
    start: Instant,
    tally: &mut Tally,
    arrived: &AtomicUsize,
    stamp: impl Fn(&Bytes) -> Option<(u64, usize)>,
) -> Result<(), BenchError> {
    let (mut reader, mut writer) = conn.split();
    while tally.received < tally.expected() {
        let mut next = Some(reader.recv().await.map_err(subscriber_error)?);
        // Everything already read is handled before one write of all its PUBACKs.
        while let Some(packet) = next {
            match packet {
                Packet::Publish(publish) => {
                    if publish.qos == QoS::AtLeastOnce {
                        writer.queue(&Packet::PubAck(PubAck::new(publish.pkid)))?;
                    }
                    if publish.topic == topic {
                        let now = start.elapsed().as_micros() as u64;
                        let (sent, seq) = stamp(&publish.payload).ok_or_else(|| {
                            subscriber_error(BenchError::Unexpected(format!(
                                "payload of {} bytes, not the bench's",
                                publish.payload.len()
                            )))
                        })?;
                        tally.record(sent, seq, now).map_err(subscriber_error)?;
                        arrived.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Packet::PingResp => {}
                other => {
                    return Err(subscriber_error(BenchError::Unexpected(format!(
                        "{other:?} while receiving"
                    ))));
                }
            }
            next = reader.buffered().map_err(subscriber_error)?;
        }
        writer.flush().await.map_err(subscriber_error)?;
    }
    Ok(())
}

fn subscriber_error(error: BenchError) -> BenchError {
    BenchError::Unexpected(format!("subscriber: {error}"))
}

/// The `p` quantile (0 < p <= 1, nearest rank) of sorted latencies in microseconds.
pub(crate) fn percentile(sorted_us: &[u64], p: f64) -> Option<Duration> {
    let n = sorted_us.len();
    let rank = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
    sorted_us.get(rank).map(|&us| Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_duplicates_reordering_and_the_first_gap() {
        let mut tally = Tally::new(5);
        for seq in [0, 2, 1, 2, 4] {
            tally.record(10, seq, 15).expect("known sequence number");
        }
        assert_eq!(tally.received, 4);
        assert_eq!(tally.duplicates, 1);
        assert_eq!(tally.out_of_order, 1);
        assert_eq!(tally.first_missing(), Some(3));
        assert!(tally.record(0, 5, 0).is_err());
    }

    #[test]
    fn payload_carries_its_stamp_and_has_the_size_asked() {
        let p = payload(1234, 56, 1024);
        assert_eq!(p.len(), 1024);
        assert_eq!(stamp(&p), Some((1234, 56)));
        assert_eq!(payload(1, 2, 3).len(), STAMP_BYTES);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let us: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&us, 0.5), Some(Duration::from_micros(50)));
        assert_eq!(percentile(&us, 0.99), Some(Duration::from_micros(99)));
        assert_eq!(percentile(&us, 1.0), Some(Duration::from_micros(100)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
