//! Classic BPF (cBPF) for packet channels: the instruction type (the kernel's `struct
//! sock_filter` layout), a builder that resolves labels to the relative jump offsets cBPF
//! needs, the filters msock attaches to its channels, and an interpreter in safe Rust.
//!
//! Contract:
//! - A [`BpfProgram`] is always *valid* in the sense of the kernel's `bpf_check_classic`: 1 to
//!   [`MAX_INSNS`] instructions, every jump lands inside the program, scratch-memory indexes
//!   are below 16, no division by a constant zero, and the last instruction is a `ret`. The
//!   builder enforces conditional-jump distances ≤ 255 (they are 8-bit fields).
//! - Filters see a frame from its Ethernet header, as an AF_PACKET `SOCK_RAW` socket runs them;
//!   the return value is the number of bytes to keep (0 = drop).
//! - [`BpfProgram::run`] interprets the program exactly as the kernel does for the opcodes
//!   defined here (an out-of-bounds load or a division by zero drops the frame; ancillary
//!   loads, which msock never emits, drop it too). It never panics, whatever the program or
//!   the frame. Tests use it to prove what the filters accept; the in-memory channel uses it to
//!   deliver frames exactly as the kernel would.
//!
//! The filters implement the receive-path design (`docs/notes/design.md`, "Receive path"; paper
//! §4.4: one receive filter per cached endpoint, and the netserver's filter excluding them).
#![forbid(unsafe_code)]

use core::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::EthernetAddress;

/// Largest program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// Number of scratch memory words (`BPF_MEMWORDS`).
pub const MEM_WORDS: usize = 16;

/// What an accepting filter returns: keep the whole frame.
pub const ACCEPT: u32 = u32::MAX;

/// What a rejecting filter returns.
pub const REJECT: u32 = 0;

/// Opcode fields (`linux/bpf_common.h`, `linux/filter.h`).
pub mod op {
    // Classes.
    pub const LD: u16 = 0x00;
    pub const LDX: u16 = 0x01;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU: u16 = 0x04;
    pub const JMP: u16 = 0x05;
    pub const RET: u16 = 0x06;
    pub const MISC: u16 = 0x07;
    // Load sizes.
    pub const W: u16 = 0x00;
    pub const H: u16 = 0x08;
    pub const B: u16 = 0x10;
    // Load modes.
    pub const IMM: u16 = 0x00;
    pub const ABS: u16 = 0x20;
    pub const IND: u16 = 0x40;
    pub const MEM: u16 = 0x60;
    pub const LEN: u16 = 0x80;
    pub const MSH: u16 = 0xa0;
    // ALU operations.
    pub const ADD: u16 = 0x00;
    pub const SUB: u16 = 0x10;
    pub const MUL: u16 = 0x20;
    pub const DIV: u16 = 0x30;
    pub const OR: u16 = 0x40;
    pub const AND: u16 = 0x50;
    pub const LSH: u16 = 0x60;
    pub const RSH: u16 = 0x70;
    pub const NEG: u16 = 0x80;
    pub const MOD: u16 = 0x90;
    pub const XOR: u16 = 0xa0;
    // Jumps.
    pub const JA: u16 = 0x00;
    pub const JEQ: u16 = 0x10;
    pub const JGT: u16 = 0x20;
    pub const JGE: u16 = 0x30;
    pub const JSET: u16 = 0x40;
    // Operand source.
    pub const K: u16 = 0x00;
    pub const X: u16 = 0x08;
    // Return value source (`BPF_RVAL`).
    pub const RET_A: u16 = 0x10;
    // MISC operations.
    pub const TAX: u16 = 0x00;
    pub const TXA: u16 = 0x80;
}

/// One instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub const fn new(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
        Insn { code, jt, jf, k }
    }
    fn class(&self) -> u16 {
        self.code & 0x07
    }
}

/// Why a program could not be built or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfError {
    /// No instruction at all.
    Empty,
    /// More than [`MAX_INSNS`] instructions.
    TooLong { len: usize },
    /// A conditional jump at `at` would need an offset over 255.
    JumpTooFar { at: usize },
    /// A jump at `at` goes backwards or past the end.
    BadJump { at: usize },
    /// A jump refers to a label never bound.
    UnboundLabel,
    /// The instruction at `at` is not one the kernel accepts.
    BadInstruction { at: usize },
    /// The last instruction is not a `ret`: execution could fall off the end.
    NoReturn,
}

impl fmt::Display for BpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BpfError::Empty => write!(f, "empty BPF program"),
            BpfError::TooLong { len } => {
                write!(f, "BPF program of {len} instructions (max {MAX_INSNS})")
            }
            BpfError::JumpTooFar { at } => write!(f, "BPF jump at {at} farther than 255"),
            BpfError::BadJump { at } => write!(f, "BPF jump at {at} out of the program"),
            BpfError::UnboundLabel => write!(f, "BPF label never bound"),
            BpfError::BadInstruction { at } => write!(f, "invalid BPF instruction at {at}"),
            BpfError::NoReturn => write!(f, "BPF program does not end with ret"),
        }
    }
}

impl std::error::Error for BpfError {}

