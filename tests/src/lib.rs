//! Test harness: starts the real `imqtt` binary on ephemeral ports with its own data
//! directory, reads the bound addresses from `--print-addrs`, and stops or kills it.
//! [`Launch`] is the process before it is known to serve, for tests of startup.
//! [`bench_bin`] and [`cli_bin`] find `imqtt-bench` and `imqtt-cli` the way
//! [`imqtt_bin`] finds `imqtt`. [`postgres::Postgres`] runs a real PostgreSQL
//! server for the tests of the PostgreSQL engine.

pub mod client;
pub mod cluster;
pub mod nats;
pub mod postgres;
pub mod receiver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use broker::auth::{AuthConfig, Role, Secret, TokenVerifier};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The HS256 secret every test server uses.
pub const TEST_SECRET: &str = "imqtt-test-secret-0123456789abcdef0123456789";

/// How long a server gets to print its addresses or to stop.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `imqtt` binary under test: `$IMQTT_BIN`, or the one cargo built next to
/// this test executable (`cargo test --workspace` builds it).
pub fn imqtt_bin() -> PathBuf {
    built_bin("imqtt", "IMQTT_BIN", "cargo build -p im-bridge")
}

/// The `imqtt-bench` binary under test: `$IMQTT_BENCH_BIN`, or the one cargo built
/// next to this test executable (`cargo test --workspace` builds it, because
/// `imqtt-bench`, in `client-sdk/bench/`, has integration tests).
pub fn bench_bin() -> PathBuf {
    built_bin(
        "imqtt-bench",
        "IMQTT_BENCH_BIN",
        "cargo build -p imqtt-bench",
    )
}

/// The `imqtt-cli` binary under test: `$IMQTT_CLI_BIN`, or the one cargo built
/// next to this test executable (`cargo test --workspace` builds it, because
/// `imqtt-cli`, in `client-sdk/cli/`, has integration tests).
pub fn cli_bin() -> PathBuf {
    built_bin("imqtt-cli", "IMQTT_CLI_BIN", "cargo build -p imqtt-cli")
}

/// `$override_var` if set, else binary `name` of this workspace's target directory.
fn built_bin(name: &str, override_var: &str, build: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(override_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-xxxx -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: run `cargo test --workspace` (or `{build}`) first, or set {override_var}",
        bin.display()
    );
    bin
}

/// A running `imqtt` process with a private data directory.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Every `--print-addrs` line: `mqtt.tcp`, `mqtt.ws`, `http`, ...
    pub addrs: HashMap<String, SocketAddr>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server on ephemeral loopback ports with the test secret.
    pub async fn start() -> Server {
        Server::start_with("").await
    }

    /// Starts a server whose config is the test base followed by `extra` TOML
    /// (sections in `extra` must not repeat the base's `[mqtt]`, `[http]`, `[auth]`,
    /// `[store]` headers; use environment overrides for those keys instead).
    pub async fn start_with(extra: &str) -> Server {
        Server::start_env(extra, &[]).await
    }

    /// Like [`Server::start_with`], plus environment variables.
    pub async fn start_env(extra: &str, env: &[(&str, &str)]) -> Server {
        Launch::spawn(extra, env).into_server().await
    }

    /// `http://HOST:PORT` of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    /// The bound address of listener `name` (`mqtt.tcp`, `mqtt.ws`, `http`).
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no {name} listener in {:?}", self.addrs))
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        sigterm(self.pid());
        wait_exit(&mut self.child, self.dir.path()).await
    }

    /// Waits (under [`START_TIMEOUT`]) for the process to exit and gives back its
    /// directory, so that another server can be started on the same data.
    pub async fn stopped(mut self) -> (ExitStatus, tempfile::TempDir) {
        let status = wait_exit(&mut self.child, self.dir.path()).await;
        (status, self.dir)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill server");
    }
}

/// An `imqtt` process that was started but is not yet known to serve, with a private
/// directory holding its config, its stderr log and its data.
#[derive(Debug)]
pub struct Launch {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    dir: tempfile::TempDir,
}

impl Launch {
    /// Starts `imqtt --print-addrs` on ephemeral loopback ports with the test secret,
    /// its config being the test base followed by `extra` (see [`Server::start_with`]).
    pub fn spawn(extra: &str, env: &[(&str, &str)]) -> Launch {
        Launch::spawn_in(tempfile::tempdir().expect("temp dir"), extra, env)
    }

