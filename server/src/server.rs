//! Starting and stopping a whole server: data directory, keys, TLS, media plane, room registry
//! and the HTTPS/WSS listener. Tests run servers in-process through [`start`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::config::Config;
use crate::keys::Keys;
use crate::links::RoomLinks;

/// How long a graceful shutdown waits for open connections before closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// State shared by every HTTP handler and WebSocket session.
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Token signing and verification keys.
    pub keys: Arc<Keys>,
    /// Live conferences.
    pub rooms: crate::rooms::Registry,
}

/// A server that is accepting connections.
pub struct RunningServer {
    /// Bound HTTPS/WSS address (the real port when `listen` had port 0).
    pub https_addr: SocketAddr,
    /// Bound UDP media address.
    pub media_addr: SocketAddr,
    /// Base URL for join links, without a trailing slash.
    pub base_url: String,
    state: Arc<AppState>,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts a server for `config`: creates the data directory and keys, sets up TLS, starts the
/// media plane and begins serving HTTPS in a background task.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    crate::keys::create_private_dir(&config.data_dir)?;
    let keys = Keys::load_or_create(&config.data_dir)?;
    let tls = crate::tls::load_or_generate(&config)?;

    // Bind TCP before starting media, so a busy port fails fast without leaving media running.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {} (HTTPS)", config.listen))?;
    listener.set_nonblocking(true)?;
    let https_addr = listener.local_addr()?;

    if config.public_ip.is_none()
        && config.media_bind.is_unspecified()
        && config.listen.ip().is_unspecified()
    {
        tracing::warn!(
            "listen and media_bind are unspecified and public_ip is not set: advertising {} for \
             media, which remote clients cannot reach; set public_ip (WARDLINK_PUBLIC_IP)",
            config.advertised_media_ip()
        );
    }
    let media = crate::media::start(&config)
        .await
        .context("cannot start the media plane")?;
    let media_addr = media.local_addr;
    let rooms = crate::rooms::Registry::new(&config, media);

    let base_url = config.base_url_for(https_addr);
    let state = Arc::new(AppState {
        config: Arc::new(config),
        keys: Arc::new(keys),
        rooms,
    });

    let (handle, task) = serve_tls(
        listener,
        tls.server_config,
        crate::http::router(state.clone()),
    );
    tracing::info!(%https_addr, %media_addr, %base_url, "wardlink is listening");

    Ok(RunningServer {
        https_addr,
        media_addr,
        base_url,
        state,
        handle,
        task,
    })
}

impl RunningServer {
    /// Creates a conference with the default role links, valid for `link_valid_hours`.
    pub fn create_room(&self, title: &str) -> anyhow::Result<RoomLinks> {
        let valid_for = Duration::from_secs(self.state.config.link_valid_hours * 3600);
        Ok(crate::links::create_room(
            &self.state.keys.signer,
            &self.base_url,
            title,
            valid_for,
            unix_now(),
        )?)
    }

    /// The shared state (configuration, keys, rooms).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `signal` completes (then shuts down gracefully) or the listener fails.
    pub async fn serve_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            () = signal => {
                self.shutdown().await;
                Ok(())
            }
            result = &mut self.task => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("HTTPS server failed")),
                Err(e) => Err(anyhow::Error::new(e).context("HTTPS server task panicked")),
            },
        }
    }

    /// Stops accepting connections, gives open ones [`SHUTDOWN_GRACE`] to finish, then
    /// closes them.
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTPS server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "HTTPS server task failed"),
        }
        tracing::info!("wardlink stopped");
    }
}

/// Serves `app` over TLS on `listener` in a background task, passing each connection's peer
/// address to handlers as `ConnectInfo<SocketAddr>`.
pub fn serve_tls(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
) -> (
    axum_server::Handle,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .handle(handle.clone());
    let task = tokio::spawn(server.serve(app.into_make_service_with_connect_info::<SocketAddr>()));
    (handle, task)
}

/// Current time in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
