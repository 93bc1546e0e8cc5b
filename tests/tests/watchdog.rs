//! The connect watchdog: a peer connection that never reaches `connected` (here: the client
//! sends an offer but never starts ICE, as when DTLS stalls under loss) is torn down by the
//! server, which tells the client to `reconnect`; the client can then publish again.

use std::time::{Duration, Instant};

use wardlink_signaling::protocol::{ClientMessage, PcKind, ServerMessage};
use wardlink_signaling::Role;
use wardlink_tests::harness::{token_for, TestServer};
use wardlink_tests::signal_client::SignalClient;

/// A real Chromium-shaped offer; its ICE credentials belong to no live agent, so the
/// connection can never come up.
const OFFER: &str = include_str!("../../server/tests/data/chrome-offer.sdp");
const WATCHDOG_SECS: u64 = 2;

#[tokio::test]
async fn a_connection_that_never_connects_is_torn_down_and_the_client_told_to_retry(
) -> anyhow::Result<()> {
    let server = TestServer::start_with(|c| c.connect_timeout_secs = WATCHDOG_SECS).await?;
    let links = server.create_room("watchdog")?;
    let mut host = SignalClient::connect(&server.ws_url, &server.tls).await?;
    host.join(&token_for(&links, Role::Host)?, Duration::from_secs(5))
        .await?;

    for attempt in 1..=2 {
        host.send(&ClientMessage::PublishOffer {
            sdp: OFFER.into(),
            screen_mid: None,
        })?;
        host.wait_for(Duration::from_secs(5), "publish_answer", |m| {
            matches!(m, ServerMessage::PublishAnswer { .. }).then_some(())
        })
        .await?;
        let answered = Instant::now();
        let pc = host
            .wait_for(
                Duration::from_secs(WATCHDOG_SECS + 5),
                "reconnect",
                |m| match m {
                    ServerMessage::Reconnect { pc, .. } => Some(*pc),
                    _ => None,
                },
            )
            .await?;
        let waited = answered.elapsed();
        assert_eq!(pc, PcKind::Publish, "attempt {attempt}");
        // Not before the configured time (it must give ICE and DTLS their chance) ...
        assert!(
            waited >= Duration::from_millis(WATCHDOG_SECS * 1000 - 200),
            "attempt {attempt}: fired after {waited:?}"
        );
        // ... and the socket stays usable for the retry.
        host.ping(Duration::from_secs(2)).await?;
    }

    let (stats, peers) = server.media_stats().await?;
    assert!(
        stats.connect_timeouts == 2 && peers == 0,
        "two watchdog teardowns and no connection left behind: {stats:?}, {peers} peers"
    );
    server.shutdown().await;
    Ok(())
}
