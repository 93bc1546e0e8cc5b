//! A discharge conference: ward nurse (host), care manager and surveyor each publish Opus and
//! VP8 through a real in-process server; everyone must receive the other two byte for byte,
//! nobody their own media. Then a fourth participant joins late, and the publishers' video
//! senders must be asked for a keyframe so the newcomer can start decoding.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use wardlink_signaling::{MediaKind, Role};
use wardlink_tests::checks::{
    received_seqs, sent_in, stop_and_snapshot, verify_received_payloads, wait_receiving,
    PublisherInfo,
};
use wardlink_tests::harness::{token_for, TestServer};
use wardlink_tests::rtc_client::{kind_name, Participant, ParticipantOptions};
use wardlink_tests::synthetic::{is_vp8_keyframe, parse_marker};

/// Minimum share of packets sent in the measurement window that must arrive, on loopback.
const MIN_DELIVERY: f64 = 0.95;

fn options(tag: &str) -> ParticipantOptions {
    let mut opts = ParticipantOptions::publisher(tag);
    // Periodic keyframes only every 10 s: a newcomer that decodes sooner was served because
    // a keyframe request reached the publisher.
    opts.keyframe_every = 300;
    opts
}

fn everyone_but(all: &[Participant], me: &Participant) -> Vec<(String, String)> {
    all.iter()
        .filter(|p| p.id() != me.id())
        .map(|p| (p.id().to_owned(), p.tag().to_owned()))
        .collect()
}

fn summaries(all: &[Participant]) -> String {
    all.iter()
        .map(Participant::summary)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_parties_then_late_joiner() -> anyhow::Result<()> {
    conference(TestServer::start().await?).await
}

/// The same conference with UDP GSO turned off: the one-datagram-per-call send path, which
/// servers fall back to where the kernel or device refuses GSO, must forward as exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_parties_then_late_joiner_without_gso() -> anyhow::Result<()> {
    conference(TestServer::start_with(|c| c.media_gso = false).await?).await
}

