//! The UDP data path of one cached socket, sans-I/O except for the channel it is handed
//! (RFC 768, RFC 791 §2.3 fragmentation, RFC 1122 §4.1; paper §3.2 and §7.2).
//!
//! [`UdpEndpoint`] holds what Linux keeps in a UDP `struct sock` that matters on the data path:
//! local and remote addresses, the receive queue bounded by SO_RCVBUF, the pending error, and
//! the IP identification counter. It takes frames from a [`Channel`] (validating Ethernet,
//! IPv4 and UDP, checksums included) and emits datagrams into a channel's slots, building the
//! headers in place and computing the UDP checksum while copying the payload (integrated
//! checksum-and-copy, §7.2). Datagrams larger than the MTU are fragmented here (the client's IP
//! layer); reassembly is the netserver's (fragments never reach endpoint channels).
//!
//! Receive-buffer accounting follows Linux `__udp_enqueue_schedule_skb`: a datagram is dropped
//! when the memory already charged exceeds the buffer, otherwise it is charged and queued (so
//! the queue may overshoot by one datagram). The charge per datagram is an approximation of the
//! kernel's `skb->truesize` for a frame received from a NIC ring: the payload plus headers
//! rounded up to 64 bytes plus [`SKB_OVERHEAD`] (struct sk_buff and skb_shared_info).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::channel::Channel;
use crate::checksum;
use crate::stack::fragment::{self, Fragment};
use crate::stack::stats::DropReason;
use crate::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};

use super::stats::SlotHandle;

/// Largest UDP payload over IPv4 (65535 − 20 − 8).
pub const MAX_PAYLOAD: usize = 65507;
/// Ethernet II header length.
pub const ETH_HEADER: usize = 14;
/// IPv4 header length (msock never sends options).
pub const IP_HEADER: usize = 20;
/// UDP header length.
pub const UDP_HEADER: usize = 8;
/// Approximate fixed part of Linux's truesize (sizeof(sk_buff) + sizeof(skb_shared_info),
/// cache-aligned) on x86_64.
pub const SKB_OVERHEAD: usize = 576;

/// Bytes charged to the receive buffer for a datagram of `len` payload bytes.
pub fn truesize(len: usize) -> usize {
    (len + ETH_HEADER + IP_HEADER + UDP_HEADER + 64).next_multiple_of(64) + SKB_OVERHEAD
}

/// Where a datagram goes on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub src_ip: Ipv4Addr,
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    /// IP MTU of the interface.
    pub mtu: usize,
}

/// IP_MTU_DISCOVER values (Linux `IP_PMTUDISC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmtuDisc {
    /// Never set DF; fragment as needed.
    Dont,
    /// Linux's default for UDP: DF on datagrams that fit, fragment larger ones.
    Want,
    /// DF always; larger than the MTU is EMSGSIZE.
    Do,
    /// As `Do` for our purposes (no PMTU state is kept).
    Probe,
}

impl PmtuDisc {
    pub fn from_raw(v: i32) -> Option<PmtuDisc> {
        match v {
            0 => Some(PmtuDisc::Dont),
            1 => Some(PmtuDisc::Want),
            2 => Some(PmtuDisc::Do),
            3 => Some(PmtuDisc::Probe),
            _ => None,
        }
    }
    pub fn raw(self) -> i32 {
        match self {
            PmtuDisc::Dont => 0,
            PmtuDisc::Want => 1,
            PmtuDisc::Do => 2,
            PmtuDisc::Probe => 3,
        }
    }
}

/// Per-datagram IP options of the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOptions {
    pub ttl: u8,
    pub tos: u8,
    pub pmtudisc: PmtuDisc,
}

impl Default for TxOptions {
    fn default() -> Self {
        TxOptions {
            ttl: 64,
            tos: 0,
            pmtudisc: PmtuDisc::Want,
        }
    }
}

/// A queued datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub data: Vec<u8>,
}

