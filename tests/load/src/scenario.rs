//! One measured run: rooms of publishers and subscribers joined against a target, a
//! warm-up, a measurement window, and the report.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::histogram::{Coarse, Histogram};
use crate::janus_target::JanusTarget;
use crate::payload::{Clock, StreamKind};
use crate::peer::MediaPlan;
use crate::procstat;
use crate::stats::{
    lock, max_paced_backlog, PublisherCounters, RxStats, SharedRx, Window, SETTLED_BACKLOG,
};
use crate::wardlink_target::WardlinkTarget;

/// Which server the participants talk to.
#[derive(Clone)]
pub enum Target {
    /// wardlink over `/ws`.
    Wardlink(Arc<WardlinkTarget>),
    /// Janus VideoRoom over its WebSocket API.
    Janus(Arc<JanusTarget>),
}

impl Target {
    /// `wardlink` or `janus`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Wardlink(_) => "wardlink",
            Target::Janus(_) => "janus",
        }
    }
}

/// Progress of one participant, read by the coordinator.
#[derive(Debug, Default)]
pub struct Status {
    /// In the conference (and, for Janus, publishing negotiated).
    pub joined: AtomicBool,
    /// Publish connection up.
    pub publish_connected: AtomicBool,
    /// Subscribe connection up.
    pub subscribe_connected: AtomicBool,
    /// `reconnect` instructions from the server.
    pub reconnects: AtomicU64,
    /// The participant task has ended.
    pub finished: AtomicBool,
    /// Microseconds from sending `leave` to reading `bye` (wardlink; at least 1), 0 if
    /// no `bye` was read.
    pub bye_after_leave_us: AtomicU64,
    /// Notable problems (bounded).
    pub errors: Mutex<Vec<String>>,
}

impl Status {
    /// Records a problem (keeps the first 20).
    pub fn error(&self, text: String) {
        let mut e = lock(&self.errors);
        if e.len() < 20 {
            e.push(text);
        }
    }
}

/// One participant of a run.
pub struct ParticipantSpec {
    /// Room number (0-based).
    pub room: usize,
    /// Participant number (global).
    pub id: u32,
    /// Publisher index and counters, if it publishes.
    pub publisher: Option<(u32, Arc<PublisherCounters>)>,
    /// Receive counters, if it subscribes to anyone.
    pub rx: Option<SharedRx>,
    /// Publisher indices it should receive (everyone else publishing in its room).
    pub expected: Vec<u32>,
    /// Progress.
    pub status: Status,
    /// Device id to join with; a fresh random one when `None`. An invitation already used
    /// from one device sends another device through the waiting room.
    pub device: Option<String>,
}

/// What every participant of a run shares.
#[derive(Clone)]
pub struct RunCtx {
    /// The shared clock.
    pub clock: Clock,
    /// The measurement window.
    pub window: Arc<Window>,
    /// Media shape.
    pub plan: MediaPlan,
    /// Local address for every UDP socket.
    pub bind_ip: IpAddr,
    /// Set when the run ends: participants leave.
    pub stop: watch::Receiver<bool>,
    /// Set once every publisher is up (Janus subscribers join then).
    pub subscribe_go: watch::Receiver<bool>,
}

/// Shape and timing of a run.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// Free-form label for the report.
    pub label: String,
    /// Number of rooms.
    pub rooms: usize,
    /// Publishing participants per room (each also receives the other publishers).
    pub publishers: usize,
    /// Receive-only participants per room.
    pub subscribers: usize,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Media flowing before the window opens.
    pub warmup: Duration,
    /// Longest time to get everyone joined and every stream flowing.
    pub setup_timeout: Duration,
    /// Participants joining at once.
    pub join_concurrency: usize,
    /// The server process to measure (CPU, memory).
    pub server_pid: Option<u32>,
    /// Media shape.
    pub plan: MediaPlan,
    /// Local address for every UDP socket.
    pub bind_ip: IpAddr,
}

