//! SRTP protection of forwarded RTP (RFC 3711, RFC 7714), shaped for the fan-out.
//!
//! `rtc-srtp`'s `Context` looks up each SSRC's rollover state in a hash map twice per packet
//! and returns a fresh buffer. With one context per subscriber connection, a fan-out to 350
//! connections touched 350 cold hash tables per packet: 5 % of the server's CPU at 1 → 350
//! (tests/results/performance.md, session 8). Here a connection's streams are a short
//! vector (a connection carries two or three per publisher it watches), and the packet is
//! marshalled straight into the buffer that goes to the socket and encrypted in place.
//!
//! The session keys are derived from the master key and salt with the AES-CM PRF
//! (RFC 3711 §4.3.3; RFC 6188 for 256-bit keys; RFC 7714 §11 for GCM) through the
//! connection's crypto provider, so the ciphers are `ring`'s, as in `rtc`. Whether this
//! matches what `rtc` does on the same connection is not assumed: [`super::direct_srtp`]
//! only uses a sender after it encrypted a real packet byte for byte as `rtc` did.

use bytes::BytesMut;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, HmacAlgorithm, Mac, RTCCrypto, StreamCipher,
    StreamCipherAlgorithm,
};
use rtc::rtp::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::protection_profile::ProtectionProfile;

/// Key-derivation label of the SRTP encryption key (RFC 3711 §4.3.1).
const LABEL_ENCRYPTION: u8 = 0x00;
/// Key-derivation label of the SRTP authentication key.
const LABEL_AUTHENTICATION: u8 = 0x01;
/// Key-derivation label of the SRTP salting key.
const LABEL_SALT: u8 = 0x02;
/// Length of the HMAC-SHA1 output, before truncation to the profile's tag.
const SHA1_LEN: usize = 20;
/// Length of the AES-GCM tag (RFC 7714 §14.2: 16 octets for both GCM profiles).
const GCM_TAG_LEN: usize = 16;

/// Why a sender could not be built or a packet not protected.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    /// The master key or salt has the wrong length for the profile.
    #[error("{0:?} needs a {1}-byte master key and a {2}-byte salt")]
    KeyLength(ProtectionProfile, usize, usize),
    /// A profile added to `rtc` after this was written.
    #[error("{0:?} is not supported here")]
    Unsupported(ProtectionProfile),
    /// The crypto provider refused an operation.
    #[error("crypto provider: {0}")]
    Crypto(String),
    /// The packet could not be marshalled.
    #[error("RTP packet does not marshal: {0}")]
    Marshal(String),
    /// 2^48 packets under one key (RFC 3711 §9.2): the session must be re-keyed.
    #[error("SRTP packet index exhausted for SSRC {0:#x}")]
    IndexExhausted(u32),
}

fn crypto(e: impl std::fmt::Display) -> SrtpError {
    SrtpError::Crypto(e.to_string())
}

/// The packet index of one outgoing stream (RFC 3711 §3.3.1): the highest sequence number
/// sent and the rollover counter (ROC) that goes with it.
#[derive(Debug, Clone, Copy)]
struct StreamIndex {
    ssrc: u32,
    roc: u32,
    highest_seq: u16,
}

impl StreamIndex {
    /// The ROC of a packet with sequence number `seq`: RFC 3711 §3.3.1's estimate, which
    /// a sender needs too once it resends packets from before a wrap.
    fn estimate(&self, seq: u16) -> u32 {
        const HALF: u16 = 1 << 15;
        let s_l = self.highest_seq;
        if s_l < HALF {
            // A packet more than half the space above s_l is older, from before the wrap;
            // there is nothing before ROC 0.
            if seq > s_l && seq - s_l > HALF && self.roc > 0 {
                self.roc - 1
            } else {
                self.roc
            }
        } else if seq < s_l - HALF {
            // Far below s_l: the sequence has wrapped.
            self.roc.wrapping_add(1)
        } else {
            self.roc
        }
    }

    /// Notes that `(roc, seq)` was sent.
    fn advance(&mut self, roc: u32, seq: u16) {
        let sent = (u64::from(roc) << 16) | u64::from(seq);
        let highest = (u64::from(self.roc) << 16) | u64::from(self.highest_seq);
        if sent > highest {
            self.roc = roc;
            self.highest_seq = seq;
        }
    }
}

