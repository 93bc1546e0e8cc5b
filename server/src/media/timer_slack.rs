//! When the media loop wakes for a protocol deadline, given the SFU's earliest one.
//!
//! Every protocol timer in the media plane (RTCP reports, NACK and congestion feedback
//! intervals, ICE keep-alives, DTLS retransmission, the connect watchdog) tolerates
//! firing a few milliseconds late. The loop therefore sleeps until `deadline + slack` at
//! most, and handles due timers whenever a datagram wakes it anyway. With media arriving
//! every few milliseconds most timers then ride on a wake-up that happens regardless,
//! instead of costing a sleep and a wake of their own.
//!
//! Measured when it came in (session 5, with tokio's timer, then a `timerfd`): at 1 → 1 the
//! media thread woke about 50 times a second more than datagrams arrived before, and CPU
//! fell 10 % with it. The loop's wait is now `mio`'s poll timeout, which costs nothing to
//! move, so the rule is just the window.

use std::time::{Duration, Instant};

/// How late a protocol timer may fire. Small next to the shortest interval it delays
/// (100 ms feedback intervals, 1 s reports and retransmissions).
pub const TIMER_SLACK: Duration = Duration::from_millis(10);

/// The latest instant the loop may sleep until: `slack` after the SFU's earliest protocol
/// deadline (if any), and no later than `housekeeping` (the loop's own periodic check).
pub fn wake_at(deadline: Option<Instant>, housekeeping: Instant, slack: Duration) -> Instant {
    deadline.map_or(housekeeping, |d| (d + slack).min(housekeeping))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_deadline_is_served_at_most_the_slack_late() {
        let t0 = Instant::now();
        assert_eq!(
            wake_at(Some(t0 + ms(100)), t0 + ms(2000), SLACK),
            t0 + ms(110)
        );
    }

    #[test]
    fn housekeeping_wins_when_it_comes_first() {
        let t0 = Instant::now();
        assert_eq!(wake_at(Some(t0 + ms(100)), t0 + ms(50), SLACK), t0 + ms(50));
        // Inside the slack window too: the earlier of the two.
        assert_eq!(
            wake_at(Some(t0 + ms(100)), t0 + ms(105), SLACK),
            t0 + ms(105)
        );
    }

    #[test]
    fn no_deadline_sleeps_until_housekeeping() {
        let t0 = Instant::now();
        assert_eq!(wake_at(None, t0 + ms(2000), SLACK), t0 + ms(2000));
    }

    #[test]
    fn a_past_deadline_wakes_at_once_or_within_the_slack() {
        // A deadline already passed gives an instant at most the slack after it, so a
        // wait computed from it is short; the loop serves due timers on every wake-up.
        let t0 = Instant::now();
        let past = t0 - ms(30);
        assert!(wake_at(Some(past), t0 + ms(2000), SLACK) <= t0);
    }
}
