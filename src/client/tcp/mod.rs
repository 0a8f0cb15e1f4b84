//! TCP sockets of libmsock (paper §3.1 endpoint management and migration, §3.2 threads and
//! locks, §4.1): lifecycle, the cached connection running in the process, the flushed one
//! reached through the netserver, and the upcalls that move it between the two.
//!
//! **Lifecycle.** `socket(AF_INET|AF_INET6, SOCK_STREAM)` makes a real kernel socket that
//! holds the program's fd number (**undecided**; nothing is registered yet). Options set then
//! are applied to the kernel socket *and* recorded (a template engine takes the TCP ones, the
//! port-table ones go into `Bind`). The first bind/connect/listen decides: bound to msock's
//! address or the wildcard (AF_INET6: `::` without IPV6_V6ONLY, or v4-mapped), or connecting
//! to a destination routed through msock's interface → msock's: the endpoint is registered
//! (`Socket`, then `Bind`/`Connect`) and a socketpair placeholder is `dup3`ed over every fd
//! number (FD_CLOEXEC and O_NONBLOCK kept); anything else (loopback, other interfaces, native
//! IPv6) → the kernel's, and the call passes through.
//!
//! **Where the connection runs.** After connect or accept it is **cached**: the engine
//! ([`io::Cached`]) runs here and its frames go out on the socket's own channel, no netserver
//! hop. [`TcpSocket::flush`] moves it into the netserver (image + channel, as
//! `TcpSession::flush`); while **flushed** every call is a request (`Send`, `Recv`, `Shutdown`,
//! options) and readiness comes from `TcpReady` upcalls. [`TcpSocket::cache`] brings it back.
//! The netserver's `Recall` upcall flushes it in the receive thread; `SoleHolder` caches it
//! again at the next call. A request answered `ERR_RECALLING` (another holder has the
//! connection cached and is being asked to flush it) is retried for up to
//! [`RECALL_PATIENCE`]. Listeners live in the netserver (`Listen`; the `Acceptable` upcall
//! marks the placeholder readable) and `accept` gets a cached connection (`Accepted`) or a
//! flushed one (`AcceptedDeferred`, SO_CONCURRENT_SERVER).
//!
//! **Readiness** is mirrored on the placeholder ([`readiness`]) after every upper-half call
//! and every bottom-half run, under the socket lock.
//!
//! **Threads** (paper §3.2). Upper half: the application's threads. Bottom half: the
//! session's receive thread (epoll over the channels of cached sockets and the upcall socket;
//! it locks the socket, reads a batch into the engine, transmits and syncs readiness) and the
//! timer thread (`client::timer`; each socket arms it with its engine's `poll_at`). A caller
//! blocked in a cached socket processes its own channel inline ([`blocking`]): the receive
//! thread's epoll mutes the channel while someone is blocked, so a frame wakes one thread.
//!
//! **Locks.** The paper's `syslock` (upper-half structures) and `intrlock` (structures the
//! bottom half changes) are one mutex per socket here, [`TcpSocket`]'s state lock: every
//! structure of a socket is touched by both halves (the engine by calls, frames and timers),
//! so a second lock would always be taken with the first. Fig. 4's dance (release `syslock`
//! before `cond_wait`, reacquire in order) becomes: a blocking call releases the state lock,
//! sleeps in `poll` on the placeholder and channel with no lock held, and takes the lock again
//! from scratch. The order, never reversed:
//! fd table → socket state → channel → session control (one request at a time) → timer heap.
//! No thread holds two sockets' state locks at once (`accept` creates the new socket after it
//! released the listener's) nor any lock while it sleeps. The receive thread looks a socket
//! up in the session's map (map lock released before the socket's is taken).
//!
//! **Netserver gone** (upcall socket at EOF): every socket is marked dead: reads fail with
//! ECONNRESET, writes with EPIPE, the placeholder shows HUP; a cached connection sends its
//! peer a reset. The program's other descriptors are untouched.
#![deny(unsafe_code)]

pub mod blocking;
pub mod io;
pub mod readiness;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant as StdInstant};

use super::forksafe::{Mutex, MutexGuard};

use super::Outcome;
use super::crash_file::CrashFile;
use super::inherit::{InheritedKind, InheritedSocket};
use super::relay::RelayedSocket;
use super::runtime::{self, Session, SessionCell};
use super::sys;
use super::tcp_session::{IcmpReport, TcpLink, import_image};
use super::timer::Timed;
use super::udp::{Received, SockAddrIn};
use crate::channel::{ChannelWaker, PacketChannel};
use crate::control::{
    ERR_RECALLING, EndpointId, Family, MAX_TRANSFER, Reply, Request, SOL_MSOCK, ShutdownHow,
    SockKind, TcpReady,
};
use crate::stack::Instant;
use crate::stack::tcp::connection::{InitialSequence, RecvError, SendError, State as TcpState};
use crate::stack::tcp::connection::{TcpConfig, TcpConnection};
use crate::stack::tcp::sockopt::{self, SockoptLimits};
use crate::wire::tcp::TcpSeqNumber;
use io::Cached;
use readiness::{Mirror, Want};

/// How long a request answered `ERR_RECALLING` is retried.
pub const RECALL_PATIENCE: Duration = Duration::from_secs(5);
/// How long `connect` waits for the next hop's MAC address.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// Where the socket is.
enum Mode {
    /// A kernel socket holds the fd number; nothing registered yet.
    Undecided,
    /// Registered and bound through the netserver (the port's channel, until listen/connect).
    Bound { channel: Option<Box<PacketChannel>> },
    /// The netserver listens for us.
    Listening,
    /// The connection runs in this process.
    Cached(Box<Cached>),
    /// The connection runs in the netserver; `ready` are the [`TcpReady`] bits last known.
    Flushed { ready: u8 },
    /// Handed to the kernel; the fd table no longer refers to it.
    Kernel,
    /// Released (last descriptor closed).
    Closed,
}

/// Progress of a non-blocking connect as `connect(2)` reports it again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ConnectPhase {
    Idle,
    InProgress,
    /// Established and reported once (`0`); from now on EISCONN.
    Reported,
}

struct State {
    mode: Mode,
    id: Option<EndpointId>,
    local: Option<SocketAddrV4>,
    remote: Option<SocketAddrV4>,
    /// Program descriptor numbers referring to this socket.
    fds: Vec<RawFd>,
    mirror: Option<Mirror>,
    /// Options set before a connection exists, applied to an engine that never runs: its
    /// config seeds the connection; `getsockopt` reads it meanwhile.
    template: TcpConnection,
    /// The raw TCP-level options set, replayed onto accepted connections (they inherit the
    /// listener's options, as Linux's do).
    replay: Vec<(i32, i32, Vec<u8>)>,
    reuse_addr: bool,
    reuse_port: bool,
    v6only: bool,
    concurrent_server: bool,
    rcvtimeo: Option<Duration>,
    sndtimeo: Option<Duration>,
    connect: ConnectPhase,
    /// Listener: connections are waiting (an Acceptable upcall not older than our last
    /// Accept request).
    acceptable: bool,
    /// `Accept` requests sent (compared with `Upcall::Acceptable::seq`).
    accepts_sent: u32,
    /// The earliest deadline armed with the timer thread.
    armed: Option<StdInstant>,
    /// The netserver has gone.
    dead: bool,
    /// The netserver said this process is the only holder again: cache at the next call.
    sole_holder: bool,
    /// Accepted through a `SO_CONCURRENT_SERVER` listener and not cached anywhere yet
    /// (delayed caching, paper §4.2): a fork child caches it at its first use.
    deferred: bool,
    /// shutdown(SHUT_RD/SHUT_WR) done (flushed sockets keep it for readiness).
    shut_rd: bool,
    shut_wr: bool,
}

/// One TCP socket.
pub struct TcpSocket {
    /// The session this socket's requests go through: the one that created it, or the
    /// child's after a fork (`adopt_session`). Always a leaked `&'static Session`.
    session: SessionCell,
    /// AF_INET or AF_INET6.
    pub domain: i32,
    id: AtomicU64,
    nonblocking: AtomicBool,
    /// Threads blocked in a call with the channel muted in the receive thread.
    blocked: AtomicU32,
    me: Weak<TcpSocket>,
    state: Mutex<State>,
}

/// A socket's state lock held by the forking thread from the flush through the `Fork`
/// request to the real `fork` ([`TcpSocket::hold_for_fork`]): nothing changes the socket
/// meanwhile.
pub struct ForkHold<'a>(MutexGuard<'a, State>);

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A connection config for msock's interface (MSS from its MTU), otherwise Linux's defaults.
fn base_config(session: &Session) -> TcpConfig {
    let mut config = TcpConfig::default();
    if let Some(i) = session.region.interface() {
        config.mss = i.mtu.saturating_sub(40).max(536);
    }
    config
}

fn template(session: &Session) -> TcpConnection {
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    TcpConnection::connect(
        base_config(session),
        any,
        any,
        InitialSequence {
            iss: TcpSeqNumber(0),
            ts_offset: 0,
        },
        Instant::ZERO,
    )
}

fn limits(session: &Session) -> SockoptLimits {
    SockoptLimits {
        rmem_max: session.limits.rmem_max,
        wmem_max: session.limits.wmem_max,
    }
}

fn int_arg(v: &[u8]) -> Result<i32, i32> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(libc::EINVAL)?;
    Ok(i32::from_ne_bytes(b))
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

fn timeval_bytes(t: Option<Duration>) -> Vec<u8> {
    let t = t.unwrap_or(Duration::ZERO);
    let mut v = (t.as_secs() as i64).to_ne_bytes().to_vec();
    v.extend_from_slice(&i64::from(t.subsec_micros()).to_ne_bytes());
    v
}

/// How an address given to bind/connect maps onto msock (IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An IPv4 address msock may serve.
    V4(SocketAddrV4),
    /// Not msock's (native IPv6, another family): the kernel decides, errors included.
    Kernel,
    /// Malformed for this socket (EINVAL/EAFNOSUPPORT).
    Invalid(i32),
}

