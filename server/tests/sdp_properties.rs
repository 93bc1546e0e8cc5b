//! Property-based tests of SDP handling in the SFU core: offers and answers mangled at
//! random never panic the media plane; each gets exactly one answer or one clean error,
//! and the SFU keeps serving other participants afterwards.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::sync::mpsc;
use wardlink::media::sfu::{Sfu, SfuConfig};
use wardlink_signaling::protocol::{MediaKind, PcKind};
use wardlink_signaling::room::{MediaCommand, MediaEvent, TrackRef};

/// An offer shaped like Chromium's for one audio and one video sendonly track
/// (CRLF line endings, kept byte-exact by `.gitattributes`).
const CHROME_OFFER: &str = include_str!("data/chrome-offer.sdp");

fn sfu() -> Sfu {
    Sfu::new(SfuConfig {
        advertised: SocketAddr::from(([127, 0, 0, 1], 40000)),
        connect_timeout: Duration::from_secs(10),
        silence_limit: wardlink::media::sfu::DEFAULT_SILENCE_LIMIT,
    })
}

/// A random edit of the offer: drop, duplicate or swap lines, truncate, or splice junk in.
#[derive(Debug, Clone)]
enum Edit {
    DropLine(usize),
    DupLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
    Splice(usize, String),
    ReplaceLine(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::DropLine),
        any::<usize>().prop_map(Edit::DupLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), ".{0,30}").prop_map(|(i, s)| Edit::Splice(i, s)),
        (any::<usize>(), "[a-z]=[ -~]{0,40}").prop_map(|(i, s)| Edit::ReplaceLine(i, s)),
    ]
}

fn apply(sdp: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = sdp.split("\r\n").map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::DropLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::DupLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Edit::Truncate(i) => lines.truncate(i % (n + 1)),
            Edit::Splice(i, s) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                let at = line
                    .char_indices()
                    .map(|(k, _)| k)
                    .nth(i % (line.chars().count() + 1))
                    .unwrap_or(line.len());
                line.insert_str(at, s);
            }
            Edit::ReplaceLine(i, s) if !lines.is_empty() => lines[i % n] = s.clone(),
            _ => {}
        }
    }
    lines.join("\r\n")
}

fn drain(rx: &mut mpsc::UnboundedReceiver<MediaEvent>) -> Vec<MediaEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

#[test]
fn the_unmangled_offer_is_answered() {
    let mut sfu = sfu();
    let (tx, mut rx) = mpsc::unbounded_channel();
    sfu.attach("p1".into(), tx);
    sfu.handle_command(
        Instant::now(),
        MediaCommand::Publish {
            participant: "p1".into(),
            sdp: CHROME_OFFER.into(),
            screen_mid: None,
        },
    );
    let events = drain(&mut rx);
    assert!(
        matches!(events.as_slice(), [MediaEvent::PublishAnswer { sdp, .. }] if sdp.contains("a=ice-lite") && sdp.contains("VP8")),
        "{events:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mangled_offers_get_one_answer_or_one_clean_error(edits in prop::collection::vec(edit(), 1..6)) {
        let sdp = apply(CHROME_OFFER, &edits);
        let mut sfu = sfu();
        let (tx, mut rx) = mpsc::unbounded_channel();
        sfu.attach("p1".into(), tx);
        let now = Instant::now();
        sfu.handle_command(now, MediaCommand::Publish { participant: "p1".into(), sdp, screen_mid: Some("1".into()) });
        let events = drain(&mut rx);
        prop_assert_eq!(events.len(), 1, "{:?}", events);
        let answered_or_refused = matches!(
            &events[0],
            MediaEvent::PublishAnswer { .. } | MediaEvent::NegotiationFailed { pc: PcKind::Publish, .. }
        );
        prop_assert!(answered_or_refused, "{:?}", events);
        // The SFU still serves a well-formed participant afterwards.
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        sfu.attach("p2".into(), tx2);
        sfu.handle_command(now, MediaCommand::Publish { participant: "p2".into(), sdp: CHROME_OFFER.into(), screen_mid: None });
        let ok = matches!(drain(&mut rx2).as_slice(), [MediaEvent::PublishAnswer { .. }]);
        prop_assert!(ok);
        sfu.handle_timeout(now + Duration::from_secs(1));
        while sfu.poll_transmit().is_some() {}
    }

    #[test]
    fn mangled_subscribe_answers_never_panic(answer in ".{0,200}", prefix in any::<bool>()) {
        let mut sfu = sfu();
        let (tx, mut rx) = mpsc::unbounded_channel();
        sfu.attach("sub".into(), tx);
        let now = Instant::now();
        sfu.handle_command(now, MediaCommand::Subscribe {
            participant: "sub".into(),
            revision: 1,
            tracks: vec![TrackRef { publisher: "nobody".into(), kind: MediaKind::Video }],
        });
        let offered = matches!(drain(&mut rx).as_slice(), [MediaEvent::SubscribeOffer { .. }]);
        prop_assert!(offered);
        let sdp = if prefix { format!("v=0\r\n{answer}") } else { answer };
        sfu.handle_command(now, MediaCommand::SubscribeAnswer { participant: "sub".into(), sdp });
        let events = drain(&mut rx);
        prop_assert!(events.len() <= 1, "{:?}", events);
        // Random datagrams from strangers are ignored too.
        sfu.handle_datagram(now, SocketAddr::from(([127, 0, 0, 1], 5555)), b"\x00\x01\x00\x00garbage");
    }
}
