//! Real-time scheduling for the threads that send a large fan-out.
//!
//! One packet of a lecture-like conference goes out to hundreds of subscribers: about 5 µs
//! of CPU per leg, so milliseconds per packet. Under the normal policy any thread woken
//! meanwhile (on the benchmark machine, the load generator's receivers woken by those very
//! sends; in a deployment, the database, a backup, coturn) may take the core in the middle of
//! it, and every leg not yet sent waits. In hand runs at 1 → 450 on 2 cores
//! (tests/results/performance.md, session 12) the media thread was switched out
//! involuntarily 35,000-48,000 times per run under the normal policy and 260-460 times
//! under `SCHED_FIFO`.
//!
//! A `SCHED_FIFO` thread is never preempted by a normal one. It needs `CAP_SYS_NICE` or an
//! `RLIMIT_RTPRIO` of at least the priority asked for (`LimitRTPRIO=` in the systemd unit);
//! without either the kernel refuses and the thread keeps the normal policy. The kernel
//! still keeps a share of every core for normal threads (its fair-server reservation, or
//! real-time throttling on older kernels), so HTTP, signaling and the audit log are never
//! starved outright even when a fan-out beyond the machine's capacity keeps the media
//! threads busy.
//!
//! `SCHED_RESET_ON_FORK` is set with it, so nothing a real-time thread starts inherits the
//! policy.
//!
//! That reservation is small (5 % of a core), so the media threads also give real-time
//! priority up themselves while they use much of the machine's CPU ([`BusyGate`]):
//! near the machine's capacity, where there is no latency headroom left to protect, a
//! real-time fan-out would leave signaling, HTTP and the audit log only that 5 %. In a hand
//! run at 2 × 450 subscribers (about the benchmark machine's capacity) without the gate,
//! 437 of the 902 participants failed as they left (no answer to their leave within 5 s,
//! connections reset), against none in a run of the same build at normal priority.

use std::io;
use std::time::{Duration, Instant};

/// A thread's scheduling, as the media plane sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The kernel's normal time-sharing policy.
    Normal,
    /// `SCHED_FIFO` at this priority (1..=99).
    Fifo(u8),
}

/// Sets the calling thread's policy (Linux: `sched_setscheduler` on thread id 0).
/// `PermissionDenied` when neither `CAP_SYS_NICE` nor `RLIMIT_RTPRIO` allows it.
#[cfg(target_os = "linux")]
pub fn set_current_thread(policy: Policy) -> io::Result<()> {
    // The reset-on-fork flag stays on in both directions: clearing it once set needs
    // CAP_SYS_NICE (sched(7)), which the systemd unit does not grant.
    let (which, priority) = match policy {
        Policy::Normal => (libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, 0),
        Policy::Fifo(0) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "real-time priority 0",
            ))
        }
        Policy::Fifo(p) => (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, i32::from(p)),
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, which, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Other platforms: only the normal policy.
#[cfg(not(target_os = "linux"))]
pub fn set_current_thread(policy: Policy) -> io::Result<()> {
    match policy {
        Policy::Normal => Ok(()),
        Policy::Fifo(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "real-time scheduling is only used on Linux",
        )),
    }
}

/// One thread's wish for real-time scheduling and what the kernel granted: asks once per
/// change, and stops asking (with one log line) after a refusal, so a server without the
/// permission does not pay a system call per mode change.
#[derive(Debug)]
pub struct ThreadPriority {
    /// The priority configured (`media_realtime_priority`); 0 = never real-time.
    wanted: u8,
    /// What this thread runs at now.
    current: Policy,
    /// The kernel refused once; stay normal.
    refused: bool,
}

impl ThreadPriority {
    /// A thread at the normal policy that may be raised to `wanted` (0 = never).
    pub fn new(wanted: u8) -> Self {
        ThreadPriority {
            wanted,
            current: Policy::Normal,
            refused: false,
        }
    }

    /// What this thread runs at now.
    pub fn current(&self) -> Policy {
        self.current
    }

    /// The priority another thread should ask for: the configured one, or 0 once this
    /// thread was refused (it would be refused too).
    pub fn grantable(&self) -> u8 {
        if self.refused {
            0
        } else {
            self.wanted
        }
    }

