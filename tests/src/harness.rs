//! Starting a real wardlink server in-process for a test: loopback only, ephemeral ports,
//! a throw-away data directory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use wardlink::config::Config;
use wardlink::links::RoomLinks;
use wardlink::media::sfu::SfuStats;
use wardlink::server::RunningServer;
use wardlink_signaling::Role;

use crate::tls::{ws_url_from_base, TlsTrust};

/// A directory removed (recursively) when dropped, unless `WARDLINK_KEEP_TEST_DIRS` is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory under the system temp dir.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let unique = format!(
            "{prefix}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("WARDLINK_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

static LOGGING: Once = Once::new();

/// Routes `tracing` (server) and `log` (webrtc crate) output into the test harness's
/// captured output, so a failing test prints the server log lines that led up to it.
/// `RUST_LOG` overrides the default filter.
pub fn init_logging() {
    LOGGING.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,wardlink=debug,wardlink_tests=debug,rtc_dtls::config=error",
            )
        });
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A running in-process server plus everything a test needs to reach it.
pub struct TestServer {
    server: Option<RunningServer>,
    /// Its data directory (keys, TLS material).
    pub data_dir: TempDir,
    /// Trust pinned to the server's own certificate.
    pub tls: TlsTrust,
    /// `wss://127.0.0.1:<port>/ws`.
    pub ws_url: String,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with ephemeral HTTPS and UDP ports.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], letting the test adjust the configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        init_logging();
        let data_dir = TempDir::new("wardlink-test")?;
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let mut config = Config {
            listen: SocketAddr::new(loopback, 0),
            media_port: 0,
            media_bind: loopback,
            data_dir: data_dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let server = wardlink::server::start(config)
            .await
            .context("wardlink::server::start")?;
        let cert = data_dir.path().join("tls").join("cert.pem");
        let tls = TlsTrust::pinned_from_pem_file(&cert)
            .with_context(|| format!("server certificate at {}", cert.display()))?;
        let ws_url = ws_url_from_base(&server.base_url)?;
        tracing::info!(
            https = %server.https_addr,
            media = %server.media_addr,
            %ws_url,
            "test server started"
        );
        Ok(TestServer {
            server: Some(server),
            data_dir,
            tls,
            ws_url,
        })
    }

    /// The running server.
    pub fn server(&self) -> &RunningServer {
        self.server
            .as_ref()
            .expect("server is running until shutdown")
    }

    /// The media plane's counters, and how many peer connections it holds.
    pub async fn media_stats(&self) -> anyhow::Result<(SfuStats, usize)> {
        self.server()
            .state()
            .rooms
            .media_stats()
            .await
            .context("the media plane did not answer for its statistics")
    }

    /// Signs join links for a new conference.
    pub fn create_room(&self, title: &str) -> anyhow::Result<RoomLinks> {
        self.server().create_room(title)
    }

    /// The server's token signing key, read from its data directory (to mint authentic
    /// tokens with unusual claims, e.g. already expired).
    pub fn signing_key(&self) -> anyhow::Result<ed25519_dalek::SigningKey> {
        let path = wardlink::keys::Keys::path(self.data_dir.path());
        let keys = wardlink::keys::Keys::load(&path)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(ed25519_dalek::SigningKey::from_bytes(
            &keys.signer.to_bytes(),
        ))
    }

    /// Issues one more invitation to an existing room (recorded in the server's database,
    /// like one created by staff), valid from now for an hour; returns its token.
    pub fn mint_token(&self, links: &RoomLinks, role: Role, name: &str) -> anyhow::Result<String> {
        let server = self.server();
        let state = server.state();
        let now = wardlink::store::now_ms();
        let link = wardlink::conferences::issue_invitation(
            &state.store.lock(),
            &state.keys.signer,
            &server.base_url,
            &links.room_id,
            role,
            name,
            now,
            now + 3_600_000,
            now,
        )
        .with_context(|| format!("issuing a {role} invitation"))?;
        Ok(link.token)
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// The token for `role` in `links`.
pub fn token_for(links: &RoomLinks, role: Role) -> anyhow::Result<String> {
    links
        .links
        .iter()
        .find(|l| l.role == role)
        .map(|l| l.token.clone())
        .with_context(|| format!("room links have no {role} link"))
}
