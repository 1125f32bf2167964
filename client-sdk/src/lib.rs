//! The Rust client of imqtt (connect, receive, de-duplicate, fill gaps, ack, send)
//! lands here; the `imqtt-bench` load generator lives in `src/bin/imqtt-bench/`.