/// The IPv4 address `addr` names for a socket of `domain` (`v6only`: IPV6_V6ONLY set).
pub fn target(domain: i32, v6only: bool, addr: &SockAddrIn) -> Target {
    match (domain, addr) {
        (_, SockAddrIn::Invalid) => Target::Invalid(libc::EINVAL),
        (libc::AF_INET, SockAddrIn::Inet(a)) => Target::V4(*a),
        (libc::AF_INET6, SockAddrIn::Inet6(a)) if !v6only => {
            if a.ip().is_unspecified() {
                Target::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.port()))
            } else {
                match a.ip().to_ipv4_mapped() {
                    Some(ip) => Target::V4(SocketAddrV4::new(ip, a.port())),
                    None => Target::Kernel,
                }
            }
        }
        (libc::AF_INET, SockAddrIn::Inet6(_)) => Target::Invalid(libc::EAFNOSUPPORT),
        _ => Target::Kernel,
    }
}

/// The bind decision: msock's for its own address or the wildcard.
pub fn bind_is_ours(local: Ipv4Addr, ours: Option<Ipv4Addr>) -> bool {
    local.is_unspecified() || Some(local) == ours
}

/// The connect decision: msock's when the destination is routed through its interface
/// (`routed`), never for loopback, the wildcard or multicast.
pub fn connect_is_ours(dst: Ipv4Addr, routed: bool) -> bool {
    !(dst.is_loopback() || dst.is_unspecified() || dst.is_multicast() || dst.is_broadcast())
        && routed
}

/// The readiness a flushed connection shows, from its [`TcpReady`] bits.
fn want_from_bits(bits: u8) -> Want {
    Want {
        readable: bits & (TcpReady::READABLE | TcpReady::ERROR | TcpReady::READ_HUP) != 0,
        writable: bits & (TcpReady::WRITABLE | TcpReady::ERROR) != 0,
        read_hup: bits & TcpReady::READ_HUP != 0,
        hup: bits & TcpReady::HUP != 0,
    }
}

impl State {
    /// What the placeholder should show now.
    fn want(&self) -> Want {
        if self.dead {
            return Want {
                readable: true,
                writable: true,
                read_hup: true,
                hup: true,
            };
        }
        match &self.mode {
            Mode::Cached(c) => {
                let r = c.conn.readiness();
                Want {
                    readable: r.readable,
                    writable: r.writable,
                    read_hup: r.read_hup,
                    hup: r.hup,
                }
            }
            Mode::Flushed { ready } => want_from_bits(*ready),
            Mode::Listening => Want {
                readable: self.acceptable,
                ..Want::default()
            },
            Mode::Bound { .. } | Mode::Undecided | Mode::Kernel | Mode::Closed => Want {
                writable: true,
                ..Want::default()
            },
        }
    }

    fn sync(&mut self, more_data: bool) {
        let want = self.want();
        if let Some(m) = self.mirror.as_mut() {
            m.sync(want, more_data);
        }
    }

    fn cached_mut(&mut self) -> Option<&mut Cached> {
        match &mut self.mode {
            Mode::Cached(c) => Some(c),
            _ => None,
        }
    }
}

impl TcpSocket {
    /// An undecided socket on the kernel socket `fd`.
    pub fn new(session: &'static Session, domain: i32, fd: RawFd) -> Arc<TcpSocket> {
        TcpSocket::with_state(session, domain, Mode::Undecided, vec![fd], None)
    }

    fn with_state(
        session: &'static Session,
        domain: i32,
        mode: Mode,
        fds: Vec<RawFd>,
        id: Option<EndpointId>,
    ) -> Arc<TcpSocket> {
        Arc::new_cyclic(|me| TcpSocket {
            session: SessionCell::new(session),
            domain,
            id: AtomicU64::new(id.unwrap_or(0)),
            nonblocking: AtomicBool::new(false),
            blocked: AtomicU32::new(0),
            me: me.clone(),
            state: Mutex::new(State {
                mode,
                id,
                local: None,
                remote: None,
                fds,
                mirror: None,
                template: template(session),
                replay: Vec::new(),
                reuse_addr: false,
                reuse_port: false,
                v6only: false,
                concurrent_server: false,
                rcvtimeo: None,
                sndtimeo: None,
                connect: ConnectPhase::Idle,
                acceptable: false,
                accepts_sent: 0,
                armed: None,
                dead: false,
                sole_holder: false,
                deferred: false,
                shut_rd: false,
                shut_wr: false,
            }),
        })
    }

    /// The netserver's endpoint id (None while undecided).
    pub fn id(&self) -> Option<EndpointId> {
        match self.id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    fn session(&self) -> &'static Session {
        self.session.get()
    }

    fn detached(&self) -> bool {
        !self.session().is_current()
    }

    /// Served by msock right now (cached or flushed, listening, bound).
    pub fn is_msock(&self) -> bool {
        !self.detached()
            && !matches!(
                self.state.lock().mode,
                Mode::Undecided | Mode::Kernel | Mode::Closed
            )
    }

    /// The connection runs in this process.
    pub fn is_cached(&self) -> bool {
        !self.detached() && {
            let st = self.state.lock();
            // A fork child's copy of its parent's cached connection is dead, not cached here.
            matches!(st.mode, Mode::Cached(_)) && !st.dead
        }
    }

    /// The connection runs in the netserver.
    pub fn is_flushed(&self) -> bool {
        matches!(self.state.lock().mode, Mode::Flushed { .. })
    }

    /// Handed to the kernel (the caller drops it from the fd table).
    pub fn is_kernel(&self) -> bool {
        matches!(self.state.lock().mode, Mode::Kernel)
    }

    pub fn add_fd(&self, fd: RawFd) {
        let mut st = self.state.lock();
        if !st.fds.contains(&fd) {
            st.fds.push(fd);
        }
    }

    /// Removes a descriptor number; true if it was the last one.
    pub fn remove_fd(&self, fd: RawFd) -> bool {
        let mut st = if self.detached() {
            match self.state.try_lock_for(Duration::from_millis(10)) {
                Some(st) => st,
                None => return false,
            }
        } else {
            self.state.lock()
        };
        st.fds.retain(|&f| f != fd);
        st.fds.is_empty()
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.state.lock().fds.clone()
    }

    fn now(&self) -> Instant {
        runtime::now()
    }

