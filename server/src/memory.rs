//! Keeping the allocator from holding on to freed memory.
//!
//! Every join and leave allocates and frees peer-connection state (DTLS, SRTP contexts,
//! interceptor buffers, NACK histories) on several threads. glibc keeps freed memory in
//! its per-thread arenas for reuse, so after many conferences come and go the resident
//! size stays at its high-water mark although the live heap is back where it started (the
//! leak check measured live heap flat while RSS grew ~2.5 KB per join/leave cycle).
//! Trimming after connections close returns those pages; a later conference gets them
//! back from the kernel.

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
/// media thread (the media loop uses `spawn_blocking`).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; 0 keeps no extra padding at the top.
    unsafe {
        libc::malloc_trim(0);
    }
}
