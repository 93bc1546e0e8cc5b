//! A subscriber's received RTP, decrypted outside `rtc`'s read pipeline.
//!
//! The generator shares the machine's two cores with the server under test. A profile of
//! the generator at 1 → 350 (session 9, `perf record -g` of `wardlink-load`) put about half
//! of its CPU in `rtc`'s read pipeline for the subscribers' media: the ICE, DTLS, SRTP,
//! endpoint and interceptor handlers (receiver reports, NACK generation), with the message
//! copies between them. All a subscriber needs from a media packet is its SRTP decryption.
//! Every core-second the generator saves is one the server under test no longer waits for.
//!
//! The connection's crypto provider is wardlink's [`KeyTap`], which notes each SRTP master
//! key `rtc` derives (ours and the server's). [`DirectRx`] tries each candidate on arriving
//! RTP and keeps the first that **authenticates** a packet (the profile's HMAC or GCM tag),
//! so a wrong key can never yield a payload. Until then, and for good if none does, RTP goes
//! through `rtc` as before. RTCP, STUN and DTLS always do.
//!
//! What the server no longer gets on such a connection: RTCP receiver reports and NACKs for
//! the streams read here, since `rtc`'s interceptors do not see them. Neither server under
//! test changes what it forwards on receiver reports; NACKs only matter under emulated
//! downlink loss (`--downlink-drop-every`), where this path is not used.

use std::sync::Arc;

use bytes::Bytes;
use rtc::crypto::providers::RingCrypto;
use rtc::rtp::Packet;
use rtc::shared::marshal::Unmarshal;
use rtc::srtp::context::Context;
use wardlink::media::direct_srtp::{is_rtp_or_rtcp, KeyTap};

/// RTP datagrams tried against the tapped keys before the connection stays on `rtc`.
const MAX_TRIES: u8 = 8;

/// Where one subscriber connection's RTP is decrypted.
pub enum DirectRx {
    /// No key has authenticated a packet yet.
    Probing {
        /// The connection's crypto provider.
        tap: Arc<KeyTap>,
        /// RTP datagrams tried so far.
        tries: u8,
    },
    /// The server's SRTP context, proven on a real packet.
    Ready(Box<Context>),
    /// Everything through `rtc`.
    Off,
}

impl DirectRx {
    /// A connection whose keys `tap` will see.
    pub fn new(tap: Arc<KeyTap>) -> Self {
        DirectRx::Probing { tap, tries: 0 }
    }

    /// Whether RTP is decrypted here now.
    pub fn is_ready(&self) -> bool {
        matches!(self, DirectRx::Ready(_))
    }

    /// The RTP payload of `datagram` if it is SRTP-protected RTP that this connection's
    /// key opens; `None` means "hand it to `rtc`" (RTCP, STUN, DTLS, or RTP while no key
    /// is known or that the key does not authenticate).
    pub fn open(&mut self, datagram: &[u8]) -> Option<Bytes> {
        if !is_rtp(datagram) {
            return None;
        }
        match self {
            DirectRx::Off => None,
            DirectRx::Ready(context) => payload_of(context, datagram),
            DirectRx::Probing { tap, tries } => {
                let candidates = tap.candidates();
                if candidates.is_empty() {
                    // Keys are derived once DTLS completes; until then nothing to try.
                    return None;
                }
                *tries += 1;
                for (key, salt, profile) in candidates {
                    let Ok(mut context) =
                        Context::new(&key, &salt, profile, None, None, &RingCrypto)
                    else {
                        continue;
                    };
                    if let Some(payload) = payload_of(&mut context, datagram) {
                        tracing::debug!(?profile, "subscriber RTP is decrypted outside rtc");
                        *self = DirectRx::Ready(Box::new(context));
                        return Some(payload);
                    }
                }
                if *tries >= MAX_TRIES {
                    tracing::debug!("subscriber RTP stays on rtc: no tapped key opened it");
                    *self = DirectRx::Off;
                }
                None
            }
        }
    }
}

