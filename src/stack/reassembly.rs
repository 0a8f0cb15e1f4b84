//! IPv4 reassembly (RFC 791 §3.2 "reassembly", RFC 815 hole tracking as a sorted list of
//! disjoint received ranges), bounded in memory, with Linux's IPv4 overlap policy made strict in
//! the spirit of RFC 5722.
//!
//! A datagram is identified by [`FragKey`] (source, destination, protocol, identification) and
//! is held from its first fragment until it completes, fails, is evicted or times out
//! (30 s after its *first* fragment arrived, never extended, as Linux's `ipfrag_time`).
//!
//! Contract of [`Reassembler::insert`]:
//! - `Ok(Some(_))`: the datagram is complete; its header-less payload is returned and every
//!   byte it held is freed.
//! - `Ok(None)`: the fragment was stored, or ignored as a duplicate (its range was already held
//!   with identical bytes).
//! - `Err(e)`: the fragment is refused, and the whole datagram it belongs to is dropped with it
//!   (as Linux's `discard_qp`; after [`FragError::Budget`] the datagram could not complete
//!   without the refused fragment anyway). The errors: a partial overlap, a fully
//!   overlapping fragment with different bytes, a second final fragment with a different end,
//!   data beyond the known end, a datagram reaching past 65535 bytes (`end > 65515`, the
//!   payload after the smallest 20-byte header), an empty fragment, or a non-final fragment
//!   whose length (or any offset) is not a multiple of 8.
//!
//! Memory policy: every stored fragment is charged its length plus [`PIECE_OVERHEAD`], every
//! datagram [`DATAGRAM_OVERHEAD`], against `max_bytes_total`; at most `max_datagrams` are held.
//! When a new fragment does not fit, the **oldest other datagrams are evicted** until it does
//! (reported by the next [`Reassembler::poll`] as [`DropReason::FragBudget`]). Evicting the
//! oldest favours datagrams that are still arriving over stale ones, which a flood of
//! never-completed fragments would otherwise pin for the whole timeout (refusing new ones would
//! let such a flood block all reassembly for 30 s). A fragment that cannot fit even alone is
//! refused with [`FragError::Budget`].
#![forbid(unsafe_code)]

use core::fmt;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use super::stats::{DropCounters, DropReason};
use super::{Duration, Instant};

/// Largest payload end: a 65535-byte datagram minus the smallest (20-byte) header.
pub const MAX_PAYLOAD: usize = 65535 - 20;
/// Bytes charged per stored fragment beyond its payload (bookkeeping).
pub const PIECE_OVERHEAD: usize = 64;
/// Bytes charged per datagram being reassembled (bookkeeping).
pub const DATAGRAM_OVERHEAD: usize = 128;

/// Identifies the datagram a fragment belongs to (RFC 791: source, destination, protocol,
/// identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ident: u16,
}

/// Bounds on reassembly state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Datagrams held at once.
    pub max_datagrams: usize,
    /// Bytes charged at once (payload plus overheads).
    pub max_bytes_total: usize,
    /// Lifetime of an incomplete datagram, from its first fragment.
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    /// 256 datagrams, 4 MiB (Linux's `ipfrag_high_thresh`), 30 s (`ipfrag_time`).
    fn default() -> Self {
        ReassemblyLimits {
            max_datagrams: 256,
            max_bytes_total: 4 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A completed datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    pub key: FragKey,
    /// The IP payload (transport header and data), without any IP header.
    pub payload: Vec<u8>,
}

/// A datagram given up on by [`Reassembler::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub key: FragKey,
    /// [`DropReason::FragTimeout`] or [`DropReason::FragBudget`] (evicted).
    pub reason: DropReason,
    /// Payload bytes that had been received.
    pub bytes: usize,
    /// Whether fragment zero had arrived (RFC 792: only then may an ICMP time exceeded,
    /// code 1, be sent).
    pub had_first: bool,
}

/// Why a fragment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragError {
    /// Overlaps received data other than as an identical duplicate.
    Overlap,
    /// Reaches past the largest possible datagram.
    TooBig,
    /// A non-final fragment not a multiple of 8 bytes long, or an offset not a multiple of 8.
    Misaligned,
    /// A fragment with no data.
    Empty,
    /// A final fragment whose end differs from the known end.
    EndConflict,
    /// Data beyond the known end (or a final fragment ending before data already received).
    BeyondEnd,
    /// Could not be stored within the memory limits.
    Budget,
}

