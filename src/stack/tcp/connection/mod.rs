//! One TCP connection (RFC 9293): the transmission control block, the user calls, and the two
//! engine entry points — [`TcpConnection::process`] for an arriving segment
//! ([`input`](self)) and [`TcpConnection::dispatch`] for timers and everything that must go out
//! ([`output`](self)). [`TcpConnection::poll_at`] says when `dispatch` next has work.
//!
//! Sequence space: the send queue's first byte sits at SND.UNA once the SYN is acknowledged
//! (ISS + 1 before); SND.NXT is the next sequence to send and moves back to SND.UNA on a
//! retransmission timeout (go-back-N, skipping SACKed ranges); SND.MAX is the highest sequence
//! ever sent. A FIN occupies the sequence after the last queued byte once the user shut the
//! write side. The receive side keeps RCV.NXT and the right edge last announced (RCV.ADV),
//! which never moves left (RFC 9293 §3.8.6.2.2).
//!
//! Linux parity: defaults (RTO bounds, delayed-ACK times, 60 s TIME_WAIT, quick-ACK at start,
//! window-scale choice, zero-window probes with SEQ = SND.UNA − 1, `tcp_close` sending RST when
//! unread data remains, challenge-ACK limits) follow the kernel so a Linux peer sees a familiar
//! stack.
#![forbid(unsafe_code)]

mod backlog;
mod crash;
mod image;
mod input;
mod listener;
mod output;

use core::fmt;
use std::net::SocketAddrV4;

use super::congestion::{CongestionAlgorithm, CongestionControl};
use super::info::{TCPI_OPT_SACK, TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE, TcpInfo};
use super::recv_buffer::ReceiveBuffer;
use super::rtt::RttEstimator;
use super::scoreboard::Scoreboard;
use super::send_buffer::SendBuffer;
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{TcpRepr, TcpSeqNumber};

pub use backlog::{BacklogStats, DEFAULT_ACCEPT_BACKLOG, DEFAULT_SYN_BACKLOG, TcpBacklog};
pub use listener::{ListenOutcome, TcpListener, reset_for};

/// Bounds a host puts on settings that arrive with a connection it did not open (an image
/// or crash record from a process): [`TcpConnection::apply_limits`]. `Default` follows
/// Linux's own limits (`TCP_RTO_MIN`/`TCP_RTO_MAX`, 15 retries, 2·MSL, `tcp_fin_timeout`,
/// `tcp_rmem`/`tcp_wmem` maxima).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigLimits {
    pub rto_min: Duration,
    pub rto_max: Duration,
    pub retries: u32,
    pub time_wait: Duration,
    pub fin_timeout: Duration,
    pub user_timeout: Duration,
    pub max_buffer: usize,
}

impl Default for ConfigLimits {
    fn default() -> ConfigLimits {
        ConfigLimits {
            rto_min: Duration::from_millis(1),
            rto_max: Duration::from_secs(120),
            retries: 15,
            time_wait: Duration::from_secs(60),
            fin_timeout: Duration::from_secs(120),
            user_timeout: Duration::from_secs(3600),
            max_buffer: 8 << 20,
        }
    }
}

/// Socket-level settings of a connection; `Default` is Linux's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// MSS we advertise (interface MTU − 40).
    pub mss: u16,
    pub recv_buffer: usize,
    pub send_buffer: usize,
    pub window_scaling: bool,
    pub sack: bool,
    pub timestamps: bool,
    pub nodelay: bool,
    pub cork: bool,
    pub oob_inline: bool,
    pub congestion: CongestionAlgorithm,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    pub delayed_ack_min: Duration,
    pub delayed_ack_max: Duration,
    /// 2·MSL (Linux: 60 s).
    pub time_wait: Duration,
    /// How long an orphaned FIN_WAIT_2 waits for the peer's FIN (`tcp_fin_timeout`).
    pub fin_timeout: Duration,
    pub keepalive: bool,
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    pub syn_retries: u32,
    pub synack_retries: u32,
    pub retries2: u32,
    pub user_timeout: Option<Duration>,
    /// SO_LINGER; `Some(0)` makes close abort with RST.
    pub linger: Option<Duration>,
    pub pacing: bool,
    /// SO_MAX_PACING_RATE in bytes/s.
    pub max_pacing_rate: Option<u64>,
}

impl Default for TcpConfig {
    fn default() -> TcpConfig {
        TcpConfig {
            mss: 1460,
            recv_buffer: 256 * 1024,
            send_buffer: 256 * 1024,
            window_scaling: true,
            sack: true,
            timestamps: true,
            nodelay: false,
            cork: false,
            oob_inline: false,
            congestion: CongestionAlgorithm::Cubic,
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(120),
            delayed_ack_min: Duration::from_millis(40),
            delayed_ack_max: Duration::from_millis(200),
            time_wait: Duration::from_secs(60),
            fin_timeout: Duration::from_secs(60),
            keepalive: false,
            keepalive_idle: Duration::from_secs(7200),
            keepalive_interval: Duration::from_secs(75),
            keepalive_count: 9,
            syn_retries: 6,
            synack_retries: 5,
            retries2: 15,
            user_timeout: None,
            linger: None,
            pacing: false,
            max_pacing_rate: None,
        }
    }
}

/// RFC 9293 connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Listen,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
}

impl State {
    /// Linux's `TCP_*` state number (as in `tcpi_state` and /proc/net/tcp).
    pub fn linux_number(self) -> u8 {
        match self {
            State::Established => 1,
            State::SynSent => 2,
            State::SynReceived => 3,
            State::FinWait1 => 4,
            State::FinWait2 => 5,
            State::TimeWait => 6,
            State::Closed => 7,
            State::CloseWait => 8,
            State::LastAck => 9,
            State::Listen => 10,
            State::Closing => 11,
        }
    }

    fn code(self) -> u8 {
        self.linux_number()
    }