async fn conference(server: TestServer) -> anyhow::Result<()> {
    let links = server.create_room("退院前カンファレンス E2E")?;

    // The ward nurse (host) enters directly; the guests wait until she admits them.
    let mut people: Vec<Participant> = Vec::new();
    for (role, tag) in [
        (Role::Host, "nurse"),
        (Role::CareManager, "caremgr"),
        (Role::Surveyor, "surveyor"),
    ] {
        let token = token_for(&links, role)?;
        let p = Participant::join(&server.ws_url, &server.tls, &token, options(tag))
            .await
            .with_context(|| format!("{tag} joins"))?;
        let joined = if role == Role::Host {
            ensure!(!p.is_waiting(), "the host was put in the waiting room");
            p.joined().context("host has no joined message")?
        } else {
            ensure!(p.is_waiting(), "guest {tag} skipped the waiting room");
            p.observe(|o| {
                ensure!(
                    o.roster.is_empty() && o.subscribe_offers.is_empty(),
                    "{tag} in the waiting room already sees the conference: {}",
                    o.summary()
                );
                Ok(())
            })?;
            people[0]
                .admit(&p, Duration::from_secs(10))
                .await
                .with_context(|| format!("nurse admits {tag}"))?
        };
        ensure!(
            joined.role == role,
            "{tag} joined as {:?}, expected {role:?}",
            joined.role
        );
        people.push(p);
    }
    let ids: Vec<&str> = people.iter().map(Participant::id).collect();
    ensure!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "participant ids are not distinct: {ids:?}"
    );

    // Phase 1: everyone hears and sees the other two.
    for p in &people {
        let others = everyone_but(&people, p);
        wait_receiving(p, &others, 25, 15, Duration::from_secs(30))
            .await
            .with_context(|| summaries(&people))?;
    }

    // Phase 2: a measurement window. Everyone must get ≥95% of what was sent in it.
    let start_seq: Vec<(u32, u32)> = people
        .iter()
        .map(|p| {
            let s = p.sent();
            (s.next_seq(MediaKind::Audio), s.next_seq(MediaKind::Video))
        })
        .collect();
    for p in &people {
        for (i, publisher) in people.iter().enumerate() {
            if publisher.id() == p.id() {
                continue;
            }
            let (a0, v0) = start_seq[i];
            let (pid, ptag) = (publisher.id().to_owned(), publisher.tag().to_owned());
            p.wait_until(
                Duration::from_secs(20),
                &format!("3 s of media from {ptag}"),
                |o| {
                    let a = o.max_seq(&pid, &ptag, MediaKind::Audio).unwrap_or(0);
                    let v = o.max_seq(&pid, &ptag, MediaKind::Video).unwrap_or(0);
                    a >= a0 + 150 && v >= v0 + 90
                },
            )
            .await
            .with_context(|| summaries(&people))?;
        }
    }
    let publishers: Vec<PublisherInfo> =
        stop_and_snapshot(&people.iter().collect::<Vec<_>>()).await;
    // Let the last packets land: each receiver has the final seq of each stream, or loss
    // is decided after a bounded wait (it is allowed, within the ratio).
    for p in &people {
        for publisher in publishers.iter().filter(|x| x.id != p.id()) {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let last = publisher.sent.next_seq(kind).saturating_sub(1);
                let (pid, ptag) = (publisher.id.clone(), publisher.tag.clone());
                let _ = p
                    .wait_until(Duration::from_secs(2), "tail of the window", |o| {
                        o.max_seq(&pid, &ptag, kind).is_some_and(|s| s >= last)
                    })
                    .await;
            }
        }
    }

    let mut problems = Vec::new();
    for p in &people {
        problems.extend(verify_received_payloads(p, &publishers));
        for (i, publisher) in publishers.iter().enumerate() {
            if publisher.id == p.id() {
                continue;
            }
            for (kind, from) in [
                (MediaKind::Audio, start_seq[i].0),
                (MediaKind::Video, start_seq[i].1),
            ] {
                let window = from..publisher.sent.next_seq(kind);
                let sent = sent_in(publisher, kind, window.clone());
                let got = received_seqs(p, publisher, kind, window.clone()).len();
                let ratio = got as f64 / sent.max(1) as f64;
                eprintln!(
                    "delivery {} <- {} {}: {got}/{sent} ({:.1}%) in seqs {window:?}",
                    p.tag(),
                    publisher.tag,
                    kind_name(kind),
                    ratio * 100.0
                );
                if sent < 50 {
                    problems.push(format!(
                        "{} sent only {sent} {} packets in the window",
                        publisher.tag,
                        kind_name(kind)
                    ));
                }
                if ratio < MIN_DELIVERY {
                    problems.push(format!(
                        "{} got {got}/{sent} ({:.1}%) of {}'s {} packets, need ≥{:.0}%",
                        p.tag(),
                        ratio * 100.0,
                        publisher.tag,
                        kind_name(kind),
                        MIN_DELIVERY * 100.0
                    ));
                }
            }
        }
        p.observe(|o| {
            if !o.errors.is_empty() {
                problems.push(format!("{} got server errors: {:?}", p.tag(), o.errors));
            }
            if !o.violations.is_empty() {
                problems.push(format!(
                    "{} saw protocol violations: {:?}",
                    p.tag(),
                    o.violations
                ));
            }
            if !o.failures.is_empty() {
                problems.push(format!("{} had local failures: {:?}", p.tag(), o.failures));
            }
            let roster: Vec<&str> = o.roster.iter().map(|r| r.id.as_str()).collect();
            for id in &ids {
                if !roster.contains(id) {
                    problems.push(format!("{}'s roster {roster:?} lacks {id}", p.tag()));
                }
            }
        });
    }
    if !problems.is_empty() {
        bail!(
            "{} problems:\n  {}\n\n{}",
            problems.len(),
            problems.join("\n  "),
            summaries(&people)
        );
    }

    // Forwarded RTP is encrypted by the SFU itself once a subscriber connection's keys are
    // proven on a packet `rtc` encrypted (see server/src/media/direct_srtp.rs): each of the
    // three subscriber connections sends at most a few packets through `rtc` first.
    let (stats, _) = server.media_stats().await?;
    ensure!(
        stats.direct > 0 && stats.forwarded - stats.direct <= 9,
        "forwarded packets not on the direct SRTP path: {stats:?}"
    );
    eprintln!("media plane after phase 2: {stats:?}");

    // Phase 3: a late joiner (a hospital doctor) arrives while everyone is sending.
    for p in &people {
        p.set_sending(true);
    }
    let before_join = Instant::now();
    let doctor_token = server.mint_token(&links, Role::Staff, "主治医")?;
    let doctor = Participant::join(
        &server.ws_url,
        &server.tls,
        &doctor_token,
        options("doctor"),
    )
    .await
    .context("late joiner joins")?;
    let existing = everyone_but(&people, &doctor);
    wait_receiving(&doctor, &existing, 10, 5, Duration::from_secs(30))
        .await
        .with_context(|| summaries(&people))?;
    let subscribed_at = doctor
        .observe(|o| o.subscribe_connected_at)
        .context("late joiner receives media without its subscribe connection connected")?;

    // Each existing publisher's VP8 sender gets a PLI or FIR after the newcomer arrived.
    for p in &people {
        p.wait_until(
            Duration::from_secs(10),
            "a video keyframe request after the late join",
            |o| {
                o.keyframe_requests
                    .iter()
                    .any(|k| k.kind == MediaKind::Video && k.at >= before_join)
            },
        )
        .await
        .with_context(|| {
            format!(
                "late joiner subscribed {:?} after joining",
                subscribed_at - before_join
            )
        })?;
    }
    // And the newcomer gets a decodable start (a keyframe) from every publisher promptly,
    // well before the next periodic keyframe would have come.
    for (id, tag) in &existing {
        doctor
            .wait_until(
                Duration::from_secs(5),
                &format!("a VP8 keyframe from {tag}"),
                |o| {
                    o.received_from(id, MediaKind::Video).iter().any(|p| {
                        is_vp8_keyframe(&p.payload)
                            && parse_marker(&p.payload).is_some_and(|m| m.keyframe)
                    })
                },
            )
            .await?;
    }
    // Everyone now also receives the newcomer.
    for p in &people {
        wait_receiving(
            p,
            &[(doctor.id().to_owned(), "doctor".to_owned())],
            10,
            5,
            Duration::from_secs(30),
        )
        .await
        .with_context(|| summaries(&people))?;
    }
    // Everyone stops before the check: a packet sent after the snapshot of what was sent
    // but received before the receivers are inspected would look like one never sent.
    let all_publishers = stop_and_snapshot(
        &people
            .iter()
            .chain(std::iter::once(&doctor))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut problems = verify_received_payloads(&doctor, &all_publishers);
    for p in &people {
        problems.extend(verify_received_payloads(p, &all_publishers));
    }
    for p in people.iter().chain(std::iter::once(&doctor)) {
        p.observe(|o| {
            if !o.errors.is_empty() {
                problems.push(format!("{} got server errors: {:?}", p.tag(), o.errors));
            }
            if !o.violations.is_empty() {
                problems.push(format!(
                    "{} saw protocol violations: {:?}",
                    p.tag(),
                    o.violations
                ));
            }
        });
    }
    if !problems.is_empty() {
        bail!(
            "{} problems after the late join:\n  {}\n\n{}\n{}",
            problems.len(),
            problems.join("\n  "),
            summaries(&people),
            doctor.summary()
        );
    }

    doctor.leave(Duration::from_secs(5)).await?;
    for p in people {
        p.leave(Duration::from_secs(5)).await?;
    }
    server.shutdown().await;
    Ok(())
}
