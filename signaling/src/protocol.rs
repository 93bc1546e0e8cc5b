//! The wire protocol: every JSON message that crosses the `/ws` WebSocket.
//!
//! Messages are JSON objects tagged by `"type"` (snake_case). The first client message
//! must be [`ClientMessage::Join`], carrying [`PROTOCOL_VERSION`]. See `signaling/PROTOCOL.md`
//! for the message-by-message description with examples.
//!
//! Two peer connections per participant keep renegotiation free of glare:
//! - the **publish** connection (browser → server): the client always offers, the server answers;
//! - the **subscribe** connection (server → browser): the server always offers, the client answers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::role::Role;

/// Protocol version carried in the first message. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest accepted WebSocket text message, in bytes. SDP offers with many codecs fit easily.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A participant identifier, unique within the server's lifetime (e.g. `"p7f3a..."`).
pub type ParticipantId = String;

/// Which of a participant's two peer connections a message concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcKind {
    /// Browser → server media; the client offers.
    Publish,
    /// Server → browser media; the server offers.
    Subscribe,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// Microphone (Opus).
    Audio,
    /// Camera (VP8 or H.264).
    Video,
    /// Screen share (a second video track; needs the publish-screen right).
    Screen,
}

/// One ICE candidate, shaped like the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` line; an empty string marks end-of-candidates.
    pub candidate: String,
    /// Media section id the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Media section index the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// ICE username fragment the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Messages sent by the browser (or a test client) to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message on every connection: protocol version and signed join token.
    Join {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The signed join token from the join link.
        token: String,
        /// Overrides the display name in the token (trimmed, 1..=64 chars).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_name: Option<String>,
        /// A random secret the browser keeps for this device (16..=128 chars). An
        /// invitation is bound to the first device that uses it; another device must be
        /// admitted by the host again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// SDP offer on the publish connection (first publish or renegotiation).
    PublishOffer {
        /// Offer SDP.
        sdp: String,
        /// The `a=mid` of the media section that carries a screen share, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        screen_mid: Option<String>,
    },
    /// Stop publishing: the server closes the publish connection and removes the tracks.
    Unpublish,
    /// SDP answer to the server's latest [`ServerMessage::SubscribeOffer`].
    SubscribeAnswer {
        /// Answer SDP.
        sdp: String,
        /// The `revision` of the offer this answers.
        revision: u32,
    },
    /// A trickled ICE candidate from the browser for one of its connections.
    IceCandidate {
        /// Which connection.
        pc: PcKind,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// Microphone or camera muted/unmuted (shown to others in the roster).
    Mute {
        /// Which device.
        kind: MediaKind,
        /// New state.
        muted: bool,
    },
    /// Let a waiting participant in (needs the admit right).
    Admit {
        /// Who.
        participant_id: ParticipantId,
    },
    /// Refuse a waiting participant (needs the admit right).
    Deny {
        /// Who.
        participant_id: ParticipantId,
    },
    /// Remove a participant from the conference (needs the remove right).
    Remove {
        /// Who.
        participant_id: ParticipantId,
    },
    /// Mute another participant's microphone, camera or screen (needs the mute-others
    /// right). The server stops forwarding it until that participant unmutes themself.
    MuteParticipant {
        /// Who.
        participant_id: ParticipantId,
        /// Which track.
        kind: MediaKind,
    },
    /// Pass host rights to a staff member (host only; never to a guest).
    TransferHost {
        /// The new host.
        participant_id: ParticipantId,
    },
    /// End the conference for everyone (needs the end right).
    EndConference,
    /// Keep-alive; answered with [`ServerMessage::Pong`].
    Ping,
    /// Leave the conference; the server answers [`ServerMessage::Bye`] and closes.
    Leave,
}

/// One participant as shown in the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// Participant id.
    pub id: ParticipantId,
    /// Display name.
    pub display_name: String,
    /// Role in this conference.
    pub role: Role,
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera muted.
    pub video_muted: bool,
    /// Media kinds currently being received from this participant.
    pub publishing: Vec<MediaKind>,
}

