//! The crash record of a cached TCP connection (docs/notes/tcp-ownership.md, "Crash record"):
//! what the netserver needs to close a connection as Linux closes the socket of a process that
//! exits (RFC 9293 §3.10.4 CLOSE: queued data, then FIN; RST when received data was left
//! unread, as `tcp_close` does) after the process was killed and could not hand it over.
//!
//! A record is a file (a memfd) the process rewrites as its connection runs:
//! `[0, HEADER_LEN)` holds the control block laid out below, `[HEADER_LEN, HEADER_LEN +
//! ring_size)` the send ring itself (the engine's [`super::send_buffer::SendBuffer`] lives in
//! that memory, so its bytes are there with no copy). The control block is little-endian at
//! fixed offsets, published under a seqlock-style generation word: odd while being written, so
//! a process killed in the middle of an update leaves a record that is refused as a whole.
//!
//! Contract: [`CrashRecord::publish`] costs a few dozen word stores and never allocates;
//! [`CrashRecord::read`] checks the structure (magic, version, generation, state code, option
//! ranges, ring extents) and never panics on any input — the file is written by a process the
//! reader does not trust. The sequence-space checks are the engine's
//! ([`super::connection::TcpConnection::from_crash_record`]).
#![forbid(unsafe_code)]

use core::ops::Range;
use core::sync::atomic::{Ordering, fence};
use std::net::{Ipv4Addr, SocketAddrV4};

use super::connection::State;
use crate::wire::tcp::TcpSeqNumber;

/// "MSCR", little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MSCR");
/// Layout version of the control block.
pub const LAYOUT_VERSION: u16 = 1;
/// Bytes of the control block.
pub const BLOCK_LEN: usize = 128;
/// Offset of the send ring in a record file (one page for the control block).
pub const HEADER_LEN: usize = 4096;
/// Largest send ring a record holds (Linux's default `tcp_wmem` maximum): a connection whose
/// send buffer is larger has no usable record and is reset on a crash.
pub const MAX_RING: usize = 4 << 20;
/// Size of a record file: the control block page and the largest ring (sparse: only the pages
/// a connection's ring touches are ever allocated).
pub const FILE_LEN: usize = HEADER_LEN + MAX_RING;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_BLOCK_LEN: usize = 6;
const OFF_GENERATION: usize = 8;
const OFF_STATE: usize = 16;
const OFF_SND_WSCALE: usize = 17;
const OFF_RCV_WSCALE: usize = 18;
const OFF_FLAGS: usize = 20;
const OFF_LOCAL_IP: usize = 24;
const OFF_LOCAL_PORT: usize = 28;
const OFF_REMOTE_PORT: usize = 30;
const OFF_REMOTE_IP: usize = 32;
const OFF_ISS: usize = 36;
const OFF_IRS: usize = 40;
const OFF_SND_UNA: usize = 44;
const OFF_SND_NXT: usize = 48;
const OFF_SND_MAX: usize = 52;
const OFF_SND_WL1: usize = 56;
const OFF_SND_WL2: usize = 60;
const OFF_SND_WND: usize = 64;
const OFF_RCV_NXT: usize = 68;
const OFF_RCV_WND: usize = 72;
const OFF_SND_MSS: usize = 76;
const OFF_OUR_MSS: usize = 78;
const OFF_TS_RECENT: usize = 80;
const OFF_TS_VAL: usize = 84;
const OFF_UNREAD: usize = 88;
const OFF_SEND_HEAD: usize = 92;
const OFF_SEND_LEN: usize = 96;
const OFF_RING_SIZE: usize = 100;
const OFF_SEND_CAPACITY: usize = 104;
const OFF_RECV_CAPACITY: usize = 108;
const OFF_TIME_WAIT_MS: usize = 112;
const OFF_FIN_TIMEOUT_MS: usize = 116;
const OFF_STAMP_US: usize = 120;

const FLAG_WS_OK: u32 = 1;
const FLAG_SACK_OK: u32 = 2;
const FLAG_TS_OK: u32 = 4;
const FLAG_FIN_QUEUED: u32 = 8;
const FLAG_FIN_RECEIVED: u32 = 16;
const FLAG_LINGER_ZERO: u32 = 32;
const FLAG_NODELAY: u32 = 64;
const FLAG_RING_SHARED: u32 = 128;
const FLAG_ALL: u32 = 255;

/// Why a record cannot be used (the reader falls back to resetting the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashRecordError {
    /// Fewer than [`BLOCK_LEN`] bytes.
    Short,
    BadMagic,
    BadVersion,
    /// Never published (generation 0).
    Unwritten,
    /// Caught in the middle of an update (odd generation).
    Torn,
    /// A field out of range, or fields that contradict each other.
    Invalid(&'static str),
}

