//! The wardlink adapter: join tokens signed with the server's key, the `/ws` signaling
//! protocol (`signaling/src/protocol.rs`), and the two peer connections per participant.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wardlink::conferences::{self, InvitationSpec, NewConference};
use wardlink::keys::Keys;
use wardlink::store::Store;
use wardlink_signaling::protocol::{ClientMessage, ServerMessage, PROTOCOL_VERSION};
use wardlink_signaling::{PcKind, Role as WardRole};

use crate::peer::{Peer, PeerHandle, PeerState, Role};
use crate::scenario::{ParticipantSpec, RunCtx};
use crate::tls::client_config;

/// How often a participant pings (PROTOCOL.md: every 20 s; the idle timeout is 60 s).
const PING_EVERY: Duration = Duration::from_secs(20);
/// How long a join may take before the participant gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a participant waits for its `bye` after sending `leave`.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a server message is one a load participant does nothing with: the roster and
/// the lobby. Only its `type` is read. A roster of a room of 450 is about 45 KB of JSON,
/// each join and leave sends everyone one, and parsing them all into [`ServerMessage`]
/// kept the generator's two threads busy for two seconds after everyone left a 1 → 450
/// room (session 15's profile), delaying the `bye`s it was timing.
fn ignored_message(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind>(text).is_ok_and(|k| matches!(&*k.kind, "roster" | "lobby"))
}

/// Signs join links by writing invitations into the server's store, exactly as
/// `wardlink room create` does (minus the audit entries, which a benchmark does not need).
#[derive(Clone)]
pub struct Minter {
    store: Store,
    keys: Arc<Keys>,
    base_url: String,
}

impl Minter {
    /// From a running in-process server's state.
    pub fn new(store: Store, keys: Arc<Keys>, base_url: String) -> Minter {
        Minter {
            store,
            keys,
            base_url,
        }
    }

    /// From a data directory shared with a separately running server (SQLite handles the
    /// concurrent access; the server reads invitations at join time).
    pub fn from_data_dir(data_dir: &Path, base_url: &str) -> anyhow::Result<Minter> {
        let keys = Keys::load(&Keys::path(data_dir))
            .with_context(|| format!("signing key in {}", data_dir.display()))?;
        let store = Store::open(data_dir)?;
        Ok(Minter::new(
            store,
            Arc::new(keys),
            base_url.trim_end_matches('/').to_owned(),
        ))
    }

    /// Creates one conference with `n` invitations (the first for the host, the rest for
    /// staff, so nobody waits in the waiting room) and returns their tokens in order.
    pub fn room(&self, title: &str, n: usize) -> anyhow::Result<Vec<String>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let now = wardlink::store::now_ms();
        let expires = now + 6 * 3_600_000;
        let conn = self.store.lock();
        let first = [InvitationSpec {
            role: WardRole::Host,
            display_name: "load host".to_owned(),
        }];
        let links = conferences::create_conference(
            &conn,
            &self.keys.signer,
            &self.base_url,
            &NewConference {
                title,
                scheduled_ms: now,
                not_before_ms: now,
                expires_ms: expires,
                created_by: None,
                invitations: &first,
            },
            now,
        )?;
        let mut tokens = vec![links
            .links
            .first()
            .context("conference created without links")?
            .token
            .clone()];
        for i in 1..n {
            let link = conferences::issue_invitation(
                &conn,
                &self.keys.signer,
                &self.base_url,
                &links.room_id,
                WardRole::Staff,
                &format!("load staff {i}"),
                now,
                expires,
                now,
            )?;
            tokens.push(link.token);
        }
        Ok(tokens)
    }
}

/// Where and how to reach a wardlink server.
#[derive(Clone)]
pub struct WardlinkTarget {
    /// `wss://host:port/ws`.
    pub ws_url: String,
    /// The server certificate to pin (`<data_dir>/tls/cert.pem`); None accepts any
    /// certificate (loopback benchmarks only).
    pub cert: Option<PathBuf>,
    /// Signs the tokens.
    pub minter: Minter,
}

