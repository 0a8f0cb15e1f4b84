//! The receive queue of a TCP connection (RFC 9293 §3.8.6 and §3.10.7.4 "seventh, process the
//! segment text"): one byte ring holding the in-order bytes the application has not read yet
//! and, further on in the same ring at their own offsets, the bytes that arrived out of order
//! (like smoltcp's `Assembler` over a `RingBuffer`). Offsets given to
//! [`ReceiveBuffer::write_at`] are relative to RCV.NXT; the oldest unread byte is at `-len()`.
//!
//! Contract:
//! - The window ([`ReceiveBuffer::window`]) is `capacity − len`: bytes beyond it are not stored.
//!   Overlapping and duplicate data is fine (TCP guarantees retransmitted bytes are identical).
//! - Out-of-order data is kept as at most [`MAX_OOO_RANGES`] sorted, disjoint, non-adjacent
//!   ranges: a segment that would need a new range beyond that is dropped and counted
//!   ([`ReceiveBuffer::ooo_dropped`]), so memory and per-segment cost stay bounded.
//! - SACK blocks follow RFC 2018 §4: the first block holds the most recently received segment,
//!   the others follow most recent first (every segment received produces an ACK whose first
//!   block is the range that segment landed in, so "most recently received" is "most recently
//!   reported first").
//! - [`ReceiveBuffer::set_capacity`] never drops data (SO_RCVBUF lowered while full: the window
//!   is 0 until the application reads). Storage grows lazily (doubling) to the bytes in use, so
//!   an idle connection costs little, and no write allocates once it has grown.
//! - Export/import ([`super::image`]) carries the in-order bytes, the out-of-order ranges with
//!   their bytes and recency; import validates every invariant (untrusted input).
#![forbid(unsafe_code)]

use super::image::{ImageError, ImageReader, ImageWriter};
use crate::wire::tcp::TcpSeqNumber;

/// Most out-of-order ranges kept; a segment needing one more is dropped. Linux has no range
/// limit (it bounds the out-of-order queue by rcvbuf only); a bound keeps the per-segment cost
/// O(ranges) and the memory explicit (24 B per range, inline). 256 survives netem-style 5 %
/// reordering with a 4 MiB window of 1448-byte segments (about 70 ranges open at once, peaks
/// near 110; `tests::interop`), where 32 overflowed.
pub const MAX_OOO_RANGES: usize = 256;
/// Largest capacity accepted from a caller or an image.
pub const MAX_CAPACITY: usize = 1 << 30;
/// Section tag of a receive buffer in a state image.
const SECTION: u8 = 0x52; // 'R'
/// Smallest storage allocated once data arrives.
const MIN_STORAGE: usize = 4096;

/// One out-of-order range `[start, end)`, offsets relative to RCV.NXT (`start > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct OooRange {
    start: usize,
    end: usize,
    /// Recency: value of the buffer's stamp counter when data last landed in the range.
    stamp: u64,
}

/// The receive queue: in-order bytes plus bounded out-of-order ranges in one ring.
#[derive(Debug, Clone)]
pub struct ReceiveBuffer {
    /// Ring storage (0 bytes until data arrives).
    storage: Vec<u8>,
    /// Index in `storage` of the oldest unread byte.
    head: usize,
    /// In-order bytes the application can read.
    len: usize,
    /// SO_RCVBUF: `len` plus the window.
    capacity: usize,
    /// Bound on the bytes in use (`len` + out-of-order extent): `capacity`, or more for a while
    /// after the capacity was lowered under data already held.
    limit: usize,
    ranges: [OooRange; MAX_OOO_RANGES],
    nranges: usize,
    /// Recency counter, incremented per stored segment.
    stamp: u64,
    /// Out-of-order segments dropped because [`MAX_OOO_RANGES`] ranges were in use (also
    /// readable through [`ReceiveBuffer::ooo_dropped`]; public so the engine can compare it).
    pub ooo_dropped: u64,
}

