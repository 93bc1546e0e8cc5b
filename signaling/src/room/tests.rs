//! Unit tests of the room state machine, and serde checks that keep `PROTOCOL.md` and the
//! wire types from drifting apart.
//!
//! The room is pure, so every test feeds [`Input`]s and asserts on the returned [`Output`]s;
//! the [`Harness`] plays the shell and the media plane with a clock that advances one second
//! per input, so join order is unambiguous.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::*;
use crate::protocol::{IceCandidate, MAX_MESSAGE_BYTES};

use MediaKind::{Audio, Screen, Video};

/// Passes the room's structural check (`v=0` first, at least one media section).
const OFFER_SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                         m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\n";
const ANSWER_SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                          m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n";
const ROOM_ID: &str = "r-3kq9";
const ROOM_TITLE: &str = "退院前カンファレンス";

// ---------------------------------------------------------------------------------------
// Harness: plays the shell and the media plane.
// ---------------------------------------------------------------------------------------

struct Harness {
    room: Room,
    start: Instant,
    ticks: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with_limit(RoomLimits::default().max_participants)
    }

    fn with_limit(max_participants: usize) -> Self {
        Harness {
            room: Room::new(ROOM_ID, ROOM_TITLE, RoomLimits { max_participants }),
            start: Instant::now(),
            ticks: 0,
        }
    }

    /// Feeds an input; audit records are left out (the audit tests use `feed_all`).
    fn feed(&mut self, input: Input) -> Vec<Output> {
        self.feed_all(input)
            .into_iter()
            .filter(|o| !matches!(o, Output::Audit { .. }))
            .collect()
    }

    /// Feeds an input and returns every output, audit records included.
    fn feed_all(&mut self, input: Input) -> Vec<Output> {
        self.ticks += 1;
        let now = self.start + Duration::from_secs(self.ticks);
        self.room.handle(now, input)
    }

    fn join(&mut self, id: &str) -> Vec<Output> {
        self.join_as(id, &name_of(id), Role::Staff)
    }

    /// Joins as the shell does for someone who need not wait (the room still makes guests
    /// wait, whatever the shell says).
    fn join_as(&mut self, id: &str, display_name: &str, role: Role) -> Vec<Output> {
        self.feed(join_input(id, display_name, role, false, false))
    }

    /// Joins as the shell does for a guest: into the waiting room.
    fn wait(&mut self, id: &str, role: Role) -> Vec<Output> {
        self.feed(join_input(id, &name_of(id), role, true, false))
    }

    /// Joins `id` as `role` without waiting and completes any negotiation the join starts.
    fn enter(&mut self, id: &str, role: Role) {
        let out = self.join_as(id, &name_of(id), role);
        assert_joined(&out, id);
        self.settle(out);
    }

    /// Joins everyone as staff and completes any negotiation the joins start.
    fn join_all(&mut self, ids: &[&str]) {
        for id in ids {
            self.enter(id, Role::Staff);
        }
    }

    /// `admitter` lets `id` in from the waiting room; negotiations this starts complete.
    fn admit_settled(&mut self, admitter: &str, id: &str) {
        let out = self.send(admitter, admit(id));
        assert_joined(&out, id);
        self.settle(out);
    }

    fn send(&mut self, id: &str, message: ClientMessage) -> Vec<Output> {
        self.feed(client_input(id, message))
    }

    fn disconnect(&mut self, id: &str) -> Vec<Output> {
        self.feed(Input::Disconnected {
            participant: id.into(),
        })
    }

    fn media(&mut self, event: MediaEvent) -> Vec<Output> {
        self.feed(Input::Media(event))
    }

    fn track_published(&mut self, id: &str, kind: MediaKind) -> Vec<Output> {
        self.media(MediaEvent::TrackPublished {
            participant: id.into(),
            kind,
        })
    }

    /// The media plane's reply to a [`MediaCommand::Subscribe`].
    fn offer_ready(&mut self, id: &str, revision: u32, tracks: &[TrackRef]) -> Vec<Output> {
        self.media(MediaEvent::SubscribeOffer {
            participant: id.into(),
            revision,
            sdp: OFFER_SDP.into(),
            tracks: describe(tracks),
        })
    }

    fn answer(&mut self, id: &str, revision: u32) -> Vec<Output> {
        self.send(
            id,
            ClientMessage::SubscribeAnswer {
                sdp: ANSWER_SDP.into(),
                revision,
            },
        )
    }

    fn peer_failed(&mut self, id: &str, pc: PcKind) -> Vec<Output> {
        self.media(MediaEvent::PeerFailed {
            participant: id.into(),
            pc,
            reason: "did not connect within 20 s".into(),
        })
    }

    /// Completes every subscribe negotiation `out` starts (and the ones those start),
    /// returning everything that was output along the way.
    fn settle(&mut self, out: Vec<Output>) -> Vec<Output> {
        let mut all = Vec::new();
        let mut queue: VecDeque<Output> = out.into();
        while let Some(output) = queue.pop_front() {
            if let Output::Media(MediaCommand::Subscribe {
                participant,
                revision,
                tracks,
            }) = &output
            {
                let (id, revision, tracks) = (participant.clone(), *revision, tracks.clone());
                queue.extend(self.offer_ready(&id, revision, &tracks));
                queue.extend(self.answer(&id, revision));
            }
            all.push(output);
        }
        all
    }

    /// Publishes `kinds` and lets everyone's subscriptions settle.
    fn publish_settled(&mut self, id: &str, kinds: &[MediaKind]) {
        for kind in kinds {
            let out = self.track_published(id, *kind);
            self.settle(out);
        }
    }
}

fn name_of(id: &str) -> String {
    format!("Name of {id}")
}

fn invitation_of(id: &str) -> String {
    format!("inv-{id}")
}

/// A join as the shell feeds it, with the shell's waiting-room flags.
fn join_input(
    id: &str,
    display_name: &str,
    role: Role,
    must_wait: bool,
    second_device: bool,
) -> Input {
    Input::Join {
        participant: id.into(),
        display_name: display_name.into(),
        role,
        invitation: invitation_of(id),
        must_wait,
        second_device,
    }
}

fn client_input(id: &str, message: ClientMessage) -> Input {
    Input::Client {
        participant: id.into(),
        message,
    }
}

fn track(publisher: &str, kind: MediaKind) -> TrackRef {
    TrackRef {
        publisher: publisher.into(),
        kind,
    }
}

/// What the media plane would say each mid of an offer carries.
fn describe(tracks: &[TrackRef]) -> Vec<TrackDescription> {
    tracks
        .iter()
        .enumerate()
        .map(|(mid, t)| TrackDescription {
            mid: mid.to_string(),
            participant_id: t.publisher.clone(),
            kind: t.kind,
        })
        .collect()
}

fn sorted(mut tracks: Vec<TrackRef>) -> Vec<TrackRef> {
    tracks.sort();
    tracks
}

// ---------------------------------------------------------------------------------------
// Output queries.
// ---------------------------------------------------------------------------------------

fn messages_to(out: &[Output], id: &str) -> Vec<ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } if to == id => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn recipients(out: &[Output]) -> Vec<String> {
    let mut ids: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, .. } => Some(to.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn media_commands(out: &[Output]) -> Vec<MediaCommand> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// Subscribe commands by subscriber: (revision, sorted tracks). At most one per subscriber.
fn subscribes(out: &[Output]) -> BTreeMap<String, (u32, Vec<TrackRef>)> {
    let mut map = BTreeMap::new();
    for command in media_commands(out) {
        if let MediaCommand::Subscribe {
            participant,
            revision,
            tracks,
        } = command
        {
            let previous = map.insert(participant.clone(), (revision, sorted(tracks)));
            assert!(
                previous.is_none(),
                "two subscribes for {participant} in one step: {out:?}"
            );
        }
    }
    map
}

fn closes(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Close { participant } => Some(participant.clone()),
            _ => None,
        })
        .collect()
}

/// The one roster message sent to `id` in `out`.
fn roster_to(out: &[Output], id: &str) -> Vec<RosterEntry> {
    let rosters: Vec<Vec<RosterEntry>> = messages_to(out, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Roster { participants } => Some(participants.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(
        rosters.len(),
        1,
        "expected exactly one roster to {id}: {out:?}"
    );
    rosters.into_iter().next().unwrap_or_default()
}

fn ids(roster: &[RosterEntry]) -> Vec<&str> {
    roster.iter().map(|e| e.id.as_str()).collect()
}

fn entry<'a>(roster: &'a [RosterEntry], id: &str) -> &'a RosterEntry {
    roster
        .iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("{id} missing from roster {roster:?}"))
}

/// Asserts `out` is exactly one error to `id`, with this code and fatality, plus a close
/// if fatal.
fn assert_error(out: &[Output], id: &str, code: ErrorCode, fatal: bool) {
    let expected_len = if fatal { 2 } else { 1 };
    assert_eq!(out.len(), expected_len, "unexpected outputs: {out:?}");
    match &out[0] {
        Output::Send {
            to,
            message:
                ServerMessage::Error {
                    code: got,
                    fatal: got_fatal,
                    message,
                },
        } => {
            assert_eq!(to, id);
            assert_eq!(*got, code, "{message}");
            assert_eq!(*got_fatal, fatal, "{message}");
            assert!(!message.is_empty(), "error messages explain themselves");
        }
        other => panic!("expected an error to {id}, got {other:?}"),
    }
    if fatal {
        assert_eq!(
            out[1],
            Output::Close {
                participant: id.into()
            }
        );
    }
}

/// Asserts that `id` was let in: its first message in `out` is `joined`.
fn assert_joined(out: &[Output], id: &str) {
    assert!(
        matches!(
            messages_to(out, id).first(),
            Some(ServerMessage::Joined { .. })
        ),
        "{id} was not admitted: {out:?}"
    );
}

/// Every lobby sent to `id` in `out`.
fn lobbies_to(out: &[Output], id: &str) -> Vec<Vec<WaitingEntry>> {
    messages_to(out, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Lobby { waiting } => Some(waiting),
            _ => None,
        })
        .collect()
}

/// The one lobby sent to `id` in `out`.
fn lobby_to(out: &[Output], id: &str) -> Vec<WaitingEntry> {
    let lobbies = lobbies_to(out, id);
    assert_eq!(
        lobbies.len(),
        1,
        "expected exactly one lobby to {id}: {out:?}"
    );
    lobbies.into_iter().next().unwrap_or_default()
}

