//! TCP endpoints the netserver itself holds (paper §3.1, the boundary operations): listeners
//! with their half-open and accept queues ([`TcpBacklog`]), and connections no process holds —
//! handed over by a process that closed or exited (FIN_WAIT, LAST_ACK, TIME_WAIT), or flushed.
//! It is the same engine a client process runs: a connection arrives here as the image the
//! process exported and leaves as the image a process imports (one engine, no second copy).
//!
//! Sans-I/O like the engine: the daemon feeds segments ([`TcpHost::process`]), runs output
//! ([`TcpHost::dispatch`], which names each segment's remote so the daemon can frame it), sleeps
//! until [`TcpHost::poll_at`] and asks [`TcpHost::holds_port`] for port uniqueness. A segment
//! that reaches neither a connection nor a listener is answered with a reset, as before.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddrV4;

use crate::stack::Instant;
use crate::stack::tcp::connection::{
    BacklogStats, EmitError, Outgoing, State, TcpBacklog, TcpConfig, TcpConnection, TcpListener,
    reset_for,
};
use crate::stack::tcp::image::ImageError;
use crate::stack::tcp::isn::IsnGenerator;
use crate::wire::tcp::TcpRepr;

/// Why a request on the host failed (the daemon maps these to errnos).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpHostError {
    /// EADDRINUSE: the port already has a listener, or the 4-tuple a connection.
    AddressInUse,
    /// EINVAL: no listener on that port.
    NotListening,
    /// EINVAL: a handed-over connection in CLOSED or LISTEN, or for another address.
    BadConnection,
    /// The handed-over image did not decode.
    BadImage(ImageError),
}

impl TcpHostError {
    pub fn errno(&self) -> i32 {
        match self {
            TcpHostError::AddressInUse => libc::EADDRINUSE,
            TcpHostError::NotListening
            | TcpHostError::BadConnection
            | TcpHostError::BadImage(_) => libc::EINVAL,
        }
    }
}

/// Bounds on connections the netserver keeps for processes that let them go.
pub const MAX_ORPHANS: usize = 16_384;
pub const MAX_ORPHAN_BYTES: usize = 128 << 20;

/// How many probes an orphan gets, and how far apart (a reset should reach the peer well
/// within a second of the process's death).
const ORPHAN_PROBES: u8 = 4;
const ORPHAN_PROBE_INTERVAL: crate::stack::Duration = crate::stack::Duration::from_millis(200);

/// A connection whose process died with it: only its 4-tuple is known here, so the peer is
/// made to tell its sequence numbers (RFC 5961 challenge ACK to a SYN) and then reset exactly.
#[derive(Debug, Clone, Copy)]
struct Orphan {
    probes_left: u8,
    next_at: Instant,
}

/// Counters for `msock stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpHostStats {
    /// Connections of dead processes reset after the peer's challenge ACK, and those given up.
    pub orphans_reset: u64,
    pub orphans_lost: u64,
    /// Connections handed over by processes.
    pub adopted: u64,
    /// Connections that ended here (closed, timed out, TIME_WAIT over).
    pub finished: u64,
    /// Segments answered with a reset because nothing here wanted them.
    pub resets: u64,
    /// Segments for held connections the engine dropped.
    pub dropped: u64,
}

/// One connection as `msock stat` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldConnection {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: State,
    /// Flushed: a process still holds the socket and reaches it through control requests.
    pub flushed: bool,
}

type Key = (u16, SocketAddrV4);

