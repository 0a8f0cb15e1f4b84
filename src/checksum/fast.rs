//! Optimized Internet checksum (paper §7.2, Fig. 11): wide-word scalar code and SIMD kernels
//! (AVX2, SSE2 on x86_64) picked once at run time.
//!
//! Contract: every function here returns exactly what [`super::naive::sum`] returns (the folded
//! one's-complement sum of big-endian 16-bit words, not inverted) for every length and every
//! starting address. The kernels sum *native-endian* words and byte-swap the folded result at the
//! end, which is exact by the byte-order independence of the one's-complement sum (RFC 1071
//! §2(B)); wider words are exact because 2^16 ≡ 1 modulo 0xffff (RFC 1071 §2(C), "parallel
//! summation"). Loads are unaligned, so the word pairing always follows the offset inside the
//! slice, whatever the address parity.
//!
//! The CPU is probed once ([`best`], cached in a `OnceLock`); a [`Kernel`] value can only be
//! obtained from [`kernels`] or [`best`], so holding one proves the CPU runs its instructions.
//! The SIMD code is the only `unsafe` of the checksum module and lives in the private `simd`
//! submodule below.
#![deny(unsafe_code)]

use std::sync::OnceLock;

/// Partial sum of native-endian words, not folded, as a kernel returns it.
type SumFn = fn(&[u8]) -> u64;
/// Copies `src` into `dst` (same length) and returns the partial sum of `src`.
type CopySumFn = fn(&mut [u8], &[u8]) -> u64;

/// One implementation of the checksum (and integrated copy) that this CPU can run.
#[derive(Clone, Copy)]
pub struct Kernel {
    name: &'static str,
    sum: SumFn,
    copy_sum: CopySumFn,
}

impl Kernel {
    const SCALAR: Kernel = Kernel {
        name: "scalar-u64",
        sum: scalar_sum,
        copy_sum: scalar_copy_sum,
    };

    /// Short name for reports: `scalar-u64`, `sse2` or `avx2`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether this kernel uses vector instructions.
    pub fn is_simd(&self) -> bool {
        self.name != Self::SCALAR.name
    }

    /// Folded one's-complement sum of `data` as big-endian 16-bit words.
    pub fn sum(&self, data: &[u8]) -> u16 {
        // Headers (8–60 bytes) are summed often: below one vector step the kernel's setup and
        // lane reduction cost more than they save, so short inputs take the inline word path.
        let partial = if data.len() < SHORT {
            tail_sum(data)
        } else {
            (self.sum)(data)
        };
        to_big_endian(fold_wide(partial))
    }

    /// Copies `src` into `dst[..src.len()]` in the same pass that sums it, returning the sum of
    /// `src`. Panics if `dst` is shorter than `src` (a caller bug, never input-dependent).
    pub fn copy_and_sum(&self, dst: &mut [u8], src: &[u8]) -> u16 {
        let dst = &mut dst[..src.len()];
        let partial = if src.len() < SHORT {
            tail_copy_sum(dst, src)
        } else {
            (self.copy_sum)(dst, src)
        };
        to_big_endian(fold_wide(partial))
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Kernel").field(&self.name).finish()
    }
}

/// Every kernel this CPU can run, slowest first; the last one is [`best`].
pub fn kernels() -> &'static [Kernel] {
    static ALL: OnceLock<Vec<Kernel>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = vec![Kernel::SCALAR];
        #[cfg(target_arch = "x86_64")]
        v.extend(simd::detect());
        v
    })
}

/// The fastest kernel for this CPU, chosen on first use and cached.
pub fn best() -> Kernel {
    static BEST: OnceLock<Kernel> = OnceLock::new();
    *BEST.get_or_init(|| kernels().last().copied().unwrap_or(Kernel::SCALAR))
}

/// Folded sum of `data` with the fastest kernel (what [`super::data`] calls).
pub fn sum(data: &[u8]) -> u16 {
    best().sum(data)
}

/// Folded sum of `data` with the portable wide-word scalar code, whatever the CPU.
pub fn sum_scalar(data: &[u8]) -> u16 {
    Kernel::SCALAR.sum(data)
}

