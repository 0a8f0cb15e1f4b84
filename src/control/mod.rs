//! The control protocol between libmsock (client) and the netserver (paper §3.1, §4.3).
//!
//! Transport: a SOCK_SEQPACKET Unix socket; one message per packet, descriptors travel with
//! SCM_RIGHTS. The default address is the abstract name [`DEFAULT_ADDRESS`], which is naturally
//! per network namespace; `MSOCK_CONTROL` overrides it (`@name` = abstract, otherwise a path).
//! Messages are typed and versioned; every message from a client is untrusted input: decoding
//! never panics and a malformed message gets [`Reply::Error`] with EINVAL/EPROTO.
//!
//! Two sockets per client:
//! - the *control* socket: client requests, one netserver reply each, in order;
//! - the *upcall* socket (a socketpair end the netserver passes in [`Reply::Hello`]): netserver
//!   to client notifications ([`Upcall`]) that the client's receive thread handles.
#![deny(unsafe_code)]

pub mod codec;
#[allow(unsafe_code)]
mod fdpass;
pub mod transport;

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::EthernetAddress;

/// Protocol version; bumped on any incompatible change. `Hello` carries it.
/// 2: [`Upcall::TcpIcmpError`] (ICMP errors quoting a segment of a held TCP port).
/// 3: [`Request::HandOver`] (a TCP connection given to the netserver to finish),
///    [`Request::Listen`] / [`Request::Accept`] / [`Upcall::Acceptable`] (listeners held by
///    the netserver).
/// 4: [`Request::RouteAdd`] / [`Request::RouteDel`] / [`Request::NeighAdd`] /
///    [`Request::NeighDel`] (`msock route add|del`, `msock route neigh add|del`).
/// 5: flushed TCP sockets: [`Request::Flush`], [`Request::Send`], [`Request::Recv`],
///    [`Request::Shutdown`], [`Request::Cache`], [`Reply::Sent`], [`Reply::Received`],
///    [`Reply::Cached`], [`Upcall::TcpReady`]; [`Request::SetOption`], [`Request::GetOption`],
///    [`Request::Names`], [`Reply::Option`], [`Reply::Names`]; [`Request::Recall`],
///    [`Upcall::Recall`].
/// 6: sharing: [`Request::Fork`], [`Reply::Forked`], [`Reply::AcceptedDeferred`],
///    [`Upcall::SoleHolder`], [`Upcall::Acceptable`] with its sequence number.
/// 7: [`Request::Relay`] (a connection's bytes carried through a socketpair by the
///    netserver, for descriptors the program reaches without the library: stdio).
pub const VERSION: u16 = 7;

/// Most bytes one [`Request::Send`] carries or one [`Request::Recv`] returns (a message must
/// stay under [`MAX_MESSAGE`]).
pub const MAX_TRANSFER: usize = 64 * 1024;

/// Largest TCP connection image the netserver takes in a [`Request::HandOver`] (buffers up to
/// a few MiB each way, plus state).
pub const MAX_HANDOVER_IMAGE: u64 = 64 << 20;

/// A memfd holding a TCP connection image (`HandOver`, `Flush`, `Accepted`, `Cached`): the
/// way images travel between a process and the netserver.
pub fn image_memfd(image: &[u8], name: &std::ffi::CStr) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(image)?;
    Ok(file.into())
}

/// Abstract socket name of the netserver in the current network namespace.
pub const DEFAULT_ADDRESS: &str = "@msock/control";

/// Environment variable overriding [`DEFAULT_ADDRESS`].
pub const ADDRESS_ENV: &str = "MSOCK_CONTROL";

/// Largest control message (a reassembled 64 KiB datagram upcall plus headers).
pub const MAX_MESSAGE: usize = 70 * 1024;

/// The netserver's name for an endpoint; unique for the netserver's lifetime.
pub type EndpointId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet,
    /// AF_INET6 served over IPv4 (bound to `::` or a v4-mapped address).
    Inet6 {
        v6only: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockKind {
    Datagram,
    Stream,
}

/// Geometry of a packet ring already configured on a passed channel fd, so the receiver can
/// `mmap` it (see `channel::RingConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSpec {
    /// 2 or 3 (TPACKET_V2 / TPACKET_V3).
    pub version: u8,
    pub block_size: u32,
    pub block_count: u32,
    pub frame_size: u32,
    /// Number of TX frames configured (0 = no TX ring; send with sendto/sendmmsg).
    pub tx_frames: u32,
}

