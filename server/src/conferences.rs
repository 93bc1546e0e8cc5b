//! Conferences and their invitations, as recorded in the database.
//!
//! Every join link is an invitation: a database row whose id is the token's `jti`. The
//! signed token proves the server issued it; the row is what staff can revoke, what ties
//! the link to its conference's time window, and what binds it to the first device that
//! used it. [`check_invitation`] is the join-time check.
//!
//! Invitation windows run from `security.invitation_early_minutes` before the scheduled time
//! to `security.invitation_late_hours` after it. The token's `exp` is the end of the window;
//! the start is kept only in the row (the token format has no "not before").

use rusqlite::{params, Connection, OptionalExtension as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use wardlink_signaling::role::Role;
use wardlink_signaling::token::{JoinClaims, TokenSigner, TOKEN_VERSION};
use wardlink_signaling::ErrorCode;

use crate::config::Config;
use crate::links::{random_hex_id, sign_claims, validate_title, LinkError, RoleLink, RoomLinks};
use crate::ratelimit::minutes_ms;

/// Most invitations one conference may be created with.
pub const MAX_INVITATIONS: usize = 32;
/// Longest device secret considered, in bytes; longer ones are treated as absent.
pub const MAX_DEVICE_SECRET_BYTES: usize = 256;
/// Furthest ahead a conference may be scheduled.
pub const MAX_SCHEDULE_AHEAD_MS: i64 = 366 * 24 * 3_600_000;

/// Title words that suggest a person's name (Japanese honorifics, or "patient"): staff are
/// asked not to put patient names in titles, which travel in every link.
const NAME_HINTS: [&str; 7] = ["様", "さん", "氏", "殿", "ちゃん", "くん", "patient"];

/// When invitations work, relative to the scheduled time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationWindow {
    /// Links work from this long before the scheduled time.
    pub early_ms: i64,
    /// Links stop working this long after the scheduled time.
    pub late_ms: i64,
}

impl InvitationWindow {
    /// The window configured in `config.security`.
    pub fn from_config(config: &Config) -> InvitationWindow {
        InvitationWindow {
            early_ms: minutes_ms(config.security.invitation_early_minutes),
            late_ms: minutes_ms(config.security.invitation_late_hours.saturating_mul(60)),
        }
    }

    /// `(not_before_ms, expires_ms)` for a conference scheduled at `scheduled_ms`.
    pub fn around(&self, scheduled_ms: i64) -> (i64, i64) {
        (
            scheduled_ms.saturating_sub(self.early_ms),
            scheduled_ms.saturating_add(self.late_ms),
        )
    }
}

/// One invitation to issue: who it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationSpec {
    /// Role the link grants.
    pub role: Role,
    /// Suggested display name.
    pub display_name: String,
}

/// Everything needed to create a conference.
#[derive(Debug, Clone)]
pub struct NewConference<'a> {
    /// Title shown to participants (validated here).
    pub title: &'a str,
    /// Scheduled start, ms since the epoch.
    pub scheduled_ms: i64,
    /// Links work from this time.
    pub not_before_ms: i64,
    /// Links stop working at this time (the tokens' `exp`).
    pub expires_ms: i64,
    /// The staff account creating it (`None` from the command line).
    pub created_by: Option<i64>,
    /// Invitations, in order; the first is listed first in the result.
    pub invitations: &'a [InvitationSpec],
}

