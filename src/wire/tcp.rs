//! TCP segments (RFC 9293): a zero-copy view [`TcpPacket`], the plain [`TcpRepr`], the wrapping
//! sequence-number type [`TcpSeqNumber`] and TCP options as a list — parsed by
//! [`TcpOptionsIter`] over the header's bytes and held in the fixed-capacity [`TcpOptions`]
//! (at most 40 bytes inline; no heap per segment).
//!
//! Contract: after [`TcpPacket::check_len`] succeeds no accessor panics. The view's buffer is
//! exactly the segment (the IP payload): the checksum and the payload run to its end.
//! [`TcpRepr::parse`] validates the options and verifies the checksum over the IPv4
//! pseudo-header (`Err(Checksum)`). [`TcpRepr::emit`] never panics on a buffer of
//! [`TcpRepr::buffer_len`] bytes or more.
//!
//! Options: end of list, no-operation, MSS (RFC 9293), window scale, SACK-permitted, SACK
//! (1–4 blocks, RFC 2018), timestamps (RFC 7323), and the two active-demultiplexing options of
//! paper §6.1 (Fig. 8). Those have no IANA kinds, so they are framed as RFC 6994 shared
//! experimental options: kind [`TCPOPT_EXPERIMENT`] (253, RFC 4727) followed by the 16-bit
//! experiment identifier [`DEMUX_EXID`] = 0x4D53 ("MS", for msock; not IANA-registered, chosen
//! to be recognisable) and a subtype byte:
//! - `TCPOPT_DEMUX_ADVERTISE`, 14 bytes: kind, length, ExID (2), subtype 1, reserved 0,
//!   sequence (2), OS handle (2), nonce (4);
//! - `TCPOPT_DEMUX_REVOKE`, 8 bytes: kind, length, ExID (2), subtype 2, reserved 0,
//!   sequence (2).
//!
//! Every other option (other kinds, other experiment identifiers, other subtypes) is kept raw.
//! A length byte of 0 or 1, an option overrunning the options area, or a known option of the
//! wrong length is `Malformed` (Linux skips the latter; a peer sending it is broken and the
//! segment is dropped here).
#![forbid(unsafe_code)]

use core::{cmp, fmt, ops};
use std::net::Ipv4Addr;

use super::options::{OptionFormat, Options, OptionsIter};
use super::{Error, Result};
use crate::checksum;

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Largest options area (data offset 15 → 60-byte header).
pub const MAX_OPTIONS_LEN: usize = super::options::MAX_LEN;
/// The IP protocol number of TCP (pseudo-header).
const PROTOCOL_TCP: u8 = 6;

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOPT_WINDOW_SCALE: u8 = 3;
pub const TCPOPT_SACK_PERMITTED: u8 = 4;
pub const TCPOPT_SACK: u8 = 5;
pub const TCPOPT_TIMESTAMPS: u8 = 8;
/// RFC 4727 experimental option kind 2 (shared under RFC 6994).
pub const TCPOPT_EXPERIMENT: u8 = 253;
/// RFC 6994 experiment identifier of msock's active-demultiplexing options ("MS").
pub const DEMUX_EXID: u16 = 0x4d53;
/// Subtype of `TCPOPT_DEMUX_ADVERTISE` after [`DEMUX_EXID`].
pub const DEMUX_SUBTYPE_ADVERTISE: u8 = 1;
/// Subtype of `TCPOPT_DEMUX_REVOKE` after [`DEMUX_EXID`].
pub const DEMUX_SUBTYPE_REVOKE: u8 = 2;
/// Encoded length of `TCPOPT_DEMUX_ADVERTISE`.
pub const DEMUX_ADVERTISE_LEN: usize = 14;
/// Encoded length of `TCPOPT_DEMUX_REVOKE`.
pub const DEMUX_REVOKE_LEN: usize = 8;
/// Most SACK blocks one option holds (4 × 8 + 2 = 34 bytes).
pub const MAX_SACK_BLOCKS: usize = 4;

/// A TCP sequence number: arithmetic wraps modulo 2³², and comparisons are in sequence space
/// (`a < b` when `b` is less than 2³¹ ahead of `a`, RFC 9293 §3.4; after RFC 1982).
///
/// `PartialOrd` is not transitive across more than half the space, so there is no `Ord`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpSeqNumber(pub u32);

impl TcpSeqNumber {
    /// The later of two numbers in sequence space.
    pub fn max(self, other: Self) -> Self {
        if self > other { self } else { other }
    }

    /// The earlier of two numbers in sequence space.
    pub fn min(self, other: Self) -> Self {
        if self < other { self } else { other }
    }
}

impl fmt::Display for TcpSeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl ops::Add<usize> for TcpSeqNumber {
    type Output = TcpSeqNumber;
    /// Wraps; `rhs` is taken modulo 2³².
    fn add(self, rhs: usize) -> TcpSeqNumber {
        TcpSeqNumber(self.0.wrapping_add(rhs as u32))
    }
}

impl ops::AddAssign<usize> for TcpSeqNumber {
    fn add_assign(&mut self, rhs: usize) {
        *self = *self + rhs;
    }
}

impl ops::Sub<usize> for TcpSeqNumber {
    type Output = TcpSeqNumber;
    fn sub(self, rhs: usize) -> TcpSeqNumber {
        TcpSeqNumber(self.0.wrapping_sub(rhs as u32))
    }
}

