//! The commands, one file per resource: `login`, `send`, `listen`, `read` (sync,
//! history, conversations, ack), `groups`, `contacts` (and presence). Each takes
//! its parsed arguments, an [`imqtt_client::Api`] (or the session, for `listen`)
//! and the [`crate::output::Out`] to print with.

pub(crate) mod contacts;
pub(crate) mod groups;
pub(crate) mod listen;
pub(crate) mod login;
pub(crate) mod read;
pub(crate) mod send;

/// A user or group id argument, checked by the parser so that a bad one is a
/// usage error (exit 2) before anything is sent.
pub(crate) fn id(s: &str) -> Result<String, String> {
    imqtt_client::wire::check_id(s)
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}
