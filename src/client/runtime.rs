//! Process-wide state of the client runtime (paper §3.2): the fd table, the session with the
//! netserver, and the receive thread.
//!
//! - **Fd table**: descriptor number → [`Socket`] (UDP or TCP). Several numbers may map to one socket
//!   (dup); a socket's identity is its placeholder's inode. Lookups take a read lock only after
//!   an atomic "any entry?" check, so programs with no msock socket pay one atomic load per
//!   interposed call.
//! - **Session**: the control connection (Hello with our pid and the stats page memfd), the
//!   routing region, the upcall socket, the epoll set and the unresolved-neighbour queues. It is
//!   created lazily by the first AF_INET/AF_INET6 datagram `socket()`; a failed connection is
//!   retried by the next one. Sessions are leaked on purpose (`&'static`): one per process, plus
//!   one per fork generation in a child.
//! - **Receive thread**: one per session; epoll over every cached socket's channel wake fd and
//!   the upcall socket; the epoll timeout drives the neighbour-queue expiry (3 s). It marks
//!   itself inside msock for good, so its own libc calls go straight to libc.
//!
//! Fork: the `pthread_atfork` child handler only bumps a counter (`guard`). In the child, the
//! first use of the session notices the new fork generation and connects a fresh session (the
//! parent's control connection is never used by the child). Sockets inherited from the parent
//! are *detached* in the child for now: their channel rings and endpoint belong to the parent,
//! so every operation on them fails with EBADFD except `close`, which only forgets the
//! descriptor (no `Close` request, the parent's endpoint is untouched). Fork-aware sockets
//! (handing an endpoint to a child) are a later issue.
//!
//! No netserver: `socket(AF_INET|AF_INET6, SOCK_DGRAM)` fails at once with ENETDOWN (the
//! connect to an abstract name without listener is refused immediately), unless
//! `MSOCK_FALLBACK=kernel`, which hands such sockets to the kernel.
#![deny(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use parking_lot::Mutex;

use super::forksafe::{RwLock, RwLockWriteGuard};

use crate::control::transport::{Connection, ControlAddress};
use crate::control::{EndpointId, Reply, Request, Upcall, VERSION};
use crate::msock_debug;
use crate::routing::region::RegionReader;
use crate::routing::table::NextHop;
use crate::wire::EthernetAddress;

use super::guard;
use super::relay::RelayedSocket;
use super::stats::StatsPage;
use super::sys;
use super::tcp::{OfflineSocket, TcpSocket};
use super::tcp_session::{ControlLink, IcmpReport};
use super::timer::Timer;
use super::udp::UdpSocket;
use crate::stack::tcp::isn::IsnGenerator;
use crate::wire::tcp::TcpSeqNumber;

/// How long datagrams wait for an unresolved neighbour (design.md "Send path").
pub const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(3);
/// Datagrams queued per unresolved neighbour (Linux's `unres_qlen` is byte-based; this bounds
/// both count and bytes).
pub const NEIGHBOUR_QUEUE_MAX: usize = 64;
pub const NEIGHBOUR_QUEUE_BYTES: usize = 256 * 1024;

const UPCALL_TOKEN: u64 = 0;

/// Kernel defaults mirrored for SO_RCVBUF/SO_SNDBUF (read once from /proc).
#[derive(Debug, Clone, Copy)]
pub struct BufferLimits {
    pub rmem_default: usize,
    pub rmem_max: usize,
    pub wmem_default: usize,
    pub wmem_max: usize,
}

impl BufferLimits {
    /// Linux's compiled-in defaults, used when /proc is unreadable.
    pub const LINUX: BufferLimits = BufferLimits {
        rmem_default: 212_992,
        rmem_max: 212_992,
        wmem_default: 212_992,
        wmem_max: 212_992,
    };

    /// The limits of this host, read from /proc once per process image (they are the same
    /// for every session of a process and its fork children, which inherit the value: a
    /// fork-per-connection server no longer pays four /proc reads per connection).
    pub fn get() -> BufferLimits {
        static LIMITS: Lazy<BufferLimits> = Lazy::new(BufferLimits::read);
        *LIMITS
    }