impl ops::Sub for TcpSeqNumber {
    /// The signed distance from `rhs` to `self` in sequence space (negative when `self` is
    /// before `rhs`).
    type Output = i32;
    fn sub(self, rhs: TcpSeqNumber) -> i32 {
        self.0.wrapping_sub(rhs.0) as i32
    }
}

impl PartialOrd for TcpSeqNumber {
    fn partial_cmp(&self, other: &TcpSeqNumber) -> Option<cmp::Ordering> {
        Some((*self - *other).cmp(&0))
    }
}

/// The control flags of a segment other than ACK (carried by [`TcpRepr::ack_number`]) and URG
/// (carried by [`TcpRepr::urgent_pointer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpControl {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
    /// ECN-Echo (RFC 3168).
    pub ece: bool,
    /// Congestion Window Reduced (RFC 3168).
    pub cwr: bool,
}

impl TcpControl {
    pub const NONE: TcpControl = TcpControl {
        syn: false,
        fin: false,
        rst: false,
        psh: false,
        ece: false,
        cwr: false,
    };
    pub const SYN: TcpControl = TcpControl {
        syn: true,
        ..TcpControl::NONE
    };
    pub const FIN: TcpControl = TcpControl {
        fin: true,
        ..TcpControl::NONE
    };
    pub const RST: TcpControl = TcpControl {
        rst: true,
        ..TcpControl::NONE
    };
    pub const PSH: TcpControl = TcpControl {
        psh: true,
        ..TcpControl::NONE
    };

    /// Sequence space the flags occupy (SYN and FIN count one each).
    pub fn len(&self) -> usize {
        usize::from(self.syn) + usize::from(self.fin)
    }

    /// Whether the flags occupy no sequence space.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The SACK blocks of one option: 1 to 4 (left edge, right edge) pairs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SackBlocks {
    blocks: [(TcpSeqNumber, TcpSeqNumber); MAX_SACK_BLOCKS],
    len: u8,
}

impl SackBlocks {
    /// `None` unless 1 to 4 blocks are given.
    pub fn new(blocks: &[(TcpSeqNumber, TcpSeqNumber)]) -> Option<SackBlocks> {
        if blocks.is_empty() || blocks.len() > MAX_SACK_BLOCKS {
            return None;
        }
        let mut out = SackBlocks {
            blocks: [(TcpSeqNumber(0), TcpSeqNumber(0)); MAX_SACK_BLOCKS],
            len: 0,
        };
        out.blocks[..blocks.len()].copy_from_slice(blocks);
        out.len = blocks.len() as u8;
        Some(out)
    }

    pub fn as_slice(&self) -> &[(TcpSeqNumber, TcpSeqNumber)] {
        &self.blocks[..usize::from(self.len)]
    }
}

impl fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// One TCP option, as found by [`TcpOptionsIter`] or given to [`TcpOptions::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpOption<'a> {
    EndOfList,
    NoOperation,
    MaxSegmentSize(u16),
    WindowScale(u8),
    SackPermitted,
    SackRange(SackBlocks),
    Timestamps {
        tsval: u32,
        tsecr: u32,
    },
    /// `TCPOPT_DEMUX_ADVERTISE` (paper §6.1): the sender's OS handle for active demultiplexing.
    DemuxAdvertise {
        seq: u16,
        handle: u16,
        nonce: u32,
    },
    /// `TCPOPT_DEMUX_REVOKE` (paper §6.1): stop enclosing the advertised handle.
    DemuxRevoke {
        seq: u16,
    },
    /// Any other option: its kind and the bytes after its length byte.
    Unknown {
        kind: u8,
        data: &'a [u8],
    },
}

impl TcpOption<'_> {
    /// Encoded length, kind (and length) bytes included.
    pub fn encoded_len(&self) -> usize {
        match self {
            TcpOption::EndOfList | TcpOption::NoOperation => 1,
            TcpOption::MaxSegmentSize(_) => 4,
            TcpOption::WindowScale(_) => 3,
            TcpOption::SackPermitted => 2,
            TcpOption::SackRange(blocks) => 2 + 8 * blocks.as_slice().len(),
            TcpOption::Timestamps { .. } => 10,
            TcpOption::DemuxAdvertise { .. } => DEMUX_ADVERTISE_LEN,
            TcpOption::DemuxRevoke { .. } => DEMUX_REVOKE_LEN,
            TcpOption::Unknown { data, .. } => 2 + data.len(),
        }
    }
}