    /// A request with the `ERR_RECALLING` retry: another holder has the connection cached and
    /// is flushing it; the netserver's `TcpReady` (or a short sleep) says when to ask again.
    fn request(
        &self,
        req: &Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), i32> {
        let give_up = StdInstant::now() + RECALL_PATIENCE;
        loop {
            match self.session().request(req, fds) {
                Err(ERR_RECALLING) if StdInstant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => return other,
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Timer and bottom half

    /// Arms the timer thread with the engine's next deadline, if earlier than the armed one.
    fn arm(&self, st: &mut State) {
        let Some(c) = st.cached_mut() else { return };
        let Some(at) = c.conn.poll_at() else { return };
        let now = self.now();
        let std_now = StdInstant::now();
        let mut when =
            std_now + Duration::from_micros(at.saturating_duration_since(now).as_micros());
        if at <= now {
            // Output pending now (the channel was full): retry shortly, never spin.
            when = std_now + Duration::from_millis(1);
        }
        if st.armed.is_some_and(|a| a <= when && a > std_now) {
            return;
        }
        st.armed = Some(when);
        let me: Weak<dyn Timed> = self.me.clone();
        self.session().timer.arm(when, me);
    }

    /// After any change: readiness mirrored, timer armed.
    fn settle(&self, st: &mut State, more_data: bool) {
        st.sync(more_data);
        self.arm(st);
    }

    /// Bottom half (receive thread, busy poll): processes the channel, transmits, mirrors.
    pub fn drive(&self) {
        if self.detached() {
            return;
        }
        let mut st = self.state.lock();
        let now = self.now();
        let more = match st.cached_mut() {
            Some(c) => c.pump(self.session(), now),
            None => return,
        };
        self.settle(&mut st, more);
    }

    /// `Acceptable` upcall: the listener has connections waiting.
    pub fn on_acceptable(&self, seq: u32) {
        let mut st = self.state.lock();
        // Older than our last Accept: that request saw the queue after this was sent. (An
        // image that inherited the listener across execve starts counting at 0, so for it
        // every upcall counts as fresh.)
        if matches!(st.mode, Mode::Listening) && seq >= st.accepts_sent {
            st.acceptable = true;
            st.sync(true);
        }
    }

    /// `TcpReady` upcall: bits rose on the flushed connection.
    pub fn on_ready(&self, events: u8) {
        let mut st = self.state.lock();
        if events == TcpReady::RETRY {
            // Not readiness: a recall this process waited for is over (`ERR_RECALLING`);
            // waiters poll the placeholder, so show what we know again.
            st.sync(false);
            return;
        }
        if let Mode::Flushed { ready } = &mut st.mode {
            *ready |= events;
            st.sync(events & TcpReady::READABLE != 0);
        }
    }

    /// `Recall` upcall: the netserver wants the connection (paper §3.1 "recall").
    pub fn on_recall(&self) {
        if let Err(e) = self.flush() {
            crate::msock_debug!("recall of endpoint {:?} failed: errno {e}", self.id());
        }
    }

    /// `SoleHolder` upcall: this process alone holds the connection again; it is cached at
    /// the next call (not here: the receive thread must not wait for a Cache reply while the
    /// netserver may be sending it upcalls).
    pub fn on_sole_holder(&self) {
        let mut st = self.state.lock();
        if matches!(st.mode, Mode::Flushed { .. }) {
            st.sole_holder = true;
        }
    }

    /// `TcpIcmpError` upcall.
    pub fn on_icmp(&self, report: &IcmpReport) {
        let mut st = self.state.lock();
        let now = self.now();
        if let Some(c) = st.cached_mut() {
            c.icmp(self.session(), now, report);
            self.settle(&mut st, false);
        }
    }

    /// The netserver has gone: reads fail with ECONNRESET, writes with EPIPE, HUP shown; a
    /// cached connection resets its peer.
    pub fn netserver_gone(&self) {
        let mut st = self.state.lock();
        if matches!(st.mode, Mode::Undecided | Mode::Kernel | Mode::Closed) {
            return;
        }
        let now = self.now();
        if let Some(c) = st.cached_mut() {
            c.conn.abort(now);
            c.transmit(self.session(), now);
        }
        st.dead = true;
        st.sync(false);
    }

    // -----------------------------------------------------------------------------------------
    // fork and exec (`client::process`)

    /// Before `fork`, under the held lock: flushes the connection if it runs in this process
    /// (not a fork child's dead copy of its parent's, nor one of a session not this
    /// process's). A socket that is not cached is left as it is (`Ok`).
    pub fn flush_for_fork(&self, hold: &mut ForkHold<'_>) -> Result<(), i32> {
        if self.detached() || hold.0.dead {
            return Ok(());
        }
        self.flush_locked(&mut hold.0)
    }

    /// The endpoint a fork child should hold too (`Request::Fork`), under the held lock:
    /// every msock endpoint this process holds and has not cached (the caller flushed the
    /// cached ones first, under the same hold, so none is cached again meanwhile).
    pub fn shareable_id(&self, hold: &ForkHold<'_>) -> Option<EndpointId> {
        if self.detached() {
            return None;
        }
        let st = &hold.0;
        match st.mode {
            Mode::Bound { .. } | Mode::Listening | Mode::Flushed { .. } if !st.dead => st.id,
            _ => None,
        }
    }

    /// The state lock, held by the forking thread across `fork` (`client::forksafe`) and
    /// released in both processes after it.
    pub fn hold_for_fork(&self) -> ForkHold<'_> {
        ForkHold(self.state.lock())
    }

    /// In a fork child: goes on through the child's session (a holder of this endpoint since
    /// the parent's `Fork`). A deferred connection is cached into the child at its first use.
    pub fn adopt_session(&self, session: &'static Session) {
        self.session.set(session);
        let mut st = self.state.lock();
        let Some(id) = st.id else { return };
        if matches!(st.mode, Mode::Cached(_)) {
            // Its channel and engine are the parent's: not ours to run.
            st.dead = true;
            st.sync(false);
            return;
        }
        st.armed = None;
        // The netserver counts this session's Accept requests afresh.
        st.accepts_sent = 0;
        if st.deferred && matches!(st.mode, Mode::Flushed { .. }) {
            st.sole_holder = true;
        }
        if let Some(me) = self.me.upgrade()
            && let Err(e) = session.add_tcp_socket(id, &me, None)
        {
            crate::msock_debug!("fork child: endpoint {id} not registered: {e}");
        }
    }

    /// What a new program image needs to go on with this socket (`client::inherit`); `None`
    /// for a socket that is not msock's or is cached (the caller flushes first).
    pub fn inherit_record(&self) -> Option<InheritedSocket> {
        let st = self.state.lock();
        let kind = match st.mode {
            Mode::Flushed { .. } => InheritedKind::Connection,
            Mode::Listening => InheritedKind::Listener,
            Mode::Bound { .. } => InheritedKind::Unconnected,
            _ => return None,
        };
        let mirror = st.mirror.as_ref()?;
        let (_, ino) = sys::identity(mirror.prog_raw()).ok()?;
        Some(InheritedSocket {
            fds: st.fds.clone(),
            lib: mirror.lib_raw(),
            ino,
            id: st.id?,
            kind,
            domain: self.domain,
            local: st.local,
            remote: st.remote,
        })
    }

    /// A socket a previous program image of this process flushed and described
    /// (`client::process::adopt_inherited`). A connection is cached again at its first use
    /// if this process turns out to be its only holder.
    #[allow(unsafe_code)]
    pub fn from_inherited(
        session: &'static Session,
        rec: &InheritedSocket,
    ) -> Result<Arc<TcpSocket>, i32> {
        use std::os::fd::FromRawFd;
        sys::get_fd_flags(rec.lib).map_err(|e| errno_of(&e))?;
        // SAFETY: the library end was left open for this image by the previous one, which
        // owned it (checked open above); this image has no other owner of that number. Owned
        // first, so any failure below closes it.
        let lib = unsafe { OwnedFd::from_raw_fd(rec.lib) };
        let first = *rec.fds.first().ok_or(libc::EBADF)?;
        let prog = sys::dupfd(first, 0, true).map_err(|e| errno_of(&e))?;
        // SAFETY: `dupfd` just returned this new descriptor; nothing else owns it.
        let prog = sys::own(unsafe { OwnedFd::from_raw_fd(prog) });
        let _ = sys::set_fd_flags(lib.as_raw_fd(), libc::FD_CLOEXEC);
        let mirror = Mirror::adopt(prog, lib).map_err(|e| errno_of(&e))?;
        let mode = match rec.kind {
            // What is pending is unknown here: report both until a request says otherwise
            // (its EAGAIN re-arms the netserver's TcpReady).
            InheritedKind::Connection => Mode::Flushed {
                ready: TcpReady::READABLE | TcpReady::WRITABLE,
            },
            InheritedKind::Listener => Mode::Listening,
            InheritedKind::Unconnected => Mode::Bound { channel: None },
        };
        let connection = rec.kind == InheritedKind::Connection;
        let listener = rec.kind == InheritedKind::Listener;
        let sock = TcpSocket::with_state(session, rec.domain, mode, rec.fds.clone(), Some(rec.id));
        let nonblocking = sys::get_status_flags(first).is_ok_and(|f| f & libc::O_NONBLOCK != 0);
        sock.nonblocking.store(nonblocking, Ordering::Relaxed);
        {
            let mut st = sock.state.lock();
            st.mirror = Some(mirror);
            st.local = rec.local;
            st.remote = rec.remote;
            st.sole_holder = connection;
            st.acceptable = listener;
            if connection {
                st.connect = ConnectPhase::Reported;
            }
            session
                .add_tcp_socket(rec.id, &sock, None)
                .map_err(|e| errno_of(&e))?;
            st.sync(false);
        }
        Ok(sock)
    }

    // -----------------------------------------------------------------------------------------
    // Migration (paper §3.1)

    /// Moves the cached connection into the netserver; it goes on through requests. A socket
    /// that is not cached is left as it is (`Ok`).
    pub fn flush(&self) -> Result<(), i32> {
        let mut st = self.state.lock();
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut State) -> Result<(), i32> {
        let Some(id) = st.id else { return Ok(()) };
        let now = self.now();
        let Mode::Cached(c) = &mut st.mode else {
            return Ok(());
        };
        if c.conn.state() == TcpState::Closed {
            return Ok(());
        }
        let wake = c.link.channel().map(|ch| ch.as_fd().as_raw_fd());
        let (image, channel) = c
            .link
            .prepare_flush(&mut c.conn, now)
            .map_err(|e| errno_of(&e))?;
        let ready = {
            let r = c.conn.readiness();
            let mut bits = 0;
            for (on, bit) in [
                (r.readable, TcpReady::READABLE),
                (r.writable, TcpReady::WRITABLE),
                (r.read_hup, TcpReady::READ_HUP),
                (r.hup, TcpReady::HUP),
                (r.error, TcpReady::ERROR),
            ] {
                if on {
                    bits |= bit;
                }
            }
            bits
        };
        let file =
            crate::control::image_memfd(&image, c"msock-tcp-flush").map_err(|e| errno_of(&e))?;
        let request = Request::Flush {
            id,
            len: image.len() as u64,
            rx_cursor: channel.as_ref().map_or(0, |(_, cursor)| *cursor),
        };
        let mut fds = vec![file.as_fd()];
        if let Some((ch, _)) = channel.as_ref() {
            fds.push(ch.as_fd());
        }
        if let Some(fd) = wake {
            self.session().unwatch(fd);
        }
        match self.session().request(&request, &fds) {
            Ok(_) => {
                st.mode = Mode::Flushed { ready };
                st.armed = None;
                st.sync(false);
                Ok(())
            }
            Err(e) => {
                // The netserver refused: the connection stays here on its channel.
                if let (Mode::Cached(c), Some((ch, _))) = (&mut st.mode, channel) {
                    let fd = ch.as_fd().as_raw_fd();
                    c.link.set_channel(Some(ch));
                    if let Some(me) = self.me.upgrade() {
                        let _ = self.session().add_tcp_socket(id, &me, Some(fd));
                    }
                }
                Err(e)
            }
        }
    }

    /// Brings the flushed connection back into this process. A socket that is not flushed is
    /// left as it is (`Ok`).
    pub fn cache(&self) -> Result<(), i32> {
        let mut st = self.state.lock();
        self.cache_locked(&mut st)
    }

    fn cache_locked(&self, st: &mut State) -> Result<(), i32> {
        let (Some(id), Mode::Flushed { .. }) = (st.id, &st.mode) else {
            return Ok(());
        };
        st.sole_holder = false;
        let (reply, fds) = self.request(&Request::Cache { id }, &[])?;
        let Reply::Cached { ring, len } = reply else {
            return Err(libc::EPROTO);
        };
        let mut fds = fds.into_iter();
        let (Some(channel_fd), Some(image_fd)) = (fds.next(), fds.next()) else {
            return Err(libc::EPROTO);
        };
        let now = self.now();
        let conn = import_image(image_fd, len, now).map_err(|e| errno_of(&e))?;
        let channel = PacketChannel::from_fd(channel_fd, ring).map_err(|e| errno_of(&e))?;
        let wake = channel.as_fd().as_raw_fd();
        let link = TcpLink::new(
            self.session().region.clone(),
            Some(channel),
            conn.local().port(),
        )
        .map_err(|e| errno_of(&e))?;
        st.mode = Mode::Cached(Box::new(Cached { conn, link }));
        if let Some(me) = self.me.upgrade() {
            self.session()
                .add_tcp_socket(id, &me, Some(wake))
                .map_err(|e| errno_of(&e))?;
        }
        let more = st.cached_mut().is_some_and(|c| c.pump(self.session(), now));
        self.settle(st, more);
        Ok(())
    }

    /// The state lock, the connection cached again first if the netserver said this process
    /// is its only holder (paper §3.1: "cached again when a close leaves a single holder").
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock();
        if st.sole_holder && !st.dead {
            let _ = self.cache_locked(&mut st);
        }
        st
    }

    // -----------------------------------------------------------------------------------------
    // Decision

    /// Registers the endpoint (the `Socket` request), once.
    fn register(&self, st: &mut State) -> Result<EndpointId, i32> {
        if let Some(id) = st.id {
            return Ok(id);
        }
        // Stream endpoints are IPv4 in the netserver; AF_INET6 sockets reach it v4-mapped.
        let req = Request::Socket {
            family: Family::Inet,
            kind: SockKind::Stream,
        };
        match self.session().request(&req, &[])? {
            (Reply::Socket { id }, _) => {
                st.id = Some(id);
                self.id.store(id, Ordering::Release);
                if let Some(me) = self.me.upgrade() {
                    let _ = self.session().add_tcp_socket(id, &me, None);
                }
                Ok(id)
            }
            _ => Err(libc::EPROTO),
        }
    }

    /// Puts a placeholder over every fd number ([`sys::cover_fds`]: FD_CLOEXEC and O_NONBLOCK
    /// kept).
    fn install_placeholder(&self, st: &mut State) -> Result<(), i32> {
        if st.mirror.is_some() {
            return Ok(());
        }
        let mirror = Mirror::new().map_err(|e| errno_of(&e))?;
        let nonblocking = sys::cover_fds(mirror.prog_raw(), &st.fds).map_err(|e| errno_of(&e))?;
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
        st.mirror = Some(mirror);
        Ok(())
    }

    /// Gives the undecided socket to the kernel.
    fn to_kernel<T>(&self, st: &mut State) -> Outcome<T> {
        st.mode = Mode::Kernel;
        Outcome::Bypass
    }

    fn routed_by_msock(&self, ip: Ipv4Addr) -> bool {
        connect_is_ours(ip, self.session().region.lookup(ip).is_some())
    }

    fn family_addr(&self, a: SocketAddrV4) -> SocketAddr {
        crate::client::relay::family_addr(self.domain, a)
    }

    /// Binds through the netserver (registering first).
    fn bind_endpoint(&self, st: &mut State, local: SocketAddrV4) -> Result<(), i32> {
        let id = self.register(st)?;
        let req = Request::Bind {
            id,
            local,
            reuse_addr: st.reuse_addr,
            reuse_port: st.reuse_port,
        };
        let (reply, fds) = self.session().request(&req, &[])?;
        let Reply::Bound { local: bound, ring } = reply else {
            return Err(libc::EPROTO);
        };
        let channel = match fds.into_iter().next() {
            Some(fd) => Some(Box::new(
                PacketChannel::from_fd(fd, ring).map_err(|e| errno_of(&e))?,
            )),
            None => None,
        };
        self.install_placeholder(st)?;
        st.local = Some(bound);
        st.mode = Mode::Bound { channel };
        st.sync(false);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Upper half

    pub fn bind(&self, addr: &SockAddrIn) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.lock();
        match st.mode {
            Mode::Undecided => {}
            Mode::Kernel => return Outcome::Bypass,
            Mode::Closed => return Outcome::Error(libc::EBADF),
            _ => return Outcome::Error(libc::EINVAL),
        }
        let local = match target(self.domain, st.v6only, addr) {
            Target::V4(a) if bind_is_ours(*a.ip(), self.session().local_addr()) => a,
            _ => return self.to_kernel(&mut st),
        };
        Outcome::from(self.bind_endpoint(&mut st, local))
    }

    pub fn listen(&self, backlog: i32) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.lock();
        match st.mode {
            Mode::Undecided => {
                // listen(2) without bind: an ephemeral port on the wildcard.
                let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
                if let Err(e) = self.bind_endpoint(&mut st, any) {
                    return Outcome::Error(e);
                }
            }
            Mode::Bound { .. } => {}
            Mode::Listening => return Outcome::Done(()),
            Mode::Kernel => return Outcome::Bypass,
            Mode::Closed => return Outcome::Error(libc::EBADF),
            _ => return Outcome::Error(libc::EINVAL),
        }
        let Some(id) = st.id else {
            return Outcome::Error(libc::EBADF);
        };
        let backlog = backlog.clamp(1, 4096) as u32;
        if let Err(e) = self
            .session()
            .request(&Request::Listen { id, backlog }, &[])
        {
            return Outcome::Error(e);
        }
        st.mode = Mode::Listening;
        st.acceptable = false;
        if st.concurrent_server {
            let req = Request::SetOption {
                id,
                level: SOL_MSOCK,
                name: crate::control::SO_CONCURRENT_SERVER,
                value: 1i32.to_ne_bytes().to_vec(),
            };
            if let Err(e) = self.session().request(&req, &[]) {
                crate::msock_debug!("SO_CONCURRENT_SERVER refused: errno {e}");
            }
        }
        st.sync(false);
        Outcome::Done(())
    }

