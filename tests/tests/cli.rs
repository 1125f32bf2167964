//! `imqtt-cli` against the real server: a message sent with the CLI reaches a
//! listening CLI (and is acked when it exits); `login --signup` saves a profile
//! that later commands use alone; Ctrl-C closes a listen cleanly; refusals are
//! one line on stderr and exit 1, bad usage exits 2, and the token is never
//! printed; `--http` and `--mqtt` lists pass a dead address over (and the
//! profile keeps them), and listen shows a resync. Each CLI runs with a clean environment (no `IMQTT_*` of the shell
//! running the tests, `HOME` in a temporary directory) and under a timeout.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use imqtt_tests::client::{Device, WAIT, user};
use imqtt_tests::{Server, cli_bin};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::timeout;

/// How long one CLI command may run.
const RUN: Duration = Duration::from_secs(30);

/// The variables the CLI reads; none may leak in from the shell running the tests.
const CLI_VARS: &[&str] = &[
    "IMQTT_HTTP",
    "IMQTT_MQTT",
    "IMQTT_USER",
    "IMQTT_TOKEN",
    "IMQTT_PROFILE",
    "IMQTT_PASSWORD",
];

/// Runs `imqtt-cli` against one server, with a private home directory.
struct Cli {
    http: String,
    mqtt: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(server: &Server) -> Cli {
        Cli {
            http: server.http_url(),
            mqtt: format!("mqtt://{}", server.addr("mqtt.tcp")),
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    /// `imqtt-cli ARGS` with nothing from the environment: no server, no user,
    /// and the default profile inside the temporary home.
    fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cli_bin());
        c.args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in CLI_VARS {
            c.env_remove(var);
        }
        c
    }

    /// `imqtt-cli ARGS` as `uid` on this server, with a minted token in
    /// `IMQTT_TOKEN` (never on the command line).
    fn as_user(&self, uid: &str, args: &[&str]) -> Command {
        let mut c = self.bare(args);
        c.env("IMQTT_HTTP", &self.http)
            .env("IMQTT_MQTT", &self.mqtt)
            .env("IMQTT_USER", uid)
            .env("IMQTT_TOKEN", user(uid));
        c
    }

    /// `imqtt-cli ARGS` with the profile at `path` and nothing else.
    fn with_profile(&self, path: &Path, args: &[&str]) -> Command {
        let mut c = self.bare(args);
        c.env("IMQTT_PROFILE", path);
        c
    }
}

/// What one finished CLI run printed.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The stdout of a run that must have exited 0.
    fn ok(&self) -> &str {
        assert!(self.status.success(), "{self:#?}");
        assert!(self.stderr.is_empty(), "{self:#?}");
        &self.stdout
    }

    /// The stdout of a successful `--json` run, parsed.
    fn json(&self) -> Value {
        let text = self.ok();
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// The one stderr line of a run that must have exited with `code`.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:#?}");
        self.stderr.trim_end()
    }
}

/// Runs `command` to its end under [`RUN`].
async fn run(mut command: Command) -> Ran {
    let out = timeout(RUN, command.output())
        .await
        .expect("imqtt-cli finished in time")
        .expect("run imqtt-cli");
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A CLI left running (`listen`), read line by line.
struct Running {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: ChildStderr,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command.spawn().expect("spawn imqtt-cli");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        Running {
            child,
            stdout: BufReader::new(stdout).lines(),
            stderr,
        }
    }

    /// The next line on stdout, within [`WAIT`]; panics (with stderr) at its end.
    async fn line(&mut self) -> String {
        match timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let mut err = String::new();
                let _ = timeout(WAIT, self.stderr.read_to_string(&mut err)).await;
                panic!("imqtt-cli closed its stdout; stderr: {err}")
            }
            Ok(Err(e)) => panic!("reading imqtt-cli's stdout: {e}"),
            Err(_) => panic!("no line from imqtt-cli within {WAIT:?}"),
        }
    }

    /// The next line, as JSON.
    async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Waits for the process to exit on its own, with nothing more on stdout.
    async fn exit(mut self) -> ExitStatus {
        let rest = timeout(WAIT, self.stdout.next_line()).await;
        assert!(
            matches!(rest, Ok(Ok(None))),
            "more output after the last expected line: {rest:?}"
        );
        timeout(WAIT, self.child.wait())
            .await
            .expect("imqtt-cli exits in time")
            .expect("wait for imqtt-cli")
    }
}

