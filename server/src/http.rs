//! The HTTP surface: the embedded web client, a health check and the `/ws` WebSocket upgrade,
//! with security headers on every response.
//!
//! Routes:
//! - `GET /`, `GET /join`: the web client's `index.html` (the join token is in the URL
//!   fragment, which never reaches the server);
//! - `GET /assets/<file>` (and `GET /<file>` for relative references from `/join`): the
//!   other files of `web-client/`, embedded at build time;
//! - `GET /healthz`: `ok`;
//! - `GET /ws`: WebSocket upgrade, handed to [`crate::session::handle_socket`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::server::AppState;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Largest WebSocket message axum will assemble. Deliberately above
/// `wardlink_signaling::protocol::MAX_MESSAGE_BYTES`: the session enforces the real limit
/// itself so it can answer with a `message_too_large` error instead of a bare close.
pub const WS_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Content-Security-Policy, before the host-specific `connect-src` source is appended.
const CSP_BASE: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     media-src 'self' blob: mediastream:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
     connect-src 'self'";

/// HSTS for real host names; two years, as recommended for preload-eligible sites.
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// The embedded web client files, as `(path, contents, etag)`.
pub fn web_assets() -> &'static [(&'static str, &'static [u8], &'static str)] {
    embedded::WEB_ASSETS
}

/// Builds the router for `state`. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: Arc<AppState>) -> Router {
    with_security_headers(static_routes().route("/ws", any(websocket))).with_state(state)
}

/// Every route except `/ws`: the web client and the health check.
pub fn static_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/join", get(index))
        .route("/healthz", get(healthz))
        .route("/assets/{*path}", get(asset))
        .fallback(root_asset)
}

/// Adds the security headers to every response of `router` (apply after all routes).
pub fn with_security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(middleware::from_fn(host_dependent_headers))
        .layer(constant_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(constant_header(header::REFERRER_POLICY, "no-referrer"))
        .layer(constant_header(
            HeaderName::from_static("permissions-policy"),
            "camera=(self), microphone=(self), geolocation=()",
        ))
        .layer(constant_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(constant_header(
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ))
}

fn constant_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

async fn healthz() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], "ok")
}

async fn index(headers: HeaderMap) -> Response {
    match find_asset("index.html") {
        Some(asset) => serve(asset, &headers),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CACHE_CONTROL, "no-store")],
            "web client missing: web-client/index.html was not present at build time",
        )
            .into_response(),
    }
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match find_asset(&path) {
        Some(asset) => serve(asset, &headers),
        None => not_found(),
    }
}

/// Serves web client files at the root too, so `index.html` (served at `/` and `/join`) may
/// reference its modules relatively.
async fn root_asset(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return not_found();
    }
    let path = uri.path().trim_start_matches('/');
    match find_asset(path).filter(|(p, _, _)| *p != "index.html") {
        Some(asset) => {
            let mut response = serve(asset, &headers);
            if method == Method::HEAD {
                *response.body_mut() = axum::body::Body::empty();
            }
            response
        }
        None => not_found(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "not found",
    )
        .into_response()
}

fn find_asset(path: &str) -> Option<(&'static str, &'static [u8], &'static str)> {
    web_assets().iter().copied().find(|(p, _, _)| *p == path)
}

fn serve(
    (path, body, etag): (&'static str, &'static [u8], &'static str),
    request: &HeaderMap,
) -> Response {
    let content_type = content_type(path);
    // HTML carries the app version; never keep a stale copy. Other files revalidate by ETag.
    let cache = if content_type.starts_with("text/html") {
        "no-store"
    } else {
        "no-cache"
    };
    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, cache),
        (header::ETAG, etag),
    ];
    if not_modified {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, body).into_response()
    }
}

/// The `Content-Type` for a web client file, by extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("webmanifest") => "application/manifest+json",
        Some("wav") => "audio/wav",
        Some("ogg") => "audio/ogg",
        Some("mp3") => "audio/mpeg",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let public_url = state.config.public_url.clone();
    accept_websocket(
        ws,
        &headers,
        &uri,
        public_url.as_deref(),
        peer,
        move |socket| crate::session::handle_socket(state, socket, peer),
    )
}

