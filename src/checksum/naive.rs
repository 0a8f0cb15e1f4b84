//! The RFC 1071 reference Internet checksum loop (RFC 1071 §4.1), the baseline of paper §7.2
//! (Fig. 11 compares the 4.4BSD routine, a straightforward word loop, with an optimized one).
//!
//! Contract: [`sum`] returns the folded 16-bit one's-complement sum of `data` read as big-endian
//! 16-bit words, an odd trailing byte padded with a zero low byte; not inverted. It is the
//! reference the optimized paths in [`super::fast`] and [`super::copy`] are tested against, and
//! the "naive" row of the benchmark: one byte pair per iteration, as the RFC's C code does.
#![forbid(unsafe_code)]

/// Folded one's-complement sum of `data` as big-endian 16-bit words (RFC 1071 §4.1).
///
/// The accumulator is 64 bits wide (the RFC's is 32) so no length can overflow it; the loop
/// itself is the RFC's: add one 16-bit word per iteration, then fold the carries at the end.
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// Folds a wide one's-complement accumulator to 16 bits by end-around carry. Preserves the
/// distinction between an all-zero sum (0) and a nonzero multiple of 0xffff (0xffff).
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_worked_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (one's complement).
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&bytes), 0xddf2);
        assert_eq!(!sum(&bytes), 0x220d);
    }

    #[test]
    fn odd_trailing_byte_is_high_byte() {
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn zero_and_all_ones() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0; 100]), 0);
        assert_eq!(sum(&[0xff; 100]), 0xffff);
        // 0x8000 + 0x8000 = 0x1_0000 folds to 1 (end-around carry).
        assert_eq!(sum(&[0x80, 0, 0x80, 0]), 1);
    }

    #[test]
    fn fold_carries() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
    }
}
