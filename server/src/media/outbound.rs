//! What the SFU core hands to the send path ([`Transmit`]) and what a sending thread hands
//! to the kernel ([`Datagram`]).
//!
//! On a connection whose forwarded RTP the SFU encrypts itself ([`super::direct_srtp`]),
//! the core does not encrypt: it leaves the rewritten packet and a handle to the
//! connection's SRTP sender ([`Payload::Rtp`]), and the thread that sends the datagram
//! seals it ([`Transmit::seal`]). Marshalling and encrypting was about a third of the
//! media thread's time at 1 → 450 (session 13's profile, tests/results/performance.md),
//! all of it on the media thread even while a second thread sent half of the datagrams
//! ([`super::send_lanes`]); now each thread encrypts its own share.
//!
//! A connection's sender is shared behind a mutex rather than owned by one thread because
//! a connection can change lanes (its address moves, the split starts or ends); the lock is
//! uncontended otherwise, and it makes every packet's SRTP index come from one sequence.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rtc::rtp::Packet;

use super::srtp_sender::SrtpSender;

/// One connection's SRTP sender, shared by the core (which makes sealing jobs) and the
/// sending threads (which run them).
pub type SharedSender = Arc<Mutex<SrtpSender>>;

/// One datagram for the send path, encrypted already or to be encrypted by the sender.
#[derive(Debug)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// What to send.
    pub payload: Payload,
}

/// The content of a [`Transmit`].
pub enum Payload {
    /// Final bytes: ICE, DTLS, RTCP, and RTP that went through `rtc`.
    Wire(BytesMut),
    /// Forwarded RTP, rewritten for its leg and not yet marshalled or encrypted.
    Rtp(RtpToSeal),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Wire(bytes) => write!(f, "Wire({} bytes)", bytes.len()),
            Payload::Rtp(job) => write!(
                f,
                "Rtp(ssrc {:#x}, seq {})",
                job.packet.header.ssrc, job.packet.header.sequence_number
            ),
        }
    }
}

/// A forwarded RTP packet and the sender that will encrypt it.
pub struct RtpToSeal {
    /// The packet with the leg's SSRC, sequence number, timestamp and payload type.
    pub packet: Packet,
    /// The subscriber connection's SRTP sender.
    pub sender: SharedSender,
}

/// One datagram ready for the kernel.
#[derive(Debug)]
pub struct Datagram {
    /// Destination.
    pub to: SocketAddr,
    /// The bytes on the wire.
    pub payload: BytesMut,
}

impl Transmit {
    /// A datagram whose bytes are final.
    pub fn wire(to: SocketAddr, payload: BytesMut) -> Self {
        Transmit {
            to,
            payload: Payload::Wire(payload),
        }
    }

    /// The bytes, if they are final already (the probe compares `rtc`'s output).
    pub fn wire_bytes(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Wire(bytes) => Some(bytes),
            Payload::Rtp(_) => None,
        }
    }

    /// The datagram to send: marshalled and encrypted here if it is not yet. `None` if
    /// SRTP refused the packet (an exhausted index, a poisoned sender): it is dropped,
    /// like a lost packet, and the subscriber's own recovery takes over.
    pub fn seal(self) -> Option<Datagram> {
        let payload = match self.payload {
            Payload::Wire(bytes) => bytes,
            Payload::Rtp(job) => {
                // `protect` does not panic by design; should it ever, the sender's index
                // is still one a receiver accepts, so later packets go on.
                let mut sender = job
                    .sender
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match sender.protect(&job.packet) {
                    Ok(wire) => wire,
                    Err(e) => {
                        tracing::debug!(%e, "SRTP refused a forwarded packet");
                        return None;
                    }
                }
            }
        };
        Some(Datagram {
            to: self.to,
            payload,
        })
    }
}

impl From<Datagram> for Transmit {
    fn from(d: Datagram) -> Self {
        Transmit::wire(d.to, d.payload)
    }
}
