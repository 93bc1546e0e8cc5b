//! The queue from a room (and from the session itself) to one WebSocket writer.
//!
//! Ordinary messages are queued in order, in a bounded queue: a client too slow to keep
//! up is disconnected rather than allowed to hold up its room. The roster is different:
//! it is the whole participant list, so only the newest one matters. It is kept in a
//! one-message slot beside the queue, and the queue holds at most one marker saying
//! "send the slot now". When everyone leaves a room of N at once, each remaining session
//! used to be handed up to N full rosters and its queue overflowed (the `bye` behind them
//! was lost); now it takes one queue entry however many rosters the room produces.
//!
//! Ordering: the marker sits where the first roster not yet sent would have been, and
//! the writer sends whatever is newest when it reaches it. A roster therefore arrives at
//! the same point as before or earlier, never later, and the slot only ever holds rosters
//! the room addressed to this participant (a participant who was sent to the waiting
//! room or removed never sees one produced after that).

use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use wardlink_signaling::protocol::{RosterEntry, ServerMessage};

/// Messages queued for one session before it counts as too slow and is disconnected.
pub const SESSION_QUEUE: usize = 256;

/// One entry of a session's queue.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message.
    Message(ServerMessage),
    /// Send the roster now in the slot (see the module documentation).
    Roster,
    /// Flush and close the socket.
    Close,
}

/// What the writer should do next.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// Send this JSON text.
    Text(Utf8Bytes),
    /// Flush and close the socket.
    Close,
}

/// The queue was full (or the writer gone); nothing was queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("session queue full or closed")]
pub struct QueueFull;

type Slot = Arc<Mutex<Option<Utf8Bytes>>>;

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Utf8Bytes>> {
    // The slot holds plain data; a panic elsewhere cannot leave it inconsistent.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sending end: held by the session and by the room it joined.
#[derive(Clone, Debug)]
pub struct SessionTx {
    queue: mpsc::Sender<Outbound>,
    roster: Slot,
}

/// The receiving end: the session's writer task.
#[derive(Debug)]
pub struct SessionRx {
    queue: mpsc::Receiver<Outbound>,
    roster: Slot,
}

/// A session queue holding up to `capacity` entries besides the roster slot.
pub fn channel(capacity: usize) -> (SessionTx, SessionRx) {
    let (tx, rx) = mpsc::channel(capacity);
    let roster = Slot::default();
    (
        SessionTx {
            queue: tx,
            roster: roster.clone(),
        },
        SessionRx { queue: rx, roster },
    )
}

impl SessionTx {
    /// Queues an entry unless the queue is full.
    pub fn try_send(&self, out: Outbound) -> Result<(), QueueFull> {
        self.queue.try_send(out).map_err(|_| QueueFull)
    }

    /// Queues an entry, waiting for room.
    pub async fn send(&self, out: Outbound) -> Result<(), QueueFull> {
        self.queue.send(out).await.map_err(|_| QueueFull)
    }

    /// Makes `roster` (a serialized `roster` message) the one this session sends next,
    /// replacing any it has not sent yet. Takes a queue entry only when no marker is
    /// already waiting.
    pub fn send_roster(&self, roster: Utf8Bytes) -> Result<(), QueueFull> {
        let had_one = lock(&self.roster).replace(roster).is_some();
        if had_one {
            // A marker is queued and not yet taken: it will send this one.
            return Ok(());
        }
        self.try_send(Outbound::Roster).inspect_err(|_| {
            // Not queued, so nothing would ever send it; keep the slot's invariant
            // (full only while a marker waits).
            lock(&self.roster).take();
        })
    }
}

impl SessionRx {
    /// The next frame to write; `None` once every sender is gone and the queue is empty.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.queue.recv().await? {
                Outbound::Message(message) => match serde_json::to_string(&message) {
                    Ok(text) => return Some(Frame::Text(text.into())),
                    // Our own types always serialize; skip rather than end the session.
                    Err(_) => continue,
                },
                Outbound::Roster => {
                    // Taken before it is sent: a roster that arrives meanwhile queues a
                    // new marker.
                    if let Some(text) = lock(&self.roster).take() {
                        return Some(Frame::Text(text));
                    }
                }
                Outbound::Close => return Some(Frame::Close),
            }
        }
    }
}

/// The serialized form of the roster a room last sent, so that a roster sent to N people
/// is serialized once rather than N times (the room shares one list among them).
#[derive(Default)]
pub struct RosterCache {
    last: Option<(Arc<[RosterEntry]>, Utf8Bytes)>,
}

