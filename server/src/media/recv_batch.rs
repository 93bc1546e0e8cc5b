//! Receiving many datagrams per system call (Linux `recvmmsg`).
//!
//! At small fan-outs the media loop wakes for nearly every datagram, and each wake-up
//! used to cost two reads: one that returned the datagram and one that returned
//! `EAGAIN`, which is how an edge-triggered reactor learns the queue is empty. One
//! `recvmmsg` for up to [`BATCH`] datagrams answers both questions: fewer than asked for
//! means the queue was drained, so the caller can clear readiness without the extra read
//! (see `media::run`). Under load it also takes a whole burst in one call.

use std::io;
use std::net::SocketAddr;

/// Datagrams taken per call.
pub const BATCH: usize = 32;
/// Bytes per datagram buffer: anything bigger than a path MTU is not WebRTC and is cut.
pub const DATAGRAM: usize = 2048;

/// Reusable buffers for one `recvmmsg` of up to [`BATCH`] datagrams.
pub struct RecvBatch {
    buffers: Box<[[u8; DATAGRAM]; BATCH]>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buffers: Box::new([[0u8; DATAGRAM]; BATCH]),
            lens: [0; BATCH],
            from: [None; BATCH],
        }
    }
}

impl RecvBatch {
    /// Reads what is queued on the non-blocking `socket`, up to [`BATCH`] datagrams.
    /// Returns how many were read (at least one), or `WouldBlock` when none was queued.
    /// A datagram from an address family other than IPv4/IPv6 is returned without a
    /// sender and should be skipped.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &impl std::os::fd::AsRawFd) -> io::Result<usize> {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        // The headers point into `self.buffers` and the local arrays, all of which
        // outlive the call; they are rebuilt each time so nothing self-referential is kept.
        for i in 0..BATCH {
            iovs[i].iov_base = self.buffers[i].as_mut_ptr().cast();
            iovs[i].iov_len = DATAGRAM;
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH valid headers whose buffers are writable for the
        // lengths given; a null timeout with MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = (msgs[i].msg_len as usize).min(DATAGRAM);
            self.from[i] = socket_addr(&addrs[i]);
        }
        Ok(n)
    }

    /// Reads one datagram (no `recvmmsg` off Linux).
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &std::net::UdpSocket) -> io::Result<usize> {
        let (len, from) = socket.recv_from(&mut self.buffers[0])?;
        self.lens[0] = len;
        self.from[0] = Some(from);
        Ok(1)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: sender (if IPv4/IPv6) and bytes.
    pub fn get(&self, i: usize) -> (Option<SocketAddr>, &[u8]) {
        (self.from[i], &self.buffers[i][..self.lens[i]])
    }
}

/// The IPv4/IPv6 address in a kernel-filled `sockaddr_storage` (`None` for other families).
#[cfg(target_os = "linux")]
pub fn socket_addr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                a.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        (rx, tx)
    }

    /// Waits until the kernel has queued `n` datagrams on `rx` (loopback delivery is
    /// synchronous, but be safe).
    fn settle() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    #[test]
    fn empty_socket_would_block() {
        let (rx, _tx) = pair();
        let mut batch = RecvBatch::default();
        let e = batch.recv(&rx).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn takes_every_queued_datagram_with_its_sender_in_order() {
        let (rx, tx) = pair();
        let (rx2, tx2) = pair();
        drop(rx2);
        let to = rx.local_addr().unwrap();
        for i in 0..5u8 {
            tx.send_to(&vec![i; 100 + usize::from(i)], to).unwrap();
        }
        tx2.send_to(b"second sender", to).unwrap();
        settle();
        let mut batch = RecvBatch::default();
        // Fewer than BATCH: the caller may treat the queue as drained.
        assert_eq!(batch.recv(&rx).unwrap(), 6);
        for i in 0..5u8 {
            let (from, data) = batch.get(usize::from(i));
            assert_eq!(from, Some(tx.local_addr().unwrap()));
            assert_eq!(data, vec![i; 100 + usize::from(i)].as_slice());
        }
        assert_eq!(
            batch.get(5),
            (Some(tx2.local_addr().unwrap()), &b"second sender"[..])
        );
        assert_eq!(
            batch.recv(&rx).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_full_batch_leaves_the_rest_queued() {
        let (rx, tx) = pair();
        let to = rx.local_addr().unwrap();
        for i in 0..(BATCH + 3) {
            tx.send_to(&(i as u32).to_be_bytes(), to).unwrap();
        }
        settle();
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(&rx).unwrap(), BATCH);
        assert_eq!(batch.get(BATCH - 1).1, &((BATCH - 1) as u32).to_be_bytes());
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        assert_eq!(batch.get(2).1, &((BATCH + 2) as u32).to_be_bytes());
    }

    #[test]
    fn ipv6_senders_are_reported() {
        let Ok(rx) = UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 loopback on this machine
        };
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("[::1]:0").unwrap();
        tx.send_to(b"v6", rx.local_addr().unwrap()).unwrap();
        settle();
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.get(0), (Some(tx.local_addr().unwrap()), &b"v6"[..]));
    }

    #[test]
    fn oversized_datagrams_are_cut_not_fatal() {
        let (rx, tx) = pair();
        tx.send_to(&[7u8; DATAGRAM + 500], rx.local_addr().unwrap())
            .unwrap();
        settle();
        let mut batch = RecvBatch::default();
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.get(0).1.len(), DATAGRAM);
    }
}
