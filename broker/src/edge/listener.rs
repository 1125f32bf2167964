//! The MQTT listeners: bound up front so the server can report real addresses
//! (port 0 picks a free port), then an accept loop per listener that backs off on
//! errors (out of file descriptors, say) instead of spinning. WebSocket and TLS
//! handshakes run in the connection's own task under `mqtt.connect_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{Edge, connection, tls, ws};
use crate::config::MqttConfig;
use crate::error::StartError;

/// How a listener's connections speak MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Tcp,
    Ws,
    Tls,
    Wss,
}

/// The bound MQTT listeners, each with the config key it came from.
pub(crate) struct Listeners {
    bound: Vec<(&'static str, Kind, TcpListener)>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("addrs", &self.local_addrs())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listeners {
    /// Binds every enabled listener of `cfg`, loading the TLS certificate first
    /// when a TLS listener is enabled.
    pub(crate) async fn bind(cfg: &MqttConfig) -> Result<Listeners, StartError> {
        let wanted = [
            ("mqtt.tcp", Kind::Tcp, cfg.tcp),
            ("mqtt.ws", Kind::Ws, cfg.ws),
            ("mqtt.tls", Kind::Tls, cfg.tls),
            ("mqtt.wss", Kind::Wss, cfg.wss),
        ];
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) if cfg.tls.0.is_some() || cfg.wss.0.is_some() => {
                Some(tls::acceptor(cert, key)?)
            }
            _ => None,
        };
        let mut bound = Vec::new();
        for (listener, kind, addr) in wanted {
            let Some(addr) = addr.0 else { continue };
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    listener,
                    addr,
                    source,
                })?;
            bound.push((listener, kind, l));
        }
        Ok(Listeners { bound, tls })
    }

    /// The actual address of each bound listener, keyed like the config.
    pub(crate) fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|(name, _, l)| l.local_addr().ok().map(|a| (*name, a)))
            .collect()
    }

    /// Accepts connections until `shutdown` resolves.
    pub(crate) async fn run(
        self,
        edge: Arc<Edge>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tasks = JoinSet::new();
        for (name, kind, listener) in self.bound {
            tasks.spawn(accept_loop(
                name,
                kind,
                listener,
                edge.clone(),
                self.tls.clone(),
            ));
        }
        shutdown.await;
        tasks.abort_all();
    }
}

async fn accept_loop(
    name: &'static str,
    kind: Kind,
    listener: TcpListener,
    edge: Arc<Edge>,
    tls: Option<TlsAcceptor>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = socket.set_nodelay(true);
                // Counted before CONNECT so that the limit holds under a connect storm;
                // over the limit the client still gets CONNACK "server unavailable".
                edge.connections.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(serve(kind, socket, peer, edge.clone(), tls.clone()));
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Runs the transport handshake, then the MQTT connection.
async fn serve(
    kind: Kind,
    socket: TcpStream,
    peer: SocketAddr,
    edge: Arc<Edge>,
    tls: Option<TlsAcceptor>,
) {
    let limit = edge.cfg.connect_timeout.get();
    // A WebSocket message may hold one whole packet plus framing slack.
    let max_message = edge.cfg.max_packet_size.as_usize().saturating_add(1024);
    match (kind, tls) {
        (Kind::Tcp, _) => connection::serve(edge, socket, peer).await,
        (Kind::Ws, _) => match tokio::time::timeout(limit, ws::accept(socket, max_message)).await {
            Ok(Ok(ws)) => connection::serve(edge, ws, peer).await,
            Ok(Err(e)) => handshake_failed(&edge, peer, "WebSocket", &e),
            Err(_) => handshake_failed(&edge, peer, "WebSocket", &"timed out"),
        },
        (Kind::Tls, Some(acceptor)) => {
            match tokio::time::timeout(limit, acceptor.accept(socket)).await {
                Ok(Ok(tls)) => connection::serve(edge, tls::TlsTransport::new(tls), peer).await,
                Ok(Err(e)) => handshake_failed(&edge, peer, "TLS", &e),
                Err(_) => handshake_failed(&edge, peer, "TLS", &"timed out"),
            }
        }
        (Kind::Wss, Some(acceptor)) => {
            let handshake = async {
                let tls = acceptor.accept(socket).await.map_err(|e| e.to_string())?;
                ws::accept(tls::TlsTransport::new(tls), max_message)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(ws)) => connection::serve(edge, ws, peer).await,
                Ok(Err(e)) => handshake_failed(&edge, peer, "TLS WebSocket", &e),
                Err(_) => handshake_failed(&edge, peer, "TLS WebSocket", &"timed out"),
            }
        }
        // Binding refuses TLS listeners without a certificate.
        (Kind::Tls | Kind::Wss, None) => handshake_failed(&edge, peer, "TLS", &"no certificate"),
    }
}

fn handshake_failed(edge: &Edge, peer: SocketAddr, what: &str, e: &dyn std::fmt::Display) {
    edge.connections.fetch_sub(1, Ordering::AcqRel);
    tracing::debug!(%peer, error = %e, "{what} handshake failed");
}
