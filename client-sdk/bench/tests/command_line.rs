//! The command line of `imqtt-bench`: `--help` lists every scenario, and bad
//! arguments exit 2.
//!
//! This file also makes `cargo test --workspace` build the binary (cargo builds a
//! package's binaries only for its integration tests), which the end-to-end tests
//! in `tests/tests/bench.rs` run against a real server.

use std::process::{Command, Output};

/// Every scenario `--scenario` accepts.
const SCENARIOS: &[&str] = &[
    "fanout", "relay", "stalled", "send", "batch", "latency", "drain", "group", "presence",
];

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imqtt-bench"))
        .args(args)
        .output()
        .expect("run imqtt-bench")
}

#[test]
fn help_lists_every_scenario_and_exits_0() {
    let out = bench(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}:\n{help}", out.status);
    for scenario in SCENARIOS {
        assert!(
            help.contains(&format!("- {scenario}:")),
            "--help does not list scenario {scenario}:\n{help}"
        );
    }
}

#[test]
fn bad_arguments_exit_2_before_connecting() {
    // Refused by the parser, then by the bench's own checks (non-loopback host,
    // HTTP scenario without a secret): nothing is connected to in either case.
    for args in [
        &["--no-such-flag"][..],
        &["--scenario", "no-such-scenario"],
        &["--host", "192.0.2.1"],
        &["--scenario", "send", "--port", "1"],
    ] {
        let out = bench(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "imqtt-bench {args:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
