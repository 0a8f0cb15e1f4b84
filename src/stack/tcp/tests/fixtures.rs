//! Test fixtures: one constructor per RFC 9293 state, each built by driving the real engine
//! with crafted segments from a scripted peer; segment templates filled with `..TEMPLATE`;
//! `send!` (the peer sends a segment to the engine) and `recv!` (the engine's next output must be
//! exactly these segments) in the style of smoltcp's socket tests.
//!
//! The engine under test is LOCAL with ISS [`LOCAL_ISS`]; the peer is REMOTE with ISS
//! [`REMOTE_ISS`]. The peer offers only an MSS in its SYN, so window scaling, SACK and
//! timestamps are off and every segment is a plain header (option tests live elsewhere).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::stack::tcp::connection::{
    InitialSequence, State, TcpConfig, TcpConnection, TcpListener, Verdict,
};
use crate::stack::tcp::isn::IsnGenerator;
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{TcpControl, TcpOption, TcpOptions, TcpRepr, TcpSeqNumber};

pub const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
pub const REMOTE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 5001);
/// Close to the wrap so that sequence arithmetic crosses zero in longer tests.
pub const LOCAL_ISS: TcpSeqNumber = TcpSeqNumber(0xffff_ff00);
pub const REMOTE_ISS: TcpSeqNumber = TcpSeqNumber(0x1234_5678);
pub const T0: Instant = Instant::from_secs(1000);
pub const PEER_WINDOW: u16 = 65_535;

/// A segment from the peer to the engine; fill in what matters with `..SEND_TEMPL`.
pub const SEND_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: REMOTE.port(),
    dst_port: LOCAL.port(),
    seq_number: TcpSeqNumber(0),
    ack_number: None,
    control: TcpControl::NONE,
    window_len: PEER_WINDOW,
    urgent_pointer: None,
    options: TcpOptions::new(),
    payload: &[],
};

/// A segment from the engine to the peer, as `recv!` expects it (window and options are not
/// compared unless a test checks them explicitly; PSH is not compared).
pub const RECV_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: LOCAL.port(),
    dst_port: REMOTE.port(),
    ..SEND_TEMPL
};

pub fn mss_option(mss: u16) -> TcpOptions {
    let mut options = TcpOptions::new();
    options
        .push(TcpOption::MaxSegmentSize(mss))
        .expect("an MSS option fits");
    options
}

/// The peer's SYN: only an MSS option.
pub fn peer_syn() -> TcpRepr<'static> {
    TcpRepr {
        seq_number: REMOTE_ISS,
        control: TcpControl::SYN,
        options: mss_option(1460),
        ..SEND_TEMPL
    }
}

/// One segment the engine emitted (payload owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub repr: TcpRepr<'static>,
    pub payload: Vec<u8>,
}

impl Sent {
    pub fn flags(&self) -> TcpControl {
        self.repr.control
    }
    pub fn seq(&self) -> TcpSeqNumber {
        self.repr.seq_number
    }
    pub fn ack(&self) -> Option<TcpSeqNumber> {
        self.repr.ack_number
    }
    pub fn window(&self) -> u16 {
        self.repr.window_len
    }
    /// Whether it has the same ports, seq, ack, SYN/FIN/RST and payload as `want`.
    pub fn matches(&self, want: &TcpRepr<'_>) -> bool {
        let (c, w) = (self.repr.control, want.control);
        self.repr.src_port == want.src_port
            && self.repr.dst_port == want.dst_port
            && self.repr.seq_number == want.seq_number
            && self.repr.ack_number == want.ack_number
            && (c.syn, c.fin, c.rst) == (w.syn, w.fin, w.rst)
            && self.payload == want.payload
    }
}

/// Drains everything `dispatch` emits at `now`.
pub fn drain(conn: &mut TcpConnection, now: Instant) -> Vec<Sent> {
    let mut out = Vec::new();
    conn.dispatch(now, &mut |seg| {
        assert!(
            seg.repr.payload.is_empty(),
            "Outgoing carries its payload in `payload`"
        );
        out.push(Sent {
            repr: TcpRepr {
                payload: &[],
                ..seg.repr
            },
            payload: [seg.payload[0], seg.payload[1]].concat(),
        });
        Ok(())
    });
    out
}