    pub(crate) fn from_code(code: u8) -> Option<State> {
        Some(match code {
            1 => State::Established,
            2 => State::SynSent,
            3 => State::SynReceived,
            4 => State::FinWait1,
            5 => State::FinWait2,
            6 => State::TimeWait,
            7 => State::Closed,
            8 => State::CloseWait,
            9 => State::LastAck,
            10 => State::Listen,
            11 => State::Closing,
            _ => return None,
        })
    }

    /// States after the handshake in which both sides have exchanged SYNs.
    pub fn is_synchronized(self) -> bool {
        !matches!(
            self,
            State::Closed | State::Listen | State::SynSent | State::SynReceived
        )
    }
}

impl fmt::Display for State {
    /// The names `ss` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "CLOSED",
            State::Listen => "LISTEN",
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECV",
            State::Established => "ESTAB",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
        })
    }
}

/// The random values a new connection starts from (see `isn::IsnGenerator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialSequence {
    pub iss: TcpSeqNumber,
    pub ts_offset: u32,
}

/// A segment to send: the header (its `payload` is empty) and the payload as the two parts of
/// the send ring; `departure` is the earliest time it may leave (pacing).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub repr: TcpRepr<'a>,
    pub payload: [&'a [u8]; 2],
    pub departure: Instant,
}

impl Outgoing<'_> {
    pub fn payload_len(&self) -> usize {
        self.payload[0].len() + self.payload[1].len()
    }
}

/// The channel could not take the segment; it counts as not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmitError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    WouldBlock,
    NotConnected,
    /// The write side is shut (EPIPE).
    Shutdown,
    Reset,
    TimedOut,
    Refused,
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    WouldBlock,
    NotConnected,
    Reset,
    TimedOut,
    Refused,
    Unreachable,
    /// MSG_OOB with no urgent byte to read, or with SO_OOBINLINE on (EINVAL).
    InvalidOob,
}

impl SendError {
    /// The errno Linux's `send` returns.
    pub fn errno(self) -> i32 {
        match self {
            SendError::WouldBlock => libc::EAGAIN,
            SendError::NotConnected => libc::ENOTCONN,
            SendError::Shutdown => libc::EPIPE,
            SendError::Reset => libc::ECONNRESET,
            SendError::TimedOut => libc::ETIMEDOUT,
            SendError::Refused => libc::ECONNREFUSED,
            SendError::Unreachable => libc::EHOSTUNREACH,
        }
    }
}

impl RecvError {
    /// The errno Linux's `recv` returns.
    pub fn errno(self) -> i32 {
        match self {
            RecvError::WouldBlock => libc::EAGAIN,
            RecvError::NotConnected => libc::ENOTCONN,
            RecvError::Reset => libc::ECONNRESET,
            RecvError::TimedOut => libc::ETIMEDOUT,
            RecvError::Refused => libc::ECONNREFUSED,
            RecvError::Unreachable => libc::EHOSTUNREACH,
            RecvError::InvalidOob => libc::EINVAL,
        }
    }
}

/// A connection's pending error (SO_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    Refused,
    Reset,
    TimedOut,
    HostUnreachable,
    NetUnreachable,
    PortUnreachable,
}

impl ConnError {
    /// The errno Linux reports for it (SO_ERROR, a failed call).
    pub fn errno(self) -> i32 {
        match self {
            ConnError::Refused | ConnError::PortUnreachable => libc::ECONNREFUSED,
            ConnError::Reset => libc::ECONNRESET,
            ConnError::TimedOut => libc::ETIMEDOUT,
            ConnError::HostUnreachable => libc::EHOSTUNREACH,
            ConnError::NetUnreachable => libc::ENETUNREACH,
        }
    }

    fn code(self) -> u8 {
        match self {
            ConnError::Refused => 1,
            ConnError::Reset => 2,
            ConnError::TimedOut => 3,
            ConnError::HostUnreachable => 4,
            ConnError::NetUnreachable => 5,
            ConnError::PortUnreachable => 6,
        }
    }

    fn from_code(code: u8) -> Option<ConnError> {
        Some(match code {
            1 => ConnError::Refused,
            2 => ConnError::Reset,
            3 => ConnError::TimedOut,
            4 => ConnError::HostUnreachable,
            5 => ConnError::NetUnreachable,
            6 => ConnError::PortUnreachable,
            _ => return None,
        })
    }
}

/// Why `process` did not take a segment (counted in [`ConnectionStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpDropReason {
    OutOfWindow = 0,
    PawsRejected = 1,
    ChallengeAck = 2,
    BadAck = 3,
    RstOutOfWindow = 4,
    SynInWindow = 5,
    NoConnection = 6,
    BadState = 7,
    OutOfOrderFull = 8,
    NoAck = 9,
    WrongPorts = 10,
    BadSyn = 11,
    /// An ICMP error quoting a sequence number outside [SND.UNA, SND.NXT) (RFC 5927 §4.1).
    IcmpOutOfWindow = 12,
}

impl TcpDropReason {
    pub const COUNT: usize = 13;

    pub fn name(self) -> &'static str {
        match self {
            TcpDropReason::OutOfWindow => "out-of-window",
            TcpDropReason::PawsRejected => "paws-rejected",
            TcpDropReason::ChallengeAck => "challenge-ack",
            TcpDropReason::BadAck => "bad-ack",
            TcpDropReason::RstOutOfWindow => "rst-out-of-window",
            TcpDropReason::SynInWindow => "syn-in-window",
            TcpDropReason::NoConnection => "no-connection",
            TcpDropReason::BadState => "bad-state",
            TcpDropReason::OutOfOrderFull => "out-of-order-full",
            TcpDropReason::NoAck => "no-ack",
            TcpDropReason::WrongPorts => "wrong-ports",
            TcpDropReason::BadSyn => "bad-syn",
            TcpDropReason::IcmpOutOfWindow => "icmp-out-of-window",
        }
    }

    pub fn all() -> [TcpDropReason; TcpDropReason::COUNT] {
        use TcpDropReason::*;
        [
            OutOfWindow,
            PawsRejected,
            ChallengeAck,
            BadAck,
            RstOutOfWindow,
            SynInWindow,
            NoConnection,
            BadState,
            OutOfOrderFull,
            NoAck,
            WrongPorts,
            BadSyn,
            IcmpOutOfWindow,
        ]
    }
}

