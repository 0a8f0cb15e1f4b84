//! CUBIC congestion avoidance (RFC 9438).
//!
//! After a congestion event the window follows W_cubic(t) = C·(t − K)³ + W_max (§4.2), with
//! C = 0.4 segments/s³, K = ∛((W_max − cwnd_epoch)/C) and t the time since the current
//! congestion-avoidance epoch began. Per ACK the window moves towards the target
//! W_cubic(t + RTT), clamped to [cwnd, 1.5·cwnd], by (target − cwnd)/cwnd per acknowledged
//! segment (§4.4, §4.5). Where the Reno estimate W_est (grown by α_cubic = 3(1 − β)/(1 + β)
//! per window, α = 1 once W_est reaches cwnd_prior) exceeds W_cubic(t), CUBIC is in the
//! Reno-friendly region and cwnd = W_est (§4.3). A congestion event records W_max with fast
//! convergence (§4.7: W_max = cwnd·(1 + β)/2 when the window shrank since the last event); β =
//! 0.7 (§4.6). After a timeout the next epoch starts with K = 0 and W_max = cwnd_epoch (§4.8).
//! Time during which the sender was not cwnd-limited is not counted in t (§5.8): an ACK
//! reported as not cwnd-limited moves the epoch start forward by the time since the
//! previous ACK.
//!
//! Windows are bytes held as f64 (segments × MSS, so a change of MSS rescales them). The cube
//! root is taken once per epoch; per ACK there are only adds, multiplies and one divide.
//! Results are deterministic on one machine, and the exported image carries the exact f64
//! bits, so a migrated connection continues identically.
#![forbid(unsafe_code)]

use super::super::image::{ImageError, ImageReader, ImageWriter};
use crate::stack::{Duration, Instant};

/// β_cubic (RFC 9438 §4.6).
pub const BETA: f64 = 0.7;
/// C (RFC 9438 §5), in segments per second cubed.
pub const C: f64 = 0.4;
/// α_cubic = 3·(1 − β)/(1 + β) (RFC 9438 §4.3).
pub const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
const SECTION: u8 = 0x75;
/// Largest window (bytes) an image may hold; far beyond any real window.
const MAX_BYTES: f64 = (1u64 << 48) as f64;
/// Largest K (seconds) an image may hold: ∛(MAX_BYTES / C) with MSS 1.
const MAX_K: f64 = 1.0e6;

/// `bytes`·β_cubic, exactly (integer arithmetic: 7/10).
pub fn reduce(bytes: usize) -> usize {
    let scaled = bytes as u128 * 7 / 10;
    scaled as usize
}

/// CUBIC's state between congestion events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cubic {
    /// W_max in bytes: the window at the last congestion event (after fast convergence);
    /// 0 when the next epoch must start from its own window (§4.8, or no event yet).
    w_max: f64,
    /// cwnd_prior in bytes: the window when ssthresh was last set (for α_cubic, §4.3).
    cwnd_prior: f64,
    /// Start of the current congestion-avoidance epoch; `None` until the next ACK starts one.
    epoch_start: Option<Instant>,
    /// K in seconds for the current epoch.
    k: f64,
    /// The plateau of the current epoch's curve in bytes (W_max, or cwnd_epoch if larger).
    origin: f64,
    /// W_est in bytes (§4.3).
    w_est: f64,
    /// Fractional bytes of growth not yet added to cwnd, in [0, 1).
    carry: f64,
    /// The previous ACK seen in congestion avoidance (to discount app-limited time).
    last_ack: Option<Instant>,
}