/// Integrated copy and sum with the portable wide-word scalar code, whatever the CPU.
pub fn copy_and_sum_scalar(dst: &mut [u8], src: &[u8]) -> u16 {
    Kernel::SCALAR.copy_and_sum(dst, src)
}

/// Inputs shorter than this skip the kernels (see [`Kernel::sum`]); measured: up to one
/// 128-byte vector step, the inline word path is as fast as the SIMD kernels or faster.
const SHORT: usize = 128;

/// Folds a native-endian partial sum to 16 bits with end-around carries, branch-free: each step
/// keeps the value congruent modulo 0xffff and nonzero if it was.
#[inline(always)]
fn fold_wide(acc: u64) -> u16 {
    let x = (acc & 0xffff_ffff) + (acc >> 32); // < 2^33
    let x = (x & 0xffff) + (x >> 16); // < 2^16 + 2^17
    let x = (x & 0xffff) + (x >> 16); // < 2^16 + 3
    let x = (x & 0xffff) + (x >> 16); // <= 0xffff
    x as u16
}

/// Native-endian folded sum to the big-endian sum RFC 1071 defines.
fn to_big_endian(native: u16) -> u16 {
    if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    }
}

/// Adds two partial sums with end-around carry (exact modulo 2^64 - 1, which 0xffff divides).
/// The result is zero only if both inputs are.
#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, c) = a.overflowing_add(b);
    s + u64::from(c)
}

/// Reduces a 128-bit exact sum to a 64-bit partial sum with the same folded value.
#[inline(always)]
fn reduce128(acc: u128) -> u64 {
    add_carry(acc as u64, (acc >> 64) as u64)
}

/// Partial sum of a short tail (the kernels pass fewer than 32 bytes, but any length works):
/// 8-byte words, then one 4-, 2- and 1-byte piece, each read native-endian at an even offset and
/// so made of whole native 16-bit words (the last byte padded with zero). Fixed-size reads only,
/// so no call to `memcpy` for the odd end.
#[inline(always)]
fn tail_sum(data: &[u8]) -> u64 {
    let mut acc: u128 = 0;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        acc += u128::from(word(w, 0));
    }
    let mut rest = words.remainder();
    let mut last = 0u64;
    if let Some((four, r)) = rest.split_first_chunk::<4>() {
        last += u64::from(u32::from_ne_bytes(*four));
        rest = r;
    }
    if let Some((two, r)) = rest.split_first_chunk::<2>() {
        last += u64::from(u16::from_ne_bytes(*two));
        rest = r;
    }
    if let [b] = rest {
        last += u64::from(u16::from_ne_bytes([*b, 0]));
    }
    reduce128(acc + u128::from(last))
}

/// [`tail_sum`] that also copies `src` into `dst` (same length), with fixed-size moves only.
#[inline(always)]
fn tail_copy_sum(dst: &mut [u8], src: &[u8]) -> u64 {
    let dst = &mut dst[..src.len()];
    let mut acc: u128 = 0;
    let mut s_words = src.chunks_exact(8);
    let mut d_words = dst.chunks_exact_mut(8);
    for (s, d) in (&mut s_words).zip(&mut d_words) {
        let w = word(s, 0);
        d.copy_from_slice(&w.to_ne_bytes());
        acc += u128::from(w);
    }
    let (s, d) = (s_words.remainder(), d_words.into_remainder());
    let mut last = 0u64;
    let mut i = 0;
    if s.len() - i >= 4 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&s[i..i + 4]);
        d[i..i + 4].copy_from_slice(&b);
        last += u64::from(u32::from_ne_bytes(b));
        i += 4;
    }
    if s.len() - i >= 2 {
        let b = [s[i], s[i + 1]];
        d[i..i + 2].copy_from_slice(&b);
        last += u64::from(u16::from_ne_bytes(b));
        i += 2;
    }
    if s.len() > i {
        d[i] = s[i];
        last += u64::from(u16::from_ne_bytes([s[i], 0]));
    }
    reduce128(acc + u128::from(last))
}

/// Reads the 8 bytes at `w[i * 8..]` as a native-endian word.
#[inline(always)]
fn word(w: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&w[i * 8..i * 8 + 8]);
    u64::from_ne_bytes(b)
}

