//! Integrated checksum and copy (paper §7.2, Figs. 12 and 13), and the separate "copy, then
//! checksum" baseline it is measured against.
//!
//! Contract: [`copy_and_sum`] copies `src` into `dst[..src.len()]` and returns the folded
//! one's-complement sum of `src` as big-endian 16-bit words (not inverted), equal to
//! [`super::naive::sum`] of `src`, for any length and any source or destination address. Each
//! word is loaded once, stored and added, so the data crosses the memory hierarchy once; the
//! paper found this matters when the data is not in cache (large footprint, Fig. 13). The kernel
//! is the fastest one [`super::fast::best`] picked (SIMD loads and stores, or 64-bit words).
#![forbid(unsafe_code)]

use super::fast;

/// Integrated copy and sum with the fastest kernel. Panics if `dst` is shorter than `src` (a
/// caller bug, never input-dependent).
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    fast::best().copy_and_sum(dst, src)
}

/// Integrated copy and sum with the portable 64-bit-word scalar loop, whatever the CPU.
pub fn copy_and_sum_scalar(dst: &mut [u8], src: &[u8]) -> u16 {
    fast::copy_and_sum_scalar(dst, src)
}

/// The baseline of Figs. 12–13: a plain copy (the C library's `memcpy`), then a separate
/// checksum pass (the fastest kernel) over the copied bytes. Same result and panic as
/// [`copy_and_sum`].
pub fn copy_then_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    let dst = &mut dst[..src.len()];
    dst.copy_from_slice(src);
    fast::sum(dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::naive;
    use crate::checksum::tests::XorShift;

    /// Every length 0..=2048, every source and destination alignment 0..8, every kernel.
    #[test]
    fn matches_naive_every_length_and_alignment() {
        let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut src = vec![0u8; 2048 + 8];
        let mut dst = vec![0u8; 2048 + 16];
        for len in 0..=2048usize {
            rng.fill(&mut src);
            for s_off in 0..8 {
                let s = &src[s_off..s_off + len];
                let want = naive::sum(s);
                for d_off in 0..8 {
                    for k in fast::kernels() {
                        dst[..d_off + len + 8].fill(0xa5);
                        let got = k.copy_and_sum(&mut dst[d_off..], s);
                        assert_eq!(
                            got,
                            want,
                            "kernel {} len {len} src+{s_off} dst+{d_off}",
                            k.name()
                        );
                        assert!(&dst[d_off..d_off + len] == s, "copy {} len {len}", k.name());
                        // Bytes around the destination range are untouched.
                        assert!(dst[..d_off].iter().all(|&b| b == 0xa5));
                        assert!(dst[d_off + len..d_off + len + 8].iter().all(|&b| b == 0xa5));
                    }
                }
                let got = copy_then_sum(&mut dst[s_off..], s);
                assert_eq!(got, want, "copy_then_sum len {len}");
                assert_eq!(copy_and_sum(&mut dst, s), want);
                assert_eq!(copy_and_sum_scalar(&mut dst, s), want);
            }
        }
    }

    #[test]
    fn constant_buffers() {
        let mut dst = vec![0u8; 70_000];
        for len in [
            1usize, 2, 3, 31, 32, 33, 127, 128, 129, 1400, 1500, 65_535, 65_536, 70_000,
        ] {
            for byte in [0x00u8, 0xff] {
                let src = vec![byte; len];
                let want = naive::sum(&src);
                for k in fast::kernels() {
                    assert_eq!(
                        k.copy_and_sum(&mut dst, &src),
                        want,
                        "{} {byte:#x} x {len}",
                        k.name()
                    );
                    assert!(dst[..len] == src[..], "copy {} {byte:#x} x {len}", k.name());
                }
            }
        }
    }

    #[test]
    fn larger_than_one_simd_block() {
        // Crosses the 256 KiB block boundary of the SIMD kernels at an odd offset.
        let mut rng = XorShift::new(7);
        let mut src = vec![0u8; 600_001];
        rng.fill(&mut src);
        let mut dst = vec![0u8; src.len() + 1];
        let want = naive::sum(&src[1..]);
        for k in fast::kernels() {
            assert_eq!(
                k.copy_and_sum(&mut dst[1..], &src[1..]),
                want,
                "{}",
                k.name()
            );
            assert!(dst[1..src.len()] == src[1..], "copy {}", k.name());
        }
    }

    #[test]
    #[should_panic]
    fn short_destination_is_a_caller_bug() {
        let mut dst = [0u8; 3];
        copy_and_sum(&mut dst, &[1, 2, 3, 4]);
    }
}
