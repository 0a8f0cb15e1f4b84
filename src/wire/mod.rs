//! Wire formats: zero-copy views over byte slices and plain representations (after smoltcp).
//!
//! Contract: after `check_len` succeeds no accessor panics; `emit` never panics on a buffer of
//! `buffer_len()` bytes; malformed input is an [`Error`], never a panic.
//!
//! One module per header: [`ethernet`] (Ethernet II), [`arp`] (RFC 826), [`ipv4`] (RFC 791,
//! with the paper's `IPOPT_DEMUX_ENCLOSED`, §6.1), [`icmpv4`] (RFC 792), [`udp`] (RFC 768) and
//! [`tcp`] (RFC 9293, with the paper's demux options as RFC 6994 experiments); [`options`] is
//! the inline option list both IPv4 and TCP options are stored in. Checksums use
//! [`crate::checksum`]. [`fuzzing`] holds the entry points of the fuzz targets in `fuzz/`.
#![forbid(unsafe_code)]

use core::fmt;

pub mod arp;
pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod options;
pub mod tcp;
pub mod udp;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EthernetFrame, EthernetProtocol, EthernetRepr};
pub use icmpv4::{DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Redirect, TimeExceeded};
pub use ipv4::{IPOPT_DEMUX_ENCLOSED, IPOPT_DEMUX_ENCLOSED_LEN};
pub use ipv4::{IpProtocol, Ipv4Option, Ipv4Options, Ipv4OptionsIter, Ipv4Packet, Ipv4Repr};
pub use tcp::{
    SackBlocks, TcpControl, TcpOption, TcpOptions, TcpOptionsIter, TcpPacket, TcpRepr, TcpSeqNumber,
};
pub use udp::{UdpPacket, UdpRepr};

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Error {
    /// Shorter than its fixed header or its own length fields say.
    Truncated,
    /// A length, offset or field value that is impossible.
    Malformed,
    /// The checksum does not verify.
    Checksum,
    /// Valid, but not something this stack handles.
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::Truncated => "truncated",
            Error::Malformed => "malformed",
            Error::Checksum => "bad checksum",
            Error::Unsupported => "unsupported",
        };
        f.write_str(text)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// A 48-bit IEEE 802 MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);
    pub const ZERO: EthernetAddress = EthernetAddress([0; 6]);

    pub fn from_bytes(bytes: &[u8]) -> Option<EthernetAddress> {
        let arr: [u8; 6] = bytes.try_into().ok()?;
        Some(EthernetAddress(arr))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::ZERO
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl core::str::FromStr for EthernetAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or(Error::Malformed)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| Error::Malformed)?;
        }
        if parts.next().is_some() {
            return Err(Error::Malformed);
        }
        Ok(EthernetAddress(out))
    }
}

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the corpus smoke test
/// (`tests/wire_corpus.rs`): each takes arbitrary bytes, parses them as one header kind and,
/// when that succeeds, emits the representation again, re-parses it and asserts both agree
/// (the round trip is our own code, so a failed assertion is a bug, never bad input). A panic
/// anywhere else is a parser bug. Containers continue into what they carry (Ethernet into ARP
/// and IPv4, IPv4 into ICMP, UDP and TCP). The pseudo-header of `udp` and `tcp` uses the fixed
/// addresses [`fuzzing::SRC_ADDR`] → [`fuzzing::DST_ADDR`]. `control_decode` covers the
/// control protocol's decoder (`crate::control::codec`), so one fuzz crate serves every parser.
pub mod fuzzing {
    use std::net::Ipv4Addr;

    use super::*;

