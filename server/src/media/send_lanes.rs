//! Sending a large fan-out from two threads.
//!
//! Two thirds of a forwarded leg's cost is the kernel's UDP send path (on loopback it also
//! delivers into the receiver's socket), and one packet of a lecture-like conference goes to
//! hundreds of legs. One thread sending them all makes the last subscriber wait for the
//! whole fan-out. While the server is fanning out widely ([`FanoutMode`]: one packet to
//! [`LARGE_FANOUT`] legs or more), datagrams to 60 % of the destinations ([`lane_of`],
//! [`MEDIA_SHARE`]) go to a second sending thread ([`Helper`]), which encrypts them (see
//! [`super::outbound`]) and sends them with its own handle to the same socket, and both
//! threads run at real-time priority where allowed (see [`super::realtime`]). Small
//! conferences, however many, never start the second thread.
//!
//! Order: a destination always hashes to the same lane, and the mode only turns off when
//! the helper has nothing left to send, so datagrams to one address never overtake each
//! other. A peer whose address changes mid-call (see [`super::remote_path`]) may switch
//! lanes, so its first packets to the new address can overtake its last ones to the old
//! address; those are a moved client's loss anyway.
//!
//! Earlier tries without real-time priority (sessions 5, 7 and 9 in
//! tests/results/performance.md) left the second thread waiting for a core that the load
//! generator held, and p99 did not move. With both threads at `SCHED_FIFO` it halved
//! (session 12).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::outbound::{Datagram, Transmit};
use super::realtime::{self, ThreadPriority};
use super::{gso, send_batch};

/// Subscriber legs of one forwarded packet from which the fan-out counts as large. About
/// 0.3 ms of sending on the benchmark machine.
pub const LARGE_FANOUT: usize = 64;
/// How long after the last large flush the mode stays on, so a conference between two
/// keyframes or a short pause does not flip it back and forth.
pub const CALM_AFTER: Duration = Duration::from_secs(10);
/// Most datagrams waiting for the helper; beyond it new ones for its lane are dropped
/// (counted), as a full per-peer outbox drops. About 20 MB of video.
pub const HELPER_BACKLOG_LIMIT: usize = 16_384;
/// How long a lane whose send found the kernel buffer full waits for it to drain before
/// trying again.
const BLOCKED_WAIT_MS: i32 = 5;

/// Share of destinations the media thread keeps while the fan-out is split: less than
/// half, because it also receives, runs every connection's protocol and rewrites every
/// leg. With half each, the media thread had 58 % of the two threads' samples at 1 → 450
/// (session 13's profile); with this share both do about the same.
pub const MEDIA_SHARE: f64 = 0.4;

/// Which thread sends to a destination while the fan-out is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneId {
    /// The media loop's own thread.
    Media,
    /// The helper thread.
    Helper,
}

