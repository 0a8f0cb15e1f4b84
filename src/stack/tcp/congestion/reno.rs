//! Reno congestion avoidance (RFC 5681 §3.1 (3)) with appropriate byte counting (RFC 3465
//! §2.1): cwnd grows by one SMSS for every cwnd bytes acknowledged, counted exactly in bytes
//! rather than per ACK, so delayed or stretch ACKs do not slow growth and ACK division cannot
//! speed it up. Slow start and the multiplicative decrease live in [`super`].
#![forbid(unsafe_code)]

use super::super::image::{ImageError, ImageReader, ImageWriter};

const SECTION: u8 = 0x72;

/// Bytes acknowledged in congestion avoidance not yet turned into window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reno {
    bytes_acked: usize,
}

impl Reno {
    /// Congestion avoidance on `acked` bytes at window `cwnd`; returns the new window.
    /// O(1) for any `acked` (several segments at once when an ACK covers several windows,
    /// as Linux `tcp_cong_avoid_ai`).
    pub fn avoid(&mut self, cwnd: usize, acked: usize, mss: usize) -> usize {
        let cwnd = cwnd.max(1);
        self.bytes_acked = self.bytes_acked.saturating_add(acked);
        if self.bytes_acked < cwnd {
            return cwnd;
        }
        let windows = self.bytes_acked / cwnd;
        self.bytes_acked -= windows * cwnd;
        cwnd.saturating_add(windows.saturating_mul(mss))
    }

    /// Acknowledged bytes carried towards the next increment.
    pub fn pending(&self) -> usize {
        self.bytes_acked
    }

    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        w.usize(self.bytes_acked);
    }

    pub fn import(r: &mut ImageReader<'_>) -> Result<Reno, ImageError> {
        r.read_section(SECTION)?;
        Ok(Reno {
            bytes_acked: r.read_usize()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Instant;

    #[test]
    fn one_segment_per_window_of_bytes() {
        let mut reno = Reno::default();
        assert_eq!(reno.avoid(10_000, 9_999, 1000), 10_000);
        assert_eq!(reno.pending(), 9_999);
        assert_eq!(reno.avoid(10_000, 1, 1000), 11_000);
        assert_eq!(reno.pending(), 0);
        // Many small ACKs add up exactly like one large one.
        let mut small = Reno::default();
        let mut cwnd = 11_000;
        for _ in 0..110 {
            cwnd = small.avoid(cwnd, 100, 1000);
        }
        assert_eq!((cwnd, small.pending()), (12_000, 0));
    }

    #[test]
    fn a_stretch_ack_can_cover_several_windows() {
        let mut reno = Reno::default();
        assert_eq!(reno.avoid(4_000, 10_500, 1000), 6_000);
        assert_eq!(reno.pending(), 2_500);
        assert_eq!(reno.avoid(usize::MAX, usize::MAX, 1000), usize::MAX);
    }

    #[test]
    fn image_round_trip() {
        let mut reno = Reno::default();
        reno.avoid(10_000, 1234, 1000);
        let mut w = ImageWriter::new(Instant::ZERO);
        reno.export(&mut w);
        let image = w.finish();
        let mut r = ImageReader::new(&image, Instant::ZERO).unwrap();
        assert_eq!(Reno::import(&mut r).unwrap(), reno);
        r.finish().unwrap();
        for cut in 6..image.len() {
            let mut r = ImageReader::new(&image[..cut], Instant::ZERO).unwrap();
            assert_eq!(Reno::import(&mut r).unwrap_err(), ImageError::Truncated);
        }
    }
}
