//! Starting and stopping the whole server: open the store, bind every listener,
//! serve until told to stop, then drain and flush.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use broker::auth::TokenVerifier;
use broker::{Broker, BrokerHandle, BrokerMetrics, DenyAll};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::Store;

/// A server whose store is open and whose listeners are bound, not yet serving.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    store: Store,
    http: TcpListener,
    mqtt: Broker,
}

impl Server {
    /// Loads keys, opens the store and binds every listener; any failure here is a
    /// startup error and nothing is served.
    pub async fn bind(config: Config) -> Result<Server> {
        let verifier = TokenVerifier::new(&config.auth)?;
        let store_cfg = config.store.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&store_cfg))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let verifier = Arc::new(verifier);
        let mut broker_metrics = None;
        let metrics = Metrics::new(|registry| {
            broker_metrics = Some(Arc::new(BrokerMetrics::register(registry)));
        });
        let broker_metrics =
            broker_metrics.unwrap_or_else(|| Arc::new(BrokerMetrics::unregistered()));
        // Group and presence questions are denied until the bridge answers them.
        let mqtt = Broker::bind(
            config.mqtt.clone(),
            verifier.clone(),
            Arc::new(DenyAll),
            broker_metrics,
        )
        .await?;
        let addr = config.http.listen;
        let http = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                listener: "http",
                addr,
                source,
            })?;
        let state = AppState {
            config: Arc::new(config),
            verifier,
            metrics: Arc::new(metrics),
            ready: Arc::new(AtomicBool::new(false)),
        };
        Ok(Server {
            state,
            store,
            http,
            mqtt,
        })
    }

    /// The broker's handle, for publishing and connection events.
    pub fn broker(&self) -> BrokerHandle {
        self.mqtt.handle()
    }

    /// The bound address of every listener, keyed as in `--print-addrs`.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut addrs = self.mqtt.local_addrs();
        if let Ok(a) = self.http.local_addr() {
            addrs.push(("http", a));
        }
        addrs
    }

    /// Serves until `shutdown` resolves, then stops accepting, tells MQTT clients
    /// (v5: DISCONNECT 0x8B), gives in-flight requests and connections
    /// `http.shutdown_grace` to finish, and flushes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Server {
            state,
            store,
            http,
            mqtt,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let grace = state.config.http.shutdown_grace.get();
        let mqtt_task = tokio::spawn(mqtt.run(stopped(stop_rx.clone()), grace));
        let ready = state.ready.clone();
        let http_task = tokio::spawn(
            axum::serve(http, api::app(state))
                .with_graceful_shutdown(stopped(stop_rx))
                .into_future(),
        );
        ready.store(true, Ordering::Release);
        tracing::info!("ready");

        shutdown.await;
        tracing::info!(grace = ?grace, "shutting down: no new connections, draining requests");
        ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        match tokio::time::timeout(grace, http_task).await {
            Ok(Ok(Ok(()))) => tracing::info!("HTTP drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP task failed"),
            Err(_) => tracing::warn!("grace period over; abandoning in-flight requests"),
        }
        let _ = mqtt_task.await;
        store.flush().await?;
        tracing::info!("store flushed; stopped");
        Ok(())
    }
}
