//! The sender's SACK scoreboard (RFC 6675 §2–§4, with D-SACK detection per RFC 2883 §4).
//!
//! The scoreboard records which bytes above SND.UNA the receiver has SACKed, as sorted,
//! disjoint, non-adjacent ranges (at most [`MAX_SACKED_RANGES`]); a window may hold thousands of
//! segments, but every operation here costs O(ranges) and none allocates, so it can run on
//! every ACK.
//!
//! RFC 6675's routines are computed at byte granularity:
//! - IsLost(b) (§4): at least DupThresh discontiguous SACKed ranges hold bytes above `b`, or
//!   more than (DupThresh − 1)·SMSS SACKed bytes lie above `b`. DupThresh is [`DUP_THRESH`]
//!   unless the engine raised it to the reordering degree it observed
//!   ([`Scoreboard::set_dupthresh`], Linux `tp->reordering`). Both counts
//!   only fall as `b` grows, so the lost bytes are exactly those below one boundary, found by
//!   walking the ranges down from the highest (usually 1–3 steps).
//! - SetPipe (§4): every byte in [SND.UNA, SND.NXT) not SACKed counts once if it is not lost and
//!   once more if it was retransmitted (below HighRxt), i.e. pipe is in bytes.
//! - NextSeg rule (1) (§4): the first byte at or above max(SND.UNA, HighRxt) that is neither
//!   SACKed nor beyond SND.NXT and IsLost, for at most one SMSS up to the next SACKed byte.
//!
//! `high_rxt` is exclusive throughout: the bytes below it have been retransmitted.
//!
//! When a SACK block would need a range beyond the bound, the lowest range (the oldest data) is
//! forgotten: losing SACK information only causes a redundant retransmission, never a stall.
#![forbid(unsafe_code)]

use super::image::{ImageError, ImageReader, ImageWriter};
use crate::wire::tcp::TcpSeqNumber;

/// Most SACKed ranges remembered (as many as a receiver keeps out-of-order ranges).
pub const MAX_SACKED_RANGES: usize = 256;
/// RFC 6675 DupThresh.
pub const DUP_THRESH: usize = 3;
/// Section tag of a scoreboard in a state image.
const SECTION: u8 = 0x43; // 'C'

/// What one ACK's SACK blocks changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SackUpdate {
    /// Bytes SACKed by this ACK that were not SACKed before (and are still remembered).
    pub newly_sacked: usize,
    /// The first block was a D-SACK (RFC 2883 §4): it reports a duplicate segment and is not
    /// scoreboard information.
    pub dsack: bool,
    /// The lowest byte this ACK SACKed that was not SACKed before (reordering detection: a
    /// newly SACKed byte below the highest SACKed one arrived late).
    pub lowest_new: Option<TcpSeqNumber>,
}

/// RFC 6675 scoreboard: the SACKed byte ranges above SND.UNA.
#[derive(Debug, Clone)]
pub struct Scoreboard {
    /// `[start, end)` ranges, sorted in sequence space, disjoint and non-adjacent.
    ranges: [(TcpSeqNumber, TcpSeqNumber); MAX_SACKED_RANGES],
    len: usize,
    /// Sum of the range lengths.
    sacked: usize,
    /// RFC 6675 DupThresh in segments (not part of an image: the engine sets it before use).
    dupthresh: usize,
}

impl Default for Scoreboard {
    fn default() -> Self {
        Scoreboard::new()
    }
}

/// Length of `[a, b)` (0 when `b` is not after `a`).
fn span(a: TcpSeqNumber, b: TcpSeqNumber) -> usize {
    if b > a { (b - a) as u32 as usize } else { 0 }
}

impl Scoreboard {
    pub fn new() -> Scoreboard {
        Scoreboard {
            ranges: [(TcpSeqNumber(0), TcpSeqNumber(0)); MAX_SACKED_RANGES],
            len: 0,
            sacked: 0,
            dupthresh: DUP_THRESH,
        }
    }

    /// Sets DupThresh (at least [`DUP_THRESH`]) for IsLost, NextSeg and SetPipe.
    pub fn set_dupthresh(&mut self, segments: usize) {
        self.dupthresh = segments.max(DUP_THRESH);
    }

    /// Forgets all SACK information (e.g. after an RTO, RFC 6675 §5.1, or a reset).
    pub fn clear(&mut self) {
        self.len = 0;
        self.sacked = 0;
    }

    /// The SACKed ranges `[start, end)`, lowest first.
    pub fn ranges(&self) -> &[(TcpSeqNumber, TcpSeqNumber)] {
        &self.ranges[..self.len]
    }