impl From<BpfError> for std::io::Error {
    fn from(e: BpfError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// A validated classic-BPF program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BpfProgram {
    insns: Vec<Insn>,
}

impl BpfProgram {
    /// Validates `insns` as the kernel would (`bpf_check_classic`).
    pub fn new(insns: Vec<Insn>) -> Result<BpfProgram, BpfError> {
        validate(&insns)?;
        Ok(BpfProgram { insns })
    }

    /// `ret #ACCEPT`: every frame.
    pub fn accept_all() -> BpfProgram {
        BpfProgram {
            insns: vec![Insn::new(op::RET | op::K, 0, 0, ACCEPT)],
        }
    }

    /// `ret #0`: no frame.
    pub fn reject_all() -> BpfProgram {
        BpfProgram {
            insns: vec![Insn::new(op::RET | op::K, 0, 0, REJECT)],
        }
    }

    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Never true (a valid program has at least one instruction); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Does the filter accept `frame`? (`run(frame) != 0`).
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.run(frame) != 0
    }

    /// Runs the program over `frame` (starting at its Ethernet header) and returns the number
    /// of bytes to keep, like the kernel's classic-BPF interpreter. Never panics.
    pub fn run(&self, frame: &[u8]) -> u32 {
        run(&self.insns, frame)
    }
}

fn validate(insns: &[Insn]) -> Result<(), BpfError> {
    if insns.is_empty() {
        return Err(BpfError::Empty);
    }
    if insns.len() > MAX_INSNS {
        return Err(BpfError::TooLong { len: insns.len() });
    }
    let len = insns.len();
    for (pc, insn) in insns.iter().enumerate() {
        let bad = Err(BpfError::BadInstruction { at: pc });
        let code = insn.code;
        match insn.class() {
            op::LD => {
                let mode = code & 0xe0;
                let size = code & 0x18;
                match mode {
                    op::ABS | op::IND if matches!(size, op::W | op::H | op::B) => {}
                    op::IMM | op::LEN if size == op::W => {}
                    op::MEM if size == op::W && (insn.k as usize) < MEM_WORDS => {}
                    _ => return bad,
                }
            }
            op::LDX => match code {
                c if c == op::LDX | op::W | op::IMM || c == op::LDX | op::W | op::LEN => {}
                c if c == op::LDX | op::B | op::MSH => {}
                c if c == op::LDX | op::W | op::MEM && (insn.k as usize) < MEM_WORDS => {}
                _ => return bad,
            },
            op::ST | op::STX => {
                if code & !0x07 != 0 || insn.k as usize >= MEM_WORDS {
                    return bad;
                }
            }
            op::ALU => {
                let alu = code & 0xf0;
                let src = code & 0x08;
                if code & !0xff != 0 {
                    return bad;
                }
                match alu {
                    op::ADD
                    | op::SUB
                    | op::MUL
                    | op::OR
                    | op::AND
                    | op::LSH
                    | op::RSH
                    | op::XOR => {}
                    op::DIV | op::MOD if src == op::K && insn.k == 0 => return bad,
                    op::DIV | op::MOD => {}
                    op::NEG if src == op::K => {}
                    _ => return bad,
                }
            }
            op::JMP => {
                let jmp = code & 0xf0;
                if code & !0xff != 0 {
                    return bad;
                }
                match jmp {
                    op::JA => {
                        if code != op::JMP | op::JA {
                            return bad;
                        }
                        let target = (pc as u64) + 1 + u64::from(insn.k);
                        if target >= len as u64 {
                            return Err(BpfError::BadJump { at: pc });
                        }
                    }
                    op::JEQ | op::JGT | op::JGE | op::JSET => {
                        let t = pc + 1 + usize::from(insn.jt);
                        let f = pc + 1 + usize::from(insn.jf);
                        if t >= len || f >= len {
                            return Err(BpfError::BadJump { at: pc });
                        }
                    }
                    _ => return bad,
                }
            }
            op::RET => {
                if code != op::RET | op::K && code != op::RET | op::RET_A {
                    return bad;
                }
            }
            op::MISC => {
                if code != op::MISC | op::TAX && code != op::MISC | op::TXA {
                    return bad;
                }
            }
            _ => return bad,
        }
    }
    match insns.last() {
        Some(last) if last.class() == op::RET => Ok(()),
        _ => Err(BpfError::NoReturn),
    }
}

/// Loads `size` bytes (1, 2 or 4) big-endian at `offset`, `None` when out of bounds.
fn load(frame: &[u8], offset: u32, size: usize) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let bytes = frame.get(start..start.checked_add(size)?)?;
    Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
}

