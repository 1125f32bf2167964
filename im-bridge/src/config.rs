//! The whole server config: typed sections loaded once at startup from one TOML file
//! plus `IMQTT_SECTION__KEY` environment overrides.
//!
//! Every key has a default. Loading reports every unknown key and bad value at once,
//! each naming its key (and the environment variable, when it came from one), so an
//! operator fixes a config in one round.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use broker::auth::AuthConfig;
use broker::config::MqttConfig;
use broker::units::{ByteSize, Duration};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// The embedded default config (`config/imqtt.toml` at build time).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/imqtt.toml");

/// Prefix of environment overrides: `IMQTT_MQTT__MAX_CONNECTIONS=5000`.
pub const ENV_PREFIX: &str = "IMQTT_";

/// The server config, one field per TOML section.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `[mqtt]`: listeners, limits, extra ACL rules.
    pub mqtt: MqttConfig,
    /// `[http]`: the HTTP API listener.
    pub http: HttpConfig,
    /// `[auth]`: token verification and built-in accounts.
    pub auth: AuthConfig,
    /// `[store]`: the durable store.
    pub store: StoreConfig,
    /// `[delivery]`: how messages reach MQTT.
    pub delivery: DeliveryConfig,
    /// `[limits]`: per-request and per-user limits.
    pub limits: LimitsConfig,
    /// `[log]`: log level and format.
    pub log: LogConfig,
    /// `[cluster]`: the other nodes, over NATS.
    pub cluster: ClusterConfig,
    /// `[[webhooks]]`: the receivers of offline pushes and other events.
    pub webhooks: Vec<WebhookConfig>,
}

/// What a webhook receives (`events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum WebhookEvent {
    /// A stored message has a recipient with no device online.
    #[serde(rename = "message.offline")]
    MessageOffline,
    /// Every stored message.
    #[serde(rename = "message.stored")]
    MessageStored,
    /// A user's first device came online.
    #[serde(rename = "user.online")]
    UserOnline,
    /// A user's last device went offline.
    #[serde(rename = "user.offline")]
    UserOffline,
}

/// One `[[webhooks]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (http or https). It also names the webhook's queue.
    pub url: String,
    /// The HMAC-SHA256 key of the signature.
    pub secret: String,
    /// The events it wants.
    pub events: Vec<WebhookEvent>,
    /// How long an undelivered event is retried before it is dropped (counted).
    #[serde(default = "WebhookConfig::default_max_age")]
    pub max_age: Duration,
    /// Events queued at most; past it the oldest are dropped (counted).
    #[serde(default = "WebhookConfig::default_max_queued")]
    pub max_queued: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .field("max_age", &self.max_age)
            .field("max_queued", &self.max_queued)
            .finish()
    }
}

impl WebhookConfig {
    fn default_max_age() -> Duration {
        Duration::secs(24 * 3600)
    }
    fn default_max_queued() -> usize {
        1_000_000
    }

    /// Whether it wants `e`.
    pub fn wants(&self, e: WebhookEvent) -> bool {
        self.events.contains(&e)
    }

    fn validate(&self, i: usize, errs: &mut Vec<(String, String)>) {
        let url_ok = (self.url.starts_with("http://") || self.url.starts_with("https://"))
            && reqwest::Url::parse(&self.url).is_ok_and(|u| u.host().is_some());
        if !url_ok {
            errs.push((
                format!("webhooks[{i}].url"),
                format!("{:?} is not an http(s) URL", self.url),
            ));
        }
        if self.secret.is_empty() {
            errs.push((
                format!("webhooks[{i}].secret"),
                "is required (the signature's key)".to_owned(),
            ));
        }
        if self.events.is_empty() {
            errs.push((
                format!("webhooks[{i}].events"),
                "name at least one of message.offline, message.stored, user.online, user.offline"
                    .to_owned(),
            ));
        }
        if self.max_age.get().is_zero() {
            errs.push((
                format!("webhooks[{i}].max_age"),
                "must be more than 0".to_owned(),
            ));
        }
        if self.max_queued == 0 {
            errs.push((
                format!("webhooks[{i}].max_queued"),
                "must be at least 1".to_owned(),
            ));
        }
    }
}

