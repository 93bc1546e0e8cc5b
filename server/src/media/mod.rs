//! The SFU media plane: one UDP socket for every peer connection, driven by our own
//! event loop around the sans-I/O [`sfu::Sfu`].
//!
//! Rooms talk to it through a [`MediaHandle`]; it answers on each participant's event
//! channel. The loop owns the socket and the `Sfu`, so forwarding needs no lock.

pub mod codecs;
pub mod demux;
pub mod direct_rx;
pub mod direct_srtp;
pub mod feedback;
pub mod forwarder;
pub mod gso;
pub mod outbound;
pub mod realtime;
pub mod recv_batch;
pub mod remote_path;
pub mod send_batch;
pub mod send_lanes;
pub mod sfu;
pub mod srtp_sender;
pub mod timer_slack;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::mpsc::UnboundedSender;
use wardlink_signaling::protocol::ParticipantId;
use wardlink_signaling::room::{MediaCommand, MediaEvent};

use sfu::{Sfu, SfuConfig, SfuStats};

/// `recvmmsg` calls per wake-up (each up to [`recv_batch::BATCH`] datagrams) before
/// commands and timers get a turn.
const READ_ROUNDS: usize = 2;
/// How often the loop checks whether connections closed, to have freed heap returned (and
/// caches dropped once none is left; see [`crate::memory::Reclaim`]).
const TRIM_CHECK: Duration = Duration::from_secs(2);
/// When a send found the kernel buffer full and the socket could not be registered to
/// wait for it to drain, how soon the loop tries again.
const RETRY_BLOCKED_SEND: Duration = Duration::from_millis(1);
/// The media socket in the loop's `Poll`.
const SOCKET: Token = Token(0);
/// The requests channel's waker in the loop's `Poll`.
const REQUESTS: Token = Token(1);

/// A request to the media loop.
enum Request {
    Attach {
        participant: ParticipantId,
        events: UnboundedSender<MediaEvent>,
    },
    Command(MediaCommand),
    Stats(tokio::sync::oneshot::Sender<(SfuStats, usize)>),
}

/// Handle to the running media plane; cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    /// The bound UDP media address.
    pub local_addr: SocketAddr,
    /// The address advertised in ICE candidates.
    pub advertised_addr: SocketAddr,
    requests: Arc<Requests>,
}

/// The sending side of the loop's request queue. Dropped with the last handle, it wakes
/// the loop once more so the loop sees the queue closed and ends.
struct Requests {
    tx: Option<mpsc::Sender<Request>>,
    /// Shared with the loop: the loop's copy keeps the eventfd open, so the last wake-up
    /// is still delivered after this side is gone.
    waker: Arc<Waker>,
}

impl Requests {
    fn send(&self, request: Request) -> bool {
        let Some(tx) = &self.tx else { return false };
        if tx.send(request).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            tracing::error!(%e, "cannot wake the media loop");
        }
        true
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        // Closed first, so the woken loop finds it closed.
        self.tx = None;
        let _ = self.waker.wake();
    }
}

impl MediaHandle {
    /// Registers a participant; its [`MediaEvent`]s will arrive on `events`.
    pub fn attach(&self, participant: ParticipantId, events: UnboundedSender<MediaEvent>) {
        self.requests.send(Request::Attach {
            participant,
            events,
        });
    }

    /// Sends a room's command to the media plane.
    pub fn command(&self, command: MediaCommand) {
        self.requests.send(Request::Command(command));
    }

    /// Current counters and the number of live peer connections.
    pub async fn stats(&self) -> Option<(SfuStats, usize)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self.requests.send(Request::Stats(tx)) {
            return None;
        }
        rx.await.ok()
    }
}

