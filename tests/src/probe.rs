//! Probes of the server's HTTPS surface from outside: a plain HTTP/1.1 GET over rustls with
//! a chosen `Host` and SNI (security headers depend on the host name), a TLS handshake
//! restricted to chosen protocol versions, and OpenSSL's own `s_client` as an independent
//! TLS implementation.
//!
//! Everything here is blocking (std sockets, `std::process`); async tests call it through
//! `tokio::task::spawn_blocking` so the in-process server keeps running meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};

/// Socket timeout for every probe: the server is on loopback.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP response, headers lower-cased.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `(name, value)` pairs in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The raw body (not de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Accepts whatever certificate the server shows but still checks the handshake signatures,
/// so the probe talks to a server that really holds its key. Which certificate is served is
/// not what these probes test.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client (ring) offering only `versions`, without ALPN (so HTTP/1.1).
pub fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    // `host[:port]` or `[v6]:port`, as in a Host header.
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    ServerName::try_from(bare.to_owned()).with_context(|| format!("{bare:?} is not a server name"))
}

fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ClientConnection::new(config, server_name(sni)?)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Completes a TLS handshake offering only `versions`; returns the negotiated version, or
/// the error the handshake failed with.
pub fn tls_handshake(
    addr: SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> anyhow::Result<ProtocolVersion> {
    let mut stream = connect(addr, "localhost", client_config(versions)?)?;
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .context("TLS handshake")?;
    }
    stream
        .conn
        .protocol_version()
        .context("handshake finished without a protocol version")
}

/// `GET path` over TLS 1.3 with `Host: host` (also used as SNI), plus `extra` headers.
pub fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let mut stream = connect(addr, host, client_config(&[&rustls::version::TLS13])?)?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A server that closes without close_notify after a complete response.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e).context("reading the response"),
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "no end of headers in {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        );
    };
    let head = std::str::from_utf8(&raw[..end]).context("headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// What `openssl s_client` reported.
#[derive(Debug, Clone)]
pub struct OpensslOutcome {
    /// Exit status (None: killed).
    pub exit_code: Option<i32>,
    /// stdout and stderr together.
    pub output: String,
    /// The negotiated cipher, if the handshake completed (`Cipher is X`, X not `(NONE)`).
    pub cipher: Option<String>,
    /// The negotiated protocol from the `New, <protocol>, Cipher is ...` line (`TLSv1.3`),
    /// if the handshake completed.
    pub protocol: Option<String>,
}

impl OpensslOutcome {
    /// Whether the handshake succeeded.
    pub fn handshake_ok(&self) -> bool {
        self.exit_code == Some(0) && self.cipher.is_some() && self.protocol.is_some()
    }
}

/// Whether an `openssl` executable can be run.
pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `openssl s_client -connect addr <version_flag>` with stdin closed, so it exits right
/// after the handshake.
pub fn openssl_s_client(addr: SocketAddr, version_flag: &str) -> anyhow::Result<OpensslOutcome> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
            version_flag,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running openssl s_client")?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cipher = output
        .lines()
        .find_map(|l| l.split_once("Cipher is ").map(|(_, c)| c.trim().to_owned()))
        .filter(|c| c != "(NONE)" && !c.is_empty());
    let protocol = output
        .lines()
        .find_map(|l| l.strip_prefix("New, "))
        .and_then(|rest| rest.split(',').next())
        .map(str::trim)
        .filter(|p| *p != "(NONE)")
        .map(str::to_owned);
    Ok(OpensslOutcome {
        exit_code: out.status.code(),
        output,
        cipher,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_and_finds_headers_case_insensitively() {
        let raw =
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nX-A: 1\r\n\r\n{}";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("X-a"), Some("1"));
        assert_eq!(r.body, b"{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn server_names_from_host_headers() {
        assert!(matches!(
            server_name("wardlink.test:8443").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1:8443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:8443").unwrap(),
            ServerName::IpAddress(_)
        ));
    }
}
