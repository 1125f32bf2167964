//! Browsers on other origins (`http.cors_origins`): an application's own web front
//! end calling `/v1` from its pages. A preflight from a listed origin is answered
//! here (204 with the methods and headers the API takes); a request from a listed
//! origin gets `Access-Control-Allow-Origin`. An unlisted origin, or any request
//! outside `/v1`, gets no CORS header at all, so its browser refuses to hand the
//! answer to the page. Tokens travel in `Authorization`, never in cookies, so
//! there is no credentials mode.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What the API takes, as a preflight's answer says it.
const METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const HEADERS: &str = "authorization, content-type";
/// Headers a page may read besides the simple ones (`Retry-After` of a 429 or
/// 503 tells it when to try again).
const EXPOSED: &str = "retry-after";
/// How long a browser may keep a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// The origins allowed, from `http.cors_origins`.
#[derive(Debug, Default)]
pub(super) struct Cors {
    any: bool,
    origins: HashSet<HeaderValue>,
}

impl Cors {
    pub(super) fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .filter(|o| *o != "*")
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }

    fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if
    /// it is allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            Some(HeaderValue::from_static("*"))
        } else {
            self.origins.contains(origin).then(|| origin.clone())
        }
    }
}

/// Whether `path` is the API's (the only part other origins may call).
fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The middleware: answers preflights of allowed origins, and marks the answers
/// to their requests.
pub(super) async fn cors(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    let cors = &*cors;
    if !cors.enabled() || !is_api(req.uri().path()) {
        return next.run(req).await;
    }
    let allowed = cors.allow(req.headers().get(ORIGIN));
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if let (Some(origin), true) = (&allowed, preflight) {
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
        vary_on_origin(&mut h, cors);
        return (StatusCode::NO_CONTENT, h).into_response();
    }
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    if let Some(origin) = allowed {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
    // The answer differs by origin: caches must keep them apart.
    vary_on_origin(h, cors);
    response
}

fn vary_on_origin(h: &mut HeaderMap, cors: &Cors) {
    if !cors.any {
        h.append(VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed_and_a_star_allows_all() {
        let listed = Cors::new(&["https://app.example".to_owned()]);
        let app = HeaderValue::from_static("https://app.example");
        let other = HeaderValue::from_static("https://evil.example");
        assert_eq!(listed.allow(Some(&app)), Some(app.clone()));
        assert_eq!(listed.allow(Some(&other)), None);
        assert_eq!(listed.allow(None), None);
        let star = Cors::new(&["*".to_owned()]);
        assert_eq!(
            star.allow(Some(&other)),
            Some(HeaderValue::from_static("*"))
        );
        assert!(!Cors::new(&[]).enabled());
        assert!(is_api("/v1/messages") && is_api("/v1") && !is_api("/v1x") && !is_api("/admin"));
    }
}