impl WardlinkTarget {
    /// From the server's base URL (`https://127.0.0.1:8443`) and data directory.
    pub fn new(base_url: &str, data_dir: &Path) -> anyhow::Result<WardlinkTarget> {
        let rest = base_url
            .trim_end_matches('/')
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("--url must be https://host:port, got {base_url}"))?;
        let cert = data_dir.join("tls").join("cert.pem");
        Ok(WardlinkTarget {
            ws_url: format!("wss://{rest}/ws"),
            cert: cert.exists().then_some(cert),
            minter: Minter::from_data_dir(data_dir, base_url)?,
        })
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(target: &WardlinkTarget) -> anyhow::Result<Ws> {
    let tls = client_config(target.cert.as_deref())?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(
            target.ws_url.as_str(),
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        ),
    )
    .await
    .context("WebSocket connect timed out")?
    .with_context(|| format!("connecting to {}", target.ws_url))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, msg: &ClientMessage) -> anyhow::Result<()> {
    let text = serde_json::to_string(msg)?;
    ws.send(Message::text(text)).await.context("WebSocket send")
}

/// A random device secret (32 hex characters), as a browser keeps one per profile.
pub fn random_device() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Runs one participant until `ctx.stop` is set: join, publish (if a publisher), answer
/// every subscribe offer, ping, then leave.
pub async fn run_participant(
    target: Arc<WardlinkTarget>,
    token: String,
    spec: Arc<ParticipantSpec>,
    ctx: Arc<RunCtx>,
) -> anyhow::Result<()> {
    let mut ws = connect(&target).await?;
    send(
        &mut ws,
        &ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            token,
            display_name: Some(format!("load {}", spec.id)),
            device: Some(spec.device.clone().unwrap_or_else(random_device)),
        },
    )
    .await?;
    let status = &spec.status;
    let mut publish: Option<PeerHandle> = None;
    let mut pending_publish: Option<Peer> = None;
    let mut subscribe: Option<PeerHandle> = None;
    let mut stop = ctx.stop.clone();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let join_deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    // When this participant sent `leave`.
    let mut left_at: Option<tokio::time::Instant> = None;
    let result: anyhow::Result<()> = loop {
        if left_at.is_none() && *stop.borrow() {
            left_at = Some(tokio::time::Instant::now());
            send(&mut ws, &ClientMessage::Leave).await.ok();
        }
        let deadline = left_at.map(|at| at + LEAVE_TIMEOUT).unwrap_or(
            if status.joined.load(Ordering::Relaxed) {
                tokio::time::Instant::now() + Duration::from_secs(3600)
            } else {
                join_deadline
            },
        );
        tokio::select! {
            // Frames first: a `bye` already read off the socket must not lose to the
            // deadline because this loop was busy (answering a re-offer) when it passed.
            biased;
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => {
                        break if left_at.is_some() { Ok(()) } else { Err(anyhow!("server closed the WebSocket")) };
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(if left_at.is_some() {
                        anyhow!("WebSocket failed after leave, before bye: {e}")
                    } else {
                        anyhow!("WebSocket: {e}")
                    }),
                };
                if ignored_message(text.as_str()) {
                    continue;
                }
                let msg: ServerMessage = match serde_json::from_str(text.as_str()) {
                    Ok(m) => m,
                    Err(_) => { status.error(format!("unparseable: {}", text.as_str().chars().take(120).collect::<String>())); continue; }
                };
                match msg {
                    ServerMessage::Joined { .. } => {
                        status.joined.store(true, Ordering::Relaxed);
                        if spec.publisher.is_some() {
                            match start_publish(&ctx, &spec).await {
                                Ok((peer, sdp)) => {
                                    pending_publish = Some(peer);
                                    send(&mut ws, &ClientMessage::PublishOffer { sdp, screen_mid: None }).await?;
                                }
                                Err(e) => break Err(e.context("publish offer")),
                            }
                        }
                    }
                    ServerMessage::Waiting { .. } => break Err(anyhow!("put in the waiting room (use host/staff links)")),
                    ServerMessage::PublishAnswer { sdp } => {
                        let Some(mut peer) = pending_publish.take() else {
                            status.error("publish_answer without an offer".into());
                            continue;
                        };
                        peer.apply_answer(sdp)?;
                        let Some((index, counters)) = spec.publisher.clone() else { continue };
                        if let Some(old) = publish.take() { old.close().await; }
                        publish = Some(peer.spawn(
                            Role::Publisher { index, counters, plan: ctx.plan.clone() },
                            ctx.clock,
                            ctx.window.clone(),
                        ));
                    }
                    ServerMessage::SubscribeOffer { sdp, revision, .. } => {
                        let answer = match &subscribe {
                            Some(h) if h.current() != PeerState::Failed => h.reoffer(sdp).await,
                            _ => {
                                // A participant with nobody to receive may still be
                                // offered a connection; answer it like a browser would,
                                // counting into a throw-away tally.
                                let rx = spec.rx.clone().unwrap_or_default();
                                match Peer::new(ctx.bind_ip).await {
                                    Ok(mut peer) => match peer.answer_offer(sdp) {
                                        Ok(a) => {
                                            subscribe = Some(peer.spawn(Role::Subscriber { rx, drop_every: ctx.plan.downlink_drop_every, direct: ctx.plan.direct_rx }, ctx.clock, ctx.window.clone()));
                                            Ok(a)
                                        }
                                        Err(e) => Err(e),
                                    },
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        match answer {
                            Ok(sdp) => send(&mut ws, &ClientMessage::SubscribeAnswer { sdp, revision }).await?,
                            Err(e) => status.error(format!("answering subscribe offer {revision}: {e:#}")),
                        }
                    }
                    ServerMessage::Reconnect { pc, reason } => {
                        status.reconnects.fetch_add(1, Ordering::Relaxed);
                        status.error(format!("reconnect {pc:?}: {reason}"));
                        match pc {
                            PcKind::Publish => {
                                if let Some(old) = publish.take() { old.close().await; }
                                if spec.publisher.is_some() {
                                    let (peer, sdp) = start_publish(&ctx, &spec).await?;
                                    pending_publish = Some(peer);
                                    send(&mut ws, &ClientMessage::PublishOffer { sdp, screen_mid: None }).await?;
                                }
                            }
                            PcKind::Subscribe => {
                                if let Some(old) = subscribe.take() { old.close().await; }
                            }
                        }
                    }
                    ServerMessage::Error { code, message, fatal } => {
                        status.error(format!("error {code}: {message}"));
                        if fatal { break Err(anyhow!("fatal error {code}: {message}")); }
                    }
                    ServerMessage::Bye { reason } => {
                        let Some(at) = left_at else { break Err(anyhow!("bye: {reason}")) };
                        let waited = at.elapsed();
                        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
                        status.bye_after_leave_us.store(us.max(1), Ordering::Relaxed);
                        // Read late only because this loop was busy: still over the limit.
                        break if waited > LEAVE_TIMEOUT {
                            Err(anyhow!("bye only {:.1} s after leave", waited.as_secs_f64()))
                        } else {
                            Ok(())
                        };
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if left_at.is_some() {
                    break Err(anyhow!("no bye within {LEAVE_TIMEOUT:?} of leave"));
                }
                break Err(anyhow!("not joined within {JOIN_TIMEOUT:?}"));
            }
            _ = stop.changed(), if left_at.is_none() => {}
            _ = ping.tick() => { send(&mut ws, &ClientMessage::Ping).await.ok(); }
            _ = tick.tick() => {
                if let Some(p) = &publish {
                    status.publish_connected.store(p.current() == PeerState::Connected, Ordering::Relaxed);
                }
                if let Some(s) = &subscribe {
                    status.subscribe_connected.store(s.current() == PeerState::Connected, Ordering::Relaxed);
                }
            }
        }
    };
    if let Some(p) = publish {
        p.close().await;
    }
    if let Some(s) = subscribe {
        s.close().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    result
}

async fn start_publish(ctx: &RunCtx, spec: &ParticipantSpec) -> anyhow::Result<(Peer, String)> {
    let mut peer = Peer::new(ctx.bind_ip).await?;
    peer.add_publish_tracks(&format!("load-{}", spec.id))?;
    let sdp = peer.create_offer()?;
    Ok((peer, sdp))
}

/// Joins with `token`, publishes until the publish connection is up, then leaves: one
/// cycle of the leak check. Fails if any step does.
pub async fn join_leave_cycle(
    target: &WardlinkTarget,
    token: &str,
    device: &str,
    ctx: &RunCtx,
    rx: crate::stats::SharedRx,
) -> anyhow::Result<()> {
    let mut ws = connect(target).await?;
    send(
        &mut ws,
        &ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            token: token.to_owned(),
            display_name: None,
            device: Some(device.to_owned()),
        },
    )
    .await?;
    let mut publish: Option<PeerHandle> = None;
    let mut pending: Option<Peer> = None;
    let mut subscribe: Option<PeerHandle> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let outcome: anyhow::Result<()> = async {
        loop {
            if let (Some(p), Some(s)) = (&publish, &subscribe) {
                if p.current() == PeerState::Connected && s.current() == PeerState::Connected {
                    return Ok(());
                }
            }
            // Both connections may come up after the last signaling message, so wait for
            // their states too, not only for the next frame (which may never come).
            let settled = async {
                match (&publish, &subscribe) {
                    (Some(p), Some(s)) => {
                        let (mut p, mut s) = (p.state.clone(), s.state.clone());
                        let up = |x: &PeerState| *x != PeerState::Connecting;
                        // The guards `wait_for` returns are dropped at once (they are not Send).
                        let _ = tokio::join!(async { p.wait_for(up).await.map(|_| ()) }, async {
                            s.wait_for(up).await.map(|_| ())
                        });
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            let frame = tokio::select! {
                frame = tokio::time::timeout_at(deadline, ws.next()) => {
                    frame.map_err(|_| anyhow!("cycle did not complete in 15 s"))?
                }
                () = settled => {
                    let (p, s) = (publish.as_ref(), subscribe.as_ref());
                    match (p.map(|p| p.current()), s.map(|s| s.current())) {
                        (Some(PeerState::Connected), Some(PeerState::Connected)) => return Ok(()),
                        states => bail!("a peer connection did not come up: {states:?}"),
                    }
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                _ => bail!("WebSocket closed during the cycle"),
            };
            if ignored_message(text.as_str()) {
                continue;
            }
            match serde_json::from_str::<ServerMessage>(text.as_str())? {
                ServerMessage::Joined { .. } => {
                    let mut peer = Peer::new(ctx.bind_ip).await?;
                    peer.add_publish_tracks("leak")?;
                    let sdp = peer.create_offer()?;
                    pending = Some(peer);
                    send(
                        &mut ws,
                        &ClientMessage::PublishOffer {
                            sdp,
                            screen_mid: None,
                        },
                    )
                    .await?;
                }
                ServerMessage::PublishAnswer { sdp } => {
                    let mut peer = pending.take().context("answer without offer")?;
                    peer.apply_answer(sdp)?;
                    let counters = Arc::new(crate::stats::PublisherCounters::default());
                    publish = Some(peer.spawn(
                        Role::Publisher {
                            index: u32::MAX,
                            counters,
                            plan: ctx.plan.clone(),
                        },
                        ctx.clock,
                        ctx.window.clone(),
                    ));
                }
                ServerMessage::SubscribeOffer { sdp, revision, .. } => {
                    let answer = match &subscribe {
                        Some(h) => h.reoffer(sdp).await?,
                        None => {
                            let mut peer = Peer::new(ctx.bind_ip).await?;
                            let a = peer.answer_offer(sdp)?;
                            subscribe = Some(peer.spawn(
                                Role::Subscriber {
                                    rx: rx.clone(),
                                    drop_every: ctx.plan.downlink_drop_every,
                                    direct: ctx.plan.direct_rx,
                                },
                                ctx.clock,
                                ctx.window.clone(),
                            ));
                            a
                        }
                    };
                    send(
                        &mut ws,
                        &ClientMessage::SubscribeAnswer {
                            sdp: answer,
                            revision,
                        },
                    )
                    .await?;
                }
                ServerMessage::Error {
                    code,
                    message,
                    fatal: true,
                } => {
                    bail!("fatal {code}: {message}")
                }
                ServerMessage::Waiting { .. } => bail!("put in the waiting room"),
                _ => {}
            }
        }
    }
    .await;
    // Leave properly, then drop the connections.
    let _ = send(&mut ws, &ClientMessage::Leave).await;
    let bye = tokio::time::timeout(LEAVE_TIMEOUT, async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(t) = frame {
                if ignored_message(t.as_str()) {
                    continue;
                }
                if let Ok(ServerMessage::Bye { .. }) = serde_json::from_str(t.as_str()) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if let Some(p) = publish {
        p.close().await;
    }
    if let Some(s) = subscribe {
        s.close().await;
    }
    outcome?;
    if !bye {
        bail!("no bye after leave");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use wardlink_signaling::protocol::RosterEntry;

    #[test]
    fn rosters_and_lobbies_are_ignored_and_nothing_else_is() {
        let roster = ServerMessage::Roster {
            participants: Arc::from(vec![RosterEntry {
                id: "p1".into(),
                display_name: "看護師 \"A\"".into(),
                role: WardRole::Staff,
                audio_muted: false,
                video_muted: true,
                publishing: vec![],
            }]),
        };
        let lobby = ServerMessage::Lobby { waiting: vec![] };
        let bye = ServerMessage::Bye {
            reason: "roster".into(),
        };
        let text = |m: &ServerMessage| serde_json::to_string(m).unwrap();
        assert!(ignored_message(&text(&roster)));
        assert!(ignored_message(&text(&lobby)));
        assert!(!ignored_message(&text(&bye)));
        assert!(!ignored_message("not json"));
    }
}
