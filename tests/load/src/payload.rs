//! Self-describing synthetic media payloads.
//!
//! Every RTP payload the generator sends carries a *record*: magic, publisher index,
//! stream kind, a per-stream sequence number, the send time and a CRC32C over the rest, so
//! a subscriber can tell on arrival, without trusting the server, which stream a packet
//! belongs to, whether it was lost, duplicated or altered, and how long it took.
//!
//! Video payloads are shaped like real VP8 (RFC 7741): a payload descriptor on every
//! packet, and the VP8 frame header (with the keyframe start code on keyframes) at the
//! start of each frame, because SFUs such as Janus look at both (keyframe detection). The
//! record follows the codec bytes.

use std::time::Instant;

/// First four bytes of every record.
pub const MAGIC: [u8; 4] = *b"WLLD";
/// Fixed part of a record: magic 4, kind 1, layer 1, publisher 4, seq 8, send_ns 8,
/// frame 4, packet-in-frame 2, packets-in-frame 2, record length 2.
pub const RECORD_HEADER: usize = 36;
/// CRC32C trailer.
pub const RECORD_TRAILER: usize = 4;
/// Smallest possible record.
pub const MIN_RECORD: usize = RECORD_HEADER + RECORD_TRAILER;
/// Largest RTP payload we produce (keeps every datagram well under a 1500-byte MTU).
pub const MAX_RTP_PAYLOAD: usize = 1200;
/// VP8 frame header length of a keyframe (frame tag 3 + start code 3 + size 4).
const VP8_KEY_HEADER: usize = 10;
/// VP8 frame header length of an interframe (frame tag only).
const VP8_DELTA_HEADER: usize = 3;

/// Which stream of a publisher a packet belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Opus-shaped audio.
    Audio = 0,
    /// VP8-shaped video.
    Video = 1,
}

impl StreamKind {
    /// Both kinds, audio first.
    pub const ALL: [StreamKind; 2] = [StreamKind::Audio, StreamKind::Video];

    /// Index for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    fn from_byte(b: u8) -> Option<StreamKind> {
        match b {
            0 => Some(StreamKind::Audio),
            1 => Some(StreamKind::Video),
            _ => None,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Audio => "audio",
            StreamKind::Video => "video",
        }
    }
}

/// The shared clock: nanoseconds since the process's epoch. Publisher and subscriber live
/// in the same process, so a one-way latency is a plain difference.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
    /// CLOCK_REALTIME at the epoch, ns (kernel receive timestamps use that clock).
    epoch_realtime_ns: u64,
}

impl Clock {
    /// Starts the clock now.
    pub fn new() -> Clock {
        let epoch = Instant::now();
        let epoch_realtime_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Clock {
            epoch,
            epoch_realtime_ns,
        }
    }