    /// Like [`Launch::spawn`], in `dir`: a directory an earlier server used keeps its
    /// data (`dir/data`), so this server opens the same store.
    pub fn spawn_in(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Launch {
        let config = format!(
            "[mqtt]\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
             [auth]\njwt_secret = \"{TEST_SECRET}\"\n\
             [store]\npath = \"{}\"\n{}{extra}",
            dir.path().join("data").display(),
            engine_keys(dir.path()),
        );
        let config_path = dir.path().join("imqtt.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut child = Command::new(imqtt_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--print-addrs")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn imqtt");
        let stdout = child.stdout.take().expect("piped stdout");
        Launch {
            child,
            stdout: BufReader::new(stdout).lines(),
            dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process not yet reaped")
    }

    /// Reads the `--print-addrs` lines up to the `http` one; `None` when stdout
    /// closes first or nothing comes within [`START_TIMEOUT`].
    pub async fn read_addrs(&mut self) -> Option<HashMap<String, SocketAddr>> {
        let mut addrs = HashMap::new();
        let read = async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                if let Some((name, addr)) = line.split_once('=') {
                    let addr: SocketAddr = addr.parse().expect("address line");
                    addrs.insert(name.to_owned(), addr);
                    if name == "http" {
                        return true;
                    }
                }
            }
            false
        };
        let complete = tokio::time::timeout(START_TIMEOUT, read)
            .await
            .unwrap_or(false);
        complete.then_some(addrs)
    }

    /// Resolves once the process has a handler for SIGTERM (Linux: `SigCgt` in
    /// `/proc/PID/status`), the first instant at which any program can act on
    /// the signal; before its `main` runs, SIGTERM's default action kills it.
    pub async fn sigterm_handled(&self) {
        let status = format!("/proc/{}/status", self.pid());
        let handled = async {
            loop {
                let text = std::fs::read_to_string(&status).unwrap_or_default();
                let caught = text
                    .lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                    .unwrap_or(0);
                if caught & (1 << (SIGTERM - 1)) != 0 {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(START_TIMEOUT, handled)
            .await
            .expect("imqtt never installed a SIGTERM handler");
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        sigterm(self.pid());
    }

    /// Waits (under [`START_TIMEOUT`]) for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, self.dir.path()).await
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The directory, for [`Launch::spawn_in`] once this process has exited.
    pub fn into_dir(self) -> tempfile::TempDir {
        self.dir
    }

    /// Waits for the addresses and gives the running [`Server`].
    pub async fn into_server(mut self) -> Server {
        let addrs = self.read_addrs().await;
        let log = self.log();
        let Launch { child, dir, .. } = self;
        let addrs =
            addrs.unwrap_or_else(|| panic!("imqtt did not print its addresses; stderr:\n{log}"));
        Server { child, addrs, dir }
    }
}

/// The engine the servers of this test run use: `IMQTT_TEST_STORE=postgres`
/// runs them on a PostgreSQL server started once for the test binary, each
/// server directory with a database of its own (kept in `dir/pg_url`, so a
/// server started again in the same directory opens the same database);
/// anything else, sled.
fn engine_keys(dir: &Path) -> String {
    if std::env::var("IMQTT_TEST_STORE").as_deref() != Ok("postgres") {
        return String::new();
    }
    let saved = dir.join("pg_url");
    let url = match std::fs::read_to_string(&saved) {
        Ok(url) => url,
        Err(_) => {
            let Some(url) = shared_postgres_database() else {
                return String::new();
            };
            std::fs::write(&saved, &url).expect("save the database URL");
            url
        }
    };
    format!("engine = \"postgres\"\nurl = \"{url}\"\npool = 4\n")
}

/// A new database on the test binary's PostgreSQL server, started on first use;
/// `None` where PostgreSQL is not installed (said once, and fatal under CI).
pub fn shared_postgres_database() -> Option<String> {
    static PG: std::sync::OnceLock<Option<std::sync::Mutex<postgres::Postgres>>> =
        std::sync::OnceLock::new();
    let pg = PG.get_or_init(|| postgres::Postgres::start().map(std::sync::Mutex::new));
    let pg = pg
        .as_ref()?
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(pg.database())
}

/// SIGTERM's number (the same on every Linux architecture).
const SIGTERM: u32 = 15;

/// Sends SIGTERM to `pid` straight away (no `kill` process in between).
fn sigterm(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a process id");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
}

/// Waits for the exit; a process still running after [`START_TIMEOUT`] fails the
/// test with what it logged (in `dir`), which says where it hangs.
async fn wait_exit(child: &mut Child, dir: &Path) -> ExitStatus {
    match tokio::time::timeout(START_TIMEOUT, child.wait()).await {
        Ok(status) => status.expect("wait for imqtt"),
        Err(_) => {
            let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            panic!("imqtt did not exit within {START_TIMEOUT:?}; stderr:\n{log}")
        }
    }
}

/// Mints a token signed with [`TEST_SECRET`].
pub fn token(uid: &str, role: Role, ttl: Duration) -> String {
    let cfg = AuthConfig {
        jwt_secret: Secret::new(TEST_SECRET),
        ..AuthConfig::default()
    };
    TokenVerifier::new(&cfg)
        .expect("HS256 verifier")
        .mint(uid, role, ttl)
        .expect("mint")
}
