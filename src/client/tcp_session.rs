//! The I/O shell around one TCP engine in a client process: it registers with the netserver,
//! holds a TCP port there and receives the port's AF_PACKET channel (filter set and locked by
//! the netserver), builds frames for what the engine emits (Ethernet + IPv4 with DF + TCP, the
//! checksum computed while copying the payload out of the send ring, paper §7.2), parses
//! arriving frames back into segments (bad ones counted, never a panic), and keeps time.
//! ICMP destination-unreachable messages quoting our segments reach it from the netserver as
//! upcalls ([`TcpSession::upcalls`]) and are applied with [`apply_icmp`] (RFC 1191 PMTU,
//! RFC 1122 §4.2.3.9 soft/hard errors). `msock tcp` drives it; the preload library's TCP
//! sockets will reuse it.
#![deny(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration as StdDuration;

use crate::channel::{Channel, PacketChannel};
use crate::checksum;
use crate::client::crash_file::CrashFile;
use crate::control::transport::{Connection, ControlAddress};
use crate::control::{Family, Reply, Request, SockKind, Upcall, VERSION};
use crate::routing::region::RegionReader;
use crate::stack::Instant;
use crate::stack::tcp::connection::{EmitError, Outgoing, TcpConnection};
pub use crate::stack::tcp::icmp::{IcmpReport, apply_icmp};
use crate::wire::ipv4::IpProtocol;
use crate::wire::tcp::TcpSeqNumber;
use crate::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Ipv4Packet, Ipv4Repr,
    TcpPacket, TcpRepr,
};

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;

/// Frames and segments the session dropped, by cause.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bad_frames: u64,
    pub bad_tcp_checksum: u64,
    pub channel_full: u64,
    /// ICMP errors the netserver forwarded.
    pub icmp_errors: u64,
    /// Frames not sent because the next hop's MAC was not known yet (a resolution was asked
    /// for; the engine retransmits as if they were lost).
    pub no_neighbor: u64,
}

/// The next hop's MAC for one destination, valid while the routing region's generation is
/// unchanged (so route and ARP changes are followed on the next transmit).
#[derive(Debug, Clone, Copy)]
struct NextHopCache {
    remote: Ipv4Addr,
    generation: u64,
    mac: EthernetAddress,
}

/// Bound on remembered resolution requests (a SYN flood from spoofed sources asks for many).
const MAX_PENDING_RESOLUTIONS: usize = 1024;
/// A destination without a MAC is asked for again after this long.
const RESOLVE_RETRY: StdDuration = StdDuration::from_secs(1);

/// The request path a [`TcpLink`] uses for its one request, `Resolve` (an unknown next hop):
/// the CLI's own control connection, or libmsock's shared per-process session.
pub trait ControlLink {
    /// One request/reply exchange (an error reply is returned as `Reply::Error`).
    fn call_control(
        &self,
        request: &Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<(Reply, Vec<std::os::fd::OwnedFd>)>;
}

impl ControlLink for Connection {
    fn call_control(
        &self,
        request: &Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> io::Result<(Reply, Vec<std::os::fd::OwnedFd>)> {
        self.call(request, fds)
    }
}

/// The data path of one TCP connection in a process (no netserver hop): its channel, the
/// frames built for what the engine emits, the next hop from the routing region, and the
/// connection's crash record. [`TcpSession`] wraps one for `msock tcp`; libmsock's TCP
/// sockets (`client::tcp`) own one per cached connection.
pub struct TcpLink {
    region: RegionReader,
    /// The endpoint's channel: the held port's, then (after `accept`) the connection's; none
    /// while the netserver listens for us (the port's frames are the netserver's then).
    channel: Option<PacketChannel>,
    local: SocketAddrV4,
    src_mac: EthernetAddress,
    next_hop: Option<NextHopCache>,
    /// When a resolution was last asked for, per next hop without a MAC.
    resolving: std::collections::HashMap<Ipv4Addr, std::time::Instant>,
    ident: u16,
    pub stats: SessionStats,
    /// The crash record of the connection this link runs (and its remote): the netserver
    /// reads it if this process is killed ([`crate::client::crash_file`]).
    crash: Option<(CrashFile, SocketAddrV4)>,
}

/// A channel handed over with its read position (a `Flush` request's second fd).
pub type ChannelAt = (PacketChannel, u32);

/// One held TCP port and its channel.
pub struct TcpSession {
    control: Connection,
    /// The netserver's name for the held port's endpoint.
    id: crate::control::EndpointId,
    upcall: Connection,
    link: TcpLink,
    epoch: std::time::Instant,
    /// The netserver recalled the connection ([`TcpSession::take_recall`]).
    recalled: bool,
}

impl std::ops::Deref for TcpSession {
    type Target = TcpLink;
    fn deref(&self) -> &TcpLink {
        &self.link
    }
}

impl std::ops::DerefMut for TcpSession {
    fn deref_mut(&mut self) -> &mut TcpLink {
        &mut self.link
    }
}

/// The connection in an image memfd the netserver passed (`len` bytes from offset 0).
pub fn import_image(fd: std::os::fd::OwnedFd, len: u64, now: Instant) -> io::Result<TcpConnection> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l as u64 <= crate::control::MAX_HANDOVER_IMAGE)
        .ok_or_else(|| proto("image length"))?;
    let mut image = vec![0u8; len];
    std::fs::File::from(fd).read_exact_at(&mut image, 0)?;
    TcpConnection::import(&image, now).map_err(|e| proto(format!("image: {e:?}")))
}