fn waiting_ids(waiting: &[WaitingEntry]) -> Vec<&str> {
    waiting.iter().map(|e| e.id.as_str()).collect()
}

/// Every roster in `out`, whether in `joined` or in `roster`.
fn all_rosters(out: &[Output]) -> Vec<Vec<RosterEntry>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                message: ServerMessage::Roster { participants },
                ..
            } => Some(participants.to_vec()),
            Output::Send {
                message: ServerMessage::Joined { roster, .. },
                ..
            } => Some(roster.clone()),
            _ => None,
        })
        .collect()
}

/// An audit record as (actor, action, subject).
type AuditRecord = (String, &'static str, Option<String>);

fn audit(actor: &str, action: &'static str, subject: Option<&str>) -> AuditRecord {
    (actor.into(), action, subject.map(Into::into))
}

fn audits(out: &[Output]) -> Vec<AuditRecord> {
    out.iter()
        .filter_map(|o| match o {
            Output::Audit {
                actor,
                action,
                subject,
            } => Some((actor.clone(), *action, subject.clone())),
            _ => None,
        })
        .collect()
}

/// What a refused action must leave alone: who is present, who waits, whether it ended.
fn snapshot(h: &Harness) -> (Vec<RosterEntry>, Vec<WaitingEntry>, bool, usize) {
    (
        h.room.roster(),
        h.room.waiting_entries(),
        h.room.is_ended(),
        h.room.len(),
    )
}

/// Sends `message` from `id` and asserts that the only outcome is a non-fatal `code` error
/// to the sender: nothing audited, nobody else told, nothing changed.
fn assert_refused(h: &mut Harness, id: &str, message: ClientMessage, code: ErrorCode) {
    let before = snapshot(h);
    let out = h.feed_all(client_input(id, message.clone()));
    assert_eq!(
        out.len(),
        1,
        "{message:?} from {id} did more than fail: {out:?}"
    );
    assert_error(&out, id, code, false);
    assert_eq!(
        snapshot(h),
        before,
        "{message:?} from {id} changed the room"
    );
}

fn reconnects_to(out: &[Output], id: &str) -> Vec<PcKind> {
    messages_to(out, id)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Reconnect { pc, reason } => {
                assert!(!reason.is_empty());
                Some(pc)
            }
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Joining.
// ---------------------------------------------------------------------------------------

#[test]
fn first_join_gets_joined_with_itself_in_the_roster_then_the_empty_lobby() {
    let mut h = Harness::new();
    let out = h.join_as("p-nurse", "  病棟看護師  ", Role::Host);
    let me = RosterEntry {
        id: "p-nurse".into(),
        display_name: "病棟看護師".into(),
        role: Role::Host,
        audio_muted: false,
        video_muted: false,
        publishing: vec![],
    };
    assert_eq!(
        out,
        vec![
            Output::Send {
                to: "p-nurse".into(),
                message: ServerMessage::Joined {
                    protocol: PROTOCOL_VERSION,
                    participant_id: "p-nurse".into(),
                    room_id: ROOM_ID.into(),
                    room_title: ROOM_TITLE.into(),
                    role: Role::Host,
                    display_name: "病棟看護師".into(),
                    roster: vec![me],
                },
            },
            // Whoever may admit learns the waiting room's state on entering.
            Output::Send {
                to: "p-nurse".into(),
                message: ServerMessage::Lobby { waiting: vec![] },
            },
        ]
    );
    assert!(h.room.contains("p-nurse"));
    assert_eq!(h.room.len(), 1);
    assert_eq!(h.room.id(), ROOM_ID);
}

#[test]
fn join_sends_joined_to_the_joiner_and_a_roster_to_everyone_else() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    let out = h.join_as("c", "主治医 田中", Role::Staff);

    let to_c = messages_to(&out, "c");
    assert_eq!(
        to_c.len(),
        2,
        "the joiner gets joined and the lobby, not a roster too: {out:?}"
    );
    let ServerMessage::Joined { roster, .. } = &to_c[0] else {
        panic!("expected joined first, got {to_c:?}");
    };
    assert_eq!(ids(roster), ["a", "b", "c"]);
    assert_eq!(to_c[1], ServerMessage::Lobby { waiting: vec![] });

    for other in ["a", "b"] {
        assert_eq!(
            messages_to(&out, other).len(),
            1,
            "a join changes the roster, not the lobby: {out:?}"
        );
        assert_eq!(
            &roster_to(&out, other),
            roster,
            "everyone sees the same roster"
        );
    }
    let newcomer = entry(roster, "c");
    assert_eq!(newcomer.role, Role::Staff);
    assert_eq!(newcomer.display_name, "主治医 田中");
    assert!(
        media_commands(&out).is_empty(),
        "nobody publishes, so nothing to subscribe to: {out:?}"
    );
}

#[test]
fn one_roster_change_is_one_list_shared_by_every_recipient() {
    // The shell serializes a roster once per list (see the server's `session_queue`), so
    // a change must hand everyone the same list rather than a copy each.
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c", "d"]);
    let out = h.send("a", ClientMessage::Leave);
    let lists: Vec<&std::sync::Arc<[RosterEntry]>> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                message: ServerMessage::Roster { participants },
                ..
            } => Some(participants),
            _ => None,
        })
        .collect();
    assert_eq!(
        lists.len(),
        3,
        "b, c and d each get the new roster: {out:?}"
    );
    assert!(lists.iter().all(|l| std::sync::Arc::ptr_eq(l, lists[0])));
    assert_eq!(ids(lists[0]), ["b", "c", "d"]);
}

#[test]
fn roster_is_in_join_order_not_id_order() {
    let mut h = Harness::new();
    h.join_all(&["p-z", "p-m", "p-a"]);
    assert_eq!(ids(&h.room.roster()), ["p-z", "p-m", "p-a"]);

    // Someone leaving does not reshuffle the rest; a rejoin goes to the end.
    h.disconnect("p-z");
    h.join_all(&["p-z"]);
    assert_eq!(ids(&h.room.roster()), ["p-m", "p-a", "p-z"]);
}

#[test]
fn joins_at_the_same_instant_are_ordered_by_id() {
    let mut room = Room::new(ROOM_ID, ROOM_TITLE, RoomLimits::default());
    let now = Instant::now();
    for id in ["p-b", "p-a"] {
        room.handle(now, join_input(id, &name_of(id), Role::Staff, false, false));
    }
    assert_eq!(ids(&room.roster()), ["p-a", "p-b"]);
}

#[test]
fn a_newcomer_subscribes_to_everything_already_published() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.publish_settled("a", &[Audio, Video]);
    h.publish_settled("b", &[Audio]);

    let out = h.join("c");
    assert_eq!(
        subscribes(&out),
        BTreeMap::from([(
            "c".to_string(),
            (
                1,
                sorted(vec![
                    track("a", Audio),
                    track("a", Video),
                    track("b", Audio)
                ])
            )
        )]),
        "only the newcomer needs a new offer: {out:?}"
    );
    let ServerMessage::Joined { roster, .. } = &messages_to(&out, "c")[0] else {
        panic!("expected joined first: {out:?}");
    };
    assert_eq!(entry(roster, "a").publishing, [Audio, Video]);
    assert_eq!(entry(roster, "b").publishing, [Audio]);
}

#[test]
fn a_full_room_refuses_with_a_fatal_room_full_and_a_close() {
    let mut h = Harness::with_limit(2);
    h.join_all(&["a", "b"]);
    let out = h.join("c");
    assert_error(&out, "c", ErrorCode::RoomFull, true);
    assert!(!h.room.contains("c"));
    assert_eq!(h.room.len(), 2);

    // A departure makes room again.
    h.disconnect("a");
    let out = h.join("c");
    assert!(matches!(
        messages_to(&out, "c").first(),
        Some(ServerMessage::Joined { .. })
    ));
}

#[test]
fn the_default_limit_is_sixteen() {
    let mut h = Harness::new();
    let ids: Vec<String> = (0..16).map(|i| format!("p{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    h.join_all(&refs);
    assert_error(&h.join("p16"), "p16", ErrorCode::RoomFull, true);
}

#[test]
fn invalid_display_names_are_refused_with_a_fatal_invalid_field() {
    let too_long = "x".repeat(MAX_DISPLAY_NAME_CHARS + 1);
    let too_long_japanese = "看".repeat(MAX_DISPLAY_NAME_CHARS + 1);
    for name in [
        "",
        "   ",
        "\t\n",
        too_long.as_str(),
        too_long_japanese.as_str(),
        "Sato\nInjected: line",
        "bell\u{7}",
        "null\u{0}byte",
        "del\u{7f}",
    ] {
        let mut h = Harness::new();
        h.join_all(&["a"]);
        let out = h.join_as("b", name, Role::Family);
        assert_error(&out, "b", ErrorCode::InvalidField, true);
        assert!(!h.room.contains("b"), "{name:?} was admitted");
        assert_eq!(h.room.len(), 1);
    }
}

#[test]
fn display_names_are_limited_in_characters_not_bytes_and_trimmed() {
    // 64 three-byte characters (192 bytes) plus surrounding blanks is fine.
    let name = "看".repeat(MAX_DISPLAY_NAME_CHARS);
    let mut h = Harness::new();
    let out = h.join_as("a", &format!("  {name}\t"), Role::Host);
    let ServerMessage::Joined { display_name, .. } = &messages_to(&out, "a")[0] else {
        panic!("expected joined: {out:?}");
    };
    assert_eq!(display_name, &name);
    assert_eq!(
        validate_display_name(" 佐藤 花子 "),
        Ok("佐藤 花子".to_string())
    );
}

#[test]
fn joining_twice_with_the_same_id_is_out_of_order_and_not_fatal() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    let out = h.join("a");
    assert_error(&out, "a", ErrorCode::OutOfOrder, false);
    assert_eq!(h.room.len(), 1);
}

#[test]
fn a_join_message_after_joining_is_out_of_order() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    let out = h.send(
        "a",
        ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            token: "whatever".into(),
            display_name: None,
            device: None,
        },
    );
    assert_error(&out, "a", ErrorCode::OutOfOrder, false);
}

#[test]
fn messages_from_someone_not_in_the_room_are_out_of_order() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    for message in [
        ClientMessage::Ping,
        ClientMessage::PublishOffer {
            sdp: OFFER_SDP.into(),
            screen_mid: None,
        },
        ClientMessage::Mute {
            kind: Audio,
            muted: true,
        },
        ClientMessage::Leave,
    ] {
        let out = h.send("stranger", message);
        assert_error(&out, "stranger", ErrorCode::OutOfOrder, false);
    }
    assert_eq!(ids(&h.room.roster()), ["a"]);
}