/// The receive queue with Linux's SO_RCVBUF rule.
#[derive(Debug)]
pub struct RecvQueue {
    items: VecDeque<Datagram>,
    charged: usize,
    limit: usize,
}

impl RecvQueue {
    pub fn new(limit: usize) -> RecvQueue {
        RecvQueue {
            items: VecDeque::new(),
            charged: 0,
            limit,
        }
    }
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }
    pub fn limit(&self) -> usize {
        self.limit
    }
    /// Bytes currently charged.
    pub fn charged(&self) -> usize {
        self.charged
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Queues `d` unless the charged memory already exceeds the limit.
    pub fn push(&mut self, d: Datagram) -> Result<(), DropReason> {
        if self.charged > self.limit {
            return Err(DropReason::RcvbufFull);
        }
        self.charged += truesize(d.data.len());
        self.items.push_back(d);
        Ok(())
    }
    pub fn front(&self) -> Option<&Datagram> {
        self.items.front()
    }
    pub fn pop(&mut self) -> Option<Datagram> {
        let d = self.items.pop_front()?;
        self.charged = self.charged.saturating_sub(truesize(d.data.len()));
        Some(d)
    }
}

/// What a receive returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvInfo {
    /// Bytes copied into the caller's buffers.
    pub copied: usize,
    /// The datagram's real length.
    pub full_len: usize,
    pub src: SocketAddrV4,
}

/// Why a send failed (mapped to errno at the edge).
#[derive(Debug)]
pub enum SendError {
    /// Larger than 65507 bytes, or than the MTU with DF required.
    MessageSize,
    /// The channel has no free slot now.
    WouldBlock,
    Io(io::Error),
}

