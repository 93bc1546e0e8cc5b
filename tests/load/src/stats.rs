//! Counters shared between publishers, subscribers and the run coordinator.
//!
//! Loss is measured over a *window* of send times: a publisher counts the packets whose
//! embedded send time falls inside it, a subscriber counts the distinct ones it received
//! with a send time inside it. Both sides decide with the same timestamp, so packets in
//! flight at either edge are counted consistently, and nothing before the window (joins,
//! renegotiation, ICE) can count as loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::histogram::{Coarse, Histogram};
use crate::payload::{Corrupt, RecordInfo, StreamKind};

/// The measurement window, in ns of the shared clock; `u64::MAX` start = not measuring.
#[derive(Debug)]
pub struct Window {
    start_ns: AtomicU64,
    end_ns: AtomicU64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            start_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(u64::MAX),
        }
    }
}

impl Window {
    /// Opens the window at `ns`.
    pub fn open(&self, ns: u64) {
        self.start_ns.store(ns, Ordering::Release);
    }

    /// Closes the window at `ns`: later send times no longer count.
    pub fn close(&self, ns: u64) {
        self.end_ns.store(ns, Ordering::Release);
    }

    /// Whether a packet sent at `ns` counts.
    pub fn contains(&self, ns: u64) -> bool {
        self.second_of(ns).is_some()
    }

    /// The second of the window (0 = the first) a packet sent at `ns` falls in, if it counts.
    pub fn second_of(&self, ns: u64) -> Option<usize> {
        let (start, end) = self.bounds();
        (ns >= start && ns < end).then(|| ((ns - start) / 1_000_000_000) as usize)
    }

    /// (start, end) in ns.
    pub fn bounds(&self) -> (u64, u64) {
        (
            self.start_ns.load(Ordering::Acquire),
            self.end_ns.load(Ordering::Acquire),
        )
    }
}

/// What one publisher has sent, per kind. Survives publish-connection restarts, so
/// sequence numbers stay continuous.
#[derive(Debug, Default)]
pub struct PublisherCounters {
    /// Next sequence number per kind.
    pub next_seq: [AtomicU64; 2],
    /// Packets sent with a send time in the window, per kind.
    pub sent_in_window: [AtomicU64; 2],
    /// Packets sent in total, per kind.
    pub sent_total: [AtomicU64; 2],
    /// Writes the connection refused (not yet connected, closed...).
    pub send_errors: AtomicU64,
    /// Keyframe requests (PLI/FIR) received from the server.
    pub keyframe_requests: AtomicU64,
    /// The server's receive-side feedback on this publisher's streams, RTCP packets of each
    /// kind: [receiver reports, TWCC feedback, NACKs].
    pub server_feedback: [AtomicU64; 3],
    /// Over the TWCC feedback received: packets it covers, and those it reports received.
    pub twcc_packets: [AtomicU64; 2],
    /// Video datagrams dropped on the way out (`MediaPlan::uplink_drop_every`).
    pub uplink_dropped: AtomicU64,
    /// How late the generator sent packets versus their schedule, µs (generator health).
    pub lag_us: Mutex<Histogram>,
    /// Video packets waiting in the publisher's pacer after its last send. A generator
    /// starved while hundreds of subscribers join builds a backlog here that then drains
    /// at the pacing rate, well above the video bitrate.
    pub paced_backlog: AtomicU64,
}

/// At most this many video packets (about one keyframe) waiting in every publisher's pacer
/// before the window opens: the window then measures the plan's steady rate, not the
/// catch-up of a generator that fell behind during setup.
pub const SETTLED_BACKLOG: u64 = 30;