/// The lane of a destination: a fixed hash of its address and port, so a peer's datagrams
/// all take one thread, and consecutive client ports spread in proportion
/// ([`MEDIA_SHARE`]).
pub fn lane_of(to: &SocketAddr) -> LaneId {
    let ip = match to {
        SocketAddr::V4(a) => u64::from(a.ip().to_bits()),
        SocketAddr::V6(a) => {
            let bits = a.ip().to_bits();
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    // Fibonacci hashing: the top bits of the product depend on every input bit.
    let h = ((ip << 16) ^ u64::from(to.port())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    const MEDIA_BELOW: u64 = (MEDIA_SHARE * (u64::MAX as f64)) as u64;
    if h < MEDIA_BELOW {
        LaneId::Media
    } else {
        LaneId::Helper
    }
}

/// A change of [`FanoutMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChange {
    /// A large fan-out: split sends and raise priority.
    On,
    /// [`CALM_AFTER`] without one, and the helper idle: back to one normal thread.
    Off,
}

/// Whether the server is fanning out widely (pure; the media loop feeds it before every
/// flush).
#[derive(Debug, Default)]
pub struct FanoutMode {
    /// When the last large fan-out was seen, while the mode is on.
    last_large: Option<Instant>,
}

impl FanoutMode {
    /// Whether the mode is on.
    pub fn is_on(&self) -> bool {
        self.last_large.is_some()
    }

    /// Notes that the widest packet forwarded since the last call went to `widest` legs;
    /// `helper_idle` says the helper has sent everything it was given. Returns the change,
    /// if any.
    pub fn observe(
        &mut self,
        now: Instant,
        widest: usize,
        helper_idle: bool,
    ) -> Option<ModeChange> {
        let large = widest >= LARGE_FANOUT;
        match self.last_large {
            None if large => {
                self.last_large = Some(now);
                Some(ModeChange::On)
            }
            None => None,
            Some(_) if large => {
                self.last_large = Some(now);
                None
            }
            Some(last) if helper_idle && now.saturating_duration_since(last) >= CALM_AFTER => {
                self.last_large = None;
                Some(ModeChange::Off)
            }
            Some(_) => None,
        }
    }
}

/// How a [`Lane::send`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams taken off the queue: handed to the kernel, or dropped after an error the
    /// peer's own recovery covers.
    pub taken: usize,
    /// Of those, the ones the kernel accepted.
    pub handed: usize,
    /// Stopped because the kernel's send buffer was full; the rest is still queued.
    pub blocked: bool,
}

/// Datagrams waiting for one thread's `sendmmsg`, in order, with the reusable system-call
/// buffers: many peers per call (see [`send_batch`]), and runs of equal-sized datagrams to
/// one peer as one GSO message where possible (see [`gso`]).
pub struct Lane {
    gso: bool,
    queue: VecDeque<Datagram>,
    /// Datagrams per message for the next call (reused).
    runs: Vec<usize>,
    batch: send_batch::SendBatch,
}

impl Lane {
    /// An empty lane; `gso` whether to try UDP GSO.
    pub fn new(gso: bool) -> Self {
        Lane {
            gso,
            queue: VecDeque::new(),
            runs: Vec::with_capacity(send_batch::MESSAGES),
            batch: send_batch::SendBatch::default(),
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues one datagram behind the others, encrypting it first on this thread if the
    /// SFU left that to the sender. Returns false if SRTP refused it (it is dropped).
    pub fn push(&mut self, transmit: Transmit) -> bool {
        match transmit.seal() {
            Some(datagram) => {
                self.queue.push_back(datagram);
                true
            }
            None => false,
        }
    }

    /// Takes out, in order, the queued datagrams whose destination is in `lane`.
    pub fn take_lane(&mut self, lane: LaneId) -> Vec<Transmit> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for t in self.queue.drain(..) {
            if lane_of(&t.to) == lane {
                taken.push(t.into());
            } else {
                kept.push_back(t);
            }
        }
        self.queue = kept;
        taken
    }

    /// Sends until the queue is empty or the kernel's buffer is full.
    pub fn send(&mut self, socket: &UdpSocket) -> Sent {
        let (mut taken, mut handed) = (0, 0);
        loop {
            if self.queue.is_empty() {
                return Sent {
                    taken,
                    handed,
                    blocked: false,
                };
            }
            let queue = self.queue.make_contiguous();
            self.runs.clear();
            let mut at = 0;
            while at < queue.len()
                && at < send_batch::DATAGRAMS
                && self.runs.len() < send_batch::MESSAGES
            {
                let run = if self.gso {
                    let to = queue[at].to;
                    gso::next_run(
                        queue[at..]
                            .iter()
                            .take_while(|t| t.to == to)
                            .map(|t| t.payload.len()),
                    )
                } else {
                    1
                };
                self.runs.push(run);
                at += run;
            }
            match self.batch.send(socket, queue, &self.runs) {
                // The kernel takes at least one message or fails; should it ever take none,
                // wait for writability rather than spin.
                Ok(0) => {
                    return Sent {
                        taken,
                        handed,
                        blocked: true,
                    }
                }
                Ok(messages) => {
                    let sent: usize = self.runs[..messages.min(self.runs.len())].iter().sum();
                    self.queue.drain(..sent);
                    taken += sent;
                    handed += sent;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Sent {
                        taken,
                        handed,
                        blocked: true,
                    }
                }
                Err(e) if self.runs[0] > 1 && gso::is_unsupported(&e) => {
                    // Resent one by one on the next pass, and from now on.
                    tracing::warn!(%e, "UDP GSO refused; sending one datagram per message");
                    self.gso = false;
                }
                Err(e) => {
                    // Like a lost packet: the peer's own recovery (NACK, ICE) deals with it.
                    tracing::debug!(to = %queue[0].to, %e, "send failed");
                    let run = self.runs[0];
                    self.queue.drain(..run);
                    taken += run;
                }
            }
        }
    }
}

/// Why [`Helper::hand`] did not take a batch.
#[derive(Debug)]
pub enum Refused {
    /// Its backlog is at [`HELPER_BACKLOG_LIMIT`]: this many datagrams were dropped.
    Full(usize),
    /// The thread has ended (nothing in it panics by design; this is the guard should it
    /// ever): the batch, for the caller to send itself.
    Gone(Vec<Transmit>),
}

/// The second sending thread: takes batches of datagrams for its lane and sends them in
/// order on its own handle to the media socket. Ends when this handle is dropped.
pub struct Helper {
    tx: mpsc::Sender<Vec<Transmit>>,
    /// Datagrams handed over and not yet taken off its queue.
    backlog: Arc<AtomicUsize>,
    /// Whether it should run at real-time priority; it follows on its next batch.
    realtime: Arc<AtomicBool>,
    /// Datagrams it has handed to the kernel.
    sent: Arc<AtomicU64>,
    /// Its CPU time in nanoseconds, as of its last batch.
    cpu_ns: Arc<AtomicU64>,
}

impl Helper {
    /// Starts the thread; `priority` is the real-time priority it asks for (0 = none)
    /// while [`Helper::set_realtime`] says so.
    pub fn spawn(socket: &UdpSocket, gso: bool, priority: u8) -> io::Result<Helper> {
        let socket = socket.try_clone()?;
        let (tx, rx) = mpsc::channel::<Vec<Transmit>>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let realtime = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            backlog: backlog.clone(),
            realtime: realtime.clone(),
            sent: sent.clone(),
            cpu_ns: cpu_ns.clone(),
        };
        std::thread::Builder::new()
            .name("media-send".into())
            .spawn(move || helper_loop(socket, rx, shared, gso, priority))?;
        Ok(Helper {
            tx,
            backlog,
            realtime,
            sent,
            cpu_ns,
        })
    }

    /// Datagrams it has handed to the kernel so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// CPU time the thread has used, as of its last batch (zero where the platform has
    /// no thread CPU clock). For [`realtime::BusyGate`].
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }

    /// Asks the thread to run at real-time priority, or not, from its next batch on (the
    /// media thread's own priority follows the same rule).
    pub fn set_realtime(&self, on: bool) {
        self.realtime.store(on, Ordering::Release);
    }

    /// Whether everything handed over has been sent.
    pub fn is_idle(&self) -> bool {
        self.backlog.load(Ordering::Acquire) == 0
    }

    /// Hands over datagrams for its lane, in order.
    pub fn hand(&self, batch: Vec<Transmit>) -> Result<(), Refused> {
        let n = batch.len();
        if n == 0 {
            return Ok(());
        }
        if self.backlog.load(Ordering::Acquire) + n > HELPER_BACKLOG_LIMIT {
            return Err(Refused::Full(n));
        }
        self.backlog.fetch_add(n, Ordering::AcqRel);
        if let Err(mpsc::SendError(batch)) = self.tx.send(batch) {
            self.backlog.fetch_sub(n, Ordering::AcqRel);
            return Err(Refused::Gone(batch));
        }
        Ok(())
    }
}