/// The netserver's TCP endpoints for one local address.
#[derive(Debug)]
pub struct TcpHost {
    addr: std::net::Ipv4Addr,
    isn: IsnGenerator,
    listeners: HashMap<u16, TcpBacklog>,
    connections: HashMap<Key, TcpConnection>,
    /// Connections flushed by a process that still holds the socket: kept after they end
    /// (their owner still reads the error or end of stream) until the owner closes or caches.
    flushed: std::collections::HashSet<Key>,
    /// Connections with work now (a segment arrived, the owner sent or closed): dispatched at
    /// the next [`TcpHost::dispatch`] without a scan of the others.
    dirty: std::collections::HashSet<Key>,
    /// Timer deadlines, earliest first. `scheduled` holds each connection's earliest pending
    /// one; a heap entry that does not match it is stale and skipped.
    timers: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, Key)>>,
    scheduled: HashMap<Key, Instant>,
    /// Connections per local port (port-in-use answers without a scan).
    port_refs: HashMap<u16, usize>,
    /// Connections that ended here since the last [`TcpHost::take_finished`].
    finished_keys: Vec<Key>,
    /// Connections in TIME_WAIT, and those that entered it since the last
    /// [`TcpHost::take_entered_time_wait`] (the port table treats their ports differently).
    time_wait: std::collections::HashSet<Key>,
    entered_time_wait: Vec<Key>,
    orphans: HashMap<Key, Orphan>,
    stats: TcpHostStats,
}

impl TcpHost {
    /// `isn` is the host's secret, shared with its client processes so a connection keeps its
    /// sequence space (and SYN cookies validate) wherever it lives.
    pub fn new(addr: std::net::Ipv4Addr, isn: IsnGenerator) -> TcpHost {
        TcpHost {
            addr,
            isn,
            listeners: HashMap::new(),
            connections: HashMap::new(),
            flushed: std::collections::HashSet::new(),
            dirty: std::collections::HashSet::new(),
            timers: std::collections::BinaryHeap::new(),
            scheduled: HashMap::new(),
            port_refs: HashMap::new(),
            finished_keys: Vec::new(),
            time_wait: std::collections::HashSet::new(),
            entered_time_wait: Vec::new(),
            orphans: HashMap::new(),
            stats: TcpHostStats::default(),
        }
    }

    pub fn stats(&self) -> TcpHostStats {
        self.stats
    }

    /// Listens on `port` with `config` for the connections it opens.
    pub fn listen(
        &mut self,
        port: u16,
        config: TcpConfig,
        syn_backlog: usize,
        accept_backlog: usize,
    ) -> Result<(), TcpHostError> {
        if self.listeners.contains_key(&port) {
            return Err(TcpHostError::AddressInUse);
        }
        let local = SocketAddrV4::new(self.addr, port);
        let listener = TcpListener::new(config, local, self.isn.clone());
        self.listeners
            .insert(port, TcpBacklog::new(listener, syn_backlog, accept_backlog));
        Ok(())
    }

    /// Stops listening on `port`. Completed connections nobody accepted are reset, as Linux
    /// does when the last reference to a listener goes (`inet_csk_listen_stop`); half-open
    /// ones are forgotten. The resets leave on the next [`TcpHost::dispatch`].
    pub fn close_listener(&mut self, port: u16, now: Instant) -> Result<(), TcpHostError> {
        let mut backlog = self
            .listeners
            .remove(&port)
            .ok_or(TcpHostError::NotListening)?;
        while let Some(mut conn) = backlog.accept() {
            conn.abort(now);
            self.insert(conn);
        }
        Ok(())
    }

    /// The oldest completed connection of the listener on `port`.
    pub fn accept(&mut self, port: u16) -> Result<Option<TcpConnection>, TcpHostError> {
        let backlog = self
            .listeners
            .get_mut(&port)
            .ok_or(TcpHostError::NotListening)?;
        Ok(backlog.accept())
    }