#[tokio::test]
async fn a_message_sent_with_the_cli_reaches_a_listening_cli_and_is_acked() {
    let server = Server::start().await;
    let cli = Cli::new(&server);
    let mut bob = Running::spawn(cli.as_user("bob", &["listen", "--json", "--count", "2"]));
    let connected = bob.json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["user"], "bob", "{connected}");

    let first = run(cli.as_user("alice", &["send", "bob", "hello"])).await;
    let words: Vec<&str> = first.ok().split_whitespace().collect();
    assert_eq!(words[..2], ["dm:alice:bob", "#1"], "{first:?}");
    let second = run(cli.as_user(
        "alice",
        &[
            "send",
            "bob",
            "--body",
            r#"{"text":"again","n":2}"#,
            "--json",
        ],
    ))
    .await
    .json();
    assert_eq!(second["conv"], "dm:alice:bob", "{second}");
    assert_eq!(second["seq"], 2, "{second}");

    for (seq, id, body) in [
        (1, words[2], serde_json::json!({"text": "hello"})),
        (
            2,
            second["id"].as_str().expect("id"),
            serde_json::json!({"text": "again", "n": 2}),
        ),
    ] {
        let m = bob.json().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["conv"], "dm:alice:bob", "{m}");
        assert_eq!(m["seq"], seq, "{m}");
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(m["from"], "alice", "{m}");
        assert_eq!(m["to"], "bob", "{m}");
        assert_eq!(m["body"], body, "{m}");
    }
    let status = bob.exit().await;
    assert!(status.success(), "listen --count 2 exits 0: {status}");

    // Closing sent the acks of what was printed.
    let list = run(cli.as_user("bob", &["conversations", "--json"]))
        .await
        .json();
    let convs = list["conversations"].as_array().expect("conversations");
    assert_eq!(convs.len(), 1, "{list}");
    assert_eq!(convs[0]["cursor"], 2, "{list}");
    assert_eq!(convs[0]["unread"], 0, "{list}");
}

#[tokio::test]
async fn login_saves_a_profile_that_later_commands_use_alone() {
    let server = Server::start().await;
    let cli = Cli::new(&server);
    let profile: PathBuf = cli.home.path().join("carol.json");
    let profile_arg = profile.to_str().expect("utf-8 path");
    let mut login = cli.bare(&[
        "login",
        "--signup",
        "--user",
        "carol",
        "--http",
        &cli.http,
        "--mqtt",
        &cli.mqtt,
        "--profile",
        profile_arg,
    ]);
    login.env("IMQTT_PASSWORD", "correct horse battery");
    let login = run(login).await;
    assert!(
        login.ok().starts_with("signed up and logged in as carol"),
        "{login:?}"
    );

    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).expect("profile written"))
            .expect("profile is JSON");
    assert_eq!(saved["user"], "carol");
    assert_eq!(saved["http"], cli.http.as_str());
    assert_eq!(saved["mqtt"], cli.mqtt.as_str());
    let token = saved["token"].as_str().expect("token saved");
    assert!(!login.stdout.contains(token), "login printed the token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&profile)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the profile holds a token");
    }

    // From here on: no server, user or token but the profile's.
    let created =
        run(cli.with_profile(&profile, &["groups", "create", "Team", "--id", "team"])).await;
    assert!(
        created.ok().starts_with("created group team"),
        "{created:?}"
    );
    let added = run(cli.with_profile(&profile, &["groups", "add", "team", "dave", "erin"])).await;
    assert_eq!(added.ok().trim(), "added to team: dave, erin");
    let groups = run(cli.with_profile(&profile, &["groups", "list", "--json"]))
        .await
        .json();
    let groups = groups["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["id"], "team");
    assert_eq!(groups[0]["owner"], "carol");
    assert_eq!(groups[0]["role"], "owner");

    let sent = run(cli.with_profile(&profile, &["send", "--group", "team", "hi all"])).await;
    assert!(sent.ok().starts_with("group:team #1 "), "{sent:?}");
    let history = run(cli.with_profile(&profile, &["history", "group:team"])).await;
    assert_eq!(history.ok(), "group:team #1 carol: hi all\n");
    let page = run(cli.with_profile(&profile, &["history", "group:team", "--json"]))
        .await
        .json();
    assert_eq!(page["messages"][0]["body"]["text"], "hi all", "{page}");
    assert_eq!(page["has_more"], false, "{page}");

    // Signing in again takes the profile's user and server, the password from
    // stdin, and prints the token only when asked for JSON.
    let mut again = cli.with_profile(&profile, &["login", "--json"]);
    again.stdin(Stdio::piped());
    let mut child = again.spawn().expect("spawn imqtt-cli login");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(b"correct horse battery\n")
            .await
            .expect("write the password");
    }
    let out = timeout(RUN, child.wait_with_output())
        .await
        .expect("login finished in time")
        .expect("login output");
    assert!(out.status.success(), "{out:?}");
    let answer: Value = serde_json::from_slice(&out.stdout).expect("login --json is JSON");
    assert_eq!(answer["user"], "carol", "{answer}");
    assert!(
        answer["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{answer}"
    );
}

