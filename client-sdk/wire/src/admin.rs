//! The operator's API (`/v1/admin/...`, admin tokens only) and `GET /v1/server`,
//! what a page or a client learns of the server before it connects.

use serde::{Deserialize, Serialize};

use crate::{ConversationSummary, Presence};

/// `GET /v1/admin/stats`: gauges as they are now and counters since the start;
/// a rate is the difference of two answers over the difference of their `ts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStats {
    /// When these figures were read, Unix milliseconds.
    pub ts: u64,
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// The server's version.
    pub version: String,
    /// Open MQTT connections.
    pub connections: u64,
    /// MQTT sessions, connected or persisted.
    pub sessions: u64,
    /// Subscriptions held by all sessions.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
    /// Messages accepted and stored since the start.
    pub messages_stored: u64,
    /// PUBLISH packets delivered to MQTT clients since the start.
    pub deliveries: u64,
    /// PUBLISH packets received from MQTT clients since the start.
    pub publishes_received: u64,
    /// Messages dropped from full session queues, expired or too large, since the
    /// start.
    pub queue_drops: u64,
    /// Bytes the store takes on disk.
    pub store_bytes: u64,
    /// Resident memory of the server process.
    pub resident_bytes: u64,
}

/// `GET /v1/admin/users/{uid}`: one user as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminUser {
    /// The user.
    pub user: String,
    /// Whether a built-in account exists for it.
    pub account: bool,
    /// Its presence, with the client ids of its connected devices.
    pub presence: Presence,
    /// The groups it belongs to.
    pub groups: Vec<String>,
    /// Its conversations, the most recent first.
    pub conversations: Vec<ConversationSummary>,
}

/// `POST /v1/admin/users/{uid}/disconnect`: how many connections were closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    /// The user.
    pub user: String,
    /// Connections closed.
    pub disconnected: u64,
}

/// `GET /v1/server` (no token): what a client needs to know before it connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// Whether `POST /v1/accounts` and `POST /v1/tokens` are served.
    pub accounts: bool,
    /// MQTT over WebSocket, as reachable on this host.
    pub mqtt: MqttEndpoints,
}

/// The ports of the MQTT listeners a browser can use (same host as the page).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttEndpoints {
    /// The plain WebSocket listener's port, if one is on.
    pub ws_port: Option<u16>,
    /// The TLS WebSocket listener's port, if one is on.
    pub wss_port: Option<u16>,
    /// The path MQTT is served on over WebSocket.
    pub ws_path: String,
}