impl SendError {
    pub fn errno(&self) -> i32 {
        match self {
            SendError::MessageSize => libc::EMSGSIZE,
            SendError::WouldBlock => libc::EAGAIN,
            SendError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

fn io_to_send(e: io::Error) -> SendError {
    if e.kind() == io::ErrorKind::WouldBlock {
        SendError::WouldBlock
    } else {
        SendError::Io(e)
    }
}

/// A UDP datagram inside a frame whose headers are valid: addresses, the payload's byte range
/// and what is needed to verify its checksum while copying it out ([`ParsedFrame::copy_payload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFrame {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: std::ops::Range<usize>,
    /// `UdpPacket::header_sum`: `None` when the sender sent no checksum.
    header_sum: Option<u16>,
}

impl ParsedFrame {
    /// Copies the payload out of `frame` and verifies the UDP checksum in the same pass
    /// (integrated checksum and copy, paper §7.2): the ring's bytes are read once.
    pub fn copy_payload(&self, frame: &[u8]) -> Result<Vec<u8>, DropReason> {
        let payload = frame
            .get(self.payload.clone())
            .ok_or(DropReason::BadUdpLength)?;
        let mut data = vec![0u8; payload.len()];
        let sum = checksum::copy_and_sum(&mut data, payload);
        match self.header_sum {
            Some(header) if !UdpPacket::<&[u8]>::verifies(header, sum) => {
                Err(DropReason::BadUdpChecksum)
            }
            _ => Ok(data),
        }
    }
}

/// Parses and validates the headers of an Ethernet/IPv4/UDP frame (the IP header checksum
/// included; the UDP checksum is verified by [`ParsedFrame::copy_payload`]). Fragments are
/// refused: endpoint channels never carry them (design.md).
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    let eth_repr = EthernetRepr::parse(&eth).map_err(|_| DropReason::BadEthernet)?;
    if eth_repr.ethertype != EthernetProtocol::Ipv4 {
        return Err(DropReason::UnknownProtocol);
    }
    let ip_bytes = eth.payload();
    let packet = Ipv4Packet::new_checked(ip_bytes).map_err(|_| DropReason::BadIpHeader)?;
    let ip = match Ipv4Repr::parse(&packet) {
        Ok(ip) => ip,
        Err(crate::wire::Error::Checksum) => return Err(DropReason::BadIpChecksum),
        Err(_) => return Err(DropReason::BadIpHeader),
    };
    if ip.more_frags || ip.frag_offset != 0 {
        return Err(DropReason::NotForUs);
    }
    if ip.protocol != IpProtocol::Udp {
        return Err(DropReason::UnknownProtocol);
    }
    let body = packet.payload();
    let udp = UdpPacket::new_checked(body).map_err(|_| DropReason::BadUdpLength)?;
    let payload_len = udp.payload().len();
    // Offset of the UDP payload inside `frame`.
    let start = ETH_HEADER + packet.header_len() + UDP_HEADER;
    let end = start
        .checked_add(payload_len)
        .filter(|&e| e <= frame.len())
        .ok_or(DropReason::BadUdpLength)?;
    Ok(ParsedFrame {
        src: SocketAddrV4::new(ip.src_addr, udp.src_port()),
        dst: SocketAddrV4::new(ip.dst_addr, udp.dst_port()),
        payload: start..end,
        header_sum: udp.header_sum(ip.src_addr, ip.dst_addr),
    })
}

/// One's-complement sum accumulator over a byte stream split at arbitrary points.
#[derive(Debug, Clone, Copy, Default)]
struct StreamSum {
    sum: u16,
    odd: bool,
}

impl StreamSum {
    fn add(&mut self, chunk_sum: u16, chunk_len: usize) {
        // A chunk starting at an odd stream offset has its bytes in swapped lanes.
        let s = if self.odd {
            chunk_sum.swap_bytes()
        } else {
            chunk_sum
        };
        self.sum = checksum::combine(&[self.sum, s]);
        self.odd ^= chunk_len % 2 == 1;
    }
}

/// Copies `len` bytes of the iovec stream `bufs`, starting at `offset`, into `dst`, summing as
/// it goes (when `sum` is given). Returns bytes copied.
fn gather(
    dst: &mut [u8],
    bufs: &[&[u8]],
    mut offset: usize,
    mut sum: Option<&mut StreamSum>,
) -> usize {
    let mut written = 0;
    for b in bufs {
        if offset >= b.len() {
            offset -= b.len();
            continue;
        }
        let part = &b[offset..];
        offset = 0;
        let n = part.len().min(dst.len() - written);
        let out = &mut dst[written..written + n];
        match sum.as_deref_mut() {
            Some(s) => s.add(checksum::copy_and_sum(out, &part[..n]), n),
            None => out.copy_from_slice(&part[..n]),
        }
        written += n;
        if written == dst.len() {
            break;
        }
    }
    written
}

/// Sum of the iovec stream (for fragmented datagrams, whose checksum must be known before the
/// first fragment is written).
fn stream_sum(bufs: &[&[u8]]) -> StreamSum {
    let mut s = StreamSum::default();
    for b in bufs {
        s.add(checksum::data(b), b.len());
    }
    s
}

/// UDP protocol state of one socket.
#[derive(Debug)]
pub struct UdpEndpoint {
    /// Bound address (the IP may be unspecified = wildcard).
    pub local: SocketAddrV4,
    pub remote: Option<SocketAddrV4>,
    pub queue: RecvQueue,
    /// Error to report once (SO_ERROR, next send/recv of a connected socket).
    pub pending_error: Option<i32>,
    next_ident: u16,
}

impl UdpEndpoint {
    pub fn new(local: SocketAddrV4, rcvbuf: usize) -> UdpEndpoint {
        // Start the identification counter somewhere that differs between sockets.
        let seed = u32::from(*local.ip()) ^ u32::from(local.port()) ^ std::process::id();
        UdpEndpoint {
            local,
            remote: None,
            queue: RecvQueue::new(rcvbuf),
            pending_error: None,
            next_ident: (seed ^ (seed >> 16)) as u16,
        }
    }