#[test]
fn ping_is_answered_with_pong_to_the_sender_only() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    assert_eq!(
        h.send("a", ClientMessage::Ping),
        vec![Output::Send {
            to: "a".into(),
            message: ServerMessage::Pong
        }]
    );
}

// ---------------------------------------------------------------------------------------
// Publishing.
// ---------------------------------------------------------------------------------------

fn publish_offer() -> ClientMessage {
    ClientMessage::PublishOffer {
        sdp: OFFER_SDP.into(),
        screen_mid: None,
    }
}

fn publish_answer_event(id: &str) -> MediaEvent {
    MediaEvent::PublishAnswer {
        participant: id.into(),
        sdp: ANSWER_SDP.into(),
    }
}

#[test]
fn publish_offer_goes_to_the_media_plane() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    assert_eq!(
        h.send("a", publish_offer()),
        vec![Output::Media(MediaCommand::Publish {
            participant: "a".into(),
            sdp: OFFER_SDP.into(),
            screen_mid: None,
        })]
    );
}

#[test]
fn a_second_publish_offer_while_one_is_pending_is_out_of_order() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    h.send("a", publish_offer());
    assert_error(
        &h.send("a", publish_offer()),
        "a",
        ErrorCode::OutOfOrder,
        false,
    );

    // Once answered, renegotiation is a fresh offer.
    h.media(publish_answer_event("a"));
    assert_eq!(media_commands(&h.send("a", publish_offer())).len(), 1);
}

#[test]
fn a_publish_offer_that_is_not_sdp_is_invalid_sdp_and_leaves_no_pending_state() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    for garbage in [
        "",
        "hello",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n",
        "m=audio 9\r\nv=0\r\n",
    ] {
        let out = h.send(
            "a",
            ClientMessage::PublishOffer {
                sdp: garbage.into(),
                screen_mid: None,
            },
        );
        assert_error(&out, "a", ErrorCode::InvalidSdp, false);
    }
    assert_eq!(media_commands(&h.send("a", publish_offer())).len(), 1);
}

#[test]
fn the_media_planes_publish_answer_goes_to_the_publisher_only() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.send("a", publish_offer());
    assert_eq!(
        h.media(publish_answer_event("a")),
        vec![Output::Send {
            to: "a".into(),
            message: ServerMessage::PublishAnswer {
                sdp: ANSWER_SDP.into()
            },
        }]
    );
}

#[test]
fn publish_negotiation_failure_is_reported_without_reconnect_and_clears_the_pending_offer() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.send("a", publish_offer());
    let out = h.media(MediaEvent::NegotiationFailed {
        participant: "a".into(),
        pc: PcKind::Publish,
        code: ErrorCode::InvalidSdp,
        message: "no usable codec".into(),
    });
    assert_eq!(
        out,
        vec![Output::Send {
            to: "a".into(),
            message: ServerMessage::Error {
                code: ErrorCode::InvalidSdp,
                message: "no usable codec".into(),
                fatal: false,
            },
        }]
    );
    assert_eq!(media_commands(&h.send("a", publish_offer())).len(), 1);
}

#[test]
fn a_published_track_updates_the_roster_and_subscribes_everyone_else() {
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c"]);
    let out = h.track_published("a", Audio);

    for id in ["a", "b", "c"] {
        let roster = roster_to(&out, id);
        assert_eq!(
            entry(&roster, "a").publishing,
            [Audio],
            "publisher included"
        );
        assert!(entry(&roster, "b").publishing.is_empty());
    }
    assert_eq!(
        subscribes(&out),
        BTreeMap::from([
            ("b".to_string(), (1, vec![track("a", Audio)])),
            ("c".to_string(), (1, vec![track("a", Audio)])),
        ]),
        "never subscribed to itself: {out:?}"
    );
}

#[test]
fn each_subscriber_gets_everyone_elses_tracks_but_never_its_own() {
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c"]);
    h.publish_settled("a", &[Audio, Video]);
    let out = h.track_published("b", Video);
    assert_eq!(
        subscribes(&out),
        BTreeMap::from([
            ("a".to_string(), (1, vec![track("b", Video)])),
            (
                "c".to_string(),
                (
                    3,
                    sorted(vec![
                        track("a", Audio),
                        track("a", Video),
                        track("b", Video)
                    ])
                )
            ),
        ])
    );
}

#[test]
fn a_repeated_track_published_changes_nothing() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.publish_settled("a", &[Audio]);
    assert_eq!(h.track_published("a", Audio), vec![]);
}

#[test]
fn unpublish_stops_the_media_updates_the_roster_and_resubscribes_the_others() {
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c"]);
    h.publish_settled("a", &[Audio, Video]);
    h.publish_settled("b", &[Audio]);

    let out = h.send("a", ClientMessage::Unpublish);
    assert!(media_commands(&out).contains(&MediaCommand::Unpublish {
        participant: "a".into()
    }));
    for id in ["a", "b", "c"] {
        assert!(entry(&roster_to(&out, id), "a").publishing.is_empty());
    }
    let subs = subscribes(&out);
    assert_eq!(
        subs.keys().collect::<Vec<_>>(),
        ["b", "c"],
        "a's own view is unchanged"
    );
    assert_eq!(subs["b"].1, vec![]);
    assert_eq!(subs["c"].1, vec![track("b", Audio)]);
}

#[test]
fn unpublish_when_not_publishing_only_tells_the_media_plane() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    assert_eq!(
        h.send("a", ClientMessage::Unpublish),
        vec![Output::Media(MediaCommand::Unpublish {
            participant: "a".into()
        })]
    );
}

// ---------------------------------------------------------------------------------------
// Subscribing.
// ---------------------------------------------------------------------------------------

#[test]
fn the_media_planes_subscribe_offer_goes_to_the_subscriber() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.track_published("a", Audio);
    let out = h.offer_ready("b", 1, &[track("a", Audio)]);
    assert_eq!(
        out,
        vec![Output::Send {
            to: "b".into(),
            message: ServerMessage::SubscribeOffer {
                sdp: OFFER_SDP.into(),
                revision: 1,
                tracks: vec![TrackDescription {
                    mid: "0".into(),
                    participant_id: "a".into(),
                    kind: Audio,
                }],
            },
        }]
    );
}

#[test]
fn a_subscribe_answer_must_echo_the_outstanding_revision() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.track_published("a", Audio);
    h.offer_ready("b", 1, &[track("a", Audio)]);

    for wrong in [0, 2, 7] {
        assert_error(&h.answer("b", wrong), "b", ErrorCode::OutOfOrder, false);
    }
    assert_eq!(
        h.answer("b", 1),
        vec![Output::Media(MediaCommand::SubscribeAnswer {
            participant: "b".into(),
            sdp: ANSWER_SDP.into(),
        })]
    );
    // Answered: nothing is outstanding any more.
    assert_error(&h.answer("b", 1), "b", ErrorCode::OutOfOrder, false);
}

#[test]
fn a_subscribe_answer_with_no_offer_at_all_is_out_of_order() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    assert_error(&h.answer("b", 1), "b", ErrorCode::OutOfOrder, false);
}

#[test]
fn a_subscribe_answer_that_is_not_sdp_is_invalid_sdp_and_the_offer_stays_outstanding() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.track_published("a", Audio);
    h.offer_ready("b", 1, &[track("a", Audio)]);
    let out = h.send(
        "b",
        ClientMessage::SubscribeAnswer {
            sdp: "not sdp".into(),
            revision: 1,
        },
    );
    assert_error(&out, "b", ErrorCode::InvalidSdp, false);
    assert_eq!(media_commands(&h.answer("b", 1)).len(), 1);
}

#[test]
fn changes_while_an_offer_is_outstanding_wait_for_the_answer() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    assert_eq!(subscribes(&h.track_published("a", Audio))["b"].0, 1);

    // The set changes before the media plane has even produced offer 1, and again after
    // the client has it: no second offer may cross the first.
    let out = h.track_published("a", Video);
    assert!(
        subscribes(&out).is_empty(),
        "offered twice at once: {out:?}"
    );
    assert_eq!(roster_to(&out, "b").len(), 2, "the roster is not held back");
    h.offer_ready("b", 1, &[track("a", Audio)]);
    h.join_all(&["c"]);
    let out = h.track_published("c", Audio);
    assert!(
        !subscribes(&out).contains_key("b"),
        "offered twice at once: {out:?}"
    );

    // The answer releases exactly one new offer with the whole current set.
    let out = h.answer("b", 1);
    assert_eq!(
        out,
        vec![
            Output::Media(MediaCommand::SubscribeAnswer {
                participant: "b".into(),
                sdp: ANSWER_SDP.into(),
            }),
            Output::Media(MediaCommand::Subscribe {
                participant: "b".into(),
                revision: 2,
                tracks: vec![track("a", Audio), track("a", Video), track("c", Audio)],
            }),
        ],
        "the answer is applied before the next offer is requested"
    );
}

#[test]
fn a_change_that_is_undone_while_an_offer_is_outstanding_needs_no_new_offer() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.track_published("a", Audio);
    h.offer_ready("b", 1, &[track("a", Audio)]);
    h.join_all(&["c"]);
    h.track_published("c", Video);
    h.disconnect("c");
    let out = h.answer("b", 1);
    assert!(
        subscribes(&out).is_empty(),
        "b already has exactly a's audio: {out:?}"
    );
}

#[test]
fn a_stale_subscribe_offer_is_dropped() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.track_published("a", Audio);
    // Offer 1 is superseded by a reset before the media plane delivers it.
    let out = h.peer_failed("b", PcKind::Subscribe);
    let fresh = subscribes(&out)["b"].0;
    assert!(fresh > 1, "revisions only increase (gaps allowed)");

    assert_eq!(h.offer_ready("b", 1, &[track("a", Audio)]), vec![]);
    assert_error(&h.answer("b", 1), "b", ErrorCode::OutOfOrder, false);
    assert_eq!(
        messages_to(&h.offer_ready("b", fresh, &[track("a", Audio)]), "b").len(),
        1
    );
    assert_eq!(media_commands(&h.answer("b", fresh)).len(), 1);
}