impl OptionFormat for TcpOption<'static> {
    type Item<'a> = TcpOption<'a>;

    fn end_of_list<'a>() -> TcpOption<'a> {
        TcpOption::EndOfList
    }

    fn no_operation<'a>() -> TcpOption<'a> {
        TcpOption::NoOperation
    }

    fn decode(kind: u8, data: &[u8]) -> Result<TcpOption<'_>> {
        let len = data.len() + 2;
        let be16 = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
        let be32 =
            |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let option = match (kind, len) {
            (TCPOPT_MSS, 4) => TcpOption::MaxSegmentSize(be16(0)),
            (TCPOPT_WINDOW_SCALE, 3) => TcpOption::WindowScale(data[0]),
            (TCPOPT_SACK_PERMITTED, 2) => TcpOption::SackPermitted,
            (TCPOPT_SACK, 10 | 18 | 26 | 34) => {
                let mut blocks = [(TcpSeqNumber(0), TcpSeqNumber(0)); MAX_SACK_BLOCKS];
                let count = data.len() / 8;
                for (i, block) in blocks.iter_mut().take(count).enumerate() {
                    *block = (TcpSeqNumber(be32(8 * i)), TcpSeqNumber(be32(8 * i + 4)));
                }
                TcpOption::SackRange(SackBlocks {
                    blocks,
                    len: count as u8,
                })
            }
            (TCPOPT_TIMESTAMPS, 10) => TcpOption::Timestamps {
                tsval: be32(0),
                tsecr: be32(4),
            },
            (
                TCPOPT_MSS
                | TCPOPT_WINDOW_SCALE
                | TCPOPT_SACK_PERMITTED
                | TCPOPT_SACK
                | TCPOPT_TIMESTAMPS,
                _,
            ) => {
                return Err(Error::Malformed);
            }
            (TCPOPT_EXPERIMENT, _) if len >= 5 && be16(0) == DEMUX_EXID => match (data[2], len) {
                (DEMUX_SUBTYPE_ADVERTISE, DEMUX_ADVERTISE_LEN) => TcpOption::DemuxAdvertise {
                    seq: be16(4),
                    handle: be16(6),
                    nonce: be32(8),
                },
                (DEMUX_SUBTYPE_REVOKE, DEMUX_REVOKE_LEN) => TcpOption::DemuxRevoke { seq: be16(4) },
                (DEMUX_SUBTYPE_ADVERTISE | DEMUX_SUBTYPE_REVOKE, _) => {
                    return Err(Error::Malformed);
                }
                _ => TcpOption::Unknown { kind, data },
            },
            _ => TcpOption::Unknown { kind, data },
        };
        Ok(option)
    }

    fn encoded_len(option: &TcpOption<'_>) -> usize {
        option.encoded_len()
    }

    fn encode(option: TcpOption<'_>, out: &mut [u8]) -> Result<()> {
        let len = out.len();
        out[0] = match option {
            TcpOption::EndOfList => TCPOPT_EOL,
            TcpOption::NoOperation => TCPOPT_NOP,
            TcpOption::MaxSegmentSize(_) => TCPOPT_MSS,
            TcpOption::WindowScale(_) => TCPOPT_WINDOW_SCALE,
            TcpOption::SackPermitted => TCPOPT_SACK_PERMITTED,
            TcpOption::SackRange(_) => TCPOPT_SACK,
            TcpOption::Timestamps { .. } => TCPOPT_TIMESTAMPS,
            TcpOption::DemuxAdvertise { .. } | TcpOption::DemuxRevoke { .. } => TCPOPT_EXPERIMENT,
            TcpOption::Unknown { kind, .. } => kind,
        };
        if len > 1 {
            out[1] = len as u8;
        }
        let body = &mut out[2.min(len)..];
        match option {
            TcpOption::EndOfList | TcpOption::NoOperation | TcpOption::SackPermitted => {}
            TcpOption::MaxSegmentSize(mss) => body.copy_from_slice(&mss.to_be_bytes()),
            TcpOption::WindowScale(shift) => body[0] = shift,
            TcpOption::SackRange(blocks) => {
                for (chunk, (left, right)) in body.chunks_exact_mut(8).zip(blocks.as_slice()) {
                    chunk[..4].copy_from_slice(&left.0.to_be_bytes());
                    chunk[4..].copy_from_slice(&right.0.to_be_bytes());
                }
            }
            TcpOption::Timestamps { tsval, tsecr } => {
                body[..4].copy_from_slice(&tsval.to_be_bytes());
                body[4..].copy_from_slice(&tsecr.to_be_bytes());
            }
            TcpOption::DemuxAdvertise { seq, handle, nonce } => {
                body[..2].copy_from_slice(&DEMUX_EXID.to_be_bytes());
                body[2] = DEMUX_SUBTYPE_ADVERTISE;
                body[3] = 0;
                body[4..6].copy_from_slice(&seq.to_be_bytes());
                body[6..8].copy_from_slice(&handle.to_be_bytes());
                body[8..12].copy_from_slice(&nonce.to_be_bytes());
            }
            TcpOption::DemuxRevoke { seq } => {
                body[..2].copy_from_slice(&DEMUX_EXID.to_be_bytes());
                body[2] = DEMUX_SUBTYPE_REVOKE;
                body[3] = 0;
                body[4..6].copy_from_slice(&seq.to_be_bytes());
            }
            TcpOption::Unknown { data, .. } => body.copy_from_slice(data),
        }
        // Reject what would not read back as the option given (an `Unknown` of a known kind,
        // an `Unknown` carrying a demux ExID and subtype).
        let mut check = TcpOptionsIter::new(out);
        if check.next() != Some(Ok(option)) {
            return Err(Error::Malformed);
        }
        Ok(())
    }
}

/// Iterates over encoded TCP options, zero-copy. Yields `Err(Malformed)` once (then stops) for a
/// length byte of 0 or 1, a missing length byte, an option overrunning the area, or a known
/// option of the wrong length. Stops after [`TcpOption::EndOfList`].
pub type TcpOptionsIter<'a> = OptionsIter<'a, TcpOption<'static>>;

/// A validated list of TCP options stored inline in their encoded form (at most 40 bytes).
///
/// The end of the list is implicit: [`TcpOptions::parse`] drops an end-of-list and the padding
/// after it, and [`TcpRepr::emit`] pads with zeros (end-of-list) to a multiple of 4, so a parsed
/// list emits and parses back to itself. [`TcpOptions::push`] refuses an [`TcpOption::Unknown`]
/// that would not read back as itself (a known kind, or a demux ExID and subtype). The
/// accessors (`max_seg_size`, …) return the last occurrence of an option, as Linux does.
pub type TcpOptions = Options<TcpOption<'static>>;

