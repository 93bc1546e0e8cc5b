//! TLS trust for test clients talking to a server with a self-signed certificate.
//!
//! The server generates its certificate into `<data_dir>/tls/cert.pem`. Tests pin exactly that
//! certificate instead of installing it as a root: a pinned leaf does not depend on which
//! names or IP addresses the server chose to put in its SAN list, yet still refuses any other
//! server, so a test cannot accidentally pass against the wrong process.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;

/// How a test client decides to trust the server's TLS certificate.
#[derive(Clone, Debug)]
pub enum TlsTrust {
    /// Accept only this exact end-entity certificate (DER).
    Pinned(CertificateDer<'static>),
    /// Accept any certificate. For tests that must reach a server whose certificate file is
    /// not at hand; never use outside tests.
    DangerAcceptAny,
}

impl TlsTrust {
    /// Pins the first certificate found in a PEM file (the server's `tls/cert.pem`).
    pub fn pinned_from_pem_file(path: &Path) -> anyhow::Result<Self> {
        Ok(TlsTrust::Pinned(wardlink_load::tls::read_pem_cert(path)?))
    }

    /// Builds a rustls client configuration (ring provider only) for this trust.
    pub fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        wardlink_load::tls::pinned_client_config(match self {
            TlsTrust::Pinned(cert) => Some(cert.clone()),
            TlsTrust::DangerAcceptAny => None,
        })
    }
}

/// Turns the server's `https://host:port` base URL into its `wss://host:port/ws` endpoint.
pub fn ws_url_from_base(base_url: &str) -> anyhow::Result<String> {
    let trimmed = base_url.trim_end_matches('/');
    let Some(rest) = trimmed.strip_prefix("https://") else {
        bail!("base URL {base_url:?} is not https://");
    };
    Ok(format!("wss://{rest}/ws"))
}
