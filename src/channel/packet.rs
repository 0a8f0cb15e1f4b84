//! `PacketChannel`: the AF_PACKET implementation of [`Channel`] (paper §4.4, §7;
//! `docs/notes/design.md`, "Receive path" and "Send path").
//!
//! One `SOCK_RAW` packet socket bound to one interface, with a classic-BPF filter so the
//! channel sees only the frames it owns and PACKET_MMAP rings:
//! - receive: a TPACKET_V2 frame ring (the kernel wakes a poller per frame: endpoint channels,
//!   where latency matters) or a TPACKET_V3 block ring (a wake-up per retired block, full or
//!   timed out: the netserver, where batching matters). Frames are handed out zero-copy and the
//!   slot (V2) or block (V3) returned to the kernel after the callback;
//! - send: a TX ring (frames written into `TP_STATUS_AVAILABLE` slots, marked
//!   `TP_STATUS_SEND_REQUEST`, one `send(fd, NULL, 0, MSG_DONTWAIT)` per batch) or, with
//!   `tx_frames == 0`, a batch buffer handed over with one `sendmmsg`.
//!
//! Setup order ([`PacketChannel::create_fd`]): `socket(AF_PACKET, SOCK_RAW, 0)` (protocol 0:
//! nothing is received yet), SO_ATTACH_FILTER, SO_LOCK_FILTER if asked, PACKET_IGNORE_OUTGOING,
//! PACKET_VERSION, PACKET_LOSS (TX ring only: a malformed frame is skipped instead of stalling
//! the ring), PACKET_RX_RING, PACKET_TX_RING, PACKET_QDISC_BYPASS = 0, then `bind` with
//! ETH_P_ALL, so no frame ever reaches the socket unfiltered. With TPACKET_V3 the TX ring is a
//! frame ring of `tpacket3_hdr` slots (supported since Linux 4.11; verified on 6.18 by the
//! tests below). The netserver creates endpoint sockets and passes them over SCM_RIGHTS; the
//! client adopts them with [`PacketChannel::from_fd`], which only maps the existing rings and
//! needs no capability (tested by a thread that dropped every capability).
//!
//! This file is the unsafe shell around the rings: every `unsafe` block states why it holds.
//! Ring status words are shared with the kernel and accessed as atomics (acquire on read,
//! release on hand-back); every offset read from a ring is bounds-checked before use.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::mem::{ManuallyDrop, offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::closer::{self, Mapping};
use super::{BpfProgram, Channel, ChannelStats, check_frame_len};
use crate::control::RingSpec;

/// `TPACKET_V2` / `TPACKET_V3` (enum `tpacket_versions` in `linux/if_packet.h`).
const TPACKET_V2: libc::c_int = 1;
const TPACKET_V3: libc::c_int = 2;

/// Receive ring layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingVersion {
    /// Frame ring, a wake-up per frame.
    V2,
    /// Block ring, a wake-up per retired block.
    V3,
}

impl RingVersion {
    fn number(self) -> u8 {
        match self {
            RingVersion::V2 => 2,
            RingVersion::V3 => 3,
        }
    }
    fn sockopt(self) -> libc::c_int {
        match self {
            RingVersion::V2 => TPACKET_V2,
            RingVersion::V3 => TPACKET_V3,
        }
    }
    /// Offset of frame data in a TX slot (`tp_hdrlen - sizeof(sockaddr_ll)` in the kernel).
    fn tx_data_offset(self) -> usize {
        match self {
            RingVersion::V2 => libc::TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>(),
            RingVersion::V3 => libc::TPACKET3_HDRLEN - size_of::<libc::sockaddr_ll>(),
        }
    }
    /// Smallest frame slot: header plus an Ethernet header.
    fn min_frame_size(self) -> usize {
        match self {
            RingVersion::V2 => libc::TPACKET2_HDRLEN,
            RingVersion::V3 => libc::TPACKET3_HDRLEN,
        }
        .next_multiple_of(libc::TPACKET_ALIGNMENT)
            + super::MIN_FRAME_LEN.next_multiple_of(libc::TPACKET_ALIGNMENT)
    }
}

/// Geometry of a channel's rings. The receive ring is `block_count` blocks of `block_size`
/// bytes, cut into `frame_size` slots for V2; the TX ring (if `tx_frames > 0`) uses the same
/// block and frame sizes, `tx_frames / (block_size / frame_size)` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RingConfig {
    pub version: RingVersion,
    /// Bytes per block: a multiple of the page size.
    pub block_size: u32,
    pub block_count: u32,
    /// Bytes per frame slot (V2 receive, and TX): a multiple of 16 that divides nothing in
    /// particular, but `block_size / frame_size` slots fit in a block.
    pub frame_size: u32,
    /// TX ring slots (a multiple of `block_size / frame_size`); 0 = send with `sendmmsg`.
    pub tx_frames: u32,
    /// V3 only: how long a partly filled block waits before the kernel retires it (ms; the
    /// kernel rounds up to a jiffy). 0 lets the kernel choose from the link speed.
    pub retire_timeout_ms: u32,
}

/// TX ring slots when one is asked for (see [`RingConfig::with_tx_ring`]).
pub const TX_RING_FRAMES: u32 = 256;

/// TX slots in the preset configurations: 0, i.e. `sendmmsg`. Measured with
/// `cargo bench --bench channel` on veth (kernel 6.18, 2 shared cores, medians of 3 runs, three
/// runs): TX ring 606–684 kframes/s vs sendmmsg 635–732 at 64 B, and 436–626 vs 458–736 at
/// 1500 B. `sendmmsg` was as fast or faster in 5 of 6 comparisons, needs no TX ring memory
/// (512 KiB per endpoint) and never waits on asynchronous slot release, so it is the default.
pub const DEFAULT_TX_FRAMES: u32 = 0;

impl RingConfig {
    /// An endpoint channel (one cached socket): 256 receive slots of 2 KiB.
    pub fn endpoint(version: RingVersion) -> RingConfig {
        match version {
            RingVersion::V2 => RingConfig {
                version,
                block_size: 32 * 1024,
                block_count: 16,
                frame_size: 2048,
                tx_frames: DEFAULT_TX_FRAMES,
                retire_timeout_ms: 0,
            },
            RingVersion::V3 => RingConfig {
                version,
                block_size: 64 * 1024,
                block_count: 8,
                frame_size: 2048,
                tx_frames: DEFAULT_TX_FRAMES,
                retire_timeout_ms: 1,
            },
        }
    }

    /// The netserver's channel: a V2 frame ring of 2048 slots of 2 KiB (4 MiB), so a SYN or
    /// a handshake ACK wakes the netserver at once. (A V3 block ring, [`RingConfig::netserver_v3`],
    /// wakes it only when a block retires: up to a jiffy, 4 ms at HZ=250, per frame of a
    /// handshake.) See [`RingConfig::fit_mtu`] for links whose frames exceed a slot.
    pub fn netserver() -> RingConfig {
        RingConfig {
            version: RingVersion::V2,
            block_size: 64 * 1024,
            block_count: 64,
            frame_size: 2048,
            tx_frames: DEFAULT_TX_FRAMES,
            retire_timeout_ms: 0,
        }
    }

    /// The netserver's channel as a 2 MiB V3 block ring retiring blocks after 1 ms (one
    /// jiffy): fewer wake-ups under load, a jiffy of latency when idle.
    pub fn netserver_v3() -> RingConfig {
        RingConfig {
            version: RingVersion::V3,
            block_size: 256 * 1024,
            block_count: 8,
            frame_size: 2048,
            tx_frames: DEFAULT_TX_FRAMES,
            retire_timeout_ms: 1,
        }
    }