/// The `[cluster]` section: empty `nats` runs a single node.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated (`nats://host:4222`); `""`: no cluster.
    pub nats: String,
    /// This node's name, unique in the cluster; `""`: hostname and process id.
    pub node: String,
    /// How often a node announces itself; one silent for three is dead.
    pub heartbeat: Duration,
    /// The start of every NATS subject this cluster uses.
    pub subject_prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: String::new(),
            node: String::new(),
            heartbeat: Duration::secs(2),
            subject_prefix: "imqtt".to_owned(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.nats.trim().is_empty()
    }

    /// The NATS server addresses, as written.
    pub fn servers(&self) -> Vec<String> {
        self.nats
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks that need more than one key; each problem names the key.
    pub fn validate(&self, store: &StoreConfig) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if !self.enabled() {
            return errs;
        }
        if store.engine == Engine::Sled {
            errs.push((
                "cluster.nats",
                "needs store.engine = \"postgres\": with store.engine = \"sled\" the store is one process's, and nodes must share one".to_owned(),
            ));
        }
        for url in self.servers() {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                errs.push((
                    "cluster.nats",
                    format!("{url:?} is not a NATS address (nats://host:port): {e}"),
                ));
            }
        }
        if self.heartbeat.get().is_zero() {
            errs.push(("cluster.heartbeat", "must be more than 0".to_owned()));
        }
        if !crate::cluster::subjects::valid_prefix(&self.subject_prefix) {
            errs.push((
                "cluster.subject_prefix",
                "must be NATS subject tokens (letters, digits, - and _, separated by dots)"
                    .to_owned(),
            ));
        }
        if !self.node.is_empty() && !crate::cluster::subjects::valid_node(&self.node) {
            errs.push((
                "cluster.node",
                "may hold letters, digits, -, _ and . only (at most 64)".to_owned(),
            ));
        }
        errs
    }
}

/// The `[http]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTP API listener (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest request body; larger ones get 413.
    pub max_body: ByteSize,
    /// Time a request may take before it gets 503.
    pub request_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Web origins (`https://app.example`) whose pages may call `/v1` from a
    /// browser (CORS); `["*"]`: any origin. Empty: the same origin only.
    pub cors_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body: ByteSize(4 << 20),
            request_timeout: Duration::secs(30),
            shutdown_grace: Duration::secs(10),
            cors_origins: Vec::new(),
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        let any = self.cors_origins.iter().any(|o| o == "*");
        if any && self.cors_origins.len() > 1 {
            errs.push((
                "http.cors_origins",
                "\"*\" allows every origin and stands alone".to_owned(),
            ));
        }
        for origin in self.cors_origins.iter().filter(|o| *o != "*") {
            if !is_origin(origin) {
                errs.push((
                    "http.cors_origins",
                    format!(
                        "{origin:?} is not an origin: scheme://host[:port], http or https, \
                         without a path (https://app.example)"
                    ),
                ));
            }
        }
        errs
    }
}

/// Whether `s` is a web origin as browsers send it: `http(s)://host[:port]`,
/// lower case, nothing after the authority.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.[]:".contains(c));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}

/// How long stored messages are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Keep every message (the default).
    #[default]
    Forever,
    /// Delete messages older than this.
    For(Duration),
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) if s == "forever" || s.is_empty() => Ok(Retention::Forever),
            Raw::Text(s) => s
                .parse()
                .map(Retention::For)
                .map_err(|e| serde::de::Error::custom(format!("{e}, or \"forever\""))),
            Raw::Secs(n) => Ok(Retention::For(Duration::secs(n))),
        }
    }
}

/// `store.engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Embedded, in `store.path` (the default).
    #[default]
    Sled,
    /// A PostgreSQL database at `store.url`, which several imqtt processes may
    /// share.
    Postgres,
}

/// `store.url`: a PostgreSQL connection URL. Its password never reaches a log:
/// `Debug` and [`DatabaseUrl::redacted`] print it as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// A URL as written.
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The URL, password included (for connecting only).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL with its password, if any, replaced by `<redacted>`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => format!(
                    "{}{}:<redacted>{}",
                    &url[..scheme_end],
                    &authority[..colon],
                    &rest[at..]
                ),
                None => url.clone(),
            },
            None => url.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// The `[store]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sled` (embedded) or `postgres`.
    pub engine: Engine,
    /// The sled directory, created if missing.
    pub path: PathBuf,
    /// The PostgreSQL database (`store.engine = "postgres"`).
    pub url: DatabaseUrl,
    /// Connections to PostgreSQL this process holds at most.
    pub pool: usize,
    /// How long messages are kept: `"forever"` or a duration such as `"90d"`,
    /// after which a background sweep deletes them.
    pub retention: Retention,
    /// sled's page cache size.
    pub cache_capacity: ByteSize,
    /// Longest a commit waits for others to share its flush (group commit).
    /// Reserved: commits share flushes by batching whatever arrived while the last
    /// flush ran, without waiting.
    pub group_commit_delay: Duration,
    /// When a message write is made durable: before the answer (`always`), or by
    /// a flush every `flush_interval` (`interval`: a crash may lose up to one
    /// interval of answered sends).
    pub flush: FlushMode,
    /// How often `flush = "interval"` flushes.
    pub flush_interval: Duration,
}

