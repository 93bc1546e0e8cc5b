//! wardlink-load: a WebRTC load generator for wardlink, and the same participants pointed
//! at Janus for a side-by-side forwarding benchmark.
//!
//! - [`payload`]: self-describing synthetic Opus/VP8 payloads (seq, send time, CRC);
//! - [`peer`]: one peer connection = one task on the sans-I/O `rtc` crate;
//! - [`wardlink_target`] / [`janus_target`]: the two servers' signaling;
//! - [`scenario`]: rooms × publishers × subscribers, the measurement window, the report;
//! - [`leak`]: join/leave cycles against wardlink with RSS before/after;
//! - [`publisher_thread`]: the publishers' own thread, woken on time for their pacers;
//! - [`procstat`]: CPU, memory and UDP drop counters from /proc;
//! - [`rxstamp`]: kernel receive timestamps for the latency measurement;
//! - [`sched`]: the generator's scheduling policy (`--sched batch`);
//! - [`sockopt`]: integer socket options (receive buffer, timestamps);
//! - [`stats`], [`histogram`]: counters and the latency histogram;
//! - [`summary`]: Markdown tables from a directory of reports.

pub mod histogram;
pub mod janus_target;
pub mod leak;
pub mod payload;
pub mod peer;
pub mod procstat;
pub mod publisher_thread;
pub mod rxstamp;
pub mod scenario;
pub mod sched;
pub mod sockopt;
pub mod stats;
pub mod summary;
pub mod tls;
pub mod wardlink_target;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

/// A wardlink server started inside this process on loopback, with limits raised for
/// load (joins per minute; participants per room at the most config.rs accepts).
pub struct InProcessWardlink {
    /// The running server (shut it down with [`InProcessWardlink::shutdown`]).
    pub server: wardlink::server::RunningServer,
    /// How participants reach it.
    pub target: Arc<wardlink_target::WardlinkTarget>,
    data_dir: PathBuf,
}

impl InProcessWardlink {
    /// Starts a server with a fresh data directory under the system temp dir.
    pub async fn start() -> anyhow::Result<InProcessWardlink> {
        let data_dir = std::env::temp_dir().join(format!(
            "wardlink-load-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut config = wardlink::config::Config {
            listen: SocketAddr::new(loopback, 0),
            media_port: 0,
            media_bind: loopback,
            data_dir: data_dir.clone(),
            log_level: "warn".to_owned(),
            max_participants_per_room: 500,
            ..Default::default()
        };
        config.limits.joins_per_minute_per_ip = 1_000_000;
        let server = wardlink::server::start(config)
            .await
            .context("starting wardlink in-process")?;
        let state = server.state();
        let minter = wardlink_target::Minter::new(
            state.store.clone(),
            state.keys.clone(),
            server.base_url.clone(),
        );
        let ws_url = format!("wss://{}/ws", server.https_addr);
        let cert = data_dir.join("tls").join("cert.pem");
        let target = Arc::new(wardlink_target::WardlinkTarget {
            ws_url,
            cert: cert.exists().then_some(cert),
            minter,
        });
        Ok(InProcessWardlink {
            server,
            target,
            data_dir,
        })
    }

    /// Stops the server and removes its data directory.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