/// Wide-word scalar sum: 64-bit loads added into four independent 128-bit accumulators (each
/// addition is an add/adc pair, and four chains keep the carries from serializing), 32 bytes per
/// iteration.
fn scalar_sum(data: &[u8]) -> u64 {
    let (mut a0, mut a1, mut a2, mut a3) = (0u128, 0u128, 0u128, 0u128);
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        a0 += u128::from(word(c, 0));
        a1 += u128::from(word(c, 1));
        a2 += u128::from(word(c, 2));
        a3 += u128::from(word(c, 3));
    }
    let body = add_carry(
        add_carry(reduce128(a0), reduce128(a1)),
        add_carry(reduce128(a2), reduce128(a3)),
    );
    add_carry(body, tail_sum(chunks.remainder()))
}

/// Wide-word scalar integrated copy and sum: each 64-bit word is loaded once, stored to `dst`
/// and added to the accumulators, so the data crosses the memory hierarchy once. Two 128-bit
/// accumulators, not four: with the store addresses, four would spill one to the stack and
/// chain every iteration through a store-to-load forward.
fn scalar_copy_sum(dst: &mut [u8], src: &[u8]) -> u64 {
    let (mut a0, mut a1) = (0u128, 0u128);
    let mut s_chunks = src.chunks_exact(32);
    let mut d_chunks = dst.chunks_exact_mut(32);
    for (s, d) in (&mut s_chunks).zip(&mut d_chunks) {
        let (w0, w1, w2, w3) = (word(s, 0), word(s, 1), word(s, 2), word(s, 3));
        d[0..8].copy_from_slice(&w0.to_ne_bytes());
        d[8..16].copy_from_slice(&w1.to_ne_bytes());
        d[16..24].copy_from_slice(&w2.to_ne_bytes());
        d[24..32].copy_from_slice(&w3.to_ne_bytes());
        a0 += u128::from(w0);
        a1 += u128::from(w1);
        a0 += u128::from(w2);
        a1 += u128::from(w3);
    }
    let body = add_carry(reduce128(a0), reduce128(a1));
    add_carry(
        body,
        tail_copy_sum(d_chunks.into_remainder(), s_chunks.remainder()),
    )
}

