//! Clients behind a NAT on loopback (`wardlink_tests::nat`): the server advertises the NAT's
//! outside address, as a server behind 1:1 NAT advertises its public IP.
//!
//! - When the NAT gives every client a new port mid-call (a pocket Wi-Fi router whose
//!   mobile link reconnects), media keeps flowing both ways, a keyframe request still
//!   reaches a publisher at its new port, and nobody is asked to reconnect.
//! - When the link goes dark, the server tears the connections down after its silence limit
//!   and tells the client to reconnect, and not while media flows.
//! - A few seconds of outage that end on new ports (the router's mobile link came back)
//!   ride through: no teardown, no reconnect, media resumes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use wardlink::links::RoomLinks;
use wardlink_signaling::{PcKind, Role};
use wardlink_tests::checks::{counts, wait_growth, wait_receiving_each_other};
use wardlink_tests::harness::{token_for, TestServer};
use wardlink_tests::nat::LoopbackNat;
use wardlink_tests::rtc_client::{Participant, ParticipantOptions};

/// The NAT's outside address, which the server advertises (any 127/8 address is loopback).
const OUTSIDE_IP: [u8; 4] = [127, 0, 0, 2];
const WAIT: Duration = Duration::from_secs(15);

/// A server advertising the NAT's outside address, the NAT in front of its media port, and
/// a host and a care manager both publishing and receiving each other.
struct Conference {
    server: TestServer,
    nat: LoopbackNat,
    links: RoomLinks,
    nurse: Participant,
    caremgr: Participant,
}

async fn conference(
    adjust: impl FnOnce(&mut wardlink::config::Config),
) -> anyhow::Result<Conference> {
    let outside = IpAddr::from(OUTSIDE_IP);
    let server = TestServer::start_with(|c| {
        c.public_ip = Some(outside);
        adjust(c);
    })
    .await?;
    let media = server.server().media_addr;
    let nat = LoopbackNat::start(SocketAddr::new(outside, media.port()), media, media.ip()).await?;
    let links = server.create_room("NAT")?;
    let nurse = Participant::join(
        &server.ws_url,
        &server.tls,
        &token_for(&links, Role::Host)?,
        ParticipantOptions::publisher("nurse"),
    )
    .await
    .context("the host joins")?;
    let caremgr = Participant::join(
        &server.ws_url,
        &server.tls,
        &token_for(&links, Role::CareManager)?,
        ParticipantOptions::publisher("caremgr"),
    )
    .await
    .context("the care manager joins")?;
    nurse.admit(&caremgr, WAIT).await?;
    wait_receiving_each_other(&[&nurse, &caremgr], 20, 20, WAIT).await?;
    Ok(Conference {
        server,
        nat,
        links,
        nurse,
        caremgr,
    })
}

/// Waits until each of `a` and `b` has 90 more packets of each kind from the other: about
/// 3 s of video, far more than was in flight when the path changed.
async fn media_resumes(a: &Participant, b: &Participant, what: &str) -> anyhow::Result<()> {
    for (receiver, sender) in [(b, a), (a, b)] {
        let from = vec![sender.id().to_owned()];
        wait_growth(receiver, &from, &counts(receiver, &from), 90, WAIT, what).await?;
    }
    Ok(())
}