    pub const SRC_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const DST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// An Ethernet II frame, then its ARP or IPv4 payload.
    pub fn ethernet(data: &[u8]) {
        let Ok(frame) = EthernetFrame::new_checked(data) else {
            return;
        };
        let (_, _, _) = (frame.src_addr(), frame.dst_addr(), frame.ethertype());
        let Ok(repr) = EthernetRepr::parse(&frame) else {
            return;
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let again = EthernetFrame::new_checked(&buf[..]).and_then(|f| EthernetRepr::parse(&f));
        assert_eq!(again, Ok(repr), "Ethernet round trip");
        match repr.ethertype {
            EthernetProtocol::Arp => arp(frame.payload()),
            EthernetProtocol::Ipv4 => ipv4(frame.payload()),
            _ => {}
        }
    }

    /// An ARP packet.
    pub fn arp(data: &[u8]) {
        let Ok(packet) = ArpPacket::new_checked(data) else {
            return;
        };
        let _ = (
            packet.operation(),
            packet.source_hardware_addr(),
            packet.target_protocol_addr(),
        );
        let Ok(repr) = ArpRepr::parse(&packet) else {
            return;
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        let again = ArpPacket::new_checked(&buf[..]).and_then(|p| ArpRepr::parse(&p));
        assert_eq!(again, Ok(repr), "ARP round trip");
    }

    /// An IPv4 packet, then its ICMP, UDP or TCP payload (unless it is a fragment).
    pub fn ipv4(data: &[u8]) {
        let packet = Ipv4Packet::new_unchecked(data);
        if packet.check_header_len().is_ok() {
            // The lenient path used for quoted headers.
            let _ = Ipv4Repr::parse_quoted(&packet);
            let _ = packet.payload();
            let _ = icmpv4::Icmpv4Repr::quote(data);
        }
        let Ok(packet) = Ipv4Packet::new_checked(data) else {
            return;
        };
        let _ = packet.options_iter().count();
        let _ = (
            packet.is_fragment(),
            packet.dscp(),
            packet.ecn(),
            packet.verify_checksum(),
        );
        let Ok(repr) = Ipv4Repr::parse(&packet) else {
            return;
        };
        let payload = packet.payload();
        assert_eq!(payload.len(), repr.payload_len);
        let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
        let mut out = Ipv4Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut out);
        out.payload_mut().copy_from_slice(payload);
        let out = Ipv4Packet::new_checked(&buf[..]).expect("emitted IPv4 lengths");
        assert_eq!(Ipv4Repr::parse(&out), Ok(repr), "IPv4 round trip");
        assert_eq!(out.payload(), payload);
        // A later fragment's header keeps only the copied options and still parses.
        let frag = repr.fragment_header(8, 8, true);
        let mut buf = vec![0u8; frag.total_len()];
        frag.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let frag_again = Ipv4Packet::new_checked(&buf[..]).and_then(|p| Ipv4Repr::parse(&p));
        assert_eq!(frag_again, Ok(frag), "IPv4 fragment header round trip");
        let mut rebuilt = Ipv4Options::new();
        for option in repr.options.iter() {
            rebuilt
                .push(option.expect("stored options are valid"))
                .expect("stored options fit");
        }
        assert!(
            rebuilt.iter().eq(repr.options.iter()),
            "IPv4 options rebuilt"
        );
        if repr.is_fragment() {
            return;
        }
        match repr.protocol {
            IpProtocol::Icmp => icmpv4(payload),
            IpProtocol::Udp => udp_between(payload, repr.src_addr, repr.dst_addr),
            IpProtocol::Tcp => tcp_between(payload, repr.src_addr, repr.dst_addr),
            IpProtocol::Unknown(_) => {}
        }
    }

    /// An ICMPv4 message.
    pub fn icmpv4(data: &[u8]) {
        let Ok(packet) = Icmpv4Packet::new_checked(data) else {
            return;
        };
        let _ = (
            packet.msg_type(),
            packet.echo_ident(),
            packet.next_hop_mtu(),
            packet.gateway(),
        );
        let Ok(repr) = Icmpv4Repr::parse(&packet) else {
            return;
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        let again = Icmpv4Packet::new_checked(&buf[..]).and_then(|p| Icmpv4Repr::parse(&p));
        assert_eq!(again, Ok(repr), "ICMPv4 round trip");
    }

    /// A UDP datagram from [`SRC_ADDR`] to [`DST_ADDR`].
    pub fn udp(data: &[u8]) {
        udp_between(data, SRC_ADDR, DST_ADDR);
    }

    fn udp_between(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let Ok(packet) = UdpPacket::new_checked(data) else {
            return;
        };
        let Ok(repr) = UdpRepr::parse(&packet, src, dst) else {
            return;
        };
        let payload = packet.payload();
        let mut buf = vec![0u8; repr.buffer_len(payload.len())];
        repr.emit(
            &mut UdpPacket::new_unchecked(&mut buf[..]),
            src,
            dst,
            payload.len(),
            |p| p.copy_from_slice(payload),
        );
        let out = UdpPacket::new_checked(&buf[..]).expect("emitted UDP lengths");
        assert_eq!(UdpRepr::parse(&out, src, dst), Ok(repr), "UDP round trip");
        assert_eq!(out.payload(), payload);
        // The header written apart from its payload (fragmented send) is the same header.
        let mut header = [0u8; udp::HEADER_LEN];
        repr.emit_header(&mut header, src, dst, payload);
        assert_eq!(
            &header[..],
            &buf[..udp::HEADER_LEN],
            "UDP header for a fragmented payload"
        );
    }

    /// A control message between libmsock and the netserver (request, reply or upcall),
    /// through `control::codec::fuzz_decode`, which asserts its own round trip.
    pub fn control_decode(data: &[u8]) {
        crate::control::codec::fuzz_decode(data);
    }

    /// A TCP segment from [`SRC_ADDR`] to [`DST_ADDR`].
    pub fn tcp(data: &[u8]) {
        tcp_between(data, SRC_ADDR, DST_ADDR);
    }

    fn tcp_between(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
        let Ok(packet) = TcpPacket::new_checked(data) else {
            return;
        };
        let _ = packet.options_iter().count();
        let _ = (
            packet.segment_len(),
            packet.urgent_at(),
            packet.payload().len(),
        );
        let Ok(repr) = TcpRepr::parse(&packet, src, dst) else {
            return;
        };
        let options = repr.options;
        let _ = (
            options.max_seg_size(),
            options.sack_blocks(),
            options.timestamps(),
            options.demux_advertise(),
        );
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), src, dst);
        let again = TcpPacket::new_checked(&buf[..]).and_then(|p| TcpRepr::parse(&p, src, dst));
        assert_eq!(again, Ok(repr), "TCP round trip");
        // Rebuilding the options one by one gives the same list.
        let mut rebuilt = TcpOptions::new();
        for option in options.iter() {
            rebuilt
                .push(option.expect("stored options are valid"))
                .expect("stored options fit");
        }
        // Reserved bytes are ignored on receipt and zero when sent: compare the lists.
        assert!(rebuilt.iter().eq(options.iter()), "TCP options rebuilt");
    }
}
