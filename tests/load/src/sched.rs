//! The generator's own CPU scheduling policy.
//!
//! The generator shares the machine's cores with the server under test. Every datagram
//! the server sends to a generator socket wakes a generator thread, and under the normal
//! policy a woken thread may preempt the server's thread on the spot: at 150 subscribers
//! wardlink's media thread was switched out that way about 1,000 times per second, which
//! remote clients on their own machines never do. Under `SCHED_BATCH` a woken thread
//! waits for the running one's turn to end (it is still preempted on the scheduler tick),
//! so the server runs as it would with its clients elsewhere. Both servers get the same.

/// Puts this thread under `SCHED_BATCH`; threads it starts afterwards inherit it, so call
/// it before the runtime starts.
pub fn use_batch() -> std::io::Result<()> {
    set_policy(libc::SCHED_BATCH)
}

/// Puts this thread back under the normal policy (`SCHED_OTHER`), e.g. a thread started by
/// a batch one that must be woken on time (see `publisher_thread.rs`).
pub fn use_normal() -> std::io::Result<()> {
    set_policy(libc::SCHED_OTHER)
}

/// Sets the calling thread's policy to one of the unprivileged, priority-0 ones.
fn set_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid, initialised
    // parameter; SCHED_BATCH and SCHED_OTHER need priority 0 and no privilege.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy, as recorded in reports.
pub fn policy_name() -> &'static str {
    // SAFETY: sched_getscheduler has no preconditions.
    match unsafe { libc::sched_getscheduler(0) } {
        libc::SCHED_OTHER => "normal",
        libc::SCHED_BATCH => "batch",
        libc::SCHED_IDLE => "idle",
        libc::SCHED_FIFO => "fifo",
        libc::SCHED_RR => "rr",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_applied_to_this_thread_and_inherited_by_new_ones() {
        // In a thread of its own so the test harness's other threads keep their policy.
        std::thread::spawn(|| {
            assert_eq!(policy_name(), "normal");
            use_batch().unwrap();
            assert_eq!(policy_name(), "batch");
            let child = std::thread::spawn(policy_name).join().unwrap();
            assert_eq!(child, "batch");
        })
        .join()
        .unwrap();
    }
}