    fn read() -> BufferLimits {
        let get = |name: &str, dflt: usize| {
            super::sys::read_proc_int(&format!("/proc/sys/net/core/{name}"))
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(dflt)
        };
        let l = BufferLimits::LINUX;
        BufferLimits {
            rmem_default: get("rmem_default", l.rmem_default),
            rmem_max: get("rmem_max", l.rmem_max),
            wmem_default: get("wmem_default", l.wmem_default),
            wmem_max: get("wmem_max", l.wmem_max),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fd table

/// A socket the fd table knows.
#[derive(Clone)]
pub enum Socket {
    Udp(Arc<UdpSocket>),
    Tcp(Arc<TcpSocket>),
    /// A TCP socket made while no netserver answered (see `tcp::OfflineSocket`).
    Offline(Arc<OfflineSocket>),
    /// A connection the netserver carries through a kernel socketpair (`client::relay`).
    Relayed(Arc<RelayedSocket>),
}

impl Socket {
    /// Same socket object.
    pub fn same(&self, other: &Socket) -> bool {
        match (self, other) {
            (Socket::Udp(a), Socket::Udp(b)) => Arc::ptr_eq(a, b),
            (Socket::Tcp(a), Socket::Tcp(b)) => Arc::ptr_eq(a, b),
            (Socket::Offline(a), Socket::Offline(b)) => Arc::ptr_eq(a, b),
            (Socket::Relayed(a), Socket::Relayed(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    pub fn add_fd(&self, fd: RawFd) {
        match self {
            Socket::Udp(s) => s.add_fd(fd),
            Socket::Tcp(s) => s.add_fd(fd),
            Socket::Offline(s) => s.add_fd(fd),
            Socket::Relayed(s) => s.add_fd(fd),
        }
    }

    /// Removes a descriptor number; true if it was the last one.
    pub fn remove_fd(&self, fd: RawFd) -> bool {
        match self {
            Socket::Udp(s) => s.remove_fd(fd),
            Socket::Tcp(s) => s.remove_fd(fd),
            Socket::Offline(s) => s.remove_fd(fd),
            Socket::Relayed(s) => s.remove_fd(fd),
        }
    }

    pub fn fds(&self) -> Vec<RawFd> {
        match self {
            Socket::Udp(s) => s.fds(),
            Socket::Tcp(s) => s.fds(),
            Socket::Offline(s) => s.fds(),
            Socket::Relayed(s) => s.fds(),
        }
    }

    /// Releases the endpoint after its last descriptor went away.
    pub fn release(&self) {
        match self {
            Socket::Udp(s) => s.release(),
            Socket::Tcp(s) => s.release(),
            // The relay sees the kernel socket close.
            Socket::Offline(_) | Socket::Relayed(_) => {}
        }
    }

    /// Handed to the kernel (drop it from the table).
    pub fn is_kernel(&self) -> bool {
        match self {
            Socket::Udp(s) => s.is_kernel(),
            Socket::Tcp(s) => s.is_kernel(),
            Socket::Offline(s) => s.is_kernel(),
            Socket::Relayed(_) => false,
        }
    }

    /// Served by msock's data path in this process right now.
    pub fn is_cached(&self) -> bool {
        match self {
            Socket::Udp(s) => s.is_cached(),
            Socket::Tcp(s) => s.is_msock(),
            Socket::Offline(_) | Socket::Relayed(_) => false,
        }
    }

    /// Processes the socket's channel (busy poll, receive thread).
    pub fn drive(&self) {
        match self {
            Socket::Udp(s) => s.drive(),
            Socket::Tcp(s) => s.drive(),
            Socket::Offline(_) | Socket::Relayed(_) => {}
        }
    }
}

/// Descriptor number → socket.
pub struct FdTable {
    slots: RwLock<Vec<Option<Socket>>>,
    count: AtomicUsize,
}

impl FdTable {
    pub const fn new() -> FdTable {
        FdTable {
            slots: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
        }
    }

    /// Whether any descriptor is registered (one atomic load).
    pub fn active(&self) -> bool {
        self.count.load(Ordering::Acquire) != 0
    }

    pub fn get(&self, fd: RawFd) -> Option<Socket> {
        if !self.active() || fd < 0 {
            return None;
        }
        self.slots.read().get(fd as usize).cloned().flatten()
    }

    /// Registers `fd`; returns what it replaced (a stale entry of a descriptor closed behind
    /// our back, e.g. by `close_range`).
    pub fn insert(&self, fd: RawFd, sock: Socket) -> Option<Socket> {
        let idx = usize::try_from(fd).ok()?;
        let mut slots = self.slots.write();
        if slots.len() <= idx {
            slots.resize(idx + 1, None);
        }
        let old = slots[idx].replace(sock);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
        old
    }

    pub fn remove(&self, fd: RawFd) -> Option<Socket> {
        let idx = usize::try_from(fd).ok()?;
        let mut slots = self.slots.write();
        let old = slots.get_mut(idx)?.take();
        if old.is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        old
    }

    /// The table's lock, held by the forking thread across `fork` (`client::forksafe`).
    pub fn hold_for_fork(&self) -> TableHold<'_> {
        TableHold(self.slots.write())
    }

    /// Registered descriptor numbers in `first..=last`.
    pub fn fds_in(&self, first: u32, last: u32) -> Vec<RawFd> {
        if !self.active() {
            return Vec::new();
        }
        let slots = self.slots.read();
        let end = (last as usize).min(slots.len().saturating_sub(1));
        (first as usize..=end)
            .filter(|&i| slots.get(i).is_some_and(Option::is_some))
            .filter_map(|i| RawFd::try_from(i).ok())
            .collect()
    }

    /// Every TCP socket in the table, once each (fork/exec preparation: flush, cache).
    pub fn tcp_sockets(&self) -> Vec<Arc<TcpSocket>> {
        let mut out: Vec<Arc<TcpSocket>> = Vec::new();
        if !self.active() {
            return out;
        }
        for s in self.slots.read().iter().flatten() {
            if let Socket::Tcp(t) = s
                && !out.iter().any(|o| Arc::ptr_eq(o, t))
            {
                out.push(Arc::clone(t));
            }
        }
        out
    }

    /// Every relayed socket in the table, once each (exec describes them).
    pub fn relayed_sockets(&self) -> Vec<Arc<RelayedSocket>> {
        let mut out: Vec<Arc<RelayedSocket>> = Vec::new();
        for s in self.sockets() {
            if let Socket::Relayed(r) = s {
                out.push(r);
            }
        }
        out
    }

    /// Every socket in the table, once each.
    pub fn sockets(&self) -> Vec<Socket> {
        let mut out: Vec<Socket> = Vec::new();
        if !self.active() {
            return out;
        }
        for s in self.slots.read().iter().flatten() {
            if !out.iter().any(|o| o.same(s)) {
                out.push(s.clone());
            }
        }
        out
    }
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable::new()
    }
}

/// The fd table's lock held across `fork` ([`FdTable::hold_for_fork`]).
pub struct TableHold<'a>(RwLockWriteGuard<'a, Vec<Option<Socket>>>);

impl TableHold<'_> {
    /// Every TCP socket in the table, once each, as it stands under the held lock (no socket
    /// can be added or removed meanwhile).
    pub fn tcp_sockets(&self) -> Vec<Arc<TcpSocket>> {
        let mut out: Vec<Arc<TcpSocket>> = Vec::new();
        for s in self.0.iter().flatten() {
            if let Socket::Tcp(t) = s
                && !out.iter().any(|o| Arc::ptr_eq(o, t))
            {
                out.push(Arc::clone(t));
            }
        }
        out
    }
}

/// The process's fd table.
pub fn table() -> &'static FdTable {
    static TABLE: FdTable = FdTable::new();
    &TABLE
}

// ---------------------------------------------------------------------------------------------
// Session

/// A datagram waiting for its next hop's MAC address.
struct PendingDatagram {
    sock: Weak<UdpSocket>,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    data: Vec<u8>,
}

struct PendingNeighbour {
    since: Instant,
    bytes: usize,
    items: VecDeque<PendingDatagram>,
}

/// One connection to the netserver and everything that hangs off it.
pub struct Session {
    /// The fork generation this session belongs to.
    pub fork_gen: u64,
    /// Raw numbers of the session's own descriptors (control, upcall, region, stats, epoll),
    /// read without locks: a fork child closes its copies ([`Session::close_in_fork_child`]).
    raw_fds: [RawFd; 5],
    control: Mutex<Connection>,
    upcall: Connection,
    pub region: RegionReader,
    /// The region's memfd, kept for an `execve` hand-off.
    region_fd: OwnedFd,
    pub stats: Arc<StatsPage>,
    pub limits: BufferLimits,
    epoll: OwnedFd,
    sockets: Mutex<HashMap<EndpointId, Entry>>,
    neighbours: Mutex<HashMap<Ipv4Addr, PendingNeighbour>>,
    /// The process's timer thread (TCP engines' deadlines).
    pub timer: Timer,
}

/// A socket the receive thread dispatches to, by endpoint id.
#[derive(Clone)]
enum Entry {
    Udp(Weak<UdpSocket>),
    Tcp(Weak<TcpSocket>),
}

impl ControlLink for Session {
    fn call_control(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(Reply, Vec<OwnedFd>)> {
        match self.request(request, fds) {
            Ok(r) => Ok(r),
            Err(errno) => Ok((Reply::Error { errno }, Vec::new())),
        }
    }
}

/// Why the netserver could not be used.
fn netdown(e: &io::Error) -> i32 {
    msock_debug!("netserver unreachable: {e}");
    libc::ENETDOWN
}

impl Session {
    fn connect(fork_gen: u64) -> Result<Session, i32> {
        let address = ControlAddress::from_env();
        let control = Connection::connect(&address).map_err(|e| netdown(&e))?;
        let control = Connection::from_owned_fd(sys::own(control.into_owned_fd()));
        Session::hello(control, fork_gen)
    }

    /// Registers this process on a control connection (`Hello` with our pid and a new stats
    /// page): a fresh connection, or the one a fork parent obtained for us (`Fork`).
    fn hello(control: Connection, fork_gen: u64) -> Result<Session, i32> {
        let stats =
            Arc::new(StatsPage::create().map_err(|e| e.raw_os_error().unwrap_or(libc::ENOMEM))?);
        let hello = Request::Hello {
            version: VERSION,
            pid: std::process::id(),
        };
        let (reply, fds) = control
            .call(&hello, &[stats.fd()])
            .map_err(|e| netdown(&e))?;
        let mut fds = fds.into_iter();
        let (region_fd, upcall_fd) = match (reply, fds.next(), fds.next()) {
            (Reply::Hello { .. }, Some(region), Some(upcall)) => (region, upcall),
            (Reply::Error { errno }, _, _) => return Err(errno),
            _ => return Err(libc::EPROTO),
        };
        Session::assemble(
            control,
            Connection::from_fd(upcall_fd),
            region_fd,
            stats,
            fork_gen,
        )
    }

    /// A session from its parts (after `Hello`, or inherited across `execve`).
    fn assemble(
        control: Connection,
        upcall: Connection,
        region_fd: OwnedFd,
        stats: Arc<StatsPage>,
        fork_gen: u64,
    ) -> Result<Session, i32> {
        let errno = |e: io::Error| e.raw_os_error().unwrap_or(libc::EPROTO);
        // Kept open (the mapping does not need it) so an `execve` can hand it on.
        let region_keep = sys::own(region_fd.try_clone().map_err(errno)?);
        let region = RegionReader::map(region_fd).map_err(errno)?;
        upcall.set_nonblocking(true).map_err(errno)?;
        let epoll = sys::epoll_create().map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))?;
        sys::epoll_add(epoll.as_fd(), upcall.as_fd().as_raw_fd(), UPCALL_TOKEN)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
        let raw_fds = [
            control.as_fd().as_raw_fd(),
            upcall.as_fd().as_raw_fd(),
            region_keep.as_raw_fd(),
            stats.fd().as_raw_fd(),
            epoll.as_raw_fd(),
        ];
        for fd in raw_fds {
            super::fdguard::protect(fd);
        }
        Ok(Session {
            fork_gen,
            raw_fds,
            control: Mutex::new(control),
            upcall,
            region,
            region_fd: region_keep,
            stats,
            limits: BufferLimits::get(),
            epoll,
            sockets: Mutex::new(HashMap::new()),
            neighbours: Mutex::new(HashMap::new()),
            timer: Timer::new(),
        })
    }

    /// In a fork child: closes the child's copies of this (the parent's) session's descriptors.
    /// Otherwise the netserver would not see the parent's control connection end when the
    /// parent dies (the child would hold it open), and the parent would stay a holder of
    /// every shared endpoint. The session object itself is left alone (leaked, like every
    /// session; its threads did not survive the fork). No lock is taken.
    pub fn close_in_fork_child(&self) {
        for fd in self.raw_fds {
            // Through libmsock's `close` from inside msock: the number is released for reuse.
            let _ = sys::close(fd);
        }
    }

    /// The descriptors a new program image needs to go on with this session (control,
    /// upcall, routing region, stats page), for `client::inherit`.
    pub fn inheritable_fds(&self) -> (RawFd, RawFd, RawFd, RawFd) {
        (
            self.control.lock().as_fd().as_raw_fd(),
            self.upcall.as_fd().as_raw_fd(),
            self.region_fd.as_raw_fd(),
            self.stats.fd().as_raw_fd(),
        )
    }

    /// The netserver's address (msock's address), from the routing region.
    pub fn local_addr(&self) -> Option<Ipv4Addr> {
        self.region.interface().map(|i| i.addr)
    }

    /// Limited broadcast or the subnet broadcast of msock's interface.
    pub fn is_broadcast(&self, ip: Ipv4Addr) -> bool {
        if ip.is_broadcast() {
            return true;
        }
        self.region.interface().is_some_and(|i| {
            i.prefix_len < 31 && {
                let host_mask = u32::MAX >> i.prefix_len;
                u32::from(ip) == (u32::from(i.addr) | host_mask)
            }
        })
    }

    /// The link-level hop of a broadcast: out of msock's interface to ff:ff:ff:ff:ff:ff.
    pub fn broadcast_hop(&self) -> Option<NextHop> {
        let i = self.region.interface()?;
        Some(NextHop {
            ip: Ipv4Addr::BROADCAST,
            src: i.addr,
            mtu: i.mtu,
            src_mac: i.mac,
            dst_mac: Some(EthernetAddress::BROADCAST),
        })
    }

    /// Whether this session belongs to the current process (not inherited through fork).
    pub fn is_current(&self) -> bool {
        self.fork_gen == guard::forked_generation()
    }

    /// One request/reply exchange. Errors are errno values: the netserver's, or ENETDOWN when
    /// the connection is gone.
    pub fn request(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), i32> {
        let control = self.control.lock();
        match control.call(req, fds) {
            Ok((Reply::Error { errno }, _)) => Err(errno),
            Ok(r) => Ok(r),
            Err(e) => Err(netdown(&e)),
        }
    }

    /// Starts receiving for a newly cached socket.
    pub fn add_socket(&self, id: EndpointId, sock: &Arc<UdpSocket>, wake: RawFd) -> io::Result<()> {
        self.sockets
            .lock()
            .insert(id, Entry::Udp(Arc::downgrade(sock)));
        sys::epoll_add(self.epoll.as_fd(), wake, id)
    }

    /// Registers a TCP socket for its upcalls and, with `wake`, its channel's frames (the
    /// receive thread drives it). Registering again replaces the entry.
    pub fn add_tcp_socket(
        &self,
        id: EndpointId,
        sock: &Arc<TcpSocket>,
        wake: Option<RawFd>,
    ) -> io::Result<()> {
        self.sockets
            .lock()
            .insert(id, Entry::Tcp(Arc::downgrade(sock)));
        match wake {
            Some(fd) => sys::epoll_add(self.epoll.as_fd(), fd, id),
            None => Ok(()),
        }
    }

    /// Stops watching a channel (its socket stays registered for upcalls).
    pub fn unwatch(&self, wake: RawFd) {
        let _ = sys::epoll_del(self.epoll.as_fd(), wake);
    }

    /// A reader is about to sleep on the socket's channel and will process it inline: the
    /// receive thread stops watching it, so an arriving frame wakes one thread, not two.
    pub fn mute_socket(&self, id: EndpointId, wake: RawFd) {
        let _ = sys::epoll_mod(self.epoll.as_fd(), wake, id, 0);
    }

    /// The last blocked reader left: the receive thread watches the channel again (level
    /// triggered, so frames that arrived meanwhile are reported at once).
    pub fn unmute_socket(&self, id: EndpointId, wake: RawFd) {
        let _ = sys::epoll_mod(self.epoll.as_fd(), wake, id, libc::EPOLLIN as u32);
    }

    /// Stops receiving for a socket (before its channel is dropped).
    pub fn remove_socket(&self, id: EndpointId, wake: Option<RawFd>) {
        self.sockets.lock().remove(&id);
        if let Some(fd) = wake {
            let _ = sys::epoll_del(self.epoll.as_fd(), fd);
        }
    }

    fn socket_by_id(&self, id: EndpointId) -> Option<Arc<UdpSocket>> {
        match self.sockets.lock().get(&id) {
            Some(Entry::Udp(w)) => w.upgrade(),
            _ => None,
        }
    }

    fn tcp_by_id(&self, id: EndpointId) -> Option<Arc<TcpSocket>> {
        match self.sockets.lock().get(&id) {
            Some(Entry::Tcp(w)) => w.upgrade(),
            _ => None,
        }
    }

    /// The netserver has gone (upcall socket at EOF): every TCP socket learns it.
    fn netserver_gone(&self) {
        let all: Vec<Entry> = self.sockets.lock().values().cloned().collect();
        for e in all {
            if let Entry::Tcp(w) = e
                && let Some(s) = w.upgrade()
            {
                s.netserver_gone();
            }
        }
    }

    /// Queues a datagram for an unresolved neighbour; returns true if the caller must send the
    /// `Resolve` request (first datagram for this neighbour). The oldest datagram is dropped
    /// when the queue is full (as Linux's `__neigh_event_send`); the drop is returned.
    pub fn queue_for_neighbour(
        &self,
        next_hop: Ipv4Addr,
        sock: &Arc<UdpSocket>,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: Vec<u8>,
    ) -> (bool, Option<Weak<UdpSocket>>) {
        let mut map = self.neighbours.lock();
        let mut first = false;
        let entry = map.entry(next_hop).or_insert_with(|| {
            first = true;
            PendingNeighbour {
                since: Instant::now(),
                bytes: 0,
                items: VecDeque::new(),
            }
        });
        entry.bytes += data.len();
        entry.items.push_back(PendingDatagram {
            sock: Arc::downgrade(sock),
            src,
            dst,
            data,
        });
        let mut dropped = None;
        while entry.items.len() > NEIGHBOUR_QUEUE_MAX
            || (entry.bytes > NEIGHBOUR_QUEUE_BYTES && entry.items.len() > 1)
        {
            if let Some(old) = entry.items.pop_front() {
                entry.bytes -= old.data.len();
                dropped = Some(old.sock);
            }
        }
        (first, dropped)
    }

    /// The outcome of a resolution: flush (`Some`) or fail (`None`) everything queued.
    pub fn neighbour_resolved(&self, addr: Ipv4Addr, mac: Option<EthernetAddress>) {
        let Some(entry) = self.neighbours.lock().remove(&addr) else {
            return;
        };
        for p in entry.items {
            let Some(sock) = p.sock.upgrade() else {
                continue;
            };
            match mac {
                Some(mac) => sock.send_resolved(mac, p.src, p.dst, &p.data),
                None => sock.neighbour_failed(p.dst),
            }
        }
    }

    fn expire_neighbours(&self, now: Instant) -> Option<Duration> {
        let expired: Vec<Ipv4Addr> = {
            let map = self.neighbours.lock();
            map.iter()
                .filter(|(_, e)| now.duration_since(e.since) >= NEIGHBOUR_TIMEOUT)
                .map(|(a, _)| *a)
                .collect()
        };
        for addr in expired {
            self.neighbour_resolved(addr, None);
        }
        let map = self.neighbours.lock();
        map.values()
            .map(|e| (e.since + NEIGHBOUR_TIMEOUT).saturating_duration_since(now))
            .min()
    }

    fn drain_upcalls(&self) -> bool {
        loop {
            match self.upcall.recv_upcall() {
                Ok(Upcall::Datagram {
                    id,
                    src,
                    dst,
                    payload,
                }) => {
                    if let Some(sock) = self.socket_by_id(id) {
                        sock.deliver_upcall(src, dst, payload);
                    }
                }
                Ok(Upcall::Resolved { addr, mac }) => self.neighbour_resolved(addr, mac),
                Ok(Upcall::IcmpError { id, remote, errno }) => {
                    if let Some(sock) = self.socket_by_id(id) {
                        sock.icmp_error(remote, errno);
                    }
                }
                Ok(Upcall::TcpIcmpError {
                    id,
                    local,
                    remote,
                    errno,
                    next_hop_mtu,
                    quoted_seq,
                }) => {
                    if let Some(sock) = self.tcp_by_id(id) {
                        sock.on_icmp(&IcmpReport {
                            local,
                            remote,
                            errno,
                            next_hop_mtu,
                            quoted_seq: TcpSeqNumber(quoted_seq),
                        });
                    }
                }
                Ok(Upcall::Acceptable { id, seq }) => {
                    if let Some(sock) = self.tcp_by_id(id) {
                        sock.on_acceptable(seq);
                    }
                }
                Ok(Upcall::TcpReady { id, events }) => {
                    if let Some(sock) = self.tcp_by_id(id) {
                        sock.on_ready(events);
                    }
                }
                Ok(Upcall::Recall { id }) => {
                    if let Some(sock) = self.tcp_by_id(id) {
                        sock.on_recall();
                    }
                }
                Ok(Upcall::SoleHolder { id }) => {
                    if let Some(sock) = self.tcp_by_id(id) {
                        sock.on_sole_holder();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        || matches!(
                            e.raw_os_error(),
                            Some(libc::ECONNRESET | libc::EPIPE | libc::EBADF | libc::ENOTCONN)
                        ) =>
                {
                    msock_debug!("upcall socket closed: {e}");
                    return false;
                }
                // A malformed or oversize upcall was consumed: skip it.
                Err(e) => msock_debug!("bad upcall ignored: {e}"),
            }
        }
    }

    fn receive_loop(&'static self) {
        guard::mark_thread_inside();
        let mut timeout: Option<Duration> = None;
        loop {
            let tokens = match sys::epoll_wait(
                self.epoll.as_fd(),
                64,
                timeout.map(|t| t + Duration::from_millis(1)),
            ) {
                Ok(t) => t,
                Err(e) => {
                    msock_debug!("receive thread: epoll_wait: {e}");
                    return;
                }
            };
            for token in tokens {
                match token {
                    UPCALL_TOKEN => {
                        if !self.drain_upcalls() {
                            let _ =
                                sys::epoll_del(self.epoll.as_fd(), self.upcall.as_fd().as_raw_fd());
                            self.netserver_gone();
                        }
                    }
                    id => {
                        let entry = self.sockets.lock().get(&id).cloned();
                        match entry {
                            Some(Entry::Udp(w)) => {
                                if let Some(sock) = w.upgrade() {
                                    sock.drive();
                                }
                            }
                            Some(Entry::Tcp(w)) => {
                                if let Some(sock) = w.upgrade() {
                                    sock.drive();
                                }
                            }
                            None => {}
                        }
                    }
                }
            }
            timeout = self.expire_neighbours(Instant::now());
        }
    }
}

/// A switchable `&'static Session` (a socket's session changes once, when a fork child adopts
/// it): only `'static` references go in, so reading one back is always valid.
pub struct SessionCell(AtomicPtr<Session>);

impl SessionCell {
    pub fn new(session: &'static Session) -> SessionCell {
        SessionCell(AtomicPtr::new(std::ptr::from_ref(session).cast_mut()))
    }

    #[allow(unsafe_code)]
    pub fn get(&self) -> &'static Session {
        // SAFETY: only `&'static Session` values are ever stored (new/set), and sessions are
        // leaked, never freed.
        unsafe { &*self.0.load(Ordering::Acquire) }
    }

    pub fn set(&self, session: &'static Session) {
        self.0
            .store(std::ptr::from_ref(session).cast_mut(), Ordering::Release);
    }
}

/// The current session (one per fork generation), leaked so sockets and the receive thread
/// can hold `&'static` references; swapped without locks so a child of fork never waits on a
/// lock held by a thread that did not survive the fork.
static SESSION: AtomicPtr<Session> = AtomicPtr::new(std::ptr::null_mut());

static CONNECT_LOCK: Lazy<Mutex<()>> = Lazy::new(|| Mutex::new(()));

/// Whether a session exists (in this or a parent process image).
pub fn has_session() -> bool {
    !SESSION.load(Ordering::Acquire).is_null()
}

#[allow(unsafe_code)]
fn load_session() -> Option<&'static Session> {
    let p = SESSION.load(Ordering::Acquire);
    // SAFETY: every non-null pointer stored in SESSION comes from `Box::leak` in `session()`
    // and is never freed, so it is valid for 'static and only shared references are made.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// The session of this process, connecting (and starting the receive thread) if needed.
pub fn session() -> Result<&'static Session, i32> {
    let gen_now = guard::forked_generation();
    if let Some(s) = load_session()
        && s.fork_gen == gen_now
    {
        return Ok(s);
    }
    // In a fork child the lock may have been held by a vanished thread: try briefly, then
    // proceed without it (two racing connects only cost a redundant connection).
    let _g = CONNECT_LOCK.try_lock_for(Duration::from_millis(100));
    if let Some(s) = load_session()
        && s.fork_gen == gen_now
    {
        return Ok(s);
    }
    install(Session::connect(gen_now)?)
}

/// Makes `session` this process's current session and starts its receive thread.
fn install(session: Session) -> Result<&'static Session, i32> {
    // Process-wide values every TCP connection needs, computed now so that fork children
    // inherit them instead of each computing its own: the checksum kernel (CPU feature
    // detection: `cpuid` traps to the hypervisor in a VM), the clock epoch, the buffer limits.
    let _ = crate::checksum::fast::best();
    let _ = now();
    let session: &'static Session = Box::leak(Box::new(session));
    SESSION.store(std::ptr::from_ref(session).cast_mut(), Ordering::Release);
    std::thread::Builder::new()
        .name("msock-rx".into())
        .spawn(move || session.receive_loop())
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EAGAIN))?;
    Ok(session)
}