    /// Whether a datagram from `src` to `dst` belongs to this socket (port, bound address,
    /// connected peer: Linux `compute_score`).
    pub fn accepts(&self, src: SocketAddrV4, dst: SocketAddrV4) -> bool {
        if dst.port() != self.local.port() {
            return false;
        }
        if !self.local.ip().is_unspecified() && dst.ip() != self.local.ip() {
            return false;
        }
        match self.remote {
            Some(r) => r == src,
            None => true,
        }
    }

    /// Queues a datagram (already validated) if it is ours.
    pub fn deliver(
        &mut self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        data: Vec<u8>,
    ) -> Result<(), DropReason> {
        if !self.accepts(src, dst) {
            return Err(DropReason::NotForUs);
        }
        self.queue.push(Datagram { src, data })
    }

    /// Takes up to `max` frames from `ch`, queueing the valid ones. Returns the number of
    /// frames taken; drops are counted in `stats` by reason.
    pub fn process_channel<C: Channel>(
        &mut self,
        ch: &mut C,
        max: usize,
        stats: Option<&SlotHandle>,
    ) -> io::Result<usize> {
        let n = ch.recv_batch(max, &mut |frame: &[u8]| {
            // Ours (port, address, connected peer) before any work on the payload.
            let outcome = parse_frame(frame).and_then(|p| {
                if !self.accepts(p.src, p.dst) {
                    return Err(DropReason::NotForUs);
                }
                let data = p.copy_payload(frame)?;
                let len = data.len();
                self.queue.push(Datagram { src: p.src, data }).map(|()| len)
            });
            if let Some(s) = stats {
                match outcome {
                    Ok(len) => s.datagram_in(len),
                    Err(reason) => s.dropped(reason),
                }
            }
        })?;
        if let Some(s) = stats {
            s.frames_in(n);
        }
        Ok(n)
    }

    /// Copies the next datagram into `bufs` (scatter). `peek` leaves it queued. `None` if the
    /// queue is empty.
    pub fn recv(&mut self, bufs: &mut [&mut [u8]], peek: bool) -> Option<RecvInfo> {
        let d = self.queue.front()?;
        let mut copied = 0;
        for b in bufs.iter_mut() {
            let n = b.len().min(d.data.len() - copied);
            b[..n].copy_from_slice(&d.data[copied..copied + n]);
            copied += n;
            if copied == d.data.len() {
                break;
            }
        }
        let info = RecvInfo {
            copied,
            full_len: d.data.len(),
            src: d.src,
        };
        if !peek {
            self.queue.pop();
        }
        Some(info)
    }

    /// Length of the next datagram (FIONREAD on a UDP socket), 0 if none.
    pub fn next_len(&self) -> usize {
        self.queue.front().map_or(0, |d| d.data.len())
    }

    fn take_ident(&mut self) -> u16 {
        let id = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1);
        id
    }