/// The keyed cipher of one direction of one connection.
enum Cipher {
    /// AEAD_AES_128_GCM / AEAD_AES_256_GCM (RFC 7714).
    Gcm {
        aead: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    /// AES_CM with HMAC-SHA1 (RFC 3711 §4.1.1, §4.2.1).
    CmHmac {
        ctr: Box<dyn StreamCipher>,
        mac: Box<dyn Mac>,
        salt: [u8; 14],
        tag_len: usize,
    },
}

/// Protects the RTP one connection sends: its SRTP session keys and, per SSRC, the packet
/// index. One per subscriber connection, used for sending only.
pub struct SrtpSender {
    cipher: Cipher,
    /// The streams sent so far, in the order they started: a short list, scanned.
    streams: Vec<StreamIndex>,
}

impl SrtpSender {
    /// Derives the session keys for `profile` from the master key and salt.
    pub fn new(
        crypto_provider: &dyn RTCCrypto,
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<SrtpSender, SrtpError> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(SrtpError::KeyLength(
                profile,
                profile.key_len(),
                profile.salt_len(),
            ));
        }
        let derive = |label, len| derive(crypto_provider, master_key, master_salt, label, len);
        let session_key = derive(LABEL_ENCRYPTION, master_key.len())?;
        let cipher = match profile {
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm => {
                let algorithm = if master_key.len() == 16 {
                    AeadAlgorithm::Aes128Gcm
                } else {
                    AeadAlgorithm::Aes256Gcm
                };
                let aead = crypto_provider
                    .new_aead(algorithm, &session_key)
                    .map_err(crypto)?;
                if aead.tag_len() != GCM_TAG_LEN {
                    return Err(SrtpError::Crypto(format!(
                        "AES-GCM tag of {} bytes",
                        aead.tag_len()
                    )));
                }
                let mut salt = [0; 12];
                salt.copy_from_slice(&derive(LABEL_SALT, 12)?);
                Cipher::Gcm { aead, salt }
            }
            ProtectionProfile::Aes128CmHmacSha1_80
            | ProtectionProfile::Aes128CmHmacSha1_32
            | ProtectionProfile::Aes256CmHmacSha1_80
            | ProtectionProfile::Aes256CmHmacSha1_32 => {
                let algorithm = if master_key.len() == 16 {
                    StreamCipherAlgorithm::Aes128Ctr
                } else {
                    StreamCipherAlgorithm::Aes256Ctr
                };
                let ctr = crypto_provider
                    .new_stream_cipher(algorithm, &session_key)
                    .map_err(crypto)?;
                let auth_key = derive(LABEL_AUTHENTICATION, profile.auth_key_len())?;
                let mac = crypto_provider
                    .new_hmac(HmacAlgorithm::Sha1, &auth_key)
                    .map_err(crypto)?;
                let mut salt = [0; 14];
                salt.copy_from_slice(&derive(LABEL_SALT, 14)?);
                Cipher::CmHmac {
                    ctr,
                    mac,
                    salt,
                    tag_len: profile.rtp_auth_tag_len(),
                }
            }
            other => return Err(SrtpError::Unsupported(other)),
        };
        Ok(SrtpSender {
            cipher,
            streams: Vec::new(),
        })
    }

