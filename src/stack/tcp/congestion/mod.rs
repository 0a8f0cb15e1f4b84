//! Congestion control: Reno (RFC 5681, with RFC 3465 appropriate byte counting) and CUBIC
//! (RFC 9438, the default as on Linux), behind one enum-dispatched type so the whole state
//! exports with the connection (no trait objects in an image).
//!
//! Division of labour: the engine owns loss recovery mechanics (which segment to resend,
//! NewReno inflation through [`CongestionControl::set_cwnd`], the RFC 6675 pipe) and decides
//! when a congestion event happened; this module decides the window on the events that change
//! it: ACKs outside recovery ([`CongestionControl::on_ack`]: slow start with ABC, L = 2, then
//! the algorithm's congestion avoidance), a congestion event (multiplicative decrease), leaving
//! recovery, an RTO (loss window of one segment) and restart after idle (RFC 5681 §4.1).
//!
//! Windows are bytes; the initial window is 10 segments (RFC 6928 as Linux applies it),
//! `ssthresh` starts "infinite" (`usize::MAX`). Like Linux, which counts the window in
//! segments, a change of MSS (PMTU discovery) keeps the window's size in segments.
//! [`CongestionControl::pacing_rate`] follows Linux's `tcp_update_pacing_rate`.
//!
//! Cost: `on_ack` allocates nothing and uses only integer or f64 add/multiply; CUBIC takes
//! one cube root per congestion-avoidance epoch.
#![forbid(unsafe_code)]

pub mod cubic;
pub mod reno;

use super::image::{ImageError, ImageReader, ImageWriter};
use crate::stack::{Duration, Instant};
use cubic::Cubic;
use reno::Reno;

const SECTION: u8 = 0x43;
/// Initial window in segments (RFC 6928, Linux `TCP_INIT_CWND`).
pub const INITIAL_WINDOW_SEGMENTS: usize = 10;
/// RFC 3465 limit L: slow start grows by at most this many segments per ACK.
pub const ABC_LIMIT_SEGMENTS: usize = 2;
/// Linux `tcp_pacing_ss_ratio`: pacing rate in percent of cwnd/SRTT while cwnd < ssthresh/2.
pub const PACING_SS_RATIO: u64 = 200;
/// Linux `tcp_pacing_ca_ratio`: pacing rate in percent of cwnd/SRTT otherwise.
pub const PACING_CA_RATIO: u64 = 120;
/// Largest MSS a window can be counted in (the largest IPv4 payload).
const MAX_MSS: usize = 65_535;

/// The algorithm a connection uses (`TCP_CONGESTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionAlgorithm {
    Reno,
    #[default]
    Cubic,
}

impl CongestionAlgorithm {
    /// The name Linux uses for it (`TCP_CONGESTION`, `ss -i`).
    pub fn name(self) -> &'static str {
        match self {
            CongestionAlgorithm::Reno => "reno",
            CongestionAlgorithm::Cubic => "cubic",
        }
    }

    /// The algorithm Linux knows by `name` (the exact, case-sensitive module name).
    pub fn from_name(name: &str) -> Option<CongestionAlgorithm> {
        match name {
            "reno" => Some(CongestionAlgorithm::Reno),
            "cubic" => Some(CongestionAlgorithm::Cubic),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            CongestionAlgorithm::Reno => 0,
            CongestionAlgorithm::Cubic => 1,
        }
    }

    fn from_code(code: u8) -> Option<CongestionAlgorithm> {
        match code {
            0 => Some(CongestionAlgorithm::Reno),
            1 => Some(CongestionAlgorithm::Cubic),
            _ => None,
        }
    }
}

/// Window state of one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct CongestionControl {
    algorithm: CongestionAlgorithm,
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    /// An RTO reduced ssthresh and no ACK has advanced since: a repeated timeout of the same
    /// data holds ssthresh (RFC 5681 §3.1, note to (4)).
    timeout_held: bool,
    reno: Reno,
    cubic: Cubic,
}