    /// Builds the datagram `bufs` (gathered) from `src` to `dst` into `ch`'s slots, fragmenting
    /// over `hop.mtu`. Returns the payload length. The channel is not flushed.
    pub fn send<C: Channel>(
        &mut self,
        ch: &mut C,
        hop: &Hop,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        bufs: &[&[u8]],
        opts: &TxOptions,
    ) -> Result<usize, SendError> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len > MAX_PAYLOAD {
            return Err(SendError::MessageSize);
        }
        let udp_len = UDP_HEADER + len;
        let df_required = matches!(opts.pmtudisc, PmtuDisc::Do | PmtuDisc::Probe);
        let plan = fragment::plan(udp_len, hop.mtu, IP_HEADER, df_required)
            .map_err(|_| SendError::MessageSize)?;
        let fits = plan.is_whole();
        let dont_frag = fits && opts.pmtudisc != PmtuDisc::Dont;
        let ident = self.take_ident();
        let udp = UdpRepr {
            src_port: src.port(),
            dst_port: dst.port(),
        };
        let udp_header = |out: &mut [u8], payload_sum: StreamSum| {
            if let Some(header) = out.first_chunk_mut::<UDP_HEADER>() {
                udp.emit_header_with_sum(header, *src.ip(), *dst.ip(), len, payload_sum.sum);
            }
        };
        if fits {
            let frame_len = ETH_HEADER + IP_HEADER + udp_len;
            ch.send_with(frame_len, &mut |frame: &mut [u8]| {
                emit_l2_l3(frame, hop, dst, opts, ident, dont_frag, false, 0, udp_len);
                let body = &mut frame[ETH_HEADER + IP_HEADER..];
                let mut sum = StreamSum::default();
                gather(&mut body[UDP_HEADER..], bufs, 0, Some(&mut sum));
                udp_header(body, sum);
            })
            .map_err(io_to_send)?;
            return Ok(len);
        }
        // Fragmented: the checksum covers the whole datagram and sits in the first fragment,
        // so sum first, then copy each fragment.
        let sum = stream_sum(bufs);
        for Fragment {
            offset,
            len: flen,
            more_frags: more,
        } in plan
        {
            let frame_len = ETH_HEADER + IP_HEADER + flen;
            ch.send_with(frame_len, &mut |frame: &mut [u8]| {
                emit_l2_l3(frame, hop, dst, opts, ident, false, more, offset, flen);
                let body = &mut frame[ETH_HEADER + IP_HEADER..];
                if offset == 0 {
                    gather(&mut body[UDP_HEADER..flen], bufs, 0, None);
                    udp_header(body, sum);
                } else {
                    gather(&mut body[..flen], bufs, offset - UDP_HEADER, None);
                }
            })
            .map_err(io_to_send)?;
        }
        Ok(len)
    }
}

