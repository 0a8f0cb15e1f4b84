//! A UDP socket of the client runtime: lifecycle, options, blocking, readiness (paper §3.2,
//! design.md "Descriptors", "Send path", "Threads").
//!
//! Lifecycle: `socket()` creates a real kernel socket on the program's fd number and registers
//! an endpoint with the netserver (**undecided**). The first bind/connect/sendto decides:
//! - msock's when bound to the netserver's address or the wildcard (AF_INET6: `::` without
//!   IPV6_V6ONLY, or a v4-mapped address), or when the destination is routed through msock's
//!   interface: the endpoint is bound through the netserver (explicitly, or port 0 implicitly),
//!   the socket is **cached** (its channel fd adopted), and an AF_UNIX stream socketpair
//!   placeholder is `dup3`ed over every fd number of the socket ([`sys::cover_fds`]: FD_CLOEXEC
//!   and O_NONBLOCK kept);
//! - the kernel's otherwise (loopback, other local addresses, native IPv6, other interfaces):
//!   `Close` is sent, the fd is forgotten and the call passes through to libc.
//!
//! Readiness: the placeholder's program end is readable exactly when the receive queue is
//! non-empty or an error is pending. This is maintained under the socket lock by
//! [`UdpSocket::sync_readiness`]: one byte is written to the library's end on the transition to
//! readable and the program's end is drained on the transition back.
//!
//! Blocking receive sleeps in `poll` on the placeholder and the channel's wake fd; the blocked
//! reader processes its own channel inline when woken. SO_RCVTIMEO bounds the sleep (EAGAIN).
//! Interrupted by a signal handler: Linux restarts socket receives when the handler has
//! SA_RESTART and no receive timeout is set; msock cannot tell which signal arrived, so it
//! restarts only when *every* installed handler has SA_RESTART, and returns EINTR otherwise
//! (and always when SO_RCVTIMEO is set, as Linux does).
//!
//! Sends with no netserver hop: route and neighbour come from the routing region (the next hop
//! is cached per socket and revalidated by the region's generation). An unresolved neighbour
//! costs one `Resolve` request; the datagram waits in the session's bounded per-neighbour queue.
//! MSG_MORE (corking) is not implemented: each call sends a datagram. Ancillary data is ignored.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::channel::{Channel, PacketChannel};
use crate::control::{EndpointId, Family, Reply, Request, SockKind};
use crate::routing::table::NextHop;
use crate::stack::stats::DropReason;
use crate::wire::EthernetAddress;

use super::Outcome;
use super::datapath::{self, Hop, PmtuDisc, SendError, TxOptions, UdpEndpoint};
use super::runtime::{BufferLimits, Session};
use super::stats::SlotHandle;
use super::sys;

/// Linux's SOCK_MIN_RCVBUF / SOCK_MIN_SNDBUF on x86_64 (approximately).
pub const MIN_RCVBUF: usize = 2304;
pub const MIN_SNDBUF: usize = 4608;

/// A socket address as the program passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockAddrIn {
    Inet(SocketAddrV4),
    Inet6(SocketAddrV6),
    Unspec,
    /// Another family.
    Other(i32),
    /// Too short for its family.
    Invalid,
}

impl SockAddrIn {
    /// Decodes a C `struct sockaddr` of `bytes.len()` bytes (Linux minimum lengths: 16 for
    /// AF_INET, 24 for AF_INET6, 2 otherwise).
    pub fn parse(bytes: &[u8]) -> SockAddrIn {
        let Some(fam) = bytes.get(0..2) else {
            return SockAddrIn::Invalid;
        };
        let family = i32::from(u16::from_ne_bytes([fam[0], fam[1]]));
        let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
        match family {
            libc::AF_INET if bytes.len() >= 16 => {
                let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
                SockAddrIn::Inet(SocketAddrV4::new(ip, port(bytes)))
            }
            libc::AF_INET6 if bytes.len() >= 24 => {
                let flow = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&bytes[8..24]);
                let scope = bytes
                    .get(24..28)
                    .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
                SockAddrIn::Inet6(SocketAddrV6::new(ip.into(), port(bytes), flow, scope))
            }
            libc::AF_INET | libc::AF_INET6 => SockAddrIn::Invalid,
            libc::AF_UNSPEC => SockAddrIn::Unspec,
            other => SockAddrIn::Other(other),
        }
    }
}

/// What a receive returned, for the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The call's return value: bytes copied, or the real length with MSG_TRUNC.
    pub len: usize,
    /// The datagram was longer than the buffers (MSG_TRUNC in `msg_flags`).
    pub truncated: bool,
    /// The source, in the socket's family.
    pub src: Option<SocketAddr>,
}

/// A getsockopt value (at most 16 bytes: an int or a timeval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptValue {
    pub bytes: [u8; 16],
    pub len: usize,
}

impl OptValue {
    pub fn int(v: i32) -> OptValue {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&v.to_ne_bytes());
        OptValue { bytes, len: 4 }
    }
    fn timeval(t: Option<Duration>) -> OptValue {
        let t = t.unwrap_or(Duration::ZERO);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&(t.as_secs() as i64).to_ne_bytes());
        bytes[8..].copy_from_slice(&i64::from(t.subsec_micros()).to_ne_bytes());
        OptValue { bytes, len: 16 }
    }
}

/// Socket options kept by msock.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Effective (doubled) SO_RCVBUF.
    pub rcvbuf: usize,
    pub sndbuf: usize,
    pub reuse_addr: bool,
    pub reuse_port: bool,
    pub broadcast: bool,
    pub rcvtimeo: Option<Duration>,
    pub sndtimeo: Option<Duration>,
    pub tx: TxOptions,
    /// IP_MTU_DISCOVER as set (0..=5).
    pub pmtudisc_raw: i32,
    pub v6only: bool,
}