    /// Connections waiting in the accept queue of `port` (for readiness of a listening socket).
    pub fn pending(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |b| b.ready_len())
    }

    /// Half-open connections of the listener on `port`.
    pub fn half_open(&self, port: u16) -> usize {
        self.listeners.get(&port).map_or(0, |b| b.half_open_len())
    }

    pub fn listener_stats(&self, port: u16) -> Option<BacklogStats> {
        self.listeners.get(&port).map(|b| b.stats())
    }

    /// Takes over a connection a process no longer holds (closed with data still to deliver,
    /// closing, in TIME_WAIT, or flushed). Its timers keep running here.
    pub fn adopt(&mut self, conn: TcpConnection) -> Result<(), TcpHostError> {
        if matches!(conn.state(), State::Closed | State::Listen) || *conn.local().ip() != self.addr
        {
            return Err(TcpHostError::BadConnection);
        }
        let key = (conn.local().port(), conn.remote());
        if self.connections.contains_key(&key) {
            return Err(TcpHostError::AddressInUse);
        }
        self.stats.adopted += 1;
        self.insert(conn);
        Ok(())
    }

    /// Takes a connection a process flushed (paper §3.1): it runs here while the process keeps
    /// the socket and reaches it through [`TcpHost::flushed_mut`].
    pub fn adopt_flushed(&mut self, conn: TcpConnection) -> Result<(), TcpHostError> {
        let key = (conn.local().port(), conn.remote());
        self.adopt(conn)?;
        self.flushed.insert(key);
        Ok(())
    }

    /// A flushed connection, for its owner's send, receive and shutdown requests.
    pub fn flushed_mut(
        &mut self,
        local_port: u16,
        remote: SocketAddrV4,
    ) -> Option<&mut TcpConnection> {
        let key = (local_port, remote);
        if !self.flushed.contains(&key) {
            return None;
        }
        // The owner may send or read: its output runs at the next dispatch.
        self.dirty.insert(key);
        self.connections.get_mut(&key)
    }

    /// The owner of a flushed connection closed it (or died): it closes as Linux closes a
    /// socket on `close()` — reset when received data was left unread, else the queued data
    /// and a FIN — and then runs to its end here like any connection nobody holds.
    pub fn close_flushed(&mut self, local_port: u16, remote: SocketAddrV4, now: Instant) {
        let key = (local_port, remote);
        if !self.flushed.remove(&key) {
            return;
        }
        self.dirty.insert(key);
        if let Some(conn) = self.connections.get_mut(&key) {
            if conn.recv_queue_len() > 0 {
                conn.abort(now);
            } else {
                conn.close(now);
            }
        }
    }

    /// Flushed connections and their readiness (for the owners' `TcpReady` upcalls).
    pub fn flushed_readiness(
        &self,
    ) -> impl Iterator<Item = (Key, crate::stack::tcp::connection::Readiness)> + '_ {
        self.flushed
            .iter()
            .filter_map(|key| self.connections.get(key).map(|c| (*key, c.readiness())))
    }

    /// Keeps an aborted connection until its reset has been sent (it ends at the next
    /// [`TcpHost::dispatch`]).
    pub fn adopt_aborted(&mut self, conn: TcpConnection) -> Result<(), TcpHostError> {
        let key = (conn.local().port(), conn.remote());
        if self.connections.contains_key(&key) {
            return Err(TcpHostError::AddressInUse);
        }
        self.insert(conn);
        Ok(())
    }

    /// [`TcpHost::adopt`] from the image a process exported (untrusted input).
    pub fn adopt_image(&mut self, image: &[u8], now: Instant) -> Result<(), TcpHostError> {
        let conn = TcpConnection::import(image, now).map_err(TcpHostError::BadImage)?;
        self.adopt(conn)
    }

    /// Hands a held connection back to a process (its image), e.g. a flushed socket being
    /// cached again. `None` if no such connection is held.
    pub fn release(
        &mut self,
        local_port: u16,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let conn = self.connections.remove(&(local_port, remote))?;
        self.untrack((local_port, remote));
        self.flushed.remove(&(local_port, remote));
        Some(conn.export(now))
    }

    /// A process died holding the connection `local_port`–`remote`, whose state died with it:
    /// reset it as Linux resets a socket closed with unread data (the kernel would also have
    /// sent what was unsent; that needs the state, see docs/notes/tcp-ownership.md).
    pub fn reset_orphan(&mut self, local_port: u16, remote: SocketAddrV4, now: Instant) {
        self.orphans.insert(
            (local_port, remote),
            Orphan {
                probes_left: ORPHAN_PROBES,
                next_at: now,
            },
        );
    }

    /// Whether `port` is in use here: a listener or a connection from it (TIME_WAIT included,
    /// as Linux refuses a bind without SO_REUSEADDR while one lingers).
    pub fn holds_port(&self, port: u16) -> bool {
        self.listeners.contains_key(&port) || self.port_refs.contains_key(&port)
    }

    /// An ICMP error quoting a segment of a connection held here (`report.local` is ours):
    /// applied as the process would apply it (path MTU, soft or hard unreachable, RFC 5927
    /// sequence check). Returns whether a held connection took it.
    pub fn on_icmp(&mut self, now: Instant, report: &crate::stack::tcp::icmp::IcmpReport) -> bool {
        let key = (report.local.port(), report.remote);
        match self.connections.get_mut(&key) {
            Some(conn) => {
                self.dirty.insert(key);
                crate::stack::tcp::icmp::apply_icmp(conn, now, report)
            }
            None => false,
        }
    }

    /// Whether the connections nobody holds (handed over, reclaimed after a crash) may take
    /// one more carrying `queued` bytes: at most [`MAX_ORPHANS`] of them with
    /// [`MAX_ORPHAN_BYTES`] queued in all, as Linux bounds orphans (`tcp_max_orphans`,
    /// `tcp_mem`) — beyond that a dying process's connection is reset instead.
    pub fn has_room_for_orphan(&self, queued: usize) -> bool {
        let orphans = self
            .connections
            .iter()
            .filter(|(key, _)| !self.flushed.contains(key));
        let (count, bytes) = orphans.fold((0usize, 0usize), |(n, b), (_, c)| {
            (n + 1, b + c.send_queue_len())
        });
        count < MAX_ORPHANS && bytes + queued <= MAX_ORPHAN_BYTES
    }

    /// The connection held for this 4-tuple.
    pub fn connection(&self, local_port: u16, remote: SocketAddrV4) -> Option<&TcpConnection> {
        self.connections.get(&(local_port, remote))
    }

    /// Whether a connection for this 4-tuple is held (a connect must pick another port).
    pub fn holds_connection(&self, local_port: u16, remote: SocketAddrV4) -> bool {
        self.connections.contains_key(&(local_port, remote))
    }

    /// Every held connection, for `msock stat`.
    pub fn connections(&self) -> impl Iterator<Item = HeldConnection> + '_ {
        self.connections.iter().map(|(key, c)| HeldConnection {
            local: c.local(),
            remote: c.remote(),
            state: c.state(),
            flushed: self.flushed.contains(key),
        })
    }

    /// Ports with a listener.
    pub fn listening_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listeners.keys().copied()
    }

    /// A segment from `src` to our address. Returns a segment to send back to `src` when no
    /// connection took it (a reset, or a listener's SYN cookie).
    pub fn process(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        seg: &TcpRepr<'_>,
    ) -> Option<TcpRepr<'static>> {
        if !self.orphans.is_empty() && self.orphans.contains_key(&(seg.dst_port, src)) {
            // The peer's answer to our probe carries its RCV.NXT: the one acceptable RST.
            if let Some(ack) = seg.ack_number
                && !seg.control.rst
            {
                self.orphans.remove(&(seg.dst_port, src));
                self.stats.orphans_reset += 1;
                return Some(TcpRepr {
                    src_port: seg.dst_port,
                    dst_port: seg.src_port,
                    seq_number: ack,
                    ack_number: None,
                    control: crate::wire::tcp::TcpControl::RST,
                    window_len: 0,
                    urgent_pointer: None,
                    options: crate::wire::tcp::TcpOptions::default(),
                    payload: &[],
                });
            }
            return None;
        }
        if let Some(conn) = self.connections.get_mut(&(seg.dst_port, src)) {
            if conn.process(now, seg) != crate::stack::tcp::connection::Verdict::Accepted {
                self.stats.dropped += 1;
            }
            let in_time_wait = conn.state() == State::TimeWait;
            self.dirty.insert((seg.dst_port, src));
            self.note_time_wait((seg.dst_port, src), in_time_wait);
            return None;
        }
        if let Some(backlog) = self.listeners.get_mut(&seg.dst_port) {
            return backlog.process(now, src, seg);
        }
        let rst = reset_for(seg)?;
        self.stats.resets += 1;
        Some(rst)
    }

    /// Runs every endpoint's output; `emit` gets each segment with its remote address. Ended
    /// connections are dropped afterwards.
    pub fn dispatch(
        &mut self,
        now: Instant,
        emit: &mut dyn FnMut(SocketAddrV4, Outgoing<'_>) -> Result<(), EmitError>,
    ) {
        for backlog in self.listeners.values_mut() {
            for conn in backlog.connections_mut() {
                let remote = conn.remote();
                conn.dispatch(now, &mut |seg| emit(remote, seg));
            }
            backlog.reap();
        }
        // Only connections with work: touched since the last dispatch, or a timer due.
        let mut due: Vec<Key> = self.dirty.drain().collect();
        while let Some(&std::cmp::Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.scheduled.get(&key) == Some(&at) {
                self.scheduled.remove(&key);
                due.push(key);
            }
        }
        due.sort_unstable();
        due.dedup();
        for key in due {
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            let remote = conn.remote();
            conn.dispatch(now, &mut |seg| emit(remote, seg));
            let (ended, next) = (conn.state() == State::Closed, conn.poll_at());
            let in_time_wait = conn.state() == State::TimeWait;
            self.note_time_wait(key, in_time_wait);
            // A flushed connection that ended stays until its owner lets go.
            if ended && !self.flushed.contains(&key) {
                self.connections.remove(&key);
                self.untrack(key);
                self.stats.finished += 1;
                self.finished_keys.push(key);
            } else if let Some(at) = next {
                self.schedule(key, at);
            }
        }
        // Orphans: a SYN (any sequence number) draws the peer's challenge ACK (RFC 5961 §4).
        let stats = &mut self.stats;
        let local = self.addr;
        self.orphans.retain(|&(port, remote), orphan| {
            if orphan.next_at > now {
                return true;
            }
            if orphan.probes_left == 0 {
                stats.orphans_lost += 1;
                return false;
            }
            orphan.probes_left -= 1;
            orphan.next_at = now + ORPHAN_PROBE_INTERVAL;
            let probe = TcpRepr {
                src_port: port,
                dst_port: remote.port(),
                seq_number: crate::wire::tcp::TcpSeqNumber(u32::from(local).rotate_left(7)),
                ack_number: None,
                control: crate::wire::tcp::TcpControl::SYN,
                window_len: 0,
                urgent_pointer: None,
                options: crate::wire::tcp::TcpOptions::default(),
                payload: &[],
            };
            let _ = emit(
                remote,
                Outgoing {
                    repr: probe,
                    payload: [&[], &[]],
                    departure: now,
                },
            );
            true
        });
    }

    /// Whether the connection of this 4-tuple is in TIME_WAIT.
    pub fn in_time_wait(&self, local_port: u16, remote: SocketAddrV4) -> bool {
        self.time_wait.contains(&(local_port, remote))
    }

    /// Connections that entered TIME_WAIT since the last call.
    pub fn take_entered_time_wait(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.entered_time_wait)
    }

    fn note_time_wait(&mut self, key: Key, in_time_wait: bool) {
        if in_time_wait && self.time_wait.insert(key) {
            self.entered_time_wait.push(key);
        }
    }

    /// Connections that ended here (and left) since the last call: their port reservations
    /// can go.
    pub fn take_finished(&mut self) -> Vec<Key> {
        std::mem::take(&mut self.finished_keys)
    }

    /// When [`TcpHost::dispatch`] next has work.
    pub fn poll_at(&self) -> Option<Instant> {
        let listeners = self.listeners.values().filter_map(|b| b.poll_at());
        // The heap's top may be stale (superseded by a later deadline): an early wake-up only.
        let timers = self.timers.peek().map(|std::cmp::Reverse((at, _))| *at);
        let dirty = (!self.dirty.is_empty()).then_some(Instant::from_micros(0));
        let orphans = self.orphans.values().map(|o| o.next_at);
        listeners.chain(timers).chain(dirty).chain(orphans).min()
    }

    fn insert(&mut self, conn: TcpConnection) {
        let key = (conn.local().port(), conn.remote());
        let in_time_wait = conn.state() == State::TimeWait;
        self.connections.insert(key, conn);
        *self.port_refs.entry(key.0).or_default() += 1;
        self.dirty.insert(key);
        self.note_time_wait(key, in_time_wait);
    }

    /// Forgets the bookkeeping of a connection that left `connections`.
    fn untrack(&mut self, key: Key) {
        if let Some(n) = self.port_refs.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.port_refs.remove(&key.0);
            }
        }
        self.scheduled.remove(&key);
        self.dirty.remove(&key);
        self.time_wait.remove(&key);
    }

    /// Makes sure the connection is dispatched by `at`.
    fn schedule(&mut self, key: Key, at: Instant) {
        if self.scheduled.get(&key).is_none_or(|&s| at < s) {
            self.scheduled.insert(key, at);
            self.timers.push(std::cmp::Reverse((at, key)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::stack::Duration;
    use crate::stack::tcp::connection::InitialSequence;
    use crate::wire::tcp::TcpSeqNumber;

    const OURS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);

    fn host() -> TcpHost {
        TcpHost::new(OURS, IsnGenerator::new([4; 16]))
    }

    fn config() -> TcpConfig {
        TcpConfig {
            time_wait: Duration::from_secs(2),
            ..TcpConfig::default()
        }
    }

    /// A segment as it crosses the wire (header plus its payload, owned).
    struct Wire {
        repr: TcpRepr<'static>,
        payload: Vec<u8>,
    }

    fn collect(out: &mut Vec<Wire>) -> impl FnMut(Outgoing<'_>) -> Result<(), EmitError> + '_ {
        move |seg: Outgoing<'_>| {
            let mut payload = seg.payload[0].to_vec();
            payload.extend_from_slice(seg.payload[1]);
            out.push(Wire {
                repr: TcpRepr {
                    payload: &[],
                    ..seg.repr
                },
                payload,
            });
            Ok(())
        }
    }

    /// Moves segments between the host and the peer until both are quiet at `now`.
    fn exchange(host: &mut TcpHost, peer: &mut TcpConnection, now: Instant) -> Vec<Wire> {
        let mut to_peer_log = Vec::new();
        for _ in 0..1000 {
            let mut to_peer = Vec::new();
            host.dispatch(now, &mut |remote, seg| {
                assert_eq!(remote, PEER);
                collect(&mut to_peer)(seg)
            });
            let mut to_host = Vec::new();
            peer.dispatch(now, &mut collect(&mut to_host));
            if to_peer.is_empty() && to_host.is_empty() {
                return to_peer_log;
            }
            for w in &to_host {
                let seg = TcpRepr {
                    payload: &w.payload,
                    ..w.repr
                };
                if let Some(reply) = host.process(now, PEER, &seg) {
                    peer.process(now, &reply);
                }
            }
            for w in to_peer {
                peer.process(
                    now,
                    &TcpRepr {
                        payload: &w.payload,
                        ..w.repr
                    },
                );
                to_peer_log.push(w);
            }
        }
        panic!("no quiet point");
    }

    fn peer_connecting(port: u16, now: Instant) -> TcpConnection {
        let initial = InitialSequence {
            iss: TcpSeqNumber(1000),
            ts_offset: 0,
        };
        TcpConnection::connect(config(), PEER, SocketAddrV4::new(OURS, port), initial, now)
    }

    fn established(host: &mut TcpHost, port: u16, now: Instant) -> (TcpConnection, TcpConnection) {
        host.listen(port, config(), 16, 16).expect("listen");
        let mut peer = peer_connecting(port, now);
        exchange(host, &mut peer, now);
        assert_eq!(peer.state(), State::Established);
        let ours = host.accept(port).expect("listening").expect("accepted");
        assert_eq!(ours.state(), State::Established);
        (ours, peer)
    }

    #[test]
    fn a_flushed_connection_is_served_here_and_closed_as_linux_closes_a_socket() {
        let mut h = host();
        let now = Instant::from_secs(1);
        let (ours, mut peer) = established(&mut h, 81, now);
        h.adopt_flushed(ours).expect("flush");
        assert!(h.connections().all(|c| c.flushed));
        // Its owner's send and receive go through `flushed_mut`.
        let conn = h.flushed_mut(81, PEER).expect("flushed");
        assert_eq!(conn.send(b"from the netserver"), Ok(18));
        peer.send(b"to the owner").expect("send");
        exchange(&mut h, &mut peer, now);
        let mut buf = [0u8; 32];
        assert_eq!(peer.recv(&mut buf), Ok(18));
        let (_, readiness) = h.flushed_readiness().next().expect("readiness");
        assert!(readiness.readable && readiness.writable);
        // Closed with those 12 bytes unread: reset, as Linux's tcp_close.
        h.close_flushed(81, PEER, now);
        assert!(h.flushed_mut(81, PEER).is_none());
        let wire = exchange(&mut h, &mut peer, now);
        assert!(wire.iter().any(|w| w.repr.control.rst), "no RST");
        assert!(!h.holds_connection(81, PEER));

        // Nothing unread: queued data, then FIN.
        let now = Instant::from_secs(5);
        let (ours, mut peer) = established(&mut h, 82, now);
        h.adopt_flushed(ours).expect("flush");
        let conn = h.flushed_mut(82, PEER).expect("flushed");
        conn.send(b"last words").expect("send");
        h.close_flushed(82, PEER, now);
        let wire = exchange(&mut h, &mut peer, now);
        assert!(wire.iter().any(|w| w.repr.control.fin), "no FIN");
        assert!(!wire.iter().any(|w| w.repr.control.rst));
        assert_eq!(peer.recv(&mut buf), Ok(10));
        assert_eq!(&buf[..10], b"last words");
        // A flushed connection that ended stays until its owner lets go (its error is read).
        let (ours, mut peer) = established(&mut h, 83, now);
        h.adopt_flushed(ours).expect("flush");
        peer.abort(now);
        exchange(&mut h, &mut peer, now);
        let conn = h.flushed_mut(83, PEER).expect("kept after the reset");
        assert_eq!(conn.state(), State::Closed);
        assert!(conn.readiness().error);
    }

    #[test]
    fn icmp_frag_needed_reaches_a_connection_held_here() {
        let mut h = host();
        let now = Instant::from_secs(1);
        let (ours, _peer) = established(&mut h, 84, now);
        h.adopt_flushed(ours).expect("flush");
        let conn = h.flushed_mut(84, PEER).expect("flushed");
        conn.send(&[7u8; 20_000]).expect("send");
        let mut sent = Vec::new();
        h.dispatch(now, &mut |_, seg| collect(&mut sent)(seg));
        let first = sent.iter().find(|w| !w.payload.is_empty()).expect("data");
        let report = crate::stack::tcp::icmp::IcmpReport {
            local: SocketAddrV4::new(OURS, 84),
            remote: PEER,
            errno: libc::EMSGSIZE,
            next_hop_mtu: 1200,
            quoted_seq: first.repr.seq_number,
        };
        assert!(h.on_icmp(now, &report));
        assert_eq!(
            h.flushed_mut(84, PEER).expect("flushed").snd_mss(),
            1200 - 40
        );
        let stray = crate::stack::tcp::icmp::IcmpReport {
            remote: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 1),
            ..report
        };
        assert!(!h.on_icmp(now, &stray));
    }

    #[test]
    fn a_listener_here_hands_accepted_connections_out_as_images() {
        let mut h = host();
        let now = Instant::from_secs(1);
        let (ours, mut peer) = established(&mut h, 80, now);
        assert!(h.holds_port(80));
        assert_eq!(
            h.listen(80, config(), 1, 1),
            Err(TcpHostError::AddressInUse)
        );
        // The accepted connection moves to a process as its image and works there.
        let image = ours.export(now);
        let mut moved = TcpConnection::import(&image, now).expect("import");
        peer.send(b"ping").expect("send");
        let mut to_ours = Vec::new();
        peer.dispatch(now, &mut collect(&mut to_ours));
        for w in &to_ours {
            moved.process(
                now,
                &TcpRepr {
                    payload: &w.payload,
                    ..w.repr
                },
            );
        }
        let mut buf = [0u8; 8];
        assert_eq!(moved.recv(&mut buf).ok(), Some(4));
        assert_eq!(&buf[..4], b"ping");
    }

    #[test]
    fn a_closed_connection_handed_over_delivers_its_data_then_lingers_in_time_wait() {
        let mut h = host();
        let mut now = Instant::from_secs(1);
        let (mut ours, mut peer) = established(&mut h, 81, now);
        h.close_listener(81, now).expect("listening");
        // The process writes 100 kB and closes at once, then exits: the netserver finishes.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let n = ours.send(&data).expect("send");
        assert_eq!(n, data.len());
        ours.close(now);
        h.adopt_image(&ours.export(now), now).expect("adopt");
        drop(ours);
        assert!(h.holds_port(81));
        let mut received = Vec::new();
        let mut buf = vec![0u8; 65536];
        for _ in 0..100 {
            exchange(&mut h, &mut peer, now);
            while let Ok(n) = peer.recv(&mut buf) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            if peer.state() == State::CloseWait {
                break;
            }
            now += Duration::from_millis(50);
        }
        assert_eq!(received, data, "every byte delivered by the netserver");
        assert_eq!(peer.state(), State::CloseWait, "then its FIN");
        peer.close(now);
        exchange(&mut h, &mut peer, now);
        let held: Vec<_> = h.connections().collect();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].state, State::TimeWait);
        assert!(h.holds_port(81), "TIME_WAIT keeps the port");
        // TIME_WAIT ends after its 2 s here; the port is free again.
        now += Duration::from_secs(3);
        exchange(&mut h, &mut peer, now);
        assert_eq!(h.connections().count(), 0);
        assert!(!h.holds_port(81));
        assert_eq!(h.stats().adopted, 1);
        assert_eq!(h.stats().finished, 1);
    }

    #[test]
    fn strays_are_reset_and_bad_handovers_refused() {
        let mut h = host();
        let now = Instant::from_secs(1);
        let mut peer = peer_connecting(99, now);
        let sent = {
            let mut out = Vec::new();
            peer.dispatch(now, &mut collect(&mut out));
            out
        };
        let reply = h.process(now, PEER, &sent[0].repr).expect("reset");
        assert!(reply.control.rst);
        assert_eq!(h.stats().resets, 1);
        assert!(matches!(
            h.adopt_image(b"not an image", now),
            Err(TcpHostError::BadImage(_))
        ));
        assert_eq!(h.accept(99).err(), Some(TcpHostError::NotListening));
        // A connection for another address, or one already closed, is not taken.
        let elsewhere = TcpConnection::connect(
            config(),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 5),
            PEER,
            InitialSequence {
                iss: TcpSeqNumber(1),
                ts_offset: 0,
            },
            now,
        );
        assert_eq!(h.adopt(elsewhere), Err(TcpHostError::BadConnection));
    }

    #[test]
    fn closing_a_listener_resets_what_nobody_accepted() {
        let mut h = host();
        let now = Instant::from_secs(1);
        h.listen(82, config(), 16, 16).expect("listen");
        let mut peer = peer_connecting(82, now);
        exchange(&mut h, &mut peer, now);
        assert_eq!(h.pending(82), 1);
        h.close_listener(82, now).expect("listening");
        exchange(&mut h, &mut peer, now);
        assert_eq!(peer.state(), State::Closed, "the peer got a reset");
        assert_eq!(h.connections().count(), 0);
        assert!(!h.holds_port(82));
    }
}