/// Both subscribe resets (`NegotiationFailed` and `PeerFailed` on the subscribe connection)
/// must make every offer requested before them stale, also when nothing is left to receive.
#[test]
fn an_offer_in_flight_is_stale_after_a_reset_even_when_nothing_is_left_to_receive() {
    for negotiation_failed in [true, false] {
        let mut h = Harness::new();
        h.join_all(&["a", "b"]);
        h.track_published("a", Audio);
        h.offer_ready("b", 1, &[track("a", Audio)]);
        h.track_published("a", Video);
        // b answers offer 1, which releases offer 2 (a's audio + video) to the media plane.
        assert_eq!(subscribes(&h.answer("b", 1))["b"].0, 2);
        // Before offer 2 comes back, a leaves and b's subscribe connection is reset (the
        // media plane reports a failed answer before it handles the next command, so this
        // order is what the real media plane produces).
        h.disconnect("a");
        let out = if negotiation_failed {
            h.media(MediaEvent::NegotiationFailed {
                participant: "b".into(),
                pc: PcKind::Subscribe,
                code: ErrorCode::InvalidSdp,
                message: "the answer could not be applied".into(),
            })
        } else {
            h.peer_failed("b", PcKind::Subscribe)
        };
        assert_eq!(reconnects_to(&out, "b"), [PcKind::Subscribe]);
        assert!(subscribes(&out).is_empty(), "nothing left to receive");

        // Offer 2 was requested before the reset and lists a departed participant: stale.
        let out = h.offer_ready("b", 2, &[track("a", Audio), track("a", Video)]);
        assert_eq!(
            out,
            vec![],
            "stale offer forwarded (negotiation_failed: {negotiation_failed})"
        );
    }
}

#[test]
fn subscribe_offers_for_unknown_participants_are_ignored() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    assert_eq!(h.offer_ready("gone", 1, &[]), vec![]);
}

// ---------------------------------------------------------------------------------------
// Mute.
// ---------------------------------------------------------------------------------------

fn mute(kind: MediaKind, muted: bool) -> ClientMessage {
    ClientMessage::Mute { kind, muted }
}

#[test]
fn mute_is_broadcast_in_the_roster_to_everyone() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    let out = h.send("a", mute(Audio, true));
    assert_eq!(recipients(&out), ["a", "b"]);
    for id in ["a", "b"] {
        let roster = roster_to(&out, id);
        assert!(entry(&roster, "a").audio_muted);
        assert!(!entry(&roster, "a").video_muted, "kinds are independent");
        assert!(!entry(&roster, "b").audio_muted);
    }
    assert!(media_commands(&out).is_empty(), "mute is informational");

    let out = h.send("a", mute(Video, true));
    let roster = roster_to(&out, "b");
    assert!(entry(&roster, "a").audio_muted && entry(&roster, "a").video_muted);
}

#[test]
fn a_repeated_identical_mute_broadcasts_nothing() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    assert_eq!(h.send("a", mute(Audio, false)), vec![], "already unmuted");
    h.send("a", mute(Audio, true));
    assert_eq!(h.send("a", mute(Audio, true)), vec![]);
    let out = h.send("a", mute(Audio, false));
    assert!(!entry(&roster_to(&out, "b"), "a").audio_muted);
}

// ---------------------------------------------------------------------------------------
// ICE.
// ---------------------------------------------------------------------------------------

fn ice(pc: PcKind, line: &str) -> ClientMessage {
    ClientMessage::IceCandidate {
        pc,
        candidate: IceCandidate {
            candidate: line.into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("EsAw".into()),
        },
    }
}

#[test]
fn trickled_candidates_go_to_the_media_plane_including_end_of_candidates() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    let line = "candidate:842163049 1 udp 1677729535 192.0.2.10 61665 typ srflx";
    for (pc, line) in [
        (PcKind::Publish, line),
        (PcKind::Subscribe, ""),
        (PcKind::Publish, ""),
    ] {
        assert_eq!(
            h.send("a", ice(pc, line)),
            vec![Output::Media(MediaCommand::RemoteCandidate {
                participant: "a".into(),
                pc,
                candidate: line.into(),
            })]
        );
    }
}

#[test]
fn an_overlong_candidate_is_an_invalid_field() {
    let mut h = Harness::new();
    h.join_all(&["a"]);
    let ok = format!("candidate:{}", "x".repeat(1024 - "candidate:".len()));
    assert_eq!(
        media_commands(&h.send("a", ice(PcKind::Publish, &ok))).len(),
        1
    );
    let long = format!("{ok}x");
    assert_error(
        &h.send("a", ice(PcKind::Publish, &long)),
        "a",
        ErrorCode::InvalidField,
        false,
    );
}

// ---------------------------------------------------------------------------------------
// Leaving.
// ---------------------------------------------------------------------------------------

/// a publishes audio + video, b publishes audio, c only watches; all settled.
fn three_with_media() -> Harness {
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c"]);
    h.publish_settled("a", &[Audio, Video]);
    h.publish_settled("b", &[Audio]);
    h
}

#[test]
fn leave_says_bye_closes_removes_and_resubscribes_the_others() {
    let mut h = three_with_media();
    let out = h.send("a", ClientMessage::Leave);

    assert_eq!(
        out[..2],
        [
            Output::Send {
                to: "a".into(),
                message: ServerMessage::Bye {
                    reason: "left".into()
                },
            },
            Output::Close {
                participant: "a".into()
            },
        ],
        "bye first, then close: {out:?}"
    );
    assert_eq!(messages_to(&out, "a").len(), 1, "nothing after bye");
    assert_eq!(closes(&out), ["a"]);
    assert!(media_commands(&out).contains(&MediaCommand::Remove {
        participant: "a".into()
    }));
    for id in ["b", "c"] {
        assert_eq!(ids(&roster_to(&out, id)), ["b", "c"]);
    }
    assert_eq!(
        subscribes(&out),
        BTreeMap::from([
            ("b".to_string(), (3, vec![])),
            ("c".to_string(), (4, vec![track("b", Audio)])),
        ]),
        "the leaver's tracks are dropped, the others' kept"
    );
    assert!(!h.room.contains("a"));
}

#[test]
fn disconnect_is_a_leave_without_bye_or_close() {
    let mut h = three_with_media();
    let out = h.disconnect("a");
    assert!(messages_to(&out, "a").is_empty());
    assert!(closes(&out).is_empty(), "the socket is already gone");
    assert!(media_commands(&out).contains(&MediaCommand::Remove {
        participant: "a".into()
    }));
    assert_eq!(ids(&roster_to(&out, "c")), ["b", "c"]);
    assert_eq!(subscribes(&out)["c"].1, vec![track("b", Audio)]);
    assert!(!out.contains(&Output::Empty));
}

#[test]
fn leaving_during_an_outstanding_offer_is_reoffered_after_the_answer() {
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c"]);
    h.publish_settled("a", &[Audio]);
    h.track_published("b", Audio);
    h.offer_ready("c", 2, &[track("a", Audio), track("b", Audio)]);

    let out = h.disconnect("a");
    assert!(
        !subscribes(&out).contains_key("c"),
        "c's offer 2 is still out: {out:?}"
    );
    let out = h.answer("c", 2);
    assert_eq!(subscribes(&out)["c"], (3, vec![track("b", Audio)]));
}

#[test]
fn a_leaver_who_published_nothing_changes_no_subscription() {
    let mut h = Harness::new();
    h.join_all(&["a", "b", "c"]);
    h.publish_settled("a", &[Audio]);
    // a adds video: b answers its offer, c's is still out when b leaves.
    let out = h.track_published("a", Video);
    let offers = subscribes(&out);
    let (rb, tb) = offers["b"].clone();
    let (rc, tc) = offers["c"].clone();
    h.offer_ready("b", rb, &tb);
    h.answer("b", rb);
    h.offer_ready("c", rc, &tc);

    let out = h.send("b", ClientMessage::Leave);
    assert_eq!(ids(&roster_to(&out, "c")), ["a", "c"]);
    assert!(subscribes(&out).is_empty(), "nothing to re-offer: {out:?}");
    let out = h.answer("c", rc);
    assert!(
        subscribes(&out).is_empty(),
        "c's answered offer already had everything: {out:?}"
    );
    assert_eq!(
        sorted(tc),
        sorted(vec![track("a", Audio), track("a", Video)])
    );
}

#[test]
fn the_last_one_out_empties_the_room() {
    for leave_politely in [true, false] {
        let mut h = Harness::new();
        h.join_all(&["a", "b"]);
        h.publish_settled("a", &[Audio]);
        h.disconnect("b");
        let out = if leave_politely {
            h.send("a", ClientMessage::Leave)
        } else {
            h.disconnect("a")
        };
        assert_eq!(out.last(), Some(&Output::Empty), "{out:?}");
        assert!(
            out.iter().all(|o| !matches!(
                o,
                Output::Send {
                    message: ServerMessage::Roster { .. },
                    ..
                }
            )),
            "nobody left to tell: {out:?}"
        );
        assert!(media_commands(&out).contains(&MediaCommand::Remove {
            participant: "a".into()
        }));
        assert!(h.room.is_empty());
    }
}

#[test]
fn a_second_leave_or_disconnect_does_nothing() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.send("a", ClientMessage::Leave);
    assert_eq!(h.disconnect("a"), vec![]);
    assert_eq!(h.disconnect("never-joined"), vec![]);
    assert_error(
        &h.send("a", ClientMessage::Leave),
        "a",
        ErrorCode::OutOfOrder,
        false,
    );
}

#[test]
fn media_events_about_departed_participants_are_ignored() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.send("a", publish_offer());
    h.disconnect("a");
    for event in [
        publish_answer_event("a"),
        MediaEvent::TrackPublished {
            participant: "a".into(),
            kind: Audio,
        },
        MediaEvent::PeerFailed {
            participant: "a".into(),
            pc: PcKind::Publish,
            reason: "gone".into(),
        },
        MediaEvent::NegotiationFailed {
            participant: "a".into(),
            pc: PcKind::Subscribe,
            code: ErrorCode::InvalidSdp,
            message: "gone".into(),
        },
    ] {
        assert_eq!(h.media(event.clone()), vec![], "{event:?}");
    }
    assert!(h.room.roster()[0].publishing.is_empty());
}

// ---------------------------------------------------------------------------------------
// Failures and reconnects.
// ---------------------------------------------------------------------------------------

