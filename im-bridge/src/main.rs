//! The `imqtt` binary: run the server, or mint a token from the config's secret.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use broker::auth::{Role, TokenVerifier};
use broker::units::Duration;
use clap::{Parser, Subcommand, ValueEnum};
use im_bridge::config::{Config, DEFAULT_CONFIG, LogFormat};
use im_bridge::server::Server;
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
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imqtt: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Token { uid, role, ttl }) => mint(&config, &uid, role.into(), ttl),
        None => serve(config, cli.print_addrs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imqtt: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn mint(
    (config, _): &(Config, String),
    uid: &str,
    role: Role,
    ttl: Option<Duration>,
) -> anyhow::Result<()> {
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

fn serve((config, origin): (Config, String), print_addrs: bool) -> anyhow::Result<()> {
    init_tracing(&config);
    tracing::info!(config = %origin, "starting imqtt {}", env!("CARGO_PKG_VERSION"));
    if config.auth.uses_sample_secret() {
        tracing::warn!(
            "DEVELOPMENT PROFILE: auth.jwt_secret is the published sample secret \
             (auth.allow_insecure_default = true), so anyone can mint tokens; \
             set IMQTT_AUTH__JWT_SECRET for any real deployment"
        );
    }
    // Every MQTT connection is a file descriptor: use all the hard limit allows
    // (service managers often leave the soft limit at 1024).
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        let addrs = server.addrs();
        for (listener, addr) in &addrs {
            tracing::info!(listener, %addr, "listening");
        }
        if print_addrs {
            let mut out = std::io::stdout().lock();
            for (listener, addr) in &addrs {
                writeln!(out, "{listener}={addr}")?;
            }
            out.flush()?;
        }
        server.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