/// Checks the origin, applies the frame limits and upgrades, running `session` on the socket.
fn accept_websocket<F, Fut>(
    ws: WebSocketUpgrade,
    headers: &HeaderMap,
    uri: &Uri,
    public_url: Option<&str>,
    peer: SocketAddr,
    session: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if !origin_allowed(headers, request_host(headers, uri), public_url) {
        tracing::warn!(%peer, origin = ?headers.get(header::ORIGIN), "refused cross-origin WebSocket");
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    ws.max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES)
        .on_upgrade(session)
}

/// The host the client addressed: `Host` (HTTP/1.1) or the `:authority` (HTTP/2).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Browsers always send `Origin` on WebSocket handshakes; a page from another site must not be
/// able to drive a session (tokens are bearer credentials, so this is defence in depth).
/// Clients without `Origin` (tests, native tools) are not browsers and are allowed.
pub fn origin_allowed(headers: &HeaderMap, host: Option<&str>, public_url: Option<&str>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if let Some(host) = host {
        if origin.eq_ignore_ascii_case(&format!("https://{host}")) {
            return true;
        }
    }
    public_url
        .and_then(|u| url::Url::parse(u).ok())
        .is_some_and(|u| origin.eq_ignore_ascii_case(&u.origin().ascii_serialization()))
}

/// Adds the headers that depend on the requested host: HSTS (not for IP literals or
/// localhost, where it would pin every local port to HTTPS) and a CSP whose `connect-src`
/// names the `wss://` origin explicitly (older Safari does not match WebSockets to `'self'`).
async fn host_dependent_headers(request: Request, next: Next) -> Response {
    let host = request_host(request.headers(), request.uri())
        .filter(|h| is_plain_host(h))
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let csp = match &host {
        Some(host) => format!("{CSP_BASE} wss://{host}"),
        None => CSP_BASE.to_owned(),
    };
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if host.as_deref().is_some_and(|h| !is_local_or_ip(h)) {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    response
}

/// True for a `host[:port]` made only of characters that can appear in one, so it is safe to
/// echo into a CSP.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// True if `host[:port]` is an IP literal or a localhost name.
fn is_local_or_ip(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("lib/x.mjs"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("style.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn origin_check() {
        let none = headers(&[]);
        assert!(origin_allowed(&none, Some("127.0.0.1:8443"), None));
        let same = headers(&[("origin", "https://127.0.0.1:8443")]);
        assert!(origin_allowed(&same, Some("127.0.0.1:8443"), None));
        assert!(!origin_allowed(&same, Some("127.0.0.1:9443"), None));
        assert!(!origin_allowed(&same, None, None));
        let http = headers(&[("origin", "http://127.0.0.1:8443")]);
        assert!(!origin_allowed(&http, Some("127.0.0.1:8443"), None));
        let evil = headers(&[("origin", "https://evil.example")]);
        assert!(!origin_allowed(
            &evil,
            Some("conf.example.jp"),
            Some("https://conf.example.jp")
        ));
        let null = headers(&[("origin", "null")]);
        assert!(!origin_allowed(&null, Some("conf.example.jp"), None));
        // Behind a proxy that rewrites Host, the configured public URL still matches.
        let proxied = headers(&[("origin", "https://conf.example.jp")]);
        assert!(origin_allowed(
            &proxied,
            Some("10.0.0.2:8443"),
            Some("https://conf.example.jp/")
        ));
    }

    #[test]
    fn host_classification() {
        assert!(is_local_or_ip("localhost:8443"));
        assert!(is_local_or_ip("LOCALHOST"));
        assert!(is_local_or_ip("app.localhost:1"));
        assert!(is_local_or_ip("127.0.0.1:8443"));
        assert!(is_local_or_ip("[::1]:8443"));
        assert!(is_local_or_ip("192.0.2.1"));
        assert!(!is_local_or_ip("conf.example.jp"));
        assert!(!is_local_or_ip("conf.example.jp:8443"));
        assert!(is_plain_host("[::1]:8443"));
        assert!(!is_plain_host("a; script-src *"));
        assert!(!is_plain_host(""));
    }
}
