//! The C interface msock itself offers (beyond the interposed libc functions): what
//! `include/msock.h` declares, generated from this file by cbindgen (`preload/build.rs`).
//!
//! Besides two functions it carries msock's own socket options (paper §4.2): the option level
//! [`SOL_MSOCK`] and its option [`SO_CONCURRENT_SERVER`]. Their values are the ones the core
//! crate's control protocol uses (`msock::control`); a unit test keeps the two in step. On the
//! kernel stack (a program run without the preload) `setsockopt` at this level fails with
//! `ENOPROTOOPT`, so portable programs set the option, note a failure and carry on.

use libc::c_int;

/// Version of the msock C interface. 2: adds `SOL_MSOCK` and `SO_CONCURRENT_SERVER`.
pub const MSOCK_VERSION: u32 = 2;

/// Option level of msock's own socket options (`setsockopt(fd, SOL_MSOCK, ...)`); the value
/// is "MS" in ASCII, far from every level Linux defines. The kernel rejects it with
/// `ENOPROTOOPT`.
pub const SOL_MSOCK: c_int = 0x4d53;

/// Delayed caching for the concurrent (inetd-style) server model, paper §4.2. Level
/// `SOL_MSOCK`, value an `int`: set it to 1 on a listening socket.
/// A connection accepted through that listener is then only marked cacheable instead of being
/// cached into the accepting process: if the process forks before touching it, the fork
/// caches it straight into the child (one cache, no flush, instead of cache + flush + cache);
/// if the parent later touches it, the netserver recalls it from the child
/// (recall-on-access); the parent's `close` clears that.
///
/// ```c
/// int one = 1;
/// if (setsockopt(listen_fd, SOL_MSOCK, SO_CONCURRENT_SERVER, &one, sizeof one) < 0)
///     perror("SO_CONCURRENT_SERVER (not running under msock?)");
/// ```
pub const SO_CONCURRENT_SERVER: c_int = 1;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msock_options_match_the_core_crate() {
        assert_eq!(SOL_MSOCK, core_stack::control::SOL_MSOCK);
        assert_eq!(
            SO_CONCURRENT_SERVER,
            core_stack::control::SO_CONCURRENT_SERVER
        );
        // The documented wire values, so a change on both sides is still caught.
        assert_eq!((SOL_MSOCK, SO_CONCURRENT_SERVER), (19795, 1));
    }

    #[test]
    fn option_level_is_not_a_linux_level() {
        for level in [
            libc::SOL_SOCKET,
            libc::IPPROTO_IP,
            libc::IPPROTO_TCP,
            libc::IPPROTO_UDP,
            libc::IPPROTO_IPV6,
            libc::SOL_PACKET,
            libc::SOL_TLS,
        ] {
            assert_ne!(SOL_MSOCK, level);
        }
    }

    #[test]
    fn version_function_reports_the_constant() {
        // SAFETY: msock_version has no preconditions.
        assert_eq!(unsafe { msock_version() }, MSOCK_VERSION);
        assert_eq!(MSOCK_VERSION, 2);
    }
}
