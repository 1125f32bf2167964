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

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::acl::Acl;
use crate::auth::TokenVerifier;
use crate::config::MqttConfig;
use crate::hub::Hub;

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Edge {
    pub(crate) cfg: MqttConfig,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) acl: Acl,
    pub(crate) hub: Arc<Hub>,
    /// Open connections, counted at accept.
    pub(crate) connections: AtomicUsize,
}

/// A byte stream a client connects over.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves when a read can make progress. Waiting here holds no read buffer,
    /// which is what keeps an idle connection at a few KiB.
    fn ready(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Transport for TcpStream {
    async fn ready(&mut self) -> io::Result<()> {
        self.readable().await
    }
}
