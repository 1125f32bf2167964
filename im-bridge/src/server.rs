//! Starting and stopping the whole server, in three steps that each leave nothing
//! behind when the next one is not taken: [`Server::bind`] opens the store and binds
//! every listener, [`Server::serve`] starts serving (ready from then on), and
//! [`Serving::stop`] drains and flushes. A server bound but never served is closed
//! with [`Server::close`], which flushes the store too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::auth::TokenVerifier;
use broker::{Broker, BrokerHandle, BrokerMetrics};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::Access;
use crate::api::{self, AppState};
use crate::cache::AccessCache;
use crate::cluster::Cluster;
use crate::commit::{Committer, FlushPolicy, WeakCommitter};
use crate::config::Config;
use crate::config::{FlushMode, Retention};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::passwords::Passwords;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

/// How long a cached membership or contact answer is trusted on a store other
/// processes write.
const SHARED_STORE_CACHE_AGE: Duration = Duration::from_secs(2);

/// A server whose store is open and whose listeners are bound, not yet serving.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    http: TcpListener,
    mqtt: Broker,
}

impl Server {
    /// Loads keys, opens the store and binds every listener; any failure here is a
    /// startup error and nothing is served. The store is opened to the end even if
    /// the caller stops waiting, and when a listener cannot be bound it is flushed
    /// before the error is returned.
    pub async fn bind(config: Config) -> Result<Server> {
        let verifier = Arc::new(TokenVerifier::new(&config.auth)?);
        let store_cfg = config.store.clone();
        let idempotency_ttl = config.delivery.idempotency_ttl.get();
        // Opening blocks (sled reads its log, PostgreSQL connects and migrates);
        // it runs on the blocking pool.
        let store =
            tokio::task::spawn_blocking(move || crate::store::open(&store_cfg, idempotency_ttl))
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        match Server::bind_listeners(config, verifier, store.clone()).await {
            Ok((state, http, mqtt)) => Ok(Server { state, http, mqtt }),
            Err(e) => {
                // Nothing was written through a round yet; what sled holds of its
                // own (the layout's move) is flushed.
                let _ = tokio::task::spawn_blocking(move || store.flush()).await;
                Err(e)
            }
        }
    }

