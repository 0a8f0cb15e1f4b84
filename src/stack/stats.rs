//! Drop accounting shared by the netserver and the clients: why a frame, packet or datagram was
//! dropped ([`DropReason`]) and how many times ([`DropCounters`]).
//!
//! Contract: [`DropReason`] is `#[repr(u8)]` with stable discriminants (`reason as u8` is its
//! index in [`DropReason::ALL`] and in [`DropCounters`]), so a client can publish its counters
//! in a shared page as a plain `[u64; N]` and another process can read them back with
//! [`DropReason::from_u8`]. New reasons are only ever appended; a number is never reused.
//! Counters saturate instead of wrapping.
#![forbid(unsafe_code)]

use core::fmt;

/// Why something received (or queued for sending) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than its own headers.
    Truncated = 0,
    /// An Ethernet header that cannot be used (bad source address, ...).
    BadEthernet = 1,
    /// Addressed to another host (MAC or IP).
    NotForUs = 2,
    /// An EtherType or IP protocol this stack does not handle.
    UnknownProtocol = 3,
    /// Malformed or unsupported ARP packet.
    BadArp = 4,
    /// ARP whose target is not our address (only refreshes an existing entry, RFC 826).
    ArpNotForUs = 5,
    /// ARP that would have created a neighbour entry, with the cache or its pending-resolution
    /// budget full and nothing evictable (flood protection).
    ArpTableFull = 6,
    /// IPv4 header invalid (version, lengths, ...).
    BadIpHeader = 7,
    /// IPv4 header checksum does not verify.
    BadIpChecksum = 8,
    /// IPv4 options malformed.
    BadIpOptions = 9,
    /// A fragment overlapped received data inconsistently: the whole datagram was dropped.
    FragOverlap = 10,
    /// A datagram was not completed within the reassembly timeout.
    FragTimeout = 11,
    /// A fragment reaching past the largest possible datagram (65535 bytes).
    FragTooBig = 12,
    /// The reassembly memory budget was exhausted (fragment refused or datagram evicted).
    FragBudget = 13,
    /// A non-final fragment whose payload is not a multiple of 8 bytes, or is empty.
    FragMisaligned = 14,
    /// A fragment contradicting the datagram's known end (a second final fragment with a
    /// different end, or data beyond the final fragment's end).
    FragBadEnd = 15,
    /// Malformed or unsupported ICMP message.
    BadIcmp = 16,
    /// UDP length field inconsistent with the IP payload.
    BadUdpLength = 17,
    /// UDP checksum does not verify.
    BadUdpChecksum = 18,
    /// No socket bound to the destination port (port unreachable sent, rate permitting).
    NoSocket = 19,
    /// The socket's receive buffer (SO_RCVBUF) was full.
    RcvbufFull = 20,
    /// A datagram waiting for neighbour resolution found the per-neighbour queue full.
    NeighbourQueueFull = 21,
    /// A datagram waiting for neighbour resolution was dropped: resolution failed or timed out.
    NeighbourUnreachable = 22,
    /// A TCP segment too short, with a bad data offset or malformed options.
    BadTcp = 23,
    /// A TCP segment whose checksum does not verify.
    BadTcpChecksum = 24,
    /// A TCP segment for a port nobody holds (answered with RST, RFC 9293 §3.10.7.1).
    TcpNoSocket = 25,
}

impl DropReason {
    /// Every reason, in discriminant order: `ALL[r as usize] == r`.
    pub const ALL: [DropReason; 26] = [
        DropReason::Truncated,
        DropReason::BadEthernet,
        DropReason::NotForUs,
        DropReason::UnknownProtocol,
        DropReason::BadArp,
        DropReason::ArpNotForUs,
        DropReason::ArpTableFull,
        DropReason::BadIpHeader,
        DropReason::BadIpChecksum,
        DropReason::BadIpOptions,
        DropReason::FragOverlap,
        DropReason::FragTimeout,
        DropReason::FragTooBig,
        DropReason::FragBudget,
        DropReason::FragMisaligned,
        DropReason::FragBadEnd,
        DropReason::BadIcmp,
        DropReason::BadUdpLength,
        DropReason::BadUdpChecksum,
        DropReason::NoSocket,
        DropReason::RcvbufFull,
        DropReason::NeighbourQueueFull,
        DropReason::NeighbourUnreachable,
        DropReason::BadTcp,
        DropReason::BadTcpChecksum,
        DropReason::TcpNoSocket,
    ];

    /// Number of reasons (the length of a counter array).
    pub const COUNT: usize = Self::ALL.len();

    /// The reason with discriminant `n`, if any (for counters read from a shared page).
    pub const fn from_u8(n: u8) -> Option<DropReason> {
        if (n as usize) < Self::COUNT {
            Some(Self::ALL[n as usize])
        } else {
            None
        }
    }

