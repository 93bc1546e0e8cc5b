//! A publish connection's receive-side interceptors, shared by `rtc`'s chain and the
//! SFU's direct read path ([`super::direct_rx`]).
//!
//! Three interceptors watch what a publisher sends us: the NACK generator (asks the
//! publisher to resend what its uplink lost), receiver reports (loss and RTT for its
//! encoder) and TWCC feedback (for its send-side bandwidth estimate). Each must see every
//! RTP packet exactly once: a NACK generator that saw only some packets would report the
//! rest lost, and two TWCC recorders would each report half the arrivals missing.
//!
//! Most RTP skips `rtc` once its track is known; retransmissions on the RTX stream,
//! bandwidth probes, RTCP and the first packets of each stream still go through it. So the
//! interceptors live here, behind one lock, and are both a link in `rtc`'s chain
//! ([`Interceptor`], for what `rtc` reads, the reports they write and their timers) and
//! fed directly ([`ReceiveFeedback::read`]) with what the SFU decrypts itself. `rtc` binds
//! each stream as it sees its first packet, exactly as before.
//!
//! The lock is never contended: the media thread is the only one using a connection.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rtc::interceptor::{AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtc::shared::TransportContext;

/// The interceptors, boxed: `Registry::build` returns an unnameable chain.
type Inner = Box<dyn Interceptor>;

/// One publish connection's receive-side interceptors; clones share them.
#[derive(Clone)]
pub struct ReceiveFeedback(Arc<Mutex<Inner>>);

impl ReceiveFeedback {
    /// Shares `interceptors` (typically a built [`rtc::interceptor::Registry`]).
    pub fn new(interceptors: impl Interceptor + 'static) -> Self {
        ReceiveFeedback(Arc::new(Mutex::new(Box::new(interceptors))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // An interceptor that panicked left its own state, not ours, half-updated; the
        // connection's reports go on with it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shows the interceptors an RTP packet decrypted outside `rtc`, as `rtc` would have,
    /// and returns it (they pass RTP through unchanged).
    pub fn read(
        &self,
        now: Instant,
        transport: TransportContext,
        packet: rtc::rtp::Packet,
    ) -> Option<rtc::rtp::Packet> {
        let mut inner = self.lock();
        let message = AttributedPacket::new(Packet::Rtp(packet));
        if let Err(e) = inner.handle_read(TaggedPacket {
            now,
            transport,
            message,
        }) {
            tracing::debug!(%e, "receive interceptors refused a packet");
        }
        let mut out = None;
        while let Some(msg) = inner.poll_read() {
            if let Packet::Rtp(p) = msg.message.packet {
                out = Some(p);
            }
        }
        out
    }

    /// The interceptors' next deadline (reports and feedback are written on timers).
    pub fn deadline(&self) -> Option<Instant> {
        self.lock().poll_timeout()
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReceiveFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.lock().handle_read(msg)
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.lock().poll_read()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.lock().handle_write(msg)
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.lock().poll_write()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.lock().handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.lock().poll_timeout()
    }

    fn close(&mut self) -> Result<(), Error> {
        self.lock().close()
    }
}

impl Interceptor for ReceiveFeedback {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.lock().bind_local_stream(info)
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.lock().unbind_local_stream(info)
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.lock().bind_remote_stream(info)
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.lock().unbind_remote_stream(info)
    }
}