/// Latency summary, µs.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl From<&Histogram> for Latency {
    fn from(h: &Histogram) -> Self {
        Latency {
            count: h.count(),
            p50_us: h.quantile(0.5),
            p99_us: h.quantile(0.99),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Latency of the packets sent in one second of the window (all kinds), from a coarse
/// histogram ([`crate::histogram::Coarse`]): shows where in the window a tail came from.
#[derive(Debug, Clone, Serialize)]
pub struct SecondLatency {
    /// Seconds since the window opened.
    pub second: usize,
    /// Samples.
    pub count: u64,
    /// 99th percentile, rounded up to the next 250 µs.
    pub p99_us: u64,
    /// Samples of 5 ms or more.
    pub at_least_5ms: u64,
    /// Maximum.
    pub max_us: u64,
}

/// Server-side measurements.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerMeasure {
    /// Process measured.
    pub pid: Option<u32>,
    /// CPU seconds used per second of the window (1.0 = one core busy).
    pub cpu_s_per_s: Option<f64>,
    /// CPU seconds per forwarded (received) Mbit.
    pub cpu_ms_per_mbit: Option<f64>,
    /// RSS before anyone joined, KiB.
    pub rss_before_kib: Option<u64>,
    /// Largest RSS sampled during the window, KiB.
    pub rss_max_kib: Option<u64>,
    /// Peak RSS since the process started (VmHWM), KiB.
    pub hwm_kib: Option<u64>,
    /// (RSS max − RSS before) / participants, KiB.
    pub rss_per_participant_kib: Option<f64>,
}

/// RTCP the publishers received from the server about their own streams, whole run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerFeedback {
    /// Receiver reports.
    pub receiver_reports: u64,
    /// Transport-wide congestion control feedback.
    pub twcc: u64,
    /// Generic NACKs.
    pub nacks: u64,
    /// Packets the TWCC feedback covered.
    pub twcc_covered: u64,
    /// Of those, packets it reported received.
    pub twcc_received: u64,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `wardlink` or `janus`.
    pub target: String,
    /// Label.
    pub label: String,
    /// Rooms.
    pub rooms: usize,
    /// Publishers per room.
    pub publishers_per_room: usize,
    /// Receive-only subscribers per room.
    pub subscribers_per_room: usize,
    /// Participants in total.
    pub participants: usize,
    /// (subscriber, publisher, kind) streams the server should forward.
    pub streams_expected: usize,
    /// Of those, the ones that delivered anything before the window opened.
    pub streams_flowing_at_start: usize,
    /// Seconds from the first join until every stream flowed (or the setup timeout).
    pub setup_s: f64,
    /// Seconds then spent waiting for the publishers' pacers to catch up (at most
    /// [`SETTLED_BACKLOG`] video packets queued in each), before the warm-up.
    pub settle_s: f64,
    /// The largest pacer backlog (video packets) among the publishers when the window
    /// opened.
    pub paced_backlog_at_start: u64,
    /// Length of the window, s.
    pub window_s: f64,
    /// Packets the subscribers should have received in the window.
    pub expected_packets: u64,
    /// Distinct packets they received.
    pub received_packets: u64,
    /// expected − received.
    pub lost_packets: u64,
    /// lost / expected, %.
    pub loss_pct: f64,
    /// Highest loss of any single stream, %.
    pub worst_stream_loss_pct: f64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Packets that arrived after a later one of the same stream (first arrivals only).
    pub reordered: u64,
    /// Video datagrams the subscribers dropped on arrival to emulate downlink loss
    /// ([`crate::peer::MediaPlan::downlink_drop_every`]); each had to come back as a
    /// retransmission not to count as lost.
    pub downlink_dropped: u64,
    /// Video datagrams the publishers did not send, to emulate uplink loss
    /// ([`crate::peer::MediaPlan::uplink_drop_every`]); each had to be asked for by the
    /// server (NACK) and sent again not to count as lost.
    pub uplink_dropped: u64,
    /// RTCP packets the publishers received from the server about their own streams:
    /// receiver reports, TWCC feedback and NACKs (the server's receive-side interceptors).
    pub server_feedback: ServerFeedback,
    /// Payloads that failed verification.
    pub corrupt: u64,
    /// Packets from a publisher the subscriber should not receive (misrouting).
    pub unexpected_packets: u64,
    /// Received packets per second (forwarded by the server).
    pub forwarded_pps: f64,
    /// Received RTP payload Mbit/s.
    pub forwarded_mbps: f64,
    /// Publishers' packets per second into the server.
    pub ingress_pps: f64,
    /// What the publishers should have sent by their plan, packets per second
    /// ([`crate::peer::MediaPlan::nominal_pps`]); `ingress_pps` well below it means the
    /// generator was starved and the server got less than the scenario's load.
    pub nominal_ingress_pps: f64,
    /// Video pacing multiplier the publishers used (`None`: frames sent back to back).
    pub pace_multiplier: Option<f64>,
    /// The generator's scheduling policy (`normal`, or `batch` with `--sched batch`).
    pub generator_sched: String,
    /// Whether the publishers ran on a thread of their own
    /// ([`crate::publisher_thread`]); absent in reports from before session 15 (`false`).
    pub publisher_thread: bool,
    /// Where subscribers were asked to decrypt RTP: `direct` or `rtc`
    /// ([`wardlink::media::direct_rx`]).
    pub subscriber_srtp: String,
    /// Received RTP packets that subscribers decrypted outside `rtc`, % of all received.
    pub subscriber_direct_pct: f64,
    /// One-way latency publisher → server → subscriber, all packets: from the send time
    /// in the payload to the kernel's receive timestamp on the subscriber's socket.
    pub latency: Latency,
    /// Audio only.
    pub latency_audio: Latency,
    /// Video only.
    pub latency_video: Latency,
    /// All kinds, per second of the window.
    pub latency_by_second: Vec<SecondLatency>,
    /// The server process.
    pub server: ServerMeasure,
    /// Generator CPU seconds per second.
    pub generator_cpu_s_per_s: f64,
    /// Whole machine busy CPU seconds per second during the window (all cores).
    pub machine_cpu_s_per_s: f64,
    /// machine − server − generator: kernel networking plus any other process. A large
    /// value on an otherwise idle machine is softirq work; a jump means something else
    /// (a compiler, say) competed for the CPU and the run is not comparable.
    pub other_cpu_s_per_s: f64,
    /// Generator send lag p99 (schedule vs actual), µs: high means the generator starved.
    pub generator_lag_p99_us: u64,
    /// Writes refused by our own connections.
    pub send_errors: u64,
    /// Keyframe requests the publishers received.
    pub keyframe_requests: u64,
    /// Kernel UDP counters over the window (whole machine).
    pub udp: procstat::UdpCounters,
    /// Receive-buffer drops over the window on the server's own sockets vs the others.
    pub socket_drops: procstat::SocketDrops,
    /// Server `reconnect` instructions.
    pub reconnects: u64,
    /// Participants whose task failed.
    pub failed_participants: usize,
    /// From each participant's `leave` to its `bye`, when everyone leaves at the end
    /// (wardlink only; `count` is how many read a `bye`).
    pub leave_to_bye: Latency,
    /// First problems seen.
    pub errors: Vec<String>,
}

