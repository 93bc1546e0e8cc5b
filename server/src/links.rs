//! Join links: signing invitation tokens, the link format and how a new conference's links
//! are printed.
//!
//! Conferences and their invitations are recorded in the database by
//! [`crate::conferences::create_conference`], which signs its links with the functions here;
//! a token without an invitation row is refused at join.

use std::fmt::Write as _;

use rand::Rng as _;
use serde::Serialize;
use wardlink_signaling::role::Role;
use wardlink_signaling::token::{JoinClaims, TokenSigner, TOKEN_VERSION};

/// Longest conference title, in characters.
pub const MAX_TITLE_CHARS: usize = 120;

/// The roles (and their suggested display names) a new conference gets links for.
pub const DEFAULT_ROLES: [(Role, &str); 3] = [
    (Role::Host, "病棟看護師"),
    (Role::CareManager, "ケアマネジャー"),
    (Role::Surveyor, "認定調査員"),
];

/// A new conference and its join links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomLinks {
    /// Conference id (16 hex characters).
    pub room_id: String,
    /// Conference title (trimmed).
    pub title: String,
    /// When the links start working, unix seconds.
    pub valid_from: u64,
    /// When the links stop working, unix seconds.
    pub expires_at: u64,
    /// One link per role, host first.
    pub links: Vec<RoleLink>,
}

/// One role's join link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleLink {
    /// Role granted by the link.
    pub role: Role,
    /// Suggested display name.
    pub display_name: String,
    /// `<base_url>/join#t=<token>`: the token sits in the fragment, which browsers never send.
    pub url: String,
    /// The signed token alone.
    pub token: String,
    /// The invitation's id (the token's `jti`), for revoking it.
    pub invitation_id: String,
}

/// Why a conference could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The title is empty, too long or contains control characters.
    #[error("invalid conference title: {0}")]
    InvalidTitle(&'static str),
}

/// Signs one join link with a fresh random `jti`. It has no invitation row, so a server
/// refuses it at join (`invalid_token`); use [`crate::conferences::issue_invitation`] for a
/// link that works. Kept for tests that need authentic-but-unknown tokens.
#[allow(clippy::too_many_arguments)]
pub fn sign_link(
    signer: &TokenSigner,
    base_url: &str,
    room_id: &str,
    title: &str,
    role: Role,
    display_name: &str,
    iat: u64,
    exp: u64,
) -> RoleLink {
    let claims = JoinClaims {
        v: TOKEN_VERSION,
        room: room_id.to_owned(),
        title: title.to_owned(),
        role,
        name: display_name.to_owned(),
        iat,
        exp,
        jti: random_hex_id(),
    };
    sign_claims(signer, base_url, &claims)
}

/// Signs `claims` into a link (the invitation id is the `jti`).
pub fn sign_claims(signer: &TokenSigner, base_url: &str, claims: &JoinClaims) -> RoleLink {
    let token = signer.sign(claims);
    RoleLink {
        role: claims.role,
        display_name: claims.name.clone(),
        url: join_url(base_url, &token),
        token,
        invitation_id: claims.jti.clone(),
    }
}

/// `<base_url>/join#t=<token>`.
pub fn join_url(base_url: &str, token: &str) -> String {
    format!("{}/join#t={token}", base_url.trim_end_matches('/'))
}

/// Trims `title` and checks it is 1..=[`MAX_TITLE_CHARS`] characters with no control characters.
pub fn validate_title(title: &str) -> Result<String, LinkError> {
    let title = title.trim();
    if title.is_empty() {
        return Err(LinkError::InvalidTitle("empty"));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(LinkError::InvalidTitle("longer than 120 characters"));
    }
    if title.chars().any(char::is_control) {
        return Err(LinkError::InvalidTitle("contains control characters"));
    }
    Ok(title.to_owned())
}

/// 64 random bits as 16 lowercase hex characters (room ids and token ids).
pub fn random_hex_id() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