fn seconds(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

impl Cubic {
    /// W_max in bytes (0 before the first congestion event and after a timeout).
    pub fn w_max(&self) -> f64 {
        self.w_max
    }

    /// K of the current epoch in seconds (0 when no epoch is running or it starts at W_max).
    pub fn k(&self) -> f64 {
        self.k
    }

    /// W_est of the current epoch in bytes.
    pub fn w_est(&self) -> f64 {
        self.w_est
    }

    pub fn epoch_start(&self) -> Option<Instant> {
        self.epoch_start
    }

    /// W_cubic(t) in bytes for the current epoch, `t` seconds after its start (§4.2, Figure 1).
    pub fn w_cubic(&self, t: f64, mss: usize) -> f64 {
        let x = t - self.k;
        C * mss as f64 * x * x * x + self.origin
    }

    /// A congestion event at window `cwnd` bytes (§4.6, §4.7): remember W_max with fast
    /// convergence and end the epoch.
    pub fn on_congestion(&mut self, cwnd: usize) {
        let cwnd = cwnd as f64;
        self.w_max = if cwnd < self.w_max {
            // Fast convergence: the flow's share shrank; release bandwidth sooner.
            cwnd * (1.0 + BETA) / 2.0
        } else {
            cwnd
        };
        self.cwnd_prior = cwnd;
        self.reset_epoch();
    }

    /// A retransmission timeout at window `cwnd` bytes (§4.8): the next epoch starts with
    /// K = 0 from its own window.
    pub fn on_timeout(&mut self, cwnd: usize) {
        self.w_max = 0.0;
        self.cwnd_prior = cwnd as f64;
        self.reset_epoch();
    }

    /// Ends the epoch: the next ACK in congestion avoidance starts a new one.
    pub fn reset_epoch(&mut self) {
        self.epoch_start = None;
        self.last_ack = None;
        self.k = 0.0;
        self.carry = 0.0;
    }

    /// The MSS changed from `old` to `new`: byte quantities keep their size in segments; the
    /// epoch restarts.
    pub fn rescale(&mut self, old: usize, new: usize) {
        let factor = |v: f64| v * new as f64 / old.max(1) as f64;
        self.w_max = factor(self.w_max);
        self.cwnd_prior = factor(self.cwnd_prior);
        self.reset_epoch();
    }

    /// Any ACK of new data (in slow start too): an ACK that finds the sender not
    /// cwnd-limited shifts the running epoch by the time since the previous ACK (§5.8).
    pub fn note_ack(&mut self, now: Instant, cwnd_limited: bool) {
        if let (Some(start), Some(last)) = (self.epoch_start, self.last_ack) {
            if !cwnd_limited {
                self.epoch_start = Some((start + (now - last)).min(now));
            }
            self.last_ack = Some(now);
        }
    }

    /// Congestion avoidance on `acked` bytes at window `cwnd` bytes; returns the new window.
    pub fn avoid(
        &mut self,
        now: Instant,
        cwnd: usize,
        acked: usize,
        mss: usize,
        srtt: Option<Duration>,
    ) -> usize {
        let mss_f = mss.max(1) as f64;
        let cwnd_f = cwnd.max(1) as f64;
        let start = match self.epoch_start {
            Some(start) => start,
            None => {
                // §4.2: a new epoch. K is the time the curve takes back to W_max.
                if self.w_max > cwnd_f {
                    self.k = ((self.w_max - cwnd_f) / (C * mss_f)).cbrt();
                    self.origin = self.w_max;
                } else {
                    // §4.8 (and a window already above W_max): K = 0, W_max = cwnd_epoch.
                    self.k = 0.0;
                    self.origin = cwnd_f;
                }
                self.w_est = cwnd_f;
                self.carry = 0.0;
                self.epoch_start = Some(now);
                self.last_ack = Some(now);
                now
            }
        };
        let t = seconds(now - start);
        let acked_f = acked as f64;

        // §4.3: W_est += α·(segments acked)/cwnd, in bytes; α = 1 once W_est ≥ cwnd_prior.
        let alpha = if self.w_est >= self.cwnd_prior {
            1.0
        } else {
            ALPHA
        };
        self.w_est += alpha * acked_f * mss_f / cwnd_f;

        if self.w_cubic(t, mss) < self.w_est {
            // Reno-friendly region: cwnd = W_est.
            self.carry = 0.0;
            return (self.w_est as usize).max(cwnd);
        }
        // §4.4/§4.5: target = W_cubic(t + RTT) within [cwnd, 1.5·cwnd]; cwnd grows by
        // (target − cwnd)/cwnd per acknowledged segment.
        let rtt = srtt.map_or(0.0, seconds);
        let target = self.w_cubic(t + rtt, mss).clamp(cwnd_f, 1.5 * cwnd_f);
        self.carry += (target - cwnd_f) * acked_f / cwnd_f;
        let whole = self.carry.floor();
        self.carry -= whole;
        cwnd.saturating_add(whole as usize)
    }

    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        for v in [self.w_max, self.cwnd_prior] {
            w.u64(v.to_bits());
        }
        w.opt_instant(self.epoch_start);
        for v in [self.k, self.origin, self.w_est, self.carry] {
            w.u64(v.to_bits());
        }
        w.opt_instant(self.last_ack);
    }

    /// Reads what [`Cubic::export`] wrote; non-finite, negative or absurd values are
    /// [`ImageError::Invalid`].
    pub fn import(r: &mut ImageReader<'_>) -> Result<Cubic, ImageError> {
        r.read_section(SECTION)?;
        let w_max = f64::from_bits(r.read_u64()?);
        let cwnd_prior = f64::from_bits(r.read_u64()?);
        let epoch_start = r.read_opt_instant()?;
        let k = f64::from_bits(r.read_u64()?);
        let origin = f64::from_bits(r.read_u64()?);
        let w_est = f64::from_bits(r.read_u64()?);
        let carry = f64::from_bits(r.read_u64()?);
        let last_ack = r.read_opt_instant()?;
        let bytes = |v: f64| (0.0..=MAX_BYTES).contains(&v);
        let valid = bytes(w_max)
            && bytes(cwnd_prior)
            && bytes(origin)
            && bytes(w_est)
            && (0.0..=MAX_K).contains(&k)
            && (0.0..1.0).contains(&carry)
            && epoch_start.is_some() == last_ack.is_some();
        if !valid {
            return Err(ImageError::Invalid("CUBIC state"));
        }
        Ok(Cubic {
            w_max,
            cwnd_prior,
            epoch_start,
            k,
            origin,
            w_est,
            carry,
            last_ack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CongestionAlgorithm, CongestionControl};
    use super::*;

    const MSS: usize = 1000;

    /// One RTT of one-segment ACKs for a full window, spread evenly; returns the next time.
    fn one_rtt(cc: &mut CongestionControl, now: Instant, rtt: Duration) -> Instant {
        let acks = (cc.cwnd() / MSS).max(1) as u64;
        for i in 0..acks {
            cc.on_ack(now + Duration(rtt.0 * i / acks), MSS, Some(rtt), true);
        }
        now + rtt
    }

    /// A CUBIC connection that just left recovery after a loss at `w_max` segments.
    fn after_loss(w_max: usize, now: Instant) -> CongestionControl {
        let mut cc = CongestionControl::new(CongestionAlgorithm::Cubic, MSS, Instant::ZERO);
        cc.set_cwnd(w_max * MSS);
        cc.on_congestion_event(now, w_max * MSS);
        cc.on_recovery_exit(now);
        cc
    }

    #[test]
    fn reduce_is_exact() {
        assert_eq!(reduce(58_400), 40_880);
        assert_eq!(reduce(10), 7);
        assert_eq!(reduce(usize::MAX), (usize::MAX as u128 * 7 / 10) as usize);
        assert!((ALPHA - 0.529_411_764_705_882_4).abs() < 1e-15);
    }

    #[test]
    fn window_follows_the_cubic_curve() {
        // W_max = 1000 segments, cwnd_epoch = 700, K = ∛(300/0.4) ≈ 9.09 s. RTT 100 ms keeps
        // W_est (≈ +0.53 segment per RTT) far below the curve: pure cubic region.
        let start = Instant::from_secs(1);
        let rtt = Duration::from_millis(100);
        let mut cc = after_loss(1000, start);
        assert_eq!(cc.cwnd(), 700 * MSS);
        let k = (300.0f64 / C).cbrt();
        let w = |t: f64| C * (t - k).powi(3) + 1000.0;
        let mut now = start;
        let mut checked = 0;
        for step in 1..=140u32 {
            now = one_rtt(&mut cc, now, rtt);
            if step == 1 {
                assert!((cc.cubic().k() - k).abs() < 1e-9, "K = {}", cc.cubic().k());
            }
            let t = f64::from(step) * 0.1;
            if step % 20 == 0 || step == 91 {
                let segments = cc.cwnd() as f64 / MSS as f64;
                let expect = w(t);
                // Aiming one RTT ahead and getting there within the RTT, the window is on
                // the curve at each RTT boundary (measured: within 0.11 segments).
                let tolerance = 0.5;
                assert!(
                    (segments - expect).abs() <= tolerance,
                    "t = {t:.1} s: cwnd {segments:.2} segments, W_cubic {expect:.2}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 8);
        // Plateau around K, then convex growth beyond W_max.
        assert!(cc.cwnd() > 1010 * MSS);
    }

    #[test]
    fn growth_is_bounded_by_half_a_window_per_rtt() {
        // Long after K the curve is steep; the target is capped at 1.5·cwnd per ACK.
        let start = Instant::from_secs(1);
        let mut cc = after_loss(20, start);
        let mut now = start + Duration::from_secs(1);
        cc.on_ack(now, MSS, Some(Duration::from_millis(10)), true);
        now += Duration::from_secs(300);
        let before = cc.cwnd();
        now = one_rtt(&mut cc, now, Duration::from_millis(10));
        let grown = cc.cwnd() - before;
        assert!(grown <= before / 2 + MSS, "grew {grown} from {before}");
        assert!(grown >= before / 3, "grew {grown} from {before}");
        let _ = now;
    }

    #[test]
    fn fast_convergence_lowers_w_max() {
        let mut cubic = Cubic::default();
        cubic.on_congestion(100 * MSS);
        assert_eq!(cubic.w_max(), 100_000.0);
        cubic.on_congestion(80 * MSS);
        assert!((cubic.w_max() - 80_000.0 * 0.85).abs() < 1e-6);
        cubic.on_congestion(90 * MSS);
        assert_eq!(
            cubic.w_max(),
            90_000.0,
            "a larger window sets W_max plainly"
        );
        // Through the connection: W_max below the window before the event makes K smaller.
        let start = Instant::from_secs(1);
        let mut cc = after_loss(100, start);
        cc.set_cwnd(80 * MSS);
        cc.on_congestion_event(start, 80 * MSS);
        cc.on_recovery_exit(start);
        cc.on_ack(start, MSS, Some(Duration::from_millis(100)), true);
        let expect_k = ((68.0 - 56.0) / C).cbrt();
        assert!((cc.cubic().k() - expect_k).abs() < 1e-9);
    }

    #[test]
    fn reno_friendly_region_dominates_at_small_bdp() {
        // 10-segment window, 1 ms RTT: K ≈ 1.96 s is 1960 RTTs away; Reno's estimate grows
        // +0.53 segments per RTT until it reaches cwnd_prior (10), then +1 per RTT.
        let start = Instant::from_secs(1);
        let rtt = Duration::from_millis(1);
        let mut cc = after_loss(10, start);
        assert_eq!(cc.cwnd(), 7 * MSS);
        let mut now = start;
        for _ in 0..20 {
            now = one_rtt(&mut cc, now, rtt);
        }
        let segments = cc.cwnd() as f64 / MSS as f64;
        let cubic_only = C * (0.02 - (3.0f64 / C).cbrt()).powi(3) + 10.0;
        assert!(cubic_only < 7.2);
        // ≈ 5.7 RTTs at α_cubic to reach 10, then ≈ 14 at α = 1 (slightly fewer: cwnd grows
        // inside each RTT).
        assert!(
            (20.0..=24.5).contains(&segments),
            "cwnd {segments} segments"
        );
        assert_eq!(cc.cwnd(), cc.cubic().w_est() as usize);
    }

    #[test]
    fn no_growth_and_no_clock_when_not_cwnd_limited() {
        // Two identical flows; one spends 5 s application-limited in the middle of the epoch.
        let start = Instant::from_secs(1);
        let rtt = Duration::from_millis(100);
        let mut busy = after_loss(500, start);
        let mut idle = after_loss(500, start);
        let (mut a, mut b) = (start, start);
        for _ in 0..20 {
            a = one_rtt(&mut busy, a, rtt);
            b = one_rtt(&mut idle, b, rtt);
        }
        let frozen = idle.cwnd();
        for _ in 0..50 {
            idle.on_ack(b, MSS, Some(rtt), false);
            b += rtt;
        }
        assert_eq!(idle.cwnd(), frozen, "no growth while application-limited");
        for _ in 0..30 {
            a = one_rtt(&mut busy, a, rtt);
            b = one_rtt(&mut idle, b, rtt);
        }
        // The limited 5 s did not count as epoch time: both flows are at the same point of
        // the curve (within the one RTT the shift is approximated by).
        let (x, y) = (busy.cwnd() as f64, idle.cwnd() as f64);
        assert!((x - y).abs() / x < 0.01, "busy {x}, formerly idle {y}");
    }

    #[test]
    fn timeout_starts_the_next_epoch_at_its_own_window() {
        let start = Instant::from_secs(1);
        let mut cc = after_loss(100, start);
        cc.on_rto(start, 70 * MSS);
        assert_eq!(cc.cubic().w_max(), 0.0);
        assert_eq!((cc.cwnd(), cc.ssthresh()), (MSS, 49 * MSS));
        let mut now = start;
        while cc.in_slow_start() {
            now = one_rtt(&mut cc, now, Duration::from_millis(100));
        }
        now = one_rtt(&mut cc, now, Duration::from_millis(100));
        assert_eq!(cc.cubic().k(), 0.0, "§4.8: K = 0");
        assert!(cc.cwnd() >= 49 * MSS);
        let _ = now;
    }

    #[test]
    fn restart_after_idle_restarts_the_epoch() {
        let start = Instant::from_secs(1);
        let rtt = Duration::from_millis(100);
        let mut cc = after_loss(200, start);
        let mut now = start;
        for _ in 0..10 {
            now = one_rtt(&mut cc, now, rtt);
        }
        let epoch = cc.cubic().epoch_start();
        assert_eq!(epoch, Some(start));
        now += Duration::from_secs(30);
        cc.on_restart_after_idle(now, Duration::from_millis(300));
        assert_eq!(cc.cubic().epoch_start(), None);
        while cc.in_slow_start() {
            now = one_rtt(&mut cc, now, rtt);
        }
        now = one_rtt(&mut cc, now, rtt);
        let restarted = cc.cubic().epoch_start().unwrap();
        assert!(restarted > start + Duration::from_secs(30), "{restarted}");
        // The restarted epoch begins below W_max, so it climbs the concave part again.
        assert!(cc.cubic().k() > 0.0);
        let _ = now;
    }

    #[test]
    fn image_rejects_non_finite_or_inconsistent_state() {
        let image = |values: [f64; 6], epoch: bool| {
            let mut w = ImageWriter::new(Instant::ZERO);
            w.section(SECTION);
            w.u64(values[0].to_bits());
            w.u64(values[1].to_bits());
            w.opt_instant(epoch.then_some(Instant::ZERO));
            for v in &values[2..] {
                w.u64(v.to_bits());
            }
            w.opt_instant(Some(Instant::ZERO));
            w.finish()
        };
        let read =
            |bytes: Vec<u8>| Cubic::import(&mut ImageReader::new(&bytes, Instant::ZERO).unwrap());
        assert!(read(image([1.0, 1.0, 1.0, 1.0, 1.0, 0.5], true)).is_ok());
        for bad in [
            image([f64::NAN, 1.0, 1.0, 1.0, 1.0, 0.5], true),
            image([1.0, f64::INFINITY, 1.0, 1.0, 1.0, 0.5], true),
            image([1.0, 1.0, -1.0, 1.0, 1.0, 0.5], true),
            image([1.0, 1.0, 1.0, 1e300, 1.0, 0.5], true),
            image([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], true),
            image([1.0, 1.0, 1.0, 1.0, 1.0, 0.5], false),
        ] {
            assert_eq!(read(bad).unwrap_err(), ImageError::Invalid("CUBIC state"));
        }
    }
}
