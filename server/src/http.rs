//! The HTTP surface: the embedded web client, a health check and the `/ws` WebSocket upgrade,
//! with security headers on every response.
//!
//! Routes:
//! - `GET /`, `GET /join`: the web client's `index.html` (the join token is in the URL
//!   fragment, which never reaches the server);
//! - `GET /assets/<file>` (and `GET /<file>` for relative references from `/join`): the
//!   other files of `web-client/`, embedded at build time;
//! - `GET /healthz`: `ok`;
//! - `/api/...`: the staff JSON API, see [`crate::staff_api`];
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
    let api = crate::staff_api::routes(state.clone());
    with_security_headers(static_routes().merge(api).route("/ws", any(websocket))).with_state(state)
}

/// Every route except `/ws`: the web client and the health check.
pub fn static_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/join", get(index))
        // The staff pages (login, dashboard) are the same single page, routed client-side.
        .route("/staff", get(index))
        .route("/staff/{*path}", get(index))
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
    let config = state.config.clone();
    accept_websocket(
        ws,
        &headers,
        &uri,
        config.public_url.as_deref(),
        &config.security.allowed_origins,
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
    allowed_origins: &[String],
    peer: SocketAddr,
    session: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if !origin_allowed(
        headers,
        request_host(headers, uri),
        public_url,
        allowed_origins,
    ) {
        tracing::warn!(%peer, origin = ?headers.get(header::ORIGIN), "refused cross-origin WebSocket");
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused").into_response();
    }
    ws.max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES)
        .on_upgrade(session)
}

