//! Conference creation: a fresh room id and one signed join link per role.
//!
//! A room exists only in its tokens until someone joins with one; creating links needs the
//! signing key, not a running server.

use std::fmt::Write as _;
use std::time::Duration;

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
}

/// Why a conference could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The title is empty, too long or contains control characters.
    #[error("invalid conference title: {0}")]
    InvalidTitle(&'static str),
}

/// Creates a conference titled `title` with one link per [`DEFAULT_ROLES`] entry, valid from
/// `now` (unix seconds) for `valid_for`.
pub fn create_room(
    signer: &TokenSigner,
    base_url: &str,
    title: &str,
    valid_for: Duration,
    now: u64,
) -> Result<RoomLinks, LinkError> {
    let title = validate_title(title)?;
    let room_id = random_hex_id();
    let exp = now.saturating_add(valid_for.as_secs());
    let links = DEFAULT_ROLES
        .iter()
        .map(|&(role, name)| sign_link(signer, base_url, &room_id, &title, role, name, now, exp))
        .collect();
    Ok(RoomLinks {
        room_id,
        title,
        expires_at: exp,
        links,
    })
}

/// Signs one join link. Exposed so tests and tools can mint links for other roles, names or
/// expiry times (e.g. already-expired ones).
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
    let token = signer.sign(&claims);
    RoleLink {
        role,
        display_name: display_name.to_owned(),
        url: join_url(base_url, &token),
        token,
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
            "有効期限 / Valid until: {} JST ({} UTC)",
            format_unix(self.expires_at, 9 * 3600),
            format_unix(self.expires_at, 0)
        );
        for link in &self.links {
            let _ = writeln!(out);
            let _ = writeln!(out, "  {} ({}):", link.display_name, link.role);
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
    fn creates_one_verifiable_link_per_default_role() {
        let signer = TokenSigner::from_bytes(&[3; 32]);
        let room = create_room(
            &signer,
            "https://conf.example.jp/",
            "  退院前カンファレンス ",
            Duration::from_secs(3600),
            NOW,
        )
        .unwrap();
        assert_eq!(room.title, "退院前カンファレンス");
        assert_eq!(room.room_id.len(), 16);
        assert!(room.room_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(room.expires_at, NOW + 3600);
        let roles: Vec<_> = room
            .links
            .iter()
            .map(|l| (l.role, l.display_name.as_str()))
            .collect();
        assert_eq!(roles, DEFAULT_ROLES.to_vec());
        let mut jtis = Vec::new();
        for link in &room.links {
            assert_eq!(
                link.url,
                format!("https://conf.example.jp/join#t={}", link.token)
            );
            let claims = signer.verifier().verify(&link.token, NOW).unwrap();
            assert_eq!(claims.room, room.room_id);
            assert_eq!(claims.title, room.title);
            assert_eq!(claims.role, link.role);
            assert_eq!(claims.name, link.display_name);
            assert_eq!((claims.iat, claims.exp), (NOW, NOW + 3600));
            jtis.push(claims.jti);
        }
        jtis.dedup();
        assert_eq!(jtis.len(), 3, "token ids must differ");
        let other = create_room(&signer, "https://x", "t", Duration::from_secs(1), NOW).unwrap();
        assert_ne!(other.room_id, room.room_id);
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
        let signer = TokenSigner::from_bytes(&[3; 32]);
        assert_eq!(
            create_room(&signer, "https://x", "", Duration::from_secs(1), NOW),
            Err(LinkError::InvalidTitle("empty"))
        );
    }

    #[test]
    fn json_and_text_forms() {
        let signer = TokenSigner::from_bytes(&[3; 32]);
        let room = create_room(
            &signer,
            "https://h:1",
            "デモ会議 (demo)",
            Duration::from_secs(86_400),
            NOW,
        )
        .unwrap();
        let json = serde_json::to_value(&room).unwrap();
        assert_eq!(json["links"][0]["role"], "host");
        assert_eq!(json["links"][1]["role"], "care_manager");
        assert_eq!(json["links"][2]["display_name"], "認定調査員");
        let text = room.to_text();
        assert!(text.contains("デモ会議 (demo)"));
        for link in &room.links {
            assert!(text.contains(&link.url));
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
