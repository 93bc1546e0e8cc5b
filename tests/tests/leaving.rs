//! A participant who leaves gets a clean close even when it is slow. On a busy tablet, or a
//! load generator on a saturated machine, the client may not get to its socket for seconds
//! after `leave`, and may still send something that was already on its way. If the server
//! dropped the TCP socket before the client's own close frame, those late bytes draw a
//! reset, and a client that had a write pending loses the rest of the conversation
//! (the load generator saw this as `bye` lost after `leave`).

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;
use wardlink_signaling::protocol::{ClientMessage, ServerMessage};
use wardlink_signaling::{Role, PROTOCOL_VERSION};
use wardlink_tests::harness::{token_for, TestServer};
use wardlink_tests::signal_client::random_device;

const WAIT: Duration = Duration::from_secs(5);

/// How long the client stays away after `leave`: longer than the 2 s the server used to
/// wait for a closing client, well inside `wardlink::session::CLOSE_WAIT`.
const BUSY: Duration = Duration::from_secs(4);

fn text(msg: &ClientMessage) -> anyhow::Result<Message> {
    Ok(Message::Text(serde_json::to_string(msg)?.into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_its_bye_and_a_clean_close() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let links = server.create_room("退院前カンファレンス leaving")?;
    let connector = Connector::Rustls(server.tls.client_config()?);
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            &server.ws_url,
            None,
            false,
            Some(connector),
        ),
    )
    .await
    .context("timed out connecting")?
    .context("connecting")?;
    ws.send(text(&ClientMessage::Join {
        protocol: PROTOCOL_VERSION,
        token: token_for(&links, Role::Host)?,
        display_name: None,
        device: Some(random_device()),
    })?)
    .await?;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no joined")?
            .context("closed before joined")??;
        if let Message::Text(t) = frame {
            if matches!(
                serde_json::from_str(t.as_str())?,
                ServerMessage::Joined { .. }
            ) {
                break;
            }
        }
    }
    ws.send(text(&ClientMessage::Leave)?).await?;
    tokio::time::sleep(BUSY).await;
    // Already on its way when the client went busy (an answer, a ping).
    ws.send(text(&ClientMessage::Ping)?)
        .await
        .context("the socket was gone when a late message was sent")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bye = None;
    let mut close_frame = false;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("the close did not finish within the wait")?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                if let Ok(ServerMessage::Bye { reason }) = serde_json::from_str(t.as_str()) {
                    bye = Some(reason);
                }
            }
            Some(Ok(Message::Close(_))) => close_frame = true,
            Some(Ok(_)) => {}
            // Our close frame answered the server's; the server then ends the connection,
            // without TLS's own close_notify (axum hands the TLS stream to tungstenite, which
            // never shuts it down), which rustls reports as an unexpected EOF. Either way the
            // connection ended on the server's terms, after the close handshake.
            None => break,
            Some(Err(e)) if close_frame && e.to_string().contains("close_notify") => break,
            Some(Err(e)) => bail!(
                "the connection failed during the close (bye {bye:?}, server's close frame \
                 {close_frame}): {e}"
            ),
        }
    }
    ensure!(
        bye.as_deref() == Some("left"),
        "bye {bye:?}, expected \"left\""
    );
    ensure!(
        close_frame,
        "the server ended the connection without a close frame"
    );
    Ok(())
}
