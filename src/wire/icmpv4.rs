//! ICMPv4 (RFC 792, RFC 1191 for the next-hop MTU): a zero-copy view [`Icmpv4Packet`] and the
//! plain [`Icmpv4Repr`] of the messages this stack handles: echo request/reply, destination
//! unreachable (fragmentation needed included), redirect and time exceeded.
//!
//! Contract: after [`Icmpv4Packet::check_len`] succeeds no accessor panics. [`Icmpv4Repr::parse`]
//! verifies the checksum over the whole message (`Err(Checksum)`); other message types are
//! `Err(Unsupported)`. Error messages carry the offending datagram's IP header (parsed leniently
//! with [`Ipv4Repr::parse_quoted`]: no checksum check, payload cut short) and the quoted bytes of
//! its payload — RFC 792 asks for at least 8, RFC 1812 senders (Linux) quote more, and all of
//! them are kept. [`Icmpv4Repr::emit`] fills the checksum and never panics on a buffer of
//! [`Icmpv4Repr::buffer_len`] bytes or more. [`Icmpv4Repr::quote`] prepares the header and
//! 8 bytes of a received datagram for an error about it.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::{Error, Result};
use crate::checksum;

/// Length of the ICMP header (type, code, checksum, 4 type-specific bytes).
pub const HEADER_LEN: usize = 8;
/// How many payload bytes of the offending datagram an error quotes (RFC 792).
pub const QUOTED_PAYLOAD_LEN: usize = 8;

macro_rules! u8_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(value: u8) -> Self {
                match value {
                    $($value => $name::$variant,)*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => $value,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

u8_enum! {
    /// The ICMP message type.
    Icmpv4Message {
        EchoReply = 0,
        DstUnreachable = 3,
        Redirect = 5,
        EchoRequest = 8,
        RouterAdvert = 9,
        RouterSolicit = 10,
        TimeExceeded = 11,
        ParamProblem = 12,
        Timestamp = 13,
        TimestampReply = 14,
    }
}

u8_enum! {
    /// Codes of destination unreachable (RFC 792, RFC 1122 §3.2.2.1, RFC 1812 §5.2.7.1).
    DstUnreachable {
        NetUnreachable = 0,
        HostUnreachable = 1,
        ProtoUnreachable = 2,
        PortUnreachable = 3,
        /// Fragmentation needed and DF set; carries the next-hop MTU (RFC 1191).
        FragRequired = 4,
        SrcRouteFailed = 5,
        DstNetUnknown = 6,
        DstHostUnknown = 7,
        SrcHostIsolated = 8,
        NetProhibited = 9,
        HostProhibited = 10,
        NetUnreachToS = 11,
        HostUnreachToS = 12,
        CommProhibited = 13,
        HostPrecedViol = 14,
        PrecedCutoff = 15,
    }
}

u8_enum! {
    /// Codes of redirect.
    Redirect {
        Net = 0,
        Host = 1,
        NetToS = 2,
        HostToS = 3,
    }
}

u8_enum! {
    /// Codes of time exceeded.
    TimeExceeded {
        TtlExpired = 0,
        FragExpired = 1,
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const GATEWAY: Field = 4..8;
    pub const UNUSED: Field = 4..6;
    pub const MTU: Field = 6..8;
    pub const DATA: usize = 8;
}

/// A read/write view of an ICMPv4 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` when shorter than the 8-byte header.
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

    fn u16_at(&self, f: field::Field) -> u16 {
        let b = &self.buffer.as_ref()[f];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn msg_type(&self) -> Icmpv4Message {
        Icmpv4Message::from(self.buffer.as_ref()[field::TYPE])
    }
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }
    pub fn echo_ident(&self) -> u16 {
        self.u16_at(field::ECHO_IDENT)
    }
    pub fn echo_seq_no(&self) -> u16 {
        self.u16_at(field::ECHO_SEQNO)
    }
    /// The next-hop MTU of a fragmentation-needed message (RFC 1191; 0 from old routers).
    pub fn next_hop_mtu(&self) -> u16 {
        self.u16_at(field::MTU)
    }
    /// The gateway of a redirect.
    pub fn gateway(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::GATEWAY];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Icmpv4Packet<&'a T> {
    /// The bytes after the 8-byte header (echo data, or the quoted datagram).
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::DATA..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    fn set_u16_at(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_msg_type(&mut self, value: Icmpv4Message) {
        self.buffer.as_mut()[field::TYPE] = value.into();
    }
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }
    pub fn set_echo_ident(&mut self, value: u16) {
        self.set_u16_at(field::ECHO_IDENT, value);
    }
    pub fn set_echo_seq_no(&mut self, value: u16) {
        self.set_u16_at(field::ECHO_SEQNO, value);
    }
    /// Writes the next-hop MTU and zeroes the unused half-word before it.
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        self.set_u16_at(field::UNUSED, 0);
        self.set_u16_at(field::MTU, value);
    }
    pub fn set_gateway(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::GATEWAY].copy_from_slice(&value.octets());
    }
    /// The bytes after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }
    /// Computes the checksum over the whole buffer (which must be exactly the message).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(!sum);
    }
}

