//! The Prometheus registry served at `/metrics`. Components register their metrics
//! while the server is built; the registry is read-only afterwards.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `imqtt_http_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The request method (`other` for unusual ones, to bound cardinality).
    pub method: &'static str,
    /// The response status code.
    pub status: u16,
}

/// Labels of `imqtt_sign_in_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    /// `tokens` (sign-in) or `accounts` (sign-up).
    pub endpoint: &'static str,
}

/// The bridge's own metrics plus the registry every component adds to.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Messages accepted and stored (a retry answered from the idempotency record
    /// is not counted again).
    pub messages_stored: Counter,
    /// Sign-ins that failed (wrong user or password).
    pub sign_in_failures: Counter,
    /// Sign-ins and sign-ups answered 429 `too_many_attempts`.
    pub sign_in_refused: Family<ThrottleLabels, Counter>,
    resident_bytes: Gauge,
    open_fds: Gauge,
}

impl Metrics {
    /// A registry with the bridge's metrics; `extend` lets other components
    /// (the broker) register theirs before it is shared.
    pub fn new(extend: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("imqtt");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method and status",
            http_requests.clone(),
        );
        let messages_stored = Counter::default();
        registry.register(
            "messages_stored",
            "Messages accepted and stored durably",
            messages_stored.clone(),
        );
        let sign_in_failures = Counter::default();
        registry.register(
            "sign_in_failures",
            "Sign-ins refused for a wrong user or password",
            sign_in_failures.clone(),
        );
        let sign_in_refused = Family::<ThrottleLabels, Counter>::default();
        registry.register(
            "sign_in_refused",
            "Sign-ins (tokens) and sign-ups (accounts) answered 429: too many attempts",
            sign_in_refused.clone(),
        );
        let resident_bytes = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the server process",
            resident_bytes.clone(),
        );
        let open_fds = Gauge::default();
        registry.register(
            "process_open_fds",
            "Open file descriptors of the server process",
            open_fds.clone(),
        );
        extend(&mut registry);
        Metrics {
            registry,
            http_requests,
            messages_stored,
            sign_in_failures,
            sign_in_refused,
            resident_bytes,
            open_fds,
        }
    }

    /// Counts one answered request.
    pub fn http_request(&self, method: &axum::http::Method, status: u16) {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.http_requests
            .get_or_create(&HttpLabels { method, status })
            .inc();
    }

    /// The registry in the Prometheus / OpenMetrics text format.
    pub fn render(&self) -> String {
        self.resident_bytes.set(resident_bytes().unwrap_or(0));
        self.open_fds.set(open_fds().unwrap_or(0));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `VmRSS` of this process, in bytes.
pub fn resident_memory() -> u64 {
    resident_bytes()
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0)
}

/// `VmRSS` of this process, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(n).ok()
}
