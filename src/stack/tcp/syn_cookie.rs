//! SYN cookies (RFC 4987 §3.6): when a listener's half-open queue is full, its SYN-ACK's
//! initial sequence number encodes what the connection needs, so no state is kept until the
//! peer's ACK returns it.
//!
//! Layout after Linux's `__cookie_v4_init_sequence`: ISS = H1(4-tuple) + peer ISN +
//! (count << 24 | data << 16 | H2(4-tuple, count, data) mod 2^16), where count advances
//! every [`PERIOD`] and H1, H2 are SipHash-2-4 under the host's secret in their own hash
//! domains. `data` (8 bits) carries the peer's MSS as an index into [`MSS_TABLE`], whether it
//! offered SACK and timestamps, and its window-scale shift (Linux hides the last three in the
//! TSval, which only exists when timestamps were offered); H2 authenticates it, so an ACK
//! whose numbers are off by a little is refused instead of decoding other options. A cookie
//! is accepted for [`MAX_AGE`] periods after its own. A blind attacker's ACK passes with
//! probability (MAX_AGE + 1) / 2^8 · 2^-16 ≈ 1.8 · 10^-7.
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use super::isn::siphash24;
use crate::stack::Instant;
use crate::wire::tcp::TcpSeqNumber;

const DOMAIN_H1: u8 = 0x11;
const DOMAIN_H2: u8 = 0x12;

/// MSS values a cookie can carry (Linux's `msstab`): the largest not above the peer's is used.
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
/// Seconds per count (Linux: one minute).
pub const PERIOD: u64 = 64;
/// Counts a cookie stays valid after the one it was made in.
pub const MAX_AGE: u32 = 2;
/// Window-scale value meaning "no window-scale option".
const NO_WSCALE: u8 = 15;

/// What a cookie remembers of the peer's SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieOptions {
    pub mss: u16,
    pub sack: bool,
    pub timestamps: bool,
    /// The peer's window-scale shift (0–14), `None` without the option.
    pub window_scale: Option<u8>,
}

impl CookieOptions {
    /// The options of a SYN, MSS rounded down to the table (536 without an MSS option).
    pub fn from_syn(
        mss: Option<u16>,
        sack: bool,
        timestamps: bool,
        window_scale: Option<u8>,
    ) -> CookieOptions {
        let mss = mss.unwrap_or(536);
        let index = MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0);
        CookieOptions {
            mss: MSS_TABLE[index],
            sack,
            timestamps,
            window_scale: window_scale.map(|s| s.min(14)),
        }
    }

    fn encode(self) -> u32 {
        let index = MSS_TABLE.iter().position(|&m| m == self.mss).unwrap_or(0) as u32;
        index
            | u32::from(self.sack) << 2
            | u32::from(self.timestamps) << 3
            | u32::from(self.window_scale.unwrap_or(NO_WSCALE)) << 4
    }

    fn decode(data: u32) -> CookieOptions {
        let shift = ((data >> 4) & 0xf) as u8;
        CookieOptions {
            mss: MSS_TABLE[(data & 3) as usize],
            sack: data & 4 != 0,
            timestamps: data & 8 != 0,
            window_scale: (shift != NO_WSCALE).then_some(shift.min(14)),
        }
    }
}

/// Makes and checks cookies under one secret.
#[derive(Clone)]
pub struct SynCookies {
    secret: [u8; 16],
}

impl core::fmt::Debug for SynCookies {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SynCookies { secret: <hidden> }")
    }
}

fn count_at(now: Instant) -> u32 {
    (now.as_micros() / 1_000_000 / PERIOD) as u32
}

fn tuple(domain: u8, local: SocketAddrV4, remote: SocketAddrV4) -> [u8; 17] {
    let mut msg = [0u8; 17];
    msg[0] = domain;
    msg[1..5].copy_from_slice(&local.ip().octets());
    msg[5..7].copy_from_slice(&local.port().to_be_bytes());
    msg[7..11].copy_from_slice(&remote.ip().octets());
    msg[11..13].copy_from_slice(&remote.port().to_be_bytes());
    msg
}

impl SynCookies {
    pub fn new(secret: [u8; 16]) -> SynCookies {
        SynCookies { secret }
    }

    fn h1(&self, local: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        siphash24(&self.secret, &tuple(DOMAIN_H1, local, remote)[..13]) as u32
    }

    /// The 16-bit authenticator of `data` made in `count`.
    fn h2(&self, local: SocketAddrV4, remote: SocketAddrV4, count: u32, data: u32) -> u32 {
        let mut msg = [0u8; 18];
        msg[..17].copy_from_slice(&tuple(DOMAIN_H2, local, remote));
        msg[13..17].copy_from_slice(&count.to_be_bytes());
        msg[17] = data as u8;
        siphash24(&self.secret, &msg) as u32 & 0xffff
    }