/// The plain content of an ICMPv4 message this stack handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr<'a> {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    DstUnreachable {
        reason: DstUnreachable,
        /// Meaningful for [`DstUnreachable::FragRequired`] (RFC 1191); kept as received for
        /// other codes (normally 0).
        next_hop_mtu: u16,
        /// The offending datagram's IP header.
        header: Ipv4Repr,
        /// The quoted start of its payload.
        data: &'a [u8],
    },
    Redirect {
        code: Redirect,
        gateway: Ipv4Addr,
        header: Ipv4Repr,
        data: &'a [u8],
    },
    TimeExceeded {
        reason: TimeExceeded,
        header: Ipv4Repr,
        data: &'a [u8],
    },
}

impl<'a> Icmpv4Repr<'a> {
    /// Reads a message (checksum verified over the whole buffer, which must be exactly the ICMP
    /// message: the IP payload).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Icmpv4Packet<&'a T>) -> Result<Icmpv4Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        let code = packet.msg_code();
        match packet.msg_type() {
            Icmpv4Message::EchoRequest if code == 0 => Ok(Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data: packet.data(),
            }),
            Icmpv4Message::EchoReply if code == 0 => Ok(Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data: packet.data(),
            }),
            Icmpv4Message::DstUnreachable => {
                let (header, data) = parse_quoted(packet.data())?;
                Ok(Icmpv4Repr::DstUnreachable {
                    reason: DstUnreachable::from(code),
                    next_hop_mtu: packet.next_hop_mtu(),
                    header,
                    data,
                })
            }
            Icmpv4Message::Redirect => {
                let (header, data) = parse_quoted(packet.data())?;
                Ok(Icmpv4Repr::Redirect {
                    code: Redirect::from(code),
                    gateway: packet.gateway(),
                    header,
                    data,
                })
            }
            Icmpv4Message::TimeExceeded => {
                let (header, data) = parse_quoted(packet.data())?;
                Ok(Icmpv4Repr::TimeExceeded {
                    reason: TimeExceeded::from(code),
                    header,
                    data,
                })
            }
            Icmpv4Message::EchoRequest | Icmpv4Message::EchoReply => Err(Error::Malformed),
            _ => Err(Error::Unsupported),
        }
    }

    /// The IP header and the first [`QUOTED_PAYLOAD_LEN`] payload bytes of a received datagram
    /// (`original`: the IP packet from its first byte), to put in an error message about it.
    pub fn quote(original: &'a [u8]) -> Result<(Ipv4Repr, &'a [u8])> {
        let (header, data) = parse_quoted(original)?;
        Ok((header, &data[..data.len().min(QUOTED_PAYLOAD_LEN)]))
    }

    /// Length of the emitted message.
    pub fn buffer_len(&self) -> usize {
        match self {
            Icmpv4Repr::EchoRequest { data, .. } | Icmpv4Repr::EchoReply { data, .. } => {
                HEADER_LEN + data.len()
            }
            Icmpv4Repr::DstUnreachable { header, data, .. }
            | Icmpv4Repr::Redirect { header, data, .. }
            | Icmpv4Repr::TimeExceeded { header, data, .. } => {
                HEADER_LEN + header.buffer_len() + data.len()
            }
        }
    }

    /// Writes the message into the first [`Icmpv4Repr::buffer_len`] bytes of the packet's
    /// buffer and fills the checksum over them.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        let len = self.buffer_len();
        let mut packet = Icmpv4Packet::new_unchecked(&mut packet.buffer.as_mut()[..len]);
        let quoted = |packet: &mut Icmpv4Packet<&mut [u8]>, header: &Ipv4Repr, data: &[u8]| {
            let out = packet.data_mut();
            let header_len = header.buffer_len();
            header.emit(&mut Ipv4Packet::new_unchecked(&mut out[..header_len]));
            out[header_len..].copy_from_slice(data);
        };
        match *self {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                let kind = if matches!(self, Icmpv4Repr::EchoRequest { .. }) {
                    Icmpv4Message::EchoRequest
                } else {
                    Icmpv4Message::EchoReply
                };
                packet.set_msg_type(kind);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                packet.data_mut().copy_from_slice(data);
            }
            Icmpv4Repr::DstUnreachable {
                reason,
                next_hop_mtu,
                ref header,
                data,
            } => {
                packet.set_msg_type(Icmpv4Message::DstUnreachable);
                packet.set_msg_code(reason.into());
                packet.set_next_hop_mtu(next_hop_mtu);
                quoted(&mut packet, header, data);
            }
            Icmpv4Repr::Redirect {
                code,
                gateway,
                ref header,
                data,
            } => {
                packet.set_msg_type(Icmpv4Message::Redirect);
                packet.set_msg_code(code.into());
                packet.set_gateway(gateway);
                quoted(&mut packet, header, data);
            }
            Icmpv4Repr::TimeExceeded {
                reason,
                ref header,
                data,
            } => {
                packet.set_msg_type(Icmpv4Message::TimeExceeded);
                packet.set_msg_code(reason.into());
                packet.set_next_hop_mtu(0);
                quoted(&mut packet, header, data);
            }
        }
        packet.fill_checksum();
    }
}