/// Why a conference or invitation could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ConferenceError {
    /// The title is empty, too long or contains control characters.
    #[error(transparent)]
    Title(#[from] LinkError),
    /// An invitation's display name is not acceptable.
    #[error("invalid display name for a {role} invitation: {reason}")]
    DisplayName {
        /// The invitation's role.
        role: Role,
        /// What is wrong.
        reason: &'static str,
    },
    /// No invitations, or too many.
    #[error("a conference needs 1 to {MAX_INVITATIONS} invitations")]
    InvitationCount,
    /// The window is empty or already over, or the schedule is too far ahead.
    #[error("invalid schedule: {0}")]
    Schedule(&'static str),
    /// No such conference.
    #[error("no such conference")]
    NotFound,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
}

/// Records a conference and its invitations and signs one link per invitation.
pub fn create_conference(
    conn: &Connection,
    signer: &TokenSigner,
    base_url: &str,
    new: &NewConference<'_>,
    now_ms: i64,
) -> Result<RoomLinks, ConferenceError> {
    let title = validate_title(new.title)?;
    if new.invitations.is_empty() || new.invitations.len() > MAX_INVITATIONS {
        return Err(ConferenceError::InvitationCount);
    }
    if new.expires_ms <= new.not_before_ms {
        return Err(ConferenceError::Schedule("the validity window is empty"));
    }
    if new.expires_ms <= now_ms {
        return Err(ConferenceError::Schedule(
            "the links would already have expired",
        ));
    }
    if new.scheduled_ms > now_ms.saturating_add(MAX_SCHEDULE_AHEAD_MS) {
        return Err(ConferenceError::Schedule(
            "scheduled more than a year ahead",
        ));
    }
    let mut specs = Vec::with_capacity(new.invitations.len());
    for spec in new.invitations {
        let name = crate::accounts::validate_display_name(&spec.display_name).map_err(|e| {
            ConferenceError::DisplayName {
                role: spec.role,
                reason: match e {
                    crate::accounts::AccountError::InvalidDisplayName(r) => r,
                    _ => "invalid",
                },
            }
        })?;
        specs.push((spec.role, name));
    }

    let id = random_hex_id();
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO conferences (id, title, scheduled_ms, created_by, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, title, new.scheduled_ms, new.created_by, now_ms],
    )?;
    let mut links = Vec::with_capacity(specs.len());
    for (role, name) in specs {
        links.push(insert_invitation(
            &tx,
            signer,
            base_url,
            &id,
            &title,
            role,
            &name,
            new.not_before_ms,
            new.expires_ms,
            now_ms,
        )?);
    }
    tx.commit()?;
    Ok(RoomLinks {
        room_id: id,
        title,
        valid_from: secs(new.not_before_ms),
        expires_at: secs(new.expires_ms),
        links,
    })
}

/// The invitations a conference created from the command line (or the demo) gets:
/// [`crate::links::DEFAULT_ROLES`].
pub fn default_invitations() -> Vec<InvitationSpec> {
    crate::links::DEFAULT_ROLES
        .iter()
        .map(|&(role, name)| InvitationSpec {
            role,
            display_name: name.to_owned(),
        })
        .collect()
}

/// Records `conference_created` and one `invitation_issued` per link of `room` (ids and
/// roles only: never the title, names or tokens).
pub fn audit_created(
    audit: &crate::audit::Audit,
    actor: &str,
    peer: Option<std::net::IpAddr>,
    room: &RoomLinks,
    scheduled_ms: i64,
) -> anyhow::Result<()> {
    let roles: Vec<&str> = room.links.iter().map(|l| l.role.as_str()).collect();
    audit.record(crate::audit::AuditEvent {
        actor: actor.to_owned(),
        action: "conference_created",
        conference: Some(room.room_id.clone()),
        peer,
        detail: serde_json::json!({
            "scheduled_at": format_rfc3339(scheduled_ms),
            "roles": roles,
        }),
    })?;
    for link in &room.links {
        audit_issued(audit, actor, peer, &room.room_id, link)?;
    }
    Ok(())
}

/// Records `invitation_issued` for one link.
pub fn audit_issued(
    audit: &crate::audit::Audit,
    actor: &str,
    peer: Option<std::net::IpAddr>,
    conference_id: &str,
    link: &RoleLink,
) -> anyhow::Result<()> {
    audit.record(crate::audit::AuditEvent {
        actor: actor.to_owned(),
        action: "invitation_issued",
        conference: Some(conference_id.to_owned()),
        peer,
        detail: serde_json::json!({
            "invitation_id": link.invitation_id,
            "role": link.role.as_str(),
        }),
    })
}

