//! Descriptors libmsock holds for itself (control and upcall sockets, epoll set, routing region
//! and stats memfds, packet channels, placeholder library ends, crash records), protected from
//! the program: many programs close every descriptor they do not know (inetd before exec'ing a
//! service, daemons, `closefrom`), which would cut msock's session and channels from under
//! it. The C edge refuses a program's `close` of a protected descriptor with EBADF (to the
//! program it is not open), skips them in `close_range`/`closefrom`, and refuses `dup2` onto
//! one with EBUSY (as Linux does when it races an open). OpenOnload protects its own
//! descriptors the same way.
//!
//! msock's descriptors are also moved to high numbers ([`relocation_base`]): programs that
//! close stdin and then expect `open`/`dup` to return 0 (tcpserver, daemons) must find the
//! low numbers free.
//!
//! A descriptor is protected where msock creates or receives it ([`protect`]) and released
//! when msock itself closes it ([`release`], called by the C edge for every close made from
//! inside msock, so a number the kernel hands out again is the program's). One bit per
//! number below [`LIMIT`]; larger numbers are not protected.
#![forbid(unsafe_code)]

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptor numbers below this are tracked.
pub const LIMIT: usize = 1 << 16;

static BITS: [AtomicU64; LIMIT / 64] = [const { AtomicU64::new(0) }; LIMIT / 64];

fn slot(fd: RawFd) -> Option<(&'static AtomicU64, u64)> {
    let n = usize::try_from(fd).ok().filter(|&n| n < LIMIT)?;
    Some((&BITS[n / 64], 1u64 << (n % 64)))
}

/// The lowest number msock moves its own descriptors to: three quarters of the soft
/// RLIMIT_NOFILE, at most 1024 (at least 3), read once. Not higher: every `fork` copies, and
/// every exit walks, a descriptor table as large as the highest open number (16384 entries
/// for a base of 15000, a measurable part of a fork-per-connection server's fork).
pub fn relocation_base() -> RawFd {
    static BASE: std::sync::OnceLock<RawFd> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let base = (soft.saturating_mul(3) / 4).min(1024);
        RawFd::try_from(base.min(LIMIT as u64 / 2))
            .unwrap_or(768)
            .max(3)
    })
}

/// Marks `fd` as msock's own.
pub fn protect(fd: RawFd) {
    if let Some((word, bit)) = slot(fd) {
        word.fetch_or(bit, Ordering::AcqRel);
    }
}

/// `fd` is being closed by msock (or was never msock's): the program may have the number.
pub fn release(fd: RawFd) {
    if let Some((word, bit)) = slot(fd) {
        word.fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Whether `fd` is msock's own (one atomic load).
pub fn is_protected(fd: RawFd) -> bool {
    slot(fd).is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
}

/// The maximal runs of unprotected numbers in `first..=last`, for `close_range`.
pub fn unprotected_runs(first: u32, last: u32) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    let mut start: Option<u32> = None;
    let tracked_end = last.min(LIMIT as u32 - 1);
    let mut n = first;
    while n <= tracked_end {
        let prot = is_protected(n as RawFd);
        match (prot, start) {
            (true, Some(s)) => {
                runs.push((s, n - 1));
                start = None;
            }
            (false, None) => start = Some(n),
            _ => {}
        }
        n += 1;
    }
    match start {
        Some(s) => runs.push((s, last)),
        None if last > tracked_end && first <= last => {
            runs.push((tracked_end.max(first.saturating_sub(1)) + 1, last))
        }
        None => {}
    }
    runs.retain(|&(a, b)| a <= b);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protect_release_and_bounds() {
        assert!(!is_protected(40_001));
        protect(40_001);
        assert!(is_protected(40_001));
        assert!(!is_protected(40_000) && !is_protected(40_002));
        release(40_001);
        assert!(!is_protected(40_001));
        protect(-1);
        protect(LIMIT as RawFd);
        assert!(!is_protected(-1) && !is_protected(LIMIT as RawFd));
    }

    #[test]
    fn runs_skip_protected_numbers() {
        for fd in [50_010, 50_011, 50_020] {
            protect(fd);
        }
        assert_eq!(
            unprotected_runs(50_000, 50_030),
            vec![(50_000, 50_009), (50_012, 50_019), (50_021, 50_030)]
        );
        assert_eq!(unprotected_runs(50_010, 50_011), vec![]);
        assert_eq!(
            unprotected_runs(60_000, u32::MAX),
            vec![(60_000, u32::MAX)],
            "numbers beyond LIMIT are never protected"
        );
        for fd in [50_010, 50_011, 50_020] {
            release(fd);
        }
    }
}
