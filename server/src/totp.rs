//! Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30-second steps,
//! 6 digits — the parameters every authenticator app understands.
//!
//! Codes are accepted one step either side of the server's clock (phones drift), and a step
//! once accepted is never accepted again for that account: the caller stores the returned
//! step in `users.totp_last_step` and passes it back next time.

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha1::Sha1;
use subtle::ConstantTimeEq as _;

/// Seconds per time step.
pub const STEP_SECS: u64 = 30;
/// Digits in a code.
pub const DIGITS: u32 = 6;
/// Steps accepted either side of the current one.
pub const WINDOW: i64 = 1;
/// Secret length in bytes (160 bits, the RFC 4226 recommendation for HMAC-SHA1).
pub const SECRET_BYTES: usize = 20;
/// Issuer shown in authenticator apps.
pub const ISSUER: &str = "wardlink";

/// A new random secret, base32 without padding (as authenticator apps expect it).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    BASE32_NOPAD.encode(&bytes)
}

/// Decodes a base32 secret, ignoring case, spaces and `=` padding as users type them.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let cleaned: String = secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    BASE32_NOPAD
        .decode(cleaned.as_bytes())
        .ok()
        .filter(|b| !b.is_empty())
}

/// The RFC 4226 HOTP value of `key` at `counter`, `digits` long.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[19] & 0x0f);
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    binary % 10u32.pow(digits)
}

/// The time step containing `unix_secs`.
pub fn step_at(unix_secs: u64) -> i64 {
    i64::try_from(unix_secs / STEP_SECS).unwrap_or(i64::MAX)
}

/// The 6-digit code for `secret` (base32) at time step `step`, zero-padded.
pub fn code_at_step(secret: &str, step: i64) -> Option<String> {
    let key = decode_secret(secret)?;
    let counter = u64::try_from(step).ok()?;
    Some(format!(
        "{:0width$}",
        hotp(&key, counter, DIGITS),
        width = DIGITS as usize
    ))
}

/// Checks `code` against `secret` (base32) at `unix_secs`, accepting [`WINDOW`] steps either
/// side, but only steps after `last_step` (so a code cannot be used twice). Returns the step
/// that matched, to be stored as the new `last_step`.
pub fn verify(secret: &str, code: &str, unix_secs: u64, last_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let key = decode_secret(secret)?;
    let now = step_at(unix_secs);
    let mut matched = None;
    // Check every candidate step without stopping early, so timing does not tell which
    // step (if any) matched.
    for step in (now - WINDOW)..=(now + WINDOW) {
        let Ok(counter) = u64::try_from(step) else {
            continue;
        };
        let expected = format!(
            "{:0width$}",
            hotp(&key, counter, DIGITS),
            width = DIGITS as usize
        );
        let equal: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
        if equal && step > last_step && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// The `otpauth://` URI that authenticator apps import (usually from a QR code).
pub fn otpauth_uri(username: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    // form_urlencoded writes spaces as '+', which the otpauth format reads literally.
    let label = format!("{}:{}", enc(ISSUER), enc(username)).replace('+', "%20");
    format!(
        "otpauth://totp/{label}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(ISSUER)
    )
}

/// `uri` as a QR code in SVG, for the enrolment screen.
pub fn qr_svg(uri: &str) -> anyhow::Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| anyhow::anyhow!("cannot encode the enrolment QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 6238 appendix B SHA-1 seed.
    const SEED: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_sha1_vectors() {
        let vectors: [(u64, u32); 6] = [
            (59, 94_287_082),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ];
        let secret = BASE32_NOPAD.encode(SEED);
        for (time, expected) in vectors {
            assert_eq!(hotp(SEED, time / STEP_SECS, 8), expected, "T={time}");
            // The 6-digit code is the same value mod 10^6.
            let six = format!("{:06}", expected % 1_000_000);
            assert_eq!(
                code_at_step(&secret, step_at(time)).as_deref(),
                Some(six.as_str())
            );
            assert_eq!(verify(&secret, &six, time, 0), Some(step_at(time)));
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        let expected = [
            755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871,
            520_489,
        ];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(hotp(SEED, counter as u64, 6), code);
        }
    }

    #[test]
    fn window_is_one_step_either_side() {
        let secret = BASE32_NOPAD.encode(SEED);
        let t = 1_111_111_111;
        let now = step_at(t);
        for offset in [-1, 0, 1] {
            let code = code_at_step(&secret, now + offset).unwrap();
            assert_eq!(verify(&secret, &code, t, 0), Some(now + offset));
        }
        for offset in [-2, 2] {
            let code = code_at_step(&secret, now + offset).unwrap();
            assert_eq!(verify(&secret, &code, t, 0), None, "offset {offset}");
        }
    }

    #[test]
    fn replayed_or_older_steps_are_refused() {
        let secret = generate_secret();
        let t = 1_700_000_000;
        let code = code_at_step(&secret, step_at(t)).unwrap();
        let step = verify(&secret, &code, t, 0).unwrap();
        // The same code again (even a few seconds later, same step) is a replay.
        assert_eq!(verify(&secret, &code, t + 5, step), None);
        // A code from the step before the last accepted one is refused too.
        let older = code_at_step(&secret, step - 1).unwrap();
        assert_eq!(verify(&secret, &older, t, step), None);
        // The next step's code is still fine.
        let next = code_at_step(&secret, step + 1).unwrap();
        assert_eq!(verify(&secret, &next, t + STEP_SECS, step), Some(step + 1));
    }

    #[test]
    fn malformed_codes_and_secrets_are_refused() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 32);
        assert_eq!(decode_secret(&secret).unwrap().len(), SECRET_BYTES);
        let t = 1_700_000_000;
        let good = code_at_step(&secret, step_at(t)).unwrap();
        for bad in ["", "12345", "1234567", "12345a", "１２３４５６", " "] {
            assert_eq!(verify(&secret, bad, t, 0), None, "{bad:?}");
        }
        assert_eq!(
            verify(&secret, &format!(" {good} "), t, 0),
            Some(step_at(t))
        );
        assert_eq!(verify("not base32!", &good, t, 0), None);
        assert_eq!(verify("", &good, t, 0), None);
        // Lower case and spaces, as typed from a printed secret, decode the same.
        let spaced = secret.to_lowercase().replace("", " ");
        assert_eq!(decode_secret(&spaced), decode_secret(&secret));
    }

    #[test]
    fn otpauth_uri_and_qr_code() {
        let uri = otpauth_uri("nurse.sato", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            uri,
            "otpauth://totp/wardlink:nurse.sato?secret=JBSWY3DPEHPK3PXP&issuer=wardlink&algorithm=SHA1&digits=6&period=30"
        );
        assert!(otpauth_uri("a b&c", "X").starts_with("otpauth://totp/wardlink:a%20b%26c?"));
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("</svg>"));
    }
}
