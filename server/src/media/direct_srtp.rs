//! Encrypting forwarded RTP ourselves instead of through `rtc`'s write pipeline.
//!
//! Every forwarded packet used to go through `RTCPeerConnection::handle_write` and
//! `poll_write`: `rtc` moves each message by value through its handler chain (interceptors,
//! SRTP, DTLS, ICE), the largest user-space cost of a subscriber leg in every profile. The
//! only step a forwarded packet needs is SRTP; skipping the rest cut the server's CPU at
//! 150 subscribers by 43 % (tests/results/performance.md, session 7).
//!
//! `rtc` 0.21 does not expose a connection's SRTP keys, but it derives the session keys
//! through the crypto provider it is given, and the SRTP key derivation (RFC 3711 §4.3,
//! used by every profile here) starts each context with one AES block operation under the
//! master key on the master salt. [`KeyTap`] wraps the `ring` provider and notes those
//! operations; [`DirectSrtp`] builds candidate senders ([`SrtpSender`]) from them and keeps
//! one only if it encrypts a real packet byte for byte as `rtc` just did on that connection
//! (the probe).
//! Until then, and for good if no candidate matches, the connection stays on `rtc`'s path.
//! A change in how `rtc` derives keys therefore costs speed, never correctness.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use rtc::crypto::providers::{RingCrypto, RingRandom};
use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};
use rtc::rtp::Packet;
use rtc::srtp::protection_profile::ProtectionProfile;

use super::outbound::{Payload, RtpToSeal, SharedSender, Transmit};
use super::srtp_sender::SrtpSender;

/// Most master keys a tap remembers: one connection derives two (ours and the peer's).
const MAX_KEYS: usize = 4;
/// Packets compared before a connection gives up on the direct path.
const MAX_PROBES: u8 = 3;

/// One master key seen by the tap and the first block it encrypted (the master salt,
/// padded, for the first label derived).
#[derive(Clone)]
struct Seen {
    key: Vec<u8>,
    first_block: [u8; 16],
}

/// The `ring` provider, plus a note of the SRTP master keys derived through it.
/// One per peer connection.
#[derive(Default)]
pub struct KeyTap {
    crypto: TapCrypto,
    random: RingRandom,
}

#[derive(Default)]
struct TapCrypto {
    inner: RingCrypto,
    seen: Mutex<Vec<Seen>>,
}

impl KeyTap {
    /// A new tap, shared with the connection's setting engine.
    pub fn new() -> Arc<KeyTap> {
        Arc::new(KeyTap::default())
    }

    fn seen(&self) -> Vec<Seen> {
        self.crypto
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every SRTP session's candidate (master key, master salt, profile) that the tap has
    /// seen derived so far, ours and the peer's alike: which is which, and which profile,
    /// only a real packet can tell. For clients that decrypt their own received media (the
    /// load generator); the SFU proves its own with [`DirectSrtp::probe`].
    pub fn candidates(&self) -> Vec<(Vec<u8>, Vec<u8>, ProtectionProfile)> {
        self.seen()
            .into_iter()
            .flat_map(|seen| {
                profiles_for(seen.key.len()).iter().map(move |&profile| {
                    let salt = seen.first_block[..profile.salt_len().min(16)].to_vec();
                    (seen.key.clone(), salt, profile)
                })
            })
            .collect()
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        "ring (wardlink key tap)"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        &self.random
    }
}

impl RTCCrypto for TapCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        // Only the SRTP key derivation uses single AES blocks; note the input before it is
        // encrypted in place.
        if let Ok(first_block) = <[u8; 16]>::try_from(&*block) {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.len() < MAX_KEYS && !seen.iter().any(|s| s.key == key) {
                seen.push(Seen {
                    key: key.to_vec(),
                    first_block,
                });
            }
        }
        self.inner.block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .verify_signature(scheme, public_key, message, signature)
    }
}