#[test]
fn a_failed_publish_connection_asks_for_reconnect_and_withdraws_its_tracks() {
    let mut h = three_with_media();
    h.send("a", publish_offer()); // a renegotiation in flight when the connection fails
    let out = h.peer_failed("a", PcKind::Publish);

    assert_eq!(reconnects_to(&out, "a"), [PcKind::Publish]);
    assert!(
        matches!(messages_to(&out, "a")[0], ServerMessage::Reconnect { .. }),
        "reconnect comes first: {out:?}"
    );
    for id in ["a", "b", "c"] {
        assert!(entry(&roster_to(&out, id), "a").publishing.is_empty());
    }
    let subs = subscribes(&out);
    assert_eq!(subs.keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(subs["b"].1, vec![]);
    assert_eq!(subs["c"].1, vec![track("b", Audio)]);
    assert!(
        !media_commands(&out).iter().any(|c| matches!(
            c,
            MediaCommand::Unpublish { .. } | MediaCommand::Remove { .. }
        )),
        "the media plane already tore it down: {out:?}"
    );
    h.settle(out);

    // The client's fresh offer is accepted at once, and its media comes back.
    assert_eq!(media_commands(&h.send("a", publish_offer())).len(), 1);
    let out = h.track_published("a", Video);
    assert_eq!(
        subscribes(&out)["c"].1,
        sorted(vec![track("a", Video), track("b", Audio)])
    );
}

#[test]
fn a_failed_publish_connection_that_published_nothing_only_asks_for_reconnect() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.send("a", publish_offer());
    let out = h.peer_failed("a", PcKind::Publish);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(reconnects_to(&out, "a"), [PcKind::Publish]);
}

#[test]
fn a_failed_subscribe_connection_is_reoffered_in_full() {
    let mut h = three_with_media();
    let out = h.peer_failed("c", PcKind::Subscribe);
    assert_eq!(reconnects_to(&out, "c"), [PcKind::Subscribe]);
    let subs = subscribes(&out);
    assert_eq!(subs.keys().collect::<Vec<_>>(), ["c"], "{out:?}");
    let (revision, tracks) = &subs["c"];
    assert!(*revision > 3, "c had answered revision 3");
    assert_eq!(
        tracks,
        &sorted(vec![
            track("a", Audio),
            track("a", Video),
            track("b", Audio)
        ]),
        "same track set as before, on a fresh connection"
    );
    assert_eq!(recipients(&out), ["c"], "no roster change");
}

#[test]
fn a_subscribe_failure_mid_negotiation_restarts_with_one_fresh_offer() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    h.track_published("a", Audio);
    h.offer_ready("b", 1, &[track("a", Audio)]);
    h.track_published("a", Video); // b's subscription is now dirty
    let out = h.peer_failed("b", PcKind::Subscribe);
    let (fresh, tracks) = subscribes(&out)["b"].clone();
    assert!(fresh > 1);
    assert_eq!(tracks, [track("a", Audio), track("a", Video)]);
    assert_error(&h.answer("b", 1), "b", ErrorCode::OutOfOrder, false);
    h.offer_ready("b", fresh, &tracks);
    let out = h.answer("b", fresh);
    assert!(
        subscribes(&out).is_empty(),
        "the reset offer already had everything: {out:?}"
    );
}

#[test]
fn a_failed_subscribe_connection_with_nothing_to_receive_is_not_reoffered() {
    let mut h = Harness::new();
    h.join_all(&["a", "b"]);
    let out = h.peer_failed("b", PcKind::Subscribe);
    assert_eq!(reconnects_to(&out, "b"), [PcKind::Subscribe]);
    assert!(media_commands(&out).is_empty());
}

#[test]
fn subscribe_negotiation_failure_reports_reconnects_and_reoffers() {
    let mut h = three_with_media();
    let (first, tracks) = subscribes(&h.track_published("c", Video))["a"].clone();
    h.offer_ready("a", first, &tracks);
    // c's audio arrives meanwhile, so a's answer releases the next offer at once ...
    h.track_published("c", Audio);
    let (second, second_tracks) = subscribes(&h.answer("a", first))["a"].clone();
    assert_eq!(second, first + 1);

    // ... and then the media plane fails to apply that answer and drops the connection.
    let out = h.media(MediaEvent::NegotiationFailed {
        participant: "a".into(),
        pc: PcKind::Subscribe,
        code: ErrorCode::InvalidSdp,
        message: "answer rejected".into(),
    });
    assert_eq!(
        messages_to(&out, "a")[0],
        ServerMessage::Error {
            code: ErrorCode::InvalidSdp,
            message: "answer rejected".into(),
            fatal: false,
        },
        "the error comes first: {out:?}"
    );
    assert_eq!(reconnects_to(&out, "a"), [PcKind::Subscribe]);
    let full = sorted(vec![
        track("b", Audio),
        track("c", Audio),
        track("c", Video),
    ]);
    let (fresh, tracks) = subscribes(&out)["a"].clone();
    assert!(fresh > second);
    assert_eq!(tracks, full, "one fresh offer with the full set");
    assert_eq!(recipients(&out), ["a"]);

    // The offer requested before the failure is stale; the fresh one completes.
    assert_eq!(h.offer_ready("a", second, &second_tracks), vec![]);
    assert_error(&h.answer("a", second), "a", ErrorCode::OutOfOrder, false);
    h.offer_ready("a", fresh, &full);
    assert_eq!(media_commands(&h.answer("a", fresh)).len(), 1);
}

// ---------------------------------------------------------------------------------------
// Waiting room, roles and host controls.
// ---------------------------------------------------------------------------------------

/// The three guest roles, each with the id the fixtures give it.
const GUESTS: [(&str, Role); 3] = [
    ("cm", Role::CareManager),
    ("sv", Role::Surveyor),
    ("f", Role::Family),
];

fn admit(id: &str) -> ClientMessage {
    ClientMessage::Admit {
        participant_id: id.into(),
    }
}

fn deny(id: &str) -> ClientMessage {
    ClientMessage::Deny {
        participant_id: id.into(),
    }
}

fn remove(id: &str) -> ClientMessage {
    ClientMessage::Remove {
        participant_id: id.into(),
    }
}

fn mute_participant(id: &str, kind: MediaKind) -> ClientMessage {
    ClientMessage::MuteParticipant {
        participant_id: id.into(),
        kind,
    }
}

fn transfer_host(id: &str) -> ClientMessage {
    ClientMessage::TransferHost {
        participant_id: id.into(),
    }
}

fn screen_offer() -> ClientMessage {
    ClientMessage::PublishOffer {
        sdp: OFFER_SDP.into(),
        screen_mid: Some("2".into()),
    }
}

fn bye(reason: &str) -> ServerMessage {
    ServerMessage::Bye {
        reason: reason.into(),
    }
}

/// Host `h` and staff `s` present; `h` publishes audio and video.
fn hospital_side() -> Harness {
    let mut h = Harness::new();
    h.enter("h", Role::Host);
    h.enter("s", Role::Staff);
    h.publish_settled("h", &[Audio, Video]);
    h
}

/// [`hospital_side`] plus every guest of [`GUESTS`], each admitted by the host.
fn full_conference() -> Harness {
    let mut h = hospital_side();
    for (id, role) in GUESTS {
        h.wait(id, role);
        h.admit_settled("h", id);
    }
    h
}

#[test]
fn a_waiting_guest_gets_only_waiting_and_only_those_who_may_admit_get_the_lobby() {
    let mut h = hospital_side();
    h.wait("f", Role::Family);
    h.admit_settled("h", "f");

    let out = h.feed(join_input(
        "cm",
        "ケアマネジャー 佐藤",
        Role::CareManager,
        true,
        false,
    ));
    assert_eq!(
        messages_to(&out, "cm"),
        [ServerMessage::Waiting {
            participant_id: "cm".into(),
            room_title: ROOM_TITLE.into(),
            display_name: "ケアマネジャー 佐藤".into(),
            role: Role::CareManager,
        }],
        "no roster, no lobby, no media for someone waiting"
    );
    let expected = vec![WaitingEntry {
        id: "cm".into(),
        display_name: "ケアマネジャー 佐藤".into(),
        role: Role::CareManager,
        invitation: invitation_of("cm"),
        second_device: false,
    }];
    for admitter in ["h", "s"] {
        assert_eq!(
            messages_to(&out, admitter),
            [ServerMessage::Lobby {
                waiting: expected.clone()
            }],
            "the roster does not change while someone waits"
        );
    }
    assert!(
        messages_to(&out, "f").is_empty(),
        "guests are not told about the waiting room: {out:?}"
    );
    assert!(
        media_commands(&out).is_empty(),
        "h publishes, yet nothing is subscribed for cm: {out:?}"
    );
    assert!(h.room.contains("cm"));
    assert_eq!(ids(&h.room.roster()), ["h", "s", "f"]);
}

#[test]
fn every_guest_role_waits_even_when_the_shell_does_not_ask() {
    for (id, role) in GUESTS {
        let mut h = hospital_side();
        let out = h.join_as(id, &name_of(id), role);
        assert!(
            matches!(
                messages_to(&out, id)[..],
                [ServerMessage::Waiting { role: r, .. }] if r == role
            ),
            "{role} entered without admission: {out:?}"
        );
        assert_eq!(waiting_ids(&lobby_to(&out, "h")), [id]);
        assert_eq!(ids(&h.room.roster()), ["h", "s"]);
    }
}

#[test]
fn a_waiting_participant_may_only_ping_and_leave() {
    let mut h = hospital_side();
    h.wait("cm", Role::CareManager);
    h.wait("f", Role::Family);
    for message in [
        publish_offer(),
        screen_offer(),
        ClientMessage::Unpublish,
        ClientMessage::SubscribeAnswer {
            sdp: ANSWER_SDP.into(),
            revision: 1,
        },
        ice(PcKind::Publish, ""),
        mute(Audio, true),
        admit("f"),
        deny("f"),
        remove("s"),
        mute_participant("h", Audio),
        transfer_host("s"),
        ClientMessage::EndConference,
        ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            token: "whatever".into(),
            display_name: None,
            device: None,
        },
    ] {
        assert_refused(&mut h, "cm", message, ErrorCode::Forbidden);
    }

    assert_eq!(
        h.send("cm", ClientMessage::Ping),
        vec![Output::Send {
            to: "cm".into(),
            message: ServerMessage::Pong
        }]
    );

    let out = h.send("cm", ClientMessage::Leave);
    assert_eq!(
        out[..2],
        [
            Output::Send {
                to: "cm".into(),
                message: bye("left"),
            },
            Output::Close {
                participant: "cm".into()
            },
        ]
    );
    for admitter in ["h", "s"] {
        assert_eq!(
            messages_to(&out, admitter),
            [ServerMessage::Lobby {
                waiting: h.room.waiting_entries()
            }],
            "a lobby update and no roster: {out:?}"
        );
    }
    assert_eq!(waiting_ids(&h.room.waiting_entries()), ["f"]);
    assert!(messages_to(&out, "f").is_empty());
    assert!(!h.room.contains("cm"));
}

