//! The netserver's host logic, sans-I/O: what it does with each frame its channel receives and
//! with time (paper §3.1, §4.3; RFC 826, RFC 791, RFC 792, RFC 1122 §3.2.2, RFC 768).
//!
//! Input: frames and the current time. Output: [`Event`]s — frames to transmit, datagrams to hand
//! to the client that caches their endpoint, neighbour changes to publish in the routing region,
//! resolutions to report, ICMP errors to forward, host routes learned from ICMP redirects. Every
//! frame that is not used is counted under a [`DropReason`]; nothing here panics on input.
//!
//! ICMP redirects (RFC 1122 §3.2.2.2): a redirect is believed only when it comes from the
//! gateway the current route to the quoted destination goes through, quotes a packet we sent,
//! and names a new gateway on our link (not us, not the old gateway). Network redirects are
//! treated as host redirects, as RFC 1122 recommends: the result is always a /32 route. Others
//! are counted ([`HostCounters::redirects_ignored`]) and ignored.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::control::EndpointId;
use crate::stack::Instant;
use crate::stack::arp_cache::{ArpAction, ArpCache, ArpConfig, Lookup};
use crate::stack::reassembly::{FragKey, Reassembler, ReassemblyLimits};
use crate::stack::stats::{DropCounters, DropReason};
use crate::stack::tcp::isn::IsnGenerator;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, DstUnreachable, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Options, Ipv4Packet,
    Ipv4Repr, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

/// The (local port, remote) of a TCP segment in an Ethernet frame (an unfragmented IPv4 one),
/// `None` for anything else or anything malformed.
pub fn tcp_frame_key(frame: &[u8]) -> Option<(u16, SocketAddrV4)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if EthernetRepr::parse(&eth).ok()?.ethertype != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.protocol() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((
        tcp.dst_port(),
        SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
    ))
}

/// Where the netserver finds the owner of a UDP destination.
pub trait PortLookup {
    fn udp_owner(&self, local: SocketAddrV4) -> Option<EndpointId>;
    /// The endpoint holding TCP port `port` in a process (its segments then go to that
    /// process's channel; one reaching the netserver raced a filter update and is not answered).
    fn tcp_owner(&self, _port: u16) -> Option<EndpointId> {
        None
    }
    fn tcp_held(&self, port: u16) -> bool {
        self.tcp_owner(port).is_some()
    }
    /// The endpoint of a connection cached in a process on its own 4-tuple channel (accepted
    /// from a listener held here: the port is shared, the connection is not).
    fn tcp_connection_owner(&self, _local_port: u16, _remote: SocketAddrV4) -> Option<EndpointId> {
        None
    }
    /// The gateway the current route to `dst` goes through (`None`: on-link or no route): the
    /// only router whose redirects about `dst` are believed (RFC 1122 §3.2.2.2).
    fn first_hop_gateway(&self, _dst: Ipv4Addr) -> Option<Ipv4Addr> {
        None
    }
}

/// What the host asks its driver (the daemon) to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transmit(Vec<u8>),
    /// A complete datagram for an endpoint (reassembled, or caught before its filter moved).
    Deliver {
        id: EndpointId,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: Vec<u8>,
    },
    /// Publish (`Some`) or withdraw (`None`) a neighbour in the routing region.
    Neighbor {
        ip: Ipv4Addr,
        mac: Option<EthernetAddress>,
    },
    /// A resolution requested through [`Host::resolve`] finished.
    Resolved {
        ip: Ipv4Addr,
        mac: Option<EthernetAddress>,
    },
    /// An ICMP error about a datagram an endpoint sent.
    IcmpError {
        id: EndpointId,
        remote: SocketAddrV4,
        errno: i32,
    },
    /// An ICMP destination-unreachable quoting a segment a held TCP port sent.
    TcpIcmpError {
        id: EndpointId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        errno: i32,
        next_hop_mtu: u16,
        quoted_seq: u32,
    },
    /// A validated ICMP redirect: install the host route `dst/32 via gateway`.
    Redirect {
        dst: Ipv4Addr,
        gateway: Ipv4Addr,
    },
}

/// Why an ICMP redirect was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectRejected {
    /// The quoted packet's source is not our address: we did not send it.
    NotOurPacket,
    /// The redirect does not come from the gateway our route to the destination goes through
    /// (or that route is on-link, or there is none).
    NotFromFirstHop,
    /// The new gateway is not a unicast address of our link other than ours.
    GatewayNotOnLink,
    /// The new gateway is the current one.
    SameGateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    pub mac: EthernetAddress,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u16,
}

impl HostConfig {
    fn broadcast(&self) -> Ipv4Addr {
        let mask = prefix_mask(self.prefix_len);
        Ipv4Addr::from(u32::from(self.addr) | !mask)
    }

    /// Whether `ip` is a unicast address of our link other than our own: inside our prefix,
    /// neither the network nor the broadcast address (for prefixes up to /30), not multicast.
    pub fn is_on_link_neighbor(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix_len);
        let host = u32::from(ip) & !mask;
        u32::from(ip) & mask == u32::from(self.addr) & mask
            && ip != self.addr
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && !ip.is_broadcast()
            && (self.prefix_len > 30 || (host != 0 && host != !mask))
    }
}

pub fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

/// Counters of what the host did (as opposed to what it dropped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCounters {
    pub frames_in: u64,
    pub arp_replies: u64,
    pub arp_requests: u64,
    pub echo_replies: u64,
    pub port_unreachables: u64,
    pub icmp_rate_limited: u64,
    pub reassembled: u64,
    pub delivered: u64,
    pub icmp_errors_forwarded: u64,
    /// ICMP errors applied to TCP connections the netserver runs itself.
    pub icmp_errors_applied: u64,
    /// ICMP redirects believed (a host route installed) and ignored (RFC 1122 §3.2.2.2).
    pub redirects_accepted: u64,
    pub redirects_ignored: u64,
    pub tcp_resets: u64,
    /// Segments sent by the TCP endpoints held here.
    pub tcp_segments_out: u64,
}

/// Linux's global ICMP limiter: `icmp_msgs_per_sec` = 1000, `icmp_msgs_burst` = 50.
#[derive(Debug)]
struct TokenBucket {
    tokens: u32,
    burst: u32,
    per_sec: u32,
    last: Instant,
}

