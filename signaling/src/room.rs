//! The room and participant state machine.
//!
//! A [`Room`] takes [`Input`]s (a verified join, a client message, a departure, an event
//! from the media plane) together with the current [`Instant`] and returns [`Output`]s
//! (messages to send to one participant, commands for the media plane, connection closes).
//! It owns no sockets and no clock, so every rule is tested by feeding inputs and checking
//! outputs.
//!
//! Negotiation rules (see `PROTOCOL.md`):
//! - publish connection: the client offers, the media plane answers; one offer in flight
//!   per participant;
//! - subscribe connection: the server offers, the client answers; one offer in flight per
//!   participant, and a change of the desired track set while an offer is out is remembered
//!   and re-offered after the answer, which is what keeps the two sides from offering at once.
//!
//! Access rules:
//! - every guest (by role), and anyone the shell marks `must_wait` (a link used from a
//!   second device), waits in the waiting room: they get [`ServerMessage::Waiting`] and nothing else (no roster,
//!   no media, no lobby) until someone with the admit right admits them;
//! - every action is checked against [`crate::permissions::allowed`] for the actor's
//!   current role.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use crate::error::ErrorCode;
use crate::permissions::{allowed, Action};
use crate::protocol::{
    ClientMessage, MediaKind, ParticipantId, PcKind, RosterEntry, ServerMessage, TrackDescription,
    WaitingEntry, PROTOCOL_VERSION,
};
use crate::role::Role;

/// Longest display name accepted, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// An owned reference to a published track, as sent to the media plane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackRef {
    /// The publishing participant.
    pub publisher: ParticipantId,
    /// Audio or video.
    pub kind: MediaKind,
}

/// Something that happened, fed into [`Room::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A participant whose join token the shell has already verified.
    Join {
        /// Id assigned by the shell, unique for the server's lifetime.
        participant: ParticipantId,
        /// Display name (from the token or the join message).
        display_name: String,
        /// Role from the token.
        role: Role,
        /// The invitation (token id) used, shown to whoever admits.
        invitation: String,
        /// Put them in the waiting room (guests; staff on a second device).
        must_wait: bool,
        /// The invitation was first used from another device.
        second_device: bool,
    },
    /// A message from a joined participant (never `Join`: the shell handles that).
    Client {
        /// Sender.
        participant: ParticipantId,
        /// The parsed message.
        message: ClientMessage,
    },
    /// The participant's WebSocket closed without a `leave`.
    Disconnected {
        /// Who.
        participant: ParticipantId,
    },
    /// An event from the media plane.
    Media(MediaEvent),
}

/// What the media plane reports back to the room.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The answer to a [`MediaCommand::Publish`].
    PublishAnswer {
        /// Publisher.
        participant: ParticipantId,
        /// Answer SDP.
        sdp: String,
    },
    /// A [`MediaCommand::Publish`] or [`MediaCommand::SubscribeAnswer`] could not be applied.
    NegotiationFailed {
        /// Whose connection.
        participant: ParticipantId,
        /// Which connection.
        pc: PcKind,
        /// Code to send to the client (usually [`ErrorCode::InvalidSdp`]).
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// Media of this kind started arriving from the participant.
    TrackPublished {
        /// Publisher.
        participant: ParticipantId,
        /// Kind.
        kind: MediaKind,
    },
    /// The offer requested by [`MediaCommand::Subscribe`] is ready.
    SubscribeOffer {
        /// Subscriber.
        participant: ParticipantId,
        /// The revision from the command.
        revision: u32,
        /// Offer SDP.
        sdp: String,
        /// Which participant and kind each media section carries.
        tracks: Vec<TrackDescription>,
    },
    /// A connection failed, or did not connect in time (the connect watchdog); the media
    /// plane has already torn it down.
    PeerFailed {
        /// Whose connection.
        participant: ParticipantId,
        /// Which connection.
        pc: PcKind,
        /// Why.
        reason: String,
    },
}