/// Starts one participant's task against the target.
type Launcher = Box<dyn Fn(Arc<ParticipantSpec>) -> JoinHandle<anyhow::Result<()>>>;

/// Runs one scenario against `target`.
pub async fn run(target: Target, cfg: ScenarioConfig) -> anyhow::Result<Report> {
    let clock = Clock::new();
    let window = Arc::new(Window::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);
    let ctx = Arc::new(RunCtx {
        clock,
        window: window.clone(),
        plan: cfg.plan.clone(),
        bind_ip: cfg.bind_ip,
        stop: stop_rx,
        subscribe_go: go_rx,
    });
    let server_mem_before = cfg.server_pid.and_then(|pid| procstat::memory(pid).ok());

    let per_room = cfg.publishers + cfg.subscribers;
    let mut specs: Vec<Arc<ParticipantSpec>> = Vec::new();
    let mut pub_counters: Vec<Arc<PublisherCounters>> = Vec::new();
    for room in 0..cfg.rooms {
        let pubs: Vec<u32> = (0..cfg.publishers)
            .map(|i| (room * cfg.publishers + i) as u32)
            .collect();
        for j in 0..per_room {
            let publisher = (j < cfg.publishers).then(|| {
                let c = Arc::new(PublisherCounters::default());
                pub_counters.push(c.clone());
                (pubs[j], c)
            });
            let expected: Vec<u32> = pubs
                .iter()
                .copied()
                .filter(|p| publisher.as_ref().map(|x| x.0) != Some(*p))
                .collect();
            let rx = (!expected.is_empty()).then(|| Arc::new(Mutex::new(RxStats::default())));
            specs.push(Arc::new(ParticipantSpec {
                room,
                id: (room * per_room + j) as u32,
                publisher,
                rx,
                expected,
                status: Status::default(),
                device: None,
            }));
        }
    }

    // Per-room credentials.
    let setup_started = Instant::now();
    let mut launchers: Vec<Launcher> = Vec::new();
    match &target {
        Target::Wardlink(w) => {
            let mut tokens = Vec::new();
            for room in 0..cfg.rooms {
                tokens.push(
                    w.minter
                        .room(&format!("load {} room {room}", cfg.label), per_room)
                        .context("creating a wardlink conference")?,
                );
            }
            let tokens = Arc::new(tokens);
            let w = w.clone();
            let ctx = ctx.clone();
            launchers.push(Box::new(move |spec: Arc<ParticipantSpec>| {
                let token = tokens[spec.room][spec.id as usize % per_room].clone();
                tokio::spawn(crate::wardlink_target::run_participant(
                    w.clone(),
                    token,
                    spec,
                    ctx.clone(),
                ))
            }));
        }
        Target::Janus(j) => {
            let rooms = j.create_rooms(cfg.rooms, per_room + 1).await?;
            let j = j.clone();
            let ctx = ctx.clone();
            launchers.push(Box::new(move |spec: Arc<ParticipantSpec>| {
                tokio::spawn(crate::janus_target::run_participant(
                    j.clone(),
                    rooms[spec.room],
                    spec,
                    ctx.clone(),
                ))
            }));
        }
    }
    let launch = &launchers[0];

    // Publishers first, a bounded number joining at once.
    let setup_deadline = setup_started + cfg.setup_timeout;
    let mut tasks: Vec<(Arc<ParticipantSpec>, JoinHandle<anyhow::Result<()>>)> = Vec::new();
    let ordered: Vec<Arc<ParticipantSpec>> = specs
        .iter()
        .filter(|s| s.publisher.is_some())
        .chain(specs.iter().filter(|s| s.publisher.is_none()))
        .cloned()
        .collect();
    let mut go_sent = false;
    for spec in ordered {
        if spec.publisher.is_none() && !go_sent {
            wait_until(setup_deadline, || {
                tasks.iter().all(|(s, _)| {
                    s.status.publish_connected.load(Ordering::Relaxed)
                        || s.status.finished.load(Ordering::Relaxed)
                })
            })
            .await;
            let _ = go_tx.send(true);
            go_sent = true;
        }
        wait_until(setup_deadline, || {
            tasks
                .iter()
                .filter(|(s, _)| !ready(s) && !s.status.finished.load(Ordering::Relaxed))
                .count()
                < cfg.join_concurrency.max(1)
        })
        .await;
        let handle = launch(spec.clone());
        let watcher_spec = spec.clone();
        // Mark finished when the task ends, without taking its JoinHandle.
        let handle = tokio::spawn(async move {
            let r = handle.await;
            watcher_spec.status.finished.store(true, Ordering::Relaxed);
            match r {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("participant task panicked: {e}")),
            }
        });
        tasks.push((spec, handle));
    }
    if !go_sent {
        wait_until(setup_deadline, || {
            tasks.iter().all(|(s, _)| {
                s.status.publish_connected.load(Ordering::Relaxed)
                    || s.status.finished.load(Ordering::Relaxed)
            })
        })
        .await;
        let _ = go_tx.send(true);
    }

    let streams_expected: usize = specs.iter().map(|s| s.expected.len() * 2).sum();
    let flowing = || -> usize {
        specs
            .iter()
            .filter_map(|s| s.rx.as_ref().map(|rx| (s, rx)))
            .map(|(s, rx)| {
                let rx = lock(rx);
                s.expected
                    .iter()
                    .flat_map(|p| StreamKind::ALL.map(|k| (*p, k)))
                    .filter(|key| rx.streams.get(key).is_some_and(|st| st.total > 0))
                    .count()
            })
            .sum()
    };
    wait_until(setup_deadline, || flowing() >= streams_expected).await;
    let setup_s = setup_started.elapsed().as_secs_f64();
    // Publishers starved while everyone joined have video queued in their pacers; it would
    // drain inside the window at the pacing rate (2.5 × the bitrate) and load the server
    // above the plan. Wait, bounded like the setup, until every pacer has caught up.
    let settle_started = Instant::now();
    wait_until(settle_started + cfg.setup_timeout, || {
        max_paced_backlog(&pub_counters) <= SETTLED_BACKLOG
    })
    .await;
    let settle_s = settle_started.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.warmup).await;
    let streams_flowing_at_start = flowing();
    let paced_backlog_at_start = max_paced_backlog(&pub_counters);

    // The window.
    let pid = cfg.server_pid;
    let cpu0 = pid.and_then(|p| procstat::cpu_seconds(p).ok());
    let gen0 = procstat::cpu_seconds(std::process::id()).ok();
    let machine0 = procstat::machine_busy_seconds().ok();
    let udp0 = procstat::udp_counters();
    let drops0 = procstat::socket_drops(pid);
    let t0 = Instant::now();
    window.open(clock.ns_at(t0));
    let mut rss_max = 0u64;
    let end = t0 + cfg.duration;
    while Instant::now() < end {
        if let Some(m) = pid.and_then(|p| procstat::memory(p).ok()) {
            rss_max = rss_max.max(m.rss_kib);
        }
        let left = end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
    let t1 = Instant::now();
    window.close(clock.ns_at(t1));
    let cpu1 = pid.and_then(|p| procstat::cpu_seconds(p).ok());
    let gen1 = procstat::cpu_seconds(std::process::id()).ok();
    let machine1 = procstat::machine_busy_seconds().ok();
    let udp = procstat::udp_counters().since(&udp0);
    let socket_drops = procstat::socket_drops(pid).since(&drops0);
    let window_s = (t1 - t0).as_secs_f64();
    if let Some(m) = pid.and_then(|p| procstat::memory(p).ok()) {
        rss_max = rss_max.max(m.rss_kib);
    }
    let hwm = pid
        .and_then(|p| procstat::memory(p).ok())
        .map(|m| m.hwm_kib);
    // Let packets still in flight arrive; anything later than this counts as lost.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Tally.
    let sent_in_window = |p: u32, k: StreamKind| -> u64 {
        pub_counters
            .get(p as usize)
            .map_or(0, |c| c.sent_in_window[k.index()].load(Ordering::Relaxed))
    };
    let mut expected_packets = 0u64;
    let mut received_packets = 0u64;
    let mut worst = 0f64;
    let mut duplicates = 0u64;
    let mut reordered = 0u64;
    let mut downlink_dropped = 0u64;
    let mut direct = 0u64;
    let mut packets = 0u64;
    let mut corrupt = 0u64;
    let mut unexpected = 0u64;
    let mut bytes = 0u64;
    let mut all = Histogram::default();
    let mut per_kind = [Histogram::default(), Histogram::default()];
    let mut by_second: Vec<Coarse> = Vec::new();
    for s in &specs {
        let Some(rx) = &s.rx else { continue };
        let rx = lock(rx);
        for p in &s.expected {
            for k in StreamKind::ALL {
                let exp = sent_in_window(*p, k);
                let got = rx.streams.get(&(*p, k)).map_or(0, |st| st.in_window);
                expected_packets += exp;
                received_packets += got.min(exp);
                if exp > 0 {
                    worst = worst.max(exp.saturating_sub(got) as f64 / exp as f64 * 100.0);
                }
            }
        }
        for ((p, _), st) in &rx.streams {
            duplicates += st.duplicates;
            reordered += st.reordered;
            if s.expected.contains(p) {
                bytes += st.bytes_in_window;
            } else {
                unexpected += st.total;
            }
        }
        corrupt += rx.corrupt.values().sum::<u64>();
        downlink_dropped += rx.dropped;
        direct += rx.direct;
        packets += rx.packets;
        for (i, h) in rx.latency.iter().enumerate() {
            all.merge(h);
            per_kind[i].merge(h);
        }
        if by_second.len() < rx.latency_by_second.len() {
            by_second.resize(rx.latency_by_second.len(), Coarse::default());
        }
        for (sum, h) in by_second.iter_mut().zip(&rx.latency_by_second) {
            sum.merge(h);
        }
    }
    let lost = expected_packets - received_packets;
    let ingress: u64 = pub_counters
        .iter()
        .map(|c| {
            c.sent_in_window
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum::<u64>()
        })
        .sum();
    let mut lag = Histogram::default();
    let mut send_errors = 0;
    let mut keyframe_requests = 0;
    let mut uplink_dropped = 0;
    let mut feedback = [0u64; 3];
    let mut twcc = [0u64; 2];
    for c in &pub_counters {
        lag.merge(&lock(&c.lag_us));
        send_errors += c.send_errors.load(Ordering::Relaxed);
        keyframe_requests += c.keyframe_requests.load(Ordering::Relaxed);
        uplink_dropped += c.uplink_dropped.load(Ordering::Relaxed);
        for (sum, n) in feedback.iter_mut().zip(&c.server_feedback) {
            *sum += n.load(Ordering::Relaxed);
        }
        for (sum, n) in twcc.iter_mut().zip(&c.twcc_packets) {
            *sum += n.load(Ordering::Relaxed);
        }
    }
    let server_feedback = ServerFeedback {
        receiver_reports: feedback[0],
        twcc: feedback[1],
        nacks: feedback[2],
        twcc_covered: twcc[0],
        twcc_received: twcc[1],
    };

    // Everyone leaves.
    let _ = stop_tx.send(true);
    let mut failed = 0;
    let mut errors = Vec::new();
    let mut reconnects = 0;
    let mut leave_to_bye = Histogram::default();
    for (spec, task) in tasks {
        let r = tokio::time::timeout(Duration::from_secs(15), task).await;
        let failed_now = match r {
            Ok(Ok(Ok(()))) => false,
            Ok(Ok(Err(e))) => {
                if errors.len() < 10 {
                    errors.push(format!("participant {}: {e:#}", spec.id));
                }
                true
            }
            Ok(Err(e)) => {
                errors.push(format!("participant {}: {e}", spec.id));
                true
            }
            Err(_) => {
                errors.push(format!("participant {}: did not leave in 15 s", spec.id));
                true
            }
        };
        failed += usize::from(failed_now);
        reconnects += spec.status.reconnects.load(Ordering::Relaxed);
        match spec.status.bye_after_leave_us.load(Ordering::Relaxed) {
            0 => {}
            us => leave_to_bye.record(us),
        }
        for e in lock(&spec.status.errors).iter() {
            if errors.len() < 10 {
                errors.push(format!("participant {}: {e}", spec.id));
            }
        }
    }

    let mbps = bytes as f64 * 8.0 / window_s / 1e6;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a) / window_s),
        _ => None,
    };
    let participants = specs.len();
    let per_s = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) / window_s,
        _ => 0.0,
    };
    let generator_cpu = per_s(gen0, gen1);
    let machine_cpu = per_s(machine0, machine1);
    // In-process runs measure one process for both roles.
    let own = if pid == Some(std::process::id()) {
        generator_cpu
    } else {
        generator_cpu + cpu.unwrap_or(0.0)
    };
    let rss_before = server_mem_before.map(|m| m.rss_kib);
    Ok(Report {
        target: target.name().to_owned(),
        label: cfg.label.clone(),
        pace_multiplier: cfg.plan.pace_multiplier,
        generator_sched: crate::sched::policy_name().to_owned(),
        publisher_thread: cfg.plan.publisher_runtime.is_some(),
        subscriber_srtp: if cfg.plan.direct_rx { "direct" } else { "rtc" }.to_owned(),
        subscriber_direct_pct: if packets > 0 {
            round(direct as f64 / packets as f64 * 100.0, 2)
        } else {
            0.0
        },
        rooms: cfg.rooms,
        publishers_per_room: cfg.publishers,
        subscribers_per_room: cfg.subscribers,
        participants,
        streams_expected,
        streams_flowing_at_start,
        setup_s: round(setup_s, 2),
        settle_s: round(settle_s, 2),
        paced_backlog_at_start,
        window_s: round(window_s, 3),
        expected_packets,
        received_packets,
        lost_packets: lost,
        loss_pct: if expected_packets > 0 {
            round(lost as f64 / expected_packets as f64 * 100.0, 4)
        } else {
            0.0
        },
        worst_stream_loss_pct: round(worst, 3),
        duplicates,
        reordered,
        downlink_dropped,
        uplink_dropped,
        server_feedback,
        corrupt,
        unexpected_packets: unexpected,
        forwarded_pps: round(received_packets as f64 / window_s, 1),
        forwarded_mbps: round(mbps, 3),
        ingress_pps: round(ingress as f64 / window_s, 1),
        nominal_ingress_pps: round(pub_counters.len() as f64 * cfg.plan.nominal_pps(), 1),
        latency: Latency::from(&all),
        latency_audio: Latency::from(&per_kind[0]),
        latency_video: Latency::from(&per_kind[1]),
        latency_by_second: by_second
            .iter()
            .enumerate()
            .map(|(second, h)| SecondLatency {
                second,
                count: h.count(),
                p99_us: h.quantile_upper(0.99),
                at_least_5ms: h.at_least(5_000),
                max_us: h.max(),
            })
            .collect(),
        server: ServerMeasure {
            pid,
            cpu_s_per_s: cpu.map(|c| round(c, 4)),
            cpu_ms_per_mbit: cpu
                .filter(|_| mbps > 0.0)
                .map(|c| round(c * 1000.0 / mbps, 4)),
            rss_before_kib: rss_before,
            rss_max_kib: pid.map(|_| rss_max),
            hwm_kib: hwm,
            rss_per_participant_kib: rss_before
                .filter(|_| participants > 0 && pid.is_some())
                .map(|b| round(rss_max.saturating_sub(b) as f64 / participants as f64, 1)),
        },
        generator_cpu_s_per_s: round(generator_cpu, 4),
        machine_cpu_s_per_s: round(machine_cpu, 4),
        other_cpu_s_per_s: round(machine_cpu - own, 4),
        generator_lag_p99_us: lag.quantile(0.99),
        send_errors,
        keyframe_requests,
        udp,
        socket_drops,
        reconnects,
        failed_participants: failed,
        leave_to_bye: Latency::from(&leave_to_bye),
        errors,
    })
}

