//! TLS trust for test clients talking to a server with a self-signed certificate.
//!
//! The server generates its certificate into `<data_dir>/tls/cert.pem`. Tests pin exactly that
//! certificate instead of installing it as a root: a pinned leaf does not depend on which
//! names or IP addresses the server chose to put in its SAN list, yet still refuses any other
//! server, so a test cannot accidentally pass against the wrong process.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

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
        let cert = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
            .next()
            .with_context(|| format!("no certificate in {}", path.display()))?
            .with_context(|| format!("parsing {}", path.display()))?;
        Ok(TlsTrust::Pinned(cert))
    }

    /// Builds a rustls client configuration (ring provider only) for this trust.
    pub fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedVerifier {
            pinned: match self {
                TlsTrust::Pinned(cert) => Some(cert.clone()),
                TlsTrust::DangerAcceptAny => None,
            },
            provider: provider.clone(),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Accepts the pinned leaf (or anything, when unpinned) but still checks the handshake
/// signatures, so the server must actually hold the matching private key.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if pinned.as_ref() != end_entity.as_ref() => Err(rustls::Error::General(
                "server certificate is not the pinned one".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
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