    /// Position in [`DropReason::ALL`] and in a counter array.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable kebab-case name, as shown by `msock stat`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadEthernet => "bad-ethernet",
            DropReason::NotForUs => "not-for-us",
            DropReason::UnknownProtocol => "unknown-protocol",
            DropReason::BadArp => "bad-arp",
            DropReason::ArpNotForUs => "arp-not-for-us",
            DropReason::ArpTableFull => "arp-table-full",
            DropReason::BadIpHeader => "bad-ip-header",
            DropReason::BadIpChecksum => "bad-ip-checksum",
            DropReason::BadIpOptions => "bad-ip-options",
            DropReason::FragOverlap => "frag-overlap",
            DropReason::FragTimeout => "frag-timeout",
            DropReason::FragTooBig => "frag-too-big",
            DropReason::FragBudget => "frag-budget",
            DropReason::FragMisaligned => "frag-misaligned",
            DropReason::FragBadEnd => "frag-bad-end",
            DropReason::BadIcmp => "bad-icmp",
            DropReason::BadUdpLength => "bad-udp-length",
            DropReason::BadUdpChecksum => "bad-udp-checksum",
            DropReason::NoSocket => "no-socket",
            DropReason::RcvbufFull => "rcvbuf-full",
            DropReason::NeighbourQueueFull => "neighbour-queue-full",
            DropReason::NeighbourUnreachable => "neighbour-unreachable",
            DropReason::BadTcp => "bad-tcp",
            DropReason::BadTcpChecksum => "bad-tcp-checksum",
            DropReason::TcpNoSocket => "tcp-no-socket",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One saturating counter per [`DropReason`], indexed by discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::COUNT],
}

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters {
            counts: [0; DropReason::COUNT],
        }
    }
}

impl DropCounters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds counters from a plain array (e.g. read from a shared page); missing trailing
    /// entries count as zero, extra ones (reasons unknown to this build) are ignored.
    pub fn from_slice(counts: &[u64]) -> Self {
        let mut out = Self::default();
        for (dst, src) in out.counts.iter_mut().zip(counts) {
            *dst = *src;
        }
        out
    }

    /// Counts one drop.
    pub fn count(&mut self, reason: DropReason) {
        self.add(reason, 1);
    }

    /// Counts `n` drops.
    pub fn add(&mut self, reason: DropReason, n: u64) {
        let c = &mut self.counts[reason.index()];
        *c = c.saturating_add(n);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Sum over every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &DropCounters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Every reason with its count, in discriminant order (zeros included).
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(move |&r| (r, self.counts[r.index()]))
    }

    /// The reasons with a non-zero count, for display.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        self.iter().filter(|&(_, n)| n > 0)
    }

    /// The raw array, indexed by discriminant (for publishing in shared memory).
    pub fn as_array(&self) -> &[u64; DropReason::COUNT] {
        &self.counts
    }
}

impl core::ops::AddAssign<&DropCounters> for DropCounters {
    fn add_assign(&mut self, rhs: &DropCounters) {
        self.merge(rhs);
    }
}

impl fmt::Display for DropCounters {
    /// `reason n reason n ...` over the non-zero counters, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (r, n) in self.nonzero() {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{r} {n}")?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbering_is_stable_and_dense() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
            assert_eq!(DropReason::from_u8(i as u8), Some(*r));
        }
        assert_eq!(DropReason::from_u8(DropReason::COUNT as u8), None);
        assert_eq!(DropReason::from_u8(255), None);
        // Pinned values: changing these breaks pages published by older clients.
        assert_eq!(DropReason::Truncated as u8, 0);
        assert_eq!(DropReason::FragOverlap as u8, 10);
        assert_eq!(DropReason::NoSocket as u8, 19);
        assert_eq!(DropReason::NeighbourUnreachable as u8, 22);
    }

    #[test]
    fn names_are_unique_kebab_case() {
        let names: HashSet<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        for n in names {
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{n}");
        }
    }

    #[test]
    fn count_merge_and_display() {
        let mut a = DropCounters::new();
        assert_eq!(a.to_string(), "none");
        a.count(DropReason::BadArp);
        a.count(DropReason::BadArp);
        a.add(DropReason::FragTimeout, 5);
        let mut b = DropCounters::default();
        b.count(DropReason::FragTimeout);
        b.add(DropReason::RcvbufFull, u64::MAX);
        a += &b;
        a.count(DropReason::RcvbufFull);
        assert_eq!(a.get(DropReason::BadArp), 2);
        assert_eq!(a.get(DropReason::FragTimeout), 6);
        assert_eq!(a.get(DropReason::RcvbufFull), u64::MAX, "saturates");
        assert_eq!(a.get(DropReason::NoSocket), 0);
        assert_eq!(a.total(), u64::MAX);
        assert_eq!(a.nonzero().count(), 3);
        assert_eq!(a.iter().count(), DropReason::COUNT);
        assert_eq!(
            b.to_string(),
            format!("frag-timeout 1 rcvbuf-full {}", u64::MAX)
        );
    }

    #[test]
    fn round_trip_through_plain_array() {
        let mut a = DropCounters::new();
        a.add(DropReason::NotForUs, 7);
        a.add(DropReason::NeighbourQueueFull, 3);
        let published: Vec<u64> = a.as_array().to_vec();
        assert_eq!(DropCounters::from_slice(&published), a);
        // A longer array from a newer build: unknown trailing reasons are ignored.
        let mut longer = published.clone();
        longer.push(99);
        assert_eq!(DropCounters::from_slice(&longer), a);
        assert_eq!(
            DropCounters::from_slice(&published[..3]).get(DropReason::NotForUs),
            7
        );
        assert_eq!(DropCounters::from_slice(&[]), DropCounters::new());
    }
}
