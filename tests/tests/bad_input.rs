//! Hostile and broken signaling input is answered with the documented error codes, does not
//! take the connection down when it need not, and never disturbs a conference in progress.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use wardlink_signaling::protocol::{ClientMessage, ServerMessage, MAX_MESSAGE_BYTES};
use wardlink_signaling::{ErrorCode, Role, PROTOCOL_VERSION};
use wardlink_tests::checks::{
    still_flowing, stop_and_snapshot, verify_received_payloads, wait_receiving_each_other,
    PublisherInfo,
};
use wardlink_tests::harness::{token_for, TestServer};
use wardlink_tests::rtc_client::{Participant, ParticipantOptions};
use wardlink_tests::signal_client::SignalClient;
use wardlink_tests::tokens;

const WAIT: Duration = Duration::from_secs(5);

/// A syntactically plausible offer that is still nonsense (no valid m-line, no fingerprint).
const SDP_SHAPED_GARBAGE: &str =
    "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video notaport RTP/SAVPF zz\r\na=mid:\u{1F4A5}\r\n";

/// Expects the next error to carry `code`; the connection must stay usable afterwards
/// (a ping is answered) unless the server declared the error fatal.
async fn expect_code(client: &mut SignalClient, code: ErrorCode, what: &str) -> anyhow::Result<()> {
    let (got, message, fatal) = client
        .expect_error(WAIT)
        .await
        .with_context(|| format!("{what}: expected error {code}"))?;
    ensure!(
        got == code,
        "{what}: expected error {code}, got {got} ({message})"
    );
    ensure!(!fatal, "{what}: {code} should not be fatal ({message})");
    client
        .ping(WAIT)
        .await
        .with_context(|| format!("{what}: connection unusable after {code}"))?;
    Ok(())
}