impl ReceiveBuffer {
    /// An empty queue of `capacity` bytes (clamped to [`MAX_CAPACITY`]); allocates nothing until
    /// data arrives.
    pub fn new(capacity: usize) -> ReceiveBuffer {
        let capacity = capacity.min(MAX_CAPACITY);
        ReceiveBuffer {
            storage: Vec::new(),
            head: 0,
            len: 0,
            capacity,
            limit: capacity,
            ranges: [OooRange::default(); MAX_OOO_RANGES],
            nranges: 0,
            stamp: 0,
            ooo_dropped: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity (clamped to [`MAX_CAPACITY`]) without dropping in-order or
    /// out-of-order data: if less than what is held, the window is 0 until the application reads.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.min(MAX_CAPACITY);
        self.limit = self.capacity.max(self.extent());
        self.maybe_shrink();
    }

    /// In-order bytes the application can read.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for bytes at offsets ≥ 0 from RCV.NXT: `capacity − len` (0 when over capacity).
    pub fn window(&self) -> usize {
        self.capacity.saturating_sub(self.len)
    }

    /// Out-of-order segments dropped because [`MAX_OOO_RANGES`] ranges were in use.
    pub fn ooo_dropped(&self) -> u64 {
        self.ooo_dropped
    }

    fn ooo(&self) -> &[OooRange] {
        &self.ranges[..self.nranges]
    }

    /// Bytes of the ring in use: in-order bytes and everything up to the last out-of-order byte.
    fn extent(&self) -> usize {
        self.len + self.ooo().last().map_or(0, |r| r.end)
    }

    /// Moves the bytes in use into fresh storage of `size` (≥ extent) bytes, from index 0.
    fn reshape(&mut self, size: usize) {
        let extent = self.extent();
        debug_assert!(size >= extent);
        let mut fresh = vec![0u8; size];
        if extent > 0 {
            let [a, b] = self.ring_slices(0, extent);
            fresh[..a.len()].copy_from_slice(a);
            fresh[a.len()..extent].copy_from_slice(b);
        }
        self.storage = fresh;
        self.head = 0;
    }

    /// Makes the ring hold at least `needed` bytes (≤ `limit`).
    fn ensure_storage(&mut self, needed: usize) {
        if needed > self.storage.len() {
            let size = needed
                .max(self.storage.len().saturating_mul(2))
                .max(MIN_STORAGE)
                .min(self.limit.max(needed));
            self.reshape(size);
        }
    }

    /// After the capacity was lowered: lowers the bound as data drains and releases storage.
    fn maybe_shrink(&mut self) {
        if self.limit > self.capacity {
            self.limit = self.capacity.max(self.extent());
        }
        if self.storage.len() > self.limit.max(MIN_STORAGE) {
            let extent = self.extent();
            if extent == 0 {
                self.storage = Vec::new();
                self.head = 0;
            } else {
                self.reshape(extent.max(MIN_STORAGE).min(self.limit));
            }
        }
    }

    /// The ring bytes `[from, from + len)` counted from the oldest unread byte (caller keeps
    /// this within the storage).
    fn ring_slices(&self, from: usize, len: usize) -> [&[u8]; 2] {
        if len == 0 {
            return [&[], &[]];
        }
        let ring = self.storage.len();
        let start = (self.head + from) % ring;
        let first = len.min(ring - start);
        [
            &self.storage[start..start + first],
            &self.storage[..len - first],
        ]
    }

    fn ring_write(&mut self, from: usize, data: &[u8]) {
        let ring = self.storage.len();
        let start = (self.head + from) % ring;
        let first = data.len().min(ring - start);
        self.storage[start..start + first].copy_from_slice(&data[..first]);
        self.storage[..data.len() - first].copy_from_slice(&data[first..]);
    }

    /// Stores segment text that starts `offset` bytes after RCV.NXT: what fits in the window is
    /// kept (overlaps with held data are fine), ranges are merged, and the return value is how
    /// many bytes became in order (the RCV.NXT advance, including out-of-order data the segment
    /// joined up). If the data is out of order and would need a range beyond
    /// [`MAX_OOO_RANGES`], nothing is stored, 0 is returned and [`Self::ooo_dropped`] counts it.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> usize {
        let window = self.window();
        if data.is_empty() || offset >= window {
            return 0;
        }
        let end = offset + data.len().min(window - offset);
        let data = &data[..end - offset];
        let n = self.nranges;
        if offset == 0 {
            self.ensure_storage(self.len + end);
            self.ring_write(self.len, data);
            // Join the out-of-order ranges this segment reaches.
            let mut advance = end;
            let mut k = 0;
            while k < n && self.ranges[k].start <= advance {
                advance = advance.max(self.ranges[k].end);
                k += 1;
            }
            self.ranges.copy_within(k..n, 0);
            self.nranges = n - k;
            for r in &mut self.ranges[..n - k] {
                r.start -= advance;
                r.end -= advance;
            }
            self.len += advance;
            self.stamp += 1;
            return advance;
        }
        // Out of order: the ranges overlapping or touching [offset, end) merge into one.
        let first = self.ooo().partition_point(|r| r.end < offset);
        let mut last = first;
        while last < n && self.ranges[last].start <= end {
            last += 1;
        }
        if first == last && n == MAX_OOO_RANGES {
            self.ooo_dropped += 1;
            return 0;
        }
        self.ensure_storage(self.len + end.max(self.extent() - self.len));
        self.ring_write(self.len + offset, data);
        self.stamp += 1;
        let merged = if first == last {
            self.ranges.copy_within(first..n, first + 1);
            self.nranges = n + 1;
            OooRange {
                start: offset,
                end,
                stamp: self.stamp,
            }
        } else {
            let merged = OooRange {
                start: offset.min(self.ranges[first].start),
                end: end.max(self.ranges[last - 1].end),
                stamp: self.stamp,
            };
            self.ranges.copy_within(last..n, first + 1);
            self.nranges = n - (last - first) + 1;
            merged
        };
        self.ranges[first] = merged;
        0
    }