#[tokio::test]
async fn ctrl_c_closes_a_listen_that_watches_presence() {
    let server = Server::start().await;
    let cli = Cli::new(&server);
    run(cli.as_user("alice", &["contacts", "add", "bob"]))
        .await
        .ok();
    let mut bob =
        Running::spawn(cli.as_user("bob", &["listen", "--watch", "alice", "--device", "laptop"]));
    let connected = bob.line().await;
    assert_eq!(connected, "-- connected as bob (device laptop)");

    // Connected once its subscription is acknowledged.
    let _phone = Device::connect(&server, "alice", "phone", &["users/alice/inbox"]).await;
    loop {
        let line = bob.line().await;
        if line == "presence alice online (phone)" {
            break;
        }
        assert_eq!(line, "presence alice offline", "only presence lines");
    }

    let pid = bob.child.id().expect("listen still running");
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a process id");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("send SIGINT");
    let status = bob.exit().await;
    assert!(status.success(), "Ctrl-C ends listen with 0: {status}");
}

#[tokio::test]
async fn refusals_are_one_line_on_stderr_and_exit_1() {
    let server = Server::start().await;
    let cli = Cli::new(&server);
    run(cli.as_user("bob", &["groups", "create", "Closed", "--id", "closed"]))
        .await
        .ok();

    let refused = run(cli.as_user("alice", &["send", "--group", "closed", "hi"])).await;
    let line = refused.failed(1);
    assert!(line.starts_with("imqtt-cli: 403 not_a_member: "), "{line}");

    let mut bad = cli.bare(&[
        "--http",
        &cli.http,
        "--user",
        "alice",
        "--token",
        "not-a-token",
        "conversations",
    ]);
    bad.env("IMQTT_MQTT", &cli.mqtt);
    let bad = run(bad).await;
    let line = bad.failed(1);
    // The server's own code and message, then what to do about it.
    assert!(line.starts_with("imqtt-cli: 401 invalid_token: "), "{line}");
    assert!(line.contains("imqtt-cli login --user alice"), "{line}");
    assert!(
        !line.contains("not-a-token"),
        "the token is never printed: {line}"
    );

    let mut listen = cli.bare(&["listen", "--user", "alice"]);
    listen
        .env("IMQTT_HTTP", &cli.http)
        .env("IMQTT_MQTT", &cli.mqtt)
        .env("IMQTT_TOKEN", "not-a-token");
    let listen = run(listen).await;
    let line = listen.failed(1);
    assert!(line.contains("not authorized"), "{line}");
    assert!(!line.contains("not-a-token"), "{line}");

    let nobody = run(cli.bare(&["conversations"])).await;
    assert!(nobody.failed(1).contains("not logged in"), "{nobody:?}");

    for usage in [
        &["send"][..],
        &["send", "--group", "closed", "bob", "hi"],
        &["send", "bob", "hi", "--qos", "3"],
        &["history", "not-a-conversation"],
        &["groups", "add", "closed"],
        &["contacts", "add", "a/b"],
    ] {
        let ran = run(cli.as_user("alice", usage)).await;
        assert_eq!(ran.status.code(), Some(2), "imqtt-cli {usage:?}: {ran:#?}");
        assert!(ran.stdout.is_empty(), "{ran:#?}");
    }
}

/// A loopback address nothing listens on: bound to port 0, noted and let go.
fn refusing_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Publishes `{"type":"resync"}` on `users/{uid}/events`, as a server's node
/// does when its cluster link comes back, from an admin connection (admins may
/// publish on every topic but the outboxes).
async fn publish_resync(server: &Server, uid: &str) {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let addr = server.addr("mqtt.tcp");
    let mut o = MqttOptions::new("ops-resync", addr.ip().to_string(), addr.port());
    let admin = imqtt_tests::token("ops", broker::auth::Role::Admin, Duration::from_secs(600));
    o.set_credentials("ops", admin);
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client
        .publish(
            format!("users/{uid}/events"),
            QoS::AtLeastOnce,
            false,
            r#"{"type":"resync"}"#,
        )
        .await
        .expect("queue the resync");
    timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("admin connection: {e}"),
            }
        }
    })
    .await
    .expect("the resync is acknowledged");
}

