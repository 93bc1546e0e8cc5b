//! Any bytes as a signaling frame: parsed as the session does, then (if they parse) fed to
//! a room with a host and a waiting guest. Must never panic.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wardlink_signaling::protocol::MAX_MESSAGE_BYTES;
use wardlink_signaling::room::{Input, Room, RoomLimits};
use wardlink_signaling::Role;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(message) = wardlink::session::parse_client_message(text, MAX_MESSAGE_BYTES) else { return };
    let mut room = Room::new("r", "t", RoomLimits::default());
    let now = Instant::now();
    for (id, role) in [("host", Role::Host), ("guest", Role::Family)] {
        room.handle(now, Input::Join {
            participant: id.into(),
            display_name: id.into(),
            role,
            invitation: "i".into(),
            must_wait: false,
            second_device: false,
        });
    }
    for id in ["host", "guest", "stranger"] {
        room.handle(now, Input::Client { participant: id.into(), message: message.clone() });
    }
});
