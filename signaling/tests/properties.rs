//! Property-based tests: no input, however malformed, panics the parser or the room state
//! machine, and the room's privacy invariants hold over random sequences of events.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use wardlink_signaling::protocol::{ClientMessage, IceCandidate, MediaKind, PcKind, ServerMessage};
use wardlink_signaling::room::{Input, MediaEvent, Output, Room, RoomLimits};
use wardlink_signaling::token::TokenVerifier;
use wardlink_signaling::Role;

const SDP: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

fn kind() -> impl Strategy<Value = MediaKind> {
    prop::sample::select(vec![MediaKind::Audio, MediaKind::Video, MediaKind::Screen])
}

/// Participant ids drawn from a small pool so messages often name someone present.
fn pid() -> impl Strategy<Value = String> {
    (0u8..6).prop_map(|i| format!("p{i}"))
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<bool>(), prop::option::of("[0-9]")).prop_map(|(good, screen)| {
            ClientMessage::PublishOffer {
                sdp: if good { SDP.into() } else { "garbage".into() },
                screen_mid: screen,
            }
        }),
        Just(ClientMessage::Unpublish),
        (any::<bool>(), 0u32..4).prop_map(|(good, revision)| ClientMessage::SubscribeAnswer {
            sdp: if good { SDP.into() } else { String::new() },
            revision,
        }),
        ".{0,40}".prop_map(|c| ClientMessage::IceCandidate {
            pc: PcKind::Publish,
            candidate: IceCandidate {
                candidate: c,
                ..Default::default()
            }
        }),
        (kind(), any::<bool>()).prop_map(|(kind, muted)| ClientMessage::Mute { kind, muted }),
        pid().prop_map(|participant_id| ClientMessage::Admit { participant_id }),
        pid().prop_map(|participant_id| ClientMessage::Deny { participant_id }),
        pid().prop_map(|participant_id| ClientMessage::Remove { participant_id }),
        (pid(), kind()).prop_map(|(participant_id, kind)| ClientMessage::MuteParticipant {
            participant_id,
            kind
        }),
        pid().prop_map(|participant_id| ClientMessage::TransferHost { participant_id }),
        Just(ClientMessage::EndConference),
        Just(ClientMessage::Ping),
        Just(ClientMessage::Leave),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (pid(), ".{0,70}", role(), any::<bool>()).prop_map(
            |(participant, display_name, role, must_wait)| Input::Join {
                participant,
                display_name,
                role,
                invitation: "inv".into(),
                must_wait,
                second_device: must_wait,
            }
        ),
        (pid(), client_message()).prop_map(|(participant, message)| Input::Client {
            participant,
            message
        }),
        pid().prop_map(|participant| Input::Disconnected { participant }),
        (pid(), kind()).prop_map(
            |(participant, kind)| Input::Media(MediaEvent::TrackPublished { participant, kind })
        ),
        (pid(), 0u32..4).prop_map(|(participant, revision)| Input::Media(
            MediaEvent::SubscribeOffer {
                participant,
                revision,
                sdp: SDP.into(),
                tracks: vec![],
            }
        )),
        pid().prop_map(|participant| Input::Media(MediaEvent::PublishAnswer {
            participant,
            sdp: SDP.into()
        })),
        (pid(), any::<bool>()).prop_map(|(participant, publish)| Input::Media(
            MediaEvent::PeerFailed {
                participant,
                pc: if publish {
                    PcKind::Publish
                } else {
                    PcKind::Subscribe
                },
                reason: "x".into(),
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text parses to a message or an error; never a panic.
    #[test]
    fn arbitrary_text_never_panics_the_parser(text in ".{0,400}") {
        let _ = serde_json::from_str::<ClientMessage>(&text);
    }

    /// JSON-shaped input with every message type and random fields never panics.
    #[test]
    fn json_shaped_input_never_panics(
        ty in prop::sample::select(vec!["join","publish_offer","subscribe_answer","ice_candidate","mute","admit","deny","remove","mute_participant","transfer_host","end_conference","ping","leave","nope"]),
        key in "[a-z_]{1,12}",
        value in prop_oneof![Just("null".to_string()), "-?[0-9]{1,20}", "\"[^\"\\\\]{0,20}\"", Just("[]".to_string()), Just("{}".to_string())],
    ) {
        let text = format!(r#"{{"type":"{ty}","{key}":{value}}}"#);
        let _ = serde_json::from_str::<ClientMessage>(&text);
    }

    /// Token verification rejects (and never panics on) arbitrary strings.
    #[test]
    fn arbitrary_tokens_are_rejected(token in ".{0,300}") {
        let verifier = TokenVerifier::new(ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key());
        prop_assert!(verifier.verify(&token, 0).is_err());
    }

    /// Random event sequences never panic the room, and nobody in the waiting room ever
    /// receives a roster, a subscribe offer or the lobby before being admitted.
    #[test]
    fn waiting_participants_receive_nothing_before_admission(inputs in prop::collection::vec(input(), 1..80)) {
        let mut room = Room::new("r", "t", RoomLimits { max_participants: 5 });
        let t0 = Instant::now();
        let mut waiting: HashSet<String> = HashSet::new();
        for (i, input) in inputs.into_iter().enumerate() {
            let out = room.handle(t0 + Duration::from_millis(i as u64), input);
            for o in &out {
                if let Output::Send { to, message } = o {
                    match message {
                        ServerMessage::Waiting { .. } => { waiting.insert(to.clone()); }
                        ServerMessage::Joined { .. } | ServerMessage::Bye { .. } => { waiting.remove(to); }
                        ServerMessage::Roster { .. } | ServerMessage::SubscribeOffer { .. } | ServerMessage::Lobby { .. } | ServerMessage::PublishAnswer { .. } => {
                            prop_assert!(!waiting.contains(to), "{to} got {message:?} while waiting");
                        }
                        _ => {}
                    }
                }
            }
            // The roster never lists anyone who is waiting.
            for entry in room.roster() {
                prop_assert!(!waiting.contains(&entry.id));
            }
        }
    }
}