/// The profiles a master key of this length may belong to.
fn profiles_for(key_len: usize) -> &'static [ProtectionProfile] {
    match key_len {
        16 => &[
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_32,
        ],
        32 => &[
            ProtectionProfile::AeadAes256Gcm,
            ProtectionProfile::Aes256CmHmacSha1_80,
            ProtectionProfile::Aes256CmHmacSha1_32,
        ],
        _ => &[],
    }
}

/// Where one subscriber connection's forwarded RTP is encrypted.
pub enum DirectSrtp {
    /// Still on `rtc`'s path; the next forwarded packets are compared.
    Probing {
        /// The connection's crypto provider.
        tap: Arc<KeyTap>,
        /// Packets compared so far.
        probes: u8,
    },
    /// Our own sender, proven on a real packet.
    Ready {
        /// Our copy of the connection's outbound SRTP state, used by whichever thread
        /// sends (see [`super::outbound`]).
        sender: SharedSender,
        /// The connection's selected candidate pair, as last read.
        to: SocketAddr,
    },
    /// No candidate matched: `rtc`'s path for good.
    Off,
}

impl DirectSrtp {
    /// A connection whose keys `tap` will see.
    pub fn new(tap: Arc<KeyTap>) -> Self {
        DirectSrtp::Probing { tap, probes: 0 }
    }

    /// Whether forwarded packets are encrypted here.
    pub fn is_ready(&self) -> bool {
        matches!(self, DirectSrtp::Ready { .. })
    }

    /// Whether the next packet through `rtc` should be compared.
    pub fn is_probing(&self) -> bool {
        matches!(self, DirectSrtp::Probing { .. })
    }

    /// Compares `rtc`'s encryption of one packet (`wire`, sent to `to`) with every
    /// candidate sender's encryption of the same packet. A match makes the connection
    /// [`DirectSrtp::Ready`]; the matching sender has then protected exactly what `rtc`'s
    /// context has, so the two stay in step (rollover counters included).
    pub fn probe(&mut self, packet: &Packet, wire: &[u8], to: SocketAddr) {
        let DirectSrtp::Probing { tap, probes } = self else {
            return;
        };
        *probes += 1;
        let crypto = RingCrypto;
        for (key, salt, profile) in tap.candidates() {
            let Ok(mut sender) = SrtpSender::new(&crypto, profile, &key, &salt) else {
                continue;
            };
            if sender.protect(packet).is_ok_and(|ours| ours[..] == *wire) {
                tracing::info!(
                    ?profile,
                    "forwarded RTP is encrypted by the SFU from here on"
                );
                *self = DirectSrtp::Ready {
                    sender: Arc::new(Mutex::new(sender)),
                    to,
                };
                return;
            }
        }
        if *probes >= MAX_PROBES {
            tracing::info!("forwarded RTP stays on rtc's SRTP path: no key candidate matched");
            *self = DirectSrtp::Off;
        }
    }

    /// Notes where this connection's media now goes (its selected candidate pair).
    pub fn follow(&mut self, addr: SocketAddr) {
        if let DirectSrtp::Ready { to, .. } = self {
            *to = addr;
        }
    }

    /// The datagram for one rewritten RTP packet, to be sealed by the thread that sends
    /// it ([`Transmit::seal`]); `None` unless ready.
    pub fn defer(&self, packet: Packet) -> Option<Transmit> {
        let DirectSrtp::Ready { sender, to } = self else {
            return None;
        };
        Some(Transmit {
            to: *to,
            payload: Payload::Rtp(RtpToSeal {
                packet,
                sender: sender.clone(),
            }),
        })
    }
}