/// Writes the Ethernet and IPv4 headers of one (fragment) frame.
#[allow(clippy::too_many_arguments)]
fn emit_l2_l3(
    frame: &mut [u8],
    hop: &Hop,
    dst: SocketAddrV4,
    opts: &TxOptions,
    ident: u16,
    dont_frag: bool,
    more_frags: bool,
    frag_offset: usize,
    payload_len: usize,
) {
    let eth = EthernetRepr {
        src_addr: hop.src_mac,
        dst_addr: hop.dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut f = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut f);
    let ip = Ipv4Repr {
        src_addr: hop.src_ip,
        dst_addr: *dst.ip(),
        protocol: IpProtocol::Udp,
        payload_len,
        ttl: opts.ttl,
        ident,
        dont_frag,
        more_frags,
        frag_offset: frag_offset as u16,
        tos: opts.tos,
        ..Ipv4Repr::default()
    };
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[ETH_HEADER..]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::MemoryChannel;
    use std::sync::Arc;

    const A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5000);
    const B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 7000);
    const MAC_A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const MAC_B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn hop(mtu: usize) -> Hop {
        Hop {
            src_ip: *A.ip(),
            src_mac: MAC_A,
            dst_mac: MAC_B,
            mtu,
        }
    }

    fn pair() -> (MemoryChannel, MemoryChannel) {
        MemoryChannel::pair().unwrap()
    }

    fn frames(ch: &mut MemoryChannel) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while ch
            .recv_batch(64, &mut |f: &[u8]| out.push(f.to_vec()))
            .unwrap()
            > 0
        {}
        out
    }

    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A sends `data` (split into the given iovec lengths) to B; B receives it.
    fn send_split(data: &[u8], splits: &[usize], mtu: usize) -> (UdpEndpoint, MemoryChannel) {
        let (mut ca, mut cb) = pair();
        let mut a = UdpEndpoint::new(A, 1 << 20);
        let mut bufs = Vec::new();
        let mut rest = data;
        for &n in splits {
            let n = n.min(rest.len());
            bufs.push(&rest[..n]);
            rest = &rest[n..];
        }
        bufs.push(rest);
        assert_eq!(
            a.send(&mut ca, &hop(mtu), A, B, &bufs, &TxOptions::default())
                .unwrap(),
            data.len()
        );
        ca.flush().unwrap();
        let mut b = UdpEndpoint::new(B, 1 << 20);
        b.process_channel(&mut cb, 64, None).unwrap();
        (b, cb)
    }

    #[test]
    fn datagrams_round_trip_byte_exact() {
        for len in [0usize, 1, 2, 7, 8, 63, 64, 1000, 1471, 1472] {
            let data = payload(len, len as u8);
            for splits in [&[][..], &[1][..], &[3, 5][..], &[len / 2][..]] {
                let (mut b, _) = send_split(&data, splits, 1500);
                let mut buf = vec![0u8; 2000];
                let info = b.recv(&mut [&mut buf[..]], false).expect("datagram");
                assert_eq!(
                    info,
                    RecvInfo {
                        copied: len,
                        full_len: len,
                        src: A
                    }
                );
                assert_eq!(&buf[..len], &data[..], "len {len} splits {splits:?}");
                assert!(b.recv(&mut [&mut buf[..]], false).is_none());
            }
        }
    }

    #[test]
    fn frame_headers_are_what_linux_sends() {
        let (mut ca, mut cb) = pair();
        let mut a = UdpEndpoint::new(A, 1 << 20);
        let opts = TxOptions {
            ttl: 9,
            tos: 0x10,
            pmtudisc: PmtuDisc::Want,
        };
        a.send(&mut ca, &hop(1500), A, B, &[b"hi"], &opts).unwrap();
        ca.flush().unwrap();
        let f = frames(&mut cb);
        assert_eq!(f.len(), 1);
        let eth = EthernetFrame::new_checked(&f[0][..]).unwrap();
        assert_eq!(eth.dst_addr(), MAC_B);
        assert_eq!(eth.src_addr(), MAC_A);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let repr = Ipv4Repr::parse(&ip).unwrap();
        assert_eq!(repr.ttl, 9);
        assert!(
            repr.dont_frag,
            "PMTUDISC_WANT sets DF on datagrams that fit"
        );
        assert_eq!(f[0][ETH_HEADER + 1], 0x10, "TOS byte");
        let p = parse_frame(&f[0]).unwrap();
        assert_eq!((p.src, p.dst), (A, B));
        assert_eq!(&f[0][p.payload], b"hi");
    }

    #[test]
    fn peek_and_truncation() {
        let data = payload(100, 1);
        let (mut b, _) = send_split(&data, &[], 1500);
        assert_eq!(b.next_len(), 100);
        let mut small = [0u8; 10];
        let info = b.recv(&mut [&mut small[..]], true).unwrap();
        assert_eq!((info.copied, info.full_len), (10, 100));
        assert_eq!(&small[..], &data[..10]);
        // Peeked: still there, whole.
        let mut big = [0u8; 200];
        let info = b.recv(&mut [&mut big[..]], true).unwrap();
        assert_eq!((info.copied, info.full_len), (100, 100));
        // A short read consumes the datagram (the rest is lost, as UDP does).
        let info = b.recv(&mut [&mut small[..]], false).unwrap();
        assert_eq!((info.copied, info.full_len), (10, 100));
        assert!(b.recv(&mut [&mut big[..]], false).is_none());
        assert_eq!(b.next_len(), 0);
    }

    #[test]
    fn scatter_receive_fills_buffers_in_order() {
        let data = payload(50, 3);
        let (mut b, _) = send_split(&data, &[], 1500);
        let (mut x, mut y, mut z) = ([0u8; 7], [0u8; 30], [0u8; 40]);
        let info = b
            .recv(&mut [&mut x[..], &mut y[..], &mut z[..]], false)
            .unwrap();
        assert_eq!(info.copied, 50);
        assert_eq!(&x[..], &data[..7]);
        assert_eq!(&y[..], &data[7..37]);
        assert_eq!(&z[..13], &data[37..]);
    }

    #[test]
    fn rcvbuf_full_drops_are_counted() {
        let page = Arc::new(super::super::stats::StatsPage::create().unwrap());
        let slot = page.allocate(1).unwrap();
        let (mut ca, mut cb) = pair();
        let mut a = UdpEndpoint::new(A, 1 << 20);
        let data = payload(1000, 0);
        for _ in 0..10 {
            a.send(&mut ca, &hop(1500), A, B, &[&data], &TxOptions::default())
                .unwrap();
        }
        ca.flush().unwrap();
        // Room for exactly three: Linux queues while charged <= limit.
        let limit = 2 * truesize(1000) + 1;
        let mut b = UdpEndpoint::new(B, limit);
        assert_eq!(b.process_channel(&mut cb, 64, Some(&slot)).unwrap(), 10);
        assert_eq!(b.queue.len(), 3);
        let c = slot.snapshot();
        assert_eq!(c.drop_count(DropReason::RcvbufFull), 7);
        assert_eq!((c.datagrams_in, c.bytes_in, c.frames_in), (3, 3000, 10));
        // Reading frees room.
        let mut buf = [0u8; 1000];
        b.recv(&mut [&mut buf[..]], false).unwrap();
        assert!(b.queue.charged() <= limit);
        assert!(b.deliver(A, B, data.clone()).is_ok());
    }

    #[test]
    fn connected_socket_only_queues_its_peer() {
        let mut b = UdpEndpoint::new(B, 1 << 20);
        b.remote = Some(A);
        let other = SocketAddrV4::new(*A.ip(), 5001);
        assert_eq!(b.deliver(other, B, vec![1]), Err(DropReason::NotForUs));
        assert_eq!(b.deliver(A, B, vec![2]), Ok(()));
        let wrong_port = SocketAddrV4::new(*B.ip(), 7001);
        assert_eq!(b.deliver(A, wrong_port, vec![3]), Err(DropReason::NotForUs));
        assert_eq!(b.queue.len(), 1);
        assert_eq!(b.queue.front().unwrap().data, vec![2]);
        // Wildcard-bound sockets accept any local address on their port.
        let mut w = UdpEndpoint::new(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000), 1 << 20);
        assert!(w.deliver(A, B, vec![4]).is_ok());
    }

    #[test]
    fn corrupted_frames_are_dropped_by_reason() {
        let (mut ca, mut cb) = pair();
        let mut a = UdpEndpoint::new(A, 1 << 20);
        a.send(
            &mut ca,
            &hop(1500),
            A,
            B,
            &[&payload(40, 9)],
            &TxOptions::default(),
        )
        .unwrap();
        ca.flush().unwrap();
        let good = frames(&mut cb).remove(0);
        let p = parse_frame(&good).unwrap();
        assert_eq!(p.copy_payload(&good), Ok(payload(40, 9)));

        let mut bad_udp = good.clone();
        let last = bad_udp.len() - 1;
        bad_udp[last] ^= 0xff;
        let p = parse_frame(&bad_udp).unwrap();
        assert_eq!(p.copy_payload(&bad_udp), Err(DropReason::BadUdpChecksum));
        // A zero checksum field means "none" (RFC 768): accepted as is.
        let mut no_sum = bad_udp.clone();
        no_sum[ETH_HEADER + 20 + 6..ETH_HEADER + 20 + 8].fill(0);
        let p = parse_frame(&no_sum).unwrap();
        assert_eq!(p.copy_payload(&no_sum).map(|d| d.len()), Ok(40));

        let mut bad_ip = good.clone();
        bad_ip[ETH_HEADER + 8] ^= 1; // TTL, header checksum now wrong
        assert_eq!(parse_frame(&bad_ip), Err(DropReason::BadIpChecksum));

        assert_eq!(parse_frame(&good[..10]), Err(DropReason::Truncated));
        assert!(parse_frame(&good[..ETH_HEADER + 10]).is_err());
        let cut = &good[..good.len() - 5];
        assert!(
            parse_frame(cut).is_err(),
            "IP total length beyond the frame"
        );

        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_frame(&arp), Err(DropReason::UnknownProtocol));

        // Nothing panics on any truncation of a valid frame.
        for n in 0..good.len() {
            let _ = parse_frame(&good[..n]);
        }
    }

    #[test]
    fn large_datagram_is_fragmented_and_reassembles() {
        let (mut ca, mut cb) = pair();
        let mut a = UdpEndpoint::new(A, 1 << 20);
        let data = payload(8000, 5);
        // Split so that iovec boundaries fall at odd offsets inside fragments.
        let bufs = [&data[..333], &data[333..4001], &data[4001..]];
        assert_eq!(
            a.send(&mut ca, &hop(1500), A, B, &bufs, &TxOptions::default())
                .unwrap(),
            8000
        );
        ca.flush().unwrap();
        let fs = frames(&mut cb);
        assert_eq!(fs.len(), 6, "8008 bytes of UDP over 1480-byte fragments");
        let mut whole = vec![0u8; UDP_HEADER + 8000];
        let mut ident = None;
        let mut seen = 0;
        for (i, f) in fs.iter().enumerate() {
            assert!(f.len() <= ETH_HEADER + 1500);
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let repr = Ipv4Repr::parse(&ip).unwrap();
            assert!(!repr.dont_frag);
            assert_eq!(repr.more_frags, i + 1 < fs.len());
            let off = usize::from(repr.frag_offset);
            assert_eq!(off, seen, "in order, contiguous");
            assert_eq!(
                *ident.get_or_insert(repr.ident),
                repr.ident,
                "one identification"
            );
            let body = ip.payload();
            if repr.more_frags {
                assert_eq!(body.len() % 8, 0);
            }
            whole[off..off + body.len()].copy_from_slice(body);
            seen += body.len();
            assert_eq!(
                parse_frame(f).map(|_| ()),
                Err(DropReason::NotForUs),
                "fragments never queue"
            );
        }
        assert_eq!(seen, whole.len());
        // The reassembled UDP datagram verifies (checksum over all of it) and is byte-exact.
        let udp = UdpPacket::new_checked(&whole[..]).unwrap();
        let repr = UdpRepr::parse(&udp, *A.ip(), *B.ip()).unwrap();
        assert_eq!((repr.src_port, repr.dst_port), (A.port(), B.port()));
        assert_eq!(udp.payload(), &data[..]);
        // The next datagram uses the next identification.
        a.send(&mut ca, &hop(1500), A, B, &[&data], &TxOptions::default())
            .unwrap();
        ca.flush().unwrap();
        let next = frames(&mut cb);
        let ip = Ipv4Packet::new_checked(&next[0][ETH_HEADER..]).unwrap();
        assert_eq!(
            Ipv4Repr::parse(&ip).unwrap().ident,
            ident.unwrap().wrapping_add(1)
        );
    }

    #[test]
    fn size_limits() {
        let (mut ca, _cb) = pair();
        let mut a = UdpEndpoint::new(A, 1 << 20);
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            a.send(&mut ca, &hop(1500), A, B, &[&big], &TxOptions::default()),
            Err(SendError::MessageSize)
        ));
        let max = vec![0u8; MAX_PAYLOAD];
        assert!(
            a.send(
                &mut ca,
                &hop(1500),
                A,
                B,
                &[&max[..1473]],
                &TxOptions::default()
            )
            .is_ok()
        );
        let df = TxOptions {
            pmtudisc: PmtuDisc::Do,
            ..TxOptions::default()
        };
        assert!(matches!(
            a.send(&mut ca, &hop(1500), A, B, &[&max[..1473]], &df),
            Err(SendError::MessageSize)
        ));
        assert!(
            a.send(&mut ca, &hop(1500), A, B, &[&max[..1472]], &df)
                .is_ok()
        );
    }

    #[test]
    fn truesize_is_monotonic_and_has_overhead() {
        assert!(truesize(0) >= SKB_OVERHEAD);
        assert!(truesize(1) <= truesize(1000));
        assert_eq!(truesize(1000) % 64, SKB_OVERHEAD % 64);
    }
}