/// What the helper thread shares with its [`Helper`].
struct Shared {
    backlog: Arc<AtomicUsize>,
    realtime: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    cpu_ns: Arc<AtomicU64>,
}

fn helper_loop(
    socket: UdpSocket,
    rx: mpsc::Receiver<Vec<Transmit>>,
    shared: Shared,
    gso: bool,
    priority: u8,
) {
    let mut thread_priority = ThreadPriority::new(priority);
    let backlog = shared.backlog;
    let mut lane = Lane::new(gso);
    while let Ok(first) = rx.recv() {
        if shared.realtime.load(Ordering::Acquire) {
            thread_priority.raise("media-send");
        } else {
            thread_priority.lower("media-send");
        }
        // Everything already waiting goes out in the same calls. Encrypted here, on this
        // thread (see `outbound`); whatever SRTP refuses is dropped and leaves the backlog
        // at once.
        let waiting = std::iter::from_fn(|| rx.try_recv().ok());
        let refused = std::iter::once(first)
            .chain(waiting)
            .flatten()
            .map(|t| lane.push(t))
            .filter(|sealed| !sealed)
            .count();
        if refused > 0 {
            backlog.fetch_sub(refused, Ordering::AcqRel);
        }
        while !lane.is_empty() {
            let sent = lane.send(&socket);
            shared.sent.fetch_add(sent.handed as u64, Ordering::Relaxed);
            backlog.fetch_sub(sent.taken, Ordering::AcqRel);
            if sent.blocked {
                wait_writable(&socket);
            }
        }
        if let Some(cpu) = realtime::thread_cpu_time() {
            let ns = u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
            shared.cpu_ns.store(ns, Ordering::Relaxed);
        }
    }
}