fn ready(s: &ParticipantSpec) -> bool {
    let st = &s.status;
    st.joined.load(Ordering::Relaxed)
        && (s.publisher.is_none() || st.publish_connected.load(Ordering::Relaxed))
}

async fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) {
    while !cond() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

/// Prints a report as a compact table.
pub fn print_table(r: &Report) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "── {} · {} · {} room(s) × ({} pub + {} sub) = {} participants, {} streams",
        r.target,
        r.label,
        r.rooms,
        r.publishers_per_room,
        r.subscribers_per_room,
        r.participants,
        r.streams_expected
    );
    println!(
        "  setup {:.1}s, pacers caught up after {:.1}s more ({} video packets queued at the start), streams flowing at start {}/{}, window {:.1}s",
        r.setup_s, r.settle_s, r.paced_backlog_at_start, r.streams_flowing_at_start, r.streams_expected, r.window_s
    );
    println!(
        "  forwarded {:>10.0} pkt/s {:>9.2} Mbit/s   (ingress {:.0} pkt/s of {:.0} by the plan)",
        r.forwarded_pps, r.forwarded_mbps, r.ingress_pps, r.nominal_ingress_pps
    );
    println!(
        "  loss {:.4}% ({} of {}), worst stream {:.3}%, duplicates {}, reordered {}, corrupt {}, misrouted {}",
        r.loss_pct,
        r.lost_packets,
        r.expected_packets,
        r.worst_stream_loss_pct,
        r.duplicates,
        r.reordered,
        r.corrupt,
        r.unexpected_packets
    );
    if r.uplink_dropped > 0 {
        println!(
            "  emulated uplink loss: {} video datagrams not sent by the publishers (recovered only by the server's NACKs)",
            r.uplink_dropped
        );
    }
    println!(
        "  server feedback to publishers (RTCP packets): receiver reports {}, TWCC {} (covering {} packets, {} received), NACK {}",
        r.server_feedback.receiver_reports,
        r.server_feedback.twcc,
        r.server_feedback.twcc_covered,
        r.server_feedback.twcc_received,
        r.server_feedback.nacks
    );
    if r.downlink_dropped > 0 {
        println!(
            "  emulated downlink loss: {} video datagrams dropped on arrival (recovered only by NACK)",
            r.downlink_dropped
        );
    }
    match r.pace_multiplier {
        Some(m) => println!("  publishers' video paced at {m}x its bitrate"),
        None => println!("  publishers' video frames sent back to back (unpaced)"),
    }
    println!("  generator scheduling policy: {}", r.generator_sched);
    println!(
        "  publishers: {}",
        if r.publisher_thread {
            "on a thread of their own"
        } else {
            "on the runtime shared with the subscribers"
        }
    );
    println!(
        "  subscribers' SRTP: {} ({:.2} % of received RTP decrypted outside rtc)",
        r.subscriber_srtp, r.subscriber_direct_pct
    );
    println!(
        "  latency ms: p50 {:.2}  p99 {:.2}  max {:.2}   (audio p99 {:.2}, video p99 {:.2})",
        ms(r.latency.p50_us),
        ms(r.latency.p99_us),
        ms(r.latency.max_us),
        ms(r.latency_audio.p99_us),
        ms(r.latency_video.p99_us)
    );
    if !r.latency_by_second.is_empty() {
        let p99: Vec<String> = r
            .latency_by_second
            .iter()
            .map(|s| format!("{:.2}", ms(s.p99_us)))
            .collect();
        let tail: u64 = r.latency_by_second.iter().map(|s| s.at_least_5ms).sum();
        println!(
            "  p99 per second of the window, ms (250 µs steps): {}; samples of 5 ms or more: {} ({})",
            p99.join(" "),
            tail,
            r.latency_by_second
                .iter()
                .map(|s| s.at_least_5ms.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let s = &r.server;
    println!(
        "  server pid {:?}: cpu {} core, {} ms CPU per Mbit; RSS before {} KiB, max {} KiB, HWM {} KiB, per participant {} KiB",
        s.pid,
        opt(s.cpu_s_per_s),
        opt(s.cpu_ms_per_mbit),
        opt(s.rss_before_kib),
        opt(s.rss_max_kib),
        opt(s.hwm_kib),
        opt(s.rss_per_participant_kib)
    );
    println!(
        "  machine busy {:.2} cores, of which neither server nor generator {:.2}",
        r.machine_cpu_s_per_s, r.other_cpu_s_per_s
    );
    println!(
        "  generator cpu {:.2} core, send lag p99 {:.2} ms, send errors {}, keyframe requests {}, kernel UDP rcvbuf drops {} (server sockets {}, others {}), reconnects {}, failed participants {}",
        r.generator_cpu_s_per_s,
        ms(r.generator_lag_p99_us),
        r.send_errors,
        r.keyframe_requests,
        r.udp.rcvbuf_errors,
        r.socket_drops.server,
        r.socket_drops.others,
        r.reconnects,
        r.failed_participants
    );
    if r.leave_to_bye.count > 0 {
        println!(
            "  leave → bye ms: p50 {:.2}  p99 {:.2}  max {:.2}   ({} participants read a bye)",
            ms(r.leave_to_bye.p50_us),
            ms(r.leave_to_bye.p99_us),
            ms(r.leave_to_bye.max_us),
            r.leave_to_bye.count
        );
    }
    for e in &r.errors {
        println!("  ! {e}");
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}
