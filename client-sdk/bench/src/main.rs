//! `imqtt-bench`: measures an MQTT broker (imqtt, mosquitto, rumqttd, ...) on the IM
//! workload of DESIGN.md section 9, and imqtt's HTTP send, sync and ack API
//! (DESIGN.md sections 5 and 6), its groups and its presence, from its own
//! process, over loopback only.
//!
//! Prints `key=value` lines on stdout, then a human summary; progress goes to stderr.
//! Exits 0 when the run completed, 1 when it timed out or anything failed (the
//! figures gathered so far are still printed), 2 on bad arguments.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
mod bench;

use bench::{
    DrainOptions, FanoutOptions, GroupOptions, JwtSecret, LatencyOptions, PresenceOptions,
    ReceiverKind, RelayOptions, SendOptions, StalledOptions, Target, drain, fanout, fsync, group,
    latency, presence, relay, send, stalled, webhook_sink,
};
use tokio::time::Instant;

/// File descriptors the bench keeps for itself beyond one per client.
const SPARE_FDS: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N users connect, subscribe their inbox and publish presence; one message each.
    Fanout,
    /// One publisher, one subscriber, M messages.
    Relay,
    /// Subscribers that never read beside ones that do; one publisher, M messages
    /// round-robin to all their inboxes.
    Stalled,
    /// HTTP: N senders, M single `POST /v1/messages` in all, each answered when
    /// durable.
    Send,
    /// HTTP: the same through `POST /v1/messages/batch`, B sends per request.
    Batch,
    /// HTTP in, MQTT out: sends at a fixed offered rate to one subscriber, timed from
    /// POST start to MQTT receipt.
    Latency,
    /// HTTP: M messages stored for an offline user, then timed while it syncs and
    /// acks them all.
    Drain,
    /// HTTP in, MQTT out: a group of `--members`, `--online` of them subscribed;
    /// batch-send throughput and deliveries/s, send-to-receipt latency at `--rate`,
    /// and the cost of adding and removing a member.
    Group,
    /// `--users` users each watched by `--contacts` others over MQTT; `--flaps` of
    /// them disconnect and reconnect, timed to each watcher's offline and online.
    Presence,
}

impl Scenario {
    /// Whether the scenario uses the HTTP API (and so needs a token secret, and
    /// starts with the fsync probe).
    fn is_http(self) -> bool {
        matches!(
            self,
            Self::Send | Self::Batch | Self::Latency | Self::Drain | Self::Group | Self::Presence
        )
    }
}