impl CongestionControl {
    /// A fresh connection: cwnd = 10·`mss` (RFC 6928), ssthresh infinite. `now` is unused
    /// today and kept so algorithms with a clock at birth (HyStart) fit the signature.
    pub fn new(algorithm: CongestionAlgorithm, mss: usize, _now: Instant) -> CongestionControl {
        let mss = mss.clamp(1, MAX_MSS);
        CongestionControl {
            algorithm,
            mss,
            cwnd: INITIAL_WINDOW_SEGMENTS * mss,
            ssthresh: usize::MAX,
            timeout_held: false,
            reno: Reno::default(),
            cubic: Cubic::default(),
        }
    }

    pub fn algorithm(&self) -> CongestionAlgorithm {
        self.algorithm
    }

    /// Switches algorithm keeping cwnd and ssthresh (as `setsockopt(TCP_CONGESTION)` does);
    /// the new algorithm starts with fresh private state.
    pub fn set_algorithm(&mut self, algorithm: CongestionAlgorithm) {
        if self.algorithm != algorithm {
            self.algorithm = algorithm;
            self.reno = Reno::default();
            self.cubic = Cubic::default();
        }
    }

    /// Congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    /// Slow-start threshold in bytes (`usize::MAX` until the first congestion event).
    pub fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    pub fn mss(&self) -> usize {
        self.mss
    }

    /// The CUBIC state (meaningful while the algorithm is CUBIC), for diagnostics and tests.
    pub fn cubic(&self) -> &Cubic {
        &self.cubic
    }

    /// Sets the window (NewReno inflation/deflation during recovery); at least one segment.
    pub fn set_cwnd(&mut self, bytes: usize) {
        self.cwnd = bytes.max(self.mss);
    }

    /// Sets the sender MSS. The window keeps its size in segments (Linux counts cwnd and
    /// ssthresh in packets), so a PMTU decrease shrinks it in bytes.
    pub fn set_mss(&mut self, mss: usize) {
        let mss = mss.clamp(1, MAX_MSS);
        if mss == self.mss {
            return;
        }
        let rescale = |bytes: usize| {
            let scaled = bytes as u128 * mss as u128 / self.mss as u128;
            usize::try_from(scaled).unwrap_or(usize::MAX)
        };
        self.cwnd = rescale(self.cwnd).max(mss);
        if self.ssthresh != usize::MAX {
            self.ssthresh = rescale(self.ssthresh).max(2 * mss);
        }
        self.reno = Reno::default();
        self.cubic.rescale(self.mss, mss);
        self.mss = mss;
    }

