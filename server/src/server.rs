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
    /// The SQLite store (accounts, conferences, invitations, audit log).
    pub store: crate::store::Store,
    /// The tamper-evident audit log.
    pub audit: crate::audit::Audit,
    /// WebSocket join attempts per address (`limits.joins_per_minute_per_ip`).
    pub join_limiter: crate::ratelimit::SlidingWindow,
    /// Staff accounts, login limits and sessions.
    pub accounts: crate::accounts::Accounts,
    /// Base URL for join links, without a trailing slash.
    pub base_url: String,
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
    let store = crate::store::Store::open(&config.data_dir)?;
    let idle_store = store.clone();
    let reclaimer = crate::memory::Reclaimer::start(Box::new(move || idle_store.release_cache()))
        .context("cannot start the reclaim thread")?;
    let media = crate::media::start(&config, reclaimer).context("cannot start the media plane")?;
    let media_addr = media.local_addr;
    let audit = crate::audit::Audit::open(
        store.clone(),
        &config.data_dir,
        config.security.audit_redact_peer,
    )?;
    audit
        .record(crate::audit::AuditEvent {
            actor: "system".into(),
            action: "config_loaded",
            conference: None,
            peer: None,
            detail: config_summary(&config, https_addr, media_addr),
        })
        .context("cannot write the audit log")?;
    let rooms = crate::rooms::Registry::new(&config, media, store.clone(), audit.clone());
    let join_limiter =
        crate::ratelimit::SlidingWindow::new(config.limits.joins_per_minute_per_ip, 60_000);

    let accounts = crate::accounts::Accounts::new(store.clone(), &config);

    let base_url = config.base_url_for(https_addr);
    let state = Arc::new(AppState {
        config: Arc::new(config),
        keys: Arc::new(keys),
        rooms,
        store,
        audit,
        join_limiter,
        accounts,
        base_url: base_url.clone(),
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
    /// Creates a conference starting now with the default invitations (host, care manager,
    /// surveyor), recorded in the database and the audit log (actor `system`). Its links
    /// work from now for `link_valid_hours`.
    pub fn create_room(&self, title: &str) -> anyhow::Result<RoomLinks> {
        let config = &self.state.config;
        let now = crate::store::now_ms();
        let hours = i64::try_from(config.link_valid_hours).unwrap_or(i64::MAX / 3_600_000);
        let invitations = crate::conferences::default_invitations();
        let new = crate::conferences::NewConference {
            title,
            scheduled_ms: now,
            not_before_ms: now,
            expires_ms: now.saturating_add(hours.saturating_mul(3_600_000)),
            created_by: None,
            invitations: &invitations,
        };
        let room = crate::conferences::create_conference(
            &self.state.store.lock(),
            &self.state.keys.signer,
            &self.base_url,
            &new,
            now,
        )?;
        crate::conferences::audit_created(&self.state.audit, "system", None, &room, now)?;
        Ok(room)
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

/// The non-secret configuration recorded as `config_loaded`: enough to tell later which
/// limits and TLS policy were in force, never key material (fields are listed one by one so
/// a secret added to the config later does not slip in).
fn config_summary(
    config: &Config,
    https_addr: SocketAddr,
    media_addr: SocketAddr,
) -> serde_json::Value {
    let s = &config.security;
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": https_addr.to_string(),
        "media_port": media_addr.port(),
        "media_bind": config.media_bind.to_string(),
        "public_ip": config.public_ip.map(|ip| ip.to_string()),
        "public_url": config.public_url,
        "tls": if config.tls_cert.is_some() { "file" } else { "self_signed" },
        "tls_cert": config.tls_cert.as_ref().map(|p| p.display().to_string()),
        "tls12_allowed": s.allow_tls12,
        "data_dir": config.data_dir.display().to_string(),
        "connect_timeout_secs": config.connect_timeout_secs,
        "link_valid_hours": config.link_valid_hours,
        "max_participants_per_room": config.max_participants_per_room,
        "security": {
            "allowed_origins": s.allowed_origins,
            "session_idle_minutes": s.session_idle_minutes,
            "session_absolute_hours": s.session_absolute_hours,
            "login_max_failures_per_account": s.login_max_failures_per_account,
            "login_max_failures_per_ip": s.login_max_failures_per_ip,
            "login_lockout_minutes": s.login_lockout_minutes,
            "audit_redact_peer": s.audit_redact_peer,
            "invitation_early_minutes": s.invitation_early_minutes,
            "invitation_late_hours": s.invitation_late_hours,
        },
        "limits": {
            "max_conferences": config.limits.max_conferences,
            "max_message_bytes": config.limits.max_message_bytes,
            "ws_messages_per_second": config.limits.ws_messages_per_second,
            "ws_message_burst": config.limits.ws_message_burst,
            "joins_per_minute_per_ip": config.limits.joins_per_minute_per_ip,
            "logins_per_minute_per_ip": config.limits.logins_per_minute_per_ip,
            "ws_idle_secs": config.limits.ws_idle_secs,
        },
    })
}

/// Current time in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::live_tests::{connect, get};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wardlink-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn test_config(dir: &std::path::Path) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            media_port: 0,
            media_bind: "127.0.0.1".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn start_serve_create_room_and_shut_down() {
        let dir = temp_dir("lifecycle");
        let server = start(test_config(&dir)).await.unwrap();
        assert_eq!(
            server.https_addr.ip(),
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
        );
        assert_ne!(server.https_addr.port(), 0);
        assert_ne!(server.media_addr.port(), 0);
        assert_eq!(server.base_url, format!("https://{}", server.https_addr));
        // The media socket really is bound: the port is taken.
        assert!(std::net::UdpSocket::bind(server.media_addr).is_err());

        let res = get(server.https_addr, "/healthz", "").await;
        assert_eq!((res.status, res.body.as_slice()), (200, &b"ok"[..]));

        let room = server.create_room("  退院前カンファレンス  ").unwrap();
        assert_eq!(room.title, "退院前カンファレンス");
        let now = unix_now();
        assert!(room.expires_at >= now + 24 * 3600 - 5 && room.expires_at <= now + 24 * 3600 + 5);
        for link in &room.links {
            assert_eq!(
                link.url,
                format!("{}/join#t={}", server.base_url, link.token)
            );
            let claims = server
                .state()
                .keys
                .verifier
                .verify(&link.token, now)
                .unwrap();
            assert_eq!(claims.room, room.room_id);
        }
        assert!(server.create_room("   ").is_err());

        // /ws upgrades over the real router.
        let stream = connect(server.https_addr, &[b"http/1.1"]).await.unwrap();
        let url = format!("wss://{}/ws", server.https_addr);
        let (mut ws, response) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        let _ = ws.close(None).await;
        drop(ws);

        let (https_addr, media_addr) = (server.https_addr, server.media_addr);
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .expect("shutdown hung");
        // The HTTPS port is free again.
        drop(
            std::net::TcpListener::bind(https_addr).expect("HTTPS port still bound after shutdown"),
        );
        // With the last handle gone the media loop ends and releases its UDP port.
        let mut media_freed = false;
        for _ in 0..40 {
            if std::net::UdpSocket::bind(media_addr).is_ok() {
                media_freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(media_freed, "media UDP port still bound after shutdown");

        // A restart on the same data directory keeps the signing key, so old links stay valid.
        let again = start(test_config(&dir)).await.unwrap();
        assert!(again
            .state()
            .keys
            .verifier
            .verify(&room.links[0].token, now)
            .is_ok());
        // Each start is audited, and the chain carries across restarts.
        let audit = &again.state().audit;
        let loaded: Vec<_> = audit
            .entries(None, None)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "config_loaded")
            .collect();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[1].actor, "system");
        let detail: serde_json::Value = serde_json::from_str(&loaded[1].detail).unwrap();
        assert_eq!(detail["tls"], "self_signed");
        assert_eq!(detail["listen"], again.https_addr.to_string());
        assert_eq!(detail["limits"]["max_conferences"], 100);
        let report = audit.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
        again.shutdown().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn busy_https_port_is_a_clear_error() {
        let dir = temp_dir("busy");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = Config {
            listen: taken.local_addr().unwrap(),
            ..test_config(&dir)
        };
        let err = start(config).await.err().expect("started on a busy port");
        assert!(format!("{err:#}").contains("cannot listen on"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn serve_until_stops_on_signal() {
        let dir = temp_dir("signal");
        let server = start(test_config(&dir)).await.unwrap();
        let addr = server.https_addr;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve_until(async {
            let _ = rx.await;
        }));
        assert_eq!(get(addr, "/healthz", "").await.status, 200);
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("serve_until did not return")
            .unwrap()
            .unwrap();
        assert!(connect(addr, &[b"http/1.1"]).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