fn run(insns: &[Insn], frame: &[u8]) -> u32 {
    let mut a: u32 = 0;
    let mut x: u32 = 0;
    let mut mem = [0u32; MEM_WORDS];
    let mut pc: usize = 0;
    let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    // Every instruction moves pc forward, so this terminates within `insns.len()` steps.
    while let Some(insn) = insns.get(pc) {
        pc += 1;
        let k = insn.k;
        let code = insn.code;
        match insn.class() {
            op::LD | op::LDX => {
                let size = match code & 0x18 {
                    op::W => 4,
                    op::H => 2,
                    op::B => 1,
                    _ => return 0,
                };
                let value = match (insn.class(), code & 0xe0) {
                    (op::LD, op::ABS) => load(frame, k, size),
                    (op::LD, op::IND) => load(frame, x.wrapping_add(k), size),
                    (_, op::IMM) => Some(k),
                    (_, op::LEN) => Some(wire_len),
                    (_, op::MEM) => mem.get(k as usize).copied(),
                    (op::LDX, op::MSH) => load(frame, k, 1).map(|b| (b & 0x0f) << 2),
                    _ => None,
                };
                // An out-of-bounds packet load ends the program with 0, as in the kernel.
                let Some(value) = value else { return 0 };
                if insn.class() == op::LD {
                    a = value;
                } else {
                    x = value;
                }
            }
            op::ST | op::STX => {
                let value = if insn.class() == op::ST { a } else { x };
                match mem.get_mut(k as usize) {
                    Some(slot) => *slot = value,
                    None => return 0,
                }
            }
            op::ALU => {
                let operand = if code & op::X != 0 { x } else { k };
                a = match code & 0xf0 {
                    op::ADD => a.wrapping_add(operand),
                    op::SUB => a.wrapping_sub(operand),
                    op::MUL => a.wrapping_mul(operand),
                    op::DIV => match a.checked_div(operand) {
                        Some(v) => v,
                        None => return 0,
                    },
                    op::MOD => match a.checked_rem(operand) {
                        Some(v) => v,
                        None => return 0,
                    },
                    op::OR => a | operand,
                    op::AND => a & operand,
                    op::XOR => a ^ operand,
                    // Shifts by 32 or more give 0 in the kernel's interpreter on 64-bit hosts
                    // only by accident; msock never emits them, treat them as 0 consistently.
                    op::LSH => a.checked_shl(operand).unwrap_or(0),
                    op::RSH => a.checked_shr(operand).unwrap_or(0),
                    op::NEG => a.wrapping_neg(),
                    _ => return 0,
                };
            }
            op::JMP => {
                let operand = if code & op::X != 0 { x } else { k };
                let skip = match code & 0xf0 {
                    op::JA => match usize::try_from(k) {
                        Ok(skip) => skip,
                        Err(_) => return 0,
                    },
                    cond => {
                        let taken = match cond {
                            op::JEQ => a == operand,
                            op::JGT => a > operand,
                            op::JGE => a >= operand,
                            op::JSET => a & operand != 0,
                            _ => return 0,
                        };
                        usize::from(if taken { insn.jt } else { insn.jf })
                    }
                };
                pc = match pc.checked_add(skip) {
                    Some(pc) => pc,
                    None => return 0,
                };
            }
            op::RET => return if code & op::RET_A != 0 { a } else { k },
            op::MISC => {
                if code & 0xf8 == op::TXA {
                    a = x;
                } else {
                    x = a;
                }
            }
            _ => return 0,
        }
    }
    // Fell off the end (only possible for an unvalidated program): drop.
    0
}

/// A position in a program being built; bound once with [`Builder::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The next instruction (offset 0).
    Next,
    Label(Label),
}

impl From<Label> for Target {
    fn from(label: Label) -> Target {
        Target::Label(label)
    }
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Plain(Insn),
    Cond {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Always(Label),
}

/// Builds a program with symbolic labels; [`Builder::build`] resolves them to relative offsets
/// and validates the result.
#[derive(Debug, Default)]
pub struct Builder {
    code: Vec<Pending>,
    labels: Vec<Option<usize>>,
}

/// Load width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Word,
    Half,
    Byte,
}

