//! Forwarding decisions that never look inside a payload: duplicate suppression per
//! incoming stream, SSRC / payload-type / sequence / timestamp rewriting per subscriber
//! leg, and keyframe-request throttling. Pure logic, unit-tested without sockets.

use std::time::{Duration, Instant};

/// How many recent sequence numbers a [`DedupWindow`] remembers.
pub const DEDUP_WINDOW: u64 = 1024;

/// Remembers which sequence numbers of one incoming stream were already forwarded.
///
/// `rtc` unwraps RTX onto the main stream, and Chrome's bandwidth probes resend packets
/// through RTX, so the same sequence number can arrive several times; without this the
/// forwarder sent 30-50 % duplicates (see the field notes). A retransmission of a packet
/// that never arrived is *not* a duplicate and passes.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// Highest extended sequence number seen.
    highest: Option<u64>,
    /// Bit `s % DEDUP_WINDOW` is set when extended sequence `s` was seen.
    bits: Box<[u64; (DEDUP_WINDOW / 64) as usize]>,
}

impl Default for DedupWindow {
    fn default() -> Self {
        DedupWindow {
            highest: None,
            bits: Box::new([0; (DEDUP_WINDOW / 64) as usize]),
        }
    }
}

impl DedupWindow {
    /// Records `seq`; returns `true` if it is new (forward it) and `false` if it is a
    /// duplicate or too old to tell (drop it).
    pub fn insert(&mut self, seq: u16) -> bool {
        let Some(highest) = self.highest else {
            // Start the extended counter high enough that a few reordered packets
            // before the first one do not underflow.
            let ext = (1u64 << 32) + u64::from(seq);
            self.highest = Some(ext);
            self.set(ext);
            return true;
        };
        let delta = seq.wrapping_sub(highest as u16) as i16;
        let ext = (highest as i64 + i64::from(delta)) as u64;
        if delta > 0 {
            // Clear the slots that the window slides over, so stale bits cannot match.
            let advance = delta as u64;
            if advance >= DEDUP_WINDOW {
                self.bits.fill(0);
            } else {
                for s in highest + 1..=ext {
                    self.clear(s);
                }
            }
            self.highest = Some(ext);
            self.set(ext);
            return true;
        }
        if highest - ext >= DEDUP_WINDOW {
            return false;
        }
        if self.is_set(ext) {
            return false;
        }
        self.set(ext);
        true
    }

    fn set(&mut self, ext: u64) {
        let i = ext % DEDUP_WINDOW;
        self.bits[(i / 64) as usize] |= 1 << (i % 64);
    }

    fn clear(&mut self, ext: u64) {
        let i = ext % DEDUP_WINDOW;
        self.bits[(i / 64) as usize] &= !(1 << (i % 64));
    }

    fn is_set(&self, ext: u64) -> bool {
        let i = ext % DEDUP_WINDOW;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// The header fields a leg writes, computed by [`LegRewriter::rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// The subscriber leg's SSRC.
    pub ssrc: u32,
    /// The payload type negotiated on the subscriber leg.
    pub payload_type: u8,
    /// Continuous sequence number on the leg.
    pub sequence_number: u16,
    /// Continuous timestamp on the leg.
    pub timestamp: u32,
}

impl Rewritten {
    /// Writes these fields into a forwarded packet's header.
    pub fn apply_to(&self, header: &mut rtc::rtp::Header) {
        header.ssrc = self.ssrc;
        header.payload_type = self.payload_type;
        header.sequence_number = self.sequence_number;
        header.timestamp = self.timestamp;
    }
}

/// Per-subscriber-leg header rewriting.
///
/// Each leg has its own SSRC and payload type (they are negotiated per connection). When
/// the source stream changes (the publisher reconnected and got a new SSRC), sequence
/// numbers and timestamps are shifted so the subscriber sees one continuous stream rather
/// than a jump that its jitter buffer would treat as massive loss.
#[derive(Debug, Clone)]
pub struct LegRewriter {
    ssrc: u32,
    payload_type: u8,
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last_seq: u16,
    last_ts: u32,
    /// Timestamp step inserted at a source switch (one frame at 90 kHz / 30 fps, or
    /// 20 ms of 48 kHz audio); any positive step keeps the timeline monotonic.
    switch_ts_step: u32,
}

impl LegRewriter {
    /// A leg that writes `ssrc` and `payload_type`; `switch_ts_step` is the timestamp gap
    /// inserted when the source changes.
    pub fn new(ssrc: u32, payload_type: u8, switch_ts_step: u32) -> Self {
        LegRewriter {
            ssrc,
            payload_type,
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            last_seq: 0,
            last_ts: 0,
            switch_ts_step,
        }
    }

