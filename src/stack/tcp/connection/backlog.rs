//! A listening endpoint with its queues: half-open connections (SYN received, SYN-ACK sent)
//! and completed ones waiting for `accept` (Linux's request and accept queues, RFC 4987).
//!
//! Both queues are bounded, so a SYN flood costs bounded memory and cannot lock legitimate
//! clients out: when the half-open queue is full, a SYN is answered with a SYN cookie
//! (RFC 4987 §3.6, [`crate::stack::tcp::syn_cookie`]) and no state, and the ACK that returns
//! a valid cookie opens the connection directly, as Linux does with `tcp_syncookies=1`.
//! With cookies off, a new SYN evicts the oldest half-open connection instead (FreeBSD's
//! syncache; RFC 4987 §3.4), which protects clients that answer faster than the flood
//! refills the queue. When the accept queue is full, SYNs are dropped and a completing ACK is
//! ignored (the half-open connection stays and retransmits its SYN-ACK), as Linux does. All of
//! it is counted in [`BacklogStats`].
//!
//! Sans-I/O like the connection: the driver feeds segments to [`TcpBacklog::process`], runs
//! each [`TcpBacklog::connections_mut`] connection's `dispatch` (SYN-ACKs and their
//! retransmissions), calls [`TcpBacklog::reap`] and takes connections with
//! [`TcpBacklog::accept`].
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;

use super::{InitialSequence, ListenOutcome, State, TcpConnection, TcpListener, Verdict};
use crate::stack::tcp::syn_cookie::{CookieOptions, MAX_AGE, PERIOD, SynCookies};
use crate::stack::{Duration, Instant};
use crate::wire::tcp::{TcpControl, TcpOption, TcpOptions, TcpRepr};

/// Linux's default `net.ipv4.tcp_max_syn_backlog` for small machines.
pub const DEFAULT_SYN_BACKLOG: usize = 256;
/// `SOMAXCONN`.
pub const DEFAULT_ACCEPT_BACKLOG: usize = 4096;

/// What the backlog saw, for `--info` and `msock stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BacklogStats {
    /// SYNs that opened a half-open connection.
    pub syns_accepted: u64,
    /// Half-open connections evicted to make room for a newer SYN.
    pub half_open_evicted: u64,
    /// SYNs dropped because the accept queue was full.
    pub accept_queue_full: u64,
    /// Handshake-completing segments ignored because the accept queue was full.
    pub completions_deferred: u64,
    /// Half-open connections that ended without completing (SYN-ACK retries exhausted, RST).
    pub handshakes_failed: u64,
    /// Connections that completed the handshake.
    pub completed: u64,
    /// Segments for no connection answered with a reset, and segments dropped (bad SYNs,
    /// segments a half-open connection rejected).
    pub resets: u64,
    pub dropped: u64,
    /// SYN-ACKs carrying a cookie (half-open queue full).
    pub cookies_sent: u64,
    /// ACKs whose cookie was valid: connections opened without a half-open entry.
    pub cookies_accepted: u64,
    /// ACKs checked as cookies and found invalid (answered with a reset).
    pub cookies_rejected: u64,
}

/// A listener plus its half-open and accept queues.
#[derive(Debug)]
pub struct TcpBacklog {
    listener: TcpListener,
    syn_backlog: usize,
    accept_backlog: usize,
    /// Half-open connections by peer, each with its arrival number.
    half_open: HashMap<SocketAddrV4, (TcpConnection, u64)>,
    /// Arrival order, oldest first; entries whose connection has gone are skipped lazily.
    arrivals: VecDeque<(SocketAddrV4, u64)>,
    next_arrival: u64,
    /// Completed connections not yet accepted, by peer (they receive and acknowledge data
    /// meanwhile), and their completion order.
    ready: HashMap<SocketAddrV4, TcpConnection>,
    ready_order: VecDeque<SocketAddrV4>,
    /// `None`: cookies off, a full half-open queue evicts its oldest entry.
    cookies: Option<SynCookies>,
    /// When the last cookie was sent: ACKs are only checked as cookies while one may be
    /// outstanding (Linux `tcp_synq_no_recent_overflow`).
    last_cookie_at: Option<Instant>,
    stats: BacklogStats,
}

