//! The SFU media plane: one UDP socket for every peer connection, driven by our own
//! event loop around the sans-I/O [`sfu::Sfu`].
//!
//! Rooms talk to it through a [`MediaHandle`]; it answers on each participant's event
//! channel. The loop owns the socket and the `Sfu`, so forwarding needs no lock.

pub mod codecs;
pub mod demux;
pub mod forwarder;
pub mod sfu;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use wardlink_signaling::protocol::ParticipantId;
use wardlink_signaling::room::{MediaCommand, MediaEvent};

use sfu::{Sfu, SfuConfig, SfuStats};

/// Largest datagram read; anything bigger than a path MTU is not WebRTC.
const MAX_DATAGRAM: usize = 2048;
/// Datagrams read per wake-up before giving commands and timers a turn.
const READ_BATCH: usize = 64;

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
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Binds the single UDP media socket and starts the media event loop.
pub async fn start(config: &crate::config::Config) -> anyhow::Result<MediaHandle> {
    let socket = bind_media_socket(config.media_bind_addr())?;
    let local_addr = socket.local_addr()?;
    let advertised_addr = SocketAddr::new(config.advertised_media_ip(), local_addr.port());
    let sfu = Sfu::new(SfuConfig {
        advertised: advertised_addr,
        connect_timeout: Duration::from_secs(config.connect_timeout_secs),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(socket, sfu, rx));
    tracing::info!(%local_addr, %advertised_addr, "media plane listening (UDP)");
    Ok(MediaHandle {
        local_addr,
        advertised_addr,
        tx,
    })
}

/// The event loop: flush what the SFU wants sent, then wait for a datagram, a request
/// or the next protocol deadline.
async fn run(socket: UdpSocket, mut sfu: Sfu, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut pending: Option<sfu::Transmit> = None;
    loop {
        // Send until the kernel buffer is full; what remains waits in per-peer outboxes.
        let mut blocked = false;
        while let Some(t) = pending.take().or_else(|| sfu.poll_transmit()) {
            match socket.try_send_to(&t.payload, t.to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    pending = Some(t);
                    blocked = true;
                    break;
                }
                Err(e) => tracing::debug!(to = %t.to, %e, "send failed"),
            }
        }
        let deadline = sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
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
            received = socket.recv_from(&mut buf) => {
                match received {
                    Ok((n, from)) => {
                        sfu.handle_datagram(Instant::now(), from, &buf[..n]);
                        for _ in 1..READ_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => sfu.handle_datagram(Instant::now(), from, &buf[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                    // ICMP port unreachable from a vanished peer shows up here on Linux.
                    Err(e) => tracing::trace!(%e, "recv failed"),
                }
            }
            _ = socket.writable(), if blocked => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                sfu.handle_timeout(Instant::now());
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
