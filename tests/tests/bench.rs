//! Every `imqtt-bench` scenario at tiny sizes against the real `imqtt` binary, each
//! on a fresh server and store (the scenarios use fixed user names), so that a
//! broken bench fails here rather than in the next benchmark pass. The figures it
//! prints are never asserted (a busy 2-core machine would make that flaky); its
//! exit status and its counts are: what was asked for was sent, stored and
//! delivered, and nothing was lost.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use imqtt_tests::{Server, TEST_SECRET, bench_bin};
use tokio::process::Command;

/// Longest one scenario may run before the test kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The bench's own deadline (`--timeout-secs`), within [`RUN_TIMEOUT`], so that a
/// stuck run still prints how far it got before exiting 1.
const BENCH_TIMEOUT_SECS: &str = "45";
/// Server log lines shown when a run fails.
const LOG_TAIL: usize = 40;

/// Which API a scenario drives, and so which flags it needs.
#[derive(Debug, Clone, Copy)]
enum Over {
    /// fanout, relay, stalled: every client publishes where only an admin may
    /// (README, "Benchmark"), hence `--client-role admin`.
    Mqtt,
    /// send, batch, latency, drain, group, presence: `/v1` on `--http-port`, and the
    /// fsync probe in the server's data directory, kept short.
    Http,
}

/// A server for one scenario: fresh store, no per-user send limit (the bench sends
/// faster than the default 100/s).
async fn server() -> Server {
    Server::start_env("", &[("IMQTT_LIMITS__RATE_PER_USER", "0")]).await
}

/// What one successful bench run printed.
#[derive(Debug)]
struct Report {
    /// The `key=value` lines, before the blank line that precedes the summary.
    values: HashMap<String, String>,
    stdout: String,
}

impl Report {
    /// The value of `key`; panics, showing the output, when it was not printed.
    fn get(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in the bench output:\n{}", self.stdout))
    }

    /// The count printed as `key`.
    fn count(&self, key: &str) -> usize {
        let value = self.get(key);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{key}={value} is not a count:\n{}", self.stdout))
    }

    /// Asserts each `(key, count)`.
    fn assert_counts(&self, expected: &[(&str, usize)]) {
        for &(key, want) in expected {
            assert_eq!(self.count(key), want, "{key}, in:\n{}", self.stdout);
        }
    }

    /// Asserts that each of `keys` was printed (figures: their values vary).
    fn assert_printed(&self, keys: &[&str]) {
        for key in keys {
            self.get(key);
        }
    }
}

/// Runs `imqtt-bench --scenario SCENARIO` with `args` against `server`, waits for
/// it under [`RUN_TIMEOUT`], and requires exit 0 and `complete=true`.
async fn bench(server: &Server, scenario: &str, over: Over, args: &[&str]) -> Report {
    let mut cmd = Command::new(bench_bin());
    cmd.arg("--scenario")
        .arg(scenario)
        .arg("--port")
        .arg(server.addr("mqtt.tcp").port().to_string())
        .args(["--jwt-secret", TEST_SECRET])
        // The server's RSS and CPU time are read from /proc, a path worth running.
        .arg("--server-pid")
        .arg(server.pid().to_string())
        .args(["--timeout-secs", BENCH_TIMEOUT_SECS]);
    match over {
        Over::Mqtt => {
            cmd.args(["--client-role", "admin"]);
        }
        Over::Http => {
            cmd.arg("--http-port")
                .arg(server.addr("http").port().to_string())
                .arg("--data-dir")
                .arg(server.data_dir())
                .args(["--fsync-probe-secs", "0.1"]);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn imqtt-bench");
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "imqtt-bench --scenario {scenario} still running after {RUN_TIMEOUT:?}; \
                 server log:\n{}",
                log_tail(server)
            )
        })
        .expect("wait for imqtt-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "imqtt-bench --scenario {scenario} {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         server log:\n{}",
        output.status,
        log_tail(server)
    );
    let values = stdout
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let report = Report { values, stdout };
    assert_eq!(report.get("scenario"), scenario);
    assert_eq!(report.get("complete"), "true");
    if let Over::Http = over {
        report.assert_printed(&["fsync_per_sec"]);
    }
    report
}

