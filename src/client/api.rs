//! The operations behind libmsock's exports, in safe types. The C edge (`preload/`) converts
//! arguments, calls one of these, and maps the [`Outcome`]: done, bypass (call libc) or errno.
//!
//! Every function taking a [`Handle`] is for a descriptor the fd table knows ([`lookup`]);
//! descriptors it does not know never get here.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::Lazy;

pub use super::Outcome;
use super::runtime::{self, table};
use super::sys;
use super::udp::UdpSocket;
pub use super::udp::{OptValue, Received, SockAddrIn};

/// A socket the fd table knows.
pub type Handle = Arc<UdpSocket>;

/// Whether any descriptor is msock's (one atomic load).
pub fn active() -> bool {
    table().active()
}

/// The socket behind `fd`, if msock tracks it.
pub fn lookup(fd: RawFd) -> Option<Handle> {
    table().get(fd)
}

/// `msock_is_msock_fd`: served by msock (cached) right now.
pub fn is_msock_fd(fd: RawFd) -> bool {
    lookup(fd).is_some_and(|h| h.is_cached())
}

/// Drops every descriptor of a socket that was just handed to the kernel.
fn forget_if_kernel(h: &Handle) {
    if h.is_kernel() {
        for fd in h.fds() {
            table().remove(fd);
        }
    }
}

fn after<T>(h: &Handle, outcome: Outcome<T>) -> Outcome<T> {
    if matches!(outcome, Outcome::Bypass) {
        forget_if_kernel(h);
    }
    outcome
}

/// `socket()`: AF_INET/AF_INET6 datagram sockets (protocol 0 or UDP) are created in the kernel
/// and registered with the netserver; everything else passes through.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Outcome<RawFd> {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if !(domain == libc::AF_INET || domain == libc::AF_INET6)
        || base != libc::SOCK_DGRAM
        || !(protocol == 0 || protocol == libc::IPPROTO_UDP)
    {
        return Outcome::Bypass;
    }
    let session = match runtime::session() {
        Ok(s) => s,
        Err(_) if runtime::fallback_to_kernel() => return Outcome::Bypass,
        Err(e) => return Outcome::Error(e),
    };
    let id = match UdpSocket::register(session, domain) {
        Ok(id) => id,
        Err(_) if runtime::fallback_to_kernel() => return Outcome::Bypass,
        Err(e) => return Outcome::Error(e),
    };
    let fd = match sys::socket(domain, ty, protocol) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = session.request(&crate::control::Request::Close { id }, &[]);
            return Outcome::Error(e.raw_os_error().unwrap_or(libc::EMFILE));
        }
    };
    let sock = UdpSocket::new(session, id, domain, fd);
    if let Some(stale) = table().insert(fd, sock) {
        // The number was closed behind our back (close_range, raw syscall): forget it.
        if stale.remove_fd(fd) {
            stale.release();
        }
    }
    crate::msock_debug!("socket({domain}, {ty}) = fd {fd}, endpoint {id}");
    Outcome::Done(fd)
}

pub fn bind(h: &Handle, fd: RawFd, addr: &SockAddrIn) -> Outcome<()> {
    let o = after(h, h.bind(addr));
    crate::msock_debug!("bind(fd {fd}): {}", describe(&o));
    o
}

pub fn connect(h: &Handle, fd: RawFd, addr: &SockAddrIn) -> Outcome<()> {
    let o = after(h, h.connect(addr));
    crate::msock_debug!("connect(fd {fd}): {}", describe(&o));
    o
}

pub fn send(
    h: &Handle,
    _fd: RawFd,
    bufs: &[&[u8]],
    flags: i32,
    dst: Option<&SockAddrIn>,
) -> Outcome<usize> {
    after(h, h.send(bufs, flags, dst))
}

pub fn recv(h: &Handle, _fd: RawFd, bufs: &mut [&mut [u8]], flags: i32) -> Outcome<Received> {
    after(h, h.recv(bufs, flags))
}

pub fn getsockname(h: &Handle, _fd: RawFd) -> Outcome<SocketAddr> {
    h.getsockname()
}

pub fn getpeername(h: &Handle, _fd: RawFd) -> Outcome<SocketAddr> {
    h.getpeername()
}

pub fn getsockopt(h: &Handle, _fd: RawFd, level: i32, name: i32) -> Outcome<OptValue> {
    h.getsockopt(level, name)
}