impl RosterCache {
    /// The `roster` message for `participants` as JSON text.
    pub fn serialized(&mut self, participants: &Arc<[RosterEntry]>) -> Option<Utf8Bytes> {
        if let Some((list, text)) = &self.last {
            if Arc::ptr_eq(list, participants) {
                return Some(text.clone());
            }
        }
        let message = ServerMessage::Roster {
            participants: participants.clone(),
        };
        let text: Utf8Bytes = serde_json::to_string(&message).ok()?.into();
        self.last = Some((participants.clone(), text.clone()));
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Utf8Bytes {
        s.to_owned().into()
    }

    fn pong() -> Outbound {
        Outbound::Message(ServerMessage::Pong)
    }

    /// Everything the writer would send now, as strings.
    async fn drain(rx: &mut SessionRx, tx: SessionTx) -> Vec<String> {
        drop(tx);
        let mut seen = Vec::new();
        while let Some(frame) = rx.next().await {
            seen.push(match frame {
                Frame::Text(t) => t.as_str().to_owned(),
                Frame::Close => "close".to_owned(),
            });
        }
        seen
    }

    fn entry(id: &str) -> RosterEntry {
        RosterEntry {
            id: id.to_owned(),
            display_name: id.to_owned(),
            role: wardlink_signaling::Role::CareManager,
            audio_muted: false,
            video_muted: false,
            publishing: Vec::new(),
        }
    }

    #[test]
    fn the_cache_serializes_a_shared_list_once_and_a_new_list_again() {
        let mut cache = RosterCache::default();
        let first: Arc<[RosterEntry]> = vec![entry("a"), entry("b")].into();
        let text = cache.serialized(&first).unwrap();
        let parsed: ServerMessage = serde_json::from_str(text.as_str()).unwrap();
        assert!(
            matches!(parsed, ServerMessage::Roster { participants } if participants.len() == 2)
        );
        // Same list: the very same bytes come back.
        let again = cache.serialized(&first.clone()).unwrap();
        assert_eq!(again.as_str().as_ptr(), text.as_str().as_ptr());
        // An equal but separate list (a later change) is serialized afresh.
        let second: Arc<[RosterEntry]> = vec![entry("a")].into();
        let other = cache.serialized(&second).unwrap();
        assert!(other.as_str().contains(r#""id":"a""#));
        assert!(!other.as_str().contains(r#""id":"b""#));
    }

    #[tokio::test]
    async fn a_thousand_rosters_take_one_queue_entry_and_the_newest_is_sent() {
        let (tx, mut rx) = channel(4);
        for i in 0..1000 {
            tx.send_roster(text(&format!("roster {i}")))
                .expect("never full");
        }
        tx.try_send(pong()).expect("room left in the queue");
        tx.try_send(Outbound::Close)
            .expect("room left in the queue");
        let seen = drain(&mut rx, tx).await;
        assert_eq!(seen, ["roster 999", r#"{"type":"pong"}"#, "close"]);
    }

    #[tokio::test]
    async fn a_roster_arrives_where_the_first_unsent_one_was_and_never_later() {
        let (tx, mut rx) = channel(16);
        tx.try_send(pong()).unwrap();
        tx.send_roster(text("r1")).unwrap();
        tx.try_send(pong()).unwrap();
        tx.send_roster(text("r2")).unwrap();
        tx.try_send(Outbound::Close).unwrap();
        let seen = drain(&mut rx, tx).await;
        let pong = r#"{"type":"pong"}"#;
        assert_eq!(seen, [pong, "r2", pong, "close"]);
    }

    #[tokio::test]
    async fn a_roster_after_the_marker_was_taken_queues_a_new_one() {
        let (tx, mut rx) = channel(16);
        tx.send_roster(text("r1")).unwrap();
        assert_eq!(rx.next().await, Some(Frame::Text(text("r1"))));
        tx.send_roster(text("r2")).unwrap();
        tx.try_send(Outbound::Close).unwrap();
        assert_eq!(rx.next().await, Some(Frame::Text(text("r2"))));
        assert_eq!(rx.next().await, Some(Frame::Close));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_a_roster_and_a_later_one_still_gets_through() {
        let (tx, mut rx) = channel(1);
        tx.try_send(pong()).unwrap();
        assert_eq!(tx.send_roster(text("r1")), Err(QueueFull));
        assert_eq!(tx.try_send(pong()), Err(QueueFull));
        // The writer catches up; the room's next roster is queued again.
        assert!(matches!(rx.next().await, Some(Frame::Text(_))));
        tx.send_roster(text("r2")).unwrap();
        assert_eq!(rx.next().await, Some(Frame::Text(text("r2"))));
    }
}
