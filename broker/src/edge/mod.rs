//! The edge: listeners, the per-connection protocol loop, and the codec boundary.
//! Everything a client sends is authenticated and authorized here before the hub
//! sees it.

pub(crate) mod codec;
pub(crate) mod connection;
pub(crate) mod listener;
mod tls;
mod ws;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::acl::Acl;
use crate::auth::TokenVerifier;
use crate::config::MqttConfig;
use crate::hub::Hub;
use crate::uplink::UplinkSlot;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) cfg: MqttConfig,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) acl: Acl,
    pub(crate) hub: Arc<Hub>,
    /// Where outbox publishes go, once the IM side listens.
    pub(crate) uplink: Arc<UplinkSlot>,
    /// Open connections, counted at accept.
    pub(crate) connections: AtomicUsize,
}

/// A byte stream a client connects over. Reading is split in two so that waiting
/// holds no buffer and never blocks the connection's other duties: `ready` waits,
/// `try_read` takes what is there without waiting.
pub(crate) trait Transport: AsyncWrite + Unpin + Send + 'static {
    /// Resolves when input (or the end of the stream) may be available.
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Appends the available input to `buf`: `Some(0)` at the end of the stream,
    /// `None` when nothing is there after all (readiness can be stale).
    fn try_read(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>>;

    /// The client has logged in: limits that hold only before CONNECT is
    /// accepted are lifted.
    fn logged_in(&mut self) {}
}

/// Bytes asked of a socket per read.
pub(crate) const READ_CHUNK: usize = 4096;

impl Transport for TcpStream {
    async fn ready(&mut self) -> io::Result<()> {
        self.readable().await
    }

    fn try_read(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        buf.reserve(READ_CHUNK);
        // At most one chunk, though `reserve` may leave as much room as the buffer
        // already holds: so one read adds at most READ_CHUNK to what a bound (the
        // CONNECT limit before login) was checked against.
        match self.try_read_buf(&mut (&mut *buf).limit(READ_CHUNK)) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}