/// The control block of a connection: what survives the process besides the send ring.
/// Windows are in bytes (already scaled); `send_head`/`send_len` locate the queued bytes in
/// the ring (`ring_size` bytes at [`HEADER_LEN`]), byte 0 being the one at SND.UNA (ISS + 1
/// before the SYN is acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashRecord {
    pub state: State,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub iss: TcpSeqNumber,
    pub irs: TcpSeqNumber,
    pub snd_una: TcpSeqNumber,
    pub snd_nxt: TcpSeqNumber,
    pub snd_max: TcpSeqNumber,
    pub snd_wl1: TcpSeqNumber,
    pub snd_wl2: TcpSeqNumber,
    pub snd_wnd: u32,
    pub rcv_nxt: TcpSeqNumber,
    /// The window last announced (RCV.ADV − RCV.NXT).
    pub rcv_wnd: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub ws_ok: bool,
    /// The sending MSS (the peer's, lowered by path MTU) and the one we announced.
    pub snd_mss: u16,
    pub our_mss: u16,
    pub sack_ok: bool,
    pub ts_ok: bool,
    pub ts_recent: u32,
    /// Our TSval at the time of publication.
    pub ts_val: u32,
    pub fin_queued: bool,
    pub fin_received: bool,
    /// Bytes received and not read (counting out-of-order data as at least one): nonzero
    /// makes the close a reset.
    pub unread: u32,
    /// The ring is the shared one (`ring_size` valid); otherwise only an empty queue is usable.
    pub ring_shared: bool,
    pub send_head: u32,
    pub send_len: u32,
    pub ring_size: u32,
    pub send_capacity: u32,
    pub recv_capacity: u32,
    pub time_wait_ms: u32,
    pub fin_timeout_ms: u32,
    pub linger_zero: bool,
    pub nodelay: bool,
    /// When the writer published, on a clock the reader shares (CLOCK_MONOTONIC in µs for a
    /// client and the netserver on one host); the engine does not interpret it.
    pub stamp_us: u64,
}

