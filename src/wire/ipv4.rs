//! IPv4 (RFC 791): a zero-copy view [`Ipv4Packet`], the plain header [`Ipv4Repr`], and IP
//! options as a list — parsed by [`Ipv4OptionsIter`] over the header's bytes and held in the
//! fixed-capacity [`Ipv4Options`] (at most 40 bytes inline, no heap per packet).
//!
//! Contract: after [`Ipv4Packet::check_len`] succeeds no accessor panics, and
//! [`Ipv4Packet::payload`] is exactly the bytes the total length covers (Ethernet padding is
//! excluded). [`Ipv4Repr::parse`] further checks the version, the options and the header
//! checksum. [`Ipv4Repr::emit`] writes the whole header, checksum included, and never panics on a
//! buffer of [`Ipv4Repr::buffer_len`] (the header length) bytes or more; the payload is the
//! caller's.
//!
//! Fragments: `frag_offset` is in bytes (a multiple of 8). [`Ipv4Repr::fragment_header`] gives
//! the header of one fragment of a datagram, keeping only the options RFC 791 says are copied
//! into every fragment (copy bit set) after the first.
//!
//! Active demultiplexing (paper §6.1, Fig. 8): the option `IPOPT_DEMUX_ENCLOSED` carries the
//! receiver's OS handle. It has no IANA number of its own, so it uses option type
//! [`IPOPT_DEMUX_ENCLOSED`] = 0x9E: copy bit set (every fragment carries it, so fragments can be
//! demultiplexed actively too), class 0 (control), number 30 — the value RFC 4727 §2.5 reserves
//! for RFC 3692-style experiments. It is 8 bytes: type, length (8), handle (u16), nonce (u32).
//! The paper places it first among the options; emitters here keep the order they are given.
#![forbid(unsafe_code)]

use core::fmt;
use std::net::Ipv4Addr;

use super::options::{OptionFormat, Options, OptionsIter};
use super::{Error, Result};
use crate::checksum;

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// Largest options area (IHL 15 → 60-byte header).
pub const MAX_OPTIONS_LEN: usize = super::options::MAX_LEN;

/// IP option type 0: end of option list.
pub const IPOPT_EOL: u8 = 0;
/// IP option type 1: no operation (padding between options).
pub const IPOPT_NOP: u8 = 1;
/// IP option type of `IPOPT_DEMUX_ENCLOSED`: copied, class 0, number 30 (RFC 4727 experiment).
pub const IPOPT_DEMUX_ENCLOSED: u8 = 0x9e;
/// Length of `IPOPT_DEMUX_ENCLOSED`, type and length bytes included.
pub const IPOPT_DEMUX_ENCLOSED_LEN: usize = 8;

/// The protocol carried by an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProtocol {
    Icmp,
    Tcp,
    Udp,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpProtocol::Icmp => f.write_str("ICMP"),
            IpProtocol::Tcp => f.write_str("TCP"),
            IpProtocol::Udp => f.write_str("UDP"),
            IpProtocol::Unknown(p) => write!(f, "protocol {p}"),
        }
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
    pub const OPTIONS: usize = 20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// One IPv4 option, as found by [`Ipv4OptionsIter`] or given to [`Ipv4Options::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv4Option<'a> {
    /// Type 0: the end of the list (what follows is padding).
    EndOfList,
    /// Type 1.
    NoOperation,
    /// `IPOPT_DEMUX_ENCLOSED` (paper §6.1, Fig. 8): the receiver's OS handle and its nonce.
    DemuxEnclosed { handle: u16, nonce: u32 },
    /// Any other option: its type byte and the bytes after its length byte.
    Unknown { kind: u8, data: &'a [u8] },
}

impl Ipv4Option<'_> {
    /// Encoded length, type (and length) bytes included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Ipv4Option::EndOfList | Ipv4Option::NoOperation => 1,
            Ipv4Option::DemuxEnclosed { .. } => IPOPT_DEMUX_ENCLOSED_LEN,
            Ipv4Option::Unknown { data, .. } => 2 + data.len(),
        }
    }

    /// Whether RFC 791's copy flag is set: the option goes into every fragment.
    pub fn is_copied(&self) -> bool {
        match self {
            Ipv4Option::EndOfList | Ipv4Option::NoOperation => false,
            Ipv4Option::DemuxEnclosed { .. } => true,
            Ipv4Option::Unknown { kind, .. } => kind & 0x80 != 0,
        }
    }
}

