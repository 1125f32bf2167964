//! The broker's error enum.

use std::net::SocketAddr;

/// What can go wrong starting or running the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// A topic name that cannot be published to (empty, wildcards, NUL).
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
}