    /// Processes the SACK blocks of one ACK (RFC 6675 §5 "update the scoreboard").
    ///
    /// `snd_una` is the cumulative acknowledgment after this ACK. The first block is a D-SACK
    /// (RFC 2883 §4) when it starts below `snd_una` or lies within the second block; it is then
    /// not recorded. Other blocks are recorded if they lie within `[snd_una, snd_nxt]` (a block
    /// starting below `snd_una` is trimmed to it); malformed or out-of-window blocks are ignored.
    pub fn on_sack(
        &mut self,
        snd_una: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        blocks: &[(TcpSeqNumber, TcpSeqNumber)],
    ) -> SackUpdate {
        self.on_cumulative_ack(snd_una);
        let mut update = SackUpdate::default();
        let mut blocks = blocks;
        if let Some(&(start, end)) = blocks.first() {
            let inside_second = blocks
                .get(1)
                .is_some_and(|&(s2, e2)| s2 <= start && end <= e2 && start < end);
            if start < snd_una || inside_second {
                update.dsack = true;
                blocks = &blocks[1..];
            }
        }
        for &(start, end) in blocks {
            let start = start.max(snd_una);
            if start >= end || end > snd_nxt || end <= snd_una {
                continue;
            }
            let (new, lowest) = self.insert(start, end);
            if new > 0 {
                update.newly_sacked += new;
                update.lowest_new = Some(update.lowest_new.map_or(lowest, |l| l.min(lowest)));
            }
        }
        update
    }

    /// Records `[start, end)` (non-empty, above every acknowledged byte); returns the bytes it
    /// newly SACKed that remain recorded and the lowest of them.
    fn insert(&mut self, start: TcpSeqNumber, end: TcpSeqNumber) -> (usize, TcpSeqNumber) {
        let n = self.len;
        let first = self.ranges[..n].partition_point(|r| r.1 < start);
        // Ranges are non-adjacent, so the first byte after a range containing `start` is new.
        let lowest = match self.ranges[..n].get(first) {
            Some(&(s, e)) if s <= start => e,
            _ => start,
        };
        let mut last = first;
        let mut covered = 0;
        while last < n && self.ranges[last].0 <= end {
            let (s, e) = self.ranges[last];
            covered += span(s.max(start), e.min(end));
            last += 1;
        }
        let new = span(start, end) - covered;
        if first == last {
            if n == MAX_SACKED_RANGES {
                if first == 0 {
                    return (0, lowest); // the new block is the lowest: it is the one forgotten
                }
                // Forget the lowest range to make room.
                self.sacked -= span(self.ranges[0].0, self.ranges[0].1);
                self.ranges.copy_within(1..first, 0);
                self.ranges[first - 1] = (start, end);
            } else {
                self.ranges.copy_within(first..n, first + 1);
                self.ranges[first] = (start, end);
                self.len = n + 1;
            }
        } else {
            let merged = (
                start.min(self.ranges[first].0),
                end.max(self.ranges[last - 1].1),
            );
            if last > first + 1 {
                self.ranges.copy_within(last..n, first + 1);
                self.len = n - (last - first) + 1;
            }
            self.ranges[first] = merged;
        }
        self.sacked += new;
        (new, lowest)
    }

    /// Drops SACK information at or below the new cumulative acknowledgment.
    pub fn on_cumulative_ack(&mut self, snd_una: TcpSeqNumber) {
        let n = self.len;
        let gone = self.ranges[..n].partition_point(|r| r.1 <= snd_una);
        for r in &self.ranges[..gone] {
            self.sacked -= span(r.0, r.1);
        }
        if gone > 0 {
            self.ranges.copy_within(gone..n, 0);
            self.len = n - gone;
        }
        if let Some(first) = self.ranges[..self.len].first_mut()
            && first.0 < snd_una
        {
            self.sacked -= span(first.0, snd_una);
            first.0 = snd_una;
        }
    }

    /// Bytes SACKed.
    pub fn sacked_bytes(&self) -> usize {
        self.sacked
    }

    /// The sequence number just after the highest SACKed byte (the right edge of the highest
    /// range), if any.
    pub fn highest_sacked(&self) -> Option<TcpSeqNumber> {
        self.ranges().last().map(|r| r.1)
    }

    pub fn is_sacked(&self, seq: TcpSeqNumber) -> bool {
        let r = self.ranges();
        let i = r.partition_point(|r| r.1 <= seq);
        i < r.len() && r[i].0 <= seq
    }