impl TcpBacklog {
    /// `syn_backlog` and `accept_backlog` are raised to at least 1. SYN cookies are on, keyed
    /// with the listener's ISN secret (in their own hash domains).
    pub fn new(listener: TcpListener, syn_backlog: usize, accept_backlog: usize) -> TcpBacklog {
        let cookies = Some(SynCookies::new(listener.isn().secret()));
        TcpBacklog {
            listener,
            syn_backlog: syn_backlog.max(1),
            accept_backlog: accept_backlog.max(1),
            half_open: HashMap::new(),
            arrivals: VecDeque::new(),
            next_arrival: 0,
            ready: HashMap::new(),
            ready_order: VecDeque::new(),
            cookies,
            last_cookie_at: None,
            stats: BacklogStats::default(),
        }
    }

    /// Turns SYN cookies off (a full half-open queue then evicts its oldest entry) or on.
    pub fn set_syn_cookies(&mut self, on: bool) {
        self.cookies = on.then(|| SynCookies::new(self.listener.isn().secret()));
    }

    pub fn listener(&self) -> &TcpListener {
        &self.listener
    }

    pub fn stats(&self) -> BacklogStats {
        self.stats
    }

    pub fn half_open_len(&self) -> usize {
        self.half_open.len()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Handles a segment from `src` to the listening port. Returns a segment to send back to
    /// `src` (a reset) when the segment belongs to no connection.
    pub fn process(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        seg: &TcpRepr<'_>,
    ) -> Option<TcpRepr<'static>> {
        if let Some(conn) = self.ready.get_mut(&src) {
            if conn.process(now, seg) != Verdict::Accepted {
                self.stats.dropped += 1;
            }
            return None;
        }
        if let Some((conn, _)) = self.half_open.get_mut(&src) {
            let completes = seg.ack_number.is_some() && !seg.control.rst && !seg.control.syn;
            if completes && self.ready.len() >= self.accept_backlog {
                self.stats.completions_deferred += 1;
                return None;
            }
            if conn.process(now, seg) != Verdict::Accepted {
                self.stats.dropped += 1;
            }
            self.settle(src);
            return None;
        }
        let is_syn = seg.control.syn && !seg.control.rst && seg.ack_number.is_none();
        if is_syn {
            if self.ready.len() >= self.accept_backlog {
                self.stats.accept_queue_full += 1;
                return None;
            }
            if self.half_open.len() >= self.syn_backlog {
                if self.cookies.is_some() {
                    return self.cookie_syn_ack(now, src, seg);
                }
                self.evict_oldest();
            }
        } else if let Some(ack) = seg.ack_number
            && !seg.control.syn
            && !seg.control.rst
            && self.cookie_may_be_outstanding(now)
            && let Some(cookies) = &self.cookies
        {
            let local = self.listener.local();
            match cookies.check(local, src, seg.seq_number, ack, now) {
                Some(options) => return self.open_from_cookie(now, src, seg, options),
                None => self.stats.cookies_rejected += 1,
            }
        }
        match self.listener.process(now, src, seg) {
            ListenOutcome::Connection(conn) => {
                self.stats.syns_accepted += 1;
                let arrival = self.next_arrival;
                self.next_arrival += 1;
                self.half_open.insert(src, (*conn, arrival));
                self.arrivals.push_back((src, arrival));
                None
            }
            ListenOutcome::Reset(rst) => {
                self.stats.resets += 1;
                Some(rst)
            }
            ListenOutcome::Dropped(_) => {
                self.stats.dropped += 1;
                None
            }
        }
    }

    /// The connections not yet accepted, half-open and completed, for the driver to
    /// `dispatch` (SYN-ACKs and their retransmissions, ACKs for data that arrived before the
    /// accept); call [`Self::reap`] after.
    pub fn connections_mut(&mut self) -> impl Iterator<Item = &mut TcpConnection> {
        self.half_open
            .values_mut()
            .map(|(conn, _)| conn)
            .chain(self.ready.values_mut())
    }

