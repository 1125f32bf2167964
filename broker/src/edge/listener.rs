//! The MQTT listeners: bound up front so the server can report real addresses
//! (port 0 picks a free port), then an accept loop per listener that backs off on
//! errors (out of file descriptors, say) instead of spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{Edge, connection};
use crate::config::MqttConfig;
use crate::error::Error;

/// The bound MQTT listeners, each with the config key it came from.
#[derive(Debug)]
pub(crate) struct Listeners {
    bound: Vec<(&'static str, TcpListener)>,
}

impl Listeners {
    /// Binds every enabled listener of `cfg`.
    pub(crate) async fn bind(cfg: &MqttConfig) -> Result<Listeners, Error> {
        let mut bound = Vec::new();
        // WebSocket and TLS listeners are bound so their addresses are reserved and
        // reported, and serve plain MQTT until their transports land.
        let wanted = [
            ("mqtt.tcp", cfg.tcp),
            ("mqtt.ws", cfg.ws),
            ("mqtt.tls", cfg.tls),
            ("mqtt.wss", cfg.wss),
        ];
        for (listener, addr) in wanted {
            let Some(addr) = addr.0 else { continue };
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    listener,
                    addr,
                    source,
                })?;
            bound.push((listener, l));
        }
        Ok(Listeners { bound })
    }

    /// The actual address of each bound listener, keyed like the config.
    pub(crate) fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|(name, l)| l.local_addr().ok().map(|a| (*name, a)))
            .collect()
    }

    /// Accepts connections until `shutdown` resolves.
    pub(crate) async fn run(
        self,
        edge: Arc<Edge>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tasks = JoinSet::new();
        for (name, listener) in self.bound {
            tasks.spawn(accept_loop(name, listener, edge.clone()));
        }
        shutdown.await;
        tasks.abort_all();
    }
}

async fn accept_loop(name: &'static str, listener: TcpListener, edge: Arc<Edge>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = socket.set_nodelay(true);
                // Counted before CONNECT so that the limit holds under a connect storm;
                // over the limit the client still gets CONNACK "server unavailable".
                edge.connections.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(connection::serve(edge.clone(), socket, peer));
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, ?backoff, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