/// A command for the media plane.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// Apply a publish offer (creating the publish connection if needed); answer with
    /// [`MediaEvent::PublishAnswer`] or [`MediaEvent::NegotiationFailed`].
    Publish {
        /// Publisher.
        participant: ParticipantId,
        /// Offer SDP.
        sdp: String,
        /// The media section carrying a screen share (already permission-checked).
        screen_mid: Option<String>,
    },
    /// Stop (or resume) forwarding one of a publisher's tracks, after a mute by others.
    Suppress {
        /// Publisher.
        participant: ParticipantId,
        /// Which track.
        kind: MediaKind,
        /// `true` to stop forwarding.
        suppressed: bool,
    },
    /// Close the publish connection and stop forwarding the participant's media.
    Unpublish {
        /// Publisher.
        participant: ParticipantId,
    },
    /// Make the subscribe connection carry exactly `tracks` and create an offer
    /// (creating the connection if needed); reply with [`MediaEvent::SubscribeOffer`].
    Subscribe {
        /// Subscriber.
        participant: ParticipantId,
        /// Offer revision to echo back.
        revision: u32,
        /// The full desired set of tracks.
        tracks: Vec<TrackRef>,
    },
    /// Apply the client's answer to the outstanding subscribe offer.
    SubscribeAnswer {
        /// Subscriber.
        participant: ParticipantId,
        /// Answer SDP.
        sdp: String,
    },
    /// A trickled ICE candidate from the client.
    RemoteCandidate {
        /// Whose connection.
        participant: ParticipantId,
        /// Which connection.
        pc: PcKind,
        /// The candidate line (`candidate:...`); empty means end-of-candidates.
        candidate: String,
    },
    /// Tear down both connections of a participant who left.
    Remove {
        /// Who.
        participant: ParticipantId,
    },
}

/// What [`Room::handle`] asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a message to one participant.
    Send {
        /// Recipient.
        to: ParticipantId,
        /// The message.
        message: ServerMessage,
    },
    /// Close the participant's WebSocket after flushing what was sent to it.
    Close {
        /// Whose socket.
        participant: ParticipantId,
    },
    /// A command for the media plane.
    Media(MediaCommand),
    /// Something the audit log must record.
    Audit {
        /// Who acted.
        actor: ParticipantId,
        /// Stable action name (`join`, `waiting`, `admit`, `deny`, `remove`, `leave`,
        /// `mute_others`, `role_changed`, `conference_ended`).
        action: &'static str,
        /// Whom it was done to, if someone else.
        subject: Option<ParticipantId>,
    },
    /// The conference was ended by the host: the shell marks it ended so its links stop
    /// working.
    Ended,
    /// The last participant left; the shell may drop the room.
    Empty,
}

/// Room-wide limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Most participants present at once.
    pub max_participants: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_participants: 16,
        }
    }
}

/// Subscribe-side negotiation state of one participant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SubscribeState {
    /// Revision of the most recent offer requested from the media plane.
    revision: u32,
    /// An offer (of this revision) is out and not yet answered.
    awaiting_answer: Option<u32>,
    /// The track set the connection was last asked to carry.
    current: Vec<TrackRef>,
    /// The desired set changed while an offer was out.
    dirty: bool,
}

#[derive(Debug, Clone)]
struct Participant {
    display_name: String,
    role: Role,
    joined_at: Instant,
    /// Admitted (or never needed admission); `false` while in the waiting room.
    admitted: bool,
    invitation: String,
    second_device: bool,
    /// Tracks muted by someone else; not forwarded until the owner unmutes.
    forced_mute: BTreeSet<MediaKind>,
    screen_muted: bool,
    audio_muted: bool,
    video_muted: bool,
    publishing: BTreeSet<MediaKind>,
    /// A publish offer is with the media plane.
    publish_pending: bool,
    subscribe: SubscribeState,
}