fn proto(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netserver: {e}"))
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl TcpSession {
    /// Registers with the netserver and holds TCP port `port` (0 = ephemeral).
    pub fn open(port: u16) -> io::Result<TcpSession> {
        let control = Connection::connect(&ControlAddress::from_env())?;
        let (reply, fds) = control.call(
            &Request::Hello {
                version: VERSION,
                pid: std::process::id(),
            },
            &[],
        )?;
        let mut fds = fds.into_iter();
        let (region_fd, upcall_fd) = match (reply, fds.next(), fds.next()) {
            (Reply::Hello { .. }, Some(region), Some(upcall)) => (region, upcall),
            (Reply::Error { errno: e }, _, _) => return Err(errno(e)),
            (other, _, _) => return Err(proto(format!("unexpected reply {other:?}"))),
        };
        let region = RegionReader::map(region_fd)?;
        let upcall = Connection::from_fd(upcall_fd);
        upcall.set_nonblocking(true)?;
        TcpSession::with_endpoint(control, upcall, region, port)
    }

    /// Another session of the same client (the same control and upcall sockets, so the
    /// netserver sees one process holding both endpoints), holding TCP port `port`. Requests
    /// of the two must not interleave (one thread drives both); upcalls for either may be
    /// drained by either.
    pub fn sibling(&self, port: u16) -> io::Result<TcpSession> {
        let control = Connection::from_owned_fd(self.control.as_fd().try_clone_to_owned()?);
        let upcall = Connection::from_owned_fd(self.upcall.as_fd().try_clone_to_owned()?);
        TcpSession::with_endpoint(control, upcall, self.region.clone(), port)
    }

    /// Creates and binds a TCP endpoint on a registered control connection.
    fn with_endpoint(
        control: Connection,
        upcall: Connection,
        region: RegionReader,
        port: u16,
    ) -> io::Result<TcpSession> {
        let id = match control.call(
            &Request::Socket {
                family: Family::Inet,
                kind: SockKind::Stream,
            },
            &[],
        )? {
            (Reply::Socket { id }, _) => id,
            (Reply::Error { errno: e }, _) => return Err(errno(e)),
            (other, _) => return Err(proto(format!("unexpected reply {other:?}"))),
        };
        let bind = Request::Bind {
            id,
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            reuse_addr: false,
            reuse_port: false,
        };
        let (local, ring, fd) = match control.call(&bind, &[])? {
            (Reply::Bound { local, ring }, fds) => match fds.into_iter().next() {
                Some(fd) => (local, ring, fd),
                None => return Err(proto("bind reply without a channel")),
            },
            (Reply::Error { errno: e }, _) => return Err(errno(e)),
            (other, _) => return Err(proto(format!("unexpected reply {other:?}"))),
        };
        let channel = PacketChannel::from_fd(fd, ring)?;
        let link = TcpLink::new(region, Some(channel), local.port())?;
        Ok(TcpSession {
            control,
            id,
            upcall,
            link,
            epoch: std::time::Instant::now(),
            recalled: false,
        })
    }

    /// Gives the connection to the netserver, which runs it to its end (unsent data, FIN,
    /// TIME_WAIT) as the kernel does for a socket whose process has gone; the held port is
    /// released with it. The image travels in a memfd (it holds the buffered data).
    pub fn hand_over(&mut self, conn: &TcpConnection, now: Instant) -> io::Result<()> {
        let image = conn.export(now);
        let file = crate::control::image_memfd(&image, c"msock-tcp-handover")?;
        let request = Request::HandOver {
            id: self.id,
            len: image.len() as u64,
        };
        match self.control.call(&request, &[file.as_fd()])? {
            (Reply::Ok, _) => Ok(()),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// Tells the netserver which connection this endpoint runs (after a connect), so it can
    /// tell the connection's segments apart and reset the peer if this process dies.
    ///
    /// The connection's crash-record file goes with the request (if it could be created), so
    /// that a `kill -9` of this process still delivers what was written and closes with FIN.
    pub fn connected(&mut self, remote: SocketAddrV4) -> io::Result<()> {
        let record = CrashFile::create().ok();
        let fds: Vec<std::os::fd::BorrowedFd<'_>> = record.iter().map(|f| f.fd()).collect();
        match self.control.call(
            &Request::Connect {
                id: self.id,
                remote: Some(remote),
            },
            &fds,
        )? {
            (Reply::Ok, _) => {
                self.link.set_crash_record(record, remote);
                Ok(())
            }
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// Flushes the connection into the netserver (paper §3.1): it runs there from now on, this
    /// session keeps the socket and reaches it with [`TcpSession::flushed_send`],
    /// [`TcpSession::flushed_recv`], [`TcpSession::flushed_shutdown`] and [`TcpSession::close`]
    /// until [`TcpSession::cache`] brings it back. The channel is closed (the connection's
    /// frames are the netserver's now).
    pub fn flush(&mut self, conn: &mut TcpConnection, now: Instant) -> io::Result<()> {
        // Everything that arrived goes into the image; what arrives after, the netserver
        // reads from this channel (passed along with its read position). From here the
        // netserver runs the connection: the crash record would describe a past state (after
        // a later cache, one the peer is beyond). It is invalid until the connection is
        // cached again and republished; a crash meanwhile resets the peer.
        let (image, channel) = self.link.prepare_flush(conn, now)?;
        let file = crate::control::image_memfd(&image, c"msock-tcp-flush")?;
        let request = Request::Flush {
            id: self.id,
            len: image.len() as u64,
            rx_cursor: channel.as_ref().map_or(0, |(_, cursor)| *cursor),
        };
        let mut fds = vec![file.as_fd()];
        if let Some((channel, _)) = channel.as_ref() {
            fds.push(channel.as_fd());
        }
        match self.control.call(&request, &fds)? {
            (Reply::Ok, _) => Ok(()),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// `send` on the flushed connection: the bytes the netserver queued (at most
    /// [`crate::control::MAX_TRANSFER`] per call); `EAGAIN` when its send buffer is full.
    pub fn flushed_send(&mut self, data: &[u8]) -> io::Result<usize> {
        let data = data[..data.len().min(crate::control::MAX_TRANSFER)].to_vec();
        match self
            .control
            .call(&Request::Send { id: self.id, data }, &[])?
        {
            (Reply::Sent { n }, _) => Ok(n as usize),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// `recv` on the flushed connection: up to `max` bytes, `Ok(None)` at the end of the
    /// stream, `EAGAIN` when nothing is there yet.
    pub fn flushed_recv(&mut self, max: usize, peek: bool) -> io::Result<Option<Vec<u8>>> {
        let request = Request::Recv {
            id: self.id,
            max: max.min(crate::control::MAX_TRANSFER) as u32,
            peek,
        };
        match self.control.call(&request, &[])? {
            (Reply::Received { fin: true, .. }, _) => Ok(None),
            (Reply::Received { data, .. }, _) => Ok(Some(data)),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// `shutdown` on the flushed connection.
    pub fn flushed_shutdown(&mut self, how: crate::control::ShutdownHow) -> io::Result<()> {
        match self
            .control
            .call(&Request::Shutdown { id: self.id, how }, &[])?
        {
            (Reply::Ok, _) => Ok(()),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// `setsockopt` on the flushed connection (Linux semantics, `stack::tcp::sockopt`).
    pub fn flushed_set_option(&mut self, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
        let request = Request::SetOption {
            id: self.id,
            level,
            name,
            value: value.to_vec(),
        };
        match self.control.call(&request, &[])? {
            (Reply::Ok, _) => Ok(()),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// `getsockopt` on the flushed connection: the whole value.
    pub fn flushed_get_option(&mut self, level: i32, name: i32) -> io::Result<Vec<u8>> {
        let request = Request::GetOption {
            id: self.id,
            level,
            name,
        };
        match self.control.call(&request, &[])? {
            (Reply::Option { value }, _) => Ok(value),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// The endpoint's local and remote addresses as the netserver's table has them.
    pub fn names(&mut self) -> io::Result<(SocketAddrV4, Option<SocketAddrV4>)> {
        match self.control.call(&Request::Names { id: self.id }, &[])? {
            (Reply::Names { local, remote }, _) => Ok((local, remote)),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// Whether the netserver has recalled the connection since the last call: the driver
    /// then flushes it ([`TcpSession::flush`]).
    pub fn take_recall(&mut self) -> bool {
        std::mem::take(&mut self.recalled)
    }

    /// Brings the flushed connection back into this process (paper §3.1 "cache"): it runs
    /// here again, on a channel for its 4-tuple.
    pub fn cache(&mut self, now: Instant) -> io::Result<TcpConnection> {
        let (reply, fds) = self.control.call(&Request::Cache { id: self.id }, &[])?;
        let (ring, len) = match reply {
            Reply::Cached { ring, len } => (ring, len),
            Reply::Error { errno: e } => return Err(errno(e)),
            other => return Err(proto(format!("unexpected reply {other:?}"))),
        };
        let mut fds = fds.into_iter();
        let (Some(channel_fd), Some(image_fd)) = (fds.next(), fds.next()) else {
            return Err(proto("cache reply without its descriptors"));
        };
        let conn = import_image(image_fd, len, now)?;
        self.channel = Some(PacketChannel::from_fd(channel_fd, ring)?);
        Ok(conn)
    }

    /// Releases the endpoint (its connection has ended here).
    pub fn close(&mut self) -> io::Result<()> {
        match self.control.call(&Request::Close { id: self.id }, &[])? {
            (Reply::Ok, _) => Ok(()),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// Has the netserver listen on the held port (it runs the handshakes, SYN cookies and the
    /// accept queue); connections then come from [`TcpSession::accept`]. The port's channel
    /// is closed: its frames are the netserver's now (a flood must not wake us per SYN).
    pub fn listen(&mut self, backlog: u32) -> io::Result<()> {
        match self.control.call(
            &Request::Listen {
                id: self.id,
                backlog,
            },
            &[],
        )? {
            (Reply::Ok, _) => {
                self.channel = None;
                Ok(())
            }
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
    }

    /// The oldest connection waiting at the netserver's listener, `None` if none yet. The
    /// session then serves that connection: its channel (the connection's 4-tuple) replaces the
    /// port's, and the listener is closed (like `nc -l`, one connection is served).
    pub fn accept(&mut self, now: Instant) -> io::Result<Option<TcpConnection>> {
        let (reply, fds) = self.control.call(&Request::Accept { id: self.id }, &[])?;
        let (id, ring, len) = match reply {
            Reply::Accepted { id, ring, len, .. } => (id, ring, len),
            Reply::Error { errno: e } if e == libc::EAGAIN => return Ok(None),
            Reply::Error { errno: e } => return Err(errno(e)),
            other => return Err(proto(format!("unexpected reply {other:?}"))),
        };
        let mut fds = fds.into_iter();
        let (Some(channel_fd), Some(image_fd)) = (fds.next(), fds.next()) else {
            return Err(proto("accept reply without its descriptors"));
        };
        let mut conn = import_image(image_fd, len, now)?;
        // The third descriptor is the connection's crash-record file (made by the netserver).
        let crash = fds
            .next()
            .and_then(|fd| CrashFile::from_fd(fd).ok())
            .map(|mut file| {
                file.publish(&mut conn, now);
                file
            });
        self.link.set_crash_record(crash, conn.remote());
        let channel = PacketChannel::from_fd(channel_fd, ring)?;
        let listener = std::mem::replace(&mut self.id, id);
        self.channel = Some(channel);
        let _ = self.control.call(&Request::Close { id: listener }, &[]);
        Ok(Some(conn))
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64 + 1_000_000)
    }

    /// Finds the MAC of the next hop towards `remote` (routing region first, then an ARP
    /// resolution by the netserver, waiting up to 3 s).
    pub fn resolve(&mut self, remote: Ipv4Addr) -> io::Result<()> {
        let hop = self
            .region
            .lookup(remote)
            .ok_or_else(|| errno(libc::ENETUNREACH))?;
        if let Some(mac) = self.region.neighbor(hop.ip) {
            self.remember(remote, mac);
            return Ok(());
        }
        match self.control.call(&Request::Resolve { addr: hop.ip }, &[])? {
            (Reply::Resolve { mac: Some(mac) }, _) => {
                self.remember(remote, mac);
                return Ok(());
            }
            (Reply::Resolve { mac: None }, _) => {}
            (Reply::Error { errno: e }, _) => return Err(errno(e)),
            (other, _) => return Err(proto(format!("unexpected reply {other:?}"))),
        }
        let deadline = std::time::Instant::now() + StdDuration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let mut pfd = [nix::poll::PollFd::new(
                self.upcall.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(200u16));
            if let Ok(Upcall::Resolved { addr, mac }) = self.upcall.recv_upcall()
                && addr == hop.ip
            {
                return match mac {
                    Some(mac) => {
                        self.remember(remote, mac);
                        Ok(())
                    }
                    None => Err(errno(libc::EHOSTUNREACH)),
                };
            }
            if let Some(mac) = self.region.neighbor(hop.ip) {
                self.remember(remote, mac);
                return Ok(());
            }
        }
        Err(errno(libc::EHOSTUNREACH))
    }

    /// [`TcpLink::transmit`] with this session's control connection.
    pub fn transmit(&mut self, conn: &mut TcpConnection, now: Instant) -> io::Result<()> {
        self.link.transmit(&self.control, conn, now)
    }

    /// [`TcpLink::send_segment`] with this session's control connection.
    pub fn send_segment(&mut self, remote: SocketAddrV4, repr: &TcpRepr<'_>) -> io::Result<()> {
        self.link.send_segment(&self.control, remote, repr)
    }

    pub fn upcall_fd(&self) -> RawFd {
        self.upcall.as_fd().as_raw_fd()
    }

    /// The upcall socket, to poll for netserver notifications ([`TcpSession::upcalls`]).
    pub fn upcall(&self) -> std::os::fd::BorrowedFd<'_> {
        self.upcall.as_fd()
    }

    /// Drains the upcall socket without blocking, handing each forwarded ICMP error to
    /// `on_icmp`. Fails with ENETDOWN when the netserver has gone (the socket reached EOF):
    /// the held port and its filter went with it.
    pub fn upcalls(&mut self, mut on_icmp: impl FnMut(IcmpReport)) -> io::Result<()> {
        loop {
            match self.upcall.recv_upcall() {
                Ok(Upcall::TcpIcmpError {
                    local,
                    remote,
                    errno,
                    next_hop_mtu,
                    quoted_seq,
                    ..
                }) => {
                    self.stats.icmp_errors += 1;
                    on_icmp(IcmpReport {
                        local,
                        remote,
                        errno,
                        next_hop_mtu,
                        quoted_seq: TcpSeqNumber(quoted_seq),
                    });
                }
                // The listener's queue has connections, or a flushed connection became ready:
                // `accept` / the flushed requests are tried on every wake-up.
                Ok(Upcall::Acceptable { .. } | Upcall::TcpReady { .. }) => {}
                // The netserver wants this session's connection flushed (`take_recall`).
                Ok(Upcall::Recall { id }) => self.recalled |= id == self.id,
                // A session never shares its connection with another process.
                Ok(Upcall::SoleHolder { .. }) => {}
                // Late resolutions and UDP upcalls are not for a TCP session.
                Ok(
                    Upcall::Resolved { .. } | Upcall::Datagram { .. } | Upcall::IcmpError { .. },
                ) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::UnexpectedEof
                        || matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)) =>
                {
                    return Err(errno(libc::ENETDOWN));
                }
                // A malformed upcall was consumed: skip it.
                Err(_) => {}
            }
        }
    }
}

impl TcpLink {
    /// A link over `channel` (none yet: the netserver listens, or the connection is flushed)
    /// for msock's address and `port`, next hops from `region`.
    pub fn new(
        region: RegionReader,
        channel: Option<PacketChannel>,
        port: u16,
    ) -> io::Result<TcpLink> {
        let iface = region
            .interface()
            .ok_or_else(|| proto("routing region has no interface"))?;
        Ok(TcpLink {
            local: SocketAddrV4::new(iface.addr, port),
            src_mac: iface.mac,
            region,
            channel,
            next_hop: None,
            resolving: std::collections::HashMap::new(),
            ident: (std::process::id() as u16).wrapping_mul(7919),
            stats: SessionStats::default(),
            crash: None,
        })
    }

    /// The channel (`None` while the connection is not cached here).
    pub fn channel(&self) -> Option<&PacketChannel> {
        self.channel.as_ref()
    }

    /// Replaces the channel (a cache), returning the old one.
    pub fn set_channel(&mut self, channel: Option<PacketChannel>) -> Option<PacketChannel> {
        std::mem::replace(&mut self.channel, channel)
    }

    /// Sets the crash record of the connection to `remote` (published on every transmit).
    pub fn set_crash_record(&mut self, file: Option<CrashFile>, remote: SocketAddrV4) {
        self.crash = file.map(|f| (f, remote));
    }

    /// Invalidates the crash record: the connection leaves this process (flush, hand-over).
    pub fn invalidate_crash_record(&mut self) {
        if let Some((record, _)) = self.crash.as_mut() {
            record.invalidate();
        }
    }

    /// The routing region.
    pub fn region(&self) -> &RegionReader {
        &self.region
    }

    /// Drains every frame into `conn` (what arrived for it; others are dropped), exports it
    /// and gives back the image with the channel and its read position, for a `Flush`
    /// request (paper §3.1). The crash record is invalidated: the netserver runs it now.
    pub fn prepare_flush(
        &mut self,
        conn: &mut TcpConnection,
        now: Instant,
    ) -> io::Result<(Vec<u8>, Option<ChannelAt>)> {
        let remote = conn.remote();
        self.receive(|src, seg| {
            if src == remote {
                conn.process(now, seg);
            }
        })?;
        let image = conn.export(now);
        self.invalidate_crash_record();
        let channel = self.channel.take();
        let with_cursor = channel.and_then(|c| c.rx_cursor().map(|cur| (c, cur)));
        Ok((image, with_cursor))
    }

    /// msock's address and the held port.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    /// The channel's counters (frames, bytes, frames the kernel dropped on a full ring).
    pub fn channel_stats(&self) -> crate::channel::ChannelStats {
        self.channel.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// The channel, to poll for arriving frames (`None` while the netserver listens for us).
    pub fn wake(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.channel.as_ref().map(|c| c.as_fd())
    }

    fn remember(&mut self, remote: Ipv4Addr, mac: EthernetAddress) {
        self.next_hop = Some(NextHopCache {
            remote,
            generation: self.region.generation(),
            mac,
        });
    }

    /// The next hop's MAC towards `remote` from the routing region, without waiting: the last
    /// answer while the region is unchanged, else a fresh lookup. A miss asks the netserver
    /// to resolve it (at most once per [`RESOLVE_RETRY`] per next hop) and returns `None`.
    fn next_hop_mac(&mut self, ctl: &dyn ControlLink, remote: Ipv4Addr) -> Option<EthernetAddress> {
        let generation = self.region.generation();
        if let Some(c) = self.next_hop
            && c.remote == remote
            && c.generation == generation
        {
            return Some(c.mac);
        }
        let hop = self.region.lookup(remote)?;
        if let Some(mac) = self.region.neighbor(hop.ip) {
            self.next_hop = Some(NextHopCache {
                remote,
                generation,
                mac,
            });
            return Some(mac);
        }
        // Keep using what the netserver told us for this destination until the region has it.
        if let Some(c) = self.next_hop.as_mut()
            && c.remote == remote
        {
            return Some(c.mac);
        }
        self.ask_resolution(ctl, hop.ip);
        None
    }

    /// Asks the netserver to resolve `hop` unless it was asked recently; its answer lands in
    /// the routing region (or, failing, nowhere: the engine's retransmissions ask again).
    fn ask_resolution(&mut self, ctl: &dyn ControlLink, hop: Ipv4Addr) {
        let now = std::time::Instant::now();
        if let Some(at) = self.resolving.get(&hop)
            && now.duration_since(*at) < RESOLVE_RETRY
        {
            return;
        }
        if self.resolving.len() >= MAX_PENDING_RESOLUTIONS {
            self.resolving
                .retain(|_, at| now.duration_since(*at) < RESOLVE_RETRY);
            if self.resolving.len() >= MAX_PENDING_RESOLUTIONS {
                return;
            }
        }
        self.resolving.insert(hop, now);
        // The reply is immediate (known MAC or "asked"); a known one is in the region already.
        let _ = ctl.call_control(&Request::Resolve { addr: hop }, &[]);
    }

    /// Runs the engine's output: every segment becomes a frame on the channel. Without the
    /// next hop's MAC the segments are dropped (counted in `no_neighbor`) and a resolution is
    /// asked for; the engine's retransmission timer brings them back.
    ///
    /// The crash record is published before (the bytes queued since the last step are then
    /// covered by it before any of them can leave) and after the engine's output.
    pub fn transmit(
        &mut self,
        ctl: &dyn ControlLink,
        conn: &mut TcpConnection,
        now: Instant,
    ) -> io::Result<()> {
        self.publish_crash_record(conn, now);
        let mut failure = None;
        let mut frames = self.frames_to(ctl, conn.remote());
        conn.dispatch(now, &mut |seg: Outgoing<'_>| {
            frames.write(seg, &mut failure)
        });
        // Again before the frames leave: the record's SND.MAX covers what is about to go.
        self.publish_crash_record(conn, now);
        self.flush_frames(failure)
    }

    /// Rewrites the crash record of the session's connection from `conn` (a few dozen stores,
    /// no system call); other connections (a listener's half-open ones) have none. Call it
    /// after every engine step that changes the connection; [`TcpSession::transmit`] does.
    pub fn publish_crash_record(&mut self, conn: &mut TcpConnection, now: Instant) {
        if let Some((file, remote)) = self.crash.as_mut()
            && conn.remote() == *remote
        {
            file.publish(conn, now);
        }
    }

    /// Sends one segment that belongs to no connection (a reset answering a stray segment).
    pub fn send_segment(
        &mut self,
        ctl: &dyn ControlLink,
        remote: SocketAddrV4,
        repr: &TcpRepr<'_>,
    ) -> io::Result<()> {
        let mut failure = None;
        let mut frames = self.frames_to(ctl, remote);
        let seg = Outgoing {
            repr: TcpRepr {
                payload: &[],
                ..*repr
            },
            payload: [repr.payload, &[]],
            departure: Instant::ZERO,
        };
        let _ = frames.write(seg, &mut failure);
        self.flush_frames(failure)
    }

    /// A frame writer towards `remote`, its next hop's MAC looked up (or asked for) first.
    fn frames_to(&mut self, ctl: &dyn ControlLink, remote: SocketAddrV4) -> FrameWriter<'_> {
        let dst_mac = self.next_hop_mac(ctl, *remote.ip());
        FrameWriter {
            channel: self.channel.as_mut(),
            ident: &mut self.ident,
            stats: &mut self.stats,
            src_mac: self.src_mac,
            dst_mac,
            local: self.local,
            remote,
        }
    }

    fn flush_frames(&mut self, failure: Option<io::Error>) -> io::Result<()> {
        let Some(channel) = self.channel.as_mut() else {
            return failure.map_or(Err(errno(libc::ENOTCONN)), Err);
        };
        match channel.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        failure.map_or(Ok(()), Err)
    }

    /// Parses every waiting frame and hands each valid segment, with its source, to
    /// `on_segment`. Returns the number of frames read.
    pub fn receive(
        &mut self,
        on_segment: impl FnMut(SocketAddrV4, &TcpRepr<'_>),
    ) -> io::Result<usize> {
        self.receive_up_to(256, on_segment)
    }

    /// [`TcpSession::receive`] for at most `max` frames, so a driver can answer (ACK) between
    /// batches instead of once per ring-full.
    pub fn receive_up_to(
        &mut self,
        max: usize,
        mut on_segment: impl FnMut(SocketAddrV4, &TcpRepr<'_>),
    ) -> io::Result<usize> {
        let Some(channel) = self.channel.as_mut() else {
            return Ok(0);
        };
        let stats = &mut self.stats;
        let local = self.local;
        channel.recv_batch(max, &mut |frame: &[u8]| {
            stats.frames_in += 1;
            let Ok(eth) = EthernetFrame::new_checked(frame) else {
                stats.bad_frames += 1;
                return;
            };
            let Ok(packet) = Ipv4Packet::new_checked(eth.payload()) else {
                stats.bad_frames += 1;
                return;
            };
            let Ok(ip) = Ipv4Repr::parse(&packet) else {
                stats.bad_frames += 1;
                return;
            };
            if ip.protocol != IpProtocol::Tcp || ip.dst_addr != *local.ip() {
                stats.bad_frames += 1;
                return;
            }
            let body = packet.payload();
            let Ok(tcp) = TcpPacket::new_checked(body) else {
                stats.bad_frames += 1;
                return;
            };
            match TcpRepr::parse(&tcp, ip.src_addr, ip.dst_addr) {
                Ok(seg) => on_segment(SocketAddrV4::new(ip.src_addr, seg.src_port), &seg),
                Err(_) => stats.bad_tcp_checksum += 1,
            }
        })
    }
}

/// Builds Ethernet + IPv4 (DF) + TCP frames for one destination into the channel's ring, the
/// checksum computed while the payload is copied out of the send ring (paper §7.2).
struct FrameWriter<'a> {
    channel: Option<&'a mut PacketChannel>,
    ident: &'a mut u16,
    stats: &'a mut SessionStats,
    src_mac: EthernetAddress,
    dst_mac: Option<EthernetAddress>,
    local: SocketAddrV4,
    remote: SocketAddrV4,
}

impl FrameWriter<'_> {
    fn write(
        &mut self,
        seg: Outgoing<'_>,
        failure: &mut Option<io::Error>,
    ) -> Result<(), EmitError> {
        let Some(dst_mac) = self.dst_mac else {
            // Lost before the wire, like a frame queued behind a failed ARP.
            self.stats.no_neighbor += 1;
            return Ok(());
        };
        let (src_mac, local, remote) = (self.src_mac, self.local, self.remote);
        let payload_len = seg.payload_len();
        let tcp_len = seg.repr.header_len() + payload_len;
        let len = ETH_LEN + IP_LEN + tcp_len;
        *self.ident = self.ident.wrapping_add(1);
        let ip = Ipv4Repr {
            src_addr: *local.ip(),
            dst_addr: *remote.ip(),
            protocol: IpProtocol::Tcp,
            payload_len: tcp_len,
            ttl: 64,
            ident: *self.ident,
            dont_frag: true,
            ..Ipv4Repr::default()
        };
        let Some(channel) = self.channel.as_deref_mut() else {
            *failure = Some(errno(libc::ENOTCONN));
            return Err(EmitError);
        };
        let result = channel.send_with(len, &mut |buf: &mut [u8]| {
            let eth = EthernetRepr {
                src_addr: src_mac,
                dst_addr: dst_mac,
                ethertype: EthernetProtocol::Ipv4,
            };
            let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.emit(&mut frame);
            let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
            ip.emit(&mut packet);
            let segment = packet.payload_mut();
            let header_len = seg.repr.header_len();
            // Header with a zero checksum, then the payload copied and summed in one pass.
            let mut tcp = TcpPacket::new_unchecked(&mut segment[..]);
            seg.repr.emit(&mut tcp, *local.ip(), *remote.ip());
            tcp.set_checksum(0);
            let (head, body) = segment.split_at_mut(header_len);
            let (first, second) = body.split_at_mut(seg.payload[0].len());
            let s1 = checksum::copy_and_sum(first, seg.payload[0]);
            let s2 = checksum::copy_and_sum(second, seg.payload[1]);
            let s2 = if seg.payload[0].len() % 2 == 1 {
                s2.rotate_left(8)
            } else {
                s2
            };
            let pseudo = checksum::pseudo_header_v4(*local.ip(), *remote.ip(), 6, tcp_len as u32);
            let sum = checksum::combine(&[pseudo, checksum::data(head), s1, s2]);
            head[16..18].copy_from_slice(&(!sum).to_be_bytes());
        });
        match result {
            Ok(()) => {
                self.stats.frames_out += 1;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stats.channel_full += 1;
                Err(EmitError)
            }
            Err(e) => {
                *failure = Some(e);
                Err(EmitError)
            }
        }
    }
}
