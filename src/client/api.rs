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
use super::relay;
use super::runtime::{self, Socket, table};
use super::sys;
use super::tcp::{OfflineSocket, TcpSocket};
use super::udp::UdpSocket;
pub use super::udp::{OptValue, Received, SockAddrIn};

/// A socket the fd table knows.
pub type Handle = Socket;

/// Whether any descriptor is msock's (one atomic load).
pub fn active() -> bool {
    table().active()
}

/// Whether this process has a session with the netserver (so msock holds descriptors of
/// its own, `client::fdguard`).
pub fn has_session() -> bool {
    runtime::has_session()
}

/// Descriptor numbers in `first..=last` that are msock sockets (`close_range`).
pub fn fds_in(first: u32, last: u32) -> Vec<RawFd> {
    table().fds_in(first, last)
}

/// The socket behind `fd`, if msock tracks it.
pub fn lookup(fd: RawFd) -> Option<Handle> {
    table().get(fd)
}

/// `msock_is_msock_fd`: served by msock right now.
pub fn is_msock_fd(fd: RawFd) -> bool {
    lookup(fd).is_some_and(|h| h.is_cached())
}

/// Every TCP socket of the process, once each (the fork/exec code flushes and caches them:
/// [`TcpSocket::flush`], [`TcpSocket::cache`]).
pub fn tcp_sockets() -> Vec<Arc<TcpSocket>> {
    table().tcp_sockets()
}

/// Normal process exit (`atexit`): every socket is released as a close would, so a cached
/// connection's queued data is handed to the netserver, which finishes it.
pub fn at_exit() {
    for s in table().sockets() {
        for fd in s.fds() {
            table().remove(fd);
        }
        s.release();
    }
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
/// and registered with the netserver; stream sockets (protocol 0 or TCP) are created in the
/// kernel and decided at their first bind/connect/listen; everything else passes through.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Outcome<RawFd> {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if !(domain == libc::AF_INET || domain == libc::AF_INET6) {
        return Outcome::Bypass;
    }
    let udp = base == libc::SOCK_DGRAM && (protocol == 0 || protocol == libc::IPPROTO_UDP);
    let tcp = base == libc::SOCK_STREAM && (protocol == 0 || protocol == libc::IPPROTO_TCP);
    if !udp && !tcp {
        return Outcome::Bypass;
    }
    let session = match runtime::session() {
        Ok(s) => s,
        Err(_) if runtime::fallback_to_kernel() => return Outcome::Bypass,
        Err(_) if tcp => {
            // socket() succeeds; the decision fails with ENETDOWN (OfflineSocket).
            let fd = match sys::socket(domain, ty, protocol) {
                Ok(fd) => fd,
                Err(e) => return Outcome::Error(e.raw_os_error().unwrap_or(libc::EMFILE)),
            };
            if let Some(stale) = table().insert(fd, Socket::Offline(OfflineSocket::new(domain, fd)))
                && stale.remove_fd(fd)
            {
                stale.release();
            }
            return Outcome::Done(fd);
        }
        Err(e) => return Outcome::Error(e),
    };
    if tcp {
        let fd = match sys::socket(domain, ty, protocol) {
            Ok(fd) => fd,
            Err(e) => return Outcome::Error(e.raw_os_error().unwrap_or(libc::EMFILE)),
        };
        let sock = TcpSocket::new(session, domain, fd);
        if let Some(stale) = table().insert(fd, Socket::Tcp(sock))
            && stale.remove_fd(fd)
        {
            stale.release();
        }
        crate::msock_debug!("socket({domain}, {ty}) = fd {fd} (tcp, undecided)");
        return Outcome::Done(fd);
    }
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
    if let Some(stale) = table().insert(fd, Socket::Udp(sock)) {
        // The number was closed behind our back (close_range, raw syscall): forget it.
        if stale.remove_fd(fd) {
            stale.release();
        }
    }
    crate::msock_debug!("socket({domain}, {ty}) = fd {fd}, endpoint {id}");
    Outcome::Done(fd)
}

pub fn bind(h: &Handle, fd: RawFd, addr: &SockAddrIn) -> Outcome<()> {
    let o = match h {
        Socket::Udp(s) => s.bind(addr),
        Socket::Tcp(s) => s.bind(addr),
        Socket::Offline(s) => s.decide(Some(addr)),
        Socket::Relayed(_) => Outcome::Error(libc::EINVAL),
    };
    let o = after(h, o);
    crate::msock_debug!("bind(fd {fd}): {}", describe(&o));
    o
}