impl Options {
    pub fn new(limits: &BufferLimits) -> Options {
        Options {
            rcvbuf: limits.rmem_default,
            sndbuf: limits.wmem_default,
            reuse_addr: false,
            reuse_port: false,
            broadcast: false,
            rcvtimeo: None,
            sndtimeo: None,
            tx: TxOptions::default(),
            pmtudisc_raw: PmtuDisc::Want.raw(),
            v6only: false,
        }
    }
}

fn int_arg(v: &[u8]) -> Result<i32, i32> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(libc::EINVAL)?;
    Ok(i32::from_ne_bytes(b))
}

/// IPPROTO_IP options accept a single byte too (Linux `do_ip_setsockopt`).
fn ip_int_arg(v: &[u8]) -> Result<i32, i32> {
    match v.len() {
        0 => Err(libc::EINVAL),
        1..=3 => Ok(i32::from(v[0])),
        _ => int_arg(v),
    }
}

fn timeval_arg(v: &[u8]) -> Result<Option<Duration>, i32> {
    if v.len() < 16 {
        return Err(libc::EINVAL);
    }
    let sec = i64::from_ne_bytes(v[0..8].try_into().map_err(|_| libc::EINVAL)?);
    let usec = i64::from_ne_bytes(v[8..16].try_into().map_err(|_| libc::EINVAL)?);
    if !(0..1_000_000).contains(&usec) {
        return Err(libc::EDOM);
    }
    if sec < 0 {
        return Ok(Some(Duration::ZERO));
    }
    if sec == 0 && usec == 0 {
        return Ok(None);
    }
    Ok(Some(
        Duration::from_secs(sec as u64) + Duration::from_micros(usec as u64),
    ))
}

/// Applies a SOL_SOCKET / IPPROTO_IP / IPPROTO_IPV6 option to `opts` (shared by undecided and
/// cached sockets). `Ok(false)`: not an option msock knows (ENOPROTOOPT on a cached socket).
pub fn apply_option(
    opts: &mut Options,
    limits: &BufferLimits,
    domain: i32,
    level: i32,
    name: i32,
    v: &[u8],
) -> Result<bool, i32> {
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            let val = int_arg(v)?.max(0) as usize;
            opts.rcvbuf = (val.min(limits.rmem_max) * 2).max(MIN_RCVBUF);
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            let val = int_arg(v)?.max(0) as usize;
            opts.sndbuf = (val.min(limits.wmem_max) * 2).max(MIN_SNDBUF);
        }
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => opts.reuse_addr = int_arg(v)? != 0,
        (libc::SOL_SOCKET, libc::SO_REUSEPORT) => opts.reuse_port = int_arg(v)? != 0,
        (libc::SOL_SOCKET, libc::SO_BROADCAST) => opts.broadcast = int_arg(v)? != 0,
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => opts.rcvtimeo = timeval_arg(v)?,
        (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => opts.sndtimeo = timeval_arg(v)?,
        (libc::IPPROTO_IP, libc::IP_TTL) => {
            opts.tx.ttl = match ip_int_arg(v)? {
                -1 => 64,
                t @ 1..=255 => t as u8,
                _ => return Err(libc::EINVAL),
            };
        }
        (libc::IPPROTO_IP, libc::IP_TOS) => opts.tx.tos = (ip_int_arg(v)? & 0xff) as u8,
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER) => {
            let raw = ip_int_arg(v)?;
            opts.tx.pmtudisc = match raw {
                0 | 5 => PmtuDisc::Dont,
                1 => PmtuDisc::Want,
                2 | 4 => PmtuDisc::Do,
                3 => PmtuDisc::Probe,
                _ => return Err(libc::EINVAL),
            };
            opts.pmtudisc_raw = raw;
        }
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) if domain == libc::AF_INET6 => {
            opts.v6only = int_arg(v)? != 0
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Reads an option msock keeps; `None` for unknown ones.
pub fn read_option(opts: &Options, domain: i32, level: i32, name: i32) -> Option<OptValue> {
    let b = |x: bool| OptValue::int(i32::from(x));
    Some(match (level, name) {
        (libc::SOL_SOCKET, libc::SO_TYPE) => OptValue::int(libc::SOCK_DGRAM),
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => OptValue::int(domain),
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => OptValue::int(libc::IPPROTO_UDP),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            OptValue::int(opts.rcvbuf.min(i32::MAX as usize) as i32)
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            OptValue::int(opts.sndbuf.min(i32::MAX as usize) as i32)
        }
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => b(opts.reuse_addr),
        (libc::SOL_SOCKET, libc::SO_REUSEPORT) => b(opts.reuse_port),
        (libc::SOL_SOCKET, libc::SO_BROADCAST) => b(opts.broadcast),
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => OptValue::timeval(opts.rcvtimeo),
        (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => OptValue::timeval(opts.sndtimeo),
        (libc::IPPROTO_IP, libc::IP_TTL) => OptValue::int(i32::from(opts.tx.ttl)),
        (libc::IPPROTO_IP, libc::IP_TOS) => OptValue::int(i32::from(opts.tx.tos)),
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER) => OptValue::int(opts.pmtudisc_raw),
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) if domain == libc::AF_INET6 => b(opts.v6only),
        _ => return None,
    })
}

/// The cached part: channel and placeholder.
pub struct Cached {
    channel: Mutex<PacketChannel>,
    /// Raw number of the channel's wake fd (valid while `channel` lives).
    wake: RawFd,
    /// Our handle on the program's end of the placeholder.
    prog: OwnedFd,
    /// The library's end.
    lib: OwnedFd,
    slot: Option<SlotHandle>,
    /// (st_dev, st_ino) of the placeholder: the socket's identity across dup/exec.
    pub identity: (u64, u64),
}

enum Mode {
    Undecided,
    Cached(Arc<Cached>),
    /// Handed to the kernel; the fd table no longer refers to it.
    Kernel,
    Closed,
}

struct RouteCache {
    dst: Ipv4Addr,
    generation: u64,
    hop: NextHop,
}

struct State {
    mode: Mode,
    /// Program descriptor numbers referring to this socket.
    fds: Vec<RawFd>,
    opts: Options,
    ep: UdpEndpoint,
    /// The local IP was given to bind (not the wildcard): connect/disconnect keep it.
    explicit_ip: bool,
    signalled: bool,
    route: Option<RouteCache>,
}

