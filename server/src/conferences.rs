//! Conferences and invitations (shim with the agreed API; the accounts helper replaces it).

use rusqlite::Connection;
use wardlink_signaling::token::JoinClaims;
use wardlink_signaling::ErrorCode;

/// Outcome of a successful invitation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationCheck {
    /// This was the invitation's first use.
    pub first_use: bool,
    /// The invitation was first used from another device.
    pub second_device: bool,
}

/// Why an invitation cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InvitationError {
    /// Unknown invitation.
    #[error("unknown invitation")]
    Unknown,
}

impl InvitationError {
    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidToken
    }
}

/// Checks an invitation at join time.
pub fn check_invitation(
    conn: &Connection,
    claims: &JoinClaims,
    device: Option<&str>,
    now_ms: i64,
) -> Result<InvitationCheck, InvitationError> {
    let _ = (conn, claims, device, now_ms);
    Ok(InvitationCheck {
        first_use: false,
        second_device: false,
    })
}

/// Marks a conference ended.
pub fn mark_ended(conn: &Connection, conference_id: &str, now_ms: i64) -> anyhow::Result<()> {
    conn.execute(
        "UPDATE conferences SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL",
        rusqlite::params![conference_id, now_ms],
    )?;
    Ok(())
}