/// Issues one more invitation to an existing conference (any window, even one already
/// over: tests use that for expired links).
#[allow(clippy::too_many_arguments)]
pub fn issue_invitation(
    conn: &Connection,
    signer: &TokenSigner,
    base_url: &str,
    conference_id: &str,
    role: Role,
    display_name: &str,
    not_before_ms: i64,
    expires_ms: i64,
    now_ms: i64,
) -> Result<RoleLink, ConferenceError> {
    let title: String = conn
        .query_row(
            "SELECT title FROM conferences WHERE id = ?1",
            [conference_id],
            |r| r.get(0),
        )
        .optional()?
        .ok_or(ConferenceError::NotFound)?;
    let name = crate::accounts::validate_display_name(display_name).map_err(|_| {
        ConferenceError::DisplayName {
            role,
            reason: "must be 1-64 characters without control characters",
        }
    })?;
    insert_invitation(
        conn,
        signer,
        base_url,
        conference_id,
        &title,
        role,
        &name,
        not_before_ms,
        expires_ms,
        now_ms,
    )
}

#[allow(clippy::too_many_arguments)]
fn insert_invitation(
    conn: &Connection,
    signer: &TokenSigner,
    base_url: &str,
    conference_id: &str,
    title: &str,
    role: Role,
    display_name: &str,
    not_before_ms: i64,
    expires_ms: i64,
    now_ms: i64,
) -> Result<RoleLink, ConferenceError> {
    let claims = JoinClaims {
        v: TOKEN_VERSION,
        room: conference_id.to_owned(),
        title: title.to_owned(),
        role,
        name: display_name.to_owned(),
        iat: secs(now_ms),
        exp: secs(expires_ms),
        jti: random_hex_id(),
    };
    conn.execute(
        "INSERT INTO invitations (id, conference_id, role, display_name, not_before_ms,
                                  expires_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            claims.jti,
            conference_id,
            role.as_str(),
            display_name,
            not_before_ms,
            expires_ms,
            now_ms
        ],
    )?;
    Ok(sign_claims(signer, base_url, &claims))
}

fn secs(ms: i64) -> u64 {
    u64::try_from(ms / 1000).unwrap_or(0)
}

/// Warnings about a title that never block creation: `title_may_contain_name` when it holds
/// an honorific or "patient", which usually means a patient's name is in it.
pub fn title_warnings(title: &str) -> Vec<&'static str> {
    let lower = title.to_lowercase();
    if NAME_HINTS.iter().any(|h| lower.contains(h)) {
        vec!["title_may_contain_name"]
    } else {
        Vec::new()
    }
}

/// The outcome of a successful join-time check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationCheck {
    /// This is the first time the invitation is used.
    pub first_use: bool,
    /// The invitation was first used from another device, or the client presented no device
    /// secret: the participant should wait for admission whatever their role.
    pub second_device: bool,
}

/// Why an invitation does not admit its holder now.
#[derive(Debug, thiserror::Error)]
pub enum InvitationError {
    /// No such invitation, or it does not match the token's conference or role.
    #[error("this link is not valid")]
    Unknown,
    /// Staff revoked the invitation.
    #[error("this invitation was revoked")]
    Revoked,
    /// The conference has ended.
    #[error("this conference has ended")]
    Ended,
    /// The window has not started yet.
    #[error("this link works from {}", format_rfc3339(*.starts_ms))]
    NotYetValid {
        /// Start of the window, ms since the epoch.
        starts_ms: i64,
    },
    /// The window is over.
    #[error("this link has expired")]
    Expired,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
}

impl InvitationError {
    /// The wire error code for the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            InvitationError::Unknown => ErrorCode::InvalidToken,
            InvitationError::Revoked => ErrorCode::InvitationRevoked,
            InvitationError::Ended => ErrorCode::ConferenceEnded,
            InvitationError::NotYetValid { .. } => ErrorCode::NotYetValid,
            InvitationError::Expired => ErrorCode::TokenExpired,
            InvitationError::Database(_) => ErrorCode::Internal,
        }
    }
}

/// SHA-256 (hex) of a device secret: the only form in which it is stored.
pub fn device_hash(secret: &str) -> String {
    crate::accounts::hex(&Sha256::digest(secret.as_bytes()))
}