/// RTP, not RTCP: RFC 7983's first byte, and a second byte outside RTCP's packet types
/// 192-223 (RFC 5761 §4).
fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && is_rtp_or_rtcp(datagram) && !(192..=223).contains(&datagram[1])
}

/// Decrypts and authenticates one SRTP packet and returns its payload (padding removed).
fn payload_of(context: &mut Context, datagram: &[u8]) -> Option<Bytes> {
    let plain = context.decrypt_rtp(datagram).ok()?;
    let mut buf = &plain[..];
    Packet::unmarshal(&mut buf).ok().map(|p| p.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::crypto::RTCCryptoProvider;
    use rtc::rtp::Header;
    use rtc::shared::marshal::Marshal;
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        Packet {
            header: Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: 3000 * u32::from(seq),
                ssrc,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
        .marshal()
        .unwrap()
        .to_vec()
    }

    /// Two contexts derived through one tap, as `rtc` derives a connection's two (ours
    /// and the server's); returns the tap and the server's context.
    fn connection(profile: ProtectionProfile) -> (Arc<KeyTap>, Context) {
        let tap = KeyTap::new();
        let _ours = Context::new(
            &vec![3u8; profile.key_len()],
            &vec![4u8; profile.salt_len()],
            profile,
            None,
            None,
            tap.crypto(),
        )
        .unwrap();
        let key: Vec<u8> = (0..profile.key_len() as u8)
            .map(|i| i.wrapping_mul(11))
            .collect();
        let salt: Vec<u8> = (0..profile.salt_len() as u8).map(|i| 250 - i).collect();
        let theirs = Context::new(&key, &salt, profile, None, None, tap.crypto()).unwrap();
        (tap, theirs)
    }

    #[test]
    fn the_servers_key_is_found_and_opens_every_packet_across_a_wrap() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes256CmHmacSha1_32,
        ] {
            let (tap, mut server) = connection(profile);
            let mut rx = DirectRx::new(tap);
            for seq in [65_533u16, 65_534, 65_535, 0, 1, 2] {
                let body = [seq as u8; 300];
                let wire = server.encrypt_rtp(&rtp(7, seq, &body)).unwrap();
                let payload = rx.open(&wire).expect("opened");
                assert_eq!(&payload[..], &body[..], "{profile:?} seq {seq}");
                assert!(rx.is_ready());
            }
        }
    }

    #[test]
    fn a_packet_no_key_authenticates_goes_to_rtc_and_never_yields_a_payload() {
        let profile = ProtectionProfile::AeadAes128Gcm;
        let (tap, mut server) = connection(profile);
        let mut rx = DirectRx::new(tap);
        let mut wire = server.encrypt_rtp(&rtp(7, 10, &[1; 200])).unwrap().to_vec();
        // One flipped bit in the ciphertext: the tag no longer matches under any key.
        wire[40] ^= 1;
        assert!(rx.open(&wire).is_none());
        assert!(!rx.is_ready());
        // RTCP (a receiver report's packet type, 201) is never read here.
        let mut rtcp = wire.clone();
        rtcp[1] = 201;
        assert!(rx.open(&rtcp).is_none());
        // After MAX_TRIES failures the connection stays on rtc, even for good packets.
        for _ in 1..MAX_TRIES {
            assert!(rx.open(&wire).is_none());
        }
        let good = server.encrypt_rtp(&rtp(7, 11, &[2; 200])).unwrap();
        assert!(rx.open(&good).is_none());
        assert!(matches!(rx, DirectRx::Off));
    }

    #[test]
    fn nothing_is_tried_before_the_keys_exist() {
        let mut rx = DirectRx::new(KeyTap::new());
        let stranger = Context::new(
            &[5; 16],
            &[6; 12],
            ProtectionProfile::AeadAes128Gcm,
            None,
            None,
            &RingCrypto,
        );
        let wire = stranger.unwrap().encrypt_rtp(&rtp(1, 1, &[0; 50])).unwrap();
        for _ in 0..2 * MAX_TRIES {
            assert!(rx.open(&wire).is_none());
        }
        // Still probing: the tries only start counting once DTLS has produced keys.
        assert!(matches!(rx, DirectRx::Probing { tries: 0, .. }));
    }
}
