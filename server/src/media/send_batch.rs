//! Sending to many peers in one system call (Linux `sendmmsg`).
//!
//! A fan-out queues one packet for each of N subscribers, and the loop used to hand them
//! to the kernel with one `sendto` (or GSO `sendmsg`) each: N system call entries and
//! exits per forwarded packet. One `sendmmsg` carries up to [`MESSAGES`] messages, each to
//! its own destination and each optionally a GSO run (several equal-sized datagrams for
//! one peer, see [`super::gso`]), with the datagrams referenced in place (no gather copy).
//!
//! Measured at 200 subscribers: 6 % less server CPU per forwarded Mbit (normalised by the
//! generator's CPU, three alternating rounds). The thread was switched out as often as
//! before (about 770 times per second), so those switches do not come from returning to
//! user space between sends.

use std::io;
use std::net::UdpSocket;

use super::outbound::Datagram;

/// Most messages (destinations) in one call.
pub const MESSAGES: usize = 128;
/// Most datagrams in one call, over all its messages.
pub const DATAGRAMS: usize = 256;

/// Reusable headers for one `sendmmsg`. Only the entries a call uses are written; the
/// pointers between them are rebuilt on every call, so nothing self-referential is kept.
#[cfg(target_os = "linux")]
pub struct SendBatch {
    names: Box<[libc::sockaddr_storage; MESSAGES]>,
    controls: Box<[[u64; 4]; MESSAGES]>,
    iovs: Box<[libc::iovec; DATAGRAMS]>,
    msgs: Box<[libc::mmsghdr; MESSAGES]>,
}

/// Off Linux: no `sendmmsg`; each call sends one datagram.
#[cfg(not(target_os = "linux"))]
#[derive(Default)]
pub struct SendBatch;

#[cfg(target_os = "linux")]
impl Default for SendBatch {
    fn default() -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs.
        unsafe {
            SendBatch {
                names: Box::new(std::mem::zeroed()),
                controls: Box::new([[0; 4]; MESSAGES]),
                iovs: Box::new(std::mem::zeroed()),
                msgs: Box::new(std::mem::zeroed()),
            }
        }
    }
}

impl SendBatch {
    /// Sends the messages described by `runs` from the front of `queue`, as many as fit
    /// in one call. `runs[k]` is how many datagrams of `queue` (taken in order) make up
    /// message k; they all go to the first one's destination, and a message of more than
    /// one datagram is sent as a GSO run cut at the first datagram's length (the caller
    /// forms runs with [`super::gso::next_run`], only where GSO is on).
    ///
    /// Returns how many messages, from the front of `runs`, the kernel took (at least 1),
    /// or the error of the first one (`WouldBlock` when the socket buffer is full).
    #[cfg(target_os = "linux")]
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        queue: &[Datagram],
        runs: &[usize],
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;

        // Raw base pointers taken once: every entry below is written through them, so
        // the pointers stored in the headers stay valid until the call returns.
        let names = self.names.as_mut_ptr();
        let controls = self.controls.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        let msgs = self.msgs.as_mut_ptr();
        // SAFETY: CMSG_SPACE / CMSG_LEN are pure size computations.
        let (space, cmsg_len) = unsafe {
            let size = std::mem::size_of::<u16>() as u32;
            (
                libc::CMSG_SPACE(size) as usize,
                libc::CMSG_LEN(size) as usize,
            )
        };
        debug_assert!(space <= std::mem::size_of::<[u64; 4]>());

