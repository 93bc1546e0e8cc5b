//! Signed join tokens.
//!
//! A token is `<base64url-nopad(JSON claims)>.<base64url-nopad(ed25519 signature)>`, where the
//! signature covers the ASCII bytes of the first part exactly as transmitted. Signing the encoded
//! text (not re-serialised claims) means the verifier never has to reproduce the signer's JSON
//! byte for byte.
//!
//! Tokens travel in the URL fragment of a join link (`/join#t=<token>`), so they never reach
//! server logs or `Referer` headers. They are bearer credentials: whoever holds one may join
//! the conference in its role until `exp`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::role::Role;

/// Claims format version carried in [`JoinClaims::v`].
pub const TOKEN_VERSION: u32 = 1;

/// Longest token the verifier will look at. Real tokens are a few hundred bytes; the cap keeps
/// hostile input from costing a large base64 decode.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a join token grants: joining room `room` as `role` under display name `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// Claims format version, [`TOKEN_VERSION`].
    pub v: u32,
    /// Conference (room) id.
    pub room: String,
    /// Conference title, shown to participants.
    pub title: String,
    /// Role granted to the holder.
    pub role: Role,
    /// Suggested display name (the client may override it at join).
    pub name: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds; the token is rejected from this second on.
    pub exp: u64,
    /// Random token id, for audit logs.
    pub jti: String,
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not shaped like a token: wrong structure, bad base64, bad JSON or missing claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Well-formed, but the signature does not verify with this server's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// Signed by this server in a claims format it does not understand.
    #[error("unsupported token version {0}")]
    UnsupportedVersion(u32),
    /// Valid signature, but `exp` has passed.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry, unix seconds.
        exp: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },
}

impl TokenError {
    /// The wire error code to report to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Expired { .. } => ErrorCode::TokenExpired,
            TokenError::Malformed(_)
            | TokenError::BadSignature
            | TokenError::UnsupportedVersion(_) => ErrorCode::InvalidToken,
        }
    }
}

/// Signs join tokens with the server's ed25519 key.
#[derive(Clone)]
pub struct TokenSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    // Never print the secret key, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field(
                "public_key",
                &URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Wraps an ed25519 signing key.
    pub fn new(key: SigningKey) -> Self {
        TokenSigner { key }
    }

    /// Builds a signer from a 32-byte ed25519 secret key (seed).
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        TokenSigner::new(SigningKey::from_bytes(secret))
    }

    /// The 32-byte secret key, for persisting it.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// A verifier for tokens made by this signer.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier::new(self.key.verifying_key())
    }

    /// Signs `claims` into a token string.
    pub fn sign(&self, claims: &JoinClaims) -> String {
        // A struct of strings and integers always serialises; a failure here is a bug.
        let json = serde_json::to_vec(claims).expect("JoinClaims serialises to JSON");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let signature = self.key.sign(payload.as_bytes());
        let mut token = payload;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        token
    }
}

/// Verifies join tokens against the server's ed25519 public key.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