    /// Marshals `packet` into a new buffer and encrypts it: the datagram to send.
    pub fn protect(&mut self, packet: &Packet) -> Result<BytesMut, SrtpError> {
        let header = &packet.header;
        let header_len = header.marshal_size();
        let plain_len = packet.marshal_size();
        let tag_len = match &self.cipher {
            Cipher::Gcm { .. } => GCM_TAG_LEN,
            Cipher::CmHmac { tag_len, .. } => *tag_len,
        };
        let roc = self.roc_for(header.ssrc, header.sequence_number)?;

        let mut buf = BytesMut::with_capacity(plain_len + tag_len);
        buf.resize(plain_len, 0);
        let written = packet
            .marshal_to(&mut buf)
            .map_err(|e| SrtpError::Marshal(e.to_string()))?;
        buf.truncate(written);
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XORed with the salt.
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&header.ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&header.sequence_number.to_be_bytes());
                iv.iter_mut().zip(salt.iter()).for_each(|(v, s)| *v ^= s);
                let (aad, payload) = buf.split_at_mut(header_len);
                let mut tag = [0u8; GCM_TAG_LEN];
                aead.seal_in_place(&iv, aad, payload, &mut tag)
                    .map_err(crypto)?;
                buf.extend_from_slice(&tag);
            }
            Cipher::CmHmac {
                ctr,
                mac,
                salt,
                tag_len,
            } => {
                // RFC 3711 §4.1.1: IV = (salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16).
                let mut iv = [0u8; 16];
                iv[4..8].copy_from_slice(&header.ssrc.to_be_bytes());
                iv[8..12].copy_from_slice(&roc.to_be_bytes());
                iv[12..14].copy_from_slice(&header.sequence_number.to_be_bytes());
                iv.iter_mut().zip(salt.iter()).for_each(|(v, s)| *v ^= s);
                ctr.apply_keystream(&iv, &mut buf[header_len..])
                    .map_err(crypto)?;
                // §4.2: the tag covers the packet and the ROC.
                let mut tag = [0u8; SHA1_LEN];
                mac.sign(&[&buf, &roc.to_be_bytes()], &mut tag)
                    .map_err(crypto)?;
                buf.extend_from_slice(&tag[..*tag_len]);
            }
        }
        Ok(buf)
    }

    /// The ROC for this packet, with the stream's index moved past it.
    fn roc_for(&mut self, ssrc: u32, seq: u16) -> Result<u32, SrtpError> {
        let stream = match self.streams.iter_mut().position(|s| s.ssrc == ssrc) {
            Some(i) => &mut self.streams[i],
            None => {
                // The first packet of a stream starts its index (ROC 0).
                self.streams.push(StreamIndex {
                    ssrc,
                    roc: 0,
                    highest_seq: seq,
                });
                return Ok(0);
            }
        };
        let roc = stream.estimate(seq);
        if roc == 0 && stream.roc == u32::MAX {
            return Err(SrtpError::IndexExhausted(ssrc));
        }
        stream.advance(roc, seq);
        Ok(roc)
    }
}

