//! UDP (RFC 768): a zero-copy view [`UdpPacket`] and the plain header [`UdpRepr`]; the payload
//! stays in the caller's buffer (as in smoltcp).
//!
//! Contract: after [`UdpPacket::check_len`] succeeds no accessor panics and
//! [`UdpPacket::payload`] is exactly what the length field covers. [`UdpRepr::parse`] verifies
//! the checksum over the IPv4 pseudo-header (a zero checksum means "none" and is accepted).
//! [`UdpRepr::emit`] never panics on a buffer of [`UdpRepr::buffer_len`] bytes or more.
//!
//! Fragmented datagrams carry the UDP header in the first fragment only, while the checksum
//! covers the whole datagram: [`UdpRepr::emit_header`] (and
//! [`UdpRepr::emit_header_with_sum`], for a payload sum computed while copying, paper §7.2)
//! write the 8-byte header for a payload that is not contiguous with it.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use super::{Error, Result};
use crate::checksum;

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;
/// The IP protocol number of UDP (pseudo-header).
const PROTOCOL_UDP: u8 = 17;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// A read/write view of a UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` when the buffer is shorter than the header or the length field;
    /// `Malformed` when the length field is below 8. A buffer longer than the length field
    /// is accepted (the excess is ignored, as Linux trims it).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field_len = usize::from(self.len());
        if field_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if field_len > len {
            return Err(Error::Truncated);
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

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }
    /// The length field: header plus payload.
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }
    /// Whether the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Whether the checksum verifies over the pseudo-header (true when it is 0, "none").
    pub fn verify_checksum(&self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) -> bool {
        let len = usize::from(self.len());
        self.header_sum(src_addr, dst_addr).is_none_or(|header| {
            let payload = &self.buffer.as_ref()[HEADER_LEN..len];
            Self::verifies(header, checksum::data(payload))
        })
    }

    /// The sum of the pseudo-header and the 8-byte header, to be completed with the payload's
    /// sum (e.g. taken by `checksum::copy_and_sum` while copying it out: one pass over the
    /// data, paper §7.2). `None` when the sender sent no checksum (field 0).
    pub fn header_sum(&self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) -> Option<u16> {
        if self.checksum() == 0 {
            return None;
        }
        let len = u32::from(self.len());
        let pseudo = checksum::pseudo_header_v4(src_addr, dst_addr, PROTOCOL_UDP, len);
        Some(checksum::combine(&[
            pseudo,
            checksum::data(&self.buffer.as_ref()[..HEADER_LEN]),
        ]))
    }

    /// Whether a [`UdpPacket::header_sum`] and the payload's sum verify.
    pub fn verifies(header_sum: u16, payload_sum: u16) -> bool {
        checksum::combine(&[header_sum, payload_sum]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The payload the length field covers.
    pub fn payload(&self) -> &'a [u8] {
        let buffer = self.buffer.as_ref();
        &buffer[field::PAYLOAD..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_u16_at(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_src_port(&mut self, value: u16) {
        self.set_u16_at(field::SRC_PORT, value);
    }
    pub fn set_dst_port(&mut self, value: u16) {
        self.set_u16_at(field::DST_PORT, value);
    }
    pub fn set_len(&mut self, value: u16) {
        self.set_u16_at(field::LENGTH, value);
    }
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }

    /// Computes and writes the checksum over the pseudo-header, header and the payload the
    /// length field covers (a computed 0 is sent as 0xffff, RFC 768).
    pub fn fill_checksum(&mut self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) {
        self.set_checksum(0);
        let len = usize::from(self.len());
        let pseudo = checksum::pseudo_header_v4(src_addr, dst_addr, PROTOCOL_UDP, len as u32);
        let sum = checksum::combine(&[pseudo, checksum::data(&self.buffer.as_ref()[..len])]);
        self.set_checksum(wire_checksum(sum));
    }

    /// The payload the length field covers, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[field::PAYLOAD..end]
    }
}

/// The value written in the checksum field for a folded sum: its complement, with 0 sent as
/// 0xffff (RFC 768: 0 means "no checksum").
fn wire_checksum(sum: u16) -> u16 {
    match !sum {
        0 => 0xffff,
        c => c,
    }
}

/// The plain content of a UDP header (ports; the length follows the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    /// Reads a datagram carried between `src_addr` and `dst_addr`: lengths and checksum
    /// (`Err(Checksum)`).
    pub fn parse<T: AsRef<[u8]>>(
        packet: &UdpPacket<T>,
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
    ) -> Result<UdpRepr> {
        packet.check_len()?;
        if !packet.verify_checksum(src_addr, dst_addr) {
            return Err(Error::Checksum);
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    /// Length of the header.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Length of a datagram with `payload_len` payload bytes.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Writes a whole datagram: header, then `emit_payload` fills the `payload_len` payload
    /// bytes, then the checksum. `payload_len + 8` must fit 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        payload_len: usize,
        emit_payload: impl FnOnce(&mut [u8]),
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len((HEADER_LEN + payload_len) as u16);
        emit_payload(packet.payload_mut());
        packet.fill_checksum(src_addr, dst_addr);
    }

    /// Writes the 8-byte header of a datagram whose `payload` is elsewhere (e.g. split across
    /// IP fragments); the checksum covers the whole payload.
    pub fn emit_header(
        &self,
        header: &mut [u8; HEADER_LEN],
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        payload: &[u8],
    ) {
        self.emit_header_with_sum(
            header,
            src_addr,
            dst_addr,
            payload.len(),
            checksum::data(payload),
        );
    }

    /// As [`UdpRepr::emit_header`], given the payload's length and its folded sum
    /// (`checksum::data`, or the sum `checksum::copy_and_sum` returned while copying it). A sum
    /// of several pieces is their `checksum::combine` when each piece but the last has an even
    /// length.
    pub fn emit_header_with_sum(
        &self,
        header: &mut [u8; HEADER_LEN],
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        payload_len: usize,
        payload_sum: u16,
    ) {
        let udp_len = HEADER_LEN + payload_len;
        let mut packet = UdpPacket::new_unchecked(&mut header[..]);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(udp_len as u16);
        packet.set_checksum(0);
        let pseudo = checksum::pseudo_header_v4(src_addr, dst_addr, PROTOCOL_UDP, udp_len as u32);
        let sum = checksum::combine(&[pseudo, checksum::data(&header[..]), payload_sum]);
        header[field::CHECKSUM].copy_from_slice(&wire_checksum(sum).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    // 5000 → 7000, 4 payload bytes, checksum over the pseudo-header of SRC → DST.
    const DATAGRAM: [u8; 12] = [
        0x13, 0x88, 0x1b, 0x58, 0x00, 0x0c, 0xcd, 0x34, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    fn repr() -> UdpRepr {
        UdpRepr {
            src_port: 5000,
            dst_port: 7000,
        }
    }

    #[test]
    fn deconstruct() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 5000);
        assert_eq!(p.dst_port(), 7000);
        assert_eq!(p.len(), 12);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0xcd34);
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, Ipv4Addr::new(198, 18, 0, 3)));
    }

    #[test]
    fn parse_and_emit() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(UdpRepr::parse(&p, SRC, DST).unwrap(), repr());
        let mut bytes = [0u8; 12];
        assert_eq!(repr().buffer_len(4), 12);
        repr().emit(
            &mut UdpPacket::new_unchecked(&mut bytes[..]),
            SRC,
            DST,
            4,
            |payload| payload.copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]),
        );
        assert_eq!(bytes, DATAGRAM);
    }

    #[test]
    fn checksum_none_and_bad() {
        let mut bytes = DATAGRAM;
        bytes[6..8].fill(0);
        let p = UdpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(UdpRepr::parse(&p, SRC, DST).unwrap(), repr());
        let mut bytes = DATAGRAM;
        bytes[9] ^= 0x10;
        let p = UdpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(UdpRepr::parse(&p, SRC, DST), Err(Error::Checksum));
    }

    #[test]
    fn zero_sum_is_sent_as_ffff() {
        // Find a payload word that makes the folded sum 0xffff (complement 0).
        let mut bytes = [0u8; 10];
        let mut p = UdpPacket::new_unchecked(&mut bytes[..]);
        p.set_src_port(1);
        p.set_dst_port(2);
        p.set_len(10);
        p.fill_checksum(SRC, DST);
        let c = p.checksum();
        // Adding the checksum value as payload moves the sum to exactly 0xffff.
        p.payload_mut().copy_from_slice(&c.to_be_bytes());
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn impossible_lengths() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        assert_eq!(
            UdpPacket::new_checked(&DATAGRAM[..11]).unwrap_err(),
            Error::Truncated
        );
        let mut bytes = DATAGRAM;
        bytes[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]).unwrap_err(),
            Error::Malformed
        );
        // A shorter length field: the rest is ignored (and the checksum covers only the datagram).
        let mut longer = DATAGRAM.to_vec();
        longer.extend_from_slice(&[1, 2, 3]);
        let p = UdpPacket::new_checked(&longer[..]).unwrap();
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(UdpRepr::parse(&p, SRC, DST).unwrap(), repr());
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_unchecked(&DATAGRAM[..4]), SRC, DST),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn header_for_fragmented_payload() {
        let payload: Vec<u8> = (0..3001u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut header = [0u8; HEADER_LEN];
        repr().emit_header(&mut header, SRC, DST, &payload);
        let mut whole = header.to_vec();
        whole.extend_from_slice(&payload);
        let p = UdpPacket::new_checked(&whole[..]).unwrap();
        assert_eq!(usize::from(p.len()), 3009);
        assert_eq!(UdpRepr::parse(&p, SRC, DST).unwrap(), repr());
        // The same from sums of even-length pieces.
        let sum = checksum::combine(&[
            checksum::data(&payload[..1480]),
            checksum::data(&payload[1480..]),
        ]);
        let mut header2 = [0u8; HEADER_LEN];
        repr().emit_header_with_sum(&mut header2, SRC, DST, payload.len(), sum);
        assert_eq!(header, header2);
        // emit gives the same header.
        let mut emitted = vec![0u8; 3009];
        repr().emit(
            &mut UdpPacket::new_unchecked(&mut emitted[..]),
            SRC,
            DST,
            payload.len(),
            |b| b.copy_from_slice(&payload),
        );
        assert_eq!(emitted, whole);
    }
}
