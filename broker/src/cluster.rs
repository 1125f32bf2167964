//! The hub's side of a cluster. The hub stays the one place that knows where a
//! publication goes: it routes to this node's sessions, and hands every
//! publication made here to a [`Link`] (the IM side's NATS relay), which carries it
//! to the nodes whose sessions want it. The hub tells the link what this node's
//! sessions hold ([`Interest`]) as it changes, so the link subscribes on NATS to
//! exactly that, and which sessions attach, so another node's session with the
//! same client id can be ended.
//!
//! Every call is made on the publish, subscribe or connect path, some under the
//! hub's locks: a link never waits and never calls back into the hub from them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// Something this node's sessions hold, which the other nodes' publications must
/// reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest<'a> {
    /// `uid` has a session here (connected or not): what is published to its
    /// topics, and what concerns its sessions, must come here.
    User(&'a str),
    /// A session here subscribes to this filter (the filter of a shared
    /// subscription without its `$share/{group}/`).
    Filter(&'a str),
}

/// A future the hub awaits, boxed so that the connection loop stays small.
pub type Settled = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the hub tells the rest of the cluster.
pub trait Link: Send + Sync + fmt::Debug + 'static {
    /// A publication made on this node (by a client, a will or the IM side), to
    /// be carried to the other nodes. Must not wait: a link that cannot keep up
    /// drops and counts.
    fn relay(&self, publication: &std::sync::Arc<crate::Publication>);
    /// This node's sessions began (`held`) or ceased to hold `interest`. Reported
    /// in order, once per change.
    fn interest(&self, interest: Interest<'_>, held: bool);
    /// A connection attached to the session `{uid}:{client_id}` here, at `at_ms`
    /// (Unix milliseconds): the same session elsewhere must end.
    fn attached(&self, uid: &str, client_id: &str, at_ms: u64);
    /// Resolves once the interests reported so far are in effect on the other
    /// nodes' side (or at once, when they cannot be: the link is down). The
    /// connection awaits it before CONNACK and SUBACK, so that what another node
    /// publishes after them comes here.
    fn settled(&self) -> Settled;
}