/// Load generator for MQTT brokers on the imqtt IM workload.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[arg(long, value_enum, default_value_t = Scenario::Fanout)]
    scenario: Scenario,
    /// Broker address; must be loopback ("localhost", 127.x.y.z or ::1).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The HTTP API's port on the same host (send, batch, latency, drain, group,
    /// presence).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// More MQTT ports on the same host (the other nodes of a local cluster):
    /// MQTT clients are spread over `--port` and these, by client id.
    #[arg(long, value_delimiter = ',')]
    spread_ports: Vec<u16>,
    /// fanout: number of subscribing users.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// relay, stalled, send, batch, latency, drain: number of messages; group:
    /// messages of the throughput phase.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// send, batch, latency, group: concurrent HTTP connections, one user each;
    /// drain: conversations the stored messages are spread over; presence: HTTP
    /// connections making the contacts [default: 16 send, 4 batch, 64 latency, 1
    /// drain, 4 group, 64 presence].
    #[arg(long)]
    senders: Option<usize>,
    /// batch, drain (storing), group (throughput phase): sends per batch request
    /// (at most 1000) [default: 1000; 100 group].
    #[arg(long)]
    batch_size: Option<usize>,
    /// latency, group (latency phase): offered rate, messages per second [default:
    /// 1000 latency, 100 group].
    #[arg(long)]
    rate: Option<f64>,
    /// group: members besides the owner `go` (users `gm{i}`).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// group: members connected over MQTT, subscribed to the group (`gm0` ..).
    #[arg(long, default_value_t = 200)]
    online: usize,
    /// group: seconds the latency phase offers `--rate`.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// group: add-then-remove cycles of a fresh member in the membership phase.
    #[arg(long, default_value_t = 200)]
    cycles: usize,
    /// presence: users (`p{i}`), each one MQTT connection.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// presence: watchers of each user: `p{i}` lets `p{i+1}` .. `p{i+C}` (mod
    /// users) see its presence, and each watcher subscribes to those it may see.
    #[arg(long, default_value_t = 20)]
    contacts: usize,
    /// presence: users, spread over all of them, that disconnect and reconnect,
    /// one after another.
    #[arg(long, default_value_t = 200)]
    flaps: usize,
    /// drain: `limit` of each `GET /v1/sync`.
    #[arg(long, default_value_t = 1000)]
    sync_limit: u32,
    /// HTTP scenarios: a directory on the filesystem of the server's data
    /// directory, where the fsync probe writes its temporary file [default: the
    /// system temp dir].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP scenarios: how long the fsync probe runs, seconds (0 skips it).
    #[arg(long, default_value_t = 1.0)]
    fsync_probe_secs: f64,
    /// stalled: subscribers that never read after subscribing.
    #[arg(long, default_value_t = 20)]
    stalled: usize,
    /// stalled: subscribers that read and acknowledge everything.
    #[arg(long, default_value_t = 10)]
    healthy: usize,
    /// stalled: payload bytes per message (at least 16: send time, sequence number).
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// HS256 secret: clients then log in as username uid, password a JWT. Without
    /// it they send no credentials.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// The broker's pid, to report its RSS (fanout: per client) and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The whole run stops after this long, printing what it has, exit code 1.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Give up waiting for deliveries when none arrives for this long after the
    /// publisher has every PUBACK (the broker acknowledged messages it then lost);
    /// presence: how long a change may take to reach every watcher.
    #[arg(long, default_value_t = 10)]
    stall_secs: u64,
    /// Unacknowledged QoS 1 messages in flight [default: 1000 fanout, 100 relay and
    /// stalled; relay at QoS 0: 500 messages sent and not yet received].
    #[arg(long)]
    window: Option<usize>,
    /// fanout: clients per timed connect block.
    #[arg(long, default_value_t = 1000)]
    block_size: usize,
    /// fanout, group, presence: connects in progress at once. Keep it within the broker's listen
    /// backlog (mosquitto's is 100): past it, SYNs are dropped and retried after 1 s.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Keepalive announced in CONNECT, seconds; subscribers ping at half of it.
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
    /// Longest one client may wait for one reply (CONNACK, SUBACK, PUBACK, an HTTP
    /// answer).
    #[arg(long, default_value_t = 30)]
    step_timeout_secs: u64,
    /// Runtime worker threads of the bench (the broker shares the machine).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// fanout, stalled: a `role` claim in the subscribers' tokens (e.g. admin).
    #[arg(long)]
    client_role: Option<String>,
    /// fanout: subscribers do not publish their retained presence.
    #[arg(long)]
    no_presence: bool,
    /// fanout: the first topic level of the subscribers' retained message
    /// (`public` makes one that imqtt keeps in its store).
    #[arg(long, default_value = "presence")]
    retained_root: String,
    /// send, batch: every message to a recipient of its own, so each starts a
    /// conversation (a backend notifying a population), instead of fixed pairs.
    #[arg(long)]
    distinct: bool,
    /// relay: the publishes' QoS, 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// send, batch: a webhook receiver on 127.0.0.1:PORT (configure the server's
    /// webhook to post there): after the sends it waits for every event and prints
    /// events/s and commit-to-POST latency.
    #[arg(long)]
    webhook_sink: Option<u16>,
    /// latency: the recipient's client: the bench's own reader, a plain rumqttc
    /// subscriber, or the client library (dedupe, ordering, acks).
    #[arg(long, value_enum, default_value_t = ReceiverKind::Bench)]
    receiver: ReceiverKind,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("imqtt-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenario and prints its result; `Ok(false)` when it is incomplete.
fn run(args: Args) -> anyhow::Result<bool> {
    let server = SocketAddr::new(loopback(&args.host)?, args.port);
    let fds = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if args.scenario == Scenario::Stalled && args.stalled + args.healthy == 0 {
        bail!("--stalled and --healthy cannot both be 0: nobody to send to");
    }
    let senders = args.senders.unwrap_or(match args.scenario {
        Scenario::Batch | Scenario::Group => 4,
        Scenario::Latency | Scenario::Presence => 64,
        Scenario::Drain => 1,
        _ => 16,
    });
    let batch_size = args.batch_size.unwrap_or(match args.scenario {
        Scenario::Group => 100,
        _ => 1000,
    });
    let rate = args.rate.unwrap_or(match args.scenario {
        Scenario::Group => 100.0,
        _ => 1000.0,
    });
    let sockets = match args.scenario {
        Scenario::Fanout => Some(args.clients),
        Scenario::Group => Some(args.online + senders + 1),
        Scenario::Presence => Some(args.users + senders),
        _ => None,
    };
    if let Some(sockets) = sockets
        && sockets as u64 + SPARE_FDS > fds
    {
        bail!(
            "{sockets} sockets need about {} open files, the limit is {fds}",
            sockets as u64 + SPARE_FDS
        );
    }
    if args.scenario == Scenario::Group {
        if args.members == 0 || args.online > args.members || senders > args.members {
            bail!("--online and --senders must be at most --members, which must be at least 1");
        }
        if !(args.latency_secs.is_finite() && args.latency_secs > 0.0) {
            bail!("--latency-secs must be more than 0");
        }
    }
    if args.scenario == Scenario::Presence
        && !(args.contacts >= 1 && args.contacts < args.users && args.flaps <= args.users)
    {
        bail!("--contacts must be 1 to --users minus 1, and --flaps at most --users");
    }
    if args.scenario.is_http() {
        if args.jwt_secret.is_none() {
            bail!("--jwt-secret is needed for the HTTP scenarios (bearer tokens)");
        }
        if senders == 0 {
            bail!("--senders must be at least 1");
        }
        if !(1..=1000).contains(&batch_size) {
            bail!("--batch-size must be 1 to 1000");
        }
        if !(rate.is_finite() && rate >= 1.0) {
            bail!("--rate must be at least 1 message per second");
        }
    }
    let http_base = format!("http://{}", SocketAddr::new(server.ip(), args.http_port));
    let target = Target {
        server,
        spread: args
            .spread_ports
            .iter()
            .map(|p| SocketAddr::new(server.ip(), *p))
            .collect(),
        jwt_secret: args.jwt_secret.map(JwtSecret::new),
        keep_alive: args.keep_alive,
        step_timeout: Duration::from_secs(args.step_timeout_secs),
        recv_buffer: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    println!("broker={server}");
    if !args.spread_ports.is_empty() {
        println!("spread_ports={:?}", args.spread_ports);
    }
    println!("nofile_limit={fds}");
    println!("bench_threads={}", args.threads.max(1));
    if args.scenario.is_http() {
        println!("http={http_base}");
        if args.fsync_probe_secs > 0.0 {
            let dir = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
            let probe = Duration::from_secs_f64(args.fsync_probe_secs);
            let rate = fsync::probe(&dir, probe)
                .with_context(|| format!("fsync probe in {}", dir.display()))?;
            println!("fsync_dir={}", dir.display());
            println!("fsync_per_sec={:.0}", rate.per_sec());
        }
    }
    let complete = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
        let stall = Duration::from_secs(args.stall_secs);
        match args.scenario {
            Scenario::Fanout => {
                let opts = FanoutOptions {
                    clients: args.clients,
                    block_size: args.block_size,
                    connect_concurrency: args.connect_concurrency,
                    window: args.window.unwrap_or(1000),
                    presence: !args.no_presence,
                    retained_root: args.retained_root.clone(),
                    client_role: args.client_role,
                    server_pid: args.server_pid,
                    deadline,
                    stall,
                };
                let result = fanout::run(target, opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
            Scenario::Relay => {
                let opts = RelayOptions {
                    messages: args.messages,
                    window: args.window.unwrap_or(if args.qos == 0 { 500 } else { 100 }),
                    qos: args.qos,
                    deadline,
                    stall,
                };
                let result = relay::run(target, opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
            Scenario::Stalled => {
                let opts = StalledOptions {
                    stalled: args.stalled,
                    healthy: args.healthy,
                    messages: args.messages,
                    payload_bytes: args.payload_bytes,
                    window: args.window.unwrap_or(100),
                    client_role: args.client_role,
                    server_pid: args.server_pid,
                    deadline,
                    stall,
                };
                let result = stalled::run(target, opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
            Scenario::Send | Scenario::Batch => {
                let opts = SendOptions {
                    base: http_base,
                    secret: target.jwt_secret.clone().expect("checked above"),
                    senders,
                    messages: args.messages,
                    batch: (args.scenario == Scenario::Batch).then_some(batch_size),
                    distinct: args.distinct,
                    request_timeout: target.step_timeout,
                    server_pid: args.server_pid,
                    deadline,
                };
                let sink = match args.webhook_sink {
                    Some(port) => match webhook_sink::Sink::start(port).await {
                        Ok(sink) => Some(sink),
                        Err(e) => {
                            eprintln!("imqtt-bench: webhook sink on port {port}: {e}");
                            return false;
                        }
                    },
                    None => None,
                };
                let result = send::run(opts).await;
                let mut lines = result.lines();
                if let Some(sink) = &sink {
                    sink.wait_for(result.tally.stored as u64, stall).await;
                    lines.extend(sink.lines());
                }
                print(&lines, &result.summary());
                result.complete()
            }
            Scenario::Latency => {
                let opts = LatencyOptions {
                    base: http_base,
                    secret: target.jwt_secret.clone().expect("checked above"),
                    rate,
                    messages: args.messages,
                    senders,
                    request_timeout: target.step_timeout,
                    server_pid: args.server_pid,
                    deadline,
                    stall,
                    receiver: args.receiver,
                };
                let result = latency::run(target, opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
            Scenario::Drain => {
                let opts = DrainOptions {
                    base: http_base,
                    secret: target.jwt_secret.clone().expect("checked above"),
                    messages: args.messages,
                    conversations: senders,
                    batch: batch_size,
                    limit: args.sync_limit,
                    request_timeout: target.step_timeout,
                    server_pid: args.server_pid,
                    deadline,
                };
                let result = drain::run(opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
            Scenario::Group => {
                let opts = GroupOptions {
                    base: http_base,
                    secret: target.jwt_secret.clone().expect("checked above"),
                    members: args.members,
                    online: args.online,
                    senders,
                    messages: args.messages,
                    batch: batch_size,
                    rate,
                    latency_for: Duration::from_secs_f64(args.latency_secs),
                    cycles: args.cycles,
                    connect_concurrency: args.connect_concurrency,
                    request_timeout: target.step_timeout,
                    server_pid: args.server_pid,
                    deadline,
                    stall,
                };
                let result = group::run(target, opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
            Scenario::Presence => {
                let opts = PresenceOptions {
                    base: http_base,
                    secret: target.jwt_secret.clone().expect("checked above"),
                    users: args.users,
                    contacts: args.contacts,
                    flaps: args.flaps,
                    senders,
                    connect_concurrency: args.connect_concurrency,
                    request_timeout: target.step_timeout,
                    server_pid: args.server_pid,
                    deadline,
                    stall,
                };
                let result = presence::run(target, opts).await;
                print(&result.lines(), &result.summary());
                result.complete()
            }
        }
    });
    // Thousands of idle subscriber tasks are still parked: drop them without waiting.
    runtime.shutdown_background();
    Ok(complete)
}

/// The broker's address, refused unless it is a loopback one.
fn loopback(host: &str) -> anyhow::Result<IpAddr> {
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .with_context(|| format!("--host {host}: not an IP address"))?
    };
    if !ip.is_loopback() {
        bail!("--host {host}: only loopback targets are allowed");
    }
    Ok(ip)
}

fn print(lines: &[String], summary: &str) {
    for line in lines {
        println!("{line}");
    }
    println!();
    println!("{summary}");
}