impl StoreConfig {
    /// Checks that need more than one key; each problem names the key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if self.engine == Engine::Postgres && self.url.is_empty() {
            errs.push((
                "store.url",
                "is required with store.engine = \"postgres\" (postgres://user:password@host:port/database)"
                    .to_owned(),
            ));
        }
        if self.engine == Engine::Postgres
            && !self.url.is_empty()
            && !(self.url.expose().starts_with("postgres://")
                || self.url.expose().starts_with("postgresql://"))
        {
            errs.push((
                "store.url",
                "must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        if self.pool == 0 {
            errs.push(("store.pool", "must be at least 1".to_owned()));
        }
        errs
    }
}

/// `store.flush`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Every commit is flushed before its answer (the default).
    #[default]
    Always,
    /// Flushed every `store.flush_interval`.
    Interval,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: Engine::Sled,
            path: PathBuf::from("data"),
            url: DatabaseUrl::default(),
            pool: 16,
            retention: Retention::Forever,
            cache_capacity: ByteSize(64 << 20),
            group_commit_delay: Duration(std::time::Duration::from_millis(1)),
            flush: FlushMode::Always,
            flush_interval: Duration(std::time::Duration::from_millis(100)),
        }
    }
}

/// The `[delivery]` section: how stored messages reach MQTT.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Envelopes larger than this are announced by a sync hint instead of sent inline.
    pub inline_max_bytes: ByteSize,
    /// How long `(sender, client_msg_id)` keeps a retry idempotent.
    pub idempotency_ttl: Duration,
    /// Whether a direct conversation's reader tells the other party how far it
    /// has read (`{"type":"read"}` events).
    pub read_receipts: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            inline_max_bytes: ByteSize(32 << 10),
            idempotency_ttl: Duration::secs(24 * 3600),
            read_receipts: true,
        }
    }
}

/// The `[limits]` section. `max_body_bytes` bounds each sent message's body;
/// `rate_per_user` and `rate_burst` build the send limiter
/// (`ratelimit::RateLimiter`, in `AppState::send_limit`) that every user send
/// path charges; `max_group_size` bounds a group's members.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message body (the encoded JSON `body`).
    pub max_body_bytes: ByteSize,
    /// Messages a user may send per second, sustained (0 = unlimited). Each send
    /// costs one token of the user's bucket, a batch of N sends N; a send that
    /// finds too few tokens gets 429 with `Retry-After`.
    pub rate_per_user: u32,
    /// The size of each user's bucket: how many messages a user idle long enough
    /// may send at once (the bucket refills at `rate_per_user`). A batch of more
    /// sends than this can never pass and gets 413. At least 1 when
    /// `rate_per_user` is set.
    pub rate_burst: u32,
    /// Members a group may have.
    pub max_group_size: usize,
    /// How long after sending a sender may edit its message.
    pub edit_window: Duration,
    /// How long after sending a sender may recall its message (a group's owner
    /// and admins recall any of the group's messages at any time).
    pub recall_window: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: ByteSize(64 << 10),
            rate_per_user: 100,
            rate_burst: 200,
            max_group_size: 10_000,
            edit_window: Duration::secs(24 * 3600),
            recall_window: Duration::secs(24 * 3600),
        }
    }
}