    /// The boundary below which every byte IsLost (RFC 6675 §4), or `None` if none is.
    fn lost_boundary(&self, mss: usize) -> Option<TcpSeqNumber> {
        // Lost by bytes: more than (DupThresh−1)·SMSS SACKed bytes above, i.e. at least `need`.
        let need = mss.saturating_mul(self.dupthresh - 1).saturating_add(1);
        let mut above = 0usize;
        for (k, &(s, e)) in self.ranges().iter().rev().enumerate() {
            let len = span(s, e);
            let mut boundary = None;
            if above + len >= need {
                boundary = Some(e - (need - above));
            }
            if k + 1 == self.dupthresh {
                // Lost by count: this range still has a byte above b for every b < e − 1.
                let by_count = e - 1;
                boundary = Some(boundary.map_or(by_count, |b| b.max(by_count)));
            }
            if boundary.is_some() {
                return boundary;
            }
            above += len;
        }
        None
    }

    /// RFC 6675 IsLost(seq) with the current DupThresh and SMSS = `mss`.
    pub fn is_lost(&self, seq: TcpSeqNumber, mss: usize) -> bool {
        self.lost_boundary(mss).is_some_and(|b| seq < b)
    }

    /// SACKed bytes within `[from, to)`.
    fn sacked_in(&self, from: TcpSeqNumber, to: TcpSeqNumber) -> usize {
        if to <= from {
            return 0;
        }
        let r = self.ranges();
        let mut sum = 0;
        for &(s, e) in &r[r.partition_point(|r| r.1 <= from)..] {
            if s >= to {
                break;
            }
            sum += span(s.max(from), e.min(to));
        }
        sum
    }

    /// Bytes in `[from, to)` not SACKed.
    pub fn unsacked_in(&self, from: TcpSeqNumber, to: TcpSeqNumber) -> usize {
        span(from, to) - self.sacked_in(from, to)
    }

    /// RFC 6675 NextSeg rule (1): the first not-yet-retransmitted (at or above `high_rxt`), not
    /// SACKed byte below `snd_nxt` that IsLost, with the length to retransmit: at most `mss`,
    /// not reaching into a SACKed range or beyond `snd_nxt`. Rules (2)–(4) are the engine's.
    pub fn next_seg(
        &self,
        snd_una: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        high_rxt: TcpSeqNumber,
        mss: usize,
    ) -> Option<(TcpSeqNumber, usize)> {
        if mss == 0 {
            return None;
        }
        let lost = self.lost_boundary(mss)?;
        let mut seq = snd_una.max(high_rxt);
        let mut limit = snd_nxt;
        for &(s, e) in self.ranges() {
            if e <= seq {
                continue;
            }
            if s <= seq {
                seq = e;
                continue;
            }
            limit = limit.min(s);
            break;
        }
        if seq >= lost || seq >= limit {
            return None;
        }
        Some((seq, span(seq, limit).min(mss)))
    }

    /// RFC 6675 SetPipe, in bytes: the not-SACKed bytes in `[snd_una, snd_nxt)` that are not
    /// lost, plus those retransmitted (below `high_rxt`). O(ranges).
    pub fn pipe(
        &self,
        snd_una: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        high_rxt: TcpSeqNumber,
        mss: usize,
    ) -> usize {
        if snd_nxt <= snd_una {
            return 0;
        }
        // One pass in offsets from SND.UNA: SACKed bytes below SND.NXT, below the lost
        // boundary and below HighRxt.
        let off = |x: TcpSeqNumber| (x - snd_una).max(0) as u32 as usize;
        let nxt = off(snd_nxt);
        let lost = self.lost_boundary(mss).map_or(0, |b| off(b).min(nxt));
        let rxt = off(high_rxt).min(nxt);
        let (mut sacked, mut sacked_lost, mut sacked_rxt) = (0, 0, 0);
        for &(s, e) in self.ranges() {
            let (s, e) = (off(s), off(e).min(nxt));
            if s >= e {
                continue;
            }
            sacked += e - s;
            sacked_lost += e.min(lost).saturating_sub(s);
            sacked_rxt += e.min(rxt).saturating_sub(s);
        }
        (nxt - sacked) - (lost - sacked_lost) + (rxt - sacked_rxt)
    }

    /// Not-SACKed bytes in `[snd_una, snd_nxt)` that IsLost (TCP_INFO `lost`, in bytes).
    pub fn lost_bytes(&self, snd_una: TcpSeqNumber, snd_nxt: TcpSeqNumber, mss: usize) -> usize {
        match self.lost_boundary(mss) {
            Some(b) if snd_nxt > snd_una => self.unsacked_in(snd_una, b.max(snd_una).min(snd_nxt)),
            _ => 0,
        }
    }

