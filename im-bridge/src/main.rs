//! The `imqtt` binary: run the server, or mint a token from the config's secret.
//!
//! Serving goes: install the SIGTERM/SIGINT handlers, load the config, open the
//! store and bind every listener, start serving, announce the addresses, wait for
//! a signal, drain and flush. Exit codes: 0 after a clean stop (also when the signal
//! came during startup), 1 on a startup or runtime error, 2 on a bad config.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use broker::auth::{Algorithm, Role, TokenVerifier};
use broker::units::Duration;
use clap::{Parser, Subcommand, ValueEnum};
use im_bridge::config::{Config, DEFAULT_CONFIG, LogFormat};
use im_bridge::server::Server;
use im_bridge::shutdown::Shutdown;
use tracing_subscriber::EnvFilter;

/// jemalloc, whose background thread hands freed pages back to the OS within about
/// a second (`.cargo/config.toml` sets the decay); glibc's malloc kept the peak RSS
/// of 5,000 connections after they had all closed.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The default config path, relative to the working directory.
const DEFAULT_CONFIG_PATH: &str = "config/imqtt.toml";

#[derive(Parser, Debug)]
#[command(
    name = "imqtt",
    version,
    about = "Instant-messaging push server over MQTT"
)]
struct Cli {
    /// Config file (default: config/imqtt.toml, else the embedded default).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print `mqtt.tcp=HOST:PORT`, `mqtt.ws=...`, `http=...` on stdout once bound.
    #[arg(long)]
    print_addrs: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mint a token for UID, signed with the config's secret.
    Token {
        /// The user id (the token's `sub`).
        uid: String,
        /// The token's role.
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
        /// Lifetime, e.g. 30m, 1h, 7d (default: auth.token_ttl).
        #[arg(long)]
        ttl: Option<Duration>,
    },
    /// Work on the store the config names.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Copy the embedded store (store.path; the server stopped) into an empty
    /// PostgreSQL database, with everything in it.
    Copy {
        /// The database: postgres://user:password@host:port/database.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    User,
    Service,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::User => Role::User,
            RoleArg::Service => Role::Service,
            RoleArg::Admin => Role::Admin,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token { uid, role, ttl }) => match load_config(cli.config.as_deref()) {
            Ok((config, _)) => exit_code(mint(&config, &uid, role.into(), ttl)),
            Err(e) => config_failed(&e),
        },
        Some(Command::Store {
            command: StoreCommand::Copy { to },
        }) => match load_config(cli.config.as_deref()) {
            Ok((config, _)) => exit_code(copy_store(&config, &to)),
            Err(e) => config_failed(&e),
        },
        None => serve(cli.config.as_deref(), cli.print_addrs),
    }
}

/// `imqtt store copy --to URL`: copies, then says how many of each it copied.
fn copy_store(config: &Config, url: &str) -> anyhow::Result<()> {
    init_tracing(config);
    let counts = im_bridge::copy::copy(config, url)?;
    println!(
        "copied {} into {}",
        config.store.path.display(),
        im_bridge::config::DatabaseUrl::new(url).redacted()
    );
    for (kind, n) in counts {
        println!("{n} {kind}");
    }
    Ok(())
}