impl OptionFormat for Ipv4Option<'static> {
    type Item<'a> = Ipv4Option<'a>;

    fn end_of_list<'a>() -> Ipv4Option<'a> {
        Ipv4Option::EndOfList
    }

    fn no_operation<'a>() -> Ipv4Option<'a> {
        Ipv4Option::NoOperation
    }

    fn decode(kind: u8, data: &[u8]) -> Result<Ipv4Option<'_>> {
        match kind {
            IPOPT_DEMUX_ENCLOSED => {
                if data.len() + 2 != IPOPT_DEMUX_ENCLOSED_LEN {
                    return Err(Error::Malformed);
                }
                Ok(Ipv4Option::DemuxEnclosed {
                    handle: u16::from_be_bytes([data[0], data[1]]),
                    nonce: u32::from_be_bytes([data[2], data[3], data[4], data[5]]),
                })
            }
            _ => Ok(Ipv4Option::Unknown { kind, data }),
        }
    }

    fn encoded_len(option: &Ipv4Option<'_>) -> usize {
        option.encoded_len()
    }

    fn encode(option: Ipv4Option<'_>, out: &mut [u8]) -> Result<()> {
        match option {
            Ipv4Option::EndOfList => return Err(Error::Malformed),
            Ipv4Option::NoOperation => out[0] = IPOPT_NOP,
            Ipv4Option::DemuxEnclosed { handle, nonce } => {
                out[0] = IPOPT_DEMUX_ENCLOSED;
                out[1] = IPOPT_DEMUX_ENCLOSED_LEN as u8;
                out[2..4].copy_from_slice(&handle.to_be_bytes());
                out[4..8].copy_from_slice(&nonce.to_be_bytes());
            }
            Ipv4Option::Unknown { kind, data } => {
                if kind == IPOPT_EOL || kind == IPOPT_NOP || kind == IPOPT_DEMUX_ENCLOSED {
                    // Would not parse back as `Unknown`.
                    return Err(Error::Malformed);
                }
                out[0] = kind;
                out[1] = out.len() as u8;
                out[2..].copy_from_slice(data);
            }
        }
        Ok(())
    }
}

/// Iterates over encoded IPv4 options, zero-copy. Yields `Err(Malformed)` once (then stops) for
/// a length byte that is 0 or 1, an option overrunning the area, a missing length byte, or an
/// `IPOPT_DEMUX_ENCLOSED` of the wrong length. Stops after [`Ipv4Option::EndOfList`].
pub type Ipv4OptionsIter<'a> = OptionsIter<'a, Ipv4Option<'static>>;

/// A validated list of IPv4 options stored inline in their encoded form (at most 40 bytes).
///
/// The end of the list is implicit: [`Ipv4Options::parse`] drops an end-of-list and the padding
/// after it, and [`Ipv4Repr::emit`] pads with zeros (end-of-list) to a multiple of 4, so a
/// parsed list emits and parses back to itself. [`Ipv4Options::push`] refuses an
/// [`Ipv4Option::Unknown`] of a known type.
pub type Ipv4Options = Options<Ipv4Option<'static>>;

impl Ipv4Options {
    /// The `IPOPT_DEMUX_ENCLOSED` option, if present: `(handle, nonce)`.
    pub fn demux_enclosed(&self) -> Option<(u16, u32)> {
        self.iter().find_map(|o| match o {
            Ok(Ipv4Option::DemuxEnclosed { handle, nonce }) => Some((handle, nonce)),
            _ => None,
        })
    }

