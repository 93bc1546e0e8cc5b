//! The SFU media plane: one UDP socket for every peer connection, driven by our own
//! event loop around the sans-I/O [`sfu::Sfu`].
//!
//! Rooms talk to it through a [`MediaHandle`]; it answers on each participant's event
//! channel. The loop owns the socket and the `Sfu`, so forwarding needs no lock.

pub mod codecs;
pub mod demux;
pub mod forwarder;
pub mod gso;
pub mod recv_batch;
pub mod send_batch;
pub mod sfu;
pub mod timer_slack;
pub mod wake_timer;

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use wardlink_signaling::protocol::ParticipantId;
use wardlink_signaling::room::{MediaCommand, MediaEvent};

use sfu::{Sfu, SfuConfig, SfuStats};

/// `recvmmsg` calls per wake-up (each up to [`recv_batch::BATCH`] datagrams) before
/// commands and timers get a turn.
const READ_ROUNDS: usize = 2;
/// How often the loop checks whether connections closed, to return freed heap.
const TRIM_CHECK: Duration = Duration::from_secs(2);
/// When a send found the kernel buffer full and no descriptor could be registered to wait
/// for it to drain, how soon the loop tries again.
const RETRY_BLOCKED_SEND: Duration = Duration::from_millis(1);

/// A request to the media loop.
enum Request {
    Attach {
        participant: ParticipantId,
        events: mpsc::UnboundedSender<MediaEvent>,
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
    tx: mpsc::UnboundedSender<Request>,
}

impl MediaHandle {
    /// Registers a participant; its [`MediaEvent`]s will arrive on `events`.
    pub fn attach(&self, participant: ParticipantId, events: mpsc::UnboundedSender<MediaEvent>) {
        let _ = self.tx.send(Request::Attach {
            participant,
            events,
        });
    }

    /// Sends a room's command to the media plane.
    pub fn command(&self, command: MediaCommand) {
        let _ = self.tx.send(Request::Command(command));
    }

    /// Current counters and the number of live peer connections.
    pub async fn stats(&self) -> Option<(SfuStats, usize)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Request::Stats(tx)).ok()?;
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
/// The loop is one task that wakes for nearly every datagram. On its own single-threaded
/// runtime a wake-up is one epoll return on this thread; inside the shared multi-threaded
/// runtime each one also went through the work-stealing scheduler and could wake a second
/// worker, which the profile showed as a large share of CPU per packet at small fan-outs.
/// It also keeps HTTP, TLS and the audit log from ever delaying a packet.
pub fn start(config: &crate::config::Config) -> anyhow::Result<MediaHandle> {
    let socket = bind_media_socket(config.media_bind_addr())?;
    let local_addr = socket.local_addr()?;
    let advertised_addr = SocketAddr::new(config.advertised_media_ip(), local_addr.port());
    let sfu = Sfu::new(SfuConfig {
        advertised: advertised_addr,
        connect_timeout: Duration::from_secs(config.connect_timeout_secs),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let gso = config.media_gso;
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    runtime.enable_io();
    // The loop's timer is a timerfd on Linux (see `wake_timer`); without tokio's timer
    // wheel each park skips reading the clock and walking the wheel.
    #[cfg(not(target_os = "linux"))]
    runtime.enable_time();
    let runtime = runtime.build()?;
    // Created here, inside the loop's runtime, so a failure stops startup with an error
    // instead of leaving a media thread that never wakes for its timers.
    let timer = {
        let _in_runtime = runtime.enter();
        wake_timer::WakeTimer::new()?
    };
    std::thread::Builder::new()
        .name("media".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Registered with this thread's reactor, so it must be done here. Only
                // for reading: registered for writing too, every datagram sent would
                // raise an EPOLLOUT edge and one more trip through the loop.
                match register(socket, Interest::READABLE) {
                    Ok(socket) => {
                        let sender = Sender::new(socket.get_ref(), gso);
                        run(socket, sfu, rx, sender, timer).await
                    }
                    Err(e) => tracing::error!(%e, "media socket could not join the event loop"),
                }
            })
        })?;
    tracing::info!(%local_addr, %advertised_addr, "media plane listening (UDP)");
    Ok(MediaHandle {
        local_addr,
        advertised_addr,
        tx,
    })
}

/// Registers `socket` with the current thread's reactor for `interest` only.
fn register(socket: UdpSocket, interest: Interest) -> std::io::Result<AsyncFd<UdpSocket>> {
    // SAFETY: a `UdpSocket` owns its descriptor: it stays open, and `as_raw_fd` returns the
    // same one, until the socket (owned by the `AsyncFd` from here on) is dropped.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(|e| e.into_parts().1)
}

/// Hands the SFU's datagrams to the kernel: many peers per `sendmmsg` (see
/// [`send_batch`]), and runs of equal-sized datagrams to one peer as one GSO message where
/// possible (see [`gso`]).
struct Sender {
    gso: bool,
    /// Datagrams taken from the SFU and not yet accepted by the kernel, in order.
    queue: VecDeque<sfu::Transmit>,
    /// Datagrams per message for the next call (reused).
    runs: Vec<usize>,
    batch: send_batch::SendBatch,
}

impl Sender {
    fn new(socket: &UdpSocket, want_gso: bool) -> Self {
        let gso = want_gso && gso::supported(socket);
        tracing::info!(gso, "media send path");
        Sender {
            gso,
            queue: VecDeque::new(),
            runs: Vec::with_capacity(send_batch::MESSAGES),
            batch: send_batch::SendBatch::default(),
        }
    }