impl Size {
    fn bits(self) -> u16 {
        match self {
            Size::Word => op::W,
            Size::Half => op::H,
            Size::Byte => op::B,
        }
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the next instruction emitted. Binding twice keeps the last position.
    pub fn bind(&mut self, label: Label) {
        if let Some(slot) = self.labels.get_mut(label.0) {
            *slot = Some(self.code.len());
        }
    }

    fn push(&mut self, insn: Insn) -> &mut Builder {
        self.code.push(Pending::Plain(insn));
        self
    }

    /// `A = frame[k..k+size]` (big-endian).
    pub fn ld_abs(&mut self, size: Size, k: u32) -> &mut Builder {
        self.push(Insn::new(op::LD | size.bits() | op::ABS, 0, 0, k))
    }

    /// `A = frame[X+k..X+k+size]`.
    pub fn ld_ind(&mut self, size: Size, k: u32) -> &mut Builder {
        self.push(Insn::new(op::LD | size.bits() | op::IND, 0, 0, k))
    }

    /// `X = 4 * (frame[k] & 0xf)` (an IPv4 header length).
    pub fn ldx_msh(&mut self, k: u32) -> &mut Builder {
        self.push(Insn::new(op::LDX | op::B | op::MSH, 0, 0, k))
    }

    pub fn ld_imm(&mut self, k: u32) -> &mut Builder {
        self.push(Insn::new(op::LD | op::W | op::IMM, 0, 0, k))
    }

    pub fn ld_len(&mut self) -> &mut Builder {
        self.push(Insn::new(op::LD | op::W | op::LEN, 0, 0, 0))
    }

    /// `A = A <alu> k` (`alu` one of the [`op`] ALU operations).
    pub fn alu_k(&mut self, alu: u16, k: u32) -> &mut Builder {
        self.push(Insn::new(op::ALU | (alu & 0xf0) | op::K, 0, 0, k))
    }

    pub fn ret(&mut self, k: u32) -> &mut Builder {
        self.push(Insn::new(op::RET | op::K, 0, 0, k))
    }

    pub fn ret_a(&mut self) -> &mut Builder {
        self.push(Insn::new(op::RET | op::RET_A, 0, 0, 0))
    }

    /// Conditional jump on `A <cond> k` (`cond` one of `op::JEQ`, `JGT`, `JGE`, `JSET`).
    pub fn jump(
        &mut self,
        cond: u16,
        k: u32,
        jt: impl Into<Target>,
        jf: impl Into<Target>,
    ) -> &mut Builder {
        let code = op::JMP | (cond & 0xf0) | op::K;
        self.code.push(Pending::Cond {
            code,
            k,
            jt: jt.into(),
            jf: jf.into(),
        });
        self
    }

    pub fn jeq(&mut self, k: u32, jt: impl Into<Target>, jf: impl Into<Target>) -> &mut Builder {
        self.jump(op::JEQ, k, jt, jf)
    }

    pub fn jset(&mut self, k: u32, jt: impl Into<Target>, jf: impl Into<Target>) -> &mut Builder {
        self.jump(op::JSET, k, jt, jf)
    }

    /// Unconditional jump (32-bit offset: any distance forward).
    pub fn ja(&mut self, to: Label) -> &mut Builder {
        self.code.push(Pending::Always(to));
        self
    }

    pub fn build(&self) -> Result<BpfProgram, BpfError> {
        if self.code.len() > MAX_INSNS {
            return Err(BpfError::TooLong {
                len: self.code.len(),
            });
        }
        let resolve = |at: usize, target: Target| -> Result<usize, BpfError> {
            let to = match target {
                Target::Next => return Ok(0),
                Target::Label(l) => self
                    .labels
                    .get(l.0)
                    .copied()
                    .flatten()
                    .ok_or(BpfError::UnboundLabel)?,
            };
            // cBPF only jumps forward: the offset is from the next instruction.
            to.checked_sub(at + 1).ok_or(BpfError::BadJump { at })
        };
        let mut insns = Vec::with_capacity(self.code.len());
        for (at, pending) in self.code.iter().enumerate() {
            let insn = match *pending {
                Pending::Plain(insn) => insn,
                Pending::Cond { code, k, jt, jf } => {
                    let far =
                        |off: usize| u8::try_from(off).map_err(|_| BpfError::JumpTooFar { at });
                    let jt = far(resolve(at, jt)?)?;
                    let jf = far(resolve(at, jf)?)?;
                    Insn::new(code, jt, jf, k)
                }
                Pending::Always(to) => {
                    let off = resolve(at, Target::Label(to))?;
                    let k = u32::try_from(off).map_err(|_| BpfError::JumpTooFar { at })?;
                    Insn::new(op::JMP | op::JA, 0, 0, k)
                }
            };
            insns.push(insn);
        }
        BpfProgram::new(insns)
    }
}

// Frame offsets (Ethernet II, then IPv4 at 14).
const ETHERTYPE: u32 = 12;
const ETHERTYPE_IPV4: u32 = 0x0800;
const ETHERTYPE_ARP: u32 = 0x0806;
const IP: u32 = 14;
const IP_FRAG: u32 = IP + 6;
const IP_PROTO: u32 = IP + 9;
const IP_SRC: u32 = IP + 12;
const IP_DST: u32 = IP + 16;
/// MF flag and fragment offset: set in any fragment.
const FRAG_MASK: u32 = 0x3fff;
const PROTO_TCP: u32 = 6;
const PROTO_UDP: u32 = 17;

/// The filter of a cached UDP endpoint: IPv4, destination `ip`, protocol UDP, not a fragment
/// (neither MF nor an offset), UDP destination port `port` (located with the IHL).
pub fn endpoint_udp(ip: Ipv4Addr, port: u16) -> BpfProgram {
    endpoint_udp_to(&[ip], port)
}

/// As [`endpoint_udp`] for a socket that receives datagrams sent to any of `addrs` (a
/// wildcard-bound socket also takes the subnet and limited broadcast, as on Linux). At most 16
/// addresses; more, or none, gives a filter that rejects everything.
pub fn endpoint_udp_to(addrs: &[Ipv4Addr], port: u16) -> BpfProgram {
    if addrs.is_empty() || addrs.len() > 16 {
        return BpfProgram::reject_all();
    }
    let mut b = Builder::new();
    let reject = b.label();
    let accept = b.label();
    let addressed = b.label();
    b.ld_abs(Size::Half, ETHERTYPE)
        .jeq(ETHERTYPE_IPV4, Target::Next, reject);
    b.ld_abs(Size::Word, IP_DST);
    for (i, addr) in addrs.iter().enumerate() {
        let miss = if i + 1 == addrs.len() {
            Target::Label(reject)
        } else {
            Target::Next
        };
        b.jeq(u32::from(*addr), addressed, miss);
    }
    b.bind(addressed);
    b.ld_abs(Size::Byte, IP_PROTO)
        .jeq(PROTO_UDP, Target::Next, reject);
    b.ld_abs(Size::Half, IP_FRAG)
        .jset(FRAG_MASK, reject, Target::Next);
    b.ldx_msh(IP);
    b.ld_ind(Size::Half, IP + 2)
        .jeq(u32::from(port), accept, reject);
    b.bind(accept);
    b.ret(ACCEPT);
    b.bind(reject);
    b.ret(REJECT);
    // Bounded shape (at most ~30 instructions, short jumps): building cannot fail.
    b.build().unwrap_or_else(|_| BpfProgram::reject_all())
}

/// The filter of a TCP connection (issue 3 onwards): IPv4 from `remote` to `local`, protocol
/// TCP, not a fragment, both ports matching (one 32-bit load of source and destination port).
pub fn endpoint_tcp(local: SocketAddrV4, remote: SocketAddrV4) -> BpfProgram {
    let mut b = Builder::new();
    let reject = b.label();
    let accept = b.label();
    b.ld_abs(Size::Half, ETHERTYPE)
        .jeq(ETHERTYPE_IPV4, Target::Next, reject);
    b.ld_abs(Size::Word, IP_DST)
        .jeq(u32::from(*local.ip()), Target::Next, reject);
    b.ld_abs(Size::Word, IP_SRC)
        .jeq(u32::from(*remote.ip()), Target::Next, reject);
    b.ld_abs(Size::Byte, IP_PROTO)
        .jeq(PROTO_TCP, Target::Next, reject);
    b.ld_abs(Size::Half, IP_FRAG)
        .jset(FRAG_MASK, reject, Target::Next);
    b.ldx_msh(IP);
    let ports = (u32::from(remote.port()) << 16) | u32::from(local.port());
    b.ld_ind(Size::Word, IP).jeq(ports, accept, reject);
    b.bind(accept);
    b.ret(ACCEPT);
    b.bind(reject);
    b.ret(REJECT);
    b.build().unwrap_or_else(|_| BpfProgram::reject_all())
}

/// Most UDP ports [`netserver`] can exclude within [`MAX_INSNS`]; beyond that the lowest ports
/// are excluded and the rest pass (harmless: the netserver still checks its endpoint table).
pub const MAX_EXCLUDED_PORTS: usize = 3900;

/// Ports compared per group before an unconditional jump (keeps conditional jumps ≤ 255).
const PORT_GROUP: usize = 200;

/// The netserver's filter: every ARP frame; IPv4 frames sent to `mac` (or broadcast) for `ip`,
/// except non-fragment UDP whose destination port is in `excluded_udp_ports` (those go to the
/// cached endpoints' own channels). Fragments, ICMP and every other protocol to `ip` pass.
pub fn netserver(ip: Ipv4Addr, mac: EthernetAddress, excluded_udp_ports: &[u16]) -> BpfProgram {
    netserver_excluding(ip, mac, excluded_udp_ports, &[])
}

/// [`netserver`], also excluding non-fragment TCP to the ports in `excluded_tcp_ports` (held by
/// processes on their own channels).
pub fn netserver_excluding(
    ip: Ipv4Addr,
    mac: EthernetAddress,
    excluded_udp_ports: &[u16],
    excluded_tcp_ports: &[u16],
) -> BpfProgram {
    // One instruction budget for both lists: TCP may take up to half, UDP the rest.
    let prepare = |list: &[u16], limit: usize| {
        let mut ports = list.to_vec();
        ports.sort_unstable();
        ports.dedup();
        ports.truncate(limit);
        ports
    };
    let tcp = prepare(excluded_tcp_ports, MAX_EXCLUDED_PORTS / 2);
    let udp = prepare(excluded_udp_ports, MAX_EXCLUDED_PORTS - tcp.len());

    let mut b = Builder::new();
    let reject = b.label();
    let accept = b.label();
    let ipv4 = b.label();
    let mac_ok = b.label();
    let mac_lo = b.label();
    let bcast = b.label();
    let not_udp = b.label();
    let udp_block = b.label();
    let tcp_block = b.label();
    let m = mac.0;
    let mac_hi = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
    let mac_lo16 = u32::from(u16::from_be_bytes([m[4], m[5]]));

    b.ld_abs(Size::Half, ETHERTYPE)
        .jeq(ETHERTYPE_ARP, accept, Target::Next);
    b.jeq(ETHERTYPE_IPV4, ipv4, reject);
    b.bind(ipv4);
    // Destination MAC: ours or broadcast (a promiscuous interface also shows other hosts'
    // frames; the kernel's IP layer drops those as PACKET_OTHERHOST, so do we).
    b.ld_abs(Size::Word, 0).jeq(mac_hi, mac_lo, bcast);
    b.bind(mac_lo);
    b.ld_abs(Size::Half, 4).jeq(mac_lo16, mac_ok, reject);
    b.bind(bcast);
    b.jeq(0xffff_ffff, Target::Next, reject);
    b.ld_abs(Size::Half, 4).jeq(0xffff, mac_ok, reject);
    b.bind(mac_ok);
    b.ld_abs(Size::Word, IP_DST)
        .jeq(u32::from(ip), Target::Next, reject);
    // Dispatch on the protocol with short conditional jumps to long unconditional ones (the
    // port lists can be thousands of instructions long).
    b.ld_abs(Size::Byte, IP_PROTO)
        .jeq(PROTO_UDP, Target::Next, not_udp);
    b.ja(udp_block);
    b.bind(not_udp);
    b.jeq(PROTO_TCP, Target::Next, accept);
    b.ja(tcp_block);
    b.bind(accept);
    b.ret(ACCEPT);
    b.bind(reject);
    b.ret(REJECT);
    for (label, ports) in [(udp_block, &udp), (tcp_block, &tcp)] {
        b.bind(label);
        if ports.is_empty() {
            b.ret(ACCEPT);
            continue;
        }
        let block_accept = b.label();
        let port_list = b.label();
        b.ld_abs(Size::Half, IP_FRAG)
            .jset(FRAG_MASK, block_accept, Target::Next);
        b.ldx_msh(IP);
        b.ld_ind(Size::Half, IP + 2);
        b.ja(port_list);
        b.bind(block_accept);
        b.ret(ACCEPT);
        b.bind(port_list);
        for group in ports.chunks(PORT_GROUP) {
            let group_reject = b.label();
            let next = b.label();
            for &port in group {
                b.jeq(u32::from(port), group_reject, Target::Next);
            }
            b.ja(next);
            b.bind(group_reject);
            b.ret(REJECT);
            b.bind(next);
        }
        b.ret(ACCEPT);
    }
    b.build().unwrap_or_else(|_| BpfProgram::accept_all())
}

/// A passive TCP endpoint's filter: non-fragment TCP to `local` from any remote.
pub fn endpoint_tcp_port(local: SocketAddrV4) -> BpfProgram {
    let mut b = Builder::new();
    let reject = b.label();
    let accept = b.label();
    b.ld_abs(Size::Half, ETHERTYPE)
        .jeq(ETHERTYPE_IPV4, Target::Next, reject);
    b.ld_abs(Size::Word, IP_DST)
        .jeq(u32::from(*local.ip()), Target::Next, reject);
    b.ld_abs(Size::Byte, IP_PROTO)
        .jeq(PROTO_TCP, Target::Next, reject);
    b.ld_abs(Size::Half, IP_FRAG)
        .jset(FRAG_MASK, reject, Target::Next);
    b.ldx_msh(IP);
    b.ld_ind(Size::Half, IP + 2)
        .jeq(u32::from(local.port()), accept, reject);
    b.bind(accept);
    b.ret(ACCEPT);
    b.bind(reject);
    b.ret(REJECT);
    b.build().unwrap_or_else(|_| BpfProgram::reject_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    /// An Ethernet + IPv4 (+ `options` words) frame with `l4` as payload.
    fn ipv4_frame(
        dst_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        frag: u16,
        options: usize,
        l4: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac.0);
        f.extend_from_slice(&PEER_MAC.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let ihl = 5 + options as u8;
        let total = (usize::from(ihl) * 4 + l4.len()) as u16;
        f.push(0x40 | ihl);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        // NOP options.
        f.extend(std::iter::repeat_n(1u8, options * 4));
        f.extend_from_slice(l4);
        f
    }

    fn udp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&src_port.to_be_bytes());
        u.extend_from_slice(&dst_port.to_be_bytes());
        u.extend_from_slice(&12u16.to_be_bytes());
        u.extend_from_slice(&[0, 0, b'h', b'i', b'!', b'!']);
        u
    }