/// In a fork child: closes the parent's session descriptors (see
/// [`Session::close_in_fork_child`]); the child's own session starts lazily or from `Fork`.
pub fn drop_parent_session_in_child() {
    if let Some(s) = load_session()
        && s.fork_gen != guard::forked_generation()
    {
        s.close_in_fork_child();
    }
}

/// In a fork child: registers on the control connection the parent obtained with `Fork`
/// (the netserver already counts this session as a holder of every shared endpoint).
pub fn adopt_forked_session(control: OwnedFd) -> Result<&'static Session, i32> {
    let gen_now = guard::forked_generation();
    install(Session::hello(Connection::from_owned_fd(control), gen_now)?)
}

/// In a new program image: goes on with the session the previous image of this process
/// described (`client::inherit`); no `Hello` (the netserver sees the same connection).
pub fn adopt_exec_session(
    inheritance: &super::inherit::Inheritance,
) -> Result<&'static Session, i32> {
    use std::os::fd::FromRawFd;
    let check = |fd: RawFd| sys::get_fd_flags(fd).map(|_| fd).map_err(|_| libc::EBADF);
    let (control, upcall, region, stats) = (
        check(inheritance.control)?,
        check(inheritance.upcall)?,
        check(inheritance.region)?,
        check(inheritance.stats)?,
    );
    #[allow(unsafe_code)]
    // SAFETY: these numbers were open above and were left open for this image by the
    // previous one (`client::process::exec_prepare`), which owned them; nothing else in this
    // fresh image owns them yet.
    let (control, upcall, region, stats) = unsafe {
        (
            OwnedFd::from_raw_fd(control),
            OwnedFd::from_raw_fd(upcall),
            OwnedFd::from_raw_fd(region),
            OwnedFd::from_raw_fd(stats),
        )
    };
    let stats =
        Arc::new(StatsPage::adopt(stats).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?);
    let session = Session::assemble(
        Connection::from_owned_fd(control),
        Connection::from_owned_fd(upcall),
        region,
        stats,
        guard::forked_generation(),
    )?;
    install(session)
}