pub fn connect(h: &Handle, fd: RawFd, addr: &SockAddrIn) -> Outcome<()> {
    let o = match h {
        Socket::Udp(s) => s.connect(addr),
        Socket::Tcp(s) => s.connect(addr),
        Socket::Offline(s) => s.decide(Some(addr)),
        Socket::Relayed(_) => Outcome::Error(libc::EISCONN),
    };
    let o = after(h, o);
    crate::msock_debug!("connect(fd {fd}): {}", describe(&o));
    o
}

/// `listen()`: TCP sockets listen at the netserver.
pub fn listen(h: &Handle, fd: RawFd, backlog: i32) -> Outcome<()> {
    let o = match h {
        Socket::Udp(s) if s.is_cached() => Outcome::Error(libc::EOPNOTSUPP),
        Socket::Udp(_) => Outcome::Bypass,
        Socket::Tcp(s) => s.listen(backlog),
        Socket::Offline(s) => s.decide(None),
        Socket::Relayed(_) => Outcome::Error(libc::EINVAL),
    };
    let o = after(h, o);
    crate::msock_debug!("listen(fd {fd}): {}", describe(&o));
    o
}

/// `accept4()`: the new descriptor and the peer's address.
pub fn accept(h: &Handle, _fd: RawFd, flags: i32) -> Outcome<(RawFd, SocketAddr)> {
    match h {
        Socket::Udp(s) if s.is_cached() => Outcome::Error(libc::EOPNOTSUPP),
        Socket::Udp(_) => Outcome::Bypass,
        Socket::Tcp(s) => s.accept(flags).map(|(fd, peer)| {
            relay_if_standard(fd);
            (fd, peer)
        }),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    }
}

/// A connection that reaches descriptor 0, 1 or 2 becomes a relayed one (`client::relay`):
/// glibc's stdio writes and reads those without the exported symbols. One that cannot be
/// relayed goes on as it was (stdio on it then bypasses msock; logged).
fn relay_if_standard(fd: RawFd) {
    if !relay::wants_relay(fd) {
        return;
    }
    let Some(Socket::Tcp(sock)) = table().get(fd) else {
        return;
    };
    match sock.to_relay() {
        Ok(relayed) => {
            for fd in relayed.fds() {
                table().insert(fd, Socket::Relayed(Arc::clone(&relayed)));
            }
            crate::msock_debug!("fd {fd}: endpoint {:?} relayed", sock.id());
        }
        Err(libc::ENOTCONN) => {}
        Err(e) => crate::msock_debug!("fd {fd}: endpoint {:?} not relayed: errno {e}", sock.id()),
    }
}

/// `shutdown()`.
pub fn shutdown(h: &Handle, _fd: RawFd, how: i32) -> Outcome<()> {
    match h {
        // A connected UDP socket's shutdown only changes what the kernel socket reports;
        // msock's UDP sockets do not model it.
        Socket::Udp(s) if s.is_cached() => Outcome::Error(libc::ENOTCONN),
        Socket::Udp(_) => Outcome::Bypass,
        Socket::Tcp(s) => s.shutdown(how),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    }
}

pub fn send(
    h: &Handle,
    _fd: RawFd,
    bufs: &[&[u8]],
    flags: i32,
    dst: Option<&SockAddrIn>,
) -> Outcome<usize> {
    let o = match h {
        Socket::Udp(s) => s.send(bufs, flags, dst),
        // A destination on a stream socket is ignored (Linux: EISCONN only when connected
        // and the address differs; programs pass NULL).
        Socket::Tcp(s) => s.send(bufs, flags),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    };
    after(h, o)
}

pub fn recv(h: &Handle, _fd: RawFd, bufs: &mut [&mut [u8]], flags: i32) -> Outcome<Received> {
    let o = match h {
        Socket::Udp(s) => s.recv(bufs, flags),
        Socket::Tcp(s) => s.recv(bufs, flags),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    };
    after(h, o)
}

pub fn getsockname(h: &Handle, _fd: RawFd) -> Outcome<SocketAddr> {
    match h {
        Socket::Udp(s) => s.getsockname(),
        Socket::Tcp(s) => s.getsockname(),
        Socket::Relayed(s) => s.getsockname(),
        Socket::Offline(_) => Outcome::Bypass,
    }
}