/// Client → netserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First message on a connection. Fds: `[stats page memfd]` (optional; the client's
    /// per-socket counters, see `client::stats`: a sealed memfd of the page's size, anything
    /// else is `EINVAL`). `pid` must be the caller's as the kernel reports it (`EPERM`
    /// otherwise); a second Hello is `EISCONN`. Reply: [`Reply::Hello`].
    Hello { version: u16, pid: u32 },
    /// Create an endpoint. Reply: [`Reply::Socket`].
    Socket { family: Family, kind: SockKind },
    /// Bind (port 0 = ephemeral). Reply: [`Reply::Bound`] with the endpoint's channel fd: from
    /// then on the socket is cached in the caller.
    Bind {
        id: EndpointId,
        local: SocketAddrV4,
        reuse_addr: bool,
        reuse_port: bool,
    },
    /// UDP: connect/disconnect bookkeeping (remote `None` = AF_UNSPEC). Reply: [`Reply::Ok`].
    /// TCP: reserves the 4-tuple before the caller sends its SYN (`EADDRNOTAVAIL` when anyone
    /// uses it, as Linux's `__inet_check_established`) and names the connection the endpoint
    /// runs (set once). A bound endpoint gets [`Reply::Ok`]; an unbound one gets a port as
    /// Linux's `__inet_hash_connect` picks it and [`Reply::Bound`] with a channel for the
    /// 4-tuple, as a bind. Optional fds: `[crash
    /// record]`, a memfd of `crash_record::FILE_LEN` bytes the caller keeps mapped and
    /// rewrites (`stack::tcp::crash_record`); the netserver keeps it and reads it (never maps
    /// it) if the caller dies, to close the connection as Linux would (data then FIN, or RST).
    Connect {
        id: EndpointId,
        remote: Option<SocketAddrV4>,
    },
    /// The caller no longer holds the endpoint. Reply: [`Reply::Ok`].
    Close { id: EndpointId },
    /// The caller gives up TCP endpoint `id` together with its connection, which the netserver
    /// runs to its end (unsent data, FIN, TIME_WAIT) as the kernel does for a socket closed by
    /// a process that exits. Fds: `[memfd]` holding the engine's image (`len` bytes from offset
    /// 0, at most [`MAX_HANDOVER_IMAGE`]). Reply: [`Reply::Ok`]; the endpoint is closed then.
    HandOver { id: EndpointId, len: u64 },
    /// The netserver listens on the port TCP endpoint `id` is bound to (it holds the listener,
    /// the handshakes and SYN cookies); `backlog` bounds the accept queue as `listen(2)`'s.
    /// Reply: [`Reply::Ok`]; [`Upcall::Acceptable`] when connections are waiting.
    Listen { id: EndpointId, backlog: u32 },
    /// The oldest established connection of listening endpoint `id`. Reply:
    /// [`Reply::Accepted`], or `Error { EAGAIN }` when none is waiting.
    Accept { id: EndpointId },
    /// Resolve a neighbour. Reply: [`Reply::Resolve`]; if `mac` is `None` the netserver
    /// resolves and sends [`Upcall::Resolved`].
    Resolve { addr: Ipv4Addr },
    /// Statistics for `msock stat`. Reply: [`Reply::Stat`].
    Stat { json: bool },
    /// Adds the route `dest/prefix_len` (on-link when `gateway` is `None`), or replaces the
    /// gateway of the route with that prefix. Only root or the netserver's own uid (peer
    /// credentials of the control connection) may change routes: `EPERM` otherwise; `EINVAL`
    /// for a prefix above 32, host bits set or a non-unicast gateway, `ENETUNREACH` for a
    /// gateway that is not on-link, `ENOSPC` when the region is full. Reply: [`Reply::Ok`].
    RouteAdd {
        dest: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    },
    /// Removes the route `dest/prefix_len` (`ESRCH` if there is none). Reply: [`Reply::Ok`].
    RouteDel { dest: Ipv4Addr, prefix_len: u8 },
    /// Sets a permanent neighbour entry (ARP learning no longer changes or expires it):
    /// `ENETUNREACH` if `ip` is not on-link, `EINVAL` for a non-unicast address or MAC,
    /// `ENOSPC` when full. Reply: [`Reply::Ok`].
    NeighAdd { ip: Ipv4Addr, mac: EthernetAddress },
    /// Removes the neighbour entry of `ip` (`ESRCH` if there is none); ARP resolves it again
    /// on next use. Reply: [`Reply::Ok`].
    NeighDel { ip: Ipv4Addr },
    /// Flushes the caller's cached TCP connection `id` into the netserver (paper §3.1): the
    /// netserver runs it from now on and the caller keeps the socket, reaching it with
    /// [`Request::Send`], [`Request::Recv`], [`Request::Shutdown`] and [`Request::Close`]
    /// until [`Request::Cache`] moves it back. Fds: `[memfd]` with the engine image (`len`
    /// bytes, at most [`MAX_HANDOVER_IMAGE`]), which must describe the endpoint's own
    /// connection. A second fd, optional, is the caller's channel, drained into the engine
    /// just before the export, with `rx_cursor` its read position: the netserver reads the
    /// frames that arrived since (after its own filter took the connection over), so none
    /// is lost in the move. Reply: [`Reply::Ok`]; the caller drops its channel.
    Flush {
        id: EndpointId,
        len: u64,
        rx_cursor: u32,
    },
    /// Queues `data` (at most [`MAX_TRANSFER`] bytes) on flushed connection `id`. Reply:
    /// [`Reply::Sent`] with the bytes taken (fewer when the send buffer fills), or `EAGAIN`
    /// (full), `EPIPE` (write side shut), `ENOTCONN`, `ECONNRESET`, `ETIMEDOUT`, ….
    Send { id: EndpointId, data: Vec<u8> },
    /// Reads up to `max` bytes (capped at [`MAX_TRANSFER`]) from flushed connection `id`
    /// (`peek`: leaves them queued). Reply: [`Reply::Received`] (empty with `fin` = end of
    /// stream), or `EAGAIN` when nothing is there yet, or the connection's error.
    Recv {
        id: EndpointId,
        max: u32,
        peek: bool,
    },
    /// `shutdown(2)` on flushed connection `id`. Reply: [`Reply::Ok`].
    Shutdown { id: EndpointId, how: ShutdownHow },
    /// Moves flushed connection `id` back into the caller (cached again). Reply:
    /// [`Reply::Cached`] with fds `[channel (filter: this 4-tuple), memfd with the image]`.
    Cache { id: EndpointId },
    /// `setsockopt(level, name, value)` on flushed connection `id` (`value` at most
    /// [`MAX_OPTION`] bytes, native byte order as in C), with Linux's semantics
    /// (`stack::tcp::sockopt`). A cached socket's options are set where it runs, in the
    /// process: for one that is not flushed the reply is `ENOTCONN`. Reply: [`Reply::Ok`].
    SetOption {
        id: EndpointId,
        level: i32,
        name: i32,
        value: Vec<u8>,
    },
    /// `getsockopt(level, name)` on flushed connection `id`. Reply: [`Reply::Option`] with
    /// the whole value (the caller truncates to its `optlen`).
    GetOption {
        id: EndpointId,
        level: i32,
        name: i32,
    },
    /// `getsockname` / `getpeername` of endpoint `id` as the netserver's table has them.
    /// Reply: [`Reply::Names`].
    Names { id: EndpointId },
    /// Recall (paper §3.1): asks the process holding cached TCP connection `id` to flush it
    /// into the netserver ([`Upcall::Recall`]). Needs no `Hello` (`msock recall`); only root,
    /// the netserver's own uid or the holder's uid may ask (`EPERM`); `ESRCH` for no such
    /// endpoint, `EINVAL` for one that is not a cached TCP connection. Reply: [`Reply::Ok`]
    /// once the holder has been asked (it flushes asynchronously).
    Recall { id: EndpointId },
    /// The caller is about to `fork` (paper §3.1, sharing): the netserver makes a new client
    /// session for the child, already holding every endpoint in `ids` (each held by the
    /// caller) beside the caller, so neither process's later close can end a connection the
    /// other still holds. Reply: [`Reply::Forked`] with fds `[control]`: the child's end of
    /// its new control connection, on which the child sends its own `Hello` (its pid, its
    /// stats page) and gets its own upcall socket. The caller closes its copy after `fork`.
    /// A connection cached in the caller must be flushed first, except one accepted through
    /// a `SO_CONCURRENT_SERVER` listener and not yet cached anywhere, which the child may
    /// [`Request::Cache`] although the parent still holds it (delayed caching, §4.2).
    /// Errors: `EBADF` (an id the caller does not hold), `EINVAL` (more than
    /// [`MAX_FORK_ENDPOINTS`], or a connection still cached in the caller).
    Fork { ids: Vec<EndpointId> },
    /// The caller hands its hold on flushed TCP connection `id` to a *relay* in the netserver:
    /// fds `[socket]` is one end of a stream socketpair whose other end the caller's program
    /// descriptors now refer to. The netserver moves bytes both ways between that socket and
    /// the connection (end of file on it is the program's shutdown or last close), so the
    /// connection works through any path to the kernel, glibc's stdio included. The relay is a
    /// holder like a process: the connection ends when the relay and every other holder let
    /// go. Reply: [`Reply::Ok`]. Errors: `EBADF` (not held, or no socket passed), `ENOTCONN`
    /// (not a connection), `EINVAL` (cached in the caller: flush it first), `ERR_RECALLING`
    /// (cached in another holder: retry when told).
    Relay { id: EndpointId },
}

