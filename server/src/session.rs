//! One WebSocket signaling session: framing, size and rate limits, JSON parsing, the join
//! handshake (protocol version, token, invitation and device checks), then relaying
//! between the socket and the room.
//!
//! Bad input is answered with an `error` message carrying a stable code; the socket stays
//! open unless the failure is at join time (bad token, wrong protocol, room full), where
//! there is nothing useful left to do with the connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use wardlink_signaling::protocol::{ClientMessage, ServerMessage, PROTOCOL_VERSION};
use wardlink_signaling::room::validate_display_name;
use wardlink_signaling::token::JoinClaims;
use wardlink_signaling::ErrorCode;

use crate::audit::AuditEvent;
use crate::rooms::{JoinRequest, Membership};
use crate::server::AppState;
use crate::session_queue::{self, Frame, Outbound, SessionTx, SESSION_QUEUE};

/// Parses one text frame into a client message, or the error to answer with.
pub fn parse_client_message(
    text: &str,
    max_bytes: usize,
) -> Result<ClientMessage, (ErrorCode, String)> {
    if text.len() > max_bytes {
        return Err((
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {max_bytes} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::MalformedJson, format!("not valid JSON: {e}")))?;
    serde_json::from_value(value)
        .map_err(|e| (ErrorCode::UnknownType, format!("not a known message: {e}")))
}

/// A token bucket limiting one connection's message rate.
#[derive(Debug)]
pub struct MessageBudget {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    /// Messages refused since the last accepted one; a client that keeps going is cut off.
    refused: u32,
}

/// How long a closing session waits for the client's own close frame before it drops the
/// socket. Dropping it earlier makes the client's next bytes (an answer or a ping already on
/// its way) draw a reset, and a client that had not read its `bye` yet loses it. A browser
/// answers in milliseconds; a client on a saturated machine may take seconds. At 1 → 450
/// with 2 s, 423 of 451 leaving sessions ran out of time in one run and 10 clients lost
/// their `bye`.
pub const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// Messages refused in a row after which the socket is closed.
pub const MAX_REFUSED_IN_A_ROW: u32 = 200;

impl MessageBudget {
    /// `rate` messages per second sustained, bursts of up to `burst`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        MessageBudget {
            tokens: f64::from(burst.max(1)),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            last: now,
            refused: 0,
        }
    }

    /// Takes one token; `false` if the connection is over its rate.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Whether the client ignored so many refusals that it should be disconnected.
    pub fn exhausted(&self) -> bool {
        self.refused >= MAX_REFUSED_IN_A_ROW
    }

    /// Refusals in a row so far.
    pub fn refused(&self) -> u32 {
        self.refused
    }
}

/// Refusals answered in a row before the session stops answering each one (a flood must
/// not fill the queue with replies and crowd out the final error).
const ANSWERED_REFUSALS: u32 = 5;

/// Queues a fatal error, waiting briefly for room: unlike ordinary replies it must not be
/// lost to a queue a flood has filled.
async fn send_fatal(tx: &SessionTx, code: ErrorCode, message: impl Into<String>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(error(code, message, true))).await;
}