    /// `accept4`: the new socket's descriptor and the peer's address.
    pub fn accept(&self, flags: i32) -> Outcome<(RawFd, SocketAddr)> {
        if self.detached() {
            return Outcome::Error(libc::EBADFD);
        }
        if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
            return Outcome::Error(libc::EINVAL);
        }
        let nonblock = self.nonblocking.load(Ordering::Relaxed);
        let mut deadline: Option<Option<StdInstant>> = None;
        loop {
            let (prog, timeo) = {
                let mut st = self.lock();
                if st.dead {
                    return Outcome::Error(libc::ECONNABORTED);
                }
                match st.mode {
                    Mode::Listening => {}
                    Mode::Undecided | Mode::Kernel => return Outcome::Bypass,
                    Mode::Closed => return Outcome::Error(libc::EBADF),
                    _ => return Outcome::Error(libc::EINVAL),
                }
                let Some(id) = st.id else {
                    return Outcome::Error(libc::EINVAL);
                };
                // Not readable before asking: an Acceptable answering this request (more
                // connections wait) is kept, an older one is recognised by its `seq`.
                st.acceptable = false;
                st.accepts_sent = st.accepts_sent.wrapping_add(1);
                st.sync(false);
                match self.request(&Request::Accept { id }, &[]) {
                    Ok((reply, fds)) => {
                        let replay = st.replay.clone();
                        let (rcvtimeo, sndtimeo) = (st.rcvtimeo, st.sndtimeo);
                        drop(st);
                        return self
                            .adopt(reply, fds, flags, &replay, rcvtimeo, sndtimeo)
                            .into();
                    }
                    Err(libc::EAGAIN) => {
                        if !st.acceptable
                            && let Some(m) = st.mirror.as_mut()
                        {
                            m.clear_readable();
                        }
                    }
                    Err(e) => return Outcome::Error(e),
                }
                if nonblock {
                    return Outcome::Error(libc::EAGAIN);
                }
                let Some(m) = st.mirror.as_ref() else {
                    return Outcome::Error(libc::EINVAL);
                };
                (m.prog_raw(), st.rcvtimeo)
            };
            let d = *deadline.get_or_insert_with(|| blocking::deadline(timeo));
            if let Err(e) = blocking::wait(&[(prog, libc::POLLIN)], d, timeo.is_some()) {
                return Outcome::Error(e);
            }
        }
    }

    /// A new socket for an accepted connection, on a new descriptor.
    fn adopt(
        &self,
        reply: Reply,
        fds: Vec<OwnedFd>,
        flags: i32,
        replay: &[(i32, i32, Vec<u8>)],
        rcvtimeo: Option<Duration>,
        sndtimeo: Option<Duration>,
    ) -> Result<(RawFd, SocketAddr), i32> {
        let now = self.now();
        let (id, remote, mode) = match reply {
            Reply::Accepted {
                id,
                remote,
                ring,
                len,
            } => {
                let mut fds = fds.into_iter();
                let (Some(channel_fd), Some(image_fd)) = (fds.next(), fds.next()) else {
                    return Err(libc::EPROTO);
                };
                let mut conn = import_image(image_fd, len, now).map_err(|e| errno_of(&e))?;
                for (level, name, value) in replay {
                    let _ =
                        sockopt::set(&mut conn, *level, *name, value, limits(self.session()), now);
                }
                let channel = PacketChannel::from_fd(channel_fd, ring).map_err(|e| errno_of(&e))?;
                let mut link = TcpLink::new(
                    self.session().region.clone(),
                    Some(channel),
                    conn.local().port(),
                )
                .map_err(|e| errno_of(&e))?;
                let crash = fds.next().and_then(|fd| CrashFile::from_fd(fd).ok());
                link.set_crash_record(crash, remote);
                link.publish_crash_record(&mut conn, now);
                (id, remote, Mode::Cached(Box::new(Cached { conn, link })))
            }
            Reply::AcceptedDeferred { id, remote } => (
                id,
                remote,
                Mode::Flushed {
                    ready: TcpReady::READABLE | TcpReady::WRITABLE,
                },
            ),
            _ => return Err(libc::EPROTO),
        };
        let sock = TcpSocket::with_state(self.session(), self.domain, mode, Vec::new(), Some(id));
        let fd = {
            let mut guard = sock.state.lock();
            let st = &mut *guard;
            let mirror = Mirror::new().map_err(|e| errno_of(&e))?;
            let fd = sys::dupfd(mirror.prog_raw(), 0, flags & libc::SOCK_CLOEXEC != 0)
                .map_err(|e| errno_of(&e))?;
            if flags & libc::SOCK_NONBLOCK != 0 {
                let _ = sys::set_status_flags(fd, libc::O_RDWR | libc::O_NONBLOCK);
                sock.nonblocking.store(true, Ordering::Relaxed);
            }
            st.mirror = Some(mirror);
            st.fds.push(fd);
            st.remote = Some(remote);
            st.rcvtimeo = rcvtimeo;
            st.sndtimeo = sndtimeo;
            st.replay = replay.to_vec();
            st.deferred = matches!(st.mode, Mode::Flushed { .. });
            let wake = match &st.mode {
                Mode::Cached(c) => {
                    st.local = Some(c.conn.local());
                    c.link.channel().map(|ch| ch.as_fd().as_raw_fd())
                }
                _ => None,
            };
            self.session()
                .add_tcp_socket(id, &sock, wake)
                .map_err(|e| errno_of(&e))?;
            let more = st.cached_mut().is_some_and(|c| c.pump(self.session(), now));
            sock.settle(st, more);
            fd
        };
        if let Some(stale) = runtime::table().insert(fd, runtime::Socket::Tcp(Arc::clone(&sock)))
            && stale.remove_fd(fd)
        {
            stale.release();
        }
        Ok((fd, self.family_addr(remote)))
    }

    /// Waits until the next hop towards `remote` has a MAC (asking the netserver once).
    fn resolve(&self, remote: Ipv4Addr) -> Result<(), i32> {
        let region = &self.session().region;
        let hop = region.lookup(remote).ok_or(libc::ENETUNREACH)?;
        if region.neighbor(hop.ip).is_some() {
            return Ok(());
        }
        match self
            .session()
            .request(&Request::Resolve { addr: hop.ip }, &[])?
        {
            (Reply::Resolve { mac: Some(_) }, _) => return Ok(()),
            (Reply::Resolve { mac: None }, _) => {}
            _ => return Err(libc::EPROTO),
        }
        let give_up = StdInstant::now() + RESOLVE_WAIT;
        while StdInstant::now() < give_up {
            if region.neighbor(hop.ip).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(libc::EHOSTUNREACH)
    }

    pub fn connect(&self, addr: &SockAddrIn) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.dead {
            return Outcome::Error(libc::ECONNRESET);
        }
        match (&mut st.mode, st.connect) {
            (Mode::Kernel, _) => return Outcome::Bypass,
            (Mode::Closed, _) => return Outcome::Error(libc::EBADF),
            (Mode::Listening, _) => return Outcome::Error(libc::EISCONN),
            (Mode::Flushed { .. }, _) => return Outcome::Error(libc::EISCONN),
            (Mode::Cached(c), phase) => {
                if let Some(e) = c.conn.take_error() {
                    st.connect = ConnectPhase::Reported;
                    st.sync(false);
                    return Outcome::Error(e.errno());
                }
                return match (c.conn.state(), phase) {
                    (TcpState::SynSent | TcpState::SynReceived, _)
                        if !self.nonblocking.load(Ordering::Relaxed) =>
                    {
                        drop(guard);
                        self.wait_connected()
                    }
                    (TcpState::SynSent | TcpState::SynReceived, _) => {
                        Outcome::Error(libc::EALREADY)
                    }
                    (_, ConnectPhase::InProgress) => {
                        st.connect = ConnectPhase::Reported;
                        Outcome::Done(())
                    }
                    _ => Outcome::Error(libc::EISCONN),
                };
            }
            _ => {}
        }
        let dst = match target(self.domain, st.v6only, addr) {
            Target::V4(d) => d,
            Target::Invalid(e) if !matches!(st.mode, Mode::Undecided) => return Outcome::Error(e),
            _ if matches!(st.mode, Mode::Undecided) => return self.to_kernel(st),
            _ => return Outcome::Error(libc::ENETUNREACH),
        };
        if matches!(st.mode, Mode::Undecided) && !self.routed_by_msock(*dst.ip()) {
            return self.to_kernel(st);
        }
        if dst.port() == 0 {
            return Outcome::Error(libc::ECONNREFUSED);
        }
        if let Err(e) = self.start_connect(st, dst) {
            return Outcome::Error(e);
        }
        if self.nonblocking.load(Ordering::Relaxed) {
            st.connect = ConnectPhase::InProgress;
            return Outcome::Error(libc::EINPROGRESS);
        }
        st.connect = ConnectPhase::Reported;
        drop(guard);
        self.wait_connected()
    }

    /// Registers the 4-tuple, builds the engine, sends the SYN.
    fn start_connect(&self, st: &mut State, dst: SocketAddrV4) -> Result<(), i32> {
        let id = self.register(st)?;
        self.resolve(*dst.ip())?;
        let record = CrashFile::create().ok();
        let fds: Vec<std::os::fd::BorrowedFd<'_>> = record.iter().map(|f| f.fd()).collect();
        let (reply, rfds) = self.session().request(
            &Request::Connect {
                id,
                remote: Some(dst),
            },
            &fds,
        )?;
        let bound_port = st.local.map_or(0, |l| l.port());
        let (channel, port) = match (reply, &mut st.mode) {
            (Reply::Bound { ring, local }, _) => {
                let fd = rfds.into_iter().next().ok_or(libc::EPROTO)?;
                let ch = PacketChannel::from_fd(fd, ring).map_err(|e| errno_of(&e))?;
                (ch, local.port())
            }
            (Reply::Ok, Mode::Bound { channel }) => {
                (*channel.take().ok_or(libc::EPROTO)?, bound_port)
            }
            _ => return Err(libc::EPROTO),
        };
        let wake = channel.as_fd().as_raw_fd();
        let mut link = TcpLink::new(self.session().region.clone(), Some(channel), port)
            .map_err(|e| errno_of(&e))?;
        let local = link.local();
        let now = self.now();
        let isn = runtime::isn();
        let initial = InitialSequence {
            iss: isn.initial_sequence(local, dst, now),
            ts_offset: isn.timestamp_offset(local, dst),
        };
        let conn = TcpConnection::connect(st.template.config().clone(), local, dst, initial, now);
        link.set_crash_record(record, dst);
        self.install_placeholder(st)?;
        st.local = Some(local);
        st.remote = Some(dst);
        st.mode = Mode::Cached(Box::new(Cached { conn, link }));
        if let Some(me) = self.me.upgrade() {
            self.session()
                .add_tcp_socket(id, &me, Some(wake))
                .map_err(|e| errno_of(&e))?;
        }
        if let Some(c) = st.cached_mut() {
            c.transmit(self.session(), now);
        }
        self.settle(st, false);
        Ok(())
    }

    /// A blocking connect's wait for ESTABLISHED or the error.
    fn wait_connected(&self) -> Outcome<()> {
        let mut inline = None;
        loop {
            let (prog, wake) = {
                let mut st = self.lock();
                if st.dead {
                    return Outcome::Error(libc::ECONNRESET);
                }
                let now = self.now();
                let more = st.cached_mut().is_some_and(|c| c.pump(self.session(), now));
                self.settle(&mut st, more);
                let Some(c) = st.cached_mut() else {
                    // Recalled meanwhile: the netserver finishes the handshake.
                    return match &st.mode {
                        Mode::Flushed { .. } => Outcome::Done(()),
                        _ => Outcome::Error(libc::EBADF),
                    };
                };
                if let Some(e) = c.conn.take_error() {
                    st.sync(false);
                    return Outcome::Error(e.errno());
                }
                match c.conn.state() {
                    TcpState::SynSent | TcpState::SynReceived => {}
                    TcpState::Closed => return Outcome::Error(libc::ECONNREFUSED),
                    _ => {
                        st.connect = ConnectPhase::Reported;
                        return Outcome::Done(());
                    }
                }
                let wake = c.link.channel().map(PacketChannel::waker);
                let prog = st.mirror.as_ref().map_or(-1, Mirror::prog_raw);
                (prog, wake)
            };
            // connect(2) is interrupted by any handler (EINTR), as Linux's with no timeout
            // restarts only through SA_RESTART: the common rule.
            if let Err(e) = self.sleep(prog, libc::POLLOUT, wake, &mut inline, None, false) {
                return Outcome::Error(e);
            }
        }
    }

    /// Sleeps on the placeholder (`events`) and, for a cached socket, on its channel, which
    /// the caller claims ([`blocking::Inline`]: muted in the receive thread) from its first
    /// sleep until the call returns: `inline` lives in the caller's loop and is dropped when
    /// the call returns, after the caller's last pass over the channel, so the frames it
    /// processes itself never wake the receive thread too.
    fn sleep<'a>(
        &'a self,
        prog: RawFd,
        events: i16,
        wake: Option<ChannelWaker>,
        inline: &mut Option<blocking::Inline<'a>>,
        deadline: Option<StdInstant>,
        timed: bool,
    ) -> Result<(), i32> {
        // A claim on a channel the socket no longer has (flushed and cached again meanwhile)
        // is given up for one on the current channel.
        if inline.as_ref().map(blocking::Inline::fd) != wake.as_ref().map(ChannelWaker::raw_fd) {
            *inline = None;
            let id = self.id().unwrap_or(0);
            *inline = wake.map(|w| blocking::Inline::claim(&self.blocked, self.session(), id, w));
        }
        match inline {
            Some(i) => blocking::wait(&[(prog, events), (i.fd(), libc::POLLIN)], deadline, timed),
            None => blocking::wait(&[(prog, events)], deadline, timed),
        }
    }

    /// EPIPE, with SIGPIPE raised on the calling thread unless MSG_NOSIGNAL.
    fn epipe(flags: i32) -> i32 {
        if flags & libc::MSG_NOSIGNAL == 0 {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGPIPE);
        }
        libc::EPIPE
    }

    pub fn send(&self, bufs: &[&[u8]], flags: i32) -> Outcome<usize> {
        if self.detached() {
            return Outcome::Error(libc::EBADFD);
        }
        if flags & libc::MSG_OOB != 0 {
            return Outcome::Error(libc::EOPNOTSUPP);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let nonblock = flags & libc::MSG_DONTWAIT != 0 || self.nonblocking.load(Ordering::Relaxed);
        let mut sent = 0usize;
        let mut deadline: Option<Option<StdInstant>> = None;
        let mut inline = None;
        loop {
            let (prog, wake, timeo) = {
                let mut st = self.lock();
                if st.dead {
                    return Outcome::Error(Self::epipe(flags));
                }
                let now = self.now();
                match &mut st.mode {
                    Mode::Undecided | Mode::Kernel => return Outcome::Bypass,
                    Mode::Closed => return Outcome::Error(libc::EBADF),
                    Mode::Bound { .. } | Mode::Listening => {
                        return Outcome::Error(Self::epipe(flags));
                    }
                    Mode::Flushed { .. } => match self.flushed_send(&mut st, bufs, sent) {
                        Ok(n) => sent += n,
                        Err(libc::EAGAIN) => {}
                        Err(libc::EPIPE) if sent == 0 => {
                            return Outcome::Error(Self::epipe(flags));
                        }
                        Err(_) if sent > 0 => return Outcome::Done(sent),
                        Err(e) => return Outcome::Error(e),
                    },
                    Mode::Cached(c) => {
                        // Woken on the channel (claimed, muted in the receive thread): the
                        // ACKs that free the send buffer are ours to process.
                        let more = inline.is_some() && c.pump(self.session(), now);
                        let mut skip = sent;
                        let mut failed = None;
                        for b in bufs {
                            if skip >= b.len() {
                                skip -= b.len();
                                continue;
                            }
                            match c.conn.send(&b[skip..]) {
                                Ok(n) => {
                                    sent += n;
                                    if n < b.len() - skip {
                                        break;
                                    }
                                    skip = 0;
                                }
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        c.transmit(self.session(), now);
                        self.settle(&mut st, more);
                        match failed {
                            None | Some(SendError::WouldBlock) => {}
                            Some(_) if sent > 0 => return Outcome::Done(sent),
                            // Linux `sk_stream_wait_connect`: a connection that is over
                            // (shut, or closed after its error was reported) is EPIPE.
                            Some(SendError::Shutdown | SendError::NotConnected) => {
                                return Outcome::Error(Self::epipe(flags));
                            }
                            Some(e) => {
                                let errno = e.errno();
                                if let Some(c) = st.cached_mut() {
                                    let _ = c.conn.take_error();
                                }
                                st.sync(false);
                                return Outcome::Error(errno);
                            }
                        }
                    }
                }
                if sent >= total {
                    return Outcome::Done(sent);
                }
                if nonblock {
                    return if sent > 0 {
                        Outcome::Done(sent)
                    } else {
                        Outcome::Error(libc::EAGAIN)
                    };
                }
                let wake = match &st.mode {
                    Mode::Cached(c) => c.link.channel().map(PacketChannel::waker),
                    _ => None,
                };
                let prog = st.mirror.as_ref().map_or(-1, Mirror::prog_raw);
                (prog, wake, st.sndtimeo)
            };
            let d = *deadline.get_or_insert_with(|| blocking::deadline(timeo));
            match self.sleep(prog, libc::POLLOUT, wake, &mut inline, d, timeo.is_some()) {
                Ok(()) => {}
                Err(_) if sent > 0 => return Outcome::Done(sent),
                Err(e) => return Outcome::Error(e),
            }
        }
    }

    /// One `Send` request with the next bytes (at most [`MAX_TRANSFER`]).
    fn flushed_send(&self, st: &mut State, bufs: &[&[u8]], skip: usize) -> Result<usize, i32> {
        let id = st.id.ok_or(libc::EBADF)?;
        let mut data = Vec::with_capacity(MAX_TRANSFER.min(bufs.iter().map(|b| b.len()).sum()));
        let mut skip = skip;
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let take = (MAX_TRANSFER - data.len()).min(b.len() - skip);
            data.extend_from_slice(&b[skip..skip + take]);
            skip = 0;
            if data.len() == MAX_TRANSFER {
                break;
            }
        }
        let want = data.len();
        let r = self.request(&Request::Send { id, data }, &[]);
        let n = match r {
            Ok((Reply::Sent { n }, _)) => n as usize,
            Ok(_) => return Err(libc::EPROTO),
            Err(e) => {
                if let Mode::Flushed { ready } = &mut st.mode
                    && e == libc::EAGAIN
                {
                    *ready &= !TcpReady::WRITABLE;
                }
                st.sync(false);
                return Err(e);
            }
        };
        if let Mode::Flushed { ready } = &mut st.mode
            && n < want
        {
            *ready &= !TcpReady::WRITABLE;
        }
        st.sync(false);
        Ok(n)
    }

    pub fn recv(&self, bufs: &mut [&mut [u8]], flags: i32) -> Outcome<Received> {
        if self.detached() {
            return Outcome::Error(libc::EBADFD);
        }
        if flags & libc::MSG_OOB != 0 {
            return Outcome::Error(libc::EINVAL);
        }
        let peek = flags & libc::MSG_PEEK != 0;
        let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
        let nonblock = flags & libc::MSG_DONTWAIT != 0 || self.nonblocking.load(Ordering::Relaxed);
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut got = 0usize;
        let mut deadline: Option<Option<StdInstant>> = None;
        let mut inline = None;
        loop {
            let (prog, wake, timeo) = {
                let mut st = self.lock();
                if st.dead {
                    return if got > 0 {
                        self.received(got)
                    } else {
                        Outcome::Error(libc::ECONNRESET)
                    };
                }
                let now = self.now();
                let outcome: Result<Option<usize>, i32> = match &mut st.mode {
                    Mode::Undecided | Mode::Kernel => return Outcome::Bypass,
                    Mode::Closed => return Outcome::Error(libc::EBADF),
                    Mode::Bound { .. } | Mode::Listening => return Outcome::Error(libc::ENOTCONN),
                    Mode::Flushed { .. } => self.flushed_recv(&mut st, bufs, got, peek),
                    Mode::Cached(c) => {
                        let more = c.pump(self.session(), now);
                        let r = Self::engine_read(&mut c.conn, bufs, got, peek);
                        if matches!(r, Ok(Some(n)) if n > 0) {
                            c.transmit(self.session(), now);
                        }
                        self.settle(&mut st, more);
                        r
                    }
                };
                match outcome {
                    Ok(Some(0)) => return self.received(got),
                    Ok(Some(n)) => {
                        got += n;
                        if !waitall || got >= total {
                            return self.received(got);
                        }
                    }
                    Ok(None) => {}
                    Err(_) if got > 0 => return self.received(got),
                    Err(e) => return Outcome::Error(e),
                }
                if nonblock {
                    return if got > 0 {
                        self.received(got)
                    } else {
                        Outcome::Error(libc::EAGAIN)
                    };
                }
                let wake = match &st.mode {
                    Mode::Cached(c) => c.link.channel().map(PacketChannel::waker),
                    _ => None,
                };
                let prog = st.mirror.as_ref().map_or(-1, Mirror::prog_raw);
                (prog, wake, st.rcvtimeo)
            };
            let d = *deadline.get_or_insert_with(|| blocking::deadline(timeo));
            match self.sleep(prog, libc::POLLIN, wake, &mut inline, d, timeo.is_some()) {
                Ok(()) => {}
                Err(_) if got > 0 => return self.received(got),
                Err(e) => return Outcome::Error(e),
            }
        }
    }

    fn received(&self, len: usize) -> Outcome<Received> {
        Outcome::Done(Received {
            len,
            truncated: false,
            src: None,
        })
    }

    /// Reads from the engine into `bufs` after the first `skip` bytes: `Some(n)` (0 = end of
    /// stream), `None` = nothing yet, or the connection's error.
    fn engine_read(
        conn: &mut TcpConnection,
        bufs: &mut [&mut [u8]],
        skip: usize,
        peek: bool,
    ) -> Result<Option<usize>, i32> {
        let mut n = 0usize;
        let mut skip = skip;
        let mut scratch = Vec::new();
        for b in bufs.iter_mut() {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let dst = &mut b[skip..];
            skip = 0;
            let r = if peek {
                // Peek the whole prefix, then copy this buffer's part.
                scratch.resize(n + dst.len(), 0);
                conn.peek(&mut scratch).map(|m| {
                    let part = m.saturating_sub(n).min(dst.len());
                    dst[..part].copy_from_slice(&scratch[n..n + part]);
                    part
                })
            } else {
                conn.recv(dst)
            };
            match r {
                Ok(0) => break,
                Ok(m) => {
                    n += m;
                    if m < dst.len() {
                        break;
                    }
                }
                Err(RecvError::WouldBlock) if n > 0 => break,
                Err(RecvError::WouldBlock) => return Ok(None),
                Err(_) if n > 0 => break,
                Err(e) => {
                    let _ = conn.take_error();
                    return Err(e.errno());
                }
            }
        }
        if n == 0 && !bufs.iter().all(|b| b.is_empty()) {
            // Nothing copied and no error: end of stream (recv said 0) or empty buffers.
            return Ok(Some(0));
        }
        Ok(Some(n))
    }

    /// One `Recv` request into `bufs` after `skip` bytes.
    fn flushed_recv(
        &self,
        st: &mut State,
        bufs: &mut [&mut [u8]],
        skip: usize,
        peek: bool,
    ) -> Result<Option<usize>, i32> {
        let id = st.id.ok_or(libc::EBADF)?;
        let room: usize = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .saturating_sub(skip);
        let req = Request::Recv {
            id,
            max: room.min(MAX_TRANSFER) as u32,
            peek,
        };
        let r = self.request(&req, &[]);
        let result = match r {
            Ok((Reply::Received { fin: true, data }, _)) if data.is_empty() => {
                if let Mode::Flushed { ready } = &mut st.mode {
                    *ready |= TcpReady::READ_HUP | TcpReady::READABLE;
                }
                Ok(Some(0))
            }
            Ok((Reply::Received { data, .. }, _)) => {
                let mut off = 0usize;
                let mut skip = skip;
                for b in bufs.iter_mut() {
                    if skip >= b.len() {
                        skip -= b.len();
                        continue;
                    }
                    let take = (data.len() - off).min(b.len() - skip);
                    b[skip..skip + take].copy_from_slice(&data[off..off + take]);
                    off += take;
                    skip = 0;
                    if off == data.len() {
                        break;
                    }
                }
                Ok(Some(off))
            }
            Ok(_) => Err(libc::EPROTO),
            Err(libc::EAGAIN) => {
                if let Mode::Flushed { ready } = &mut st.mode {
                    *ready &= !TcpReady::READABLE;
                }
                // Another holder's mirror (fork) may have marked the shared placeholder.
                if let Some(m) = st.mirror.as_mut() {
                    m.clear_readable();
                }
                Ok(None)
            }
            Err(e) => Err(e),
        };
        st.sync(false);
        result
    }

    pub fn shutdown(&self, how: i32) -> Outcome<()> {
        if self.detached() {
            return Outcome::Error(libc::EBADFD);
        }
        let how = match how {
            libc::SHUT_RD => ShutdownHow::Read,
            libc::SHUT_WR => ShutdownHow::Write,
            libc::SHUT_RDWR => ShutdownHow::Both,
            _ => return Outcome::Error(libc::EINVAL),
        };
        let mut st = self.lock();
        if st.dead {
            return Outcome::Error(libc::ENOTCONN);
        }
        let now = self.now();
        let rd = matches!(how, ShutdownHow::Read | ShutdownHow::Both);
        let wr = matches!(how, ShutdownHow::Write | ShutdownHow::Both);
        match &mut st.mode {
            Mode::Undecided | Mode::Kernel => return Outcome::Bypass,
            Mode::Closed => return Outcome::Error(libc::EBADF),
            Mode::Bound { .. } => return Outcome::Error(libc::ENOTCONN),
            Mode::Listening => {
                // Linux: shutdown of a listener stops it; accept then fails. Reported as
                // readable so blocked acceptors wake.
                st.acceptable = true;
            }
            Mode::Cached(c) => {
                if c.conn.state() == TcpState::SynSent {
                    return Outcome::Error(libc::ENOTCONN);
                }
                if rd {
                    c.conn.shutdown_read();
                }
                if wr {
                    c.conn.shutdown_write(now);
                }
                c.transmit(self.session(), now);
            }
            Mode::Flushed { .. } => {
                let Some(id) = st.id else {
                    return Outcome::Error(libc::EBADF);
                };
                if let Err(e) = self.request(&Request::Shutdown { id, how }, &[]) {
                    return Outcome::Error(e);
                }
                if let Mode::Flushed { ready } = &mut st.mode {
                    if rd {
                        *ready |= TcpReady::READABLE | TcpReady::READ_HUP;
                    }
                    if wr {
                        *ready |= TcpReady::WRITABLE;
                    }
                }
            }
        }
        st.shut_rd |= rd;
        st.shut_wr |= wr;
        self.settle(&mut st, false);
        Outcome::Done(())
    }

    /// Releases the socket after its last descriptor went away (close, dup2 over it, exit):
    /// a cached connection is closed as Linux's `tcp_close` (queued data then FIN; RST when
    /// unread data remains or SO_LINGER is zero) and handed to the netserver, which finishes
    /// it (paper §3.1: an endpoint may outlive the process).
    pub fn release(&self) {
        if self.detached() {
            return;
        }
        let mut st = self.state.lock();
        let mode = std::mem::replace(&mut st.mode, Mode::Closed);
        let Some(id) = st.id else { return };
        let now = self.now();
        match mode {
            Mode::Cached(mut c) => {
                let wake = c.link.channel().map(|ch| ch.as_fd().as_raw_fd());
                self.session().remove_socket(id, wake);
                if st.dead {
                    return;
                }
                let _ = c.pump(self.session(), now);
                // An abortive close (data left unread, SO_LINGER 0) or a connection with
                // nothing to finish ends here: at most an RST, and the netserver only forgets
                // the endpoint. Otherwise the connection goes to the netserver *open*: it
                // closes it if this was the last holder, and keeps it going for the others if
                // a fork shares it (one holder's close sends no FIN).
                let abortive = c.conn.recv_queue_len() > 0
                    || c.conn.config().linger == Some(crate::stack::Duration::ZERO)
                    || matches!(
                        c.conn.state(),
                        TcpState::Closed | TcpState::Listen | TcpState::SynSent
                    );
                if abortive {
                    c.conn.close(now);
                    c.transmit(self.session(), now);
                    let _ = self.session().request(&Request::Close { id }, &[]);
                    return;
                }
                // The FIN (and whatever is still queued) is sent by the netserver once it
                // holds the connection, not from here: the peer's answer to it (its ACK,
                // often within microseconds) would otherwise reach this socket's channel,
                // or the netserver while the 4-tuple is still ours, and be lost with the
                // channel; the netserver would then wait a retransmission timeout (200 ms
                // and more) with the connection in LAST_ACK or FIN_WAIT_1.
                let image = c.conn.export(now);
                c.link.invalidate_crash_record();
                let handed = crate::control::image_memfd(&image, c"msock-tcp-handover")
                    .map_err(|e| errno_of(&e))
                    .and_then(|file| {
                        let req = Request::HandOver {
                            id,
                            len: image.len() as u64,
                        };
                        self.session().request(&req, &[file.as_fd()])
                    });
                if let Err(e) = handed {
                    crate::msock_debug!("hand-over of endpoint {id} refused: errno {e}");
                    c.conn.abort(now);
                    c.transmit(self.session(), now);
                    let _ = self.session().request(&Request::Close { id }, &[]);
                }
            }
            Mode::Undecided | Mode::Kernel | Mode::Closed => {
                self.session().remove_socket(id, None);
            }
            _ => {
                self.session().remove_socket(id, None);
                if !st.dead {
                    let _ = self.request(&Request::Close { id }, &[]);
                }
            }
        }
        st.armed = None;
    }

    pub fn getsockname(&self) -> Outcome<SocketAddr> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let st = self.lock();
        match st.mode {
            Mode::Undecided | Mode::Kernel => Outcome::Bypass,
            Mode::Closed => Outcome::Error(libc::EBADF),
            _ => {
                let local = st
                    .local
                    .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
                Outcome::Done(self.family_addr(local))
            }
        }
    }

    pub fn getpeername(&self) -> Outcome<SocketAddr> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let st = self.lock();
        match (&st.mode, st.remote) {
            (Mode::Undecided | Mode::Kernel, _) => Outcome::Bypass,
            (Mode::Closed, _) => Outcome::Error(libc::EBADF),
            (Mode::Cached(c), Some(r)) if c.conn.state() != TcpState::SynSent => {
                Outcome::Done(self.family_addr(r))
            }
            (Mode::Flushed { .. }, Some(r)) => Outcome::Done(self.family_addr(r)),
            _ => Outcome::Error(libc::ENOTCONN),
        }
    }

    /// getsockopt: the whole value (the edge truncates to the caller's length).
    pub fn getsockopt(&self, level: i32, name: i32) -> Outcome<Vec<u8>> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.lock();
        if matches!(st.mode, Mode::Undecided | Mode::Kernel) {
            return Outcome::Bypass;
        }
        let int = |v: i32| v.to_ne_bytes().to_vec();
        let listening = matches!(st.mode, Mode::Listening);
        match (level, name) {
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => return Outcome::Done(int(self.domain)),
            (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
                return Outcome::Done(int(i32::from(listening)));
            }
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => {
                return Outcome::Done(timeval_bytes(st.rcvtimeo));
            }
            (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => {
                return Outcome::Done(timeval_bytes(st.sndtimeo));
            }
            (libc::SOL_SOCKET, libc::SO_REUSEADDR) => {
                return Outcome::Done(int(i32::from(st.reuse_addr)));
            }
            (libc::SOL_SOCKET, libc::SO_REUSEPORT) => {
                return Outcome::Done(int(i32::from(st.reuse_port)));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) if self.domain == libc::AF_INET6 => {
                return Outcome::Done(int(i32::from(st.v6only)));
            }
            (SOL_MSOCK, crate::control::SO_CONCURRENT_SERVER) => {
                return Outcome::Done(int(i32::from(st.concurrent_server)));
            }
            (libc::SOL_SOCKET, libc::SO_ERROR) if st.dead => {
                return Outcome::Done(int(libc::ECONNRESET));
            }
            _ => {}
        }
        let now = self.now();
        let r = match &mut st.mode {
            Mode::Cached(c) => sockopt::get(&mut c.conn, level, name, now),
            Mode::Flushed { .. } => match st.id {
                Some(id) => match self.request(&Request::GetOption { id, level, name }, &[]) {
                    Ok((Reply::Option { value }, _)) => Ok(value),
                    Ok(_) => Err(libc::EPROTO),
                    Err(e) => Err(e),
                },
                None => Err(libc::EBADF),
            },
            _ => {
                if (level, name) == (libc::SOL_SOCKET, libc::SO_ERROR) {
                    Ok(int(0))
                } else {
                    sockopt::get(&mut st.template, level, name, now)
                }
            }
        };
        if (level, name) == (libc::SOL_SOCKET, libc::SO_ERROR) {
            st.sync(false);
        }
        Outcome::from(r)
    }

    /// setsockopt. Undecided: applied to the kernel socket first (it may stay the kernel's),
    /// then recorded. Connections: `stack::tcp::sockopt` on the engine (cached) or through the
    /// netserver (flushed).
    pub fn setsockopt(&self, fd: RawFd, level: i32, name: i32, value: &[u8]) -> Outcome<()> {
        if self.detached() {
            return Outcome::Bypass;
        }
        let mut st = self.lock();
        match st.mode {
            Mode::Kernel => return Outcome::Bypass,
            Mode::Closed => return Outcome::Error(libc::EBADF),
            Mode::Undecided if level != SOL_MSOCK => {
                if let Err(e) = sys::setsockopt(fd, level, name, value) {
                    return Outcome::Error(errno_of(&e));
                }
            }
            _ => {}
        }
        let undecided = matches!(st.mode, Mode::Undecided);
        // Options msock keeps itself.
        let kept: Result<bool, i32> = (|| {
            match (level, name) {
                (libc::SOL_SOCKET, libc::SO_REUSEADDR) => st.reuse_addr = int_arg(value)? != 0,
                (libc::SOL_SOCKET, libc::SO_REUSEPORT) => st.reuse_port = int_arg(value)? != 0,
                (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => st.rcvtimeo = timeval_arg(value)?,
                (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => st.sndtimeo = timeval_arg(value)?,
                (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) if self.domain == libc::AF_INET6 => {
                    if !undecided {
                        return Err(libc::EINVAL);
                    }
                    st.v6only = int_arg(value)? != 0;
                }
                (SOL_MSOCK, crate::control::SO_CONCURRENT_SERVER) => {
                    st.concurrent_server = int_arg(value)? != 0;
                    if let (Mode::Listening, Some(id)) = (&st.mode, st.id) {
                        let req = Request::SetOption {
                            id,
                            level,
                            name,
                            value: value.to_vec(),
                        };
                        self.session().request(&req, &[])?;
                    }
                }
                (SOL_MSOCK, _) => return Err(libc::ENOPROTOOPT),
                // IP-level options the engine does not model: accepted (the kernel socket
                // took them while undecided), without effect on msock's segments.
                (libc::IPPROTO_IP, libc::IP_TOS | libc::IP_TTL) => {}
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {}
                (libc::SOL_SOCKET, libc::SO_PRIORITY) => {}
                _ => return Ok(false),
            }
            Ok(true)
        })();
        match kept {
            Ok(true) => return Outcome::Done(()),
            Ok(false) => {}
            Err(e) => return Outcome::Error(e),
        }
        let now = self.now();
        let lim = limits(self.session());
        let r = match &mut st.mode {
            Mode::Cached(c) => {
                let r = sockopt::set(&mut c.conn, level, name, value, lim, now);
                c.transmit(self.session(), now);
                r
            }
            Mode::Flushed { .. } => match st.id {
                Some(id) => {
                    let req = Request::SetOption {
                        id,
                        level,
                        name,
                        value: value.to_vec(),
                    };
                    self.request(&req, &[]).map(|_| ())
                }
                None => Err(libc::EBADF),
            },
            _ => {
                let r = sockopt::set(&mut st.template, level, name, value, lim, now);
                if r.is_ok() {
                    st.replay.push((level, name, value.to_vec()));
                }
                r
            }
        };
        match r {
            // The kernel socket took it; the engine has no such option: kept as the kernel's.
            Err(libc::ENOPROTOOPT | libc::EOPNOTSUPP) if undecided => Outcome::Done(()),
            other => {
                self.settle(&mut st, false);
                Outcome::from(other)
            }
        }
    }

    /// FIONREAD / SIOCINQ: bytes readable.
    pub fn fionread(&self) -> Outcome<i32> {
        let mut st = self.lock();
        let now = self.now();
        match &mut st.mode {
            Mode::Undecided | Mode::Kernel => Outcome::Bypass,
            Mode::Listening => Outcome::Error(libc::EINVAL),
            Mode::Cached(c) => {
                let more = c.pump(self.session(), now);
                let n = c.conn.recv_queue_len().min(i32::MAX as usize) as i32;
                self.settle(&mut st, more);
                Outcome::Done(n)
            }
            Mode::Flushed { .. } => {
                let Some(id) = st.id else {
                    return Outcome::Error(libc::EBADF);
                };
                let req = Request::Recv {
                    id,
                    max: MAX_TRANSFER as u32,
                    peek: true,
                };
                match self.request(&req, &[]) {
                    Ok((Reply::Received { data, .. }, _)) => Outcome::Done(data.len() as i32),
                    _ => Outcome::Done(0),
                }
            }
            _ => Outcome::Done(0),
        }
    }

    /// SIOCOUTQ: bytes not yet acknowledged.
    pub fn outq(&self) -> Outcome<i32> {
        let st = self.lock();
        match &st.mode {
            Mode::Undecided | Mode::Kernel => Outcome::Bypass,
            Mode::Listening => Outcome::Error(libc::EINVAL),
            Mode::Cached(c) => Outcome::Done(c.conn.send_queue_len().min(i32::MAX as usize) as i32),
            _ => Outcome::Done(0),
        }
    }

    /// O_NONBLOCK as msock tracks it.
    pub fn set_nonblocking(&self, fd: RawFd, on: bool) -> Outcome<()> {
        let st = self.state.lock();
        if matches!(st.mode, Mode::Undecided | Mode::Kernel) {
            return Outcome::Bypass;
        }
        self.nonblocking.store(on, Ordering::Relaxed);
        let flags = sys::get_status_flags(fd).unwrap_or(libc::O_RDWR);
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        let _ = sys::set_status_flags(fd, flags);
        Outcome::Done(())
    }

    /// F_GETFL with msock's O_NONBLOCK.
    pub fn status_flags(&self, fd: RawFd) -> Outcome<i32> {
        let st = self.state.lock();
        if matches!(st.mode, Mode::Undecided | Mode::Kernel) {
            return Outcome::Bypass;
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

    // -----------------------------------------------------------------------------------------
    // Relay (`client::relay`)

    /// Hands this connection to a relay in the netserver (flushing it first) and points every
    /// program descriptor of it at the relay's socketpair: the socket is a relayed one from
    /// now on (the caller replaces it in the fd table). A socket that is not an established
    /// msock connection is left as it is (ENOTCONN); one the netserver refuses stays flushed.
    pub fn to_relay(&self) -> Result<Arc<RelayedSocket>, i32> {
        if self.detached() {
            return Err(libc::EBADF);
        }
        let mut st = self.state.lock();
        if st.dead {
            return Err(libc::ECONNRESET);
        }
        let (Some(id), Some(local), Some(remote)) = (st.id, st.local, st.remote) else {
            return Err(libc::ENOTCONN);
        };
        if st.connect == ConnectPhase::InProgress {
            return Err(libc::ENOTCONN);
        }
        self.flush_locked(&mut st)?;
        if !matches!(st.mode, Mode::Flushed { .. }) {
            return Err(libc::ENOTCONN);
        }
        let (prog, lib) = sys::stream_pair().map_err(|e| errno_of(&e))?;
        self.request(&Request::Relay { id }, &[lib.as_fd()])?;
        drop(lib);
        // The netserver holds the connection for the relay now; a failure below leaves the
        // descriptors not yet moved on the old placeholder (at worst they read end of file).
        self.session().remove_socket(id, None);
        st.mode = Mode::Closed;
        st.armed = None;
        let fds = std::mem::take(&mut st.fds);
        let moved = sys::cover_fds(prog.as_raw_fd(), &fds);
        drop(prog);
        st.mirror = None;
        moved.map_err(|e| errno_of(&e))?;
        let local = SocketAddrV4::new(
            self.session().local_addr().unwrap_or(*local.ip()),
            local.port(),
        );
        Ok(RelayedSocket::new(self.domain, local, remote, fds))
    }
}

/// A TCP socket made while no netserver answered: the kernel socket holds its fd number; the
/// first bind/connect/listen that would be msock's fails with ENETDOWN (loopback and other
/// kernel destinations pass through, and the socket is forgotten).
pub struct OfflineSocket {
    pub domain: i32,
    fds: Mutex<Vec<RawFd>>,
    kernel: AtomicBool,
}

impl OfflineSocket {
    pub fn new(domain: i32, fd: RawFd) -> Arc<OfflineSocket> {
        Arc::new(OfflineSocket {
            domain,
            fds: Mutex::new(vec![fd]),
            kernel: AtomicBool::new(false),
        })
    }

    pub fn add_fd(&self, fd: RawFd) {
        let mut fds = self.fds.lock();
        if !fds.contains(&fd) {
            fds.push(fd);
        }
    }

    pub fn remove_fd(&self, fd: RawFd) -> bool {
        let mut fds = self.fds.lock();
        fds.retain(|&f| f != fd);
        fds.is_empty()
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.fds.lock().clone()
    }

    pub fn is_kernel(&self) -> bool {
        self.kernel.load(Ordering::Acquire)
    }

    /// bind/connect/listen (`None`: listen without an address, msock's wildcard).
    pub fn decide(&self, addr: Option<&SockAddrIn>) -> Outcome<()> {
        let ours = match addr {
            None => true,
            Some(a) => match target(self.domain, false, a) {
                Target::V4(a) => !a.ip().is_loopback(),
                Target::Kernel | Target::Invalid(_) => false,
            },
        };
        if ours && !runtime::fallback_to_kernel() {
            return Outcome::Error(libc::ENETDOWN);
        }
        self.kernel.store(true, Ordering::Release);
        Outcome::Bypass
    }
}

impl Timed for TcpSocket {
    fn on_timer(&self) {
        let mut st = self.state.lock();
        st.armed = None;
        let now = self.now();
        if let Some(c) = st.cached_mut() {
            c.transmit(self.session(), now);
            self.settle(&mut st, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    #[test]
    fn decisions_follow_the_design() {
        let ours = Some(Ipv4Addr::new(198, 18, 0, 1));
        assert!(bind_is_ours(Ipv4Addr::UNSPECIFIED, ours));
        assert!(bind_is_ours(Ipv4Addr::new(198, 18, 0, 1), ours));
        assert!(!bind_is_ours(Ipv4Addr::LOCALHOST, ours));
        assert!(!bind_is_ours(Ipv4Addr::new(198, 18, 0, 1), None));
        assert!(connect_is_ours(Ipv4Addr::new(198, 18, 0, 2), true));
        assert!(!connect_is_ours(Ipv4Addr::new(198, 18, 0, 2), false));
        assert!(!connect_is_ours(Ipv4Addr::LOCALHOST, true));
        assert!(!connect_is_ours(Ipv4Addr::new(224, 0, 0, 1), true));

        let v4: SocketAddrV4 = "198.18.0.2:80".parse().unwrap();
        assert_eq!(
            target(libc::AF_INET, false, &SockAddrIn::Inet(v4)),
            Target::V4(v4)
        );
        let mapped = SocketAddrV6::new(v4.ip().to_ipv6_mapped(), 80, 0, 0);
        assert_eq!(
            target(libc::AF_INET6, false, &SockAddrIn::Inet6(mapped)),
            Target::V4(v4)
        );
        assert_eq!(
            target(libc::AF_INET6, true, &SockAddrIn::Inet6(mapped)),
            Target::Kernel,
            "IPV6_V6ONLY: never msock's"
        );
        let any6 = SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 8080, 0, 0);
        assert_eq!(
            target(libc::AF_INET6, false, &SockAddrIn::Inet6(any6)),
            Target::V4("0.0.0.0:8080".parse().unwrap())
        );
        let native = SocketAddrV6::new("2001:db8::1".parse().unwrap(), 80, 0, 0);
        assert_eq!(
            target(libc::AF_INET6, false, &SockAddrIn::Inet6(native)),
            Target::Kernel
        );
        assert_eq!(
            target(libc::AF_INET, false, &SockAddrIn::Invalid),
            Target::Invalid(libc::EINVAL)
        );
        assert_eq!(
            target(libc::AF_INET, false, &SockAddrIn::Other(libc::AF_UNIX)),
            Target::Kernel
        );
    }

    #[test]
    fn flushed_bits_map_to_readiness() {
        let w = want_from_bits(TcpReady::READABLE | TcpReady::WRITABLE);
        assert!(w.readable && w.writable && !w.read_hup && !w.hup);
        let w = want_from_bits(TcpReady::ERROR);
        assert!(
            w.readable && w.writable,
            "an error is readable and writable"
        );
        let w = want_from_bits(TcpReady::READ_HUP | TcpReady::HUP);
        assert!(w.readable && w.read_hup && w.hup && !w.writable);
    }

    #[test]
    fn timevals_round_trip() {
        let mut tv = 2i64.to_ne_bytes().to_vec();
        tv.extend_from_slice(&250_000i64.to_ne_bytes());
        let t = timeval_arg(&tv).unwrap();
        assert_eq!(t, Some(Duration::from_millis(2250)));
        assert_eq!(timeval_bytes(t), tv);
        assert_eq!(timeval_arg(&[0u8; 16]).unwrap(), None);
        assert_eq!(timeval_arg(&[0u8; 8]), Err(libc::EINVAL));
    }
}
