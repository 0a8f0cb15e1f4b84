//! Initial sequence numbers (RFC 6528) and per-connection timestamp offsets, from a secret.
//!
//! ISN = M + F(localip, localport, remoteip, remoteport, secretkey) (RFC 6528 §3): M is a
//! clock ticking every 4 µs taken from the caller's `now`, F is SipHash-2-4 (Aumasson and
//! Bernstein, "SipHash: a fast short-input PRF", 2012) keyed with a 128-bit secret the caller
//! draws from a good random source at start-up and shares between the processes that may
//! hold connections of one host (the netserver hands it to clients), so a connection keeps
//! the same sequence space wherever it lives. The TSval offset hashes in a separate domain
//! and, as Linux's `secure_tcp_ts_off`, only the address pair: timestamps then do not reveal
//! the clock and stay monotonic across successive connections between the same hosts, which
//! PAWS and RFC 6191 TIME_WAIT reuse rely on.
//!
//! [`siphash24`] is a plain, allocation-free implementation checked against the 64 reference
//! vectors of the SipHash paper (appendix A / `vectors.h`).
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use crate::stack::Instant;
use crate::wire::tcp::TcpSeqNumber;

/// Hash-domain bytes: one per quantity derived from the secret.
const DOMAIN_ISN: u8 = 0x01;
const DOMAIN_TS_OFFSET: u8 = 0x02;

/// Produces ISNs and timestamp offsets from a 128-bit secret.
#[derive(Clone, PartialEq, Eq)]
pub struct IsnGenerator {
    secret: [u8; 16],
}

impl core::fmt::Debug for IsnGenerator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IsnGenerator { secret: <hidden> }")
    }
}

impl IsnGenerator {
    /// A generator keyed with `secret` (draw it from `getrandom`; never log it).
    pub fn new(secret: [u8; 16]) -> IsnGenerator {
        IsnGenerator { secret }
    }

    /// The secret, for handing to another process of the same host.
    pub fn secret(&self) -> [u8; 16] {
        self.secret
    }

    /// RFC 6528 §3: M (4 µs ticks of `now`, wrapping) plus the keyed hash of the 4-tuple.
    pub fn initial_sequence(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
    ) -> TcpSeqNumber {
        let mut msg = [0u8; 13];
        msg[0] = DOMAIN_ISN;
        msg[1..5].copy_from_slice(&local.ip().octets());
        msg[5..7].copy_from_slice(&local.port().to_be_bytes());
        msg[7..11].copy_from_slice(&remote.ip().octets());
        msg[11..13].copy_from_slice(&remote.port().to_be_bytes());
        let f = siphash24(&self.secret, &msg) as u32;
        let m = (now.as_micros() / 4) as u32;
        TcpSeqNumber(m.wrapping_add(f))
    }

    /// The offset added to this connection's TSval clock (Linux `tsoffset`): a keyed hash of
    /// the address pair in its own domain. Ports do not enter (see the module doc).
    pub fn timestamp_offset(&self, local: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        let mut msg = [0u8; 9];
        msg[0] = DOMAIN_TS_OFFSET;
        msg[1..5].copy_from_slice(&local.ip().octets());
        msg[5..9].copy_from_slice(&remote.ip().octets());
        siphash24(&self.secret, &msg) as u32
    }
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(word)
}