    /// `self` with V2 slots (and TX slots) large enough for a frame carrying `mtu` bytes of
    /// IP (the kernel puts the network header at `TPACKET_ALIGN(TPACKET2_HDRLEN + 16)`, plus a
    /// VLAN tag's room); slots grow to a power of two and blocks to hold at least one. V3
    /// receive blocks hold any frame up to their size, so V3 is returned unchanged.
    pub fn fit_mtu(self, mtu: usize) -> RingConfig {
        if self.version != RingVersion::V2 {
            return self;
        }
        let net_offset = (libc::TPACKET2_HDRLEN + 16).next_multiple_of(libc::TPACKET_ALIGNMENT);
        let needed = net_offset + mtu + 4;
        if needed <= self.frame_size as usize {
            return self;
        }
        let Ok(frame) = u32::try_from(needed.next_power_of_two()) else {
            return self;
        };
        let total = u64::from(self.block_size) * u64::from(self.block_count);
        let block = self.block_size.max(frame);
        let fpb = block / frame;
        RingConfig {
            frame_size: frame,
            block_size: block,
            block_count: u32::try_from((total / u64::from(block)).max(1)).unwrap_or(1),
            tx_frames: self.tx_frames.div_ceil(fpb) * fpb,
            ..self
        }
    }

    /// `self` with a TX ring of [`TX_RING_FRAMES`] slots instead of `sendmmsg`.
    pub fn with_tx_ring(self) -> RingConfig {
        RingConfig {
            tx_frames: TX_RING_FRAMES,
            ..self
        }
    }

    /// `self` with the receive ring version taken from `MSOCK_RX_RING` (`v2` or `v3`) when set.
    pub fn with_env_override(self) -> RingConfig {
        match std::env::var("MSOCK_RX_RING").as_deref() {
            Ok("v2") => RingConfig {
                version: RingVersion::V2,
                ..self
            },
            Ok("v3") => RingConfig {
                version: RingVersion::V3,
                retire_timeout_ms: self.retire_timeout_ms.max(1),
                ..self
            },
            _ => self,
        }
    }

    /// The geometry as the control protocol carries it.
    pub fn spec(&self) -> RingSpec {
        RingSpec {
            version: self.version.number(),
            block_size: self.block_size,
            block_count: self.block_count,
            frame_size: self.frame_size,
            tx_frames: self.tx_frames,
        }
    }

    fn frames_per_block(&self) -> u32 {
        self.block_size / self.frame_size.max(1)
    }

    pub fn rx_frames(&self) -> u32 {
        self.frames_per_block() * self.block_count
    }

    fn tx_blocks(&self) -> u32 {
        self.tx_frames / self.frames_per_block().max(1)
    }

    fn rx_len(&self) -> usize {
        self.block_size as usize * self.block_count as usize
    }

    fn tx_len(&self) -> usize {
        self.block_size as usize * self.tx_blocks() as usize
    }

    /// Checks the geometry as the kernel will (and a little more: at most 1 GiB mapped).
    pub fn validate(&self) -> io::Result<()> {
        let bad = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ring config: {what}"),
            ))
        };
        let page = page_size();
        let block = self.block_size as usize;
        if block == 0 || !block.is_multiple_of(page) {
            return bad("block_size must be a non-zero multiple of the page size");
        }
        if self.block_count == 0 {
            return bad("block_count must be non-zero");
        }
        let frame = self.frame_size as usize;
        if frame < self.version.min_frame_size()
            || !frame.is_multiple_of(libc::TPACKET_ALIGNMENT)
            || frame > block
        {
            return bad(
                "frame_size must be a multiple of 16, at least a header, at most block_size",
            );
        }
        let fpb = self.frames_per_block();
        if self.rx_frames() / fpb != self.block_count || !self.tx_frames.is_multiple_of(fpb) {
            return bad("tx_frames must be a multiple of the frames per block");
        }
        match self.rx_len().checked_add(self.tx_len()) {
            Some(total) if total <= 1 << 30 => Ok(()),
            _ => bad("rings larger than 1 GiB"),
        }
    }
}

impl From<RingConfig> for RingSpec {
    fn from(config: RingConfig) -> RingSpec {
        config.spec()
    }
}

impl TryFrom<RingSpec> for RingConfig {
    type Error = io::Error;
    /// The retire timeout is not part of the spec (it only matters when creating the ring):
    /// it comes back as 0.
    fn try_from(spec: RingSpec) -> io::Result<RingConfig> {
        let version = match spec.version {
            2 => RingVersion::V2,
            3 => RingVersion::V3,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "ring spec: unknown TPACKET version",
                ));
            }
        };
        let config = RingConfig {
            version,
            block_size: spec.block_size,
            block_count: spec.block_count,
            frame_size: spec.frame_size,
            tx_frames: spec.tx_frames,
            retire_timeout_ms: 0,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The interface a channel binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface<'a> {
    Name(&'a str),
    Index(u32),
}

impl<'a> From<&'a str> for Interface<'a> {
    fn from(name: &'a str) -> Interface<'a> {
        Interface::Name(name)
    }
}

impl<'a> From<&'a String> for Interface<'a> {
    fn from(name: &'a String) -> Interface<'a> {
        Interface::Name(name)
    }
}

impl From<u32> for Interface<'_> {
    fn from(index: u32) -> Interface<'static> {
        Interface::Index(index)
    }
}

impl Interface<'_> {
    fn index(self) -> io::Result<u32> {
        match self {
            Interface::Index(0) => Err(io::Error::from_raw_os_error(libc::ENODEV)),
            Interface::Index(i) => Ok(i),
            Interface::Name(name) => {
                let c =
                    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
                // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
                let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
                if index == 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(index)
                }
            }
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsockopt` of a plain-old-data value.
fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to `size_of::<T>()` initialized bytes that outlive the call; the
    // kernel only reads them.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    cvt(ret)?;
    Ok(value)
}

fn attach_filter(fd: BorrowedFd<'_>, filter: &BpfProgram) -> io::Result<()> {
    let insns = filter.insns();
    let prog = libc::sock_fprog {
        // A BpfProgram holds at most 4096 instructions.
        len: u16::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        // `Insn` is `#[repr(C)]` with the layout of `sock_filter` (tested in bpf.rs); the
        // kernel copies the program and never writes through this pointer.
        filter: insns.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

/// `tpacket_req3` for the RX ring (V3) or any V3 TX ring; V2 uses its `tpacket_req` prefix.
fn ring_request(config: &RingConfig, tx: bool) -> libc::tpacket_req3 {
    let blocks = if tx {
        config.tx_blocks()
    } else {
        config.block_count
    };
    libc::tpacket_req3 {
        tp_block_size: config.block_size,
        tp_block_nr: blocks,
        tp_frame_size: config.frame_size,
        tp_frame_nr: config.frames_per_block() * blocks,
        // The kernel refuses a V3 TX ring with any of these set.
        tp_retire_blk_tov: if tx { 0 } else { config.retire_timeout_ms },
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    }
}

fn set_ring(fd: BorrowedFd<'_>, config: &RingConfig, tx: bool) -> io::Result<()> {
    let name = if tx {
        libc::PACKET_TX_RING
    } else {
        libc::PACKET_RX_RING
    };
    let req3 = ring_request(config, tx);
    match config.version {
        RingVersion::V2 => {
            let req = libc::tpacket_req {
                tp_block_size: req3.tp_block_size,
                tp_block_nr: req3.tp_block_nr,
                tp_frame_size: req3.tp_frame_size,
                tp_frame_nr: req3.tp_frame_nr,
            };
            setsockopt(fd, libc::SOL_PACKET, name, &req)
        }
        RingVersion::V3 => setsockopt(fd, libc::SOL_PACKET, name, &req3),
    }
}

/// The interface's MTU, if it can be learnt (it bounds what the kernel will send).
fn interface_mtu(fd: BorrowedFd<'_>, ifindex: u32) -> Option<usize> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname requires.
    let ok = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if ok.is_null() {
        return None;
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name = name;
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_mtu within `req`, which is valid for
    // the call.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFMTU,
            &mut req as *mut libc::ifreq,
        )
    };
    if ret < 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU succeeded, so the union holds the MTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).ok()
}

