//! Received RTP decrypted outside `rtc`'s read pipeline.
//!
//! Every datagram `rtc` reads is moved by value through its ICE, DTLS, SRTP, interceptor,
//! endpoint, SCTP and data-channel handlers, with a queue and usually an allocation at each.
//! For a forwarded packet the SFU needs only three of those steps: SRTP decryption, the
//! receive-side interceptors (NACK generation, receiver reports, TWCC feedback; see
//! [`super::feedback`]) and the track the packet belongs to. A prototype that skipped `rtc`
//! for publishers' RTP took 20 % off the server's CPU at 1 -> 1 and in 20 rooms of 4
//! (tests/results/performance.md, session 16).
//!
//! The connection's crypto provider is [`KeyTap`], which notes each SRTP master key `rtc`
//! derives (ours and the peer's). [`DirectRx`] tries each candidate on arriving RTP and keeps
//! the first that **authenticates** a packet (the profile's HMAC or GCM tag), so a wrong key
//! can never yield a packet. Until then, and for good if none does, RTP goes through `rtc` as
//! before. RTCP, STUN and DTLS always do. If the kept key stops authenticating (new DTLS
//! keys), it probes again.
//!
//! The load generator reads its subscribers' media the same way.

use std::sync::Arc;

use rtc::crypto::providers::RingCrypto;
use rtc::rtp::{Header, Packet};
use rtc::shared::marshal::Unmarshal;
use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_replay_protection;

use super::direct_srtp::{is_rtp_or_rtcp, KeyTap};

/// RTP datagrams tried against the tapped keys before the connection stays on `rtc`.
const MAX_TRIES: u8 = 8;
/// Failures in a row of a proven key before the tapped keys are tried again.
const MAX_FAILURES: u8 = 8;
/// SRTP replay window, in packets: the forwarder's duplicate window
/// ([`super::forwarder::DEDUP_WINDOW`]), so a retransmission late enough to be forwarded is
/// never refused here. `rtc`'s own context (the setting engine's default) keeps none.
const REPLAY_WINDOW: usize = 1024;