/// Waits (bounded) until the socket can take more.
fn wait_writable(socket: &UdpSocket) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, BLOCKED_WAIT_MS) };
    }
    #[cfg(not(unix))]
    {
        let _ = socket;
        std::thread::sleep(Duration::from_millis(BLOCKED_WAIT_MS as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    #[test]
    fn consecutive_ports_spread_over_both_lanes() {
        // 60 % to the helper (MEDIA_SHARE), within a few points.
        let helper = (20_000..21_000u16)
            .filter(|&p| lane_of(&SocketAddr::from((Ipv4Addr::LOCALHOST, p))) == LaneId::Helper)
            .count();
        assert!(
            (550..=650).contains(&helper),
            "{helper} of 1000 to the helper"
        );
        let v6 = (20_000..21_000u16)
            .filter(|&p| {
                let a = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, p, 0, 0));
                lane_of(&a) == LaneId::Helper
            })
            .count();
        assert!(
            (550..=650).contains(&v6),
            "{v6} of 1000 to the helper (IPv6)"
        );
    }

    #[test]
    fn a_destination_keeps_its_lane() {
        let a = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 7), 50_123));
        let first = lane_of(&a);
        assert!((0..100).all(|_| lane_of(&a) == first));
    }

    #[test]
    fn mode_turns_on_at_a_large_flush_and_off_only_when_calm_and_idle() {
        let t0 = Instant::now();
        let mut mode = FanoutMode::default();
        assert_eq!(mode.observe(t0, LARGE_FANOUT - 1, true), None);
        assert!(!mode.is_on());
        assert_eq!(mode.observe(t0, LARGE_FANOUT, true), Some(ModeChange::On));
        assert!(mode.is_on());
        // Small flushes meanwhile keep it on; a large one restarts the calm period.
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(mode.observe(t5, 3, true), None);
        assert_eq!(mode.observe(t5, 450, true), None);
        let calm = t5 + CALM_AFTER;
        assert_eq!(mode.observe(calm - Duration::from_millis(1), 0, true), None);
        // Calm, but the helper still has datagrams: their order needs it to stay on.
        assert_eq!(mode.observe(calm, 0, false), None);
        assert!(mode.is_on());
        assert_eq!(mode.observe(calm, 0, true), Some(ModeChange::Off));
        assert!(!mode.is_on());
        assert_eq!(mode.observe(calm, 0, true), None);
    }

    fn transmit(to: SocketAddr, fill: u8, len: usize) -> Transmit {
        Transmit::wire(to, BytesMut::from(&vec![fill; len][..]))
    }

    #[test]
    fn taking_a_lane_keeps_both_orders() {
        let mut lane = Lane::new(false);
        let addrs: Vec<SocketAddr> = (30_000..30_040u16)
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .collect();
        for round in 0..3u8 {
            for (i, a) in addrs.iter().enumerate() {
                lane.push(transmit(*a, round, 10 + i));
            }
        }
        let helper = lane.take_lane(LaneId::Helper);
        assert!(!helper.is_empty() && !lane.is_empty());
        assert!(helper.iter().all(|t| lane_of(&t.to) == LaneId::Helper));
        let helper: Vec<Datagram> = helper.into_iter().filter_map(Transmit::seal).collect();
        assert!(lane.queue.iter().all(|t| lane_of(&t.to) == LaneId::Media));
        assert_eq!(helper.len() + lane.len(), 120);
        // Per destination, rounds still in order on either side.
        for part in [
            helper.iter().collect::<Vec<_>>(),
            lane.queue.iter().collect(),
        ] {
            for a in &addrs {
                let rounds: Vec<u8> = part
                    .iter()
                    .filter(|t| t.to == *a)
                    .map(|t| t.payload[0])
                    .collect();
                assert!(
                    rounds.is_empty() || rounds == vec![0, 1, 2],
                    "{a}: {rounds:?}"
                );
            }
        }
    }

    /// A sending socket, and a receiving one (2 s read timeout) with its address.
    fn socket_pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        (tx, rx, to)
    }

    /// Waits (bounded) until the helper has sent everything handed to it.
    fn wait_idle(helper: &Helper) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !helper.is_idle() {
            assert!(Instant::now() < deadline, "backlog never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn helper_sends_its_batches_in_order_and_goes_idle() {
        let (tx, rx, to) = socket_pair();
        let helper = Helper::spawn(&tx, true, 0).expect("spawn");
        // 100 small datagrams stay well inside the receiver's default kernel buffer.
        for batch in 0..4u8 {
            let datagrams = (0..25u8)
                .map(|i| transmit(to, batch * 25 + i, 100))
                .collect();
            helper.hand(datagrams).expect("taken");
        }
        let mut buf = [0u8; 2048];
        for expected in 0..100u8 {
            let n = rx.recv(&mut buf).expect("datagram");
            assert_eq!(n, 100);
            assert_eq!(buf[0], expected, "in the order handed over");
            assert!(buf[..n].iter().all(|b| *b == expected), "intact");
        }
        wait_idle(&helper);
        assert_eq!(helper.sent(), 100);
    }

    #[test]
    fn the_helper_encrypts_forwarded_rtp_as_the_connections_sender_would() {
        use super::super::outbound::{Payload, RtpToSeal};
        use super::super::srtp_sender::SrtpSender;
        use rtc::crypto::providers::RingCrypto;
        use rtc::srtp::protection_profile::ProtectionProfile;
        use std::sync::Mutex;

        let profile = ProtectionProfile::AeadAes128Gcm;
        let (key, salt) = ([7u8; 16], [9u8; 12]);
        let new_sender = || SrtpSender::new(&RingCrypto, profile, &key, &salt).expect("sender");
        // The same keys twice: one for the helper to use, one to compute what it must send.
        let shared = Arc::new(Mutex::new(new_sender()));
        let mut reference = new_sender();

        let (tx, rx, to) = socket_pair();
        let helper = Helper::spawn(&tx, false, 0).expect("spawn");
        let packets: Vec<rtc::rtp::Packet> = (0..5u16)
            .map(|i| rtc::rtp::Packet {
                header: rtc::rtp::Header {
                    version: 2,
                    payload_type: 96,
                    // Across the sequence wrap: the shared sender keeps the rollover count.
                    sequence_number: 65_533u16.wrapping_add(i),
                    timestamp: 3000 * u32::from(i),
                    ssrc: 0x1234,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(vec![i as u8; 300]),
            })
            .collect();
        let batch = packets
            .iter()
            .map(|p| Transmit {
                to,
                payload: Payload::Rtp(RtpToSeal {
                    packet: p.clone(),
                    sender: shared.clone(),
                }),
            })
            .collect();
        helper.hand(batch).expect("taken");
        let mut buf = [0u8; 2048];
        for p in &packets {
            let n = rx.recv(&mut buf).expect("datagram");
            let expected = reference.protect(p).expect("reference");
            assert_eq!(&buf[..n], &expected[..], "seq {}", p.header.sequence_number);
        }
        // The count follows the send call, which may return after the datagrams arrived.
        wait_idle(&helper);
        assert_eq!(helper.sent(), 5);
    }

    #[test]
    fn a_full_backlog_drops_instead_of_growing() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let helper = Helper::spawn(&tx, false, 0).expect("spawn");
        // Pretend the thread is far behind.
        helper
            .backlog
            .store(HELPER_BACKLOG_LIMIT, Ordering::Release);
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        assert!(matches!(
            helper.hand(vec![transmit(to, 1, 10), transmit(to, 2, 10)]),
            Err(Refused::Full(2))
        ));
        assert_eq!(helper.backlog.load(Ordering::Acquire), HELPER_BACKLOG_LIMIT);
    }
}