/// The AES-CM PRF (RFC 3711 §4.3.1/§4.3.3, key derivation rate 0): `len` bytes of keystream
/// under the master key, starting from the master salt with `label` in its eighth byte.
fn derive(
    crypto_provider: &dyn RTCCrypto,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    len: usize,
) -> Result<Vec<u8>, SrtpError> {
    let algorithm = if master_key.len() == 32 {
        BlockCipherAlgorithm::Aes256
    } else {
        BlockCipherAlgorithm::Aes128
    };
    let mut x = [0u8; 16];
    x.iter_mut()
        .zip(master_salt.iter())
        .for_each(|(v, s)| *v = *s);
    x[7] ^= label;
    let mut out = Vec::with_capacity(len.div_ceil(16) * 16);
    for counter in 0..len.div_ceil(16) as u16 {
        let mut block = x;
        block[14..16].copy_from_slice(&counter.to_be_bytes());
        crypto_provider
            .block_encrypt(algorithm, master_key, &mut block)
            .map_err(crypto)?;
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::crypto::providers::RingCrypto;
    use rtc::rtp::Header;
    use rtc::srtp::context::Context;

    const PROFILES: [ProtectionProfile; 6] = [
        ProtectionProfile::AeadAes128Gcm,
        ProtectionProfile::AeadAes256Gcm,
        ProtectionProfile::Aes128CmHmacSha1_80,
        ProtectionProfile::Aes128CmHmacSha1_32,
        ProtectionProfile::Aes256CmHmacSha1_80,
        ProtectionProfile::Aes256CmHmacSha1_32,
    ];

    fn packet(ssrc: u32, seq: u16, len: usize, padding: bool) -> Packet {
        Packet {
            header: Header {
                version: 2,
                padding,
                payload_type: 96,
                sequence_number: seq,
                timestamp: 90_000u32.wrapping_add(u32::from(seq) * 3000),
                ssrc,
                marker: seq.is_multiple_of(3),
                ..Default::default()
            },
            payload: bytes::Bytes::from(
                (0..len)
                    .map(|i| (i as u8) ^ (seq as u8))
                    .collect::<Vec<_>>(),
            ),
        }
    }

    fn keys(profile: ProtectionProfile) -> (Vec<u8>, Vec<u8>) {
        let key = (0..profile.key_len() as u8)
            .map(|i| i.wrapping_mul(13) ^ 0x5a)
            .collect();
        let salt = (0..profile.salt_len() as u8)
            .map(|i| 0xf0 - i * 3)
            .collect();
        (key, salt)
    }

    /// Every packet, in order, protected by `rtc-srtp`'s context and by ours: the same bytes.
    fn agree(profile: ProtectionProfile, packets: &[Packet]) {
        let (key, salt) = keys(profile);
        let mut reference =
            Context::new(&key, &salt, profile, None, None, &RingCrypto).expect("context");
        let mut ours = SrtpSender::new(&RingCrypto, profile, &key, &salt).expect("sender");
        for p in packets {
            let expected = reference
                .encrypt_rtp(&p.marshal().unwrap())
                .expect("reference");
            let got = ours.protect(p).expect("protected");
            assert_eq!(
                &got[..],
                &expected[..],
                "{profile:?}: ssrc {:#x} seq {}",
                p.header.ssrc,
                p.header.sequence_number
            );
        }
    }

    #[test]
    fn matches_rtc_srtp_for_every_profile_across_a_sequence_wrap() {
        for profile in PROFILES {
            let mut packets: Vec<Packet> = (65_530..=65_535u16)
                .chain(0..6)
                .map(|seq| packet(0x1234_5678, seq, 900, false))
                .collect();
            // A second stream interleaved, a padded packet, an empty payload.
            packets.insert(3, packet(0x0BAD_CAFE, 7, 120, false));
            packets.insert(8, packet(0x0BAD_CAFE, 8, 33, true));
            packets.push(packet(0x0BAD_CAFE, 9, 0, false));
            agree(profile, &packets);
        }
    }

    #[test]
    fn resent_packets_from_before_a_wrap_use_the_old_rollover_counter() {
        // A NACKed packet resent after the sequence wrapped must be encrypted with the ROC
        // it was first sent under, or the receiver cannot decrypt it.
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let ssrc = 77;
            let mut packets: Vec<Packet> = (65_500..=65_535u16)
                .chain(0..20)
                .map(|seq| packet(ssrc, seq, 500, false))
                .collect();
            packets.push(packet(ssrc, 65_520, 500, false));
            packets.push(packet(ssrc, 20, 500, false));
            packets.push(packet(ssrc, 3, 500, false));
            packets.push(packet(ssrc, 21, 500, false));
            agree(profile, &packets);
        }
    }

    #[test]
    fn long_runs_agree_over_several_wraps() {
        let packets: Vec<Packet> = (0..200_000u32)
            .step_by(997)
            .map(|i| packet(9, (i as u16).wrapping_mul(3), 64, false))
            .collect();
        agree(ProtectionProfile::AeadAes128Gcm, &packets);
    }

    #[test]
    fn a_different_key_gives_different_bytes() {
        let profile = ProtectionProfile::Aes128CmHmacSha1_80;
        let (key, salt) = keys(profile);
        let mut other_key = key.clone();
        other_key[0] ^= 1;
        let p = packet(5, 5, 100, false);
        let a = SrtpSender::new(&RingCrypto, profile, &key, &salt)
            .unwrap()
            .protect(&p)
            .unwrap();
        let b = SrtpSender::new(&RingCrypto, profile, &other_key, &salt)
            .unwrap()
            .protect(&p)
            .unwrap();
        assert_eq!(a.len(), b.len());
        assert_ne!(a, b);
        // The header stays in the clear; the payload does not.
        assert_eq!(a[..12], p.marshal().unwrap()[..12]);
        assert_ne!(a[12..112], p.payload[..]);
    }

    #[test]
    fn refuses_keys_of_the_wrong_length() {
        let err = SrtpSender::new(
            &RingCrypto,
            ProtectionProfile::AeadAes128Gcm,
            &[0; 32],
            &[0; 12],
        );
        assert!(matches!(err, Err(SrtpError::KeyLength(..))));
    }
}