    /// Sends until the SFU has nothing left or the kernel buffer is full. Returns whether
    /// it stopped on a full buffer; what is left waits here and in per-peer outboxes.
    fn flush(&mut self, socket: &UdpSocket, sfu: &mut Sfu) -> bool {
        loop {
            // Enough for one full call; the SFU hands out one peer's outbox at a time, so
            // a peer's datagrams are adjacent and can form a GSO run.
            while self.queue.len() < send_batch::DATAGRAMS {
                match sfu.poll_transmit() {
                    Some(t) => self.queue.push_back(t),
                    None => break,
                }
            }
            if self.queue.is_empty() {
                return false;
            }
            let queue = self.queue.make_contiguous();
            self.runs.clear();
            let mut at = 0;
            while at < queue.len() && self.runs.len() < send_batch::MESSAGES {
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
                Ok(0) => return true,
                Ok(messages) => {
                    let sent: usize = self.runs[..messages.min(self.runs.len())].iter().sum();
                    self.queue.drain(..sent);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
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
                }
            }
        }
    }
}

/// The event loop: flush what the SFU wants sent, then wait for a datagram, a request
/// or the next protocol deadline. `timer` is the loop's one timer for its whole life,
/// moved only when the SFU's deadline leaves the slack window (`timer_slack`).
async fn run(
    socket: AsyncFd<UdpSocket>,
    mut sfu: Sfu,
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut sender: Sender,
    mut timer: wake_timer::WakeTimer,
) {
    let mut batch = recv_batch::RecvBatch::default();
    // Registered for writing only while a send found the kernel buffer full (see `start`).
    let mut writable: Option<AsyncFd<UdpSocket>> = None;
    // After connections close, hand the heap they freed back to the kernel (see `memory`).
    let mut next_trim_check = Instant::now() + TRIM_CHECK;
    let mut peers_at_last_check = 0;
    loop {
        let blocked = sender.flush(socket.get_ref(), &mut sfu);
        if blocked && writable.is_none() {
            writable = socket
                .get_ref()
                .try_clone()
                .and_then(|dup| register(dup, Interest::WRITABLE))
                .map_err(|e| tracing::warn!(%e, "cannot wait for the media socket to drain"))
                .ok();
        } else if !blocked {
            writable = None;
        }
        let deadline = sfu.poll_timeout();
        let due = deadline.map_or(next_trim_check, |d| d.min(next_trim_check));
        let arm = if blocked && writable.is_none() {
            // Nothing to wait on for the drain: try the send again shortly.
            Some(Instant::now() + RETRY_BLOCKED_SEND)
        } else {
            timer_slack::rearm(timer.armed(), due, timer_slack::TIMER_SLACK)
        };
        if let Some(at) = arm {
            if let Err(e) = timer.arm(at) {
                tracing::error!(%e, "cannot arm the media loop's timer");
                return;
            }
        }
        tokio::select! {
            biased;
            request = rx.recv() => {
                let Some(request) = request else { return };
                let now = Instant::now();
                handle_request(&mut sfu, now, request);
                // Apply everything queued at once; rooms often send several together.
                while let Ok(request) = rx.try_recv() {
                    handle_request(&mut sfu, now, request);
                }
            }
            ready = socket.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::error!(%e, "media socket reactor failed");
                        return;
                    }
                };
                let now = Instant::now();
                for _ in 0..READ_ROUNDS {
                    match batch.recv(socket.get_ref()) {
                        Ok(n) => {
                            for i in 0..n {
                                if let (Some(from), data) = batch.get(i) {
                                    sfu.handle_datagram(now, from, data);
                                }
                            }
                            if n < recv_batch::BATCH {
                                // Fewer than asked for: the queue is empty, no need to
                                // read again just to see EAGAIN.
                                guard.clear_ready();
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        // ICMP port unreachable from a vanished peer shows up here on
                        // Linux; what is queued behind it is read on the next round.
                        Err(e) => tracing::trace!(%e, "recv failed"),
                    }
                }
                // Timers that came due while asleep ride on this wake-up (see
                // `timer_slack`).
                if deadline.is_some_and(|d| d <= now) {
                    sfu.handle_timeout(now);
                }
            }
            ready = async {
                match writable.as_ref() {
                    Some(fd) => fd.writable().await.map(Some),
                    None => std::future::pending().await,
                }
            }, if blocked => {
                // Cleared before the next flush tries again, so a send that still finds
                // the buffer full waits for the next edge instead of spinning.
                if let Ok(Some(mut guard)) = ready {
                    guard.clear_ready();
                }
            }
            fired = timer.fired() => {
                if let Err(e) = fired {
                    tracing::error!(%e, "media loop's timer failed");
                    return;
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    sfu.handle_timeout(now);
                }
                if now >= next_trim_check {
                    let peers = sfu.peer_count();
                    if peers < peers_at_last_check {
                        tokio::task::spawn_blocking(crate::memory::release_free_heap);
                    }
                    peers_at_last_check = peers;
                    next_trim_check = now + TRIM_CHECK;
                }
            }
        }
    }
}

fn handle_request(sfu: &mut Sfu, now: Instant, request: Request) {
    match request {
        Request::Attach {
            participant,
            events,
        } => sfu.attach(participant, events),
        Request::Command(command) => sfu.handle_command(now, command),
        Request::Stats(reply) => {
            let _ = reply.send((sfu.stats(), sfu.peer_count()));
        }
    }
}
