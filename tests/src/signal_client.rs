//! A WSS signaling client that speaks the wardlink wire protocol — or deliberately does not.
//!
//! Reading and writing run on their own tasks, so a test can hold a [`SignalClient`] idle
//! while the server keeps talking (roster updates, subscribe offers) without the socket
//! stalling. Everything the server sends lands in an inbox; waits skip over messages the
//! caller is not interested in but keep them in [`SignalClient::skipped`] for diagnostics.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;
use wardlink_signaling::protocol::{ClientMessage, RosterEntry, ServerMessage};
use wardlink_signaling::{ErrorCode, Role, PROTOCOL_VERSION};

use crate::tls::TlsTrust;

/// Default bound on a single signaling wait.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// One thing that arrived from the server.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A text frame that parsed as a [`ServerMessage`].
    Message(ServerMessage),
    /// A text frame that did not parse as any known [`ServerMessage`] (kept verbatim).
    Unparseable(String),
    /// A binary frame; the protocol never uses them.
    Binary(Vec<u8>),
    /// The server closed the socket (close code and reason, if a close frame was sent).
    Closed(Option<(u16, String)>),
    /// The transport failed.
    TransportError(String),
}

/// The server's `joined` reply, unpacked.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Our participant id.
    pub participant_id: String,
    /// Conference id.
    pub room_id: String,
    /// Conference title.
    pub room_title: String,
    /// Our role.
    pub role: Role,
    /// Our display name.
    pub display_name: String,
    /// Roster at join time.
    pub roster: Vec<RosterEntry>,
}

/// Where a join landed.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    /// In the conference.
    Joined(Joined),
    /// In the waiting room until someone admits us.
    Waiting(WaitingInfo),
}

/// The server's `waiting` reply, unpacked.
#[derive(Debug, Clone)]
pub struct WaitingInfo {
    /// Our participant id.
    pub participant_id: String,
    /// Conference title.
    pub room_title: String,
    /// Our display name.
    pub display_name: String,
    /// Our role.
    pub role: Role,
}

/// Unpacks a `joined` message (None for any other message).
pub fn joined_from(msg: &ServerMessage) -> Option<Joined> {
    match msg {
        ServerMessage::Joined {
            participant_id,
            room_id,
            room_title,
            role,
            display_name,
            roster,
            ..
        } => Some(Joined {
            participant_id: participant_id.clone(),
            room_id: room_id.clone(),
            room_title: room_title.clone(),
            role: *role,
            display_name: display_name.clone(),
            roster: roster.clone(),
        }),
        _ => None,
    }
}

/// A fresh random device secret (what a browser keeps in local storage).
pub fn random_device() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Cloneable sending half of a signaling connection.
#[derive(Clone)]
pub struct SignalSender {
    out: mpsc::UnboundedSender<Message>,
}

impl SignalSender {
    /// Sends a protocol message as a JSON text frame.
    pub fn send(&self, msg: &ClientMessage) -> anyhow::Result<()> {
        let text = serde_json::to_string(msg).context("serialising client message")?;
        self.send_text(text)
    }

    /// Sends an arbitrary text frame (used to send malformed input on purpose).
    pub fn send_text(&self, text: String) -> anyhow::Result<()> {
        self.out
            .send(Message::text(text))
            .map_err(|_| anyhow!("signaling socket writer has stopped"))
    }

    /// Sends an arbitrary binary frame.
    pub fn send_binary(&self, data: Vec<u8>) -> anyhow::Result<()> {
        self.out
            .send(Message::binary(data))
            .map_err(|_| anyhow!("signaling socket writer has stopped"))
    }
}