    /// Moves connections whose handshake completed to the accept queue and forgets those
    /// that failed (call after dispatching: a SYN-ACK retry budget runs out in `dispatch`).
    pub fn reap(&mut self) {
        let settled: Vec<SocketAddrV4> = self
            .half_open
            .iter()
            .filter(|(_, (c, _))| c.state() != State::SynReceived)
            .map(|(k, _)| *k)
            .collect();
        for key in settled {
            self.settle(key);
        }
        // Keep the arrival log from growing past the live entries.
        if self.arrivals.len() > 2 * self.half_open.len() + 64 {
            let live = &self.half_open;
            self.arrivals
                .retain(|(k, n)| live.get(k).is_some_and(|(_, m)| m == n));
        }
    }

    /// The earliest time a connection not yet accepted needs `dispatch`.
    pub fn poll_at(&self) -> Option<Instant> {
        self.half_open
            .values()
            .map(|(c, _)| c)
            .chain(self.ready.values())
            .filter_map(|c| c.poll_at())
            .min()
    }

    /// The oldest completed connection.
    pub fn accept(&mut self) -> Option<TcpConnection> {
        while let Some(key) = self.ready_order.pop_front() {
            if let Some(conn) = self.ready.remove(&key) {
                return Some(conn);
            }
        }
        None
    }

    fn cookie_may_be_outstanding(&self, now: Instant) -> bool {
        let lifetime = Duration::from_secs(PERIOD * (u64::from(MAX_AGE) + 1));
        self.last_cookie_at.is_some_and(|at| now - at <= lifetime)
    }

    fn initial_for(
        &self,
        src: SocketAddrV4,
        iss: crate::wire::tcp::TcpSeqNumber,
    ) -> InitialSequence {
        InitialSequence {
            iss,
            ts_offset: self
                .listener
                .isn()
                .timestamp_offset(self.listener.local(), src),
        }
    }