        let (mut messages, mut datagrams) = (0usize, 0usize);
        for &run in runs {
            let datagrams_after = datagrams + run;
            if run == 0 || messages == MESSAGES || datagrams_after > DATAGRAMS {
                break;
            }
            let Some(group) = queue.get(datagrams..datagrams_after) else {
                break;
            };
            let addr = socket2::SockAddr::from(group[0].to);
            // SAFETY: every index is below its array's length (checked above), the
            // source address is `addr.len()` bytes (at most a sockaddr_storage), and the
            // iovecs point at payloads in `queue`, which outlives the call.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    addr.as_ptr().cast::<u8>(),
                    names.add(messages).cast::<u8>(),
                    addr.len() as usize,
                );
                for (i, t) in group.iter().enumerate() {
                    *iovs.add(datagrams + i) = libc::iovec {
                        iov_base: t.payload.as_ptr() as *mut libc::c_void,
                        iov_len: t.payload.len(),
                    };
                }
                let hdr = &mut (*msgs.add(messages)).msg_hdr;
                hdr.msg_name = names.add(messages).cast();
                hdr.msg_namelen = addr.len();
                hdr.msg_iov = iovs.add(datagrams);
                hdr.msg_iovlen = run as _;
                hdr.msg_flags = 0;
                if run > 1 {
                    let control = controls.add(messages);
                    hdr.msg_control = control.cast();
                    hdr.msg_controllen = space as _;
                    // The control buffer is `space` bytes: room for one header and a u16.
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = cmsg_len as _;
                    let segment = group[0].payload.len() as u16;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
                } else {
                    hdr.msg_control = std::ptr::null_mut();
                    hdr.msg_controllen = 0;
                }
                (*msgs.add(messages)).msg_len = 0;
            }
            messages += 1;
            datagrams = datagrams_after;
        }
        if messages == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no whole message to send",
            ));
        }
        // SAFETY: the first `messages` headers are fully initialised above and point
        // only at memory that lives until this call returns.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs,
                messages as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }

    /// Sends the first datagram of `queue` (off Linux there is neither `sendmmsg` nor GSO,
    /// so every run is one datagram). Returns 1, or the error.
    #[cfg(not(target_os = "linux"))]
    pub fn send(
        &mut self,
        socket: &UdpSocket,
        queue: &[Datagram],
        runs: &[usize],
    ) -> io::Result<usize> {
        match (queue.first(), runs.first()) {
            (Some(t), Some(&1)) => socket.send_to(&t.payload, t.to).map(|_| 1),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no whole message to send",
            )),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn transmit(to: SocketAddr, fill: u8, len: usize) -> Datagram {
        Datagram {
            to,
            payload: BytesMut::from(&vec![fill; len][..]),
        }
    }

    fn receiver() -> UdpSocket {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        rx
    }

    fn recv_all(rx: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..count {
            let n = rx.recv(&mut buf).expect("datagram");
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn one_call_reaches_many_peers_byte_exact_and_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let peers: Vec<UdpSocket> = (0..5).map(|_| receiver()).collect();
        // Two rounds of one datagram per peer, as a fan-out of two packets queues them.
        let mut queue = Vec::new();
        for round in 0..2u8 {
            for (p, rx) in peers.iter().enumerate() {
                let to = rx.local_addr().expect("addr");
                queue.push(transmit(to, round * 16 + p as u8, 100 + p + round as usize));
            }
        }
        let runs = vec![1; queue.len()];
        let mut batch = SendBatch::default();
        let sent = batch.send(&tx, &queue, &runs).expect("sendmmsg");
        assert_eq!(sent, queue.len(), "all ten messages in one call");
        for (p, rx) in peers.iter().enumerate() {
            let got = recv_all(rx, 2);
            assert_eq!(got[0], vec![p as u8; 100 + p]);
            assert_eq!(got[1], vec![16 + p as u8; 101 + p]);
        }
    }

    #[test]
    fn a_message_of_several_datagrams_is_cut_into_them() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (a, b) = (receiver(), receiver());
        let (to_a, to_b) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        // A GSO run of three (the last one shorter) to a, then one datagram to b.
        let queue = vec![
            transmit(to_a, 1, 1200),
            transmit(to_a, 2, 1200),
            transmit(to_a, 3, 700),
            transmit(to_b, 4, 300),
        ];
        if !super::super::gso::supported(&tx) {
            return; // No GSO on this kernel: the caller never forms runs over 1.
        }
        let mut batch = SendBatch::default();
        let sent = batch.send(&tx, &queue, &[3, 1]).expect("sendmmsg");
        assert_eq!(sent, 2);
        assert_eq!(
            recv_all(&a, 3),
            vec![vec![1; 1200], vec![2; 1200], vec![3; 700]]
        );
        assert_eq!(recv_all(&b, 1), vec![vec![4; 300]]);
    }

    #[test]
    fn takes_no_more_than_one_call_can_carry() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = receiver();
        let to = rx.local_addr().expect("addr");
        let queue: Vec<Datagram> = (0..MESSAGES + 10)
            .map(|i| transmit(to, i as u8, 20))
            .collect();
        let runs = vec![1; queue.len()];
        let mut batch = SendBatch::default();
        let sent = batch.send(&tx, &queue, &runs).expect("sendmmsg");
        assert_eq!(sent, MESSAGES);
        // The rest goes in the next call, starting where the first stopped.
        let rest = batch
            .send(&tx, &queue[sent..], &runs[sent..])
            .expect("second sendmmsg");
        assert_eq!(rest, 10);
        let got = recv_all(&rx, MESSAGES + 10);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; 20], "datagram {i}");
        }
    }

    #[test]
    fn runs_that_do_not_fit_the_queue_are_refused() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = receiver();
        let queue = vec![transmit(rx.local_addr().expect("addr"), 0, 10)];
        let mut batch = SendBatch::default();
        let err = batch
            .send(&tx, &queue, &[2])
            .expect_err("run longer than queue");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