    /// The leg's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Changes the payload type (after a renegotiation of the leg).
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.payload_type = payload_type;
    }

    /// The leg sequence number `out_seq` back in the current source's numbering, with
    /// that source's SSRC (to find a packet a subscriber asks again for).
    pub fn source_of(&self, out_seq: u16) -> Option<(u32, u16)> {
        self.source
            .map(|source| (source, out_seq.wrapping_sub(self.seq_offset)))
    }

    /// The header for a packet of the current source that was already forwarded (a
    /// retransmission): the same numbers as the first time, nothing moved.
    pub fn repeat(&self, source_ssrc: u32, seq: u16, ts: u32) -> Option<Rewritten> {
        (self.source == Some(source_ssrc)).then(|| Rewritten {
            ssrc: self.ssrc,
            payload_type: self.payload_type,
            sequence_number: seq.wrapping_add(self.seq_offset),
            timestamp: ts.wrapping_add(self.ts_offset),
        })
    }

    /// Computes the header for one packet of source stream `source_ssrc`.
    pub fn rewrite(&mut self, source_ssrc: u32, seq: u16, ts: u32) -> Rewritten {
        match self.source {
            None => {
                // First source: pass numbers through unchanged.
                self.source = Some(source_ssrc);
                self.last_seq = seq;
                self.last_ts = ts;
            }
            Some(current) if current != source_ssrc => {
                self.source = Some(source_ssrc);
                self.seq_offset = self.last_seq.wrapping_add(1).wrapping_sub(seq);
                self.ts_offset = self
                    .last_ts
                    .wrapping_add(self.switch_ts_step)
                    .wrapping_sub(ts);
            }
            Some(_) => {}
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        // Track the newest packet only; a late (reordered or retransmitted) one must not
        // move the switch point backwards.
        if (out_seq.wrapping_sub(self.last_seq) as i16) > 0 {
            self.last_seq = out_seq;
            self.last_ts = out_ts;
        }
        Rewritten {
            ssrc: self.ssrc,
            payload_type: self.payload_type,
            sequence_number: out_seq,
            timestamp: out_ts,
        }
    }
}

/// The last [`HISTORY`] packets of one incoming video stream, kept once for all of its
/// subscribers to answer their NACKs from (`rtc`'s NACK responder kept a copy per leg).
/// The payload is shared with the forwarded packets, not copied.
#[derive(Debug, Default)]
pub struct PacketHistory {
    slots: Vec<Option<rtc::rtp::Packet>>,
}

/// Packets a [`PacketHistory`] keeps: a retransmission is only useful within about one
/// round trip, and 256 packets is over 2 s at 1.2 Mbit/s and about 1 s at 2.5 Mbit/s.
pub const HISTORY: usize = 256;

impl PacketHistory {
    /// Keeps `packet`, replacing the one [`HISTORY`] sequence numbers older.
    pub fn insert(&mut self, packet: &rtc::rtp::Packet) {
        if self.slots.is_empty() {
            self.slots.resize(HISTORY, None);
        }
        let slot = usize::from(packet.header.sequence_number) % HISTORY;
        self.slots[slot] = Some(packet.clone());
    }

    /// The kept packet of stream `ssrc` with sequence number `seq`, if still here.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&rtc::rtp::Packet> {
        self.slots
            .get(usize::from(seq) % HISTORY)?
            .as_ref()
            .filter(|p| p.header.sequence_number == seq && p.header.ssrc == ssrc)
    }
}

