//! `wardlink-load`: run one load scenario (or the leak check) against wardlink or Janus
//! and print the measurements as a table and, optionally, JSON.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use wardlink_load::janus_target::JanusTarget;
use wardlink_load::leak::{run_leak, LeakConfig};
use wardlink_load::peer::MediaPlan;
use wardlink_load::scenario::{print_table, run, ScenarioConfig, Target};
use wardlink_load::wardlink_target::WardlinkTarget;
use wardlink_load::InProcessWardlink;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SchedPolicy {
    Normal,
    Batch,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SubscriberSrtp {
    Direct,
    Rtc,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    Wardlink,
    Janus,
}

/// Load generator: R rooms × (P publishers + S receive-only subscribers), synthetic Opus
/// (50 pkt/s) and VP8-shaped video (30 fps, ~1.2 Mbit/s), every packet verified on arrival.
#[derive(Parser, Debug)]
#[command(name = "wardlink-load", version, about)]
struct Cli {
    /// Server to load.
    #[arg(long, value_enum, default_value = "wardlink")]
    target: TargetKind,
    /// wardlink: base URL (https://127.0.0.1:8443); omit to start wardlink in-process.
    /// janus: WebSocket URL (ws://127.0.0.1:8188).
    #[arg(long)]
    url: Option<String>,
    /// wardlink data directory (signing key, store, tls/cert.pem) for signing tokens.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// wardlink configuration file (its data_dir and base URL are used).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishers per room (each also receives the room's other publishers).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Receive-only subscribers per room.
    #[arg(long, default_value_t = 2)]
    subscribers: usize,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Media flowing before the window opens, seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Longest time for joins and first media, seconds.
    #[arg(long, default_value_t = 120)]
    setup_timeout: u64,
    /// Participants joining at once.
    #[arg(long, default_value_t = 8)]
    join_concurrency: usize,
    /// Server process whose CPU and memory to measure (in-process: this process).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Simulcast publishing (3 layers). Not implemented: wardlink does not forward
    /// simulcast yet, so the comparison would be one-sided.
    #[arg(long)]
    simulcast: bool,
    /// Video pacing at this multiple of the video bitrate, as browsers pace (libwebrtc:
    /// 2.5). 0 sends every frame's packets back to back.
    #[arg(long, default_value_t = wardlink_load::peer::DEFAULT_PACE_MULTIPLIER)]
    pace_multiplier: f64,
    /// Subscribers drop every Nth video datagram on arrival (emulated downlink loss that
    /// the server's NACK retransmissions must repair). 0: none.
    #[arg(long, default_value_t = 0)]
    downlink_drop_every: u32,
    /// Publishers drop every Nth outgoing video datagram (emulated uplink loss that the
    /// server's NACKs and the publishers' retransmissions must repair). 0: none.
    #[arg(long, default_value_t = 0)]
    uplink_drop_every: u32,
    /// Where subscribers decrypt received RTP: `direct` (the default since session 9) once
    /// a key tapped from `rtc` authenticates it, skipping `rtc`'s read pipeline and so
    /// taking less CPU from the server under test; `rtc` for everything through `rtc`, as
    /// before. The report records which was used.
    #[arg(long, value_enum, default_value = "direct")]
    subscriber_srtp: SubscriberSrtp,
    /// Scheduling policy of the generator's threads. `batch` (SCHED_BATCH) stops a
    /// generator thread woken by the server's send from preempting the server on the
    /// shared cores (see `sched.rs`); the report records which was used.
    #[arg(long, value_enum, default_value = "normal")]
    sched: SchedPolicy,
    /// Run the publishers' connections on a thread of their own under the normal policy
    /// (see `publisher_thread.rs`), so that the subscribers' receive work does not make
    /// their pacers late and burst; `false` runs them with everything else, as before
    /// session 15. The report records which was used.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    publisher_thread: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Label stored in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Local IP for every UDP socket.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: IpAddr,
    /// Instead of a scenario: this many join/publish/leave cycles (wardlink only), RSS
    /// before and after.
    #[arg(long)]
    leak_cycles: Option<u64>,
    /// Leak check: cycles in flight at once.
    #[arg(long, default_value_t = 4)]
    leak_concurrency: usize,
    /// Leak check: warm-up cycles before the first RSS reading.
    #[arg(long, default_value_t = 50)]
    leak_warmup: u64,
    /// Leak check: also read RSS (after the same settle pause) every this many measured
    /// cycles, to show whether growth levels off; 0 reads it only at the end.
    #[arg(long, default_value_t = 0)]
    leak_checkpoint_every: u64,
    /// Instead of running anything: print Markdown tables for the reports in this
    /// directory (written by run-benchmark.sh).
    #[arg(long, value_name = "DIR")]
    summarize: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rtc=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if cli.sched == SchedPolicy::Batch {
        if let Err(e) = wardlink_load::sched::use_batch() {
            eprintln!("error: cannot switch to SCHED_BATCH: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    // Started after the policy switch, which it undoes for its own thread.
    let publishers = if cli.publisher_thread && cli.leak_cycles.is_none() {
        match wardlink_load::publisher_thread::PublisherThread::start() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("error: cannot start the publisher thread: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let publisher_runtime = publishers.as_ref().map(|p| p.handle());
    // One runtime for everything else: on a 2-core machine shared with the server under
    // test, more worker threads than cores only adds contention.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli, publisher_runtime)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main(
    cli: Cli,
    publisher_runtime: Option<tokio::runtime::Handle>,
) -> anyhow::Result<()> {
    if let Some(dir) = &cli.summarize {
        print!("{}", wardlink_load::summary::summarize(dir)?);
        return Ok(());
    }
    if cli.simulcast {
        bail!("--simulcast is not implemented yet (wardlink does not forward simulcast layers)");
    }
    let mut in_process = None;
    let mut server_pid = cli.server_pid;
    let target = match cli.target {
        TargetKind::Janus => Target::Janus(Arc::new(JanusTarget {
            url: cli
                .url
                .clone()
                .unwrap_or_else(|| "ws://127.0.0.1:8188".to_owned()),
        })),
        TargetKind::Wardlink => {
            let (url, data_dir) = match (&cli.config, &cli.data_dir) {
                (Some(path), _) => {
                    let config = wardlink::config::Config::load(Some(path))?;
                    (
                        cli.url.clone().unwrap_or_else(|| config.base_url()),
                        Some(config.data_dir),
                    )
                }
                (None, Some(dir)) => (
                    cli.url.clone().context("--data-dir needs --url")?,
                    Some(dir.clone()),
                ),
                (None, None) => (String::new(), None),
            };
            match data_dir {
                Some(dir) => Target::Wardlink(Arc::new(WardlinkTarget::new(&url, &dir)?)),
                None => {
                    if cli.url.is_some() {
                        bail!("--url for wardlink needs --data-dir or --config to sign tokens");
                    }
                    let w = InProcessWardlink::start().await?;
                    eprintln!(
                        "started wardlink in-process at {} (CPU figures include the generator)",
                        w.server.base_url
                    );
                    server_pid.get_or_insert(std::process::id());
                    let t = w.target.clone();
                    in_process = Some(w);
                    Target::Wardlink(t)
                }
            }
        }
    };

    let outcome = if let Some(cycles) = cli.leak_cycles {
        let Target::Wardlink(w) = &target else {
            bail!("the leak check runs against wardlink only");
        };
        let report = run_leak(
            w.clone(),
            LeakConfig {
                cycles,
                warmup_cycles: cli.leak_warmup,
                checkpoint_every: cli.leak_checkpoint_every,
                concurrency: cli.leak_concurrency.max(1),
                server_pid,
                bind_ip: cli.bind_ip,
            },
        )
        .await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if report.cycles_failed > 0 {
            Err(anyhow::anyhow!(
                "{} leak-check cycles failed",
                report.cycles_failed
            ))
        } else {
            Ok(())
        }
    } else {
        let cfg = ScenarioConfig {
            label: cli.label.clone(),
            rooms: cli.rooms,
            publishers: cli.publishers,
            subscribers: cli.subscribers,
            duration: Duration::from_secs(cli.duration),
            warmup: Duration::from_secs(cli.warmup),
            setup_timeout: Duration::from_secs(cli.setup_timeout),
            join_concurrency: cli.join_concurrency,
            server_pid,
            plan: MediaPlan {
                pace_multiplier: (cli.pace_multiplier > 0.0).then_some(cli.pace_multiplier),
                downlink_drop_every: cli.downlink_drop_every,
                uplink_drop_every: cli.uplink_drop_every,
                direct_rx: cli.subscriber_srtp == SubscriberSrtp::Direct,
                publisher_runtime,
                ..MediaPlan::default()
            },
            bind_ip: cli.bind_ip,
        };
        let report = run(target, cfg).await?;
        print_table(&report);
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    };
    if let Some(w) = in_process {
        w.shutdown().await;
    }
    outcome
}