#[test]
fn a_waiting_participant_who_disconnects_leaves_the_lobby() {
    let mut h = hospital_side();
    h.wait("cm", Role::CareManager);
    let out = h.disconnect("cm");
    assert!(messages_to(&out, "cm").is_empty());
    assert!(closes(&out).is_empty(), "the socket is already gone");
    for admitter in ["h", "s"] {
        assert_eq!(lobby_to(&out, admitter), []);
    }
    assert_eq!(recipients(&out), ["h", "s"], "no roster change: {out:?}");
    assert!(!h.room.contains("cm"));
}

#[test]
fn admitting_a_guest_brings_them_in_with_the_roster_and_the_published_media() {
    let mut h = hospital_side();
    h.wait("cm", Role::CareManager);
    h.wait("f", Role::Family);
    let out = h.send("h", admit("cm"));

    let to_cm = messages_to(&out, "cm");
    assert_eq!(to_cm.len(), 1, "joined only: guests get no lobby: {out:?}");
    let ServerMessage::Joined {
        participant_id,
        role,
        display_name,
        roster,
        ..
    } = &to_cm[0]
    else {
        panic!("expected joined: {out:?}");
    };
    assert_eq!(
        (participant_id.as_str(), *role, display_name.clone()),
        ("cm", Role::CareManager, name_of("cm"))
    );
    assert_eq!(ids(roster), ["h", "s", "cm"]);
    for admitter in ["h", "s"] {
        assert_eq!(&roster_to(&out, admitter), roster);
        assert_eq!(waiting_ids(&lobby_to(&out, admitter)), ["f"]);
    }
    assert!(messages_to(&out, "f").is_empty(), "still waiting: {out:?}");
    assert_eq!(
        subscribes(&out),
        BTreeMap::from([(
            "cm".to_string(),
            (1, vec![track("h", Audio), track("h", Video)])
        )]),
        "only the newcomer needs an offer: {out:?}"
    );
    assert_eq!(h.room.roster(), *roster);
}

#[test]
fn denying_says_bye_and_closes_without_touching_the_roster() {
    let mut h = hospital_side();
    h.wait("cm", Role::CareManager);
    let roster = h.room.roster();
    let out = h.send("s", deny("cm"));
    assert_eq!(messages_to(&out, "cm"), [bye("denied")]);
    assert_eq!(closes(&out), ["cm"]);
    for admitter in ["h", "s"] {
        assert_eq!(
            messages_to(&out, admitter),
            [ServerMessage::Lobby { waiting: vec![] }],
            "no roster: {out:?}"
        );
    }
    assert!(subscribes(&out).is_empty());
    assert_eq!(h.room.roster(), roster);
    assert!(!h.room.contains("cm"));
    assert_refused(&mut h, "h", admit("cm"), ErrorCode::UnknownParticipant);
}

#[test]
fn guests_may_not_admit_deny_remove_mute_others_end_or_transfer_host() {
    for (guest, role) in GUESTS {
        let mut h = full_conference();
        h.wait("w", Role::Family);
        for message in [
            admit("w"),
            deny("w"),
            remove("s"),
            ClientMessage::EndConference,
            mute_participant("h", Audio),
            mute_participant("s", Screen),
            transfer_host("s"),
            transfer_host(guest),
        ] {
            assert_refused(&mut h, guest, message, ErrorCode::Forbidden);
        }
        assert!(h.room.contains("w"), "{role}");
    }
}

#[test]
fn staff_admit_and_mute_but_do_not_remove_end_or_transfer_host() {
    let mut h = full_conference();
    h.wait("w", Role::Family);
    h.admit_settled("s", "w");
    let out = h.send("s", mute_participant("f", Audio));
    assert_eq!(
        messages_to(&out, "f")[0],
        ServerMessage::MutedBy {
            kind: Audio,
            by: "s".into()
        }
    );
    for message in [
        remove("f"),
        ClientMessage::EndConference,
        transfer_host("h"),
    ] {
        assert_refused(&mut h, "s", message, ErrorCode::Forbidden);
    }
}

#[test]
fn family_may_not_share_a_screen_and_every_other_role_may() {
    let mut h = full_conference();
    assert_refused(&mut h, "f", screen_offer(), ErrorCode::Forbidden);
    assert_eq!(
        h.send("f", publish_offer()),
        vec![Output::Media(MediaCommand::Publish {
            participant: "f".into(),
            sdp: OFFER_SDP.into(),
            screen_mid: None,
        })],
        "the refused screen left no offer pending"
    );
    for id in ["h", "s", "cm", "sv"] {
        assert_eq!(
            h.send(id, screen_offer()),
            vec![Output::Media(MediaCommand::Publish {
                participant: id.into(),
                sdp: OFFER_SDP.into(),
                screen_mid: Some("2".into()),
            })],
            "{id}"
        );
    }
}

#[test]
fn muting_someone_else_suppresses_the_track_until_they_unmute_themselves() {
    let mut h = full_conference();
    h.publish_settled("cm", &[Audio, Video]);

    let out = h.send("h", mute_participant("cm", Audio));
    assert_eq!(
        media_commands(&out),
        [MediaCommand::Suppress {
            participant: "cm".into(),
            kind: Audio,
            suppressed: true,
        }]
    );
    assert_eq!(
        messages_to(&out, "cm")[0],
        ServerMessage::MutedBy {
            kind: Audio,
            by: "h".into()
        }
    );
    for id in ["h", "s", "cm", "sv", "f"] {
        let roster = roster_to(&out, id);
        assert!(entry(&roster, "cm").audio_muted, "{id}");
        assert!(!entry(&roster, "cm").video_muted, "{id}");
    }

    // The client acknowledging the mute changes nothing; muting video itself is only a flag.
    assert_eq!(h.send("cm", mute(Audio, true)), vec![]);
    assert!(media_commands(&h.send("cm", mute(Video, true))).is_empty());
    assert!(media_commands(&h.send("cm", mute(Video, false))).is_empty());

    let out = h.send("cm", mute(Audio, false));
    assert_eq!(
        media_commands(&out),
        [MediaCommand::Suppress {
            participant: "cm".into(),
            kind: Audio,
            suppressed: false,
        }]
    );
    assert!(!entry(&roster_to(&out, "h"), "cm").audio_muted);

    // Lifted: a later mute and unmute of its own is a roster change only.
    h.send("cm", mute(Audio, true));
    assert!(media_commands(&h.send("cm", mute(Audio, false))).is_empty());
}

#[test]
fn a_screen_share_can_be_muted_by_others_too() {
    let mut h = full_conference();
    let out = h.send("s", mute_participant("sv", Screen));
    assert_eq!(
        media_commands(&out),
        [MediaCommand::Suppress {
            participant: "sv".into(),
            kind: Screen,
            suppressed: true,
        }]
    );
    assert_eq!(
        messages_to(&out, "sv")[0],
        ServerMessage::MutedBy {
            kind: Screen,
            by: "s".into()
        }
    );
    let out = h.send("sv", mute(Screen, false));
    assert!(media_commands(&out).contains(&MediaCommand::Suppress {
        participant: "sv".into(),
        kind: Screen,
        suppressed: false,
    }));
}

#[test]
fn host_rights_pass_only_to_staff_who_are_present_and_the_roles_swap() {
    let mut h = full_conference();
    h.feed(join_input("s2", &name_of("s2"), Role::Staff, true, true));
    // Guests can never receive host rights.
    for target in ["cm", "sv", "f"] {
        assert_refused(&mut h, "h", transfer_host(target), ErrorCode::Forbidden);
    }
    // Yourself, someone still waiting, or nobody: there is no such participant to pass to.
    for target in ["h", "s2", "nobody"] {
        assert_refused(
            &mut h,
            "h",
            transfer_host(target),
            ErrorCode::UnknownParticipant,
        );
    }

    let out = h.send("h", transfer_host("s"));
    for id in ["h", "s", "cm", "sv", "f"] {
        let roster = roster_to(&out, id);
        assert_eq!(entry(&roster, "h").role, Role::Staff, "{id}");
        assert_eq!(entry(&roster, "s").role, Role::Host, "{id}");
    }
    assert!(messages_to(&out, "s2").is_empty(), "still waiting");

    // The new roles apply at once.
    assert_refused(&mut h, "h", remove("f"), ErrorCode::Forbidden);
    assert_refused(&mut h, "h", transfer_host("s"), ErrorCode::Forbidden);
    let out = h.send("s", remove("f"));
    assert_eq!(messages_to(&out, "f"), [bye("removed")]);
}

#[test]
fn the_host_removes_a_participant_with_bye_removed() {
    let mut h = full_conference();
    h.publish_settled("f", &[Audio]);
    let out = h.send("h", remove("f"));
    assert_eq!(messages_to(&out, "f"), [bye("removed")]);
    assert_eq!(closes(&out), ["f"]);
    assert!(media_commands(&out).contains(&MediaCommand::Remove {
        participant: "f".into()
    }));
    for id in ["h", "s", "cm", "sv"] {
        assert_eq!(ids(&roster_to(&out, id)), ["h", "s", "cm", "sv"]);
    }
    assert_eq!(
        subscribes(&out).keys().collect::<Vec<_>>(),
        ["cm", "h", "s", "sv"],
        "everyone loses f's audio: {out:?}"
    );
    assert!(!h.room.contains("f"));
}