impl FragError {
    /// The drop counter this error is accounted under.
    pub fn drop_reason(self) -> DropReason {
        match self {
            FragError::Overlap => DropReason::FragOverlap,
            FragError::TooBig => DropReason::FragTooBig,
            FragError::Misaligned | FragError::Empty => DropReason::FragMisaligned,
            FragError::EndConflict | FragError::BeyondEnd => DropReason::FragBadEnd,
            FragError::Budget => DropReason::FragBudget,
        }
    }
}

impl fmt::Display for FragError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FragError::Overlap => "overlapping fragment",
            FragError::TooBig => "fragment beyond 65535 bytes",
            FragError::Misaligned => "fragment not a multiple of 8 bytes",
            FragError::Empty => "empty fragment",
            FragError::EndConflict => "conflicting final fragment",
            FragError::BeyondEnd => "fragment beyond the datagram's end",
            FragError::Budget => "reassembly memory exhausted",
        })
    }
}

impl std::error::Error for FragError {}

#[derive(Debug)]
struct Piece {
    offset: usize,
    data: Vec<u8>,
}

impl Piece {
    fn end(&self) -> usize {
        self.offset + self.data.len()
    }
}

#[derive(Debug)]
struct Datagram {
    /// Sorted by offset, pairwise disjoint.
    pieces: Vec<Piece>,
    /// Payload bytes held (sum of piece lengths).
    received: usize,
    /// The end given by the final fragment, once it has arrived.
    total_len: Option<usize>,
    /// The largest end of any fragment so far.
    max_end: usize,
    /// Bytes charged against the budget.
    cost: usize,
    /// Key in the age index.
    age: (Instant, u64),
}

impl Datagram {
    /// Checks a fragment `[offset, end)` against what is held; `Ok(true)` for a duplicate.
    fn classify(
        &self,
        offset: usize,
        end: usize,
        more_frags: bool,
        payload: &[u8],
    ) -> Result<bool, FragError> {
        match (more_frags, self.total_len) {
            // RFC 791: the final fragment fixes the total length; a second one must agree.
            (false, Some(total)) if total != end => return Err(FragError::EndConflict),
            (false, None) if end < self.max_end => return Err(FragError::BeyondEnd),
            (true, Some(total)) if end > total => return Err(FragError::BeyondEnd),
            _ => {}
        }
        let first = self.pieces.partition_point(|p| p.end() <= offset);
        match self.pieces.get(first) {
            Some(p) if p.offset < end => {}
            _ => return Ok(false),
        }
        // Overlaps something: a duplicate only if every byte is already held, identically.
        let mut pos = offset;
        for p in &self.pieces[first..] {
            if pos >= end {
                break;
            }
            if p.offset > pos {
                return Err(FragError::Overlap);
            }
            let upto = p.end().min(end);
            if p.data[pos - p.offset..upto - p.offset] != payload[pos - offset..upto - offset] {
                return Err(FragError::Overlap);
            }
            pos = upto;
        }
        if pos < end {
            Err(FragError::Overlap)
        } else {
            Ok(true)
        }
    }
}

