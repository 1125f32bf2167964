//! A webhook receiver for the send scenarios (`--webhook-sink PORT`): imqtt
//! posts its events here while the senders run, and the sink times each event
//! from its `ts` (stamped by the server's commit round) to the POST's arrival,
//! and counts how fast events arrive. It answers every POST 204 at once, over
//! keep-alive HTTP/1.1, so what is measured is the server's delivery, not ours.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::histogram::{DELIVERY_QUANTILES, Latencies};

/// Largest POST body read; a batch of 100 events is far below.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, Default)]
struct Tally {
    events: u64,
    posts: u64,
    /// Bodies that were not `{"events":[...]}` with a `ts` on each.
    malformed: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    latency: Latencies,
}

/// The running sink; its figures are read with [`Sink::lines`].
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    tally: Arc<Mutex<Tally>>,
}

impl Sink {
    /// Listens on 127.0.0.1:`port` and serves until the runtime stops.
    pub(crate) async fn start(port: u16) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let sink = Sink {
            tally: Arc::default(),
        };
        let tally = sink.tally.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, tally.clone()));
            }
        });
        Ok(sink)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `n` events arrived, or none arrived for `stall`.
    pub(crate) async fn wait_for(&self, n: u64, stall: Duration) {
        let mut seen = (0, Instant::now());
        loop {
            let events = self.tally().events;
            if events >= n {
                return;
            }
            if events != seen.0 {
                seen = (events, Instant::now());
            } else if seen.1.elapsed() > stall {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `webhook_*` lines: events, POSTs, events/s from the first arrival to the
    /// last, and commit-to-POST latency quantiles.
    pub(crate) fn lines(&self) -> Vec<String> {
        let t = self.tally();
        let mut out = vec![
            format!("webhook_events={}", t.events),
            format!("webhook_posts={}", t.posts),
            format!("webhook_malformed={}", t.malformed),
        ];
        if let (Some(first), Some(last)) = (t.first, t.last) {
            let secs = last.duration_since(first).as_secs_f64();
            if secs > 0.0 {
                out.push(format!(
                    "webhook_events_per_sec={:.0}",
                    t.events as f64 / secs
                ));
            }
        }
        out.extend(
            t.latency
                .lines("webhook_commit_to_post", DELIVERY_QUANTILES),
        );
        out
    }
}

/// Serves one keep-alive connection's POSTs until it closes or sends garbage.
async fn serve(conn: TcpStream, tally: Arc<Mutex<Tally>>) {
    let mut conn = BufReader::new(conn);
    loop {
        let mut length = None;
        let mut line = String::new();
        // Request line and headers, up to the blank line.
        loop {
            line.clear();
            match conn.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let Some(length) = length.filter(|n| *n <= MAX_BODY) else {
            return;
        };
        let mut body = vec![0; length];
        if conn.read_exact(&mut body).await.is_err() {
            return;
        }
        let arrived = Instant::now();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        count(&tally, &body, arrived, now_ms);
        let answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        if conn.get_mut().write_all(answer).await.is_err() {
            return;
        }
    }
}

fn count(tally: &Mutex<Tally>, body: &[u8], arrived: Instant, now_ms: u64) {
    #[derive(serde::Deserialize)]
    struct Event {
        ts: u64,
    }
    #[derive(serde::Deserialize)]
    struct Batch {
        events: Vec<Event>,
    }
    let mut t = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    t.posts += 1;
    let Ok(batch) = serde_json::from_slice::<Batch>(body) else {
        t.malformed += 1;
        return;
    };
    t.first.get_or_insert(arrived);
    t.last = Some(arrived);
    t.events += batch.events.len() as u64;
    for e in batch.events {
        // Milliseconds on both sides: the server stamps `ts` in ms.
        t.latency.record_us(now_ms.saturating_sub(e.ts) * 1000);
    }
}
