//! Sending runs of datagrams to one peer in a single system call, with UDP generic
//! segmentation offload (GSO, Linux `UDP_SEGMENT`).
//!
//! The profile of the forwarding path put about half of the server's CPU in the kernel's
//! per-datagram send path (`sendto`, route lookup, skb allocation, device queue). A
//! subscriber's outbox usually holds several packets at once (the packets of one video
//! frame arrive together and are forwarded in the same read batch), and an encoder splits a
//! frame into packets of equal size, so those runs can go down as one GSO send: the kernel
//! walks the stack once and cuts the buffer into datagrams at the end.
//!
//! [`next_run`] decides what may share a send (pure, tested without sockets);
//! [`super::send_batch`] performs it, one GSO run per message of a `sendmmsg`. Where the
//! kernel or the device refuses GSO, the caller falls back to one datagram per message for
//! good ([`is_unsupported`]).

/// Most segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 or 128).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: one IP datagram's worth, less IP and UDP headers.
pub const MAX_BYTES: usize = 65_000;

/// Length of the run of datagrams at the front of `lens` (all to one destination) that
/// one GSO send can carry: every datagram but the last exactly as long as the first, the
/// last no longer, at most [`MAX_SEGMENTS`] and [`MAX_BYTES`] in all. Always at least 1
/// for a non-empty input.
pub fn next_run(lens: impl IntoIterator<Item = usize>) -> usize {
    let mut lens = lens.into_iter();
    let Some(first) = lens.next() else {
        return 0;
    };
    let (mut count, mut total) = (1usize, first);
    for len in lens {
        if count == MAX_SEGMENTS || total + len > MAX_BYTES || len > first || first == 0 {
            break;
        }
        count += 1;
        total += len;
        if len < first {
            // A shorter datagram can only be the last segment.
            break;
        }
    }
    count
}

/// Whether the platform supports GSO on this socket (Linux 4.18+).
#[cfg(target_os = "linux")]
pub fn supported(socket: &impl std::os::fd::AsRawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0
}

/// Whether the platform supports GSO on this socket (never, off Linux).
#[cfg(not(target_os = "linux"))]
pub fn supported<S>(_socket: &S) -> bool {
    false
}

/// Whether a GSO send failed because the path cannot do GSO at all (old kernel, a device
/// without checksum offload, a segment over the device MTU), as opposed to a full buffer
/// or an unreachable peer. After such an error the caller sends one datagram at a time.
pub fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_equal_datagrams_with_a_shorter_tail() {
        assert_eq!(next_run([]), 0);
        assert_eq!(next_run([1200]), 1);
        assert_eq!(next_run([1200, 1200, 1200, 700]), 4);
        // Nothing may follow a shorter datagram, and nothing longer may join.
        assert_eq!(next_run([1200, 700, 1200]), 2);
        assert_eq!(next_run([700, 1200]), 1);
        assert_eq!(next_run([1200, 1199, 1199]), 2);
        // Caps on segments and bytes.
        assert_eq!(next_run(vec![100; 200]), MAX_SEGMENTS);
        assert_eq!(next_run(vec![1200; 64]), MAX_BYTES / 1200);
        assert_eq!(next_run([0, 0, 0]), 1);
    }
}