/// Kernel buffer asked for on the media socket, each way. One socket carries every peer,
/// so a keyframe burst from several publishers at once must fit; the kernel default
/// (~208 KiB) dropped datagrams with 20 rooms of 4 in the benchmark. Linux caps the request
/// at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds the UDP media socket with large kernel buffers.
fn bind_media_socket(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)),
    ] {
        if let Err(e) = result {
            tracing::warn!(%e, "could not enlarge the media socket's {what} buffer");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < SOCKET_BUFFER_BYTES {
        tracing::info!(
            granted,
            wanted = SOCKET_BUFFER_BYTES,
            "media socket receive buffer capped by the kernel; raise net.core.rmem_max for large conferences"
        );
    }
    Ok(socket.into())
}

/// Binds the single UDP media socket and starts the media event loop on a thread of its
/// own.
///
/// The loop wakes for nearly every datagram, so it is a plain `mio` poll loop on its own
/// thread: one `epoll_wait` per wake-up and nothing between it and the SFU. Inside the
/// shared multi-threaded tokio runtime each wake-up also went through the work-stealing
/// scheduler and could wake a second worker; on a current-thread tokio runtime of its own
/// (sessions 2-5) each one still went through the runtime's task and waker machinery. It
/// also keeps HTTP, TLS and the audit log from ever delaying a packet.
///
/// The loop asks `reclaimer` to return memory as connections close (see
/// [`crate::memory::Reclaim::after`]).
pub fn start(
    config: &crate::config::Config,
    reclaimer: crate::memory::Reclaimer,
) -> anyhow::Result<MediaHandle> {
    let socket = bind_media_socket(config.media_bind_addr())?;
    let local_addr = socket.local_addr()?;
    let advertised_addr = SocketAddr::new(config.advertised_media_ip(), local_addr.port());
    let sfu = Sfu::new(SfuConfig {
        advertised: advertised_addr,
        connect_timeout: Duration::from_secs(config.connect_timeout_secs),
        silence_limit: Duration::from_secs(config.media_silence_secs),
    });
    let poll = Poll::new()?;
    // Readable only: registered for writing too, every datagram sent would raise an
    // EPOLLOUT edge and one more trip through the loop. See `run` for writing.
    poll.registry().register(
        &mut SourceFd(&socket.as_raw_fd()),
        SOCKET,
        Interest::READABLE,
    )?;
    let waker = Arc::new(Waker::new(poll.registry(), REQUESTS)?);
    // Held by the loop thread until the loop ends (see `Requests::waker`).
    let loop_waker = waker.clone();
    let (tx, rx) = mpsc::channel();
    let gso = config.media_gso;
    let realtime = config.media_realtime_priority;
    std::thread::Builder::new()
        .name("media".into())
        .spawn(move || {
            // Made here: its reusable system-call buffers hold raw pointers, so it stays on
            // the thread that uses them.
            let sender = Sender::new(&socket, gso, realtime);
            run(poll, socket, sfu, rx, sender, reclaimer);
            drop(loop_waker);
        })?;
    tracing::info!(%local_addr, %advertised_addr, "media plane listening (UDP)");
    Ok(MediaHandle {
        local_addr,
        advertised_addr,
        requests: Arc::new(Requests {
            tx: Some(tx),
            waker,
        }),
    })
}

/// Hands the SFU's datagrams to the kernel on the media thread's [`send_lanes::Lane`], and
/// while the fan-out is large ([`send_lanes::FanoutMode`]) 60 % of the destinations on a
/// second thread ([`send_lanes::MEDIA_SHARE`]), with both at real-time priority where
/// allowed. Each thread encrypts what it sends ([`outbound`]).
struct Sender {
    gso: bool,
    /// The media thread's own datagrams, in order.
    lane: send_lanes::Lane,
    mode: send_lanes::FanoutMode,
    /// Started at the first large flush, if the machine has a second core.
    helper: Option<send_lanes::Helper>,
    /// Whether a helper may still be started (not on one core, not after a failed start).
    helper_possible: bool,
    /// This thread's priority: real-time while the fan-out is large and the gate allows.
    priority: realtime::ThreadPriority,
    gate: realtime::BusyGate,
    /// Datagrams dropped because the helper's backlog was full (logged as it grows).
    helper_drops: u64,
    /// Datagrams sent by helpers that have ended (see [`Sender::helper_sent`]).
    helper_sent_before: u64,
    /// CPU time of helpers that have ended, so the gate's total never goes back.
    helper_cpu_before: Duration,
}

impl Sender {
    fn new(socket: &UdpSocket, want_gso: bool, realtime: u8) -> Self {
        let gso = want_gso && gso::supported(socket);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tracing::info!(gso, cores, realtime, "media send path");
        Sender {
            gso,
            lane: send_lanes::Lane::new(gso),
            mode: send_lanes::FanoutMode::default(),
            helper: None,
            helper_possible: cores >= 2,
            priority: realtime::ThreadPriority::new(realtime),
            gate: realtime::BusyGate::new(cores),
            helper_drops: 0,
            helper_sent_before: 0,
            helper_cpu_before: Duration::ZERO,
        }
    }

    /// Sends until the SFU has nothing left or the kernel buffer is full. Returns whether
    /// it stopped on a full buffer; what is left waits here and in per-peer outboxes.
    fn flush(&mut self, socket: &UdpSocket, sfu: &mut Sfu, now: Instant) -> bool {
        // Decided before sending, so the first packet of a large fan-out is split already.
        let idle = self.helper.as_ref().is_none_or(|h| h.is_idle());
        match self.mode.observe(now, sfu.take_widest_fanout(), idle) {
            Some(send_lanes::ModeChange::On) => self.fan_out_widely(socket),
            Some(send_lanes::ModeChange::Off) => {
                // The helper is idle (the mode's condition), so nothing can overtake.
                if let Some(helper) = self.helper.take() {
                    self.helper_sent_before += helper.sent();
                    self.helper_cpu_before += helper.cpu_time();
                    tracing::info!("fan-out calm: sending from one thread");
                }
                self.apply_priority();
            }
            None => {}
        }
        loop {
            // Enough for one full call; the SFU hands out one peer's outbox at a time, so
            // a peer's datagrams are adjacent and can form a GSO run. The rest waits in the
            // outboxes, which bound what a blocked socket can pile up; the helper's share
            // is bounded the same way per pass, and by its backlog limit.
            let mut for_helper = Vec::new();
            while self.lane.len() < send_batch::DATAGRAMS
                && for_helper.len() < send_batch::DATAGRAMS
            {
                let Some(t) = sfu.poll_transmit() else { break };
                match &self.helper {
                    Some(_) if send_lanes::lane_of(&t.to) == send_lanes::LaneId::Helper => {
                        for_helper.push(t)
                    }
                    // A packet SRTP refuses is dropped (logged there), as a lost one.
                    _ => {
                        self.lane.push(t);
                    }
                }
            }
            let handed = !for_helper.is_empty();
            self.hand_to_helper(for_helper);
            if self.lane.is_empty() {
                if handed {
                    continue;
                }
                return false;
            }
            if self.lane.send(socket).blocked {
                return true;
            }
        }
    }

    /// Large fan-out mode starts: real-time priority for this thread, and the second
    /// sending thread.
    fn fan_out_widely(&mut self, socket: &UdpSocket) {
        // First, so that a refusal is known before the helper would ask too.
        self.apply_priority();
        if self.helper.is_some() || !self.helper_possible {
            return;
        }
        match send_lanes::Helper::spawn(socket, self.gso, self.priority.grantable()) {
            Ok(helper) => {
                tracing::info!("large fan-out: sending from two threads");
                self.helper = Some(helper);
                self.apply_priority();
                // What is still queued for the helper's lane goes first, in order.
                let waiting = self.lane.take_lane(send_lanes::LaneId::Helper);
                self.hand_to_helper(waiting);
            }
            Err(e) => {
                self.helper_possible = false;
                tracing::warn!(%e, "cannot start the second media send thread");
            }
        }
    }

    /// Once per gate window, gives the gate the CPU time both media threads have used and
    /// the machine's ticks.
    fn check_load(&mut self, now: Instant) {
        if !self.gate.is_due(now) {
            return;
        }
        let Some(own) = realtime::thread_cpu_time() else {
            return;
        };
        let helpers = self.helper_cpu_before
            + self
                .helper
                .as_ref()
                .map_or(Duration::ZERO, |h| h.cpu_time());
        let machine = realtime::MachineTicks::read();
        let verdict = self.gate.account(now, own + helpers, machine);
        if self.mode.is_on() {
            tracing::debug!(
                load = self.gate.last_load(),
                machine = self.gate.last_machine(),
                "media threads' CPU in cores, machine's share in use"
            );
        }
        if let Some(allowed) = verdict {
            if self.mode.is_on() {
                tracing::info!(allowed, "media threads' real-time priority by load");
            }
            self.apply_priority();
        }
    }

    /// Real-time priority for both sending threads while the fan-out is large and the
    /// media threads leave the machine headroom (see [`realtime::BusyGate`]).
    fn apply_priority(&mut self) {
        let on = self.mode.is_on() && self.gate.allows();
        if on {
            self.priority.raise("media");
        } else {
            self.priority.lower("media");
        }
        if let Some(helper) = &self.helper {
            helper.set_realtime(on);
        }
    }

    /// Datagrams the second thread has sent, over every helper so far.
    fn helper_sent(&self) -> u64 {
        self.helper_sent_before + self.helper.as_ref().map_or(0, |h| h.sent())
    }

    fn hand_to_helper(&mut self, batch: Vec<sfu::Transmit>) {
        let Some(helper) = &self.helper else { return };
        match helper.hand(batch) {
            Ok(()) => {}
            Err(send_lanes::Refused::Full(dropped)) => {
                // Logged at each power of two, so a long backlog does not flood the log.
                let before = self.helper_drops;
                self.helper_drops += dropped as u64;
                if before.leading_zeros() != self.helper_drops.leading_zeros() {
                    tracing::warn!(
                        total = self.helper_drops,
                        "second media send thread behind; datagrams dropped"
                    );
                }
            }
            Err(send_lanes::Refused::Gone(batch)) => {
                // Whatever it still held is lost; from now on this thread sends everything.
                tracing::error!("the second media send thread ended; sending from one thread");
                if let Some(helper) = self.helper.take() {
                    self.helper_sent_before += helper.sent();
                    self.helper_cpu_before += helper.cpu_time();
                }
                self.helper_possible = false;
                for t in batch {
                    self.lane.push(t);
                }
            }
        }
    }
}

/// The event loop: flush what the SFU wants sent, then wait for a datagram, a request
/// or the next protocol deadline (at most [`timer_slack::TIMER_SLACK`] late, so that most
/// deadlines are served on a datagram's wake-up instead of one of their own). Ends when
/// every [`MediaHandle`] is gone.
fn run(
    mut poll: Poll,
    socket: UdpSocket,
    mut sfu: Sfu,
    rx: mpsc::Receiver<Request>,
    mut sender: Sender,
    reclaimer: crate::memory::Reclaimer,
) {
    let fd = socket.as_raw_fd();
    let mut events = Events::with_capacity(4);
    let mut batch = recv_batch::RecvBatch::default();
    // The socket is edge-triggered: after a wake-up it stays readable until a read comes
    // back short, which may be several wake-ups later (see READ_ROUNDS).
    let mut readable = false;
    // Registered for writing only while a send found the kernel buffer full.
    let mut watching_writes = false;
    // After connections close, hand the heap they freed back to the kernel (see `memory`).
    let mut next_trim_check = Instant::now() + TRIM_CHECK;
    let mut peers_at_last_check = 0;
    // When the current wake-up began.
    let mut woke = Instant::now();
    loop {
        // The wake-up's own time: the mode only measures seconds of calm with it.
        let blocked = sender.flush(&socket, &mut sfu, woke);
        if blocked != watching_writes {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match poll
                .registry()
                .reregister(&mut SourceFd(&fd), SOCKET, interest)
            {
                Ok(()) => watching_writes = blocked,
                Err(e) => tracing::warn!(%e, "cannot change what the media loop waits for"),
            }
        }
        let deadline = sfu.poll_timeout();
        let wake_at = timer_slack::wake_at(deadline, next_trim_check, timer_slack::TIMER_SLACK);
        let timeout = if readable {
            Duration::ZERO
        } else if blocked && !watching_writes {
            // Nothing to wait on for the drain: try the send again shortly.
            RETRY_BLOCKED_SEND
        } else {
            wake_at.saturating_duration_since(Instant::now())
        };
        sender.check_load(woke);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(%e, "media loop's poll failed");
            return;
        }
        let mut requests = false;
        for event in events.iter() {
            match event.token() {
                SOCKET if event.is_readable() => readable = true,
                REQUESTS => requests = true,
                // Writable: the next flush tries again.
                _ => {}
            }
        }
        let now = Instant::now();
        woke = now;
        if requests {
            // Apply everything queued at once; rooms often send several together.
            loop {
                match rx.try_recv() {
                    Ok(request) => handle_request(&mut sfu, &sender, now, request),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
        }
        if readable {
            for _ in 0..READ_ROUNDS {
                match batch.recv(&socket) {
                    Ok(n) => {
                        for i in 0..n {
                            if let (Some(from), data) = batch.get(i) {
                                sfu.handle_datagram(now, from, data);
                            }
                        }
                        if n < recv_batch::BATCH {
                            // Fewer than asked for: the queue is empty, and the next
                            // datagram raises a new edge.
                            readable = false;
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        readable = false;
                        break;
                    }
                    // ICMP port unreachable from a vanished peer shows up here on
                    // Linux; what is queued behind it is read on the next round.
                    Err(e) => tracing::trace!(%e, "recv failed"),
                }
            }
        }
        // Timers that came due while asleep are served on whatever woke the loop.
        if deadline.is_some_and(|d| d <= now) {
            sfu.handle_timeout(now);
        }
        if now >= next_trim_check {
            let peers = sfu.peer_count();
            // malloc_trim takes milliseconds on a large heap and holds allocator locks:
            // never on this thread. Rare (at most every TRIM_CHECK).
            if let Some(what) = crate::memory::Reclaim::after(peers_at_last_check, peers) {
                reclaimer.request(what);
            }
            peers_at_last_check = peers;
            next_trim_check = now + TRIM_CHECK;
        }
    }
}

fn handle_request(sfu: &mut Sfu, sender: &Sender, now: Instant, request: Request) {
    match request {
        Request::Attach {
            participant,
            events,
        } => sfu.attach(participant, events),
        Request::Command(command) => sfu.handle_command(now, command),
        Request::Stats(reply) => {
            let mut stats = sfu.stats();
            stats.helper_sent = sender.helper_sent();
            stats.helper_drops = sender.helper_drops;
            let _ = reply.send((stats, sfu.peer_count()));
        }
    }
}
