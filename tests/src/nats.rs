//! A real `nats-server` for the cluster tests, on a loopback port, which a test
//! can stop and start again on the same port. It runs under a small shell that
//! kills it when the test process goes (its stdin closes), so a killed test run
//! leaves no server behind.
//!
//! Without `nats-server`, [`Nats::start`] says so and gives `None`, so a test
//! can pass without it, except under `CI=true`, where it fails: CI installs
//! Debian's `nats-server`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A NATS server on a loopback port.
#[derive(Debug)]
pub struct Nats {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn find_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("IMQTT_NATS_SERVER") {
        return Some(PathBuf::from(bin));
    }
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Nats {
    /// Starts a server; `None` (with the reason printed) without `nats-server`.
    pub fn start() -> Option<Nats> {
        let Some(bin) = find_bin() else {
            let msg = "cluster tests skipped: no nats-server (install Debian's nats-server)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("{msg}");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut nats = Nats {
            bin,
            port,
            child: None,
        };
        nats.run();
        Some(nats)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn run(&mut self) {
        let script = format!(
            "{} -a 127.0.0.1 -p {} &\npid=$!\nread -r _\nkill -KILL $pid 2>/dev/null\nwait $pid 2>/dev/null\n",
            self.bin.display(),
            self.port
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL: NATS keeps nothing, so a stop and a crash are
    /// the same to its clients) and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "nats-server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.run();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}
