//! One client connection, in one task: CONNECT (`connect`), then a loop that
//! reads and handles packets (`inbound`), drains the session's queue into the
//! socket when woken (`outbound`), pauses publishers that outrun a subscriber
//! (`backpressure`) or the IM side (`uplink`), and ends with DISCONNECT, the hub
//! told, and the will when due (`close`).

mod backpressure;
mod close;
mod connect;
mod inbound;
mod outbound;
mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use tracing::Instrument;

use self::close::Close;
use self::outbound::OutAliases;
use self::uplink::Owing;
use super::codec::{Version, Will};
use super::{Edge, Transport};
use crate::hub::session::{Generation, Session};

/// Decrements the connection count however the task ends.
struct Counted(Arc<Edge>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.hub.metrics.connections.dec();
    }
}

/// Serves one accepted socket to the end. The caller has already counted it in
/// `edge.connections`.
pub(crate) async fn serve<S: Transport>(edge: Arc<Edge>, io: S, peer: SocketAddr) {
    edge.hub.metrics.connections.inc();
    let counted = Counted(edge.clone());
    let span = tracing::info_span!(
        "mqtt",
        %peer,
        user = tracing::field::Empty,
        client_id = tracing::field::Empty
    );
    let Some(mut conn) = connect::handshake(edge, io).instrument(span).await else {
        return;
    };
    conn.counted = Some(counted);
    // The connection lives on in a task of its own, sized for the loop alone and
    // not for the handshake before it: this is most of an idle connection's cost.
    // A span that lives as long as the connection costs about 500 bytes at the
    // level it is enabled at, a sixth of the per-client budget (DESIGN.md §9); so
    // the long-lived span is a debug one, and the connection's info-level events
    // name their user and client id themselves. Even disabled, wrapping the task
    // in it would cost 32 bytes, and those take the task past tokio's 1,024-byte
    // allocation into the 1,280 one: so the wrapper exists only at debug level.
    if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::debug_span!(
            "mqtt",
            %peer,
            user = %conn.session.uid,
            client_id = conn.session.client_id()
        );
        tokio::spawn(conn.run().instrument(span));
    } else {
        tokio::spawn(conn.run());
    }
}

/// A connected client and its session.
struct Conn<S> {
    edge: Arc<Edge>,
    io: S,
    version: Version,
    session: Arc<Session>,
    /// Ours; the session obeys us only while it is the attached one.
    generation: Generation,
    superuser: bool,
    /// How long the client may stay silent, in milliseconds (1.5 × its
    /// keepalive); 0: forever. Small fields keep the task small (see the test).
    keep_alive_ms: u32,
    /// The client's Maximum Packet Size (ours when it set none).
    client_max: u32,
    will: Option<Box<Will>>,
    /// Topic aliases the client set towards us.
    aliases: Box<[Option<Arc<str>>]>,
    /// Aliases we assign to topics we send, when the client accepts them.
    out_aliases: Option<Box<OutAliases>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    last_rx: Instant,
    /// Releases the connection count when the connection ends.
    counted: Option<Counted>,
    /// A subscriber whose queue this client's publishes are filling.
    congested: Option<Arc<Session>>,
    /// Acks owed to the client in publish order, and an outbox publish waiting for
    /// room in the uplink; `None` while nothing is owed.
    owing: Option<Box<Owing>>,
    /// A SUBACK waits in `wbuf` for the cluster to hear of its filters.
    settle: bool,
}

enum Wake {
    Readable(std::io::Result<()>),
    Notified,
    KeepAlive,
    Answered,
}

impl<S: Transport> Conn<S> {
    async fn run(mut self) {
        let close = match self.serve().await {
            Ok(()) => Close::lost(),
            Err(c) => c,
        };
        Box::pin(self.finish(close)).await;
    }

    async fn serve(&mut self) -> Result<(), Close> {
        // Packets that arrived with CONNECT; the loop then sends what the handshake
        // queued (and a resumed session's backlog).
        self.handle_buffered()?;
        // One timer for the connection's life, re-armed only when it fires: a
        // timer per loop turn cost a timer-wheel insert and removal per packet.
        let timer = tokio::time::sleep_until(self.keep_alive_deadline().into());
        tokio::pin!(timer);
        loop {
            self.write_and_relieve().await?;
            let paused = self.reading_paused();
            let wake = tokio::select! {
                r = self.io.ready(), if !paused => Wake::Readable(r),
                () = self.session.wake.notified() => Wake::Notified,
                () = &mut timer, if self.keep_alive_ms > 0 => Wake::KeepAlive,
                () = uplink::answered(&mut self.owing), if self.awaiting_answer() => Wake::Answered,
            };
            match wake {
                Wake::Readable(Err(_)) => {
                    return Err(Close::error(DisconnectReasonCode::UnspecifiedError));
                }
                Wake::Readable(Ok(())) => self.read_packets()?,
                Wake::Notified => {}
                Wake::KeepAlive => {
                    if self.reading_paused() {
                        // We are not reading, so the client's silence is ours.
                        self.last_rx = Instant::now();
                    }
                    let deadline = self.keep_alive_deadline();
                    if deadline > Instant::now() {
                        timer.as_mut().reset(deadline.into());
                        continue;
                    }
                    tracing::info!(
                        user = %self.session.uid,
                        client_id = self.session.client_id(),
                        "keepalive timeout"
                    );
                    return Err(Close::keepalive_timeout());
                }
                Wake::Answered => {
                    self.settle()?;
                    // Packets left in the buffer while paused.
                    self.handle_buffered()?;
                }
            }
        }
    }

    /// Sends what the session has for the client; then, while an outbox publish
    /// waits for room in the uplink or a subscriber this client publishes to is
    /// congested, waits for that and handles what is left in the read buffer
    /// (which may hold or congest again).
    async fn write_and_relieve(&mut self) -> Result<(), Close> {
        loop {
            if std::mem::take(&mut self.settle)
                && let Some(settled) = self.edge.hub.settled()
            {
                settled.await;
            }
            self.drain()?;
            self.flush().await?;
            if self.holds_uplink() {
                self.wait_for_uplink().await?;
            } else if self.congested.is_some() {
                self.wait_for_room().await?;
                self.handle_buffered()?;
            } else {
                return Ok(());
            }
        }
    }

    /// When the client must have sent something by (1.5 × its keepalive after the
    /// last bytes); far in the future without a keepalive.
    fn keep_alive_deadline(&self) -> Instant {
        let k = match self.keep_alive_ms {
            0 => Duration::from_secs(365 * 24 * 3600),
            ms => Duration::from_millis(u64::from(ms)),
        };
        self.last_rx + k
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future `F` returns.
    fn returned_size<S: super::Transport, R>(_: fn(super::Conn<S>) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // The task of a connected client is this future (plus tokio's header): it
        // is most of the per-connection memory DESIGN.md §9 budgets at 3 KiB.
        let run = returned_size(super::Conn::<tokio::net::TcpStream>::run);
        // tokio allocates the task as its future plus 104 bytes, rounded up to 128:
        // at most 920 bytes keep it in jemalloc's 1,024-byte class (1,280 beyond).
        assert!(run <= 920, "connection loop future is {run} bytes");
    }
}