    /// The options RFC 791 copies into fragments after the first (copy flag set).
    pub fn copied(&self) -> Ipv4Options {
        let mut out = Ipv4Options::new();
        for option in self.iter().flatten() {
            if option.is_copied() {
                // Cannot fail: a subset of options that fit.
                let _ = out.push(option);
            }
        }
        out
    }
}

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks IHL ≥ 5 (`Malformed`), header within the buffer (`Truncated`), total length ≥
    /// header length (`Malformed`) and total length within the buffer (`Truncated`).
    pub fn check_len(&self) -> Result<()> {
        self.check_header_len()?;
        if self.buffer.as_ref().len() < usize::from(self.total_len()) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// [`Ipv4Packet::check_len`] without requiring the payload to be present: for headers quoted
    /// in ICMP errors, which carry only the first bytes of the datagram.
    pub fn check_header_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        if usize::from(self.total_len()) < header_len {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn addr_at(&self, f: field::Field) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[f];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    /// The whole type-of-service byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }
    pub fn ecn(&self) -> u8 {
        self.tos() & 0x03
    }
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }
    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT)
    }
    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_DF != 0
    }
    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF) & OFFSET_MASK) << 3
    }
    /// Whether this is a fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }
    pub fn src_addr(&self) -> Ipv4Addr {
        self.addr_at(field::SRC_ADDR)
    }
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.addr_at(field::DST_ADDR)
    }
    /// The options area (header bytes after the first 20).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }
    /// The options, zero-copy.
    pub fn options_iter(&self) -> Ipv4OptionsIter<'_> {
        Ipv4OptionsIter::new(self.options())
    }
    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The bytes the total length covers after the header (cut to the buffer, so a header
    /// passed only [`Ipv4Packet::check_header_len`] yields what is present).
    pub fn payload(&self) -> &'a [u8] {
        let buffer = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(buffer.len());
        buffer.get(self.header_len()..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_u16_at(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_version(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (value << 4);
    }
    /// Sets IHL from a length in bytes (a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, value: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((value / 4) as u8 & 0x0f);
    }
    pub fn set_tos(&mut self, value: u8) {
        self.buffer.as_mut()[field::TOS] = value;
    }
    pub fn set_total_len(&mut self, value: u16) {
        self.set_u16_at(field::LENGTH, value);
    }
    pub fn set_ident(&mut self, value: u16) {
        self.set_u16_at(field::IDENT, value);
    }
    fn set_flag(&mut self, flag: u16, on: bool) {
        let raw = self.u16_at(field::FLG_OFF);
        self.set_u16_at(field::FLG_OFF, if on { raw | flag } else { raw & !flag });
    }
    /// Clears the reserved flag and sets DF, MF and the offset to zero.
    pub fn clear_flags(&mut self) {
        self.set_u16_at(field::FLG_OFF, 0);
    }
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(FLAG_DF, value);
    }
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(FLAG_MF, value);
    }
    /// Sets the fragment offset from bytes (the low 3 bits are dropped: offsets are in 8-byte
    /// units on the wire).
    pub fn set_frag_offset(&mut self, value: u16) {
        let raw = self.u16_at(field::FLG_OFF);
        self.set_u16_at(field::FLG_OFF, (raw & !OFFSET_MASK) | (value >> 3));
    }
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }
    pub fn set_protocol(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.into();
    }
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value.octets());
    }
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value.octets());
    }
    /// The options area, writable (its length follows IHL).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..end]
    }
    /// Recomputes the header checksum (after any header change).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(!sum);
    }
    /// The bytes after the header up to the total length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let end = usize::from(self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The plain content of an IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    /// Bytes after the header (total length − header length).
    pub payload_len: usize,
    pub ttl: u8,
    /// The type-of-service byte: DSCP (high 6 bits) and ECN (low 2).
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
    pub options: Ipv4Options,
}

impl Default for Ipv4Repr {
    /// Unspecified addresses, protocol 255 (reserved), TTL 64, nothing else set.
    fn default() -> Self {
        Ipv4Repr {
            src_addr: Ipv4Addr::UNSPECIFIED,
            dst_addr: Ipv4Addr::UNSPECIFIED,
            protocol: IpProtocol::Unknown(255),
            payload_len: 0,
            ttl: 64,
            tos: 0,
            ident: 0,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
            options: Ipv4Options::new(),
        }
    }
}

