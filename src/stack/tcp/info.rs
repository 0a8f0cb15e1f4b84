//! `TCP_INFO`: the figures of one connection that programs and `ss -i` read, as a plain
//! struct ([`TcpInfo`], filled by the engine), and its encoding in Linux's `struct tcp_info`
//! layout (include/uapi/linux/tcp.h as of Linux 6.18, 280 bytes, ending with the AccECN
//! counters), which `getsockopt(TCP_INFO)` returns truncated to the caller's length — programs
//! built against older headers pass a shorter length and get the prefix they know.
//!
//! Encoding is native-endian like the kernel's copy of the struct; the two bitfield bytes use
//! the GCC layout on Linux targets (first field in the low bits). The offsets are one table
//! shared by [`TcpInfo::to_linux_bytes`] and [`TcpInfo::from_linux_bytes`]; the integration
//! test `tests/tcp_info_layout.rs` checks them against a real kernel socket.
#![forbid(unsafe_code)]

/// `tcpi_options` bits.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;
pub const TCPI_OPT_ECN: u8 = 8;
pub const TCPI_OPT_ECN_SEEN: u8 = 16;
pub const TCPI_OPT_SYN_DATA: u8 = 32;
pub const TCPI_OPT_USEC_TS: u8 = 64;

/// `tcpi_ca_state` values (Linux `enum tcp_ca_state`).
pub const TCP_CA_OPEN: u8 = 0;
pub const TCP_CA_DISORDER: u8 = 1;
pub const TCP_CA_CWR: u8 = 2;
pub const TCP_CA_RECOVERY: u8 = 3;
pub const TCP_CA_LOSS: u8 = 4;

/// `tcpi_snd_ssthresh` while ssthresh is still "infinite" (Linux `TCP_INFINITE_SSTHRESH`).
pub const TCP_INFINITE_SSTHRESH: u32 = 0x7fff_ffff;

/// Size of Linux 6.18's `struct tcp_info`, all of which this encoder writes.
pub const LINUX_TCP_INFO_LEN: usize = 280;

/// The figures of one connection, field for field Linux's `struct tcp_info` (units as Linux:
/// times in µs except the `*_ms` ages and totals; `snd_cwnd`, `snd_ssthresh` in segments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Linux `TCP_*` state number (`TCP_ESTABLISHED` = 1 …).
    pub state: u8,
    /// `TCP_CA_*`.
    pub ca_state: u8,
    /// Unanswered retransmissions of the current RTO episode.
    pub retransmits: u8,
    /// Unanswered zero-window / keepalive probes.
    pub probes: u8,
    pub backoff: u8,
    /// `TCPI_OPT_*` bits.
    pub options: u8,
    /// Peer's window scale (low nibble of byte 6).
    pub snd_wscale: u8,
    /// Our window scale (high nibble of byte 6).
    pub rcv_wscale: u8,
    /// Bit 0 of byte 7.
    pub delivery_rate_app_limited: bool,
    /// Bits 1–2 of byte 7 (TCP Fast Open; msock does not do TFO: 0).
    pub fastopen_client_fail: u8,
    pub rto_us: u32,
    pub ato_us: u32,
    pub snd_mss: u32,
    pub rcv_mss: u32,
    /// Segments in flight (`packets_out`).
    pub unacked: u32,
    pub sacked: u32,
    pub lost: u32,
    /// Retransmitted segments in flight.
    pub retrans: u32,
    /// Unused by Linux since 4.15 (always 0).
    pub fackets: u32,
    pub last_data_sent_ms: u32,
    /// "Not remembered, sorry": always 0 on Linux.
    pub last_ack_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    pub pmtu: u32,
    pub rcv_ssthresh: u32,
    /// Smoothed RTT.
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// Segments; [`TCP_INFINITE_SSTHRESH`] while infinite.
    pub snd_ssthresh: u32,
    /// Segments.
    pub snd_cwnd: u32,
    pub advmss: u32,
    pub reordering: u32,
    pub rcv_rtt_us: u32,
    pub rcv_space: u32,
    pub total_retrans: u32,
    /// Bytes per second (`u64::MAX` when unlimited).
    pub pacing_rate: u64,
    pub max_pacing_rate: u64,
    /// Bytes acknowledged by the peer (RFC 4898), the SYN included as on Linux.
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    pub notsent_bytes: u32,
    pub min_rtt_us: u32,
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    pub delivery_rate: u64,
    pub busy_time: u64,
    pub rwnd_limited: u64,
    pub sndbuf_limited: u64,
    pub delivered: u32,
    pub delivered_ce: u32,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub dsack_dups: u32,
    pub reord_seen: u32,
    pub rcv_ooopack: u32,
    /// The peer's advertised window after scaling, bytes.
    pub snd_wnd: u32,
    /// Our advertised window after scaling, bytes.
    pub rcv_wnd: u32,
    /// PLB or timeout triggered rehash attempts.
    pub rehash: u32,
    pub total_rto: u16,
    pub total_rto_recoveries: u16,
    pub total_rto_time_ms: u32,
    pub received_ce: u32,
    pub delivered_e1_bytes: u32,
    pub delivered_e0_bytes: u32,
    pub delivered_ce_bytes: u32,
    pub received_e1_bytes: u32,
    pub received_e0_bytes: u32,
    pub received_ce_bytes: u32,
    pub accecn_fail_mode: u16,
    pub accecn_opt_seen: u16,
}