/// The join-time check of a verified token's invitation at `now_ms`. `device` is the
/// client's per-device secret, if it sent one.
///
/// The first use with a device secret binds the invitation to that device. Later uses from
/// the same device pass normally; uses from any other device, or without a secret, pass with
/// `second_device: true` (a forwarded link should not let a stranger straight in).
pub fn check_invitation(
    conn: &Connection,
    claims: &JoinClaims,
    device: Option<&str>,
    now_ms: i64,
) -> Result<InvitationCheck, InvitationError> {
    type Row = (
        String,
        String,
        i64,
        i64,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = conn
        .query_row(
            "SELECT i.conference_id, i.role, i.not_before_ms, i.expires_ms, i.revoked_ms,
                    i.device_hash, i.first_used_ms, c.ended_ms
             FROM invitations i JOIN conferences c ON c.id = i.conference_id
             WHERE i.id = ?1",
            [&claims.jti],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .optional()?;
    let Some((conference, role, not_before, expires, revoked, bound, first_used, ended)) = row
    else {
        return Err(InvitationError::Unknown);
    };
    if conference != claims.room || role != claims.role.as_str() {
        return Err(InvitationError::Unknown);
    }
    if revoked.is_some() {
        return Err(InvitationError::Revoked);
    }
    if ended.is_some() {
        return Err(InvitationError::Ended);
    }
    if now_ms < not_before {
        return Err(InvitationError::NotYetValid {
            starts_ms: not_before,
        });
    }
    if now_ms >= expires {
        return Err(InvitationError::Expired);
    }

    let first_use = first_used.is_none();
    let device = device
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.len() <= MAX_DEVICE_SECRET_BYTES)
        .map(device_hash);
    let Some(device) = device else {
        if first_use {
            conn.execute(
                "UPDATE invitations SET first_used_ms = ?2 WHERE id = ?1 AND first_used_ms IS NULL",
                params![claims.jti, now_ms],
            )?;
        }
        return Ok(InvitationCheck {
            first_use,
            second_device: true,
        });
    };
    if let Some(bound) = bound {
        return Ok(InvitationCheck {
            first_use,
            second_device: bound != device,
        });
    }
    // Bind to this device, unless a concurrent join bound it first.
    let bound_now = conn.execute(
        "UPDATE invitations SET device_hash = ?2, first_used_ms = coalesce(first_used_ms, ?3)
         WHERE id = ?1 AND device_hash IS NULL",
        params![claims.jti, device, now_ms],
    )?;
    if bound_now == 1 {
        return Ok(InvitationCheck {
            first_use,
            second_device: false,
        });
    }
    let winner: Option<String> = conn.query_row(
        "SELECT device_hash FROM invitations WHERE id = ?1",
        [&claims.jti],
        |r| r.get(0),
    )?;
    Ok(InvitationCheck {
        first_use,
        second_device: winner.as_deref() != Some(device.as_str()),
    })
}

/// Marks a conference ended at `now_ms`: its links stop working. Returns false if it was
/// already ended or does not exist.
pub fn mark_ended(
    conn: &Connection,
    conference_id: &str,
    now_ms: i64,
) -> Result<bool, rusqlite::Error> {
    Ok(conn.execute(
        "UPDATE conferences SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL",
        params![conference_id, now_ms],
    )? == 1)
}

/// An invitation as staff see it (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvitationInfo {
    /// Invitation id (the token's `jti`).
    pub id: String,
    /// The conference it belongs to.
    pub conference_id: String,
    /// Role it grants.
    pub role: Role,
    /// Suggested display name.
    pub display_name: String,
    /// Revoked, ms since the epoch.
    pub revoked_ms: Option<i64>,
    /// First used, ms since the epoch.
    pub first_used_ms: Option<i64>,
    /// The account that created the conference.
    #[serde(skip)]
    pub created_by: Option<i64>,
}