impl TokenBucket {
    fn new(per_sec: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            per_sec,
            last: Instant::ZERO,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed_us = now.saturating_duration_since(self.last).as_micros();
        let refill = elapsed_us.saturating_mul(u64::from(self.per_sec)) / 1_000_000;
        if refill > 0 {
            self.tokens = self
                .tokens
                .saturating_add(refill.min(u64::from(u32::MAX)) as u32)
                .min(self.burst);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

pub struct Host {
    config: HostConfig,
    arp: ArpCache,
    reassembler: Reassembler,
    icmp_limiter: TokenBucket,
    next_ident: u16,
    pub drops: DropCounters,
    pub counters: HostCounters,
    /// The TCP endpoints the netserver holds itself (connections handed over by processes;
    /// listeners in issue 4). Its ISN secret is a placeholder until the daemon sets the host's.
    pub tcp: super::tcp_host::TcpHost,
}

impl Host {
    pub fn new(config: HostConfig) -> Self {
        Self::with_reassembly(config, ReassemblyLimits::default())
    }

    pub fn with_reassembly(config: HostConfig, limits: ReassemblyLimits) -> Self {
        Host {
            config,
            arp: ArpCache::new(ArpConfig::default()),
            reassembler: Reassembler::new(limits),
            icmp_limiter: TokenBucket::new(1000, 50),
            next_ident: 1,
            drops: DropCounters::default(),
            counters: HostCounters::default(),
            tcp: super::tcp_host::TcpHost::new(config.addr, IsnGenerator::new([0; 16])),
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Processes one received frame.
    pub fn receive(
        &mut self,
        now: Instant,
        frame: &[u8],
        ports: &dyn PortLookup,
        out: &mut Vec<Event>,
    ) {
        self.counters.frames_in += 1;
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            self.drops.count(DropReason::Truncated);
            return;
        };
        let Ok(eth_repr) = EthernetRepr::parse(&eth) else {
            self.drops.count(DropReason::BadEthernet);
            return;
        };
        if eth_repr.dst_addr != self.config.mac && !eth_repr.dst_addr.is_broadcast() {
            self.drops.count(DropReason::NotForUs);
            return;
        }
        match eth_repr.ethertype {
            EthernetProtocol::Arp => self.receive_arp(now, eth.payload(), out),
            EthernetProtocol::Ipv4 => {
                self.receive_ipv4(now, eth_repr.src_addr, eth.payload(), ports, out)
            }
            _ => self.drops.count(DropReason::UnknownProtocol),
        }
    }

    /// Starts (or reports) the resolution of `ip`; `Some` when already known.
    pub fn resolve(
        &mut self,
        now: Instant,
        ip: Ipv4Addr,
        out: &mut Vec<Event>,
    ) -> Option<EthernetAddress> {
        match self.arp.lookup(ip, now) {
            Lookup::Known(mac) => Some(mac),
            Lookup::Pending => None,
            Lookup::Unknown => {
                if let Some(action) = self.arp.start_resolve(ip, now) {
                    self.apply_arp_action(action, out);
                } else {
                    // The pending-resolution budget is spent: report failure now rather than
                    // leave the caller waiting.
                    out.push(Event::Resolved { ip, mac: None });
                }
                None
            }
        }
    }

    pub fn poll(&mut self, now: Instant, out: &mut Vec<Event>) {
        for action in self.arp.poll(now) {
            self.apply_arp_action(action, out);
        }
        for dropped in self.reassembler.poll(now) {
            self.drops.count(dropped.reason);
        }
    }

    pub fn poll_at(&self) -> Option<Instant> {
        [
            self.arp.poll_at(),
            self.reassembler.poll_at(),
            self.tcp.poll_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the output of the TCP endpoints held here. `next_hop` routes a destination (the
    /// routing region's answer: the neighbour and its published MAC, a permanent entry
    /// included); a next hop without a MAC known here gets an ARP request and its segments are
    /// dropped (counted), to be retransmitted by the engine.
    pub fn poll_tcp(
        &mut self,
        now: Instant,
        next_hop: &dyn Fn(Ipv4Addr) -> Option<(Ipv4Addr, Option<EthernetAddress>)>,
        out: &mut Vec<Event>,
    ) {
        if self.tcp.poll_at().is_none_or(|at| at > now) {
            return;
        }
        // Segments are collected first: framing needs `self` (ARP, IP ident).
        let mut segments: Vec<(SocketAddrV4, TcpRepr<'static>, Vec<u8>)> = Vec::new();
        self.tcp.dispatch(now, &mut |remote, seg| {
            let mut payload = Vec::with_capacity(seg.payload_len());
            payload.extend_from_slice(seg.payload[0]);
            payload.extend_from_slice(seg.payload[1]);
            let repr = TcpRepr {
                payload: &[],
                ..seg.repr
            };
            segments.push((remote, repr, payload));
            Ok(())
        });
        for (remote, repr, payload) in segments {
            let Some((hop, published)) = next_hop(*remote.ip()) else {
                self.drops.count(DropReason::NeighbourUnreachable);
                continue;
            };
            let Some(mac) = published.or_else(|| self.resolve(now, hop, out)) else {
                self.drops.count(DropReason::NeighbourUnreachable);
                continue;
            };
            let seg = TcpRepr {
                payload: &payload,
                ..repr
            };
            let local = self.config.addr;
            let frame = self.ipv4_frame(
                mac,
                *remote.ip(),
                IpProtocol::Tcp,
                seg.buffer_len(),
                |buf| {
                    let mut packet = TcpPacket::new_unchecked(buf);
                    seg.emit(&mut packet, local, *remote.ip());
                },
            );
            self.counters.tcp_segments_out += 1;
            out.push(Event::Transmit(frame));
        }
    }

    /// Every drop the host counted, the ARP cache's own (table full) included.
    pub fn all_drops(&self) -> DropCounters {
        let mut all = self.drops;
        all.merge(self.arp.drops());
        all
    }

    pub fn neighbors(&self) -> Vec<(Ipv4Addr, EthernetAddress)> {
        self.arp.entries()
    }

    fn apply_arp_action(&mut self, action: ArpAction, out: &mut Vec<Event>) {
        match action {
            ArpAction::SendRequest { ip, unicast_to } => {
                self.counters.arp_requests += 1;
                let dst = unicast_to.unwrap_or(EthernetAddress::BROADCAST);
                let repr = ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    source_hardware_addr: self.config.mac,
                    source_protocol_addr: self.config.addr,
                    target_hardware_addr: EthernetAddress::ZERO,
                    target_protocol_addr: ip,
                };
                out.push(Event::Transmit(self.arp_frame(dst, &repr)));
            }
            ArpAction::Failed { ip } => out.push(Event::Resolved { ip, mac: None }),
            ArpAction::Expired { ip } => out.push(Event::Neighbor { ip, mac: None }),
        }
    }

    fn arp_frame(&self, dst: EthernetAddress, repr: &ArpRepr) -> Vec<u8> {
        let eth = EthernetRepr {
            src_addr: self.config.mac,
            dst_addr: dst,
            ethertype: EthernetProtocol::Arp,
        };
        let mut buf = vec![0u8; eth.buffer_len() + repr.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        repr.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        buf
    }

    fn receive_arp(&mut self, now: Instant, payload: &[u8], out: &mut Vec<Event>) {
        let repr = match ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) {
            Ok(repr) => repr,
            Err(_) => {
                self.drops.count(DropReason::BadArp);
                return;
            }
        };
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = repr;
        if !source_hardware_addr.is_unicast()
            || source_protocol_addr.is_unspecified() && operation != ArpOperation::Request
        {
            self.drops.count(DropReason::BadArp);
            return;
        }
        let for_us = target_protocol_addr == self.config.addr;
        // RFC 826 merge: refresh what we know; learn new entries only from ARP aimed at us.
        let known_before = matches!(self.arp.lookup(source_protocol_addr, now), Lookup::Known(_));
        let resolved = if source_protocol_addr.is_unspecified() {
            None
        } else {
            self.arp
                .on_arp(source_protocol_addr, source_hardware_addr, for_us, now)
        };
        if let Some(mac) = resolved {
            out.push(Event::Neighbor {
                ip: source_protocol_addr,
                mac: Some(mac),
            });
            if !known_before {
                out.push(Event::Resolved {
                    ip: source_protocol_addr,
                    mac: Some(mac),
                });
            }
        }
        if !for_us {
            self.drops.count(DropReason::ArpNotForUs);
            return;
        }
        if operation == ArpOperation::Request {
            self.counters.arp_replies += 1;
            let reply = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: self.config.mac,
                source_protocol_addr: self.config.addr,
                target_hardware_addr: source_hardware_addr,
                target_protocol_addr: source_protocol_addr,
            };
            out.push(Event::Transmit(
                self.arp_frame(source_hardware_addr, &reply),
            ));
        }
    }

    fn receive_ipv4(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        payload: &[u8],
        ports: &dyn PortLookup,
        out: &mut Vec<Event>,
    ) {
        let packet = match Ipv4Packet::new_checked(payload) {
            Ok(p) => p,
            Err(crate::wire::Error::Truncated) => {
                self.drops.count(DropReason::Truncated);
                return;
            }
            Err(_) => {
                self.drops.count(DropReason::BadIpHeader);
                return;
            }
        };
        let ip = match Ipv4Repr::parse(&packet) {
            Ok(repr) => repr,
            Err(crate::wire::Error::Checksum) => {
                self.drops.count(DropReason::BadIpChecksum);
                return;
            }
            Err(_) => {
                let reason = if Ipv4Options::parse(packet.options()).is_err() {
                    DropReason::BadIpOptions
                } else {
                    DropReason::BadIpHeader
                };
                self.drops.count(reason);
                return;
            }
        };
        if ip.dst_addr != self.config.addr {
            self.drops.count(DropReason::NotForUs);
            return;
        }
        let body = packet.payload();
        if ip.more_frags || ip.frag_offset != 0 {
            let key = FragKey {
                src: ip.src_addr,
                dst: ip.dst_addr,
                protocol: ip.protocol.into(),
                ident: ip.ident,
            };
            match self
                .reassembler
                .insert(key, ip.frag_offset, ip.more_frags, body, now)
            {
                Ok(Some(done)) => {
                    self.counters.reassembled += 1;
                    let whole = Ipv4Repr {
                        more_frags: false,
                        frag_offset: 0,
                        payload_len: done.payload.len(),
                        ..ip
                    };
                    self.receive_transport(now, src_mac, &whole, &done.payload, ports, out);
                }
                Ok(None) => {}
                Err(e) => self.drops.count(e.drop_reason()),
            }
            return;
        }
        self.receive_transport(now, src_mac, &ip, body, ports, out);
    }

    fn receive_transport(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv4Repr,
        body: &[u8],
        ports: &dyn PortLookup,
        out: &mut Vec<Event>,
    ) {
        match ip.protocol {
            IpProtocol::Icmp => self.receive_icmp(now, src_mac, ip, body, ports, out),
            IpProtocol::Udp => self.receive_udp(now, src_mac, ip, body, ports, out),
            IpProtocol::Tcp => self.receive_tcp(now, src_mac, ip, body, ports, out),
            _ => self.drops.count(DropReason::UnknownProtocol),
        }
    }

    /// A TCP segment that reached the netserver: nobody holds its port, so it is answered with
    /// RST as Linux does (RFC 9293 §3.10.7.1); malformed segments are counted and dropped.
    fn receive_tcp(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv4Repr,
        body: &[u8],
        ports: &dyn PortLookup,
        out: &mut Vec<Event>,
    ) {
        let Ok(packet) = TcpPacket::new_checked(body) else {
            self.drops.count(DropReason::BadTcp);
            return;
        };
        // A segment of a port or connection a process holds is its own: leave it before the
        // checksum pass over its payload (while a listener here shares the port, every
        // segment of the connections accepted from it reaches this channel too).
        let remote = SocketAddrV4::new(ip.src_addr, packet.src_port());
        if ports.tcp_held(packet.dst_port())
            || ports
                .tcp_connection_owner(packet.dst_port(), remote)
                .is_some()
        {
            return;
        }
        let seg = match TcpRepr::parse(&packet, ip.src_addr, ip.dst_addr) {
            Ok(seg) => seg,
            Err(crate::wire::Error::Checksum) => {
                self.drops.count(DropReason::BadTcpChecksum);
                return;
            }
            Err(_) => {
                self.drops.count(DropReason::BadTcp);
                return;
            }
        };
        if ip.dst_addr != self.config.addr
            || ip.src_addr.is_broadcast()
            || ip.src_addr.is_multicast()
            || ip.src_addr.is_unspecified()
        {
            self.drops.count(DropReason::TcpNoSocket);
            return;
        }
        // A connection (or listener) held here takes it; anything else is answered with RST.
        // The reply (a reset, a SYN cookie) goes straight back to the sender's MAC.
        let no_socket_before = self.tcp.stats().resets;
        let src = SocketAddrV4::new(ip.src_addr, seg.src_port);
        let Some(reply) = self.tcp.process(now, src, &seg) else {
            return;
        };
        if self.tcp.stats().resets > no_socket_before {
            self.drops.count(DropReason::TcpNoSocket);
        }
        if reply.control.rst {
            self.counters.tcp_resets += 1;
        }
        let frame = self.ipv4_frame(
            src_mac,
            ip.src_addr,
            IpProtocol::Tcp,
            reply.buffer_len(),
            |buf| {
                let mut packet = TcpPacket::new_unchecked(buf);
                reply.emit(&mut packet, ip.dst_addr, ip.src_addr);
            },
        );
        out.push(Event::Transmit(frame));
    }

    fn receive_udp(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv4Repr,
        body: &[u8],
        ports: &dyn PortLookup,
        out: &mut Vec<Event>,
    ) {
        let packet = match UdpPacket::new_checked(body) {
            Ok(p) => p,
            Err(_) => {
                self.drops.count(DropReason::BadUdpLength);
                return;
            }
        };
        let repr = match UdpRepr::parse(&packet, ip.src_addr, ip.dst_addr) {
            Ok(r) => r,
            Err(crate::wire::Error::Checksum) => {
                self.drops.count(DropReason::BadUdpChecksum);
                return;
            }
            Err(_) => {
                self.drops.count(DropReason::BadUdpLength);
                return;
            }
        };
        let src = SocketAddrV4::new(ip.src_addr, repr.src_port);
        let dst = SocketAddrV4::new(ip.dst_addr, repr.dst_port);
        if let Some(id) = ports.udp_owner(dst) {
            self.counters.delivered += 1;
            out.push(Event::Deliver {
                id,
                src,
                dst,
                payload: packet.payload().to_vec(),
            });
            return;
        }
        self.drops.count(DropReason::NoSocket);
        // RFC 1122 §4.1.3.1: port unreachable, but never about broadcasts (§3.2.2).
        self.send_icmp_error(now, src_mac, ip, body, DstUnreachable::PortUnreachable, out);
    }

    /// Sends an ICMP destination-unreachable about the datagram `ip` + `body` (RFC 792: quote
    /// its IP header and the first 8 bytes of its data), rate-limited like Linux.
    fn send_icmp_error(
        &mut self,
        now: Instant,
        dst_mac: EthernetAddress,
        ip: &Ipv4Repr,
        body: &[u8],
        reason: DstUnreachable,
        out: &mut Vec<Event>,
    ) {
        if ip.src_addr.is_broadcast()
            || ip.src_addr.is_multicast()
            || ip.src_addr.is_unspecified()
            || ip.src_addr == self.config.broadcast()
        {
            return;
        }
        if !self.icmp_limiter.take(now) {
            self.counters.icmp_rate_limited += 1;
            return;
        }
        let icmp = Icmpv4Repr::DstUnreachable {
            reason,
            next_hop_mtu: 0,
            header: *ip,
            data: &body[..body.len().min(8)],
        };
        self.counters.port_unreachables += 1;
        let frame = self.ipv4_frame(
            dst_mac,
            ip.src_addr,
            IpProtocol::Icmp,
            icmp.buffer_len(),
            |buf| {
                icmp.emit(&mut Icmpv4Packet::new_unchecked(buf));
            },
        );
        out.push(Event::Transmit(frame));
    }

    fn receive_icmp(
        &mut self,
        now: Instant,
        src_mac: EthernetAddress,
        ip: &Ipv4Repr,
        body: &[u8],
        ports: &dyn PortLookup,
        out: &mut Vec<Event>,
    ) {
        let repr = match Icmpv4Packet::new_checked(body).and_then(|p| Icmpv4Repr::parse(&p)) {
            Ok(r) => r,
            Err(_) => {
                self.drops.count(DropReason::BadIcmp);
                return;
            }
        };
        match repr {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                self.counters.echo_replies += 1;
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                out.push(Event::Transmit(self.ipv4_frame(
                    src_mac,
                    ip.src_addr,
                    IpProtocol::Icmp,
                    reply.buffer_len(),
                    |buf| {
                        reply.emit(&mut Icmpv4Packet::new_unchecked(buf));
                    },
                )));
            }
            Icmpv4Repr::DstUnreachable {
                reason,
                next_hop_mtu,
                header,
                data,
            } => {
                let errno = match reason {
                    DstUnreachable::PortUnreachable => libc::ECONNREFUSED,
                    DstUnreachable::ProtoUnreachable => libc::ENOPROTOOPT,
                    DstUnreachable::FragRequired => libc::EMSGSIZE,
                    DstUnreachable::NetUnreachable => libc::ENETUNREACH,
                    _ => libc::EHOSTUNREACH,
                };
                // A quoted TCP segment goes to the process holding its source port, with the
                // sequence number the engine needs (RFC 1191 / RFC 5927 checks).
                if let Some((local, remote, quoted_seq)) = quoted_tcp(&header, data) {
                    if header.src_addr != self.config.addr {
                        self.drops.count(DropReason::BadIcmp);
                        return;
                    }
                    match ports
                        .tcp_owner(local.port())
                        .or_else(|| ports.tcp_connection_owner(local.port(), remote))
                    {
                        Some(id) => {
                            self.counters.icmp_errors_forwarded += 1;
                            out.push(Event::TcpIcmpError {
                                id,
                                local,
                                remote,
                                errno,
                                next_hop_mtu,
                                quoted_seq,
                            });
                        }
                        // A connection this netserver runs (flushed, closing, TIME_WAIT).
                        None if self.tcp.holds_connection(local.port(), remote) => {
                            let report = crate::stack::tcp::icmp::IcmpReport {
                                local,
                                remote,
                                errno,
                                next_hop_mtu,
                                quoted_seq: crate::wire::tcp::TcpSeqNumber(quoted_seq),
                            };
                            if self.tcp.on_icmp(now, &report) {
                                self.counters.icmp_errors_applied += 1;
                            } else {
                                self.drops.count(DropReason::BadIcmp);
                            }
                        }
                        None => self.drops.count(DropReason::NoSocket),
                    }
                    return;
                }
                // The quoted packet is one we sent: its source port names the endpoint.
                let Some((local, remote)) = quoted_udp_ports(&header, data) else {
                    self.drops.count(DropReason::BadIcmp);
                    return;
                };
                match ports.udp_owner(local) {
                    Some(id) => {
                        self.counters.icmp_errors_forwarded += 1;
                        out.push(Event::IcmpError { id, remote, errno });
                    }
                    None => self.drops.count(DropReason::NoSocket),
                }
            }
            Icmpv4Repr::Redirect {
                gateway, header, ..
            } => match self.check_redirect(ip.src_addr, gateway, &header, ports) {
                Ok(()) => {
                    self.counters.redirects_accepted += 1;
                    out.push(Event::Redirect {
                        dst: header.dst_addr,
                        gateway,
                    });
                }
                Err(_) => self.counters.redirects_ignored += 1,
            },
            _ => self.drops.count(DropReason::UnknownProtocol),
        }
    }

    /// Validates an ICMP redirect from `from` about the packet whose header is `quoted`, naming
    /// `gateway` as the better first hop (RFC 1122 §3.2.2.2; every code is taken as a host
    /// redirect).
    pub fn check_redirect(
        &self,
        from: Ipv4Addr,
        gateway: Ipv4Addr,
        quoted: &Ipv4Repr,
        ports: &dyn PortLookup,
    ) -> Result<(), RedirectRejected> {
        if quoted.src_addr != self.config.addr {
            return Err(RedirectRejected::NotOurPacket);
        }
        if ports.first_hop_gateway(quoted.dst_addr) != Some(from) {
            return Err(RedirectRejected::NotFromFirstHop);
        }
        if !self.config.is_on_link_neighbor(gateway) {
            return Err(RedirectRejected::GatewayNotOnLink);
        }
        if gateway == from {
            return Err(RedirectRejected::SameGateway);
        }
        Ok(())
    }

    /// Builds Ethernet + IPv4 around a payload written by `fill` (netserver-originated
    /// packets are small: never fragmented).
    fn ipv4_frame(
        &mut self,
        dst_mac: EthernetAddress,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let eth = EthernetRepr {
            src_addr: self.config.mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        let ident = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1);
        let ip = Ipv4Repr {
            src_addr: self.config.addr,
            dst_addr: dst,
            protocol,
            payload_len,
            ttl: 64,
            ident,
            dont_frag: true,
            ..Ipv4Repr::default()
        };
        let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + payload_len];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet);
        fill(packet.payload_mut());
        buf
    }
}

/// (our local address, remote address, sequence number) of the TCP segment quoted in an ICMP
/// error (RFC 792 quotes the IP header and at least 8 bytes: ports and sequence number).
fn quoted_tcp(header: &Ipv4Repr, data: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, u32)> {
    if header.protocol != IpProtocol::Tcp || header.frag_offset != 0 {
        return None;
    }
    let quoted = data.get(..8)?;
    let src_port = u16::from_be_bytes([quoted[0], quoted[1]]);
    let dst_port = u16::from_be_bytes([quoted[2], quoted[3]]);
    let seq = u32::from_be_bytes([quoted[4], quoted[5], quoted[6], quoted[7]]);
    Some((
        SocketAddrV4::new(header.src_addr, src_port),
        SocketAddrV4::new(header.dst_addr, dst_port),
        seq,
    ))
}

/// (our local address, remote address) of the UDP datagram quoted in an ICMP error.
fn quoted_udp_ports(header: &Ipv4Repr, data: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    if header.protocol != IpProtocol::Udp || header.frag_offset != 0 {
        return None;
    }
    let ports = data.get(..4)?;
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    Some((
        SocketAddrV4::new(header.src_addr, src_port),
        SocketAddrV4::new(header.dst_addr, dst_port),
    ))
}

/// Frames go through a [`MemoryHub`] and the netserver's real BPF filter into the host, as on
/// the wire; each bad frame must be dropped under its own reason with no reply and no panic.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::memory::MemoryHub;
    use crate::channel::{Channel, bpf};
    use crate::stack::reassembly::ReassemblyLimits;
    use std::collections::HashMap;

    const MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    const ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    struct Owners(HashMap<u16, EndpointId>);

    impl PortLookup for Owners {
        fn udp_owner(&self, local: SocketAddrV4) -> Option<EndpointId> {
            self.0.get(&local.port()).copied()
        }
    }

    fn config() -> HostConfig {
        HostConfig {
            mac: MAC,
            addr: ADDR,
            prefix_len: 24,
            mtu: 1500,
        }
    }

    /// Runs `frames` through a hub whose netserver channel excludes `cached` ports.
    fn through_channel(
        host: &mut Host,
        now: Instant,
        frames: &[Vec<u8>],
        owners: &dyn PortLookup,
        cached: &[u16],
    ) -> Vec<Event> {
        let hub = MemoryHub::with_limits(9000, 100_000);
        let mut netserver = hub.channel(bpf::netserver(ADDR, MAC, cached)).unwrap();
        for frame in frames {
            hub.inject(frame);
        }
        let mut events = Vec::new();
        while netserver
            .recv_batch(64, &mut |frame| {
                host.receive(now, frame, owners, &mut events)
            })
            .unwrap()
            > 0
        {}
        events
    }

    fn ipv4(
        src: Ipv4Addr,
        ident: u16,
        more: bool,
        offset: u16,
        proto: IpProtocol,
        body: &[u8],
    ) -> Vec<u8> {
        let eth = EthernetRepr {
            src_addr: PEER_MAC,
            dst_addr: MAC,
            ethertype: EthernetProtocol::Ipv4,
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: ADDR,
            protocol: proto,
            payload_len: body.len(),
            ident,
            more_frags: more,
            frag_offset: offset,
            ..Ipv4Repr::default()
        };
        let mut buf = vec![0u8; 14 + ip.buffer_len() + body.len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(&mut packet);
        packet.payload_mut().copy_from_slice(body);
        buf
    }

    fn udp_body(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let repr = UdpRepr { src_port, dst_port };
        let mut buf = vec![0u8; repr.buffer_len(payload.len())];
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[..]),
            PEER,
            ADDR,
            payload.len(),
            |p| p.copy_from_slice(payload),
        );
        buf
    }

    fn udp_frame(dst_port: u16, payload: &[u8]) -> Vec<u8> {
        ipv4(
            PEER,
            1,
            false,
            0,
            IpProtocol::Udp,
            &udp_body(5000, dst_port, payload),
        )
    }

    fn arp_frame(
        op: ArpOperation,
        sender: Ipv4Addr,
        sender_mac: EthernetAddress,
        target: Ipv4Addr,
    ) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: sender_mac,
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress::ZERO,
            target_protocol_addr: target,
        };
        let eth = EthernetRepr {
            src_addr: sender_mac,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut buf = vec![0u8; 14 + repr.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut frame);
        repr.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        buf
    }

