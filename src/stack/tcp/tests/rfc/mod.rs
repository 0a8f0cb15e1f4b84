//! Focused RFC behaviour tests of the TCP engine: one test per behaviour, each driving a real
//! [`TcpConnection`] with crafted segments from a scripted peer and a virtual clock, and
//! asserting what `dispatch` emits (flags, sequence numbers, windows, options), the state, the
//! errors, the drop counters and the `poll_at` deadlines. A test here fails when the behaviour
//! it names is removed from the engine.
//!
//! Fixtures: [`open`] builds an ESTABLISHED connection by active open against a peer whose
//! SYN-ACK carries the options chosen in [`PeerOpts`]; [`snd`]/[`rcv`] name the engine's and the
//! peer's byte offsets in sequence space; [`seg`], [`with_ts`], [`with_sack`] build the peer's
//! segments on top of the shared templates of `tests::fixtures`.
//!
//! Topics: `rfc5961` (blind-attack hardening), `rto` (RFC 6298), `recovery` (fast retransmit,
//! NewReno, SACK), `congestion` (CUBIC/Reno), `options` (handshake negotiation), `timestamps`
//! (RFC 7323), `windows` (silly-window avoidance, zero window, out-of-order), `acks` (delayed
//! ACK), `sending` (Nagle, cork, urgent, pacing, PMTU), `closing` (half-close, keepalive,
//! linger, TIME_WAIT, resets), `bad_input`, `info` (TCP_INFO).

mod acks;
mod bad_input;
mod closing;
mod congestion;
mod info;
mod options;
mod recovery;
mod rfc5961;
mod rto;
mod sending;
mod timestamps;
mod windows;

use super::fixtures::{
    Fx, LOCAL, LOCAL_ISS, PEER_WINDOW, RECV_TEMPL, REMOTE, REMOTE_ISS, SEND_TEMPL, Sent, T0,
    initial,
};
use crate::stack::tcp::connection::{State, TcpConfig, TcpConnection};
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{SackBlocks, TcpControl, TcpOption, TcpOptions, TcpRepr, TcpSeqNumber};

/// How long the handshake takes in [`open`]: the SYN leaves at T0, the SYN-ACK arrives at
/// T0 + this, which is also the first RTT sample (SRTT 10 ms, RTTVAR 5 ms, RTO clamped to 200 ms).
pub const HANDSHAKE_RTT: Duration = Duration::from_millis(10);

/// Full-sized payload for the default peer (MSS 1460, no timestamps).
pub const MSS: usize = 1460;

/// The options the peer's SYN-ACK (or SYN) carries.
#[derive(Debug, Clone, Copy)]
pub struct PeerOpts {
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    pub sack: bool,
    /// TSval of the peer's SYN-ACK (timestamps offered when `Some`).
    pub tsval: Option<u32>,
    /// Window field of the SYN-ACK (never scaled).
    pub window: u16,
}

impl PeerOpts {
    /// MSS 1460 only: no window scaling, SACK or timestamps.
    pub const PLAIN: PeerOpts = PeerOpts {
        mss: Some(1460),
        wscale: None,
        sack: false,
        tsval: None,
        window: PEER_WINDOW,
    };
    /// Everything Linux offers: MSS 1460, SACK, timestamps (TSval 5000), window scale 7.
    pub const ALL: PeerOpts = PeerOpts {
        mss: Some(1460),
        wscale: Some(7),
        sack: true,
        tsval: Some(PEER_TS0),
        window: PEER_WINDOW,
    };
    pub const SACK: PeerOpts = PeerOpts {
        sack: true,
        ..PeerOpts::PLAIN
    };
    pub const TS: PeerOpts = PeerOpts {
        tsval: Some(PEER_TS0),
        ..PeerOpts::PLAIN
    };
}

/// The peer's first timestamp value.
pub const PEER_TS0: u32 = 5000;

pub fn syn_options(p: PeerOpts) -> TcpOptions {
    let mut o = TcpOptions::new();
    if let Some(mss) = p.mss {
        o.push(TcpOption::MaxSegmentSize(mss)).expect("fits");
    }
    if p.sack {
        o.push(TcpOption::SackPermitted).expect("fits");
    }
    if let Some(tsval) = p.tsval {
        o.push_aligned(TcpOption::Timestamps { tsval, tsecr: 0 })
            .expect("fits");
    }
    if let Some(ws) = p.wscale {
        o.push_aligned(TcpOption::WindowScale(ws)).expect("fits");
    }
    o
}

/// The engine's byte `n` of its stream (sequence ISS + 1 + n).
pub fn snd(n: usize) -> TcpSeqNumber {
    LOCAL_ISS + 1 + n
}

/// The peer's byte `n` of its stream (sequence IRS + 1 + n).
pub fn rcv(n: usize) -> TcpSeqNumber {
    REMOTE_ISS + 1 + n
}