/// IPv4 reassembly state. See the module documentation for the contract.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    datagrams: HashMap<FragKey, Datagram>,
    /// (first fragment's arrival, sequence) → key: oldest first, for timeouts and eviction.
    by_age: BTreeMap<(Instant, u64), FragKey>,
    bytes: usize,
    next_seq: u64,
    /// Evictions not yet reported by `poll`, with the time of the earliest.
    evicted: Vec<Dropped>,
    evicted_at: Option<Instant>,
    /// Everything dropped here: refused fragments (by error) and abandoned datagrams.
    drops: DropCounters,
    reassembled: u64,
    duplicates: u64,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            datagrams: HashMap::new(),
            by_age: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
            evicted: Vec::new(),
            evicted_at: None,
            drops: DropCounters::default(),
            reassembled: 0,
            duplicates: 0,
        }
    }

    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// Adds the fragment at byte `offset` (the header's offset field × 8) of datagram `key`.
    pub fn insert(
        &mut self,
        key: FragKey,
        offset: u16,
        more_frags: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<Reassembled>, FragError> {
        let result = self.insert_inner(key, usize::from(offset), more_frags, payload, now);
        if let Err(e) = result {
            self.drops.count(e.drop_reason());
        }
        result
    }

    fn insert_inner(
        &mut self,
        key: FragKey,
        offset: usize,
        more_frags: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<Reassembled>, FragError> {
        let end = offset + payload.len();
        if end > MAX_PAYLOAD {
            return self.fail(&key, FragError::TooBig);
        }
        if payload.is_empty() {
            return self.fail(&key, FragError::Empty);
        }
        if !offset.is_multiple_of(8) || (more_frags && !payload.len().is_multiple_of(8)) {
            return self.fail(&key, FragError::Misaligned);
        }
        let existing = match self.datagrams.get(&key) {
            Some(dg) => match dg.classify(offset, end, more_frags, payload) {
                Ok(dup) => Some(dup),
                Err(e) => return self.fail(&key, e),
            },
            None => None,
        };
        let duplicate = existing == Some(true);
        let cost = if duplicate {
            0
        } else {
            payload.len() + PIECE_OVERHEAD
        } + if existing.is_none() {
            DATAGRAM_OVERHEAD
        } else {
            0
        };
        if existing.is_none() {
            if self.limits.max_datagrams == 0 {
                return self.fail(&key, FragError::Budget);
            }
            while self.datagrams.len() >= self.limits.max_datagrams {
                if !self.evict_oldest(&key, now) {
                    return self.fail(&key, FragError::Budget);
                }
            }
        }
        while self.bytes + cost > self.limits.max_bytes_total {
            if !self.evict_oldest(&key, now) {
                return self.fail(&key, FragError::Budget);
            }
        }

        let dg = match self.datagrams.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let age = (now, self.next_seq);
                self.next_seq += 1;
                self.by_age.insert(age, key);
                v.insert(Datagram {
                    pieces: Vec::new(),
                    received: 0,
                    total_len: None,
                    max_end: 0,
                    cost: 0,
                    age,
                })
            }
        };
        if !more_frags {
            dg.total_len = Some(end);
        }
        dg.max_end = dg.max_end.max(end);
        dg.cost += cost;
        self.bytes += cost;
        if duplicate {
            self.duplicates += 1;
        } else {
            let at = dg.pieces.partition_point(|p| p.offset < offset);
            dg.pieces.insert(
                at,
                Piece {
                    offset,
                    data: payload.to_vec(),
                },
            );
            dg.received += payload.len();
        }
        // Pieces are disjoint and inside [0, total): full when their sizes add up to it.
        if dg.total_len != Some(dg.received) {
            return Ok(None);
        }
        let Some(dg) = self.remove(&key) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(dg.received);
        for p in dg.pieces {
            out.extend_from_slice(&p.data);
        }
        self.reassembled += 1;
        Ok(Some(Reassembled { key, payload: out }))
    }

    /// Drops the datagram `key` (if held) and returns the error.
    fn fail(&mut self, key: &FragKey, e: FragError) -> Result<Option<Reassembled>, FragError> {
        self.remove(key);
        Err(e)
    }

    fn remove(&mut self, key: &FragKey) -> Option<Datagram> {
        let dg = self.datagrams.remove(key)?;
        self.by_age.remove(&dg.age);
        self.bytes -= dg.cost;
        Some(dg)
    }

    /// Evicts the oldest datagram other than `keep`; false if there is none.
    fn evict_oldest(&mut self, keep: &FragKey, now: Instant) -> bool {
        let Some(victim) = self.by_age.values().find(|k| *k != keep).copied() else {
            return false;
        };
        if let Some(dg) = self.remove(&victim) {
            self.drops.count(DropReason::FragBudget);
            // Bounded: beyond this many unreported evictions only the counter records them.
            if self.evicted.len() < self.limits.max_datagrams.max(64) {
                self.evicted
                    .push(Self::dropped(victim, &dg, DropReason::FragBudget));
            }
            self.evicted_at.get_or_insert(now);
        }
        true
    }

    fn dropped(key: FragKey, dg: &Datagram, reason: DropReason) -> Dropped {
        let had_first = dg.pieces.first().is_some_and(|p| p.offset == 0);
        Dropped {
            key,
            reason,
            bytes: dg.received,
            had_first,
        }
    }

    /// Drops every datagram whose timeout has passed and reports them, with the evictions made
    /// since the last call.
    pub fn poll(&mut self, now: Instant) -> Vec<Dropped> {
        let mut out = std::mem::take(&mut self.evicted);
        self.evicted_at = None;
        while let Some((&(created, _), &key)) = self.by_age.first_key_value() {
            if created + self.limits.timeout > now {
                break;
            }
            if let Some(dg) = self.remove(&key) {
                self.drops.count(DropReason::FragTimeout);
                out.push(Self::dropped(key, &dg, DropReason::FragTimeout));
            }
        }
        out
    }

    /// When [`Reassembler::poll`] next has work: the oldest datagram's deadline, or an
    /// unreported eviction.
    pub fn poll_at(&self) -> Option<Instant> {
        let timeout = self
            .by_age
            .keys()
            .next()
            .map(|&(created, _)| created + self.limits.timeout);
        match (timeout, self.evicted_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Datagrams being reassembled.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Bytes charged against `max_bytes_total`.
    pub fn bytes_held(&self) -> usize {
        self.bytes
    }

    /// Everything this reassembler dropped, by reason: refused fragments (the same errors
    /// `insert` returned) and abandoned datagrams (the same as `poll` reported).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Datagrams completed so far.
    pub fn reassembled(&self) -> u64 {
        self.reassembled
    }

    /// Duplicate fragments ignored so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Instant = Instant::from_secs(100);

    fn key(ident: u16) -> FragKey {
        FragKey {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            protocol: 17,
            ident,
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// (offset, more_frags, bytes) of `payload` cut into `step`-byte fragments.
    fn cut(payload: &[u8], step: usize) -> Vec<(u16, bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < payload.len() {
            let end = (off + step).min(payload.len());
            out.push((off as u16, end < payload.len(), payload[off..end].to_vec()));
            off = end;
        }
        out
    }

    /// Feeds fragments in the given order; returns the result of the last insert.
    fn feed(
        r: &mut Reassembler,
        k: FragKey,
        frags: &[(u16, bool, Vec<u8>)],
        now: Instant,
    ) -> Option<Reassembled> {
        let mut done = None;
        for (i, (off, mf, bytes)) in frags.iter().enumerate() {
            let res = r.insert(k, *off, *mf, bytes, now).unwrap();
            if i + 1 < frags.len() {
                assert_eq!(res, None, "completed early at fragment {i}");
            }
            done = res;
        }
        done
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn in_order() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let payload = data(8008, 1);
        let done = feed(&mut r, key(1), &cut(&payload, 1480), T0).unwrap();
        assert_eq!(done.key, key(1));
        assert_eq!(done.payload, payload);
        assert!(r.is_empty());
        assert_eq!(r.bytes_held(), 0);
        assert_eq!(r.poll_at(), None);
        assert_eq!(r.reassembled(), 1);
    }

    #[test]
    fn reverse_order() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let payload = data(5000, 2);
        let mut frags = cut(&payload, 1480);
        frags.reverse();
        assert_eq!(feed(&mut r, key(2), &frags, T0).unwrap().payload, payload);
        assert_eq!(r.bytes_held(), 0);
    }

    #[test]
    fn random_order_interleaved_seeded() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut all = Vec::new();
        let mut expect = HashMap::new();
        for ident in 0..20u16 {
            let len = 1 + (rng.next() % 20000) as usize;
            let step = 8 * (1 + (rng.next() % 200) as usize);
            let payload = data(len, ident as u8);
            for f in cut(&payload, step) {
                all.push((ident, f));
            }
            expect.insert(ident, payload);
        }
        for i in (1..all.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        let mut got = HashMap::new();
        for (ident, (off, mf, bytes)) in &all {
            if let Some(done) = r.insert(key(*ident), *off, *mf, bytes, T0).unwrap() {
                assert!(got.insert(done.key.ident, done.payload).is_none());
            }
        }
        assert_eq!(got, expect);
        assert!(r.is_empty());
        assert_eq!(r.bytes_held(), 0);
    }

    #[test]
    fn exact_duplicates_are_ignored() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let payload = data(3000, 3);
        let frags = cut(&payload, 1000 / 8 * 8);
        assert_eq!(
            r.insert(key(3), frags[0].0, true, &frags[0].2, T0),
            Ok(None)
        );
        let held = r.bytes_held();
        assert_eq!(
            r.insert(key(3), frags[0].0, true, &frags[0].2, T0),
            Ok(None)
        );
        // A sub-range of held data with the same bytes is a duplicate too.
        assert_eq!(r.insert(key(3), 8, true, &frags[0].2[8..16], T0), Ok(None));
        assert_eq!(r.bytes_held(), held, "duplicates are not stored");
        assert_eq!(r.duplicates(), 2);
        let last = frags.len() - 1;
        assert_eq!(
            r.insert(key(3), frags[last].0, false, &frags[last].2, T0),
            Ok(None)
        );
        assert_eq!(
            r.insert(key(3), frags[last].0, false, &frags[last].2, T0),
            Ok(None)
        );
        let done = feed(&mut r, key(3), &frags[1..last], T0).unwrap();
        assert_eq!(done.payload, payload);
    }

    #[test]
    fn conflicting_overlap_drops_whole_datagram() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let a = data(16, 4);
        assert_eq!(r.insert(key(4), 0, true, &a, T0), Ok(None));
        let mut b = a[8..16].to_vec();
        b[0] ^= 0xff;
        assert_eq!(r.insert(key(4), 8, true, &b, T0), Err(FragError::Overlap));
        assert!(r.is_empty(), "the whole datagram is dropped");
        assert_eq!(r.bytes_held(), 0);
        assert_eq!(r.drops().get(DropReason::FragOverlap), 1);
        // The rest of the datagram now starts a fresh (never-completing) one, as in Linux.
        assert_eq!(r.insert(key(4), 16, false, &data(8, 0), T0), Ok(None));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn partial_overlap_drops_even_with_equal_bytes() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let payload = data(32, 5);
        assert_eq!(r.insert(key(5), 0, true, &payload[..16], T0), Ok(None));
        // [8, 24) overlaps [0, 16) and reaches into a hole: Linux's IPFRAG_OVERLAP.
        assert_eq!(
            r.insert(key(5), 8, true, &payload[8..24], T0),
            Err(FragError::Overlap)
        );
        assert!(r.is_empty());
        // Spanning two held pieces across a hole.
        assert_eq!(r.insert(key(6), 0, true, &payload[..8], T0), Ok(None));
        assert_eq!(r.insert(key(6), 16, true, &payload[16..24], T0), Ok(None));
        assert_eq!(
            r.insert(key(6), 0, true, &payload[..24], T0),
            Err(FragError::Overlap)
        );
        assert!(r.is_empty());
    }

    #[test]
    fn end_rules() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let d = data(64, 6);
        // A second final fragment with a different end.
        assert_eq!(r.insert(key(7), 32, false, &d[32..48], T0), Ok(None));
        assert_eq!(
            r.insert(key(7), 32, false, &d[32..56], T0),
            Err(FragError::EndConflict)
        );
        assert!(r.is_empty());
        // Data beyond a known end.
        assert_eq!(r.insert(key(8), 32, false, &d[32..48], T0), Ok(None));
        assert_eq!(
            r.insert(key(8), 48, true, &d[48..64], T0),
            Err(FragError::BeyondEnd)
        );
        assert!(r.is_empty());
        // A final fragment ending before data already received.
        assert_eq!(r.insert(key(9), 32, true, &d[32..64], T0), Ok(None));
        assert_eq!(
            r.insert(key(9), 0, false, &d[..16], T0),
            Err(FragError::BeyondEnd)
        );
        assert!(r.is_empty());
        assert_eq!(r.drops().get(DropReason::FragBadEnd), 3);
    }

    #[test]
    fn misaligned_and_empty() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        assert_eq!(
            r.insert(key(10), 0, true, &data(12, 0), T0),
            Err(FragError::Misaligned)
        );
        assert_eq!(r.insert(key(10), 0, true, &[], T0), Err(FragError::Empty));
        assert_eq!(r.insert(key(10), 8, false, &[], T0), Err(FragError::Empty));
        assert_eq!(
            r.insert(key(10), 4, false, &data(8, 0), T0),
            Err(FragError::Misaligned)
        );
        // A final fragment of any length is fine.
        assert_eq!(r.insert(key(10), 8, false, &data(13, 0), T0), Ok(None));
        assert_eq!(r.drops().get(DropReason::FragMisaligned), 4);
    }

    #[test]
    fn huge_offset_is_rejected() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        // Ping of death: offset 65528 + 16 bytes.
        assert_eq!(
            r.insert(key(11), 65528, false, &data(16, 0), T0),
            Err(FragError::TooBig)
        );
        assert_eq!(
            r.insert(key(11), 65512, false, &data(4, 0), T0),
            Err(FragError::TooBig)
        );
        // A datagram ending exactly at 65515 payload bytes is the largest allowed.
        assert_eq!(r.insert(key(11), 65512, false, &data(3, 0), T0), Ok(None));
        assert_eq!(r.insert(key(11), 0, true, &data(16, 0), T0), Ok(None));
        // A too-big fragment drops what was held of its datagram.
        assert_eq!(
            r.insert(key(11), 65528, true, &data(8, 0), T0),
            Err(FragError::TooBig)
        );
        assert!(r.is_empty());
        assert_eq!(r.drops().get(DropReason::FragTooBig), 3);
    }

    #[test]
    fn never_completed_times_out_and_frees_memory() {
        let limits = ReassemblyLimits::default();
        let mut r = Reassembler::new(limits);
        assert_eq!(r.insert(key(12), 0, true, &data(1480, 0), T0), Ok(None));
        let later = T0 + Duration::from_secs(10);
        assert_eq!(
            r.insert(key(13), 1480, false, &data(100, 0), later),
            Ok(None)
        );
        assert!(r.bytes_held() > 1580);
        assert_eq!(r.poll_at(), Some(T0 + limits.timeout));
        // Later fragments do not extend the lifetime.
        assert_eq!(
            r.insert(
                key(12),
                1480,
                true,
                &data(8, 0),
                T0 + Duration::from_secs(29)
            ),
            Ok(None)
        );
        assert_eq!(
            r.poll(T0 + limits.timeout - Duration::from_micros(1)),
            vec![]
        );
        let dropped = r.poll(T0 + limits.timeout);
        assert_eq!(
            dropped,
            vec![Dropped {
                key: key(12),
                reason: DropReason::FragTimeout,
                bytes: 1488,
                had_first: true
            }]
        );
        assert_eq!(r.poll_at(), Some(later + limits.timeout));
        let dropped = r.poll(later + Duration::from_secs(3600));
        assert_eq!(dropped.len(), 1);
        assert!(!dropped[0].had_first);
        assert!(r.is_empty());
        assert_eq!(r.bytes_held(), 0);
        assert_eq!(r.poll_at(), None);
        assert_eq!(r.drops().get(DropReason::FragTimeout), 2);
    }

    #[test]
    fn byte_budget_evicts_oldest() {
        let one = 1480 + PIECE_OVERHEAD + DATAGRAM_OVERHEAD;
        let limits = ReassemblyLimits {
            max_datagrams: 100,
            max_bytes_total: 3 * one,
            ..Default::default()
        };
        let mut r = Reassembler::new(limits);
        for i in 0..3u16 {
            let t = T0 + Duration::from_secs(u64::from(i));
            assert_eq!(r.insert(key(i), 0, true, &data(1480, 0), t), Ok(None));
        }
        assert_eq!(r.bytes_held(), 3 * one);
        let t = T0 + Duration::from_secs(5);
        assert_eq!(r.insert(key(3), 0, true, &data(1480, 0), t), Ok(None));
        assert_eq!(r.len(), 3);
        assert!(r.bytes_held() <= limits.max_bytes_total);
        assert_eq!(r.poll_at(), Some(t), "the eviction is reported at once");
        let dropped = r.poll(t);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].key, key(0), "oldest first");
        assert_eq!(dropped[0].reason, DropReason::FragBudget);
        // Completing the newest evicts the next oldest (key 1) and succeeds.
        let done = r
            .insert(key(3), 1480, false, &data(10, 0), t)
            .unwrap()
            .unwrap();
        assert_eq!(done.payload.len(), 1490);
        assert_eq!(r.len(), 1);
        let dropped = r.poll(t);
        assert_eq!(
            dropped.iter().map(|d| d.key).collect::<Vec<_>>(),
            vec![key(1)]
        );
        assert_eq!(r.drops().get(DropReason::FragBudget), 2);
        assert_eq!(r.bytes_held(), one, "key 2 remains");
    }

    #[test]
    fn budget_completes_after_evicting_others() {
        let one = 1480 + PIECE_OVERHEAD + DATAGRAM_OVERHEAD;
        let limits = ReassemblyLimits {
            max_datagrams: 100,
            max_bytes_total: 2 * one + 50,
            ..Default::default()
        };
        let mut r = Reassembler::new(limits);
        assert_eq!(r.insert(key(0), 0, true, &data(1480, 0), T0), Ok(None));
        assert_eq!(r.insert(key(1), 0, true, &data(1480, 1), T0), Ok(None));
        let done = r
            .insert(key(1), 1480, false, &data(20, 1), T0)
            .unwrap()
            .unwrap();
        assert_eq!(done.payload.len(), 1500);
        assert_eq!(r.len(), 0, "key 0 was evicted to make room");
        assert_eq!(r.poll(T0).len(), 1);
    }

    #[test]
    fn a_fragment_larger_than_the_budget_is_refused() {
        let limits = ReassemblyLimits {
            max_bytes_total: 1000,
            ..Default::default()
        };
        let mut r = Reassembler::new(limits);
        assert_eq!(
            r.insert(key(0), 0, true, &data(1480, 0), T0),
            Err(FragError::Budget)
        );
        assert!(r.is_empty());
        assert_eq!(r.bytes_held(), 0);
        let none = ReassemblyLimits {
            max_datagrams: 0,
            ..Default::default()
        };
        assert_eq!(
            Reassembler::new(none).insert(key(0), 0, true, &data(8, 0), T0),
            Err(FragError::Budget)
        );
    }

    #[test]
    fn datagram_count_evicts_oldest() {
        let limits = ReassemblyLimits {
            max_datagrams: 4,
            ..Default::default()
        };
        let mut r = Reassembler::new(limits);
        for i in 0..10u16 {
            assert_eq!(r.insert(key(i), 0, true, &data(8, 0), T0), Ok(None));
            assert!(r.len() <= 4);
        }
        let evicted: Vec<u16> = r.poll(T0).iter().map(|d| d.key.ident).collect();
        assert_eq!(evicted, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn flood_of_tiny_fragments_stays_within_budget() {
        let limits = ReassemblyLimits::default();
        let mut r = Reassembler::new(limits);
        let mut rng = XorShift(7);
        for i in 0..200_000u32 {
            let k = FragKey {
                ident: (rng.next() % 5000) as u16,
                ..key(0)
            };
            let off = ((rng.next() % 8000) * 8) as u16;
            let _ = r.insert(k, off, true, &data(8, i as u8), T0);
            assert!(r.bytes_held() <= limits.max_bytes_total);
            assert!(r.len() <= limits.max_datagrams);
        }
        let dropped = r.poll(T0 + limits.timeout);
        assert!(!dropped.is_empty());
        assert!(r.is_empty());
        assert_eq!(r.bytes_held(), 0);
    }

    #[test]
    fn keys_are_distinct_per_source_and_protocol() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let other_src = FragKey {
            src: Ipv4Addr::new(198, 18, 0, 9),
            ..key(1)
        };
        let other_proto = FragKey {
            protocol: 1,
            ..key(1)
        };
        assert_eq!(r.insert(key(1), 0, true, &data(8, 1), T0), Ok(None));
        assert_eq!(r.insert(other_src, 0, true, &data(8, 2), T0), Ok(None));
        assert_eq!(r.insert(other_proto, 8, false, &data(8, 3), T0), Ok(None));
        assert_eq!(r.len(), 3);
        let done = r
            .insert(key(1), 8, false, &data(4, 1), T0)
            .unwrap()
            .unwrap();
        assert_eq!(done.payload[..8], data(8, 1)[..]);
        assert_eq!(r.len(), 2);
    }
}