impl LimitsConfig {
    /// Checks that need more than one key; each problem names the key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errs = Vec::new();
        if self.rate_per_user > 0 && self.rate_burst == 0 {
            errs.push((
                "limits.rate_burst",
                "must be at least 1 when limits.rate_per_user is set (0 would refuse every send)"
                    .to_owned(),
            ));
        }
        errs
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[log]` section. `RUST_LOG`, when set, overrides `level`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `"info"` or `"info,broker=debug"`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// One problem found while loading the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key, e.g. `mqtt.max_connections`.
    pub key: String,
    /// The environment variable the value came from, if any.
    pub env: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(var) => write!(f, "{} (from {var}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in a config, reported together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// Where the config came from (a path or "embedded default").
    pub origin: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid config {} ({n} problem{}):",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Where a value came from, for error messages.
type EnvOrigins = Vec<(Vec<String>, String, String)>;

impl Config {
    /// Parses `text` (TOML) and applies the `IMQTT_SECTION__KEY` overrides in `env`.
    /// `origin` names the source in error messages.
    pub fn load(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut root: Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigErrors {
                    origin: origin.to_owned(),
                    errors: vec![ConfigError {
                        key: "(file)".to_owned(),
                        env: None,
                        message: e.to_string().trim().to_owned(),
                    }],
                });
            }
        };
        let env_origins = apply_env(&mut root, env, &mut errors);
        let mut loader = Loader {
            root,
            env: env_origins,
            errors,
        };
        let cfg = Config {
            mqtt: loader.section("mqtt"),
            http: loader.section("http"),
            auth: loader.section("auth"),
            store: loader.section("store"),
            delivery: loader.section("delivery"),
            limits: loader.section("limits"),
            log: loader.section("log"),
            cluster: loader.section("cluster"),
            webhooks: loader.webhooks(),
        };
        let Loader {
            root, mut errors, ..
        } = loader;
        for key in root.keys() {
            errors.push(ConfigError {
                key: key.clone(),
                env: None,
                message: "unknown section (expected one of mqtt, http, auth, store, delivery, limits, log, cluster, webhooks)".to_owned(),
            });
        }
        // Cross-key checks run on sections whose keys all parsed, so that a value
        // that fell back to its default cannot cause a misleading second error.
        let clean = |section: &str| {
            !errors
                .iter()
                .any(|e| e.key == section || e.key.starts_with(&format!("{section}.")))
        };
        let mut checks = Vec::new();
        if clean("mqtt") {
            checks.extend(cfg.mqtt.validate());
        }
        if clean("auth") {
            checks.extend(cfg.auth.validate());
        }
        if clean("limits") {
            checks.extend(cfg.limits.validate());
            checks.extend(cfg.store.validate());
        }
        if clean("cluster") && clean("store") {
            checks.extend(cfg.cluster.validate(&cfg.store));
        }
        if clean("http") {
            checks.extend(cfg.http.validate());
        }
        let mut hooks = Vec::new();
        if clean("webhooks") {
            for (i, w) in cfg.webhooks.iter().enumerate() {
                w.validate(i, &mut hooks);
                if cfg.webhooks[..i].iter().any(|o| o.url == w.url) {
                    hooks.push((
                        format!("webhooks[{i}].url"),
                        "appears twice (a url names its webhook's queue)".to_owned(),
                    ));
                }
            }
        }
        if clean("http") && clean("limits") && cfg.http.max_body.0 < cfg.limits.max_body_bytes.0 {
            checks.push((
                "http.max_body",
                "must be at least limits.max_body_bytes".to_owned(),
            ));
        }
        errors.extend(checks.into_iter().map(|(key, message)| ConfigError {
            key: key.to_owned(),
            env: None,
            message,
        }));
        errors.extend(hooks.into_iter().map(|(key, message)| ConfigError {
            key,
            env: None,
            message,
        }));
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors {
                origin: origin.to_owned(),
                errors,
            })
        }
    }
}

/// Writes `IMQTT_A__B=v` into `root` as `a.b = v` and remembers where each came from.
/// A value that parses as a TOML literal (`5000`, `true`) is taken as such; anything
/// else is a string, so `IMQTT_MQTT__TCP=127.0.0.1:0` needs no quoting.
fn apply_env(
    root: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
    errors: &mut Vec<ConfigError>,
) -> EnvOrigins {
    let mut origins = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            errors.push(ConfigError {
                key: path.join("."),
                env: Some(var),
                message: "expected IMQTT_SECTION__KEY".to_owned(),
            });
            continue;
        }
        let value = format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.clone()));
        if let Err(message) = insert_path(root, &path, value) {
            errors.push(ConfigError {
                key: path.join("."),
                env: Some(var),
                message,
            });
            continue;
        }
        origins.push((path, var, raw));
    }
    origins
}

fn insert_path(root: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

struct Loader {
    root: Table,
    env: EnvOrigins,
    errors: Vec<ConfigError>,
}

impl Loader {
    /// The `[[webhooks]]` entries, each whole or reported.
    fn webhooks(&mut self) -> Vec<WebhookConfig> {
        let items = match self.root.remove("webhooks") {
            None => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.errors.push(ConfigError {
                    key: "webhooks".to_owned(),
                    env: None,
                    message: format!(
                        "must be an array of tables ([[webhooks]]), found a {}",
                        other.type_str()
                    ),
                });
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item.try_into::<WebhookConfig>() {
                Ok(w) => out.push(w),
                Err(e) => self.errors.push(ConfigError {
                    key: format!("webhooks[{i}]"),
                    env: None,
                    message: e.message().to_owned(),
                }),
            }
        }
        out
    }

    /// Deserializes one section key by key, so that every bad key is reported rather
    /// than the first; keys that are fine keep their values, the rest their defaults.
    fn section<T: DeserializeOwned + Default>(&mut self, name: &str) -> T {
        let table = match self.root.remove(name) {
            None => return T::default(),
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.errors.push(ConfigError {
                    key: name.to_owned(),
                    env: None,
                    message: format!("must be a table ([{name}]), found a {}", other.type_str()),
                });
                return T::default();
            }
        };
        let mut good = Table::new();
        for (key, value) in table {
            let env = self
                .env
                .iter()
                .find(|(path, _, _)| path.len() >= 2 && path[0] == name && path[1] == key);
            let mut result = probe::<T>(&key, value.clone());
            let mut value = value;
            // An env value read as a number or bool may be meant as a string (a secret
            // of digits, say): try it once more as written.
            if let (Err(_), Some((_, _, raw))) = (&result, env)
                && !value.is_str()
            {
                let as_text = Value::String(raw.clone());
                if probe::<T>(&key, as_text.clone()).is_ok() {
                    value = as_text;
                    result = Ok(());
                }
            }
            match result {
                Ok(()) => {
                    good.insert(key, value);
                }
                Err(message) => self.errors.push(ConfigError {
                    key: format!("{name}.{key}"),
                    env: env.map(|(_, var, _)| var.clone()),
                    message,
                }),
            }
        }
        Value::Table(good)
            .try_into()
            .unwrap_or_else(|e: toml::de::Error| {
                self.errors.push(ConfigError {
                    key: name.to_owned(),
                    env: None,
                    message: e.message().to_owned(),
                });
                T::default()
            })
    }
}

fn probe<T: DeserializeOwned>(key: &str, value: Value) -> Result<(), String> {
    let mut one = Table::new();
    one.insert(key.to_owned(), value);
    Value::Table(one)
        .try_into::<T>()
        .map(drop)
        .map_err(|e| e.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(text, "test.toml", env)
    }

    const DEV: &str = "[auth]\nallow_insecure_default = true\n";

    #[test]
    fn embedded_default_loads() {
        let cfg = load(DEFAULT_CONFIG, &[]).expect("the shipped config is valid");
        assert!(cfg.auth.allow_insecure_default);
        assert_eq!(cfg.store.path, PathBuf::from("data"));
    }

    #[test]
    fn empty_config_gets_every_default_but_refuses_the_sample_secret() {
        let err = load("", &[]).expect_err("sample secret refused");
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].key, "auth.jwt_secret");
        let cfg = load(DEV, &[]).expect("dev profile");
        assert_eq!(cfg.http.listen.port(), 8080);
        assert_eq!(cfg.mqtt.tcp.0.map(|a| a.port()), Some(1883));
        assert_eq!(cfg.mqtt.ws.0.map(|a| a.port()), Some(8083));
        assert!(cfg.auth.accounts);
        assert_eq!(cfg.limits.max_body_bytes, ByteSize(65_536));
        assert_eq!(cfg.delivery.idempotency_ttl, Duration::secs(86_400));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(&format!("{DEV}[mqtt]\nmax_conections = 5\n"), &[]).expect_err("typo");
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].key, "mqtt.max_conections");
        assert!(err.errors[0].message.contains("unknown field"), "{err}");
        assert!(err.to_string().contains("mqtt.max_conections"));
    }

    #[test]
    fn bad_value_is_named() {
        let err = load(&format!("{DEV}[http]\nlisten = \"not an address\"\n"), &[])
            .expect_err("bad address");
        assert_eq!(err.errors[0].key, "http.listen");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{DEV}[mqtt]\nmax_connections = \"many\"\nbogus = 1\n[store]\nretention = \"soon\"\n[nonsense]\nx = 1\n"
        );
        let err = load(&text, &[("IMQTT_HTTP__LISTEN", "nowhere")]).expect_err("four problems");
        let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
        for want in [
            "mqtt.max_connections",
            "mqtt.bogus",
            "store.retention",
            "nonsense",
            "http.listen",
        ] {
            assert!(keys.contains(&want), "{want} missing from {keys:?}");
        }
        let http = err
            .errors
            .iter()
            .find(|e| e.key == "http.listen")
            .expect("listed");
        assert_eq!(http.env.as_deref(), Some("IMQTT_HTTP__LISTEN"));
    }

    #[test]
    fn env_overrides_the_file() {
        let cfg = load(
            &format!("{DEV}[mqtt]\nmax_connections = 10\n"),
            &[
                ("IMQTT_MQTT__MAX_CONNECTIONS", "5000"),
                ("IMQTT_MQTT__TCP", "127.0.0.1:0"),
                ("IMQTT_MQTT__WS", ""),
                ("IMQTT_STORE__PATH", "/tmp/x"),
                ("IMQTT_UNRELATED", "ignored: no section separator"),
            ],
        )
        .expect("valid");
        assert_eq!(cfg.mqtt.max_connections, 5000);
        assert_eq!(cfg.mqtt.tcp.0, Some("127.0.0.1:0".parse().expect("addr")));
        assert_eq!(cfg.mqtt.ws.0, None);
        assert_eq!(cfg.store.path, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn cors_origins_are_origins_or_a_lone_star() {
        let cfg = load(
            &format!(
                "{DEV}[http]\ncors_origins = [\"https://app.example\", \"http://127.0.0.1:5173\"]\n"
            ),
            &[],
        )
        .expect("valid");
        assert_eq!(cfg.http.cors_origins.len(), 2);
        assert!(load(&format!("{DEV}[http]\ncors_origins = [\"*\"]\n"), &[]).is_ok());
        let env = load(
            DEV,
            &[("IMQTT_HTTP__CORS_ORIGINS", "[\"https://a.example\"]")],
        )
        .expect("from the environment");
        assert_eq!(env.http.cors_origins, vec!["https://a.example"]);
        for bad in [
            "[\"https://app.example/\"]",
            "[\"app.example\"]",
            "[\"https://App.example\"]",
            "[\"https://app.example:99999\"]",
            "[\"*\", \"https://app.example\"]",
        ] {
            let err = load(&format!("{DEV}[http]\ncors_origins = {bad}\n"), &[]).expect_err(bad);
            assert_eq!(err.errors[0].key, "http.cors_origins", "{bad}");
        }
    }

    #[test]
    fn env_value_of_digits_can_still_be_a_string() {
        let secret = "12345678901234567890123456789012345";
        let cfg = load("", &[("IMQTT_AUTH__JWT_SECRET", secret)]).expect("valid");
        assert_eq!(cfg.auth.jwt_secret.expose(), secret);
    }

    #[test]
    fn env_override_of_unknown_key_is_named_with_its_variable() {
        let err = load(DEV, &[("IMQTT_HTTP__LISTN", "x")]).expect_err("typo");
        assert_eq!(err.errors[0].key, "http.listn");
        assert_eq!(err.errors[0].env.as_deref(), Some("IMQTT_HTTP__LISTN"));
    }

    #[test]
    fn acl_rules_are_read_and_checked() {
        let cfg = load(
            &format!("{DEV}[[mqtt.acl]]\npattern = \"public/#\"\naccess = \"all\"\n"),
            &[],
        )
        .expect("valid");
        assert_eq!(cfg.mqtt.acl.len(), 1);
        let err = load(
            &format!("{DEV}[[mqtt.acl]]\npattern = \"a/#/b\"\naccess = \"all\"\n"),
            &[],
        )
        .expect_err("bad filter");
        assert_eq!(err.errors[0].key, "mqtt.acl");
    }

    #[test]
    fn a_rate_limit_needs_a_burst_of_at_least_one() {
        let err = load(&format!("{DEV}[limits]\nrate_burst = 0\n"), &[]).expect_err("no burst");
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].key, "limits.rate_burst");
        let cfg = load(
            &format!("{DEV}[limits]\nrate_per_user = 0\nrate_burst = 0\n"),
            &[],
        )
        .expect("unlimited needs no burst");
        assert_eq!(cfg.limits.rate_per_user, 0);
    }

    #[test]
    fn syntax_error_is_reported_with_its_position() {
        let err = load("[mqtt\n", &[]).expect_err("syntax");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