/// The byte offsets of every whole-integer field of `struct tcp_info` (the bytes 0–7 of u8s
/// and bitfields are handled by hand). Expands to the two conversion functions.
macro_rules! layout {
    ($($field:ident: $ty:ty = $offset:expr,)*) => {
        /// Bytes covered by the table (everything after the first eight).
        #[cfg(test)]
        const FIELD_BYTES: usize = 0 $(+ core::mem::size_of::<$ty>())*;

        fn put_fields(info: &TcpInfo, b: &mut [u8; LINUX_TCP_INFO_LEN]) {
            $(
                b[$offset..$offset + core::mem::size_of::<$ty>()]
                    .copy_from_slice(&info.$field.to_ne_bytes());
            )*
        }

        fn get_fields(info: &mut TcpInfo, b: &[u8; LINUX_TCP_INFO_LEN]) {
            $(
                let mut raw = [0u8; core::mem::size_of::<$ty>()];
                raw.copy_from_slice(&b[$offset..$offset + core::mem::size_of::<$ty>()]);
                info.$field = <$ty>::from_ne_bytes(raw);
            )*
        }
    };
}

layout! {
    rto_us: u32 = 8,
    ato_us: u32 = 12,
    snd_mss: u32 = 16,
    rcv_mss: u32 = 20,
    unacked: u32 = 24,
    sacked: u32 = 28,
    lost: u32 = 32,
    retrans: u32 = 36,
    fackets: u32 = 40,
    last_data_sent_ms: u32 = 44,
    last_ack_sent_ms: u32 = 48,
    last_data_recv_ms: u32 = 52,
    last_ack_recv_ms: u32 = 56,
    pmtu: u32 = 60,
    rcv_ssthresh: u32 = 64,
    rtt_us: u32 = 68,
    rttvar_us: u32 = 72,
    snd_ssthresh: u32 = 76,
    snd_cwnd: u32 = 80,
    advmss: u32 = 84,
    reordering: u32 = 88,
    rcv_rtt_us: u32 = 92,
    rcv_space: u32 = 96,
    total_retrans: u32 = 100,
    pacing_rate: u64 = 104,
    max_pacing_rate: u64 = 112,
    bytes_acked: u64 = 120,
    bytes_received: u64 = 128,
    segs_out: u32 = 136,
    segs_in: u32 = 140,
    notsent_bytes: u32 = 144,
    min_rtt_us: u32 = 148,
    data_segs_in: u32 = 152,
    data_segs_out: u32 = 156,
    delivery_rate: u64 = 160,
    busy_time: u64 = 168,
    rwnd_limited: u64 = 176,
    sndbuf_limited: u64 = 184,
    delivered: u32 = 192,
    delivered_ce: u32 = 196,
    bytes_sent: u64 = 200,
    bytes_retrans: u64 = 208,
    dsack_dups: u32 = 216,
    reord_seen: u32 = 220,
    rcv_ooopack: u32 = 224,
    snd_wnd: u32 = 228,
    rcv_wnd: u32 = 232,
    rehash: u32 = 236,
    total_rto: u16 = 240,
    total_rto_recoveries: u16 = 242,
    total_rto_time_ms: u32 = 244,
    received_ce: u32 = 248,
    delivered_e1_bytes: u32 = 252,
    delivered_e0_bytes: u32 = 256,
    delivered_ce_bytes: u32 = 260,
    received_e1_bytes: u32 = 264,
    received_e0_bytes: u32 = 268,
    received_ce_bytes: u32 = 272,
    accecn_fail_mode: u16 = 276,
    accecn_opt_seen: u16 = 278,
}

impl TcpInfo {
    /// The whole struct in Linux's layout.
    pub fn linux_bytes(&self) -> [u8; LINUX_TCP_INFO_LEN] {
        let mut b = [0u8; LINUX_TCP_INFO_LEN];
        b[0] = self.state;
        b[1] = self.ca_state;
        b[2] = self.retransmits;
        b[3] = self.probes;
        b[4] = self.backoff;
        b[5] = self.options;
        // __u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4;
        b[6] = (self.snd_wscale & 0x0f) | ((self.rcv_wscale & 0x0f) << 4);
        // __u8 tcpi_delivery_rate_app_limited:1, tcpi_fastopen_client_fail:2;
        b[7] = u8::from(self.delivery_rate_app_limited) | ((self.fastopen_client_fail & 0x3) << 1);
        put_fields(self, &mut b);
        b
    }

    /// Writes the Linux layout into `out`, truncated to `out.len()` as `getsockopt` does;
    /// returns the number of bytes written (at most [`LINUX_TCP_INFO_LEN`]).
    pub fn to_linux_bytes(&self, out: &mut [u8]) -> usize {
        let b = self.linux_bytes();
        let n = out.len().min(LINUX_TCP_INFO_LEN);
        out[..n].copy_from_slice(&b[..n]);
        n
    }

