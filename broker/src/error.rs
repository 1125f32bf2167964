//! The broker's errors: one enum for starting it, one for the bridge's publishes.

use std::net::SocketAddr;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot bind {listener} on {addr}: {source}")]
    Bind {
        /// The config key of the listener (`mqtt.tcp`, ...).
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why [`crate::BrokerHandle::publish`] refused a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// A topic name that cannot be published to (empty, wildcards, NUL).
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    /// `users/{uid}/outbox` is the users' uplink: the server consumes it and routes
    /// nothing there.
    #[error("{0:?} is an outbox: it is consumed by the server, never routed")]
    Outbox(String),
}
