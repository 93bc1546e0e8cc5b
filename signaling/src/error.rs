//! Stable error codes sent to clients in [`crate::protocol::ServerMessage::Error`].

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Clients and tests match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message was not valid JSON.
    MalformedJson,
    /// Valid JSON, but the `type` is unknown or a field is missing or of the wrong type.
    UnknownType,
    /// The message exceeded [`crate::protocol::MAX_MESSAGE_BYTES`].
    MessageTooLarge,
    /// The first message's protocol version is not supported.
    UnsupportedProtocol,
    /// The join token is malformed or its signature does not verify.
    InvalidToken,
    /// The join token has expired.
    TokenExpired,
    /// The conference in the token does not exist (or has ended).
    RoomNotFound,
    /// The conference is full.
    RoomFull,
    /// The SDP could not be parsed or negotiated.
    InvalidSdp,
    /// The message is not allowed in the current state (e.g. before `join`, or an answer with no offer).
    OutOfOrder,
    /// A field value is out of range (e.g. an empty display name).
    InvalidField,
    /// The role does not allow this action.
    Forbidden,
    /// Messages are arriving faster than allowed.
    RateLimited,
    /// The server failed internally; the conference is unaffected.
    Internal,
    /// The conference has ended; its links no longer work.
    ConferenceEnded,
    /// The invitation was revoked by staff.
    InvitationRevoked,
    /// The invitation's validity window (around the scheduled time) has not started yet.
    NotYetValid,
    /// The server is hosting as many conferences as it is configured for.
    TooManyConferences,
    /// The socket sent nothing for longer than the idle limit.
    IdleTimeout,
    /// The participant named in the message is not present (or not waiting).
    UnknownParticipant,
}

impl ErrorCode {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::InvalidSdp => "invalid_sdp",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::ConferenceEnded => "conference_ended",
            ErrorCode::InvitationRevoked => "invitation_revoked",
            ErrorCode::NotYetValid => "not_yet_valid",
            ErrorCode::TooManyConferences => "too_many_conferences",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::UnknownParticipant => "unknown_participant",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
