//! RFC 1071 Internet checksum (paper §7.2, Figs. 11–13): the public entry points the wire code
//! and the data path call, over three implementations:
//! - [`naive`]: the RFC 1071 reference loop, one 16-bit word at a time (the 4.4BSD-like baseline);
//! - [`fast`]: 64-bit words into wide accumulators, and SSE2/AVX2 kernels chosen once at run time;
//! - [`copy`]: integrated checksum-and-copy in one pass, and the copy-then-checksum baseline.
//!
//! All functions return the *folded one's-complement sum* (not inverted) of the data read as
//! big-endian 16-bit words, an odd trailing byte padded with zero; the value written in a header
//! is `!combine(&[...])`. Results are identical for every length and every starting address.
//! Only [`fast`] contains `unsafe` (its SIMD submodule); everything else forbids it.
#![deny(unsafe_code)]

pub mod copy;
pub mod fast;
pub mod naive;

use std::net::Ipv4Addr;

/// Folded 16-bit one's-complement sum of `data` read as big-endian 16-bit words (an odd trailing
/// byte is padded with zero), computed with the fastest kernel for this CPU.
pub fn data(data: &[u8]) -> u16 {
    fast::sum(data)
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    naive::fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header for TCP/UDP (RFC 768, RFC 9293 §3.1).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u16 {
    let mut buf = [0u8; 12];
    buf[0..4].copy_from_slice(&src.octets());
    buf[4..8].copy_from_slice(&dst.octets());
    buf[9] = protocol;
    buf[10..12].copy_from_slice(&(length as u16).to_be_bytes());
    naive::sum(&buf)
}

/// Copies `src` into `dst[..src.len()]` and returns the sum of `src` (integrated checksum and
/// copy). Panics if `dst` is shorter than `src` (a caller bug, never input-dependent).
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    copy::copy_and_sum(dst, src)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marsaglia xorshift64: deterministic pseudo-random test data without a dependency.
    pub(super) struct XorShift(u64);

    impl XorShift {
        pub(super) fn new(seed: u64) -> XorShift {
            XorShift(seed.max(1))
        }

        pub(super) fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub(super) fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let r = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
        }
    }

    /// A UDP datagram captured with tcpdump on a veth link (sender's tx checksum offload off;
    /// tcpdump said "udp sum ok"): 198.18.0.2:40000 -> 198.18.0.1:9009, payload
    /// "msock checksum test!". IPv4 header then UDP header and payload (Ethernet stripped).
    const CAPTURED: [u8; 48] = [
        0x45, 0x00, 0x00, 0x30, 0x45, 0x7f, 0x40, 0x00, 0x40, 0x11, 0x69, 0x16, 0xc6, 0x12, 0x00,
        0x02, 0xc6, 0x12, 0x00, 0x01, // IPv4 header, checksum 0x6916
        0x9c, 0x40, 0x23, 0x31, 0x00, 0x1c, 0xc8, 0x6f, // UDP header, checksum 0xc86f
        b'm', b's', b'o', b'c', b'k', b' ', b'c', b'h', b'e', b'c', b'k', b's', b'u', b'm', b' ',
        b't', b'e', b's', b't', b'!',
    ];

    #[test]
    fn captured_udp_packet_by_hand() {
        let (ip, udp) = CAPTURED.split_at(20);
        // Pseudo-header: c612 + 0002 + c612 + 0001 + 0011 + 001c = 0x18c54 -> 0x8c55.
        let pseudo = pseudo_header_v4(
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 1),
            17,
            28,
        );
        assert_eq!(pseudo, 0x8c55);
        // UDP header with a zero checksum field: 9c40 + 2331 + 001c = 0xbf8d.
        let mut header = [0u8; 8];
        header.copy_from_slice(&udp[..8]);
        header[6..8].fill(0);
        assert_eq!(data(&header), 0xbf8d);
        // Payload: ten words summing to 0x3eba9 -> 0xebac.
        assert_eq!(data(&udp[8..]), 0xebac);
        // 0x8c55 + 0xbf8d + 0xebac = 0x2378e -> 0x3790, inverted 0xc86f: the captured value.
        let total = combine(&[pseudo, data(&header), data(&udp[8..])]);
        assert_eq!(total, 0x3790);
        assert_eq!(!total, u16::from_be_bytes([udp[6], udp[7]]));
        // Verifying a received datagram: pseudo-header plus the whole datagram sums to 0xffff.
        assert_eq!(combine(&[pseudo, data(udp)]), 0xffff);
        // IPv4 header: 0x296e7 -> 0x96e9 with the field zeroed, inverted 0x6916; 0xffff with it.
        let mut ip_zeroed = [0u8; 20];
        ip_zeroed.copy_from_slice(ip);
        ip_zeroed[10..12].fill(0);
        assert_eq!(data(&ip_zeroed), 0x96e9);
        assert_eq!(!data(&ip_zeroed), 0x6916);
        assert_eq!(data(ip), 0xffff);
    }

    #[test]
    fn combine_and_pseudo_header() {
        assert_eq!(combine(&[]), 0);
        assert_eq!(combine(&[0xffff, 0xffff]), 0xffff);
        assert_eq!(combine(&[0x8000, 0x8000]), 1);
        // The length field is the low 16 bits (a UDP/TCP length never exceeds them).
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(
            pseudo_header_v4(a, b, 6, 40),
            0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 40
        );
    }

    #[test]
    fn rfc1071_worked_example_every_kernel() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        for k in fast::kernels() {
            assert_eq!(k.sum(&bytes), 0xddf2, "{}", k.name());
        }
        // Split at an odd offset, the second part's sum is byte-swapped (RFC 1071 §2(B)).
        let (x, y) = bytes.split_at(3);
        assert_eq!(combine(&[data(x), data(y).swap_bytes()]), 0xddf2);
    }

    /// Every length 0..=2048 at every starting alignment 0..8, every kernel, against naive.
    #[test]
    fn kernels_match_naive_every_length_and_alignment() {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 2048 + 8];
        for len in 0..=2048usize {
            rng.fill(&mut buf);
            for off in 0..8 {
                let s = &buf[off..off + len];
                let want = naive::sum(s);
                assert_eq!(data(s), want, "data len {len} off {off}");
                assert_eq!(fast::sum_scalar(s), want, "scalar len {len} off {off}");
                for k in fast::kernels() {
                    assert_eq!(k.sum(s), want, "kernel {} len {len} off {off}", k.name());
                }
            }
        }
    }

    #[test]
    fn constant_and_extreme_buffers() {
        for len in [
            0usize, 1, 2, 3, 7, 8, 9, 31, 32, 33, 127, 128, 129, 1400, 1500, 65_535, 65_536,
        ] {
            for byte in [0x00u8, 0xff, 0x80, 0x01] {
                let v = vec![byte; len];
                let want = naive::sum(&v);
                for k in fast::kernels() {
                    assert_eq!(k.sum(&v), want, "{} {byte:#x} x {len}", k.name());
                }
            }
        }
        assert_eq!(data(&[0u8; 4096]), 0);
        assert_eq!(data(&[0xffu8; 4096]), 0xffff);
        // An odd number of 0xff bytes: 0xff00 is the padded last word.
        assert_eq!(data(&[0xffu8; 3]), naive::fold(0xffff + 0xff00));
    }

    #[test]
    fn large_inputs_cross_simd_blocks() {
        // 4 MiB of 0xff exercises the lane-overflow bound of the SIMD blocks; random data at an
        // odd offset exercises block boundaries with unaligned loads.
        let ones = vec![0xffu8; 4 << 20];
        for k in fast::kernels() {
            assert_eq!(k.sum(&ones), 0xffff, "{}", k.name());
            assert_eq!(k.sum(&ones[1..]), naive::sum(&ones[1..]), "{}", k.name());
        }
        let mut rng = XorShift::new(42);
        let mut buf = vec![0u8; (1 << 20) + 3];
        rng.fill(&mut buf);
        for off in 0..3 {
            let want = naive::sum(&buf[off..]);
            for k in fast::kernels() {
                assert_eq!(k.sum(&buf[off..]), want, "{} off {off}", k.name());
            }
        }
    }

    #[test]
    fn best_kernel_is_detected_once() {
        let best = fast::best();
        assert_eq!(best.name(), fast::best().name());
        assert_eq!(fast::kernels().last().map(|k| k.name()), Some(best.name()));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            assert_eq!(best.name(), "avx2");
        }
    }
}