/// A connected signaling WebSocket.
pub struct SignalClient {
    sender: SignalSender,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    /// Messages passed over by [`SignalClient::wait_for`], oldest first.
    pub skipped: Vec<Inbound>,
    closed: Option<Option<(u16, String)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SignalClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SignalClient {
    /// Opens `wss://…/ws` with the given trust.
    pub async fn connect(ws_url: &str, tls: &TlsTrust) -> anyhow::Result<Self> {
        let connector = Connector::Rustls(tls.client_config()?);
        // The client must be able to send oversized frames on purpose, so its own limits stay
        // far above the server's 64 KiB.
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let (stream, _response) = tokio::time::timeout(
            DEFAULT_WAIT,
            tokio_tungstenite::connect_async_tls_with_config(
                ws_url,
                Some(config),
                false,
                Some(connector),
            ),
        )
        .await
        .with_context(|| format!("timed out connecting to {ws_url}"))?
        .with_context(|| format!("connecting to {ws_url}"))?;

        let (mut sink, mut source) = stream.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Inbound>();

        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader = tokio::spawn(async move {
            loop {
                let item = match source.next().await {
                    None => Inbound::Closed(None),
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<ServerMessage>(text.as_str()) {
                            Ok(msg) => Inbound::Message(msg),
                            Err(_) => Inbound::Unparseable(text.as_str().to_owned()),
                        }
                    }
                    Some(Ok(Message::Binary(data))) => Inbound::Binary(data.to_vec()),
                    Some(Ok(Message::Close(frame))) => Inbound::Closed(
                        frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                    ),
                    Some(Ok(_)) => continue, // ping/pong frames are handled by tungstenite
                    Some(Err(err)) => Inbound::TransportError(err.to_string()),
                };
                let end = matches!(item, Inbound::Closed(_) | Inbound::TransportError(_));
                if in_tx.send(item).is_err() || end {
                    break;
                }
            }
        });

        Ok(SignalClient {
            sender: SignalSender { out: out_tx },
            inbox: in_rx,
            skipped: Vec::new(),
            closed: None,
            tasks: vec![writer, reader],
        })
    }

    /// A cloneable handle for sending on this connection.
    pub fn sender(&self) -> SignalSender {
        self.sender.clone()
    }

    /// Sends a protocol message.
    pub fn send(&self, msg: &ClientMessage) -> anyhow::Result<()> {
        self.sender.send(msg)
    }

    /// Sends an arbitrary text frame.
    pub fn send_text(&self, text: impl Into<String>) -> anyhow::Result<()> {
        self.sender.send_text(text.into())
    }

    /// Whether the server has closed the connection (as far as we have read).
    pub fn closed(&self) -> Option<&Option<(u16, String)>> {
        self.closed.as_ref()
    }

