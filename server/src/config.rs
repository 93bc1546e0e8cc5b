//! Server configuration: embedded defaults, an optional TOML file, then `WARDLINK_*`
//! environment overrides (in that order of precedence, lowest first).
//!
//! `deploy/wardlink.example.toml` documents every key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Every setting the server reads. Missing keys take the defaults of [`Config::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTPS/WSS listen address (`WARDLINK_LISTEN`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// UDP port of the single media socket (`WARDLINK_MEDIA_PORT`). 0 picks a free port.
    pub media_port: u16,
    /// IP address the media socket binds to.
    pub media_bind: IpAddr,
    /// Address advertised in ICE candidates when the server sits behind 1:1 NAT
    /// (`WARDLINK_PUBLIC_IP`). See [`Config::advertised_media_ip`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// PEM certificate chain (`WARDLINK_TLS_CERT`). Without it a self-signed certificate is
    /// generated in the data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert` (`WARDLINK_TLS_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Where the token signing key and generated certificate live (`WARDLINK_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `tracing` filter directive, e.g. `info` or `wardlink=debug,info` (`WARDLINK_LOG`).
    pub log_level: String,
    /// Base URL printed in join links, e.g. `https://conf.example-hospital.jp`
    /// (`WARDLINK_PUBLIC_URL`). Default: `https://<listen address>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Seconds a peer connection may take to connect before the client is told to retry it.
    pub connect_timeout_secs: u64,
    /// Seconds a connected peer connection may hear nothing from its client (a dead link,
    /// a closed laptop) before it is torn down and the client, if still there, told to
    /// reconnect. Shorter outages (a tunnel, a router switching masts) ride through.
    pub media_silence_secs: u64,
    /// Send runs of equal-sized datagrams to one peer with UDP GSO (Linux) where the kernel
    /// and device allow it; off sends one datagram per system call. On by default: it
    /// falls back by itself where GSO is refused.
    pub media_gso: bool,
    /// `SCHED_FIFO` priority (1..=99) the media threads ask for while they fan out widely
    /// (see `media/realtime.rs`); 0 never asks. Needs `CAP_SYS_NICE` or `LimitRTPRIO=`; without
    /// either the threads stay at normal priority.
    pub media_realtime_priority: u8,
    /// Hours a newly created join link stays valid.
    pub link_valid_hours: u64,
    /// Most participants one conference admits.
    pub max_participants_per_room: usize,
    /// Authentication, sessions, TLS and audit settings (the `[security]` table).
    pub security: SecurityConfig,
    /// Rate and size limits (the `[limits]` table).
    pub limits: LimitsConfig,
}

/// The `[security]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Also accept TLS 1.2 (for old clients that cannot do 1.3). Off by default.
    pub allow_tls12: bool,
    /// Extra origins (e.g. `https://conf.example.jp`) allowed to open `/ws`, besides the
    /// server's own origin.
    pub allowed_origins: Vec<String>,
    /// A staff session ends after this many idle minutes.
    pub session_idle_minutes: u64,
    /// A staff session ends this many hours after login, however active.
    pub session_absolute_hours: u64,
    /// Consecutive failed logins that lock an account.
    pub login_max_failures_per_account: u32,
    /// Failed logins from one IP address within the lockout window that block that address.
    pub login_max_failures_per_ip: u32,
    /// How long an account or address stays locked, in minutes.
    pub login_lockout_minutes: u64,
    /// Record peer addresses in the audit log as `redacted` instead of the IP.
    pub audit_redact_peer: bool,
    /// Invitation links work from this many minutes before the scheduled time.
    pub invitation_early_minutes: u64,
    /// Invitation links stop working this many hours after the scheduled time.
    pub invitation_late_hours: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            allow_tls12: false,
            allowed_origins: Vec::new(),
            session_idle_minutes: 15,
            session_absolute_hours: 12,
            login_max_failures_per_account: 5,
            login_max_failures_per_ip: 20,
            login_lockout_minutes: 15,
            audit_redact_peer: false,
            invitation_early_minutes: 60,
            invitation_late_hours: 4,
        }
    }
}

