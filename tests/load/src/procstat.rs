//! What the kernel says about a process (CPU time, memory) and about UDP drops.

use anyhow::{bail, Context};

/// CPU time a process has used so far, user + system, in seconds (all threads, including
/// ones that have exited), to the nanosecond from the process's CPU-time clock. Falls back
/// to [`cpu_seconds_from_stat`] where that clock cannot be read.
///
/// The clock matters at small loads: `/proc/<pid>/stat` counts in 10 ms ticks, so a server
/// at 0.01 core over a 15 s window is only ~15 ticks and the figure moves by several
/// percent between identical runs.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return cpu_seconds_from_stat(pid);
    };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer; the call only reads `pid_t`.
    if unsafe { libc::clock_getcpuclockid(pid_t, &mut clock) } != 0 {
        return cpu_seconds_from_stat(pid);
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the clock just obtained.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return cpu_seconds_from_stat(pid);
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// CPU time from `/proc/<pid>/stat` (utime + stime, in clock ticks), in seconds.
pub fn cpu_seconds_from_stat(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after its ')' are fixed.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    if fields.len() < 13 {
        bail!("short /proc/{pid}/stat");
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tick = if tick > 0 { tick as f64 } else { 100.0 };
    Ok((utime + stime) as f64 / tick)
}

/// CPU time the whole machine has spent busy so far (every core: user, nice, system, irq,
/// softirq, steal), in seconds. Compared with the server's and the generator's own time
/// it shows how much else (other processes, kernel networking) ran during a window.
pub fn machine_busy_seconds() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tick = if tick > 0 { tick as f64 } else { 100.0 };
    Ok(busy as f64 / tick)
}

/// Memory figures from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    /// Resident set size now.
    pub rss_kib: u64,
    /// Peak resident set size since the process started.
    pub hwm_kib: u64,
    /// The anonymous part of the resident set (heap, stacks): where a leak would grow.
    /// The rest is mostly file pages (the binary's and libraries' code), which come in as
    /// code runs for the first time.
    pub anon_kib: u64,
}

/// Reads VmRSS, VmHWM and RssAnon.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok(Memory {
        rss_kib: field("VmRSS:").unwrap_or(0),
        hwm_kib: field("VmHWM:").unwrap_or(0),
        anon_kib: field("RssAnon:").unwrap_or(0),
    })
}

/// System-wide UDP counters from `/proc/net/snmp` (all sockets, both ends of loopback):
/// a rise in receive-buffer errors means datagrams were dropped by the kernel because a
/// reader (server or generator) did not keep up.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct UdpCounters {
    /// Datagrams delivered.
    pub in_datagrams: u64,
    /// Datagrams dropped (all reasons).
    pub in_errors: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
    /// Send failures because a socket's send buffer was full.
    pub sndbuf_errors: u64,
}

impl UdpCounters {
    /// Counter increase from `before` to `self`.
    pub fn since(&self, before: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }
}

/// Reads the `Udp:` lines of `/proc/net/snmp` (zeros if unavailable).
pub fn udp_counters() -> UdpCounters {
    let Ok(text) = std::fs::read_to_string("/proc/net/snmp") else {
        return UdpCounters::default();
    };
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return UdpCounters::default();
    };
    let pairs: Vec<(&str, u64)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .map(|(n, v)| (n, v.parse().unwrap_or(0)))
        .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    UdpCounters {
        in_datagrams: get("InDatagrams"),
        in_errors: get("InErrors"),
        rcvbuf_errors: get("RcvbufErrors"),
        sndbuf_errors: get("SndbufErrors"),
    }
}

/// Datagrams dropped so far by UDP sockets (per-socket `drops` column of /proc/net/udp
/// and udp6), split into those owned by `pid` and all others: tells whether the server's
/// or the generator's receive buffers overflowed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SocketDrops {
    /// Drops on sockets `pid` holds open.
    pub server: u64,
    /// Drops on every other UDP socket (the generator's, mostly).
    pub others: u64,
}

impl SocketDrops {
    /// Increase from `before` (sockets that closed in between are not subtracted, so a
    /// counter that vanished reads as zero growth, never negative).
    pub fn since(&self, before: &SocketDrops) -> SocketDrops {
        SocketDrops {
            server: self.server.saturating_sub(before.server),
            others: self.others.saturating_sub(before.others),
        }
    }
}

/// Reads per-socket UDP drop counters, attributing them to `pid` by socket inode.
pub fn socket_drops(pid: Option<u32>) -> SocketDrops {
    let mut owned = std::collections::HashSet::new();
    if let Some(pid) = pid {
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for entry in dir.flatten() {
                if let Ok(target) = std::fs::read_link(entry.path()) {
                    let t = target.to_string_lossy();
                    if let Some(inode) =
                        t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                    {
                        owned.insert(inode.to_owned());
                    }
                }
            }
        }
    }
    let mut drops = SocketDrops::default();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 13 {
                continue;
            }
            let n: u64 = f[12].parse().unwrap_or(0);
            if owned.contains(f[9]) {
                drops.server += n;
            } else {
                drops.others += n;
            }
        }
    }
    drops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let m = memory(pid).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(m.anon_kib > 0 && m.anon_kib <= m.rss_kib);
        let _ = udp_counters();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let d = socket_drops(Some(pid));
        assert_eq!(d.server, 0);
        drop(sock);
    }

    #[test]
    fn precise_clock_agrees_with_proc_stat() {
        // Burn a little CPU so both readings are well above one tick.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let pid = std::process::id();
        let precise = cpu_seconds(pid).unwrap();
        let ticks = cpu_seconds_from_stat(pid).unwrap();
        assert!(precise >= 0.15, "precise clock read {precise}");
        // The tick count lags by at most a tick or two per thread.
        assert!(
            (precise - ticks).abs() < 0.1,
            "precise {precise} vs stat {ticks}"
        );
    }
}
