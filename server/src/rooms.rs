//! The in-memory room registry: one tokio task per live room, each owning a pure
//! [`wardlink_signaling::room::Room`] and dispatching its outputs to WebSocket sessions
//! and the media plane.
//!
//! A room exists while someone is in it; it is created by the first valid join (rooms
//! are defined by signed tokens, so nothing has to be stored ahead of time).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use wardlink_signaling::protocol::{ClientMessage, ParticipantId, ServerMessage};
use wardlink_signaling::room::{Input, MediaCommand, MediaEvent, Output, Room, RoomLimits};
use wardlink_signaling::token::JoinClaims;
use wardlink_signaling::{ErrorCode, Role};

use crate::audit::{Audit, AuditEvent};
use crate::media::MediaHandle;
use crate::session_queue::{Outbound, RosterCache, SessionTx};
use crate::store::Store;

/// What a session sends to its room.
#[derive(Debug)]
enum RoomRequest {
    Join {
        participant: ParticipantId,
        display_name: String,
        claims: JoinClaims,
        session: SessionTx,
        peer: IpAddr,
        must_wait: bool,
        second_device: bool,
    },
    Client {
        participant: ParticipantId,
        message: ClientMessage,
    },
    Disconnected {
        participant: ParticipantId,
    },
}

#[derive(Default)]
struct RoomMap {
    live: HashMap<String, mpsc::UnboundedSender<RoomRequest>>,
    /// Rooms the host ended during this run (the store remembers them across restarts).
    ended: HashSet<String>,
}

/// Live rooms, keyed by room id. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    rooms: Arc<Mutex<RoomMap>>,
    media: MediaHandle,
    audit: Audit,
    store: Store,
    limits: RoomLimits,
    max_conferences: usize,
    next_participant: Arc<AtomicU64>,
}

/// Everything the room task needs to know about a joining participant.
pub struct JoinRequest {
    /// Verified token claims.
    pub claims: JoinClaims,
    /// Display name to use.
    pub display_name: String,
    /// The peer's IP address (for the audit log).
    pub peer: IpAddr,
    /// Put them in the waiting room even if their role could skip it (second device).
    pub must_wait: bool,
    /// The invitation was first used from another device.
    pub second_device: bool,
}
/// A session's link to the room it joined.
pub struct Membership {
    /// The participant id assigned at join.
    pub participant: ParticipantId,
    room: mpsc::UnboundedSender<RoomRequest>,
}

impl Membership {
    /// Passes a client message to the room.
    pub fn send(&self, message: ClientMessage) {
        let _ = self.room.send(RoomRequest::Client {
            participant: self.participant.clone(),
            message,
        });
    }
}

impl Drop for Membership {
    /// However the session ends, the room learns of it.
    fn drop(&mut self) {
        let _ = self.room.send(RoomRequest::Disconnected {
            participant: self.participant.clone(),
        });
    }
}