    /// The SYN-ACK a connection would send for `syn`, with the cookie as its ISS; nothing is
    /// kept. The cookie remembers the options the connection will need when the ACK returns.
    fn cookie_syn_ack(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        syn: &TcpRepr<'_>,
    ) -> Option<TcpRepr<'static>> {
        let cookies = self.cookies.as_ref()?;
        let opts = &syn.options;
        let options = CookieOptions::from_syn(
            opts.max_seg_size(),
            opts.sack_permitted(),
            opts.timestamps().is_some(),
            opts.window_scale(),
        );
        let iss = cookies.make(self.listener.local(), src, syn.seq_number, options, now);
        // The SYN as the cookie will reconstruct it, so the SYN-ACK offers exactly what the
        // connection opened from the cookie will use.
        let syn = cookie_syn(syn, options, syn.seq_number, opts.timestamps().map(|t| t.0));
        let initial = self.initial_for(src, iss);
        let config = self.listener.config().clone();
        let Ok(mut probe) =
            TcpConnection::accept(config, self.listener.local(), src, &syn, initial, now)
        else {
            self.stats.dropped += 1;
            return None;
        };
        let mut syn_ack = None;
        probe.dispatch(now, &mut |out: super::Outgoing<'_>| {
            if out.repr.control.syn && syn_ack.is_none() {
                syn_ack = Some(TcpRepr {
                    payload: &[],
                    ..out.repr
                });
            }
            Ok(())
        });
        let syn_ack = syn_ack.map(into_static)?;
        self.stats.cookies_sent += 1;
        self.last_cookie_at = Some(now);
        Some(syn_ack)
    }

    /// Opens the connection a valid cookie describes and hands it `ack`, the segment that
    /// returned the cookie (it may carry data, even a FIN).
    fn open_from_cookie(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        ack: &TcpRepr<'_>,
        options: CookieOptions,
    ) -> Option<TcpRepr<'static>> {
        if self.ready.len() >= self.accept_backlog {
            self.stats.completions_deferred += 1;
            return None;
        }
        let peer_isn = ack.seq_number - 1;
        let iss = ack.ack_number? - 1;
        let tsval = ack.options.timestamps().map(|t| t.0);
        let syn = cookie_syn(ack, options, peer_isn, tsval);
        let initial = self.initial_for(src, iss);
        let config = self.listener.config().clone();
        let local = self.listener.local();
        let Ok(mut conn) = TcpConnection::accept(config, local, src, &syn, initial, now) else {
            self.stats.dropped += 1;
            return None;
        };
        // The SYN-ACK went out when the cookie was made: account for it without a send time
        // (Karn: no RTT sample from the handshake), then let the ACK complete it.
        conn.dispatch(now, &mut |_| Ok(()));
        conn.retries = 1;
        if conn.process(now, ack) != Verdict::Accepted || conn.state() == State::SynReceived {
            self.stats.cookies_rejected += 1;
            return None;
        }
        self.stats.cookies_accepted += 1;
        self.stats.completed += 1;
        self.push_ready(src, conn);
        None
    }

    /// Classifies the half-open connection of `key` after it changed.
    fn settle(&mut self, key: SocketAddrV4) {
        let state = match self.half_open.get(&key) {
            Some((conn, _)) => conn.state(),
            None => return,
        };
        match state {
            State::SynReceived => {}
            State::Closed => {
                self.half_open.remove(&key);
                self.stats.handshakes_failed += 1;
            }
            // Established, or further along when the completing segment carried a FIN.
            _ => {
                if let Some((conn, _)) = self.half_open.remove(&key) {
                    self.stats.completed += 1;
                    self.push_ready(key, conn);
                }
            }
        }
    }

    fn push_ready(&mut self, key: SocketAddrV4, conn: TcpConnection) {
        self.ready.insert(key, conn);
        self.ready_order.push_back(key);
    }

    fn evict_oldest(&mut self) {
        while let Some((key, arrival)) = self.arrivals.pop_front() {
            if self.half_open.get(&key).is_some_and(|(_, n)| *n == arrival) {
                self.half_open.remove(&key);
                self.stats.half_open_evicted += 1;
                return;
            }
        }
    }
}

/// The SYN a cookie stands for: `template`'s ports and window, `isn`, and the options the
/// cookie kept (MSS rounded to the cookie table; `tsval` as the peer's timestamp).
fn cookie_syn(
    template: &TcpRepr<'_>,
    options: CookieOptions,
    isn: crate::wire::tcp::TcpSeqNumber,
    tsval: Option<u32>,
) -> TcpRepr<'static> {
    let mut opts = TcpOptions::new();
    // Four options always fit in 40 bytes: MSS 4, WS 3, SACK-permitted 2, TS 10.
    let _ = opts.push(TcpOption::MaxSegmentSize(options.mss));
    if let Some(shift) = options.window_scale {
        let _ = opts.push(TcpOption::WindowScale(shift));
    }
    if options.sack {
        let _ = opts.push(TcpOption::SackPermitted);
    }
    if options.timestamps {
        let _ = opts.push(TcpOption::Timestamps {
            tsval: tsval.unwrap_or(0),
            tsecr: 0,
        });
    }
    TcpRepr {
        src_port: template.src_port,
        dst_port: template.dst_port,
        seq_number: isn,
        ack_number: None,
        control: TcpControl::SYN,
        window_len: template.window_len,
        urgent_pointer: None,
        options: opts,
        payload: &[],
    }
}

