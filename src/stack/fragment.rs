//! Send-side IPv4 fragment planner (RFC 791 §2.3 "Fragmentation", §3.2; Linux `ip_do_fragment`).
//!
//! Given the IP payload length (transport header + data), the link MTU and the IP header length
//! (options included), [`plan`] yields the fragments to emit as `(offset, len, more_frags)`
//! over the payload, allocation-free. Contract:
//! - every non-final fragment carries a multiple of 8 payload bytes and fits the MTU with its
//!   header; the fragments are in order, contiguous and cover the payload exactly once;
//! - a payload that fits the MTU yields one fragment `(0, len, false)` (even when empty);
//! - too big with DF set, or a datagram over 65535 bytes whatever DF says, is
//!   [`FragmentError::MessageTooLong`] (EMSGSIZE, as Linux).
//!
//! Every fragment repeats the same header length: like Linux, options not copied into later
//! fragments are overwritten with NOPs rather than removed (`ip_options_fragment`).
#![forbid(unsafe_code)]

use core::fmt;

/// Largest IPv4 datagram, header included (the 16-bit total length field).
pub const MAX_DATAGRAM: usize = 65535;
/// IPv4 header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// IPv4 header with the most options (IHL = 15).
pub const MAX_HEADER_LEN: usize = 60;

/// One fragment of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of this fragment's data in the payload, in bytes (a multiple of 8).
    pub offset: usize,
    /// Payload bytes in this fragment.
    pub len: usize,
    /// The MF flag: set on every fragment but the last.
    pub more_frags: bool,
}

impl Fragment {
    /// The 13-bit fragment offset field value (units of 8 bytes).
    pub fn offset_field(&self) -> u16 {
        // offset <= MAX_DATAGRAM, so offset / 8 < 2^13.
        (self.offset / 8) as u16
    }
}

/// Why a datagram cannot be sent as planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// Larger than the MTU with DF set, or than 65535 bytes: EMSGSIZE.
    MessageTooLong,
    /// The MTU cannot carry the header and 8 bytes of payload (below the IPv4 minimum of 68
    /// with full options): EMSGSIZE as well, kept apart for diagnosis.
    MtuTooSmall,
    /// A header length that is not 20..=60 and a multiple of 4 (a caller bug): EINVAL.
    BadHeaderLen,
}

impl FragmentError {
    pub fn errno(self) -> i32 {
        match self {
            FragmentError::MessageTooLong | FragmentError::MtuTooSmall => libc::EMSGSIZE,
            FragmentError::BadHeaderLen => libc::EINVAL,
        }
    }
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FragmentError::MessageTooLong => "message too long",
            FragmentError::MtuTooSmall => "MTU too small to fragment",
            FragmentError::BadHeaderLen => "bad IPv4 header length",
        })
    }
}

impl std::error::Error for FragmentError {}

/// Plans the fragments of a datagram whose payload is `payload_len` bytes, sent with a
/// `header_len`-byte IPv4 header over a link of `mtu` bytes, with DF = `dont_frag`.
pub fn plan(
    payload_len: usize,
    mtu: usize,
    header_len: usize,
    dont_frag: bool,
) -> Result<Fragments, FragmentError> {
    if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) || !header_len.is_multiple_of(4) {
        return Err(FragmentError::BadHeaderLen);
    }
    let total = header_len
        .checked_add(payload_len)
        .ok_or(FragmentError::MessageTooLong)?;
    if total > MAX_DATAGRAM {
        return Err(FragmentError::MessageTooLong);
    }
    if total <= mtu {
        return Ok(Fragments {
            payload_len,
            step: payload_len.max(1),
            next: 0,
            done: false,
        });
    }
    if dont_frag {
        return Err(FragmentError::MessageTooLong);
    }
    let step = (mtu.saturating_sub(header_len)) & !7;
    if step == 0 {
        return Err(FragmentError::MtuTooSmall);
    }
    Ok(Fragments {
        payload_len,
        step,
        next: 0,
        done: false,
    })
}

/// Iterator over the planned fragments, in offset order.
#[derive(Debug, Clone)]
pub struct Fragments {
    payload_len: usize,
    /// Payload bytes per non-final fragment (a multiple of 8 when there are several).
    step: usize,
    next: usize,
    done: bool,
}

impl Fragments {
    /// Whether the datagram goes out whole (a single fragment, MF clear, offset 0).
    pub fn is_whole(&self) -> bool {
        self.step >= self.payload_len
    }
}

impl Iterator for Fragments {
    type Item = Fragment;