/// What `process` did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Dropped(TcpDropReason),
}

/// Readiness as `poll` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its write side (EPOLLRDHUP).
    pub read_hup: bool,
    pub hup: bool,
    pub error: bool,
    /// An urgent byte is waiting (POLLPRI).
    pub priority: bool,
}

/// Counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub segs_in: u64,
    pub segs_out: u64,
    pub data_segs_in: u64,
    pub data_segs_out: u64,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub fast_retransmits: u64,
    pub timeouts: u64,
    pub dsack_dups: u64,
    pub challenge_acks: u64,
    /// Loss-recovery episodes undone as spurious (Eifel or D-SACK; Linux TCPFullUndo and
    /// friends).
    pub spurious_recoveries: u64,
    pub drops: [u64; TcpDropReason::COUNT],
}

impl ConnectionStats {
    pub fn dropped(&self, reason: TcpDropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// Linux's quick-ACK budget at connection start (segments ACKed at once).
const QUICKACK_SEGMENTS: u32 = 16;
/// Linux caps TCP_CORK holding at 200 ms.
const CORK_LIMIT: Duration = Duration::from_millis(200);
/// RFC 5961 §7 / Linux `tcp_challenge_ack_limit`-style budget per second per connection.
const CHALLENGE_ACKS_PER_SECOND: u32 = 100;
/// Smallest MSS a path-MTU report can lower us to (Linux `tcp_min_snd_mss` is 48; the
/// classic floor of 536 − the 24 B Linux keeps for options is too generous for 576-byte paths).
const MIN_SND_MSS: usize = 88;
/// MSS assumed when the peer sends none (RFC 9293 §3.7.1).
const DEFAULT_PEER_MSS: usize = 536;
/// Initial reordering degree in segments (RFC 5681 DupThresh, Linux `tcp_reordering`).
const MIN_REORDERING: u32 = 3;
/// Largest reordering degree adopted (Linux `tcp_max_reordering`).
const MAX_REORDERING: u32 = 300;
/// Linux `tcp_invalid_ratelimit`: at most one answer per this interval to an out-of-window or
/// PAWS-failed pure ACK (`tcp_oow_rate_limited`).
const OOW_ANSWER_INTERVAL: Duration = Duration::from_millis(500);

/// A TCP connection. See the module documentation.
#[derive(Debug, Clone)]
pub struct TcpConnection {
    config: TcpConfig,
    state: State,
    local: SocketAddrV4,
    remote: SocketAddrV4,

    // Send sequence space.
    iss: TcpSeqNumber,
    snd_una: TcpSeqNumber,
    snd_nxt: TcpSeqNumber,
    snd_max: TcpSeqNumber,
    snd_wnd: usize,
    snd_wl1: TcpSeqNumber,
    snd_wl2: TcpSeqNumber,
    max_snd_wnd: usize,
    send_buf: SendBuffer,
    /// The user shut the write side: a FIN follows the queued data.
    fin_queued: bool,
    /// Urgent pointer to send (sequence after the last urgent byte).
    snd_up: Option<TcpSeqNumber>,

    // Receive sequence space.
    irs: TcpSeqNumber,
    rcv_nxt: TcpSeqNumber,
    rcv_adv: TcpSeqNumber,
    recv_buf: ReceiveBuffer,
    /// Sequence of a FIN received ahead of RCV.NXT.
    fin_seq: Option<TcpSeqNumber>,
    /// The peer's FIN has been received in order.
    fin_received: bool,
    read_shut: bool,
    /// close() was called: the socket is orphaned (FIN_WAIT_2 timeout, data → RST).
    user_closed: bool,
    /// Urgent mark: sequence of the urgent byte not yet reached by reads.
    rcv_urg: Option<TcpSeqNumber>,
    oob_byte: Option<u8>,

    // Options.
    our_mss: usize,
    peer_mss: usize,
    pmtu_mss: usize,
    snd_wscale: u8,
    rcv_wscale: u8,
    ws_ok: bool,
    sack_ok: bool,
    ts_ok: bool,
    ts_recent: u32,
    ts_offset: u32,
    ts_origin: Instant,

    // Congestion and recovery.
    cc: CongestionControl,
    rtt: RttEstimator,
    scoreboard: Scoreboard,
    in_recovery: bool,
    recovery_point: TcpSeqNumber,
    high_rxt: TcpSeqNumber,
    dupacks: u32,
    retransmit_next: bool,
    rtt_sample: Option<(TcpSeqNumber, Instant)>,
    /// Reordering degree in segments, the DupThresh of loss detection: raised when a hole that
    /// was never retransmitted is filled below SACKed data (Linux `tp->reordering`).
    reordering: u32,
    /// End of the highest retransmission (never below SND.UNA): bytes at or above it were
    /// never retransmitted.
    rexmit_high: TcpSeqNumber,
    /// SND.UNA when the current loss-recovery window reduction began, while it may still be
    /// undone (Linux `undo_marker`).
    undo_marker: Option<TcpSeqNumber>,
    /// cwnd and ssthresh before that reduction.
    undo_cwnd: usize,
    undo_ssthresh: usize,
    /// Retransmissions of the episode not yet reported unnecessary by a D-SACK (`None`: none
    /// sent yet; Linux `undo_retrans`).
    undo_retrans: Option<u32>,
    /// TSval of the episode's first retransmission (Eifel detection, RFC 3522).
    retrans_stamp: Option<u32>,
    /// Congestion window validation (Linux `tcp_cwnd_validate`): the most bytes outstanding in
    /// the current window, whether sending was cwnd-limited in it, and where it ends.
    max_flight: usize,
    cwnd_limited: bool,
    cwnd_usage_seq: TcpSeqNumber,

    // Timers (deadlines).
    rto_at: Option<Instant>,
    delack_at: Option<Instant>,
    persist_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    time_wait_at: Option<Instant>,
    fin_wait2_at: Option<Instant>,
    cork_at: Option<Instant>,
    /// The cork timer fired: send the partial segment it held.
    cork_expired: bool,
    /// Output stopped for pacing (poll_at reports `next_departure`).
    paced_hold: bool,
    next_departure: Instant,
    retries: u32,
    persist_backoff: u32,
    /// The persist timer fired into a small open window: send a partial segment.
    persist_force: bool,
    /// Last reply to an out-of-window pure ACK (Linux `tcp_invalid_ratelimit`).
    last_oow_ack_at: Option<Instant>,
    keepalive_probes: u32,
    first_retransmit_at: Option<Instant>,

    // Pending output.
    ack_now: bool,
    rst_pending: bool,
    /// An RST answering a bad segment: (SEQ, Some(ACK) when the segment had no ACK).
    pending_reset: Option<(TcpSeqNumber, Option<TcpSeqNumber>)>,
    /// Something may need sending at the next dispatch.
    wake: bool,
    quickack: u32,
    unacked_segments: u32,
    challenge_budget: u32,
    challenge_second: u64,

    // Bookkeeping.
    error: Option<ConnError>,
    soft_error: Option<ConnError>,
    last_recv_at: Instant,
    last_send_at: Instant,
    last_data_recv_at: Instant,
    last_ack_recv_at: Instant,
    idle_since: Option<Instant>,
    stats: ConnectionStats,
}

impl TcpConnection {
    fn base(
        config: TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        initial: InitialSequence,
        now: Instant,
        state: State,
    ) -> TcpConnection {
        let our_mss = usize::from(config.mss.max(88));
        let rcv_wscale = if config.window_scaling {
            window_shift(config.recv_buffer)
        } else {
            0
        };
        TcpConnection {
            cc: CongestionControl::new(config.congestion, DEFAULT_PEER_MSS, now),
            rtt: RttEstimator::new(config.rto_initial, config.rto_min, config.rto_max),
            send_buf: SendBuffer::new(config.send_buffer),
            recv_buf: ReceiveBuffer::new(config.recv_buffer),
            state,
            local,
            remote,
            iss: initial.iss,
            snd_una: initial.iss,
            snd_nxt: initial.iss,
            snd_max: initial.iss,
            snd_wnd: 0,
            snd_wl1: TcpSeqNumber(0),
            snd_wl2: initial.iss,
            max_snd_wnd: 0,
            fin_queued: false,
            snd_up: None,
            irs: TcpSeqNumber(0),
            rcv_nxt: TcpSeqNumber(0),
            rcv_adv: TcpSeqNumber(0),
            fin_seq: None,
            fin_received: false,
            read_shut: false,
            user_closed: false,
            rcv_urg: None,
            oob_byte: None,
            our_mss,
            peer_mss: DEFAULT_PEER_MSS,
            pmtu_mss: usize::MAX,
            snd_wscale: 0,
            rcv_wscale,
            ws_ok: false,
            sack_ok: false,
            ts_ok: false,
            ts_recent: 0,
            ts_offset: initial.ts_offset,
            ts_origin: now,
            scoreboard: Scoreboard::new(),
            in_recovery: false,
            recovery_point: initial.iss,
            high_rxt: initial.iss,
            dupacks: 0,
            retransmit_next: false,
            rtt_sample: None,
            reordering: MIN_REORDERING,
            rexmit_high: initial.iss,
            undo_marker: None,
            undo_cwnd: 0,
            undo_ssthresh: 0,
            undo_retrans: None,
            retrans_stamp: None,
            max_flight: 0,
            cwnd_limited: false,
            cwnd_usage_seq: initial.iss,
            rto_at: None,
            delack_at: None,
            persist_at: None,
            keepalive_at: None,
            time_wait_at: None,
            fin_wait2_at: None,
            cork_at: None,
            cork_expired: false,
            paced_hold: false,
            next_departure: now,
            retries: 0,
            persist_backoff: 0,
            persist_force: false,
            last_oow_ack_at: None,
            keepalive_probes: 0,
            first_retransmit_at: None,
            ack_now: false,
            rst_pending: false,
            pending_reset: None,
            wake: true,
            quickack: QUICKACK_SEGMENTS,
            unacked_segments: 0,
            challenge_budget: CHALLENGE_ACKS_PER_SECOND,
            challenge_second: 0,
            error: None,
            soft_error: None,
            last_recv_at: now,
            last_send_at: now,
            last_data_recv_at: now,
            last_ack_recv_at: now,
            idle_since: None,
            stats: ConnectionStats::default(),
            config,
        }
    }

    /// Active open: SYN_SENT; the SYN leaves on the next dispatch.
    pub fn connect(
        config: TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        initial: InitialSequence,
        now: Instant,
    ) -> TcpConnection {
        let mut conn = TcpConnection::base(config, local, remote, initial, now, State::SynSent);
        conn.rto_at = Some(now + conn.rtt.rto());
        conn
    }

    /// Passive open from a listener's SYN: SYN_RECEIVED; the SYN-ACK leaves on dispatch.
    pub fn accept(
        config: TcpConfig,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        syn: &TcpRepr<'_>,
        initial: InitialSequence,
        now: Instant,
    ) -> Result<TcpConnection, TcpDropReason> {
        if !syn.control.syn || syn.control.rst || syn.ack_number.is_some() || syn.control.fin {
            return Err(TcpDropReason::BadSyn);
        }
        let mut conn = TcpConnection::base(config, local, remote, initial, now, State::SynReceived);
        conn.take_syn_options(syn, true);
        conn.irs = syn.seq_number;
        conn.rcv_nxt = syn.seq_number + 1;
        conn.rcv_adv = conn.rcv_nxt;
        // RFC 7323 §2.2: the window in a SYN is never scaled.
        conn.snd_wnd = usize::from(syn.window_len);
        conn.max_snd_wnd = conn.snd_wnd;
        conn.snd_wl1 = syn.seq_number;
        conn.rto_at = Some(now + conn.rtt.rto());
        conn.stats.segs_in += 1;
        Ok(conn)
    }

    /// Negotiates options from the peer's SYN (`ours_sent`: whether our own SYN offered them,
    /// true for the passive side which answers in kind).
    fn take_syn_options(&mut self, syn: &TcpRepr<'_>, ours_sent: bool) {
        let opts = &syn.options;
        self.peer_mss = opts
            .max_seg_size()
            .map_or(DEFAULT_PEER_MSS, usize::from)
            .max(MIN_SND_MSS);
        match opts.window_scale() {
            Some(shift) if self.config.window_scaling && ours_sent => {
                self.ws_ok = true;
                self.snd_wscale = shift.min(14);
            }
            _ => {
                self.ws_ok = false;
                self.snd_wscale = 0;
                self.rcv_wscale = 0;
            }
        }
        self.sack_ok = self.config.sack && opts.sack_permitted() && ours_sent;
        if let (true, Some((tsval, _))) = (self.config.timestamps && ours_sent, opts.timestamps()) {
            self.ts_ok = true;
            self.ts_recent = tsval;
        } else {
            self.ts_ok = false;
        }
        self.cc.set_mss(self.snd_mss());
        self.cc
            .set_cwnd(super::congestion::INITIAL_WINDOW_SEGMENTS * self.snd_mss());
    }

    /// Largest payload per segment ignoring options (MSS as negotiated and lowered by PMTU).
    pub fn snd_mss(&self) -> usize {
        self.peer_mss
            .min(self.pmtu_mss)
            .min(self.our_mss.max(MIN_SND_MSS))
            .max(MIN_SND_MSS)
    }

    /// Payload per full-sized segment after the options every segment carries.
    fn effective_mss(&self) -> usize {
        self.snd_mss() - if self.ts_ok { 12 } else { 0 }
    }

    // ----- user side -------------------------------------------------------------------

    /// Queues data; returns how much was taken.
    pub fn send(&mut self, data: &[u8]) -> Result<usize, SendError> {
        self.check_send()?;
        let n = self.send_buf.push(data);
        if n == 0 {
            return if data.is_empty() {
                Ok(0)
            } else {
                Err(SendError::WouldBlock)
            };
        }
        self.wake = true;
        Ok(n)
    }

    /// Whether [`TcpConnection::send`] may ever take data again (false once the sending side
    /// is shut, the connection closing or failed; true while it is only full or connecting).
    pub fn can_send(&self) -> bool {
        !matches!(self.check_send(), Err(e) if e != SendError::WouldBlock)
    }

    /// Room left in the send buffer: what [`TcpConnection::send`] takes now (0 while it
    /// cannot send at all).
    pub fn send_free(&self) -> usize {
        if self.check_send().is_err() {
            return 0;
        }
        self.send_buf.free()
    }

    /// MSG_OOB: queues data whose last byte is urgent.
    pub fn send_urgent(&mut self, data: &[u8]) -> Result<usize, SendError> {
        let n = self.send(data)?;
        self.snd_up = Some(self.data_start() + self.send_buf.len());
        Ok(n)
    }

    fn check_send(&self) -> Result<(), SendError> {
        if let Some(e) = self.error {
            return Err(send_error(e));
        }
        if self.fin_queued {
            return Err(SendError::Shutdown);
        }
        match self.state {
            State::Established | State::CloseWait => Ok(()),
            State::SynSent | State::SynReceived => Err(SendError::WouldBlock),
            State::Closed | State::Listen => Err(SendError::NotConnected),
            _ => Err(SendError::Shutdown),
        }
    }

    /// Sequence number of the first byte the application has not read.
    fn read_seq(&self) -> TcpSeqNumber {
        self.rcv_nxt - self.recv_buf.len() - usize::from(self.fin_received)
    }

    /// How many bytes a read may return now (it stops at the urgent mark).
    fn readable_until_mark(&self) -> usize {
        let len = self.recv_buf.len();
        match self.rcv_urg {
            Some(mark) => {
                let read_seq = self.read_seq();
                let dist = mark - read_seq;
                if dist > 0 {
                    (dist as usize).min(len)
                } else {
                    len
                }
            }
            None => len,
        }
    }

    /// Skips the urgent byte when a read reaches it and it is kept out of band.
    fn pass_urgent_mark(&mut self) {
        if let Some(mark) = self.rcv_urg
            && self.read_seq() == mark
            && (mark - self.rcv_nxt) < 0
        {
            if !self.config.oob_inline {
                self.recv_buf.discard(1);
            }
            self.rcv_urg = None;
        }
    }

    /// Reads in-order data. `Ok(0)` is end of stream.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.pass_urgent_mark();
        let limit = self.readable_until_mark();
        if limit > 0 {
            let before = self.recv_buf.window();
            let want = buf.len().min(limit);
            let n = self.recv_buf.read(&mut buf[..want]);
            self.after_read(before);
            // The mark stays until the next read so SIOCATMARK can report it.
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.eof_or_error()
    }

    fn eof_or_error(&self) -> Result<usize, RecvError> {
        if self.fin_received || self.read_shut {
            return Ok(0);
        }
        if let Some(e) = self.error {
            return Err(recv_error(e));
        }
        match self.state {
            State::Closed => Ok(0),
            State::Listen => Err(RecvError::NotConnected),
            _ => Err(RecvError::WouldBlock),
        }
    }

    /// Copies readable data without consuming it (MSG_PEEK).
    pub fn peek(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let mut skip = 0;
        if let Some(mark) = self.rcv_urg
            && self.read_seq() == mark
            && !self.config.oob_inline
            && (mark - self.rcv_nxt) < 0
        {
            skip = 1;
        }
        let limit = self.readable_until_mark().max(skip);
        if limit > skip {
            let want = buf.len().min(limit - skip);
            return Ok(self.recv_buf.peek(skip, &mut buf[..want]));
        }
        self.eof_or_error()
    }

    /// Window update after the application read (Linux `tcp_cleanup_rbuf`): ACK at once when
    /// the window we could announce grew by two segments and had fallen below half.
    fn after_read(&mut self, window_before: usize) {
        let announced = self.announced_window();
        // What a window field can express at all (65535 without scaling).
        let now_free = self.recv_buf.window().min(65_535usize << self.rcv_wscale);
        let step = (2 * self.our_mss).min(self.recv_buf.capacity() / 2);
        if now_free > window_before
            && now_free >= announced + step
            && announced < self.recv_buf.capacity() / 2
            && self.state.is_synchronized()
        {
            self.ack_now = true;
            self.wake = true;
        }
    }

    /// MSG_OOB read of the urgent byte.
    pub fn recv_urgent(&mut self, peek: bool) -> Result<u8, RecvError> {
        if self.config.oob_inline {
            return Err(RecvError::InvalidOob);
        }
        match self.oob_byte {
            Some(b) => {
                if !peek {
                    self.oob_byte = None;
                }
                Ok(b)
            }
            None if self.rcv_urg.is_some() => Err(RecvError::WouldBlock),
            None => Err(RecvError::InvalidOob),
        }
    }

    /// SIOCATMARK.
    pub fn at_urgent_mark(&self) -> bool {
        self.rcv_urg
            .is_some_and(|mark| self.read_seq() == mark && (mark - self.rcv_nxt) < 0)
    }

    /// shutdown(SHUT_WR): FIN after the queued data.
    pub fn shutdown_write(&mut self, now: Instant) {
        match self.state {
            State::SynSent | State::Listen | State::Closed => self.enter_closed(now),
            State::SynReceived | State::Established => {
                self.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_queued = true;
                self.state = State::LastAck;
            }
            _ => {}
        }
        self.wake = true;
    }

    /// shutdown(SHUT_RD): reads return end of stream; data still arriving is discarded.
    pub fn shutdown_read(&mut self) {
        self.read_shut = true;
        let n = self.recv_buf.len();
        self.recv_buf.discard(n);
    }

    /// close(): Linux `tcp_close` — RST if unread data remains or linger is zero, otherwise a
    /// graceful FIN after the queued data, with the socket orphaned.
    pub fn close(&mut self, now: Instant) {
        self.user_closed = true;
        if matches!(self.state, State::Closed | State::Listen | State::SynSent) {
            self.enter_closed(now);
            return;
        }
        let unread = !self.recv_buf.is_empty() || self.recv_buf.has_out_of_order();
        if unread || self.config.linger == Some(Duration::ZERO) {
            self.abort(now);
            return;
        }
        if !self.fin_queued {
            self.shutdown_write(now);
        }
        if self.state == State::FinWait2 {
            self.fin_wait2_at = Some(now + self.config.fin_timeout);
        }
        self.wake = true;
    }

    /// Sends RST (in synchronized states) and closes at once.
    pub fn abort(&mut self, now: Instant) {
        if matches!(
            self.state,
            State::SynReceived
                | State::Established
                | State::FinWait1
                | State::FinWait2
                | State::CloseWait
        ) {
            self.rst_pending = true;
        }
        self.enter_closed(now);
        self.wake = true;
    }

    fn enter_closed(&mut self, _now: Instant) {
        self.state = State::Closed;
        self.rto_at = None;
        self.delack_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.time_wait_at = None;
        self.fin_wait2_at = None;
        self.cork_at = None;
        self.ack_now = false;
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    pub fn remote(&self) -> SocketAddrV4 {
        self.remote
    }

    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    pub fn readiness(&self) -> Readiness {
        let error = self.error.is_some();
        let peer_closed = self.fin_received;
        let closed = self.state == State::Closed;
        let connected = matches!(self.state, State::Established | State::CloseWait);
        let free = self.send_buf.free();
        Readiness {
            readable: self.readable_until_mark() > 0
                || self.at_urgent_mark() && self.config.oob_inline
                || peer_closed
                || self.read_shut
                || error
                || closed,
            writable: (connected
                && !self.fin_queued
                && free > 0
                && free >= self.send_buf.len() / 2)
                || error
                || closed,
            read_hup: peer_closed || self.read_shut,
            hup: closed || (peer_closed && self.fin_queued),
            error,
            priority: self.oob_byte.is_some(),
        }
    }

    /// Brings settings that came with an untrusted image (a process's export or crash record)
    /// within `limits`, as the host's policy would have bounded them had the connection been
    /// opened here: RTO bounds, retry counts, TIME_WAIT and FIN_WAIT_2 lengths, keepalive
    /// and buffer sizes. Settings already inside are left alone.
    pub fn apply_limits(&mut self, limits: &ConfigLimits, now: Instant) {
        let c = &mut self.config;
        c.rto_min = c.rto_min.clamp(limits.rto_min, limits.rto_max);
        c.rto_max = c.rto_max.clamp(c.rto_min, limits.rto_max);
        c.rto_initial = c.rto_initial.clamp(c.rto_min, c.rto_max);
        c.syn_retries = c.syn_retries.min(limits.retries);
        c.synack_retries = c.synack_retries.min(limits.retries);
        c.retries2 = c.retries2.min(limits.retries);
        c.time_wait = c.time_wait.min(limits.time_wait);
        c.fin_timeout = c.fin_timeout.min(limits.fin_timeout);
        c.keepalive_idle = c.keepalive_idle.max(Duration::from_secs(1));
        c.keepalive_interval = c.keepalive_interval.max(Duration::from_secs(1));
        c.keepalive_count = c.keepalive_count.clamp(1, 127);
        if let Some(t) = c.user_timeout {
            c.user_timeout = Some(t.min(limits.user_timeout));
        }
        let (rto_min, rto_max) = (c.rto_min, c.rto_max);
        let (recv, send) = (
            c.recv_buffer.min(limits.max_buffer),
            c.send_buffer.min(limits.max_buffer),
        );
        self.rtt.limit_bounds(rto_min, rto_max);
        self.set_recv_buffer(recv);
        self.set_send_buffer(send);
        if let Some(at) = self.time_wait_at {
            self.time_wait_at = Some(at.min(now + limits.time_wait));
        }
    }

    /// SO_ERROR: the pending error, cleared by reading it.
    pub fn take_error(&mut self) -> Option<ConnError> {
        self.error.take().or_else(|| self.soft_error.take())
    }

    /// FIONREAD.
    pub fn recv_queue_len(&self) -> usize {
        self.recv_buf.len()
    }

    /// SIOCOUTQ: bytes not yet acknowledged.
    pub fn send_queue_len(&self) -> usize {
        self.send_buf.len()
    }

    pub fn send_queue_free(&self) -> usize {
        if self.fin_queued {
            0
        } else {
            self.send_buf.free()
        }
    }

    /// Bytes queued but never sent (SIOCOUTQNSD / tcpi_notsent_bytes).
    pub fn unsent_len(&self) -> usize {
        let sent = (self.snd_max - self.data_start()).max(0) as usize;
        self.send_buf.len().saturating_sub(sent)
    }

    pub fn set_nodelay(&mut self, on: bool) {
        self.config.nodelay = on;
        self.wake = true;
    }

    /// TCP_CORK; uncorking sends what was held.
    pub fn set_cork(&mut self, on: bool, now: Instant) {
        self.config.cork = on;
        self.cork_at = if on && self.unsent_len() > 0 {
            Some(now + CORK_LIMIT)
        } else {
            None
        };
        self.wake = true;
    }

    pub fn set_oob_inline(&mut self, on: bool) {
        self.config.oob_inline = on;
    }

    pub fn set_keepalive(&mut self, on: bool) {
        self.config.keepalive = on;
        if !on {
            self.keepalive_at = None;
        } else {
            self.keepalive_at = None;
            self.keepalive_probes = 0;
            self.wake = true;
        }
    }

    pub fn set_keepalive_params(&mut self, idle: Duration, interval: Duration, count: u32) {
        self.config.keepalive_idle = idle;
        self.config.keepalive_interval = interval;
        self.config.keepalive_count = count.max(1);
        self.keepalive_at = None;
        self.wake = true;
    }

    pub fn set_recv_buffer(&mut self, bytes: usize) {
        self.config.recv_buffer = bytes;
        self.recv_buf.set_capacity(bytes);
        self.wake = true;
    }

    pub fn set_send_buffer(&mut self, bytes: usize) {
        self.config.send_buffer = bytes;
        self.send_buf.set_capacity(bytes);
    }

    pub fn set_congestion(&mut self, algorithm: CongestionAlgorithm, _now: Instant) {
        self.config.congestion = algorithm;
        self.cc.set_algorithm(algorithm);
    }

    pub fn set_linger(&mut self, linger: Option<Duration>) {
        self.config.linger = linger;
    }

    /// TIME_WAIT length for this connection (Linux fixes it at 60 s; msock lets a host or a
    /// test choose). Applies from the next entry into TIME_WAIT.
    pub fn set_time_wait(&mut self, duration: Duration) {
        self.config.time_wait = duration;
    }

    pub fn set_max_pacing_rate(&mut self, rate: Option<u64>) {
        self.config.max_pacing_rate = rate;
        self.wake = true;
    }

    pub fn set_user_timeout(&mut self, timeout: Option<Duration>) {
        self.config.user_timeout = timeout;
    }

    /// Whether an ICMP error quoting `quoted_seq` can concern this connection: RFC 5927 §4.1,
    /// SND.UNA ≤ SEG.SEQ < SND.NXT (our SND.MAX: the highest sequence sent, which SND.NXT only
    /// falls below while resending). Otherwise it is counted as
    /// [`TcpDropReason::IcmpOutOfWindow`] and must be ignored.
    fn icmp_in_window(&mut self, quoted_seq: TcpSeqNumber) -> bool {
        if quoted_seq >= self.snd_una && quoted_seq < self.snd_max {
            true
        } else {
            self.count_drop(TcpDropReason::IcmpOutOfWindow);
            false
        }
    }

    /// Fragmentation needed (RFC 1191): lower the MSS and resend what is in flight in the
    /// smaller size (Linux `tcp_simple_retransmit`, no congestion response; the resent
    /// segments count as retransmissions). Ignored unless `quoted_seq` lies in
    /// [SND.UNA, SND.NXT) (RFC 5927 §4.1).
    pub fn on_icmp_frag_needed(
        &mut self,
        _now: Instant,
        next_hop_mtu: u16,
        quoted_seq: TcpSeqNumber,
    ) {
        if !self.icmp_in_window(quoted_seq) {
            return;
        }
        let mss = usize::from(next_hop_mtu)
            .saturating_sub(40)
            .max(MIN_SND_MSS);
        if mss >= self.snd_mss() {
            return;
        }
        self.pmtu_mss = mss;
        self.cc.set_mss(self.snd_mss());
        self.snd_nxt = self.snd_una;
        self.rtt_sample = None;
        self.wake = true;
    }

    /// Destination unreachable quoting our segment `quoted_seq`: ignored unless the sequence
    /// lies in [SND.UNA, SND.NXT) (RFC 5927 §4.1), then as [`Self::on_icmp_unreachable`].
    /// Returns whether the message was taken.
    pub fn on_icmp_error(
        &mut self,
        now: Instant,
        error: ConnError,
        quoted_seq: TcpSeqNumber,
    ) -> bool {
        if !self.icmp_in_window(quoted_seq) {
            return false;
        }
        self.on_icmp_unreachable(now, error);
        true
    }

    /// Destination unreachable: a hard error while connecting (Linux), a soft one otherwise
    /// (RFC 1122 §4.2.3.9). Does not validate the quoted segment: callers that have it use
    /// [`Self::on_icmp_error`].
    pub fn on_icmp_unreachable(&mut self, now: Instant, error: ConnError) {
        if matches!(self.state, State::SynSent | State::SynReceived) {
            self.error = Some(error);
            self.enter_closed(now);
        } else {
            self.soft_error = Some(error);
        }
    }

    /// Current pacing rate in bytes/s (min of the computed rate and SO_MAX_PACING_RATE).
    pub fn pacing_rate(&self) -> Option<u64> {
        let computed = self.cc.pacing_rate(self.rtt.srtt(), self.snd_mss());
        match (computed, self.config.max_pacing_rate) {
            (Some(c), Some(m)) => Some(c.min(m)),
            (Some(c), None) => Some(c),
            (None, m) => m,
        }
    }

    fn pacing_active(&self) -> bool {
        self.config.pacing || self.config.max_pacing_rate.is_some()
    }

    /// Whether the connection negotiated TCP timestamps (RFC 7323).
    pub fn uses_timestamps(&self) -> bool {
        self.ts_ok
    }

    /// TCP_INFO.
    pub fn info(&self, now: Instant) -> TcpInfo {
        let ms = |t: Instant| ((now - t).as_micros() / 1000).min(u64::from(u32::MAX)) as u32;
        let us = |d: Duration| d.as_micros().min(u64::from(u32::MAX)) as u32;
        let mut options = 0;
        if self.ts_ok {
            options |= TCPI_OPT_TIMESTAMPS;
        }
        if self.sack_ok {
            options |= TCPI_OPT_SACK;
        }
        if self.ws_ok {
            options |= TCPI_OPT_WSCALE;
        }
        let mss = self.effective_mss().max(1);
        let in_flight = (self.snd_max - self.snd_una).max(0) as usize;
        TcpInfo {
            state: self.state.linux_number(),
            ca_state: if self.in_recovery {
                3
            } else if self.rtt.backoff() > 0 {
                4
            } else {
                0
            },
            retransmits: self.retries.min(255) as u8,
            probes: self.keepalive_probes.max(self.persist_backoff).min(255) as u8,
            backoff: self.rtt.backoff().min(255) as u8,
            options,
            snd_wscale: self.snd_wscale,
            rcv_wscale: self.rcv_wscale,
            rto_us: us(self.rtt.rto()),
            ato_us: us(self.config.delayed_ack_min),
            snd_mss: mss as u32,
            rcv_mss: self.our_mss as u32,
            unacked: in_flight.div_ceil(mss) as u32,
            sacked: self.scoreboard.sacked_bytes().div_ceil(mss) as u32,
            lost: self
                .scoreboard
                .lost_bytes(self.snd_una, self.snd_max, mss)
                .div_ceil(mss) as u32,
            // Retransmitted segments not yet acknowledged or SACKed (Linux `retrans_out`).
            retrans: self
                .scoreboard
                .unsacked_in(self.snd_una, self.rexmit_high.min(self.snd_max))
                .div_ceil(mss) as u32,
            last_data_sent_ms: ms(self.last_send_at),
            last_data_recv_ms: ms(self.last_data_recv_at),
            last_ack_recv_ms: ms(self.last_ack_recv_at),
            pmtu: (self.snd_mss() + 40) as u32,
            rcv_ssthresh: self.recv_buf.capacity().min(u32::MAX as usize) as u32,
            rtt_us: self.rtt.srtt().map_or(0, us),
            rttvar_us: us(self.rtt.rttvar()),
            snd_ssthresh: (self.cc.ssthresh() / mss).min(u32::MAX as usize >> 1) as u32,
            snd_cwnd: (self.cc.cwnd() / mss) as u32,
            advmss: self.our_mss as u32,
            reordering: self.reordering,
            rcv_rtt_us: 0,
            rcv_space: self.recv_buf.capacity().min(u32::MAX as usize) as u32,
            total_retrans: self.stats.retransmits.min(u64::from(u32::MAX)) as u32,
            pacing_rate: self.pacing_rate().unwrap_or(u64::MAX),
            max_pacing_rate: self.config.max_pacing_rate.unwrap_or(u64::MAX),
            bytes_acked: self.stats.bytes_acked,
            bytes_received: self.stats.bytes_received,
            segs_out: self.stats.segs_out as u32,
            segs_in: self.stats.segs_in as u32,
            notsent_bytes: self.unsent_len() as u32,
            min_rtt_us: self.rtt.min_rtt().map_or(0, us),
            data_segs_in: self.stats.data_segs_in as u32,
            data_segs_out: self.stats.data_segs_out as u32,
            bytes_sent: self.stats.bytes_sent,
            bytes_retrans: self.stats.bytes_retrans,
            dsack_dups: self.stats.dsack_dups as u32,
            snd_wnd: self.snd_wnd.min(u32::MAX as usize) as u32,
            rcv_wnd: self.announced_window().min(u32::MAX as usize) as u32,
            ..TcpInfo::default()
        }
    }

    /// Sequence number of the send queue's first byte.
    fn data_start(&self) -> TcpSeqNumber {
        if self.snd_una == self.iss {
            self.iss + 1
        } else {
            self.snd_una
        }
    }

    /// Sequence number of our FIN (valid once `fin_queued`).
    fn fin_seq_out(&self) -> TcpSeqNumber {
        self.data_start() + self.send_buf.len()
    }

    /// Window currently announced to the peer (RCV.ADV − RCV.NXT).
    fn announced_window(&self) -> usize {
        (self.rcv_adv - self.rcv_nxt).max(0) as usize
    }

    fn count_drop(&mut self, reason: TcpDropReason) -> Verdict {
        self.stats.drops[reason as usize] += 1;
        Verdict::Dropped(reason)
    }

    fn ts_now(&self, now: Instant) -> u32 {
        ((now - self.ts_origin).as_micros() / 1000) as u32 + self.ts_offset
    }
}

/// The window shift Linux picks: enough for the receive buffer, at least 7 (room for
/// autotuning), at most 14 (RFC 7323 §2.3).
fn window_shift(recv_buffer: usize) -> u8 {
    let mut shift = 0u8;
    while shift < 14 && (65_535usize << shift) < recv_buffer {
        shift += 1;
    }
    shift.max(7)
}

fn send_error(e: ConnError) -> SendError {
    match e {
        ConnError::Refused => SendError::Refused,
        ConnError::Reset => SendError::Reset,
        ConnError::TimedOut => SendError::TimedOut,
        _ => SendError::Unreachable,
    }
}

fn recv_error(e: ConnError) -> RecvError {
    match e {
        ConnError::Refused => RecvError::Refused,
        ConnError::Reset => RecvError::Reset,
        ConnError::TimedOut => RecvError::TimedOut,
        _ => RecvError::Unreachable,
    }
}

#[cfg(test)]
pub(crate) mod tests;