/// The invitation `id`, if any.
pub fn find_invitation(
    conn: &Connection,
    id: &str,
) -> Result<Option<InvitationInfo>, rusqlite::Error> {
    conn.query_row(
        "SELECT i.id, i.conference_id, i.role, i.display_name, i.revoked_ms, i.first_used_ms,
                c.created_by
         FROM invitations i JOIN conferences c ON c.id = i.conference_id WHERE i.id = ?1",
        [id],
        invitation_from_row,
    )
    .optional()
}

fn invitation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvitationInfo> {
    let role: String = r.get(2)?;
    Ok(InvitationInfo {
        id: r.get(0)?,
        conference_id: r.get(1)?,
        // Rows are only written with valid roles; a hand-edited one shows as family (the
        // least privileged role).
        role: role.parse().unwrap_or(Role::Family),
        display_name: r.get(3)?,
        revoked_ms: r.get(4)?,
        first_used_ms: r.get(5)?,
        created_by: r.get(6)?,
    })
}

/// Why an invitation could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No such invitation.
    #[error("no such invitation")]
    NotFound,
    /// It was revoked before.
    #[error("the invitation was already revoked")]
    AlreadyRevoked,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
}

/// Revokes invitation `id` at `now_ms`: its link stops working at once (a participant who
/// joined with it is not removed by this call).
pub fn revoke_invitation(
    conn: &Connection,
    id: &str,
    now_ms: i64,
) -> Result<InvitationInfo, RevokeError> {
    let changed = conn.execute(
        "UPDATE invitations SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
        params![id, now_ms],
    )?;
    let info = find_invitation(conn, id)?.ok_or(RevokeError::NotFound)?;
    if changed == 0 {
        return Err(RevokeError::AlreadyRevoked);
    }
    Ok(info)
}

/// A conference as listed to staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConferenceSummary {
    /// Conference id.
    pub conference_id: String,
    /// Title.
    pub title: String,
    /// Scheduled start, RFC 3339 (UTC).
    pub scheduled_at: String,
    /// Scheduled start, ms since the epoch.
    pub scheduled_ms: i64,
    /// When the last invitation stops working, RFC 3339 (UTC).
    pub expires_at: String,
    /// Invitations (without tokens: links are shown only once, at creation).
    pub invitations: Vec<InvitationInfo>,
}

