//! Retransmission timeout estimation (RFC 6298) with Linux's bounds: the RTO is at least
//! 200 ms (`TCP_RTO_MIN`), at most 120 s (`TCP_RTO_MAX`) and 1 s before the first sample
//! (RFC 6298 (2.1), Linux `TCP_TIMEOUT_INIT`).
//!
//! Contract: [`RttEstimator::on_sample`] applies RFC 6298 (2.2) to the first sample and (2.3)
//! (α = 1/8, β = 1/4) to later ones; [`RttEstimator::rto`] is
//! `clamp(SRTT + max(G, 4·RTTVAR), min, max)` doubled once per unanswered timeout (5.5) and
//! never above the maximum. G, the clock granularity, is 1 ms (Linux's floor for its jiffy
//! clock; our clock ticks in µs). Karn's rule (RFC 6298 §3: no samples from retransmitted
//! segments unless timestamps disambiguate them) is the engine's business: the estimator
//! trusts every sample it is given. All arithmetic is integer µs and saturating; samples are
//! capped at one hour so no input (e.g. a forged timestamp echo) can overflow anything.
#![forbid(unsafe_code)]

use super::image::{ImageError, ImageReader, ImageWriter};
use crate::stack::Duration;

/// Clock granularity G of RFC 6298 §2.
pub const GRANULARITY: Duration = Duration::from_millis(1);
/// Largest sample taken at face value; longer ones are treated as this long.
pub const MAX_SAMPLE: Duration = Duration::from_secs(3600);
/// The backoff count saturates here (Linux keeps it in a `u8`, and so does `tcpi_backoff`).
pub const MAX_BACKOFF: u32 = u8::MAX as u32;
/// Largest RTO bound an image may carry (one day); anything above is corrupt.
const MAX_BOUND: Duration = Duration::from_secs(86_400);
const SECTION: u8 = 0x52;

/// Smoothed RTT, RTT variance and the current RTO with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    latest: Option<Duration>,
    initial_rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
    backoff: u32,
}

impl RttEstimator {
    /// Narrows the RTO bounds to `[min_rto, max_rto]` (a connection taken from an untrusted
    /// image must not retransmit in a tight loop nor wait for ages).
    pub fn limit_bounds(&mut self, min_rto: Duration, max_rto: Duration) {
        self.min_rto = self.min_rto.clamp(min_rto, max_rto);
        self.max_rto = self.max_rto.clamp(self.min_rto, max_rto);
        self.initial_rto = self.initial_rto.clamp(self.min_rto, self.max_rto);
    }