pub fn setsockopt(h: &Handle, fd: RawFd, level: i32, name: i32, value: &[u8]) -> Outcome<()> {
    h.setsockopt(fd, level, name, value)
}

/// `close()`: forgets `fd`, releases the socket if it was its last descriptor, then closes the
/// descriptor with the real `close`.
pub fn close(h: &Handle, fd: RawFd) -> Outcome<i32> {
    table().remove(fd);
    if h.remove_fd(fd) {
        h.release();
        crate::msock_debug!("close(fd {fd}): endpoint {} released", h.id);
    }
    match sys::close(fd) {
        Ok(()) => Outcome::Done(0),
        Err(e) => Outcome::Error(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn register_dup(h: &Handle, new: RawFd) {
    if let Some(old) = table().insert(new, Arc::clone(h))
        && !Arc::ptr_eq(&old, h)
        && old.remove_fd(new)
    {
        old.release();
    }
    h.add_fd(new);
}

/// `dup()`: the new descriptor is the same socket.
pub fn dup(h: &Handle, fd: RawFd) -> Outcome<RawFd> {
    match sys::dup(fd) {
        Ok(new) => {
            register_dup(h, new);
            Outcome::Done(new)
        }
        Err(e) => Outcome::Error(e.raw_os_error().unwrap_or(libc::EMFILE)),
    }
}

/// `dup2` (`flags` None) / `dup3`: `new` stops referring to whatever it was (released if that
/// was a socket's last descriptor) and refers to `old`'s socket if `old` is msock's.
pub fn dup3(old_h: Option<&Handle>, old: RawFd, new: RawFd, flags: Option<i32>) -> Outcome<RawFd> {
    if old == new {
        return match flags {
            Some(_) => Outcome::Error(libc::EINVAL),
            None => Outcome::Bypass,
        };
    }
    let r = match flags {
        Some(f) => sys::dup3(old, new, f),
        None => sys::dup2(old, new),
    };
    if let Err(e) = r {
        return Outcome::Error(e.raw_os_error().unwrap_or(libc::EBADF));
    }
    if let Some(prev) = table().remove(new)
        && prev.remove_fd(new)
    {
        prev.release();
    }
    if let Some(h) = old_h {
        register_dup(h, new);
    }
    Outcome::Done(new)
}

/// `fcntl()`: O_NONBLOCK of cached sockets is tracked by msock; F_DUPFD* keep the table.
pub fn fcntl(h: &Handle, fd: RawFd, cmd: i32, arg: u64) -> Outcome<i32> {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let Ok(min) = RawFd::try_from(arg) else {
                return Outcome::Error(libc::EINVAL);
            };
            match sys::dupfd(fd, min, cmd == libc::F_DUPFD_CLOEXEC) {
                Ok(new) => {
                    register_dup(h, new);
                    Outcome::Done(new)
                }
                Err(e) => Outcome::Error(e.raw_os_error().unwrap_or(libc::EMFILE)),
            }
        }
        libc::F_GETFL => h.status_flags(fd),
        libc::F_SETFL => {
            let on = (arg as i32) & libc::O_NONBLOCK != 0;
            h.set_nonblocking(fd, on).map(|()| 0)
        }
        _ => Outcome::Bypass,
    }
}

pub fn fionread(h: &Handle, _fd: RawFd) -> Outcome<i32> {
    h.fionread()
}

pub fn outq(h: &Handle, _fd: RawFd) -> Outcome<i32> {
    h.outq()
}

pub fn fionbio(h: &Handle, fd: RawFd, on: bool) -> Outcome<()> {
    h.set_nonblocking(fd, on)
}

/// `MSOCK_BUSY_POLL=<microseconds>` (read once); `None` when unset or 0.
pub fn busy_poll_budget() -> Option<Duration> {
    static BUDGET: Lazy<Option<Duration>> = Lazy::new(|| {
        std::env::var("MSOCK_BUSY_POLL")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map(Duration::from_micros)
    });
    *BUDGET
}

/// Processes a socket's channel inline (busy polling).
pub fn drive(h: &Handle) {
    h.drive();
}

fn describe<T>(o: &Outcome<T>) -> &'static str {
    match o {
        Outcome::Done(_) => "msock",
        Outcome::Bypass => "kernel",
        Outcome::Error(_) => "error",
    }
}
