//! Kernel receive timestamps (`SO_TIMESTAMPNS`) for the latency measurement.
//!
//! A subscriber task that is briefly descheduled (50 of them share two cores with the
//! server) would otherwise add its own queueing to every packet's "latency through the
//! server". The kernel stamps each datagram when it reaches the socket, so latency is
//! publisher send → subscriber socket: generator encrypt + kernel + server + kernel,
//! and none of the generator's receive-side scheduling.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to stamp datagrams arriving on `socket`. Returns false if it refused
/// (then [`try_recv`] returns no stamps and the caller falls back to its own clock).
pub fn enable(socket: &UdpSocket) -> bool {
    crate::sockopt::set_int(socket, libc::SO_TIMESTAMPNS, 1)
}

/// One datagram: length, sender, and the kernel's arrival time (CLOCK_REALTIME, ns) if
/// stamping is on. `WouldBlock` when nothing is queued.
pub fn try_recv(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    socket.try_io(Interest::READABLE, || recv(socket.as_raw_fd(), buf))
}

fn recv(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in msg refers to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = wardlink::media::recv_batch::socket_addr(&addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel just filled, bounded by
    // msg_controllen; SCM_TIMESTAMPNS data is one timespec.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, from, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[tokio::test]
    async fn stamps_a_loopback_datagram_with_its_arrival_time() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(enable(&rx));
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let realtime = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        // Linux turns stamping on for the whole stack from a work queue after the first
        // socket asks, and stamps unstamped datagrams with the time they are read. So the
        // first datagrams may carry the read time; within a few tries one must carry its
        // arrival time, well before it was read.
        let mut arrival_stamped = 0;
        for _ in 0..20 {
            let before = realtime();
            tx.send_to(b"hello", rx.local_addr().unwrap())
                .await
                .unwrap();
            let after = realtime();
            tokio::time::sleep(Duration::from_millis(30)).await;
            rx.readable().await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from, stamp) = try_recv(&rx, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(from, tx.local_addr().unwrap());
            let stamp = stamp.expect("a kernel timestamp");
            assert!(stamp >= before, "{stamp} before the send at {before}");
            assert!(
                matches!(try_recv(&rx, &mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            );
            if stamp <= after + 1_000_000 {
                arrival_stamped += 1;
                if arrival_stamped == 3 {
                    return;
                }
            }
        }
        panic!("only {arrival_stamped} of 20 datagrams carried their arrival time");
    }
}
