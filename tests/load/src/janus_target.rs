//! The Janus adapter: Janus's JSON API over WebSocket (subprotocol `janus-protocol`) and
//! the VideoRoom plugin, so the same participants can be pointed at Janus.
//!
//! Per participant: one WebSocket and one Janus session; a publisher handle that joins as
//! `publisher` and sends `configure` with our offer; a subscriber handle that joins as
//! `subscriber` with every other publisher's feed (Janus multistream: one connection,
//! like wardlink's subscribe connection), receives Janus's offer and answers with
//! `start`. Keep-alives every 25 s; trickled candidates are applied.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::peer::{Peer, PeerCmd, PeerHandle, PeerState, Role};
use crate::scenario::{ParticipantSpec, RunCtx};

/// Janus drops sessions idle for 60 s by default; keep-alive well inside that.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(25);
/// Longest wait for one request's reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One WebSocket to Janus with request/response matching by transaction.
struct JanusConn {
    ws: Ws,
    next: u64,
    /// Messages that answered no pending request (trickle, webrtcup, hangup, events).
    events: VecDeque<Value>,
}

impl JanusConn {
    async fn connect(url: &str) -> anyhow::Result<JanusConn> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .context("Janus WebSocket connect timed out")?
        .with_context(|| format!("connecting to Janus at {url}"))?;
        Ok(JanusConn {
            ws,
            next: 0,
            events: VecDeque::new(),
        })
    }

    async fn send(&mut self, mut v: Value) -> anyhow::Result<String> {
        self.next += 1;
        let tid = format!("t{}", self.next);
        v["transaction"] = json!(tid);
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .context("Janus send")?;
        Ok(tid)
    }

    async fn recv(&mut self) -> anyhow::Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(_))) | None => bail!("Janus closed the WebSocket"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("Janus WebSocket: {e}"),
            }
        }
    }

    /// Sends `v` and waits for its final reply (skipping the `ack` of async requests).
    async fn call(&mut self, v: Value) -> anyhow::Result<Value> {
        let tid = self.send(v).await?;
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| anyhow!("no Janus reply to {tid} within {CALL_TIMEOUT:?}"))??;
            let mine = msg["transaction"].as_str() == Some(tid.as_str());
            match msg["janus"].as_str() {
                Some("ack") if mine => continue,
                Some("error") if mine => bail!("Janus error: {}", msg["error"]),
                _ if mine => {
                    if let Some(err) = msg["plugindata"]["data"]["error"].as_str() {
                        bail!("VideoRoom error: {err}");
                    }
                    return Ok(msg);
                }
                _ => self.events.push_back(msg),
            }
        }
    }

    async fn create_session(&mut self) -> anyhow::Result<u64> {
        let r = self.call(json!({"janus": "create"})).await?;
        r["data"]["id"].as_u64().context("no session id")
    }

    async fn attach(&mut self, session: u64) -> anyhow::Result<u64> {
        let r = self
            .call(json!({"janus": "attach", "session_id": session, "plugin": "janus.plugin.videoroom"}))
            .await?;
        r["data"]["id"].as_u64().context("no handle id")
    }

    async fn message(
        &mut self,
        session: u64,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut v =
            json!({"janus": "message", "session_id": session, "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            v["jsep"] = j;
        }
        self.call(v).await
    }

    async fn trickle(&mut self, session: u64, handle: u64, candidate: &str) -> anyhow::Result<()> {
        self.send(
            json!({"janus": "trickle", "session_id": session, "handle_id": handle,
            "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0}}),
        )
        .await?;
        self.send(
            json!({"janus": "trickle", "session_id": session, "handle_id": handle,
            "candidate": {"completed": true}}),
        )
        .await?;
        Ok(())
    }
}

/// Where Janus listens.
#[derive(Clone, Debug)]
pub struct JanusTarget {
    /// `ws://127.0.0.1:8188`.
    pub url: String,
}

impl JanusTarget {
    /// Creates `n` VideoRooms (Opus + VP8 only, room for `max_publishers`) and returns
    /// their ids.
    pub async fn create_rooms(&self, n: usize, max_publishers: usize) -> anyhow::Result<Vec<u64>> {
        let mut conn = JanusConn::connect(&self.url).await?;
        let session = conn.create_session().await?;
        let handle = conn.attach(session).await?;
        let base = 1_000_000 + u64::from(rand::random::<u32>() % 1_000_000) * 1000;
        let mut rooms = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let room = base + i;
            let body = json!({
                "request": "create", "room": room, "permanent": false,
                "description": format!("load {i}"), "publishers": max_publishers.max(1),
                "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0, "fir_freq": 0,
                "notify_joining": false, "audiolevel_ext": false, "audiolevel_event": false,
                "videoorient_ext": false, "playoutdelay_ext": false,
                "transport_wide_cc_ext": false,
            });
            let r = conn.message(session, handle, body, None).await?;
            if r["plugindata"]["data"]["videoroom"].as_str() != Some("created") {
                bail!("room create failed: {r}");
            }
            rooms.push(room);
        }
        let _ = conn
            .send(json!({"janus": "destroy", "session_id": session}))
            .await;
        Ok(rooms)
    }
}

fn feed_id(publisher_index: u32) -> u64 {
    u64::from(publisher_index) + 1
}

fn jsep_sdp(msg: &Value, kind: &str) -> anyhow::Result<String> {
    let jsep = &msg["jsep"];
    if jsep["type"].as_str() != Some(kind) {
        bail!("expected a JSEP {kind}, got: {msg}");
    }
    jsep["sdp"]
        .as_str()
        .map(str::to_owned)
        .context("JSEP without sdp")
}

/// Runs one participant against Janus until `ctx.stop` is set.
pub async fn run_participant(
    target: Arc<JanusTarget>,
    room: u64,
    spec: Arc<ParticipantSpec>,
    ctx: Arc<RunCtx>,
) -> anyhow::Result<()> {
    let mut conn = JanusConn::connect(&target.url).await?;
    let session = conn.create_session().await?;
    let status = &spec.status;
    let mut publish: Option<(u64, PeerHandle)> = None;
    let mut subscribe: Option<(u64, PeerHandle)> = None;

    if let Some((index, counters)) = spec.publisher.clone() {
        let handle = conn.attach(session).await?;
        let r = conn
            .message(
                session,
                handle,
                json!({"request": "join", "ptype": "publisher", "room": room,
                       "id": feed_id(index), "display": format!("load {}", spec.id)}),
                None,
            )
            .await?;
        if r["plugindata"]["data"]["videoroom"].as_str() != Some("joined") {
            bail!("publisher join failed: {r}");
        }
        let mut peer = Peer::new(ctx.bind_ip).await?;
        peer.add_publish_tracks(&format!("load-{}", spec.id))?;
        let offer = peer.create_offer()?;
        let r = conn
            .message(
                session,
                handle,
                json!({"request": "configure", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        let answer = jsep_sdp(&r, "answer")?;
        tracing::debug!(%offer, %answer, "janus publish negotiation");
        peer.apply_answer(answer)?;
        conn.trickle(session, handle, peer.candidate()).await?;
        let h = peer.spawn(
            Role::Publisher {
                index,
                counters,
                plan: ctx.plan.clone(),
            },
            ctx.clock,
            ctx.window.clone(),
        );
        publish = Some((handle, h));
    }
    status.joined.store(true, Ordering::Relaxed);

    // Subscribe once every publisher is up (Janus only offers feeds that exist).
    let mut go = ctx.subscribe_go.clone();
    let mut stop = ctx.stop.clone();
    while !*go.borrow() && !*stop.borrow() {
        if let Some((_, p)) = &publish {
            status
                .publish_connected
                .store(p.current() == PeerState::Connected, Ordering::Relaxed);
        }
        tokio::select! {
            r = go.changed() => { r.map_err(|_| anyhow!("run ended"))?; }
            r = stop.changed() => { r.map_err(|_| anyhow!("run ended"))?; }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let stopped = *stop.borrow();
    if let (Some(rx), false, false) = (spec.rx.clone(), spec.expected.is_empty(), stopped) {
        let handle = conn.attach(session).await?;
        let streams: Vec<Value> = spec
            .expected
            .iter()
            .map(|&p| json!({"feed": feed_id(p)}))
            .collect();
        let r = conn
            .message(
                session,
                handle,
                json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
                None,
            )
            .await?;
        let offer = jsep_sdp(&r, "offer")?;
        let mut peer = Peer::new(ctx.bind_ip).await?;
        let answer = peer.answer_offer(offer)?;
        conn.message(
            session,
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
        conn.trickle(session, handle, peer.candidate()).await?;
        subscribe = Some((
            handle,
            peer.spawn(
                Role::Subscriber {
                    rx,
                    drop_every: ctx.plan.downlink_drop_every,
                    direct: ctx.plan.direct_rx,
                },
                ctx.clock,
                ctx.window.clone(),
            ),
        ));
    }

    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + KEEPALIVE_EVERY,
        KEEPALIVE_EVERY,
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result: anyhow::Result<()> = loop {
        while let Some(ev) = conn.events.pop_front() {
            handle_event(&ev, status, &publish, &subscribe);
        }
        if *stop.borrow() {
            break Ok(());
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = keepalive.tick() => {
                if let Err(e) = conn.send(json!({"janus": "keepalive", "session_id": session})).await {
                    break Err(e);
                }
            }
            _ = tick.tick() => {
                if let Some((_, p)) = &publish {
                    status.publish_connected.store(p.current() == PeerState::Connected, Ordering::Relaxed);
                }
                if let Some((_, s)) = &subscribe {
                    status.subscribe_connected.store(s.current() == PeerState::Connected, Ordering::Relaxed);
                }
            }
            msg = conn.recv() => match msg {
                Ok(ev) => handle_event(&ev, status, &publish, &subscribe),
                Err(e) => break Err(e),
            }
        }
    };
    let _ = conn
        .send(json!({"janus": "destroy", "session_id": session}))
        .await;
    for (_, h) in publish.into_iter().chain(subscribe) {
        h.close().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.ws.close(None)).await;
    result
}

fn handle_event(
    ev: &Value,
    status: &crate::scenario::Status,
    publish: &Option<(u64, PeerHandle)>,
    subscribe: &Option<(u64, PeerHandle)>,
) {
    let sender = ev["sender"].as_u64();
    let target = [publish, subscribe]
        .into_iter()
        .flatten()
        .find(|(h, _)| Some(*h) == sender)
        .map(|(_, p)| p);
    match ev["janus"].as_str() {
        Some("trickle") => {
            if let (Some(p), Some(c)) = (target, ev["candidate"]["candidate"].as_str()) {
                p.send(PeerCmd::Candidate(c.to_owned()));
            }
        }
        Some("hangup") => status.error(format!("janus hangup: {}", ev["reason"])),
        Some("slowlink") => status.error(format!("janus slowlink: {ev}")),
        Some("detached") => status.error("janus detached a handle".into()),
        _ => {}
    }
}