/// Largest option value [`Request::SetOption`] carries (TCP_INFO, 280 bytes, is the largest
/// Linux TCP option read; nothing set is near this).
pub const MAX_OPTION: usize = 1024;

/// Option level of msock's own socket options (`include/msock.h`: `SOL_MSOCK`, "MS").
pub const SOL_MSOCK: i32 = 0x4d53;
/// `SO_CONCURRENT_SERVER` (paper §4.2, delayed caching): set to 1 on a listening socket,
/// connections accepted through it stay in the netserver until a `fork`, which caches them
/// straight into the child instead of into the accepting parent.
pub const SO_CONCURRENT_SERVER: i32 = 1;

/// Most endpoints one [`Request::Fork`] may name.
pub const MAX_FORK_ENDPOINTS: usize = 4096;

/// The errno a holder of a shared endpoint gets when another holder has it cached: the
/// netserver has sent that holder a [`Upcall::Recall`]; the request is to be retried once the
/// connection is flushed (a [`Upcall::TcpReady`] with every bit set tells the waiting holder).
pub const ERR_RECALLING: i32 = libc::ESTALE;

/// Which side(s) [`Request::Shutdown`] shuts (`SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownHow {
    Read,
    Write,
    Both,
}

/// Netserver → client, one per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Fds: `[routing region (read-only memfd), upcall socket]`.
    Hello {
        client_id: u32,
        region_len: u64,
    },
    Socket {
        id: EndpointId,
    },
    /// Fds: `[channel]` (AF_PACKET, bound, filter locked, rings configured as `ring`).
    Bound {
        local: SocketAddrV4,
        ring: RingSpec,
    },
    Ok,
    Resolve {
        mac: Option<EthernetAddress>,
    },
    Stat {
        text: String,
    },
    /// A connection for the caller, now cached in it: a new endpoint `id`, its `remote`, and
    /// fds `[channel (filter: this 4-tuple), memfd holding the engine image (len bytes),
    /// crash record]`; the third (absent if the netserver could not make one) is a sealed
    /// memfd of `crash_record::FILE_LEN` bytes the caller maps read-write and keeps its
    /// connection's crash record in (see [`Request::Connect`]).
    Accepted {
        id: EndpointId,
        remote: SocketAddrV4,
        ring: RingSpec,
        len: u64,
    },
    /// Bytes a [`Request::Send`] queued.
    Sent {
        n: u32,
    },
    /// What a [`Request::Recv`] read; empty with `fin` at the end of the stream.
    Received {
        data: Vec<u8>,
        fin: bool,
    },
    /// A flushed connection, cached again in the caller (same endpoint id). Fds: `[channel
    /// (filter: the connection's 4-tuple), memfd holding the engine image (len bytes)]`.
    Cached {
        ring: RingSpec,
        len: u64,
    },
    /// A [`Request::GetOption`] value.
    Option {
        value: Vec<u8>,
    },
    /// The local address (`0.0.0.0:0` when unbound) and the remote (`None` when not
    /// connected) of an endpoint.
    Names {
        local: SocketAddrV4,
        remote: Option<SocketAddrV4>,
    },
    /// A new client session for a child about to be forked ([`Request::Fork`]); fds
    /// `[control]`.
    Forked,
    /// A connection accepted through a `SO_CONCURRENT_SERVER` listener: endpoint `id` stays in
    /// the netserver (flushed state, no fds) until a holder caches it; after a `fork` the
    /// child does ([`Request::Fork`]).
    AcceptedDeferred {
        id: EndpointId,
        remote: SocketAddrV4,
    },
    /// A Linux errno value.
    Error {
        errno: i32,
    },
}