    /// Nanoseconds since the epoch of a CLOCK_REALTIME reading (a kernel timestamp). The
    /// two clocks are paired once at the epoch; over a run of minutes NTP slewing moves
    /// them apart by microseconds at most.
    pub fn ns_from_realtime(&self, realtime_ns: u64) -> u64 {
        realtime_ns.saturating_sub(self.epoch_realtime_ns)
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Nanoseconds since the epoch at `t` (0 before the epoch).
    pub fn ns_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Identity and position of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// Stream kind.
    pub kind: StreamKind,
    /// Simulcast layer (0 without simulcast).
    pub layer: u8,
    /// Publisher index (global across rooms).
    pub publisher: u32,
    /// Per-stream sequence number, from 0.
    pub seq: u64,
    /// Send time, ns since the shared epoch.
    pub send_ns: u64,
    /// Video frame number (0 for audio).
    pub frame: u32,
    /// Index of this packet in its frame.
    pub part: u16,
    /// Packets in this frame.
    pub parts: u16,
}

/// Writes a record of exactly `len` bytes (at least [`MIN_RECORD`]) at the end of `out`.
pub fn write_record(out: &mut Vec<u8>, info: &RecordInfo, len: usize) {
    let len = len.max(MIN_RECORD);
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(info.kind as u8);
    out.push(info.layer);
    out.extend_from_slice(&info.publisher.to_be_bytes());
    out.extend_from_slice(&info.seq.to_be_bytes());
    out.extend_from_slice(&info.send_ns.to_be_bytes());
    out.extend_from_slice(&info.frame.to_be_bytes());
    out.extend_from_slice(&info.part.to_be_bytes());
    out.extend_from_slice(&info.parts.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    // Filler that depends on the sequence number, so a packet spliced from two others
    // (or replayed with a rewritten header) fails the checksum.
    let fill = len - MIN_RECORD;
    let mut x = info.seq as u32 ^ (info.publisher << 8) ^ 0x9e37_79b9;
    for _ in 0..fill {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Why a received payload was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    /// Too short or a malformed VP8 descriptor.
    Truncated,
    /// No record magic where one should start.
    NoMagic,
    /// The record's length field disagrees with the payload.
    Length,
    /// The CRC does not match.
    Checksum,
}

/// Parses and verifies the record in an RTP payload. `video` says whether to skip a VP8
/// payload descriptor (and frame header) first.
pub fn parse_payload(payload: &[u8], video: bool) -> Result<RecordInfo, Corrupt> {
    let record = if video {
        &payload[vp8_prefix_len(payload).ok_or(Corrupt::Truncated)?..]
    } else {
        payload
    };
    parse_record(record)
}

fn parse_record(r: &[u8]) -> Result<RecordInfo, Corrupt> {
    if r.len() < MIN_RECORD {
        return Err(Corrupt::Truncated);
    }
    if r[0..4] != MAGIC {
        return Err(Corrupt::NoMagic);
    }
    let be16 = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let be64 = |i: usize| (u64::from(be32(i)) << 32) | u64::from(be32(i + 4));
    let len = usize::from(be16(34));
    if len != r.len() {
        return Err(Corrupt::Length);
    }
    let body = len - RECORD_TRAILER;
    if crc32c::crc32c(&r[..body]) != be32(body) {
        return Err(Corrupt::Checksum);
    }
    Ok(RecordInfo {
        kind: StreamKind::from_byte(r[4]).ok_or(Corrupt::NoMagic)?,
        layer: r[5],
        publisher: be32(6),
        seq: be64(10),
        send_ns: be64(18),
        frame: be32(26),
        part: be16(30),
        parts: be16(32),
    })
}

/// Length of the VP8 payload descriptor plus, on the first packet of a frame, the VP8
/// frame header.
fn vp8_prefix_len(p: &[u8]) -> Option<usize> {
    let b0 = *p.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // X: an extension byte follows, saying which optional fields are present.
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits.
            let m = *p.get(i)?;
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T/K: TID/KEYIDX byte
        }
    }
    let start_of_frame = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    if start_of_frame {
        let tag = *p.get(i)?;
        i += if tag & 0x01 == 0 {
            VP8_KEY_HEADER
        } else {
            VP8_DELTA_HEADER
        };
    }
    (i <= p.len()).then_some(i)
}

/// Builds one audio payload of `len` bytes.
pub fn audio_payload(buf: &mut Vec<u8>, info: &RecordInfo, len: usize) {
    buf.clear();
    write_record(buf, info, len);
}

/// Builds packet `info.part` of a VP8-shaped frame whose packets carry `record_len`
/// record bytes each. A 1-byte descriptor (S set on the first packet, partition 0), the
/// VP8 frame header on the first packet (keyframe: P=0 and the 0x9d012a start code,
/// 640x360).
pub fn video_payload(buf: &mut Vec<u8>, info: &RecordInfo, keyframe: bool, record_len: usize) {
    buf.clear();
    let first = info.part == 0;
    buf.push(if first { 0x10 } else { 0x00 });
    if first {
        if keyframe {
            // Frame tag: P=0 (key), version 0, show_frame=1, first partition size 0.
            buf.extend_from_slice(&[0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        } else {
            buf.extend_from_slice(&[0x11, 0x00, 0x00]);
        }
    }
    write_record(buf, info, record_len);
}

/// Record bytes available per packet when a frame of `frame_bytes` is split into
/// `parts` packets (the codec prefix is at most 11 bytes).
pub fn split_frame(frame_bytes: usize) -> (u16, usize) {
    let room = MAX_RTP_PAYLOAD - 1 - VP8_KEY_HEADER;
    let parts = frame_bytes.div_ceil(room).max(1);
    let per = (frame_bytes / parts).clamp(MIN_RECORD, room);
    (parts as u16, per)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: StreamKind, part: u16) -> RecordInfo {
        RecordInfo {
            kind,
            layer: 0,
            publisher: 7,
            seq: 123_456_789_012,
            send_ns: 987_654_321,
            frame: 42,
            part,
            parts: 3,
        }
    }

    #[test]
    fn audio_round_trips_and_detects_flips() {
        let mut buf = Vec::new();
        audio_payload(&mut buf, &info(StreamKind::Audio, 0), 100);
        assert_eq!(buf.len(), 100);
        assert_eq!(parse_payload(&buf, false), Ok(info(StreamKind::Audio, 0)));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x04;
            assert!(
                parse_payload(&bad, false).is_err(),
                "flip at {i} undetected"
            );
        }
        assert_eq!(parse_payload(&buf[..60], false), Err(Corrupt::Length));
    }

    #[test]
    fn video_round_trips_for_key_delta_and_middle_packets() {
        let mut buf = Vec::new();
        for (keyframe, part) in [(true, 0), (false, 0), (false, 1), (true, 2)] {
            let i = info(StreamKind::Video, part);
            video_payload(&mut buf, &i, keyframe, 1000);
            assert!(buf.len() <= MAX_RTP_PAYLOAD);
            assert_eq!(parse_payload(&buf, true), Ok(i));
        }
        // A keyframe's first packet carries the VP8 start code where decoders look for it.
        video_payload(&mut buf, &info(StreamKind::Video, 0), true, 100);
        assert_eq!(buf[0], 0x10);
        assert_eq!(buf[1] & 1, 0);
        assert_eq!(&buf[4..7], &[0x9d, 0x01, 0x2a]);
    }

    #[test]
    fn frames_split_under_the_mtu() {
        for bytes in [100, 1189, 1190, 5000, 30_000, 40_000] {
            let (parts, per) = split_frame(bytes);
            assert!(per + 11 <= MAX_RTP_PAYLOAD);
            assert!(usize::from(parts) * per >= bytes.min(usize::from(parts) * per));
        }
        assert_eq!(split_frame(30_000).0, 26);
    }
}
