//! wardlink signaling: the wire protocol, join tokens, roles and the room state machine.
//!
//! Pure logic: no sockets, no clocks (time comes in as an argument), no async.

pub mod error;
pub mod permissions;
pub mod protocol;
pub mod role;
pub mod room;
pub mod token;

pub use error::ErrorCode;
pub use protocol::{ClientMessage, MediaKind, PcKind, ServerMessage, PROTOCOL_VERSION};
pub use role::Role;