/// Expects a join-time refusal with `code`; if the server calls it fatal, the socket must
/// actually close.
async fn expect_refused_join(
    server: &TestServer,
    token: &str,
    code: ErrorCode,
    what: &str,
) -> anyhow::Result<()> {
    let mut client = SignalClient::connect(&server.ws_url, &server.tls).await?;
    client.send(&ClientMessage::Join {
        protocol: PROTOCOL_VERSION,
        token: token.to_owned(),
        display_name: None,
        device: None,
    })?;
    let (got, message, fatal) = client
        .wait_for(WAIT, &format!("{what}: error {code}"), |m| match m {
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => Some((*code, message.clone(), *fatal)),
            ServerMessage::Joined { participant_id, .. } => Some((
                ErrorCode::Internal,
                format!("JOINED as {participant_id}"),
                false,
            )),
            _ => None,
        })
        .await?;
    ensure!(
        got == code,
        "{what}: expected {code}, got {got} ({message})"
    );
    ensure!(
        !message.contains(token),
        "{what}: the error message echoes the token back"
    );
    if fatal {
        client
            .wait_closed(WAIT)
            .await
            .with_context(|| format!("{what}: fatal error but the socket stayed open"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_while_the_conference_flows() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let links = server.create_room("カンファレンス（攻撃耐性）")?;

    // A two-party conference that must keep flowing throughout.
    let nurse = Participant::join(
        &server.ws_url,
        &server.tls,
        &token_for(&links, Role::Host)?,
        ParticipantOptions::publisher("nurse"),
    )
    .await?;
    let caremgr = Participant::join(
        &server.ws_url,
        &server.tls,
        &token_for(&links, Role::CareManager)?,
        ParticipantOptions::publisher("caremgr"),
    )
    .await?;
    nurse
        .admit(&caremgr, WAIT)
        .await
        .context("nurse admits the care manager")?;
    let pair = [&nurse, &caremgr];
    let flowing = |stage: &'static str| still_flowing(&pair, Duration::from_secs(10), stage);
    wait_receiving_each_other(&pair, 20, 10, Duration::from_secs(30)).await?;

    // --- Before join, on one connection: each error is answered and the socket survives.
    let before = flowing("during pre-join attacks");
    let mut raw = SignalClient::connect(&server.ws_url, &server.tls).await?;
    raw.send_text("{not json")?;
    expect_code(&mut raw, ErrorCode::MalformedJson, "malformed JSON").await?;
    raw.send_text(r#"{"type":"teleport","to":"ward 3"}"#)?;
    expect_code(&mut raw, ErrorCode::UnknownType, "unknown type").await?;
    raw.send_text(r#"{"type":"publish_offer"}"#)?;
    expect_code(&mut raw, ErrorCode::UnknownType, "missing field").await?;
    raw.send_text(r#"{"type":"mute","kind":"smell","muted":true}"#)?;
    expect_code(&mut raw, ErrorCode::UnknownType, "bad enum value").await?;
    let huge = serde_json::to_string(&ClientMessage::PublishOffer {
        sdp: format!("v=0\r\n{}", "a=x\r\n".repeat(MAX_MESSAGE_BYTES / 5 + 100)),
        screen_mid: None,
    })?;
    ensure!(huge.len() > MAX_MESSAGE_BYTES);
    raw.send_text(huge)?;
    expect_code(&mut raw, ErrorCode::MessageTooLarge, "message over 64 KiB").await?;
    raw.send(&ClientMessage::PublishOffer {
        sdp: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".into(),
        screen_mid: None,
    })?;
    expect_code(&mut raw, ErrorCode::OutOfOrder, "publish_offer before join").await?;
    raw.send(&ClientMessage::SubscribeAnswer {
        sdp: "v=0\r\n".into(),
        revision: 1,
    })?;
    expect_code(
        &mut raw,
        ErrorCode::OutOfOrder,
        "subscribe_answer before join",
    )
    .await?;
    before.await?;

    // --- Join-time refusals.
    let during_tokens = flowing("during token attacks");
    let genuine = token_for(&links, Role::Surveyor)?;
    expect_refused_join(
        &server,
        &tokens::forge(&genuine)?,
        ErrorCode::InvalidToken,
        "forged token",
    )
    .await?;
    expect_refused_join(
        &server,
        &tokens::tamper(&genuine)?,
        ErrorCode::InvalidToken,
        "tampered token",
    )
    .await?;
    let key = server.signing_key()?;
    let expired = tokens::resign_with(&genuine, &key, |claims| {
        let now = tokens::unix_now();
        claims.insert("iat".into(), (now - 7200).into());
        claims.insert("exp".into(), (now - 60).into());
    })?;
    expect_refused_join(&server, &expired, ErrorCode::TokenExpired, "expired token").await?;
    expect_refused_join(
        &server,
        "not-a-token",
        ErrorCode::InvalidToken,
        "garbage token",
    )
    .await?;
    expect_refused_join(
        &server,
        &format!("{genuine}x"),
        ErrorCode::InvalidToken,
        "token with trailing junk",
    )
    .await?;
    during_tokens.await?;

    // --- After join: a participant that misbehaves (joined with a valid family link).
    let during_joined = flowing("during joined attacks");
    // Hospital staff enter without the waiting room, so the rogue reaches the room state.
    let mut rogue = SignalClient::connect(&server.ws_url, &server.tls).await?;
    let joined = rogue
        .join(&server.mint_token(&links, Role::Staff, "不正な職員")?, WAIT)
        .await
        .context("rogue client joins with a valid token")?;
    // The room publishes, so the server offers a subscription; never answer it properly.
    let revision = rogue
        .wait_for(Duration::from_secs(10), "subscribe_offer", |m| match m {
            ServerMessage::SubscribeOffer { revision, .. } => Some(*revision),
            _ => None,
        })
        .await?;
    rogue.send(&ClientMessage::SubscribeAnswer {
        sdp: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".into(),
        revision: revision.wrapping_add(1000),
    })?;
    expect_code(
        &mut rogue,
        ErrorCode::OutOfOrder,
        "subscribe_answer with no such offer outstanding",
    )
    .await?;
    rogue.send(&ClientMessage::PublishOffer {
        sdp: "hello, I am definitely an SDP offer".into(),
        screen_mid: None,
    })?;
    expect_code(
        &mut rogue,
        ErrorCode::InvalidSdp,
        "publish_offer with garbage SDP",
    )
    .await?;
    rogue.send(&ClientMessage::PublishOffer {
        sdp: SDP_SHAPED_GARBAGE.into(),
        screen_mid: None,
    })?;
    expect_code(
        &mut rogue,
        ErrorCode::InvalidSdp,
        "publish_offer with SDP-shaped garbage",
    )
    .await?;
    rogue.send_text("[1,2,")?;
    expect_code(
        &mut rogue,
        ErrorCode::MalformedJson,
        "malformed JSON after join",
    )
    .await?;
    rogue.send_text(r#"{"type":"kick","participant":"everyone"}"#)?;
    expect_code(
        &mut rogue,
        ErrorCode::UnknownType,
        "unknown type after join",
    )
    .await?;
    rogue.send_text(format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(MAX_MESSAGE_BYTES)
    ))?;
    expect_code(
        &mut rogue,
        ErrorCode::MessageTooLarge,
        "message over 64 KiB after join",
    )
    .await?;
    rogue.send(&ClientMessage::Join {
        protocol: PROTOCOL_VERSION,
        token: genuine.clone(),
        display_name: None,
        device: None,
    })?;
    expect_code(&mut rogue, ErrorCode::OutOfOrder, "second join").await?;
    rogue.send(&ClientMessage::Leave)?;
    rogue
        .wait_for(WAIT, "bye", |m| {
            matches!(m, ServerMessage::Bye { .. }).then_some(())
        })
        .await?;
    during_joined.await?;
    // The rogue is gone from everyone's roster.
    for p in pair {
        p.wait_until(WAIT, "rogue removed from roster", |o| {
            o.roster.iter().all(|r| r.id != joined.participant_id)
        })
        .await?;
    }

    // --- And afterwards the conference still flows and the server takes a new participant.
    flowing("after the attacks").await?;
    let surveyor = Participant::join(
        &server.ws_url,
        &server.tls,
        &genuine,
        ParticipantOptions::publisher("surveyor"),
    )
    .await
    .context("a new participant joins after the attacks")?;
    nurse
        .admit(&surveyor, WAIT)
        .await
        .context("nurse admits the surveyor")?;
    let everyone = [&nurse, &caremgr, &surveyor];
    wait_receiving_each_other(&everyone, 10, 5, Duration::from_secs(30)).await?;

    let publishers: Vec<PublisherInfo> = stop_and_snapshot(&everyone).await;
    let mut problems = Vec::new();
    for p in everyone {
        problems.extend(verify_received_payloads(p, &publishers));
        p.observe(|o| {
            if !o.errors.is_empty() {
                problems.push(format!(
                    "{} (well-behaved) got server errors: {:?}",
                    p.tag(),
                    o.errors
                ));
            }
            if !o.failures.is_empty() {
                problems.push(format!("{} had local failures: {:?}", p.tag(), o.failures));
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
            "{} problems:\n  {}\n\n{}",
            problems.len(),
            problems.join("\n  "),
            everyone
                .iter()
                .map(|p| p.summary())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    surveyor.leave(WAIT).await?;
    nurse.leave(WAIT).await?;
    caremgr.leave(WAIT).await?;
    server.shutdown().await;
    Ok(())
}
