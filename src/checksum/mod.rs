//! RFC 1071 Internet checksum (paper §7.2). Being rewritten by the checksum work: naive
//! reference, optimized (wide words, SIMD chosen at run time), integrated checksum-and-copy.
//!
//! All functions return the *folded one's-complement sum* (not inverted); the value written in a
//! header is `!combine(&[...])`.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

/// Folded 16-bit one's-complement sum of `data` read as big-endian 16-bit words (an odd trailing
/// byte is padded with zero).
pub fn data(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    fold(sum as u64)
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header for TCP/UDP (RFC 768, RFC 9293 §3.1).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u16 {
    let mut buf = [0u8; 12];
    buf[0..4].copy_from_slice(&src.octets());
    buf[4..8].copy_from_slice(&dst.octets());
    buf[9] = protocol;
    buf[10..12].copy_from_slice(&(length as u16).to_be_bytes());
    data(&buf)
}

/// Copies `src` into `dst[..src.len()]` and returns the sum of `src` (integrated checksum and
/// copy). Panics if `dst` is shorter than `src` (a caller bug, never input-dependent).
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u16 {
    dst[..src.len()].copy_from_slice(src);
    data(src)
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