    /// Reads a `struct tcp_info` as a kernel (or [`TcpInfo::to_linux_bytes`]) wrote it; a
    /// shorter buffer (an older kernel's struct) leaves the missing fields zero.
    pub fn from_linux_bytes(bytes: &[u8]) -> TcpInfo {
        let mut b = [0u8; LINUX_TCP_INFO_LEN];
        let n = bytes.len().min(LINUX_TCP_INFO_LEN);
        b[..n].copy_from_slice(&bytes[..n]);
        let mut info = TcpInfo {
            state: b[0],
            ca_state: b[1],
            retransmits: b[2],
            probes: b[3],
            backoff: b[4],
            options: b[5],
            snd_wscale: b[6] & 0x0f,
            rcv_wscale: b[6] >> 4,
            delivery_rate_app_limited: b[7] & 1 != 0,
            fastopen_client_fail: (b[7] >> 1) & 0x3,
            ..TcpInfo::default()
        };
        get_fields(&mut info, &b);
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn fields_land_at_linux_offsets_and_output_truncates() {
        let info = TcpInfo {
            state: 1,
            ca_state: TCP_CA_RECOVERY,
            options: TCPI_OPT_SACK | TCPI_OPT_TIMESTAMPS,
            snd_wscale: 7,
            rcv_wscale: 9,
            delivery_rate_app_limited: true,
            snd_mss: 1448,
            rcv_mss: 536,
            rtt_us: 123,
            snd_ssthresh: TCP_INFINITE_SSTHRESH,
            snd_cwnd: 10,
            pacing_rate: 0x0102_0304_0506_0708,
            bytes_acked: 1001,
            bytes_retrans: 5,
            snd_wnd: 65535,
            rcv_wnd: 65536,
            total_rto: 3,
            total_rto_time_ms: 77,
            accecn_opt_seen: 2,
            ..TcpInfo::default()
        };
        let mut out = [0xffu8; 300];
        assert_eq!(info.to_linux_bytes(&mut out), LINUX_TCP_INFO_LEN);
        assert_eq!(out[0], 1);
        assert_eq!(out[1], 3);
        assert_eq!(out[5], 3);
        assert_eq!(out[6], 0x97);
        assert_eq!(out[7], 1);
        assert_eq!(u32_at(&out, 16), 1448);
        assert_eq!(u32_at(&out, 20), 536);
        assert_eq!(u32_at(&out, 68), 123);
        assert_eq!(u32_at(&out, 76), 0x7fff_ffff);
        assert_eq!(u32_at(&out, 80), 10);
        assert_eq!(u64_at(&out, 104), 0x0102_0304_0506_0708);
        assert_eq!(u64_at(&out, 120), 1001);
        assert_eq!(u64_at(&out, 208), 5);
        assert_eq!(u32_at(&out, 228), 65535);
        assert_eq!(u32_at(&out, 232), 65536);
        assert_eq!(u16::from_ne_bytes([out[240], out[241]]), 3);
        assert_eq!(u32_at(&out, 244), 77);
        assert_eq!(u16::from_ne_bytes([out[278], out[279]]), 2);
        assert_eq!(
            out[LINUX_TCP_INFO_LEN], 0xff,
            "nothing written past the struct"
        );
        let mut short = [0u8; 8];
        assert_eq!(info.to_linux_bytes(&mut short), 8);
        assert_eq!(short[6], 0x97);
        assert_eq!(info.to_linux_bytes(&mut []), 0);
        // An older kernel's 232-byte prefix decodes with the newer fields zero.
        let old = TcpInfo::from_linux_bytes(&out[..232]);
        assert_eq!(old.snd_wnd, 65535);
        assert_eq!((old.rcv_wnd, old.total_rto, old.accecn_opt_seen), (0, 0, 0));
        assert_eq!(TcpInfo::from_linux_bytes(&out), info);
    }

    #[test]
    fn every_byte_belongs_to_exactly_one_field() {
        // Pseudo-random bytes survive decode + encode only if the fields tile the struct
        // without gaps or overlaps (byte 7 has 5 padding bits, which encode as zero).
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..64 {
            let bytes: [u8; LINUX_TCP_INFO_LEN] = core::array::from_fn(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            });
            let mut expect = bytes;
            expect[7] &= 0x07;
            assert_eq!(TcpInfo::from_linux_bytes(&bytes).linux_bytes(), expect);
        }
        // No gaps (above) and exactly as many bytes as the span: no overlaps either.
        assert_eq!(FIELD_BYTES, LINUX_TCP_INFO_LEN - 8);
    }

    #[test]
    fn bitfields_mask_out_of_range_values() {
        let info = TcpInfo {
            snd_wscale: 0x1e,
            rcv_wscale: 0x2f,
            fastopen_client_fail: 0xff,
            ..TcpInfo::default()
        };
        let b = info.linux_bytes();
        assert_eq!(b[6], 0xfe);
        assert_eq!(b[7], 0x06);
    }
}