/// One UDP socket.
pub struct UdpSocket {
    session: &'static Session,
    pub id: EndpointId,
    /// AF_INET or AF_INET6.
    pub domain: i32,
    nonblocking: AtomicBool,
    /// Threads sleeping in a blocking receive on this socket (see `recv`).
    blocked_readers: AtomicU32,
    me: Weak<UdpSocket>,
    state: Mutex<State>,
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl UdpSocket {
    /// A registered, undecided socket on the kernel socket `fd`.
    pub fn new(
        session: &'static Session,
        id: EndpointId,
        domain: i32,
        fd: RawFd,
    ) -> Arc<UdpSocket> {
        let opts = Options::new(&session.limits);
        let ep = UdpEndpoint::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), opts.rcvbuf);
        Arc::new_cyclic(|me| UdpSocket {
            session,
            id,
            domain,
            nonblocking: AtomicBool::new(false),
            blocked_readers: AtomicU32::new(0),
            me: me.clone(),
            state: Mutex::new(State {
                mode: Mode::Undecided,
                fds: vec![fd],
                opts,
                ep,
                explicit_ip: false,
                signalled: false,
                route: None,
            }),
        })
    }

    /// Registers the endpoint with the netserver (the `socket()` step).
    pub fn register(session: &Session, domain: i32) -> Result<EndpointId, i32> {
        let family = if domain == libc::AF_INET6 {
            Family::Inet6 { v6only: false }
        } else {
            Family::Inet
        };
        match session.request(
            &Request::Socket {
                family,
                kind: SockKind::Datagram,
            },
            &[],
        )? {
            (Reply::Socket { id }, _) => Ok(id),
            _ => Err(libc::EPROTO),
        }
    }

    /// Whether this socket was inherited from a parent process through fork.
    fn detached(&self) -> bool {
        !self.session.is_current()
    }

    /// Served by msock (cached) right now.
    pub fn is_cached(&self) -> bool {
        !self.detached() && matches!(self.state.lock().mode, Mode::Cached(_))
    }

    /// Handed to the kernel (the caller drops it from the fd table).
    pub fn is_kernel(&self) -> bool {
        matches!(self.state.lock().mode, Mode::Kernel)
    }

    /// Adds a descriptor number (dup).
    pub fn add_fd(&self, fd: RawFd) {
        let mut st = self.state.lock();
        if !st.fds.contains(&fd) {
            st.fds.push(fd);
        }
    }

    /// Removes a descriptor number; true if it was the last one.
    pub fn remove_fd(&self, fd: RawFd) -> bool {
        if self.detached() {
            // The parent may have held this lock at fork time: never wait for it here.
            return match self.state.try_lock_for(Duration::from_millis(10)) {
                Some(mut st) => {
                    st.fds.retain(|&f| f != fd);
                    st.fds.is_empty()
                }
                None => false,
            };
        }
        let mut st = self.state.lock();
        st.fds.retain(|&f| f != fd);
        st.fds.is_empty()
    }

    /// Descriptor numbers referring to this socket.
    pub fn fds(&self) -> Vec<RawFd> {
        self.state.lock().fds.clone()
    }

    /// Releases the endpoint after its last descriptor went away (close/dup2 over it).
    pub fn release(&self) {
        if self.detached() {
            // Inherited: the endpoint and channel belong to the parent. Our mapping and fds
            // are dropped with this process's last reference; nothing is sent.
            return;
        }
        let mut st = self.state.lock();
        let mode = std::mem::replace(&mut st.mode, Mode::Closed);
        match mode {
            Mode::Cached(c) => {
                self.session.remove_socket(self.id, Some(c.wake));
                let _ = self.session.request(&Request::Close { id: self.id }, &[]);
            }
            Mode::Undecided => {
                let _ = self.session.request(&Request::Close { id: self.id }, &[]);
            }
            Mode::Kernel | Mode::Closed => {}
        }
        st.ep.queue = datapath::RecvQueue::new(0);
    }

    /// Gives the socket to the kernel: `Close` to the netserver, mode Kernel. The caller
    /// removes the fds from the table and lets libc do the call.
    fn to_kernel<T>(&self, st: &mut State) -> Outcome<T> {
        let _ = self.session.request(&Request::Close { id: self.id }, &[]);
        st.mode = Mode::Kernel;
        Outcome::Bypass
    }

    /// The cached part, or the outcome of an operation on a socket that is not cached.
    fn cached<T>(&self, st: &State) -> Result<Arc<Cached>, Outcome<T>> {
        match &st.mode {
            Mode::Cached(c) => Ok(Arc::clone(c)),
            Mode::Undecided | Mode::Kernel => Err(Outcome::Bypass),
            Mode::Closed => Err(Outcome::Error(libc::EBADF)),
        }
    }

    /// Runs `f` on the locked state of a cached socket; nothing happens otherwise (upcalls).
    fn if_cached(&self, f: impl FnOnce(&mut State, &Cached)) {
        let mut st = self.state.lock();
        let Mode::Cached(c) = &st.mode else { return };
        let c = Arc::clone(c);
        f(&mut st, &c);
    }

    /// send/recv on a socket inherited through fork: the kernel's if it never was cached,
    /// otherwise EBADFD (the parent's state lock may be held forever: never wait long).
    fn detached_outcome<T>(&self) -> Outcome<T> {
        match self
            .state
            .try_lock_for(Duration::from_millis(10))
            .map(|s| matches!(s.mode, Mode::Cached(_)))
        {
            Some(false) => Outcome::Bypass,
            _ => Outcome::Error(libc::EBADFD),
        }
    }

    /// Takes the pending asynchronous error, if any, updating readiness.
    fn take_error(st: &mut State, c: &Cached) -> Option<i32> {
        let e = st.ep.pending_error.take();
        if e.is_some() {
            Self::sync_readiness(st, c);
        }
        e
    }

    /// Records `errno` for the next call of a socket connected to `remote`.
    fn error_for_peer(st: &mut State, c: &Cached, remote: SocketAddrV4, errno: i32) {
        if st.ep.remote == Some(remote) {
            st.ep.pending_error = Some(errno);
            Self::sync_readiness(st, c);
        }
    }

    /// Keeps the placeholder's readability equal to "queue non-empty or error pending".
    fn sync_readiness(st: &mut State, c: &Cached) {
        let want = !st.ep.queue.is_empty() || st.ep.pending_error.is_some();
        if want == st.signalled {
            return;
        }
        if want {
            if sys::send_byte(c.lib.as_fd()).is_ok() {
                st.signalled = true;
            }
        } else {
            sys::drain(c.prog.as_fd());
            st.signalled = false;
        }
    }

    /// Processes the channel and updates readiness (receive thread, busy poll, FIONREAD).
    pub fn drive(&self) {
        if self.detached() {
            return;
        }
        self.if_cached(|st, c| {
            Self::process(st, c);
            Self::sync_readiness(st, c);
        });
    }

    fn process(st: &mut State, c: &Cached) {
        let mut ch = c.channel.lock();
        while let Ok(64) = st.ep.process_channel(&mut *ch, 64, c.slot.as_ref()) {}
    }

    // -----------------------------------------------------------------------------------------
    // Decisions

    /// Our address from the routing region.
    fn our_addr(&self) -> Option<Ipv4Addr> {
        self.session.local_addr()
    }

    /// Converts a destination for this socket's family. `Ok(None)`: not an IPv4 destination
    /// msock can serve (native IPv6).
    fn v4_dest(&self, a: &SockAddrIn, v6only: bool) -> Result<Option<SocketAddrV4>, i32> {
        match (self.domain, a) {
            (_, SockAddrIn::Invalid) => Err(libc::EINVAL),
            (_, SockAddrIn::Inet(d)) if self.domain == libc::AF_INET || !v6only => Ok(Some(*d)),
            (libc::AF_INET6, SockAddrIn::Inet(_)) => Err(libc::ENETUNREACH),
            (libc::AF_INET6, SockAddrIn::Inet6(d)) => match d.ip().to_ipv4_mapped() {
                Some(_) if v6only => Err(libc::ENETUNREACH),
                Some(ip) => Ok(Some(SocketAddrV4::new(ip, d.port()))),
                None => Ok(None),
            },
            _ => Err(libc::EAFNOSUPPORT),
        }
    }

    /// Whether msock serves traffic to `ip` (its route goes through msock's interface).
    fn routed_by_msock(&self, ip: Ipv4Addr) -> bool {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        self.session.is_broadcast(ip) || self.session.region.lookup(ip).is_some()
    }

    /// Decides an undecided socket by its destination: cached (on the wildcard address) if
    /// msock routes `dst`, otherwise the kernel's (`Err(Bypass)`).
    fn decide_for<T>(&self, st: &mut State, dst: SocketAddrV4) -> Result<(), Outcome<T>> {
        if !self.routed_by_msock(*dst.ip()) {
            return Err(self.to_kernel(st));
        }
        self.cache(st, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
            .map_err(Outcome::Error)
    }

    /// Tells the netserver the socket's peer (`None`: disconnect).
    fn request_connect(&self, remote: Option<SocketAddrV4>) -> Result<(), i32> {
        let req = Request::Connect {
            id: self.id,
            remote,
        };
        self.session.request(&req, &[]).map(|_| ())
    }

    /// Binds through the netserver and caches the socket.
    fn cache(&self, st: &mut State, local: SocketAddrV4) -> Result<(), i32> {
        let req = Request::Bind {
            id: self.id,
            local,
            reuse_addr: st.opts.reuse_addr,
            reuse_port: st.opts.reuse_port,
        };
        let (reply, fds) = self.session.request(&req, &[])?;
        let Reply::Bound { local: bound, ring } = reply else {
            return Err(libc::EPROTO);
        };
        let chfd = fds.into_iter().next().ok_or(libc::EPROTO)?;
        let channel = PacketChannel::from_fd(chfd, ring).map_err(|e| errno_of(&e))?;
        let wake = channel.wake_fd();
        let (prog, lib) = sys::stream_pair().map_err(|e| errno_of(&e))?;
        let identity = sys::identity(prog.as_raw_fd()).map_err(|e| errno_of(&e))?;
        let nonblocking = sys::cover_fds(prog.as_raw_fd(), &st.fds).map_err(|e| errno_of(&e))?;
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
        let slot = self.session.stats.allocate(self.id);
        let cached = Arc::new(Cached {
            channel: Mutex::new(channel),
            wake,
            prog,
            lib,
            slot,
            identity,
        });
        let me = self.me.upgrade().ok_or(libc::EBADF)?;
        self.session
            .add_socket(self.id, &me, wake)
            .map_err(|e| errno_of(&e))?;
        st.ep.local = bound;
        st.ep.queue.set_limit(st.opts.rcvbuf);
        st.explicit_ip = !local.ip().is_unspecified();
        st.mode = Mode::Cached(cached);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Operations

    pub fn bind(&self, addr: &SockAddrIn) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.state.lock();
        match st.mode {
            Mode::Undecided => {}
            Mode::Cached(_) => return Outcome::Error(libc::EINVAL),
            Mode::Kernel => return Outcome::Bypass,
            Mode::Closed => return Outcome::Error(libc::EBADF),
        }
        let ours = |ip: Ipv4Addr| ip.is_unspecified() || Some(ip) == self.our_addr();
        let local = match (self.domain, addr) {
            (libc::AF_INET, SockAddrIn::Inet(a)) if ours(*a.ip()) => *a,
            (libc::AF_INET6, SockAddrIn::Inet6(a)) if !st.opts.v6only => {
                if a.ip().is_unspecified() {
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port())
                } else {
                    match a.ip().to_ipv4_mapped() {
                        Some(ip) if ours(ip) => SocketAddrV4::new(ip, a.port()),
                        _ => return self.to_kernel(&mut st),
                    }
                }
            }
            // Everything else is the kernel's, including its error cases.
            _ => return self.to_kernel(&mut st),
        };
        Outcome::from(self.cache(&mut st, local))
    }

    pub fn connect(&self, addr: &SockAddrIn) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.state.lock();
        if matches!(addr, SockAddrIn::Unspec) {
            let c = match self.cached(&st) {
                Ok(c) => c,
                Err(o) => return o,
            };
            if let Err(e) = self.request_connect(None) {
                return Outcome::Error(e);
            }
            st.ep.remote = None;
            if !st.explicit_ip {
                st.ep.local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, st.ep.local.port());
            }
            st.route = None;
            Self::sync_readiness(&mut st, &c);
            return Outcome::Done(());
        }
        let dst = match self.v4_dest(addr, st.opts.v6only) {
            Ok(d) => d,
            Err(_) if matches!(st.mode, Mode::Undecided) => return self.to_kernel(&mut st),
            Err(e) => return Outcome::Error(e),
        };
        if matches!(st.mode, Mode::Undecided) {
            let Some(d) = dst else {
                return self.to_kernel(&mut st);
            };
            if let Err(o) = self.decide_for(&mut st, d) {
                return o;
            }
        }
        let c = match self.cached(&st) {
            Ok(c) => c,
            Err(o) => return o,
        };
        let Some(dst) = dst else {
            return Outcome::Error(libc::ENETUNREACH);
        };
        let Some(hop) = self.route(&mut st, *dst.ip()) else {
            return Outcome::Error(libc::ENETUNREACH);
        };
        if st.ep.remote != Some(dst)
            && let Err(e) = self.request_connect(Some(dst))
        {
            return Outcome::Error(e);
        }
        if st.ep.local.ip().is_unspecified() {
            st.ep.local = SocketAddrV4::new(hop.src, st.ep.local.port());
        }
        st.ep.remote = Some(dst);
        Self::sync_readiness(&mut st, &c);
        Outcome::Done(())
    }

    /// The next hop for `dst`, from the per-socket cache when the region has not changed.
    fn route(&self, st: &mut State, dst: Ipv4Addr) -> Option<NextHop> {
        let generation = self.session.region.generation();
        if let Some(rc) = &st.route
            && rc.dst == dst
            && rc.generation == generation
        {
            return Some(rc.hop);
        }
        let hop = if self.session.is_broadcast(dst) {
            self.session.broadcast_hop()?
        } else {
            self.session.region.lookup(dst)?
        };
        st.route = Some(RouteCache {
            dst,
            generation,
            hop,
        });
        Some(hop)
    }

    pub fn send(&self, bufs: &[&[u8]], flags: i32, dst: Option<&SockAddrIn>) -> Outcome<usize> {
        if self.detached() {
            return self.detached_outcome();
        }
        if flags & libc::MSG_OOB != 0 {
            return Outcome::Error(libc::EOPNOTSUPP);
        }
        let mut st = self.state.lock();
        let dst = match dst {
            None => None,
            Some(a) => match self.v4_dest(a, st.opts.v6only) {
                Ok(Some(d)) => Some(d),
                Ok(None) | Err(_) if matches!(st.mode, Mode::Undecided) => {
                    return self.to_kernel(&mut st);
                }
                Ok(None) => return Outcome::Error(libc::ENETUNREACH),
                Err(e) => return Outcome::Error(e),
            },
        };
        if matches!(st.mode, Mode::Undecided) {
            // No destination: the kernel socket answers (EDESTADDRREQ) and stays undecided.
            let Some(d) = dst else {
                return Outcome::Bypass;
            };
            if let Err(o) = self.decide_for(&mut st, d) {
                return o;
            }
        }
        let c = match self.cached(&st) {
            Ok(c) => c,
            Err(o) => return o,
        };
        if let Some(e) = Self::take_error(&mut st, &c) {
            return Outcome::Error(e);
        }
        let Some(dst) = dst.or(st.ep.remote) else {
            return Outcome::Error(libc::EDESTADDRREQ);
        };
        if dst.port() == 0 {
            return Outcome::Error(libc::EINVAL);
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len > datapath::MAX_PAYLOAD {
            return Outcome::Error(libc::EMSGSIZE);
        }
        if self.session.is_broadcast(*dst.ip()) && !st.opts.broadcast {
            return Outcome::Error(libc::EACCES);
        }
        let Some(hop) = self.route(&mut st, *dst.ip()) else {
            return Outcome::Error(libc::ENETUNREACH);
        };
        let src_ip = if st.ep.local.ip().is_unspecified() {
            hop.src
        } else {
            *st.ep.local.ip()
        };
        let src = SocketAddrV4::new(src_ip, st.ep.local.port());
        let Some(dst_mac) = hop.dst_mac else {
            if matches!(st.opts.tx.pmtudisc, PmtuDisc::Do | PmtuDisc::Probe)
                && datapath::IP_HEADER + datapath::UDP_HEADER + len > hop.mtu as usize
            {
                return Outcome::Error(libc::EMSGSIZE);
            }
            let data = bufs.concat();
            drop(st);
            self.wait_for_neighbour(hop.ip, src, dst, data);
            return Outcome::Done(len);
        };
        let link = Hop {
            src_ip,
            src_mac: hop.src_mac,
            dst_mac,
            mtu: hop.mtu as usize,
        };
        let nonblock = flags & libc::MSG_DONTWAIT != 0 || self.nonblocking.load(Ordering::Relaxed);
        let sndtimeo = st.opts.sndtimeo;
        Outcome::from(self.emit(&mut st, &c, &link, src, dst, bufs, nonblock, sndtimeo))
    }

    /// Emits into the channel and flushes; a full ring waits (blocking sockets, up to
    /// SO_SNDTIMEO) or fails with EAGAIN.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        st: &mut State,
        c: &Cached,
        link: &Hop,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        bufs: &[&[u8]],
        nonblock: bool,
        sndtimeo: Option<Duration>,
    ) -> Result<usize, i32> {
        let deadline = sndtimeo.map(|t| Instant::now() + t);
        let tx = st.opts.tx;
        let mut ch = c.channel.lock();
        loop {
            match st.ep.send(&mut *ch, link, src, dst, bufs, &tx) {
                Ok(n) => {
                    Self::flush_fully(&mut ch, c.wake, nonblock, deadline);
                    if let Some(s) = &c.slot {
                        s.datagram_out(n);
                    }
                    return Ok(n);
                }
                Err(SendError::WouldBlock) if !nonblock => {
                    if !Self::wait_writable(c.wake, deadline) {
                        return Err(libc::EAGAIN);
                    }
                }
                Err(e) => return Err(e.errno()),
            }
        }
    }

    /// Waits up to 10 ms (or until `deadline`) for the channel to take frames; false once the
    /// deadline has passed.
    fn wait_writable(wake: RawFd, deadline: Option<Instant>) -> bool {
        let step = Duration::from_millis(10);
        let wait = match deadline {
            Some(d) => match time_left(d) {
                Some(r) => r.min(step),
                None => return false,
            },
            None => step,
        };
        let _ = sys::poll(&[(wake, libc::POLLOUT)], Some(wait));
        true
    }

    /// Hands the queued frames to the kernel. The datagram is already accepted, so a kernel
    /// that cannot take them right now (socket send buffer full) is waited for: up to
    /// SO_SNDTIMEO or 1 s on a blocking socket, 10 ms on a non-blocking one; frames still
    /// queued after that leave with the next flush.
    fn flush_fully(ch: &mut PacketChannel, wake: RawFd, nonblock: bool, deadline: Option<Instant>) {
        let limit = if nonblock {
            Duration::from_millis(10)
        } else {
            Duration::from_secs(1)
        };
        let deadline = deadline.unwrap_or_else(|| Instant::now() + limit);
        loop {
            match ch.flush() {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !Self::wait_writable(wake, Some(deadline)) {
                        crate::msock_debug!("flush: kernel still busy, frames stay queued");
                        return;
                    }
                }
                Err(e) => {
                    crate::msock_debug!("flush: {e}");
                    return;
                }
            }
        }
    }

    fn wait_for_neighbour(
        &self,
        next_hop: Ipv4Addr,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: Vec<u8>,
    ) {
        let Some(me) = self.me.upgrade() else { return };
        let (first, dropped) = self
            .session
            .queue_for_neighbour(next_hop, &me, src, dst, data);
        if let Some(sock) = dropped.and_then(|w| w.upgrade()) {
            sock.count_drop(DropReason::NeighbourQueueFull);
        }
        if !first {
            return;
        }
        match self
            .session
            .request(&Request::Resolve { addr: next_hop }, &[])
        {
            Ok((Reply::Resolve { mac: Some(mac) }, _)) => {
                self.session.neighbour_resolved(next_hop, Some(mac))
            }
            Ok((Reply::Resolve { mac: None }, _)) => {} // the Resolved upcall follows
            _ => self.session.neighbour_resolved(next_hop, None),
        }
    }

    fn count_drop(&self, reason: DropReason) {
        self.if_cached(|_, c| {
            if let Some(s) = &c.slot {
                s.dropped(reason);
            }
        });
    }

    /// Sends a datagram that waited for `mac` (from the session's neighbour queue).
    pub fn send_resolved(
        &self,
        mac: EthernetAddress,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: &[u8],
    ) {
        self.if_cached(|st, c| {
            let Some(hop) = self.route(st, *dst.ip()) else {
                return;
            };
            let link = Hop {
                src_ip: *src.ip(),
                src_mac: hop.src_mac,
                dst_mac: mac,
                mtu: hop.mtu as usize,
            };
            if let Err(e) = self.emit(st, c, &link, src, dst, &[data], true, None) {
                crate::msock_debug!("send after resolution failed: errno {e}");
            }
        });
    }

    /// Resolution failed: the datagram to `dst` is dropped; a connected socket sees
    /// EHOSTUNREACH (as Linux reports the locally generated host-unreachable error).
    pub fn neighbour_failed(&self, dst: SocketAddrV4) {
        self.if_cached(|st, c| {
            if let Some(s) = &c.slot {
                s.dropped(DropReason::NeighbourUnreachable);
            }
            Self::error_for_peer(st, c, dst, libc::EHOSTUNREACH);
        });
    }

    /// A datagram the netserver reassembled for us.
    pub fn deliver_upcall(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: Vec<u8>) {
        self.if_cached(|st, c| {
            let len = payload.len();
            let delivered = st.ep.deliver(src, dst, payload);
            if let Some(s) = &c.slot {
                match delivered {
                    Ok(()) => s.datagram_in(len),
                    Err(reason) => s.dropped(reason),
                }
            }
            Self::sync_readiness(st, c);
        });
    }

    /// An ICMP error about a datagram we sent to `remote`: recorded for a connected socket
    /// whose peer it concerns (unconnected sockets ignore it, as Linux without IP_RECVERR).
    pub fn icmp_error(&self, remote: SocketAddrV4, errno: i32) {
        self.if_cached(|st, c| Self::error_for_peer(st, c, remote, errno));
    }

    fn family_addr(&self, a: SocketAddrV4) -> SocketAddr {
        super::relay::family_addr(self.domain, a)
    }

    pub fn recv(&self, bufs: &mut [&mut [u8]], flags: i32) -> Outcome<Received> {
        if self.detached() {
            return self.detached_outcome();
        }
        let peek = flags & libc::MSG_PEEK != 0;
        let nonblock = flags & libc::MSG_DONTWAIT != 0 || self.nonblocking.load(Ordering::Relaxed);
        let mut deadline: Option<Option<Instant>> = None;
        loop {
            let (c, timeo) = {
                let mut st = self.state.lock();
                let c = match self.cached(&st) {
                    Ok(c) => c,
                    Err(o) => return o,
                };
                if flags & libc::MSG_ERRQUEUE != 0 {
                    // No error queue (IP_RECVERR is not supported).
                    return Outcome::Error(libc::EAGAIN);
                }
                if let Some(e) = Self::take_error(&mut st, &c) {
                    return Outcome::Error(e);
                }
                Self::process(&mut st, &c);
                if let Some(info) = st.ep.recv(bufs, peek) {
                    Self::sync_readiness(&mut st, &c);
                    let len = if flags & libc::MSG_TRUNC != 0 {
                        info.full_len
                    } else {
                        info.copied
                    };
                    return Outcome::Done(Received {
                        len,
                        truncated: info.full_len > info.copied,
                        src: Some(self.family_addr(info.src)),
                    });
                }
                Self::sync_readiness(&mut st, &c);
                if nonblock {
                    return Outcome::Error(libc::EAGAIN);
                }
                (c, st.opts.rcvtimeo)
            };
            let deadline = *deadline.get_or_insert_with(|| timeo.map(|t| Instant::now() + t));
            let remaining = match deadline {
                Some(d) => match time_left(d) {
                    Some(r) => Some(r),
                    None => return Outcome::Error(libc::EAGAIN),
                },
                None => None,
            };
            // The first reader to sleep mutes the channel in the receive thread's epoll set and
            // the last one to wake unmutes it: a frame then wakes only the reader that will
            // process it inline (paper §3.2: the common path has one wake-up, not two).
            if self.blocked_readers.fetch_add(1, Ordering::AcqRel) == 0 {
                self.session.mute_socket(self.id, c.wake);
            }
            let slept = sys::poll(
                &[(c.prog.as_raw_fd(), libc::POLLIN), (c.wake, libc::POLLIN)],
                remaining,
            );
            if self.blocked_readers.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.session.unmute_socket(self.id, c.wake);
            }
            match slept {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if timeo.is_some() || !sys::all_handlers_restart() {
                        return Outcome::Error(libc::EINTR);
                    }
                }
                Err(e) => return Outcome::Error(errno_of(&e)),
            }
        }
    }

    pub fn getsockname(&self) -> Outcome<SocketAddr> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let st = self.state.lock();
        match self.cached(&st) {
            Ok(_) => Outcome::Done(self.family_addr(st.ep.local)),
            Err(o) => o,
        }
    }

    pub fn getpeername(&self) -> Outcome<SocketAddr> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let st = self.state.lock();
        match self.cached(&st) {
            Ok(_) => match st.ep.remote {
                Some(r) => Outcome::Done(self.family_addr(r)),
                None => Outcome::Error(libc::ENOTCONN),
            },
            Err(o) => o,
        }
    }

    pub fn getsockopt(&self, level: i32, name: i32) -> Outcome<OptValue> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.state.lock();
        let c = match self.cached(&st) {
            Ok(c) => c,
            Err(o) => return o,
        };
        if (level, name) == (libc::SOL_SOCKET, libc::SO_ERROR) {
            let e = st.ep.pending_error.take().unwrap_or(0);
            Self::sync_readiness(&mut st, &c);
            return Outcome::Done(OptValue::int(e));
        }
        match read_option(&st.opts, self.domain, level, name) {
            Some(v) => Outcome::Done(v),
            None => Outcome::Error(libc::ENOPROTOOPT),
        }
    }

    /// Undecided sockets: applied to the kernel socket first (it may end up the kernel's),
    /// then recorded. Cached sockets: recorded; unknown options are ENOPROTOOPT.
    pub fn setsockopt(&self, fd: RawFd, level: i32, name: i32, value: &[u8]) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.state.lock();
        match st.mode {
            Mode::Undecided => {
                if let Err(e) = sys::setsockopt(fd, level, name, value) {
                    return Outcome::Error(errno_of(&e));
                }
                let limits = self.session.limits;
                let _ = apply_option(&mut st.opts, &limits, self.domain, level, name, value);
                Outcome::Done(())
            }
            Mode::Cached(_) => {
                if (level, name) == (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) {
                    // Linux: not after bind.
                    return Outcome::Error(libc::EINVAL);
                }
                let limits = self.session.limits;
                match apply_option(&mut st.opts, &limits, self.domain, level, name, value) {
                    Ok(true) => {
                        let rcvbuf = st.opts.rcvbuf;
                        st.ep.queue.set_limit(rcvbuf);
                        Outcome::Done(())
                    }
                    Ok(false) => Outcome::Error(libc::ENOPROTOOPT),
                    Err(e) => Outcome::Error(e),
                }
            }
            Mode::Kernel => Outcome::Bypass,
            Mode::Closed => Outcome::Error(libc::EBADF),
        }
    }

    /// FIONREAD: the size of the next datagram (0 if none).
    pub fn fionread(&self) -> Outcome<i32> {
        if self.detached() {
            return Outcome::Error(libc::EBADFD);
        }
        let mut st = self.state.lock();
        let c = match self.cached(&st) {
            Ok(c) => c,
            Err(o) => return o,
        };
        Self::process(&mut st, &c);
        Self::sync_readiness(&mut st, &c);
        Outcome::Done(st.ep.next_len().min(i32::MAX as usize) as i32)
    }

    /// SIOCOUTQ: sends complete synchronously into the channel, nothing is queued.
    pub fn outq(&self) -> Outcome<i32> {
        let st = self.state.lock();
        match self.cached(&st) {
            Ok(_) => Outcome::Done(0),
            Err(o) => o,
        }
    }

    /// O_NONBLOCK as msock tracks it (cached sockets).
    pub fn set_nonblocking(&self, fd: RawFd, on: bool) -> Outcome<()> {
        let st = self.state.lock();
        if let Err(o) = self.cached(&st) {
            return o;
        }
        self.nonblocking.store(on, Ordering::Relaxed);
        // Keep the placeholder's own flag in step so F_GETFL and kernel views agree.
        let flags = sys::get_status_flags(fd).unwrap_or(libc::O_RDWR);
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        let _ = sys::set_status_flags(fd, flags);
        Outcome::Done(())
    }

    /// F_GETFL of a cached socket: the descriptor's flags with msock's O_NONBLOCK.
    pub fn status_flags(&self, fd: RawFd) -> Outcome<i32> {
        let st = self.state.lock();
        if let Err(o) = self.cached(&st) {
            return o;
        }
        let flags = match sys::get_status_flags(fd) {
            Ok(f) => f,
            Err(e) => return Outcome::Error(errno_of(&e)),
        };
        let nb = if self.nonblocking.load(Ordering::Relaxed) {
            libc::O_NONBLOCK
        } else {
            0
        };
        Outcome::Done((flags & !libc::O_NONBLOCK) | nb)
    }
}