/// An engine under test and its clock.
#[derive(Debug, Clone)]
pub struct Fx {
    pub conn: TcpConnection,
    pub now: Instant,
}

impl Fx {
    /// The peer sends `seg`.
    pub fn send(&mut self, seg: &TcpRepr<'_>) -> Verdict {
        self.conn.process(self.now, seg)
    }

    /// What the engine emits now.
    pub fn out(&mut self) -> Vec<Sent> {
        drain(&mut self.conn, self.now)
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Moves the clock to the engine's next deadline (panics if it has none: the test expects one).
    pub fn run_to_deadline(&mut self) -> Instant {
        let at = self.conn.poll_at().expect("a timer is armed");
        self.now = self.now.max(at);
        self.now
    }

    pub fn state(&self) -> State {
        self.conn.state()
    }

    /// Export → import at the same instant.
    pub fn migrated(&self) -> Fx {
        let image = self.conn.export(self.now);
        let conn = TcpConnection::import(&image, self.now).expect("own image imports");
        Fx {
            conn,
            now: self.now,
        }
    }
}

/// The peer sends a segment: `send!(fx, TcpRepr { .. })`, optionally `=> Verdict`.
macro_rules! send {
    ($fx:expr, $seg:expr) => {{
        let seg = $seg;
        let verdict = $fx.send(&seg);
        assert_eq!(
            verdict,
            $crate::stack::tcp::connection::Verdict::Accepted,
            "segment {seg:?} in {:?}",
            $fx.state()
        );
    }};
    ($fx:expr, $seg:expr => $verdict:expr) => {{
        let seg = $seg;
        assert_eq!(
            $fx.send(&seg),
            $verdict,
            "segment {seg:?} in {:?}",
            $fx.state()
        );
    }};
}

/// The engine's output now must be exactly these segments (compared with [`Sent::matches`]);
/// returns them for further checks.
macro_rules! recv {
    ($fx:expr, [$($seg:expr),* $(,)?]) => {{
        let out = $fx.out();
        let want: Vec<$crate::wire::tcp::TcpRepr<'_>> = vec![$($seg),*];
        assert_eq!(out.len(), want.len(), "in {:?}: got {out:#?}\nwant {want:#?}", $fx.state());
        for (got, want) in out.iter().zip(&want) {
            assert!(got.matches(want), "in {:?}: got {got:#?}\nwant {want:#?}", $fx.state());
        }
        out
    }};
}

pub(crate) use recv;
pub(crate) use send;

pub fn config() -> TcpConfig {
    TcpConfig::default()
}

pub fn initial() -> InitialSequence {
    InitialSequence {
        iss: LOCAL_ISS,
        ts_offset: 0,
    }
}

// ----- one constructor per state ---------------------------------------------------------

/// LISTEN: a listener on LOCAL (its ISNs come from a fixed secret).
pub fn listen() -> TcpListener {
    TcpListener::new(config(), LOCAL, IsnGenerator::new([7; 16]))
}

/// SYN_SENT: `connect` has sent its SYN.
pub fn syn_sent_with(config: TcpConfig) -> Fx {
    let conn = TcpConnection::connect(config, LOCAL, REMOTE, initial(), T0);
    let mut fx = Fx { conn, now: T0 };
    let out = recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS,
            control: TcpControl::SYN,
            ..RECV_TEMPL
        }]
    );
    assert!(
        out[0].repr.options.max_seg_size().is_some(),
        "SYN carries an MSS"
    );
    assert_eq!(fx.state(), State::SynSent);
    fx
}

pub fn syn_sent() -> Fx {
    syn_sent_with(config())
}

/// SYN_RECEIVED (passive): the peer's SYN accepted, SYN-ACK sent.
pub fn syn_received() -> Fx {
    let conn = TcpConnection::accept(config(), LOCAL, REMOTE, &peer_syn(), initial(), T0)
        .expect("a plain SYN is accepted");
    let mut fx = Fx { conn, now: T0 };
    recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS,
            ack_number: Some(REMOTE_ISS + 1),
            control: TcpControl::SYN,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(fx.state(), State::SynReceived);
    fx
}

