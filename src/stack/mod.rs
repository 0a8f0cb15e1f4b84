//! Sans-I/O protocol logic of msock's IP layer (paper §3: the protocol code that runs in the
//! netserver and, for cached sockets, in each client process; §7.1: the send and receive paths
//! it sits on).
//!
//! Nothing here reads a clock, touches a socket or makes a system call: time comes in as an
//! [`Instant`] argument, and what must go out (an ARP request, a dropped datagram to count) comes
//! back as a return value. Every engine is deterministic and says when it next needs to run
//! (`poll_at`), so the netserver's event loop and the tests drive it the same way.
//!
//! - [`arp_cache`]: the neighbour cache (RFC 826 merge rule, Linux-like request retries and
//!   refresh probes), bounded against floods.
//! - [`reassembly`]: IPv4 reassembly (RFC 791, RFC 815 ranges, RFC 5722-style overlap policy),
//!   bounded in bytes and datagrams, 30 s timeout.
//! - [`fragment`]: the send-side fragment planner (RFC 791 §3.2), allocation-free.
//! - [`ports`]: the UDP port table behind `bind` (Linux `udp_lib_get_port` semantics).
//! - [`tcp_ports`]: the TCP port table behind `bind`, `listen` and `connect` (Linux
//!   `inet_csk_get_port` / `__inet_hash_connect` semantics).
//! - [`stats`]: drop reasons with stable numbering and their counters.
#![forbid(unsafe_code)]

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

pub mod arp_cache;
pub mod fragment;
pub mod ports;
pub mod reassembly;
pub mod stats;
pub mod tcp;
pub mod tcp_ports;

pub use arp_cache::{ArpAction, ArpCache, ArpConfig, Lookup};
pub use fragment::{Fragment, FragmentError, Fragments};
pub use ports::{BindError, BindRequest, PortConfig, PortTable};
pub use reassembly::{Dropped, FragError, FragKey, Reassembled, Reassembler, ReassemblyLimits};
pub use stats::{DropCounters, DropReason};

/// A point in time, in microseconds since an arbitrary epoch chosen by the caller (the
/// netserver uses its start). Arithmetic saturates: no input makes it panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub const fn from_micros(micros: u64) -> Instant {
        Instant(micros)
    }

    pub const fn from_millis(millis: u64) -> Instant {
        Instant(millis.saturating_mul(1000))
    }

    pub const fn from_secs(secs: u64) -> Instant {
        Instant(secs.saturating_mul(1_000_000))
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Time elapsed since `earlier`, or zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }

    /// Time elapsed since `earlier`, or `None` if `earlier` is later.
    pub const fn checked_duration_since(self, earlier: Instant) -> Option<Duration> {
        match self.0.checked_sub(earlier.0) {
            Some(d) => Some(Duration(d)),
            None => None,
        }
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_sub(rhs.0))
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, rhs: Duration) {
        *self = *self - rhs;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating: an earlier minus a later instant is zero.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// A span of time in microseconds. Arithmetic saturates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const MAX: Duration = Duration(u64::MAX);

    pub const fn from_micros(micros: u64) -> Duration {
        Duration(micros)
    }

    pub const fn from_millis(millis: u64) -> Duration {
        Duration(millis.saturating_mul(1000))
    }

    pub const fn from_secs(secs: u64) -> Duration {
        Duration(secs.saturating_mul(1_000_000))
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, rhs: Duration) -> Duration {
        Duration(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Duration {
    type Output = Duration;
    fn sub(self, rhs: Duration) -> Duration {
        Duration(self.0.saturating_sub(rhs.0))
    }
}

impl core::ops::Mul<u32> for Duration {
    type Output = Duration;
    fn mul(self, rhs: u32) -> Duration {
        Duration(self.0.saturating_mul(u64::from(rhs)))
    }
}

impl From<std::time::Duration> for Duration {
    /// Saturates at `Duration::MAX` (584 554 years).
    fn from(d: std::time::Duration) -> Duration {
        Duration(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> std::time::Duration {
        std::time::Duration::from_micros(d.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_secs(2);
        assert_eq!(
            t + Duration::from_millis(500),
            Instant::from_micros(2_500_000)
        );
        assert_eq!(t - Duration::from_secs(5), Instant::ZERO);
        assert_eq!(
            Instant(u64::MAX) + Duration::from_secs(1),
            Instant(u64::MAX)
        );
        assert_eq!(
            Instant::from_secs(1) - Instant::from_secs(3),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_secs(3) - Instant::from_secs(1),
            Duration::from_secs(2)
        );
        assert_eq!(
            Instant::from_secs(1).checked_duration_since(Instant::from_secs(3)),
            None
        );
        assert_eq!(Instant::from_millis(1500).to_string(), "1.500000s");
    }

    #[test]
    fn duration_conversions() {
        assert_eq!(
            Duration::from(std::time::Duration::from_millis(3)),
            Duration::from_micros(3000)
        );
        assert_eq!(
            std::time::Duration::from(Duration::from_secs(4)),
            std::time::Duration::from_secs(4)
        );
        assert_eq!(Duration::from(std::time::Duration::MAX), Duration::MAX);
        assert_eq!(Duration::from_secs(1) * 3, Duration::from_secs(3));
        assert_eq!(Duration::from_secs(3).as_millis(), 3000);
    }
}
