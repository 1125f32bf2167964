//! Connection events: what the bridge's presence is built on.
//!
//! The hub emits them where sessions are attached and detached, under the lock
//! that changes the per-user connection counts, so the stream, the counts and
//! [`PresenceSnapshot`]s agree: every event has a number one higher than the one
//! before, and a snapshot says up to which number it already reflects.

/// Why a connection ended, as reported in [`Event`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Normal,
    /// Nothing arrived for 1.5 times the keepalive.
    KeepaliveTimeout,
    /// The same user connected again with the same client id.
    TakenOver,
    /// The bridge disconnected the user ([`crate::BrokerHandle::disconnect_user`]).
    Disconnected,
    /// The server is shutting down.
    ServerShutdown,
    /// A protocol or I/O error, or the socket closed without DISCONNECT.
    Error,
}

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// CONNECT was accepted and the session attached.
    Connected,
    /// The connection ended (or lost its session to a newer one).
    Disconnected(DisconnectReason),
}

/// A connection event.
///
/// Guarantees: each connection (a `generation`) yields exactly one `Connected`
/// and, once it ends, exactly one `Disconnected`; a takeover yields the new
/// generation's `Connected` and then the old one's `Disconnected(TakenOver)`, so
/// `connections` never dips to zero while the device is connected. `seq` grows by
/// one per event, so a gap is visible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Number of this event: one more than the one before.
    pub seq: u64,
    /// The user.
    pub uid: String,
    /// The device (the client id).
    pub client_id: String,
    /// The connection: unique per attach, never reused.
    pub generation: u64,
    /// Connected or disconnected, and why.
    pub kind: EventKind,
    /// The user's live connections once this event is applied (0: offline).
    pub connections: usize,
}

/// One connected device of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The client id.
    pub client_id: String,
    /// The connection holding it.
    pub generation: u64,
}

/// Every connected user and its devices at one instant: what a consumer that
/// lagged behind the event stream rebuilds from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresenceSnapshot {
    /// The `seq` of the last event this snapshot reflects: apply only later ones.
    pub as_of: u64,
    /// Connected users (at least one device each), in no particular order.
    pub users: Vec<(String, Vec<Device>)>,
}
