//! When the media loop's one timer fires, given the SFU's earliest protocol deadline.
//!
//! Every protocol timer in the media plane (RTCP reports, NACK and congestion feedback
//! intervals, ICE keep-alives, DTLS retransmission, the connect watchdog) tolerates
//! firing a few milliseconds late. The loop therefore lets a timer fire anywhere in
//! `[deadline, deadline + slack]`, and handles due timers whenever a datagram wakes it
//! anyway. With media arriving every few milliseconds most timers then ride on a wake-up
//! that happens regardless, instead of costing a sleep and a wake of their own.
//!
//! Keeping the armed instant when it already lies inside the window matters too: with
//! tokio's timer (before [`super::wake_timer`]), moving it earlier woke tokio's driver
//! through an eventfd write. `strace` of the media thread at 1 → 1 over 10 s: 204 such
//! writes before the window, 23 with it.

use std::time::{Duration, Instant};

/// How late a protocol timer may fire. Small next to the shortest interval it delays
/// (100 ms feedback intervals, 1 s reports and retransmissions).
pub const TIMER_SLACK: Duration = Duration::from_millis(10);

/// The instant the loop's timer must be moved to, or `None` to leave it where it is.
///
/// `armed` is where the timer is set now (`None` if it has fired or was never set);
/// `deadline` is the earliest protocol deadline. The timer stays if it is inside
/// `[deadline, deadline + slack]`: not early (a wake-up with nothing due) and not later
/// than the slack allows. Otherwise it goes to the end of the window, so that a deadline
/// that keeps moving a little earlier does not move the timer every time.
pub fn rearm(armed: Option<Instant>, deadline: Instant, slack: Duration) -> Option<Instant> {
    let latest = deadline + slack;
    match armed {
        Some(at) if at >= deadline && at <= latest => None,
        _ => Some(latest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_fired_or_unset_timer_is_armed_at_the_end_of_the_window() {
        let t0 = Instant::now();
        assert_eq!(rearm(None, t0 + ms(100), SLACK), Some(t0 + ms(110)));
    }

    #[test]
    fn a_timer_inside_the_window_is_left_alone() {
        let t0 = Instant::now();
        let armed = Some(t0 + ms(110));
        // The deadline moved 5 ms earlier: 110 is still at most 10 ms late.
        assert_eq!(rearm(armed, t0 + ms(105), SLACK), None);
        // Exactly on either edge.
        assert_eq!(rearm(armed, t0 + ms(100), SLACK), None);
        assert_eq!(rearm(armed, t0 + ms(110), SLACK), None);
    }

    #[test]
    fn a_timer_that_would_fire_too_late_moves_earlier() {
        let t0 = Instant::now();
        // A new connection's ICE check is due long before the armed report timer.
        assert_eq!(
            rearm(Some(t0 + ms(1000)), t0 + ms(50), SLACK),
            Some(t0 + ms(60))
        );
    }

    #[test]
    fn a_timer_that_would_fire_with_nothing_due_moves_later() {
        let t0 = Instant::now();
        // The timer it was armed for was handled on a datagram's wake-up; the next one
        // is later.
        assert_eq!(
            rearm(Some(t0 + ms(20)), t0 + ms(100), SLACK),
            Some(t0 + ms(110))
        );
    }

    #[test]
    fn a_timer_never_fires_later_than_the_slack_allows() {
        // Walk a deadline around and check the invariant after every step.
        let t0 = Instant::now();
        let mut armed = None;
        for step in [300u64, 295, 290, 250, 251, 400, 120, 119, 118, 500, 10] {
            let deadline = t0 + ms(step);
            if let Some(at) = rearm(armed, deadline, SLACK) {
                armed = Some(at);
            }
            let at = armed.expect("armed after the first step");
            assert!(at >= deadline && at <= deadline + SLACK, "step {step}");
        }
    }
}