/// One conference's live state.
#[derive(Debug)]
pub struct Room {
    id: String,
    title: String,
    limits: RoomLimits,
    participants: BTreeMap<ParticipantId, Participant>,
    ended: bool,
}

impl Room {
    /// Creates an empty room.
    pub fn new(id: impl Into<String>, title: impl Into<String>, limits: RoomLimits) -> Self {
        Room {
            id: id.into(),
            title: title.into(),
            limits,
            participants: BTreeMap::new(),
            ended: false,
        }
    }

    /// The room id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Number of participants present.
    pub fn len(&self) -> usize {
        self.participants.len()
    }

    /// Whether nobody is present.
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Whether `participant` is present (admitted or waiting).
    pub fn contains(&self, participant: &str) -> bool {
        self.participants.contains_key(participant)
    }

    /// Whether the host ended the conference.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The current roster of admitted participants, in join order.
    pub fn roster(&self) -> Vec<RosterEntry> {
        let mut entries: Vec<(&Instant, RosterEntry)> = self
            .participants
            .iter()
            .filter(|(_, p)| p.admitted)
            .map(|(id, p)| {
                (
                    &p.joined_at,
                    RosterEntry {
                        id: id.clone(),
                        display_name: p.display_name.clone(),
                        role: p.role,
                        audio_muted: p.audio_muted,
                        video_muted: p.video_muted,
                        publishing: p.publishing.iter().copied().collect(),
                    },
                )
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        entries.into_iter().map(|(_, e)| e).collect()
    }

    /// Feeds one input and returns what to do about it.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Join {
                participant,
                display_name,
                role,
                invitation,
                must_wait,
                second_device,
            } => self.join(
                now,
                NewParticipant {
                    id: participant,
                    display_name,
                    role,
                    invitation,
                    must_wait,
                    second_device,
                },
                &mut out,
            ),
            Input::Client {
                participant,
                message,
            } => self.client(participant, message, &mut out),
            Input::Disconnected { participant } => self.remove(&participant, None, &mut out),
            Input::Media(event) => self.media(event, &mut out),
        }
        out
    }

    fn join(&mut self, now: Instant, new: NewParticipant, out: &mut Vec<Output>) {
        let id = new.id;
        if self.ended {
            error_to(
                out,
                &id,
                ErrorCode::ConferenceEnded,
                "the conference has ended",
                true,
            );
            out.push(Output::Close { participant: id });
            return;
        }
        if self.participants.contains_key(&id) {
            error_to(out, &id, ErrorCode::OutOfOrder, "already joined", false);
            return;
        }
        if self.participants.len() >= self.limits.max_participants {
            error_to(
                out,
                &id,
                ErrorCode::RoomFull,
                "the conference has reached its participant limit",
                true,
            );
            out.push(Output::Close { participant: id });
            return;
        }
        let display_name = match validate_display_name(&new.display_name) {
            Ok(name) => name,
            Err(message) => {
                error_to(out, &id, ErrorCode::InvalidField, message, true);
                out.push(Output::Close { participant: id });
                return;
            }
        };
        let admitted = !new.must_wait && allowed(new.role, Action::SkipWaitingRoom);
        self.participants.insert(
            id.clone(),
            Participant {
                display_name: display_name.clone(),
                role: new.role,
                joined_at: now,
                admitted,
                invitation: new.invitation,
                second_device: new.second_device,
                forced_mute: BTreeSet::new(),
                screen_muted: false,
                audio_muted: false,
                video_muted: false,
                publishing: BTreeSet::new(),
                publish_pending: false,
                subscribe: SubscribeState::default(),
            },
        );
        if admitted {
            out.push(Output::Audit {
                actor: id.clone(),
                action: "join",
                subject: None,
            });
            self.enter(&id, out);
        } else {
            out.push(Output::Audit {
                actor: id.clone(),
                action: "waiting",
                subject: None,
            });
            out.push(Output::Send {
                to: id.clone(),
                message: ServerMessage::Waiting {
                    participant_id: id.clone(),
                    room_title: self.title.clone(),
                    display_name,
                    role: new.role,
                },
            });
            self.broadcast_lobby(out);
        }
    }

    /// Brings an admitted participant into the conference: `joined`, roster, media.
    fn enter(&mut self, id: &str, out: &mut Vec<Output>) {
        let Some(p) = self.participants.get(id) else {
            return;
        };
        out.push(Output::Send {
            to: id.to_string(),
            message: ServerMessage::Joined {
                protocol: PROTOCOL_VERSION,
                participant_id: id.to_string(),
                room_id: self.id.clone(),
                room_title: self.title.clone(),
                role: p.role,
                display_name: p.display_name.clone(),
                roster: self.roster(),
            },
        });
        if allowed(p.role, Action::Admit) {
            self.send_lobby_to(id, out);
        }
        self.broadcast_roster_except(Some(id), out);
        // The newcomer subscribes to whatever is already published.
        self.reconcile_subscription(id, out);
    }

    fn waiting_entries(&self) -> Vec<WaitingEntry> {
        let mut w: Vec<(&Instant, WaitingEntry)> = self
            .participants
            .iter()
            .filter(|(_, p)| !p.admitted)
            .map(|(id, p)| {
                (
                    &p.joined_at,
                    WaitingEntry {
                        id: id.clone(),
                        display_name: p.display_name.clone(),
                        role: p.role,
                        invitation: p.invitation.clone(),
                        second_device: p.second_device,
                    },
                )
            })
            .collect();
        w.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        w.into_iter().map(|(_, e)| e).collect()
    }

    fn send_lobby_to(&self, id: &str, out: &mut Vec<Output>) {
        out.push(Output::Send {
            to: id.to_string(),
            message: ServerMessage::Lobby {
                waiting: self.waiting_entries(),
            },
        });
    }

    /// Tells everyone present who may admit about the waiting room.
    fn broadcast_lobby(&self, out: &mut Vec<Output>) {
        for (id, p) in &self.participants {
            if p.admitted && allowed(p.role, Action::Admit) {
                self.send_lobby_to(id, out);
            }
        }
    }

    /// Checks that `actor` may do `action` to an admitted (or, for admit/deny, waiting)
    /// participant `target`; answers the error itself and returns `false` otherwise.
    fn check_target(
        &self,
        actor: &str,
        action: Action,
        target: &str,
        want_waiting: bool,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(a) = self.participants.get(actor) else {
            return false;
        };
        if !allowed(a.role, action) {
            error_to(
                out,
                actor,
                ErrorCode::Forbidden,
                "your role does not allow this",
                false,
            );
            return false;
        }
        match self.participants.get(target) {
            Some(t) if t.admitted != want_waiting && target != actor => true,
            _ => {
                error_to(
                    out,
                    actor,
                    ErrorCode::UnknownParticipant,
                    if want_waiting {
                        "nobody with that id is waiting"
                    } else {
                        "nobody else with that id is present"
                    },
                    false,
                );
                false
            }
        }
    }

    fn client(&mut self, id: ParticipantId, message: ClientMessage, out: &mut Vec<Output>) {
        let Some(p) = self.participants.get_mut(&id) else {
            error_to(out, &id, ErrorCode::OutOfOrder, "join first", false);
            return;
        };
        if !p.admitted && !matches!(message, ClientMessage::Ping | ClientMessage::Leave) {
            error_to(
                out,
                &id,
                ErrorCode::Forbidden,
                "you are in the waiting room until the host admits you",
                false,
            );
            return;
        }
        match message {
            ClientMessage::Admit { participant_id } => {
                if self.check_target(&id, Action::Admit, &participant_id, true, out) {
                    if let Some(t) = self.participants.get_mut(&participant_id) {
                        t.admitted = true;
                    }
                    out.push(Output::Audit {
                        actor: id,
                        action: "admit",
                        subject: Some(participant_id.clone()),
                    });
                    self.enter(&participant_id, out);
                    self.broadcast_lobby(out);
                }
            }
            ClientMessage::Deny { participant_id } => {
                if self.check_target(&id, Action::Admit, &participant_id, true, out) {
                    out.push(Output::Audit {
                        actor: id,
                        action: "deny",
                        subject: Some(participant_id.clone()),
                    });
                    self.remove(&participant_id, Some("denied"), out);
                }
            }
            ClientMessage::Remove { participant_id } => {
                if self.check_target(&id, Action::Remove, &participant_id, false, out) {
                    out.push(Output::Audit {
                        actor: id,
                        action: "remove",
                        subject: Some(participant_id.clone()),
                    });
                    self.remove(&participant_id, Some("removed"), out);
                }
            }
            ClientMessage::MuteParticipant {
                participant_id,
                kind,
            } => {
                if self.check_target(&id, Action::MuteOthers, &participant_id, false, out) {
                    if let Some(t) = self.participants.get_mut(&participant_id) {
                        t.forced_mute.insert(kind);
                        *t.muted_flag(kind) = true;
                    }
                    out.push(Output::Audit {
                        actor: id.clone(),
                        action: "mute_others",
                        subject: Some(participant_id.clone()),
                    });
                    out.push(Output::Media(MediaCommand::Suppress {
                        participant: participant_id.clone(),
                        kind,
                        suppressed: true,
                    }));
                    out.push(Output::Send {
                        to: participant_id,
                        message: ServerMessage::MutedBy { kind, by: id },
                    });
                    self.broadcast_roster_except(None, out);
                }
            }
            ClientMessage::TransferHost { participant_id } => {
                let actor_is_host = self
                    .participants
                    .get(&id)
                    .is_some_and(|a| a.role == Role::Host);
                let target = self
                    .participants
                    .get(&participant_id)
                    .filter(|t| t.admitted && participant_id != id);
                if actor_is_host && target.is_none() {
                    error_to(
                        out,
                        &id,
                        ErrorCode::UnknownParticipant,
                        "nobody else with that id is present",
                        false,
                    );
                    return;
                }
                let target_ok = target.is_some_and(|t| allowed(t.role, Action::ReceiveHost));
                if !actor_is_host || !target_ok {
                    error_to(
                        out,
                        &id,
                        ErrorCode::Forbidden,
                        "only the host can pass host rights, and only to staff who are present",
                        false,
                    );
                    return;
                }
                if let Some(a) = self.participants.get_mut(&id) {
                    a.role = Role::Staff;
                }
                if let Some(t) = self.participants.get_mut(&participant_id) {
                    t.role = Role::Host;
                }
                out.push(Output::Audit {
                    actor: id,
                    action: "role_changed",
                    subject: Some(participant_id),
                });
                self.broadcast_roster_except(None, out);
            }
            ClientMessage::EndConference => {
                let role = self.participants.get(&id).map(|a| a.role);
                if !role.is_some_and(|r| allowed(r, Action::EndConference)) {
                    error_to(
                        out,
                        &id,
                        ErrorCode::Forbidden,
                        "your role does not allow this",
                        false,
                    );
                    return;
                }
                out.push(Output::Audit {
                    actor: id,
                    action: "conference_ended",
                    subject: None,
                });
                self.ended = true;
                out.push(Output::Ended);
                // Everyone goes at once: no roster, lobby or renegotiation for people who
                // are about to be disconnected anyway.
                for pid in std::mem::take(&mut self.participants).into_keys() {
                    out.push(Output::Audit {
                        actor: pid.clone(),
                        action: "leave",
                        subject: None,
                    });
                    out.push(Output::Send {
                        to: pid.clone(),
                        message: ServerMessage::Bye {
                            reason: "ended".into(),
                        },
                    });
                    out.push(Output::Close {
                        participant: pid.clone(),
                    });
                    out.push(Output::Media(MediaCommand::Remove { participant: pid }));
                }
                out.push(Output::Empty);
            }
            ClientMessage::Join { .. } => {
                error_to(out, &id, ErrorCode::OutOfOrder, "already joined", false);
            }
            ClientMessage::PublishOffer { sdp, screen_mid } => {
                if screen_mid.is_some() && !allowed(p.role, Action::PublishScreen) {
                    error_to(
                        out,
                        &id,
                        ErrorCode::Forbidden,
                        "your role may not share a screen",
                        false,
                    );
                    return;
                }
                if p.publish_pending {
                    error_to(
                        out,
                        &id,
                        ErrorCode::OutOfOrder,
                        "a publish offer is already being answered",
                        false,
                    );
                    return;
                }
                if !looks_like_sdp(&sdp) {
                    error_to(
                        out,
                        &id,
                        ErrorCode::InvalidSdp,
                        "the offer is not SDP",
                        false,
                    );
                    return;
                }
                p.publish_pending = true;
                out.push(Output::Media(MediaCommand::Publish {
                    participant: id,
                    sdp,
                    screen_mid,
                }));
            }
            ClientMessage::Unpublish => {
                p.publish_pending = false;
                let had = !p.publishing.is_empty();
                p.publishing.clear();
                out.push(Output::Media(MediaCommand::Unpublish {
                    participant: id.clone(),
                }));
                if had {
                    self.broadcast_roster_except(None, out);
                    self.reconcile_all_except(&id, out);
                }
            }
            ClientMessage::SubscribeAnswer { sdp, revision } => {
                if p.subscribe.awaiting_answer != Some(revision) {
                    error_to(
                        out,
                        &id,
                        ErrorCode::OutOfOrder,
                        "no subscribe offer with that revision is outstanding",
                        false,
                    );
                    return;
                }
                if !looks_like_sdp(&sdp) {
                    error_to(
                        out,
                        &id,
                        ErrorCode::InvalidSdp,
                        "the answer is not SDP",
                        false,
                    );
                    return;
                }
                p.subscribe.awaiting_answer = None;
                out.push(Output::Media(MediaCommand::SubscribeAnswer {
                    participant: id.clone(),
                    sdp,
                }));
                if std::mem::take(&mut p.subscribe.dirty) {
                    self.reconcile_subscription(&id, out);
                }
            }
            ClientMessage::IceCandidate { pc, candidate } => {
                if candidate.candidate.len() > 1024 {
                    error_to(
                        out,
                        &id,
                        ErrorCode::InvalidField,
                        "candidate too long",
                        false,
                    );
                    return;
                }
                out.push(Output::Media(MediaCommand::RemoteCandidate {
                    participant: id,
                    pc,
                    candidate: candidate.candidate,
                }));
            }
            ClientMessage::Mute { kind, muted } => {
                // Unmuting yourself lifts a mute imposed by someone else.
                if !muted && p.forced_mute.remove(&kind) {
                    out.push(Output::Media(MediaCommand::Suppress {
                        participant: id.clone(),
                        kind,
                        suppressed: false,
                    }));
                }
                let field = p.muted_flag(kind);
                if *field != muted {
                    *field = muted;
                    self.broadcast_roster_except(None, out);
                }
            }
            ClientMessage::Ping => out.push(Output::Send {
                to: id,
                message: ServerMessage::Pong,
            }),
            ClientMessage::Leave => {
                self.remove(&id, Some("left"), out);
            }
        }
    }

    fn media(&mut self, event: MediaEvent, out: &mut Vec<Output>) {
        // Nobody in the waiting room has media; an event about them can only be stale or
        // wrong, and relaying it would leak the conference to someone not yet admitted.
        let subject = match &event {
            MediaEvent::PublishAnswer { participant, .. }
            | MediaEvent::NegotiationFailed { participant, .. }
            | MediaEvent::TrackPublished { participant, .. }
            | MediaEvent::SubscribeOffer { participant, .. }
            | MediaEvent::PeerFailed { participant, .. } => participant,
        };
        if !self.participants.get(subject).is_some_and(|p| p.admitted) {
            return;
        }
        match event {
            MediaEvent::PublishAnswer { participant, sdp } => {
                let Some(p) = self.participants.get_mut(&participant) else {
                    return;
                };
                // Only an answer to the offer this room passed on goes to the client.
                if !std::mem::take(&mut p.publish_pending) {
                    return;
                }
                out.push(Output::Send {
                    to: participant,
                    message: ServerMessage::PublishAnswer { sdp },
                });
            }
            MediaEvent::NegotiationFailed {
                participant,
                pc,
                code,
                message,
            } => {
                let Some(p) = self.participants.get_mut(&participant) else {
                    return;
                };
                match pc {
                    PcKind::Publish => p.publish_pending = false,
                    // The media plane dropped the half-negotiated connection; start afresh.
                    PcKind::Subscribe => {
                        // A new revision makes any offer still in flight stale, even if
                        // nothing is left to offer now.
                        p.subscribe.revision += 1;
                        p.subscribe.awaiting_answer = None;
                        p.subscribe.current.clear();
                    }
                }
                error_to(out, &participant, code, &message, false);
                if pc == PcKind::Subscribe {
                    out.push(Output::Send {
                        to: participant.clone(),
                        message: ServerMessage::Reconnect {
                            pc,
                            reason: "subscribe negotiation failed".into(),
                        },
                    });
                    self.reconcile_subscription(&participant, out);
                }
            }
            MediaEvent::TrackPublished { participant, kind } => {
                let Some(p) = self.participants.get_mut(&participant) else {
                    return;
                };
                if p.publishing.insert(kind) {
                    self.broadcast_roster_except(None, out);
                    self.reconcile_all_except(&participant, out);
                }
            }
            MediaEvent::SubscribeOffer {
                participant,
                revision,
                sdp,
                tracks,
            } => {
                let Some(p) = self.participants.get_mut(&participant) else {
                    return;
                };
                // A stale offer (superseded by a reset) is dropped; the newer one follows.
                if revision != p.subscribe.revision {
                    return;
                }
                p.subscribe.awaiting_answer = Some(revision);
                out.push(Output::Send {
                    to: participant,
                    message: ServerMessage::SubscribeOffer {
                        sdp,
                        revision,
                        tracks,
                    },
                });
            }
            MediaEvent::PeerFailed {
                participant,
                pc,
                reason,
            } => {
                let Some(p) = self.participants.get_mut(&participant) else {
                    return;
                };
                out.push(Output::Send {
                    to: participant.clone(),
                    message: ServerMessage::Reconnect {
                        pc,
                        reason: reason.clone(),
                    },
                });
                match pc {
                    PcKind::Publish => {
                        p.publish_pending = false;
                        if !std::mem::take(&mut p.publishing).is_empty() {
                            self.broadcast_roster_except(None, out);
                            self.reconcile_all_except(&participant, out);
                        }
                    }
                    PcKind::Subscribe => {
                        p.subscribe.revision += 1;
                        p.subscribe.awaiting_answer = None;
                        p.subscribe.dirty = false;
                        p.subscribe.current.clear();
                        self.reconcile_subscription(&participant, out);
                    }
                }
            }
        }
    }

    /// Removes a participant (leave or disconnect) and tells everyone else.
    fn remove(&mut self, id: &str, bye: Option<&str>, out: &mut Vec<Output>) {
        let Some(gone) = self.participants.remove(id) else {
            return;
        };
        out.push(Output::Audit {
            actor: id.to_string(),
            action: "leave",
            subject: None,
        });
        if let Some(reason) = bye {
            out.push(Output::Send {
                to: id.to_string(),
                message: ServerMessage::Bye {
                    reason: reason.to_string(),
                },
            });
            out.push(Output::Close {
                participant: id.to_string(),
            });
        }
        out.push(Output::Media(MediaCommand::Remove {
            participant: id.to_string(),
        }));
        if self.participants.is_empty() {
            out.push(Output::Empty);
            return;
        }
        if gone.admitted {
            self.broadcast_roster_except(None, out);
            // As on unpublish: only what someone published is in others' subscriptions.
            // Skipping the check for everyone else keeps a leave O(N), not O(N²); when a
            // lecture of 450 ended, the room task spent most of its time here.
            if !gone.publishing.is_empty() {
                self.reconcile_all_except(id, out);
            }
        } else {
            self.broadcast_lobby(out);
        }
    }

    fn broadcast_roster_except(&self, except: Option<&str>, out: &mut Vec<Output>) {
        let roster: Arc<[RosterEntry]> = self.roster().into();
        for (id, p) in &self.participants {
            if Some(id.as_str()) == except || !p.admitted {
                continue;
            }
            out.push(Output::Send {
                to: id.clone(),
                message: ServerMessage::Roster {
                    participants: roster.clone(),
                },
            });
        }
    }

    fn reconcile_all_except(&mut self, except: &str, out: &mut Vec<Output>) {
        let ids: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(id, p)| id.as_str() != except && p.admitted)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.reconcile_subscription(&id, out);
        }
    }

    /// The tracks `subscriber` should receive: everything the others publish.
    fn desired_tracks(&self, subscriber: &str) -> Vec<TrackRef> {
        self.participants
            .iter()
            .filter(|(id, p)| id.as_str() != subscriber && p.admitted)
            .flat_map(|(id, p)| {
                p.publishing.iter().map(move |kind| TrackRef {
                    publisher: id.clone(),
                    kind: *kind,
                })
            })
            .collect()
    }

    /// Asks the media plane for a new subscribe offer if the desired track set changed,
    /// or remembers to do so once the outstanding offer is answered.
    fn reconcile_subscription(&mut self, id: &str, out: &mut Vec<Output>) {
        let desired = self.desired_tracks(id);
        let Some(p) = self.participants.get_mut(id) else {
            return;
        };
        // Nothing reaches the waiting room, media included.
        if !p.admitted {
            return;
        }
        if p.subscribe.awaiting_answer.is_some() {
            p.subscribe.dirty = p.subscribe.dirty || desired != p.subscribe.current;
            return;
        }
        if desired == p.subscribe.current {
            return;
        }
        p.subscribe.revision += 1;
        p.subscribe.current = desired.clone();
        // Until the media plane's offer comes back, nothing else may be offered.
        p.subscribe.awaiting_answer = Some(p.subscribe.revision);
        out.push(Output::Media(MediaCommand::Subscribe {
            participant: id.to_string(),
            revision: p.subscribe.revision,
            tracks: desired,
        }));
    }
}

