//! A connected client's life once its scenario has set it up: acknowledge what
//! arrives, hand each PUBLISH to the scenario, keep the connection alive, until the
//! scenario tells it to stop or the connection fails. Also the start of thousands
//! of such clients, and the error count they share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BenchError, Connection};

/// Acknowledges every QoS 1 PUBLISH and passes each to `on_publish`, pinging at
/// half of `keep_alive` seconds (never when 0), until `stop` completes (its output
/// is returned) or the connection fails.
///
/// Everything already read is handled before one write of all its PUBACKs, and a
/// write is never cut short by `stop`: it is only polled between reads, so the
/// connection is left on a packet boundary, ready for a DISCONNECT.
pub(crate) async fn serve<T>(
    conn: &mut Connection,
    keep_alive: u16,
    stop: impl Future<Output = T>,
    mut on_publish: impl FnMut(&Publish),
) -> Result<T, BenchError> {
    // With no keepalive, a tick that never comes in a run.
    let period = if keep_alive == 0 {
        Duration::from_secs(86_400 * 365)
    } else {
        Duration::from_secs(u64::from(keep_alive)).div_f32(2.0)
    };
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    tokio::pin!(stop);
    let (mut reader, mut writer) = conn.split();
    loop {
        tokio::select! {
            packet = reader.recv() => {
                let mut next = Some(packet?);
                while let Some(packet) = next {
                    match packet {
                        Packet::Publish(publish) => {
                            if publish.qos == QoS::AtLeastOnce {
                                writer.queue(&Packet::PubAck(PubAck::new(publish.pkid)))?;
                            }
                            on_publish(&publish);
                        }
                        Packet::PingResp => {}
                        other => {
                            return Err(BenchError::Unexpected(format!("{other:?} while idle")));
                        }
                    }
                    next = reader.buffered()?;
                }
                writer.flush().await?;
            }
            _ = ping.tick() => {
                writer.queue(&Packet::PingReq)?;
                writer.flush().await?;
            }
            out = &mut stop => return Ok(out),
        }
    }
}

/// The count and first of a kind of error, shared by many tasks.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    count: AtomicUsize,
    first: Mutex<Option<String>>,
}

impl Errors {
    /// Counts `error`, keeping it if it is the first.
    pub(crate) fn record(&self, error: &BenchError) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        first.get_or_insert_with(|| error.to_string());
    }

    /// Errors counted.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The first error counted.
    pub(crate) fn first(&self) -> Option<String> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How starting many clients went.
#[derive(Debug, Default)]
pub(crate) struct Started {
    /// Clients whose setup worked.
    pub(crate) ok: usize,
    /// Clients whose setup failed.
    pub(crate) failed: usize,
    /// The first failure.
    pub(crate) first_error: Option<String>,
    /// From the first spawn until the last report (or the deadline).
    pub(crate) elapsed: Duration,
    /// The deadline passed before every client reported.
    pub(crate) timed_out: bool,
}

/// Spawns `count` client tasks, `client(index, ready)` each, and waits until every
/// one has reported on `ready` whether its setup (connect, subscribe) worked, or
/// the deadline passes. The tasks go on serving after they report; the setups
/// bound their own concurrency.
pub(crate) async fn start_all<F, Fut>(count: usize, deadline: Instant, client: F) -> Started
where
    F: Fn(usize, mpsc::Sender<Result<(), BenchError>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    // Each client reports once, and this side reads every report as it comes, so a
    // full channel only makes a client wait for the next read.
    let (ready, mut reports) = mpsc::channel(1024);
    for index in 0..count {
        tokio::spawn(client(index, ready.clone()));
    }
    drop(ready);
    let mut started = Started::default();
    while started.ok + started.failed < count {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Ok(Some(Ok(()))) => started.ok += 1,
            Ok(Some(Err(error))) => {
                started.failed += 1;
                started.first_error.get_or_insert_with(|| error.to_string());
            }
            // Every client has dropped its sender: a task died before reporting.
            Ok(None) => break,
            Err(_) => {
                started.timed_out = true;
                break;
            }
        }
    }
    started.elapsed = start.elapsed();
    started
}
