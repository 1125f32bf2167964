//! The command line of `imqtt-cli`: `--help` lists every command and shows no
//! secret, and bad arguments exit 2.
//!
//! This file also makes `cargo test --workspace` build the binary (cargo builds a
//! package's binaries only for its integration tests), which the end-to-end tests
//! in `tests/tests/cli.rs` run against a real server.

use std::process::{Command, Output};

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
fn help_lists_every_command_shows_no_secret_and_exits_0() {
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
fn bad_arguments_exit_2_before_connecting() {
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
