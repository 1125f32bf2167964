//! The command lines of `imqtt-bench` and `imqtt-cli`: `--help` lists every
//! scenario or command, and bad arguments exit 2.
//!
//! This file also makes `cargo test --workspace` build both binaries (cargo builds
//! a package's binaries only for its integration tests), which the end-to-end
//! tests in `tests/tests/bench.rs` and `tests/tests/cli.rs` run against a real
//! server.

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

/// Every command of `imqtt-cli`.
const CLI_COMMANDS: &[&str] = &[
    "login",
    "send",
    "listen",
    "sync",
    "history",
    "conversations",
    "ack",
    "groups",
    "presence",
    "contacts",
];

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imqtt-cli"))
        .args(args)
        // A token in the environment is one clap could show in the help.
        .env("IMQTT_TOKEN", "secret-token-in-the-environment")
        .env("IMQTT_PASSWORD", "secret-password-in-the-environment")
        .output()
        .expect("run imqtt-cli")
}

#[test]
fn cli_help_lists_every_command_and_exits_0() {
    let out = cli(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}:\n{help}", out.status);
    for command in CLI_COMMANDS {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "--help does not list command {command}:\n{help}"
        );
    }
    for command in CLI_COMMANDS {
        let out = cli(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command} --help: {}", out.status);
        assert!(
            !help.contains("secret-"),
            "{command} --help shows a secret:\n{help}"
        );
    }
}

#[test]
fn cli_bad_arguments_exit_2_before_connecting() {
    // Nothing listens on port 1: a run that got past the parser would exit 1.
    for args in [
        &["--no-such-flag"][..],
        &["no-such-command"],
        &["send"],
        &["send", "bob"],
        &["send", "bob", "hi", "--body", "{}"],
        &["send", "bob", "--body", "{not json"],
        &["send", "--group", "g", "bob", "hi"],
        &["send", "bob", "hi", "--qos", "3"],
        &["send", "not/an/id", "hi"],
        &["history", "nowhere"],
        &["history", "dm:a:b", "--after", "1", "--before", "3"],
        &["ack", "dm:a:b", "-1"],
        &["listen", "--count", "0"],
        &["groups", "create"],
        &["groups", "create", "T", "--history", "never"],
        &["groups", "add", "g"],
        &["presence"],
    ] {
        let out = cli(&[&["--http", "http://127.0.0.1:1"][..], args].concat());
        assert_eq!(
            out.status.code(),
            Some(2),
            "imqtt-cli {args:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