impl Registry {
    /// Creates an empty registry that uses `media` for peer connections and records to
    /// `audit`; ended conferences are marked in `store`.
    pub fn new(
        config: &crate::config::Config,
        media: MediaHandle,
        store: Store,
        audit: Audit,
    ) -> Self {
        Registry {
            rooms: Arc::new(Mutex::new(RoomMap::default())),
            media,
            audit,
            store,
            limits: RoomLimits {
                max_participants: config.max_participants_per_room,
            },
            max_conferences: config.limits.max_conferences,
            next_participant: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The media plane's counters and number of live peer connections.
    pub async fn media_stats(&self) -> Option<(crate::media::sfu::SfuStats, usize)> {
        self.media.stats().await
    }

    /// Number of live rooms.
    pub fn room_count(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoomMap> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // operation is a single insert/remove), so a poisoned lock is still usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the room named by the verified claims, creating it if needed. The room
    /// answers (`joined`, `waiting` or an error) on `session`. Refused before reaching a
    /// room when the conference ended or the server hosts its maximum of conferences.
    pub fn join(&self, request: JoinRequest, session: SessionTx) -> Result<Membership, ErrorCode> {
        let participant = format!(
            "p{:x}{:06x}",
            self.next_participant.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>() & 0xff_ffff
        );
        let mut rooms = self.lock();
        let room_id = request.claims.room.clone();
        if rooms.ended.contains(&room_id) {
            return Err(ErrorCode::ConferenceEnded);
        }
        let room = match rooms.live.get(&room_id) {
            Some(room) => room.clone(),
            None => {
                if rooms.live.len() >= self.max_conferences {
                    return Err(ErrorCode::TooManyConferences);
                }
                let room = self.spawn_room(&request.claims);
                rooms.live.insert(room_id, room.clone());
                room
            }
        };
        // Sent while holding the lock, so the room cannot retire in between (see `run_room`).
        let _ = room.send(RoomRequest::Join {
            participant: participant.clone(),
            display_name: request.display_name,
            claims: request.claims,
            session,
            peer: request.peer,
            must_wait: request.must_wait,
            second_device: request.second_device,
        });
        Ok(Membership { participant, room })
    }

    fn audit(&self, event: AuditEvent) {
        // Queued: the room task must not stall on the write and its fsyncs.
        self.audit.record_queued(event);
    }

    fn spawn_room(&self, claims: &JoinClaims) -> mpsc::UnboundedSender<RoomRequest> {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Room::new(claims.room.clone(), claims.title.clone(), self.limits);
        tracing::info!(room = %claims.room, "conference opened");
        tokio::spawn(run_room(room, rx, self.clone()));
        tx
    }
}

/// Turns a session's request into the room's input, recording who joined. `None` for the
/// disconnect of someone the room no longer holds (they left, and their `bye` already went
/// out): only their session is dropped.
fn accept(
    request: RoomRequest,
    room: &Room,
    sessions: &mut HashMap<ParticipantId, SessionTx>,
    identities: &mut HashMap<ParticipantId, (IpAddr, String, Role, String)>,
    registry: &Registry,
    media_tx: &mpsc::UnboundedSender<MediaEvent>,
    room_id: &str,
) -> Option<Input> {
    match request {
        RoomRequest::Join {
            participant,
            display_name,
            claims,
            session,
            peer,
            must_wait,
            second_device,
        } => {
            sessions.insert(participant.clone(), session);
            identities.insert(
                participant.clone(),
                (peer, display_name.clone(), claims.role, claims.jti.clone()),
            );
            registry.media.attach(participant.clone(), media_tx.clone());
            tracing::info!(room = %room_id, participant = %participant, role = %claims.role, "join");
            Some(Input::Join {
                participant,
                display_name,
                role: claims.role,
                invitation: claims.jti,
                must_wait,
                second_device,
            })
        }
        RoomRequest::Client {
            participant,
            message,
        } => Some(Input::Client {
            participant,
            message,
        }),
        RoomRequest::Disconnected { participant } => {
            if room.contains(&participant) {
                Some(Input::Disconnected { participant })
            } else {
                sessions.remove(&participant);
                None
            }
        }
    }
}

/// One room's task.
async fn run_room(
    mut room: Room,
    mut rx: mpsc::UnboundedReceiver<RoomRequest>,
    registry: Registry,
) {
    let (media_tx, mut media_rx) = mpsc::unbounded_channel::<MediaEvent>();
    let mut sessions: HashMap<ParticipantId, SessionTx> = HashMap::new();
    // Who each participant is, for audit records (kept until the room closes, so a
    // `leave` can still be attributed).
    let mut identities: HashMap<ParticipantId, (IpAddr, String, Role, String)> = HashMap::new();
    let mut rosters = RosterCache::default();
    let room_id = room.id().to_string();
    loop {
        let input = tokio::select! {
            request = rx.recv() => match request {
                Some(request) => accept(
                    request,
                    &room,
                    &mut sessions,
                    &mut identities,
                    &registry,
                    &media_tx,
                    &room_id,
                ),
                None => return,
            },
            Some(event) = media_rx.recv() => Some(Input::Media(event)),
        };
        let Some(input) = input else {
            continue;
        };
        // A burst (everyone leaving at the end of a large session) replaces each remaining
        // participant's roster slot many times while their queue holds one marker (see
        // `session_queue`).
        let mut queue: VecDeque<Output> = room.handle(Instant::now(), input).into();
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Send { to, message } => {
                    let Some(session) = sessions.get(&to) else {
                        continue;
                    };
                    if let ServerMessage::Error { code, fatal, .. } = &message {
                        tracing::info!(room = %room_id, participant = %to, %code, fatal, "error sent");
                    }
                    let queued = match message {
                        ServerMessage::Roster { participants } => {
                            match rosters.serialized(&participants) {
                                Some(text) => session.send_roster(text),
                                None => Ok(()),
                            }
                        }
                        message => session.try_send(Outbound::Message(message)),
                    };
                    if queued.is_err() {
                        // Too slow to keep up (or gone): drop them rather than let one
                        // client hold up the room.
                        tracing::warn!(room = %room_id, participant = %to, "session queue full, disconnecting");
                        let _ = session.try_send(Outbound::Close);
                        sessions.remove(&to);
                        queue.extend(
                            room.handle(Instant::now(), Input::Disconnected { participant: to }),
                        );
                    }
                }
                Output::Close { participant } => {
                    if let Some(session) = sessions.remove(&participant) {
                        let _ = session.try_send(Outbound::Close);
                    }
                }
                Output::Media(command) => {
                    if let MediaCommand::Remove { participant } = &command {
                        sessions.remove(participant);
                        // Its `leave` is already recorded (the room audits before it
                        // removes), so the identity can go: a long-lived room must not
                        // grow with every join.
                        identities.remove(participant);
                        tracing::info!(room = %room_id, participant = %participant, "leave");
                    }
                    registry.media.command(command);
                }
                Output::Audit {
                    actor,
                    action,
                    subject,
                } => {
                    let who = identities.get(&actor);
                    let about = subject.as_ref().and_then(|s| identities.get(s));
                    registry.audit(AuditEvent {
                        actor: format!("participant:{actor}"),
                        action,
                        conference: Some(room_id.clone()),
                        peer: who.map(|w| w.0),
                        detail: serde_json::json!({
                            "name": who.map(|w| w.1.as_str()),
                            "role": who.map(|w| w.2.as_str()),
                            "invitation": who.map(|w| w.3.as_str()),
                            "subject": subject,
                            "subject_name": about.map(|w| w.1.as_str()),
                            "subject_role": about.map(|w| w.2.as_str()),
                        }),
                    });
                }
                Output::Ended => {
                    registry.lock().ended.insert(room_id.clone());
                    let store = registry.store.clone();
                    let id = room_id.clone();
                    // Awaited, so the conference is ended in the store before anyone
                    // hears `bye`: a rejoin right after is refused by the database too.
                    let marked = tokio::task::spawn_blocking(move || {
                        crate::conferences::mark_ended(&store.lock(), &id, crate::store::now_ms())
                    })
                    .await;
                    if !matches!(marked, Ok(Ok(_))) {
                        tracing::error!(room = %room_id, "could not mark the conference ended in the store");
                    }
                }
                Output::Empty => {}
            }
        }
        if room.is_empty() {
            let mut rooms = registry.lock();
            // A join sent under the registry lock is already in `rx`; stay open for it.
            if rx.is_empty() {
                rooms.live.remove(&room_id);
                tracing::info!(room = %room_id, "conference closed (empty)");
                return;
            }
        }
    }
}