    /// cwnd < ssthresh (RFC 5681 §3.1).
    pub fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }

    /// `acked` bytes of new data were cumulatively acknowledged outside loss recovery.
    /// `cwnd_limited` says whether the window, not the application or the peer's window,
    /// limited sending: if not, the window does not grow (RFC 7661 spirit, Linux
    /// `tcp_is_cwnd_limited`) and CUBIC does not count the time (RFC 9438 §5.8).
    pub fn on_ack(
        &mut self,
        now: Instant,
        acked: usize,
        srtt: Option<Duration>,
        cwnd_limited: bool,
    ) {
        if acked == 0 {
            return;
        }
        self.timeout_held = false;
        if self.algorithm == CongestionAlgorithm::Cubic {
            self.cubic.note_ack(now, cwnd_limited);
        }
        if !cwnd_limited {
            return;
        }
        let mut acked = acked;
        if self.in_slow_start() {
            // RFC 5681 (2) with RFC 3465: cwnd += min(N, L·SMSS).
            let grown = self
                .cwnd
                .saturating_add(acked.min(ABC_LIMIT_SEGMENTS * self.mss));
            if grown <= self.ssthresh {
                self.cwnd = grown;
                return;
            }
            // Crossing ssthresh: the part of the ACK beyond it counts in congestion
            // avoidance (Linux `tcp_slow_start` returns the leftover).
            acked = grown - self.ssthresh;
            self.cwnd = self.ssthresh;
        }
        self.cwnd = match self.algorithm {
            CongestionAlgorithm::Reno => self.reno.avoid(self.cwnd, acked, self.mss),
            CongestionAlgorithm::Cubic => self.cubic.avoid(now, self.cwnd, acked, self.mss, srtt),
        };
    }

    /// The multiplicative decrease: ssthresh = max(FlightSize·β, 2·SMSS) with Reno's β = 1/2
    /// (RFC 5681 (4)) or CUBIC's β = 0.7 (RFC 9438 §4.6).
    fn reduced_ssthresh(&self, flight: usize) -> usize {
        let base = match self.algorithm {
            CongestionAlgorithm::Reno => flight / 2,
            CongestionAlgorithm::Cubic => cubic::reduce(flight),
        };
        base.max(2 * self.mss)
    }

    /// Loss detected by duplicate ACKs or SACK (entering fast recovery): ssthresh as above,
    /// cwnd = ssthresh (the engine adds NewReno's 3·SMSS inflation itself if it uses it).
    pub fn on_congestion_event(&mut self, _now: Instant, flight: usize) {
        if self.algorithm == CongestionAlgorithm::Cubic {
            self.cubic.on_congestion(self.cwnd);
        }
        self.reno = Reno::default();
        self.ssthresh = self.reduced_ssthresh(flight);
        self.cwnd = self.ssthresh;
        self.timeout_held = false;
    }

    /// Recovery ended (RFC 6582 full ACK / RFC 6675 recovery point acknowledged): deflate to
    /// ssthresh (RFC 6582 §3.2 (3), option 1).
    pub fn on_recovery_exit(&mut self, _now: Instant) {
        self.cwnd = self.ssthresh.max(self.mss);
        self.timeout_held = false;
    }

    /// Undo of a reduction shown unnecessary (Eifel / D-SACK, RFC 3708; Linux
    /// `tcp_undo_cwnd_reduction` with `undo_cwnd` = max(cwnd, prior cwnd)): cwnd and ssthresh
    /// go back to at least what they were before it; CUBIC starts a fresh epoch from there.
    pub fn undo(&mut self, _now: Instant, prior_cwnd: usize, prior_ssthresh: usize) {
        self.cwnd = self.cwnd.max(prior_cwnd).max(self.mss);
        self.ssthresh = self.ssthresh.max(prior_ssthresh);
        self.timeout_held = false;
        self.reno = Reno::default();
        self.cubic.reset_epoch();
    }

    /// Retransmission timeout: ssthresh as for a congestion event (RFC 5681 (4), RFC 9438
    /// §4.8), cwnd = the loss window of one segment. A repeated timeout before any ACK has
    /// advanced (the same data timed out again) keeps ssthresh (RFC 5681 §3.1).
    pub fn on_rto(&mut self, _now: Instant, flight: usize) {
        if !self.timeout_held {
            if self.algorithm == CongestionAlgorithm::Cubic {
                self.cubic.on_timeout(self.cwnd);
            }
            self.ssthresh = self.reduced_ssthresh(flight);
            self.timeout_held = true;
        }
        self.reno = Reno::default();
        self.cwnd = self.mss;
    }

    /// The connection sends after an idle period longer than `rto` (the engine decides that):
    /// RFC 5681 §4.1 restarts from RW = min(IW, cwnd); ssthresh keeps at least 3/4 of the old
    /// window so slow start climbs back quickly (Linux `tcp_cwnd_restart`); CUBIC's epoch
    /// ends (RFC 9438 §5.8: idle time is not growth time).
    pub fn on_restart_after_idle(&mut self, _now: Instant, _rto: Duration) {
        let restart = (INITIAL_WINDOW_SEGMENTS * self.mss).min(self.cwnd);
        if restart < self.cwnd {
            let three_quarters = (self.cwnd >> 1) + (self.cwnd >> 2);
            self.ssthresh = self.ssthresh.max(three_quarters);
        }
        self.cwnd = restart;
        self.reno = Reno::default();
        self.cubic.reset_epoch();
    }

    /// Linux's pacing rate in bytes per second: `ratio · cwnd / SRTT`, with ratio 200 % while
    /// cwnd < ssthresh/2 (early slow start) and 120 % otherwise; `None` without an SRTT
    /// (Linux paces at the maximum then). The window is at least one `mss`.
    pub fn pacing_rate(&self, srtt: Option<Duration>, mss: usize) -> Option<u64> {
        let srtt_us = u128::from(srtt?.as_micros().max(1));
        let ratio = if self.cwnd < self.ssthresh / 2 {
            PACING_SS_RATIO
        } else {
            PACING_CA_RATIO
        };
        let window = self.cwnd.max(mss) as u128;
        let rate = window * 1_000_000 * u128::from(ratio) / 100 / srtt_us;
        Some(u64::try_from(rate).unwrap_or(u64::MAX))
    }

    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        w.u8(self.algorithm.code());
        w.usize(self.mss);
        w.usize(self.cwnd);
        w.u64(if self.ssthresh == usize::MAX {
            u64::MAX
        } else {
            self.ssthresh as u64
        });
        w.bool(self.timeout_held);
        self.reno.export(w);
        self.cubic.export(w);
    }

    /// Reads what [`CongestionControl::export`] wrote; windows must be at least one segment
    /// (ssthresh two) and the algorithm known.
    pub fn import(r: &mut ImageReader<'_>) -> Result<CongestionControl, ImageError> {
        r.read_section(SECTION)?;
        let algorithm = CongestionAlgorithm::from_code(r.read_u8()?)
            .ok_or(ImageError::Invalid("congestion algorithm"))?;
        let mss = r.read_usize()?;
        let cwnd = r.read_usize()?;
        let ssthresh = match r.read_u64()? {
            u64::MAX => usize::MAX,
            v if v <= 1 << 40 => v as usize,
            _ => return Err(ImageError::Invalid("slow-start threshold")),
        };
        let timeout_held = r.read_bool()?;
        let reno = Reno::import(r)?;
        let cubic = Cubic::import(r)?;
        if mss == 0 || mss > MAX_MSS || cwnd < mss || ssthresh < 2 * mss {
            return Err(ImageError::Invalid("congestion window"));
        }
        Ok(CongestionControl {
            algorithm,
            mss,
            cwnd,
            ssthresh,
            timeout_held,
            reno,
            cubic,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1000;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Acknowledges one window in `cwnd / MSS` one-segment ACKs spread over `rtt`, starting
    /// at `now`; returns the time after it.
    fn one_rtt(cc: &mut CongestionControl, now: Instant, rtt: Duration) -> Instant {
        let acks = (cc.cwnd() / MSS).max(1) as u64;
        for i in 0..acks {
            let at = now + Duration(rtt.0 * i / acks);
            cc.on_ack(at, MSS, Some(rtt), true);
        }
        now + rtt
    }

    #[test]
    fn names_and_defaults() {
        let cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, t(0));
        assert_eq!(cc.cwnd(), 10 * MSS);
        assert_eq!(cc.ssthresh(), usize::MAX);
        assert!(cc.in_slow_start());
        assert_eq!(CongestionAlgorithm::default(), CongestionAlgorithm::Cubic);
        for a in [CongestionAlgorithm::Reno, CongestionAlgorithm::Cubic] {
            assert_eq!(CongestionAlgorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(CongestionAlgorithm::from_name("bbr"), None);
        assert_eq!(CongestionAlgorithm::from_name("Reno"), None);
    }

    #[test]
    fn slow_start_counts_bytes_with_limit_two_segments() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        cc.on_ack(t(1), MSS, None, true);
        assert_eq!(cc.cwnd(), 11 * MSS);
        cc.on_ack(t(2), 5 * MSS, None, true);
        assert_eq!(cc.cwnd(), 13 * MSS, "ABC caps growth at 2 segments per ACK");
        cc.on_ack(t(3), 300, None, true);
        assert_eq!(cc.cwnd(), 13 * MSS + 300, "bytes, not ACKs, are counted");
        cc.on_ack(t(4), MSS, None, false);
        assert_eq!(cc.cwnd(), 13 * MSS + 300, "no growth when not cwnd-limited");
        cc.on_ack(t(5), 0, None, true);
        assert_eq!(
            cc.cwnd(),
            13 * MSS + 300,
            "nothing acknowledged, nothing grows"
        );
    }

    #[test]
    fn slow_start_doubles_per_rtt() {
        for algorithm in [CongestionAlgorithm::Reno, CongestionAlgorithm::Cubic] {
            let mut cc = CongestionControl::new(algorithm, MSS, t(0));
            let mut now = t(0);
            for expect in [20, 40, 80, 160] {
                now = one_rtt(&mut cc, now, ms(50));
                assert_eq!(cc.cwnd(), expect * MSS, "{algorithm:?}");
            }
        }
    }

    #[test]
    fn slow_start_leftover_continues_in_avoidance() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        cc.on_congestion_event(t(0), 24 * MSS); // ssthresh 12 segments, cwnd 12
        cc.set_cwnd(11 * MSS + 500);
        // 2 segments acked: 500 bytes fill ssthresh, 1500 count in avoidance (< one window).
        cc.on_ack(t(1), 2 * MSS, None, true);
        assert_eq!(cc.cwnd(), 12 * MSS);
        assert!(!cc.in_slow_start());
        // 10 500 more bytes complete the window of 12 000: one segment of growth.
        cc.on_ack(t(2), 10 * MSS + 500, None, true);
        assert_eq!(cc.cwnd(), 13 * MSS);
    }

    #[test]
    fn reno_halves_and_grows_one_segment_per_rtt() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        cc.set_cwnd(40 * MSS);
        cc.on_congestion_event(t(1), 40 * MSS);
        assert_eq!(cc.ssthresh(), 20 * MSS);
        assert_eq!(cc.cwnd(), 20 * MSS);
        cc.on_recovery_exit(t(2));
        assert_eq!(cc.cwnd(), 20 * MSS);
        let mut now = t(2);
        for expect in 21..=30 {
            now = one_rtt(&mut cc, now, ms(100));
            assert_eq!(cc.cwnd(), expect * MSS);
        }
        // Halving uses FlightSize, not cwnd (RFC 5681 (4)).
        cc.on_congestion_event(now, 16 * MSS);
        assert_eq!((cc.ssthresh(), cc.cwnd()), (8 * MSS, 8 * MSS));
        cc.on_congestion_event(now, MSS);
        assert_eq!(cc.ssthresh(), 2 * MSS, "never below two segments");
    }

    #[test]
    fn avoidance_needs_cwnd_limited() {
        for algorithm in [CongestionAlgorithm::Reno, CongestionAlgorithm::Cubic] {
            let mut cc = CongestionControl::new(algorithm, MSS, t(0));
            cc.set_cwnd(50 * MSS);
            cc.on_congestion_event(t(0), 50 * MSS);
            let before = cc.cwnd();
            for i in 0..5_000 {
                cc.on_ack(t(10 + i), MSS, Some(ms(10)), false);
            }
            assert_eq!(cc.cwnd(), before, "{algorithm:?}");
        }
    }

    #[test]
    fn cubic_reduces_by_beta_0_7_of_flight() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, t(0));
        cc.set_cwnd(100 * MSS);
        cc.on_congestion_event(t(1), 100 * MSS);
        assert_eq!(cc.ssthresh(), 70 * MSS);
        assert_eq!(cc.cwnd(), 70 * MSS);
        assert_eq!(cc.cubic().w_max(), 100.0 * MSS as f64);
    }

    #[test]
    fn rto_collapses_to_one_segment_and_holds_ssthresh_on_repeats() {
        for (algorithm, ssthresh) in [
            (CongestionAlgorithm::Reno, 15 * MSS),
            (CongestionAlgorithm::Cubic, 21 * MSS),
        ] {
            let mut cc = CongestionControl::new(algorithm, MSS, t(0));
            cc.set_cwnd(30 * MSS);
            cc.on_rto(t(1), 30 * MSS);
            assert_eq!(cc.cwnd(), MSS);
            assert_eq!(cc.ssthresh(), ssthresh);
            // The same data times out again: ssthresh is not lowered further.
            cc.on_rto(t(2), 30 * MSS);
            assert_eq!((cc.cwnd(), cc.ssthresh()), (MSS, ssthresh));
            // After progress, a new timeout reduces again.
            cc.on_ack(t(3), MSS, None, true);
            assert_eq!(cc.cwnd(), 2 * MSS);
            cc.on_rto(t(4), 2 * MSS);
            assert_eq!(cc.ssthresh(), 2 * MSS);
        }
        let mut floor = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        floor.on_rto(t(1), MSS);
        assert_eq!(floor.ssthresh(), 2 * MSS, "ssthresh never below 2 segments");
    }

    #[test]
    fn restart_after_idle_limits_to_initial_window() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, t(0));
        cc.set_cwnd(100 * MSS);
        cc.on_congestion_event(t(0), 100 * MSS);
        cc.on_recovery_exit(t(1));
        let mut now = t(1);
        for _ in 0..5 {
            now = one_rtt(&mut cc, now, ms(100));
        }
        assert!(cc.cubic().epoch_start().is_some());
        assert!(cc.ssthresh() == 70 * MSS && cc.cwnd() > 70 * MSS);
        cc.set_cwnd(100 * MSS);
        cc.on_restart_after_idle(now + Duration::from_secs(10), ms(300));
        assert_eq!(cc.cwnd(), 10 * MSS);
        assert_eq!(
            cc.ssthresh(),
            75 * MSS,
            "3/4 of the window before the restart"
        );
        assert!(cc.in_slow_start());
        assert_eq!(cc.cubic().epoch_start(), None, "the CUBIC epoch restarts");
        // A small window is not raised by a restart.
        let mut small = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        small.on_rto(t(1), 10 * MSS);
        small.on_restart_after_idle(t(5000), ms(1000));
        assert_eq!((small.cwnd(), small.ssthresh()), (MSS, 5 * MSS));
    }

    #[test]
    fn pacing_rate_ratios() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, t(0));
        // cwnd 10 000 B, srtt 10 ms: 1 MB/s × 200 % in slow start (ssthresh infinite).
        assert_eq!(cc.pacing_rate(Some(ms(10)), MSS), Some(2_000_000));
        assert_eq!(cc.pacing_rate(None, MSS), None);
        cc.on_congestion_event(t(1), 10 * MSS);
        // cwnd 7000 B = ssthresh: 700 kB/s × 120 %.
        assert_eq!(cc.pacing_rate(Some(ms(10)), MSS), Some(840_000));
        // Slow start above ssthresh/2 already paces at the avoidance ratio (Linux).
        cc.set_cwnd(40 * MSS);
        cc.on_congestion_event(t(2), 40 * MSS); // ssthresh 28 segments
        cc.set_cwnd(14 * MSS);
        assert!(cc.in_slow_start());
        assert_eq!(cc.pacing_rate(Some(ms(10)), MSS), Some(1_680_000));
        cc.set_cwnd(13 * MSS);
        assert_eq!(cc.pacing_rate(Some(ms(10)), MSS), Some(2_600_000));
        // Sub-microsecond SRTT and huge windows do not divide by zero or overflow.
        cc.set_cwnd(usize::MAX);
        assert_eq!(cc.pacing_rate(Some(Duration::ZERO), MSS), Some(u64::MAX));
    }

    #[test]
    fn mss_change_keeps_the_window_in_segments() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, 1460, t(0));
        cc.set_cwnd(40 * 1460);
        cc.on_congestion_event(t(1), 40 * 1460);
        cc.set_mss(1200);
        assert_eq!(cc.cwnd(), 28 * 1200);
        assert_eq!(cc.ssthresh(), 28 * 1200);
        assert_eq!(cc.cubic().w_max(), 40.0 * 1200.0);
        let mut fresh = CongestionControl::new(CongestionAlgorithm::Reno, 1460, t(0));
        fresh.set_mss(536);
        assert_eq!((fresh.cwnd(), fresh.ssthresh()), (10 * 536, usize::MAX));
    }

    #[test]
    fn switching_algorithm_keeps_the_window() {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, t(0));
        cc.set_cwnd(30 * MSS);
        cc.on_congestion_event(t(1), 30 * MSS);
        cc.set_algorithm(CongestionAlgorithm::Reno);
        assert_eq!(cc.algorithm(), CongestionAlgorithm::Reno);
        assert_eq!((cc.cwnd(), cc.ssthresh()), (21 * MSS, 21 * MSS));
        cc.on_congestion_event(t(2), 20 * MSS);
        assert_eq!(cc.ssthresh(), 10 * MSS, "Reno's β now");
    }

    fn round_trip(cc: &CongestionControl) {
        let mut w = ImageWriter::new(t(30_000));
        cc.export(&mut w);
        let image = w.finish();
        // Imported in a process whose clock reads 50 s: instants keep their distance to now.
        let mut r = ImageReader::new(&image, t(50_000)).unwrap();
        let back = CongestionControl::import(&mut r).unwrap();
        r.finish().unwrap();
        let shift = |i: Option<Instant>| i.map(|i| i + Duration::from_secs(20));
        assert_eq!(back.cwnd(), cc.cwnd());
        assert_eq!(back.cubic().epoch_start(), shift(cc.cubic().epoch_start()));
        let mut again = ImageWriter::new(t(50_000));
        back.export(&mut again);
        assert_eq!(again.finish(), image, "nothing but the time origin moved");
        for cut in 6..image.len() {
            let mut r = ImageReader::new(&image[..cut], t(0)).unwrap();
            assert_eq!(
                CongestionControl::import(&mut r).unwrap_err(),
                ImageError::Truncated
            );
        }
    }

    #[test]
    fn image_round_trip_mid_epoch() {
        let fresh = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        round_trip(&fresh);
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, t(0));
        cc.set_cwnd(50 * MSS);
        cc.on_congestion_event(t(10), 50 * MSS);
        cc.on_recovery_exit(t(20));
        let mut now = t(20_000);
        for _ in 0..3 {
            now = one_rtt(&mut cc, now, ms(40));
        }
        cc.on_ack(now, MSS, Some(ms(40)), false);
        round_trip(&cc);
        // The imported copy continues exactly like the original.
        let mut w = ImageWriter::new(now);
        cc.export(&mut w);
        let image = w.finish();
        let later = now + Duration::from_secs(100);
        let mut copy =
            CongestionControl::import(&mut ImageReader::new(&image, later).unwrap()).unwrap();
        let (mut a, mut b) = (now, later);
        for _ in 0..20 {
            a = one_rtt(&mut cc, a, ms(40));
            b = one_rtt(&mut copy, b, ms(40));
            assert_eq!(cc.cwnd(), copy.cwnd());
        }
        let mut reno = CongestionControl::new(CongestionAlgorithm::Reno, MSS, t(0));
        reno.on_rto(t(1), 20 * MSS);
        reno.on_ack(t(2), 500, None, true);
        round_trip(&reno);
    }

    #[test]
    fn image_rejects_bad_values() {
        let image = |algorithm: u8, mss: u64, cwnd: u64, ssthresh: u64| {
            let mut w = ImageWriter::new(t(0));
            w.section(SECTION);
            w.u8(algorithm);
            w.u64(mss);
            w.u64(cwnd);
            w.u64(ssthresh);
            w.bool(false);
            Reno::default().export(&mut w);
            Cubic::default().export(&mut w);
            w.finish()
        };
        let read = |bytes: Vec<u8>| {
            CongestionControl::import(&mut ImageReader::new(&bytes, t(0)).unwrap())
        };
        assert!(read(image(1, 1000, 1000, u64::MAX)).is_ok());
        assert!(read(image(0, 1000, 1000, 2000)).is_ok());
        for bad in [
            image(2, 1000, 1000, u64::MAX),
            image(1, 0, 1000, u64::MAX),
            image(1, 70_000, 70_000, u64::MAX),
            image(1, 1000, 999, u64::MAX),
            image(1, 1000, 1000, 1999),
            image(1, 1000, 1000, 1 << 50),
        ] {
            assert!(matches!(read(bad), Err(ImageError::Invalid(_))));
        }
    }
}