/// SSE2 and AVX2 kernels, stamped from one template. Per vector of 32-bit lanes `x = lo + 2^16
/// hi` (`lo`, `hi` two native-endian words) a step does `V += x` (wrapping) and `H += x >> 16`:
/// three instructions, no masking. Over a block of at most `2^16 - 1` steps per lane, `H = Σhi`
/// and `Σlo < 2^32` are exact, so `Σlo = V - (H << 16)` modulo 2^32 is exact too, and each lane
/// then holds `Σlo + Σhi`; lanes are widened into a 64-bit partial sum once per block.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use super::{Kernel, add_carry, tail_copy_sum, tail_sum};
    use std::arch::x86_64::*;

    /// Steps of four vectors per block. A lane of one (V, H) pair takes at most `STEPS + 3`
    /// vectors, so `Σlo + Σhi < 2 * 65535 * 2051`, and the four pairs together stay below
    /// 1.08e9 < 2^32.
    const STEPS: usize = 2048;

    /// The SIMD kernels this CPU supports, slowest first.
    pub(super) fn detect() -> Vec<Kernel> {
        let mut v = Vec::new();
        if is_x86_feature_detected!("sse2") {
            v.push(Kernel {
                name: "sse2",
                sum: sse2_sum,
                copy_sum: sse2_copy_sum,
            });
        }
        if is_x86_feature_detected!("avx2") {
            v.push(Kernel {
                name: "avx2",
                sum: avx2_sum,
                copy_sum: avx2_copy_sum,
            });
        }
        v
    }

    fn avx2_sum(data: &[u8]) -> u64 {
        // SAFETY: this function is reachable only through the `avx2` Kernel, which `detect`
        // builds after `is_x86_feature_detected!("avx2")` returned true.
        unsafe { avx2_sum_impl(data) }
    }

    fn avx2_copy_sum(dst: &mut [u8], src: &[u8]) -> u64 {
        // SAFETY: as in `avx2_sum`: only reachable through the detected `avx2` Kernel.
        unsafe { avx2_copy_sum_impl(dst, src) }
    }

    fn sse2_sum(data: &[u8]) -> u64 {
        // SAFETY: only reachable through the `sse2` Kernel, built after detecting SSE2.
        unsafe { sse2_sum_impl(data) }
    }

    fn sse2_copy_sum(dst: &mut [u8], src: &[u8]) -> u64 {
        // SAFETY: only reachable through the `sse2` Kernel, built after detecting SSE2.
        unsafe { sse2_copy_sum_impl(dst, src) }
    }

    /// Sum of the eight 32-bit lanes of `acc`, widened to 64 bits.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen_avx2(acc: __m256i) -> u64 {
        let zero = _mm256_setzero_si256();
        let q = _mm256_add_epi64(
            _mm256_unpacklo_epi32(acc, zero),
            _mm256_unpackhi_epi32(acc, zero),
        );
        let s = _mm256_add_epi64(_mm256_permute4x64_epi64::<0b01_00_11_10>(q), q);
        (_mm256_extract_epi64::<0>(s) as u64) + (_mm256_extract_epi64::<1>(s) as u64)
    }

    /// Sum of the four 32-bit lanes of `acc`, widened to 64 bits.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn widen_sse2(acc: __m128i) -> u64 {
        let zero = _mm_setzero_si128();
        let q = _mm_add_epi64(_mm_unpacklo_epi32(acc, zero), _mm_unpackhi_epi32(acc, zero));
        (_mm_cvtsi128_si64(q) as u64) + (_mm_cvtsi128_si64(_mm_unpackhi_epi64(q, q)) as u64)
    }

    /// Stamps out `$sum(data)` and `$copy(dst, src)` for one vector width.
    macro_rules! kernels {
        (
            feature: $feat:literal,
            vector: $vec:ty,
            width: $w:literal,
            sum: $sum:ident,
            copy: $copy:ident,
            step: $step:ident,
            lanes: $lanes:ident,
            widen: $widen:ident,
            zero: $zero:ident,
            loadu: $loadu:ident,
            storeu: $storeu:ident,
            add: $add:ident,
            sub: $sub:ident,
            srli: $srli:ident,
            slli: $slli:ident $(,)?
        ) => {
            /// One step on vector `x`: `V += x`, `H += x >> 16` (32-bit lanes, wrapping).
            #[inline]
            #[target_feature(enable = $feat)]
            fn $step(v: &mut $vec, h: &mut $vec, x: $vec) {
                *v = $add(*v, x);
                *h = $add(*h, $srli::<16>(x));
            }

            /// Exact per-lane `Σlo + Σhi` of a block from its (V, H) pairs: `V - (H << 16) + H`.
            #[inline]
            #[target_feature(enable = $feat)]
            fn $lanes(v: [$vec; 4], h: [$vec; 4]) -> $vec {
                let mut acc = $zero();
                for (v, h) in v.into_iter().zip(h) {
                    acc = $add(acc, $add($sub(v, $slli::<16>(h)), h));
                }
                acc
            }

            /// # Safety
            /// The CPU must support the target feature.
            #[target_feature(enable = $feat)]
            unsafe fn $sum(data: &[u8]) -> u64 {
                let mut total = 0u64;
                for block in data.chunks(STEPS * 4 * $w) {
                    let z = $zero();
                    let (mut v0, mut v1, mut v2, mut v3) = (z, z, z, z);
                    let (mut h0, mut h1, mut h2, mut h3) = (z, z, z, z);
                    let mut steps = block.chunks_exact(4 * $w);
                    for c in &mut steps {
                        let p = c.as_ptr().cast::<$vec>();
                        // SAFETY: `c` holds four vectors' worth of bytes, so the loads at
                        // p, p+1, p+2, p+3 (in vector units) are in bounds; they are unaligned
                        // loads, with no alignment requirement.
                        let (x0, x1, x2, x3) = unsafe {
                            (
                                $loadu(p),
                                $loadu(p.add(1)),
                                $loadu(p.add(2)),
                                $loadu(p.add(3)),
                            )
                        };
                        $step(&mut v0, &mut h0, x0);
                        $step(&mut v1, &mut h1, x1);
                        $step(&mut v2, &mut h2, x2);
                        $step(&mut v3, &mut h3, x3);
                    }
                    let mut rest = steps.remainder().chunks_exact($w);
                    for c in &mut rest {
                        // SAFETY: `c` holds exactly one vector's bytes; unaligned load.
                        let x = unsafe { $loadu(c.as_ptr().cast()) };
                        $step(&mut v0, &mut h0, x);
                    }
                    total = add_carry(total, $widen($lanes([v0, v1, v2, v3], [h0, h1, h2, h3])));
                    total = add_carry(total, tail_sum(rest.remainder()));
                }
                total
            }

            /// # Safety
            /// The CPU must support the target feature. `dst.len() == src.len()`.
            #[target_feature(enable = $feat)]
            unsafe fn $copy(dst: &mut [u8], src: &[u8]) -> u64 {
                let mut total = 0u64;
                for (sb, db) in src
                    .chunks(STEPS * 4 * $w)
                    .zip(dst.chunks_mut(STEPS * 4 * $w))
                {
                    let z = $zero();
                    let (mut v0, mut v1, mut v2, mut v3) = (z, z, z, z);
                    let (mut h0, mut h1, mut h2, mut h3) = (z, z, z, z);
                    let mut s_steps = sb.chunks_exact(4 * $w);
                    let mut d_steps = db.chunks_exact_mut(4 * $w);
                    for (s, d) in (&mut s_steps).zip(&mut d_steps) {
                        let p = s.as_ptr().cast::<$vec>();
                        let q = d.as_mut_ptr().cast::<$vec>();
                        // SAFETY: `s` and `d` each hold four vectors' worth of bytes, so the
                        // unaligned loads from p.. and stores to q.. are in bounds; `d` is an
                        // exclusive borrow, so it cannot overlap `s`.
                        let (x0, x1, x2, x3) = unsafe {
                            let x = (
                                $loadu(p),
                                $loadu(p.add(1)),
                                $loadu(p.add(2)),
                                $loadu(p.add(3)),
                            );
                            $storeu(q, x.0);
                            $storeu(q.add(1), x.1);
                            $storeu(q.add(2), x.2);
                            $storeu(q.add(3), x.3);
                            x
                        };
                        $step(&mut v0, &mut h0, x0);
                        $step(&mut v1, &mut h1, x1);
                        $step(&mut v2, &mut h2, x2);
                        $step(&mut v3, &mut h3, x3);
                    }
                    let mut s_rest = s_steps.remainder().chunks_exact($w);
                    let mut d_rest = d_steps.into_remainder().chunks_exact_mut($w);
                    for (s, d) in (&mut s_rest).zip(&mut d_rest) {
                        // SAFETY: `s` and `d` each hold exactly one vector's bytes; unaligned
                        // load and store, no overlap (exclusive borrow of `d`).
                        let x = unsafe {
                            let x = $loadu(s.as_ptr().cast());
                            $storeu(d.as_mut_ptr().cast(), x);
                            x
                        };
                        $step(&mut v0, &mut h0, x);
                    }
                    total = add_carry(total, $widen($lanes([v0, v1, v2, v3], [h0, h1, h2, h3])));
                    let tail = tail_copy_sum(d_rest.into_remainder(), s_rest.remainder());
                    total = add_carry(total, tail);
                }
                total
            }
        };
    }

    kernels! {
        feature: "avx2",
        vector: __m256i,
        width: 32,
        sum: avx2_sum_impl,
        copy: avx2_copy_sum_impl,
        step: step_avx2,
        lanes: lanes_avx2,
        widen: widen_avx2,
        zero: _mm256_setzero_si256,
        loadu: _mm256_loadu_si256,
        storeu: _mm256_storeu_si256,
        add: _mm256_add_epi32,
        sub: _mm256_sub_epi32,
        srli: _mm256_srli_epi32,
        slli: _mm256_slli_epi32,
    }

    kernels! {
        feature: "sse2",
        vector: __m128i,
        width: 16,
        sum: sse2_sum_impl,
        copy: sse2_copy_sum_impl,
        step: step_sse2,
        lanes: lanes_sse2,
        widen: widen_sse2,
        zero: _mm_setzero_si128,
        loadu: _mm_loadu_si128,
        storeu: _mm_storeu_si128,
        add: _mm_add_epi32,
        sub: _mm_sub_epi32,
        srli: _mm_srli_epi32,
        slli: _mm_slli_epi32,
    }
}
