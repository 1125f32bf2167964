//! The MQTT listeners: bound up front so the server can report real addresses
//! (port 0 picks a free port) before it starts serving.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::MqttConfig;
use crate::error::Error;

/// The bound MQTT listeners, each with the config key it came from.
#[derive(Debug)]
pub struct Listeners {
    bound: Vec<(&'static str, TcpListener)>,
}

impl Listeners {
    /// Binds every enabled listener of `cfg`.
    pub async fn bind(cfg: &MqttConfig) -> Result<Listeners, Error> {
        let mut bound = Vec::new();
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
    pub fn local_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|(name, l)| l.local_addr().ok().map(|a| (*name, a)))
            .collect()
    }

    /// Accepts connections until `shutdown` resolves. Until the hub lands, a
    /// connection is closed as soon as it is accepted.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (name, listener) in self.bound {
            tasks.spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((socket, peer)) => {
                            tracing::debug!(listener = name, %peer, "MQTT not served yet; closing");
                            drop(socket);
                        }
                        Err(e) => {
                            tracing::warn!(listener = name, error = %e, "accept failed; backing off");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        shutdown.await;
        tasks.abort_all();
    }
}
