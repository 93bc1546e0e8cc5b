//! The leak check: many join → publish → subscribe → leave cycles against one wardlink
//! server, comparing its resident memory before and after.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::sync::watch;

use crate::payload::Clock;
use crate::peer::MediaPlan;
use crate::procstat;
use crate::scenario::{ParticipantSpec, RunCtx, Status};
use crate::stats::{lock, PublisherCounters, RxStats, Window};
use crate::wardlink_target::{join_leave_cycle, random_device, WardlinkTarget};

/// Leak-check settings.
#[derive(Debug, Clone)]
pub struct LeakConfig {
    /// Measured cycles.
    pub cycles: u64,
    /// Cycles run before the "before" measurement (allocator and caches settle).
    pub warmup_cycles: u64,
    /// Read RSS after every this many measured cycles as well; 0 only at the end.
    pub checkpoint_every: u64,
    /// Cycles in flight at once (each its own invitation).
    pub concurrency: usize,
    /// Server process to measure.
    pub server_pid: Option<u32>,
    /// Local address for UDP sockets.
    pub bind_ip: std::net::IpAddr,
}

/// Result of the leak check.
#[derive(Debug, Clone, Serialize)]
pub struct LeakReport {
    /// Measured cycles completed successfully.
    pub cycles_ok: u64,
    /// Measured cycles that failed.
    pub cycles_failed: u64,
    /// First failures.
    pub errors: Vec<String>,
    /// Server RSS after the warm-up cycles, once the room is empty and settled, KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS after the measured cycles, once the room is empty and settled, KiB.
    pub rss_after_kib: Option<u64>,
    /// after − before, KiB.
    pub rss_growth_kib: Option<i64>,
    /// The anonymous part of `rss_before_kib` (heap, stacks), KiB.
    pub anon_before_kib: Option<u64>,
    /// The anonymous part of `rss_after_kib`, KiB.
    pub anon_after_kib: Option<u64>,
    /// Growth per measured cycle, bytes.
    pub growth_per_cycle_bytes: Option<f64>,
    /// Server peak RSS, KiB.
    pub hwm_kib: Option<u64>,
    /// Wall time of the measured cycles (settle pauses not included), s.
    pub seconds: f64,
    /// RSS after each block of measured cycles, read while the host is still in the room.
    pub checkpoints: Vec<LeakCheckpoint>,
}

/// Server RSS after some of the measured cycles.
#[derive(Debug, Clone, Serialize)]
pub struct LeakCheckpoint {
    /// Measured cycles started so far.
    pub cycles: u64,
    /// Server RSS after them and the settle pause, host present, KiB.
    pub rss_kib: Option<u64>,
    /// Its anonymous part, KiB.
    pub anon_kib: Option<u64>,
}

/// How many cycles each block of the measured phase runs: `every` at a time, the rest in
/// the last block; one block (possibly empty) when `every` is 0.
fn blocks(total: u64, every: u64) -> Vec<u64> {
    if every == 0 || total == 0 {
        return vec![total];
    }
    (0..total)
        .step_by(every as usize)
        .map(|start| every.min(total - start))
        .collect()
}

/// How long the server gets after a phase before RSS is read: it tears connections down
/// on timers too, and returns freed heap on a 2 s check after connections close. Longer
/// than tokio's 10 s keep-alive for idle blocking-pool threads, so that the threads the
/// phase used have exited by the reading (as long as the server gives its blocking pool
/// no work in the pause's first 2 s): a thread's exit runs libc code that nothing else
/// runs, and the first exits mapped about 180 KiB more of libc's pages (file-backed RSS),
/// which a 5 s pause left to fall either side of a reading (session 11).
const SETTLE: Duration = Duration::from_secs(12);

/// A host that stays in the leak-check room publishing, so every cycle also gets (and
/// must connect) a subscribe connection.
struct Host {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
}

