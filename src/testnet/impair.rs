//! The link-impairment model behind `msock testnet up --impair SPEC`: what netem would do to a
//! frame, as a seeded, sans-I/O state machine (issue 3: "this kernel has no netem, so build
//! one"). The forwarding process ([`super::emulator`]) feeds it frames and the time; it never
//! reads a clock, draws entropy or touches a socket itself.
//!
//! - [`ImpairSpec`] is the parsed `loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%,
//!   rate=100mbit,limit=10000,seed=S` string. Every key is optional (`none` or `seed=S` alone is
//!   a transparent link); unknown or repeated keys, malformed or out-of-range values are a
//!   [`SpecError`] naming the key. `Display` prints the canonical form (defaults left out, the
//!   seed always shown), which parses back to the same spec.
//! - [`LinkModel`] is one direction of the link. Per frame it draws exactly seven numbers from
//!   its own xoshiro256** generator (seeded by splitmix64 from the seed mixed with the
//!   [`Direction`]), so the k-th frame's fate depends only on the seed, the direction, k and
//!   the frame's length: runs are reproducible, and changing one probability does not shift
//!   the other decisions. Like netem: a lost frame goes nowhere; a duplicate is an independent
//!   second copy with its own jitter; corruption flips one random bit after the 14-byte
//!   Ethernet header (within the IPv4 total length when the frame is IPv4), so IP/TCP/UDP
//!   checksums catch it; the delay is `delay ± uniform(jitter)`, never below zero; with
//!   probability `reorder` a frame skips the delay and leaves at once (overtaking queued
//!   ones); `rate` serialises frames through a link of that many bits per second (the
//!   transmission time queues behind the previous frame, before the delay). At most `limit`
//!   frames wait; beyond that a frame is dropped as overflow (that alone depends on timing).
//! - Frames wait in a timer queue (a binary heap keyed by release time, then arrival order, so
//!   frames due at the same instant leave first-in first-out); [`LinkModel::pop_due`] hands
//!   out those due at `now`, [`LinkModel::next_deadline`] says when the next one is.
#![forbid(unsafe_code)]

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use crate::stack::{Duration, Instant};

/// Ethernet header length: corruption never touches it (the frame must still reach the host).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Default for `limit=`: frames that may wait in one direction (netem's default is 1000; a
/// 100 Mbit/s link with 50 ms of delay holds ~420 full frames, so 10 000 leaves headroom).
pub const DEFAULT_LIMIT: u32 = 10_000;
/// Largest `limit=`.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Largest `delay=` and `jitter=`.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Smallest and largest `rate=` in bits per second.
pub const MIN_RATE: u64 = 1_000;
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// Frame buffers kept for reuse per direction.
const POOL_LIMIT: usize = 1024;

/// A probability in parts per billion (1 ppb = 0.0000001 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Probability(u32);

impl Probability {
    /// Parts per billion in 100 %.
    pub const SCALE: u32 = 1_000_000_000;
    pub const ZERO: Probability = Probability(0);
    pub const ONE: Probability = Probability(Probability::SCALE);

    /// `ppb` parts per billion; `None` above 100 %.
    pub const fn from_ppb(ppb: u32) -> Option<Probability> {
        if ppb <= Probability::SCALE {
            Some(Probability(ppb))
        } else {
            None
        }
    }

    pub const fn ppb(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(Probability::SCALE)
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses a percentage: `2%`, `0.1%`, `100%`, `12.5 %` is not accepted (no spaces); at
    /// most 7 decimals (the resolution is 1 ppb).
    pub fn parse_percent(text: &str) -> Result<Probability, String> {
        let Some(number) = text.strip_suffix('%') else {
            return Err(format!(
                "{text:?} is not a percentage (write e.g. 2% or 0.1%)"
            ));
        };
        // 1 % = 10^7 ppb.
        let ppb = parse_decimal(number, 7).ok_or_else(|| {
            format!("{text:?} is not a percentage like 2% or 0.1% (at most 7 decimals)")
        })?;
        u32::try_from(ppb)
            .ok()
            .and_then(Probability::from_ppb)
            .ok_or_else(|| format!("{text} is more than 100%"))
    }
}

impl fmt::Display for Probability {
    /// `2%`, `0.1%`, `100%`: the shortest exact form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, u64::from(self.0), 7)?;
        f.write_str("%")
    }
}

impl FromStr for Probability {
    type Err = String;
    fn from_str(s: &str) -> Result<Probability, String> {
        Probability::parse_percent(s)
    }
}

/// Parses `digits[.digits]` into an integer scaled by 10^`decimals`; `None` if malformed, with
/// more decimals than that, or overflowing.
fn parse_decimal(text: &str, decimals: u32) -> Option<u64> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > decimals as usize {
        return None;
    }
    if text.contains('.') && frac.is_empty() {
        return None;
    }
    let scale = 10u64.checked_pow(decimals)?;
    let int: u64 = int.parse().ok()?;
    let frac_value: u64 = if frac.is_empty() {
        0
    } else {
        let pad = 10u64.checked_pow(decimals - frac.len() as u32)?;
        frac.parse::<u64>().ok()?.checked_mul(pad)?
    };
    int.checked_mul(scale)?.checked_add(frac_value)
}