/// ESTABLISHED (active open), nothing in flight.
pub fn established_with(config: TcpConfig) -> Fx {
    let mut fx = syn_sent_with(config);
    fx.advance(Duration::from_millis(10));
    send!(
        fx,
        TcpRepr {
            seq_number: REMOTE_ISS,
            ack_number: Some(LOCAL_ISS + 1),
            control: TcpControl::SYN,
            options: mss_option(1460),
            ..SEND_TEMPL
        }
    );
    let out = recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS + 1,
            ack_number: Some(REMOTE_ISS + 1),
            ..RECV_TEMPL
        }]
    );
    assert!(out[0].window() > 0, "an open receive window");
    assert_eq!(fx.state(), State::Established);
    fx
}

pub fn established() -> Fx {
    established_with(config())
}

/// FIN_WAIT_1: we closed; our FIN (LOCAL_ISS + 1) is unacknowledged.
pub fn fin_wait_1() -> Fx {
    let mut fx = established();
    fx.conn.shutdown_write(fx.now);
    recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS + 1,
            ack_number: Some(REMOTE_ISS + 1),
            control: TcpControl::FIN,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(fx.state(), State::FinWait1);
    fx
}

/// FIN_WAIT_2: our FIN is acknowledged, the peer's is still to come.
pub fn fin_wait_2() -> Fx {
    let mut fx = fin_wait_1();
    send!(
        fx,
        TcpRepr {
            seq_number: REMOTE_ISS + 1,
            ack_number: Some(LOCAL_ISS + 2),
            ..SEND_TEMPL
        }
    );
    recv!(fx, []);
    assert_eq!(fx.state(), State::FinWait2);
    fx
}

/// CLOSE_WAIT: the peer's FIN (REMOTE_ISS + 1) received and acknowledged.
pub fn close_wait() -> Fx {
    let mut fx = established();
    send!(
        fx,
        TcpRepr {
            seq_number: REMOTE_ISS + 1,
            ack_number: Some(LOCAL_ISS + 1),
            control: TcpControl::FIN,
            ..SEND_TEMPL
        }
    );
    recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS + 1,
            ack_number: Some(REMOTE_ISS + 2),
            ..RECV_TEMPL
        }]
    );
    assert_eq!(fx.state(), State::CloseWait);
    fx
}

/// CLOSING: FINs crossed; ours is unacknowledged, theirs acknowledged.
pub fn closing() -> Fx {
    let mut fx = fin_wait_1();
    send!(
        fx,
        TcpRepr {
            seq_number: REMOTE_ISS + 1,
            ack_number: Some(LOCAL_ISS + 1),
            control: TcpControl::FIN,
            ..SEND_TEMPL
        }
    );
    recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS + 2,
            ack_number: Some(REMOTE_ISS + 2),
            ..RECV_TEMPL
        }]
    );
    assert_eq!(fx.state(), State::Closing);
    fx
}

/// LAST_ACK: the peer closed first, then we did; our FIN is unacknowledged.
pub fn last_ack() -> Fx {
    let mut fx = close_wait();
    fx.conn.shutdown_write(fx.now);
    recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS + 1,
            ack_number: Some(REMOTE_ISS + 2),
            control: TcpControl::FIN,
            ..RECV_TEMPL
        }]
    );
    assert_eq!(fx.state(), State::LastAck);
    fx
}

/// TIME_WAIT: both FINs exchanged and acknowledged, we closed first.
pub fn time_wait() -> Fx {
    let mut fx = fin_wait_2();
    send!(
        fx,
        TcpRepr {
            seq_number: REMOTE_ISS + 1,
            ack_number: Some(LOCAL_ISS + 2),
            control: TcpControl::FIN,
            ..SEND_TEMPL
        }
    );
    recv!(
        fx,
        [TcpRepr {
            seq_number: LOCAL_ISS + 2,
            ack_number: Some(REMOTE_ISS + 2),
            ..RECV_TEMPL
        }]
    );
    assert_eq!(fx.state(), State::TimeWait);
    fx
}
