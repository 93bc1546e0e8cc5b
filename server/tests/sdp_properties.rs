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

/// An offer shaped like Chromium's for one audio and one video sendonly track.
const CHROME_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Z0nD\r\n\
a=ice-pwd:cHdoMz0vGXEPUXxl6BkFDbmM\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 1E:8B:4A:63:40:1C:7B:52:37:DE:80:0F:56:BD:E1:C8:0C:26:23:68:C4:A5:3A:1F:C7:0F:5C:D5:0B:5F:1D:28\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=sendonly\r\n\
a=msid:stream audiotrack\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:3735928559 cname:abcd\r\n\
a=ssrc:3735928559 msid:stream audiotrack\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Z0nD\r\n\
a=ice-pwd:cHdoMz0vGXEPUXxl6BkFDbmM\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 1E:8B:4A:63:40:1C:7B:52:37:DE:80:0F:56:BD:E1:C8:0C:26:23:68:C4:A5:3A:1F:C7:0F:5C:D5:0B:5F:1D:28\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=sendonly\r\n\
a=msid:stream videotrack\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:103 rtx/90000\r\n\
a=fmtp:103 apt=102\r\n\
a=ssrc-group:FID 1111 2222\r\n\
a=ssrc:1111 cname:abcd\r\n\
a=ssrc:1111 msid:stream videotrack\r\n\
a=ssrc:2222 cname:abcd\r\n\
a=ssrc:2222 msid:stream videotrack\r\n";

fn sfu() -> Sfu {
    Sfu::new(SfuConfig {
        advertised: SocketAddr::from(([127, 0, 0, 1], 40000)),
        connect_timeout: Duration::from_secs(10),
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