impl TcpOptions {
    /// As [`TcpOptions::push`], preceded by the no-operations that make the option end on a
    /// 4-byte boundary (the usual layout: `NOP NOP TS`, `NOP WS`).
    pub fn push_aligned(&mut self, option: TcpOption<'_>) -> Result<()> {
        let used = self.as_bytes().len();
        let pad = (4 - (used + option.encoded_len()) % 4) % 4;
        if used + pad + option.encoded_len() > MAX_OPTIONS_LEN {
            return Err(Error::Malformed);
        }
        let saved = *self;
        for _ in 0..pad {
            self.push(TcpOption::NoOperation)?;
        }
        self.push(option).inspect_err(|_| *self = saved)
    }

    fn last<R>(&self, f: impl Fn(TcpOption<'_>) -> Option<R>) -> Option<R> {
        self.iter().flatten().filter_map(f).last()
    }

    pub fn max_seg_size(&self) -> Option<u16> {
        self.last(|o| {
            if let TcpOption::MaxSegmentSize(v) = o {
                Some(v)
            } else {
                None
            }
        })
    }
    pub fn window_scale(&self) -> Option<u8> {
        self.last(|o| {
            if let TcpOption::WindowScale(v) = o {
                Some(v)
            } else {
                None
            }
        })
    }
    pub fn sack_permitted(&self) -> bool {
        self.last(|o| matches!(o, TcpOption::SackPermitted).then_some(()))
            .is_some()
    }
    pub fn sack_blocks(&self) -> Option<SackBlocks> {
        self.last(|o| {
            if let TcpOption::SackRange(v) = o {
                Some(v)
            } else {
                None
            }
        })
    }
    /// `(tsval, tsecr)`.
    pub fn timestamps(&self) -> Option<(u32, u32)> {
        self.last(|o| {
            if let TcpOption::Timestamps { tsval, tsecr } = o {
                Some((tsval, tsecr))
            } else {
                None
            }
        })
    }
    /// `(seq, handle, nonce)` of `TCPOPT_DEMUX_ADVERTISE`.
    pub fn demux_advertise(&self) -> Option<(u16, u16, u32)> {
        self.last(|o| {
            if let TcpOption::DemuxAdvertise { seq, handle, nonce } = o {
                Some((seq, handle, nonce))
            } else {
                None
            }
        })
    }
    /// `seq` of `TCPOPT_DEMUX_REVOKE`.
    pub fn demux_revoke(&self) -> Option<u16> {
        self.last(|o| {
            if let TcpOption::DemuxRevoke { seq } = o {
                Some(seq)
            } else {
                None
            }
        })
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const FLAGS: Field = 12..14;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    pub const OPTIONS: usize = 20;

    pub const FLG_FIN: u16 = 0x001;
    pub const FLG_SYN: u16 = 0x002;
    pub const FLG_RST: u16 = 0x004;
    pub const FLG_PSH: u16 = 0x008;
    pub const FLG_ACK: u16 = 0x010;
    pub const FLG_URG: u16 = 0x020;
    pub const FLG_ECE: u16 = 0x040;
    pub const FLG_CWR: u16 = 0x080;
    pub const FLG_NS: u16 = 0x100;
}

/// A read/write view of a TCP segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Truncated` when shorter than 20 bytes; `Malformed` when the data offset is below 5 or
    /// beyond the segment.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN || header_len > len {
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

    fn u32_at(&self, f: field::Field) -> u32 {
        let b = &self.buffer.as_ref()[f];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    fn flag(&self, flag: u16) -> bool {
        self.u16_at(field::FLAGS) & flag != 0
    }

    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }
    pub fn seq_number(&self) -> TcpSeqNumber {
        TcpSeqNumber(self.u32_at(field::SEQ_NUM))
    }
    /// The acknowledgment field, meaningful when [`TcpPacket::ack`] is set.
    pub fn ack_number(&self) -> TcpSeqNumber {
        TcpSeqNumber(self.u32_at(field::ACK_NUM))
    }
    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::FLAGS.start] >> 4) * 4
    }
    pub fn fin(&self) -> bool {
        self.flag(field::FLG_FIN)
    }
    pub fn syn(&self) -> bool {
        self.flag(field::FLG_SYN)
    }
    pub fn rst(&self) -> bool {
        self.flag(field::FLG_RST)
    }
    pub fn psh(&self) -> bool {
        self.flag(field::FLG_PSH)
    }
    pub fn ack(&self) -> bool {
        self.flag(field::FLG_ACK)
    }
    pub fn urg(&self) -> bool {
        self.flag(field::FLG_URG)
    }
    pub fn ece(&self) -> bool {
        self.flag(field::FLG_ECE)
    }
    pub fn cwr(&self) -> bool {
        self.flag(field::FLG_CWR)
    }
    /// The obsolete ECN-nonce flag (RFC 3540, historic); not represented in [`TcpRepr`].
    pub fn ns(&self) -> bool {
        self.flag(field::FLG_NS)
    }
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WIN_SIZE)
    }
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }
    /// The urgent pointer, meaningful when [`TcpPacket::urg`] is set.
    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }
    /// The options area (header bytes after the first 20).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }
    /// The options, zero-copy.
    pub fn options_iter(&self) -> TcpOptionsIter<'_> {
        TcpOptionsIter::new(self.options())
    }
    /// Sequence space the segment occupies: payload plus SYN and FIN.
    pub fn segment_len(&self) -> usize {
        self.buffer.as_ref().len() - self.header_len()
            + usize::from(self.syn())
            + usize::from(self.fin())
    }
    /// Whether the checksum over the pseudo-header and the whole buffer verifies.
    pub fn verify_checksum(&self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) -> bool {
        let data = self.buffer.as_ref();
        let pseudo =
            checksum::pseudo_header_v4(src_addr, dst_addr, PROTOCOL_TCP, data.len() as u32);
        checksum::combine(&[pseudo, checksum::data(data)]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> TcpPacket<&'a T> {
    /// The bytes after the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_u16_at(&mut self, f: field::Field, value: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&value.to_be_bytes());
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let raw = self.u16_at(field::FLAGS);
        self.set_u16_at(field::FLAGS, if on { raw | flag } else { raw & !flag });
    }

    pub fn set_src_port(&mut self, value: u16) {
        self.set_u16_at(field::SRC_PORT, value);
    }
    pub fn set_dst_port(&mut self, value: u16) {
        self.set_u16_at(field::DST_PORT, value);
    }
    pub fn set_seq_number(&mut self, value: TcpSeqNumber) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&value.0.to_be_bytes());
    }
    pub fn set_ack_number(&mut self, value: TcpSeqNumber) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&value.0.to_be_bytes());
    }
    /// Sets the data offset from a length in bytes (a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, value: usize) {
        let raw = self.u16_at(field::FLAGS);
        self.set_u16_at(
            field::FLAGS,
            (raw & 0x0fff) | (((value / 4) as u16 & 0xf) << 12),
        );
    }
    /// Clears every flag and the reserved bits (keeps the data offset).
    pub fn clear_flags(&mut self) {
        let raw = self.u16_at(field::FLAGS);
        self.set_u16_at(field::FLAGS, raw & 0xf000);
    }
    pub fn set_fin(&mut self, value: bool) {
        self.set_flag(field::FLG_FIN, value);
    }
    pub fn set_syn(&mut self, value: bool) {
        self.set_flag(field::FLG_SYN, value);
    }
    pub fn set_rst(&mut self, value: bool) {
        self.set_flag(field::FLG_RST, value);
    }
    pub fn set_psh(&mut self, value: bool) {
        self.set_flag(field::FLG_PSH, value);
    }
    pub fn set_ack(&mut self, value: bool) {
        self.set_flag(field::FLG_ACK, value);
    }
    pub fn set_urg(&mut self, value: bool) {
        self.set_flag(field::FLG_URG, value);
    }
    pub fn set_ece(&mut self, value: bool) {
        self.set_flag(field::FLG_ECE, value);
    }
    pub fn set_cwr(&mut self, value: bool) {
        self.set_flag(field::FLG_CWR, value);
    }
    pub fn set_ns(&mut self, value: bool) {
        self.set_flag(field::FLG_NS, value);
    }
    pub fn set_window_len(&mut self, value: u16) {
        self.set_u16_at(field::WIN_SIZE, value);
    }
    pub fn set_checksum(&mut self, value: u16) {
        self.set_u16_at(field::CHECKSUM, value);
    }
    pub fn set_urgent_at(&mut self, value: u16) {
        self.set_u16_at(field::URGENT, value);
    }
    /// The options area, writable (its length follows the data offset).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..end]
    }
    /// The bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
    /// Computes the checksum over the pseudo-header and the whole buffer (which must be exactly
    /// the segment).
    pub fn fill_checksum(&mut self, src_addr: Ipv4Addr, dst_addr: Ipv4Addr) {
        self.set_checksum(0);
        let data = self.buffer.as_ref();
        let pseudo =
            checksum::pseudo_header_v4(src_addr, dst_addr, PROTOCOL_TCP, data.len() as u32);
        let sum = checksum::combine(&[pseudo, checksum::data(data)]);
        self.set_checksum(!sum);
    }
}

