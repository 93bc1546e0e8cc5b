//! Join-token surgery for negative tests, written from the wire format alone:
//! `<base64url-nopad(JSON claims)>.<base64url-nopad(ed25519 signature over the first part)>`.
//!
//! Deliberately independent of `wardlink_signaling::token`, so a bug there cannot make the
//! server and the tests agree on a wrong format.

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;

/// A token taken apart.
#[derive(Debug, Clone)]
pub struct TokenParts {
    /// The decoded claims object.
    pub claims: Value,
    /// The first part exactly as it appeared (base64url of the claims JSON).
    pub claims_b64: String,
    /// The signature part exactly as it appeared.
    pub signature_b64: String,
}

/// Splits and decodes a token (without verifying it).
pub fn decode(token: &str) -> anyhow::Result<TokenParts> {
    let Some((claims_b64, signature_b64)) = token.split_once('.') else {
        bail!("token has no '.'");
    };
    let json = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .context("claims are not base64url")?;
    let claims: Value = serde_json::from_slice(&json).context("claims are not JSON")?;
    Ok(TokenParts {
        claims,
        claims_b64: claims_b64.to_owned(),
        signature_b64: signature_b64.to_owned(),
    })
}

/// Encodes `claims` and signs them with `key`.
pub fn sign(claims: &Value, key: &SigningKey) -> String {
    let claims_b64 = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signature = key.sign(claims_b64.as_bytes());
    format!(
        "{claims_b64}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// A fresh random signing key (not the server's).
pub fn random_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The same claims, well-formed, but signed by a key the server has never seen.
pub fn forge(token: &str) -> anyhow::Result<String> {
    let parts = decode(token)?;
    Ok(sign(&parts.claims, &random_key()))
}

/// Changes the claims (elevates the role to host and renames) but keeps the original
/// signature: a client trying to promote itself.
pub fn tamper(token: &str) -> anyhow::Result<String> {
    let mut parts = decode(token)?;
    let obj = parts
        .claims
        .as_object_mut()
        .context("claims are not an object")?;
    obj.insert("role".into(), Value::from("host"));
    obj.insert("name".into(), Value::from("Mallory"));
    let claims_b64 = URL_SAFE_NO_PAD.encode(parts.claims.to_string().as_bytes());
    Ok(format!("{claims_b64}.{}", parts.signature_b64))
}

/// Re-signs `token`'s claims after `edit` with `key` (e.g. the server's own key, to produce
/// an expired but authentic token).
pub fn resign_with(
    token: &str,
    key: &SigningKey,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> anyhow::Result<String> {
    let mut parts = decode(token)?;
    let obj = parts
        .claims
        .as_object_mut()
        .context("claims are not an object")?;
    edit(obj);
    Ok(sign(&parts.claims, key))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn sign_then_decode() {
        let key = random_key();
        let claims = serde_json::json!({"v":1,"room":"r1","role":"surveyor","exp":10});
        let token = sign(&claims, &key);
        let parts = decode(&token).unwrap();
        assert_eq!(parts.claims, claims);
        let sig = URL_SAFE_NO_PAD.decode(&parts.signature_b64).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        key.verifying_key()
            .verify(parts.claims_b64.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn tamper_keeps_signature_changes_claims() {
        let key = random_key();
        let token = sign(&serde_json::json!({"role":"surveyor"}), &key);
        let bad = tamper(&token).unwrap();
        let (a, b) = (decode(&token).unwrap(), decode(&bad).unwrap());
        assert_eq!(a.signature_b64, b.signature_b64);
        assert_ne!(a.claims_b64, b.claims_b64);
        assert_eq!(b.claims["role"], "host");
    }
}