impl Ipv4Repr {
    /// Reads a received header: lengths, version 4, options, and the header checksum
    /// (`Err(Checksum)`). A fragment that would end a datagram beyond 65535 bytes is `Malformed`.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        packet.check_len()?;
        let repr = Self::parse_header(packet)?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(repr)
    }

    /// Reads a header quoted inside an ICMP error: only the header must be present (the
    /// payload is cut short) and its checksum is not verified (as Linux does).
    pub fn parse_quoted<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        packet.check_header_len()?;
        Self::parse_header(packet)
    }

    fn parse_header<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr> {
        if packet.version() != 4 {
            return Err(Error::Malformed);
        }
        let options = Ipv4Options::parse(packet.options())?;
        let payload_len = usize::from(packet.total_len()) - packet.header_len();
        // The reassembled datagram (header, then the payload up to this fragment's end) must
        // fit the 16-bit total length (Linux: ip_frag_reasm's oversize check).
        if usize::from(packet.frag_offset()) + usize::from(packet.total_len())
            > usize::from(u16::MAX)
        {
            return Err(Error::Malformed);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len,
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
            options,
        })
    }

    /// Length of the emitted header, options padded included.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options.padded_len()
    }

    /// Same as [`Ipv4Repr::buffer_len`].
    pub fn header_len(&self) -> usize {
        self.buffer_len()
    }

    /// Header plus payload (what the total-length field holds).
    pub fn total_len(&self) -> usize {
        self.buffer_len() + self.payload_len
    }

    /// Whether this header describes a fragment (MF set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_frags || self.frag_offset != 0
    }

    /// The header of the fragment carrying `payload_len` bytes of this datagram's payload at
    /// byte `frag_offset` (a multiple of 8), `more_frags` unless it is the last. DF is cleared;
    /// fragments after the first keep only the copied options (RFC 791 §3.2).
    pub fn fragment_header(
        &self,
        frag_offset: u16,
        payload_len: usize,
        more_frags: bool,
    ) -> Ipv4Repr {
        Ipv4Repr {
            payload_len,
            dont_frag: false,
            more_frags,
            frag_offset,
            options: if frag_offset == 0 {
                self.options
            } else {
                self.options.copied()
            },
            ..*self
        }
    }

    /// Writes the header (checksum filled) into the first [`Ipv4Repr::buffer_len`] bytes.
    /// `total_len()` must fit 16 bits (the sender fragments before that).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        let header_len = self.buffer_len();
        let bytes = packet.buffer.as_mut();
        bytes[field::VER_IHL] = 0x40 | (header_len / 4) as u8;
        packet.set_tos(self.tos);
        packet.set_total_len(self.total_len() as u16);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_more_frags(self.more_frags);
        packet.set_frag_offset(self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        let options = packet.options_mut();
        let used = self.options.as_bytes().len();
        options[..used].copy_from_slice(self.options.as_bytes());
        options[used..].fill(IPOPT_EOL);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 198.18.0.1 → 198.18.0.2, UDP, ident 0x1234, DF, TTL 64, 4 payload bytes.
    const PACKET: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x9c, 0x79, 198, 18, 0, 1, 198,
        18, 0, 2, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    // Same with IPOPT_DEMUX_ENCLOSED (handle 0x0102, nonce 0x0a0b0c0d), a NOP and an EOL
    // padding the options to 12 bytes; MF set, offset 1480.
    const WITH_OPTIONS: [u8; 36] = [
        0x48, 0x00, 0x00, 0x24, 0x12, 0x34, 0x20, 0xb9, 0x40, 0x11, 0x00, 0x00, 198, 18, 0, 1, 198,
        18, 0, 2, 0x9e, 0x08, 0x01, 0x02, 0x0a, 0x0b, 0x0c, 0x0d, 0x01, 0x00, 0x00, 0x00, 0xaa,
        0xbb, 0xcc, 0xdd,
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(198, 18, 0, 1),
            dst_addr: Ipv4Addr::new(198, 18, 0, 2),
            protocol: IpProtocol::Udp,
            payload_len: 4,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            options: Ipv4Options::new(),
        }
    }

    fn with_options() -> Vec<u8> {
        let mut bytes = WITH_OPTIONS.to_vec();
        Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        bytes
    }

    fn options_repr() -> Ipv4Repr {
        let mut options = Ipv4Options::new();
        options
            .push(Ipv4Option::DemuxEnclosed {
                handle: 0x0102,
                nonce: 0x0a0b0c0d,
            })
            .unwrap();
        options.push(Ipv4Option::NoOperation).unwrap();
        Ipv4Repr {
            dont_frag: false,
            more_frags: true,
            frag_offset: 1480,
            options,
            ..repr()
        }
    }

    #[test]
    fn deconstruct() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.tos(), p.dscp(), p.ecn()), (0, 0, 0));
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::Udp);
        assert_eq!(p.checksum(), 0x9c79);
        assert_eq!(p.src_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert!(p.verify_checksum());
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn parse_and_emit() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr());
        let mut bytes = [0xffu8; 24];
        assert_eq!(repr().buffer_len(), 20);
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, PACKET);
    }

    #[test]
    fn options_parse_and_emit() {
        let bytes = with_options();
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.more_frags() && p.is_fragment());
        let options: Vec<_> = p.options_iter().collect::<Result<_>>().unwrap();
        assert_eq!(
            options,
            [
                Ipv4Option::DemuxEnclosed {
                    handle: 0x0102,
                    nonce: 0x0a0b0c0d
                },
                Ipv4Option::NoOperation,
                Ipv4Option::EndOfList
            ]
        );
        let repr = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(repr, options_repr());
        assert_eq!(repr.options.demux_enclosed(), Some((0x0102, 0x0a0b0c0d)));
        assert_eq!(repr.buffer_len(), 32);
        let mut out = vec![0x55u8; 36];
        let mut q = Ipv4Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut q);
        q.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn option_padding_is_zero_filled() {
        let mut options = Ipv4Options::new();
        options
            .push(Ipv4Option::Unknown {
                kind: 0x94,
                data: &[0, 0],
            })
            .unwrap(); // router alert
        options.push(Ipv4Option::NoOperation).unwrap();
        let repr = Ipv4Repr {
            options,
            payload_len: 0,
            ..repr()
        };
        assert_eq!(repr.buffer_len(), 28);
        let mut out = [0xffu8; 28];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[20..], &[0x94, 0x04, 0, 0, 0x01, 0, 0, 0]);
        let parsed = Ipv4Repr::parse(&Ipv4Packet::new_checked(&out[..]).unwrap()).unwrap();
        // The padding is an end-of-list, which is implicit.
        assert_eq!(parsed.options, options);
    }

    #[test]
    fn options_push_limits() {
        let mut options = Ipv4Options::new();
        for _ in 0..5 {
            options
                .push(Ipv4Option::DemuxEnclosed {
                    handle: 1,
                    nonce: 2,
                })
                .unwrap();
        }
        assert_eq!(options.push(Ipv4Option::NoOperation), Err(Error::Malformed));
        let mut options = Ipv4Options::new();
        assert_eq!(
            options.push(Ipv4Option::Unknown {
                kind: 7,
                data: &[0; 39]
            }),
            Err(Error::Malformed)
        );
        options
            .push(Ipv4Option::Unknown {
                kind: 7,
                data: &[0; 38],
            })
            .unwrap();
        assert_eq!(options.padded_len(), 40);
        let mut options = Ipv4Options::new();
        assert_eq!(
            options.push(Ipv4Option::Unknown {
                kind: 0x9e,
                data: &[0; 6]
            }),
            Err(Error::Malformed)
        );
        assert_eq!(options.push(Ipv4Option::EndOfList), Err(Error::Malformed));
        assert!(options.is_empty());
    }

    #[test]
    fn bad_checksum() {
        let mut bytes = PACKET;
        bytes[11] ^= 1;
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Checksum));
        // A quoted header is not checked.
        assert_eq!(Ipv4Repr::parse_quoted(&p).unwrap(), repr());
    }

    #[test]
    fn impossible_lengths() {
        for n in 0..PACKET.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&PACKET[..n]).unwrap_err(),
                Error::Truncated,
                "{n}"
            );
        }
        // IHL below 5.
        let mut bytes = PACKET;
        bytes[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Malformed
        );
        // IHL beyond the buffer.
        bytes[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Truncated
        );
        // Total length below the header length.
        let mut bytes = PACKET;
        bytes[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Malformed
        );
        // Total length beyond the buffer.
        bytes[3] = 25;
        assert_eq!(
            Ipv4Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::Truncated
        );
        // Ethernet padding after the datagram is not payload.
        let mut padded = PACKET.to_vec();
        padded.extend_from_slice(&[0; 22]);
        let p = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr());
        // Unchecked buffers are checked again by parse.
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_unchecked(&PACKET[..10])),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn wrong_version() {
        let mut bytes = PACKET;
        bytes[0] = 0x65;
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Malformed));
    }

    fn with_option_bytes(options: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let mut bytes = PACKET[..20].to_vec();
        bytes.extend_from_slice(options);
        let total = bytes.len() as u16;
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        p.set_header_len(20 + options.len());
        p.set_total_len(total);
        p.fill_checksum();
        bytes
    }

    #[test]
    fn bad_option_lengths() {
        for options in [
            &[0x07, 0x00, 0x00, 0x00][..], // length 0
            &[0x07, 0x01, 0x00, 0x00],     // length 1
            &[0x07, 0x05, 0x00, 0x00],     // overruns the area
            &[0x01, 0x01, 0x01, 0x07],     // no room for the length byte
            &[0x9e, 0x04, 0x00, 0x00],     // DEMUX_ENCLOSED of the wrong length
        ] {
            let bytes = with_option_bytes(options);
            let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(Ipv4Repr::parse(&p), Err(Error::Malformed), "{options:?}");
            let mut iter = p.options_iter();
            assert!(iter.any(|o| o.is_err()));
            assert!(iter.next().is_none(), "the iterator stops after an error");
        }
        // Garbage after an end-of-list is padding.
        let bytes = with_option_bytes(&[0x01, 0x00, 0x07, 0x00]);
        let repr = Ipv4Repr::parse(&Ipv4Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(repr.options.as_bytes(), &[0x01]);
    }

    #[test]
    fn fragment_beyond_64k() {
        let mut bytes = PACKET;
        let mut p = Ipv4Packet::new_unchecked(&mut bytes[..]);
        p.set_dont_frag(false);
        p.set_frag_offset(65528);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Malformed));
    }

    #[test]
    fn fragment_headers() {
        let mut options = Ipv4Options::new();
        options
            .push(Ipv4Option::DemuxEnclosed {
                handle: 7,
                nonce: 9,
            })
            .unwrap();
        options
            .push(Ipv4Option::Unknown {
                kind: 0x07,
                data: &[4, 0, 0, 0, 0],
            })
            .unwrap(); // record route: not copied
        let whole = Ipv4Repr {
            options,
            payload_len: 3000,
            ..repr()
        };
        let first = whole.fragment_header(0, 1472, true);
        assert_eq!(first.options, options);
        assert!(first.more_frags && !first.dont_frag && first.is_fragment());
        let last = whole.fragment_header(1472, 1528, false);
        assert!(!last.more_frags && last.is_fragment());
        assert_eq!(last.options.demux_enclosed(), Some((7, 9)));
        assert_eq!(last.options.iter().count(), 1);
        assert_eq!(last.buffer_len(), 28);
        let mut out = vec![0u8; last.total_len()];
        last.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        let parsed = Ipv4Repr::parse(&Ipv4Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(parsed, last);
        assert_eq!(parsed.frag_offset, 1472);
    }

    #[test]
    fn unaligned_option_lists_round_trip() {
        // Found by fuzzing: a copied-options subset of odd length must emit (padded with an
        // end-of-list) and parse back to the same list.
        let mut options = Ipv4Options::new();
        options.push(Ipv4Option::NoOperation).unwrap();
        options
            .push(Ipv4Option::Unknown {
                kind: 0xc6,
                data: &[0; 16],
            })
            .unwrap();
        options
            .push(Ipv4Option::Unknown {
                kind: 0x07,
                data: &[4, 0, 0],
            })
            .unwrap();
        let repr = Ipv4Repr { options, ..repr() };
        let frag = repr.fragment_header(8, 4, true);
        assert_eq!(frag.options.as_bytes().len(), 18);
        assert_eq!(frag.buffer_len(), 40);
        let mut out = vec![0u8; frag.total_len()];
        frag.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[38..40], &[0, 0]);
        let parsed = Ipv4Repr::parse(&Ipv4Packet::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(parsed, frag);
    }

    #[test]
    fn protocols() {
        for (raw, proto) in [
            (1, IpProtocol::Icmp),
            (6, IpProtocol::Tcp),
            (17, IpProtocol::Udp),
            (47, IpProtocol::Unknown(47)),
        ] {
            assert_eq!(IpProtocol::from(raw), proto);
            assert_eq!(u8::from(proto), raw);
        }
    }

    #[test]
    fn quoted_header() {
        // Only the header and 2 payload bytes are present.
        let p = Ipv4Packet::new_unchecked(&PACKET[..22]);
        assert_eq!(p.check_len(), Err(Error::Truncated));
        assert_eq!(p.check_header_len(), Ok(()));
        assert_eq!(Ipv4Repr::parse_quoted(&p).unwrap(), repr());
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
    }
}