    /// Writes the ranges to a state image.
    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        w.u16(self.len as u16);
        for &(s, e) in self.ranges() {
            w.seq(s);
            w.seq(e);
        }
    }

    /// Reads a scoreboard written by [`Scoreboard::export`], checking that the ranges are
    /// non-empty, sorted, disjoint, non-adjacent and span less than 2³¹ in all.
    pub fn import(r: &mut ImageReader<'_>) -> Result<Scoreboard, ImageError> {
        r.read_section(SECTION)?;
        let n = usize::from(r.read_u16()?);
        if n > MAX_SACKED_RANGES {
            return Err(ImageError::Invalid("scoreboard range count"));
        }
        let mut board = Scoreboard::new();
        for i in 0..n {
            let s = r.read_seq()?;
            let e = r.read_seq()?;
            if e <= s || (i > 0 && s <= board.ranges[i - 1].1) {
                return Err(ImageError::Invalid("scoreboard range"));
            }
            board.ranges[i] = (s, e);
            board.sacked += span(s, e);
        }
        board.len = n;
        if let (Some(first), Some(last)) = (board.ranges().first(), board.ranges().last())
            && last.1 <= first.0
        {
            return Err(ImageError::Invalid("scoreboard span"));
        }
        Ok(board)
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

    fn seq(n: u32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    const MSS: usize = 100;

    #[test]
    fn records_merges_and_acks_across_the_wrap() {
        let una = seq(u32::MAX - 500);
        let nxt = una + 2000;
        let mut b = Scoreboard::new();
        let u = b.on_sack(una, nxt, &[(una + 400, una + 600)]);
        assert_eq!(
            u,
            SackUpdate {
                newly_sacked: 200,
                dsack: false,
                lowest_new: Some(una + 400),
            }
        );
        // Crosses 2^32; the first block is the new one, the second repeats.
        let u = b.on_sack(una, nxt, &[(una + 700, una + 900), (una + 400, una + 600)]);
        assert_eq!(u.newly_sacked, 200);
        assert!(!u.dsack);
        assert_eq!(
            b.ranges(),
            &[(una + 400, una + 600), (una + 700, una + 900)]
        );
        // Adjacent and overlapping blocks merge.
        assert_eq!(
            b.on_sack(una, nxt, &[(una + 600, una + 650)]).newly_sacked,
            50
        );
        assert_eq!(
            b.on_sack(una, nxt, &[(una + 500, una + 750)]).newly_sacked,
            50
        );
        assert_eq!(b.ranges(), &[(una + 400, una + 900)]);
        assert_eq!(b.sacked_bytes(), 500);
        assert_eq!(b.highest_sacked(), Some(una + 900));
        assert!(b.is_sacked(una + 400) && b.is_sacked(una + 899) && b.is_sacked(seq(3)));
        assert!(!b.is_sacked(una + 399) && !b.is_sacked(una + 900));
        // A cumulative ACK into the range trims it; past it, removes it.
        b.on_cumulative_ack(una + 450);
        assert_eq!(b.ranges(), &[(una + 450, una + 900)]);
        assert_eq!(b.sacked_bytes(), 450);
        b.on_cumulative_ack(una + 900);
        assert_eq!(b.ranges(), &[]);
        assert_eq!(b.sacked_bytes(), 0);
        assert_eq!(b.highest_sacked(), None);
    }

    #[test]
    fn ignores_blocks_outside_the_window() {
        let una = seq(1000);
        let nxt = seq(2000);
        let mut b = Scoreboard::new();
        let blocks = [
            (seq(1500), seq(1400)), // reversed
            (seq(1500), seq(1500)), // empty
            (seq(1900), seq(2001)), // beyond SND.NXT
            (seq(900), seq(1000)),  // entirely acknowledged (not first: no D-SACK)
            (seq(3000), seq(3100)),
        ];
        let u = b.on_sack(una, nxt, &[(seq(1100), seq(1200)), blocks[0]]);
        assert_eq!(u.newly_sacked, 100);
        for blk in blocks {
            assert_eq!(
                b.on_sack(una, nxt, &[(seq(1100), seq(1200)), blk])
                    .newly_sacked,
                0
            );
        }
        // Partly acknowledged: trimmed.
        let u = b.on_sack(una, nxt, &[(seq(1100), seq(1200)), (seq(950), seq(1050))]);
        assert_eq!(u.newly_sacked, 50);
        assert_eq!(
            b.ranges(),
            &[(seq(1000), seq(1050)), (seq(1100), seq(1200))]
        );
        // A block reaching exactly SND.NXT is valid.
        assert_eq!(
            b.on_sack(una, nxt, &[(seq(1950), seq(2000))]).newly_sacked,
            50
        );
    }

    #[test]
    fn detects_dsack() {
        let una = seq(u32::MAX - 10);
        let nxt = una + 1000;
        let mut b = Scoreboard::new();
        // RFC 2883 §4.1.1: first block below the cumulative ACK.
        let u = b.on_sack(una, nxt, &[(una - 100, una - 50)]);
        assert_eq!(
            u,
            SackUpdate {
                newly_sacked: 0,
                dsack: true,
                lowest_new: None,
            }
        );
        assert_eq!(b.sacked_bytes(), 0);
        // Below, followed by real SACK information.
        let u = b.on_sack(una, nxt, &[(una - 100, una), (una + 100, una + 200)]);
        assert_eq!(
            u,
            SackUpdate {
                newly_sacked: 100,
                dsack: true,
                lowest_new: Some(una + 100),
            }
        );
        // RFC 2883 §4.1.2: first block within the second.
        let u = b.on_sack(una, nxt, &[(una + 300, una + 350), (una + 300, una + 400)]);
        assert_eq!(
            u,
            SackUpdate {
                newly_sacked: 100,
                dsack: true,
                lowest_new: Some(una + 300),
            }
        );
        assert_eq!(
            b.ranges(),
            &[(una + 100, una + 200), (una + 300, una + 400)]
        );
        // Not a D-SACK: the first block merely overlaps the second, or repeats a known range.
        assert!(
            !b.on_sack(una, nxt, &[(una + 250, una + 350), (una + 300, una + 400)])
                .dsack
        );
        assert!(!b.on_sack(una, nxt, &[(una + 100, una + 200)]).dsack);
        assert!(!b.on_sack(una, nxt, &[]).dsack);
    }

    #[test]
    fn range_overflow_forgets_the_lowest() {
        let una = seq(u32::MAX - 5000);
        let nxt = una + 1_000_000;
        let mut b = Scoreboard::new();
        for i in 0..MAX_SACKED_RANGES {
            b.on_sack(
                una,
                nxt,
                &[(una + 1000 * (i + 1), una + 1000 * (i + 1) + 10)],
            );
        }
        assert_eq!(b.ranges().len(), MAX_SACKED_RANGES);
        assert_eq!(b.sacked_bytes(), 10 * MAX_SACKED_RANGES);
        // A new highest range: the lowest goes.
        let u = b.on_sack(una, nxt, &[(una + 900_000, una + 900_020)]);
        assert_eq!(u.newly_sacked, 20);
        assert_eq!(b.ranges().len(), MAX_SACKED_RANGES);
        assert_eq!(b.ranges()[0].0, una + 2000);
        assert_eq!(b.highest_sacked(), Some(una + 900_020));
        assert_eq!(b.sacked_bytes(), 10 * MAX_SACKED_RANGES + 10);
        // A new lowest range is itself the one forgotten.
        let u = b.on_sack(una, nxt, &[(una + 10, una + 20)]);
        assert_eq!(u.newly_sacked, 0);
        assert_eq!(b.ranges()[0].0, una + 2000);
        // A new middle range.
        let u = b.on_sack(una, nxt, &[(una + 2500, una + 2600)]);
        assert_eq!(u.newly_sacked, 100);
        assert_eq!(b.ranges()[0], (una + 2500, una + 2600));
        // Merging is always possible at the limit.
        let u = b.on_sack(una, nxt, &[(una + 2600, una + 3000)]);
        assert_eq!(u.newly_sacked, 400);
        assert_eq!(b.ranges().len(), MAX_SACKED_RANGES - 1);
    }

    #[test]
    fn is_lost_by_count_and_by_bytes() {
        let una = seq(u32::MAX - 250);
        let nxt = una + 10_000;
        let mut b = Scoreboard::new();
        assert!(!b.is_lost(una, MSS));
        // Two small ranges above: neither threshold.
        b.on_sack(
            una,
            nxt,
            &[(una + 1000, una + 1010), (una + 2000, una + 2010)],
        );
        assert!(!b.is_lost(una, MSS));
        // A third discontiguous range: everything below the third-highest range is lost.
        b.on_sack(una, nxt, &[(una + 3000, una + 3010)]);
        assert!(b.is_lost(una, MSS));
        assert!(b.is_lost(una + 999, MSS));
        assert!(!b.is_lost(una + 1010, MSS));
        // More than 2·SMSS SACKed bytes above.
        let mut b = Scoreboard::new();
        b.on_sack(una, nxt, &[(una + 500, una + 700)]);
        assert!(!b.is_lost(una, MSS), "exactly 2·SMSS is not more than");
        b.on_sack(una, nxt, &[(una + 700, una + 701)]);
        assert!(b.is_lost(una, MSS));
        assert!(b.is_lost(una + 499, MSS), "201 SACKed bytes above");
        assert!(!b.is_lost(una + 500, MSS), "200 SACKed bytes above");
    }

    #[test]
    fn next_seg_and_pipe_in_a_simple_recovery() {
        // Ten segments sent, 2 and 3 lost, 4..=9 SACKed (RFC 6675 style scenario).
        let una = seq(u32::MAX - 350);
        let nxt = una + 10 * MSS;
        let mut b = Scoreboard::new();
        b.on_sack(una, nxt, &[(una + 4 * MSS, una + 10 * MSS)]);
        b.on_cumulative_ack(una + 2 * MSS);
        let una = una + 2 * MSS;
        assert_eq!(b.next_seg(una, nxt, una, MSS), Some((una, MSS)));
        assert_eq!(
            b.pipe(una, nxt, una, MSS),
            0,
            "both holes lost, nothing else out"
        );
        // Retransmit the first hole: HighRxt moves past it.
        let rxt = una + MSS;
        assert_eq!(b.next_seg(una, nxt, rxt, MSS), Some((rxt, MSS)));
        assert_eq!(b.pipe(una, nxt, rxt, MSS), MSS);
        let rxt = una + 2 * MSS;
        assert_eq!(b.next_seg(una, nxt, rxt, MSS), None, "next is SACKed");
        assert_eq!(b.pipe(una, nxt, rxt, MSS), 2 * MSS);
        // Larger MSS than the hole: stops at the SACKed range.
        assert_eq!(
            b.next_seg(una, nxt, una, 1000),
            None,
            "600 B SACKed < 2·1000"
        );
        assert_eq!(b.next_seg(una, nxt, una, 250), Some((una, 200)));
        assert_eq!(b.lost_bytes(una, nxt, MSS), 2 * MSS);
        assert_eq!(b.next_seg(una, nxt, una, 0), None);
        assert_eq!(b.pipe(una, una, una, MSS), 0);
    }

    /// Per-byte reference model of RFC 6675 over `[base, base + size)`.
    struct Model {
        base: TcpSeqNumber,
        sacked: Vec<bool>,
        una: usize,
    }

    impl Model {
        fn runs(&self) -> Vec<(usize, usize)> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < self.sacked.len() {
                if self.sacked[i] {
                    let s = i;
                    while i < self.sacked.len() && self.sacked[i] {
                        i += 1;
                    }
                    out.push((s, i));
                } else {
                    i += 1;
                }
            }
            out
        }
        fn ack(&mut self, una: usize) {
            self.una = self.una.max(una);
            for b in &mut self.sacked[..self.una] {
                *b = false;
            }
        }
        /// Marks `[s, e)`; returns newly marked bytes still marked after the bound is applied.
        fn insert(&mut self, s: usize, e: usize) -> usize {
            let fresh: Vec<usize> = (s..e).filter(|&i| !self.sacked[i]).collect();
            for &i in &fresh {
                self.sacked[i] = true;
            }
            let runs = self.runs();
            if runs.len() > MAX_SACKED_RANGES {
                for b in &mut self.sacked[runs[0].0..runs[0].1] {
                    *b = false;
                }
            }
            fresh.iter().filter(|&&i| self.sacked[i]).count()
        }
        /// IsLost for every byte, straight from the definition: SACKed bytes and discontiguous
        /// SACKed runs holding bytes above `b`, counted from the top down.
        fn lost_all(&self, mss: usize) -> Vec<bool> {
            let n = self.sacked.len();
            let mut out = vec![false; n];
            let (mut bytes_above, mut runs_above) = (0usize, 0usize);
            for b in (0..n).rev() {
                out[b] = runs_above >= DUP_THRESH || bytes_above > (DUP_THRESH - 1) * mss;
                // Byte b is "above" b − 1; a run is counted once, at its highest byte.
                if self.sacked[b] {
                    bytes_above += 1;
                    if b + 1 == n || !self.sacked[b + 1] {
                        runs_above += 1;
                    }
                }
            }
            out
        }
        fn lost(&self, b: usize, mss: usize) -> bool {
            let above: usize = self.sacked[b + 1..].iter().filter(|&&x| x).count();
            let count = self.runs().iter().filter(|r| r.1 > b + 1).count();
            count >= DUP_THRESH || above > (DUP_THRESH - 1) * mss
        }
        fn next_seg(
            &self,
            lost: &[bool],
            nxt: usize,
            rxt: usize,
            mss: usize,
        ) -> Option<(usize, usize)> {
            let start = self.una.max(rxt);
            let s = (start..nxt).find(|&i| !self.sacked[i])?;
            if !lost[s] {
                return None;
            }
            let mut e = s;
            while e < nxt && e - s < mss && !self.sacked[e] {
                e += 1;
            }
            Some((s, e - s))
        }
        fn pipe(&self, lost: &[bool], nxt: usize, rxt: usize) -> usize {
            (self.una..nxt)
                .filter(|&i| !self.sacked[i])
                .map(|i| usize::from(!lost[i]) + usize::from(i < rxt))
                .sum()
        }
    }

    #[test]
    fn random_scenarios_match_a_per_byte_model() {
        let mut rng = Rng(0x6675_2883);
        for round in 0..40u32 {
            // Windows straddle the 2^32 wrap for most rounds.
            let base = seq((u32::MAX - 1500).wrapping_add(round * 97));
            let size = 300 + rng.below(2500);
            let mss = [1, 10, 100, 536][rng.below(4)];
            let mut m = Model {
                base,
                sacked: vec![false; size],
                una: 0,
            };
            let mut b = Scoreboard::new();
            let mut nxt = size / 2;
            let mut rxt = 0;
            for step in 0..150 {
                match rng.below(8) {
                    0 => {
                        let una = (m.una + rng.below(size / 10)).min(nxt);
                        m.ack(una);
                        if rng.below(2) == 0 {
                            b.on_cumulative_ack(base + una);
                        }
                    }
                    1 => nxt = (nxt + rng.below(size / 5)).min(size),
                    2 => rxt = (m.una + rng.below(nxt - m.una + 1)).min(size),
                    _ => {
                        let mut blocks = Vec::new();
                        let mut want = SackUpdate::default();
                        for _ in 0..1 + rng.below(4) {
                            let s = rng.below(size);
                            let len = if rng.below(3) == 0 {
                                rng.below(size)
                            } else {
                                rng.below(3 * mss)
                            };
                            let e = (s + len).min(size);
                            blocks.push((base + s, base + e));
                        }
                        if rng.below(6) == 0 && blocks.len() > 1 {
                            // A D-SACK within the second block.
                            let (s2, e2) = blocks[1];
                            let s = s2 + rng.below(span(s2, e2) + 1);
                            blocks[0] = (s, s + rng.below(span(s, e2) + 1));
                        }
                        let mut rest = &blocks[..];
                        let (s0, e0) = blocks[0];
                        let inside =
                            blocks.len() > 1 && s0 < e0 && blocks[1].0 <= s0 && e0 <= blocks[1].1;
                        if s0 < base + m.una || inside {
                            want.dsack = true;
                            rest = &blocks[1..];
                        }
                        for &(s, e) in rest {
                            let s = span(base, s).max(m.una);
                            let e = span(base, e);
                            if s < e && e <= nxt {
                                if let Some(low) = (s..e).find(|&i| !m.sacked[i]) {
                                    let low = base + low;
                                    want.lowest_new = Some(
                                        want.lowest_new.map_or(low, |l: TcpSeqNumber| l.min(low)),
                                    );
                                }
                                want.newly_sacked += m.insert(s, e);
                            }
                        }
                        let got = b.on_sack(base + m.una, base + nxt, &blocks);
                        assert_eq!(got, want, "round {round} step {step} {blocks:?}");
                    }
                }
                b.on_cumulative_ack(base + m.una);
                let runs: Vec<_> = m
                    .runs()
                    .iter()
                    .map(|&(s, e)| (base + s, base + e))
                    .collect();
                assert_eq!(b.ranges(), &runs[..], "round {round} step {step}");
                assert_eq!(b.sacked_bytes(), m.sacked.iter().filter(|&&x| x).count());
                let (una, snxt, srxt) = (base + m.una, base + nxt, base + rxt);
                let lost = m.lost_all(mss);
                // Random bytes plus every range edge and its neighbours.
                let edges = m.runs().into_iter().flat_map(|(s, e)| [s, e]);
                let probes: Vec<usize> = (0..64)
                    .map(|_| rng.below(size))
                    .chain(edges.flat_map(|x| [x.saturating_sub(1), x, x + 1]))
                    .filter(|&i| i < size)
                    .collect();
                for i in probes {
                    assert_eq!(b.is_sacked(base + i), m.sacked[i]);
                    assert_eq!(b.is_lost(base + i, mss), lost[i], "byte {i}");
                }
                for _ in 0..3 {
                    let i = rng.below(size);
                    assert_eq!(m.lost(i, mss), lost[i], "the two references agree");
                }
                let want_next = m.next_seg(&lost, nxt, rxt, mss).map(|(s, l)| (base + s, l));
                assert_eq!(b.next_seg(una, snxt, srxt, mss), want_next, "round {round}");
                assert_eq!(b.pipe(una, snxt, srxt, mss), m.pipe(&lost, nxt, rxt));
                let lost = (m.una..nxt).filter(|&i| !m.sacked[i] && lost[i]).count();
                assert_eq!(b.lost_bytes(una, snxt, mss), lost);
            }
        }
    }

    #[test]
    fn random_overflow_scenarios_match_the_model() {
        // Many tiny blocks: the range bound is hit constantly.
        let mut rng = Rng(0xdead_beef);
        let base = seq(u32::MAX - 2000);
        let size = 8000;
        let mut m = Model {
            base,
            sacked: vec![false; size],
            una: 0,
        };
        let mut b = Scoreboard::new();
        for _ in 0..3000 {
            let s = rng.below(size - 3);
            let e = s + 1 + rng.below(2);
            let u = b.on_sack(base, base + size, &[(base + s, base + e)]);
            assert_eq!(u.newly_sacked, m.insert(s, e));
            let runs: Vec<_> = m
                .runs()
                .iter()
                .map(|&(s, e)| (m.base + s, m.base + e))
                .collect();
            assert_eq!(b.ranges(), &runs[..]);
        }
        assert_eq!(b.ranges().len(), MAX_SACKED_RANGES);
    }

    fn image_of(b: &Scoreboard) -> Vec<u8> {
        let mut w = ImageWriter::new(Instant::ZERO);
        b.export(&mut w);
        w.finish()
    }

    fn import_all(image: &[u8]) -> Result<Scoreboard, ImageError> {
        let mut r = ImageReader::new(image, Instant::ZERO)?;
        let b = Scoreboard::import(&mut r)?;
        r.finish()?;
        Ok(b)
    }

    #[test]
    fn image_round_trip_and_rejection() {
        let una = seq(u32::MAX - 100);
        let mut b = Scoreboard::new();
        b.on_sack(
            una,
            una + 5000,
            &[(una + 50, una + 300), (una + 1000, una + 1200)],
        );
        let image = image_of(&b);
        let back = import_all(&image).unwrap();
        assert_eq!(back.ranges(), b.ranges());
        assert_eq!(back.sacked_bytes(), b.sacked_bytes());
        assert_eq!(
            back.pipe(una, una + 5000, una, MSS),
            b.pipe(una, una + 5000, una, MSS)
        );
        assert_eq!(
            import_all(&image_of(&Scoreboard::new())).unwrap().ranges(),
            &[]
        );
        for cut in 6..image.len() {
            assert_eq!(
                import_all(&image[..cut]).unwrap_err(),
                ImageError::Truncated
            );
        }
        let mut long = image;
        long.push(0);
        assert_eq!(import_all(&long).unwrap_err(), ImageError::TrailingBytes);
        let build = |ranges: &[(u32, u32)], count: usize| {
            let mut w = ImageWriter::new(Instant::ZERO);
            w.section(SECTION);
            w.u16(count as u16);
            for &(s, e) in ranges {
                w.seq(seq(s));
                w.seq(seq(e));
            }
            import_all(&w.finish())
        };
        assert!(build(&[(u32::MAX - 5, 5), (10, 20)], 2).is_ok());
        let bad = |r: Result<Scoreboard, ImageError>| {
            assert!(matches!(r, Err(ImageError::Invalid(_))), "{r:?}")
        };
        bad(build(&[(10, 10)], 1)); // empty
        bad(build(&[(20, 10)], 1)); // reversed
        bad(build(&[(10, 20), (5, 8)], 2)); // unsorted
        bad(build(&[(10, 20), (15, 30)], 2)); // overlapping
        bad(build(&[(10, 20), (20, 30)], 2)); // adjacent
        bad(build(&[(0, 0x7000_0000), (0x7000_0001, 0xf000_0000)], 2)); // spans over 2^31
        let many: Vec<(u32, u32)> = (0..=MAX_SACKED_RANGES as u32)
            .map(|i| (2 * i, 2 * i + 1))
            .collect();
        bad(build(&many, many.len()));
    }
}