/// Writes `value / 10^decimals` with the fraction's trailing zeros removed.
fn write_decimal(f: &mut fmt::Formatter<'_>, value: u64, decimals: u32) -> fmt::Result {
    let scale = 10u64.pow(decimals);
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return write!(f, "{int}");
    }
    let text = format!("{frac:0width$}", width = decimals as usize);
    write!(f, "{int}.{}", text.trim_end_matches('0'))
}

/// A duration value: `5ms`, `250us`, `1.5ms`, `2s`, or `0`; whole microseconds, at most
/// [`MAX_DELAY`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    // Longest suffix first: "ms" and "us" end in "s".
    let units: [(&str, u32); 3] = [("ms", 3), ("us", 0), ("s", 6)];
    let bad = || format!("{text:?} is not a duration like 5ms, 250us or 1s");
    let (number, exponent) = units
        .iter()
        .find_map(|(unit, exp)| text.strip_suffix(unit).map(|n| (n, *exp)))
        .ok_or_else(bad)?;
    let micros = parse_decimal(number, exponent).ok_or_else(|| {
        format!("{text:?} is not a duration like 5ms, 250us or 1s (whole microseconds)")
    })?;
    if micros > MAX_DELAY.as_micros() {
        return Err(format!("{text} is longer than {}s", MAX_DELAY.as_secs()));
    }
    Ok(Duration::from_micros(micros))
}

/// Formats a duration in the largest unit that shows it exactly.
struct DurationText(Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0.as_micros();
        if us != 0 && us.is_multiple_of(1_000_000) {
            write!(f, "{}s", us / 1_000_000)
        } else if us.is_multiple_of(1000) {
            write!(f, "{}ms", us / 1000)
        } else {
            write!(f, "{us}us")
        }
    }
}

const RATE_UNITS: [(&str, u64); 4] = [
    ("gbit", 1_000_000_000),
    ("mbit", 1_000_000),
    ("kbit", 1_000),
    ("bit", 1),
];

/// A rate: `100mbit`, `1.5gbit`, `64kbit`, `9600bit` (SI prefixes, bits per second).
fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let bad = || format!("{text:?} is not a rate like 100mbit, 1gbit or 512kbit");
    let (number, unit) = RATE_UNITS
        .iter()
        .find_map(|(suffix, unit)| lower.strip_suffix(suffix).map(|n| (n, *unit)))
        .ok_or_else(bad)?;
    let decimals = unit.ilog10();
    let bits = parse_decimal(number, decimals).ok_or_else(bad)?;
    if !(MIN_RATE..=MAX_RATE).contains(&bits) {
        return Err(format!("rate {text} is outside 1kbit..1000gbit"));
    }
    Ok(bits)
}

struct RateText(u64);

impl fmt::Display for RateText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, unit) in RATE_UNITS {
            if self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}bit", self.0)
    }
}

/// What `--impair` asks of the link; see the module documentation. `Default` is a transparent
/// link with seed 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImpairSpec {
    /// Probability that a frame is lost.
    pub loss: Probability,
    /// Base one-way delay.
    pub delay: Duration,
    /// The delay varies uniformly within ± this (clamped at zero).
    pub jitter: Duration,
    /// Probability that a frame skips the delay (and so overtakes delayed ones).
    pub reorder: Probability,
    /// Probability that a frame is sent twice.
    pub dup: Probability,
    /// Probability that one bit of a frame is flipped.
    pub corrupt: Probability,
    /// Link rate in bits per second (`None`: as fast as the machine goes).
    pub rate: Option<u64>,
    /// Most frames waiting in one direction.
    pub limit: u32,
    /// Seed of both directions' generators.
    pub seed: u64,
}

impl Default for ImpairSpec {
    fn default() -> ImpairSpec {
        ImpairSpec {
            loss: Probability::ZERO,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: Probability::ZERO,
            dup: Probability::ZERO,
            corrupt: Probability::ZERO,
            rate: None,
            limit: DEFAULT_LIMIT,
            seed: 0,
        }
    }
}

impl ImpairSpec {
    /// The keys `--impair` accepts, in canonical order.
    pub const KEYS: [&'static str; 9] = [
        "loss", "delay", "jitter", "reorder", "dup", "corrupt", "rate", "limit", "seed",
    ];

    /// Whether frames pass unchanged, in order and without added delay.
    pub fn is_transparent(&self) -> bool {
        self.loss.is_zero()
            && self.delay == Duration::ZERO
            && self.jitter == Duration::ZERO
            && self.dup.is_zero()
            && self.corrupt.is_zero()
            && self.rate.is_none()
    }
}

/// A malformed `--impair` specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad impairment: {}", self.0)
    }
}

impl std::error::Error for SpecError {}