    fn udp_to(port: u16) -> Vec<u8> {
        ipv4_frame(OUR_MAC, PEER_IP, OUR_IP, 17, 0x4000, 0, &udp(5000, port))
    }

    fn arp() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&EthernetAddress::BROADCAST.0);
        f.extend_from_slice(&PEER_MAC.0);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&PEER_MAC.0);
        f.extend_from_slice(&PEER_IP.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&OUR_IP.octets());
        f
    }

    #[test]
    fn insn_layout_matches_sock_filter() {
        assert_eq!(
            core::mem::size_of::<Insn>(),
            core::mem::size_of::<libc::sock_filter>()
        );
        assert_eq!(
            core::mem::align_of::<Insn>(),
            core::mem::align_of::<libc::sock_filter>()
        );
        assert_eq!(
            core::mem::offset_of!(Insn, k),
            core::mem::offset_of!(libc::sock_filter, k)
        );
        assert_eq!(
            core::mem::offset_of!(Insn, jf),
            core::mem::offset_of!(libc::sock_filter, jf)
        );
    }

    #[test]
    fn endpoint_udp_accepts_exactly_its_datagrams() {
        let f = endpoint_udp(OUR_IP, 7000);
        assert_eq!(f.run(&udp_to(7000)), ACCEPT);
        // With IP options the port moves; the IHL load finds it.
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            17,
            0,
            3,
            &udp(1, 7000)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            17,
            0,
            3,
            &udp(7000, 7001)
        )));
        assert!(!f.matches(&udp_to(7001)));
        assert!(!f.matches(&udp_to(7000 + 256)));
        // Other destination address, other protocol.
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            PEER_IP,
            17,
            0,
            0,
            &udp(1, 7000)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            0,
            0,
            &udp(1, 7000)
        )));
        // Fragments: first (MF), middle (MF + offset), last (offset only).
        for frag in [0x2000u16, 0x2001, 0x0001, 0x1fff, 0x6000] {
            assert!(
                !f.matches(&ipv4_frame(
                    OUR_MAC,
                    PEER_IP,
                    OUR_IP,
                    17,
                    frag,
                    0,
                    &udp(1, 7000)
                )),
                "frag {frag:#x}"
            );
        }
        // DF alone is not a fragment.
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            17,
            0x4000,
            0,
            &udp(1, 7000)
        )));
        assert!(!f.matches(&arp()));
        // Truncated anywhere: dropped (out-of-bounds load), never a panic.
        let full = udp_to(7000);
        for len in 0..38 {
            assert_eq!(f.run(&full[..len]), 0, "len {len}");
        }
        assert!(f.matches(&full[..38]));
    }

    #[test]
    fn wildcard_endpoint_also_takes_broadcasts() {
        let subnet = Ipv4Addr::new(198, 18, 0, 255);
        let f = endpoint_udp_to(&[OUR_IP, subnet, Ipv4Addr::BROADCAST], 7000);
        for dst in [OUR_IP, subnet, Ipv4Addr::BROADCAST] {
            let frame = ipv4_frame(OUR_MAC, PEER_IP, dst, 17, 0, 0, &udp(1, 7000));
            assert!(f.matches(&frame), "{dst}");
            let other_port = ipv4_frame(OUR_MAC, PEER_IP, dst, 17, 0, 0, &udp(1, 7001));
            assert!(!f.matches(&other_port), "{dst}");
            let fragment = ipv4_frame(OUR_MAC, PEER_IP, dst, 17, 0x2000, 0, &udp(1, 7000));
            assert!(!f.matches(&fragment), "{dst}");
        }
        let elsewhere = ipv4_frame(OUR_MAC, PEER_IP, PEER_IP, 17, 0, 0, &udp(1, 7000));
        assert!(!f.matches(&elsewhere));
        // A specific bind keeps the unicast-only filter.
        let unicast = endpoint_udp(OUR_IP, 7000);
        let bcast = ipv4_frame(OUR_MAC, PEER_IP, subnet, 17, 0, 0, &udp(1, 7000));
        assert!(!unicast.matches(&bcast));
        assert!(!endpoint_udp_to(&[], 7000).matches(&udp_to(7000)));
    }

    #[test]
    fn endpoint_tcp_matches_the_four_tuple() {
        let local = SocketAddrV4::new(OUR_IP, 80);
        let remote = SocketAddrV4::new(PEER_IP, 40000);
        let f = endpoint_tcp(local, remote);
        let seg = |sport: u16, dport: u16| {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t
        };
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            0x4000,
            0,
            &seg(40000, 80)
        )));
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            0,
            2,
            &seg(40000, 80)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            0,
            0,
            &seg(40001, 80)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            0,
            0,
            &seg(40000, 81)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            Ipv4Addr::new(198, 18, 0, 9),
            OUR_IP,
            6,
            0,
            0,
            &seg(40000, 80)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            17,
            0,
            0,
            &seg(40000, 80)
        )));
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            6,
            0x2000,
            0,
            &seg(40000, 80)
        )));
    }

    #[test]
    fn netserver_takes_everything_but_cached_ports() {
        let f = netserver(OUR_IP, OUR_MAC, &[7000, 7002]);
        assert!(f.matches(&arp()));
        assert!(!f.matches(&udp_to(7000)));
        assert!(!f.matches(&udp_to(7002)));
        assert!(f.matches(&udp_to(7001)));
        // Fragments of an excluded port still come here (reassembly is the netserver's).
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            17,
            0x2000,
            0,
            &udp(1, 7000)
        )));
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            17,
            0x0010,
            0,
            &udp(1, 7000)
        )));
        // ICMP and TCP to us; broadcast MAC.
        assert!(f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            OUR_IP,
            1,
            0,
            0,
            &[8, 0, 0, 0]
        )));
        assert!(f.matches(&ipv4_frame(OUR_MAC, PEER_IP, OUR_IP, 6, 0, 0, &[0; 20])));
        assert!(f.matches(&ipv4_frame(
            EthernetAddress::BROADCAST,
            PEER_IP,
            OUR_IP,
            1,
            0,
            0,
            &[8, 0, 0, 0]
        )));
        // Not ours: other IP, other host's MAC, other EtherType, truncated.
        assert!(!f.matches(&ipv4_frame(
            OUR_MAC,
            PEER_IP,
            PEER_IP,
            1,
            0,
            0,
            &[8, 0, 0, 0]
        )));
        assert!(!f.matches(&ipv4_frame(
            PEER_MAC,
            PEER_IP,
            OUR_IP,
            1,
            0,
            0,
            &[8, 0, 0, 0]
        )));
        let mut v6 = udp_to(7001);
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert!(!f.matches(&v6));
        assert!(!f.matches(&udp_to(7001)[..20]));
        // No exclusions: every UDP port.
        let open = netserver(OUR_IP, OUR_MAC, &[]);
        assert!(open.matches(&udp_to(7000)));
    }

    #[test]
    fn netserver_filter_scales_to_many_ports() {
        let ports: Vec<u16> = (1000..1000 + MAX_EXCLUDED_PORTS as u16).rev().collect();
        let f = netserver(OUR_IP, OUR_MAC, &ports);
        assert!(f.len() <= MAX_INSNS);
        for p in [
            1000u16,
            1199,
            1200,
            1201,
            1000 + MAX_EXCLUDED_PORTS as u16 - 1,
        ] {
            assert!(!f.matches(&udp_to(p)), "port {p}");
        }
        assert!(f.matches(&udp_to(999)));
        assert!(f.matches(&udp_to(1000 + MAX_EXCLUDED_PORTS as u16)));
        // Beyond the limit the highest ports pass rather than the build failing.
        let too_many: Vec<u16> = (1..=6000).collect();
        let f = netserver(OUR_IP, OUR_MAC, &too_many);
        assert!(!f.matches(&udp_to(1)));
        assert!(f.matches(&udp_to(6000)));
    }

    #[test]
    fn builder_checks_jumps_and_length() {
        let mut b = Builder::new();
        let far = b.label();
        b.ld_abs(Size::Byte, 0).jeq(1, far, Target::Next);
        for _ in 0..300 {
            b.ld_imm(0);
        }
        b.bind(far);
        b.ret(ACCEPT);
        assert_eq!(b.build(), Err(BpfError::JumpTooFar { at: 1 }));

        let mut b = Builder::new();
        let l = b.label();
        b.ja(l).ret(0);
        assert_eq!(b.build(), Err(BpfError::UnboundLabel));

        let mut b = Builder::new();
        let back = b.label();
        b.bind(back);
        b.ld_imm(0).jeq(0, back, Target::Next).ret(0);
        assert_eq!(b.build(), Err(BpfError::BadJump { at: 1 }));

        let mut b = Builder::new();
        for _ in 0..MAX_INSNS {
            b.ld_imm(0);
        }
        b.ret(0);
        assert_eq!(b.build(), Err(BpfError::TooLong { len: MAX_INSNS + 1 }));
    }

    #[test]
    fn validation_rejects_what_the_kernel_rejects() {
        let ret = Insn::new(op::RET | op::K, 0, 0, 0);
        assert_eq!(BpfProgram::new(vec![]), Err(BpfError::Empty));
        assert_eq!(
            BpfProgram::new(vec![Insn::new(op::LD | op::W | op::IMM, 0, 0, 0)]),
            Err(BpfError::NoReturn)
        );
        assert_eq!(
            BpfProgram::new(vec![Insn::new(op::JMP | op::JEQ, 5, 0, 0), ret]),
            Err(BpfError::BadJump { at: 0 })
        );
        assert_eq!(
            BpfProgram::new(vec![Insn::new(op::JMP | op::JA, 0, 0, 1), ret]),
            Err(BpfError::BadJump { at: 0 })
        );
        assert_eq!(
            BpfProgram::new(vec![Insn::new(op::ALU | op::DIV | op::K, 0, 0, 0), ret]),
            Err(BpfError::BadInstruction { at: 0 })
        );
        assert_eq!(
            BpfProgram::new(vec![Insn::new(op::LD | op::W | op::MEM, 0, 0, 16), ret]),
            Err(BpfError::BadInstruction { at: 0 })
        );
        assert_eq!(
            BpfProgram::new(vec![Insn::new(0xffff, 0, 0, 0), ret]),
            Err(BpfError::BadInstruction { at: 0 })
        );
    }

    #[test]
    fn interpreter_semantics() {
        let prog = |insns: Vec<Insn>| BpfProgram::new(insns).expect("valid");
        let frame = [0x12u8, 0x34, 0x56, 0x78, 0x9a];
        // Loads are big-endian; ret A returns the accumulator.
        let p = prog(vec![
            Insn::new(op::LD | op::W | op::ABS, 0, 0, 1),
            Insn::new(op::RET | op::RET_A, 0, 0, 0),
        ]);
        assert_eq!(p.run(&frame), 0x3456_789a);
        // Out of bounds ends with 0 even though the next insn would return 7.
        let p = prog(vec![
            Insn::new(op::LD | op::W | op::ABS, 0, 0, 2),
            Insn::new(op::RET | op::K, 0, 0, 7),
        ]);
        assert_eq!(p.run(&frame), 0);
        // msh, indirect, scratch memory, ALU, TAX/TXA, len, division by X = 0.
        let p = prog(vec![
            Insn::new(op::LDX | op::B | op::MSH, 0, 0, 4), // X = 4 * (0x9a & 0xf) = 40
            Insn::new(op::MISC | op::TXA, 0, 0, 0),        // A = 40
            Insn::new(op::ALU | op::ADD | op::K, 0, 0, 2), // 42
            Insn::new(op::ST, 0, 0, 3),
            Insn::new(op::LD | op::W | op::LEN, 0, 0, 0), // 5
            Insn::new(op::LDX | op::W | op::MEM, 0, 0, 3), // X = 42
            Insn::new(op::ALU | op::ADD | op::X, 0, 0, 0), // 47
            Insn::new(op::RET | op::RET_A, 0, 0, 0),
        ]);
        assert_eq!(p.run(&frame), 47);
        let p = prog(vec![
            Insn::new(op::LDX | op::W | op::IMM, 0, 0, 0),
            Insn::new(op::ALU | op::DIV | op::X, 0, 0, 0),
            Insn::new(op::RET | op::K, 0, 0, 9),
        ]);
        assert_eq!(p.run(&frame), 0);
        // jgt / jset / ja.
        let p = prog(vec![
            Insn::new(op::LD | op::B | op::ABS, 0, 0, 0),     // 0x12
            Insn::new(op::JMP | op::JGT | op::K, 0, 3, 0x11), // taken
            Insn::new(op::JMP | op::JSET | op::K, 0, 1, 0x02), // 0x12 & 2 != 0: taken
            Insn::new(op::JMP | op::JA, 0, 0, 1),
            Insn::new(op::RET | op::K, 0, 0, 1),
            Insn::new(op::RET | op::K, 0, 0, 2),
        ]);
        assert_eq!(p.run(&frame), 2);
    }
}