/// Describes one track in a subscribe offer, so the client can label tiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackDescription {
    /// Media section id (`a=mid`) in the subscribe offer.
    pub mid: String,
    /// The publishing participant (also the SDP stream id in `a=msid`).
    pub participant_id: ParticipantId,
    /// Audio or video.
    pub kind: MediaKind,
}

/// A participant in the waiting room, as shown to those who may admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingEntry {
    /// Participant id (use it in `admit` / `deny`).
    pub id: ParticipantId,
    /// Display name.
    pub display_name: String,
    /// Role from the invitation.
    pub role: Role,
    /// The invitation (token id) used to join.
    pub invitation: String,
    /// The invitation was first used from another device.
    pub second_device: bool,
}

/// Messages sent by the server to the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Join accepted.
    Joined {
        /// Always [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Your participant id.
        participant_id: ParticipantId,
        /// Conference id.
        room_id: String,
        /// Conference title.
        room_title: String,
        /// Your role.
        role: Role,
        /// Your display name.
        display_name: String,
        /// Everyone present, you included.
        roster: Vec<RosterEntry>,
    },
    /// You are in the waiting room until someone with the admit right lets you in; then
    /// [`ServerMessage::Joined`] follows. Nothing else (no roster, no media) arrives before.
    Waiting {
        /// Your participant id.
        participant_id: ParticipantId,
        /// Conference title.
        room_title: String,
        /// Your display name.
        display_name: String,
        /// Your role.
        role: Role,
    },
    /// Who is in the waiting room (sent to those who may admit, after every change).
    Lobby {
        /// Waiting participants, in arrival order.
        waiting: Vec<WaitingEntry>,
    },
    /// Someone with the mute right muted your track; the server stops forwarding it
    /// until you unmute.
    MutedBy {
        /// Which track.
        kind: MediaKind,
        /// Who muted it.
        by: ParticipantId,
    },
    /// Full roster after any change (join, leave, mute, publish).
    Roster {
        /// Everyone present. Shared: the room sends the same list to everyone, so a
        /// copy per recipient would make each change cost O(N²).
        participants: Arc<[RosterEntry]>,
    },
    /// Answer to a [`ClientMessage::PublishOffer`].
    PublishAnswer {
        /// Answer SDP.
        sdp: String,
    },
    /// Server offer on the subscribe connection; answer with [`ClientMessage::SubscribeAnswer`].
    SubscribeOffer {
        /// Offer SDP.
        sdp: String,
        /// Increases with each offer; echo it in the answer.
        revision: u32,
        /// Which participant and kind each media section carries.
        tracks: Vec<TrackDescription>,
    },
    /// A server ICE candidate (the server normally embeds its candidates in SDP).
    IceCandidate {
        /// Which connection.
        pc: PcKind,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// The connection did not come up in time (or failed): tear it down and start it again.
    Reconnect {
        /// Which connection to restart.
        pc: PcKind,
        /// Why, for logs.
        reason: String,
    },
    /// Answer to [`ClientMessage::Ping`].
    Pong,
    /// Something was wrong with a client message. `fatal` means the server closes the socket.
    Error {
        /// Stable machine-readable code, see [`crate::error::ErrorCode`].
        code: crate::error::ErrorCode,
        /// Human-readable explanation (English).
        message: String,
        /// Whether the server closes the connection after this message.
        fatal: bool,
    },
    /// The server ends the session. `reason` is one of `left` (you asked), `denied` (not
    /// admitted), `removed` (removed by the host), `ended` (the conference ended),
    /// `replaced` (you joined again elsewhere). Clients must not rejoin automatically after
    /// `denied`, `removed` or `ended`.
    Bye {
        /// Why.
        reason: String,
    },
}