impl FromStr for ImpairSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<ImpairSpec, SpecError> {
        let mut spec = ImpairSpec::default();
        if text == "none" {
            return Ok(spec);
        }
        if text.is_empty() {
            return Err(SpecError(
                "empty (say `none` for a transparent link, or e.g. loss=2%,seed=1)".into(),
            ));
        }
        let mut seen = [false; ImpairSpec::KEYS.len()];
        for item in text.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(SpecError(format!(
                    "{item:?} is not KEY=VALUE (keys: {})",
                    ImpairSpec::KEYS.join(", ")
                )));
            };
            let Some(index) = ImpairSpec::KEYS.iter().position(|k| *k == key) else {
                return Err(SpecError(format!(
                    "unknown key {key:?} (keys: {})",
                    ImpairSpec::KEYS.join(", ")
                )));
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(SpecError(format!("{key} given more than once")));
            }
            let fail = |why: String| SpecError(format!("{key}: {why}"));
            match key {
                "loss" => spec.loss = Probability::parse_percent(value).map_err(fail)?,
                "reorder" => spec.reorder = Probability::parse_percent(value).map_err(fail)?,
                "dup" => spec.dup = Probability::parse_percent(value).map_err(fail)?,
                "corrupt" => spec.corrupt = Probability::parse_percent(value).map_err(fail)?,
                "delay" => spec.delay = parse_duration(value).map_err(fail)?,
                "jitter" => spec.jitter = parse_duration(value).map_err(fail)?,
                "rate" => spec.rate = Some(parse_rate(value).map_err(fail)?),
                "limit" => {
                    spec.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            fail(format!("{value:?} is not a frame count in 1..={MAX_LIMIT}"))
                        })?;
                }
                _ => {
                    // "seed": decimal or 0x-hex u64.
                    let parsed = match value.strip_prefix("0x") {
                        Some(hex) => u64::from_str_radix(hex, 16).ok(),
                        None => value.parse::<u64>().ok(),
                    };
                    spec.seed = parsed.ok_or_else(|| {
                        fail(format!(
                            "{value:?} is not a 64-bit number (decimal or 0x hex)"
                        ))
                    })?;
                }
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for ImpairSpec {
    /// Canonical form: non-default keys in [`ImpairSpec::KEYS`] order, then the seed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.loss.is_zero() {
            write!(f, "loss={},", self.loss)?;
        }
        for (key, d) in [("delay", self.delay), ("jitter", self.jitter)] {
            if d != Duration::ZERO {
                write!(f, "{key}={},", DurationText(d))?;
            }
        }
        for (key, p) in [
            ("reorder", self.reorder),
            ("dup", self.dup),
            ("corrupt", self.corrupt),
        ] {
            if !p.is_zero() {
                write!(f, "{key}={p},")?;
            }
        }
        if let Some(rate) = self.rate {
            write!(f, "rate={},", RateText(rate))?;
        }
        if self.limit != DEFAULT_LIMIT {
            write!(f, "limit={},", self.limit)?;
        }
        write!(f, "seed={}", self.seed)
    }
}

/// The splitmix64 step: seeds xoshiro and mixes the direction into the seed.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman & Vigna, 2018): small, fast, and good enough for simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// The state splitmix64 expands `seed` into (never all zero).
    pub fn seed_from_u64(seed: u64) -> Xoshiro256 {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Xoshiro256 { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

/// `r` (uniform over u64) scaled into `0..n` (Lemire's multiply-shift; bias < n / 2^64).
fn scale(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

/// Whether a uniform `r` falls under probability `p`.
fn hits(r: u64, p: Probability) -> bool {
    scale(r, u64::from(Probability::SCALE)) < u64::from(p.ppb())
}

/// One direction of the emulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From `N-a`'s side to `N-b`'s.
    AToB,
    /// From `N-b`'s side to `N-a`'s.
    BToA,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::AToB, Direction::BToA];

    /// `a_to_b` / `b_to_a`: the prefix of this direction's keys in the stats file.
    pub fn name(self) -> &'static str {
        match self {
            Direction::AToB => "a_to_b",
            Direction::BToA => "b_to_a",
        }
    }

    /// Mixed into the seed so the two directions draw independent sequences.
    fn salt(self) -> u64 {
        match self {
            Direction::AToB => 0x6174_6f62_0000_0001, // "atob"
            Direction::BToA => 0x6274_6f61_0000_0002, // "btoa"
        }
    }
}

/// What happened to one offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// The frame's number in its direction, from 0.
    pub seq: u64,
    /// Lost (`loss`): nothing is queued.
    pub lost: bool,
    /// The queue was full (`limit`): this many copies were dropped.
    pub overflow: u8,
    /// Index of the bit flipped in the first copy (bit 0 = most significant bit of byte 0).
    pub corrupt_bit: Option<usize>,
    /// The frame skipped the delay.
    pub reordered: bool,
    /// When the frame leaves (`None` if lost or overflowed).
    pub release: Option<Instant>,
    /// When its duplicate leaves, if it was duplicated and the copy fit in the queue.
    pub duplicate: Option<Instant>,
    /// Whether it was duplicated (also when the copy then overflowed).
    pub duplicated: bool,
}

/// Counters of one direction. Invariant: `received + duplicated == lost + overflow +
/// forwarded + queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Frames offered.
    pub received: u64,
    pub bytes_in: u64,
    /// Copies handed out by `pop_due` (duplicates included).
    pub forwarded: u64,
    pub bytes_out: u64,
    /// Frames lost (`loss`).
    pub lost: u64,
    /// Extra copies made (`dup`).
    pub duplicated: u64,
    /// Frames with a bit flipped.
    pub corrupted: u64,
    /// Frames that skipped the delay.
    pub reordered: u64,
    /// Copies dropped because `limit` frames were waiting.
    pub overflow: u64,
    /// Copies waiting now.
    pub queued: u64,
}

/// A frame waiting in the timer queue; ordered by (release, order).
#[derive(Debug)]
struct Queued {
    release: Instant,
    order: u64,
    frame: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Queued) -> bool {
        (self.release, self.order) == (other.release, other.order)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Queued) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Queued) -> Ordering {
        (self.release, self.order).cmp(&(other.release, other.order))
    }
}

