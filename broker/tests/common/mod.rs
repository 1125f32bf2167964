//! What every broker test shares: an in-process broker on an ephemeral loopback
//! port, and tokens signed with the test secret.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::auth::{AuthConfig, Role, Secret, TokenVerifier};
use broker::config::MqttConfig;
use broker::units::ListenAddr;
use broker::{Authorizer, Broker, BrokerHandle, BrokerMetrics, DenyAll};
use tokio::sync::oneshot;

/// The HS256 secret of every test broker.
pub(crate) const SECRET: &str = "broker-test-secret-0123456789abcdef012345";
/// How long a test waits for something that should happen.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// A running broker; dropping it stops it.
pub(crate) struct TestBroker {
    pub(crate) addrs: Vec<(&'static str, SocketAddr)>,
    pub(crate) handle: BrokerHandle,
    _stop: oneshot::Sender<()>,
}

impl TestBroker {
    /// The MQTT over TCP listener.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.listener("mqtt.tcp")
    }

    /// The listener configured as `name` (`mqtt.ws`, `mqtt.tls`, ...).
    pub(crate) fn listener(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no {name} listener"))
            .1
    }
}

pub(crate) fn verifier() -> Arc<TokenVerifier> {
    Arc::new(
        TokenVerifier::new(&AuthConfig {
            jwt_secret: Secret::new(SECRET),
            ..AuthConfig::default()
        })
        .expect("verifier"),
    )
}

/// A token for `uid` with `role`, valid for ten minutes.
pub(crate) fn token(uid: &str, role: Role) -> String {
    verifier()
        .mint(uid, role, Duration::from_secs(600))
        .expect("mint")
}

/// Any free loopback port.
pub(crate) fn any_port() -> ListenAddr {
    ListenAddr::on("127.0.0.1:0".parse().expect("addr"))
}

/// Starts a broker with MQTT over TCP only, after `tweak` adjusts its config.
pub(crate) async fn start_with(tweak: impl FnOnce(&mut MqttConfig)) -> TestBroker {
    start_counted(tweak, Arc::new(BrokerMetrics::unregistered())).await
}

/// As [`start_with`], counting into `metrics` (registered by the test to read them).
pub(crate) async fn start_counted(
    tweak: impl FnOnce(&mut MqttConfig),
    metrics: Arc<BrokerMetrics>,
) -> TestBroker {
    start_full(tweak, metrics, Arc::new(DenyAll)).await
}

/// A broker whose group and presence questions go to `authorizer`.
pub(crate) async fn start_authorized(authorizer: Arc<dyn Authorizer>) -> TestBroker {
    start_full(|_| {}, Arc::new(BrokerMetrics::unregistered()), authorizer).await
}

async fn start_full(
    tweak: impl FnOnce(&mut MqttConfig),
    metrics: Arc<BrokerMetrics>,
    authorizer: Arc<dyn Authorizer>,
) -> TestBroker {
    let mut cfg = MqttConfig {
        tcp: any_port(),
        ws: ListenAddr::default(),
        ..MqttConfig::default()
    };
    tweak(&mut cfg);
    let broker = Broker::bind(cfg, verifier(), authorizer, metrics)
        .await
        .expect("bind");
    let addrs = broker.local_addrs();
    let handle = broker.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(broker.run(
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    TestBroker {
        addrs,
        handle,
        _stop: stop,
    }
}

pub(crate) async fn start() -> TestBroker {
    start_with(|_| {}).await
}