/// The runtime's clock for TCP engines (µs since the library's first use, plus one second so
/// that no deadline is at zero).
pub fn now() -> crate::stack::Instant {
    static EPOCH: Lazy<Instant> = Lazy::new(Instant::now);
    crate::stack::Instant::from_micros(EPOCH.elapsed().as_micros() as u64 + 1_000_000)
}

/// The process's ISN and timestamp-offset generator (RFC 6528), keyed once from
/// /dev/urandom (a clock-derived key if that cannot be read).
pub fn isn() -> &'static IsnGenerator {
    static ISN: Lazy<IsnGenerator> = Lazy::new(|| {
        use std::io::Read;
        let mut key = [0u8; 16];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
        if read.is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            key = (t ^ (u128::from(std::process::id()) << 64)).to_ne_bytes();
        }
        IsnGenerator::new(key)
    });
    &ISN
}

/// `MSOCK_FALLBACK=kernel`: sockets go to the kernel when no netserver answers.
pub fn fallback_to_kernel() -> bool {
    std::env::var_os("MSOCK_FALLBACK").is_some_and(|v| v == "kernel")
}

/// Raw fd of something, for logging.
pub fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_limits_are_sane() {
        let l = BufferLimits::read();
        assert!(l.rmem_default > 0 && l.rmem_max > 0 && l.wmem_default > 0);
    }
}