    fn next(&mut self) -> Option<Fragment> {
        if self.done {
            return None;
        }
        let offset = self.next;
        let remaining = self.payload_len - offset;
        let len = remaining.min(self.step);
        let more_frags = len < remaining;
        self.next = offset + len;
        self.done = !more_frags;
        Some(Fragment {
            offset,
            len,
            more_frags,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.done {
            0
        } else {
            (self.payload_len - self.next).div_ceil(self.step).max(1)
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Fragments {}

impl core::iter::FusedIterator for Fragments {}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(payload: usize, mtu: usize, hl: usize) -> Vec<(usize, usize, bool)> {
        plan(payload, mtu, hl, false)
            .unwrap()
            .map(|f| (f.offset, f.len, f.more_frags))
            .collect()
    }

    /// The invariants of the module contract, checked on one plan.
    fn check(payload: usize, mtu: usize, hl: usize) {
        let it = plan(payload, mtu, hl, false).unwrap();
        let expect = it.len();
        let all: Vec<Fragment> = it.collect();
        assert_eq!(all.len(), expect, "{payload} {mtu} {hl}");
        let mut next = 0;
        for (i, f) in all.iter().enumerate() {
            assert_eq!(f.offset, next);
            assert!(hl + f.len <= mtu || all.len() == 1);
            let last = i + 1 == all.len();
            assert_eq!(f.more_frags, !last);
            if !last {
                assert_eq!(f.len % 8, 0);
                assert!(f.len > 0);
            }
            next += f.len;
        }
        assert_eq!(next, payload);
    }

    #[test]
    fn fits_in_one() {
        assert_eq!(frags(1472, 1500, 20), vec![(0, 1472, false)]);
        assert_eq!(frags(0, 1500, 20), vec![(0, 0, false)]);
        assert!(plan(1472, 1500, 20, true).unwrap().is_whole());
        assert_eq!(plan(1472, 1500, 20, true).unwrap().len(), 1);
    }

    #[test]
    fn ethernet_8000_bytes() {
        // 8008 = UDP header + 8000: 1480 per fragment (1480 % 8 == 0).
        assert_eq!(
            frags(8008, 1500, 20),
            vec![
                (0, 1480, true),
                (1480, 1480, true),
                (2960, 1480, true),
                (4440, 1480, true),
                (5920, 1480, true),
                (7400, 608, false)
            ]
        );
        assert_eq!(frags(8008, 1500, 20)[1].0 / 8, 185);
    }

    #[test]
    fn options_and_odd_mtus_round_down_to_8() {
        // 1500 - 24 = 1476 → 1472 per fragment.
        assert_eq!(
            frags(3000, 1500, 24),
            vec![(0, 1472, true), (1472, 1472, true), (2944, 56, false)]
        );
        // Minimum IPv4 MTU with full options: 8 bytes per fragment.
        assert_eq!(
            frags(20, 68, 60),
            vec![(0, 8, true), (8, 8, true), (16, 4, false)]
        );
        for mtu in [68, 69, 575, 576, 1006, 1280, 1499, 1500, 9000] {
            for payload in [0, 1, 7, 8, 9, 1472, 1473, 1480, 1481, 4000, 65515] {
                for hl in [20, 24, 60] {
                    if payload + hl <= MAX_DATAGRAM {
                        check(payload, mtu, hl);
                    }
                }
            }
        }
    }

    #[test]
    fn exact_multiple_has_no_empty_tail() {
        assert_eq!(
            frags(2960, 1500, 20),
            vec![(0, 1480, true), (1480, 1480, false)]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            plan(1481, 1500, 20, true).unwrap_err(),
            FragmentError::MessageTooLong
        );
        assert_eq!(
            plan(65516, 1500, 20, false).unwrap_err(),
            FragmentError::MessageTooLong
        );
        assert_eq!(
            plan(65516, 70000, 20, false).unwrap_err(),
            FragmentError::MessageTooLong
        );
        assert!(plan(65515, 1500, 20, false).is_ok());
        assert_eq!(
            plan(usize::MAX, 1500, 20, false).unwrap_err(),
            FragmentError::MessageTooLong
        );
        assert_eq!(
            plan(100, 27, 20, false).unwrap_err(),
            FragmentError::MtuTooSmall
        );
        assert_eq!(
            plan(100, 0, 20, false).unwrap_err(),
            FragmentError::MtuTooSmall
        );
        assert_eq!(
            plan(100, 1500, 19, false).unwrap_err(),
            FragmentError::BadHeaderLen
        );
        assert_eq!(
            plan(100, 1500, 22, false).unwrap_err(),
            FragmentError::BadHeaderLen
        );
        assert_eq!(
            plan(100, 1500, 64, false).unwrap_err(),
            FragmentError::BadHeaderLen
        );
        assert_eq!(FragmentError::MessageTooLong.errno(), libc::EMSGSIZE);
    }

    #[test]
    fn largest_datagram_offsets_fit_13_bits() {
        let last = plan(65515, 1500, 20, false).unwrap().last().unwrap();
        assert!(!last.more_frags);
        assert_eq!(last.offset + last.len, 65515);
        assert!(last.offset_field() < 1 << 13);
        let mut it = plan(65515, 1500, 20, false).unwrap();
        assert_eq!(it.len(), 45);
        it.by_ref().for_each(drop);
        assert_eq!(it.next(), None);
        assert_eq!(it.len(), 0);
    }
}
