//! A seeded, deterministic network simulator for two [`TcpConnection`]s (issue 3, "Must show":
//! deterministic simulation tests; also used by the engine benchmarks).
//!
//! Side A (index 0) opens actively; side B (index 1) listens through a [`TcpListener`], accepts
//! the first SYN with [`TcpConnection::accept`], or opens simultaneously ([`OpenMode`]). Every
//! segment an engine emits through `dispatch` is serialised to real bytes with
//! [`TcpRepr::emit`] (checksum over the IPv4 pseudo-header of the connection's addresses), crosses
//! a [`LinkConfig`] link (loss, delay ± jitter, netem-style reordering, duplication, a single
//! flipped bit, an optional bandwidth with a serialisation queue, an MTU), and is parsed back
//! with [`TcpRepr::parse`] at the receiver: a corrupted segment fails the checksum and is
//! counted, as on a real host. A host whose connection is gone answers with
//! [`reset_for`], like a closed port.
//!
//! Time is virtual: each step jumps to the next event — the earliest link arrival, either
//! engine's `poll_at`, a throttled reader's next read, or the next migration. An application
//! model per side writes a seeded byte stream in chunks of varying size, reads with varying
//! buffer sizes and verifies every byte, half-closes when its stream is written and closes once
//! it has read the peer's end of stream. Optionally either engine migrates (export → import
//! round trip, the image checked to re-export identically) at seeded moments, with data in
//! flight and timers armed. Everything random comes from one seed through xoshiro256**
//! streams, so a run is reproducible bit for bit.
//!
//! [`Simulation::run`] returns a [`SimReport`], or a [`SimError`] (never a panic) when a time or
//! event limit is hit, the run stalls, a byte differs, a connection fails or an image does not
//! round-trip.
#![forbid(unsafe_code)]

use core::fmt;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::congestion::CongestionAlgorithm;
use super::connection::{
    ConnError, InitialSequence, ListenOutcome, Outgoing, RecvError, SendError, State, TcpConfig,
    TcpConnection, TcpDropReason, TcpListener, Verdict, reset_for,
};
use super::image::ImageError;
use super::isn::IsnGenerator;
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{TcpPacket, TcpRepr};

/// Address of side A (the active opener).
pub const ADDR_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
/// Address of side B (the listener).
pub const ADDR_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5001);
/// IPv4 header bytes counted against the link MTU.
const IP_HEADER_LEN: usize = 20;
/// How many iterations may run without the clock moving before the run counts as a livelock.
const SAME_TIME_LIMIT: u32 = 20_000;
/// Segments kept for the trace shown with an error.
const TRACE_LEN: usize = 24;

// ----- PRNG ------------------------------------------------------------------------------

