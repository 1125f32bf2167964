//! The load generator behind `imqtt-bench`: the IM workload of DESIGN.md section 9,
//! run against any MQTT 3.1.1 broker on a loopback address.
//!
//! `connection` is a raw MQTT 3.1.1 connection (rumqttc's v4 codec over a tokio
//! `TcpStream`, no event loop), light enough to hold 19,000 of them in one process;
//! `target` says where and as whom clients connect; `subscriber` serves a connected
//! client (acknowledging, pinging) and starts thousands of them; `publisher` sends
//! QoS 1 messages through a window of unacknowledged ones; `timed` stamps payloads
//! with their send time and tallies them on arrival; `fanout`, `relay` and
//! `stalled` are the scenarios, each returning a result that prints itself as
//! `key=value` lines; `procfs` reads a process's RSS and CPU time.
//!
//! Over HTTP (DESIGN.md section 5): `api` is one user's client of the send, sync,
//! ack, group and contact endpoints; `schedule` splits work among senders and paces
//! an open-loop rate; `histogram` keeps request and delivery latencies; `fsync`
//! measures the disk the server writes to; `send` (single and batch sends),
//! `latency` (HTTP in, MQTT out, received by `receiver`: the bench's reader,
//! rumqttc or the client library), `drain` (an offline user's sync), `group` (one
//! group's fan-out and membership changes) and `presence` (contacts watching
//! users come and go) are the scenarios; `webhook_sink` receives a server's
//! webhook events during `send`, timing them from commit to POST.

mod api;
mod connection;
pub(crate) mod drain;
pub(crate) mod fanout;
pub(crate) mod fsync;
pub(crate) mod group;
mod histogram;
pub(crate) mod latency;
pub(crate) mod presence;
mod procfs;
mod publisher;
mod receiver;
pub(crate) mod relay;
mod schedule;
pub(crate) mod send;
pub(crate) mod stalled;
mod subscriber;
mod target;
mod timed;
pub(crate) mod webhook_sink;

pub(crate) use connection::Connection;
pub(crate) use drain::DrainOptions;
pub(crate) use fanout::FanoutOptions;
pub(crate) use group::GroupOptions;
pub(crate) use latency::LatencyOptions;
pub(crate) use presence::PresenceOptions;
pub(crate) use procfs::{cpu_secs, read_rss};
pub(crate) use receiver::ReceiverKind;
pub(crate) use relay::RelayOptions;
pub(crate) use send::SendOptions;
pub(crate) use stalled::StalledOptions;
pub(crate) use target::{JwtSecret, Target};

use rumqttc::mqttbytes::v4::ConnectReturnCode;

/// Why one bench client failed; each is counted, and the first one is reported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A socket error (connect, read or write).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent bytes the v4 codec rejects.
    #[error("protocol: {0}")]
    Protocol(#[from] rumqttc::mqttbytes::Error),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// The broker closed the connection instead of sending the reply awaited.
    #[error("connection closed by the broker while waiting for {0}")]
    ClosedAwaiting(&'static str),
    /// CONNACK with a non-zero return code.
    #[error("CONNACK refused: {0:?}")]
    Refused(ConnectReturnCode),
    /// SUBACK with the failure code (0x80).
    #[error("SUBACK refused subscription to {0}")]
    SubscribeRefused(String),
    /// A packet that makes no sense at this point of the exchange.
    #[error("unexpected packet: {0}")]
    Unexpected(String),
    /// One client's step did not finish in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Signing the client's JWT failed.
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// An HTTP request failed before an answer arrived (connect, timeout, body).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with a status the request did not expect.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body (the JSON error, normally).
        body: String,
    },
}

/// Formats seconds for the `key=value` output: fixed precision, no unit.
fn secs(d: std::time::Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// A rate for the `key=value` output; 0 when nothing was timed.
fn per_sec(count: usize, d: std::time::Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}
