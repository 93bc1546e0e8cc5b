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
//! [`next_run`] decides what may share a send (pure, tested without sockets); [`send_run`]
//! performs it. Where the kernel or the device refuses GSO, the caller falls back to one
//! `sendto` per datagram for good ([`is_unsupported`]).

use std::net::SocketAddr;

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

/// Sends `buf`, the concatenation of datagrams each `segment` bytes long (the last may be
/// shorter), to `to` in one `sendmsg` with `UDP_SEGMENT`. Returns the bytes sent.
#[cfg(target_os = "linux")]
pub fn send_run(
    socket: &impl std::os::fd::AsRawFd,
    to: SocketAddr,
    buf: &[u8],
    segment: u16,
) -> std::io::Result<usize> {
    let addr = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // Room for one cmsg carrying a u16, aligned as the kernel expects.
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    let mut control = [0u64; 4];
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at a control buffer of `space` bytes, enough for one header
    // and a u16, so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for the value.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
    // SAFETY: `msg` and everything it points to are valid for the duration of the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// GSO send (unavailable off Linux: callers check [`supported`] first).
#[cfg(not(target_os = "linux"))]
pub fn send_run<S>(
    _socket: &S,
    _to: SocketAddr,
    _buf: &[u8],
    _segment: u16,
) -> std::io::Result<usize> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
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

    /// A real GSO send over loopback arrives as separate datagrams with the right bytes.
    #[test]
    fn one_send_arrives_as_separate_datagrams() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        if !supported(&tx) {
            eprintln!("UDP GSO not supported here; nothing to check");
            return;
        }
        let datagrams: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; if i == 4 { 300 } else { 1000 }])
            .collect();
        let buf: Vec<u8> = datagrams.concat();
        let sent = send_run(&tx, rx.local_addr().unwrap(), &buf, 1000).unwrap();
        assert_eq!(sent, buf.len());
        let mut got = vec![0u8; 2048];
        for want in &datagrams {
            let (n, from) = rx.recv_from(&mut got).unwrap();
            assert_eq!(from, tx.local_addr().unwrap());
            assert_eq!(&got[..n], want.as_slice());
        }
    }
}