/// What a subscriber leg sent, for its RTCP sender reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct SentCounters {
    /// RTP packets sent (retransmissions included, as RFC 3550 counts them).
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
    /// The last packet's RTP timestamp and when it was sent.
    pub last: Option<(u32, Instant)>,
}

impl SentCounters {
    /// Counts one packet of `payload_len` bytes with `timestamp`, sent at `now`. A
    /// retransmission (an older timestamp) does not move the time reference.
    pub fn sent(&mut self, timestamp: u32, payload_len: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        let newer = self
            .last
            .is_none_or(|(ts, _)| (timestamp.wrapping_sub(ts) as i32) >= 0);
        if newer {
            self.last = Some((timestamp, now));
        }
    }

    /// The RTP timestamp that corresponds to `now` on a clock of `clock_rate` Hz,
    /// extrapolated from the last packet sent; `None` before any.
    pub fn rtp_time_at(&self, now: Instant, clock_rate: u32) -> Option<u32> {
        let (ts, at) = self.last?;
        let elapsed = now.saturating_duration_since(at);
        let ticks = elapsed.as_micros() * u128::from(clock_rate) / 1_000_000;
        Some(ts.wrapping_add(ticks as u32))
    }
}

/// Limits how often a keyframe is requested from one publisher stream.
///
/// Several subscribers asking at once (a burst of PLIs after a loss, or three people
/// joining together) need only one keyframe; more would just spend the uplink.
#[derive(Debug, Clone, Default)]
pub struct KeyframeThrottle {
    last: Option<Instant>,
}

/// Minimum gap between two keyframe requests sent to the same publisher stream.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