pub fn getpeername(h: &Handle, _fd: RawFd) -> Outcome<SocketAddr> {
    match h {
        Socket::Udp(s) => s.getpeername(),
        Socket::Tcp(s) => s.getpeername(),
        Socket::Relayed(s) => s.getpeername(),
        Socket::Offline(_) => Outcome::Bypass,
    }
}

/// `getsockopt()`: the whole value; the edge truncates it to the caller's length.
pub fn getsockopt(h: &Handle, _fd: RawFd, level: i32, name: i32) -> Outcome<Vec<u8>> {
    match h {
        Socket::Udp(s) => s
            .getsockopt(level, name)
            .map(|v: OptValue| v.bytes[..v.len].to_vec()),
        Socket::Tcp(s) => s.getsockopt(level, name),
        Socket::Relayed(s) => s.getsockopt(level, name),
        Socket::Offline(_) => Outcome::Bypass,
    }
}

pub fn setsockopt(h: &Handle, fd: RawFd, level: i32, name: i32, value: &[u8]) -> Outcome<()> {
    match h {
        Socket::Udp(s) => s.setsockopt(fd, level, name, value),
        Socket::Tcp(s) => s.setsockopt(fd, level, name, value),
        Socket::Relayed(s) => s.setsockopt(level, name, value),
        Socket::Offline(_) => Outcome::Bypass,
    }
}

/// `close()`: forgets `fd`, releases the socket if it was its last descriptor, then closes the
/// descriptor with the real `close`.
pub fn close(h: &Handle, fd: RawFd) -> Outcome<i32> {
    table().remove(fd);
    if h.remove_fd(fd) {
        h.release();
        crate::msock_debug!("close(fd {fd}): released");
    }
    match sys::close(fd) {
        Ok(()) => Outcome::Done(0),
        Err(e) => Outcome::Error(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn register_dup(h: &Handle, new: RawFd) {
    if let Some(old) = table().insert(new, h.clone())
        && !old.same(h)
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
            relay_if_standard(new);
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
        relay_if_standard(new);
    }
    Outcome::Done(new)
}

/// `fcntl()`: O_NONBLOCK of msock sockets is tracked by msock; F_DUPFD* keep the table.
pub fn fcntl(h: &Handle, fd: RawFd, cmd: i32, arg: u64) -> Outcome<i32> {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let Ok(min) = RawFd::try_from(arg) else {
                return Outcome::Error(libc::EINVAL);
            };
            match sys::dupfd(fd, min, cmd == libc::F_DUPFD_CLOEXEC) {
                Ok(new) => {
                    register_dup(h, new);
                    relay_if_standard(new);
                    Outcome::Done(new)
                }
                Err(e) => Outcome::Error(e.raw_os_error().unwrap_or(libc::EMFILE)),
            }
        }
        libc::F_GETFL => match h {
            Socket::Udp(s) => s.status_flags(fd),
            Socket::Tcp(s) => s.status_flags(fd),
            Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
        },
        libc::F_SETFL => {
            let on = (arg as i32) & libc::O_NONBLOCK != 0;
            fionbio(h, fd, on).map(|()| 0)
        }
        _ => Outcome::Bypass,
    }
}

pub fn fionread(h: &Handle, _fd: RawFd) -> Outcome<i32> {
    match h {
        Socket::Udp(s) => s.fionread(),
        Socket::Tcp(s) => s.fionread(),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    }
}

pub fn outq(h: &Handle, _fd: RawFd) -> Outcome<i32> {
    match h {
        Socket::Udp(s) => s.outq(),
        Socket::Tcp(s) => s.outq(),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    }
}

pub fn fionbio(h: &Handle, fd: RawFd, on: bool) -> Outcome<()> {
    match h {
        Socket::Udp(s) => s.set_nonblocking(fd, on),
        Socket::Tcp(s) => s.set_nonblocking(fd, on),
        Socket::Offline(_) | Socket::Relayed(_) => Outcome::Bypass,
    }
}

/// Whether a msock socket is a stream (sendfile/splice serve only those).
pub fn is_stream(h: &Handle) -> bool {
    matches!(h, Socket::Tcp(_))
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