/// The seven numbers drawn for every frame (see the module documentation).
struct Draw {
    loss: u64,
    corrupt: u64,
    bit: u64,
    dup: u64,
    reorder: u64,
    jitter: u64,
    dup_jitter: u64,
}

/// One direction of an impaired link; see the module documentation.
#[derive(Debug)]
pub struct LinkModel {
    spec: ImpairSpec,
    direction: Direction,
    rng: Xoshiro256,
    /// Frames offered so far (the next frame's `seq`).
    offered: u64,
    /// Insertion counter: FIFO among equal release times.
    order: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    pool: Vec<Vec<u8>>,
    /// `rate`: when the simulated wire is free again, in nanoseconds.
    wire_free_ns: u128,
    stats: LinkStats,
}

impl LinkModel {
    pub fn new(spec: &ImpairSpec, direction: Direction) -> LinkModel {
        let mut mix = spec.seed ^ direction.salt();
        let seed = splitmix64(&mut mix);
        LinkModel {
            spec: *spec,
            direction,
            rng: Xoshiro256::seed_from_u64(seed),
            offered: 0,
            order: 0,
            queue: BinaryHeap::new(),
            pool: Vec::new(),
            wire_free_ns: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn spec(&self) -> &ImpairSpec {
        &self.spec
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            queued: self.queue.len() as u64,
            ..self.stats
        }
    }

    /// Copies waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn draw(&mut self) -> Draw {
        let mut next = || self.rng.next_u64();
        Draw {
            loss: next(),
            corrupt: next(),
            bit: next(),
            dup: next(),
            reorder: next(),
            jitter: next(),
            dup_jitter: next(),
        }
    }

    /// The delay with a jitter draw applied: `delay + u - jitter`, `u` uniform in
    /// `0..=2·jitter`, never negative.
    fn jittered(&self, r: u64) -> Duration {
        let jitter = self.spec.jitter.as_micros();
        let delay = self.spec.delay.as_micros();
        if jitter == 0 {
            return self.spec.delay;
        }
        let u = scale(r, 2 * jitter + 1);
        Duration::from_micros((delay + u).saturating_sub(jitter))
    }

    /// `rate`: occupies the simulated wire for `len` bytes from `now` (or when the previous
    /// frame has left) and returns when the last bit has left; `now` without a rate.
    fn serialise(&mut self, len: usize, now: Instant) -> Instant {
        let Some(rate) = self.spec.rate else {
            return now;
        };
        let now_ns = u128::from(now.as_micros()) * 1000;
        let start = self.wire_free_ns.max(now_ns);
        let bits = (len as u128 + 4 + 20) * 8; // FCS, preamble and inter-frame gap
        let end = start + (bits * 1_000_000_000).div_ceil(u128::from(rate));
        self.wire_free_ns = end;
        Instant::from_micros(u64::try_from(end.div_ceil(1000)).unwrap_or(u64::MAX))
    }

    /// Bytes corruption may touch: after the Ethernet header, up to the end of the IPv4
    /// datagram when the frame carries one with a plausible total length (Ethernet padding is
    /// covered by no checksum).
    fn corruptible(frame: &[u8]) -> std::ops::Range<usize> {
        let start = ETHERNET_HEADER_LEN;
        let mut end = frame.len();
        if frame.len() >= start + 20 && frame[12..14] == [0x08, 0x00] {
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if (20..=frame.len() - start).contains(&total) {
                end = start + total;
            }
        }
        start..end.max(start)
    }

    fn buffer(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        buf
    }

    fn enqueue(&mut self, release: Instant, frame: Vec<u8>) -> bool {
        if self.queue.len() >= self.spec.limit as usize {
            self.stats.overflow += 1;
            self.recycle(frame);
            return false;
        }
        self.order += 1;
        self.queue.push(Reverse(Queued {
            release,
            order: self.order,
            frame,
        }));
        true
    }

    /// Takes one frame arriving at `now`: decides its fate and queues its copies.
    pub fn offer(&mut self, frame: &[u8], now: Instant) -> Verdict {
        let seq = self.offered;
        self.offered += 1;
        self.stats.received += 1;
        self.stats.bytes_in += frame.len() as u64;
        let draw = self.draw();
        let spec = self.spec;
        let mut verdict = Verdict {
            seq,
            lost: false,
            overflow: 0,
            corrupt_bit: None,
            reordered: false,
            release: None,
            duplicate: None,
            duplicated: false,
        };
        if hits(draw.loss, spec.loss) {
            self.stats.lost += 1;
            verdict.lost = true;
            return verdict;
        }
        // Like netem: the duplicate is cloned before the original is corrupted.
        let dup_copy = hits(draw.dup, spec.dup).then(|| self.buffer(frame));
        let mut first = self.buffer(frame);
        if hits(draw.corrupt, spec.corrupt) {
            let area = LinkModel::corruptible(frame);
            if !area.is_empty() {
                let bits = (area.len() * 8) as u64;
                let bit = area.start * 8 + scale(draw.bit, bits) as usize;
                first[bit / 8] ^= 0x80 >> (bit % 8);
                verdict.corrupt_bit = Some(bit);
                self.stats.corrupted += 1;
            }
        }
        let has_delay = spec.delay != Duration::ZERO || spec.jitter != Duration::ZERO;
        let delay = if has_delay && hits(draw.reorder, spec.reorder) {
            verdict.reordered = true;
            self.stats.reordered += 1;
            Duration::ZERO
        } else {
            self.jittered(draw.jitter)
        };
        let sent = self.serialise(frame.len(), now);
        let release = sent + delay;
        if self.enqueue(release, first) {
            verdict.release = Some(release);
        } else {
            verdict.overflow += 1;
        }
        if let Some(copy) = dup_copy {
            verdict.duplicated = true;
            self.stats.duplicated += 1;
            let sent = self.serialise(frame.len(), now);
            let release = sent + self.jittered(draw.dup_jitter);
            if self.enqueue(release, copy) {
                verdict.duplicate = Some(release);
            } else {
                verdict.overflow += 1;
            }
        }
        verdict
    }

