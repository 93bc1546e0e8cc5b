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
/// resident growth left after 600 join/leave cycles. With glibc's per-thread cache on,
/// small allocations mostly stay in it and take no arena lock; with it off (as deployed)
/// every allocation takes its arena's lock, which the forwarding benchmarks on 2 cores did
/// not show as a cost (session 11). Machines with many more cores than that were not
/// measured.
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

/// What a [`Reclaimer`] is asked to give back. "Connections" are the media plane's peer
/// connections (one per publish or subscribe session), not HTTPS or WebSocket ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Some connections closed: trim the heap.
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
/// media loop never runs a trim itself or waits on the store. (While a trim runs it holds
/// each arena's lock in turn, so an allocation on another thread can wait for it; the
/// trim's duration is logged at debug level.) One thread for the process's life: a thread
/// per request left glibc's cached thread stacks and their thread-local blocks behind.
#[derive(Clone)]
pub struct Reclaimer {
    tx: std::sync::mpsc::Sender<Reclaim>,
}

impl Reclaimer {
    /// Starts the thread. `drop_caches` runs on it for every [`Reclaim::Idle`].
    pub fn start(drop_caches: DropCaches) -> std::io::Result<Reclaimer> {
        Self::start_with(drop_caches, Box::new(release_free_heap))
    }

    /// [`Reclaimer::start`] with the heap trim given (tests count passes with it).
    fn start_with(drop_caches: DropCaches, trim: Box<dyn Fn() + Send>) -> std::io::Result<Self> {
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
                    let started = std::time::Instant::now();
                    if what == Reclaim::Idle {
                        drop_caches();
                    }
                    let trim_started = std::time::Instant::now();
                    trim();
                    tracing::debug!(
                        ?what,
                        caches_us = (trim_started - started).as_micros() as u64,
                        trim_us = trim_started.elapsed().as_micros() as u64,
                        "memory returned"
                    );
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

    fn wait_for(count: &AtomicUsize, want: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < want {
            assert!(Instant::now() < until, "no pass {want} within 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn caches_are_dropped_only_when_idle() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let passes = Arc::new(AtomicUsize::new(0));
        let (d, p) = (dropped.clone(), passes.clone());
        let reclaimer = Reclaimer::start_with(
            Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }),
            Box::new(move || {
                p.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .expect("reclaim thread");
        // Each request waits for its pass, so none is merged with the next.
        reclaimer.request(Reclaim::FreedHeap);
        wait_for(&passes, 1);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "a trim alone keeps the caches"
        );
        reclaimer.request(Reclaim::Idle);
        wait_for(&passes, 2);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "idle drops them, then trims"
        );
        reclaimer.request(Reclaim::FreedHeap);
        wait_for(&passes, 3);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
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
