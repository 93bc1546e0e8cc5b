//! Any bytes as a publish offer and as a subscribe answer to the SFU core. Must never
//! panic, and must answer each offer with exactly one event.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;
use wardlink::media::sfu::{Sfu, SfuConfig};
use wardlink_signaling::room::MediaCommand;

fuzz_target!(|data: &[u8]| {
    let sdp = String::from_utf8_lossy(data).into_owned();
    let mut sfu = Sfu::new(SfuConfig {
        advertised: SocketAddr::from(([127, 0, 0, 1], 40000)),
        connect_timeout: Duration::from_secs(10),
        silence_limit: wardlink::media::sfu::DEFAULT_SILENCE_LIMIT,
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    sfu.attach("p".into(), tx);
    let now = Instant::now();
    sfu.handle_command(now, MediaCommand::Publish { participant: "p".into(), sdp: sdp.clone(), screen_mid: None });
    let mut events = 0;
    while rx.try_recv().is_ok() {
        events += 1;
    }
    assert_eq!(events, 1, "one answer or one error per offer");
    sfu.handle_command(now, MediaCommand::Subscribe { participant: "p".into(), revision: 1, tracks: vec![] });
    sfu.handle_command(now, MediaCommand::SubscribeAnswer { participant: "p".into(), sdp });
    sfu.handle_datagram(now, SocketAddr::from(([127, 0, 0, 1], 9)), data);
});