/// The interface index a packet socket is bound to.
fn bound_ifindex(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `addr` is writable for `len` bytes.
    let ret = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    };
    cvt(ret)?;
    if i32::from(addr.sll_family) != libc::AF_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an AF_PACKET socket",
        ));
    }
    u32::try_from(addr.sll_ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
}

/// The receive side's position: a V2 frame index, or a V3 block index and the packet cursor
/// inside a block that was only partly consumed.
#[derive(Debug, Clone, Copy)]
struct RxCursor {
    /// V2: next frame; V3: current block.
    head: usize,
    /// V3: packets left in the current block and the offset of the next one.
    in_block: Option<(u32, usize)>,
}

/// What the channel sends through.
enum Tx {
    Ring {
        base: usize,
        frames: usize,
        head: usize,
        pending: usize,
        pending_bytes: u64,
    },
    Batch(Batch),
}

/// Frames queued for one `sendmmsg`.
struct Batch {
    buf: Vec<u8>,
    lens: Vec<usize>,
    slot: usize,
}

/// Frames per `sendmmsg` batch.
const BATCH_SLOTS: usize = 64;

/// The packet socket and its ring mapping, shared by the channel and its [`ChannelWaker`]s:
/// released (unmapped, then closed, by the closer) when the last of them is dropped.
struct Socket {
    /// Taken out only by `Drop` (handed to the closer with the mapping).
    fd: ManuallyDrop<OwnedFd>,
    /// The mapping's address and length (only the channel reads or writes through it).
    map: usize,
    map_len: usize,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: `fd` is taken out exactly once, here, and not used after.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        // SAFETY: `map`/`map_len` are the mapping made in `PacketChannel::map`. The channel,
        // the only user of the memory, holds an `Arc` to this value, so it is gone by now;
        // wakers never touch the mapping. The closer unmaps it exactly once.
        let map = unsafe { Mapping::new(self.map as *mut u8, self.map_len) };
        // Unmapping and closing wait for RCU grace periods in the kernel: off this thread.
        closer::release_later(fd, map);
    }
}

/// A handle on a channel's descriptor for a thread that sleeps in `poll` on it without the
/// channel itself (a blocked caller, with the socket's lock released): the descriptor number
/// stays open, and cannot be reused for another file, until the last handle is dropped, even
/// if the channel is dropped meanwhile. The number is the channel's own (no `dup`): an epoll
/// registration of the channel can be changed through it. Cloning costs no system call.
#[derive(Clone)]
pub struct ChannelWaker {
    sock: Arc<Socket>,
}

impl ChannelWaker {
    /// The channel's descriptor number.
    pub fn raw_fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }
}

impl AsFd for ChannelWaker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.fd.as_fd()
    }
}

impl AsRawFd for ChannelWaker {
    fn as_raw_fd(&self) -> RawFd {
        self.raw_fd()
    }
}

impl std::fmt::Debug for ChannelWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelWaker(fd {})", self.raw_fd())
    }
}

/// An AF_PACKET channel with mmap rings. See the module documentation.
pub struct PacketChannel {
    sock: Arc<Socket>,
    map: *mut u8,
    map_len: usize,
    config: RingConfig,
    rx: RxCursor,
    tx: Tx,
    max_frame: usize,
    stats: ChannelStats,
    /// Kernel drops read so far (PACKET_STATISTICS resets the kernel's counters on read).
    kernel_drops: Cell<u64>,
    /// Another process maps this ring writable (a channel taken over from a client): frames
    /// are copied out before anyone parses them.
    peer_writable: bool,
    /// For frames the kernel flags TP_STATUS_COPY (only with PACKET_COPY_THRESH, which msock
    /// never sets; a passed fd might have it).
    scratch: Vec<u8>,
}

// SAFETY: the mapping is read and written through this value alone (the shared `Socket` and
// its wakers only release it once this value is gone), the kernel side is synchronised
// through the atomic status words, and nothing is tied to a thread.
unsafe impl Send for PacketChannel {}