    /// Raises the calling thread to the configured real-time priority, if configured and
    /// allowed; `thread` names it in the log.
    pub fn raise(&mut self, thread: &str) {
        if self.wanted == 0 || self.refused || self.current != Policy::Normal {
            return;
        }
        let policy = Policy::Fifo(self.wanted);
        match set_current_thread(policy) {
            Ok(()) => {
                self.current = policy;
                tracing::debug!(thread, priority = self.wanted, "real-time scheduling on");
            }
            Err(e) => {
                self.refused = true;
                tracing::warn!(
                    thread,
                    %e,
                    "media threads stay at normal priority (real-time scheduling needs \
                     CAP_SYS_NICE or LimitRTPRIO; see deploy/README.md)"
                );
            }
        }
    }

    /// Returns the calling thread to the normal policy.
    pub fn lower(&mut self, thread: &str) {
        if self.current == Policy::Normal {
            return;
        }
        match set_current_thread(Policy::Normal) {
            Ok(()) => {
                self.current = Policy::Normal;
                tracing::debug!(thread, "real-time scheduling off");
            }
            // Lowering one's own policy is always allowed; should it fail, stay as is.
            Err(e) => tracing::warn!(thread, %e, "cannot return to normal scheduling"),
        }
    }
}

/// CPU time the calling thread has run so far (`CLOCK_THREAD_CPUTIME_ID`). Unlike the
/// time between a wake-up and the next wait, it does not grow while the thread is
/// preempted. `None` where the clock is unavailable.
#[cfg(target_os = "linux")]
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// Other platforms: no per-thread CPU clock here, so the gate never closes.
#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The machine's CPU time since boot in clock ticks, busy and in all (the first line of
/// Linux's `/proc/stat`): how saturated the whole machine is, whoever uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// Ticks not idle and not waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

impl MachineTicks {
    /// Reads `/proc/stat`; `None` where it is missing or unreadable.
    pub fn read() -> Option<MachineTicks> {
        MachineTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the aggregate `cpu` line: user nice system idle iowait irq softirq steal
    /// (guest time is inside user time already, so later fields are not added).
    pub fn parse(stat: &str) -> Option<MachineTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if fields.len() < 5 {
            return None;
        }
        let total: u64 = fields.iter().sum();
        let idle = fields[3] + fields[4];
        Some(MachineTicks {
            busy: total.saturating_sub(idle),
            total,
        })
    }
}

/// Length of the windows over which [`BusyGate`] measures the media threads.
pub const GATE_WINDOW: Duration = Duration::from_secs(1);
/// CPU the media threads together may use, per core of the machine, before real-time
/// priority is given up: on 2 cores, one core, which leaves the other to everything else.
/// At half of the benchmark machine's fan-out capacity (1 → 450) they used 0.44-0.72 of a
/// core per second, and 0.86-0.90 for the few seconds after the joins while the
/// generator's publishers caught up (session 13); at capacity (2 × 450) more than one.
pub const BUSY_HIGH_PER_CORE: f64 = 0.5;
/// Per core, the CPU below which real-time priority is allowed again.
pub const BUSY_LOW_PER_CORE: f64 = 0.4;
/// Share of the whole machine's CPU in use above which real-time priority is given up,
/// whoever uses it: on a saturated machine, real-time media threads take what signaling
/// and HTTP need. At 2 × 450 on the benchmark machine (about capacity, server and
/// generator together) the media threads used less than one core, and with the priority
/// kept, 157 of 902 generator participants lost their `bye` as they all left at once
/// (session 13); at 1 → 450 the machine was about 60 % busy.
pub const MACHINE_HIGH: f64 = 0.9;
/// Share of the machine's CPU below which real-time priority is allowed again.
pub const MACHINE_LOW: f64 = 0.8;

/// Whether the load leaves room for real-time priority: the media threads' own
/// ([`BUSY_HIGH_PER_CORE`]) and the whole machine's ([`MACHINE_HIGH`]). Pure: the loop
/// asks whether a window has ended ([`BusyGate::is_due`]) and then gives it the CPU time
/// the media threads have used so far, from their CPU clocks ([`thread_cpu_time`]), and
/// the machine's ticks ([`MachineTicks::read`]).
///
/// The first version measured the media thread's wall time between waking and waiting.
/// A thread at the normal policy is preempted while busy and looks busier than it is, so
/// once given up (while hundreds of subscribers joined), the priority came back late or
/// never: in hand runs at 1 → 450, 15 s into a 20 s measurement, or not at all, and those
/// runs had a p99 of 8-13 ms against 3-4 ms (tests/results/performance.md, session 13).
#[derive(Debug)]
pub struct BusyGate {
    high: f64,
    low: f64,
    /// When the current window started, and the CPU time and machine ticks as of then.
    window: Option<(Instant, Duration, Option<MachineTicks>)>,
    allowed: bool,
    /// The last whole window's load, in cores.
    last_load: f64,
    /// The last whole window's share of the machine in use, if known.
    last_machine: Option<f64>,
}