/// SipHash-2-4 of `data` under the 128-bit `key` (key bytes and message words little-endian,
/// as in the paper).
pub fn siphash24(key: &[u8; 16], data: &[u8]) -> u64 {
    let k0 = le_u64(&key[..8]);
    let k1 = le_u64(&key[8..]);
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575, // "somepseu"
        k1 ^ 0x646f_7261_6e64_6f6d, // "dorandom"
        k0 ^ 0x6c79_6765_6e65_7261, // "lygenera"
        k1 ^ 0x7465_6462_7974_6573, // "tedbytes"
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let m = le_u64(chunk);
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
    }
    // Last block: the remaining bytes, and the length mod 256 in the top byte.
    let m = le_u64(chunks.remainder()) | ((data.len() as u64 & 0xff) << 56);
    v[3] ^= m;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Duration;
    use std::net::Ipv4Addr;

    /// SipHash-2-4 outputs (little-endian bytes) for key 00 01 .. 0f and messages of length
    /// 0..63 holding 00 01 .. (len − 1): `vectors_sip64` of the reference implementation.
    #[rustfmt::skip]
    const VECTORS: [[u8; 8]; 64] = [
        [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72], [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74],
        [0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d], [0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85],
        [0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf], [0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18],
        [0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb], [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab],
        [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93], [0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e],
        [0xf3, 0xb9, 0xdd, 0x94, 0xc5, 0xbb, 0x5d, 0x7a], [0xa7, 0xad, 0x6b, 0x22, 0x46, 0x2f, 0xb3, 0xf4],
        [0xfb, 0xe5, 0x0e, 0x86, 0xbc, 0x8f, 0x1e, 0x75], [0x90, 0x3d, 0x84, 0xc0, 0x27, 0x56, 0xea, 0x14],
        [0xee, 0xf2, 0x7a, 0x8e, 0x90, 0xca, 0x23, 0xf7], [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1],
        [0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f], [0x94, 0x47, 0xbe, 0x2c, 0xf5, 0xe9, 0x9a, 0x69],
        [0x9c, 0xd3, 0x8d, 0x96, 0xf0, 0xb3, 0xc1, 0x4b], [0xbd, 0x61, 0x79, 0xa7, 0x1d, 0xc9, 0x6d, 0xbb],
        [0x98, 0xee, 0xa2, 0x1a, 0xf2, 0x5c, 0xd6, 0xbe], [0xc7, 0x67, 0x3b, 0x2e, 0xb0, 0xcb, 0xf2, 0xd0],
        [0x88, 0x3e, 0xa3, 0xe3, 0x95, 0x67, 0x53, 0x93], [0xc8, 0xce, 0x5c, 0xcd, 0x8c, 0x03, 0x0c, 0xa8],
        [0x94, 0xaf, 0x49, 0xf6, 0xc6, 0x50, 0xad, 0xb8], [0xea, 0xb8, 0x85, 0x8a, 0xde, 0x92, 0xe1, 0xbc],
        [0xf3, 0x15, 0xbb, 0x5b, 0xb8, 0x35, 0xd8, 0x17], [0xad, 0xcf, 0x6b, 0x07, 0x63, 0x61, 0x2e, 0x2f],
        [0xa5, 0xc9, 0x1d, 0xa7, 0xac, 0xaa, 0x4d, 0xde], [0x71, 0x65, 0x95, 0x87, 0x66, 0x50, 0xa2, 0xa6],
        [0x28, 0xef, 0x49, 0x5c, 0x53, 0xa3, 0x87, 0xad], [0x42, 0xc3, 0x41, 0xd8, 0xfa, 0x92, 0xd8, 0x32],
        [0xce, 0x7c, 0xf2, 0x72, 0x2f, 0x51, 0x27, 0x71], [0xe3, 0x78, 0x59, 0xf9, 0x46, 0x23, 0xf3, 0xa7],
        [0x38, 0x12, 0x05, 0xbb, 0x1a, 0xb0, 0xe0, 0x12], [0xae, 0x97, 0xa1, 0x0f, 0xd4, 0x34, 0xe0, 0x15],
        [0xb4, 0xa3, 0x15, 0x08, 0xbe, 0xff, 0x4d, 0x31], [0x81, 0x39, 0x62, 0x29, 0xf0, 0x90, 0x79, 0x02],
        [0x4d, 0x0c, 0xf4, 0x9e, 0xe5, 0xd4, 0xdc, 0xca], [0x5c, 0x73, 0x33, 0x6a, 0x76, 0xd8, 0xbf, 0x9a],
        [0xd0, 0xa7, 0x04, 0x53, 0x6b, 0xa9, 0x3e, 0x0e], [0x92, 0x59, 0x58, 0xfc, 0xd6, 0x42, 0x0c, 0xad],
        [0xa9, 0x15, 0xc2, 0x9b, 0xc8, 0x06, 0x73, 0x18], [0x95, 0x2b, 0x79, 0xf3, 0xbc, 0x0a, 0xa6, 0xd4],
        [0xf2, 0x1d, 0xf2, 0xe4, 0x1d, 0x45, 0x35, 0xf9], [0x87, 0x57, 0x75, 0x19, 0x04, 0x8f, 0x53, 0xa9],
        [0x10, 0xa5, 0x6c, 0xf5, 0xdf, 0xcd, 0x9a, 0xdb], [0xeb, 0x75, 0x09, 0x5c, 0xcd, 0x98, 0x6c, 0xd0],
        [0x51, 0xa9, 0xcb, 0x9e, 0xcb, 0xa3, 0x12, 0xe6], [0x96, 0xaf, 0xad, 0xfc, 0x2c, 0xe6, 0x66, 0xc7],
        [0x72, 0xfe, 0x52, 0x97, 0x5a, 0x43, 0x64, 0xee], [0x5a, 0x16, 0x45, 0xb2, 0x76, 0xd5, 0x92, 0xa1],
        [0xb2, 0x74, 0xcb, 0x8e, 0xbf, 0x87, 0x87, 0x0a], [0x6f, 0x9b, 0xb4, 0x20, 0x3d, 0xe7, 0xb3, 0x81],
        [0xea, 0xec, 0xb2, 0xa3, 0x0b, 0x22, 0xa8, 0x7f], [0x99, 0x24, 0xa4, 0x3c, 0xc1, 0x31, 0x57, 0x24],
        [0xbd, 0x83, 0x8d, 0x3a, 0xaf, 0xbf, 0x8d, 0xb7], [0x0b, 0x1a, 0x2a, 0x32, 0x65, 0xd5, 0x1a, 0xea],
        [0x13, 0x50, 0x79, 0xa3, 0x23, 0x1c, 0xe6, 0x60], [0x93, 0x2b, 0x28, 0x46, 0xe4, 0xd7, 0x06, 0x66],
        [0xe1, 0x91, 0x5f, 0x5c, 0xb1, 0xec, 0xa4, 0x6c], [0xf3, 0x25, 0x96, 0x5c, 0xa1, 0x6d, 0x62, 0x9f],
        [0x57, 0x5f, 0xf2, 0x8e, 0x60, 0x38, 0x1b, 0xe5], [0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95],
    ];

    fn reference_key() -> [u8; 16] {
        core::array::from_fn(|i| i as u8)
    }

    #[test]
    fn siphash_reference_vectors() {
        let message: [u8; 64] = core::array::from_fn(|i| i as u8);
        for (len, want) in VECTORS.iter().enumerate() {
            assert_eq!(
                siphash24(&reference_key(), &message[..len]).to_le_bytes(),
                *want,
                "message length {len}"
            );
        }
        // The paper's worked example (appendix A): 15 bytes 00..0e.
        assert_eq!(
            siphash24(&reference_key(), &message[..15]),
            0xa129_ca61_49be_45e5
        );
        // The key matters.
        assert_ne!(siphash24(&[0; 16], &message[..15]), 0xa129_ca61_49be_45e5);
    }

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, last), port)
    }

    #[test]
    fn isn_advances_with_time_for_a_fixed_tuple() {
        let g = IsnGenerator::new([9; 16]);
        let (a, b) = (addr(2, 40000), addr(1, 80));
        let base = Instant::from_secs(1000);
        let t0 = g.initial_sequence(a, b, base);
        assert_eq!(g.initial_sequence(a, b, base), t0, "deterministic");
        let mut previous = t0;
        for step in [3u64, 4, 400, 1_000_000, 3_600_000_000] {
            let isn = g.initial_sequence(a, b, base + Duration::from_micros(step));
            assert_eq!((isn - t0) as i64, (step / 4) as i64, "M ticks every 4 µs");
            assert!(isn >= previous, "monotonic");
            previous = isn;
        }
        // M wraps after 2^32 ticks (≈ 4.77 h) like any sequence number.
        let wrapped = g.initial_sequence(a, b, base + Duration::from_micros(4 << 32));
        assert_eq!(wrapped, t0);
    }

    #[test]
    fn isns_differ_between_tuples_and_secrets() {
        let g = IsnGenerator::new([9; 16]);
        let now = Instant::from_secs(1);
        let base = g.initial_sequence(addr(2, 40000), addr(1, 80), now);
        let others = [
            g.initial_sequence(addr(2, 40001), addr(1, 80), now),
            g.initial_sequence(addr(2, 40000), addr(1, 81), now),
            g.initial_sequence(addr(3, 40000), addr(1, 80), now),
            g.initial_sequence(addr(2, 40000), addr(4, 80), now),
            g.initial_sequence(addr(1, 80), addr(2, 40000), now),
            IsnGenerator::new([1; 16]).initial_sequence(addr(2, 40000), addr(1, 80), now),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(*other, base, "variant {i}");
        }
    }

    #[test]
    fn timestamp_offsets_are_per_address_pair() {
        let g = IsnGenerator::new([9; 16]);
        let offset = g.timestamp_offset(addr(2, 40000), addr(1, 80));
        assert_eq!(g.timestamp_offset(addr(2, 40001), addr(1, 8080)), offset);
        assert_ne!(g.timestamp_offset(addr(3, 40000), addr(1, 80)), offset);
        assert_ne!(g.timestamp_offset(addr(1, 80), addr(2, 40000)), offset);
        // A separate domain: not the ISN hash at time zero.
        let isn = g.initial_sequence(addr(2, 40000), addr(1, 80), Instant::ZERO);
        assert_ne!(isn.0, offset);
        assert_ne!(
            IsnGenerator::new([8; 16]).timestamp_offset(addr(2, 40000), addr(1, 80)),
            offset
        );
    }

    #[test]
    fn the_secret_never_prints() {
        let g = IsnGenerator::new([0xab; 16]);
        let shown = format!("{g:?}");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
        assert_eq!(g.secret(), [0xab; 16]);
    }
}