/// A peer segment at its stream offset `seq`, acknowledging the engine's stream up to `ack`.
pub fn seg(seq: usize, ack: usize, payload: &[u8]) -> TcpRepr<'_> {
    TcpRepr {
        seq_number: rcv(seq),
        ack_number: Some(snd(ack)),
        payload,
        ..SEND_TEMPL
    }
}

/// The same segment carrying a timestamps option.
pub fn with_ts(mut s: TcpRepr<'_>, tsval: u32, tsecr: u32) -> TcpRepr<'_> {
    s.options
        .push_aligned(TcpOption::Timestamps { tsval, tsecr })
        .expect("fits");
    s
}

/// The same segment carrying SACK blocks given as engine stream offsets.
pub fn with_sack<'a>(mut s: TcpRepr<'a>, blocks: &[(usize, usize)]) -> TcpRepr<'a> {
    let blocks: Vec<_> = blocks.iter().map(|&(a, b)| (snd(a), snd(b))).collect();
    let sack = SackBlocks::new(&blocks).expect("1 to 4 blocks");
    s.options
        .push_aligned(TcpOption::SackRange(sack))
        .expect("fits");
    s
}

/// Active open against a peer offering `peer`; returns the fixture at T0 + [`HANDSHAKE_RTT`]
/// (ESTABLISHED, the handshake ACK drained), our SYN and our handshake ACK.
pub fn open_full(config: TcpConfig, peer: PeerOpts) -> (Fx, Sent, Sent) {
    let conn = TcpConnection::connect(config, LOCAL, REMOTE, initial(), T0);
    let mut fx = Fx { conn, now: T0 };
    let out = fx.out();
    assert_eq!(out.len(), 1, "one SYN: {out:#?}");
    let syn = out[0].clone();
    assert!(syn.flags().syn && syn.ack().is_none());
    fx.advance(HANDSHAKE_RTT);
    let synack = TcpRepr {
        seq_number: REMOTE_ISS,
        ack_number: Some(LOCAL_ISS + 1),
        control: TcpControl::SYN,
        window_len: peer.window,
        options: syn_options(peer),
        ..SEND_TEMPL
    };
    let verdict = fx.send(&synack);
    assert_eq!(verdict, crate::stack::tcp::connection::Verdict::Accepted);
    let out = fx.out();
    assert_eq!(out.len(), 1, "one handshake ACK: {out:#?}");
    let ack = out[0].clone();
    assert!(ack.matches(&TcpRepr {
        seq_number: snd(0),
        ack_number: Some(rcv(0)),
        ..RECV_TEMPL
    }));
    assert_eq!(fx.state(), State::Established);
    (fx, syn, ack)
}

pub fn open(config: TcpConfig, peer: PeerOpts) -> Fx {
    open_full(config, peer).0
}

/// ESTABLISHED with the default config against a plain peer.
pub fn plain() -> Fx {
    open(TcpConfig::default(), PeerOpts::PLAIN)
}

/// Default config with TCP_NODELAY.
pub fn nodelay() -> TcpConfig {
    TcpConfig {
        nodelay: true,
        ..TcpConfig::default()
    }
}

/// `n` bytes of a recognisable pattern starting at stream offset `from`.
pub fn pattern(from: usize, n: usize) -> Vec<u8> {
    (from..from + n).map(|i| (i % 251) as u8).collect()
}

/// Queues `n` bytes (pattern from offset `from`), asserting all were taken.
pub fn queue(fx: &mut Fx, from: usize, n: usize) {
    let data = pattern(from, n);
    assert_eq!(fx.conn.send(&data), Ok(n));
}

/// Only the segments carrying payload.
pub fn data_of(out: &[Sent]) -> Vec<&Sent> {
    out.iter().filter(|s| !s.payload.is_empty()).collect()
}

/// (engine stream offset, payload length) of each data segment.
pub fn spans(out: &[Sent]) -> Vec<(usize, usize)> {
    data_of(out)
        .iter()
        .map(|s| ((s.seq() - snd(0)) as usize, s.payload.len()))
        .collect()
}

/// Moves the clock to `t` and drains what the engine emits.
pub fn out_at(fx: &mut Fx, t: Instant) -> Vec<Sent> {
    fx.now = t;
    fx.out()
}

/// Whether `s` is a pure ACK (no payload, no SYN/FIN/RST) acknowledging the peer's offset `n`.
pub fn is_ack_of(s: &Sent, n: usize) -> bool {
    let c = s.flags();
    s.payload.is_empty() && !c.syn && !c.fin && !c.rst && s.ack() == Some(rcv(n))
}

/// Feeds `count` in-order segments of `len` bytes from the peer starting at its offset `from`,
/// draining after each; used to use up the start-of-connection quick-ACK budget (Linux ACKs
/// the first 16 data segments at once). Returns the next offset.
pub fn leave_quickack(fx: &mut Fx, from: usize) -> usize {
    let mut off = from;
    let data = [7u8; 10];
    for _ in 0..16 {
        let v = fx.send(&seg(off, 0, &data));
        assert_eq!(v, crate::stack::tcp::connection::Verdict::Accepted);
        off += data.len();
        let _ = fx.out();
    }
    off
}