impl Host {
    /// Joins with the host invitation and waits until its publish connection is up.
    async fn start(
        target: &Arc<WardlinkTarget>,
        token: &str,
        device: &str,
        ctx: &RunCtx,
    ) -> anyhow::Result<Host> {
        let (stop, stop_rx) = watch::channel(false);
        // The check's context with a stop signal of this host's own.
        let ctx = Arc::new(RunCtx {
            stop: stop_rx,
            ..ctx.clone()
        });
        let spec = Arc::new(ParticipantSpec {
            room: 0,
            id: 0,
            publisher: Some((0, Arc::new(PublisherCounters::default()))),
            rx: None,
            expected: Vec::new(),
            status: Status::default(),
            device: Some(device.to_owned()),
        });
        let task = tokio::spawn(crate::wardlink_target::run_participant(
            target.clone(),
            token.to_owned(),
            spec.clone(),
            ctx,
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !spec.status.publish_connected.load(Ordering::Relaxed) {
            if Instant::now() > deadline || task.is_finished() {
                bail!("leak check: the host did not start publishing");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Host { task, stop })
    }

    /// Leaves the room and waits (bounded) for the participant to finish.
    async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Runs the leak check.
///
/// "Before" and "after" are read in the same state: nobody in the room, after the
/// settle pause. The warm-up runs with one host, which then leaves; the measured cycles
/// run with a second host, which leaves at the end. The checkpoints in between are read
/// while the second host is still there, so state that grows with a long-lived
/// connection shows up as a rise across them even though it is freed when that host
/// leaves.
pub async fn run_leak(target: Arc<WardlinkTarget>, cfg: LeakConfig) -> anyhow::Result<LeakReport> {
    let tokens = target
        .minter
        .room("leak check", cfg.concurrency + 1)
        .context("creating the leak-check conference")?;
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (_go_tx, go_rx) = watch::channel(true);
    let ctx = Arc::new(RunCtx {
        clock: Clock::new(),
        window: Arc::new(Window::default()),
        plan: MediaPlan::default(),
        bind_ip: cfg.bind_ip,
        stop: stop_rx,
        subscribe_go: go_rx,
    });
    // Both hosts join from one device, as a host coming back would.
    let host_device = format!("leak-host-{}", random_device());
    let warmup_host = Host::start(&target, &tokens[0], &host_device, &ctx).await?;

    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    // One device per invitation for the whole check: a new device would (rightly) send
    // the invitation through the waiting room.
    let devices: Vec<String> = (0..cfg.concurrency)
        .map(|w| format!("leak-worker-{w}-{}", random_device()))
        .collect();
    let run_phase = |n: u64| {
        let next = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for w in 0..cfg.concurrency {
            let (next, ok, failed, errors) =
                (next.clone(), ok.clone(), failed.clone(), errors.clone());
            let (target, ctx) = (target.clone(), ctx.clone());
            let token = tokens[w + 1].clone();
            let device = devices[w].clone();
            workers.push(tokio::spawn(async move {
                let rx = Arc::new(Mutex::new(RxStats::default()));
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    match join_leave_cycle(&target, &token, &device, &ctx, rx.clone()).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut errs = lock(&errors);
                            if errs.len() < 10 {
                                errs.push(format!("{e:#}"));
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        async move {
            for w in workers {
                let _ = w.await;
            }
            (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
        }
    };
    run_phase(cfg.warmup_cycles).await;
    warmup_host.leave().await;
    tokio::time::sleep(SETTLE).await;
    let mem = |pid: Option<u32>| pid.and_then(|p| procstat::memory(p).ok());
    let before = mem(cfg.server_pid);
    let host = Host::start(&target, &tokens[0], &host_device, &ctx).await?;
    let (mut ok, mut failed, mut done, mut seconds) = (0, 0, 0, 0.0);
    let mut checkpoints = Vec::new();
    for n in blocks(cfg.cycles, cfg.checkpoint_every) {
        let t0 = Instant::now();
        let (o, f) = run_phase(n).await;
        seconds += t0.elapsed().as_secs_f64();
        (ok, failed, done) = (ok + o, failed + f, done + n);
        tokio::time::sleep(SETTLE).await;
        let now = mem(cfg.server_pid);
        checkpoints.push(LeakCheckpoint {
            cycles: done,
            rss_kib: now.map(|m| m.rss_kib),
            anon_kib: now.map(|m| m.anon_kib),
        });
    }
    host.leave().await;
    tokio::time::sleep(SETTLE).await;
    let after = mem(cfg.server_pid);
    let growth = match (before, after) {
        (Some(b), Some(a)) => Some(a.rss_kib as i64 - b.rss_kib as i64),
        _ => None,
    };
    let errors = lock(&errors).clone();
    Ok(LeakReport {
        cycles_ok: ok,
        cycles_failed: failed,
        errors,
        rss_before_kib: before.map(|m| m.rss_kib),
        rss_after_kib: after.map(|m| m.rss_kib),
        rss_growth_kib: growth,
        anon_before_kib: before.map(|m| m.anon_kib),
        anon_after_kib: after.map(|m| m.anon_kib),
        growth_per_cycle_bytes: growth
            .filter(|_| cfg.cycles > 0)
            .map(|g| (g as f64 * 1024.0 / cfg.cycles as f64 * 10.0).round() / 10.0),
        hwm_kib: after.map(|m| m.hwm_kib),
        seconds: (seconds * 100.0).round() / 100.0,
        checkpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::blocks;

    #[test]
    fn measured_cycles_split_into_blocks_that_add_up() {
        assert_eq!(blocks(1000, 0), [1000]);
        assert_eq!(blocks(1000, 250), [250, 250, 250, 250]);
        assert_eq!(blocks(1000, 300), [300, 300, 300, 100]);
        assert_eq!(blocks(100, 250), [100]);
        assert_eq!(blocks(0, 250), [0]);
    }
}
