//! The web pages that ship inside the binary: the chat client at `/`, the
//! operator's page at `/admin`, and their scripts and styles under `/assets/`
//! (sources in `im-bridge/web/`, embedded at compile time, so the binary needs no
//! files and no CDN beside it).
//!
//! Each asset is gzipped once, on its first request, when the client accepts gzip
//! (mqtt.js is 342 KB as shipped and 105 KB gzipped); every answer carries an ETag
//! so a reload costs a 304. Pages are revalidated on every load (`no-cache`) so an
//! upgraded server is seen at once; the vendored library has its version in its
//! name and is cached for a year.

use std::io::Write;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// One embedded file.
struct Asset {
    /// The name under `/assets/`, or the page's path.
    name: &'static str,
    content_type: &'static str,
    cache: &'static str,
    bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const REVALIDATE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Scripts only from this origin and no inline script at all: a message body that
/// slipped into the markup could still not run. `ws:`/`wss:` because MQTT over
/// WebSocket listens on its own port.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The vendored mqtt.js browser bundle (see `web/vendor/README.md`).
pub(crate) const MQTT_JS: &str = "mqtt-5.16.0.min.js";

const ASSETS: [Asset; 7] = [
    Asset {
        name: "/",
        content_type: HTML,
        cache: REVALIDATE,
        bytes: include_bytes!("../../web/index.html"),
    },
    Asset {
        name: "/admin",
        content_type: HTML,
        cache: REVALIDATE,
        bytes: include_bytes!("../../web/admin.html"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        cache: REVALIDATE,
        bytes: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "admin.js",
        content_type: JS,
        cache: REVALIDATE,
        bytes: include_bytes!("../../web/admin.js"),
    },
    Asset {
        name: "common.js",
        content_type: JS,
        cache: REVALIDATE,
        bytes: include_bytes!("../../web/common.js"),
    },
    Asset {
        name: "style.css",
        content_type: CSS,
        cache: REVALIDATE,
        bytes: include_bytes!("../../web/style.css"),
    },
    Asset {
        name: MQTT_JS,
        content_type: JS,
        cache: IMMUTABLE,
        bytes: include_bytes!("../../web/vendor/mqtt-5.16.0.min.js"),
    },
];

/// What is computed once per asset: its ETag and its gzipped bytes.
struct Encoded {
    etag: HeaderValue,
    gzip: Vec<u8>,
}

static ENCODED: [OnceLock<Encoded>; ASSETS.len()] = [const { OnceLock::new() }; ASSETS.len()];

fn encoded(i: usize) -> &'static Encoded {
    ENCODED[i].get_or_init(|| {
        let bytes = ASSETS[i].bytes;
        let etag = HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(bytes)))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing into a Vec cannot fail; an empty result means "serve it plain".
        let gzip = gz
            .write_all(bytes)
            .and_then(|()| gz.finish())
            .unwrap_or_default();
        Encoded { etag, gzip }
    })
}

/// FNV-1a, 64 bits: stable across builds and runs, which is all an ETag needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `GET /`: the chat page.
pub(super) async fn chat(headers: HeaderMap) -> Response {
    serve("/", &headers)
}

/// `GET /admin`: the operator's page.
pub(super) async fn admin(headers: HeaderMap) -> Response {
    serve("/admin", &headers)
}

/// `GET /assets/{name}`.
pub(super) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return Error::NotFound(format!("no asset {name}")).into_response();
    };
    let asset = &ASSETS[i];
    let enc = encoded(i);
    let mut response = if not_modified(headers, &enc.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(headers) && !enc.gzip.is_empty() {
        let mut r = enc.gzip.as_slice().into_response();
        r.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.bytes.into_response()
    };
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache));
    h.insert(ETAG, enc.etag.clone());
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if asset.content_type == HTML {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    response
}

fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// Whether `Accept-Encoding` allows gzip (a `q=0` refuses it).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn gzip_is_used_only_when_accepted() {
        assert!(accepts_gzip(&with("accept-encoding", "gzip, deflate, br")));
        assert!(accepts_gzip(&with(
            "accept-encoding",
            "br;q=1.0, GZIP;q=0.5"
        )));
        assert!(accepts_gzip(&with("accept-encoding", "*")));
        assert!(!accepts_gzip(&with("accept-encoding", "gzip;q=0")));
        assert!(!accepts_gzip(&with("accept-encoding", "br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn every_asset_compresses_and_has_a_stable_etag() {
        for (i, asset) in ASSETS.iter().enumerate() {
            let e = encoded(i);
            assert!(!e.gzip.is_empty(), "{}", asset.name);
            assert!(e.gzip.len() < asset.bytes.len(), "{}", asset.name);
            assert!(not_modified(&with_etag(&e.etag), &e.etag));
        }
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    fn with_etag(etag: &HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, etag.clone());
        h
    }
}
