//! The in-memory room registry: one tokio task per live room, each owning a pure
//! [`wardlink_signaling::room::Room`] and dispatching its outputs to WebSocket sessions
//! and the media plane.
//!
//! A room exists while someone is in it; it is created by the first valid join (rooms
//! are defined by signed tokens, so nothing has to be stored ahead of time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use wardlink_signaling::protocol::{ClientMessage, ParticipantId, ServerMessage};
use wardlink_signaling::room::{Input, MediaEvent, Output, Room, RoomLimits};
use wardlink_signaling::token::JoinClaims;

use crate::media::MediaHandle;

/// Messages queued for one session before it counts as too slow and is disconnected.
pub const SESSION_QUEUE: usize = 256;

/// What a room sends to a WebSocket session.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message.
    Message(ServerMessage),
    /// Flush and close the socket.
    Close,
}

/// What a session sends to its room.
#[derive(Debug)]
enum RoomRequest {
    Join {
        participant: ParticipantId,
        display_name: String,
        claims: JoinClaims,
        session: mpsc::Sender<Outbound>,
    },
    Client {
        participant: ParticipantId,
        message: ClientMessage,
    },
    Disconnected {
        participant: ParticipantId,
    },
}

type RoomMap = HashMap<String, mpsc::UnboundedSender<RoomRequest>>;

/// Live rooms, keyed by room id. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    rooms: Arc<Mutex<RoomMap>>,
    media: MediaHandle,
    limits: RoomLimits,
    next_participant: Arc<AtomicU64>,
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
    /// Creates an empty registry that uses `media` for peer connections.
    pub fn new(config: &crate::config::Config, media: MediaHandle) -> Self {
        Registry {
            rooms: Arc::new(Mutex::new(HashMap::new())),
            media,
            limits: RoomLimits {
                max_participants: config.max_participants_per_room,
            },
            next_participant: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Number of live rooms.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoomMap> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // operation is a single insert/remove), so a poisoned lock is still usable.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the room named by verified `claims`, creating it if needed. The room answers
    /// (`joined` or an error) on `session`.
    pub fn join(
        &self,
        claims: JoinClaims,
        display_name: String,
        session: mpsc::Sender<Outbound>,
    ) -> Membership {
        let participant = format!(
            "p{:x}{:06x}",
            self.next_participant.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>() & 0xff_ffff
        );
        let mut rooms = self.lock();
        let room = rooms
            .entry(claims.room.clone())
            .or_insert_with(|| self.spawn_room(&claims))
            .clone();
        // Sent while holding the lock, so the room cannot retire in between (see `run_room`).
        let _ = room.send(RoomRequest::Join {
            participant: participant.clone(),
            display_name,
            claims,
            session,
        });
        Membership { participant, room }
    }

    fn spawn_room(&self, claims: &JoinClaims) -> mpsc::UnboundedSender<RoomRequest> {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Room::new(claims.room.clone(), claims.title.clone(), self.limits);
        tracing::info!(room = %claims.room, "conference opened");
        tokio::spawn(run_room(room, rx, self.clone()));
        tx
    }
}

/// One room's task.
async fn run_room(
    mut room: Room,
    mut rx: mpsc::UnboundedReceiver<RoomRequest>,
    registry: Registry,
) {
    let (media_tx, mut media_rx) = mpsc::unbounded_channel::<MediaEvent>();
    let mut sessions: HashMap<ParticipantId, mpsc::Sender<Outbound>> = HashMap::new();
    let room_id = room.id().to_string();
    loop {
        let input = tokio::select! {
            request = rx.recv() => match request {
                Some(RoomRequest::Join { participant, display_name, claims, session }) => {
                    sessions.insert(participant.clone(), session);
                    registry.media.attach(participant.clone(), media_tx.clone());
                    tracing::info!(room = %room_id, participant = %participant, role = %claims.role, "join");
                    Input::Join { participant, display_name, role: claims.role }
                }
                Some(RoomRequest::Client { participant, message }) => Input::Client { participant, message },
                Some(RoomRequest::Disconnected { participant }) => {
                    if !room.contains(&participant) {
                        sessions.remove(&participant);
                        continue;
                    }
                    Input::Disconnected { participant }
                }
                None => return,
            },
            Some(event) = media_rx.recv() => Input::Media(event),
        };
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            for output in room.handle(Instant::now(), input) {
                match output {
                    Output::Send { to, message } => {
                        let Some(session) = sessions.get(&to) else {
                            continue;
                        };
                        if let ServerMessage::Error { code, fatal, .. } = &message {
                            tracing::info!(room = %room_id, participant = %to, %code, fatal, "error sent");
                        }
                        if session.try_send(Outbound::Message(message)).is_err() {
                            // Too slow to keep up (or gone): drop them rather than let one
                            // client hold up the room.
                            tracing::warn!(room = %room_id, participant = %to, "session queue full, disconnecting");
                            let _ = session.try_send(Outbound::Close);
                            sessions.remove(&to);
                            queue.push(Input::Disconnected { participant: to });
                        }
                    }
                    Output::Close { participant } => {
                        if let Some(session) = sessions.remove(&participant) {
                            let _ = session.try_send(Outbound::Close);
                        }
                    }
                    Output::Media(command) => {
                        if let wardlink_signaling::room::MediaCommand::Remove { participant } =
                            &command
                        {
                            sessions.remove(participant);
                            tracing::info!(room = %room_id, participant = %participant, "leave");
                        }
                        registry.media.command(command);
                    }
                    Output::Empty => {}
                }
            }
        }
        if room.is_empty() {
            let mut rooms = registry.lock();
            // A join sent under the registry lock is already in `rx`; stay open for it.
            if rx.is_empty() {
                rooms.remove(&room_id);
                tracing::info!(room = %room_id, "conference closed (empty)");
                return;
            }
        }
    }
}