/// The last [`LOG_TAIL`] lines the server logged.
fn log_tail(server: &Server) -> String {
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_fanout_delivers_one_message_to_every_client() {
    let server = server().await;
    let clients = 20;
    let r = bench(
        &server,
        "fanout",
        Over::Mqtt,
        &["--clients", "20", "--block-size", "10"],
    )
    .await;
    r.assert_counts(&[
        ("clients", clients),
        ("connected", clients),
        ("connect_failed", 0),
        ("connect_block_1_clients", 10),
        ("connect_block_2_clients", 10),
        ("fanout_expected", clients),
        ("fanout_sent", clients),
        ("fanout_acked", clients),
        ("fanout_delivered", clients),
        ("fanout_duplicates", 0),
        ("subscriber_errors", 0),
    ]);
    r.assert_printed(&[
        "connect_last_first_ratio",
        "fanout_deliveries_per_sec",
        "server_bytes_per_client",
        "fanout_server_cpu_secs",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_relay_receives_every_message_once_in_order() {
    let server = server().await;
    let r = bench(&server, "relay", Over::Mqtt, &["--messages", "200"]).await;
    r.assert_counts(&[
        ("messages", 200),
        ("relay_sent", 200),
        ("relay_acked", 200),
        ("relay_received", 200),
        ("relay_duplicates", 0),
        ("relay_out_of_order", 0),
    ]);
    r.assert_printed(&["relay_messages_per_sec", "relay_latency_p99_ms"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_relay_at_qos_0_receives_every_message_once_in_order() {
    let server = server().await;
    let r = bench(
        &server,
        "relay",
        Over::Mqtt,
        &["--qos", "0", "--messages", "300", "--window", "50"],
    )
    .await;
    r.assert_counts(&[
        ("relay_qos", 0),
        ("messages", 300),
        ("relay_sent", 300),
        ("relay_received", 300),
        ("relay_duplicates", 0),
        ("relay_out_of_order", 0),
    ]);
    r.assert_printed(&["relay_messages_per_sec", "relay_latency_p99_ms"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_stalled_healthy_subscribers_get_all_their_messages() {
    let server = server().await;
    let (stalled, healthy, messages) = (3, 2, 300);
    let r = bench(
        &server,
        "stalled",
        Over::Mqtt,
        &[
            "--stalled",
            "3",
            "--healthy",
            "2",
            "--messages",
            "300",
            "--payload-bytes",
            "256",
        ],
    )
    .await;
    // Round-robin over all inboxes: each gets messages / (stalled + healthy).
    let healthy_expected = healthy * messages / (stalled + healthy);
    r.assert_counts(&[
        ("stalled_subscribers", stalled),
        ("healthy_subscribers", healthy),
        ("messages", messages),
        ("publisher_sent", messages),
        ("publisher_acked", messages),
        ("healthy_expected", healthy_expected),
        ("healthy_received", healthy_expected),
        ("healthy_duplicates", 0),
        ("healthy_out_of_order", 0),
    ]);
    r.assert_printed(&[
        "healthy_msgs_per_sec",
        "publisher_msgs_per_sec",
        "server_rss_after_kib",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_send_stores_every_single_send() {
    let server = server().await;
    let r = bench(
        &server,
        "send",
        Over::Http,
        &["--senders", "4", "--messages", "200"],
    )
    .await;
    r.assert_counts(&[
        ("senders", 4),
        ("messages", 200),
        ("send_requests", 200),
        ("send_stored", 200),
        ("send_duplicates", 0),
        ("send_errors", 0),
    ]);
    r.assert_printed(&[
        "send_durable_messages_per_sec",
        "send_request_p99_ms",
        "server_cpu_secs",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_batch_stores_every_send_of_every_batch() {
    let server = server().await;
    let r = bench(
        &server,
        "batch",
        Over::Http,
        &["--senders", "2", "--batch-size", "50", "--messages", "400"],
    )
    .await;
    r.assert_counts(&[
        ("senders", 2),
        ("messages", 400),
        ("batch_size", 50),
        ("batch_requests", 8),
        ("batch_stored", 400),
        ("batch_duplicates", 0),
        ("batch_errors", 0),
    ]);
    r.assert_printed(&["batch_durable_messages_per_sec", "batch_request_p99_ms"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_latency_delivers_every_stored_send_over_mqtt() {
    let server = server().await;
    let r = bench(
        &server,
        "latency",
        Over::Http,
        &["--senders", "4", "--rate", "100", "--messages", "100"],
    )
    .await;
    r.assert_counts(&[
        ("messages", 100),
        ("latency_stored", 100),
        ("latency_errors", 0),
        ("latency_received", 100),
        ("latency_duplicates", 0),
        ("latency_lost", 0),
    ]);
    r.assert_printed(&["latency_delivery_p99_ms", "latency_achieved_per_sec"]);
}

/// The latency run received by a plain rumqttc subscriber and by the client
/// library: the two the client library's cost is measured between.
#[tokio::test(flavor = "multi_thread")]
async fn bench_latency_with_rumqttc_and_the_client_library_receiving() {
    for receiver in ["rumqttc", "sdk"] {
        let server = server().await;
        let r = bench(
            &server,
            "latency",
            Over::Http,
            &[
                "--senders",
                "2",
                "--rate",
                "100",
                "--messages",
                "60",
                "--receiver",
                receiver,
            ],
        )
        .await;
        r.assert_counts(&[
            ("messages", 60),
            ("latency_stored", 60),
            ("latency_errors", 0),
            ("latency_received", 60),
            ("latency_duplicates", 0),
            ("latency_lost", 0),
        ]);
        r.assert_printed(&["receiver", "latency_delivery_p99_ms"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_drain_fetches_the_whole_backlog_in_order() {
    let server = server().await;
    let r = bench(
        &server,
        "drain",
        Over::Http,
        &[
            "--senders",
            "3",
            "--batch-size",
            "100",
            "--messages",
            "300",
            "--sync-limit",
            "50",
        ],
    )
    .await;
    r.assert_counts(&[
        ("messages", 300),
        ("conversations", 3),
        ("drain_stored", 300),
        ("drain_fetched", 300),
        ("drain_out_of_sequence", 0),
        // 100 per conversation, 50 per conversation a page: two pages, then empty.
        ("drain_syncs", 3),
    ]);
    r.assert_printed(&["drain_messages_per_sec", "drain_ack_p50_ms"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_group_delivers_every_message_to_every_online_member() {
    let server = server().await;
    // Each online member is sent 200 + 20 messages in all, well within the
    // default `mqtt.max_queued` (1000) even if the bench stops reading: unlike
    // the README's 10,000-message run, no larger queue is needed.
    let (online, messages, latency_messages, cycles) = (10, 200, 20, 5);
    let r = bench(
        &server,
        "group",
        Over::Http,
        &[
            "--members",
            "20",
            "--online",
            "10",
            "--senders",
            "2",
            "--messages",
            "200",
            "--batch-size",
            "50",
            "--rate",
            "20",
            "--latency-secs",
            "1",
            "--cycles",
            "5",
        ],
    )
    .await;
    r.assert_counts(&[
        ("members", 20),
        ("online", online),
        ("group_connected", online),
        ("group_connect_failed", 0),
        ("group_throughput_requests", 4),
        ("group_throughput_stored", messages),
        ("group_throughput_errors", 0),
        ("group_throughput_expected_deliveries", messages * online),
        ("group_throughput_deliveries", messages * online),
        ("group_throughput_duplicates", 0),
        ("group_throughput_lost", 0),
        ("group_throughput_members_incomplete", 0),
        ("group_latency_messages", latency_messages),
        ("group_latency_stored", latency_messages),
        ("group_latency_errors", 0),
        ("group_latency_deliveries", latency_messages * online),
        ("group_latency_duplicates", 0),
        ("group_latency_lost", 0),
        ("group_membership_cycles", cycles),
        ("group_membership_done", cycles),
        ("subscriber_errors", 0),
    ]);
    r.assert_printed(&[
        "group_throughput_deliveries_per_sec",
        "group_latency_delivery_p99_ms",
        "group_membership_add_p50_ms",
        "group_membership_remove_p50_ms",
        "group_throughput_server_cpu_secs",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_presence_every_watcher_sees_every_flap() {
    let server = server().await;
    let (users, contacts, flaps) = (20, 3, 4);
    let r = bench(
        &server,
        "presence",
        Over::Http,
        &[
            "--users",
            "20",
            "--contacts",
            "3",
            "--flaps",
            "4",
            "--senders",
            "2",
        ],
    )
    .await;
    r.assert_counts(&[
        ("users", users),
        ("presence_contacts_made", users * contacts),
        ("presence_contacts_failed_senders", 0),
        ("presence_connected", users),
        ("presence_connect_failed", 0),
        ("presence_flaps_done", flaps),
        ("presence_offline_expected", flaps * contacts),
        ("presence_offline_seen", flaps * contacts),
        ("presence_offline_missing", 0),
        ("presence_online_expected", flaps * contacts),
        ("presence_online_seen", flaps * contacts),
        ("presence_online_missing", 0),
        ("subscriber_errors", 0),
    ]);
    r.assert_printed(&[
        "presence_offline_p99_ms",
        "presence_online_p99_ms",
        "presence_flaps_server_cpu_secs",
    ]);
}