fn into_static(repr: TcpRepr<'_>) -> TcpRepr<'static> {
    TcpRepr {
        src_port: repr.src_port,
        dst_port: repr.dst_port,
        seq_number: repr.seq_number,
        ack_number: repr.ack_number,
        control: repr.control,
        window_len: repr.window_len,
        urgent_pointer: repr.urgent_pointer,
        options: repr.options,
        payload: &[],
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::stack::Duration;
    use crate::stack::tcp::connection::{Outgoing, TcpConfig};
    use crate::stack::tcp::isn::IsnGenerator;
    use crate::wire::tcp::{TcpControl, TcpOption, TcpOptions, TcpSeqNumber};

    const LOCAL: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80);

    fn peer(n: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, n), port)
    }

    fn backlog(syn: usize, accept: usize) -> TcpBacklog {
        let listener = TcpListener::new(config(), LOCAL, IsnGenerator::new([3; 16]));
        TcpBacklog::new(listener, syn, accept)
    }

    fn config() -> TcpConfig {
        TcpConfig::default()
    }

    fn syn_from(src: SocketAddrV4) -> TcpRepr<'static> {
        let mut options = TcpOptions::new();
        options
            .push(TcpOption::MaxSegmentSize(1460))
            .expect("an MSS option fits");
        TcpRepr {
            src_port: src.port(),
            dst_port: LOCAL.port(),
            seq_number: TcpSeqNumber(5000),
            ack_number: None,
            control: TcpControl::SYN,
            window_len: 65535,
            urgent_pointer: None,
            options,
            payload: &[],
        }
    }

    /// Dispatches every half-open connection; returns the SYN-ACKs sent (peer, their ISS).
    fn dispatch(b: &mut TcpBacklog, now: Instant) -> Vec<(SocketAddrV4, TcpSeqNumber)> {
        let mut sent = Vec::new();
        for conn in b.connections_mut() {
            let remote = conn.remote();
            conn.dispatch(now, &mut |out: Outgoing<'_>| {
                if out.repr.control.syn {
                    sent.push((remote, out.repr.seq_number));
                }
                Ok(())
            });
        }
        b.reap();
        sent
    }

    fn completing_ack(src: SocketAddrV4, iss: TcpSeqNumber) -> TcpRepr<'static> {
        let syn = syn_from(src);
        TcpRepr {
            src_port: src.port(),
            dst_port: LOCAL.port(),
            seq_number: syn.seq_number + 1,
            ack_number: Some(iss + 1),
            control: TcpControl::NONE,
            window_len: 65535,
            urgent_pointer: None,
            options: TcpOptions::default(),
            payload: &[],
        }
    }

    #[test]
    fn handshake_completes_into_the_accept_queue() {
        let mut b = backlog(8, 8);
        let now = Instant::from_secs(1);
        let client = peer(1, 40000);
        assert!(b.process(now, client, &syn_from(client)).is_none());
        let sent = dispatch(&mut b, now);
        assert_eq!(sent.len(), 1);
        assert!(b.accept().is_none(), "not before the third segment");
        assert!(
            b.process(now, client, &completing_ack(client, sent[0].1))
                .is_none()
        );
        b.reap();
        let conn = b.accept().expect("completed connection");
        assert_eq!(conn.state(), State::Established);
        assert_eq!(conn.remote(), client);
        assert_eq!(b.half_open_len(), 0);
        assert_eq!(b.stats().completed, 1);
    }

    fn flood(b: &mut TcpBacklog, now: Instant, count: u16) -> usize {
        let mut answered = 0;
        for i in 0..count {
            let spoofed = peer(200 + (i % 50) as u8, 1024 + i);
            answered += usize::from(b.process(now, spoofed, &syn_from(spoofed)).is_some());
        }
        answered
    }

    #[test]
    fn without_cookies_a_syn_flood_evicts_the_oldest_and_a_real_client_still_connects() {
        let mut b = backlog(16, 8);
        b.set_syn_cookies(false);
        let now = Instant::from_secs(1);
        assert_eq!(flood(&mut b, now, 1000), 0, "no stateless answers");
        assert_eq!(b.half_open_len(), 16, "bounded");
        assert_eq!(b.stats().syns_accepted, 1000);
        assert_eq!(b.stats().half_open_evicted, 1000 - 16);
        let client = peer(1, 40000);
        b.process(now, client, &syn_from(client));
        let iss = dispatch(&mut b, now)
            .into_iter()
            .find(|(p, _)| *p == client)
            .expect("SYN-ACK to the real client")
            .1;
        b.process(now, client, &completing_ack(client, iss));
        b.reap();
        assert_eq!(b.accept().map(|c| c.remote()), Some(client));
        assert!(b.arrivals.len() <= 2 * b.half_open_len() + 64 + 1);
    }

    fn with_options(mut seg: TcpRepr<'static>, tsval: u32, tsecr: u32) -> TcpRepr<'static> {
        let mut options = TcpOptions::new();
        for option in seg.options.iter().flatten() {
            options.push(option).expect("fits");
        }
        options.push(TcpOption::WindowScale(9)).expect("fits");
        options.push(TcpOption::SackPermitted).expect("fits");
        options
            .push(TcpOption::Timestamps { tsval, tsecr })
            .expect("fits");
        seg.options = options;
        seg
    }

    #[test]
    fn with_cookies_a_syn_flood_keeps_no_state_and_a_cookie_ack_opens_the_connection() {
        let mut b = backlog(16, 8);
        let now = Instant::from_secs(100);
        assert_eq!(flood(&mut b, now, 1000), 1000 - 16);
        assert_eq!(b.half_open_len(), 16);
        assert_eq!(b.stats().cookies_sent, 1000 - 16);
        assert_eq!(b.stats().half_open_evicted, 0);
        // A real client with every option: its SYN-ACK is a cookie.
        let client = peer(1, 40000);
        let syn = with_options(syn_from(client), 777, 0);
        let syn_ack = b.process(now, client, &syn).expect("cookie SYN-ACK");
        assert!(syn_ack.control.syn && syn_ack.ack_number == Some(syn.seq_number + 1));
        assert_eq!(
            syn_ack.options.window_scale(),
            Some(7),
            "ours, as a real SYN-ACK"
        );
        assert!(syn_ack.options.sack_permitted());
        let (our_tsval, _) = syn_ack
            .options
            .timestamps()
            .expect("timestamps offered back");
        assert_eq!(b.half_open_len(), 16, "no state for the cookie");
        // Its ACK, carrying data, opens the connection with the options the cookie kept.
        let later = now + Duration::from_millis(30);
        let ack = TcpRepr {
            payload: b"hello",
            ..with_options(completing_ack(client, syn_ack.seq_number), 780, our_tsval)
        };
        let ack = TcpRepr {
            options: {
                let mut o = TcpOptions::new();
                o.push(TcpOption::Timestamps {
                    tsval: 780,
                    tsecr: our_tsval,
                })
                .expect("fits");
                o
            },
            ..ack
        };
        assert!(b.process(later, client, &ack).is_none());
        let mut conn = b.accept().expect("connection from the cookie");
        assert_eq!(conn.state(), State::Established);
        assert_eq!(b.stats().cookies_accepted, 1);
        let mut buf = [0u8; 16];
        assert_eq!(conn.recv(&mut buf).ok(), Some(5));
        assert_eq!(&buf[..5], b"hello");
        let info = conn.info(later);
        assert_eq!(info.snd_wscale, 9);
        assert_eq!(
            info.snd_mss,
            1460 - 12,
            "the cookie's MSS less the timestamps"
        );
        assert_eq!(info.options & 3, 3, "SACK and timestamps negotiated");
        // Everything it sends is in the cookie's sequence space, timestamps not going back.
        conn.send(b"world").expect("send");
        let mut sent = Vec::new();
        conn.dispatch(later, &mut |out: Outgoing<'_>| {
            sent.push((out.repr.seq_number, out.repr.options.timestamps()));
            Ok(())
        });
        assert_eq!(sent[0].0, syn_ack.seq_number + 1);
        assert!(
            sent[0]
                .1
                .is_some_and(|(tsval, tsecr)| tsval >= our_tsval && tsecr == 780)
        );
    }

    #[test]
    fn forged_and_stale_cookie_acks_are_reset() {
        let mut b = backlog(1, 8);
        let now = Instant::from_secs(100);
        let first = peer(1, 40000);
        b.process(now, first, &syn_from(first));
        let client = peer(1, 40001);
        let syn_ack = b.process(now, client, &syn_from(client)).expect("cookie");
        // A guessed ISS (even one off by one) and a cookie too old are refused with a reset.
        for guess in [1u32, 12345] {
            let forged = completing_ack(client, syn_ack.seq_number + guess as usize);
            assert!(
                b.process(now, client, &forged)
                    .is_some_and(|r| r.control.rst)
            );
        }
        assert_eq!(b.stats().cookies_rejected, 2);
        let late = now + Duration::from_secs(PERIOD * 4);
        let stale = completing_ack(client, syn_ack.seq_number);
        assert!(
            b.process(late, client, &stale)
                .is_some_and(|r| r.control.rst)
        );
        assert!(b.accept().is_none());
        // In time, the real one is taken.
        assert!(b.process(now, client, &stale).is_none());
        assert_eq!(b.accept().map(|c| c.remote()), Some(client));
    }

    #[test]
    fn data_arriving_before_accept_goes_to_the_completed_connection() {
        let mut b = backlog(8, 8);
        let now = Instant::from_secs(1);
        let client = peer(1, 40000);
        b.process(now, client, &syn_from(client));
        let iss = dispatch(&mut b, now)[0].1;
        let ack = completing_ack(client, iss);
        assert!(b.process(now, client, &ack).is_none());
        // The client's first data, in the same receive batch as its ACK, before any accept.
        let data = TcpRepr {
            payload: b"early",
            ..ack
        };
        assert!(
            b.process(now, client, &data).is_none(),
            "not a stray: no reset"
        );
        assert_eq!(b.stats().resets, 0);
        // It is acknowledged while waiting, and delivered after the accept.
        let mut acks = 0;
        for conn in b.connections_mut() {
            conn.dispatch(now + Duration::from_millis(300), &mut |out: Outgoing<
                '_,
            >| {
                acks += usize::from(out.repr.ack_number == Some(ack.seq_number + 5));
                Ok(())
            });
        }
        assert_eq!(acks, 1);
        let mut conn = b.accept().expect("accepted");
        let mut buf = [0u8; 8];
        assert_eq!(conn.recv(&mut buf).ok(), Some(5));
    }

    #[test]
    fn full_accept_queue_drops_syns_and_defers_completion() {
        let mut b = backlog(8, 1);
        let now = Instant::from_secs(1);
        let (first, second, third) = (peer(1, 40000), peer(1, 40001), peer(1, 40002));
        b.process(now, first, &syn_from(first));
        b.process(now, second, &syn_from(second));
        let sent = dispatch(&mut b, now);
        let iss = |p| sent.iter().find(|(q, _)| *q == p).expect("SYN-ACK").1;
        b.process(now, first, &completing_ack(first, iss(first)));
        assert_eq!(b.ready_len(), 1);
        // The queue is full: the second completion waits, a new SYN is dropped.
        b.process(now, second, &completing_ack(second, iss(second)));
        assert_eq!(b.stats().completions_deferred, 1);
        assert_eq!(b.half_open_len(), 1);
        b.process(now, third, &syn_from(third));
        assert_eq!(b.stats().accept_queue_full, 1);
        // Room again: the client's retransmitted ACK completes it.
        assert!(b.accept().is_some());
        b.process(now, second, &completing_ack(second, iss(second)));
        assert_eq!(b.accept().map(|c| c.remote()), Some(second));
    }

    #[test]
    fn unanswered_syn_acks_give_up_and_resets_end_half_open_connections() {
        let mut b = backlog(8, 8);
        let mut now = Instant::from_secs(1);
        let (silent, resetting) = (peer(9, 1000), peer(1, 40000));
        b.process(now, silent, &syn_from(silent));
        b.process(now, resetting, &syn_from(resetting));
        let sent = dispatch(&mut b, now);
        let iss = sent
            .iter()
            .find(|(p, _)| *p == resetting)
            .expect("SYN-ACK")
            .1;
        let rst = TcpRepr {
            control: TcpControl::RST,
            ack_number: None,
            seq_number: syn_from(resetting).seq_number + 1,
            ..completing_ack(resetting, iss)
        };
        b.process(now, resetting, &rst);
        assert_eq!(b.half_open_len(), 1);
        assert_eq!(b.stats().handshakes_failed, 1);
        let mut syn_acks = 1;
        while let Some(at) = b.poll_at() {
            assert!(at > now || at == Instant::ZERO || at == now);
            now = at.max(now) + Duration::from_millis(1);
            syn_acks += dispatch(&mut b, now).len();
            assert!(now < Instant::from_secs(300), "never gave up");
        }
        assert_eq!(b.half_open_len(), 0);
        assert_eq!(b.stats().handshakes_failed, 2);
        assert_eq!(syn_acks, 1 + config().synack_retries as usize);
    }

    #[test]
    fn segments_for_no_connection_are_reset_or_dropped() {
        let mut b = backlog(8, 8);
        let now = Instant::from_secs(1);
        let stray = peer(1, 40000);
        let rst = b
            .process(now, stray, &completing_ack(stray, TcpSeqNumber(77)))
            .expect("an ACK to a listener is answered with RST");
        assert!(rst.control.rst);
        assert_eq!(rst.seq_number, TcpSeqNumber(78));
        let bare_rst = TcpRepr {
            control: TcpControl::RST,
            ..syn_from(stray)
        };
        assert!(b.process(now, stray, &bare_rst).is_none());
        assert_eq!(b.stats().resets, 1);
        assert_eq!(b.stats().dropped, 1);
        assert_eq!(b.half_open_len(), 0);
    }

    /// Seeded random segments (SYNs, ACKs with guessed and real cookies, RSTs, data, from a
    /// few peers) against small queues: no panic, bounds held, accepted connections past the
    /// handshake.
    #[test]
    fn random_segments_keep_the_queues_bounded_and_consistent() {
        let mut b = backlog(4, 2);
        let mut now = Instant::from_secs(10);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut syn_acks: Vec<(SocketAddrV4, TcpSeqNumber)> = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..20_000 {
            let r = next();
            let src = peer(1 + (r % 3) as u8, 40000 + ((r >> 8) % 6) as u16);
            let base = syn_from(src);
            let seg = match (r >> 16) % 6 {
                0 => base,
                1 => {
                    // An ACK for a SYN-ACK we sent to this peer, if any, else a guess.
                    let iss = syn_acks
                        .iter()
                        .rev()
                        .find(|(p, _)| *p == src)
                        .map(|(_, iss)| *iss)
                        .unwrap_or(TcpSeqNumber((r >> 24) as u32));
                    completing_ack(src, iss)
                }
                2 => TcpRepr {
                    control: TcpControl::RST,
                    ..base
                },
                3 => TcpRepr {
                    payload: b"data",
                    ..completing_ack(src, TcpSeqNumber((r >> 32) as u32))
                },
                4 => TcpRepr {
                    control: TcpControl {
                        fin: true,
                        ..TcpControl::SYN
                    },
                    ..base
                },
                _ => TcpRepr {
                    seq_number: TcpSeqNumber((r >> 20) as u32),
                    ..completing_ack(src, TcpSeqNumber((r >> 40) as u32))
                },
            };
            if let Some(reply) = b.process(now, src, &seg)
                && reply.control.syn
            {
                syn_acks.push((src, reply.seq_number));
            }
            for (p, iss) in dispatch(&mut b, now) {
                syn_acks.push((p, iss));
            }
            if syn_acks.len() > 64 {
                syn_acks.drain(..32);
            }
            assert!(b.half_open_len() <= 4);
            assert!(b.ready_len() <= 2);
            if (r >> 50) % 4 == 0
                && let Some(conn) = b.accept()
            {
                assert_ne!(conn.state(), State::SynReceived);
                accepted.push(conn);
            }
            now += Duration::from_micros((r >> 56) * 1000);
        }
        assert!(!accepted.is_empty(), "some handshakes completed");
        assert!(b.stats().cookies_sent > 0 && b.stats().resets > 0);
    }
}