/// The plain content of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: TcpSeqNumber,
    /// `Some` exactly when the ACK flag is set.
    pub ack_number: Option<TcpSeqNumber>,
    pub control: TcpControl,
    pub window_len: u16,
    /// `Some` exactly when the URG flag is set.
    pub urgent_pointer: Option<u16>,
    pub options: TcpOptions,
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Reads a segment carried between `src_addr` and `dst_addr` (the buffer is exactly the
    /// segment): data offset, options, checksum.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TcpPacket<&'a T>,
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
    ) -> Result<TcpRepr<'a>> {
        packet.check_len()?;
        let options = TcpOptions::parse(packet.options())?;
        if !packet.verify_checksum(src_addr, dst_addr) {
            return Err(Error::Checksum);
        }
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack().then(|| packet.ack_number()),
            control: TcpControl {
                syn: packet.syn(),
                fin: packet.fin(),
                rst: packet.rst(),
                psh: packet.psh(),
                ece: packet.ece(),
                cwr: packet.cwr(),
            },
            window_len: packet.window_len(),
            urgent_pointer: packet.urg().then(|| packet.urgent_at()),
            options,
            payload: packet.payload(),
        })
    }

    /// Length of the emitted header, options padded included.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options.padded_len()
    }

    /// Length of the emitted segment (header and payload).
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Sequence space the segment occupies: payload plus SYN and FIN.
    pub fn segment_len(&self) -> usize {
        self.payload.len() + self.control.len()
    }

    /// Writes the segment into the packet's buffer, which must be exactly
    /// [`TcpRepr::buffer_len`] bytes (the checksum covers all of it).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number.unwrap_or(TcpSeqNumber(0)));
        packet.set_header_len(self.header_len());
        packet.clear_flags();
        packet.set_syn(self.control.syn);
        packet.set_fin(self.control.fin);
        packet.set_rst(self.control.rst);
        packet.set_psh(self.control.psh);
        packet.set_ece(self.control.ece);
        packet.set_cwr(self.control.cwr);
        packet.set_ack(self.ack_number.is_some());
        packet.set_urg(self.urgent_pointer.is_some());
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(self.urgent_pointer.unwrap_or(0));
        let options = packet.options_mut();
        let used = self.options.as_bytes().len();
        options[..used].copy_from_slice(self.options.as_bytes());
        options[used..].fill(TCPOPT_EOL);
        packet.payload_mut()[..self.payload.len()].copy_from_slice(self.payload);
        packet.fill_checksum(src_addr, dst_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_push_leaves_the_list_unchanged() {
        let mut options = TcpOptions::new();
        options.push(TcpOption::MaxSegmentSize(1460)).unwrap();
        let before = options;
        // An `Unknown` option of a kind this module knows would not parse back as itself.
        let refused = options.push(TcpOption::Unknown {
            kind: TCPOPT_WINDOW_SCALE,
            data: &[7],
        });
        assert_eq!(refused, Err(Error::Malformed));
        assert_eq!(options, before);
    }

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    // 49152 → 80, seq 0x01020304, ack 0x0a0b0c0d, ACK|PSH, window 0x2000, 4 payload bytes.
    const SEGMENT: [u8; 24] = [
        0xc0, 0x00, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x50, 0x18, 0x20,
        0x00, 0x00, 0x00, 0x00, 0x00, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    // A SYN with Linux's option layout: MSS 1460, SACK-permitted, timestamps, NOP, WS 7.
    const SYN_OPTIONS: [u8; 20] = [
        0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
        TcpPacket::new_unchecked(&mut bytes[..]).fill_checksum(SRC, DST);
        bytes
    }

    fn segment() -> Vec<u8> {
        with_checksum(SEGMENT.to_vec())
    }

    fn repr(payload: &[u8]) -> TcpRepr<'_> {
        TcpRepr {
            src_port: 49152,
            dst_port: 80,
            seq_number: TcpSeqNumber(0x01020304),
            ack_number: Some(TcpSeqNumber(0x0a0b0c0d)),
            control: TcpControl::PSH,
            window_len: 0x2000,
            urgent_pointer: None,
            options: TcpOptions::new(),
            payload,
        }
    }

    fn with_option_bytes(options: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let mut bytes = SEGMENT[..20].to_vec();
        bytes.extend_from_slice(options);
        TcpPacket::new_unchecked(&mut bytes[..]).set_header_len(20 + options.len());
        with_checksum(bytes)
    }

    #[test]
    fn deconstruct() {
        let bytes = segment();
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (49152, 80));
        assert_eq!(p.seq_number(), TcpSeqNumber(0x01020304));
        assert_eq!(p.ack_number(), TcpSeqNumber(0x0a0b0c0d));
        assert_eq!(p.header_len(), 20);
        assert!(p.ack() && p.psh());
        assert!(!p.syn() && !p.fin() && !p.rst() && !p.urg() && !p.ece() && !p.cwr() && !p.ns());
        assert_eq!(p.window_len(), 0x2000);
        assert_eq!(p.urgent_at(), 0);
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(p.segment_len(), 4);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(198, 18, 0, 3)));
    }

    #[test]
    fn parse_and_emit() {
        let bytes = segment();
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        let payload = [0xaa, 0xbb, 0xcc, 0xdd];
        assert_eq!(TcpRepr::parse(&p, SRC, DST).unwrap(), repr(&payload));
        let r = repr(&payload);
        assert_eq!(r.buffer_len(), 24);
        let mut out = vec![0xffu8; r.buffer_len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        assert_eq!(out, bytes);
    }

    #[test]
    fn syn_with_options() {
        let mut options = TcpOptions::new();
        options.push(TcpOption::MaxSegmentSize(1460)).unwrap();
        options.push(TcpOption::SackPermitted).unwrap();
        options
            .push(TcpOption::Timestamps { tsval: 1, tsecr: 0 })
            .unwrap();
        options.push_aligned(TcpOption::WindowScale(7)).unwrap();
        assert_eq!(options.as_bytes(), &SYN_OPTIONS);
        let syn = TcpRepr {
            ack_number: None,
            control: TcpControl::SYN,
            options,
            payload: &[],
            ..repr(&[])
        };
        assert_eq!(syn.header_len(), 40);
        assert_eq!(syn.segment_len(), 1);
        let mut out = vec![0u8; syn.buffer_len()];
        syn.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        assert_eq!(&out[20..], &SYN_OPTIONS);
        assert_eq!(&out[12..14], &[0xa0, 0x02]);
        let p = TcpPacket::new_checked(&out[..]).unwrap();
        let parsed = TcpRepr::parse(&p, SRC, DST).unwrap();
        assert_eq!(parsed, syn);
        assert_eq!(parsed.options.max_seg_size(), Some(1460));
        assert!(parsed.options.sack_permitted());
        assert_eq!(parsed.options.timestamps(), Some((1, 0)));
        assert_eq!(parsed.options.window_scale(), Some(7));
        assert_eq!(parsed.options.sack_blocks(), None);
    }

    #[test]
    fn sack_and_demux_options() {
        let blocks = [
            (TcpSeqNumber(100), TcpSeqNumber(200)),
            (TcpSeqNumber(300), TcpSeqNumber(400)),
        ];
        let mut options = TcpOptions::new();
        options
            .push_aligned(TcpOption::SackRange(SackBlocks::new(&blocks).unwrap()))
            .unwrap();
        options
            .push_aligned(TcpOption::DemuxAdvertise {
                seq: 3,
                handle: 0x0102,
                nonce: 0xdeadbeef,
            })
            .unwrap();
        assert_eq!(
            options.as_bytes(),
            &[
                0x01, 0x01, 0x05, 0x12, 0, 0, 0, 100, 0, 0, 0, 200, 0, 0, 1, 0x2c, 0, 0, 1,
                0x90, // SACK
                0x01, 0x01, 0xfd, 0x0e, 0x4d, 0x53, 0x01, 0x00, 0x00, 0x03, 0x01, 0x02, 0xde, 0xad,
                0xbe, 0xef, // advertise
            ]
        );
        let bytes = with_option_bytes(options.as_bytes());
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        let parsed = TcpRepr::parse(&p, SRC, DST).unwrap();
        assert_eq!(parsed.options.sack_blocks().unwrap().as_slice(), &blocks);
        assert_eq!(
            parsed.options.demux_advertise(),
            Some((3, 0x0102, 0xdeadbeef))
        );
        assert_eq!(parsed.options.demux_revoke(), None);

        let mut revoke = TcpOptions::new();
        revoke.push(TcpOption::DemuxRevoke { seq: 0x0405 }).unwrap();
        assert_eq!(
            revoke.as_bytes(),
            &[0xfd, 0x08, 0x4d, 0x53, 0x02, 0x00, 0x04, 0x05]
        );
        assert_eq!(revoke.demux_revoke(), Some(0x0405));
        // Four blocks is the most one option holds.
        let four = [(TcpSeqNumber(1), TcpSeqNumber(2)); 4];
        let mut o = TcpOptions::new();
        o.push(TcpOption::SackRange(SackBlocks::new(&four).unwrap()))
            .unwrap();
        assert_eq!(o.sack_blocks().unwrap().as_slice().len(), 4);
        assert!(SackBlocks::new(&[(TcpSeqNumber(1), TcpSeqNumber(2)); 5]).is_none());
        assert!(SackBlocks::new(&[]).is_none());
    }

    #[test]
    fn unknown_options_are_kept_raw() {
        // Another experiment (ExID 0x1234), an unknown demux subtype, and kind 30 (MPTCP).
        let raw = [
            0xfd, 0x06, 0x12, 0x34, 0xaa, 0xbb, 0xfd, 0x05, 0x4d, 0x53, 0x09, 0x1e, 0x03, 0x00,
            0x01, 0x00,
        ];
        let bytes = with_option_bytes(&raw);
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        let options: Vec<_> = p.options_iter().collect::<Result<_>>().unwrap();
        assert_eq!(
            options,
            [
                TcpOption::Unknown {
                    kind: 0xfd,
                    data: &[0x12, 0x34, 0xaa, 0xbb]
                },
                TcpOption::Unknown {
                    kind: 0xfd,
                    data: &[0x4d, 0x53, 0x09]
                },
                TcpOption::Unknown {
                    kind: 0x1e,
                    data: &[0x00]
                },
                TcpOption::NoOperation,
                TcpOption::EndOfList,
            ]
        );
        let parsed = TcpRepr::parse(&p, SRC, DST).unwrap();
        let mut out = vec![0u8; parsed.buffer_len()];
        parsed.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        assert_eq!(out, bytes);
        // Pushing an `Unknown` that would read back as a known option is refused.
        let mut o = TcpOptions::new();
        assert_eq!(
            o.push(TcpOption::Unknown {
                kind: 2,
                data: &[5, 0xb4]
            }),
            Err(Error::Malformed)
        );
        assert_eq!(
            o.push(TcpOption::Unknown {
                kind: 0xfd,
                data: &[0x4d, 0x53, 2, 0, 0, 1]
            }),
            Err(Error::Malformed)
        );
        assert!(o.is_empty());
    }

    #[test]
    fn malformed_options() {
        for options in [
            &[0x02, 0x00, 0x00, 0x00][..],            // length 0
            &[0x02, 0x01, 0x00, 0x00],                // length 1
            &[0x08, 0x0a, 0x00, 0x00],                // overruns the area
            &[0x01, 0x01, 0x01, 0x1e],                // no room for the length byte
            &[0x02, 0x03, 0x05, 0x01],                // MSS of length 3
            &[0x03, 0x04, 0x07, 0x00],                // window scale of length 4
            &[0x05, 0x04, 0x00, 0x00],                // SACK with no whole block
            &[0xfd, 0x08, 0x4d, 0x53, 0x01, 0, 0, 0], // advertise of length 8
            &[
                0xfd, 0x0e, 0x4d, 0x53, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ], // revoke of length 14
        ] {
            let bytes = with_option_bytes(options);
            let p = TcpPacket::new_checked(&bytes[..]).unwrap();
            assert_eq!(
                TcpRepr::parse(&p, SRC, DST),
                Err(Error::Malformed),
                "{options:?}"
            );
        }
        // Our ExID with no room for a subtype is some other use of it: kept raw.
        let bytes = with_option_bytes(&[0xfd, 0x04, 0x4d, 0x53]);
        let parsed =
            TcpRepr::parse(&TcpPacket::new_checked(&bytes[..]).unwrap(), SRC, DST).unwrap();
        assert_eq!(
            parsed.options.iter().next(),
            Some(Ok(TcpOption::Unknown {
                kind: 0xfd,
                data: &[0x4d, 0x53]
            }))
        );
        // Garbage after an end-of-list is padding.
        let bytes = with_option_bytes(&[0x01, 0x00, 0x02, 0x00]);
        let parsed =
            TcpRepr::parse(&TcpPacket::new_checked(&bytes[..]).unwrap(), SRC, DST).unwrap();
        assert_eq!(parsed.options.as_bytes(), &[0x01]);
    }

    #[test]
    fn demux_reserved_byte_is_ignored() {
        // Found by fuzzing: a non-zero reserved byte parses (ignored on receipt) and is sent
        // as zero.
        let raw = [
            0x01, 0x01, 0xfd, 0x0e, 0x4d, 0x53, 0x01, 0x03, 0x00, 0x00, 0x01, 0x02, 0xde, 0xad,
            0xbe, 0xef,
        ];
        let bytes = with_option_bytes(&raw);
        let parsed =
            TcpRepr::parse(&TcpPacket::new_checked(&bytes[..]).unwrap(), SRC, DST).unwrap();
        assert_eq!(
            parsed.options.demux_advertise(),
            Some((0, 0x0102, 0xdeadbeef))
        );
        let mut rebuilt = TcpOptions::new();
        for option in parsed.options.iter() {
            rebuilt.push(option.unwrap()).unwrap();
        }
        assert_eq!(rebuilt.as_bytes()[7], 0);
        assert!(rebuilt.iter().eq(parsed.options.iter()));
    }

    #[test]
    fn impossible_lengths() {
        let bytes = segment();
        for n in 0..HEADER_LEN {
            assert_eq!(
                TcpPacket::new_checked(&bytes[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut low = bytes.clone();
        low[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&low[..]).unwrap_err(),
            Error::Malformed
        );
        let mut high = bytes.clone();
        high[12] = 0x70; // 28 bytes of header in a 24-byte segment
        assert_eq!(
            TcpPacket::new_checked(&high[..]).unwrap_err(),
            Error::Malformed
        );
        assert_eq!(
            TcpRepr::parse(&TcpPacket::new_unchecked(&bytes[..10]), SRC, DST),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn bad_checksum() {
        let mut bytes = segment();
        bytes[22] ^= 0x40;
        let p = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p, SRC, DST), Err(Error::Checksum));
    }

    #[test]
    fn flags_round_trip() {
        let control = TcpControl {
            syn: true,
            fin: true,
            rst: true,
            psh: true,
            ece: true,
            cwr: true,
        };
        let r = TcpRepr {
            control,
            urgent_pointer: Some(3),
            ..repr(b"xyz")
        };
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        assert_eq!(&out[12..14], &[0x50, 0xff]);
        let p = TcpPacket::new_checked(&out[..]).unwrap();
        assert_eq!(p.urgent_at(), 3);
        assert_eq!(TcpRepr::parse(&p, SRC, DST).unwrap(), r);
        assert_eq!(r.segment_len(), 5);
        // ACK clear: the acknowledgment field is not represented.
        let r = TcpRepr {
            ack_number: None,
            control: TcpControl::RST,
            ..repr(&[])
        };
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..]), SRC, DST);
        assert_eq!(&out[8..12], &[0; 4]);
        assert_eq!(
            TcpRepr::parse(&TcpPacket::new_checked(&out[..]).unwrap(), SRC, DST).unwrap(),
            r
        );
    }

    #[test]
    fn option_capacity() {
        let mut o = TcpOptions::new();
        for _ in 0..4 {
            o.push(TcpOption::Timestamps { tsval: 1, tsecr: 2 })
                .unwrap();
        }
        assert_eq!(
            o.push(TcpOption::Timestamps { tsval: 1, tsecr: 2 }),
            Err(Error::Malformed)
        );
        assert_eq!(o.timestamps(), Some((1, 2)));
        let mut o = TcpOptions::new();
        o.push(TcpOption::Unknown {
            kind: 30,
            data: &[0; 30],
        })
        .unwrap();
        // 32 used: an aligned 10-byte option needs 2 NOPs → 44 > 40, refused without change.
        assert_eq!(
            o.push_aligned(TcpOption::Timestamps { tsval: 0, tsecr: 0 }),
            Err(Error::Malformed)
        );
        assert_eq!(o.as_bytes().len(), 32);
        assert_eq!(o.push(TcpOption::EndOfList), Err(Error::Malformed));
        o.push(TcpOption::NoOperation).unwrap();
        assert_eq!(o.as_bytes().len(), 33);
    }

    #[test]
    fn seq_numbers() {
        let a = TcpSeqNumber(u32::MAX - 1);
        let b = a + 4;
        assert_eq!(b, TcpSeqNumber(2));
        assert!(a < b);
        assert!(b > a, "reflexive counterpart");
        assert_eq!(b - a, 4);
        assert_eq!(a - b, -4);
        assert_eq!(b - 4, a);
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
        let mut c = a;
        c += 2;
        assert_eq!(c, TcpSeqNumber(0));
        assert!(TcpSeqNumber(0) > TcpSeqNumber(0x8000_0001));
        assert!(TcpSeqNumber(0) <= TcpSeqNumber(0));
        assert_eq!(TcpSeqNumber(7).to_string(), "7");
    }
}