    /// Whether `[offset, offset + len)` (relative to RCV.NXT, `len > 0`) is already held out of
    /// order, i.e. a segment carrying it is a duplicate (for D-SACK, RFC 2883 §4).
    pub fn ooo_contains(&self, offset: usize, len: usize) -> bool {
        let end = offset.saturating_add(len);
        len > 0 && self.ooo().iter().any(|r| r.start <= offset && end <= r.end)
    }

    /// Copies in-order bytes to `buf` and removes them; returns the count.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = self.peek(0, buf);
        self.discard(n)
    }

    /// Copies in-order bytes starting `offset` bytes after the oldest unread one, without
    /// removing them; returns the count.
    pub fn peek(&self, offset: usize, buf: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = buf.len().min(self.len - offset);
        let [a, b] = self.ring_slices(offset, n);
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..n].copy_from_slice(b);
        n
    }

    /// Removes up to `n` in-order bytes unread; returns how many.
    pub fn discard(&mut self, n: usize) -> usize {
        let n = n.min(self.len);
        if n == 0 {
            return 0;
        }
        self.len -= n;
        if self.len == 0 && self.nranges == 0 {
            self.head = 0;
        } else {
            self.head = (self.head + n) % self.storage.len();
        }
        self.maybe_shrink();
        n
    }

    /// The in-order bytes as the two parts of the ring.
    pub fn read_slices(&self) -> [&[u8]; 2] {
        self.ring_slices(0, self.len)
    }

    pub fn has_out_of_order(&self) -> bool {
        self.nranges > 0
    }

    /// Bytes held out of order.
    pub fn out_of_order_bytes(&self) -> usize {
        self.ooo().iter().map(|r| r.end - r.start).sum()
    }

    /// Fills `out` with SACK blocks (RFC 2018 §3 left/right edges, absolute sequence numbers given
    /// RCV.NXT = `rcv_nxt`) in RFC 2018 §4 order: the range holding the most recently received
    /// segment first, then the others most recent first. Returns the number filled
    /// (≤ `out.len()`, ≤ the ranges held). O(`out.len()` × ranges), no allocation.
    pub fn sack_blocks(
        &self,
        rcv_nxt: TcpSeqNumber,
        out: &mut [(TcpSeqNumber, TcpSeqNumber)],
    ) -> usize {
        let want = out.len().min(self.nranges);
        // Successive maxima of (stamp, index), each below the previous pick: most recent first
        // without a set of emitted ranges (there may be more ranges than bits in a word).
        let mut below: Option<(u64, usize)> = None;
        for slot in out.iter_mut().take(want) {
            let mut best: Option<(u64, usize)> = None;
            for (i, r) in self.ooo().iter().enumerate() {
                let key = (r.stamp, i);
                if below.is_none_or(|b| key < b) && best.is_none_or(|b| key > b) {
                    best = Some(key);
                }
            }
            let Some((_, i)) = best else { break };
            below = best;
            *slot = (rcv_nxt + self.ranges[i].start, rcv_nxt + self.ranges[i].end);
        }
        want
    }

    /// Forgets all out-of-order data (e.g. on reset).
    pub fn clear_out_of_order(&mut self) {
        self.nranges = 0;
        if self.len == 0 {
            self.head = 0;
        }
        self.maybe_shrink();
    }

    /// Writes the queue to a state image.
    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        w.usize(self.capacity);
        w.usize(self.limit);
        w.u64(self.stamp);
        w.u64(self.ooo_dropped);
        let [a, b] = self.read_slices();
        w.bytes_parts(&[a, b]);
        w.u16(self.nranges as u16);
        for r in self.ooo() {
            w.usize(r.start);
            w.usize(r.end);
            w.u64(r.stamp);
            let [a, b] = self.ring_slices(self.len + r.start, r.end - r.start);
            w.bytes_parts(&[a, b]);
        }
    }

    /// Reads a queue written by [`ReceiveBuffer::export`], checking capacity bounds and that the
    /// ranges are sorted, disjoint, non-adjacent, after RCV.NXT, within the storage bound, with
    /// exactly their bytes present, and stamped no later than the recency counter.
    pub fn import(r: &mut ImageReader<'_>) -> Result<ReceiveBuffer, ImageError> {
        r.read_section(SECTION)?;
        let capacity = r.read_usize()?;
        let limit = r.read_usize()?;
        if capacity > MAX_CAPACITY || limit > MAX_CAPACITY || limit < capacity {
            return Err(ImageError::Invalid("receive buffer capacity"));
        }
        let stamp = r.read_u64()?;
        let ooo_dropped = r.read_u64()?;
        let in_order = r.read_bytes()?;
        if in_order.len() > limit {
            return Err(ImageError::Invalid("receive buffer length"));
        }
        let nranges = usize::from(r.read_u16()?);
        if nranges > MAX_OOO_RANGES {
            return Err(ImageError::Invalid("receive buffer range count"));
        }
        let mut buf = ReceiveBuffer::new(capacity);
        buf.limit = limit;
        buf.stamp = stamp;
        buf.ooo_dropped = ooo_dropped;
        buf.len = in_order.len();
        let mut datas: [&[u8]; MAX_OOO_RANGES] = [&[]; MAX_OOO_RANGES];
        let mut prev_end = 0usize;
        for (i, data) in datas.iter_mut().enumerate().take(nranges) {
            let start = r.read_usize()?;
            let end = r.read_usize()?;
            let range_stamp = r.read_u64()?;
            *data = r.read_bytes()?;
            // start > prev_end: sorted, disjoint, not adjacent, and the first after RCV.NXT.
            if start <= prev_end || end <= start || end > limit - buf.len {
                return Err(ImageError::Invalid("receive buffer range"));
            }
            if data.len() != end - start || range_stamp > stamp {
                return Err(ImageError::Invalid("receive buffer range data"));
            }
            buf.ranges[i] = OooRange {
                start,
                end,
                stamp: range_stamp,
            };
            prev_end = end;
        }
        buf.nranges = nranges;
        let extent = buf.extent();
        if extent > 0 {
            buf.storage = vec![0u8; extent.max(MIN_STORAGE).min(limit)];
            buf.storage[..buf.len].copy_from_slice(in_order);
            for (i, data) in datas.iter().enumerate().take(nranges) {
                let at = buf.len + buf.ranges[i].start;
                buf.storage[at..at + data.len()].copy_from_slice(data);
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Instant;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Stream byte at absolute position `i`.
    fn byte(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 8)) as u8
    }

    fn stream(from: usize, len: usize) -> Vec<u8> {
        (from..from + len).map(byte).collect()
    }

    fn read_all(b: &mut ReceiveBuffer) -> Vec<u8> {
        let mut out = vec![0u8; b.len()];
        let n = b.read(&mut out);
        out.truncate(n);
        out
    }

    fn ranges(b: &ReceiveBuffer) -> Vec<(usize, usize)> {
        b.ooo().iter().map(|r| (r.start, r.end)).collect()
    }

    fn seq(n: u32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    #[test]
    fn in_order_data_reads_back() {
        let mut b = ReceiveBuffer::new(10);
        assert_eq!(b.window(), 10);
        assert_eq!(b.write_at(0, b"hello"), 5);
        assert_eq!(b.window(), 5);
        assert_eq!(b.write_at(0, b" world!"), 5, "clipped to the window");
        assert_eq!(b.window(), 0);
        assert_eq!(b.write_at(0, b"x"), 0);
        let mut p = [0u8; 4];
        assert_eq!(b.peek(6, &mut p), 4);
        assert_eq!(&p, b"worl");
        assert_eq!(b.peek(10, &mut p), 0);
        assert_eq!(read_all(&mut b), b"hello worl");
        assert_eq!(b.write_at(0, b""), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn out_of_order_data_fills_holes() {
        let mut b = ReceiveBuffer::new(100);
        assert_eq!(b.write_at(10, &stream(10, 5)), 0);
        assert_eq!(b.write_at(20, &stream(20, 5)), 0);
        assert_eq!(ranges(&b), vec![(10, 15), (20, 25)]);
        assert_eq!(b.out_of_order_bytes(), 10);
        // Adjacent ranges merge; overlap is fine.
        assert_eq!(b.write_at(15, &stream(15, 3)), 0);
        assert_eq!(ranges(&b), vec![(10, 18), (20, 25)]);
        assert_eq!(b.write_at(12, &stream(12, 10)), 0);
        assert_eq!(ranges(&b), vec![(10, 25)]);
        assert!(b.ooo_contains(11, 14));
        assert!(!b.ooo_contains(9, 2));
        assert!(!b.ooo_contains(24, 2));
        // Filling the hole makes everything in order.
        assert_eq!(b.write_at(0, &stream(0, 10)), 25);
        assert!(!b.has_out_of_order());
        assert_eq!(read_all(&mut b), stream(0, 25));
        // A segment covering a range entirely.
        assert_eq!(b.write_at(5, &stream(30, 2)), 0);
        assert_eq!(b.write_at(0, &stream(25, 10)), 10);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn out_of_order_respects_the_window() {
        let mut b = ReceiveBuffer::new(20);
        b.write_at(0, &[1; 15]);
        assert_eq!(b.window(), 5);
        assert_eq!(b.write_at(5, b"x"), 0, "beyond the window");
        assert!(!b.has_out_of_order());
        assert_eq!(b.write_at(3, b"abcdef"), 0);
        assert_eq!(ranges(&b), vec![(3, 5)]);
        assert_eq!(b.out_of_order_bytes(), 2);
    }

    #[test]
    fn range_limit_drops_new_ranges_but_accepts_merges() {
        let mut b = ReceiveBuffer::new(10_000);
        for i in 0..MAX_OOO_RANGES {
            b.write_at(10 + 10 * i, &[i as u8; 2]);
        }
        assert_eq!(b.ooo().len(), MAX_OOO_RANGES);
        let before = ranges(&b);
        assert_eq!(b.write_at(10 + 10 * MAX_OOO_RANGES + 100, b"zz"), 0);
        assert_eq!(b.ooo_dropped(), 1);
        assert_eq!(ranges(&b), before, "dropped segment leaves no trace");
        // Extending a range still works at the limit, as does joining two.
        b.write_at(12, &[0; 2]);
        assert_eq!(
            b.ooo()[0],
            OooRange {
                start: 10,
                end: 14,
                stamp: b.stamp
            }
        );
        b.write_at(14, &[0; 6]);
        assert_eq!(b.ooo().len(), MAX_OOO_RANGES - 1);
        assert_eq!(b.write_at(10 + 10 * MAX_OOO_RANGES + 100, b"zz"), 0);
        assert_eq!(b.ooo().len(), MAX_OOO_RANGES);
        assert_eq!(b.ooo_dropped(), 1);
        // In-order data is always accepted.
        assert_eq!(b.write_at(0, &[0; 10]), 22);
    }

    #[test]
    fn sack_blocks_follow_rfc_2018_order() {
        let mut b = ReceiveBuffer::new(100_000);
        let nxt = seq(u32::MAX - 1000); // the blocks cross the 2^32 wrap
        let mut out = [(seq(0), seq(0)); 4];
        assert_eq!(b.sack_blocks(nxt, &mut out), 0);
        b.write_at(1000, &[0; 100]); // A
        b.write_at(3000, &[0; 100]); // B
        b.write_at(5000, &[0; 100]); // C
        assert_eq!(b.sack_blocks(nxt, &mut out), 3);
        assert_eq!(
            out[..3],
            [
                (nxt + 5000, nxt + 5100),
                (nxt + 3000, nxt + 3100),
                (seq(u32::MAX), seq(99))
            ]
        );
        // A retransmission landing in A: A is reported first again (RFC 2018 §4).
        b.write_at(1050, &[0; 100]);
        b.sack_blocks(nxt, &mut out);
        assert_eq!(out[0], (nxt + 1000, nxt + 1150));
        assert_eq!(out[1], (nxt + 5000, nxt + 5100));
        assert_eq!(out[2], (nxt + 3000, nxt + 3100));
        // Five ranges: only four fit, the least recent is left out.
        b.write_at(7000, &[0; 10]);
        b.write_at(9000, &[0; 10]);
        assert_eq!(b.sack_blocks(nxt, &mut out), 4);
        assert_eq!(
            out,
            [
                (nxt + 9000, nxt + 9010),
                (nxt + 7000, nxt + 7010),
                (nxt + 1000, nxt + 1150),
                (nxt + 5000, nxt + 5100)
            ]
        );
        // Merging two ranges makes the merged one the most recent.
        b.write_at(5100, &[0; 1900]);
        let mut two = [(seq(0), seq(0)); 2];
        assert_eq!(b.sack_blocks(nxt, &mut two), 2);
        assert_eq!(two, [(nxt + 5000, nxt + 7010), (nxt + 9000, nxt + 9010)]);
        // In-order data advancing RCV.NXT: remaining blocks are shifted accordingly.
        assert_eq!(b.write_at(0, &[0; 1000]), 1150);
        let nxt = nxt + 1150;
        assert_eq!(b.sack_blocks(nxt, &mut out), 3);
        assert_eq!(
            out[..3],
            [
                (nxt + (5000 - 1150), nxt + (7010 - 1150)),
                (nxt + (9000 - 1150), nxt + (9010 - 1150)),
                (nxt + (3000 - 1150), nxt + (3100 - 1150))
            ]
        );
        assert_eq!(b.sack_blocks(nxt, &mut []), 0);
    }

    #[test]
    fn capacity_changes_never_drop_data() {
        let mut b = ReceiveBuffer::new(50_000);
        b.write_at(0, &stream(0, 10_000));
        b.write_at(10_000, &stream(20_000, 10_000));
        b.set_capacity(5000);
        assert_eq!(b.window(), 0);
        assert_eq!(b.write_at(0, &stream(10_000, 10)), 0);
        assert_eq!(b.out_of_order_bytes(), 10_000);
        assert_eq!(read_all(&mut b), stream(0, 10_000));
        // Window reopens below the (new) capacity; the far range is still there.
        assert_eq!(b.window(), 5000);
        assert_eq!(b.write_at(0, &stream(10_000, 6000)), 5000);
        assert_eq!(read_all(&mut b), stream(10_000, 5000));
        b.set_capacity(50_000);
        assert_eq!(b.write_at(0, &stream(15_000, 5000)), 15_000);
        assert_eq!(read_all(&mut b), stream(15_000, 15_000));
        // Drained and shrunk: storage released.
        b.set_capacity(100);
        assert_eq!(b.storage.len(), 0);
        assert_eq!(b.write_at(0, b"ok"), 2);
        assert_eq!(read_all(&mut b), b"ok");
        assert_eq!(ReceiveBuffer::new(usize::MAX).capacity(), MAX_CAPACITY);
    }

    #[test]
    fn clear_out_of_order_keeps_in_order_data() {
        let mut b = ReceiveBuffer::new(1000);
        b.write_at(0, b"abc");
        b.write_at(10, b"xyz");
        b.clear_out_of_order();
        assert!(!b.has_out_of_order());
        assert_eq!(
            b.write_at(0, &stream(0, 20)),
            20,
            "old range does not come back"
        );
        let mut all = b"abc".to_vec();
        all.extend(stream(0, 20));
        assert_eq!(read_all(&mut b), all);
    }

    #[test]
    fn storage_stops_growing_once_large_enough() {
        let mut b = ReceiveBuffer::new(1 << 18);
        let seg = [3u8; 1448];
        let mut sink = [0u8; 1448];
        for _ in 0..100 {
            b.write_at(0, &seg);
        }
        b.write_at(1448 * 10, &seg);
        let ring = b.storage.len();
        for i in 0..10_000 {
            b.read(&mut sink);
            b.write_at(1448 * (i % 7), &seg);
            assert_eq!(b.storage.len(), ring, "no reallocation in steady state");
        }
    }

    /// Per-byte reference: `inorder` bytes unread, `ooo[k]` = byte at offset k after RCV.NXT.
    struct Model {
        inorder: std::collections::VecDeque<u8>,
        ooo: Vec<Option<u8>>,
        capacity: usize,
    }

    impl Model {
        fn runs(ooo: &[Option<u8>]) -> Vec<(usize, usize)> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < ooo.len() {
                if ooo[i].is_some() {
                    let s = i;
                    while i < ooo.len() && ooo[i].is_some() {
                        i += 1;
                    }
                    out.push((s, i));
                } else {
                    i += 1;
                }
            }
            out
        }

        fn write_at(&mut self, offset: usize, data: &[u8]) -> Option<usize> {
            let window = self.capacity.saturating_sub(self.inorder.len());
            if data.is_empty() || offset >= window {
                return Some(0);
            }
            let end = (offset + data.len()).min(window);
            let mut next = self.ooo.clone();
            if next.len() < end {
                next.resize(end, None);
            }
            for (k, &v) in (offset..end).zip(data) {
                next[k] = Some(v);
            }
            if offset > 0 && Self::runs(&next).len() > MAX_OOO_RANGES {
                return None;
            }
            let mut advance = 0;
            while advance < next.len() && next[advance].is_some() {
                self.inorder.push_back(next[advance].unwrap());
                advance += 1;
            }
            next.drain(..advance);
            self.ooo = next;
            Some(advance)
        }
    }

    #[test]
    fn random_scenarios_match_a_per_byte_model() {
        let mut rng = Rng(0x0b5e_55ed);
        for round in 0..40 {
            let capacity = 100 + rng.below(6000);
            let mut b = ReceiveBuffer::new(capacity);
            let mut m = Model {
                inorder: Default::default(),
                ooo: Vec::new(),
                capacity,
            };
            let mut rcv_nxt_abs = 0usize; // absolute stream position of RCV.NXT
            let base = TcpSeqNumber(u32::MAX - 3000 + round * 37);
            let mut dropped = 0;
            let mut last_ooo: Option<usize> = None; // absolute position of the newest stored OOO segment
            for _ in 0..600 {
                match rng.below(10) {
                    0..=5 => {
                        let offset = if rng.below(4) == 0 {
                            0
                        } else {
                            rng.below(capacity)
                        };
                        let len = rng.below(400);
                        let data = stream(rcv_nxt_abs + offset, len);
                        let window = b.window();
                        let want = m.write_at(offset, &data);
                        let got = b.write_at(offset, &data);
                        match want {
                            Some(adv) => {
                                assert_eq!(got, adv);
                                if offset > 0 && len > 0 && offset < window {
                                    last_ooo = Some(rcv_nxt_abs + offset);
                                }
                            }
                            None => {
                                assert_eq!(got, 0);
                                dropped += 1;
                            }
                        }
                        rcv_nxt_abs += got;
                    }
                    6 | 7 => {
                        let mut buf = vec![0u8; rng.below(800)];
                        let n = b.read(&mut buf);
                        let want: Vec<u8> =
                            m.inorder.drain(..buf.len().min(m.inorder.len())).collect();
                        assert_eq!(&buf[..n], &want[..]);
                    }
                    8 => {
                        let n = rng.below(300);
                        let d = b.discard(n);
                        assert_eq!(d, n.min(m.inorder.len()));
                        m.inorder.drain(..d);
                    }
                    _ => {
                        let c = 50 + rng.below(6000);
                        b.set_capacity(c);
                        m.capacity = c;
                    }
                }
                assert_eq!(b.len(), m.inorder.len());
                assert_eq!(b.ooo_dropped(), dropped);
                let runs = Model::runs(&m.ooo);
                assert_eq!(ranges(&b), runs);
                assert_eq!(b.out_of_order_bytes(), runs.iter().map(|r| r.1 - r.0).sum());
                let [x, y] = b.read_slices();
                assert_eq!(
                    [x, y].concat(),
                    m.inorder.iter().copied().collect::<Vec<_>>()
                );
                // Out-of-order bytes are the right bytes.
                for &(s, e) in &runs {
                    let [p, q] = b.ring_slices(b.len() + s, e - s);
                    assert_eq!([p, q].concat(), stream(rcv_nxt_abs + s, e - s));
                }
                // SACK blocks: distinct held ranges, the newest segment's range first.
                let mut out = [(seq(0), seq(0)); 4];
                let rcv_nxt = base + rcv_nxt_abs;
                let n = b.sack_blocks(rcv_nxt, &mut out);
                assert_eq!(n, runs.len().min(4));
                for (i, blk) in out[..n].iter().enumerate() {
                    let s = (blk.0 - rcv_nxt) as usize;
                    let e = (blk.1 - rcv_nxt) as usize;
                    assert!(runs.contains(&(s, e)));
                    assert!(!out[..i].contains(blk));
                }
                if let Some(abs) = last_ooo.filter(|&a| a > rcv_nxt_abs) {
                    let off = abs - rcv_nxt_abs;
                    let &(s, e) = runs.iter().find(|r| r.0 <= off && off < r.1).unwrap();
                    assert_eq!(out[0], (rcv_nxt + s, rcv_nxt + e));
                }
            }
        }
    }

    fn image_of(b: &ReceiveBuffer) -> Vec<u8> {
        let mut w = ImageWriter::new(Instant::ZERO);
        b.export(&mut w);
        w.finish()
    }

    fn import_all(image: &[u8]) -> Result<ReceiveBuffer, ImageError> {
        let mut r = ImageReader::new(image, Instant::ZERO)?;
        let b = ReceiveBuffer::import(&mut r)?;
        r.finish()?;
        Ok(b)
    }

    fn sample() -> ReceiveBuffer {
        let mut b = ReceiveBuffer::new(10_000);
        b.write_at(0, &stream(0, 3000));
        let mut sink = [0u8; 2500];
        b.read(&mut sink);
        b.write_at(0, &stream(3000, 100));
        b.write_at(400, &stream(3500, 50));
        b.write_at(900, &stream(4000, 70));
        b.write_at(405, &stream(3505, 60)); // makes the first range the most recent
        b
    }

    #[test]
    fn image_round_trip() {
        let b = sample();
        let mut back = import_all(&image_of(&b)).unwrap();
        assert_eq!(back.capacity(), b.capacity());
        assert_eq!(ranges(&back), ranges(&b));
        let (mut o1, mut o2) = ([(seq(0), seq(0)); 4], [(seq(0), seq(0)); 4]);
        assert_eq!(
            b.sack_blocks(seq(7), &mut o1),
            back.sack_blocks(seq(7), &mut o2)
        );
        assert_eq!(o1, o2);
        assert_eq!(back.write_at(0, &stream(3100, 400)), 465);
        assert_eq!(read_all(&mut back), stream(2500, 1065));
        assert_eq!(ranges(&back), vec![(900 - 465, 970 - 465)]);
        // Empty and shrunk-below-data buffers round-trip too.
        let e = ReceiveBuffer::new(7);
        let back = import_all(&image_of(&e)).unwrap();
        assert_eq!((back.capacity(), back.len(), back.storage.len()), (7, 0, 0));
        let mut s = sample();
        s.set_capacity(10);
        let back = import_all(&image_of(&s)).unwrap();
        assert_eq!((back.capacity(), back.len(), back.window()), (10, 600, 0));
        assert_eq!(back.out_of_order_bytes(), s.out_of_order_bytes());
    }

    #[test]
    fn corrupted_images_are_rejected() {
        let image = image_of(&sample());
        for cut in 6..image.len() {
            assert_eq!(
                import_all(&image[..cut]).unwrap_err(),
                ImageError::Truncated,
                "{cut}"
            );
        }
        let mut long = image.clone();
        long.push(0);
        assert_eq!(import_all(&long).unwrap_err(), ImageError::TrailingBytes);

        struct R {
            start: usize,
            end: usize,
            stamp: u64,
            len: usize,
        }
        let build = |cap: usize, limit: usize, inorder: usize, rs: &[R]| {
            let mut w = ImageWriter::new(Instant::ZERO);
            w.section(SECTION);
            w.usize(cap);
            w.usize(limit);
            w.u64(10);
            w.u64(0);
            w.bytes(&vec![0; inorder]);
            w.u16(rs.len() as u16);
            for r in rs {
                w.usize(r.start);
                w.usize(r.end);
                w.u64(r.stamp);
                w.bytes(&vec![0; r.len]);
            }
            import_all(&w.finish())
        };
        let r = |start, end| R {
            start,
            end,
            stamp: 1,
            len: end - start,
        };
        assert!(build(100, 100, 10, &[r(5, 10), r(20, 30)]).is_ok());
        let bad = |res: Result<ReceiveBuffer, ImageError>| {
            assert!(matches!(res, Err(ImageError::Invalid(_))), "{res:?}")
        };
        bad(build(MAX_CAPACITY + 1, MAX_CAPACITY + 1, 0, &[]));
        bad(build(100, 99, 0, &[]));
        bad(build(100, 100, 101, &[]));
        bad(build(100, 100, 10, &[r(0, 10)])); // starts at RCV.NXT
        bad(build(100, 100, 10, &[r(20, 30), r(5, 10)])); // unsorted
        bad(build(100, 100, 10, &[r(5, 10), r(8, 30)])); // overlapping
        bad(build(100, 100, 10, &[r(5, 10), r(10, 30)])); // adjacent
        bad(build(100, 100, 10, &[r(5, 5)])); // empty
        bad(build(100, 100, 10, &[r(50, 91)])); // beyond the bound
        bad(build(
            100,
            100,
            10,
            &[R {
                start: 5,
                end: 10,
                stamp: 1,
                len: 4,
            }],
        ));
        bad(build(
            100,
            100,
            10,
            &[R {
                start: 5,
                end: 10,
                stamp: 11,
                len: 5,
            }],
        ));
        let many: Vec<R> = (0..=MAX_OOO_RANGES)
            .map(|i| r(2 + 2 * i, 3 + 2 * i))
            .collect();
        bad(build(1000, 1000, 0, &many));
        bad(build(1000, 1000, 0, &[r(usize::MAX - 1, usize::MAX)]));
    }
}