    /// The ISS of a cookie SYN-ACK answering a SYN with sequence number `peer_isn`.
    pub fn make(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        peer_isn: TcpSeqNumber,
        options: CookieOptions,
        now: Instant,
    ) -> TcpSeqNumber {
        let count = count_at(now);
        let data = options.encode();
        let stamp = count << 24 | data << 16 | self.h2(local, remote, count, data);
        TcpSeqNumber(
            self.h1(local, remote)
                .wrapping_add(peer_isn.0)
                .wrapping_add(stamp),
        )
    }

    /// Checks the ACK of a cookie: `ack` is its acknowledgement number (cookie + 1) and `seq`
    /// its sequence number (peer ISN + 1). Returns the peer's options if the cookie is ours
    /// and recent.
    pub fn check(
        &self,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seq: TcpSeqNumber,
        ack: TcpSeqNumber,
        now: Instant,
    ) -> Option<CookieOptions> {
        let cookie = ack.0.wrapping_sub(1);
        let peer_isn = seq.0.wrapping_sub(1);
        let diff = cookie
            .wrapping_sub(self.h1(local, remote))
            .wrapping_sub(peer_isn);
        let now_count = count_at(now);
        // Only the low 8 bits of the count survive; the age is taken modulo 256.
        let count_low = diff >> 24;
        let age = (now_count.wrapping_sub(count_low)) & 0xff;
        if age > MAX_AGE {
            return None;
        }
        let count = now_count.wrapping_sub(age);
        let data = (diff >> 16) & 0xff;
        if diff & 0xffff != self.h2(local, remote, count, data) {
            return None;
        }
        Some(CookieOptions::decode(data))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80);
    const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);

    fn options() -> CookieOptions {
        CookieOptions::from_syn(Some(1460), true, true, Some(7))
    }

    #[test]
    fn a_cookie_round_trips_its_options() {
        let cookies = SynCookies::new([5; 16]);
        let now = Instant::from_secs(1000);
        for opts in [
            options(),
            CookieOptions::from_syn(None, false, false, None),
            CookieOptions::from_syn(Some(1400), true, false, Some(14)),
            CookieOptions::from_syn(Some(9000), false, true, Some(0)),
        ] {
            let peer_isn = TcpSeqNumber(0xdead_beef);
            let iss = cookies.make(LOCAL, REMOTE, peer_isn, opts, now);
            assert_eq!(
                cookies.check(LOCAL, REMOTE, peer_isn + 1, iss + 1, now),
                Some(opts)
            );
        }
        assert_eq!(
            CookieOptions::from_syn(Some(1400), true, false, None).mss,
            1300
        );
        assert_eq!(
            CookieOptions::from_syn(Some(100), true, false, None).mss,
            536
        );
    }

    #[test]
    fn cookies_expire_and_bind_the_four_tuple_and_the_peer_isn() {
        let cookies = SynCookies::new([5; 16]);
        let made = Instant::from_secs(1000);
        let peer_isn = TcpSeqNumber(1234);
        let iss = cookies.make(LOCAL, REMOTE, peer_isn, options(), made);
        let check = |remote, seq, ack, now| cookies.check(LOCAL, remote, seq, ack, now);
        let later = |s: u64| Instant::from_secs(1000 + s);
        assert!(check(REMOTE, peer_isn + 1, iss + 1, later(PERIOD * 2)).is_some());
        assert!(check(REMOTE, peer_isn + 1, iss + 1, later(PERIOD * 4)).is_none());
        let other_port = SocketAddrV4::new(*REMOTE.ip(), 40001);
        assert!(check(other_port, peer_isn + 1, iss + 1, made).is_none());
        assert!(check(REMOTE, peer_isn + 2, iss + 1, made).is_none());
        assert!(check(REMOTE, peer_isn + 1, iss + 2, made).is_none());
        let other_secret = SynCookies::new([6; 16]);
        assert!(
            other_secret
                .check(LOCAL, REMOTE, peer_isn + 1, iss + 1, made)
                .is_none()
        );
    }

    #[test]
    fn blind_guesses_almost_never_pass() {
        let cookies = SynCookies::new([9; 16]);
        let now = Instant::from_secs(5000);
        let mut x: u32 = 0x1234_5678;
        let mut passed = 0;
        for _ in 0..200_000 {
            // xorshift32: arbitrary acknowledgement numbers.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if cookies
                .check(LOCAL, REMOTE, TcpSeqNumber(1), TcpSeqNumber(x), now)
                .is_some()
            {
                passed += 1;
            }
        }
        // Expected 200 000 · 3 / 2^8 · 2^-16 ≈ 0.04.
        assert!(passed <= 2, "{passed} forged cookies passed");
    }
}
