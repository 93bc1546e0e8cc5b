//! The media loop's one timer: wakes the loop at the instant it is armed for, and not
//! before.
//!
//! On Linux it is a `timerfd` in the loop's own reactor. Tokio's timer wheel was used
//! before and woke the thread twice for a deadline tens of milliseconds away: once at the
//! wheel level's slot boundary to move the entry down a level, once at the deadline. The
//! media plane's timers are mostly 100 ms feedback intervals. `strace` of the media
//! thread at 1 → 1 over 10 s (with [`super::timer_slack`] in both): `epoll_wait` returned
//! 309 times more than `recvmmsg` was called, while the timer fired about 20 times; with
//! the timerfd, 42 times more. Voluntary context switches went from 203 to 183 per
//! second. Elsewhere it falls back to tokio's timer.

use std::io;
use std::time::Instant;

/// A one-shot timer the loop re-arms; see the module docs.
pub struct WakeTimer {
    inner: imp::Timer,
    armed: Option<Instant>,
}

impl WakeTimer {
    /// An unarmed timer, registered with the current tokio runtime's reactor.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inner: imp::Timer::new()?,
            armed: None,
        })
    }

    /// Where the timer is armed; `None` once it has fired or before it is first armed.
    pub fn armed(&self) -> Option<Instant> {
        self.armed
    }

    /// Arms the timer for `at` (replacing any earlier setting). An instant already past
    /// fires at once.
    pub fn arm(&mut self, at: Instant) -> io::Result<()> {
        self.inner.arm(at)?;
        self.armed = Some(at);
        Ok(())
    }

    /// Completes when the armed instant has passed. Cancel-safe: dropping the future
    /// before it completes leaves the timer armed.
    pub async fn fired(&mut self) -> io::Result<()> {
        self.inner.fired().await?;
        self.armed = None;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Instant;

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub struct Timer {
        fd: AsyncFd<OwnedFd>,
    }

    impl Timer {
        pub fn new() -> io::Result<Self> {
            // SAFETY: plain syscall; the result is checked before use.
            let raw = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: an `OwnedFd` keeps its descriptor open, and `as_raw_fd` returns the
            // same one, until it (owned by the `AsyncFd` from here on) is dropped.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(Self { fd })
        }

        pub fn arm(&mut self, at: Instant) -> io::Result<()> {
            // Relative to now: `Instant` does not expose its clock reading. An all-zero
            // value would disarm, so a past instant becomes 1 ns.
            let after = at.saturating_duration_since(Instant::now());
            let (sec, nsec) = if after.is_zero() {
                (0, 1)
            } else {
                (after.as_secs(), after.subsec_nanos())
            };
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: libc::time_t::try_from(sec).unwrap_or(libc::time_t::MAX),
                    tv_nsec: nsec as libc::c_long,
                },
            };
            // SAFETY: valid descriptor and a fully initialised itimerspec.
            let rc = unsafe {
                libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut())
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        pub async fn fired(&mut self) -> io::Result<()> {
            loop {
                let mut guard = self.fd.readable().await?;
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer.
                let n = unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        expirations.as_mut_ptr().cast(),
                        expirations.len(),
                    )
                };
                if n == 8 {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::WouldBlock {
                    return Err(err);
                }
                // Re-armed after the readiness edge (settime clears the count): wait on.
                guard.clear_ready();
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::pin::Pin;
    use std::time::Instant;

    pub struct Timer {
        sleep: Pin<Box<tokio::time::Sleep>>,
    }

    impl Timer {
        pub fn new() -> io::Result<Self> {
            Ok(Self {
                sleep: Box::pin(tokio::time::sleep_until(
                    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400),
                )),
            })
        }

        pub fn arm(&mut self, at: Instant) -> io::Result<()> {
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
            Ok(())
        }

        pub async fn fired(&mut self) -> io::Result<()> {
            self.sleep.as_mut().await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn fires_at_the_armed_instant_and_not_before() {
        runtime().block_on(async {
            let mut timer = WakeTimer::new().expect("timer");
            let start = Instant::now();
            let at = start + Duration::from_millis(30);
            timer.arm(at).expect("arm");
            assert_eq!(timer.armed(), Some(at));
            timer.fired().await.expect("fired");
            assert!(Instant::now() >= at, "fired early");
            assert_eq!(timer.armed(), None);
        });
    }

    #[test]
    fn re_arming_later_moves_the_wake_up() {
        runtime().block_on(async {
            let mut timer = WakeTimer::new().expect("timer");
            let start = Instant::now();
            timer.arm(start + Duration::from_millis(10)).expect("arm");
            let later = start + Duration::from_millis(60);
            timer.arm(later).expect("re-arm");
            timer.fired().await.expect("fired");
            assert!(Instant::now() >= later, "fired at the first setting");
        });
    }

    #[test]
    fn re_arming_after_expiry_does_not_fire_for_the_old_setting() {
        runtime().block_on(async {
            let mut timer = WakeTimer::new().expect("timer");
            timer.arm(Instant::now()).expect("arm in the past");
            // Let it expire (and the reactor see it) without consuming it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let later = Instant::now() + Duration::from_millis(40);
            timer.arm(later).expect("re-arm");
            timer.fired().await.expect("fired");
            assert!(Instant::now() >= later, "the stale expiry woke it");
        });
    }

    #[test]
    fn a_cancelled_wait_leaves_the_timer_armed() {
        runtime().block_on(async {
            let mut timer = WakeTimer::new().expect("timer");
            let at = Instant::now() + Duration::from_millis(40);
            timer.arm(at).expect("arm");
            let early = tokio::time::timeout(Duration::from_millis(5), timer.fired()).await;
            assert!(early.is_err(), "fired 35 ms early");
            assert_eq!(timer.armed(), Some(at));
            timer.fired().await.expect("fired");
            assert!(Instant::now() >= at);
        });
    }
}
