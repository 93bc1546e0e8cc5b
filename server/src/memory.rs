//! Keeping the allocator from holding on to freed memory.
//!
//! Every join and leave allocates and frees peer-connection state (DTLS, SRTP contexts,
//! interceptor buffers, NACK histories) on several threads. glibc keeps freed memory in
//! its per-thread arenas for reuse, so after many conferences come and go the resident
//! size stays at its high-water mark although the live heap is back where it started (the
//! leak check measured live heap flat while RSS grew ~2.5 KB per join/leave cycle).
//! Trimming after connections close returns those pages; a later conference gets them
//! back from the kernel. When the last connection closes, caches that refill on demand
//! (the store's page cache) are dropped first, so an idle server is back at its resting
//! size.
//!
//! What a trim cannot return is memory held in glibc's per-thread caches (tcache): freed
//! chunks a thread keeps for its own next allocation, which pin the pages they sit in.
//! There is no call to empty them; they can only be turned off when the process starts,
//! with `GLIBC_TUNABLES=glibc.malloc.tcache_count=0`, which `deploy/wardlink.service` and
//! the container set. With it the leak check's resident memory returned to its baseline,
//! and the forwarding benchmarks showed no CPU cost (tests/results/performance.md,
//! session 11).

/// Allocator arenas the process may use. glibc's default (8 per core) gives each thread
/// that ever allocated under contention an arena of its own, and free memory scattered
/// over many arenas is hard to give back: in the leak check, capping them at 2 halved the
/// resident growth left after 600 join/leave cycles. Small allocations mostly stay in
/// glibc's per-thread cache, which needs no arena lock.
pub const MAX_ARENAS: i32 = 2;

/// Caps the allocator's arenas at [`MAX_ARENAS`] (glibc only; does nothing elsewhere or
/// when `MALLOC_ARENA_MAX` is set, which then wins). Call at the start of `main`.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt has no preconditions; called before other threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS);
        }
    }
}

/// Returns free heap pages of every allocator arena to the operating system. Takes a few
/// milliseconds on a large heap and holds allocator locks meanwhile, so call it off the
/// media thread (the media loop asks a [`Reclaimer`]).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; 0 keeps no extra padding at the top.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What to give back, in the order of a [`Reclaimer`]'s work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Connections closed: trim the heap.
    FreedHeap,
    /// The last connection closed: drop the caches that refill on demand (the store's
    /// page cache), then trim the heap.
    Idle,
}

impl Reclaim {
    /// What to reclaim when the number of connections went from `before` to `now` over
    /// one check: nothing unless some closed; everything once none is left.
    pub fn after(before: usize, now: usize) -> Option<Reclaim> {
        match now {
            _ if now >= before => None,
            0 => Some(Reclaim::Idle),
            _ => Some(Reclaim::FreedHeap),
        }
    }
}

/// Drops caches that refill on demand; run by a [`Reclaimer`] on [`Reclaim::Idle`].
pub type DropCaches = Box<dyn Fn() + Send>;

/// A long-lived thread that returns memory to the operating system on request, so the
/// media loop never waits on allocator locks or the store. One thread for the process's
/// life: a thread per request left glibc's cached thread stacks and their thread-local
/// blocks behind.
#[derive(Clone)]
pub struct Reclaimer {
    tx: std::sync::mpsc::Sender<Reclaim>,
}

impl Reclaimer {
    /// Starts the thread. `drop_caches` runs on it for every [`Reclaim::Idle`].
    pub fn start(drop_caches: DropCaches) -> std::io::Result<Reclaimer> {
        let (tx, rx) = std::sync::mpsc::channel::<Reclaim>();
        std::thread::Builder::new()
            .name("reclaim".into())
            .spawn(move || {
                // Ends when every sender is gone, i.e. with the media loop.
                while let Ok(mut what) = rx.recv() {
                    // Requests that queued up meanwhile are served by one pass.
                    while let Ok(next) = rx.try_recv() {
                        if next == Reclaim::Idle {
                            what = Reclaim::Idle;
                        }
                    }
                    if what == Reclaim::Idle {
                        drop_caches();
                    }
                    release_free_heap();
                }
            })?;
        Ok(Reclaimer { tx })
    }

    /// Asks for `what`; returns at once.
    pub fn request(&self, what: Reclaim) {
        // Fails only once the thread has ended, when there is nothing left to do.
        let _ = self.tx.send(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn wait_for(count: &AtomicUsize, want: usize) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if count.load(Ordering::SeqCst) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn caches_are_dropped_only_when_idle() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = dropped.clone();
        let reclaimer = Reclaimer::start(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }))
        .expect("reclaim thread");
        reclaimer.request(Reclaim::FreedHeap);
        reclaimer.request(Reclaim::Idle);
        assert!(wait_for(&dropped, 1), "idle dropped the caches");
        reclaimer.request(Reclaim::FreedHeap);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "a trim alone keeps them");
    }

    #[test]
    fn reclaims_only_after_connections_closed() {
        assert_eq!(Reclaim::after(0, 0), None);
        assert_eq!(Reclaim::after(3, 5), None);
        assert_eq!(Reclaim::after(5, 5), None);
        assert_eq!(Reclaim::after(5, 2), Some(Reclaim::FreedHeap));
        assert_eq!(Reclaim::after(5, 0), Some(Reclaim::Idle));
    }
}