impl TokenVerifier {
    /// Wraps an ed25519 public key.
    pub fn new(key: VerifyingKey) -> Self {
        TokenVerifier { key }
    }

    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks the token's structure, signature, version and expiry at `now_unix_secs`.
    ///
    /// The signature is checked before the claims are parsed, so unauthenticated JSON is
    /// never interpreted.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<JoinClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let (payload, signature) = token
            .split_once('.')
            .ok_or(TokenError::Malformed("missing '.' separator"))?;
        if payload.is_empty() || signature.contains('.') {
            return Err(TokenError::Malformed("expected exactly two parts"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| TokenError::Malformed("signature is not 64 bytes"))?;
        // verify_strict also rejects small-order keys and non-canonical signatures.
        self.key
            .verify_strict(payload.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::BadSignature)?;

        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        // Check the version on its own first, so a future format with different fields is
        // reported as a version mismatch, not as garbage.
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let version: Version = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        if version.v != TOKEN_VERSION {
            return Err(TokenError::UnsupportedVersion(version.v));
        }
        let claims: JoinClaims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are incomplete"))?;
        if now_unix_secs >= claims.exp {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now: now_unix_secs,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn signer(seed: u8) -> TokenSigner {
        TokenSigner::from_bytes(&[seed; 32])
    }

    fn claims() -> JoinClaims {
        JoinClaims {
            v: TOKEN_VERSION,
            room: "0123456789abcdef".into(),
            title: "退院前カンファレンス".into(),
            role: Role::CareManager,
            name: "ケアマネジャー".into(),
            iat: NOW,
            exp: NOW + 3600,
            jti: "j1".into(),
        }
    }

    /// Re-signs arbitrary claims JSON with `s`, for building validly signed odd tokens.
    fn sign_raw(s: &TokenSigner, json: &str) -> String {
        let payload = URL_SAFE_NO_PAD.encode(json);
        let sig = s.key.sign(payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    #[test]
    fn round_trip() {
        let s = signer(1);
        let token = s.sign(&claims());
        assert_eq!(token.matches('.').count(), 1);
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'));
        assert_eq!(s.verifier().verify(&token, NOW), Ok(claims()));
        assert_eq!(s.verifier().verify(&token, NOW + 3599), Ok(claims()));
    }

    #[test]
    fn claims_are_plain_json_in_the_first_part() {
        let token = signer(1).sign(&claims());
        let payload = token.split('.').next().unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["role"], "care_manager");
        assert_eq!(json["room"], "0123456789abcdef");
        assert_eq!(json["exp"], NOW + 3600);
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let s = signer(1);
        let token = s.sign(&claims());
        let (_, sig) = token.split_once('.').unwrap();
        let mut forged = claims();
        forged.role = Role::Host;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let forged_token = format!("{forged_payload}.{sig}");
        assert_eq!(
            s.verifier().verify(&forged_token, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let s = signer(1);
        let token = s.sign(&claims());
        let (payload, sig) = token.split_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[10] ^= 0x01;
        let token = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(
            s.verifier().verify(&token, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn wrong_key_is_rejected() {
        let token = signer(1).sign(&claims());
        let err = signer(2).verifier().verify(&token, NOW).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }

    #[test]
    fn expired_is_rejected_from_exp_on() {
        let s = signer(1);
        let token = s.sign(&claims());
        let err = s.verifier().verify(&token, NOW + 3600).unwrap_err();
        assert_eq!(
            err,
            TokenError::Expired {
                exp: NOW + 3600,
                now: NOW + 3600
            }
        );
        assert_eq!(err.code(), ErrorCode::TokenExpired);
    }

    #[test]
    fn unknown_version_is_rejected() {
        let s = signer(1);
        let token = sign_raw(&s, r#"{"v":2,"something":"else"}"#);
        let err = s.verifier().verify(&token, NOW).unwrap_err();
        assert_eq!(err, TokenError::UnsupportedVersion(2));
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }

    #[test]
    fn signed_but_incomplete_claims_are_malformed() {
        let s = signer(1);
        for json in [
            r#"{"v":1,"room":"r"}"#,
            "not json",
            r#"{"v":1,"room":"r","title":"t","role":"admin","name":"n","iat":1,"exp":99999999999,"jti":"j"}"#,
        ] {
            let token = sign_raw(&s, json);
            assert!(
                matches!(
                    s.verifier().verify(&token, NOW),
                    Err(TokenError::Malformed(_))
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn garbage_never_panics_and_is_malformed_or_bad_signature() {
        let s = signer(1);
        let v = s.verifier();
        let valid = s.sign(&claims());
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let inputs = [
            "",
            ".",
            "..",
            "abc",
            "abc.",
            ".abc",
            "a.b.c",
            "!!!.###",
            "eyJ2IjoxfQ.AAAA",
            "eyJ2IjoxfQ==.AAAA",
            "日本語.日本語",
            long.as_str(),
            &valid[..valid.len() - 1],
            &valid[1..],
        ];
        for input in inputs {
            let err = v.verify(input, NOW).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed(_) | TokenError::BadSignature),
                "{input:?} gave {err:?}"
            );
            assert_eq!(err.code(), ErrorCode::InvalidToken);
        }
        // A valid token with extra text appended is not a valid token.
        assert!(v.verify(&format!("{valid}.x"), NOW).is_err());
        assert!(v.verify(&format!("{valid}A"), NOW).is_err());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let s = signer(7);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&URL_SAFE_NO_PAD.encode([7u8; 32])));
    }
}
