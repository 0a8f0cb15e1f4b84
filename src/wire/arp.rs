//! ARP packets (RFC 826): a zero-copy view [`ArpPacket`] of any hardware/protocol pair and the
//! plain [`ArpRepr`], which holds only Ethernet/IPv4 ARP (the only kind this stack speaks).
//!
//! Contract: after [`ArpPacket::check_len`] succeeds no accessor panics (the address accessors
//! use the lengths the packet itself declares, and `check_len` verifies the buffer holds them);
//! [`ArpRepr::emit`] never panics on a buffer of [`ArpRepr::buffer_len`] bytes or more. ARP for
//! other hardware or protocol types parses as [`Error::Unsupported`].
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use super::{Error, EthernetAddress, Result};

/// ARP hardware type 1 (Ethernet).
const HARDWARE_ETHERNET: u16 = 1;
/// ARP protocol type 0x0800 (IPv4).
const PROTOCOL_IPV4: u16 = 0x0800;

/// The ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;

    pub const fn sha(hlen: u8, _plen: u8) -> Field {
        8..8 + hlen as usize
    }
    pub const fn spa(hlen: u8, plen: u8) -> Field {
        let start = 8 + hlen as usize;
        start..start + plen as usize
    }
    pub const fn tha(hlen: u8, plen: u8) -> Field {
        let start = 8 + hlen as usize + plen as usize;
        start..start + hlen as usize
    }
    pub const fn tpa(hlen: u8, plen: u8) -> Field {
        let start = 8 + 2 * hlen as usize + plen as usize;
        start..start + plen as usize
    }
}

/// Length of the fixed part (before the addresses).
pub const FIXED_LEN: usize = 8;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ETHERNET_IPV4_LEN: usize = FIXED_LEN + 2 * (6 + 4);