impl PacketChannel {
    /// Creates, configures and binds a packet socket (see the module documentation for the
    /// order) without mapping it: the netserver passes this fd to a client, which maps it with
    /// [`PacketChannel::from_fd`]. Needs CAP_NET_RAW.
    pub fn create_fd<'a>(
        iface: impl Into<Interface<'a>>,
        config: &RingConfig,
        filter: &BpfProgram,
        lock_filter: bool,
    ) -> io::Result<OwnedFd> {
        config.validate()?;
        let ifindex = iface.into().index()?;
        let ifindex = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        // SAFETY: plain syscall; the returned descriptor is checked and owned right below.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let b = fd.as_fd();
        attach_filter(b, filter)?;
        if lock_filter {
            setsockopt_int(b, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1)?;
        }
        setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
        setsockopt_int(
            b,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            config.version.sockopt(),
        )?;
        if config.tx_frames > 0 {
            setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_LOSS, 1)?;
        }
        set_ring(b, config, false)?;
        if config.tx_frames > 0 {
            set_ring(b, config, true)?;
        }
        setsockopt_int(b, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 0)?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll of the length given.
        cvt(unsafe {
            libc::bind(
                b.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(fd)
    }

    /// Gives a channel made by [`PacketChannel::create_fd`] with an unlocked filter (a
    /// `reject_all` one while it waited in a pool) its real `filter`, then locks it if asked.
    /// Frames match the new filter from then on; none reached the ring before.
    pub fn arm_fd(fd: BorrowedFd<'_>, filter: &BpfProgram, lock_filter: bool) -> io::Result<()> {
        attach_filter(fd, filter)?;
        if lock_filter {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1)?;
        }
        Ok(())
    }

    /// Opens a channel on `iface`: [`PacketChannel::create_fd`] then map the rings.
    pub fn open<'a>(
        iface: impl Into<Interface<'a>>,
        config: &RingConfig,
        filter: &BpfProgram,
        lock_filter: bool,
    ) -> io::Result<PacketChannel> {
        let fd = PacketChannel::create_fd(iface, config, filter, lock_filter)?;
        PacketChannel::map(fd, *config)
    }

    /// Adopts a packet socket configured elsewhere (passed over SCM_RIGHTS) with rings as
    /// `spec` describes: checks it is an AF_PACKET socket of that TPACKET version, makes it
    /// non-blocking and maps the rings (the kernel refuses a mapping whose size differs from
    /// the rings'). Needs no capability.
    /// A descriptor refused is closed in the background ([`closer::close_later`]): it may be
    /// a packet socket whose close waits for the kernel.
    pub fn from_fd(fd: OwnedFd, spec: RingSpec) -> io::Result<PacketChannel> {
        match PacketChannel::check_adoptable(fd.as_fd(), spec) {
            Ok(config) => PacketChannel::map(fd, config),
            Err(e) => {
                closer::close_later(fd);
                Err(e)
            }
        }
    }

    /// What [`PacketChannel::from_fd`] checks and sets before mapping.
    fn check_adoptable(b: BorrowedFd<'_>, spec: RingSpec) -> io::Result<RingConfig> {
        let config = RingConfig::try_from(spec)?;
        if getsockopt_int(b, libc::SOL_SOCKET, libc::SO_DOMAIN)? != libc::AF_PACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "channel fd is not an AF_PACKET socket",
            ));
        }
        if getsockopt_int(b, libc::SOL_PACKET, libc::PACKET_VERSION)? != config.version.sockopt() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "channel fd has another TPACKET version",
            ));
        }
        // SAFETY: fcntl on a descriptor we own.
        let flags = cvt(unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFL) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(b.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
        Ok(config)
    }

    fn map(fd: OwnedFd, config: RingConfig) -> io::Result<PacketChannel> {
        let map_len = config.rx_len() + config.tx_len();
        // SAFETY: a fresh shared mapping of the socket's rings; the kernel checks the length
        // against the rings and we never map at a fixed address.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            closer::close_later(fd);
            return Err(e);
        }
        let slot_capacity;
        let tx = if config.tx_frames > 0 {
            slot_capacity = config.frame_size as usize - config.version.tx_data_offset();
            Tx::Ring {
                base: config.rx_len(),
                frames: config.tx_frames as usize,
                head: 0,
                pending: 0,
                pending_bytes: 0,
            }
        } else {
            slot_capacity = (config.frame_size as usize).max(2048);
            Tx::Batch(Batch {
                buf: vec![0; BATCH_SLOTS * slot_capacity],
                lens: Vec::with_capacity(BATCH_SLOTS),
                slot: slot_capacity,
            })
        };
        let mtu = bound_ifindex(fd.as_fd())
            .ok()
            .and_then(|i| interface_mtu(fd.as_fd(), i));
        let max_frame = match mtu {
            Some(mtu) => slot_capacity.min(mtu + super::MIN_FRAME_LEN),
            None => slot_capacity,
        };
        Ok(PacketChannel {
            sock: Arc::new(Socket {
                fd: ManuallyDrop::new(fd),
                map: map as usize,
                map_len,
            }),
            map: map.cast(),
            map_len,
            config,
            rx: RxCursor {
                head: 0,
                in_block: None,
            },
            tx,
            max_frame,
            stats: ChannelStats::default(),
            kernel_drops: Cell::new(0),
            peer_writable: false,
            scratch: Vec::new(),
        })
    }

    /// Where the next received frame will be read (V2: frame slot, V3: block), when that is
    /// a clean boundary (not in the middle of a V3 block). A process giving its channel to
    /// another (a flush: the netserver takes over the connection) passes this along so the
    /// other reads exactly the frames it did not.
    pub fn rx_cursor(&self) -> Option<u32> {
        match self.rx.in_block {
            None => u32::try_from(self.rx.head).ok(),
            Some(_) => None,
        }
    }

    /// Marks the ring as writable by another process (a channel a client handed over): every
    /// frame is copied before the callback sees it, so a frame changing under the parser
    /// cannot make it read out of bounds.
    pub fn mark_peer_writable(&mut self) {
        self.peer_writable = true;
    }

    /// Continues reading at `cursor` (from [`PacketChannel::rx_cursor`] of the channel's
    /// previous reader); EINVAL if it is outside the ring.
    pub fn resume_at(&mut self, cursor: u32) -> io::Result<()> {
        let slots = match self.config.version {
            RingVersion::V2 => self.config.rx_frames() as usize,
            RingVersion::V3 => self.config.block_count as usize,
        };
        let cursor = cursor as usize;
        if cursor >= slots {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.rx = RxCursor {
            head: cursor,
            in_block: None,
        };
        Ok(())
    }

    /// The ring geometry (as passed to a client in `Reply::Bound`).
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// A handle on the descriptor for a thread that polls it without the channel (see
    /// [`ChannelWaker`]); no system call.
    pub fn waker(&self) -> ChannelWaker {
        ChannelWaker {
            sock: Arc::clone(&self.sock),
        }
    }

    /// Whether this channel sends through a TX ring (else `sendmmsg`).
    pub fn has_tx_ring(&self) -> bool {
        matches!(self.tx, Tx::Ring { .. })
    }

    /// The status word at `offset` into the mapping.
    ///
    /// Every caller passes an offset of a slot or block header computed from the validated
    /// geometry, so `offset + 4 <= map_len` and the word is 4-byte aligned (slots are
    /// 16-aligned).
    fn status(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= self.map_len && offset.is_multiple_of(4));
        // SAFETY: in bounds and aligned (see above); the word lives as long as the mapping,
        // which lives as long as `self`; it is only ever accessed atomically by us and the
        // kernel.
        unsafe { &*self.map.add(offset).cast::<AtomicU32>() }
    }

    /// Reads a `u32` / `u16` field of a slot header the kernel handed us (after the acquire
    /// load of its status). `offset + size_of::<T>() <= map_len` is checked.
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset.checked_add(size_of::<T>())? > self.map_len {
            return None;
        }
        // SAFETY: in bounds (checked); unaligned read is allowed; the slot belongs to us until
        // we hand it back, so the kernel does not write it concurrently.
        Some(unsafe { ptr::read_unaligned(self.map.add(offset).cast::<T>()) })
    }

    /// Writes a header field of a TX slot we own (status AVAILABLE). Bounds checked.
    fn write<T: Copy>(&mut self, offset: usize, value: T) {
        if offset + size_of::<T>() <= self.map_len {
            // SAFETY: in bounds (checked); the slot is ours until we set SEND_REQUEST.
            unsafe { ptr::write_unaligned(self.map.add(offset).cast::<T>(), value) }
        }
    }

    /// Reads PACKET_STATISTICS (which also clears the kernel's TP_STATUS_LOSING) and adds its
    /// drops to the running total.
    fn poll_kernel_drops(&self) {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes; the kernel writes at most that much.
        let ret = unsafe {
            libc::getsockopt(
                self.sock.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if ret == 0 {
            self.kernel_drops
                .set(self.kernel_drops.get() + u64::from(st.tp_drops));
        }
    }

    /// Delivers one frame found in the ring at `data..data+snaplen` (`len` on the wire).
    /// Returns whether the callback ran.
    fn deliver(
        &mut self,
        status: u32,
        data: usize,
        snaplen: usize,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> bool {
        if status & libc::TP_STATUS_COPY != 0 {
            // The whole frame also sits in the socket's receive queue.
            self.scratch.resize(len.max(snaplen), 0);
            // SAFETY: `scratch` is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.sock.fd.as_raw_fd(),
                    self.scratch.as_mut_ptr().cast(),
                    self.scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                self.stats.frames_in += 1;
                self.stats.bytes_in += n as u64;
                f(&self.scratch[..n.min(self.scratch.len())]);
                return true;
            }
            self.stats.truncated += 1;
            return false;
        }
        if snaplen < len {
            self.stats.truncated += 1;
            return false;
        }
        if data
            .checked_add(snaplen)
            .is_none_or(|end| end > self.map_len)
        {
            self.stats.ring_errors += 1;
            return false;
        }
        self.stats.frames_in += 1;
        self.stats.bytes_in += snaplen as u64;
        if self.peer_writable {
            // Another process maps this ring writable and may change the frame while it is
            // parsed: work on a private copy, taken without forming a reference to the ring.
            self.scratch.resize(snaplen, 0);
            // SAFETY: `data..data + snaplen` is inside the mapping (checked above) and
            // `scratch` holds `snaplen` bytes; the regions cannot overlap (heap vs mapping).
            // A concurrent writer can only make the copied bytes arbitrary, which the parser
            // copes with.
            unsafe {
                ptr::copy_nonoverlapping(self.map.add(data), self.scratch.as_mut_ptr(), snaplen)
            };
            f(&self.scratch);
            return true;
        }
        // SAFETY: in bounds (checked above); the slot is user-owned (status TP_STATUS_USER,
        // acquired) until we hand it back after the callback, so the kernel does not write it,
        // and no other process maps the ring writable (else `peer_writable` is set).
        let frame = unsafe { std::slice::from_raw_parts(self.map.add(data), snaplen) };
        f(frame);
        true
    }

    fn recv_v2(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let frames = self.config.rx_frames() as usize;
        let fpb = self.config.frames_per_block() as usize;
        let frame_size = self.config.frame_size as usize;
        let block_size = self.config.block_size as usize;
        let mut delivered = 0;
        for _ in 0..max.min(frames) {
            let i = self.rx.head;
            let slot = (i / fpb) * block_size + (i % fpb) * frame_size;
            let status = self.status(slot).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            if status & libc::TP_STATUS_LOSING != 0 {
                self.poll_kernel_drops();
            }
            let len = self.read::<u32>(slot + offset_of!(libc::tpacket2_hdr, tp_len));
            let snaplen = self.read::<u32>(slot + offset_of!(libc::tpacket2_hdr, tp_snaplen));
            let mac = self.read::<u16>(slot + offset_of!(libc::tpacket2_hdr, tp_mac));
            match (len, snaplen, mac) {
                (Some(len), Some(snaplen), Some(mac))
                    if usize::from(mac) + snaplen as usize <= frame_size =>
                {
                    if self.deliver(
                        status,
                        slot + usize::from(mac),
                        snaplen as usize,
                        len as usize,
                        f,
                    ) {
                        delivered += 1;
                    }
                }
                _ => self.stats.ring_errors += 1,
            }
            self.status(slot)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.rx.head = (i + 1) % frames;
        }
        delivered
    }

    fn recv_v3(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        const BLOCK_STATUS: usize = 8; // tpacket_block_desc.hdr.bh1.block_status
        const NUM_PKTS: usize = 12;
        const FIRST_PKT: usize = 16;
        let block_size = self.config.block_size as usize;
        let blocks = self.config.block_count as usize;
        let mut delivered = 0;
        let mut processed = 0;
        while processed < max {
            let block = self.rx.head * block_size;
            let (left, offset) = match self.rx.in_block {
                Some(cursor) => cursor,
                None => {
                    let status = self.status(block + BLOCK_STATUS).load(Ordering::Acquire);
                    if status & libc::TP_STATUS_USER == 0 {
                        break;
                    }
                    if status & libc::TP_STATUS_LOSING != 0 {
                        self.poll_kernel_drops();
                    }
                    let num = self.read::<u32>(block + NUM_PKTS).unwrap_or(0);
                    let first = self.read::<u32>(block + FIRST_PKT).unwrap_or(0) as usize;
                    (num, first)
                }
            };
            let mut next = None;
            if left > 0 {
                processed += 1;
                let hdr = block + offset;
                let header_fits = offset
                    .checked_add(size_of::<libc::tpacket3_hdr>())
                    .is_some_and(|end| end <= block_size);
                let fields = if header_fits {
                    (
                        self.read::<u32>(hdr + offset_of!(libc::tpacket3_hdr, tp_next_offset)),
                        self.read::<u32>(hdr + offset_of!(libc::tpacket3_hdr, tp_len)),
                        self.read::<u32>(hdr + offset_of!(libc::tpacket3_hdr, tp_snaplen)),
                        self.read::<u16>(hdr + offset_of!(libc::tpacket3_hdr, tp_mac)),
                        self.read::<u32>(hdr + offset_of!(libc::tpacket3_hdr, tp_status)),
                    )
                } else {
                    (None, None, None, None, None)
                };
                match fields {
                    (Some(next_off), Some(len), Some(snaplen), Some(mac), Some(status))
                        if offset + usize::from(mac) + snaplen as usize <= block_size =>
                    {
                        if self.deliver(
                            status,
                            hdr + usize::from(mac),
                            snaplen as usize,
                            len as usize,
                            f,
                        ) {
                            delivered += 1;
                        }
                        if left > 1 && next_off > 0 {
                            next = Some((left - 1, offset + next_off as usize));
                        }
                    }
                    // A corrupt block: give the rest of it up.
                    _ => self.stats.ring_errors += 1,
                }
            }
            match next {
                Some(cursor) => self.rx.in_block = Some(cursor),
                None => {
                    self.rx.in_block = None;
                    self.status(block + BLOCK_STATUS)
                        .store(libc::TP_STATUS_KERNEL, Ordering::Release);
                    self.rx.head = (self.rx.head + 1) % blocks;
                }
            }
        }
        delivered
    }

    /// The TX slot `i`: byte offset of its header.
    fn tx_slot(&self, base: usize, i: usize) -> usize {
        let fpb = self.config.frames_per_block() as usize;
        base + (i / fpb) * self.config.block_size as usize
            + (i % fpb) * self.config.frame_size as usize
    }

    fn tx_status_offset(&self) -> usize {
        match self.config.version {
            RingVersion::V2 => offset_of!(libc::tpacket2_hdr, tp_status),
            RingVersion::V3 => offset_of!(libc::tpacket3_hdr, tp_status),
        }
    }

    fn send_ring(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        let Tx::Ring { base, head, .. } = self.tx else {
            return Err(wrong_tx_mode());
        };
        let slot = self.tx_slot(base, head);
        let status_at = slot + self.tx_status_offset();
        let mut status = self.status(status_at).load(Ordering::Acquire);
        if status & (libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING) != 0 {
            // Full: kick the kernel, then look again (on veth and most drivers the slot is
            // released synchronously by the send).
            match self.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            status = self.status(status_at).load(Ordering::Acquire);
            if status & (libc::TP_STATUS_SEND_REQUEST | libc::TP_STATUS_SENDING) != 0 {
                self.stats.ring_full += 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        if status & libc::TP_STATUS_WRONG_FORMAT != 0 {
            // The kernel refused the frame that was here (cannot happen with PACKET_LOSS).
            self.stats.tx_errors += 1;
        }
        let data = slot + self.config.version.tx_data_offset();
        // SAFETY: `data + len <= slot + frame_size` because `len <= max_frame` and
        // `max_frame <= frame_size - tx_data_offset`; the slot is ours (status AVAILABLE or
        // WRONG_FORMAT, acquired) until we publish SEND_REQUEST below.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.map.add(data), len) };
        fill(buf);
        let len32 = len as u32; // len <= max_frame < frame_size: fits.
        match self.config.version {
            RingVersion::V2 => {
                self.write(slot + offset_of!(libc::tpacket2_hdr, tp_len), len32);
                self.write(slot + offset_of!(libc::tpacket2_hdr, tp_snaplen), len32);
            }
            RingVersion::V3 => {
                self.write(slot + offset_of!(libc::tpacket3_hdr, tp_next_offset), 0u32);
                self.write(slot + offset_of!(libc::tpacket3_hdr, tp_len), len32);
                self.write(slot + offset_of!(libc::tpacket3_hdr, tp_snaplen), len32);
            }
        }
        self.status(status_at)
            .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        if let Tx::Ring {
            frames,
            head,
            pending,
            pending_bytes,
            ..
        } = &mut self.tx
        {
            *head = (*head + 1) % *frames;
            *pending += 1;
            *pending_bytes += len as u64;
        }
        Ok(())
    }

    fn flush_ring(&mut self) -> io::Result<()> {
        let Tx::Ring {
            pending,
            pending_bytes,
            ..
        } = self.tx
        else {
            return Err(wrong_tx_mode());
        };
        if pending == 0 {
            return Ok(());
        }
        loop {
            // SAFETY: a zero-length send with a null buffer is how a TX ring is kicked; the
            // kernel reads only the ring.
            let ret =
                unsafe { libc::send(self.sock.fd.as_raw_fd(), ptr::null(), 0, libc::MSG_DONTWAIT) };
            if ret >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                _ => return Err(err),
            }
        }
        self.stats.frames_out += pending as u64;
        self.stats.bytes_out += pending_bytes;
        if let Tx::Ring {
            pending,
            pending_bytes,
            ..
        } = &mut self.tx
        {
            *pending = 0;
            *pending_bytes = 0;
        }
        Ok(())
    }

    fn send_batch(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        let full = matches!(&self.tx, Tx::Batch(b) if b.lens.len() >= BATCH_SLOTS);
        if full {
            match self.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.ring_full += 1;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Tx::Batch(batch) = &mut self.tx else {
            return Err(wrong_tx_mode());
        };
        let start = batch.lens.len() * batch.slot;
        fill(&mut batch.buf[start..start + len]);
        batch.lens.push(len);
        Ok(())
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        let Tx::Batch(batch) = &mut self.tx else {
            return Err(wrong_tx_mode());
        };
        let count = batch.lens.len();
        if count == 0 {
            return Ok(());
        }
        // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
        let mut iov: [libc::iovec; BATCH_SLOTS] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH_SLOTS] = unsafe { std::mem::zeroed() };
        let base = batch.buf.as_mut_ptr();
        for (i, &len) in batch.lens.iter().enumerate() {
            // SAFETY: slot `i` lies within `buf` (i < BATCH_SLOTS, buf has BATCH_SLOTS slots).
            iov[i].iov_base = unsafe { base.add(i * batch.slot) }.cast();
            iov[i].iov_len = len;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        let mut first_error = None;
        let mut would_block = false;
        while sent < count {
            // SAFETY: `msgs[sent..count]` are initialized and point into `iov`/`buf`, which
            // outlive the call; msg_name is null (the socket is bound).
            let ret = unsafe {
                libc::sendmmsg(
                    self.sock.fd.as_raw_fd(),
                    msgs.as_mut_ptr().add(sent),
                    (count - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if ret > 0 {
                let n = ret as usize;
                for &len in &batch.lens[sent..sent + n] {
                    self.stats.frames_out += 1;
                    self.stats.bytes_out += len as u64;
                }
                sent += n;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    would_block = true;
                    break;
                }
                _ => {
                    // This frame cannot be sent: drop it and go on with the rest.
                    self.stats.tx_errors += 1;
                    sent += 1;
                    first_error.get_or_insert(err);
                }
            }
        }
        // Keep what was not sent at the front of the batch.
        let slot = batch.slot;
        batch.buf.copy_within(sent * slot..count * slot, 0);
        batch.lens.drain(..sent);
        match first_error {
            Some(e) => Err(e),
            None if would_block => Err(io::ErrorKind::WouldBlock.into()),
            None => Ok(()),
        }
    }
}

/// The TX helpers are only called for their own mode (fixed at construction); were that ever
/// broken, the caller gets an error rather than a panic.
#[cold]
fn wrong_tx_mode() -> io::Error {
    io::Error::other("packet channel: operation for the other TX mode")
}

impl Channel for PacketChannel {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        Ok(match self.config.version {
            RingVersion::V2 => self.recv_v2(max, f),
            RingVersion::V3 => self.recv_v3(max, f),
        })
    }

    fn send_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        check_frame_len(len, self.max_frame)?;
        match self.tx {
            Tx::Ring { .. } => self.send_ring(len, fill),
            Tx::Batch(_) => self.send_batch(len, fill),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.tx {
            Tx::Ring { .. } => self.flush_ring(),
            Tx::Batch(_) => self.flush_batch(),
        }
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame
    }

    fn wake_fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }

    fn set_filter(&mut self, filter: &BpfProgram) -> io::Result<()> {
        attach_filter(self.sock.fd.as_fd(), filter)
    }

    fn stats(&self) -> ChannelStats {
        self.poll_kernel_drops();
        ChannelStats {
            kernel_drops: self.kernel_drops.get(),
            ..self.stats
        }
    }
}

impl AsFd for PacketChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.fd.as_fd()
    }
}

impl Drop for PacketChannel {
    fn drop(&mut self) {
        // Hand queued frames to the kernel; nothing can be reported from a destructor. The
        // socket and mapping go to the closer with the last `Arc` (this one, or a waker's).
        let _ = self.flush();
    }
}

impl std::fmt::Debug for PacketChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketChannel")
            .field("fd", &self.sock.fd.as_raw_fd())
            .field("config", &self.config)
            .field("tx_ring", &self.has_tx_ring())
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::bpf;
    use crate::wire::EthernetAddress;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sched::{CloneFlags, unshare};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    const MAC_A: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);
    const MAC_B: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]);
    const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    type Veth = crate::testnet::VethPair;

    /// Runs `f` in a dedicated thread inside a fresh network namespace holding a veth pair.
    /// `None` (test skipped) when not root.
    fn with_veth<T: Send>(f: impl FnOnce(&Veth) -> T + Send) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: AF_PACKET tests need root (network namespaces, CAP_NET_RAW)");
            return None;
        }
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                let veth = Veth::create("mch", MAC_A, MAC_B).expect("veth pair");
                f(&veth)
            });
            match worker.join() {
                Ok(v) => Some(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// An Ethernet/IPv4/UDP frame from B to A (checksums zero: filters do not look).
    fn udp_frame(dst_port: u16, tag: u32, payload_len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_A.0);
        f.extend_from_slice(&MAC_B.0);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload_len) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&IP_B.octets());
        f.extend_from_slice(&IP_A.octets());
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend((0..payload_len).map(|i| (tag as usize + i) as u8));
        f[42..46.min(42 + payload_len)].copy_from_slice(&tag.to_be_bytes()[..4.min(payload_len)]);
        f
    }

    /// The same frame seen from the other side (A to B, port swapped), for replies.
    fn reply_frame(dst_port: u16, tag: u32) -> Vec<u8> {
        let mut f = udp_frame(dst_port, tag, 32);
        f[0..6].copy_from_slice(&MAC_B.0);
        f[6..12].copy_from_slice(&MAC_A.0);
        f[26..30].copy_from_slice(&IP_A.octets());
        f[30..34].copy_from_slice(&IP_B.octets());
        f
    }

    fn readable(ch: &PacketChannel, timeout_ms: u16) -> bool {
        let mut fds = [PollFd::new(ch.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(timeout_ms)).expect("poll") == 1
    }

    /// Receives until `n` frames arrived or 3 s passed, sleeping on the wake fd.
    fn recv_n(ch: &mut PacketChannel, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            readable(ch, 50);
            ch.recv_batch(n - got.len(), &mut |f| got.push(f.to_vec()))
                .expect("recv_batch");
        }
        got
    }

    fn no_tx(version: RingVersion) -> RingConfig {
        RingConfig {
            tx_frames: 0,
            ..RingConfig::endpoint(version)
        }
    }

    /// Sends `count` frames to port 7000 interleaved with frames to 7001 from `tx`, flushing
    /// every 32, and checks `rx` (filtered on 7000) gets exactly the former, byte-exact and in
    /// order. Drains `rx` after each 64 so its ring never overflows.
    fn exchange(rx: &mut PacketChannel, tx: &mut PacketChannel, count: u32, len: usize) {
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for tag in 0..count {
            let good = udp_frame(7000, tag, len);
            tx.send(&good).expect("send");
            tx.send(&udp_frame(7001, tag, len)).expect("send");
            expected.push(good);
            if tag % 16 == 15 {
                tx.flush().expect("flush");
            }
            if tag % 64 == 63 {
                got.extend(recv_n(rx, expected.len() - got.len()));
            }
        }
        tx.flush().expect("flush");
        got.extend(recv_n(rx, expected.len() - got.len()));
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "frames differ");
        assert!(!readable(rx, 20), "nothing else is waiting");
        assert_eq!(
            rx.recv_batch(8, &mut |_| panic!("unexpected frame"))
                .expect("recv"),
            0
        );
    }

    #[test]
    fn config_validation_and_spec_round_trip() {
        for config in [
            RingConfig::endpoint(RingVersion::V2),
            RingConfig::endpoint(RingVersion::V3),
            RingConfig::netserver(),
            RingConfig::netserver_v3(),
            RingConfig::netserver().fit_mtu(1500),
            RingConfig::netserver().fit_mtu(9000),
            RingConfig::endpoint(RingVersion::V2)
                .with_tx_ring()
                .fit_mtu(9000),
        ] {
            config.validate().expect("valid preset");
            let back = RingConfig::try_from(config.spec()).expect("round trip");
            assert_eq!(
                back,
                RingConfig {
                    retire_timeout_ms: 0,
                    ..config
                }
            );
        }
        // Slots fit the MTU: 1500 fits 2 KiB; 9000 needs 16 KiB slots, same ring size.
        assert_eq!(
            RingConfig::netserver().fit_mtu(1500),
            RingConfig::netserver()
        );
        let jumbo = RingConfig::netserver().fit_mtu(9000);
        assert_eq!((jumbo.frame_size, jumbo.block_size), (16384, 65536));
        assert_eq!(jumbo.rx_len(), RingConfig::netserver().rx_len());
        assert_eq!(
            RingConfig::netserver_v3().fit_mtu(9000),
            RingConfig::netserver_v3()
        );
        let good = RingConfig::endpoint(RingVersion::V2);
        for bad in [
            RingConfig {
                block_size: 1000,
                ..good
            },
            RingConfig {
                block_count: 0,
                ..good
            },
            RingConfig {
                frame_size: 2040,
                ..good
            },
            RingConfig {
                frame_size: 32,
                ..good
            },
            RingConfig {
                frame_size: good.block_size * 2,
                ..good
            },
            RingConfig {
                tx_frames: 17,
                ..good
            },
            RingConfig {
                block_count: 1 << 20,
                ..good
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let spec = RingSpec {
            version: 4,
            ..good.spec()
        };
        assert!(RingConfig::try_from(spec).is_err());
    }

    #[test]
    fn v2_rx_with_tx_ring_and_sendmmsg() {
        with_veth(|veth| {
            let filter = bpf::endpoint_udp(IP_A, 7000);
            let mut rx =
                PacketChannel::open(veth.a.as_str(), &no_tx(RingVersion::V2), &filter, true)
                    .expect("open rx");
            assert!(!readable(&rx, 0));
            let reject = BpfProgram::reject_all();
            let mut ring = PacketChannel::open(
                veth.b.as_str(),
                &RingConfig::endpoint(RingVersion::V2).with_tx_ring(),
                &reject,
                false,
            )
            .expect("open tx ring");
            assert!(ring.has_tx_ring());
            assert_eq!(ring.max_frame_len(), 1514, "MTU 1500 bounds the slot");
            exchange(&mut rx, &mut ring, 300, 64);
            exchange(&mut rx, &mut ring, 40, 1472);
            let mut batch =
                PacketChannel::open(veth.b.as_str(), &no_tx(RingVersion::V2), &reject, false)
                    .expect("open sendmmsg");
            assert!(!batch.has_tx_ring());
            exchange(&mut rx, &mut batch, 300, 64);
            exchange(&mut rx, &mut batch, 40, 1472);
            let s = rx.stats();
            assert_eq!(s.frames_in, 680);
            assert_eq!((s.kernel_drops, s.truncated, s.ring_errors), (0, 0, 0));
            assert_eq!(ring.stats().frames_out, 680);
            assert_eq!(batch.stats().frames_out, 680);
            // Too long for the MTU, too short for Ethernet.
            assert_eq!(
                ring.send(&vec![0; 1515]).expect_err("big").raw_os_error(),
                Some(libc::EMSGSIZE)
            );
            assert_eq!(
                batch.send(&[0; 10]).expect_err("small").raw_os_error(),
                Some(libc::EINVAL)
            );
        });
    }

    #[test]
    fn v3_rx_with_v3_tx_ring_and_sendmmsg() {
        with_veth(|veth| {
            let filter = bpf::endpoint_udp(IP_A, 7000);
            let mut rx =
                PacketChannel::open(veth.a.as_str(), &no_tx(RingVersion::V3), &filter, false)
                    .expect("open rx");
            let reject = BpfProgram::reject_all();
            // The TX ring of a TPACKET_V3 socket: tpacket3_hdr frames.
            let mut ring = PacketChannel::open(
                veth.b.as_str(),
                &RingConfig::endpoint(RingVersion::V3).with_tx_ring(),
                &reject,
                false,
            )
            .expect("open V3 tx ring");
            assert!(ring.has_tx_ring());
            // More frames than a block holds, so blocks retire full and by timer.
            exchange(&mut rx, &mut ring, 1000, 64);
            exchange(&mut rx, &mut ring, 50, 1472);
            let mut batch =
                PacketChannel::open(veth.b.as_str(), &no_tx(RingVersion::V3), &reject, false)
                    .expect("open sendmmsg");
            exchange(&mut rx, &mut batch, 1000, 64);
            let s = rx.stats();
            assert_eq!(s.frames_in, 2050);
            assert_eq!((s.kernel_drops, s.truncated, s.ring_errors), (0, 0, 0));
        });
    }

    #[test]
    fn v3_partial_batches_resume_inside_a_block() {
        with_veth(|veth| {
            let filter = bpf::endpoint_udp(IP_A, 7000);
            let mut rx =
                PacketChannel::open(veth.a.as_str(), &no_tx(RingVersion::V3), &filter, false)
                    .expect("open rx");
            let mut tx = PacketChannel::open(
                veth.b.as_str(),
                &no_tx(RingVersion::V3),
                &BpfProgram::reject_all(),
                false,
            )
            .expect("open tx");
            let expected: Vec<Vec<u8>> = (0..10).map(|tag| udp_frame(7000, tag, 100)).collect();
            for f in &expected {
                tx.send(f).expect("send");
            }
            tx.flush().expect("flush");
            assert!(readable(&rx, 1000), "block retired by timer");
            let mut got = Vec::new();
            while got.len() < 10 {
                let n = rx
                    .recv_batch(3, &mut |f| got.push(f.to_vec()))
                    .expect("recv");
                assert!(n <= 3);
                if n == 0 {
                    assert!(readable(&rx, 1000));
                }
            }
            assert_eq!(got, expected);
        });
    }

    #[test]
    fn locked_filter_cannot_be_replaced() {
        with_veth(|veth| {
            let config = no_tx(RingVersion::V2);
            let mut locked = PacketChannel::open(
                veth.a.as_str(),
                &config,
                &bpf::endpoint_udp(IP_A, 7000),
                true,
            )
            .expect("open");
            let err = locked
                .set_filter(&BpfProgram::accept_all())
                .expect_err("locked");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM));
            // SO_ATTACH_FILTER straight on the fd (what a client holding it could try).
            let err = attach_filter(locked.as_fd(), &BpfProgram::accept_all()).expect_err("locked");
            assert_eq!(err.raw_os_error(), Some(libc::EPERM));

            // An unlocked channel's filter changes take effect (the netserver's case); a
            // filter excluding 3900 ports is accepted by the kernel.
            let mut open = PacketChannel::open(
                veth.a.as_str(),
                &config,
                &bpf::endpoint_udp(IP_A, 7000),
                false,
            )
            .expect("open");
            let ports: Vec<u16> = (7000..7000 + bpf::MAX_EXCLUDED_PORTS as u16).collect();
            open.set_filter(&bpf::netserver(IP_A, MAC_A, &ports))
                .expect("big filter");
            let mut tx =
                PacketChannel::open(veth.b.as_str(), &config, &BpfProgram::reject_all(), false)
                    .expect("tx");
            tx.send(&udp_frame(7000, 1, 20)).expect("send");
            tx.send(&udp_frame(6999, 2, 20)).expect("send");
            tx.flush().expect("flush");
            let got = recv_n(&mut open, 1);
            assert_eq!(got, vec![udp_frame(6999, 2, 20)]);
            assert_eq!(recv_n(&mut locked, 1), vec![udp_frame(7000, 1, 20)]);
        });
    }

    #[test]
    fn full_ring_counts_kernel_drops() {
        with_veth(|veth| {
            // 8 slots.
            let small = RingConfig {
                block_size: 4096,
                block_count: 4,
                frame_size: 2048,
                tx_frames: 0,
                ..RingConfig::endpoint(RingVersion::V2)
            };
            let mut rx = PacketChannel::open(
                veth.a.as_str(),
                &small,
                &bpf::endpoint_udp(IP_A, 7000),
                false,
            )
            .expect("open");
            let mut tx = PacketChannel::open(
                veth.b.as_str(),
                &no_tx(RingVersion::V2),
                &BpfProgram::reject_all(),
                false,
            )
            .expect("tx");
            for tag in 0..50 {
                tx.send(&udp_frame(7000, tag, 64)).expect("send");
            }
            tx.flush().expect("flush");
            assert!(readable(&rx, 1000));
            let got = recv_n(&mut rx, 8);
            assert_eq!(
                got,
                (0..8).map(|t| udp_frame(7000, t, 64)).collect::<Vec<_>>()
            );
            assert_eq!(rx.stats().kernel_drops, 42);
            // The ring works again once drained.
            tx.send(&udp_frame(7000, 99, 64)).expect("send");
            tx.flush().expect("flush");
            assert_eq!(recv_n(&mut rx, 1), vec![udp_frame(7000, 99, 64)]);
            assert_eq!(rx.stats().kernel_drops, 42);
        });
    }

    /// (device, inode) of what `fd` names now, `None` once it is closed.
    fn identity(fd: RawFd) -> Option<(libc::dev_t, libc::ino_t)> {
        nix::sys::stat::fstat(fd)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    }

    #[test]
    fn a_waker_keeps_the_descriptor_past_the_channel() {
        with_veth(|veth| {
            let rx = PacketChannel::open(
                veth.a.as_str(),
                &no_tx(RingVersion::V2),
                &bpf::endpoint_udp(IP_A, 7000),
                false,
            )
            .expect("open");
            let mut tx = PacketChannel::open(
                veth.b.as_str(),
                &no_tx(RingVersion::V2),
                &BpfProgram::reject_all(),
                false,
            )
            .expect("tx");
            let waker = rx.waker();
            let second = waker.clone();
            let fd = rx.as_fd().as_raw_fd();
            assert_eq!(waker.raw_fd(), fd, "the channel's own number, no dup");
            let socket = identity(fd).expect("open");
            drop(rx);
            // The socket lives on for the waker: a frame still makes it readable.
            tx.send(&udp_frame(7000, 1, 16)).expect("send");
            tx.flush().expect("flush");
            let mut fds = [PollFd::new(waker.as_fd(), PollFlags::POLLIN)];
            assert_eq!(poll(&mut fds, PollTimeout::from(1000u16)).expect("poll"), 1);
            drop(waker);
            assert_eq!(identity(fd), Some(socket), "still held by the second waker");
            drop(second);
            assert!(closer::wait_idle(Duration::from_secs(5)), "closer idle");
            // Closed: the number is free (or already names something else).
            assert_ne!(identity(fd), Some(socket));
        });
    }

    /// Drops every capability of the calling thread (capabilities are per thread in Linux).
    fn drop_thread_capabilities() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        }; // _LINUX_CAPABILITY_VERSION_3
        let data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: capset reads a header and two data words from valid, live structs.
        let ret =
            unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
        assert_eq!(ret, 0, "capset: {}", io::Error::last_os_error());
    }

    #[test]
    fn adopted_by_a_thread_without_capabilities() {
        with_veth(|veth| {
            let config = RingConfig::endpoint(RingVersion::V2).with_tx_ring();
            // The netserver's part: create, configure, lock, bind; never map.
            let fd = PacketChannel::create_fd(
                veth.a.as_str(),
                &config,
                &bpf::endpoint_udp(IP_A, 7000),
                true,
            )
            .expect("create_fd");
            let spec = config.spec();
            let mut peer = PacketChannel::open(
                veth.b.as_str(),
                &config,
                &bpf::endpoint_udp(IP_B, 9000),
                false,
            )
            .expect("peer");
            // Frames land in the ring before anyone maps it.
            for tag in 0..5 {
                peer.send(&udp_frame(7000, tag, 40)).expect("send");
            }
            peer.flush().expect("flush");
            std::thread::sleep(Duration::from_millis(50));
            let received = std::thread::scope(|s| {
                s.spawn(move || {
                    drop_thread_capabilities();
                    // SAFETY: plain syscall; a successful descriptor is closed at once.
                    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
                    let errno = io::Error::last_os_error().raw_os_error();
                    if raw >= 0 {
                        // SAFETY: closing the descriptor just created.
                        unsafe { libc::close(raw) };
                    }
                    assert_eq!(
                        (raw, errno),
                        (-1, Some(libc::EPERM)),
                        "capabilities were not dropped"
                    );
                    let mut ch =
                        PacketChannel::from_fd(fd, spec).expect("from_fd without CAP_NET_RAW");
                    let got = recv_n(&mut ch, 5);
                    assert_eq!(
                        ch.set_filter(&BpfProgram::accept_all())
                            .expect_err("locked")
                            .raw_os_error(),
                        Some(libc::EPERM)
                    );
                    ch.send(&reply_frame(9000, 77))
                        .expect("send without capabilities");
                    ch.flush().expect("flush");
                    got
                })
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
            });
            assert_eq!(
                received,
                (0..5).map(|t| udp_frame(7000, t, 40)).collect::<Vec<_>>()
            );
            assert_eq!(recv_n(&mut peer, 1), vec![reply_frame(9000, 77)]);
        });
    }

    #[test]
    fn from_fd_checks_the_socket() {
        with_veth(|veth| {
            let config = RingConfig::endpoint(RingVersion::V2);
            let filter = bpf::endpoint_udp(IP_A, 7000);
            // Wrong version.
            let fd =
                PacketChannel::create_fd(veth.a.as_str(), &config, &filter, true).expect("create");
            let v3 = RingSpec {
                version: 3,
                ..config.spec()
            };
            assert!(PacketChannel::from_fd(fd, v3).is_err());
            // Wrong size: the kernel refuses the mapping.
            let fd =
                PacketChannel::create_fd(veth.a.as_str(), &config, &filter, true).expect("create");
            let bigger = RingSpec {
                block_count: config.block_count * 2,
                ..config.spec()
            };
            assert!(PacketChannel::from_fd(fd, bigger).is_err());
            // Not a packet socket.
            let (a, _b) = std::os::unix::net::UnixDatagram::pair().expect("pair");
            assert!(PacketChannel::from_fd(a.into(), config.spec()).is_err());
            // Unknown interface.
            assert!(PacketChannel::open("mch-nonexistent", &config, &filter, false).is_err());
        });
    }
}