    /// Next inbound item, bounded by `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Inbound> {
        if let Some(close) = &self.closed {
            return Ok(Inbound::Closed(close.clone()));
        }
        let item = tokio::time::timeout(timeout, self.inbox.recv())
            .await
            .map_err(|_| anyhow!("no message from the server within {timeout:?}"))?
            .unwrap_or(Inbound::Closed(None));
        if let Inbound::Closed(close) = &item {
            self.closed = Some(close.clone());
        }
        if let Inbound::TransportError(_) = &item {
            self.closed = Some(None);
        }
        Ok(item)
    }

    /// Waits until `pick` accepts a server message, skipping (and recording) everything else.
    /// Fails on timeout or if the connection closes first; `what` names the wait in errors.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let item = self.recv(left).await.with_context(|| {
                format!(
                    "waiting for {what}; skipped so far: {}",
                    summarize(&self.skipped)
                )
            })?;
            match &item {
                Inbound::Message(msg) => {
                    if let Some(found) = pick(msg) {
                        return Ok(found);
                    }
                }
                Inbound::Closed(close) => bail!(
                    "connection closed ({close:?}) while waiting for {what}; skipped: {}",
                    summarize(&self.skipped)
                ),
                Inbound::TransportError(err) => {
                    bail!("transport error while waiting for {what}: {err}")
                }
                _ => {}
            }
            self.skipped.push(item);
        }
    }

    /// Waits for the next `error` message: (code, message, fatal).
    pub async fn expect_error(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(ErrorCode, String, bool)> {
        self.wait_for(timeout, "an error message", |msg| match msg {
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => Some((*code, message.clone(), *fatal)),
            _ => None,
        })
        .await
    }

    /// Sends `ping` and waits for `pong`: proves the connection is open and being served.
    pub async fn ping(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.send(&ClientMessage::Ping)?;
        self.wait_for(timeout, "pong", |msg| {
            matches!(msg, ServerMessage::Pong).then_some(())
        })
        .await
    }

    /// Waits until the server closes the connection (or fails on timeout).
    pub async fn wait_closed(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<(u16, String)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Inbound::Closed(close) => return Ok(close),
                Inbound::TransportError(_) => return Ok(None),
                other => self.skipped.push(other),
            }
        }
    }

    /// Sends `join` with `token` and waits for `joined`. A server `error` fails the join
    /// with its code in the message; so does being put in the waiting room (use
    /// [`SignalClient::join_with`] for roles that wait).
    pub async fn join(&mut self, token: &str, timeout: Duration) -> anyhow::Result<Joined> {
        match self
            .join_with(token, None, Some(random_device()), timeout)
            .await?
        {
            JoinOutcome::Joined(joined) => Ok(joined),
            JoinOutcome::Waiting(w) => bail!(
                "put in the waiting room as {} ({:?}) instead of joining",
                w.participant_id,
                w.role
            ),
        }
    }

    /// Sends `join` and waits for `joined` or `waiting`. `device` is the per-browser secret
    /// an invitation gets bound to.
    pub async fn join_with(
        &mut self,
        token: &str,
        display_name: Option<String>,
        device: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<JoinOutcome> {
        self.send(&ClientMessage::Join {
            protocol: PROTOCOL_VERSION,
            token: token.to_owned(),
            display_name,
            device,
        })?;
        self.wait_for(timeout, "joined or waiting", |msg| match msg {
            ServerMessage::Joined { .. } => joined_from(msg).map(|j| Ok(JoinOutcome::Joined(j))),
            ServerMessage::Waiting {
                participant_id,
                room_title,
                display_name,
                role,
            } => Some(Ok(JoinOutcome::Waiting(WaitingInfo {
                participant_id: participant_id.clone(),
                room_title: room_title.clone(),
                display_name: display_name.clone(),
                role: *role,
            }))),
            ServerMessage::Error { code, message, .. } => {
                Some(Err(anyhow!("join refused: {code}: {message}")))
            }
            _ => None,
        })
        .await?
    }

    /// Splits into the sending handle and the raw inbox (for clients that run their own loop).
    pub fn into_parts(
        mut self,
    ) -> (
        SignalSender,
        mpsc::UnboundedReceiver<Inbound>,
        Vec<JoinHandle<()>>,
    ) {
        let tasks = std::mem::take(&mut self.tasks);
        let sender = self.sender.clone();
        let (_dummy_tx, dummy_rx) = mpsc::unbounded_channel();
        let inbox = std::mem::replace(&mut self.inbox, dummy_rx);
        (sender, inbox, tasks)
    }
}

/// A short human-readable list of inbound items, for failure messages.
pub fn summarize(items: &[Inbound]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|item| match item {
            Inbound::Message(msg) => match serde_json::to_value(msg) {
                Ok(v) => {
                    let ty = v.get("type").and_then(|t| t.as_str()).unwrap_or("?");
                    match msg {
                        ServerMessage::Error { code, message, .. } => {
                            format!("error({code}: {message})")
                        }
                        _ => ty.to_owned(),
                    }
                }
                Err(_) => "?".to_owned(),
            },
            Inbound::Unparseable(text) => {
                format!(
                    "unparseable({})",
                    text.chars().take(120).collect::<String>()
                )
            }
            Inbound::Binary(data) => format!("binary({} bytes)", data.len()),
            Inbound::Closed(close) => format!("closed({close:?})"),
            Inbound::TransportError(err) => format!("transport_error({err})"),
        })
        .collect();
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}