#[inline(always)]
fn put_u16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl CrashRecord {
    /// Writes the block into `out` (the first [`BLOCK_LEN`] bytes of a record file) under the
    /// generation word: odd first, the fields, then the next even value. Returns the new
    /// generation. `out` shorter than [`BLOCK_LEN`] is refused.
    pub fn publish(&self, out: &mut [u8]) -> Result<u64, CrashRecordError> {
        // A fixed-size view: once inlined, the stores below need no bounds checks.
        let out: &mut [u8; BLOCK_LEN] = out
            .get_mut(..BLOCK_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(CrashRecordError::Short)?;
        // The next odd value (an odd leftover of a writer that died mid-update is skipped).
        let last = get_u64(out, OFF_GENERATION);
        let generation = if last & 1 == 0 { last + 1 } else { last + 2 };
        put_u64(out, OFF_GENERATION, generation);
        // A process may be killed at any instruction: the odd generation must be in memory
        // before any field changes, and every field before the even one.
        fence(Ordering::Release);
        put_u32(out, OFF_MAGIC, MAGIC);
        put_u16(out, OFF_VERSION, LAYOUT_VERSION);
        put_u16(out, OFF_BLOCK_LEN, BLOCK_LEN as u16);
        out[OFF_STATE] = self.state.linux_number();
        out[OFF_SND_WSCALE] = self.snd_wscale;
        out[OFF_RCV_WSCALE] = self.rcv_wscale;
        out[OFF_STATE + 3] = 0;
        let flags = [
            (self.ws_ok, FLAG_WS_OK),
            (self.sack_ok, FLAG_SACK_OK),
            (self.ts_ok, FLAG_TS_OK),
            (self.fin_queued, FLAG_FIN_QUEUED),
            (self.fin_received, FLAG_FIN_RECEIVED),
            (self.linger_zero, FLAG_LINGER_ZERO),
            (self.nodelay, FLAG_NODELAY),
            (self.ring_shared, FLAG_RING_SHARED),
        ]
        .into_iter()
        .fold(0, |acc, (on, bit)| if on { acc | bit } else { acc });
        put_u32(out, OFF_FLAGS, flags);
        put_u32(out, OFF_LOCAL_IP, u32::from(*self.local.ip()));
        put_u16(out, OFF_LOCAL_PORT, self.local.port());
        put_u16(out, OFF_REMOTE_PORT, self.remote.port());
        put_u32(out, OFF_REMOTE_IP, u32::from(*self.remote.ip()));
        for (at, s) in [
            (OFF_ISS, self.iss),
            (OFF_IRS, self.irs),
            (OFF_SND_UNA, self.snd_una),
            (OFF_SND_NXT, self.snd_nxt),
            (OFF_SND_MAX, self.snd_max),
            (OFF_SND_WL1, self.snd_wl1),
            (OFF_SND_WL2, self.snd_wl2),
            (OFF_RCV_NXT, self.rcv_nxt),
        ] {
            put_u32(out, at, s.0);
        }
        for (at, v) in [
            (OFF_SND_WND, self.snd_wnd),
            (OFF_RCV_WND, self.rcv_wnd),
            (OFF_TS_RECENT, self.ts_recent),
            (OFF_TS_VAL, self.ts_val),
            (OFF_UNREAD, self.unread),
            (OFF_SEND_HEAD, self.send_head),
            (OFF_SEND_LEN, self.send_len),
            (OFF_RING_SIZE, self.ring_size),
            (OFF_SEND_CAPACITY, self.send_capacity),
            (OFF_RECV_CAPACITY, self.recv_capacity),
            (OFF_TIME_WAIT_MS, self.time_wait_ms),
            (OFF_FIN_TIMEOUT_MS, self.fin_timeout_ms),
        ] {
            put_u32(out, at, v);
        }
        put_u16(out, OFF_SND_MSS, self.snd_mss);
        put_u16(out, OFF_OUR_MSS, self.our_mss);
        put_u64(out, OFF_STAMP_US, self.stamp_us);
        fence(Ordering::Release);
        let generation = generation.wrapping_add(1);
        put_u64(out, OFF_GENERATION, generation);
        Ok(generation)
    }

    /// Marks the block as not usable (an odd generation), e.g. when the connection it
    /// described is gone from this record file.
    pub fn invalidate(out: &mut [u8]) {
        if let Some(out) = out.get_mut(..BLOCK_LEN) {
            let generation = get_u64(out, OFF_GENERATION) | 1;
            put_u64(out, OFF_GENERATION, generation);
        }
    }

    /// Reads and structurally checks a block (untrusted input). Returns it with its generation.
    pub fn read(bytes: &[u8]) -> Result<(CrashRecord, u64), CrashRecordError> {
        let b = bytes.get(..BLOCK_LEN).ok_or(CrashRecordError::Short)?;
        if get_u32(b, OFF_MAGIC) != MAGIC {
            return Err(if b.iter().all(|&x| x == 0) {
                CrashRecordError::Unwritten
            } else {
                CrashRecordError::BadMagic
            });
        }
        if get_u16(b, OFF_VERSION) != LAYOUT_VERSION
            || usize::from(get_u16(b, OFF_BLOCK_LEN)) != BLOCK_LEN
        {
            return Err(CrashRecordError::BadVersion);
        }
        let generation = get_u64(b, OFF_GENERATION);
        if generation == 0 {
            return Err(CrashRecordError::Unwritten);
        }
        if generation & 1 == 1 {
            return Err(CrashRecordError::Torn);
        }
        let invalid = CrashRecordError::Invalid;
        let state = State::from_code(b[OFF_STATE]).ok_or(invalid("state"))?;
        let flags = get_u32(b, OFF_FLAGS);
        if flags & !FLAG_ALL != 0 || b[OFF_STATE + 3] != 0 {
            return Err(invalid("flags"));
        }
        let flag = |bit: u32| flags & bit != 0;
        let seq = |at: usize| TcpSeqNumber(get_u32(b, at));
        let record = CrashRecord {
            state,
            local: SocketAddrV4::new(
                Ipv4Addr::from(get_u32(b, OFF_LOCAL_IP)),
                get_u16(b, OFF_LOCAL_PORT),
            ),
            remote: SocketAddrV4::new(
                Ipv4Addr::from(get_u32(b, OFF_REMOTE_IP)),
                get_u16(b, OFF_REMOTE_PORT),
            ),
            iss: seq(OFF_ISS),
            irs: seq(OFF_IRS),
            snd_una: seq(OFF_SND_UNA),
            snd_nxt: seq(OFF_SND_NXT),
            snd_max: seq(OFF_SND_MAX),
            snd_wl1: seq(OFF_SND_WL1),
            snd_wl2: seq(OFF_SND_WL2),
            snd_wnd: get_u32(b, OFF_SND_WND),
            rcv_nxt: seq(OFF_RCV_NXT),
            rcv_wnd: get_u32(b, OFF_RCV_WND),
            snd_wscale: b[OFF_SND_WSCALE],
            rcv_wscale: b[OFF_RCV_WSCALE],
            ws_ok: flag(FLAG_WS_OK),
            snd_mss: get_u16(b, OFF_SND_MSS),
            our_mss: get_u16(b, OFF_OUR_MSS),
            sack_ok: flag(FLAG_SACK_OK),
            ts_ok: flag(FLAG_TS_OK),
            ts_recent: get_u32(b, OFF_TS_RECENT),
            ts_val: get_u32(b, OFF_TS_VAL),
            fin_queued: flag(FLAG_FIN_QUEUED),
            fin_received: flag(FLAG_FIN_RECEIVED),
            unread: get_u32(b, OFF_UNREAD),
            ring_shared: flag(FLAG_RING_SHARED),
            send_head: get_u32(b, OFF_SEND_HEAD),
            send_len: get_u32(b, OFF_SEND_LEN),
            ring_size: get_u32(b, OFF_RING_SIZE),
            send_capacity: get_u32(b, OFF_SEND_CAPACITY),
            recv_capacity: get_u32(b, OFF_RECV_CAPACITY),
            time_wait_ms: get_u32(b, OFF_TIME_WAIT_MS),
            fin_timeout_ms: get_u32(b, OFF_FIN_TIMEOUT_MS),
            linger_zero: flag(FLAG_LINGER_ZERO),
            nodelay: flag(FLAG_NODELAY),
            stamp_us: get_u64(b, OFF_STAMP_US),
        };
        record.check_structure()?;
        Ok((record, generation))
    }

    /// Ranges and option values every block must satisfy, whatever its sequence numbers.
    fn check_structure(&self) -> Result<(), CrashRecordError> {
        let invalid = CrashRecordError::Invalid;
        if self.snd_wscale > 14 || self.rcv_wscale > 14 {
            return Err(invalid("window scale"));
        }
        if !self.ws_ok && (self.snd_wscale != 0 || self.rcv_wscale != 0) {
            return Err(invalid("window scale without the option"));
        }
        if self.snd_mss < 88 || self.our_mss < 88 {
            return Err(invalid("mss"));
        }
        let ring = self.ring_size as usize;
        if self.ring_shared {
            if ring == 0 || ring > MAX_RING {
                return Err(invalid("ring size"));
            }
            if self.send_head as usize >= ring || self.send_len as usize > ring {
                return Err(invalid("send queue extent"));
            }
        } else if self.send_len != 0 {
            return Err(invalid("queued bytes without a shared ring"));
        }
        if self.snd_wnd as usize > 65_535 << 14 || self.rcv_wnd as usize > 65_535 << 14 {
            return Err(invalid("window"));
        }
        if self.send_capacity == 0 || self.recv_capacity == 0 {
            return Err(invalid("buffer size"));
        }
        Ok(())
    }

    /// Where the queued bytes lie, as offsets into the ring region (at most two ranges, in
    /// order; the second is empty unless the queue wraps). Valid for a record `read` accepted.
    pub fn queue_ranges(&self) -> [Range<usize>; 2] {
        let (head, len, ring) = (
            self.send_head as usize,
            self.send_len as usize,
            self.ring_size as usize,
        );
        if !self.ring_shared || len == 0 || ring == 0 {
            return [0..0, 0..0];
        }
        let first = len.min(ring - head.min(ring));
        [head..head + first, 0..len - first]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> CrashRecord {
        CrashRecord {
            state: State::Established,
            local: "198.18.0.1:40000".parse().unwrap(),
            remote: "198.18.0.2:5000".parse().unwrap(),
            iss: TcpSeqNumber(1000),
            irs: TcpSeqNumber(u32::MAX - 5),
            snd_una: TcpSeqNumber(2001),
            snd_nxt: TcpSeqNumber(3001),
            snd_max: TcpSeqNumber(3001),
            snd_wl1: TcpSeqNumber(7),
            snd_wl2: TcpSeqNumber(2001),
            snd_wnd: 65_535 << 3,
            rcv_nxt: TcpSeqNumber(20),
            rcv_wnd: 4096,
            snd_wscale: 3,
            rcv_wscale: 7,
            ws_ok: true,
            snd_mss: 1460,
            our_mss: 1460,
            sack_ok: true,
            ts_ok: true,
            ts_recent: 0xdead_beef,
            ts_val: 77,
            fin_queued: false,
            fin_received: true,
            unread: 0,
            ring_shared: true,
            send_head: 4000,
            send_len: 2000,
            ring_size: 4096,
            send_capacity: 4096,
            recv_capacity: 8192,
            time_wait_ms: 60_000,
            fin_timeout_ms: 60_000,
            linger_zero: false,
            nodelay: true,
            stamp_us: 123_456_789,
        }
    }

    #[test]
    fn round_trip_and_generations() {
        let mut page = vec![0u8; HEADER_LEN];
        assert_eq!(CrashRecord::read(&page), Err(CrashRecordError::Unwritten));
        let r = sample();
        assert_eq!(r.publish(&mut page), Ok(2));
        assert_eq!(CrashRecord::read(&page), Ok((r, 2)));
        let mut r2 = r;
        r2.state = State::FinWait1;
        r2.fin_queued = true;
        r2.nodelay = false;
        assert_eq!(r2.publish(&mut page), Ok(4));
        assert_eq!(CrashRecord::read(&page), Ok((r2, 4)));
        assert_eq!(r.queue_ranges(), [4000..4096, 0..1904]);
        CrashRecord::invalidate(&mut page);
        assert_eq!(CrashRecord::read(&page), Err(CrashRecordError::Torn));
        // The next publication after a torn one is valid again.
        assert_eq!(r.publish(&mut page), Ok(8));
        assert_eq!(CrashRecord::read(&page).map(|x| x.1), Ok(8));
        assert_eq!(r.publish(&mut [0u8; 10]), Err(CrashRecordError::Short));
        assert_eq!(
            CrashRecord::read(&page[..BLOCK_LEN - 1]),
            Err(CrashRecordError::Short)
        );
    }

    #[test]
    fn a_block_caught_mid_write_is_refused() {
        let mut page = vec![0u8; BLOCK_LEN];
        sample().publish(&mut page).unwrap();
        let generation = get_u64(&page, OFF_GENERATION);
        put_u64(&mut page, OFF_GENERATION, generation + 1);
        assert_eq!(CrashRecord::read(&page), Err(CrashRecordError::Torn));
    }

    #[test]
    fn scribbled_blocks_are_refused_never_panic() {
        let mut page = vec![0u8; BLOCK_LEN];
        sample().publish(&mut page).unwrap();
        let bad = |at: usize, v: u8, want: CrashRecordError| {
            let mut p = page.clone();
            p[at] = v;
            assert_eq!(CrashRecord::read(&p).map(|x| x.0), Err(want), "offset {at}");
        };
        let inv = CrashRecordError::Invalid;
        bad(OFF_MAGIC, b'X', CrashRecordError::BadMagic);
        bad(OFF_VERSION, 9, CrashRecordError::BadVersion);
        bad(OFF_BLOCK_LEN, 1, CrashRecordError::BadVersion);
        bad(OFF_STATE, 0, inv("state"));
        bad(OFF_STATE, 12, inv("state"));
        bad(OFF_SND_WSCALE, 15, inv("window scale"));
        bad(OFF_FLAGS + 1, 1, inv("flags"));
        let mut p = page.clone();
        put_u16(&mut p, OFF_SND_MSS, 87);
        assert_eq!(CrashRecord::read(&p).map(|x| x.0), Err(inv("mss")));
        bad(OFF_RING_SIZE + 3, 1, inv("ring size"));
        bad(OFF_SEND_HEAD + 1, 0x10, inv("send queue extent"));
        bad(OFF_SEND_LEN + 1, 0x10, inv("send queue extent"));
        bad(OFF_SND_WND + 3, 0x80, inv("window"));
        let mut p = page.clone();
        put_u32(&mut p, OFF_SEND_CAPACITY, 0);
        assert_eq!(CrashRecord::read(&p).map(|x| x.0), Err(inv("buffer size")));
        let mut p = page.clone();
        put_u32(&mut p, OFF_FLAGS, FLAG_WS_OK | FLAG_SACK_OK);
        assert_eq!(
            CrashRecord::read(&p).map(|x| x.0),
            Err(inv("queued bytes without a shared ring"))
        );
        // Every single-byte corruption anywhere either decodes or is an error, never a panic.
        let mut rng = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut p = page.clone();
            let at = (rng % BLOCK_LEN as u64) as usize;
            p[at] = (rng >> 32) as u8;
            if let Ok((r, _)) = CrashRecord::read(&p) {
                let [a, b] = r.queue_ranges();
                assert!(a.end <= r.ring_size as usize && b.end <= r.ring_size as usize);
                assert_eq!(a.len() + b.len(), r.send_len as usize);
            }
        }
    }
}