#[tokio::test]
async fn server_lists_pass_a_dead_address_over_and_listen_shows_a_resync() {
    let server = Server::start().await;
    let cli = Cli::new(&server);
    let dead = refusing_addr();
    let http = format!("http://{dead},{}", cli.http);
    let mqtt = format!("mqtt://{dead},{}", cli.mqtt);

    // The profile keeps the lists as given.
    let profile = cli.home.path().join("carol.json");
    let profile_arg = profile.to_str().expect("utf-8 path");
    let mut login = cli.bare(&[
        "login",
        "--signup",
        "--user",
        "carol",
        "--http",
        &http,
        "--mqtt",
        &mqtt,
        "--profile",
        profile_arg,
    ]);
    login.env("IMQTT_PASSWORD", "correct horse battery");
    run(login).await.ok();
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&profile).expect("profile written"))
            .expect("profile is JSON");
    assert_eq!(saved["http"], http.as_str());
    assert_eq!(saved["mqtt"], mqtt.as_str());

    let mut listen = cli.bare(&["listen", "--json", "--count", "2"]);
    listen
        .env("IMQTT_HTTP", &http)
        .env("IMQTT_MQTT", &mqtt)
        .env("IMQTT_USER", "bob")
        .env("IMQTT_TOKEN", user("bob"));
    let mut bob = Running::spawn(listen);
    assert_eq!(bob.json().await["type"], "connected");

    let sent = run(cli.with_profile(&profile, &["send", "bob", "one", "--json"]))
        .await
        .json();
    let m = bob.json().await;
    assert_eq!((&m["seq"], &m["id"]), (&Value::from(1), &sent["id"]), "{m}");
    // #1 came, so bob's events are subscribed (one SUBSCRIBE with the inbox).
    publish_resync(&server, "bob").await;
    assert_eq!(bob.json().await, serde_json::json!({"type": "resync"}));
    run(cli.with_profile(&profile, &["send", "bob", "two"]))
        .await
        .ok();
    let m = bob.json().await;
    assert_eq!(
        (&m["seq"], &m["body"]["text"]),
        (&Value::from(2), &Value::from("two")),
        "{m}"
    );
    assert!(bob.exit().await.success());
}

#[tokio::test]
async fn edit_recall_and_reads_from_the_command_line() {
    let server = Server::start().await;
    let cli = Cli::new(&server);
    let mut bob = Running::spawn(cli.as_user("bob", &["listen", "--count", "3"]));
    assert!(bob.line().await.starts_with("-- connected"));
    run(cli.as_user("alice", &["send", "bob", "helo"]))
        .await
        .ok();
    let edit = run(cli.as_user("alice", &["edit", "dm:alice:bob", "1", "hello", "--json"]))
        .await
        .json();
    assert_eq!(edit["seq"], 2, "{edit}");
    let recall = run(cli.as_user("alice", &["recall", "dm:alice:bob", "1"])).await;
    assert!(recall.ok().starts_with("dm:alice:bob #3 "), "{recall:?}");
    assert_eq!(bob.line().await, "dm:alice:bob #1 alice: helo");
    assert_eq!(bob.line().await, "dm:alice:bob #2 alice edited #1: hello");
    assert_eq!(bob.line().await, "dm:alice:bob #3 alice recalled #1");
    assert!(bob.exit().await.success());

    let history = run(cli.as_user("bob", &["history", "dm:alice:bob"])).await;
    assert!(
        history
            .ok()
            .contains("dm:alice:bob #1 alice: (message recalled)"),
        "{history:?}"
    );
    let reads = run(cli.as_user("alice", &["reads", "dm:alice:bob"])).await;
    assert_eq!(reads.ok(), "alice read up to #3\nbob read up to #3\n");
    // Someone else's message: the server's refusal, one line, exit 1.
    run(cli.as_user("alice", &["send", "bob", "fourth"]))
        .await
        .ok();
    let refused = run(cli.as_user("bob", &["edit", "dm:alice:bob", "4", "mine"])).await;
    assert!(refused.failed(1).contains("not_sender"), "{refused:?}");
}