/// A read/write view of an ARP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` unless the buffer holds the fixed part and the four addresses of the
    /// lengths the packet declares.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < FIXED_LEN {
            return Err(Error::Truncated);
        }
        if len < field::tpa(self.hardware_len(), self.protocol_len()).end {
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

    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HTYPE)
    }
    pub fn protocol_type(&self) -> u16 {
        self.u16_at(field::PTYPE)
    }
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }
    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(self.u16_at(field::OPER))
    }
    pub fn source_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::sha(self.hardware_len(), self.protocol_len())]
    }
    pub fn source_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::spa(self.hardware_len(), self.protocol_len())]
    }
    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::tha(self.hardware_len(), self.protocol_len())]
    }
    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[field::tpa(self.hardware_len(), self.protocol_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    fn set_u16_at(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_hardware_type(&mut self, value: u16) {
        self.set_u16_at(field::HTYPE, value);
    }
    pub fn set_protocol_type(&mut self, value: u16) {
        self.set_u16_at(field::PTYPE, value);
    }
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }
    pub fn set_operation(&mut self, value: ArpOperation) {
        self.set_u16_at(field::OPER, value.into());
    }
    /// Panics unless `value` has the declared hardware length (a caller bug).
    pub fn set_source_hardware_addr(&mut self, value: &[u8]) {
        let f = field::sha(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[f].copy_from_slice(value);
    }
    /// Panics unless `value` has the declared protocol length (a caller bug).
    pub fn set_source_protocol_addr(&mut self, value: &[u8]) {
        let f = field::spa(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[f].copy_from_slice(value);
    }
    /// Panics unless `value` has the declared hardware length (a caller bug).
    pub fn set_target_hardware_addr(&mut self, value: &[u8]) {
        let f = field::tha(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[f].copy_from_slice(value);
    }
    /// Panics unless `value` has the declared protocol length (a caller bug).
    pub fn set_target_protocol_addr(&mut self, value: &[u8]) {
        let f = field::tpa(self.hardware_len(), self.protocol_len());
        self.buffer.as_mut()[f].copy_from_slice(value);
    }
}

/// The plain content of an ARP packet this stack handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpRepr {
    /// ARP for IPv4 over Ethernet.
    EthernetIpv4 {
        operation: ArpOperation,
        source_hardware_addr: EthernetAddress,
        source_protocol_addr: Ipv4Addr,
        target_hardware_addr: EthernetAddress,
        target_protocol_addr: Ipv4Addr,
    },
}

impl ArpRepr {
    /// Reads an Ethernet/IPv4 ARP packet; any other hardware/protocol pair (or address
    /// lengths that do not match them) is [`Error::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != PROTOCOL_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        let mac = |b: &[u8]| EthernetAddress::from_bytes(b).ok_or(Error::Malformed);
        let ip = |b: &[u8]| -> Result<Ipv4Addr> {
            let arr: [u8; 4] = b.try_into().map_err(|_| Error::Malformed)?;
            Ok(Ipv4Addr::from(arr))
        };
        Ok(ArpRepr::EthernetIpv4 {
            operation: packet.operation(),
            source_hardware_addr: mac(packet.source_hardware_addr())?,
            source_protocol_addr: ip(packet.source_protocol_addr())?,
            target_hardware_addr: mac(packet.target_hardware_addr())?,
            target_protocol_addr: ip(packet.target_protocol_addr())?,
        })
    }

    /// Length of the emitted packet.
    pub const fn buffer_len(&self) -> usize {
        match self {
            ArpRepr::EthernetIpv4 { .. } => ETHERNET_IPV4_LEN,
        }
    }

    /// Writes the packet into the first [`ArpRepr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        match *self {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                target_protocol_addr,
            } => {
                packet.set_hardware_type(HARDWARE_ETHERNET);
                packet.set_protocol_type(PROTOCOL_IPV4);
                packet.set_hardware_len(6);
                packet.set_protocol_len(4);
                packet.set_operation(operation);
                packet.set_source_hardware_addr(source_hardware_addr.as_bytes());
                packet.set_source_protocol_addr(&source_protocol_addr.octets());
                packet.set_target_hardware_addr(target_hardware_addr.as_bytes());
                packet.set_target_protocol_addr(&target_protocol_addr.octets());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Who has 198.18.0.2? Tell 198.18.0.1 (02:00:00:00:00:01).
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype, ptype, hlen, plen, oper
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 198, 18, 0, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 2, // target
    ];

    fn repr() -> ArpRepr {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: Ipv4Addr::new(198, 18, 0, 1),
            target_hardware_addr: EthernetAddress::ZERO,
            target_protocol_addr: Ipv4Addr::new(198, 18, 0, 2),
        }
    }

    #[test]
    fn deconstruct() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.source_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(p.source_protocol_addr(), &[198, 18, 0, 1]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[198, 18, 0, 2]);
    }

    #[test]
    fn parse_and_emit() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p).unwrap(), repr());
        let mut bytes = [0xffu8; 28];
        assert_eq!(repr().buffer_len(), 28);
        repr().emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn truncated() {
        for n in 0..REQUEST.len() {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..n]).unwrap_err(),
                Error::Truncated,
                "{n}"
            );
        }
        // Declared address lengths larger than the buffer.
        let mut big = REQUEST;
        big[4] = 255;
        assert_eq!(
            ArpPacket::new_checked(&big[..]).unwrap_err(),
            Error::Truncated
        );
        let unchecked = ArpPacket::new_unchecked(&REQUEST[..10]);
        assert_eq!(ArpRepr::parse(&unchecked), Err(Error::Truncated));
    }

    #[test]
    fn unsupported_kinds() {
        for (index, value) in [(1, 6u8), (3, 0xdd), (4, 8), (5, 16)] {
            let mut bytes = [0u8; 64];
            bytes[..28].copy_from_slice(&REQUEST);
            bytes[index] = value;
            let p = ArpPacket::new_checked(&bytes[..]).unwrap();
            assert_eq!(ArpRepr::parse(&p), Err(Error::Unsupported), "byte {index}");
        }
    }

    #[test]
    fn operations() {
        assert_eq!(ArpOperation::from(2), ArpOperation::Reply);
        assert_eq!(ArpOperation::from(9), ArpOperation::Unknown(9));
        assert_eq!(u16::from(ArpOperation::Unknown(9)), 9);
        let mut bytes = REQUEST;
        bytes[7] = 9;
        let p = ArpPacket::new_checked(&bytes[..]).unwrap();
        let ArpRepr::EthernetIpv4 { operation, .. } = ArpRepr::parse(&p).unwrap();
        assert_eq!(operation, ArpOperation::Unknown(9));
    }
}