    /// When the next queued frame is due (`None`: nothing waits).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(q)| q.release)
    }

    /// The next frame due at `now` (release time ≤ `now`), earliest first, FIFO among equal
    /// times. Hand the buffer back with [`LinkModel::recycle`] to avoid an allocation.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_deadline()? > now {
            return None;
        }
        let Reverse(q) = self.queue.pop()?;
        self.stats.forwarded += 1;
        self.stats.bytes_out += q.frame.len() as u64;
        Some(q.frame)
    }

    /// Calls `f` with every frame due at `now`, in release order; returns how many.
    pub fn release_due(&mut self, now: Instant, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while let Some(frame) = self.pop_due(now) {
            f(&frame);
            self.recycle(frame);
            n += 1;
        }
        n
    }

    /// Returns a buffer from [`LinkModel::pop_due`] for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_LIMIT {
            self.pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ImpairSpec {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    /// An Ethernet/IPv4 frame of `len` bytes whose IP total length covers all of it.
    fn ipv4_frame(len: usize, tag: u32) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12] = 0x08;
        f[13] = 0x00;
        f[14] = 0x45;
        let total = (len - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        for (i, b) in f.iter_mut().enumerate().skip(34) {
            *b = (i as u32).wrapping_mul(31).wrapping_add(tag) as u8;
        }
        f
    }

    /// Offers `n` frames at 1 µs intervals and drains them, returning the verdicts and the
    /// frames in release order.
    fn run(model: &mut LinkModel, n: u32, len: usize) -> (Vec<Verdict>, Vec<Vec<u8>>) {
        let mut verdicts = Vec::new();
        let mut out = Vec::new();
        for i in 0..n {
            let now = Instant::from_micros(u64::from(i));
            verdicts.push(model.offer(&ipv4_frame(len, i), now));
            model.release_due(now, |f| out.push(f.to_vec()));
        }
        model.release_due(Instant::from_secs(3600), |f| out.push(f.to_vec()));
        (verdicts, out)
    }

    #[test]
    fn parses_the_issue_example_and_round_trips() {
        let s = spec("loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%,seed=42");
        assert_eq!(s.loss.ppb(), 20_000_000);
        assert_eq!(s.delay, Duration::from_millis(5));
        assert_eq!(s.jitter, Duration::from_millis(1));
        assert_eq!(s.reorder.ppb(), 50_000_000);
        assert_eq!(s.dup.ppb(), 10_000_000);
        assert_eq!(s.corrupt.ppb(), 1_000_000);
        assert_eq!((s.rate, s.limit, s.seed), (None, DEFAULT_LIMIT, 42));
        assert_eq!(
            s.to_string(),
            "loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%,seed=42"
        );
        for text in [
            "none",
            "seed=7",
            "loss=10%,seed=7",
            "delay=250us,jitter=1.5ms,seed=1",
            "rate=100mbit,limit=500,seed=0x10",
            "rate=1.5gbit,loss=0.0000001%,seed=18446744073709551615",
            "dup=100%,delay=2s",
            "seed=3,loss=12.5%",
            "rate=9600bit",
        ] {
            let parsed = spec(text);
            let shown = parsed.to_string();
            assert_eq!(spec(&shown), parsed, "{text} -> {shown}");
            assert_eq!(
                spec(&shown).to_string(),
                shown,
                "canonical is a fixed point"
            );
        }
        assert_eq!(spec("none"), ImpairSpec::default());
        assert_eq!(spec("none").to_string(), "seed=0");
        assert_eq!(spec("seed=0x10").seed, 16);
        assert_eq!(spec("rate=1.5gbit").rate, Some(1_500_000_000));
        assert_eq!(spec("rate=1.5gbit").to_string(), "rate=1500mbit,seed=0");
        assert_eq!(spec("jitter=1500us").to_string(), "jitter=1500us,seed=0");
        assert_eq!(spec("delay=2000ms").to_string(), "delay=2s,seed=0");
        assert!(spec("none").is_transparent());
        assert!(spec("seed=9,reorder=50%,limit=3").is_transparent());
        assert!(!spec("loss=1%").is_transparent());
    }

    #[test]
    fn parse_errors_name_the_problem() {
        for (text, needle) in [
            ("", "empty"),
            ("loss", "KEY=VALUE"),
            ("loss=2%,,seed=1", "KEY=VALUE"),
            ("lose=2%", "unknown key \"lose\""),
            ("LOSS=2%", "unknown key"),
            ("loss=2", "not a percentage"),
            ("loss=2%%", "loss:"),
            ("loss=101%", "more than 100%"),
            ("loss=-1%", "loss:"),
            ("loss=1.%", "loss:"),
            ("loss=.5%", "loss:"),
            ("loss=0.00000001%", "7 decimals"),
            ("loss=1%,loss=2%", "more than once"),
            ("delay=5", "duration"),
            ("delay=5min", "duration"),
            ("delay=0.5us", "whole microseconds"),
            ("delay=61s", "longer than 60s"),
            ("jitter=-1ms", "jitter:"),
            ("rate=100", "rate"),
            ("rate=100mbps", "rate"),
            ("rate=10bit", "outside"),
            ("rate=2000gbit", "outside"),
            ("limit=0", "limit:"),
            ("limit=x", "limit:"),
            ("seed=-1", "seed:"),
            ("seed=0xzz", "seed:"),
            ("seed=99999999999999999999", "seed:"),
            ("dup=1%,", "KEY=VALUE"),
            (" loss=1%", "unknown key"),
        ] {
            let err = text.parse::<ImpairSpec>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
            assert!(err.starts_with("bad impairment: "), "{err}");
        }
    }

    #[test]
    fn probability_display_and_bounds() {
        for (text, ppb) in [
            ("0%", 0),
            ("100%", 1_000_000_000),
            ("0.1%", 1_000_000),
            ("12.5%", 125_000_000),
            ("0.0000001%", 1),
        ] {
            let p = Probability::parse_percent(text).expect(text);
            assert_eq!(p.ppb(), ppb, "{text}");
            assert_eq!(p.to_string(), text);
        }
        assert_eq!(Probability::from_ppb(Probability::SCALE + 1), None);
        // The extremes are exact: 0 % never, 100 % always.
        let mut rng = Xoshiro256::seed_from_u64(1);
        for _ in 0..10_000 {
            let r = rng.next_u64();
            assert!(!hits(r, Probability::ZERO));
            assert!(hits(r, Probability::ONE));
        }
        assert!(hits(u64::MAX, Probability::ONE));
        assert!(!hits(0, Probability::ZERO));
    }

    #[test]
    fn xoshiro_matches_the_reference() {
        // Reference: splitmix64 from 0 gives e220a8397b1dcdaf (Vigna's splitmix64.c).
        let mut sm = 0;
        assert_eq!(splitmix64(&mut sm), 0xe220_a839_7b1d_cdaf);
        // xoshiro256** with state {1, 2, 3, 4}: 11520, 0, 1509978240, 1215971899390074240.
        let mut x = Xoshiro256 { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| x.next_u64()).collect();
        assert_eq!(got, [11520, 0, 1_509_978_240, 1_215_971_899_390_074_240]);
    }

    #[test]
    fn transparent_link_passes_everything_in_order_at_once() {
        let mut m = LinkModel::new(&spec("seed=5"), Direction::AToB);
        let frames: Vec<Vec<u8>> = (0..1000)
            .map(|i| ipv4_frame(60 + i % 1400, i as u32))
            .collect();
        for (i, f) in frames.iter().enumerate() {
            let now = Instant::from_micros(i as u64 * 3);
            let v = m.offer(f, now);
            assert_eq!(v.release, Some(now));
            assert_eq!(m.next_deadline(), Some(now));
            let out = m.pop_due(now).expect("due at once");
            assert_eq!(&out, f);
            m.recycle(out);
            assert_eq!(m.next_deadline(), None);
        }
        let s = m.stats();
        assert_eq!((s.received, s.forwarded, s.queued), (1000, 1000, 0));
        assert_eq!(s.bytes_in, s.bytes_out);
        assert_eq!(
            (s.lost, s.duplicated, s.corrupted, s.reordered, s.overflow),
            (0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn statistics_over_100k_frames_are_within_tolerance() {
        let s = spec("loss=2%,delay=5ms,jitter=1ms,reorder=5%,dup=1%,corrupt=0.1%,seed=1234");
        let mut m = LinkModel::new(&s, Direction::BToA);
        let n = 100_000u32;
        let (verdicts, out) = run(&mut m, n, 200);
        let st = m.stats();
        let frac = |x: u64| x as f64 / f64::from(n);
        // Fixed seed, so these are exact facts of this sequence; the bounds are ±5 σ of a
        // binomial so any good generator passes them.
        assert!(
            (frac(st.lost) - 0.02).abs() < 0.0023,
            "loss {}",
            frac(st.lost)
        );
        let kept = n as u64 - st.lost;
        let rate = |x: u64| x as f64 / kept as f64;
        assert!(
            (rate(st.duplicated) - 0.01).abs() < 0.0017,
            "dup {}",
            rate(st.duplicated)
        );
        assert!(
            (rate(st.reordered) - 0.05).abs() < 0.0036,
            "reorder {}",
            rate(st.reordered)
        );
        assert!(
            (rate(st.corrupted) - 0.001).abs() < 0.0006,
            "corrupt {}",
            rate(st.corrupted)
        );
        assert_eq!(st.received, u64::from(n));
        assert_eq!(
            st.received + st.duplicated,
            st.lost + st.overflow + st.forwarded + st.queued
        );
        assert_eq!((st.overflow, st.queued), (0, 0));
        assert_eq!(out.len() as u64, st.forwarded);
        // The verdicts add up to the counters.
        let count = |f: &dyn Fn(&Verdict) -> bool| verdicts.iter().filter(|v| f(v)).count() as u64;
        assert_eq!(count(&|v| v.lost), st.lost);
        assert_eq!(count(&|v| v.duplicated), st.duplicated);
        assert_eq!(count(&|v| v.reordered), st.reordered);
        assert_eq!(count(&|v| v.corrupt_bit.is_some()), st.corrupted);
        // Delays: reordered frames leave at once, the others within delay ± jitter.
        for (i, v) in verdicts.iter().enumerate() {
            let sent = Instant::from_micros(i as u64);
            if let Some(release) = v.release {
                let d = (release - sent).as_micros();
                if v.reordered {
                    assert_eq!(d, 0);
                } else {
                    assert!((4000..=6000).contains(&d), "frame {i}: {d} us");
                }
            }
        }
        // Reordering shows in the output: some frame leaves before an earlier-sent one.
        let tags: Vec<u64> = out
            .iter()
            .map(|f| u64::from(f[40]) | (u64::from(f[41]) << 8))
            .collect();
        assert!(tags.windows(2).any(|w| w[0] != w[1]), "distinct frames");
    }

    #[test]
    fn same_seed_same_decisions_other_direction_or_seed_differs() {
        let s = spec("loss=10%,dup=10%,reorder=10%,corrupt=10%,delay=1ms,jitter=500us,seed=99");
        let a1 = run(&mut LinkModel::new(&s, Direction::AToB), 5000, 300);
        let a2 = run(&mut LinkModel::new(&s, Direction::AToB), 5000, 300);
        assert_eq!(
            a1, a2,
            "same seed and direction: identical verdicts and frames"
        );
        let b = run(&mut LinkModel::new(&s, Direction::BToA), 5000, 300);
        assert_ne!(a1.0, b.0, "the other direction draws another sequence");
        let other = ImpairSpec { seed: 100, ..s };
        let c = run(&mut LinkModel::new(&other, Direction::AToB), 5000, 300);
        assert_ne!(a1.0, c.0, "another seed draws another sequence");
        let lost = |v: &[Verdict]| {
            v.iter()
                .filter(|v| v.lost)
                .map(|v| v.seq)
                .collect::<Vec<_>>()
        };
        assert_ne!(lost(&a1.0), lost(&b.0));
    }

    #[test]
    fn one_knob_does_not_shift_the_others() {
        // Seven draws per frame whatever happens: the loss pattern is the same with or
        // without duplication, corruption and delay.
        let lost = |text: &str| {
            let (v, _) = run(
                &mut LinkModel::new(&spec(text), Direction::AToB),
                20_000,
                100,
            );
            v.iter()
                .filter(|v| v.lost)
                .map(|v| v.seq)
                .collect::<Vec<_>>()
        };
        let base = lost("loss=5%,seed=3");
        assert!(!base.is_empty());
        assert_eq!(
            base,
            lost("loss=5%,dup=50%,corrupt=50%,delay=1ms,jitter=1ms,seed=3")
        );
        assert_eq!(
            base,
            lost("loss=5%,reorder=100%,delay=2ms,rate=1gbit,seed=3")
        );
    }

    #[test]
    fn corruption_flips_exactly_one_bit_after_the_ethernet_header() {
        let mut m = LinkModel::new(&spec("corrupt=100%,seed=11"), Direction::AToB);
        let mut hit_ip_header = false;
        let mut hit_payload = false;
        for i in 0..5000u32 {
            let len = 34 + (i as usize % 200);
            let original = ipv4_frame(len, i);
            let now = Instant::from_micros(u64::from(i));
            let v = m.offer(&original, now);
            let out = m.pop_due(now).expect("no delay");
            assert_eq!(out.len(), original.len());
            let diff: Vec<usize> = (0..len).filter(|&b| out[b] != original[b]).collect();
            assert_eq!(diff.len(), 1, "one byte differs");
            let byte = diff[0];
            assert!(
                byte >= ETHERNET_HEADER_LEN,
                "byte {byte} is in the Ethernet header"
            );
            assert_eq!((out[byte] ^ original[byte]).count_ones(), 1, "one bit");
            let bit = v.corrupt_bit.expect("reported");
            assert_eq!(bit / 8, byte);
            assert_eq!(out[byte] ^ original[byte], 0x80 >> (bit % 8));
            hit_ip_header |= byte < 34;
            hit_payload |= byte >= 34;
            m.recycle(out);
        }
        assert!(hit_ip_header && hit_payload, "the whole area is covered");
        assert_eq!(m.stats().corrupted, 5000);

        // Ethernet padding past the IPv4 total length is never touched; non-IP frames are
        // corrupted anywhere after the header; a bare header cannot be corrupted.
        let mut padded = ipv4_frame(60, 1);
        padded[16..18].copy_from_slice(&28u16.to_be_bytes());
        let mut arp = vec![0xaa; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        for _ in 0..2000 {
            let v = m.offer(&padded, Instant::ZERO);
            let bit = v.corrupt_bit.expect("corrupted");
            assert!((14 * 8..42 * 8).contains(&bit), "bit {bit} in padding");
            let v = m.offer(&arp, Instant::ZERO);
            assert!((14 * 8..42 * 8).contains(&v.corrupt_bit.expect("corrupted")));
        }
        let v = m.offer(&[0u8; 14], Instant::ZERO);
        assert_eq!(v.corrupt_bit, None);
        assert!(v.release.is_some(), "still forwarded");
    }

    #[test]
    fn jitter_never_makes_the_delay_negative() {
        // Jitter larger than the delay: the low side is clamped at zero.
        let mut m = LinkModel::new(&spec("delay=1ms,jitter=5ms,seed=8"), Direction::BToA);
        let mut zero = 0;
        let mut max = 0;
        for i in 0..20_000u64 {
            let now = Instant::from_micros(1_000_000 + i * 10);
            let release = m.offer(&[0u8; 60], now).release.expect("kept");
            m.release_due(now, |_| {});
            assert!(release >= now, "released before it arrived");
            let d = (release - now).as_micros();
            assert!(d <= 6000, "{d}");
            zero += u32::from(d == 0);
            max = max.max(d);
        }
        // u < 4000 of 0..=10000 clamps: ~40 %.
        assert!((7000..9000).contains(&zero), "{zero}");
        assert!(max > 5900, "{max}");
        // Jitter without delay.
        let mut m = LinkModel::new(&spec("jitter=2ms,seed=8"), Direction::AToB);
        for i in 0..1000 {
            let now = Instant::from_micros(i);
            let release = m.offer(&[0u8; 60], now).release.expect("kept");
            m.release_due(now, |_| {});
            assert!(release >= now && (release - now).as_micros() <= 2000);
        }
    }

    #[test]
    fn reorder_skips_the_delay_and_overtakes() {
        let mut m = LinkModel::new(&spec("delay=10ms,reorder=30%,seed=4"), Direction::AToB);
        let mut order = Vec::new();
        for i in 0..1000u32 {
            let now = Instant::from_micros(u64::from(i) * 100);
            let v = m.offer(&ipv4_frame(60, i), now);
            let expect = if v.reordered {
                now
            } else {
                now + Duration::from_millis(10)
            };
            assert_eq!(v.release, Some(expect));
            while let Some(f) = m.pop_due(now) {
                order.push(f[34]);
                m.recycle(f);
            }
        }
        m.release_due(Instant::from_secs(10), |f| order.push(f[34]));
        assert_eq!(order.len(), 1000);
        let reordered = m.stats().reordered;
        assert!((240..360).contains(&reordered), "{reordered}");
        // Without a delay there is nothing to skip: no frame counts as reordered.
        let mut m = LinkModel::new(&spec("reorder=100%,seed=4"), Direction::AToB);
        let v = m.offer(&[0u8; 60], Instant::ZERO);
        assert!(!v.reordered);
        assert_eq!(m.stats().reordered, 0);
    }

    #[test]
    fn timer_queue_is_ordered_and_fifo_for_equal_times() {
        let mut m = LinkModel::new(&spec("delay=5ms,seed=1"), Direction::AToB);
        for i in 0..50u8 {
            // Five frames per instant.
            let now = Instant::from_micros(u64::from(i / 5) * 1000);
            m.offer(&[i; 20], now);
        }
        assert_eq!(m.next_deadline(), Some(Instant::from_millis(5)));
        assert_eq!(m.pop_due(Instant::from_micros(4999)), None, "not due yet");
        let mut got = Vec::new();
        let mut last = Instant::ZERO;
        while let Some(deadline) = m.next_deadline() {
            assert!(deadline >= last);
            last = deadline;
            m.release_due(deadline, |f| got.push(f[0]));
        }
        assert_eq!(got, (0..50).collect::<Vec<u8>>());
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn duplicates_are_extra_copies() {
        let mut m = LinkModel::new(&spec("dup=100%,seed=2"), Direction::AToB);
        let frame = ipv4_frame(100, 7);
        let v = m.offer(&frame, Instant::from_millis(1));
        assert!(v.duplicated);
        assert_eq!(v.release, Some(Instant::from_millis(1)));
        assert_eq!(v.duplicate, Some(Instant::from_millis(1)));
        let mut out = Vec::new();
        assert_eq!(
            m.release_due(Instant::from_millis(1), |f| out.push(f.to_vec())),
            2
        );
        assert_eq!(out, vec![frame.clone(), frame]);
        let st = m.stats();
        assert_eq!((st.received, st.duplicated, st.forwarded), (1, 1, 2));
    }

    #[test]
    fn rate_serialises_frames_back_to_back() {
        // 1 Mbit/s: a 101-byte frame plus 24 bytes of framing is 1000 bits = 1 ms.
        let mut m = LinkModel::new(&spec("rate=1mbit,seed=1"), Direction::AToB);
        let releases: Vec<Instant> = (0..5)
            .map(|_| m.offer(&[0u8; 101], Instant::ZERO).release.expect("kept"))
            .collect();
        assert_eq!(
            releases,
            (1..=5).map(Instant::from_millis).collect::<Vec<_>>()
        );
        // An idle wire starts afresh.
        let r = m.offer(&[0u8; 101], Instant::from_secs(1)).release;
        assert_eq!(r, Some(Instant::from_secs(1) + Duration::from_millis(1)));
        // With a delay, serialisation comes first.
        let mut m = LinkModel::new(&spec("rate=1mbit,delay=10ms,seed=1"), Direction::AToB);
        let r = m.offer(&[0u8; 101], Instant::ZERO).release;
        assert_eq!(r, Some(Instant::from_millis(11)));
    }

    #[test]
    fn limit_bounds_the_queue() {
        let mut m = LinkModel::new(&spec("delay=1s,limit=10,seed=1"), Direction::AToB);
        for i in 0..25u8 {
            let v = m.offer(&[i; 20], Instant::ZERO);
            assert_eq!(v.overflow, u8::from(i >= 10), "{i}");
            assert_eq!(v.release.is_some(), i < 10);
        }
        let st = m.stats();
        assert_eq!((st.queued, st.overflow), (10, 15));
        assert_eq!(m.release_due(Instant::from_secs(1), |_| {}), 10);
        assert_eq!(m.stats().forwarded, 10);
    }
}
