//! A participant who stays while others come and go. Each newcomer's media must reach the
//! stayer intact, and on the stayer's subscribe connection the newcomer's legs must take
//! over the SSRCs of the legs that left: `rtc` keeps per-SSRC statistics for every SSRC a
//! connection ever sent, so a fresh SSRC per leg made a long conference with many arrivals
//! and departures grow without bound (found with heaptrack in the leak check).

use std::time::Duration;

use anyhow::{ensure, Context};
use wardlink_signaling::{MediaKind, Role};
use wardlink_tests::checks::wait_receiving;
use wardlink_tests::harness::{token_for, TestServer};
use wardlink_tests::rtc_client::{Participant, ParticipantOptions};

/// SSRCs on which `receiver` got `publisher`'s audio and video.
fn ssrcs_from(receiver: &Participant, publisher: &Participant) -> anyhow::Result<[u32; 2]> {
    receiver.observe(|o| {
        let mut out = [0; 2];
        for (slot, kind) in out.iter_mut().zip([MediaKind::Audio, MediaKind::Video]) {
            let packets = o.received_from(publisher.id(), kind);
            let first = packets.first().context("nothing received")?.ssrc;
            ensure!(
                packets.iter().all(|p| p.ssrc == first),
                "{} switched SSRC mid-leg",
                publisher.tag()
            );
            *slot = first;
        }
        Ok(out)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn newcomers_take_over_the_ssrcs_of_those_who_left() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let links = server.create_room("サービス担当者会議 churn")?;
    let host = Participant::join(
        &server.ws_url,
        &server.tls,
        &token_for(&links, Role::Host)?,
        ParticipantOptions::publisher("nurse"),
    )
    .await
    .context("the nurse joins")?;

    let mut previous: Option<[u32; 2]> = None;
    for (round, tag) in ["caremgr-1", "caremgr-2", "caremgr-3"]
        .into_iter()
        .enumerate()
    {
        let guest = Participant::join(
            &server.ws_url,
            &server.tls,
            &token_for(&links, Role::CareManager)?,
            ParticipantOptions::publisher(tag),
        )
        .await
        .with_context(|| format!("{tag} joins"))?;
        host.admit(&guest, Duration::from_secs(10))
            .await
            .with_context(|| format!("the nurse admits {tag}"))?;
        let from_guest = [(guest.id().to_owned(), guest.tag().to_owned())];
        wait_receiving(&host, &from_guest, 25, 15, Duration::from_secs(30))
            .await
            .with_context(|| format!("round {round}: {}\n{}", host.summary(), guest.summary()))?;
        let ssrcs = ssrcs_from(&host, &guest)?;
        ensure!(
            ssrcs[0] != ssrcs[1],
            "audio and video share SSRC {}",
            ssrcs[0]
        );
        if let Some(previous) = previous {
            ensure!(
                ssrcs == previous,
                "round {round}: {tag}'s legs use SSRCs {ssrcs:?}, not the freed {previous:?}"
            );
        }
        // The newcomer's packets carry its own payloads, not a stale leg's.
        let markers = host.received_markers(guest.id(), MediaKind::Video);
        ensure!(
            markers.iter().flatten().all(|m| m.tag == tag),
            "round {round}: video attributed to {tag} carries another publisher's payload"
        );
        previous = Some(ssrcs);
        guest
            .leave(Duration::from_secs(10))
            .await
            .with_context(|| format!("{tag} leaves"))?;
    }
    host.shutdown().await;
    server.shutdown().await;
    Ok(())
}