/// Runs the server. A SIGTERM or Ctrl-C at any step of startup, as while serving,
/// ends in a clean stop (whatever was opened is flushed and closed) and exit 0.
fn serve(config_path: Option<&Path>, print_addrs: bool) -> ExitCode {
    // Before any thread exists: a signal from now on waits for its handler.
    if let Err(e) = im_bridge::shutdown::hold_signals() {
        return exit_code(Err(
            anyhow::Error::new(e).context("cannot block SIGTERM and SIGINT")
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime");
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return exit_code(Err(e)),
    };
    runtime.block_on(async {
        // First of all, before the store is opened or any port is bound: from here
        // on a signal is a request to stop, not the default instant death.
        let shutdown = match Shutdown::on_signals().context("cannot listen for SIGTERM and SIGINT")
        {
            Ok(s) => s,
            Err(e) => return exit_code(Err(e)),
        };
        match load_config(config_path) {
            Ok(config) => exit_code(run(config, shutdown, print_addrs).await),
            Err(e) => config_failed(&e),
        }
    })
}

/// Opens and binds, serves, announces, waits for the stop request, then drains and
/// flushes. Each step first looks whether a stop was already requested.
async fn run(
    (config, origin): (Config, String),
    mut shutdown: Shutdown,
    print_addrs: bool,
) -> anyhow::Result<()> {
    init_tracing(&config);
    tracing::info!(config = %origin, "starting imqtt {}", env!("CARGO_PKG_VERSION"));
    if config.auth.uses_sample_secret() {
        tracing::warn!(
            "DEVELOPMENT PROFILE: auth.jwt_secret is the published sample secret \
             (auth.allow_insecure_default = true), so anyone can mint tokens; \
             set IMQTT_AUTH__JWT_SECRET for any real deployment"
        );
    }
    if config.auth.accounts && config.auth.algorithm != Algorithm::HS256 {
        tracing::warn!(
            algorithm = ?config.auth.algorithm,
            "auth.accounts is on, but the server mints tokens only with HS256: \
             POST /v1/accounts and /v1/tokens stay off (set auth.accounts = false)"
        );
    }
    raise_open_file_limit(&config);
    if shutdown.is_requested() {
        tracing::info!("stopped before opening the store");
        return Ok(());
    }
    let server = Server::bind(config).await?;
    if shutdown.is_requested() {
        server.close().await?;
        return Ok(());
    }
    let serving = server.serve();
    // Announced only now that every listener serves and /readyz answers 200.
    if let Err(e) = announce(serving.addrs(), print_addrs) {
        serving.stop().await?;
        return Err(e.context("cannot print the addresses on stdout"));
    }
    shutdown.requested().await;
    serving.stop().await?;
    Ok(())
}

/// Logs one line per listener and "ready", then prints the `--print-addrs` lines
/// (last, so that whoever reads them finds the log lines already written).
fn announce(addrs: &[(&str, SocketAddr)], print_addrs: bool) -> anyhow::Result<()> {
    for (listener, addr) in addrs {
        tracing::info!(listener, %addr, "listening");
    }
    tracing::info!("ready");
    if print_addrs {
        let mut out = std::io::stdout().lock();
        for (listener, addr) in addrs {
            writeln!(out, "{listener}={addr}")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Exit 0, or 1 with the error on stderr.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imqtt: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Exit 2 with every config problem on stderr.
fn config_failed(e: &anyhow::Error) -> ExitCode {
    eprintln!("imqtt: {}", describe(e));
    ExitCode::from(2)
}

/// The error's message, then each cause that the message so far does not already
/// quote, on one line (a config error lists its problems one per line): errors from other crates often both print their cause and return it as
/// their `source()`, and `{:#}` would say it twice.
fn describe(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        ),
        None => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
            Ok(text) => (text, DEFAULT_CONFIG_PATH.to_owned()),
            Err(_) => (DEFAULT_CONFIG.to_owned(), "embedded default".to_owned()),
        },
    };
    let config = Config::load(&text, &origin, std::env::vars())?;
    Ok((config, origin))
}

fn mint(config: &Config, uid: &str, role: Role, ttl: Option<Duration>) -> anyhow::Result<()> {
    let verifier = TokenVerifier::new(&config.auth)?;
    let ttl = ttl.unwrap_or(config.auth.token_ttl).get();
    let token = verifier.mint(uid, role, ttl)?;
    println!("{token}");
    Ok(())
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Every MQTT connection is a file descriptor: use all the hard limit allows
/// (service managers often leave the soft limit at 1024).
fn raise_open_file_limit(config: &Config) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(fds) => {
            tracing::info!(open_files = fds, "file descriptor limit");
            if (fds as usize) < config.mqtt.max_connections {
                tracing::warn!(
                    open_files = fds,
                    max_connections = config.mqtt.max_connections,
                    "the open-file limit is below mqtt.max_connections; raise it (ulimit -Hn) to reach that many clients"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