#[test]
fn ending_the_conference_says_bye_to_everyone_and_refuses_later_joins() {
    let mut h = full_conference();
    h.wait("w", Role::Family);
    let out = h.send("h", ClientMessage::EndConference);

    let ended_at = out.iter().position(|o| *o == Output::Ended);
    let first_bye = out.iter().position(|o| {
        matches!(
            o,
            Output::Send {
                message: ServerMessage::Bye { .. },
                ..
            }
        )
    });
    assert!(
        ended_at.is_some() && ended_at < first_bye,
        "the shell hears of the end first: {out:?}"
    );
    let everyone = ["cm", "f", "h", "s", "sv", "w"];
    for id in everyone {
        assert_eq!(
            messages_to(&out, id).last(),
            Some(&bye("ended")),
            "bye is the last thing {id} gets: {out:?}"
        );
    }
    let mut closed = closes(&out);
    closed.sort();
    assert_eq!(closed, everyone);
    assert_eq!(out.last(), Some(&Output::Empty));
    assert!(h.room.is_ended());
    assert!(h.room.is_empty());

    for (id, role) in [("late-host", Role::Host), ("late-guest", Role::Family)] {
        let out = h.join_as(id, &name_of(id), role);
        assert_error(&out, id, ErrorCode::ConferenceEnded, true);
    }
    assert!(h.room.is_empty());
}

#[test]
fn admit_and_deny_name_someone_waiting_other_controls_someone_else_present() {
    let mut h = full_conference();
    h.wait("w", Role::Family);
    for message in [
        admit("nobody"),
        admit("s"),
        admit("cm"),
        admit("h"),
        deny("nobody"),
        deny("cm"),
        deny("h"),
        remove("nobody"),
        remove("w"),
        remove("h"),
        mute_participant("nobody", Video),
        mute_participant("w", Audio),
        mute_participant("h", Audio),
    ] {
        assert_refused(&mut h, "h", message, ErrorCode::UnknownParticipant);
    }
}

#[test]
fn the_lobby_is_in_arrival_order_and_waiting_people_count_toward_the_limit() {
    let mut h = Harness::with_limit(4);
    h.enter("h", Role::Host);
    h.wait("w-z", Role::Family);
    h.wait("w-a", Role::Surveyor);
    let out = h.join_as("s", &name_of("s"), Role::Staff);
    assert_joined(&out, "s");
    assert_eq!(
        waiting_ids(&lobby_to(&out, "s")),
        ["w-z", "w-a"],
        "staff see the waiting room on entering"
    );
    assert_error(
        &h.wait("w-late", Role::CareManager),
        "w-late",
        ErrorCode::RoomFull,
        true,
    );
}

#[test]
fn staff_and_hosts_on_a_second_device_wait_too() {
    for role in [Role::Staff, Role::Host] {
        let mut h = hospital_side();
        h.wait("cm", Role::CareManager);
        let out = h.feed(join_input("tablet", "病棟看護師", role, true, true));
        assert!(
            matches!(
                messages_to(&out, "tablet")[..],
                [ServerMessage::Waiting { role: r, .. }] if r == role
            ),
            "{role}: {out:?}"
        );
        let lobby = lobby_to(&out, "h");
        assert_eq!(
            lobby[1],
            WaitingEntry {
                id: "tablet".into(),
                display_name: "病棟看護師".into(),
                role,
                invitation: invitation_of("tablet"),
                second_device: true,
            }
        );
        assert!(!lobby[0].second_device);
        assert_eq!(ids(&h.room.roster()), ["h", "s"]);

        // Once admitted they may admit: they see the lobby and use it.
        let out = h.send("s", admit("tablet"));
        assert_joined(&out, "tablet");
        let seen = lobbies_to(&out, "tablet");
        assert!(!seen.is_empty(), "{out:?}");
        for lobby in &seen {
            assert_eq!(waiting_ids(lobby), ["cm"]);
        }
        assert_joined(&h.send("tablet", admit("cm")), "cm");
    }
}

#[test]
fn a_waiting_participant_never_appears_in_any_roster_or_receives_anything() {
    let mut h = Harness::new();
    let mut all = h.join_as("h", &name_of("h"), Role::Host);
    all.extend(h.wait("w", Role::Family));
    all.extend(h.join_as("s", &name_of("s"), Role::Staff));
    all.extend(h.track_published("h", Audio));
    all.extend(h.send("s", mute(Video, true)));
    all.extend(h.wait("cm", Role::CareManager));
    all.extend(h.send("h", admit("cm")));
    all.extend(h.send("h", mute_participant("cm", Audio)));
    all.extend(h.send("h", transfer_host("s")));
    all.extend(h.disconnect("h"));

    let rosters = all_rosters(&all);
    assert!(rosters.len() >= 8, "{all:?}");
    for roster in rosters {
        assert!(!ids(&roster).contains(&"w"), "{roster:?}");
    }
    assert!(matches!(
        messages_to(&all, "w")[..],
        [ServerMessage::Waiting { .. }]
    ));
    assert!(
        !media_commands(&all).iter().any(|c| matches!(
            c,
            MediaCommand::Subscribe { participant, .. } if participant == "w"
        )),
        "{all:?}"
    );
    assert!(h.room.contains("w"));
    assert_eq!(ids(&h.room.roster()), ["s", "cm"]);
}

#[test]
fn media_published_while_a_guest_waits_reaches_them_once_admitted() {
    let mut h = Harness::new();
    h.enter("h", Role::Host);
    h.enter("s", Role::Staff);
    h.wait("cm", Role::CareManager);

    let out = h.track_published("h", Audio);
    assert_eq!(subscribes(&out).keys().collect::<Vec<_>>(), ["s"]);
    assert!(messages_to(&out, "cm").is_empty(), "{out:?}");
    h.settle(out);

    let out = h.send("h", admit("cm"));
    assert_eq!(
        subscribes(&out),
        BTreeMap::from([("cm".to_string(), (1, vec![track("h", Audio)]))])
    );
}

// ---------------------------------------------------------------------------------------
// Audit records (`feed_all` keeps them).
// ---------------------------------------------------------------------------------------

#[test]
fn joining_and_waiting_are_audited() {
    let mut h = Harness::new();
    for (id, role, must_wait, second_device, action) in [
        ("h", Role::Host, false, false, "join"),
        ("s", Role::Staff, false, false, "join"),
        ("cm", Role::CareManager, true, false, "waiting"),
        ("f", Role::Family, false, false, "waiting"),
        ("s2", Role::Staff, true, true, "waiting"),
    ] {
        let out = h.feed_all(join_input(id, &name_of(id), role, must_wait, second_device));
        assert_eq!(audits(&out), [audit(id, action, None)], "{out:?}");
    }
}

#[test]
fn host_controls_and_departures_are_audited_with_actor_and_subject() {
    let mut h = full_conference();
    h.wait("w1", Role::Family);
    h.wait("w2", Role::Surveyor);
    let steps = [
        ("s", admit("w1"), vec![audit("s", "admit", Some("w1"))]),
        (
            "h",
            deny("w2"),
            vec![audit("h", "deny", Some("w2")), audit("w2", "leave", None)],
        ),
        (
            "h",
            remove("w1"),
            vec![audit("h", "remove", Some("w1")), audit("w1", "leave", None)],
        ),
        ("sv", ClientMessage::Leave, vec![audit("sv", "leave", None)]),
        (
            "s",
            mute_participant("cm", Audio),
            vec![audit("s", "mute_others", Some("cm"))],
        ),
        (
            "h",
            transfer_host("s"),
            vec![audit("h", "role_changed", Some("s"))],
        ),
        // Refused actions leave no record.
        ("h", ClientMessage::EndConference, vec![]),
        ("cm", remove("f"), vec![]),
    ];
    for (actor, message, expected) in steps {
        let out = h.feed_all(client_input(actor, message.clone()));
        assert_eq!(audits(&out), expected, "{actor}: {message:?}");
    }

    let out = h.feed_all(Input::Disconnected {
        participant: "f".into(),
    });
    assert_eq!(audits(&out), [audit("f", "leave", None)]);

    let out = h.feed_all(client_input("s", ClientMessage::EndConference));
    let records = audits(&out);
    assert_eq!(records[0], audit("s", "conference_ended", None));
    let mut leaves = records[1..].to_vec();
    leaves.sort();
    assert_eq!(
        leaves,
        ["cm", "h", "s"].map(|id| audit(id, "leave", None)),
        "everyone still present leaves"
    );
}

// ---------------------------------------------------------------------------------------
// Wire format: the types against PROTOCOL.md.
// ---------------------------------------------------------------------------------------

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

/// The ```json blocks under the `## <heading>` section of PROTOCOL.md.
fn json_blocks_under(heading: &str) -> Vec<serde_json::Value> {
    let mut blocks = Vec::new();
    let mut in_section = false;
    let mut block: Option<String> = None;
    for line in PROTOCOL_MD.lines() {
        if line.starts_with("## ") {
            in_section = line.trim_end() == format!("## {heading}");
            continue;
        }
        if !in_section {
            continue;
        }
        match (&mut block, line.trim_end()) {
            (None, "```json") => block = Some(String::new()),
            (Some(text), "```") => {
                let value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("PROTOCOL.md example is not JSON ({e}):\n{text}"));
                blocks.push(value);
                block = None;
            }
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(block.is_none(), "unterminated json block under {heading}");
    blocks
}

/// Exhaustive on purpose: a new message type does not compile until it is listed here,
/// and the doc test below then demands an example of it.
fn client_type(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Join { .. } => "join",
        ClientMessage::PublishOffer { .. } => "publish_offer",
        ClientMessage::Unpublish => "unpublish",
        ClientMessage::SubscribeAnswer { .. } => "subscribe_answer",
        ClientMessage::IceCandidate { .. } => "ice_candidate",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Admit { .. } => "admit",
        ClientMessage::Deny { .. } => "deny",
        ClientMessage::Remove { .. } => "remove",
        ClientMessage::MuteParticipant { .. } => "mute_participant",
        ClientMessage::TransferHost { .. } => "transfer_host",
        ClientMessage::EndConference => "end_conference",
        ClientMessage::Ping => "ping",
        ClientMessage::Leave => "leave",
    }
}
const CLIENT_TYPES: [&str; 14] = [
    "join",
    "publish_offer",
    "unpublish",
    "subscribe_answer",
    "ice_candidate",
    "mute",
    "admit",
    "deny",
    "remove",
    "mute_participant",
    "transfer_host",
    "end_conference",
    "ping",
    "leave",
];