/// The largest pacer backlog among `publishers`.
pub fn max_paced_backlog(publishers: &[std::sync::Arc<PublisherCounters>]) -> u64 {
    publishers
        .iter()
        .map(|c| c.paced_backlog.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}

impl PublisherCounters {
    /// Allocates the next sequence number of `kind`.
    pub fn next(&self, kind: StreamKind) -> u64 {
        self.next_seq[kind.index()].fetch_add(1, Ordering::Relaxed)
    }

    /// Records a packet handed to the connection.
    pub fn sent(&self, kind: StreamKind, in_window: bool) {
        self.sent_total[kind.index()].fetch_add(1, Ordering::Relaxed);
        if in_window {
            self.sent_in_window[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reception state of one (publisher, kind) stream at one subscriber.
#[derive(Debug, Default, Clone)]
pub struct StreamRx {
    /// Bit `seq` set once seq was received (grows with the sequence number).
    seen: Vec<u64>,
    /// Distinct packets received whose send time is in the window.
    pub in_window: u64,
    /// RTP payload bytes of those.
    pub bytes_in_window: u64,
    /// Distinct packets received at all.
    pub total: u64,
    /// Packets received again (same seq).
    pub duplicates: u64,
    /// Highest sequence number received so far.
    highest: Option<u64>,
    /// First arrivals below `highest`: packets that overtook each other on the way (a
    /// retransmission after emulated downlink loss counts too).
    pub reordered: u64,
}

impl StreamRx {
    /// Marks `seq` seen; false if it already was.
    fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.seen.len() {
            // Bounded: a sequence number from a garbage packet never gets here (checksum).
            self.seen.resize(word + 1 + self.seen.len() / 2, 0);
        }
        let bit = 1u64 << (seq % 64);
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }
}

/// Everything one subscribing participant has received.
#[derive(Debug, Default)]
pub struct RxStats {
    /// Per (publisher index, kind).
    pub streams: HashMap<(u32, StreamKind), StreamRx>,
    /// One-way latency of in-window packets, µs, per kind.
    pub latency: [Histogram; 2],
    /// The same latencies, all kinds, per second of the window (by send time).
    pub latency_by_second: Vec<Coarse>,
    /// Payloads that failed verification, by reason.
    pub corrupt: HashMap<String, u64>,
    /// Packets received in total (valid or not).
    pub packets: u64,
    /// Video datagrams dropped on arrival, before SRTP (emulated downlink loss).
    pub dropped: u64,
    /// RTP packets decrypted outside `rtc` ([`wardlink::media::direct_rx::DirectRx`]).
    pub direct: u64,
}

impl RxStats {
    /// Accounts one received RTP payload; `now_ns` is the arrival time.
    pub fn on_packet(
        &mut self,
        parsed: Result<RecordInfo, Corrupt>,
        payload_len: usize,
        now_ns: u64,
        window: &Window,
    ) {
        self.packets += 1;
        let info = match parsed {
            Ok(info) => info,
            Err(why) => {
                *self.corrupt.entry(format!("{why:?}")).or_default() += 1;
                return;
            }
        };
        let s = self.streams.entry((info.publisher, info.kind)).or_default();
        if !s.insert(info.seq) {
            s.duplicates += 1;
            return;
        }
        match s.highest {
            Some(h) if info.seq < h => s.reordered += 1,
            _ => s.highest = Some(info.seq),
        }
        s.total += 1;
        if let Some(second) = window.second_of(info.send_ns) {
            s.in_window += 1;
            s.bytes_in_window += payload_len as u64;
            let lat_us = now_ns.saturating_sub(info.send_ns) / 1000;
            self.latency[info.kind.index()].record(lat_us);
            // Bounded by the time since the window opened: send times are the generator's own.
            if second >= self.latency_by_second.len() {
                self.latency_by_second.resize(second + 1, Coarse::default());
            }
            self.latency_by_second[second].record(lat_us);
        }
    }
}

/// Shared handle to a subscriber's counters.
pub type SharedRx = Arc<Mutex<RxStats>>;

/// Locks a std mutex, ignoring poisoning (counters stay usable after a panic elsewhere).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_window_duplicates_and_corruption() {
        let w = Window::default();
        w.open(1_000);
        let mut rx = RxStats::default();
        let rec = |seq, send_ns| RecordInfo {
            kind: StreamKind::Audio,
            layer: 0,
            publisher: 3,
            seq,
            send_ns,
            frame: 0,
            part: 0,
            parts: 1,
        };
        rx.on_packet(Ok(rec(0, 500)), 100, 600, &w); // before the window
        rx.on_packet(Ok(rec(1, 1_500)), 100, 2_600, &w);
        rx.on_packet(Ok(rec(1, 1_500)), 100, 2_700, &w); // duplicate
        rx.on_packet(Ok(rec(700, 1_600)), 100, 2_600, &w); // far ahead: bitmap grows
        rx.on_packet(Err(Corrupt::Checksum), 100, 2_600, &w);
        w.close(2_000);
        rx.on_packet(Ok(rec(701, 2_100)), 100, 2_600, &w); // after the window
        let s = &rx.streams[&(3, StreamKind::Audio)];
        assert_eq!((s.total, s.in_window, s.duplicates), (4, 2, 1));
        assert_eq!(rx.corrupt["Checksum"], 1);
        assert_eq!(rx.latency[0].count(), 2);
        // Both in-window packets were sent in the window's first second.
        assert_eq!(rx.latency_by_second.len(), 1);
        assert_eq!(rx.latency_by_second[0].count(), 2);
        assert_eq!(rx.packets, 6);
    }

    #[test]
    fn counts_packets_that_overtook_each_other() {
        let w = Window::default();
        let mut rx = RxStats::default();
        let rec = |seq| RecordInfo {
            kind: StreamKind::Video,
            layer: 0,
            publisher: 1,
            seq,
            send_ns: 0,
            frame: 0,
            part: 0,
            parts: 1,
        };
        for seq in [0, 1, 3, 2, 4, 4, 1] {
            rx.on_packet(Ok(rec(seq)), 100, 0, &w);
        }
        let s = &rx.streams[&(1, StreamKind::Video)];
        // 2 came after 3; the second 4 and the second 1 are duplicates, not reorderings.
        assert_eq!((s.total, s.duplicates, s.reordered), (5, 2, 1));
    }
}
