//! Integer socket options the generator sets on its UDP sockets.

use std::os::fd::AsRawFd;

/// Sets the `SOL_SOCKET` option `name` to `value` on `socket`. Returns whether the kernel
/// accepted it.
pub fn set_int(socket: &impl AsRawFd, name: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: setsockopt on a valid, owned fd with a correctly sized int option.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}
