//! wardlink test clients and harness.
//!
//! - [`harness`]: start a real server in-process on loopback with a temp data dir;
//! - [`signal_client`]: a raw WSS signaling client (well-behaved or not);
//! - [`rtc_client`]: a full WebRTC participant on the async `webrtc` crate;
//! - [`synthetic`]: self-describing media payloads, checked byte for byte on arrival;
//! - [`tokens`]: join-token surgery (forged, tampered, expired) for negative tests;
//! - [`checks`]: payload integrity, routing and delivery-ratio checks;
//! - [`nat`]: a NAT on loopback whose mappings can move (NAT rebinding) or go dark;
//! - [`tls`]: trust pinned to the server's self-signed certificate;
//! - [`probe`]: raw HTTPS requests, TLS-version handshakes and `openssl s_client`.

#![warn(missing_docs)]

pub mod checks;
pub mod harness;
pub mod nat;
pub mod probe;
pub mod rtc_client;
pub mod signal_client;
pub mod synthetic;
pub mod tls;
pub mod tokens;