/// The host the client addressed: `Host` (HTTP/1.1) or the `:authority` (HTTP/2).
pub(crate) fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Browsers always send `Origin` on WebSocket handshakes; a page from another site must not be
/// able to drive a session (tokens are bearer credentials, so this is defence in depth).
/// Clients without `Origin` (tests, native tools) are not browsers and are allowed.
pub fn origin_allowed(
    headers: &HeaderMap,
    host: Option<&str>,
    public_url: Option<&str>,
    allowed_origins: &[String],
) -> bool {
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
        || allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
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
        assert!(origin_allowed(&none, Some("127.0.0.1:8443"), None, &[]));
        let same = headers(&[("origin", "https://127.0.0.1:8443")]);
        assert!(origin_allowed(&same, Some("127.0.0.1:8443"), None, &[]));
        assert!(!origin_allowed(&same, Some("127.0.0.1:9443"), None, &[]));
        assert!(!origin_allowed(&same, None, None, &[]));
        let http = headers(&[("origin", "http://127.0.0.1:8443")]);
        assert!(!origin_allowed(&http, Some("127.0.0.1:8443"), None, &[]));
        let evil = headers(&[("origin", "https://evil.example")]);
        assert!(!origin_allowed(
            &evil,
            Some("conf.example.jp"),
            Some("https://conf.example.jp"),
            &[]
        ));
        let null = headers(&[("origin", "null")]);
        assert!(!origin_allowed(&null, Some("conf.example.jp"), None, &[]));
        // Behind a proxy that rewrites Host, the configured public URL still matches.
        let proxied = headers(&[("origin", "https://conf.example.jp")]);
        assert!(origin_allowed(
            &proxied,
            Some("10.0.0.2:8443"),
            Some("https://conf.example.jp/"),
            &[]
        ));
        // An origin listed in `security.allowed_origins` is accepted, others still are not.
        let listed = vec!["https://second-name.example.jp/".to_string()];
        let second = headers(&[("origin", "https://second-name.example.jp")]);
        assert!(origin_allowed(
            &second,
            Some("conf.example.jp"),
            None,
            &listed
        ));
        assert!(!origin_allowed(
            &evil,
            Some("conf.example.jp"),
            None,
            &listed
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

/// Real TLS sockets against the router (minus the session, which needs the media plane):
/// TLS parameters, headers, embedded files and the WebSocket upgrade.
#[cfg(test)]
pub(crate) mod live_tests {
    use super::*;
    use futures_util::{SinkExt as _, StreamExt as _};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::client::TlsStream;
    use tokio_tungstenite::tungstenite;

    /// Accepts any certificate: these tests check our server, not certificate paths.
    #[derive(Debug)]
    pub(crate) struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    struct TestServer {
        addr: SocketAddr,
        handle: axum_server::Handle,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
        dir: std::path::PathBuf,
    }

    /// Echoes text messages after first sending the peer address the server saw.
    async fn echo_ws(
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        uri: Uri,
        ws: WebSocketUpgrade,
    ) -> Response {
        accept_websocket(
            ws,
            &headers,
            &uri,
            Some("https://conf.example.jp"),
            &["https://proxy.example.jp".to_string()],
            peer,
            move |mut socket| async move {
                let _ = socket
                    .send(axum::extract::ws::Message::Text(peer.to_string().into()))
                    .await;
                while let Some(Ok(msg)) = socket.recv().await {
                    if let axum::extract::ws::Message::Text(t) = msg {
                        if socket
                            .send(axum::extract::ws::Message::Text(t))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            },
        )
    }

    async fn start(name: &str) -> TestServer {
        let dir = std::env::temp_dir().join(format!("wardlink-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = crate::config::Config {
            data_dir: dir.clone(),
            ..Default::default()
        };
        let tls = crate::tls::load_or_generate(&config).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = with_security_headers(static_routes().route("/ws", any(echo_ws)));
        let (handle, task) = crate::server::serve_tls(listener, tls.server_config, app);
        TestServer {
            addr,
            handle,
            task,
            dir,
        }
    }

    impl TestServer {
        async fn stop(self) {
            self.handle
                .graceful_shutdown(Some(std::time::Duration::from_millis(200)));
            tokio::time::timeout(std::time::Duration::from_secs(5), self.task)
                .await
                .expect("server did not stop")
                .unwrap()
                .unwrap();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub(crate) fn client_config(
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    pub(crate) async fn connect(
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
            alpn,
            &[&rustls::version::TLS13],
        )));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    pub(crate) struct HttpResponse {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl HttpResponse {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// One HTTP/1.1 request over TLS (`Connection: close`, so the body runs to EOF).
    pub(crate) async fn get(addr: SocketAddr, path: &str, extra: &str) -> HttpResponse {
        get_with_host(addr, path, &addr.to_string(), extra).await
    }

    pub(crate) async fn get_with_host(
        addr: SocketAddr,
        path: &str,
        host: &str,
        extra: &str,
    ) -> HttpResponse {
        let mut stream = connect(addr, &[b"http/1.1"]).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        // A TLS close without close_notify is fine here; keep what arrived.
        let _ = stream.read_to_end(&mut raw).await;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no header end");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        if chunked {
            body = dechunk(&body);
        }
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
                return out;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
            data = &data[eol + 2 + size + 2..];
        }
    }

    #[tokio::test]
    async fn tls_is_1_3_only_with_h2_and_http11_alpn() {
        let server = start("tls").await;
        let h2 = connect(server.addr, &[b"h2", b"http/1.1"]).await.unwrap();
        assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            h2.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let h1 = connect(server.addr, &[b"http/1.1"]).await.unwrap();
        assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        let tls12 = tokio_rustls::TlsConnector::from(Arc::new(client_config(
            &[],
            &[&rustls::version::TLS12],
        )));
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        assert!(
            tls12
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .is_err(),
            "TLS 1.2 must be refused"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn health_check_and_security_headers() {
        let server = start("headers").await;
        let res = get(server.addr, "/healthz", "").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body, b"ok");
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(res.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(
            res.header("permissions-policy"),
            Some("camera=(self), microphone=(self), geolocation=()")
        );
        assert_eq!(res.header("x-frame-options"), Some("DENY"));
        let csp = res.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("media-src 'self' blob: mediastream:"), "{csp}");
        assert!(
            csp.ends_with(&format!("connect-src 'self' wss://{}", server.addr)),
            "{csp}"
        );
        // No HSTS on an IP literal (it would pin the address to HTTPS for every port) ...
        assert_eq!(res.header("strict-transport-security"), None);
        // ... but yes on a real host name.
        let named = get_with_host(server.addr, "/healthz", "conf.example.jp", "").await;
        assert_eq!(named.header("strict-transport-security"), Some(HSTS));
        assert!(named
            .header("content-security-policy")
            .unwrap()
            .ends_with("wss://conf.example.jp"));
        // A hostile Host header is not echoed into the CSP.
        let hostile = get_with_host(server.addr, "/healthz", "x;script-src*", "").await;
        assert!(hostile
            .header("content-security-policy")
            .unwrap()
            .ends_with("connect-src 'self'"));

        let missing = get(server.addr, "/assets/nope.js", "").await;
        assert_eq!(missing.status, 404);
        assert_eq!(missing.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(get(server.addr, "/../Cargo.toml", "").await.status, 404);
        assert_eq!(
            get(server.addr, "/assets/../build.rs", "").await.status,
            404
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn serves_every_embedded_file() {
        let server = start("assets").await;
        for path in ["/", "/join"] {
            let res = get(server.addr, path, "").await;
            match find_asset("index.html") {
                Some((_, body, _)) => {
                    assert_eq!(res.status, 200, "{path}");
                    assert_eq!(res.body, body, "{path}");
                    assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
                    assert_eq!(res.header("cache-control"), Some("no-store"));
                }
                None => assert_eq!(res.status, 500, "{path} without an embedded index.html"),
            }
        }
        assert!(
            !web_assets().is_empty(),
            "web-client/ files were not embedded"
        );
        for (path, body, etag) in web_assets() {
            for url in [format!("/assets/{path}"), format!("/{path}")] {
                if url == "/index.html" {
                    continue;
                }
                let res = get(server.addr, &url, "").await;
                assert_eq!(res.status, 200, "{url}");
                assert_eq!(res.body, *body, "{url}");
                assert_eq!(
                    res.header("content-type"),
                    Some(content_type(path)),
                    "{url}"
                );
                assert_eq!(res.header("etag"), Some(*etag), "{url}");
                let cached = get(server.addr, &url, &format!("If-None-Match: {etag}\r\n")).await;
                assert_eq!(cached.status, 304, "{url}");
                assert!(cached.body.is_empty());
            }
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn websocket_upgrade_limits_and_origin() {
        let server = start("ws").await;
        let url = format!("wss://{}/ws", server.addr);

        // Browsers open WebSockets on an http/1.1-only connection when the server does not
        // offer RFC 8441, so the test client does the same.
        let stream = connect(server.addr, &[b"http/1.1"]).await.unwrap();
        let local = stream.get_ref().0.local_addr().unwrap();
        let mut request =
            tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
        request.headers_mut().insert(
            "origin",
            HeaderValue::from_str(&format!("https://{}", server.addr)).unwrap(),
        );
        let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        // The session learns the real peer address.
        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first.into_text().unwrap().as_str(), local.to_string());
        // Messages above the protocol's 64 KiB (the session's own limit) still get through axum.
        let big = "x".repeat(200 * 1024);
        ws.send(tungstenite::Message::text(big.clone()))
            .await
            .unwrap();
        assert_eq!(
            ws.next()
                .await
                .unwrap()
                .unwrap()
                .into_text()
                .unwrap()
                .as_str(),
            big
        );
        // Over 1 MiB, axum closes the connection.
        let huge = "y".repeat(WS_MAX_MESSAGE_BYTES + 1);
        let _ = ws.send(tungstenite::Message::text(huge)).await;
        let after = ws.next().await;
        assert!(
            !matches!(after, Some(Ok(tungstenite::Message::Text(_)))),
            "oversized message was echoed: {after:?}"
        );

        // The configured public URL is an accepted origin too.
        let stream = connect(server.addr, &[b"http/1.1"]).await.unwrap();
        let mut request =
            tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
        request.headers_mut().insert(
            "origin",
            HeaderValue::from_static("https://conf.example.jp"),
        );
        assert!(tokio_tungstenite::client_async(request, stream)
            .await
            .is_ok());

        // A page from another origin cannot open a session.
        let stream = connect(server.addr, &[b"http/1.1"]).await.unwrap();
        let mut request =
            tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static("https://evil.example"));
        match tokio_tungstenite::client_async(request, stream).await {
            Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
            other => panic!(
                "cross-origin upgrade was not refused: {:?}",
                other.map(|(_, r)| r.status())
            ),
        }

        // A plain GET is not an upgrade.
        assert_ne!(get(server.addr, "/ws", "").await.status, 101);
        server.stop().await;
    }

    #[tokio::test]
    async fn graceful_shutdown_releases_the_port() {
        let server = start("shutdown").await;
        let addr = server.addr;
        assert_eq!(get(addr, "/healthz", "").await.status, 200);
        server.stop().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err()
                || connect(addr, &[b"http/1.1"]).await.is_err()
        );
    }
}