/// Exhaustive on purpose, like [`client_type`].
fn server_type(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Joined { .. } => "joined",
        ServerMessage::Waiting { .. } => "waiting",
        ServerMessage::Lobby { .. } => "lobby",
        ServerMessage::MutedBy { .. } => "muted_by",
        ServerMessage::Roster { .. } => "roster",
        ServerMessage::PublishAnswer { .. } => "publish_answer",
        ServerMessage::SubscribeOffer { .. } => "subscribe_offer",
        ServerMessage::IceCandidate { .. } => "ice_candidate",
        ServerMessage::Reconnect { .. } => "reconnect",
        ServerMessage::Pong => "pong",
        ServerMessage::Error { .. } => "error",
        ServerMessage::Bye { .. } => "bye",
    }
}
const SERVER_TYPES: [&str; 12] = [
    "joined",
    "waiting",
    "lobby",
    "muted_by",
    "roster",
    "publish_answer",
    "subscribe_offer",
    "ice_candidate",
    "reconnect",
    "pong",
    "error",
    "bye",
];

/// Every code, exhaustively matched so a new one must be added (and documented).
const ALL_ERROR_CODES: [ErrorCode; 20] = [
    ErrorCode::MalformedJson,
    ErrorCode::UnknownType,
    ErrorCode::MessageTooLarge,
    ErrorCode::UnsupportedProtocol,
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
    ErrorCode::RoomNotFound,
    ErrorCode::RoomFull,
    ErrorCode::InvalidSdp,
    ErrorCode::OutOfOrder,
    ErrorCode::InvalidField,
    ErrorCode::Forbidden,
    ErrorCode::RateLimited,
    ErrorCode::Internal,
    ErrorCode::ConferenceEnded,
    ErrorCode::InvitationRevoked,
    ErrorCode::NotYetValid,
    ErrorCode::TooManyConferences,
    ErrorCode::IdleTimeout,
    ErrorCode::UnknownParticipant,
];
fn error_code_listed(code: ErrorCode) -> bool {
    match code {
        ErrorCode::MalformedJson
        | ErrorCode::UnknownType
        | ErrorCode::MessageTooLarge
        | ErrorCode::UnsupportedProtocol
        | ErrorCode::InvalidToken
        | ErrorCode::TokenExpired
        | ErrorCode::RoomNotFound
        | ErrorCode::RoomFull
        | ErrorCode::InvalidSdp
        | ErrorCode::OutOfOrder
        | ErrorCode::InvalidField
        | ErrorCode::Forbidden
        | ErrorCode::RateLimited
        | ErrorCode::Internal
        | ErrorCode::ConferenceEnded
        | ErrorCode::InvitationRevoked
        | ErrorCode::NotYetValid
        | ErrorCode::TooManyConferences
        | ErrorCode::IdleTimeout
        | ErrorCode::UnknownParticipant => ALL_ERROR_CODES.contains(&code),
    }
}

/// Parses `json` as `T` and checks that serializing it gives back exactly `json`.
fn round_trip<T>(json: &serde_json::Value) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let parsed: T = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("does not parse ({e}): {json}"));
    let again = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(
        &again, json,
        "serializes differently from what PROTOCOL.md shows"
    );
    parsed
}

#[test]
fn every_client_example_in_protocol_md_round_trips_and_every_type_has_one() {
    let mut seen = Vec::new();
    for json in json_blocks_under("Client → server messages") {
        let message: ClientMessage = round_trip(&json);
        seen.push(client_type(&message));
    }
    for ty in CLIENT_TYPES {
        assert!(
            seen.contains(&ty),
            "PROTOCOL.md has no example of client message {ty:?}"
        );
    }
}

#[test]
fn every_server_example_in_protocol_md_round_trips_and_every_type_has_one() {
    let mut seen = Vec::new();
    for json in json_blocks_under("Server → client messages") {
        let message: ServerMessage = round_trip(&json);
        seen.push(server_type(&message));
    }
    for ty in SERVER_TYPES {
        assert!(
            seen.contains(&ty),
            "PROTOCOL.md has no example of server message {ty:?}"
        );
    }
}

#[test]
fn every_error_code_is_in_the_protocol_md_table_with_its_wire_name() {
    for code in ALL_ERROR_CODES {
        assert!(error_code_listed(code));
        assert_eq!(serde_json::to_value(code).ok(), Some(code.as_str().into()));
        assert_eq!(code.to_string(), code.as_str());
        let row = format!("| `{}` |", code.as_str());
        assert!(
            PROTOCOL_MD.contains(&row),
            "PROTOCOL.md error table lacks {row}"
        );
    }
}

#[test]
fn roles_serialize_as_their_wire_names_and_are_documented() {
    for role in Role::ALL {
        assert_eq!(serde_json::to_value(role).ok(), Some(role.as_str().into()));
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        assert!(PROTOCOL_MD.contains(&format!("| `{}` |", role.as_str())));
    }
    assert!("nurse".parse::<Role>().is_err());
}

#[test]
fn protocol_md_shows_the_permission_matrix_exactly() {
    let table = crate::permissions::markdown_table();
    assert!(
        PROTOCOL_MD.contains(&table),
        "PROTOCOL.md must contain permissions::markdown_table() verbatim:\n{table}"
    );
}

#[test]
fn the_documented_limits_match_the_code() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(MAX_MESSAGE_BYTES, 65_536);
    assert!(PROTOCOL_MD.contains("65536 bytes"));
    assert!(PROTOCOL_MD.contains(&format!("{MAX_DISPLAY_NAME_CHARS} characters")));
    assert_eq!(RoomLimits::default().max_participants, 16);
    assert!(PROTOCOL_MD.contains("16 participants"));
}

#[test]
fn join_is_exactly_as_documented() {
    let message: ClientMessage =
        serde_json::from_str(r#"{"type":"join","protocol":1,"token":"eyJ2IjoxfQ.c2ln"}"#)
            .expect("parses");
    assert_eq!(
        message,
        ClientMessage::Join {
            protocol: 1,
            token: "eyJ2IjoxfQ.c2ln".into(),
            display_name: None,
            device: None,
        }
    );
    // An absent display name or device is omitted, not sent as null.
    assert_eq!(
        serde_json::to_string(&message).ok().as_deref(),
        Some(r#"{"type":"join","protocol":1,"token":"eyJ2IjoxfQ.c2ln"}"#)
    );
    let with_device: ClientMessage = serde_json::from_str(
        r#"{"type":"join","protocol":1,"token":"eyJ2IjoxfQ.c2ln","device":null}"#,
    )
    .expect("a null device is accepted");
    assert_eq!(with_device, message);
}

#[test]
fn ice_candidates_use_the_browsers_camel_case_field_names() {
    let json = serde_json::json!({
        "type": "ice_candidate",
        "pc": "subscribe",
        "candidate": {
            "candidate": "candidate:1 1 udp 2122260223 192.0.2.4 50000 typ host",
            "sdpMid": "1",
            "sdpMLineIndex": 1,
            "usernameFragment": "Qw3r"
        }
    });
    let message: ClientMessage = round_trip(&json);
    let ClientMessage::IceCandidate { pc, candidate } = message else {
        panic!("parsed as {message:?}");
    };
    assert_eq!(pc, PcKind::Subscribe);
    assert_eq!(candidate.sdp_mid.as_deref(), Some("1"));
    assert_eq!(candidate.sdp_m_line_index, Some(1));
    assert_eq!(candidate.username_fragment.as_deref(), Some("Qw3r"));

    // A browser's end-of-candidates (and a null mid) is accepted.
    let end: ClientMessage = serde_json::from_str(
        r#"{"type":"ice_candidate","pc":"publish","candidate":{"candidate":"","sdpMid":null}}"#,
    )
    .expect("parses");
    assert_eq!(
        end,
        ClientMessage::IceCandidate {
            pc: PcKind::Publish,
            candidate: IceCandidate::default()
        }
    );
    // snake_case field names are not the wire format and are not silently mapped.
    let snake: ClientMessage = serde_json::from_str(
        r#"{"type":"ice_candidate","pc":"publish","candidate":{"candidate":"","sdp_mid":"0"}}"#,
    )
    .expect("unknown fields are ignored");
    let ClientMessage::IceCandidate { candidate, .. } = snake else {
        panic!("parsed as {snake:?}");
    };
    assert_eq!(candidate.sdp_mid, None);
}

#[test]
fn unknown_types_missing_fields_and_wrong_types_do_not_parse() {
    for bad in [
        r#"{"type":"publish","sdp":"v=0"}"#,
        r#"{"type":"PublishOffer","sdp":"v=0"}"#,
        r#"{"sdp":"v=0"}"#,
        r#"{"type":"publish_offer"}"#,
        r#"{"type":"subscribe_answer","sdp":"v=0","revision":"1"}"#,
        r#"{"type":"subscribe_answer","sdp":"v=0","revision":-1}"#,
        r#"{"type":"mute","kind":"camera","muted":true}"#,
        r#"{"type":"ice_candidate","pc":"both","candidate":{"candidate":""}}"#,
        r#"{"type":"join","protocol":1}"#,
        r#""ping""#,
        "null",
    ] {
        assert!(
            serde_json::from_str::<ClientMessage>(bad).is_err(),
            "{bad} parsed"
        );
    }
    // Extra fields are tolerated, so a newer client's additions do not break an old server.
    assert_eq!(
        serde_json::from_str::<ClientMessage>(r#"{"type":"ping","sent_at":123}"#).ok(),
        Some(ClientMessage::Ping)
    );
}

#[test]
fn every_server_message_the_room_produces_serializes_with_its_tag() {
    let mut h = three_with_media();
    let mut outputs = h.send("c", mute(Audio, true));
    outputs.extend(h.send("c", ClientMessage::Ping));
    let reset = h.peer_failed("c", PcKind::Subscribe);
    let (revision, tracks) = subscribes(&reset)["c"].clone();
    outputs.extend(reset);
    outputs.extend(h.offer_ready("c", revision, &tracks));
    outputs.extend(h.send("c", ClientMessage::Leave));
    let mut g = hospital_side();
    outputs.extend(g.wait("cm", Role::CareManager));
    outputs.extend(g.send("h", admit("cm")));
    outputs.extend(g.send("h", mute_participant("cm", Audio)));
    let mut seen = Vec::new();
    for output in outputs {
        if let Output::Send { message, .. } = output {
            let json = serde_json::to_value(&message).expect("serializes");
            assert_eq!(json["type"], server_type(&message), "{json}");
            seen.push(server_type(&message));
            assert_eq!(
                serde_json::from_value::<ServerMessage>(json).ok(),
                Some(message)
            );
        }
    }
    for ty in [
        "joined",
        "waiting",
        "lobby",
        "muted_by",
        "roster",
        "pong",
        "reconnect",
        "subscribe_offer",
        "bye",
    ] {
        assert!(seen.contains(&ty), "the scenario produced no {ty}");
    }
}