/// Fails if any of `people` was told to reconnect (`what` cost it one).
fn no_reconnects(people: &[&Participant], what: &str) -> anyhow::Result<()> {
    for p in people {
        p.observe(|o| {
            ensure!(
                o.reconnects.is_empty(),
                "{}: {what} cost a reconnect: {}",
                p.tag(),
                o.summary()
            );
            Ok(())
        })?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_follows_clients_whose_nat_gives_them_new_ports() -> anyhow::Result<()> {
    let Conference {
        server,
        nat,
        links,
        nurse,
        caremgr,
    } = conference(|_| {}).await?;
    ensure!(
        nat.client_count() == 4,
        "two connections per participant went through the NAT, got {}",
        nat.client_count()
    );
    let before = server.media_stats().await?.0;
    ensure!(before.path_moves == 0, "nobody moved yet: {before:?}");

    let moved = nat.rebind().await?;
    ensure!(moved.len() == 4, "every mapping moved: {moved:?}");
    let rebound = Instant::now();
    media_resumes(&nurse, &caremgr, "after the NAT moved everyone").await?;
    let recovered = rebound.elapsed();

    // A newcomer makes the server ask the publishers for a keyframe: RTCP reaches the host
    // at her new port.
    let keyframes_before = nurse.observe(|o| o.keyframe_requests.len());
    let surveyor = Participant::join(
        &server.ws_url,
        &server.tls,
        &token_for(&links, Role::Surveyor)?,
        ParticipantOptions::publisher("surveyor"),
    )
    .await
    .context("the surveyor joins")?;
    nurse.admit(&surveyor, WAIT).await?;
    nurse
        .wait_until(WAIT, "a keyframe request at the new port", |o| {
            o.keyframe_requests.len() > keyframes_before
        })
        .await?;
    wait_receiving_each_other(&[&nurse, &caremgr, &surveyor], 20, 20, WAIT).await?;

    let after = server.media_stats().await?.0;
    ensure!(
        after.path_moves == 4,
        "each of the four connections followed its client once: {after:?}"
    );
    ensure!(after.silence_teardowns == 0, "{after:?}");
    no_reconnects(&[&nurse, &caremgr], "the move")?;
    println!("media flowed again {recovered:?} after the NAT moved every client");
    for p in [nurse, caremgr, surveyor] {
        p.shutdown().await;
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_link_goes_dark_is_told_to_reconnect_after_the_silence_limit(
) -> anyhow::Result<()> {
    const LIMIT_SECS: u64 = 3;
    let Conference {
        server,
        nat,
        nurse,
        caremgr,
        ..
    } = conference(|c| c.media_silence_secs = LIMIT_SECS).await?;
    // Media flowing for longer than the limit tears nothing down.
    tokio::time::sleep(Duration::from_secs(LIMIT_SECS + 2)).await;
    let steady = server.media_stats().await?.0;
    ensure!(steady.silence_teardowns == 0, "{steady:?}");

    nat.set_blackhole(true);
    let dark = Instant::now();
    nurse
        .wait_until(
            Duration::from_secs(LIMIT_SECS + 5),
            "reconnect for both connections",
            |o| {
                o.reconnects.contains(&PcKind::Publish) && o.reconnects.contains(&PcKind::Subscribe)
            },
        )
        .await?;
    let waited = dark.elapsed();
    ensure!(
        waited >= Duration::from_millis(LIMIT_SECS * 1000 - 200),
        "torn down after {waited:?}, before the limit"
    );
    let after = server.media_stats().await?.0;
    ensure!(after.silence_teardowns >= 2, "{after:?}");
    nurse.shutdown().await;
    caremgr.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// A pocket Wi-Fi router losing its mobile link for a few seconds and coming back on a new
/// port: nothing is torn down, and media resumes both ways at the new ports without a
/// reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_outage_ending_on_new_ports_rides_through() -> anyhow::Result<()> {
    const OUTAGE: Duration = Duration::from_secs(6);
    let Conference {
        server,
        nat,
        nurse,
        caremgr,
        ..
    } = conference(|_| {}).await?;
    nat.set_blackhole(true);
    tokio::time::sleep(OUTAGE).await;
    nat.rebind().await?;
    nat.set_blackhole(false);
    media_resumes(&nurse, &caremgr, "after the outage").await?;
    let stats = server.media_stats().await?.0;
    ensure!(
        stats.silence_teardowns == 0 && stats.path_moves == 4,
        "no teardown, each connection followed once: {stats:?}"
    );
    no_reconnects(&[&nurse, &caremgr], "the outage")?;
    nurse.shutdown().await;
    caremgr.shutdown().await;
    server.shutdown().await;
    Ok(())
}