    async fn bind_listeners(
        config: Config,
        verifier: Arc<TokenVerifier>,
        store: Arc<dyn Store>,
    ) -> Result<(AppState, TcpListener, Broker)> {
        let mut broker_metrics = None;
        let mut cluster_metrics = None;
        let clustered = config.cluster.enabled();
        let hook_metrics = crate::webhooks::HookMetrics::default();
        let metrics = Metrics::new(|registry| {
            broker_metrics = Some(Arc::new(BrokerMetrics::register(registry)));
            if !config.webhooks.is_empty() {
                hook_metrics.register(registry);
            }
            if clustered {
                cluster_metrics = Some(crate::cluster::ClusterMetrics::register(registry));
            }
        });
        let broker_metrics =
            broker_metrics.unwrap_or_else(|| Arc::new(BrokerMetrics::unregistered()));
        // Group and presence questions are answered from the store, through a
        // cache the commit loop keeps right.
        let cache = Arc::new(match config.store.engine {
            crate::config::Engine::Sled => AccessCache::default(),
            // Other processes change memberships and contacts there too.
            crate::config::Engine::Postgres => {
                AccessCache::default().with_max_age(SHARED_STORE_CACHE_AGE)
            }
        });
        let access = Access::new(store.clone(), cache.clone());
        let mqtt = Broker::bind(
            config.mqtt.clone(),
            verifier.clone(),
            Arc::new(access.clone()),
            broker_metrics,
        )
        .await?;
        // The cluster link joins the hub before anything is served, so it hears
        // of every session and subscription.
        let cluster = match cluster_metrics {
            Some(m) => {
                let c = Cluster::start(&config.cluster, mqtt.handle(), access.clone(), m).await?;
                let tell = c.clone();
                cache.observe(Box::new(move |change| tell.invalidate(change)));
                Some(c)
            }
            None => None,
        };
        let addr = config.http.listen;
        let http = TcpListener::bind(addr).await.map_err(|cause| Error::Bind {
            key: "http.listen",
            addr,
            cause,
        })?;
        let policy = match config.store.flush {
            FlushMode::Always => FlushPolicy::Always,
            FlushMode::Interval => FlushPolicy::Interval(config.store.flush_interval.get()),
        };
        let hooks = Arc::new(crate::webhooks::Hooks::new(
            &config.webhooks,
            hook_metrics,
            config.delivery.inline_max_bytes.as_usize(),
        ));
        let online: crate::webhooks::Online = {
            let (broker, cluster) = (mqtt.handle(), cluster.clone());
            Box::new(move |uid| crate::presence::is_online(&broker, cluster.as_ref(), uid))
        };
        let state = AppState {
            committer: Committer::start_with_hooks(
                store.clone(),
                policy,
                cache,
                crate::delivery::on_commit(
                    mqtt.handle(),
                    store.clone(),
                    config.delivery.inline_max_bytes.as_usize(),
                    metrics.messages_stored.clone(),
                ),
                hooks.clone(),
                online,
            ),
            broker: mqtt.handle(),
            cluster,
            send_limit: Arc::new(RateLimiter::from_config(&config.limits)),
            receipts: crate::receipts::Receipts::new(mqtt.handle(), config.delivery.read_receipts),
            config: Arc::new(config),
            verifier,
            store,
            access,
            retained: Default::default(),
            metrics: Arc::new(metrics),
            passwords: Passwords::default(),
            ready: Arc::new(AtomicBool::new(false)),
            started: std::time::Instant::now(),
            sign_ins: Default::default(),
            mqtt_addrs: mqtt.local_addrs().into(),
        };
        // Presence follows connections from the first one on.
        crate::presence::spawn(
            state.broker.clone(),
            state.cluster.clone(),
            Some(hooks.clone()),
        );
        // Publishes on the users' outboxes are sends, from now on.
        if let Some(uplink) = state.broker.uplink() {
            crate::outbox::spawn(uplink, state.clone());
        }
        let retention = match state.config.store.retention {
            Retention::Forever => None,
            Retention::For(d) => Some(d.get()),
        };
        housekeeping(state.committer.downgrade(), retention);
        hooks.spawn(state.store.clone(), state.committer.downgrade());
        let restored = crate::retained::restore(&state.broker, &state.store).await?;
        if restored > 0 {
            tracing::info!(restored, "retained messages restored");
        }
        crate::retained::spawn(
            state.broker.clone(),
            state.committer.downgrade(),
            state.retained.clone(),
        );
        Ok((state, http, mqtt))
    }

    /// The broker's handle, for publishing and connection events.
    pub fn broker(&self) -> BrokerHandle {
        self.mqtt.handle()
    }

    /// Closes a server that never served: flushes the store and releases its lock
    /// and the listeners.
    pub async fn close(self) -> Result<()> {
        self.state.committer.sync().await?;
        tracing::info!("store flushed; stopped before serving");
        Ok(())
    }

    /// Starts serving: from the moment this returns, every listener accepts and
    /// `/readyz` answers 200 until [`Serving::stop`].
    pub fn serve(self) -> Serving {
        let Server { state, http, mqtt } = self;
        let addrs = listener_addrs(&mqtt, &http);
        let broker = state.broker.clone();
        let committer = state.committer.clone();
        let retained = state.retained.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let grace = state.config.http.shutdown_grace.get();
        // Ready is set before the HTTP task exists, so no request can ever be
        // answered by this server while the flag is still false: a client that
        // connects as soon as the addresses are printed gets 200 from /readyz.
        // Connections that arrive before the tasks first run wait in the listen
        // backlog (the sockets are bound and listening since `bind`).
        state.ready.store(true, Ordering::Release);
        let ready = state.ready.clone();
        let mqtt = tokio::spawn(mqtt.run(stopped(stop_rx.clone()), grace));
        let http = tokio::spawn(
            axum::serve(
                http,
                api::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stopped(stop_rx))
            .into_future(),
        );
        Serving {
            addrs,
            ready,
            stop_tx,
            http,
            mqtt,
            committer,
            retained,
            broker,
            grace,
        }
    }
}