    /// An estimator without samples: `rto()` is `initial_rto` clamped to `[min_rto, max_rto]`.
    /// A `max_rto` below `min_rto` is raised to it.
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> RttEstimator {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
            latest: None,
            initial_rto,
            min_rto,
            max_rto: max_rto.max(min_rto),
            backoff: 0,
        }
    }

    /// A valid RTT measurement: RFC 6298 (2.2) for the first, (2.3) after. It also ends any
    /// backoff: the RTO is recomputed from the new estimate (RFC 6298 §5 note after (5.7)).
    /// A zero sample counts as 1 µs; samples above [`MAX_SAMPLE`] count as that.
    pub fn on_sample(&mut self, rtt: Duration) {
        let r = rtt.max(Duration::from_micros(1)).min(MAX_SAMPLE).0;
        match self.srtt {
            None => {
                // (2.2) SRTT <- R, RTTVAR <- R/2
                self.srtt = Some(Duration(r));
                self.rttvar = Duration(r / 2);
            }
            Some(srtt) => {
                // (2.3) RTTVAR <- 3/4·RTTVAR + 1/4·|SRTT − R'|, then SRTT <- 7/8·SRTT + 1/8·R'
                // (RTTVAR first: it uses the old SRTT).
                let delta = srtt.0.abs_diff(r);
                self.rttvar = Duration((3 * self.rttvar.0 + delta) / 4);
                self.srtt = Some(Duration((7 * srtt.0 + r) / 8));
            }
        }
        self.latest = Some(Duration(r));
        self.min_rtt = Some(match self.min_rtt {
            Some(m) if m.0 <= r => m,
            _ => Duration(r),
        });
        self.backoff = 0;
    }

    /// The RTO without backoff: SRTT + max(G, 4·RTTVAR), or the initial RTO before any sample,
    /// clamped to the bounds (RFC 6298 (2.1)–(2.4)).
    pub fn base_rto(&self) -> Duration {
        let rto = match self.srtt {
            None => self.initial_rto,
            Some(srtt) => srtt + GRANULARITY.max(Duration(self.rttvar.0.saturating_mul(4))),
        };
        rto.max(self.min_rto).min(self.max_rto)
    }

    /// The current RTO: the base doubled once per unanswered timeout (RFC 6298 (5.5)), at most
    /// the maximum (RFC 6298 (2.5)).
    pub fn rto(&self) -> Duration {
        let base = self.base_rto().0;
        let shift = self.backoff.min(63);
        let backed_off = if shift > 0 && base > (u64::MAX >> shift) {
            u64::MAX
        } else {
            base << shift
        };
        Duration(backed_off).min(self.max_rto)
    }

    /// The retransmission timer expired: back off (RFC 6298 (5.5)). The count saturates at
    /// [`MAX_BACKOFF`]; the RTO itself stops at the maximum long before.
    pub fn on_timeout(&mut self) {
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
    }

    /// Forgets the backoff without a sample (e.g. new data acknowledged while Karn's rule
    /// forbids sampling: Linux `tcp_ack` clears `icsk_backoff` on forward progress).
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }

    /// Unanswered timeouts since the last sample (`tcpi_backoff`).
    pub fn backoff(&self) -> u32 {
        self.backoff
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// RTTVAR (zero before the first sample).
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The smallest sample seen (`tcpi_min_rtt`).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The most recent sample.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    pub fn initial_rto(&self) -> Duration {
        self.initial_rto
    }

    pub fn min_rto(&self) -> Duration {
        self.min_rto
    }

    pub fn max_rto(&self) -> Duration {
        self.max_rto
    }

    /// Changes the bounds (a `max_rto` below `min_rto` is raised to it); the estimate is kept.
    pub fn set_bounds(&mut self, min_rto: Duration, max_rto: Duration) {
        self.min_rto = min_rto;
        self.max_rto = max_rto.max(min_rto);
    }

    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        w.opt_duration(self.srtt);
        w.duration(self.rttvar);
        w.opt_duration(self.min_rtt);
        w.opt_duration(self.latest);
        w.duration(self.initial_rto);
        w.duration(self.min_rto);
        w.duration(self.max_rto);
        w.u32(self.backoff);
    }

    /// Reads what [`RttEstimator::export`] wrote, rejecting inconsistent state (samples
    /// without an SRTT or the reverse, values no sample can produce, inverted bounds).
    pub fn import(r: &mut ImageReader<'_>) -> Result<RttEstimator, ImageError> {
        r.read_section(SECTION)?;
        let est = RttEstimator {
            srtt: r.read_opt_duration()?,
            rttvar: r.read_duration()?,
            min_rtt: r.read_opt_duration()?,
            latest: r.read_opt_duration()?,
            initial_rto: r.read_duration()?,
            min_rto: r.read_duration()?,
            max_rto: r.read_duration()?,
            backoff: r.read_u32()?,
        };
        let sampled = est.srtt.is_some();
        let within = |d: Option<Duration>| d.is_none_or(|d| d.0 >= 1 && d <= MAX_SAMPLE);
        let consistent = est.min_rtt.is_some() == sampled
            && est.latest.is_some() == sampled
            && (sampled || est.rttvar == Duration::ZERO)
            && within(est.srtt)
            && within(est.min_rtt)
            && within(est.latest)
            && est.rttvar <= MAX_SAMPLE
            && match (est.min_rtt, est.latest) {
                (Some(min), Some(latest)) => min <= latest,
                _ => true,
            };
        if !consistent {
            return Err(ImageError::Invalid("RTT estimate"));
        }
        if est.backoff > MAX_BACKOFF
            || est.min_rto > est.max_rto
            || est.max_rto > MAX_BOUND
            || est.initial_rto > MAX_BOUND
        {
            return Err(ImageError::Invalid("RTO bounds"));
        }
        Ok(est)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Instant;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn linux() -> RttEstimator {
        RttEstimator::new(ms(1000), ms(200), Duration::from_secs(120))
    }

    #[test]
    fn initial_rto_is_one_second_and_clamped() {
        let e = linux();
        assert_eq!(e.rto(), ms(1000));
        assert_eq!(e.srtt(), None);
        assert_eq!(e.rttvar(), Duration::ZERO);
        assert_eq!(RttEstimator::new(ms(50), ms(200), ms(500)).rto(), ms(200));
        assert_eq!(RttEstimator::new(ms(900), ms(200), ms(500)).rto(), ms(500));
        // Inverted bounds: the maximum is raised to the minimum.
        assert_eq!(RttEstimator::new(ms(900), ms(300), ms(100)).rto(), ms(300));
    }

    #[test]
    fn first_sample_sets_srtt_and_half_variance() {
        let mut e = linux();
        e.on_sample(ms(100));
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rttvar(), ms(50));
        // (2.2): 100 + 4·50 = 300 ms
        assert_eq!(e.rto(), ms(300));
        assert_eq!(e.min_rtt(), Some(ms(100)));
        assert_eq!(e.latest(), Some(ms(100)));
    }

    #[test]
    fn later_samples_smooth_per_rfc6298() {
        let mut e = linux();
        e.on_sample(ms(100));
        e.on_sample(ms(200));
        // RTTVAR = 3/4·50 + 1/4·|100 − 200| = 62.5; SRTT = 7/8·100 + 1/8·200 = 112.5
        assert_eq!(e.rttvar(), Duration::from_micros(62_500));
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(e.rto(), Duration::from_micros(112_500 + 250_000));
        e.on_sample(ms(40));
        // RTTVAR = 3/4·62.5 + 1/4·72.5 = 65; SRTT = 7/8·112.5 + 1/8·40 = 103.4375
        assert_eq!(e.rttvar(), Duration::from_micros(65_000));
        assert_eq!(e.srtt(), Some(Duration::from_micros(103_437)));
        assert_eq!(e.min_rtt(), Some(ms(40)));
        assert_eq!(e.latest(), Some(ms(40)));
    }

    #[test]
    fn converges_to_a_steady_rtt() {
        let mut e = linux();
        for _ in 0..200 {
            e.on_sample(ms(300));
        }
        assert_eq!(e.srtt(), Some(ms(300)));
        assert!(e.rttvar() < ms(1));
        // Variance vanished: SRTT + G.
        assert_eq!(e.rto(), ms(301));
    }

    #[test]
    fn small_rtts_are_clamped_to_the_minimum_and_large_to_the_maximum() {
        let mut e = linux();
        for _ in 0..50 {
            e.on_sample(Duration::from_micros(50));
        }
        assert_eq!(e.rto(), ms(200));
        let mut g = RttEstimator::new(ms(1000), Duration::ZERO, Duration::from_secs(120));
        for _ in 0..100 {
            g.on_sample(Duration::from_micros(10));
        }
        // SRTT 10 µs, RTTVAR → 0: the granularity term G keeps the RTO above SRTT.
        assert_eq!(g.rto(), Duration::from_micros(1_010));
        let mut big = linux();
        big.on_sample(Duration::from_secs(100));
        assert_eq!(big.rto(), Duration::from_secs(120));
        big.on_sample(Duration::MAX);
        assert_eq!(big.latest(), Some(MAX_SAMPLE));
        big.on_sample(Duration::ZERO);
        assert_eq!(big.min_rtt(), Some(Duration::from_micros(1)));
    }

    #[test]
    fn backoff_doubles_and_saturates_at_the_maximum() {
        let mut e = linux();
        e.on_sample(ms(100));
        e.on_timeout();
        assert_eq!(e.backoff(), 1);
        assert_eq!(e.rto(), ms(600));
        e.on_timeout();
        assert_eq!(e.rto(), ms(1200));
        for _ in 0..1000 {
            e.on_timeout();
        }
        assert_eq!(e.backoff(), MAX_BACKOFF);
        assert_eq!(e.rto(), Duration::from_secs(120));
        assert_eq!(e.base_rto(), ms(300));
        e.on_sample(ms(100));
        assert_eq!(e.backoff(), 0);
        e.on_timeout();
        e.reset_backoff();
        assert_eq!(e.backoff(), 0);
        // Backoff before any sample doubles the initial RTO: 1, 2, 4, ... 64, 120 s.
        let mut f = linux();
        let mut seen = Vec::new();
        for _ in 0..8 {
            f.on_timeout();
            seen.push(f.rto().as_secs());
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 64, 120, 120]);
        // A huge maximum cannot overflow the shift.
        let mut h = RttEstimator::new(ms(1000), ms(200), Duration::MAX);
        for _ in 0..100 {
            h.on_timeout();
        }
        assert_eq!(h.rto(), Duration::MAX);
    }

    #[test]
    fn bounds_can_change() {
        let mut e = linux();
        e.on_sample(ms(10));
        assert_eq!(e.rto(), ms(200));
        e.set_bounds(ms(5), ms(1000));
        assert_eq!(e.rto(), ms(30));
        assert_eq!((e.min_rto(), e.max_rto()), (ms(5), ms(1000)));
        e.set_bounds(ms(50), ms(10));
        assert_eq!(e.max_rto(), ms(50));
    }

    fn image_of(e: &RttEstimator) -> Vec<u8> {
        let mut w = ImageWriter::new(Instant::from_secs(10));
        e.export(&mut w);
        w.finish()
    }

    #[test]
    fn image_round_trip_and_truncation() {
        for e in [linux(), {
            let mut e = linux();
            e.on_sample(ms(7));
            e.on_sample(ms(9));
            e.on_timeout();
            e
        }] {
            let image = image_of(&e);
            let mut r = ImageReader::new(&image, Instant::from_secs(99)).unwrap();
            assert_eq!(RttEstimator::import(&mut r).unwrap(), e);
            r.finish().unwrap();
            for cut in 6..image.len() {
                let mut r = ImageReader::new(&image[..cut], Instant::ZERO).unwrap();
                assert_eq!(
                    RttEstimator::import(&mut r).unwrap_err(),
                    ImageError::Truncated
                );
            }
        }
    }

    #[test]
    fn image_rejects_inconsistent_state() {
        let write = |srtt: Option<u64>, min: Option<u64>, bounds: (u64, u64), backoff: u32| {
            let mut w = ImageWriter::new(Instant::ZERO);
            w.section(SECTION);
            w.opt_duration(srtt.map(Duration));
            w.duration(Duration(5));
            w.opt_duration(min.map(Duration));
            w.opt_duration(srtt.map(Duration));
            w.duration(ms(1000));
            w.duration(Duration(bounds.0));
            w.duration(Duration(bounds.1));
            w.u32(backoff);
            w.finish()
        };
        let read = |image: Vec<u8>| {
            let mut r = ImageReader::new(&image, Instant::ZERO).unwrap();
            RttEstimator::import(&mut r)
        };
        assert!(read(write(Some(10), Some(10), (1, 2), 0)).is_ok());
        let bad = [
            write(Some(10), None, (1, 2), 0),
            write(None, None, (1, 2), 0), // RTTVAR without samples
            write(Some(10), Some(11), (1, 2), 0),
            write(Some(MAX_SAMPLE.0 + 1), Some(1), (1, 2), 0),
            write(Some(10), Some(10), (3, 2), 0),
            write(Some(10), Some(10), (1, MAX_BOUND.0 + 1), 0),
            write(Some(10), Some(10), (1, 2), MAX_BACKOFF + 1),
        ];
        for image in bad {
            assert!(matches!(read(image), Err(ImageError::Invalid(_))));
        }
        let mut image = image_of(&linux());
        image[6] ^= 0xff;
        assert_eq!(
            read(image).unwrap_err(),
            ImageError::Invalid("section marker")
        );
    }
}