impl KeyframeThrottle {
    /// Returns `true` (and records `now`) if a request may be sent now.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < KEYFRAME_REQUEST_INTERVAL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_passes_new_and_drops_repeats() {
        let mut w = DedupWindow::default();
        assert!(w.insert(10));
        assert!(w.insert(11));
        assert!(
            !w.insert(10),
            "an RTX copy of a forwarded packet is a duplicate"
        );
        assert!(!w.insert(11));
        assert!(w.insert(13));
        assert!(
            w.insert(12),
            "a late packet that never arrived is not a duplicate"
        );
        assert!(!w.insert(12));
    }

    #[test]
    fn dedup_handles_wraparound() {
        let mut w = DedupWindow::default();
        for s in 65530u16..=65535 {
            assert!(w.insert(s));
        }
        assert!(w.insert(0));
        assert!(w.insert(1));
        assert!(!w.insert(65535));
        assert!(!w.insert(0));
        assert!(w.insert(2));
    }

    #[test]
    fn dedup_drops_packets_older_than_the_window_and_survives_big_jumps() {
        let mut w = DedupWindow::default();
        assert!(w.insert(100));
        assert!(w.insert(100 + DEDUP_WINDOW as u16 + 5));
        assert!(!w.insert(100), "too old to tell: dropped");
        // After a jump larger than the window, old bits must not alias.
        assert!(w.insert(100 + DEDUP_WINDOW as u16 + 6));
        assert!(w.insert(100 + 2 * DEDUP_WINDOW as u16 + 6));
    }

    #[test]
    fn dedup_reuses_slots_correctly_after_sliding() {
        let mut w = DedupWindow::default();
        for s in 0..5000u16 {
            assert!(w.insert(s), "seq {s} is new");
        }
        for s in 5000 - DEDUP_WINDOW as u16 + 1..5000 {
            assert!(!w.insert(s), "seq {s} was seen");
        }
    }

    #[test]
    fn leg_rewrites_ssrc_and_payload_type_and_passes_numbers_through() {
        let mut leg = LegRewriter::new(0xAAAA, 96, 3000);
        let r = leg.rewrite(0x1234, 500, 90_000);
        assert_eq!(
            r,
            Rewritten {
                ssrc: 0xAAAA,
                payload_type: 96,
                sequence_number: 500,
                timestamp: 90_000
            }
        );
        let r = leg.rewrite(0x1234, 501, 93_000);
        assert_eq!((r.sequence_number, r.timestamp), (501, 93_000));
    }

    #[test]
    fn leg_keeps_numbers_continuous_across_a_source_switch() {
        let mut leg = LegRewriter::new(7, 100, 3000);
        leg.rewrite(1, 65534, 4_294_960_000);
        leg.rewrite(1, 65535, 4_294_963_000);
        // The publisher reconnects with a new SSRC and random numbering.
        let r = leg.rewrite(2, 12, 555);
        assert_eq!(r.sequence_number, 0, "continues after 65535");
        assert_eq!(r.timestamp, 4_294_963_000u32.wrapping_add(3000));
        let r = leg.rewrite(2, 13, 3555);
        assert_eq!(r.sequence_number, 1);
        assert_eq!(r.timestamp, 4_294_963_000u32.wrapping_add(6000));
    }

    #[test]
    fn leg_late_packet_does_not_move_switch_point_back() {
        let mut leg = LegRewriter::new(7, 100, 3000);
        leg.rewrite(1, 10, 1000);
        leg.rewrite(1, 12, 3000);
        leg.rewrite(1, 11, 2000); // reordered
        let r = leg.rewrite(2, 0, 0);
        assert_eq!(r.sequence_number, 13);
    }

    #[test]
    fn leg_maps_a_nacked_sequence_number_back_and_repeats_the_header() {
        let mut leg = LegRewriter::new(7, 100, 3000);
        assert_eq!(leg.source_of(5), None, "nothing forwarded yet");
        leg.rewrite(1, 65535, 1000);
        let first = leg.rewrite(2, 40, 50); // switch: offsets now non-zero
        let second = leg.rewrite(2, 41, 3050);
        assert_eq!(leg.source_of(second.sequence_number), Some((2, 41)));
        assert_eq!(leg.repeat(2, 40, 50), Some(first));
        assert_eq!(leg.repeat(1, 40, 50), None, "an old source is not repeated");
    }

    fn rtp(ssrc: u32, seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::Header {
                ssrc,
                sequence_number: seq,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn history_keeps_the_last_packets_of_its_stream_only() {
        let mut h = PacketHistory::default();
        assert!(h.get(1, 0).is_none());
        for seq in 65_500u16..=65_535 {
            h.insert(&rtp(1, seq));
        }
        for seq in 0u16..300 {
            h.insert(&rtp(1, seq));
        }
        assert!(h.get(1, 299).is_some());
        assert!(h.get(1, 299 - HISTORY as u16 + 1).is_some());
        assert!(h.get(1, 299 - HISTORY as u16).is_none(), "overwritten");
        assert!(h.get(1, 65_535).is_none(), "older than the history");
        assert!(h.get(2, 299).is_none(), "another stream's number");
    }

    #[test]
    fn sender_report_time_follows_the_last_packet() {
        let t0 = Instant::now();
        let mut c = SentCounters::default();
        assert_eq!(c.rtp_time_at(t0, 90_000), None);
        c.sent(1000, 1200, t0);
        c.sent(4000, 800, t0 + Duration::from_millis(33));
        // A retransmission of the first packet, later: counted, not a time reference.
        c.sent(1000, 1200, t0 + Duration::from_millis(50));
        assert_eq!((c.packets, c.octets), (3, 3200));
        let at = t0 + Duration::from_millis(133);
        assert_eq!(c.rtp_time_at(at, 90_000), Some(4000 + 9000));
        // Wraps like RTP timestamps do.
        let mut w = SentCounters::default();
        w.sent(u32::MAX - 10, 1, t0);
        assert_eq!(
            w.rtp_time_at(t0 + Duration::from_millis(1), 48_000),
            Some(37)
        );
    }

    #[test]
    fn keyframe_requests_are_throttled() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.allow(t0));
        assert!(!k.allow(t0 + Duration::from_millis(100)));
        assert!(k.allow(t0 + KEYFRAME_REQUEST_INTERVAL));
    }
}