impl RoomLinks {
    /// Human-readable description for the terminal: title, expiry and one link per role.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "会議 / Conference: {}", self.title);
        let _ = writeln!(out, "Room id:           {}", self.room_id);
        let _ = writeln!(
            out,
            "有効開始 / Valid from:  {} JST ({} UTC)",
            format_unix(self.valid_from, 9 * 3600),
            format_unix(self.valid_from, 0)
        );
        let _ = writeln!(
            out,
            "有効期限 / Valid until: {} JST ({} UTC)",
            format_unix(self.expires_at, 9 * 3600),
            format_unix(self.expires_at, 0)
        );
        for link in &self.links {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "  {} ({}, invitation {}):",
                link.display_name, link.role, link.invitation_id
            );
            let _ = writeln!(out, "    {}", link.url);
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "各リンクは参加資格そのものです。本人にだけ安全な方法で渡してください。\n\
             Each link is a credential: send it only to its intended participant."
        );
        out
    }
}

/// Formats unix seconds as `YYYY-MM-DD HH:MM` at a fixed UTC offset, without a date library.
fn format_unix(secs: u64, offset_secs: u64) -> String {
    let t = secs.saturating_add(offset_secs);
    let days = (t / 86_400) as i64;
    let (hh, mm) = ((t % 86_400) / 3600, (t % 3600) / 60);
    // Civil-from-days (Howard Hinnant's algorithm), valid for all dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn signed_links_carry_the_claims_in_the_fragment() {
        let signer = TokenSigner::from_bytes(&[3; 32]);
        let link = sign_link(
            &signer,
            "https://conf.example.jp/",
            "0123456789abcdef",
            "退院前カンファレンス",
            Role::CareManager,
            "ケアマネジャー",
            NOW,
            NOW + 3600,
        );
        assert_eq!(
            link.url,
            format!("https://conf.example.jp/join#t={}", link.token)
        );
        let claims = signer.verifier().verify(&link.token, NOW).unwrap();
        assert_eq!(claims.room, "0123456789abcdef");
        assert_eq!(claims.role, Role::CareManager);
        assert_eq!(claims.name, "ケアマネジャー");
        assert_eq!((claims.iat, claims.exp), (NOW, NOW + 3600));
        assert_eq!(claims.jti, link.invitation_id);
        assert_eq!(claims.jti.len(), 16);
        let other = sign_link(
            &signer,
            "https://x",
            "r",
            "t",
            Role::Host,
            "n",
            NOW,
            NOW + 1,
        );
        assert_ne!(other.invitation_id, link.invitation_id);
    }

    #[test]
    fn titles_are_validated() {
        assert!(validate_title("").is_err());
        assert!(validate_title("   ").is_err());
        assert!(validate_title("a\u{0}b").is_err());
        assert!(validate_title("line\nbreak").is_err());
        assert_eq!(
            validate_title(&"あ".repeat(120)).unwrap().chars().count(),
            120
        );
        assert!(validate_title(&"あ".repeat(121)).is_err());
        assert_eq!(validate_title(""), Err(LinkError::InvalidTitle("empty")));
        assert_eq!(validate_title("  退院前 ").unwrap(), "退院前");
    }

    #[test]
    fn json_and_text_forms() {
        let signer = TokenSigner::from_bytes(&[3; 32]);
        let exp = NOW + 86_400;
        let links = DEFAULT_ROLES
            .iter()
            .map(|&(role, name)| sign_link(&signer, "https://h:1", "r1", "t", role, name, NOW, exp))
            .collect();
        let room = RoomLinks {
            room_id: "r1".into(),
            title: "デモ会議 (demo)".into(),
            valid_from: NOW,
            expires_at: exp,
            links,
        };
        let json = serde_json::to_value(&room).unwrap();
        assert_eq!(json["links"][0]["role"], "host");
        assert_eq!(json["links"][1]["role"], "care_manager");
        assert_eq!(json["links"][2]["display_name"], "認定調査員");
        assert_eq!(
            json["links"][2]["invitation_id"],
            room.links[2].invitation_id
        );
        assert_eq!(json["expires_at"], exp);
        let text = room.to_text();
        assert!(text.contains("デモ会議 (demo)"));
        for link in &room.links {
            assert!(text.contains(&link.url));
            assert!(text.contains(&link.invitation_id));
        }
        // 1_700_086_400 = 2023-11-15 22:13:20 UTC.
        assert!(
            text.contains("2023-11-16 07:13 JST (2023-11-15 22:13 UTC)"),
            "{text}"
        );
    }

    #[test]
    fn date_formatting() {
        assert_eq!(format_unix(0, 0), "1970-01-01 00:00");
        assert_eq!(format_unix(951_782_400, 0), "2000-02-29 00:00");
        assert_eq!(format_unix(4_102_444_799, 0), "2099-12-31 23:59");
    }
}
