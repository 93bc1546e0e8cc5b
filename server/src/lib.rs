//! The wardlink server library: configuration, TLS, HTTP/WebSocket shell, room registry and
//! the SFU media plane. `main.rs` is a thin CLI over this.

pub mod accounts;
pub mod audit;
pub mod conferences;
pub mod config;
pub mod http;
pub mod keys;
pub mod links;
pub mod media;
pub mod memory;
pub mod ratelimit;
pub mod rooms;
pub mod server;
pub mod session;
pub mod session_queue;
pub mod staff_api;
pub mod store;
pub mod tls;
pub mod totp;
