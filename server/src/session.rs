//! One WebSocket signaling session: framing, size limit, JSON parsing, the join
//! handshake (protocol version and token), then relaying between the socket and the room.
//!
//! Bad input is answered with an `error` message carrying a stable code; the socket stays
//! open unless the failure is at join time (bad token, wrong protocol, room full), where
//! there is nothing useful left to do with the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use wardlink_signaling::protocol::{
    ClientMessage, ServerMessage, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use wardlink_signaling::room::validate_display_name;
use wardlink_signaling::ErrorCode;

use crate::rooms::{Membership, Outbound, SESSION_QUEUE};

/// A socket that sends nothing (clients ping every 20 s) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses one text frame into a client message, or the error to answer with.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, (ErrorCode, String)> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err((
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::MalformedJson, format!("not valid JSON: {e}")))?;
    serde_json::from_value(value)
        .map_err(|e| (ErrorCode::UnknownType, format!("not a known message: {e}")))
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

/// Runs one `/ws` connection to completion. `http.rs` upgrades the socket (with a generous
/// frame limit: this function enforces `MAX_MESSAGE_BYTES` itself, answering with an error
/// instead of closing) and calls this.
pub async fn handle_socket(
    state: Arc<crate::server::AppState>,
    socket: WebSocket,
    peer: SocketAddr,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(SESSION_QUEUE);

    // Writer: everything the room or this session wants to say goes through one queue.
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outbound::Message(msg) => {
                    let Ok(text) = serde_json::to_string(&msg) else {
                        continue;
                    };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Outbound::Close => break,
            }
        }
        let _ = sink.close().await;
    });

    let mut membership: Option<Membership> = None;
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(_))) | Ok(None) => break,
            Err(_) => {
                let _ = tx.try_send(error(ErrorCode::OutOfOrder, "idle timeout", true));
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
        let message = match parse_client_message(text.as_str()) {
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
                },
            ) => {
                if protocol != PROTOCOL_VERSION {
                    let _ = tx.try_send(error(
                        ErrorCode::UnsupportedProtocol,
                        format!("this server speaks protocol {PROTOCOL_VERSION}"),
                        true,
                    ));
                    break;
                }
                let claims = match state.keys.verifier.verify(&token, unix_now()) {
                    Ok(c) => c,
                    Err(e) => {
                        // The token itself is never logged.
                        tracing::warn!(%peer, code = %e.code(), "join refused: {e}");
                        let _ = tx.try_send(error(e.code(), e.to_string(), true));
                        break;
                    }
                };
                let name = display_name.unwrap_or_else(|| claims.name.clone());
                let name = match validate_display_name(&name) {
                    Ok(n) => n,
                    Err(msg) => {
                        let _ = tx.try_send(error(ErrorCode::InvalidField, msg, false));
                        continue;
                    }
                };
                membership = Some(state.rooms.join(claims, name, tx.clone()));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_bad_input() {
        assert_eq!(
            parse_client_message("{not json").unwrap_err().0,
            ErrorCode::MalformedJson
        );
        assert_eq!(
            parse_client_message(r#"{"type":"teleport"}"#)
                .unwrap_err()
                .0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse_client_message(r#"{"type":"publish_offer"}"#)
                .unwrap_err()
                .0,
            ErrorCode::UnknownType
        );
        let big = format!(
            r#"{{"type":"publish_offer","sdp":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(
            parse_client_message(&big).unwrap_err().0,
            ErrorCode::MessageTooLarge
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping
        );
    }
}
