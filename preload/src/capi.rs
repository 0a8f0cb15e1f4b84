//! The C interface msock itself offers (beyond the interposed libc functions): what
//! `include/msock.h` declares. cbindgen reads this file only.

use libc::c_int;

/// Version of the msock C interface.
pub const MSOCK_VERSION: u32 = 1;

/// 1 if `fd` is a socket served by msock (bound through the netserver and cached in this
/// process), 0 otherwise (including kernel sockets and descriptors msock does not know).
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msock_is_msock_fd(fd: c_int) -> c_int {
    crate::edge::is_msock_fd(fd)
}

/// The interface version this library implements (`MSOCK_VERSION` of its build).
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn msock_version() -> u32 {
    MSOCK_VERSION
}
