//! The netserver's host logic, sans-I/O: what it does with each frame its channel receives and
//! with time (paper §3.1, §4.3; RFC 826, RFC 791, RFC 792, RFC 1122 §3.2.2, RFC 768).
//!
//! Input: frames and the current time. Output: [`Event`]s — frames to transmit, datagrams to hand
//! to the client that caches their endpoint, neighbour changes to publish in the routing region,
//! resolutions to report, ICMP errors to forward. Every frame that is not used is counted under
//! a [`DropReason`]; nothing here panics on input.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::control::EndpointId;
use crate::stack::arp_cache::{ArpAction, ArpCache, ArpConfig, Lookup};
use crate::stack::reassembly::{FragKey, Reassembler, ReassemblyLimits};
use crate::stack::stats::{DropCounters, DropReason};
use crate::stack::Instant;
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, DstUnreachable, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Options, Ipv4Packet, Ipv4Repr,
    UdpPacket, UdpRepr,
};

/// Where the netserver finds the owner of a UDP destination.
pub trait PortLookup {
    fn udp_owner(&self, local: SocketAddrV4) -> Option<EndpointId>;
}

/// What the host asks its driver (the daemon) to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transmit(Vec<u8>),
    /// A complete datagram for an endpoint (reassembled, or caught before its filter moved).
    Deliver { id: EndpointId, src: SocketAddrV4, dst: SocketAddrV4, payload: Vec<u8> },
    /// Publish (`Some`) or withdraw (`None`) a neighbour in the routing region.
    Neighbor { ip: Ipv4Addr, mac: Option<EthernetAddress> },
    /// A resolution requested through [`Host::resolve`] finished.
    Resolved { ip: Ipv4Addr, mac: Option<EthernetAddress> },
    /// An ICMP error about a datagram an endpoint sent.
    IcmpError { id: EndpointId, remote: SocketAddrV4, errno: i32 },
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
}

pub fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix_len.min(32))) }
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
        TokenBucket { tokens: burst, burst, per_sec, last: Instant::ZERO }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed_us = now.saturating_duration_since(self.last).as_micros();
        let refill = elapsed_us.saturating_mul(u64::from(self.per_sec)) / 1_000_000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill.min(u64::from(u32::MAX)) as u32).min(self.burst);
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
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Processes one received frame.
    pub fn receive(&mut self, now: Instant, frame: &[u8], ports: &dyn PortLookup, out: &mut Vec<Event>) {
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
            EthernetProtocol::Ipv4 => self.receive_ipv4(now, eth_repr.src_addr, eth.payload(), ports, out),
            _ => self.drops.count(DropReason::UnknownProtocol),
        }
    }

    /// Starts (or reports) the resolution of `ip`; `Some` when already known.
    pub fn resolve(&mut self, now: Instant, ip: Ipv4Addr, out: &mut Vec<Event>) -> Option<EthernetAddress> {
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
        match (self.arp.poll_at(), self.reassembler.poll_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every drop the host counted, the ARP cache's own (table full) included.
    pub fn all_drops(&self) -> DropCounters {
        let mut all = self.drops.clone();
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
        let eth = EthernetRepr { src_addr: self.config.mac, dst_addr: dst, ethertype: EthernetProtocol::Arp };
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
        if !source_hardware_addr.is_unicast() || source_protocol_addr.is_unspecified() && operation != ArpOperation::Request {
            self.drops.count(DropReason::BadArp);
            return;
        }
        let for_us = target_protocol_addr == self.config.addr;
        // RFC 826 merge: refresh what we know; learn new entries only from ARP aimed at us.
        let known_before = matches!(self.arp.lookup(source_protocol_addr, now), Lookup::Known(_));
        let resolved = if source_protocol_addr.is_unspecified() {
            None
        } else {
            self.arp.on_arp(source_protocol_addr, source_hardware_addr, for_us, now)
        };
        if let Some(mac) = resolved {
            out.push(Event::Neighbor { ip: source_protocol_addr, mac: Some(mac) });
            if !known_before {
                out.push(Event::Resolved { ip: source_protocol_addr, mac: Some(mac) });
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
            out.push(Event::Transmit(self.arp_frame(source_hardware_addr, &reply)));
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
            let key = FragKey { src: ip.src_addr, dst: ip.dst_addr, protocol: ip.protocol.into(), ident: ip.ident };
            match self.reassembler.insert(key, ip.frag_offset, ip.more_frags, body, now) {
                Ok(Some(done)) => {
                    self.counters.reassembled += 1;
                    let whole = Ipv4Repr { more_frags: false, frag_offset: 0, payload_len: done.payload.len(), ..ip };
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
            _ => self.drops.count(DropReason::UnknownProtocol),
        }
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
            out.push(Event::Deliver { id, src, dst, payload: packet.payload().to_vec() });
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
        let frame = self.ipv4_frame(dst_mac, ip.src_addr, IpProtocol::Icmp, icmp.buffer_len(), |buf| {
            icmp.emit(&mut Icmpv4Packet::new_unchecked(buf));
        });
        out.push(Event::Transmit(frame));
    }

    fn receive_icmp(
        &mut self,
        _now: Instant,
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
            Icmpv4Repr::EchoRequest { ident, seq_no, data } => {
                self.counters.echo_replies += 1;
                let reply = Icmpv4Repr::EchoReply { ident, seq_no, data };
                out.push(Event::Transmit(self.ipv4_frame(src_mac, ip.src_addr, IpProtocol::Icmp, reply.buffer_len(), |buf| {
                    reply.emit(&mut Icmpv4Packet::new_unchecked(buf));
                })));
            }
            Icmpv4Repr::DstUnreachable { reason, header, data, .. } => {
                // The quoted packet is one we sent: its source port names the endpoint.
                let Some((local, remote)) = quoted_udp_ports(&header, data) else {
                    self.drops.count(DropReason::BadIcmp);
                    return;
                };
                let errno = match reason {
                    DstUnreachable::PortUnreachable => libc::ECONNREFUSED,
                    DstUnreachable::ProtoUnreachable => libc::ENOPROTOOPT,
                    DstUnreachable::FragRequired => libc::EMSGSIZE,
                    DstUnreachable::NetUnreachable => libc::ENETUNREACH,
                    _ => libc::EHOSTUNREACH,
                };
                match ports.udp_owner(local) {
                    Some(id) => {
                        self.counters.icmp_errors_forwarded += 1;
                        out.push(Event::IcmpError { id, remote, errno });
                    }
                    None => self.drops.count(DropReason::NoSocket),
                }
            }
            _ => self.drops.count(DropReason::UnknownProtocol),
        }
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
        let eth = EthernetRepr { src_addr: self.config.mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv4 };
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

/// (our local address, remote address) of the UDP datagram quoted in an ICMP error.
fn quoted_udp_ports(header: &Ipv4Repr, data: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    if header.protocol != IpProtocol::Udp || header.frag_offset != 0 {
        return None;
    }
    let ports = data.get(..4)?;
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    Some((SocketAddrV4::new(header.src_addr, src_port), SocketAddrV4::new(header.dst_addr, dst_port)))
}
