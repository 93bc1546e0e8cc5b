//! In-memory per-address rate limits: sliding windows of recent events keyed by client
//! address, and the login limiter built from them.
//!
//! Limits live in memory, not in the database: they protect the server from one address's
//! burst, and forgetting them at a restart costs an attacker's budget nothing worth storing.
//! Account lockout, which must survive restarts, is kept in the `users` table instead.
//!
//! Time comes in as an argument (milliseconds since the epoch) so tests can drive it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use crate::config::Config;

/// Most addresses tracked per window. Past this, stale entries are swept; if every entry is
/// live the table still grows (refusing to track would let a flood bypass the limit).
const SWEEP_THRESHOLD: usize = 10_000;

/// The key an address is counted under. IPv6 clients usually hold a whole /64, so counting
/// single v6 addresses would give one attacker 2^64 budgets; IPv4-mapped v6 addresses count
/// as the v4 address they are.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// At most `max` events per address in any `window_ms` (a sliding window).
#[derive(Debug)]
pub struct SlidingWindow {
    max: u32,
    window_ms: i64,
    events: Mutex<HashMap<IpAddr, VecDeque<i64>>>,
}

impl SlidingWindow {
    /// A limiter allowing `max` events per `window_ms` milliseconds per address.
    pub fn new(max: u32, window_ms: i64) -> SlidingWindow {
        SlidingWindow {
            max,
            window_ms: window_ms.max(1),
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event for `ip` at `now_ms` if the limit allows it. When it does not, nothing
    /// is recorded and the error holds the milliseconds until the next event would be allowed.
    pub fn try_acquire(&self, ip: IpAddr, now_ms: i64) -> Result<(), i64> {
        let mut events = self.lock();
        self.sweep(&mut events, now_ms);
        let queue = events.entry(client_key(ip)).or_default();
        prune(queue, now_ms - self.window_ms);
        if queue.len() >= self.max as usize {
            let oldest = queue.front().copied().unwrap_or(now_ms);
            return Err((oldest + self.window_ms - now_ms).max(1));
        }
        queue.push_back(now_ms);
        Ok(())
    }

    /// Records an event for `ip` at `now_ms` unconditionally and returns how many events the
    /// address now has in the window.
    pub fn record(&self, ip: IpAddr, now_ms: i64) -> u32 {
        let mut events = self.lock();
        self.sweep(&mut events, now_ms);
        let queue = events.entry(client_key(ip)).or_default();
        prune(queue, now_ms - self.window_ms);
        queue.push_back(now_ms);
        // The queue is bounded by the number of calls; saturate rather than wrap.
        u32::try_from(queue.len()).unwrap_or(u32::MAX)
    }

    /// Events `ip` has in the window ending at `now_ms`.
    pub fn count(&self, ip: IpAddr, now_ms: i64) -> u32 {
        let mut events = self.lock();
        let Some(queue) = events.get_mut(&client_key(ip)) else {
            return 0;
        };
        prune(queue, now_ms - self.window_ms);
        u32::try_from(queue.len()).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<i64>>> {
        // The map holds counters only; a panic mid-update leaves it usable.
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sweep(&self, events: &mut HashMap<IpAddr, VecDeque<i64>>, now_ms: i64) {
        if events.len() < SWEEP_THRESHOLD {
            return;
        }
        let cutoff = now_ms - self.window_ms;
        events.retain(|_, q| q.back().is_some_and(|&t| t > cutoff));
    }
}

fn prune(queue: &mut VecDeque<i64>, cutoff: i64) {
    while queue.front().is_some_and(|&t| t <= cutoff) {
        queue.pop_front();
    }
}

/// Why a login attempt from an address is refused before any password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRefusal {
    /// Too many attempts in the last minute; retry after this many milliseconds.
    RateLimited {
        /// Milliseconds until an attempt is allowed again.
        retry_after_ms: i64,
    },
    /// Too many failed logins: the address is blocked until this time (ms since the epoch).
    Blocked {
        /// When the block ends, milliseconds since the epoch.
        until_ms: i64,
    },
}

/// Per-address login limits: an attempt rate (`limits.logins_per_minute_per_ip`) and a
/// failure budget (`security.login_max_failures_per_ip` within the lockout period) after which
/// the address is blocked for the lockout period.
#[derive(Debug)]
pub struct LoginLimiter {
    attempts: SlidingWindow,
    failures: SlidingWindow,
    max_failures: u32,
    lockout_ms: i64,
    blocked: Mutex<HashMap<IpAddr, i64>>,
}

impl LoginLimiter {
    /// Limits taken from `config`.
    pub fn new(config: &Config) -> LoginLimiter {
        let lockout_ms = minutes_ms(config.security.login_lockout_minutes);
        LoginLimiter {
            attempts: SlidingWindow::new(config.limits.logins_per_minute_per_ip, 60_000),
            failures: SlidingWindow::new(u32::MAX, lockout_ms),
            max_failures: config.security.login_max_failures_per_ip.max(1),
            lockout_ms,
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt (password or TOTP) from `ip` and says whether it may go ahead.
    pub fn begin_attempt(&self, ip: IpAddr, now_ms: i64) -> Result<(), AddressRefusal> {
        if let Some(until_ms) = self.blocked_until(ip, now_ms) {
            return Err(AddressRefusal::Blocked { until_ms });
        }
        self.attempts
            .try_acquire(ip, now_ms)
            .map_err(|retry_after_ms| AddressRefusal::RateLimited { retry_after_ms })
    }

    /// Records a failed login from `ip`. Returns the end of the block if this failure used
    /// up the address's budget.
    pub fn record_failure(&self, ip: IpAddr, now_ms: i64) -> Option<i64> {
        let count = self.failures.record(ip, now_ms);
        if count < self.max_failures {
            return None;
        }
        let until = now_ms + self.lockout_ms;
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.len() >= SWEEP_THRESHOLD {
            blocked.retain(|_, &mut t| t > now_ms);
        }
        blocked.insert(client_key(ip), until);
        Some(until)
    }

    /// When the block on `ip` ends, if it is blocked at `now_ms`.
    pub fn blocked_until(&self, ip: IpAddr, now_ms: i64) -> Option<i64> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked
            .get(&client_key(ip))
            .copied()
            .filter(|&until| until > now_ms)
    }
}

/// Minutes as milliseconds, saturating (config values are user input).
pub fn minutes_ms(minutes: u64) -> i64 {
    i64::try_from(minutes.saturating_mul(60_000)).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sliding_window_allows_max_per_window_and_reports_the_wait() {
        let w = SlidingWindow::new(3, 60_000);
        let a = ip("192.0.2.1");
        for t in [0, 10_000, 20_000] {
            assert_eq!(w.try_acquire(a, t), Ok(()));
        }
        assert_eq!(w.try_acquire(a, 30_000), Err(30_000));
        // Another address has its own budget.
        assert_eq!(w.try_acquire(ip("192.0.2.2"), 30_000), Ok(()));
        // The first event leaves the window at 60 s.
        assert_eq!(w.try_acquire(a, 59_999), Err(1));
        assert_eq!(w.try_acquire(a, 60_000), Ok(()));
        assert_eq!(w.count(a, 60_000), 3);
        assert_eq!(w.count(a, 200_000), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let w = SlidingWindow::new(1, 60_000);
        assert_eq!(w.try_acquire(ip("2001:db8:1:2::1"), 0), Ok(()));
        assert!(w.try_acquire(ip("2001:db8:1:2:ffff::9"), 0).is_err());
        assert_eq!(w.try_acquire(ip("2001:db8:1:3::1"), 0), Ok(()));
        assert_eq!(w.try_acquire(ip("198.51.100.7"), 0), Ok(()));
        assert!(w.try_acquire(ip("::ffff:198.51.100.7"), 0).is_err());
    }

    #[test]
    fn sweeping_forgets_stale_addresses_only() {
        let w = SlidingWindow::new(1, 1000);
        for i in 0..SWEEP_THRESHOLD as u32 {
            w.record(IpAddr::V4(i.into()), 0);
        }
        let live = ip("203.0.113.1");
        w.record(live, 5_000);
        assert_eq!(w.lock().len(), 1);
        assert!(w.try_acquire(live, 5_500).is_err());
    }

    fn limiter(per_minute: u32, failures: u32, lockout_minutes: u64) -> LoginLimiter {
        let mut config = Config::default();
        config.limits.logins_per_minute_per_ip = per_minute;
        config.security.login_max_failures_per_ip = failures;
        config.security.login_lockout_minutes = lockout_minutes;
        LoginLimiter::new(&config)
    }

    #[test]
    fn login_attempts_are_rate_limited_per_minute() {
        let l = limiter(2, 100, 15);
        let a = ip("192.0.2.1");
        assert!(l.begin_attempt(a, 0).is_ok());
        assert!(l.begin_attempt(a, 1).is_ok());
        assert_eq!(
            l.begin_attempt(a, 2),
            Err(AddressRefusal::RateLimited {
                retry_after_ms: 59_998
            })
        );
        assert!(l.begin_attempt(a, 60_001).is_ok());
    }

    #[test]
    fn failures_block_the_address_for_the_lockout_period() {
        let l = limiter(1000, 3, 15);
        let a = ip("192.0.2.1");
        assert_eq!(l.record_failure(a, 0), None);
        assert_eq!(l.record_failure(a, 1), None);
        let until = l.record_failure(a, 2).expect("third failure blocks");
        assert_eq!(until, 2 + 15 * 60_000);
        assert_eq!(
            l.begin_attempt(a, 3),
            Err(AddressRefusal::Blocked { until_ms: until })
        );
        assert!(l.begin_attempt(ip("192.0.2.99"), 3).is_ok());
        assert_eq!(l.blocked_until(a, until - 1), Some(until));
        assert!(l.begin_attempt(a, until).is_ok());
    }
}
