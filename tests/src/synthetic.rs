//! Synthetic media payloads that identify themselves.
//!
//! Every payload carries a marker — magic, publisher tag, kind, sequence counter, keyframe
//! flag — followed by filler derived from those fields. A receiver can therefore say exactly
//! which sent packet it is looking at, and the test can compare it byte for byte with what
//! was sent. No codec runs: the SFU forwards payloads without decoding them, so realism is
//! needed only where an SFU may look — the VP8 payload descriptor and frame header, which
//! decide whether a packet starts a keyframe.

use bytes::{BufMut, Bytes, BytesMut};
use wardlink_signaling::MediaKind;

/// Marks the start of the self-describing part of a payload.
pub const MAGIC: &[u8; 4] = b"WLTP";

/// Longest participant tag carried in a payload.
pub const MAX_TAG_LEN: usize = 32;

/// Opus TOC byte: config 31 (CELT fullband 20 ms), mono, one frame. Plausible to anything that
/// peeks at it; nothing decodes it.
const OPUS_TOC: u8 = 0xF8;

/// VP8 payload descriptor with only the S bit (start of partition 0) set and no extensions:
/// one byte, so an SFU has nothing to rewrite.
const VP8_DESCRIPTOR_START: u8 = 0x10;

/// Video width/height advertised in synthetic keyframe headers.
const VP8_WIDTH: u16 = 320;
const VP8_HEIGHT: u16 = 240;

/// What a payload says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// Publisher tag (set by the test, independent of server-assigned ids).
    pub tag: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Per-(publisher, kind) counter, starting at 0.
    pub seq: u32,
    /// Whether the payload was built as a VP8 keyframe.
    pub keyframe: bool,
}

fn kind_byte(kind: MediaKind) -> u8 {
    match kind {
        MediaKind::Audio => b'A',
        MediaKind::Video => b'V',
        MediaKind::Screen => b'S',
    }
}

fn filler_byte(tag_hash: u8, seq: u32, i: usize) -> u8 {
    (seq as u8)
        .wrapping_mul(31)
        .wrapping_add((i as u8).wrapping_mul(7))
        .wrapping_add((i >> 8) as u8)
        ^ tag_hash
}

fn tag_hash(tag: &str) -> u8 {
    tag.bytes().fold(0x5a_u8, |h, b| h.rotate_left(3) ^ b)
}

/// Builds the payload for one packet. `len` is the total payload length (it grows if the
/// headers alone need more). VP8 keyframes get a valid keyframe header; delta frames a valid
/// interframe header.
pub fn build_payload(tag: &str, kind: MediaKind, seq: u32, keyframe: bool, len: usize) -> Bytes {
    assert!(tag.len() <= MAX_TAG_LEN, "tag too long");
    let mut buf = BytesMut::with_capacity(len.max(64));
    match kind {
        MediaKind::Audio => buf.put_u8(OPUS_TOC),
        MediaKind::Video | MediaKind::Screen => {
            buf.put_u8(VP8_DESCRIPTOR_START);
            // The frame tag (bytes 1..4) is filled in once the length is known.
            buf.put_bytes(0, 3);
            if keyframe {
                buf.put_slice(&[0x9d, 0x01, 0x2a]);
                buf.put_u16_le(VP8_WIDTH);
                buf.put_u16_le(VP8_HEIGHT);
            }
        }
    }
    buf.put_slice(MAGIC);
    buf.put_u8(tag.len() as u8);
    buf.put_slice(tag.as_bytes());
    buf.put_u8(kind_byte(kind));
    buf.put_u32(seq);
    buf.put_u8(u8::from(keyframe));
    let h = tag_hash(tag);
    let mut i = 0;
    while buf.len() < len {
        buf.put_u8(filler_byte(h, seq, i));
        i += 1;
    }
    if kind != MediaKind::Audio {
        // VP8 frame tag (RFC 6386 §9.1), little-endian 24 bits:
        // bit 0 = !keyframe, bits 1-3 = version 0, bit 4 = show_frame, bits 5-23 = first
        // partition size (here: the rest of the payload, clamped to 19 bits).
        let header_len = if keyframe { 10 } else { 3 };
        let part = (buf.len() - 1 - header_len).min((1 << 19) - 1) as u32;
        let frame_tag: u32 = u32::from(!keyframe) | (1 << 4) | (part << 5);
        buf[1] = (frame_tag & 0xff) as u8;
        buf[2] = ((frame_tag >> 8) & 0xff) as u8;
        buf[3] = ((frame_tag >> 16) & 0xff) as u8;
    }
    buf.freeze()
}

/// Finds and decodes the marker in a payload, or `None` if this is not one of ours.
pub fn parse_marker(payload: &[u8]) -> Option<Marker> {
    // The marker sits after at most 11 bytes of codec headers.
    let start = (0..=payload.len().min(16).saturating_sub(MAGIC.len()))
        .find(|&i| payload[i..].starts_with(MAGIC))?;
    let rest = &payload[start + MAGIC.len()..];
    let tag_len = *rest.first()? as usize;
    let tag = std::str::from_utf8(rest.get(1..1 + tag_len)?)
        .ok()?
        .to_owned();
    let rest = rest.get(1 + tag_len..)?;
    let kind = match *rest.first()? {
        b'A' => MediaKind::Audio,
        b'V' => MediaKind::Video,
        b'S' => MediaKind::Screen,
        _ => return None,
    };
    let seq = u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?);
    let keyframe = *rest.get(5)? != 0;
    Some(Marker {
        tag,
        kind,
        seq,
        keyframe,
    })
}

/// Whether a VP8 RTP payload starts a keyframe, judged the way an SFU would: the descriptor
/// says start-of-partition-0, and the frame tag's inverse-keyframe bit is clear.
pub fn is_vp8_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let pid = first & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut idx = 1;
    if extended {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        idx = 2;
        if x & 0x80 != 0 {
            // PictureID: one or two bytes.
            let Some(&p) = payload.get(idx) else {
                return false;
            };
            idx += if p & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            idx += 1;
        }
        if x & 0x30 != 0 {
            idx += 1;
        }
    }
    payload.get(idx).is_some_and(|b| b & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_audio_and_video() {
        for (kind, keyframe) in [
            (MediaKind::Audio, false),
            (MediaKind::Video, true),
            (MediaKind::Video, false),
        ] {
            let p = build_payload("nurse", kind, 4711, keyframe, 300);
            assert_eq!(p.len(), 300);
            let m = parse_marker(&p).expect("marker");
            assert_eq!(
                m,
                Marker {
                    tag: "nurse".into(),
                    kind,
                    seq: 4711,
                    keyframe
                }
            );
            if kind == MediaKind::Video {
                assert_eq!(is_vp8_keyframe(&p), keyframe);
            }
        }
    }

    #[test]
    fn payloads_differ_by_seq_and_tag() {
        let a = build_payload("a", MediaKind::Video, 1, false, 200);
        let b = build_payload("a", MediaKind::Video, 2, false, 200);
        let c = build_payload("b", MediaKind::Video, 1, false, 200);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn foreign_payload_has_no_marker() {
        assert!(parse_marker(&[0x10, 0, 0, 0, 1, 2, 3]).is_none());
        assert!(parse_marker(&[]).is_none());
    }

    #[test]
    fn keyframe_header_is_vp8_shaped() {
        let p = build_payload("x", MediaKind::Video, 0, true, 100);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] & 1, 0);
        assert_eq!(&p[4..7], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([p[7], p[8]]), 320);
    }
}
