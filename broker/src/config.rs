//! The `[mqtt]` config section: listeners, limits and extra ACL rules.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::units::{ByteSize, Duration, ListenAddr};

/// The `[mqtt]` config section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// MQTT over TCP; `""` disables.
    pub tcp: ListenAddr,
    /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`); `""` disables.
    pub ws: ListenAddr,
    /// MQTT over TLS; needs `tls_cert` and `tls_key`; `""` disables.
    pub tls: ListenAddr,
    /// MQTT over secure WebSocket; needs `tls_cert` and `tls_key`; `""` disables.
    pub wss: ListenAddr,
    /// PEM certificate chain for the TLS listeners.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listeners.
    pub tls_key: Option<PathBuf>,
    /// Open connections allowed; the next one gets CONNACK "server unavailable".
    pub max_connections: usize,
    /// Sessions (connected or persisted) allowed.
    pub max_sessions: usize,
    /// Expiry of MQTT 3.1.1 persistent sessions (clean session = 0) once offline.
    pub session_expiry: Duration,
    /// Cap on the MQTT 5 Session Expiry Interval a client may ask for.
    pub max_session_expiry: Duration,
    /// Largest packet accepted or sent (MQTT 5 Maximum Packet Size); CONNECT, read
    /// before login, is held to 64 KiB or this, whichever is smaller.
    pub max_packet_size: ByteSize,
    /// Time a new socket has to send CONNECT.
    pub connect_timeout: Duration,
    /// Largest keepalive an MQTT 5 client may use (seconds, sent as Server Keep Alive);
    /// 0 = any. MQTT 3.1.1 has no way to tell a client, so it keeps its own.
    pub max_keepalive: u16,
    /// Unacknowledged QoS 1/2 messages in flight to one client (capped by its Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window.
    pub max_queued: usize,
    /// Retained messages kept at most.
    pub max_retained: usize,
    /// Subscriptions one session may hold (a user's inbox, events and one per group).
    pub max_subscriptions: usize,
    /// Extra topic patterns opened beyond the IM namespace.
    pub acl: Vec<AclRule>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            tcp: ListenAddr::on(SocketAddr::from(([0, 0, 0, 0], 1883))),
            ws: ListenAddr::on(SocketAddr::from(([0, 0, 0, 0], 8083))),
            tls: ListenAddr::default(),
            wss: ListenAddr::default(),
            tls_cert: None,
            tls_key: None,
            max_connections: 100_000,
            max_sessions: 200_000,
            session_expiry: Duration::secs(2 * 3600),
            max_session_expiry: Duration::secs(7 * 24 * 3600),
            max_packet_size: ByteSize(1 << 20),
            connect_timeout: Duration::secs(10),
            max_keepalive: 0,
            max_inflight: 32,
            max_queued: 1000,
            max_retained: 1_000_000,
            max_subscriptions: 1000,
            acl: Vec::new(),
        }
    }
}

/// What an ACL rule opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// SUBSCRIBE only.
    Subscribe,
    /// PUBLISH only.
    Publish,
    /// Both.
    All,
}

/// One `[[mqtt.acl]]` rule: opens `pattern` (an MQTT filter; `{uid}` stands for the
/// connecting user's id) to every user, or to the listed users only.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Topic filter, e.g. `public/#` or `devices/{uid}/#`.
    pub pattern: String,
    /// What the rule allows.
    pub access: Access,
    /// Users the rule applies to; empty means everyone.
    #[serde(default)]
    pub users: Vec<String>,
}

impl MqttConfig {
    /// Checks that need more than one key; each problem names the key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        let tls_wanted = self.tls.0.is_some() || self.wss.0.is_some();
        if tls_wanted && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            errs.push((
                "mqtt.tls_cert",
                "mqtt.tls_cert and mqtt.tls_key are required when mqtt.tls or mqtt.wss is set"
                    .to_owned(),
            ));
        }
        if self.max_connections == 0 {
            errs.push(("mqtt.max_connections", "must be at least 1".to_owned()));
        }
        if self.max_inflight == 0 {
            errs.push(("mqtt.max_inflight", "must be at least 1".to_owned()));
        }
        if self.max_packet_size.0 < 64 || self.max_packet_size.0 > 268_435_455 {
            errs.push((
                "mqtt.max_packet_size",
                "must be between 64 bytes and 256 MiB (the MQTT limit)".to_owned(),
            ));
        }
        for rule in &self.acl {
            if let Err(why) = check_filter(&rule.pattern.replace("{uid}", "u")) {
                errs.push(("mqtt.acl", format!("pattern {:?}: {why}", rule.pattern)));
            }
        }
        errs
    }
}

/// Checks an MQTT topic filter's syntax (MQTT 3.1.1 §4.7).
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a filter cannot be empty");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level == "#" {
            if levels.peek().is_some() {
                return Err("`#` must be the last level");
            }
        } else if level != "+" && (level.contains('#') || level.contains('+')) {
            return Err("`+` and `#` must occupy a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_per_level() {
        assert!(check_filter("public/#").is_ok());
        assert!(check_filter("+/x/+").is_ok());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b#").is_err());
        assert!(check_filter("").is_err());
    }

    #[test]
    fn tls_listener_without_certificate_is_an_error() {
        let cfg: MqttConfig = toml::from_str("tls = \"127.0.0.1:0\"").expect("valid");
        assert_eq!(cfg.validate()[0].0, "mqtt.tls_cert");
    }
}