    fn transmitted(events: &[Event]) -> Vec<&Vec<u8>> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::Transmit(f) = e {
                    Some(f)
                } else {
                    None
                }
            })
            .collect()
    }

    fn no_owners() -> Owners {
        Owners(HashMap::new())
    }

    #[test]
    fn arp_request_for_us_is_answered_and_sender_learned() {
        let mut host = Host::new(config());
        let events = through_channel(
            &mut host,
            Instant::ZERO,
            &[arp_frame(ArpOperation::Request, PEER, PEER_MAC, ADDR)],
            &no_owners(),
            &[],
        );
        assert!(events.contains(&Event::Neighbor {
            ip: PEER,
            mac: Some(PEER_MAC)
        }));
        let tx = transmitted(&events);
        assert_eq!(tx.len(), 1);
        let frame = EthernetFrame::new_checked(&tx[0][..]).unwrap();
        assert_eq!(frame.dst_addr(), PEER_MAC);
        let reply = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
        assert_eq!(
            reply,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: MAC,
                source_protocol_addr: ADDR,
                target_hardware_addr: PEER_MAC,
                target_protocol_addr: PEER,
            }
        );
        assert_eq!(host.neighbors(), vec![(PEER, PEER_MAC)]);
    }

    #[test]
    fn arp_flood_for_other_addresses_does_not_grow_the_table() {
        let mut host = Host::new(config());
        let frames: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                let sender = Ipv4Addr::from(0xc612_0100 + i);
                let mac = EthernetAddress([0x02, 9, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                arp_frame(
                    ArpOperation::Request,
                    sender,
                    mac,
                    Ipv4Addr::new(198, 18, 0, 77),
                )
            })
            .collect();
        let events = through_channel(&mut host, Instant::ZERO, &frames, &no_owners(), &[]);
        assert!(transmitted(&events).is_empty());
        assert!(host.neighbors().is_empty());
        assert_eq!(host.all_drops().get(DropReason::ArpNotForUs), 2000);
    }

    #[test]
    fn echo_request_is_answered_with_the_same_data() {
        let mut host = Host::new(config());
        let echo = Icmpv4Repr::EchoRequest {
            ident: 7,
            seq_no: 3,
            data: b"ping payload",
        };
        let mut body = vec![0u8; echo.buffer_len()];
        echo.emit(&mut Icmpv4Packet::new_unchecked(&mut body[..]));
        let events = through_channel(
            &mut host,
            Instant::ZERO,
            &[ipv4(PEER, 9, false, 0, IpProtocol::Icmp, &body)],
            &no_owners(),
            &[],
        );
        let tx = transmitted(&events);
        assert_eq!(tx.len(), 1);
        let frame = EthernetFrame::new_checked(&tx[0][..]).unwrap();
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert_eq!(Ipv4Repr::parse(&ip).unwrap().dst_addr, PEER);
        let reply = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ip.payload()).unwrap()).unwrap();
        assert_eq!(
            reply,
            Icmpv4Repr::EchoReply {
                ident: 7,
                seq_no: 3,
                data: b"ping payload"
            }
        );
    }

    #[test]
    fn closed_udp_port_gets_rate_limited_port_unreachable() {
        let mut host = Host::new(config());
        let frames: Vec<Vec<u8>> = (0..80).map(|_| udp_frame(9, b"x")).collect();
        let events = through_channel(&mut host, Instant::ZERO, &frames, &no_owners(), &[]);
        // Linux's burst of 50, then the limiter holds.
        assert_eq!(transmitted(&events).len(), 50);
        assert_eq!(host.counters.icmp_rate_limited, 30);
        let frame = EthernetFrame::new_checked(&transmitted(&events)[0][..]).unwrap();
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        match Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ip.payload()).unwrap()).unwrap() {
            Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
                ..
            } => {
                assert_eq!(reason, DstUnreachable::PortUnreachable);
                assert_eq!(header.src_addr, PEER);
                assert_eq!(&data[2..4], &9u16.to_be_bytes());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(host.all_drops().get(DropReason::NoSocket), 80);
    }

    #[test]
    fn cached_port_is_filtered_away_from_the_netserver() {
        let mut host = Host::new(config());
        let owners = Owners(HashMap::from([(9000, 1)]));
        let events = through_channel(
            &mut host,
            Instant::ZERO,
            &[udp_frame(9000, b"abc")],
            &owners,
            &[9000],
        );
        assert!(events.is_empty());
        assert_eq!(host.counters.frames_in, 0);
    }

    #[test]
    fn fragmented_datagram_is_reassembled_and_delivered_to_its_owner() {
        let mut host = Host::new(config());
        let owners = Owners(HashMap::from([(9000, 42)]));
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let whole = udp_body(5000, 9000, &payload);
        let mut frames = Vec::new();
        for (i, chunk) in whole.chunks(1480).enumerate() {
            let offset = (i * 1480) as u16;
            let more = (i + 1) * 1480 < whole.len();
            frames.push(ipv4(PEER, 77, more, offset, IpProtocol::Udp, chunk));
        }
        frames.reverse();
        // Fragments pass the filter even though port 9000 is cached elsewhere.
        let events = through_channel(&mut host, Instant::ZERO, &frames, &owners, &[9000]);
        assert_eq!(
            events,
            vec![Event::Deliver {
                id: 42,
                src: SocketAddrV4::new(PEER, 5000),
                dst: SocketAddrV4::new(ADDR, 9000),
                payload
            }]
        );
        assert_eq!(host.counters.reassembled, 1);
    }

    #[test]
    fn bad_frames_are_dropped_by_reason() {
        let good = udp_body(5000, 9000, b"payload!");
        let mut cases: Vec<(DropReason, Vec<u8>)> = Vec::new();

        let mut f = ipv4(PEER, 1, false, 0, IpProtocol::Udp, &good);
        f[14 + 10] ^= 0xff;
        cases.push((DropReason::BadIpChecksum, f));

        let mut f = ipv4(PEER, 2, false, 0, IpProtocol::Udp, &good);
        let total = u16::from_be_bytes([f[16], f[17]]);
        f[16..18].copy_from_slice(&(total + 40).to_be_bytes());
        let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
        p.fill_checksum();
        cases.push((DropReason::Truncated, f));

        let mut f = ipv4(PEER, 3, false, 0, IpProtocol::Udp, &good);
        f[14] = 0x44;
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        cases.push((DropReason::BadIpHeader, f));

        // IHL 6 with an option whose length overruns the header.
        let mut f = ipv4(PEER, 4, false, 0, IpProtocol::Udp, &good);
        f.splice(34..34, [0x07u8, 0x09, 0x04, 0x00]);
        f[14] = 0x46;
        let total = u16::from_be_bytes([f[16], f[17]]) + 4;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        cases.push((DropReason::BadIpOptions, f));

        let mut body = good.clone();
        body[6] ^= 0x01;
        cases.push((
            DropReason::BadUdpChecksum,
            ipv4(PEER, 5, false, 0, IpProtocol::Udp, &body),
        ));

        let mut body = good.clone();
        body[4..6].copy_from_slice(&300u16.to_be_bytes());
        cases.push((
            DropReason::BadUdpLength,
            ipv4(PEER, 6, false, 0, IpProtocol::Udp, &body),
        ));

        let mut body = vec![8u8, 0, 0, 0, 0, 1, 0, 1];
        body[2] = 0x12; // wrong ICMP checksum
        cases.push((
            DropReason::BadIcmp,
            ipv4(PEER, 7, false, 0, IpProtocol::Icmp, &body),
        ));

        cases.push((
            DropReason::UnknownProtocol,
            ipv4(PEER, 8, false, 0, IpProtocol::Unknown(99), b"??"),
        ));

        for (reason, frame) in cases {
            let mut host = Host::new(config());
            let owners = Owners(HashMap::from([(9000, 1)]));
            let events = through_channel(&mut host, Instant::ZERO, &[frame], &owners, &[]);
            assert!(events.is_empty(), "{reason:?}: {events:?}");
            assert_eq!(
                host.all_drops().get(reason),
                1,
                "{reason:?}: {:?}",
                host.all_drops()
            );
            assert_eq!(
                host.all_drops().total(),
                1,
                "{reason:?}: {:?}",
                host.all_drops()
            );
        }
    }

    #[test]
    fn overlapping_and_never_completed_fragments_are_dropped() {
        let mut host = Host::with_reassembly(config(), ReassemblyLimits::default());
        let owners = no_owners();
        let frames = vec![
            ipv4(PEER, 10, true, 0, IpProtocol::Udp, &[0x11; 16]),
            ipv4(PEER, 10, true, 8, IpProtocol::Udp, &[0x22; 16]),
            ipv4(PEER, 11, true, 0, IpProtocol::Udp, &[0x33; 16]),
        ];
        let events = through_channel(&mut host, Instant::ZERO, &frames, &owners, &[]);
        assert!(events.is_empty());
        assert_eq!(host.all_drops().get(DropReason::FragOverlap), 1);
        // Datagram 11 never completes: freed at the 30 s timeout (RFC 791), not before.
        let mut events = Vec::new();
        host.poll(Instant::from_secs(29), &mut events);
        assert_eq!(host.all_drops().get(DropReason::FragTimeout), 0);
        host.poll(Instant::from_secs(31), &mut events);
        assert_eq!(host.all_drops().get(DropReason::FragTimeout), 1);
        assert!(events.is_empty());
    }

    #[test]
    fn port_unreachable_about_our_datagram_reaches_its_endpoint() {
        let mut host = Host::new(config());
        // The datagram we sent: ADDR:6000 → PEER:53, quoted back by the peer.
        let quoted_ip = Ipv4Repr {
            src_addr: ADDR,
            dst_addr: PEER,
            protocol: IpProtocol::Udp,
            payload_len: 12,
            ..Ipv4Repr::default()
        };
        let quoted_udp = [0x17, 0x70, 0, 53, 0, 12, 0, 0];
        let icmp = Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::PortUnreachable,
            next_hop_mtu: 0,
            header: quoted_ip,
            data: &quoted_udp,
        };
        let mut body = vec![0u8; icmp.buffer_len()];
        icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut body[..]));
        let owners = Owners(HashMap::from([(6000, 5)]));
        let events = through_channel(
            &mut host,
            Instant::ZERO,
            &[ipv4(PEER, 12, false, 0, IpProtocol::Icmp, &body)],
            &owners,
            &[],
        );
        assert_eq!(
            events,
            vec![Event::IcmpError {
                id: 5,
                remote: SocketAddrV4::new(PEER, 53),
                errno: libc::ECONNREFUSED
            }]
        );
    }

    struct TcpOwners(HashMap<u16, EndpointId>);

    impl PortLookup for TcpOwners {
        fn udp_owner(&self, _local: SocketAddrV4) -> Option<EndpointId> {
            None
        }
        fn tcp_owner(&self, port: u16) -> Option<EndpointId> {
            self.0.get(&port).copied()
        }
    }

    /// An ICMP destination-unreachable from PEER quoting a TCP segment `src` → PEER:80.
    fn icmp_about_tcp(reason: DstUnreachable, mtu: u16, src: SocketAddrV4, seq: u32) -> Vec<u8> {
        let quoted_ip = Ipv4Repr {
            src_addr: *src.ip(),
            dst_addr: PEER,
            protocol: IpProtocol::Tcp,
            payload_len: 1480,
            dont_frag: true,
            ..Ipv4Repr::default()
        };
        let mut quoted_tcp = src.port().to_be_bytes().to_vec();
        quoted_tcp.extend_from_slice(&80u16.to_be_bytes());
        quoted_tcp.extend_from_slice(&seq.to_be_bytes());
        let icmp = Icmpv4Repr::DstUnreachable {
            reason,
            next_hop_mtu: mtu,
            header: quoted_ip,
            data: &quoted_tcp,
        };
        let mut body = vec![0u8; icmp.buffer_len()];
        icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut body[..]));
        ipv4(PEER, 13, false, 0, IpProtocol::Icmp, &body)
    }

    #[test]
    fn icmp_about_a_held_tcp_port_reaches_its_holder() {
        let mut host = Host::new(config());
        let owners = TcpOwners(HashMap::from([(40000, 7)]));
        let ours = SocketAddrV4::new(ADDR, 40000);
        let frames = [
            icmp_about_tcp(DstUnreachable::FragRequired, 1280, ours, 0xdead_beef),
            icmp_about_tcp(DstUnreachable::HostUnreachable, 0, ours, 5),
            // Nobody holds port 40001; a segment we never sent (another source address).
            icmp_about_tcp(
                DstUnreachable::FragRequired,
                1280,
                SocketAddrV4::new(ADDR, 40001),
                1,
            ),
            icmp_about_tcp(
                DstUnreachable::FragRequired,
                1280,
                SocketAddrV4::new(PEER, 40000),
                1,
            ),
        ];
        let events = through_channel(&mut host, Instant::ZERO, &frames, &owners, &[]);
        let remote = SocketAddrV4::new(PEER, 80);
        assert_eq!(
            events,
            vec![
                Event::TcpIcmpError {
                    id: 7,
                    local: ours,
                    remote,
                    errno: libc::EMSGSIZE,
                    next_hop_mtu: 1280,
                    quoted_seq: 0xdead_beef,
                },
                Event::TcpIcmpError {
                    id: 7,
                    local: ours,
                    remote,
                    errno: libc::EHOSTUNREACH,
                    next_hop_mtu: 0,
                    quoted_seq: 5,
                },
            ]
        );
        assert_eq!(host.counters.icmp_errors_forwarded, 2);
        assert_eq!(host.all_drops().get(DropReason::NoSocket), 1);
        assert_eq!(host.all_drops().get(DropReason::BadIcmp), 1);
    }

    #[test]
    fn resolve_sends_a_request_and_reports_the_answer() {
        let mut host = Host::new(config());
        let mut events = Vec::new();
        assert_eq!(host.resolve(Instant::ZERO, PEER, &mut events), None);
        assert_eq!(transmitted(&events).len(), 1);
        let mut reply = arp_frame(ArpOperation::Reply, PEER, PEER_MAC, ADDR);
        reply[0..6].copy_from_slice(&MAC.0);
        let events = through_channel(
            &mut host,
            Instant::from_millis(1),
            &[reply],
            &no_owners(),
            &[],
        );
        assert!(
            events.contains(&Event::Resolved {
                ip: PEER,
                mac: Some(PEER_MAC)
            }),
            "{events:?}"
        );
        let mut events = Vec::new();
        assert_eq!(
            host.resolve(Instant::from_millis(2), PEER, &mut events),
            Some(PEER_MAC)
        );
    }

    #[test]
    fn unanswered_resolution_fails_after_retries() {
        let mut host = Host::new(config());
        let mut events = Vec::new();
        host.resolve(Instant::ZERO, PEER, &mut events);
        for ms in (0..=5000).step_by(100) {
            host.poll(Instant::from_millis(ms), &mut events);
        }
        assert!(
            events.contains(&Event::Resolved {
                ip: PEER,
                mac: None
            }),
            "{events:?}"
        );
        assert_eq!(transmitted(&events).len(), 3, "three requests, 1 s apart");
    }

    /// Routes as a /25 with a default gateway: what the redirect checks need from the daemon.
    struct Routed;

    const GW: Ipv4Addr = PEER;
    const BETTER_GW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
    const FAR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

    impl PortLookup for Routed {
        fn udp_owner(&self, _local: SocketAddrV4) -> Option<EndpointId> {
            None
        }
        fn first_hop_gateway(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
            // 198.18.0.0/25 on-link, everything else via GW.
            (u32::from(dst) & prefix_mask(25) != u32::from(ADDR) & prefix_mask(25)).then_some(GW)
        }
    }

    fn routed_host() -> Host {
        Host::new(HostConfig {
            prefix_len: 25,
            ..config()
        })
    }

    /// An ICMP redirect sent by `from` about a UDP datagram `quoted_src` → `quoted_dst`.
    fn redirect(
        from: Ipv4Addr,
        code: crate::wire::Redirect,
        gateway: Ipv4Addr,
        quoted_src: Ipv4Addr,
        quoted_dst: Ipv4Addr,
    ) -> Vec<u8> {
        let header = Ipv4Repr {
            src_addr: quoted_src,
            dst_addr: quoted_dst,
            protocol: IpProtocol::Udp,
            payload_len: 8,
            ttl: 64,
            ..Ipv4Repr::default()
        };
        let data = [0x9c, 0x40, 0x1b, 0x58, 0, 8, 0, 0];
        let icmp = Icmpv4Repr::Redirect {
            code,
            gateway,
            header,
            data: &data,
        };
        let mut body = vec![0u8; icmp.buffer_len()];
        icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut body[..]));
        ipv4(from, 9, false, 0, IpProtocol::Icmp, &body)
    }

    fn redirects_in(events: &[Event]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Redirect { dst, gateway } => Some((*dst, *gateway)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn redirect_from_the_first_hop_installs_a_host_route() {
        use crate::wire::Redirect;
        let mut host = routed_host();
        // A network redirect is taken as a host redirect (RFC 1122 §3.2.2.2).
        let frames = [
            redirect(GW, Redirect::Host, BETTER_GW, ADDR, FAR),
            redirect(GW, Redirect::Net, BETTER_GW, ADDR, FAR),
        ];
        let events = through_channel(&mut host, Instant::ZERO, &frames, &Routed, &[]);
        assert_eq!(
            redirects_in(&events),
            vec![(FAR, BETTER_GW), (FAR, BETTER_GW)]
        );
        assert_eq!(host.counters.redirects_accepted, 2);
        assert_eq!(host.counters.redirects_ignored, 0);
        assert!(
            transmitted(&events).is_empty(),
            "a redirect is not answered"
        );
    }

    #[test]
    fn bad_redirects_are_counted_and_ignored() {
        use crate::wire::Redirect;
        let stranger = Ipv4Addr::new(198, 18, 0, 9);
        let cases = [
            // Not from the gateway our route uses.
            (
                redirect(stranger, Redirect::Host, BETTER_GW, ADDR, FAR),
                RedirectRejected::NotFromFirstHop,
            ),
            // About an on-link destination (no gateway to be redirected from).
            (
                redirect(
                    GW,
                    Redirect::Host,
                    BETTER_GW,
                    ADDR,
                    Ipv4Addr::new(198, 18, 0, 5),
                ),
                RedirectRejected::NotFromFirstHop,
            ),
            // The quoted packet is not one we sent.
            (
                redirect(GW, Redirect::Host, BETTER_GW, stranger, FAR),
                RedirectRejected::NotOurPacket,
            ),
            // New gateways off our link, ourselves, the subnet broadcast, the network.
            (
                redirect(
                    GW,
                    Redirect::Host,
                    Ipv4Addr::new(198, 18, 0, 130),
                    ADDR,
                    FAR,
                ),
                RedirectRejected::GatewayNotOnLink,
            ),
            (
                redirect(GW, Redirect::Host, ADDR, ADDR, FAR),
                RedirectRejected::GatewayNotOnLink,
            ),
            (
                redirect(
                    GW,
                    Redirect::Host,
                    Ipv4Addr::new(198, 18, 0, 127),
                    ADDR,
                    FAR,
                ),
                RedirectRejected::GatewayNotOnLink,
            ),
            (
                redirect(
                    GW,
                    Redirect::HostToS,
                    Ipv4Addr::new(198, 18, 0, 0),
                    ADDR,
                    FAR,
                ),
                RedirectRejected::GatewayNotOnLink,
            ),
            (
                redirect(GW, Redirect::Host, Ipv4Addr::new(224, 0, 0, 1), ADDR, FAR),
                RedirectRejected::GatewayNotOnLink,
            ),
            // To the gateway it comes from.
            (
                redirect(GW, Redirect::Host, GW, ADDR, FAR),
                RedirectRejected::SameGateway,
            ),
        ];
        let mut host = routed_host();
        for (i, (frame, why)) in cases.iter().enumerate() {
            // The same verdict through the checker and through the receive path.
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            let ip_repr = Ipv4Repr::parse(&ip).unwrap();
            let Icmpv4Repr::Redirect {
                gateway, header, ..
            } = Icmpv4Repr::parse(&Icmpv4Packet::new_checked(ip.payload()).unwrap()).unwrap()
            else {
                panic!("case {i}: not a redirect");
            };
            assert_eq!(
                host.check_redirect(ip_repr.src_addr, gateway, &header, &Routed),
                Err(*why),
                "case {i}"
            );
            let events = through_channel(
                &mut host,
                Instant::ZERO,
                std::slice::from_ref(frame),
                &Routed,
                &[],
            );
            assert!(redirects_in(&events).is_empty(), "case {i}: {events:?}");
            assert_eq!(host.counters.redirects_ignored, i as u64 + 1, "case {i}");
        }
        assert_eq!(host.counters.redirects_accepted, 0);
        // Without routes (a driver that has none), every redirect is ignored.
        let mut plain = routed_host();
        let events = through_channel(
            &mut plain,
            Instant::ZERO,
            &[redirect(GW, Redirect::Host, BETTER_GW, ADDR, FAR)],
            &no_owners(),
            &[],
        );
        assert!(redirects_in(&events).is_empty());
        assert_eq!(plain.counters.redirects_ignored, 1);
        // A truncated redirect is a bad ICMP message, not a crash.
        let full = redirect(GW, Redirect::Host, BETTER_GW, ADDR, FAR);
        let cut = ipv4(
            GW,
            10,
            false,
            0,
            IpProtocol::Icmp,
            &full[14 + 20..14 + 20 + 12],
        );
        through_channel(&mut plain, Instant::ZERO, &[cut], &Routed, &[]);
        assert_eq!(plain.all_drops().get(DropReason::BadIcmp), 1);
    }

    #[test]
    fn on_link_neighbors() {
        let c = HostConfig {
            prefix_len: 25,
            ..config()
        };
        assert!(c.is_on_link_neighbor(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(c.is_on_link_neighbor(Ipv4Addr::new(198, 18, 0, 126)));
        for no in [
            ADDR,
            Ipv4Addr::new(198, 18, 0, 0),
            Ipv4Addr::new(198, 18, 0, 127),
        ] {
            assert!(!c.is_on_link_neighbor(no), "{no}");
        }
        assert!(!c.is_on_link_neighbor(Ipv4Addr::new(198, 18, 0, 128)));
        assert!(!c.is_on_link_neighbor(Ipv4Addr::BROADCAST));
    }
}