/// SplitMix64 step (used to seed [`Rng`] and to derive the byte pattern).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman & Vigna), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// An independent stream for `(seed, stream)`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut sm = seed ^ stream.wrapping_mul(0xd134_2543_de82_ef95);
        let mut s = [0u64; 4];
        for v in &mut s {
            *v = splitmix64(&mut sm);
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in `[lo, hi]` (inclusive; `lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo + 1;
        if span == 0 {
            return self.next_u64();
        }
        lo + self.next_u64() % span
    }
}

/// Byte `offset` of the stream seeded by `seed` (what the writer sends and the reader expects).
pub fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let mut s = seed ^ (offset >> 3).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (splitmix64(&mut s) >> ((offset & 7) * 8)) as u8
}

fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let at = offset + i as u64;
        let mut s = seed ^ (at >> 3).wrapping_mul(0x2545_f491_4f6c_dd1d);
        let word = splitmix64(&mut s).to_le_bytes();
        let from = (at & 7) as usize;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
    }
}

// ----- configuration ---------------------------------------------------------------------

/// One direction of the link. Probabilities are in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Probability a segment is lost.
    pub loss: f64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Uniform jitter added to the delay, in [−jitter, +jitter].
    pub jitter: Duration,
    /// Probability a segment skips the delay (netem `reorder`): it overtakes the segments sent
    /// within the last `delay`.
    pub reorder: f64,
    /// Probability a segment is delivered twice (the copy with its own jitter).
    pub duplicate: f64,
    /// Probability one random bit of the segment is flipped.
    pub corrupt: f64,
    /// Serialisation rate in bytes/s (`None` = infinite): segments queue behind each other.
    pub bandwidth: Option<u64>,
    /// Bytes the serialisation queue holds before tail drop (only with `bandwidth`).
    pub queue_limit: Option<usize>,
    /// Largest IPv4 datagram (a bigger segment is dropped and counted in `oversize`).
    pub mtu: usize,
}

impl LinkConfig {
    /// A clean link: `delay` one way, no impairment, MTU 1500.
    pub fn clean(delay: Duration) -> LinkConfig {
        LinkConfig {
            loss: 0.0,
            delay,
            jitter: Duration::ZERO,
            reorder: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            bandwidth: None,
            queue_limit: None,
            mtu: 1500,
        }
    }

    /// The standard impairment: loss 2 %, delay 5 ms, jitter 1 ms, reorder 5 %,
    /// duplicate 1 %, corrupt 0.1 %.
    pub fn lossy() -> LinkConfig {
        LinkConfig {
            loss: 0.02,
            jitter: Duration::from_millis(1),
            reorder: 0.05,
            duplicate: 0.01,
            corrupt: 0.001,
            ..LinkConfig::clean(Duration::from_millis(5))
        }
    }
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig::clean(Duration::from_millis(5))
    }
}

/// How the connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// B is a [`TcpListener`]; its `process` creates B's connection.
    Listener,
    /// B builds its connection with [`TcpConnection::accept`] from the first SYN.
    Accept,
    /// Both sides `connect` at time zero; the SYNs cross (RFC 9293 simultaneous open).
    Simultaneous,
}

/// The application on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Bytes this side writes before half-closing.
    pub bytes: u64,
    /// Largest chunk per `send` call (sizes are uniform in [1, max]).
    pub write_chunk_max: usize,
    /// Largest buffer per `recv` call (sizes are uniform in [1, max]).
    pub read_chunk_max: usize,
    /// `Some(t)`: the reader wakes only every ~t (uniform in [t/2, 3t/2]) and reads one buffer,
    /// so a fast sender fills the window (zero windows, persist probes).
    pub read_interval: Option<Duration>,
}

impl Default for AppConfig {
    fn default() -> AppConfig {
        AppConfig {
            bytes: 1 << 20,
            write_chunk_max: 16 * 1024,
            read_chunk_max: 16 * 1024,
            read_interval: None,
        }
    }
}

/// A whole simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Link from A to B and from B to A.
    pub links: [LinkConfig; 2],
    /// Engine configuration of A and B.
    pub tcp: [TcpConfig; 2],
    pub apps: [AppConfig; 2],
    pub open: OpenMode,
    /// Migrate a random side (export → import) every ~this much virtual time (uniform in
    /// [t/2, 3t/2]); `None` = never.
    pub migrate_every: Option<Duration>,
}

impl SimConfig {
    /// Default engines, a clean 5 ms link, 1 MiB each way, listener open, no migration.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            links: [LinkConfig::default(), LinkConfig::default()],
            tcp: [TcpConfig::default(), TcpConfig::default()],
            apps: [AppConfig::default(), AppConfig::default()],
            open: OpenMode::Listener,
            migrate_every: None,
        }
    }

    /// The same link both ways.
    pub fn with_link(mut self, link: LinkConfig) -> SimConfig {
        self.links = [link.clone(), link];
        self
    }

    /// `bytes` written by each side.
    pub fn with_bytes(mut self, bytes: u64) -> SimConfig {
        self.apps[0].bytes = bytes;
        self.apps[1].bytes = bytes;
        self
    }

    /// Applies `f` to both engines' configuration.
    pub fn with_tcp(mut self, f: impl Fn(&mut TcpConfig)) -> SimConfig {
        f(&mut self.tcp[0]);
        f(&mut self.tcp[1]);
        self
    }

    /// Applies `f` to both applications.
    pub fn with_apps(mut self, f: impl Fn(&mut AppConfig)) -> SimConfig {
        f(&mut self.apps[0]);
        f(&mut self.apps[1]);
        self
    }

    pub fn with_congestion(self, algorithm: CongestionAlgorithm) -> SimConfig {
        self.with_tcp(|c| c.congestion = algorithm)
    }
}

/// When [`Simulation::run`] gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Virtual time.
    pub time: Duration,
    /// Loop iterations (each delivers at most one segment).
    pub events: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            time: Duration::from_secs(600),
            events: 5_000_000,
        }
    }
}

// ----- report and errors -----------------------------------------------------------------

/// Counters of one link direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Segments handed to the link.
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Segments with a flipped bit.
    pub corrupted: u64,
    /// Corrupted segments the receiver rejected (checksum or malformed header).
    pub corrupt_rejected: u64,
    /// Corrupted segments that parsed anyway (a checksum failure to detect: must stay 0).
    pub corrupt_accepted: u64,
    /// Unmodified segments that did not parse (the sender emitted garbage: must stay 0).
    pub malformed: u64,
    /// Segments larger than the MTU (must stay 0).
    pub oversize: u64,
    /// Tail drops of the serialisation queue.
    pub queue_drops: u64,
    pub delivered: u64,
    /// Delivered segments announcing a zero window (not SYN, not RST).
    pub zero_windows: u64,
    pub bytes: u64,
}

/// Outcome of a run; index 0 is side A, 1 is side B; `links[0]` is A → B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    /// Virtual time at the end.
    pub elapsed: Duration,
    pub events: u64,
    /// Bytes each side's application wrote (accepted by `send`).
    pub bytes_written: [u64; 2],
    /// Bytes each side's application read and verified.
    pub bytes_read: [u64; 2],
    /// Whether each side read end of stream.
    pub eof: [bool; 2],
    pub links: [LinkStats; 2],
    /// Segments each engine emitted.
    pub segments_sent: [u64; 2],
    /// Segments each engine dropped (`process` verdict).
    pub segments_dropped: [u64; 2],
    pub retransmits: [u64; 2],
    pub timeouts: [u64; 2],
    pub fast_retransmits: [u64; 2],
    /// RSTs sent by a host for a connection it no longer has.
    pub host_resets: [u64; 2],
    pub migrations: [u64; 2],
    /// State of each engine when it was retired (or at the end).
    pub final_states: [Option<State>; 2],
    /// Bitmask of `1 << state.linux_number()` for every state each engine was seen in.
    pub visited: [u16; 2],
    /// Last `SO_ERROR` of each connection.
    pub errors: [Option<ConnError>; 2],
    /// The most recent segments: (time µs, direction, summary).
    pub trace: Vec<(u64, usize, String)>,
    /// Virtual time at which each side's application read end of stream (goodput = bytes read
    /// over this, without the closing handshake and TIME_WAIT).
    pub eof_at: [Option<Duration>; 2],
    /// Segments each engine dropped, by [`TcpDropReason`] (index = reason as usize), including
    /// out-of-order data dropped for want of a range (the segment itself is accepted).
    pub drop_reasons: [[u64; TcpDropReason::COUNT]; 2],
    /// Sum and count of each engine's congestion window (segments) sampled at every segment it
    /// processed in ESTABLISHED, CLOSE_WAIT or FIN_WAIT_1: the mean window over the transfer.
    pub cwnd_samples: [(u64, u64); 2],
}

impl SimReport {
    /// Mean congestion window (segments) of side `side` while ESTABLISHED.
    pub fn mean_cwnd(&self, side: usize) -> u64 {
        let (sum, n) = self.cwnd_samples[side];
        sum / n.max(1)
    }

    /// Goodput of the data side `side` *received*, in bit/s up to its end of stream.
    pub fn goodput_bps(&self, side: usize) -> u64 {
        let t = self.eof_at[side].map_or(0, |d| d.as_micros()).max(1);
        self.bytes_read[side].saturating_mul(8_000_000) / t
    }

    /// Whether side `side` was seen in `state`.
    pub fn visited(&self, side: usize, state: State) -> bool {
        self.visited[side] & (1 << state.linux_number()) != 0
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} after {} µs, {} events: written {:?}, read {:?}, eof {:?}, states {:?}, errors {:?}",
            self.seed,
            self.elapsed.as_micros(),
            self.events,
            self.bytes_written,
            self.bytes_read,
            self.eof,
            self.final_states,
            self.errors
        )?;
        writeln!(
            f,
            "segments {:?}, dropped {:?}, retransmits {:?} (timeouts {:?}, fast {:?}), migrations {:?}",
            self.segments_sent,
            self.segments_dropped,
            self.retransmits,
            self.timeouts,
            self.fast_retransmits,
            self.migrations
        )?;
        writeln!(f, "links {:?}", self.links)?;
        for (t, dir, s) in &self.trace {
            writeln!(f, "  {t:>10} {} {s}", if *dir == 0 { "A>B" } else { "B>A" })?;
        }
        Ok(())
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimErrorKind {
    TimeLimit,
    EventLimit,
    /// Not finished, and nothing will ever happen again (no timer, nothing on the link).
    Stalled,
    /// The engines keep asking to run at the same instant without progress.
    Livelock,
    /// A byte read differs from the stream written.
    Mismatch {
        side: usize,
        offset: u64,
        expected: u8,
        got: u8,
    },
    /// End of stream before all bytes arrived, or more bytes than written.
    WrongLength {
        side: usize,
        read: u64,
        expected: u64,
    },
    /// A user call failed.
    Send {
        side: usize,
        error: SendError,
    },
    Recv {
        side: usize,
        error: RecvError,
    },
    /// The connection closed before the application finished.
    Closed {
        side: usize,
        error: Option<ConnError>,
    },
    /// B's listener refused the connection or the first SYN did not make one.
    Open(String),
    /// `import` rejected an image `export` just produced.
    Import {
        side: usize,
        error: ImageError,
    },
    /// The restored engine differs from the original (`what` names the observation).
    Migration {
        side: usize,
        what: &'static str,
    },
}

/// A failed run: what went wrong and the report at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    pub kind: SimErrorKind,
    pub report: Box<SimReport>,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation failed: {:?}", self.kind)?;
        write!(f, "{}", self.report)
    }
}

impl std::error::Error for SimError {}

// ----- the simulation --------------------------------------------------------------------

enum Endpoint {
    /// B waiting as a listener.
    Listening(Box<TcpListener>),
    /// B waiting for the first SYN to `accept`.
    Awaiting,
    Active(Box<TcpConnection>),
    /// The connection is closed and forgotten: the host answers with RSTs.
    Gone,
}

struct App {
    cfg: AppConfig,
    rng: Rng,
    /// Seed of the stream this side writes / reads.
    write_seed: u64,
    read_seed: u64,
    expect: u64,
    written: u64,
    read: u64,
    shut: bool,
    eof: bool,
    closed: bool,
    next_read_at: Instant,
    buf: Vec<u8>,
}

impl App {
    fn done(&self) -> bool {
        self.shut && self.eof && self.closed
    }
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at: Instant,
    order: u64,
    /// Receiving side.
    to: usize,
    corrupted: bool,
    bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        // Min-heap on (time, insertion order).
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Engine counters accumulated over migrations (an import may or may not carry them).
#[derive(Default, Clone, Copy)]
struct Carried {
    retransmits: u64,
    timeouts: u64,
    fast_retransmits: u64,
}

/// Two engines, two links, two applications, one virtual clock.
pub struct Simulation {
    cfg: SimConfig,
    now: Instant,
    events: u64,
    ends: [Endpoint; 2],
    apps: [App; 2],
    link_rng: [Rng; 2],
    link_busy: [Instant; 2],
    migrate_rng: Rng,
    next_migration: Option<Instant>,
    isn: [IsnGenerator; 2],
    heap: BinaryHeap<InFlight>,
    order: u64,
    report: SimReport,
    carried: [Carried; 2],
    outbox: Vec<(Instant, Vec<u8>)>,
}

impl Simulation {
    pub fn new(cfg: SimConfig) -> Simulation {
        let seed = cfg.seed;
        let mut secret_rng = Rng::new(seed, 1);
        let mut secret = || {
            let mut s = [0u8; 16];
            s[..8].copy_from_slice(&secret_rng.next_u64().to_le_bytes());
            s[8..].copy_from_slice(&secret_rng.next_u64().to_le_bytes());
            s
        };
        let isn = [IsnGenerator::new(secret()), IsnGenerator::new(secret())];
        let now = Instant::ZERO;
        let initial = |side: usize, local, remote| InitialSequence {
            iss: isn[side].initial_sequence(local, remote, now),
            ts_offset: isn[side].timestamp_offset(local, remote),
        };
        let a = TcpConnection::connect(
            cfg.tcp[0].clone(),
            ADDR_A,
            ADDR_B,
            initial(0, ADDR_A, ADDR_B),
            now,
        );
        let b = match cfg.open {
            OpenMode::Listener => Endpoint::Listening(Box::new(TcpListener::new(
                cfg.tcp[1].clone(),
                ADDR_B,
                isn[1].clone(),
            ))),
            OpenMode::Accept => Endpoint::Awaiting,
            OpenMode::Simultaneous => Endpoint::Active(Box::new(TcpConnection::connect(
                cfg.tcp[1].clone(),
                ADDR_B,
                ADDR_A,
                initial(1, ADDR_B, ADDR_A),
                now,
            ))),
        };
        let stream_seed = [Rng::new(seed, 2).next_u64(), Rng::new(seed, 3).next_u64()];
        let app = |side: usize| App {
            cfg: cfg.apps[side].clone(),
            rng: Rng::new(seed, 10 + side as u64),
            write_seed: stream_seed[side],
            read_seed: stream_seed[1 - side],
            expect: cfg.apps[1 - side].bytes,
            written: 0,
            read: 0,
            shut: false,
            eof: false,
            closed: false,
            next_read_at: now,
            buf: vec![
                0;
                cfg.apps[side]
                    .write_chunk_max
                    .max(cfg.apps[side].read_chunk_max)
                    .max(1)
            ],
        };
        let apps = [app(0), app(1)];
        let mut migrate_rng = Rng::new(seed, 20);
        let next_migration = cfg
            .migrate_every
            .map(|t| now + jittered(&mut migrate_rng, t));
        let mut report = SimReport {
            seed,
            elapsed: Duration::ZERO,
            events: 0,
            bytes_written: [0; 2],
            bytes_read: [0; 2],
            eof: [false; 2],
            links: [LinkStats::default(); 2],
            segments_sent: [0; 2],
            segments_dropped: [0; 2],
            retransmits: [0; 2],
            timeouts: [0; 2],
            fast_retransmits: [0; 2],
            host_resets: [0; 2],
            migrations: [0; 2],
            final_states: [None; 2],
            visited: [0; 2],
            errors: [None; 2],
            trace: Vec::new(),
            eof_at: [None; 2],
            drop_reasons: [[0; TcpDropReason::COUNT]; 2],
            cwnd_samples: [(0, 0); 2],
        };
        report.visited[0] |= 1 << a.state().linux_number();
        if let Endpoint::Active(b) = &b {
            report.visited[1] |= 1 << b.state().linux_number();
        }
        Simulation {
            link_rng: [Rng::new(seed, 4), Rng::new(seed, 5)],
            link_busy: [now; 2],
            migrate_rng,
            next_migration,
            isn,
            heap: BinaryHeap::new(),
            order: 0,
            report,
            carried: [Carried::default(); 2],
            outbox: Vec::new(),
            ends: [Endpoint::Active(Box::new(a)), b],
            apps,
            now,
            events: 0,
            cfg,
        }
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Side `side`'s connection, while it exists.
    pub fn connection(&self, side: usize) -> Option<&TcpConnection> {
        match &self.ends[side] {
            Endpoint::Active(c) => Some(c),
            _ => None,
        }
    }

    /// Runs until both applications are done and both connections closed.
    pub fn run(mut self, limits: Limits) -> Result<SimReport, SimError> {
        let mut same_time = 0u32;
        loop {
            if self.finished() {
                return Ok(self.snapshot());
            }
            for side in 0..2 {
                if matches!(self.ends[side], Endpoint::Gone) && !self.apps[side].done() {
                    let error = self.report.errors[side];
                    return Err(self.fail(SimErrorKind::Closed { side, error }));
                }
            }
            if self.events >= limits.events {
                return Err(self.fail(SimErrorKind::EventLimit));
            }
            self.events += 1;
            let Some(next) = self.next_event() else {
                return Err(self.fail(SimErrorKind::Stalled));
            };
            if next > self.now {
                self.now = next;
                same_time = 0;
            } else {
                same_time += 1;
                if same_time > SAME_TIME_LIMIT {
                    return Err(self.fail(SimErrorKind::Livelock));
                }
            }
            if self.now.saturating_duration_since(Instant::ZERO) > limits.time {
                return Err(self.fail(SimErrorKind::TimeLimit));
            }
            if let Err(kind) = self.step() {
                return Err(self.fail(kind));
            }
        }
    }

    fn finished(&self) -> bool {
        self.apps.iter().all(App::done) && self.ends.iter().all(|e| matches!(e, Endpoint::Gone))
    }

    fn next_event(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.heap.peek().map(|p| p.at);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for side in 0..2 {
            if let Endpoint::Active(c) = &self.ends[side] {
                consider(c.poll_at());
                let app = &self.apps[side];
                if app.cfg.read_interval.is_some() && !app.eof && c.readiness().readable {
                    consider(Some(app.next_read_at));
                }
            }
        }
        if self.ends.iter().any(|e| matches!(e, Endpoint::Active(_))) {
            consider(self.next_migration);
        }
        next
    }

    fn step(&mut self) -> Result<(), SimErrorKind> {
        let now = self.now;
        if self.heap.peek().is_some_and(|p| p.at <= now)
            && let Some(packet) = self.heap.pop()
        {
            self.deliver(packet)?;
        }
        if self.next_migration.is_some_and(|t| t <= now) {
            let side = (self.migrate_rng.next_u64() & 1) as usize;
            self.migrate(side)?;
            if self.migrate_rng.chance(0.5) {
                self.migrate(1 - side)?;
            }
            let every = self.cfg.migrate_every.unwrap_or(Duration::from_millis(1));
            self.next_migration = Some(now + jittered(&mut self.migrate_rng, every));
        }
        for side in 0..2 {
            self.app_step(side)?;
            self.dispatch(side);
        }
        Ok(())
    }

    /// A segment arrives at side `packet.to`.
    fn deliver(&mut self, packet: InFlight) -> Result<(), SimErrorKind> {
        let to = packet.to;
        let dir = 1 - to;
        let (src, dst) = if to == 1 {
            (ADDR_A, ADDR_B)
        } else {
            (ADDR_B, ADDR_A)
        };
        let parsed = TcpPacket::new_checked(&packet.bytes[..])
            .and_then(|p| TcpRepr::parse(&p, *src.ip(), *dst.ip()));
        let stats = &mut self.report.links[dir];
        let repr = match (parsed, packet.corrupted) {
            (Ok(_), true) => {
                stats.corrupt_accepted += 1;
                return Ok(());
            }
            (Err(_), true) => {
                stats.corrupt_rejected += 1;
                return Ok(());
            }
            (Err(_), false) => {
                stats.malformed += 1;
                return Ok(());
            }
            (Ok(repr), false) => repr,
        };
        stats.delivered += 1;
        if repr.window_len == 0 && !repr.control.syn && !repr.control.rst {
            stats.zero_windows += 1;
        }
        self.trace(dir, &repr, repr.payload.len(), "");
        let now = self.now;
        match &mut self.ends[to] {
            Endpoint::Active(conn) => {
                let full = TcpDropReason::OutOfOrderFull;
                let ooo_before = conn.stats().dropped(full);
                if let Verdict::Dropped(reason) = conn.process(now, &repr) {
                    self.report.segments_dropped[to] += 1;
                    self.report.drop_reasons[to][reason as usize] += 1;
                }
                // Out-of-order overflow drops the data but accepts the segment (its ACK counts).
                self.report.drop_reasons[to][full as usize] +=
                    conn.stats().dropped(full) - ooo_before;
                if matches!(
                    conn.state(),
                    State::Established | State::CloseWait | State::FinWait1
                ) {
                    let sample = &mut self.report.cwnd_samples[to];
                    sample.0 += u64::from(conn.info(now).snd_cwnd);
                    sample.1 += 1;
                }
                self.report.visited[to] |= 1 << conn.state().linux_number();
            }
            Endpoint::Listening(listener) => match listener.process(now, src, &repr) {
                ListenOutcome::Connection(conn) => {
                    self.report.visited[to] |= 1 << conn.state().linux_number();
                    self.ends[to] = Endpoint::Active(conn);
                }
                ListenOutcome::Reset(rst) => {
                    self.report.host_resets[to] += 1;
                    self.send_repr(to, &rst);
                }
                ListenOutcome::Dropped(_) => self.report.segments_dropped[to] += 1,
            },
            Endpoint::Awaiting => {
                if repr.control.syn && repr.ack_number.is_none() {
                    let initial = InitialSequence {
                        iss: self.isn[to].initial_sequence(dst, src, now),
                        ts_offset: self.isn[to].timestamp_offset(dst, src),
                    };
                    match TcpConnection::accept(
                        self.cfg.tcp[to].clone(),
                        dst,
                        src,
                        &repr,
                        initial,
                        now,
                    ) {
                        Ok(conn) => {
                            self.report.visited[to] |= 1 << conn.state().linux_number();
                            self.ends[to] = Endpoint::Active(Box::new(conn));
                        }
                        Err(reason) => {
                            return Err(SimErrorKind::Open(format!("accept: {reason:?}")));
                        }
                    }
                } else if let Some(rst) = reset_for(&repr) {
                    self.report.host_resets[to] += 1;
                    self.send_repr(to, &rst);
                }
            }
            Endpoint::Gone => {
                if let Some(rst) = reset_for(&repr) {
                    self.report.host_resets[to] += 1;
                    self.send_repr(to, &rst);
                }
            }
        }
        Ok(())
    }

    /// The application on `side` writes, reads, half-closes and closes.
    fn app_step(&mut self, side: usize) -> Result<(), SimErrorKind> {
        let now = self.now;
        let Endpoint::Active(conn) = &mut self.ends[side] else {
            let app = &self.apps[side];
            if matches!(self.ends[side], Endpoint::Gone) && !app.done() {
                // The connection went away before the application finished.
                return Err(SimErrorKind::Closed {
                    side,
                    error: self.report.errors[side],
                });
            }
            return Ok(());
        };
        let app = &mut self.apps[side];
        // Writes: chunks of varying size until the send buffer is full.
        while app.written < app.cfg.bytes && !app.shut {
            let max = (app.cfg.write_chunk_max as u64)
                .min(app.cfg.bytes - app.written)
                .max(1);
            let len = app.rng.range(1, max) as usize;
            fill_pattern(app.write_seed, app.written, &mut app.buf[..len]);
            match conn.send(&app.buf[..len]) {
                Ok(n) => {
                    app.written += n as u64;
                    if n < len {
                        break;
                    }
                }
                Err(SendError::WouldBlock) => break,
                Err(error) => return Err(SimErrorKind::Send { side, error }),
            }
        }
        if app.written == app.cfg.bytes && !app.shut && conn.state() != State::SynSent {
            if matches!(conn.state(), State::SynReceived) {
                // Write nothing more but wait for ESTABLISHED before the FIN, like an app
                // that gets its socket from accept().
            } else {
                conn.shutdown_write(now);
                app.shut = true;
            }
        }
        // Reads.
        let throttled = app.cfg.read_interval.is_some();
        if !app.eof && (!throttled || now >= app.next_read_at) {
            let mut reads = 0;
            loop {
                let len = app.rng.range(1, app.cfg.read_chunk_max.max(1) as u64) as usize;
                match conn.recv(&mut app.buf[..len]) {
                    Ok(0) => {
                        if app.read != app.expect {
                            return Err(SimErrorKind::WrongLength {
                                side,
                                read: app.read,
                                expected: app.expect,
                            });
                        }
                        app.eof = true;
                        self.report.eof_at[side] =
                            Some(now.saturating_duration_since(Instant::ZERO));
                        break;
                    }
                    Ok(n) => {
                        for (i, &got) in app.buf[..n].iter().enumerate() {
                            let offset = app.read + i as u64;
                            let expected = pattern_byte(app.read_seed, offset);
                            if offset >= app.expect {
                                return Err(SimErrorKind::WrongLength {
                                    side,
                                    read: offset + 1,
                                    expected: app.expect,
                                });
                            }
                            if got != expected {
                                return Err(SimErrorKind::Mismatch {
                                    side,
                                    offset,
                                    expected,
                                    got,
                                });
                            }
                        }
                        app.read += n as u64;
                        reads += 1;
                        if throttled {
                            break;
                        }
                    }
                    Err(RecvError::WouldBlock) => break,
                    Err(error) => return Err(SimErrorKind::Recv { side, error }),
                }
            }
            if let (Some(t), true) = (app.cfg.read_interval, reads > 0) {
                app.next_read_at = now + jittered(&mut app.rng, t);
            }
        }
        if app.shut && app.eof && !app.closed {
            conn.close(now);
            app.closed = true;
        }
        self.report.visited[side] |= 1 << conn.state().linux_number();
        Ok(())
    }

    /// Runs `dispatch` on `side` and puts what it emits on the link; retires a closed engine.
    fn dispatch(&mut self, side: usize) {
        let now = self.now;
        let Endpoint::Active(conn) = &mut self.ends[side] else {
            return;
        };
        let (local, remote) = (*conn.local().ip(), *conn.remote().ip());
        let outbox = &mut self.outbox;
        conn.dispatch(now, &mut |out: Outgoing<'_>| {
            outbox.push((out.departure.max(now), serialise(&out, local, remote)));
            Ok(())
        });
        self.report.visited[side] |= 1 << conn.state().linux_number();
        let closed = conn.state() == State::Closed;
        if closed {
            self.retire(side);
        }
        let frames = core::mem::take(&mut self.outbox);
        self.send_frames(side, frames, local, remote);
    }

    fn send_frames(
        &mut self,
        side: usize,
        frames: Vec<(Instant, Vec<u8>)>,
        local: Ipv4Addr,
        remote: Ipv4Addr,
    ) {
        for (at, bytes) in frames {
            self.report.segments_sent[side] += 1;
            if let Ok(p) = TcpPacket::new_checked(&bytes[..])
                && let Ok(repr) = TcpRepr::parse(&p, local, remote)
            {
                self.trace(side, &repr, repr.payload.len(), "sent");
            }
            self.transmit(side, at, bytes);
        }
    }

    /// Forgets side `side`'s engine (recording its counters) once it is CLOSED.
    fn retire(&mut self, side: usize) {
        if let Endpoint::Active(conn) = &mut self.ends[side] {
            self.report.final_states[side] = Some(conn.state());
            if let Some(e) = conn.take_error() {
                self.report.errors[side] = Some(e);
            }
            self.fold_stats(side);
            self.ends[side] = Endpoint::Gone;
        }
    }

    fn fold_stats(&mut self, side: usize) {
        if let Endpoint::Active(conn) = &self.ends[side] {
            let s = conn.stats();
            let c = &mut self.carried[side];
            c.retransmits += s.retransmits;
            c.timeouts += s.timeouts;
            c.fast_retransmits += s.fast_retransmits;
        }
    }

    /// Export → import of side `side`, checking the restored engine against the original.
    fn migrate(&mut self, side: usize) -> Result<(), SimErrorKind> {
        let now = self.now;
        let Endpoint::Active(conn) = &self.ends[side] else {
            return Ok(());
        };
        let image = conn.export(now);
        let mut restored = TcpConnection::import(&image, now)
            .map_err(|error| SimErrorKind::Import { side, error })?;
        let reexported = restored.export(now) == image;
        // Both dispatch at the same instant (an import may ask for one dispatch): they must
        // emit the same bytes and then agree on everything observable.
        let mut original = (**conn).clone();
        let (local, remote) = (*conn.local().ip(), *conn.remote().ip());
        let mut emitted = [Vec::new(), Vec::new()];
        for (engine, out) in [&mut original, &mut restored].into_iter().zip(&mut emitted) {
            engine.dispatch(now, &mut |o: Outgoing<'_>| {
                out.push((o.departure.max(now), serialise(&o, local, remote)));
                Ok(())
            });
        }
        let checks: [(&'static str, bool); 8] = [
            ("re-exported image", reexported),
            ("emitted segments", emitted[0] == emitted[1]),
            ("state", restored.state() == original.state()),
            ("poll_at", restored.poll_at() == original.poll_at()),
            ("readiness", restored.readiness() == original.readiness()),
            (
                "recv_queue_len",
                restored.recv_queue_len() == original.recv_queue_len(),
            ),
            (
                "send_queue_len",
                restored.send_queue_len() == original.send_queue_len(),
            ),
            (
                "addresses",
                restored.local() == original.local() && restored.remote() == original.remote(),
            ),
        ];
        if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(SimErrorKind::Migration { side, what });
        }
        // Counters the image may or may not carry: keep the sum across the swap.
        let (old, new) = (conn.stats().clone(), restored.stats().clone());
        let c = &mut self.carried[side];
        c.retransmits = (c.retransmits + old.retransmits).saturating_sub(new.retransmits);
        c.timeouts = (c.timeouts + old.timeouts).saturating_sub(new.timeouts);
        c.fast_retransmits =
            (c.fast_retransmits + old.fast_retransmits).saturating_sub(new.fast_retransmits);
        self.report.visited[side] |= 1 << restored.state().linux_number();
        self.ends[side] = Endpoint::Active(Box::new(restored));
        self.report.migrations[side] += 1;
        let [_, frames] = emitted;
        self.send_frames(side, frames, local, remote);
        Ok(())
    }

    /// Serialises a host-generated segment (a closed port's RST) from `side`.
    fn send_repr(&mut self, side: usize, repr: &TcpRepr<'_>) {
        let (local, remote) = if side == 0 {
            (ADDR_A, ADDR_B)
        } else {
            (ADDR_B, ADDR_A)
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(
            &mut TcpPacket::new_unchecked(&mut bytes[..]),
            *local.ip(),
            *remote.ip(),
        );
        self.trace(side, repr, repr.payload.len(), "host");
        self.transmit(side, self.now, bytes);
    }

    /// Puts a segment from `from` on the link at `at`.
    fn transmit(&mut self, from: usize, at: Instant, mut bytes: Vec<u8>) {
        let link = &self.cfg.links[from];
        let stats = &mut self.report.links[from];
        let rng = &mut self.link_rng[from];
        stats.sent += 1;
        stats.bytes += bytes.len() as u64;
        if bytes.len() + IP_HEADER_LEN > link.mtu {
            stats.oversize += 1;
            return;
        }
        let mut leaves = at;
        if let Some(rate) = link.bandwidth.filter(|r| *r > 0) {
            let start = self.link_busy[from].max(at);
            let queued = (start - at).as_micros().saturating_mul(rate) / 1_000_000;
            if link
                .queue_limit
                .is_some_and(|limit| queued as usize > limit)
            {
                stats.queue_drops += 1;
                return;
            }
            let wire = (bytes.len() + IP_HEADER_LEN) as u64;
            leaves = start + Duration::from_micros(wire.saturating_mul(1_000_000).div_ceil(rate));
            self.link_busy[from] = leaves;
        }
        if rng.chance(link.loss) {
            stats.lost += 1;
            return;
        }
        let mut corrupted = false;
        if rng.chance(link.corrupt) && !bytes.is_empty() {
            let bit = rng.range(0, bytes.len() as u64 * 8 - 1);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            corrupted = true;
            stats.corrupted += 1;
        }
        let copies = if rng.chance(link.duplicate) {
            stats.duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let delay = if rng.chance(link.reorder) {
                stats.reordered += 1;
                Duration::ZERO
            } else {
                let j = link.jitter.as_micros();
                let d = (link.delay.as_micros() + rng.range(0, 2 * j)).saturating_sub(j);
                Duration::from_micros(d)
            };
            self.order += 1;
            let packet = InFlight {
                at: leaves + delay,
                order: self.order,
                to: 1 - from,
                corrupted,
                bytes: if copy + 1 == copies {
                    core::mem::take(&mut bytes)
                } else {
                    bytes.clone()
                },
            };
            self.heap.push(packet);
        }
    }

    fn trace(&mut self, dir: usize, repr: &TcpRepr<'_>, len: usize, tag: &str) {
        let c = repr.control;
        let flags: String = [
            (c.syn, 'S'),
            (c.fin, 'F'),
            (c.rst, 'R'),
            (c.psh, 'P'),
            (repr.ack_number.is_some(), '.'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, ch)| *ch)
        .collect();
        let line = format!(
            "{tag:4} [{flags}] seq {} ack {} win {} len {len} hdr {}",
            repr.seq_number,
            repr.ack_number.map_or(0, |a| a.0),
            repr.window_len,
            repr.header_len()
        );
        let trace = &mut self.report.trace;
        if trace.len() == TRACE_LEN {
            trace.remove(0);
        }
        trace.push((self.now.as_micros(), dir, line));
    }

    fn snapshot(&self) -> SimReport {
        let mut r = self.report.clone();
        r.elapsed = self.now.saturating_duration_since(Instant::ZERO);
        r.events = self.events;
        for side in 0..2 {
            let app = &self.apps[side];
            r.bytes_written[side] = app.written;
            r.bytes_read[side] = app.read;
            r.eof[side] = app.eof;
            let c = self.carried[side];
            let (mut rt, mut to, mut fr) = (c.retransmits, c.timeouts, c.fast_retransmits);
            if let Endpoint::Active(conn) = &self.ends[side] {
                let s = conn.stats();
                rt += s.retransmits;
                to += s.timeouts;
                fr += s.fast_retransmits;
                r.final_states[side] = Some(conn.state());
            }
            r.retransmits[side] = rt;
            r.timeouts[side] = to;
            r.fast_retransmits[side] = fr;
        }
        r
    }

    fn fail(&self, kind: SimErrorKind) -> SimError {
        SimError {
            kind,
            report: Box::new(self.snapshot()),
        }
    }
}

/// Uniform in [t/2, 3t/2].
fn jittered(rng: &mut Rng, t: Duration) -> Duration {
    let us = t.as_micros().max(1);
    Duration::from_micros(rng.range(us / 2, us + us / 2).max(1))
}

/// The bytes of an emitted segment: header, payload (both ring parts), checksum.
fn serialise(out: &Outgoing<'_>, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut payload = Vec::with_capacity(out.payload_len());
    payload.extend_from_slice(out.payload[0]);
    payload.extend_from_slice(out.payload[1]);
    let repr = TcpRepr {
        payload: &payload,
        ..out.repr
    };
    let mut bytes = vec![0u8; repr.buffer_len()];
    repr.emit(&mut TcpPacket::new_unchecked(&mut bytes[..]), src, dst);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference_and_determinism() {
        // xoshiro256** from state {1, 2, 3, 4}: reference outputs of the C implementation.
        let mut r = Rng { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 11520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1509978240);
        assert_eq!(r.next_u64(), 1215971899390074240);
        let (mut a, mut b) = (Rng::new(7, 1), Rng::new(7, 1));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mut c = Rng::new(7, 2);
        assert_ne!(Rng::new(7, 1).next_u64(), c.next_u64());
        let mut d = Rng::new(9, 0);
        for _ in 0..1000 {
            let v = d.range(3, 9);
            assert!((3..=9).contains(&v));
            let u = d.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn pattern_fill_matches_bytes() {
        let mut buf = [0u8; 37];
        fill_pattern(42, 5, &mut buf);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, pattern_byte(42, 5 + i as u64));
        }
        assert_ne!(pattern_byte(42, 0), pattern_byte(43, 0));
    }

    #[test]
    fn clean_transfer_is_deterministic() {
        let cfg = SimConfig::new(3).with_bytes(200_000);
        let a = Simulation::new(cfg.clone())
            .run(Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let b = Simulation::new(cfg)
            .run(Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert_eq!(a.bytes_read, [200_000, 200_000]);
        assert_eq!(a.links[0].lost + a.links[1].lost, 0);
        assert_eq!(a.final_states, [Some(State::Closed), Some(State::Closed)]);
    }

    #[test]
    fn corruption_is_rejected_by_the_checksum() {
        let link = LinkConfig {
            corrupt: 0.2,
            ..LinkConfig::default()
        };
        let r = Simulation::new(SimConfig::new(5).with_link(link).with_bytes(100_000))
            .run(Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let corrupted: u64 = r.links.iter().map(|l| l.corrupted).sum();
        let rejected: u64 = r.links.iter().map(|l| l.corrupt_rejected).sum();
        assert!(corrupted > 10, "{r}");
        assert!(
            rejected > 0 && r.links.iter().all(|l| l.corrupt_accepted == 0),
            "{r}"
        );
    }

    #[test]
    fn time_limit_is_an_error_not_a_panic() {
        let cfg = SimConfig::new(1).with_bytes(1 << 20);
        let err = Simulation::new(cfg)
            .run(Limits {
                time: Duration::from_millis(30),
                events: 1_000_000,
            })
            .unwrap_err();
        assert_eq!(err.kind, SimErrorKind::TimeLimit);
        let err = Simulation::new(SimConfig::new(1))
            .run(Limits {
                time: Duration::from_secs(10),
                events: 5,
            })
            .unwrap_err();
        assert_eq!(err.kind, SimErrorKind::EventLimit);
    }

    #[test]
    fn total_loss_stalls_or_times_out_with_an_error() {
        let link = LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        };
        let err = Simulation::new(SimConfig::new(2).with_link(link))
            .run(Limits::default())
            .unwrap_err();
        // The SYN is retried syn_retries times, then the connection fails with ETIMEDOUT.
        assert_eq!(
            err.kind,
            SimErrorKind::Closed {
                side: 0,
                error: Some(ConnError::TimedOut)
            },
            "{err}"
        );
    }

    #[test]
    fn bandwidth_limits_the_rate() {
        let link = LinkConfig {
            bandwidth: Some(1_000_000),
            ..LinkConfig::default()
        };
        let r = Simulation::new(SimConfig::new(4).with_link(link).with_bytes(500_000))
            .run(Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        // 500 kB at 1 MB/s takes at least half a second of virtual time (before TIME_WAIT).
        assert!(r.elapsed >= Duration::from_millis(500), "{r}");
    }
}