/// The `[limits]` table. Each limit, when hit, is answered with its own error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most conferences live at once (`room_limit`).
    pub max_conferences: usize,
    /// Largest signaling message in bytes (`message_too_large`).
    pub max_message_bytes: usize,
    /// Sustained signaling messages per second per connection (`rate_limited`).
    pub ws_messages_per_second: u32,
    /// Short bursts above the sustained rate allowed per connection.
    pub ws_message_burst: u32,
    /// WebSocket connections (join attempts) per minute per IP address (`rate_limited`).
    pub joins_per_minute_per_ip: u32,
    /// Login attempts per minute per IP address (`rate_limited`).
    pub logins_per_minute_per_ip: u32,
    /// A WebSocket that sends nothing for this many seconds is closed (`idle_timeout`).
    pub ws_idle_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_conferences: 100,
            max_message_bytes: 64 * 1024,
            ws_messages_per_second: 20,
            ws_message_burst: 60,
            joins_per_minute_per_ip: 30,
            logins_per_minute_per_ip: 10,
            ws_idle_secs: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8443)),
            media_port: 8443,
            media_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            public_ip: None,
            tls_cert: None,
            tls_key: None,
            data_dir: PathBuf::from("./wardlink-data"),
            log_level: "info".to_owned(),
            public_url: None,
            connect_timeout_secs: 10,
            media_silence_secs: crate::media::sfu::DEFAULT_SILENCE_LIMIT.as_secs(),
            media_gso: true,
            media_realtime_priority: 1,
            link_valid_hours: 24,
            max_participants_per_room: 16,
            security: SecurityConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Longest lifetime a join link may be given: links are bearer credentials.
pub const MAX_LINK_VALID_HOURS: u64 = 24 * 90;

impl Config {
    /// Defaults, then the TOML file at `path` (if any), then `WARDLINK_*` environment
    /// variables; validated.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Config::load_with_env(path, process_env)
    }

    /// [`Config::load`] with an injectable environment lookup (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> anyhow::Result<Option<String>>,
    ) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Config::from_toml_str(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text over the defaults (no environment, no validation).
    pub fn from_toml_str(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Applies `WARDLINK_*` overrides looked up through `env`. Empty values are ignored, so
    /// `WARDLINK_PUBLIC_IP=` in a unit file means "not set".
    pub fn apply_env(
        &mut self,
        env: impl Fn(&str) -> anyhow::Result<Option<String>>,
    ) -> anyhow::Result<()> {
        let get = |key: &str| -> anyhow::Result<Option<String>> {
            Ok(env(key)?
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()))
        };
        if let Some(v) = get("WARDLINK_LISTEN")? {
            self.listen = v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "WARDLINK_LISTEN={v:?} is not an IP:port address (e.g. 0.0.0.0:8443)"
                )
            })?;
        }
        if let Some(v) = get("WARDLINK_MEDIA_PORT")? {
            self.media_port = v.parse().map_err(|_| {
                anyhow::anyhow!("WARDLINK_MEDIA_PORT={v:?} is not a UDP port number (0-65535)")
            })?;
        }
        if let Some(v) = get("WARDLINK_PUBLIC_IP")? {
            self.public_ip =
                Some(v.parse().map_err(|_| {
                    anyhow::anyhow!("WARDLINK_PUBLIC_IP={v:?} is not an IP address")
                })?);
        }
        if let Some(v) = get("WARDLINK_TLS_CERT")? {
            self.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("WARDLINK_TLS_KEY")? {
            self.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = get("WARDLINK_DATA_DIR")? {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("WARDLINK_LOG")? {
            self.log_level = v;
        }
        if let Some(v) = get("WARDLINK_PUBLIC_URL")? {
            self.public_url = Some(v);
        }
        Ok(())
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bail!("tls_cert is set but tls_key is not (set both, or neither for a self-signed certificate)"),
            (None, Some(_)) => bail!("tls_key is set but tls_cert is not (set both, or neither for a self-signed certificate)"),
            _ => {}
        }
        if let Some(url) = &self.public_url {
            check_public_url(url)?;
        }
        if let Some(ip) = self.public_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                bail!("public_ip {ip} cannot be advertised to clients");
            }
        }
        if self.media_bind.is_multicast() {
            bail!("media_bind {} is a multicast address", self.media_bind);
        }
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir is empty");
        }
        if self.connect_timeout_secs == 0 || self.connect_timeout_secs > 300 {
            bail!(
                "connect_timeout_secs must be 1..=300, got {}",
                self.connect_timeout_secs
            );
        }
        if !(2..=600).contains(&self.media_silence_secs) {
            bail!(
                "media_silence_secs must be 2..=600, got {}",
                self.media_silence_secs
            );
        }
        if self.media_realtime_priority > 99 {
            bail!(
                "media_realtime_priority must be 0..=99 (0: never real-time), got {}",
                self.media_realtime_priority
            );
        }
        if self.link_valid_hours == 0 || self.link_valid_hours > MAX_LINK_VALID_HOURS {
            bail!(
                "link_valid_hours must be 1..={MAX_LINK_VALID_HOURS}, got {}",
                self.link_valid_hours
            );
        }
        if !(2..=500).contains(&self.max_participants_per_room) {
            bail!(
                "max_participants_per_room must be 2..=500, got {}",
                self.max_participants_per_room
            );
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            anyhow::anyhow!("log_level {:?} is not a valid filter: {e}", self.log_level)
        })?;
        Ok(())
    }

    /// The IP address put in the server's ICE candidates: `public_ip` if set, else the media
    /// bind address, else the listen address, else loopback (when both are unspecified, only
    /// `public_ip` can say which interface clients reach; `server::start` warns about that).
    pub fn advertised_media_ip(&self) -> IpAddr {
        if let Some(ip) = self.public_ip {
            return ip;
        }
        if !self.media_bind.is_unspecified() {
            return self.media_bind;
        }
        if !self.listen.ip().is_unspecified() {
            return self.listen.ip();
        }
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    /// The UDP address the media socket binds to.
    pub fn media_bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.media_bind, self.media_port)
    }

    /// Base URL for join links when HTTPS is served on `https_addr`: `public_url` (without a
    /// trailing slash) if set, else `https://<ip>:<port>`, where an unspecified listen IP is
    /// replaced by `public_ip` or loopback.
    pub fn base_url_for(&self, https_addr: SocketAddr) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let ip = if https_addr.ip().is_unspecified() {
            self.public_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            https_addr.ip()
        };
        format!("https://{}", SocketAddr::new(ip, https_addr.port()))
    }

    /// Base URL for join links created without a running server (`wardlink room create`).
    pub fn base_url(&self) -> String {
        self.base_url_for(self.listen)
    }
}

