//! The Rust client of imqtt. Modules: `wire`, the JSON and topic formats of
//! DESIGN.md §3-5 (envelope, events, presence, HTTP bodies, conversation ids, topic
//! builders) as plain serde types, which the server (`im-bridge`) uses too. With the
//! default `client` feature the crate also carries the networking dependencies of
//! the client still to come (connect, receive, de-duplicate, fill gaps, ack, send)
//! and of the `imqtt-bench` load generator in `src/bin/imqtt-bench/`; without it,
//! only `wire` and its `serde`/`serde_json` dependencies remain.

pub mod wire;