/// Netserver → client, unsolicited, on the upcall socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upcall {
    /// A datagram the netserver received for a socket cached in this client (a reassembled
    /// fragmented datagram).
    Datagram {
        id: EndpointId,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: Vec<u8>,
    },
    /// Outcome of an earlier `Resolve` (`None`: no answer, the neighbour is unreachable).
    Resolved {
        addr: Ipv4Addr,
        mac: Option<EthernetAddress>,
    },
    /// An ICMP error concerning a datagram this socket sent (errno as Linux maps it).
    IcmpError {
        id: EndpointId,
        remote: SocketAddrV4,
        errno: i32,
    },
    /// An ICMP destination-unreachable quoting a TCP segment sent from a port this client
    /// holds: `errno` as Linux maps the code (EMSGSIZE for fragmentation needed, whose
    /// `next_hop_mtu` is the RFC 1191 field; other codes carry it as received) and the quoted
    /// segment's sequence number, for the engine's `on_icmp_frag_needed` /
    /// `on_icmp_unreachable`.
    TcpIcmpError {
        id: EndpointId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        errno: i32,
        next_hop_mtu: u16,
        quoted_seq: u32,
    },
    /// Listening endpoint `id` has established connections waiting for [`Request::Accept`]
    /// (sent when its accept queue becomes non-empty). `seq` is how many `Accept` requests of
    /// this client on `id` the netserver had answered when it sent this: a client that has
    /// sent more since knows the news is stale (a later `Accept` already saw the queue), so a
    /// listener is never shown readable when nothing waits.
    Acceptable { id: EndpointId, seq: u32 },
    /// Flushed connection `id` gained readiness: `events` are [`TcpReady`] bits (sent on each
    /// rise of a bit, so a client blocked in a read or poll knows when to ask again).
    TcpReady { id: EndpointId, events: u8 },
    /// The netserver wants cached connection `id` back: the holder flushes it
    /// ([`Request::Flush`]) and serves it through the netserver from then on.
    Recall { id: EndpointId },
    /// The other holders of shared connection `id` closed it: this client is its only holder
    /// and may cache it again ([`Request::Cache`], paper §3.1: "cached again when a close
    /// leaves a single holder").
    SoleHolder { id: EndpointId },
}

/// Bits of [`Upcall::TcpReady`] (the engine's `Readiness`).
pub struct TcpReady;

impl TcpReady {
    pub const READABLE: u8 = 1;
    pub const WRITABLE: u8 = 2;
    /// The peer shut its write side (EPOLLRDHUP).
    pub const READ_HUP: u8 = 4;
    pub const HUP: u8 = 8;
    pub const ERROR: u8 = 16;
    /// An urgent byte is waiting (POLLPRI).
    pub const PRIORITY: u8 = 32;
    /// Every bit: not readiness but "the recall you waited for is over, retry"
    /// ([`ERR_RECALLING`]).
    pub const RETRY: u8 = 0xff;
}
