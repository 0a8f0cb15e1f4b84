//! Ethernet II frames (IEEE 802.3 with an EtherType, RFC 894): a zero-copy view
//! [`EthernetFrame`] and the plain [`EthernetRepr`] of its 14-byte header.
//!
//! Contract: after [`EthernetFrame::check_len`] (or [`EthernetFrame::new_checked`]) succeeds no
//! accessor panics; [`EthernetRepr::emit`] never panics on a buffer of
//! [`EthernetRepr::buffer_len`] bytes or more. No FCS is handled (the kernel strips it), and
//! 802.1Q tags are reported as an unknown EtherType.
#![forbid(unsafe_code)]

use core::fmt;

use super::{Error, EthernetAddress, Result};

/// Length of the Ethernet II header (destination, source, EtherType).
pub const HEADER_LEN: usize = 14;

/// The EtherType of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EthernetProtocol {
    Ipv4,
    Arp,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EthernetProtocol {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EthernetProtocol::Ipv4,
            0x0806 => EthernetProtocol::Arp,
            0x86dd => EthernetProtocol::Ipv6,
            other => EthernetProtocol::Unknown(other),
        }
    }
}

impl From<EthernetProtocol> for u16 {
    fn from(value: EthernetProtocol) -> Self {
        match value {
            EthernetProtocol::Ipv4 => 0x0800,
            EthernetProtocol::Arp => 0x0806,
            EthernetProtocol::Ipv6 => 0x86dd,
            EthernetProtocol::Unknown(other) => other,
        }
    }
}

impl fmt::Display for EthernetProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EthernetProtocol::Ipv4 => f.write_str("IPv4"),
            EthernetProtocol::Arp => f.write_str("ARP"),
            EthernetProtocol::Ipv6 => f.write_str("IPv6"),
            EthernetProtocol::Unknown(t) => write!(f, "0x{t:04x}"),
        }
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer and checks that it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Err(Truncated)` when the buffer is shorter than the header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Length of the header (always [`HEADER_LEN`]).
    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    pub fn dst_addr(&self) -> EthernetAddress {
        let b = &self.buffer.as_ref()[field::DESTINATION];
        EthernetAddress([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn src_addr(&self) -> EthernetAddress {
        let b = &self.buffer.as_ref()[field::SOURCE];
        EthernetAddress([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn ethertype(&self) -> EthernetProtocol {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EthernetProtocol::from(u16::from_be_bytes([b[0], b[1]]))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// The bytes after the header, borrowed for the buffer's lifetime.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&value.0);
    }

    pub fn set_src_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&value.0);
    }

    pub fn set_ethertype(&mut self, value: EthernetProtocol) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(value).to_be_bytes());
    }

    /// The bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The plain content of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    pub src_addr: EthernetAddress,
    pub dst_addr: EthernetAddress,
    pub ethertype: EthernetProtocol,
}

impl EthernetRepr {
    /// Reads the header of a frame (its length is checked again here).
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; the payload is left untouched.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // dst 02:00:00:00:00:01, src 02:00:00:00:00:02, IPv4, 4 payload bytes.
    const FRAME: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00, 0xaa,
        0xbb, 0xcc, 0xdd,
    ];

    fn repr() -> EthernetRepr {
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        }
    }

    #[test]
    fn deconstruct() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(frame.dst_addr(), EthernetAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(frame.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 2]));
        assert_eq!(frame.ethertype(), EthernetProtocol::Ipv4);
        assert_eq!(frame.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn construct() {
        let mut bytes = [0u8; 18];
        let mut frame = EthernetFrame::new_unchecked(&mut bytes[..]);
        frame.set_dst_addr(EthernetAddress([2, 0, 0, 0, 0, 1]));
        frame.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 2]));
        frame.set_ethertype(EthernetProtocol::Ipv4);
        frame
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, FRAME);
    }

    #[test]
    fn parse_and_emit() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame).unwrap(), repr());
        let mut bytes = FRAME;
        bytes[..HEADER_LEN].fill(0);
        repr().emit(&mut EthernetFrame::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, FRAME);
        assert_eq!(repr().buffer_len(), 14);
    }

    #[test]
    fn truncated() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let unchecked = EthernetFrame::new_unchecked(&FRAME[..5]);
        assert_eq!(EthernetRepr::parse(&unchecked), Err(Error::Truncated));
        assert!(
            EthernetFrame::new_checked(&FRAME[..HEADER_LEN])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn ethertypes() {
        for (raw, proto) in [
            (0x0800, EthernetProtocol::Ipv4),
            (0x0806, EthernetProtocol::Arp),
            (0x86dd, EthernetProtocol::Ipv6),
            (0x8100, EthernetProtocol::Unknown(0x8100)),
        ] {
            assert_eq!(EthernetProtocol::from(raw), proto);
            assert_eq!(u16::from(proto), raw);
        }
        assert_eq!(EthernetProtocol::Unknown(0x88cc).to_string(), "0x88cc");
    }
}