/// Whether a datagram is RTP or RTCP (RFC 7983: first byte 128-191).
pub fn is_rtp_or_rtcp(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| (128..=191).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp::Header;
    use rtc::shared::marshal::Marshal;
    use rtc::srtp::context::Context;

    fn packet(ssrc: u32, seq: u16) -> Packet {
        Packet {
            header: Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: 90_000 + u32::from(seq) * 3000,
                ssrc,
                marker: seq.is_multiple_of(3),
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![seq as u8; 700]),
        }
    }

    /// A context built the way `rtc` builds its own (through the connection's provider),
    /// and what the tap makes of it.
    fn rtc_like_context(tap: &KeyTap, profile: ProtectionProfile) -> Context {
        let key: Vec<u8> = (0..profile.key_len() as u8)
            .map(|i| i.wrapping_mul(7))
            .collect();
        let salt: Vec<u8> = (0..profile.salt_len() as u8).map(|i| 200 - i).collect();
        Context::new(&key, &salt, profile, None, None, tap.crypto()).expect("context")
    }

    #[test]
    fn probe_finds_the_context_and_stays_in_step_for_every_profile() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::AeadAes256Gcm,
        ] {
            let tap = KeyTap::new();
            // The remote context is derived too; the probe must pick the right one.
            let _remote = Context::new(
                &vec![9u8; profile.key_len()],
                &vec![1u8; profile.salt_len()],
                profile,
                None,
                None,
                tap.crypto(),
            )
            .expect("remote");
            let mut theirs = rtc_like_context(&tap, profile);
            let mut direct = DirectSrtp::new(tap.clone());
            let to: SocketAddr = "192.0.2.1:5000".parse().unwrap();

            let first = packet(0xAB, 65_534);
            let wire = theirs.encrypt_rtp(&first.marshal().unwrap()).unwrap();
            direct.probe(&first, &wire, to);
            assert!(direct.is_ready(), "{profile:?}: probe matched");

            // Across the sequence wrap (rollover counter 0 → 1), and on a second SSRC.
            for (ssrc, seq) in [(0xAB, 65_535), (0xAB, 0), (0xAB, 1), (0xCD, 40), (0xAB, 2)] {
                let p = packet(ssrc, seq);
                let plain = p.marshal().unwrap();
                let expected = theirs.encrypt_rtp(&plain).unwrap();
                let ours = direct.defer(p).and_then(Transmit::seal).expect("sealed");
                assert_eq!(ours.payload, expected, "{profile:?}: ssrc {ssrc} seq {seq}");
                assert_eq!(ours.to, to);
            }
        }
    }

    #[test]
    fn a_wrong_packet_never_enables_the_direct_path() {
        let tap = KeyTap::new();
        let mut theirs = rtc_like_context(&tap, ProtectionProfile::AeadAes128Gcm);
        let mut direct = DirectSrtp::new(tap);
        let to: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        for seq in 0..MAX_PROBES as u16 {
            let p = packet(1, seq);
            let plain = p.marshal().unwrap();
            let mut wire = theirs.encrypt_rtp(&plain).unwrap();
            // One flipped bit: as if the keys had come from somewhere else.
            let last = wire.len() - 1;
            wire[last] ^= 1;
            assert!(!direct.is_ready());
            direct.probe(&p, &wire, to);
        }
        assert!(
            matches!(direct, DirectSrtp::Off),
            "gives up after the probes"
        );
        assert!(direct.defer(packet(1, 9)).is_none());
    }

    #[test]
    fn without_any_key_seen_the_probe_fails() {
        let mut direct = DirectSrtp::new(KeyTap::new());
        let p = packet(1, 1);
        let plain = p.marshal().unwrap();
        direct.probe(&p, &plain, "192.0.2.1:1".parse().unwrap());
        assert!(direct.is_probing());
    }

    #[test]
    fn classifies_rtp_and_rtcp_by_first_byte() {
        assert!(is_rtp_or_rtcp(&[0x80, 0]));
        assert!(is_rtp_or_rtcp(&[0xBF]));
        assert!(!is_rtp_or_rtcp(&[0x00, 0x01])); // STUN
        assert!(!is_rtp_or_rtcp(&[22])); // DTLS
        assert!(!is_rtp_or_rtcp(&[]));
    }
}
