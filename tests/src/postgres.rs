//! A real PostgreSQL server for the tests: `initdb` into a temporary directory,
//! then `postgres -D dir -p PORT -k dir` on loopback, run as the `postgres` user
//! when the tests run as root (PostgreSQL refuses root). It can be stopped,
//! killed (SIGKILL) and started again on the same data and port.
//!
//! Without PostgreSQL's binaries, [`Postgres::start`] says what is missing and
//! gives `None`, so a test can pass without it, except under `CI=true`, where
//! it fails: CI installs Debian's `postgresql`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long PostgreSQL gets to start or stop.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server with a private data directory, on a loopback port.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// Where Debian's `postgresql` package puts the server's binaries.
fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IMQTT_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs as the `postgres` user when this process is root, through `setpriv`
/// (which execs, so the child's pid is the server's).
fn command(program: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres"))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// Says why PostgreSQL tests cannot run here; fails under CI.
fn missing(what: &str) {
    let msg = format!("PostgreSQL tests skipped: {what} (install Debian's postgresql)");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("{msg}");
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The temporary directories' prefix, and the file in each naming the test
/// process that made it.
const PREFIX: &str = "imqtt-pg";
const OWNER: &str = "owner";

/// "pid start-time" of a running process (the start time tells a reused pid
/// from the original).
fn owner_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (start time) is the 20th after the ')' that closes comm.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Removes the directories of test processes that are gone. A test binary's
/// shared server lives in a static, which is never dropped: its server dies
/// with the process, and its 100+ MB directory would stay behind for good.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(entry.path().join(OWNER)) else {
            continue;
        };
        let pid = owner.split_whitespace().next().and_then(|p| p.parse().ok());
        let gone = pid.is_some_and(|pid| owner_of(pid).as_deref() != Some(owner.trim()));
        if gone && !backends_alive(&entry.path().join("data")) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Postgres {
    /// Makes a cluster and starts it; `None` (with the reason printed) where
    /// PostgreSQL is not installed.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = find_bin() else {
            missing("no /usr/lib/postgresql/*/bin/postgres");
            return None;
        };
        let root = rustix::process::geteuid().is_root();
        if root && (postgres_ids().is_none() || !Path::new("/usr/bin/setpriv").exists()) {
            missing("running as root needs the postgres user and setpriv");
            return None;
        }
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .expect("temp dir");
        std::fs::write(
            dir.path().join(OWNER),
            owner_of(std::process::id()).unwrap_or_default(),
        )
        .expect("write the owner file");
        if let (true, Some((uid, gid))) = (root, postgres_ids()) {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "imqtt", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            child: None,
        };
        pg.run();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the server on the cluster's port and waits until it accepts. A
    /// shell stands between this process and the server: it stops the server
    /// when this process exits, however it exits, as its stdin then closes.
    fn run(&mut self) {
        let log = self.dir.path().join("postgres.log");
        let server = format!(
            "{:?} -D {:?} -p {} -k {:?} -h 127.0.0.1 -c fsync=on -c synchronous_commit=on \
             -c max_connections=300 -c log_min_messages=warning >>{:?} 2>&1 &",
            self.bin.join("postgres"),
            self.data(),
            self.port,
            self.dir.path(),
            log,
        );
        let script = format!(
            "{server}\npid=$!\nread -r _\nkill -KILL $pid 2>/dev/null\nwait $pid 2>/dev/null\n"
        );
        let sh = if rustix::process::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
                "sh",
                "-c",
            ]);
            c
        } else {
            let mut c = Command::new("sh");
            c.arg("-c");
            c
        };
        let mut sh = sh;
        let child = sh
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    /// The running postmaster's pid, from `postmaster.pid`.
    fn postmaster(&self) -> Option<rustix::process::Pid> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
    }

    /// Waits until `postmaster.pid` says the server accepts connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let pid =
                std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap_or_default();
            // Line 8 is the server's state ("ready" once it accepts).
            let ready = pid.lines().nth(7).is_some_and(|s| s.trim() == "ready");
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("postgres exited ({status}): {}", self.log());
            }
            // A stale file of a killed server says "ready" too: only a live pid counts.
            let live = self.postmaster().is_some_and(alive);
            if ready && live {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The URL of database `db` (trust authentication, user `imqtt`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://imqtt@127.0.0.1:{}/{db}", self.port)
    }

    /// Makes a new, empty database and gives its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let out = command(&self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "imqtt",
            ])
            .arg(&name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Runs `sql` in database `db` with psql; its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = command(&self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "imqtt",
            ])
            .args(["-d", db, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Sends `sig` to the postmaster and waits until it is gone.
    fn signal(&mut self, sig: rustix::process::Signal) {
        if let Some(pid) = self.postmaster() {
            let _ = rustix::process::kill_process(pid, sig);
            let deadline = Instant::now() + READY_TIMEOUT;
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The shell's stdin closes; it ends.
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would. Its children (the
    /// backends) notice the postmaster is gone and exit; a new server may take
    /// the data directory only then.
    pub fn kill(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        let deadline = Instant::now() + READY_TIMEOUT;
        while backends_alive(&self.data()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (fast shutdown: open transactions are rolled back).
    pub fn stop(&mut self) {
        self.signal(rustix::process::Signal::INT);
    }

    /// Starts the server again, on the same data and port.
    pub fn restart(&mut self) {
        self.run();
    }
}

/// Whether `pid` runs (a zombie, killed and not yet reaped by the shell, does
/// not).
fn alive(pid: rustix::process::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// Whether processes still have `data` open as their working directory
/// (PostgreSQL backends run in the data directory).
fn backends_alive(data: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .any(|p| std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd == data))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The backends must be gone before the directory can be removed.
        self.kill();
    }
}
