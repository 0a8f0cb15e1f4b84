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
use crate::control::transport::{Connection, ControlAddress};
use crate::control::{Family, Reply, Request, SockKind, Upcall, VERSION};
use crate::routing::region::RegionReader;
use crate::stack::Instant;
use crate::stack::tcp::connection::{ConnError, EmitError, Outgoing, TcpConnection};
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

/// An ICMP destination-unreachable quoting a segment this session sent (forwarded by the
/// netserver, `Upcall::TcpIcmpError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// As Linux maps the ICMP code: EMSGSIZE (fragmentation needed), ECONNREFUSED (port),
    /// ENETUNREACH, EHOSTUNREACH, ENOPROTOOPT.
    pub errno: i32,
    pub next_hop_mtu: u16,
    pub quoted_seq: TcpSeqNumber,
}

/// Hands `report` to `conn` if it is about `conn`'s 4-tuple: fragmentation needed lowers the
/// path MTU (`on_icmp_frag_needed`), anything else is an unreachable error (hard while
/// connecting, soft afterwards: the engine decides). The engine ignores messages quoting a
/// sequence number outside its flight (RFC 5927). Returns whether it applied.
pub fn apply_icmp(conn: &mut TcpConnection, now: Instant, report: &IcmpReport) -> bool {
    if report.remote != conn.remote() || report.local.port() != conn.local().port() {
        return false;
    }
    let error = match report.errno {
        libc::EMSGSIZE => {
            conn.on_icmp_frag_needed(now, report.next_hop_mtu, report.quoted_seq);
            return true;
        }
        libc::ECONNREFUSED | libc::ENOPROTOOPT => ConnError::PortUnreachable,
        libc::ENETUNREACH => ConnError::NetUnreachable,
        _ => ConnError::HostUnreachable,
    };
    conn.on_icmp_error(now, error, report.quoted_seq)
}

/// One held TCP port and its channel.
pub struct TcpSession {
    control: Connection,
    /// The netserver's name for the held port's endpoint.
    id: crate::control::EndpointId,
    upcall: Connection,
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
    epoch: std::time::Instant,
    pub stats: SessionStats,
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
        let iface = region
            .interface()
            .ok_or_else(|| proto("routing region has no interface"))?;
        Ok(TcpSession {
            control,
            id,
            upcall,
            local: SocketAddrV4::new(iface.addr, local.port()),
            src_mac: iface.mac,
            region,
            channel: Some(channel),
            next_hop: None,
            resolving: std::collections::HashMap::new(),
            ident: (std::process::id() as u16).wrapping_mul(7919),
            epoch: std::time::Instant::now(),
            stats: SessionStats::default(),
        })
    }

    /// Gives the connection to the netserver, which runs it to its end (unsent data, FIN,
    /// TIME_WAIT) as the kernel does for a socket whose process has gone; the held port is
    /// released with it. The image travels in a memfd (it holds the buffered data).
    pub fn hand_over(&mut self, conn: &TcpConnection, now: Instant) -> io::Result<()> {
        use std::io::Write;
        let image = conn.export(now);
        let fd = nix::sys::memfd::memfd_create(
            c"msock-tcp-handover",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&image)?;
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
    pub fn connected(&mut self, remote: SocketAddrV4) -> io::Result<()> {
        match self.control.call(
            &Request::Connect {
                id: self.id,
                remote: Some(remote),
            },
            &[],
        )? {
            (Reply::Ok, _) => Ok(()),
            (Reply::Error { errno: e }, _) => Err(errno(e)),
            (other, _) => Err(proto(format!("unexpected reply {other:?}"))),
        }
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
        use std::os::unix::fs::FileExt;
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
        let len = usize::try_from(len).map_err(|_| proto("image length"))?;
        let mut image = vec![0u8; len];
        std::fs::File::from(image_fd).read_exact_at(&mut image, 0)?;
        let conn =
            TcpConnection::import(&image, now).map_err(|e| proto(format!("image: {e:?}")))?;
        let channel = PacketChannel::from_fd(channel_fd, ring)?;
        let listener = std::mem::replace(&mut self.id, id);
        self.channel = Some(channel);
        let _ = self.control.call(&Request::Close { id: listener }, &[]);
        Ok(Some(conn))
    }

    /// msock's address and the held port.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64 + 1_000_000)
    }

    /// The channel's counters (frames, bytes, frames the kernel dropped on a full ring).
    pub fn channel_stats(&self) -> crate::channel::ChannelStats {
        self.channel.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// The channel, to poll for arriving frames (`None` while the netserver listens for us).
    pub fn wake(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.channel.as_ref().map(|c| c.as_fd())
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
    fn next_hop_mac(&mut self, remote: Ipv4Addr) -> Option<EthernetAddress> {
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
        self.ask_resolution(hop.ip);
        None
    }

    /// Asks the netserver to resolve `hop` unless it was asked recently; its answer lands in
    /// the routing region (or, failing, nowhere: the engine's retransmissions ask again).
    fn ask_resolution(&mut self, hop: Ipv4Addr) {
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
        let _ = self.control.call(&Request::Resolve { addr: hop }, &[]);
    }

    /// Runs the engine's output: every segment becomes a frame on the channel. Without the
    /// next hop's MAC the segments are dropped (counted in `no_neighbor`) and a resolution is
    /// asked for; the engine's retransmission timer brings them back.
    pub fn transmit(&mut self, conn: &mut TcpConnection, now: Instant) -> io::Result<()> {
        let mut failure = None;
        let mut frames = self.frames_to(conn.remote());
        conn.dispatch(now, &mut |seg: Outgoing<'_>| {
            frames.write(seg, &mut failure)
        });
        self.flush(failure)
    }

    /// Sends one segment that belongs to no connection (a reset answering a stray segment).
    pub fn send_segment(&mut self, remote: SocketAddrV4, repr: &TcpRepr<'_>) -> io::Result<()> {
        let mut failure = None;
        let mut frames = self.frames_to(remote);
        let seg = Outgoing {
            repr: TcpRepr {
                payload: &[],
                ..*repr
            },
            payload: [repr.payload, &[]],
            departure: Instant::ZERO,
        };
        let _ = frames.write(seg, &mut failure);
        self.flush(failure)
    }

    /// A frame writer towards `remote`, its next hop's MAC looked up (or asked for) first.
    fn frames_to(&mut self, remote: SocketAddrV4) -> FrameWriter<'_> {
        let dst_mac = self.next_hop_mac(*remote.ip());
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

    fn flush(&mut self, failure: Option<io::Error>) -> io::Result<()> {
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
                // The listener's queue has connections: `accept` is tried on every wake-up.
                Ok(Upcall::Acceptable { .. }) => {}
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