impl BusyGate {
    /// A gate for a machine with `cores` cores, allowing real-time priority at first.
    pub fn new(cores: usize) -> Self {
        let cores = cores.max(1) as f64;
        BusyGate {
            high: BUSY_HIGH_PER_CORE * cores,
            low: BUSY_LOW_PER_CORE * cores,
            window: None,
            allowed: true,
            last_load: 0.0,
            last_machine: None,
        }
    }

    /// Whether real-time priority is allowed now.
    pub fn allows(&self) -> bool {
        self.allowed
    }

    /// The CPU the media threads used over the last whole window, in cores.
    pub fn last_load(&self) -> f64 {
        self.last_load
    }

    /// The share of the machine's CPU in use over the last whole window, if known.
    pub fn last_machine(&self) -> Option<f64> {
        self.last_machine
    }

    /// Whether a window has ended (or none has started) and [`BusyGate::account`] wants
    /// a reading.
    pub fn is_due(&self, now: Instant) -> bool {
        self.window
            .is_none_or(|(start, ..)| now.saturating_duration_since(start) >= GATE_WINDOW)
    }

    /// Takes the CPU time the media threads have used in all (`cpu`) and the machine's
    /// ticks (`machine`, if readable) as of `now`. At the end of a window, returns the new
    /// verdict if the window's load changes it.
    pub fn account(
        &mut self,
        now: Instant,
        cpu: Duration,
        machine: Option<MachineTicks>,
    ) -> Option<bool> {
        let Some((start, cpu_at_start, machine_at_start)) = self.window else {
            self.window = Some((now, cpu, machine));
            return None;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < GATE_WINDOW {
            return None;
        }
        self.window = Some((now, cpu, machine));
        // In cores: CPU seconds per second.
        let load = cpu.saturating_sub(cpu_at_start).as_secs_f64() / elapsed.as_secs_f64();
        self.last_load = load;
        self.last_machine = match (machine_at_start, machine) {
            (Some(a), Some(b)) if b.total > a.total => {
                Some(b.busy.saturating_sub(a.busy) as f64 / (b.total - a.total) as f64)
            }
            _ => None,
        };
        // Without a machine reading, only the media threads' own load decides.
        let machine_share = self.last_machine.unwrap_or(0.0);
        let allowed = if self.allowed {
            load <= self.high && machine_share <= MACHINE_HIGH
        } else {
            load < self.low && machine_share < MACHINE_LOW
        };
        if allowed == self.allowed {
            return None;
        }
        self.allowed = allowed;
        Some(allowed)
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    /// Feeds `seconds` of readings every 10 ms, with the threads using `load` cores.
    fn feed(
        gate: &mut BusyGate,
        t: &mut Instant,
        cpu: &mut Duration,
        seconds: u64,
        load: f64,
    ) -> Vec<bool> {
        let step = Duration::from_millis(10);
        let mut changes = Vec::new();
        for _ in 0..seconds * 100 {
            *t += step;
            *cpu += step.mul_f64(load);
            if gate.is_due(*t) {
                changes.extend(gate.account(*t, *cpu, None));
            }
        }
        changes
    }

    #[test]
    fn gives_up_when_busy_and_comes_back_with_hysteresis() {
        // Two cores: off above one core, on again below 0.8.
        let mut gate = BusyGate::new(2);
        let (mut t, mut cpu) = (Instant::now(), Duration::ZERO);
        assert!(gate.allows());
        let mut run =
            |gate: &mut BusyGate, seconds, load| feed(gate, &mut t, &mut cpu, seconds, load);
        assert_eq!(run(&mut gate, 5, 0.6), Vec::<bool>::new());
        assert_eq!(run(&mut gate, 3, 1.2), vec![false]);
        assert!(!gate.allows());
        // Between the two thresholds nothing changes either way.
        assert_eq!(run(&mut gate, 3, 0.9), Vec::<bool>::new());
        assert!(!gate.allows());
        assert_eq!(run(&mut gate, 2, 0.6), vec![true]);
        assert_eq!(run(&mut gate, 3, 0.9), Vec::<bool>::new());
        assert!(gate.allows());
    }

    #[test]
    fn only_whole_windows_are_judged() {
        let mut gate = BusyGate::new(1);
        let t = Instant::now();
        assert!(gate.is_due(t), "a first reading is wanted");
        assert_eq!(gate.account(t, Duration::ZERO, None), None);
        assert!(!gate.is_due(t + GATE_WINDOW / 2));
        // Busy all of half a window: not yet a verdict.
        assert_eq!(
            gate.account(t + GATE_WINDOW / 2, GATE_WINDOW / 2, None),
            None
        );
        assert!(gate.is_due(t + GATE_WINDOW));
        assert_eq!(
            gate.account(t + GATE_WINDOW, GATE_WINDOW, None),
            Some(false)
        );
    }

    #[test]
    fn a_long_sleep_closes_the_window_as_idle() {
        let mut gate = BusyGate::new(1);
        let (mut t, mut cpu) = (Instant::now(), Duration::ZERO);
        feed(&mut gate, &mut t, &mut cpu, 2, 0.9);
        assert!(!gate.allows());
        // The loop slept 2 s (nothing to do) and worked 1 ms on waking.
        t += Duration::from_secs(2);
        cpu += Duration::from_millis(1);
        assert_eq!(gate.account(t, cpu, None), Some(true));
    }

    #[test]
    fn less_cpu_than_before_reads_as_idle() {
        // A helper that ended took its CPU time with it: the window reads low, not negative.
        let mut gate = BusyGate::new(1);
        let t = Instant::now();
        gate.account(t, Duration::from_secs(5), None);
        assert_eq!(
            gate.account(t + GATE_WINDOW, Duration::from_secs(1), None),
            None,
            "still allowed"
        );
        assert!(gate.allows());
    }

    #[test]
    fn a_saturated_machine_closes_the_gate_whoever_uses_it() {
        let mut gate = BusyGate::new(2);
        let t = Instant::now();
        // The media threads use a tenth of a core throughout; the machine's ticks say
        // how busy everything else makes it.
        let cpu = |s: u32| Duration::from_millis(100) * s;
        let ticks = |busy, total| Some(MachineTicks { busy, total });
        gate.account(t, cpu(0), ticks(0, 0));
        // Each second: cumulative busy and total ticks, and the verdict expected.
        let seconds = [
            (150, 200, None),        // 75 %
            (345, 400, Some(false)), // 97.5 %
            (515, 600, None),        // 85 %: not low enough yet
            (665, 800, Some(true)),  // 75 %
        ];
        for (n, (busy, total, verdict)) in (1u32..).zip(seconds) {
            let got = gate.account(t + GATE_WINDOW * n, cpu(n), ticks(busy, total));
            assert_eq!(got, verdict, "second {n}");
        }
        // No reading (or no ticks passed): the media threads' load alone decides.
        assert_eq!(gate.account(t + GATE_WINDOW * 5, cpu(5), None), None);
        assert_eq!(gate.last_machine(), None);
    }

    #[test]
    fn parses_the_machines_ticks() {
        let stat = "cpu  4211248 28078 1391481 11094135 79244 0 232499 7591 0 0\n\
                    cpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2 3\n";
        let ticks = MachineTicks::parse(stat).expect("parsed");
        let total = 4211248 + 28078 + 1391481 + 11094135 + 79244 + 232499 + 7591;
        assert_eq!(ticks.total, total);
        assert_eq!(ticks.busy, total - 11094135 - 79244);
        assert_eq!(
            MachineTicks::parse("cpu0 1 2 3 4 5\n"),
            None,
            "no aggregate line"
        );
        assert_eq!(
            MachineTicks::parse("cpu  1 2 x 4 5\n"),
            None,
            "not a number"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_clock_counts_work_not_sleep() {
        std::thread::spawn(|| {
            let before = thread_cpu_time().expect("clock");
            std::thread::sleep(Duration::from_millis(50));
            let slept = thread_cpu_time().expect("clock") - before;
            assert!(
                slept < Duration::from_millis(20),
                "sleep counted: {slept:?}"
            );
            // Work moves it, however long a busy machine takes to give this thread 20 ms.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut x = 0u64;
            while thread_cpu_time().expect("clock") - before < Duration::from_millis(20) {
                assert!(Instant::now() < deadline, "work not counted");
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
        })
        .join()
        .expect("thread");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's policy as the kernel reports it.
    fn current_thread() -> io::Result<Policy> {
        // SAFETY: no pointers; pid 0 is the calling thread.
        let which = unsafe { libc::sched_getscheduler(0) };
        if which < 0 {
            return Err(io::Error::last_os_error());
        }
        if which & !libc::SCHED_RESET_ON_FORK == libc::SCHED_FIFO {
            let mut param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is valid for writes.
            if unsafe { libc::sched_getparam(0, &mut param) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Policy::Fifo(
                u8::try_from(param.sched_priority).unwrap_or(u8::MAX),
            ))
        } else {
            Ok(Policy::Normal)
        }
    }

    #[test]
    fn a_thread_is_raised_and_lowered_or_refused_cleanly() {
        // On its own thread: the test harness's threads must keep their policy.
        std::thread::spawn(|| {
            assert_eq!(current_thread().expect("policy"), Policy::Normal);
            let mut priority = ThreadPriority::new(1);
            priority.raise("test");
            match priority.current() {
                // Root, CAP_SYS_NICE or RLIMIT_RTPRIO >= 1: the kernel says so too.
                Policy::Fifo(1) => {
                    assert_eq!(current_thread().expect("policy"), Policy::Fifo(1));
                    priority.lower("test");
                    assert_eq!(priority.current(), Policy::Normal);
                    assert_eq!(current_thread().expect("policy"), Policy::Normal);
                }
                // Refused: nothing changed, and it is not asked again.
                Policy::Normal => {
                    assert!(priority.refused);
                    assert_eq!(current_thread().expect("policy"), Policy::Normal);
                    let err = set_current_thread(Policy::Fifo(1)).expect_err("refused before");
                    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
                }
                other => panic!("unexpected policy {other:?}"),
            }
        })
        .join()
        .expect("thread");
    }

    /// Drops `CAP_SYS_NICE` from the calling thread's effective set (capabilities are per
    /// thread on Linux). Returns false if the thread cannot read its capabilities.
    fn drop_sys_nice() -> bool {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const CAP_SYS_NICE: u32 = 23;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: header and two data blocks as capget/capset (version 3) expect.
        unsafe {
            if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
                return false;
            }
            data[0].effective &= !(1 << CAP_SYS_NICE);
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0
        }
    }

    #[test]
    fn a_raised_thread_lowers_itself_without_cap_sys_nice() {
        // The deployed case: raised under RLIMIT_RTPRIO, no CAP_SYS_NICE. Here the raise
        // needs the capability (this machine's hard RLIMIT_RTPRIO may be 0), so the
        // capability is dropped after it; lowering must not need it (clearing
        // SCHED_RESET_ON_FORK would).
        std::thread::spawn(|| {
            let mut priority = ThreadPriority::new(1);
            priority.raise("test");
            if priority.current() != Policy::Fifo(1) {
                eprintln!("not allowed to raise here; nothing to lower");
                return;
            }
            assert!(drop_sys_nice(), "capset");
            assert_eq!(
                set_current_thread(Policy::Fifo(2))
                    .expect_err("no capability, RLIMIT_RTPRIO below 2")
                    .kind(),
                io::ErrorKind::PermissionDenied,
                "the capability is really gone"
            );
            priority.lower("test");
            assert_eq!(priority.current(), Policy::Normal);
            assert_eq!(current_thread().expect("policy"), Policy::Normal);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn priority_zero_never_asks() {
        std::thread::spawn(|| {
            let mut priority = ThreadPriority::new(0);
            priority.raise("test");
            assert_eq!(priority.current(), Policy::Normal);
            assert!(!priority.refused);
            assert_eq!(current_thread().expect("policy"), Policy::Normal);
            assert_eq!(
                set_current_thread(Policy::Fifo(0))
                    .expect_err("invalid")
                    .kind(),
                io::ErrorKind::InvalidInput
            );
        })
        .join()
        .expect("thread");
    }
}