/// Reads one environment variable; a set but non-UTF-8 value is an error, not "unset".
fn process_env(key: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("environment variable {key} is not valid UTF-8")
        }
    }
}

fn check_public_url(raw: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(raw)
        .map_err(|e| anyhow::anyhow!("public_url {raw:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        bail!("public_url {raw:?} must start with https:// (browsers only allow cameras on secure origins)");
    }
    if url.host().is_none() {
        bail!("public_url {raw:?} has no host");
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        bail!("public_url {raw:?} must not have a query, fragment or user info");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example must parse and must show the real defaults, so the docs
    /// cannot drift from the code.
    #[test]
    fn example_config_parses_and_documents_the_defaults() {
        let text = include_str!("../../deploy/wardlink.example.toml");
        let parsed = Config::from_toml_str(text).expect("deploy/wardlink.example.toml parses");
        assert_eq!(parsed, Config::default());
    }
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> anyhow::Result<Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| Ok(map.get(k).cloned())
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
        assert_eq!(c.media_port, 8443);
        assert_eq!(
            c.advertised_media_ip(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.base_url(), "https://127.0.0.1:8443");
        assert_eq!(Config::load_with_env(None, env(&[])).unwrap(), c);
    }

    #[test]
    fn empty_toml_is_the_defaults() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn toml_sets_every_key() {
        let c = Config::from_toml_str(
            r#"
            listen = "0.0.0.0:443"
            media_port = 3478
            media_bind = "10.0.0.5"
            public_ip = "203.0.113.7"
            tls_cert = "/etc/wardlink/cert.pem"
            tls_key = "/etc/wardlink/key.pem"
            data_dir = "/var/lib/wardlink"
            log_level = "wardlink=debug,info"
            public_url = "https://conf.example.jp/"
            connect_timeout_secs = 15
            link_valid_hours = 48
            max_participants_per_room = 8
            media_realtime_priority = 0
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 443);
        assert_eq!(
            c.media_bind_addr(),
            "10.0.0.5:3478".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            c.advertised_media_ip(),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.tls_key.as_deref(),
            Some(Path::new("/etc/wardlink/key.pem"))
        );
        assert_eq!(c.base_url(), "https://conf.example.jp");
        assert_eq!(c.max_participants_per_room, 8);
        assert_eq!(c.media_realtime_priority, 0);
        // Serialising and parsing again gives the same config (used by `--print-config`-like tooling).
        assert_eq!(
            Config::from_toml_str(&toml::to_string(&c).unwrap()).unwrap(),
            c
        );
    }

    #[test]
    fn unknown_and_mistyped_keys_are_errors() {
        let err = Config::from_toml_str("listn = \"0.0.0.0:1\"").unwrap_err();
        assert!(format!("{err:#}").contains("listn"), "{err:#}");
        assert!(Config::from_toml_str("media_port = 70000").is_err());
        assert!(Config::from_toml_str("listen = \"localhost\"").is_err());
    }

    #[test]
    fn env_overrides_file() {
        let dir = std::env::temp_dir().join(format!("wardlink-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wardlink.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nmedia_port = 9001\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&path),
            env(&[
                ("WARDLINK_LISTEN", "127.0.0.1:0"),
                ("WARDLINK_MEDIA_PORT", " 0 "),
                ("WARDLINK_PUBLIC_IP", "198.51.100.2"),
                ("WARDLINK_TLS_CERT", "/c.pem"),
                ("WARDLINK_TLS_KEY", "/k.pem"),
                ("WARDLINK_DATA_DIR", "/tmp/wd"),
                ("WARDLINK_PUBLIC_URL", "https://example.org:8443"),
                ("WARDLINK_LOG", ""),
            ]),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert_eq!(c.media_port, 0);
        assert_eq!(c.public_ip, Some("198.51.100.2".parse().unwrap()));
        assert_eq!(c.tls_cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/k.pem")));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/wd"));
        assert_eq!(c.public_url.as_deref(), Some("https://example.org:8443"));
        // Empty env values leave the file's value alone.
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        for (key, value) in [
            ("WARDLINK_LISTEN", "8443"),
            ("WARDLINK_MEDIA_PORT", "-1"),
            ("WARDLINK_PUBLIC_IP", "example.org"),
            ("WARDLINK_PUBLIC_URL", "http://example.org"),
            ("WARDLINK_LOG", "=[=="),
        ] {
            let err = Config::load_with_env(None, env(&[(key, value)])).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains(key) || msg.contains(&key["WARDLINK_".len()..].to_lowercase()),
                "{key}: {msg}"
            );
        }
        let err =
            Config::load_with_env(None, |_| bail!("environment variable X is not valid UTF-8"))
                .unwrap_err();
        assert!(format!("{err}").contains("UTF-8"));
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load_with_env(Some(Path::new("/nonexistent/wardlink.toml")), env(&[]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/wardlink.toml"));
    }

    #[test]
    fn validation_catches_inconsistent_values() {
        let bad = [
            "tls_cert = \"/c.pem\"",
            "tls_key = \"/k.pem\"",
            "public_url = \"https://\"",
            "public_url = \"https://x.example/?a=1\"",
            "public_ip = \"0.0.0.0\"",
            "connect_timeout_secs = 0",
            "link_valid_hours = 0",
            "link_valid_hours = 100000",
            "max_participants_per_room = 1",
            "data_dir = \"\"",
            "media_realtime_priority = 100",
        ];
        for text in bad {
            let c = Config::from_toml_str(text).unwrap();
            assert!(c.validate().is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn advertised_ip_and_base_url_fallbacks() {
        let mut c = Config {
            listen: "0.0.0.0:8443".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(c.advertised_media_ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(
            c.base_url_for("0.0.0.0:9443".parse().unwrap()),
            "https://127.0.0.1:9443"
        );
        c.media_bind = "192.0.2.10".parse().unwrap();
        assert_eq!(
            c.advertised_media_ip(),
            "192.0.2.10".parse::<IpAddr>().unwrap()
        );
        c.public_ip = Some("203.0.113.9".parse().unwrap());
        assert_eq!(
            c.advertised_media_ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            c.base_url_for("0.0.0.0:9443".parse().unwrap()),
            "https://203.0.113.9:9443"
        );
        assert_eq!(
            c.base_url_for("[::1]:9443".parse().unwrap()),
            "https://[::1]:9443"
        );
        c.media_bind = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        c.public_ip = None;
        c.listen = "192.0.2.20:8443".parse().unwrap();
        assert_eq!(
            c.advertised_media_ip(),
            "192.0.2.20".parse::<IpAddr>().unwrap()
        );
    }
}