/// Where one connection's received RTP is decrypted.
pub enum DirectRx {
    /// No key has authenticated a packet yet.
    Probing {
        /// The connection's crypto provider.
        tap: Arc<KeyTap>,
        /// RTP datagrams tried so far.
        tries: u8,
    },
    /// The peer's SRTP context, proven on a real packet.
    Ready {
        /// The context.
        context: Box<Context>,
        /// The connection's crypto provider, to probe again if the key stops working.
        tap: Arc<KeyTap>,
        /// Datagrams in a row the context refused.
        failures: u8,
    },
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
        matches!(self, DirectRx::Ready { .. })
    }

    /// The RTP packet in `datagram` if it is SRTP-protected RTP that this connection's key
    /// opens; `None` means "hand it to `rtc`" (RTCP, STUN, DTLS, a replay, or RTP while no
    /// key is known or that the key does not authenticate).
    pub fn open(&mut self, datagram: &[u8]) -> Option<Packet> {
        if !is_rtp(datagram) {
            return None;
        }
        match self {
            DirectRx::Off => None,
            DirectRx::Ready {
                context,
                tap,
                failures,
            } => match packet_of(context, datagram) {
                Some(packet) => {
                    *failures = 0;
                    Some(packet)
                }
                None => {
                    *failures += 1;
                    if *failures >= MAX_FAILURES {
                        tracing::debug!("the proven SRTP key stopped opening RTP; probing again");
                        *self = DirectRx::new(tap.clone());
                    }
                    None
                }
            },
            DirectRx::Probing { tap, tries } => {
                let candidates = tap.candidates();
                if candidates.is_empty() {
                    // Keys are derived once DTLS completes; until then nothing to try.
                    return None;
                }
                *tries += 1;
                for (key, salt, profile) in candidates {
                    let Ok(mut context) = Context::new(
                        &key,
                        &salt,
                        profile,
                        Some(srtp_replay_protection(REPLAY_WINDOW)),
                        None,
                        &RingCrypto,
                    ) else {
                        continue;
                    };
                    if let Some(packet) = packet_of(&mut context, datagram) {
                        tracing::debug!(?profile, "received RTP is decrypted outside rtc");
                        *self = DirectRx::Ready {
                            context: Box::new(context),
                            tap: tap.clone(),
                            failures: 0,
                        };
                        return Some(packet);
                    }
                }
                if *tries >= MAX_TRIES {
                    tracing::debug!("received RTP stays on rtc: no tapped key opened it");
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

/// Decrypts and authenticates one SRTP packet and parses it (padding removed). The header
/// is read once, from the clear text, and the payload is a view of the decrypted buffer,
/// not a copy: `Context::decrypt_rtp` followed by `Packet::unmarshal` parsed the header
/// twice and copied the payload.
fn packet_of(context: &mut Context, datagram: &[u8]) -> Option<Packet> {
    let mut rest = datagram;
    let header = Header::unmarshal(&mut rest).ok()?;
    let header_len = datagram.len() - rest.len();
    let plain = context
        .decrypt_rtp_with_header(datagram, &header)
        .ok()?
        .freeze();
    let mut end = plain.len();
    if header.padding {
        // RFC 3550 §5.1: the last octet counts the padding, itself included.
        let padding = usize::from(*plain.last()?);
        if padding == 0 || header_len + padding > end {
            return None;
        }
        end -= padding;
    }
    if header_len > end {
        return None;
    }
    let payload = plain.slice(header_len..end);
    Some(Packet { header, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
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
                let packet = rx.open(&wire).expect("opened");
                assert_eq!(&packet.payload[..], &body[..], "{profile:?} seq {seq}");
                assert_eq!(packet.header.sequence_number, seq);
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

    #[test]
    fn a_replayed_packet_is_refused() {
        let (tap, mut server) = connection(ProtectionProfile::AeadAes128Gcm);
        let mut rx = DirectRx::new(tap);
        let wire = server.encrypt_rtp(&rtp(7, 10, &[1; 200])).unwrap();
        assert!(rx.open(&wire).is_some());
        assert!(rx.open(&wire).is_none(), "the same packet twice");
        // A later packet still opens: one refusal does not give the key up.
        let next = server.encrypt_rtp(&rtp(7, 11, &[2; 200])).unwrap();
        assert!(rx.open(&next).is_some());
        // One older than the window is refused too; within it, a late one is not.
        let late = server.encrypt_rtp(&rtp(7, 9, &[3; 200])).unwrap();
        assert!(rx.open(&late).is_some(), "late but never seen");
    }

    #[test]
    fn new_keys_are_found_after_the_proven_one_stops_opening() {
        let profile = ProtectionProfile::AeadAes128Gcm;
        let (tap, mut old) = connection(profile);
        let mut rx = DirectRx::new(tap.clone());
        assert!(rx
            .open(&old.encrypt_rtp(&rtp(7, 1, &[1; 100])).unwrap())
            .is_some());
        // The peer's keys change (a new DTLS session derives new ones through the same tap).
        let mut new = Context::new(&[9; 16], &[8; 12], profile, None, None, tap.crypto()).unwrap();
        for seq in 2..2 + u16::from(MAX_FAILURES) {
            let wire = new.encrypt_rtp(&rtp(7, seq, &[2; 100])).unwrap();
            assert!(rx.open(&wire).is_none(), "the old key cannot open it");
        }
        assert!(matches!(rx, DirectRx::Probing { .. }));
        let wire = new.encrypt_rtp(&rtp(7, 100, &[3; 100])).unwrap();
        let packet = rx.open(&wire).expect("the new key is proven");
        assert_eq!(&packet.payload[..], &[3; 100][..]);
    }

    #[test]
    fn padding_is_removed_and_a_bad_padding_count_refused() {
        let profile = ProtectionProfile::AeadAes128Gcm;
        let (tap, mut server) = connection(profile);
        let mut rx = DirectRx::new(tap);
        let mut padded = rtp(7, 1, &[5; 40]);
        padded[0] |= 0x20; // P bit
        padded.extend_from_slice(&[0, 0, 3]); // three octets of padding, the count last
        let wire = server.encrypt_rtp(&padded).unwrap();
        let packet = rx.open(&wire).expect("opened");
        assert_eq!(&packet.payload[..], &[5; 40][..]);
        assert_eq!(packet.header.sequence_number, 1);
        let mut bad = rtp(7, 2, &[5; 4]);
        bad[0] |= 0x20;
        bad.push(200); // more padding than the packet has
        let wire = server.encrypt_rtp(&bad).unwrap();
        assert!(rx.open(&wire).is_none());
    }
}