/// What the shell knows about someone joining.
struct NewParticipant {
    id: ParticipantId,
    display_name: String,
    role: Role,
    invitation: String,
    must_wait: bool,
    second_device: bool,
}

impl Participant {
    fn muted_flag(&mut self, kind: MediaKind) -> &mut bool {
        match kind {
            MediaKind::Audio => &mut self.audio_muted,
            MediaKind::Video => &mut self.video_muted,
            MediaKind::Screen => &mut self.screen_muted,
        }
    }
}

/// Trims and checks a display name.
pub fn validate_display_name(name: &str) -> Result<String, &'static str> {
    let name = name.trim();
    if name.is_empty() {
        return Err("the display name is empty");
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err("the display name is longer than 64 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("the display name contains control characters");
    }
    Ok(name.to_string())
}

/// A cheap structural check before SDP goes to the media plane, which parses it fully.
fn looks_like_sdp(sdp: &str) -> bool {
    sdp.starts_with("v=0") && sdp.contains("\nm=")
}

fn error_to(out: &mut Vec<Output>, to: &str, code: ErrorCode, message: &str, fatal: bool) {
    out.push(Output::Send {
        to: to.to_string(),
        message: ServerMessage::Error {
            code,
            message: message.to_string(),
            fatal,
        },
    });
}

#[cfg(test)]
mod tests;