/// Conferences created by `user_id` that have not ended and whose links still work at
/// `now_ms`, soonest first.
pub fn list_upcoming(
    conn: &Connection,
    user_id: i64,
    now_ms: i64,
) -> Result<Vec<ConferenceSummary>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT c.id, c.title, c.scheduled_ms, max(i.expires_ms)
         FROM conferences c JOIN invitations i ON i.conference_id = c.id
         WHERE c.created_by = ?1 AND c.ended_ms IS NULL
         GROUP BY c.id HAVING max(i.expires_ms) > ?2
         ORDER BY c.scheduled_ms, c.id",
    )?;
    let rows = stmt
        .query_map(params![user_id, now_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut inv = conn.prepare(
        "SELECT i.id, i.conference_id, i.role, i.display_name, i.revoked_ms, i.first_used_ms,
                c.created_by
         FROM invitations i JOIN conferences c ON c.id = i.conference_id
         WHERE i.conference_id = ?1 ORDER BY i.created_ms, i.rowid",
    )?;
    rows.into_iter()
        .map(|(id, title, scheduled_ms, expires_ms)| {
            let invitations = inv
                .query_map([&id], invitation_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ConferenceSummary {
                conference_id: id,
                title,
                scheduled_at: format_rfc3339(scheduled_ms),
                scheduled_ms,
                expires_at: format_rfc3339(expires_ms),
                invitations,
            })
        })
        .collect()
}

/// Parses an RFC 3339 timestamp (`2025-06-01T14:00:00+09:00`) to ms since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats ms since the epoch as RFC 3339 in UTC (`2025-06-01T05:00:00Z`).
pub fn format_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::DEFAULT_ROLES;
    use crate::store::Store;

    const NOW: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    fn signer() -> TokenSigner {
        TokenSigner::from_bytes(&[3; 32])
    }

    fn default_specs() -> Vec<InvitationSpec> {
        DEFAULT_ROLES
            .iter()
            .map(|&(role, name)| InvitationSpec {
                role,
                display_name: name.into(),
            })
            .collect()
    }

    fn create(conn: &Connection, scheduled_ms: i64) -> RoomLinks {
        let window = InvitationWindow::from_config(&Config::default());
        let (not_before_ms, expires_ms) = window.around(scheduled_ms);
        let specs = default_specs();
        create_conference(
            conn,
            &signer(),
            "https://conf.example.jp/",
            &NewConference {
                title: "  退院前カンファレンス ",
                scheduled_ms,
                not_before_ms,
                expires_ms,
                created_by: None,
                invitations: &specs,
            },
            NOW,
        )
        .unwrap()
    }

    fn claims_of(link: &RoleLink) -> JoinClaims {
        signer().verifier().verify(&link.token, secs(NOW)).unwrap()
    }

    #[test]
    fn creates_rows_and_one_verifiable_link_per_invitation() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let room = create(&conn, NOW + 2 * HOUR);
        assert_eq!(room.title, "退院前カンファレンス");
        assert_eq!(room.room_id.len(), 16);
        // Default window: an hour early, four hours late.
        assert_eq!(room.valid_from, secs(NOW + HOUR));
        assert_eq!(room.expires_at, secs(NOW + 6 * HOUR));
        let roles: Vec<_> = room
            .links
            .iter()
            .map(|l| (l.role, l.display_name.as_str()))
            .collect();
        assert_eq!(roles, DEFAULT_ROLES.to_vec());
        for link in &room.links {
            assert_eq!(
                link.url,
                format!("https://conf.example.jp/join#t={}", link.token)
            );
            let claims = claims_of(link);
            assert_eq!(claims.room, room.room_id);
            assert_eq!(claims.title, room.title);
            assert_eq!(claims.jti, link.invitation_id);
            assert_eq!((claims.iat, claims.exp), (secs(NOW), room.expires_at));
            let info = find_invitation(&conn, &link.invitation_id)
                .unwrap()
                .unwrap();
            assert_eq!(
                (info.role, info.conference_id.as_str()),
                (link.role, room.room_id.as_str())
            );
        }
        let n: i64 = conn
            .query_row("SELECT count(*) FROM invitations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn creation_is_validated_and_atomic() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let specs = default_specs();
        let base = NewConference {
            title: "t",
            scheduled_ms: NOW,
            not_before_ms: NOW - HOUR,
            expires_ms: NOW + HOUR,
            created_by: None,
            invitations: &specs,
        };
        let s = signer();
        let try_create = |n: &NewConference<'_>| create_conference(&conn, &s, "https://x", n, NOW);
        assert!(matches!(
            try_create(&NewConference {
                title: " ",
                ..base.clone()
            }),
            Err(ConferenceError::Title(_))
        ));
        assert!(matches!(
            try_create(&NewConference {
                invitations: &[],
                ..base.clone()
            }),
            Err(ConferenceError::InvitationCount)
        ));
        assert!(matches!(
            try_create(&NewConference {
                expires_ms: NOW,
                ..base.clone()
            }),
            Err(ConferenceError::Schedule(_))
        ));
        assert!(matches!(
            try_create(&NewConference {
                scheduled_ms: NOW + 400 * 24 * HOUR,
                expires_ms: NOW + 401 * 24 * HOUR,
                ..base.clone()
            }),
            Err(ConferenceError::Schedule(_))
        ));
        let bad_name = [
            InvitationSpec {
                role: Role::Host,
                display_name: "ok".into(),
            },
            InvitationSpec {
                role: Role::Family,
                display_name: "a\u{7}".into(),
            },
        ];
        assert!(matches!(
            try_create(&NewConference {
                invitations: &bad_name,
                ..base.clone()
            }),
            Err(ConferenceError::DisplayName {
                role: Role::Family,
                ..
            })
        ));
        let n: i64 = conn
            .query_row("SELECT count(*) FROM conferences", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "nothing is written for a refused conference");
        assert!(try_create(&base).is_ok());
    }

    #[test]
    fn invitation_window_revocation_and_end() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let scheduled = NOW + 2 * HOUR;
        let room = create(&conn, scheduled);
        let host = claims_of(&room.links[0]);
        let guest = claims_of(&room.links[1]);

        // Before the window (more than an hour early).
        let err = check_invitation(&conn, &host, Some("dev"), scheduled - HOUR - 1).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotYetValid);
        assert!(err.to_string().contains("2023-11-14T"), "{err}");
        // In the window.
        assert!(check_invitation(&conn, &host, Some("dev"), scheduled - HOUR).is_ok());
        assert!(check_invitation(&conn, &host, Some("dev"), scheduled + 4 * HOUR - 1).is_ok());
        // After it.
        let err = check_invitation(&conn, &host, Some("dev"), scheduled + 4 * HOUR).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TokenExpired);

        // Revoking one invitation leaves the others working.
        let info = revoke_invitation(&conn, &guest.jti, scheduled).unwrap();
        assert_eq!(info.role, Role::CareManager);
        assert_eq!(info.revoked_ms, Some(scheduled));
        let err = check_invitation(&conn, &guest, Some("g"), scheduled).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvitationRevoked);
        assert!(matches!(
            revoke_invitation(&conn, &guest.jti, scheduled),
            Err(RevokeError::AlreadyRevoked)
        ));
        assert!(matches!(
            revoke_invitation(&conn, "nope", scheduled),
            Err(RevokeError::NotFound)
        ));
        assert!(check_invitation(&conn, &host, Some("dev"), scheduled).is_ok());

        // Ending the conference ends every link.
        assert!(mark_ended(&conn, &room.room_id, scheduled).unwrap());
        assert!(!mark_ended(&conn, &room.room_id, scheduled).unwrap());
        let err = check_invitation(&conn, &host, Some("dev"), scheduled).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ConferenceEnded);
    }

    #[test]
    fn tokens_without_a_matching_invitation_are_invalid() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let room = create(&conn, NOW);
        let other = create(&conn, NOW);
        let mut claims = claims_of(&room.links[1]);
        claims.jti = "0000000000000000".into();
        assert_eq!(
            check_invitation(&conn, &claims, None, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidToken
        );
        // An invitation of another conference (a signed token for room A with B's jti can
        // only come from a bug, but must not let anyone in).
        let mut claims = claims_of(&room.links[1]);
        claims.jti = other.links[1].invitation_id.clone();
        assert_eq!(
            check_invitation(&conn, &claims, None, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidToken
        );
        // A role that differs from the row's.
        let mut claims = claims_of(&room.links[1]);
        claims.role = Role::Host;
        assert_eq!(
            check_invitation(&conn, &claims, None, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidToken
        );
        // A link signed without a row (links::sign_link) is refused.
        let stray = crate::links::sign_link(
            &signer(),
            "https://x",
            &room.room_id,
            &room.title,
            Role::Host,
            "n",
            secs(NOW),
            secs(NOW) + 60,
        );
        let stray = signer().verifier().verify(&stray.token, secs(NOW)).unwrap();
        assert!(matches!(
            check_invitation(&conn, &stray, None, NOW),
            Err(InvitationError::Unknown)
        ));
    }

    #[test]
    fn first_device_binds_the_invitation() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let room = create(&conn, NOW);
        let claims = claims_of(&room.links[1]);
        let first = check_invitation(&conn, &claims, Some("device-a-secret"), NOW).unwrap();
        assert_eq!(
            first,
            InvitationCheck {
                first_use: true,
                second_device: false
            }
        );
        // Only the hash is stored.
        let stored: String = conn
            .query_row(
                "SELECT device_hash FROM invitations WHERE id = ?1",
                [&claims.jti],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, device_hash("device-a-secret"));
        assert!(!stored.contains("device-a"));
        // Rejoining from the same device (e.g. after a reload).
        let again = check_invitation(&conn, &claims, Some("device-a-secret"), NOW + 1).unwrap();
        assert_eq!(
            again,
            InvitationCheck {
                first_use: false,
                second_device: false
            }
        );
        // The link forwarded to another device, or a client that sends no secret.
        let other = check_invitation(&conn, &claims, Some("device-b-secret"), NOW + 2).unwrap();
        assert_eq!(
            other,
            InvitationCheck {
                first_use: false,
                second_device: true
            }
        );
        let none = check_invitation(&conn, &claims, None, NOW + 3).unwrap();
        assert_eq!(
            none,
            InvitationCheck {
                first_use: false,
                second_device: true
            }
        );
        let blank = check_invitation(&conn, &claims, Some("  "), NOW + 3).unwrap();
        assert!(blank.second_device);

        // First use without a secret: marked used, bound to nobody, later device binds.
        let claims = claims_of(&room.links[2]);
        let anon = check_invitation(&conn, &claims, None, NOW).unwrap();
        assert_eq!(
            anon,
            InvitationCheck {
                first_use: true,
                second_device: true
            }
        );
        let dev = check_invitation(&conn, &claims, Some("device-c"), NOW + 1).unwrap();
        assert_eq!(
            dev,
            InvitationCheck {
                first_use: false,
                second_device: false
            }
        );
        let first_used: i64 = conn
            .query_row(
                "SELECT first_used_ms FROM invitations WHERE id = ?1",
                [&claims.jti],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(first_used, NOW);
    }

    #[test]
    fn listing_shows_my_upcoming_conferences_only() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        let me = crate::accounts::insert_user(
            &conn,
            &crate::accounts::NewUser {
                username: "sato".into(),
                display_name: "佐藤".into(),
                profession: crate::accounts::Profession::Nurse,
                is_admin: false,
                password: String::new(),
            },
            "x",
            NOW,
        )
        .unwrap();
        let specs = default_specs();
        let mk = |scheduled_ms: i64, created_by: Option<i64>| {
            create_conference(
                &conn,
                &signer(),
                "https://x",
                &NewConference {
                    title: "t",
                    scheduled_ms,
                    not_before_ms: scheduled_ms - HOUR,
                    expires_ms: scheduled_ms + HOUR,
                    created_by,
                    invitations: &specs,
                },
                NOW,
            )
            .unwrap()
        };
        let later = mk(NOW + 5 * HOUR, Some(me.id));
        let sooner = mk(NOW + HOUR, Some(me.id));
        let _not_mine = mk(NOW + HOUR, None);
        let ended = mk(NOW + 2 * HOUR, Some(me.id));
        mark_ended(&conn, &ended.room_id, NOW).unwrap();
        let list = list_upcoming(&conn, me.id, NOW).unwrap();
        let ids: Vec<_> = list.iter().map(|c| c.conference_id.as_str()).collect();
        assert_eq!(ids, [sooner.room_id.as_str(), later.room_id.as_str()]);
        assert_eq!(list[0].invitations.len(), 3);
        assert_eq!(list[0].invitations[0].role, Role::Host);
        assert_eq!(list[0].scheduled_at, format_rfc3339(NOW + HOUR));
        // Once the window is over it is no longer upcoming.
        assert_eq!(
            list_upcoming(&conn, me.id, NOW + 2 * HOUR).unwrap().len(),
            1
        );
    }

    #[test]
    fn patient_name_warning() {
        for title in [
            "山田様 退院前カンファレンス",
            "田中さん 退院調整",
            "鈴木氏",
            "佐藤殿",
            "Discharge conference for patient Tanaka",
            "PATIENT review",
        ] {
            assert_eq!(title_warnings(title), ["title_may_contain_name"], "{title}");
        }
        for title in [
            "退院前カンファレンス 3階東病棟",
            "Ward 3 discharge planning",
            "ID-2024-117",
        ] {
            assert!(title_warnings(title).is_empty(), "{title}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(NOW));
        assert_eq!(parse_rfc3339("2023-11-15T07:13:20+09:00"), Some(NOW));
        assert_eq!(
            parse_rfc3339("2023-11-15T07:13:20.5+09:00"),
            Some(NOW + 500)
        );
        assert_eq!(format_rfc3339(NOW + 500), "2023-11-14T22:13:20Z");
        for bad in [
            "",
            "2023-11-15",
            "2023-11-15 07:13",
            "tomorrow",
            "2023-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
