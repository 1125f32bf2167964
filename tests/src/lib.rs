//! Test harness: starts the real `imqtt` binary on ephemeral ports with its own data
//! directory, reads the bound addresses from `--print-addrs`, and stops or kills it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use broker::auth::{AuthConfig, Role, Secret, TokenVerifier};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The HS256 secret every test server uses.
pub const TEST_SECRET: &str = "imqtt-test-secret-0123456789abcdef0123456789";

/// How long a server gets to print its addresses or to stop.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `imqtt` binary under test: `$IMQTT_BIN`, or the one cargo built next to
/// this test executable (`cargo test --workspace` builds it).
pub fn imqtt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IMQTT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-xxxx -> target/debug/imqtt
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let bin = dir.join(format!("imqtt{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: run `cargo test --workspace` (or `cargo build -p im-bridge`) first",
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
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "[mqtt]\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
             [auth]\njwt_secret = \"{TEST_SECRET}\"\n\
             [store]\npath = \"{}\"\n{extra}",
            dir.path().join("data").display()
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
        let mut lines = BufReader::new(stdout).lines();
        let mut addrs = HashMap::new();
        let read = async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
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
        let server = Server { child, addrs, dir };
        assert!(
            complete,
            "imqtt did not print its addresses; stderr:\n{}",
            server.log()
        );
        server
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
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        tokio::time::timeout(START_TIMEOUT, self.child.wait())
            .await
            .expect("server stops after SIGTERM")
            .expect("wait for server")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill server");
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