fn error(code: ErrorCode, message: impl Into<String>, fatal: bool) -> Outbound {
    Outbound::Message(ServerMessage::Error {
        code,
        message: message.into(),
        fatal,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The join handshake after the protocol version check: token, invitation, device,
/// then the room. Returns the membership or the (fatal) error to send.
async fn join(
    state: &Arc<AppState>,
    peer: IpAddr,
    token: String,
    display_name: Option<String>,
    device: Option<String>,
    tx: &SessionTx,
) -> Result<Membership, (ErrorCode, String)> {
    let refuse = |code: ErrorCode, message: String, conference: Option<String>| {
        state.audit.record_queued(AuditEvent {
            actor: "anonymous".into(),
            action: "token_rejected",
            conference,
            peer: Some(peer),
            detail: serde_json::json!({ "code": code.as_str() }),
        });
        // The token itself is never logged.
        tracing::warn!(%peer, %code, "join refused: {message}");
        (code, message)
    };
    if state
        .join_limiter
        .try_acquire(peer, crate::store::now_ms())
        .is_err()
    {
        return Err(refuse(
            ErrorCode::RateLimited,
            "too many join attempts from this address; wait a minute".into(),
            None,
        ));
    }
    let claims: JoinClaims = state
        .keys
        .verifier
        .verify(&token, unix_now())
        .map_err(|e| refuse(e.code(), e.to_string(), None))?;
    let name = display_name.unwrap_or_else(|| claims.name.clone());
    let name =
        validate_display_name(&name).map_err(|m| (ErrorCode::InvalidField, m.to_string()))?;
    if let Some(d) = &device {
        if !(16..=128).contains(&d.len()) {
            return Err((
                ErrorCode::InvalidField,
                "device must be 16 to 128 characters".into(),
            ));
        }
    }
    let check = {
        let checked = claims.clone();
        state
            .store
            .call(move |conn| {
                Ok(crate::conferences::check_invitation(
                    conn,
                    &checked,
                    device.as_deref(),
                    crate::store::now_ms(),
                ))
            })
            .await
            .map_err(|e| {
                tracing::error!(%e, "invitation check failed");
                (
                    ErrorCode::Internal,
                    "the server could not check the invitation".to_string(),
                )
            })?
            .map_err(|e| refuse(e.code(), e.to_string(), Some(claims.room.clone())))?
    };
    if check.first_use || check.second_device {
        state.audit.record_queued(AuditEvent {
            actor: format!("invitation:{}", claims.jti),
            action: "invitation_used",
            conference: Some(claims.room.clone()),
            peer: Some(peer),
            detail: serde_json::json!({
                "role": claims.role.as_str(),
                "first_use": check.first_use,
                "second_device": check.second_device,
            }),
        });
    }
    let room = claims.room.clone();
    state
        .rooms
        .join(
            JoinRequest {
                claims,
                display_name: name,
                peer,
                // A link used from a second device goes through the waiting room again,
                // whatever the role.
                must_wait: check.second_device,
                second_device: check.second_device,
            },
            tx.clone(),
        )
        .map_err(|code| {
            let message = match code {
                ErrorCode::ConferenceEnded => "the conference has ended",
                ErrorCode::TooManyConferences => {
                    "the server is hosting as many conferences as it may"
                }
                _ => "the conference could not be joined",
            };
            refuse(code, message.to_string(), Some(room))
        })
}

/// Runs one `/ws` connection to completion. `http.rs` upgrades the socket (with a generous
/// frame limit: this function enforces the configured message size itself, answering with
/// an error instead of closing) and calls this.
pub async fn handle_socket(state: Arc<AppState>, socket: WebSocket, peer: SocketAddr) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = session_queue::channel(SESSION_QUEUE);
    let limits = state.config.limits.clone();
    let idle = Duration::from_secs(limits.ws_idle_secs.max(1));

    // Writer: everything the room or this session wants to say goes through one queue.
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.next().await {
            match frame {
                Frame::Text(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Frame::Close => break,
            }
        }
        let _ = sink.close().await;
    });

    let mut budget = MessageBudget::new(
        limits.ws_messages_per_second,
        limits.ws_message_burst,
        Instant::now(),
    );
    let mut membership: Option<Membership> = None;
    loop {
        let frame = match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => {
                send_fatal(
                    &tx,
                    ErrorCode::IdleTimeout,
                    "no message within the idle limit",
                )
                .await;
                break;
            }
        };
        let text = match frame {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let _ = tx.try_send(error(
                    ErrorCode::UnknownType,
                    "binary frames are not part of the protocol",
                    false,
                ));
                continue;
            }
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer.
            _ => continue,
        };
        if !budget.take(Instant::now()) {
            if budget.exhausted() {
                send_fatal(
                    &tx,
                    ErrorCode::RateLimited,
                    "too many messages; disconnecting",
                )
                .await;
                break;
            }
            if budget.refused() <= ANSWERED_REFUSALS {
                let _ = tx.try_send(error(
                    ErrorCode::RateLimited,
                    "too many messages; this one was dropped",
                    false,
                ));
            }
            continue;
        }
        let message = match parse_client_message(text.as_str(), limits.max_message_bytes) {
            Ok(m) => m,
            Err((code, message)) => {
                tracing::info!(%peer, %code, "bad message");
                let _ = tx.try_send(error(code, message, false));
                continue;
            }
        };
        match (&membership, message) {
            (
                None,
                ClientMessage::Join {
                    protocol,
                    token,
                    display_name,
                    device,
                },
            ) => {
                if protocol != PROTOCOL_VERSION {
                    send_fatal(
                        &tx,
                        ErrorCode::UnsupportedProtocol,
                        format!("this server speaks protocol {PROTOCOL_VERSION}"),
                    )
                    .await;
                    break;
                }
                match join(&state, peer.ip(), token, display_name, device, &tx).await {
                    Ok(m) => membership = Some(m),
                    // A bad display name can be corrected and sent again.
                    Err((ErrorCode::InvalidField, message)) => {
                        let _ = tx.try_send(error(ErrorCode::InvalidField, message, false));
                    }
                    Err((code, message)) => {
                        send_fatal(&tx, code, message).await;
                        break;
                    }
                }
            }
            (None, ClientMessage::Ping) => {
                let _ = tx.try_send(Outbound::Message(ServerMessage::Pong));
            }
            (None, _) => {
                let _ = tx.try_send(error(
                    ErrorCode::OutOfOrder,
                    "the first message must be join",
                    false,
                ));
            }
            (Some(m), message) => {
                let leaving = matches!(message, ClientMessage::Leave);
                m.send(message);
                if leaving {
                    // The room sends `bye` and closes the writer.
                    break;
                }
            }
        }
    }
    // Dropping the membership tells the room (a no-op after `leave`).
    drop(membership);
    drop(tx);
    // Let the writer flush the final error or `bye`, but never hang on a dead client.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    // Finish the close handshake: read until the client's close frame (or EOF). Dropping
    // the socket with the client's frames unread makes the kernel send a reset, and the
    // client can lose the `bye` it has not read yet (see `CLOSE_WAIT`).
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardlink_signaling::protocol::MAX_MESSAGE_BYTES;

    #[test]
    fn classifies_bad_input() {
        let parse = |t: &str| parse_client_message(t, MAX_MESSAGE_BYTES);
        assert_eq!(parse("{not json").unwrap_err().0, ErrorCode::MalformedJson);
        assert_eq!(
            parse(r#"{"type":"teleport"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse(r#"{"type":"publish_offer"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        let big = format!(
            r#"{{"type":"publish_offer","sdp":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().0, ErrorCode::MessageTooLarge);
        assert_eq!(parse(r#"{"type":"ping"}"#).unwrap(), ClientMessage::Ping);
    }

    #[test]
    fn budget_allows_bursts_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut b = MessageBudget::new(10, 20, t0);
        for _ in 0..20 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "burst exhausted");
        assert!(b.take(t0 + Duration::from_millis(100)), "refilled at 10/s");
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn budget_cuts_off_a_client_that_ignores_refusals() {
        let t0 = Instant::now();
        let mut b = MessageBudget::new(1, 1, t0);
        assert!(b.take(t0));
        for _ in 0..MAX_REFUSED_IN_A_ROW {
            assert!(!b.take(t0));
        }
        assert!(b.exhausted());
    }
}