/// Time left before `deadline`; `None` once it has passed.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|r| !r.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(bytes: &[u8; 16]) -> SockAddrIn {
        SockAddrIn::parse(bytes)
    }

    #[test]
    fn parses_c_addresses() {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&7u16.to_be_bytes());
        b[4..8].copy_from_slice(&[198, 18, 0, 1]);
        assert_eq!(v4(&b), SockAddrIn::Inet("198.18.0.1:7".parse().unwrap()));
        assert_eq!(SockAddrIn::parse(&b[..15]), SockAddrIn::Invalid);
        assert_eq!(SockAddrIn::parse(&b[..1]), SockAddrIn::Invalid);

        let mut b6 = [0u8; 28];
        b6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        b6[2..4].copy_from_slice(&9u16.to_be_bytes());
        b6[8..24].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets());
        match SockAddrIn::parse(&b6) {
            SockAddrIn::Inet6(a) => {
                assert_eq!(a.port(), 9);
                assert_eq!(a.ip().to_ipv4_mapped(), Some(Ipv4Addr::new(198, 18, 0, 1)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(SockAddrIn::parse(&b6[..24]), SockAddrIn::Inet6(_)));
        assert_eq!(SockAddrIn::parse(&b6[..20]), SockAddrIn::Invalid);

        let unspec = (libc::AF_UNSPEC as u16).to_ne_bytes();
        assert_eq!(SockAddrIn::parse(&unspec), SockAddrIn::Unspec);
        let unix = (libc::AF_UNIX as u16).to_ne_bytes();
        assert_eq!(SockAddrIn::parse(&unix), SockAddrIn::Other(libc::AF_UNIX));
    }

    #[test]
    fn options_follow_linux() {
        let limits = BufferLimits::LINUX;
        let mut o = Options::new(&limits);
        let int = |v: i32| v.to_ne_bytes();
        let set = |o: &mut Options, level: i32, name: i32, value: &[u8]| {
            apply_option(o, &limits, libc::AF_INET, level, name, value)
        };
        assert_eq!(
            set(&mut o, libc::SOL_SOCKET, libc::SO_RCVBUF, &int(4096)),
            Ok(true)
        );
        assert_eq!(o.rcvbuf, 8192, "Linux doubles SO_RCVBUF");
        set(&mut o, libc::SOL_SOCKET, libc::SO_RCVBUF, &int(1)).unwrap();
        assert_eq!(o.rcvbuf, MIN_RCVBUF);
        set(&mut o, libc::SOL_SOCKET, libc::SO_RCVBUF, &int(1 << 30)).unwrap();
        assert_eq!(o.rcvbuf, limits.rmem_max * 2, "capped by rmem_max");
        assert_eq!(
            set(&mut o, libc::SOL_SOCKET, libc::SO_RCVBUF, &[1, 0]),
            Err(libc::EINVAL)
        );
        assert_eq!(
            set(&mut o, libc::IPPROTO_IP, libc::IP_TTL, &int(0)),
            Err(libc::EINVAL)
        );
        set(&mut o, libc::IPPROTO_IP, libc::IP_TTL, &[9]).unwrap();
        assert_eq!(o.tx.ttl, 9, "a one-byte IP option is accepted");
        set(&mut o, libc::IPPROTO_IP, libc::IP_TTL, &int(-1)).unwrap();
        assert_eq!(o.tx.ttl, 64);
        set(&mut o, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &int(2)).unwrap();
        assert_eq!(o.tx.pmtudisc, PmtuDisc::Do);
        assert_eq!(
            read_option(&o, libc::AF_INET, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            Some(OptValue::int(2))
        );
        assert_eq!(
            set(&mut o, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &int(1)),
            Ok(false)
        );
        assert_eq!(
            set(&mut o, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &int(1)),
            Ok(false)
        );
        assert_eq!(
            apply_option(
                &mut o,
                &limits,
                libc::AF_INET6,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                &int(1)
            ),
            Ok(true)
        );

        let mut tv = [0u8; 16];
        tv[0..8].copy_from_slice(&1i64.to_ne_bytes());
        tv[8..16].copy_from_slice(&500_000i64.to_ne_bytes());
        set(&mut o, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).unwrap();
        assert_eq!(o.rcvtimeo, Some(Duration::from_millis(1500)));
        assert_eq!(
            read_option(&o, libc::AF_INET, libc::SOL_SOCKET, libc::SO_RCVTIMEO)
                .unwrap()
                .bytes,
            tv
        );
        tv[8..16].copy_from_slice(&1_000_000i64.to_ne_bytes());
        assert_eq!(
            set(&mut o, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv),
            Err(libc::EDOM)
        );
        let zero = [0u8; 16];
        set(&mut o, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &zero).unwrap();
        assert_eq!(o.rcvtimeo, None, "zero timeval = no timeout");

        assert_eq!(
            read_option(&o, libc::AF_INET6, libc::SOL_SOCKET, libc::SO_TYPE),
            Some(OptValue::int(libc::SOCK_DGRAM))
        );
        assert_eq!(
            read_option(&o, libc::AF_INET6, libc::SOL_SOCKET, libc::SO_DOMAIN),
            Some(OptValue::int(libc::AF_INET6))
        );
        assert_eq!(
            read_option(&o, libc::AF_INET, libc::SOL_SOCKET, libc::SO_PROTOCOL),
            Some(OptValue::int(libc::IPPROTO_UDP))
        );
        assert_eq!(
            read_option(&o, libc::AF_INET, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            None
        );
    }
}