/// The bound address of every listener, keyed as in `--print-addrs`.
fn listener_addrs(mqtt: &Broker, http: &TcpListener) -> Vec<(&'static str, SocketAddr)> {
    let mut addrs = mqtt.local_addrs();
    if let Ok(a) = http.local_addr() {
        addrs.push(("http", a));
    }
    addrs
}

/// A server that is serving; [`Serving::stop`] ends it.
#[derive(Debug)]
pub struct Serving {
    addrs: Vec<(&'static str, SocketAddr)>,
    ready: Arc<AtomicBool>,
    stop_tx: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    mqtt: JoinHandle<()>,
    committer: Committer,
    retained: crate::retained::Shared,
    broker: BrokerHandle,
    grace: Duration,
}

impl Serving {
    /// The bound address of every listener, keyed as in `--print-addrs`
    /// (`mqtt.tcp`, `mqtt.ws`, `mqtt.tls`, `mqtt.wss`, `http`).
    pub fn addrs(&self) -> &[(&'static str, SocketAddr)] {
        &self.addrs
    }

    /// Stops accepting, tells MQTT clients (v5: DISCONNECT 0x8B), gives in-flight
    /// requests and connections `http.shutdown_grace` to finish, and flushes the
    /// store.
    pub async fn stop(self) -> Result<()> {
        let Serving {
            ready,
            stop_tx,
            http,
            mqtt,
            committer,
            retained,
            broker,
            grace,
            ..
        } = self;
        tracing::info!(grace = ?grace, "shutting down: no new connections, draining requests");
        ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        match tokio::time::timeout(grace, http).await {
            Ok(Ok(Ok(()))) => tracing::info!("HTTP drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP task failed"),
            Err(_) => tracing::warn!("grace period over; abandoning in-flight requests"),
        }
        let _ = mqtt.await;
        let mut retained = retained.lock().await;
        if let Err(e) = crate::retained::persist(&broker, &committer, &mut retained).await {
            tracing::warn!(error = %e, "cannot persist retained messages");
        }
        committer.sync().await?;
        tracing::info!("store flushed; stopped");
        Ok(())
    }
}

/// How often expired idempotency keys and messages are deleted.
const SWEEP: std::time::Duration = std::time::Duration::from_secs(60);
/// Keys or messages one round of a sweep deletes at most, so that a sweep never
/// holds up the sends behind it for long.
const SWEEP_CHUNK: usize = 10_000;

/// Deletes, in the background and never on the send path, idempotency keys past
/// their TTL and, with `store.retention`, messages older than it: a chunk per
/// commit round. Each sweep reads only what expired since the last one (the
/// store keeps both ordered by time).
fn housekeeping(committer: WeakCommitter, retention: Option<std::time::Duration>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP).await;
            let Some(committer) = committer.upgrade() else {
                return;
            };
            let now = crate::commit::now_ms();
            let keep = retention.map(|k| u64::try_from(k.as_millis()).unwrap_or(u64::MAX));
            let (mut keys, mut messages) = (0, 0);
            let swept: Result<()> = async {
                loop {
                    let n = committer
                        .write(move |r| Ok((r.expire_idempotency(now, SWEEP_CHUNK)?, None)))
                        .await?;
                    keys += n;
                    if n < SWEEP_CHUNK {
                        break;
                    }
                }
                while let Some(keep) = keep {
                    let n = committer
                        .write(move |r| {
                            Ok((
                                r.expire_messages(now.saturating_sub(keep), SWEEP_CHUNK)?,
                                None,
                            ))
                        })
                        .await?;
                    messages += n;
                    if n < SWEEP_CHUNK {
                        break;
                    }
                }
                Ok(())
            }
            .await;
            match swept {
                Ok(()) if keys + messages == 0 => {}
                Ok(()) => tracing::debug!(keys, messages, "expired idempotency keys and messages"),
                Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
            }
        }
    });
}