/// A quoted datagram: its header (lenient) and the quoted payload bytes, cut to the payload
/// length the header declares.
fn parse_quoted(bytes: &[u8]) -> Result<(Ipv4Repr, &[u8])> {
    let packet = Ipv4Packet::new_unchecked(bytes);
    let header = Ipv4Repr::parse_quoted(&packet)?;
    let rest = &bytes[packet.header_len()..];
    Ok((header, &rest[..rest.len().min(header.payload_len)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::IpProtocol;

    // Echo request, ident 0x1234, seq 1, data "abcd".
    const ECHO: [u8; 12] = [
        0x08, 0x00, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, b'a', b'b', b'c', b'd',
    ];

    // The UDP datagram 198.18.0.1:5000 → 198.18.0.2:7000 with 4 payload bytes (see udp.rs).
    const DATAGRAM: [u8; 32] = [
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x9c, 0x71, 198, 18, 0, 1, 198,
        18, 0, 2, 0x13, 0x88, 0x1b, 0x58, 0x00, 0x0c, 0xcd, 0x34, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    fn echo_repr() -> Icmpv4Repr<'static> {
        Icmpv4Repr::EchoRequest {
            ident: 0x1234,
            seq_no: 1,
            data: b"abcd",
        }
    }

    fn quoted_header() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(198, 18, 0, 1),
            dst_addr: Ipv4Addr::new(198, 18, 0, 2),
            protocol: IpProtocol::Udp,
            payload_len: 12,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            dont_frag: true,
            ..Ipv4Repr::default()
        }
    }

    #[test]
    fn echo_deconstruct_parse_emit() {
        let p = Icmpv4Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Message::EchoRequest);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0x2104);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1234, 1));
        assert_eq!(p.data(), b"abcd");
        assert!(p.verify_checksum());
        assert_eq!(Icmpv4Repr::parse(&p).unwrap(), echo_repr());
        let mut bytes = [0u8; 12];
        assert_eq!(echo_repr().buffer_len(), 12);
        echo_repr().emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, ECHO);
        // Reply: type 0, the checksum grows by 0x0800.
        let reply = Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"abcd",
        };
        reply.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[..4], &[0x00, 0x00, 0x29, 0x04]);
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bytes[..]).unwrap()).unwrap(),
            reply
        );
    }

    #[test]
    fn port_unreachable_quotes_header_and_8_bytes() {
        assert!(
            Ipv4Packet::new_checked(&DATAGRAM[..])
                .unwrap()
                .verify_checksum()
        );
        let (header, data) = Icmpv4Repr::quote(&DATAGRAM).unwrap();
        assert_eq!(header, quoted_header());
        assert_eq!(data, &DATAGRAM[20..28]);
        let repr = Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::PortUnreachable,
            next_hop_mtu: 0,
            header,
            data,
        };
        assert_eq!(repr.buffer_len(), 36);
        let mut bytes = [0xffu8; 36];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[..2], &[3, 3]);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
        assert_eq!(
            &bytes[8..],
            &DATAGRAM[..28],
            "the quote is the original header and 8 bytes"
        );
        let p = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Icmpv4Repr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn frag_required_carries_mtu() {
        let (header, data) = Icmpv4Repr::quote(&DATAGRAM).unwrap();
        let repr = Icmpv4Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu: 1400,
            header,
            data,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[..2], &[3, 4]);
        assert_eq!(&bytes[4..8], &[0, 0, 0x05, 0x78]);
        let p = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.next_hop_mtu(), 1400);
        assert_eq!(Icmpv4Repr::parse(&p).unwrap(), repr);
    }

    #[test]
    fn redirect_and_time_exceeded() {
        let (header, data) = Icmpv4Repr::quote(&DATAGRAM).unwrap();
        for repr in [
            Icmpv4Repr::Redirect {
                code: Redirect::Host,
                gateway: Ipv4Addr::new(198, 18, 0, 254),
                header,
                data,
            },
            Icmpv4Repr::TimeExceeded {
                reason: TimeExceeded::FragExpired,
                header,
                data,
            },
        ] {
            let mut bytes = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes[..]));
            let p = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
            if let Icmpv4Repr::Redirect { .. } = repr {
                assert_eq!(&bytes[..2], &[5, 1]);
                assert_eq!(p.gateway(), Ipv4Addr::new(198, 18, 0, 254));
            } else {
                assert_eq!(&bytes[..2], &[11, 1]);
            }
            assert_eq!(Icmpv4Repr::parse(&p).unwrap(), repr);
        }
    }

    #[test]
    fn longer_quotes_are_kept_and_cut_to_the_datagram() {
        // Linux quotes the whole small datagram, and the message may be padded.
        let mut message = vec![3, 3, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&DATAGRAM);
        message.extend_from_slice(&[0, 0]);
        Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum();
        let p = Icmpv4Packet::new_checked(&message[..]).unwrap();
        let Icmpv4Repr::DstUnreachable { header, data, .. } = Icmpv4Repr::parse(&p).unwrap() else {
            panic!("not a destination unreachable");
        };
        assert_eq!(header, quoted_header());
        assert_eq!(data, &DATAGRAM[20..]);
    }

    #[test]
    fn bad_input() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ECHO[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut bytes = ECHO;
        bytes[9] ^= 1;
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::Checksum)
        );
        // Unknown type.
        let mut bytes = ECHO;
        bytes[0] = 42;
        Icmpv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::Unsupported)
        );
        // Echo with a non-zero code.
        let mut bytes = ECHO;
        bytes[1] = 1;
        Icmpv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        assert_eq!(
            Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::Malformed)
        );
        // An error whose quote is shorter than an IP header, or has a bad IHL.
        for quote in [&DATAGRAM[..12], &[0x44; 20][..]] {
            let mut message = vec![3, 1, 0, 0, 0, 0, 0, 0];
            message.extend_from_slice(quote);
            Icmpv4Packet::new_unchecked(&mut message[..]).fill_checksum();
            assert!(Icmpv4Repr::parse(&Icmpv4Packet::new_checked(&message[..]).unwrap()).is_err());
        }
        assert!(Icmpv4Repr::quote(&DATAGRAM[..19]).is_err());
    }

    #[test]
    fn codes() {
        assert_eq!(DstUnreachable::from(4), DstUnreachable::FragRequired);
        assert_eq!(DstUnreachable::from(99), DstUnreachable::Unknown(99));
        assert_eq!(u8::from(DstUnreachable::PortUnreachable), 3);
        assert_eq!(Icmpv4Message::from(11), Icmpv4Message::TimeExceeded);
        assert_eq!(u8::from(Redirect::HostToS), 3);
        assert_eq!(TimeExceeded::from(1), TimeExceeded::FragExpired);
    }
}
