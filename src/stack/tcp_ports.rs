//! The TCP port table behind `bind`, `listen` and `connect` in the netserver, with Linux 6.x's
//! TCP semantics (net/ipv4/inet_connection_sock.c `inet_csk_get_port`, `inet_bind_conflict`,
//! `inet_csk_find_open_port`, `inet_csk_listen_start`; net/ipv4/inet_hashtables.c
//! `__inet_hash_connect`, `__inet_check_established`; net/ipv4/tcp_minisocks.c
//! `tcp_twsk_unique`). UDP has its own, different rules in [`super::ports`].
//!
//! Every socket that uses a port is an *entry*: its address (wildcard or ours), the options it
//! had (SO_REUSEADDR, SO_REUSEPORT, uid) and its use: bound, listening, connected to a remote,
//! or in TIME_WAIT. Connections the netserver finishes for a process keep the entry of the
//! socket they came from (re-keyed with [`TcpPortTable::hold`]), as Linux keeps a closing
//! socket, and later its TIME_WAIT socket, in the port's bind bucket with the socket's options.
//!
//! Contract:
//! - [`TcpPortTable::bind`] checks, in Linux's order: not bound yet (EINVAL), the address is
//!   the wildcard or ours (EADDRNOTAVAIL), a port below 1024 needs uid 0 (EACCES), then the
//!   port. A new entry conflicts with an existing one whose address overlaps (equal, or either
//!   is the wildcard) unless (a) both set SO_REUSEADDR and the existing one is not listening,
//!   or (b) both set SO_REUSEPORT and the existing one is in TIME_WAIT or has the same uid.
//!   Conflict: EADDRINUSE.
//! - Port 0 (bind, or listen on an unbound socket) takes a port with no entry at all for an
//!   overlapping address (Linux's `inet_csk_find_open_port` without `ip_autobind_reuse`):
//!   random start, ports of the opposite parity to the range's low end first (connect keeps
//!   the low parity), and with SO_REUSEADDR the lower half of the range before the upper.
//!   None left: EADDRINUSE.
//! - [`TcpPortTable::listen`] re-runs the conflict check with the socket listening (so of two
//!   SO_REUSEADDR sockets sharing a port, the second `listen` gets EADDRINUSE; SO_REUSEPORT
//!   sockets of one uid listen together).
//! - [`TcpPortTable::connect`] on a bound socket reserves the 4-tuple: if another entry (any
//!   process's connection, or one the netserver holds) already uses local port and remote,
//!   EADDRNOTAVAIL — except a TIME_WAIT connection that had timestamps, which the new
//!   connection takes over (`tcp_twsk_unique` for an explicitly bound socket: PAWS keeps old
//!   duplicates out); the caller then drops the old connection.
//! - [`TcpPortTable::connect_unbound`] chooses the port as `__inet_hash_connect`: ports of the
//!   range's low parity first; a port nobody uses is taken, a port whose bucket was created by
//!   an earlier connect (never one somebody bound explicitly) is shared when the 4-tuple is
//!   unique (a TIME_WAIT 4-tuple is not: `tcp_tw_reuse` is loopback-only by default). None
//!   left: EADDRNOTAVAIL.
//! - [`TcpPortTable::inherit`] registers a connection accepted from a listener: it shares the
//!   listener's port with the listener's options and uid (`__inet_inherit_port`).
//!
//! Simplifications, with the reason: one local address (the netserver's), so "overlap" is
//! wildcard-or-equal; no SO_BINDTODEVICE; a bucket created by connect stops being shareable as
//! soon as an explicit bind joins it (Linux's `fastreuse` bookkeeping keeps it shareable in
//! a corner case where the joining socket sets both options).
#![forbid(unsafe_code)]

use core::fmt;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Identifies a socket (an endpoint id, or a netserver-held connection's pseudo owner).
pub type Owner = u64;

/// Linux's `ip_local_port_range` default.
pub const EPHEMERAL_DEFAULT: (u16, u16) = (32768, 60999);
/// Linux's `ip_unprivileged_port_start` default.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Table configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPortConfig {
    /// Inclusive ephemeral range (low, high), as `ip_local_port_range`.
    pub ephemeral: (u16, u16),
    /// Any uid may bind below 1024 (`ip_unprivileged_port_start=0`).
    pub allow_unprivileged_low_ports: bool,
    /// Our address: the only non-wildcard address a socket may bind.
    pub local_addr: Ipv4Addr,
    /// Seed of the ephemeral start generator (deterministic tests).
    pub seed: u64,
}

impl TcpPortConfig {
    /// Linux defaults for `local_addr`, with a random seed.
    pub fn new(local_addr: Ipv4Addr) -> TcpPortConfig {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x7463_7070_u64);
        TcpPortConfig {
            ephemeral: EPHEMERAL_DEFAULT,
            allow_unprivileged_low_ports: false,
            local_addr,
            seed,
        }
    }
}

/// A socket's options when it binds (or autobinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    pub owner: Owner,
    /// SO_REUSEADDR.
    pub reuse_addr: bool,
    /// SO_REUSEPORT.
    pub reuse_port: bool,
    /// The process's uid (SO_PEERCRED).
    pub uid: u32,
}

/// What an entry is doing with its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortUse {
    Bound,
    Listening,
    /// A connection (synchronizing, established or closing) to `remote`.
    Connected {
        remote: SocketAddrV4,
    },
    /// TIME_WAIT towards `remote`; `timestamps`: the connection used TCP timestamps.
    TimeWait {
        remote: SocketAddrV4,
        timestamps: bool,
    },
}

impl PortUse {
    fn remote(self) -> Option<SocketAddrV4> {
        match self {
            PortUse::Connected { remote } | PortUse::TimeWait { remote, .. } => Some(remote),
            _ => None,
        }
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpPortError {
    /// The port is taken (bind, listen): EADDRINUSE.
    AddrInUse,
    /// No ephemeral port for bind/listen: EADDRINUSE.
    NoEphemeralPort,
    /// Not our address, a 4-tuple in use, or no port for connect: EADDRNOTAVAIL.
    AddrNotAvailable,
    /// A privileged port without privilege: EACCES.
    PermissionDenied,
    /// Already bound: EINVAL.
    AlreadyBound,
    /// The owner has no entry, or is not in a state for the operation: EINVAL.
    InvalidState,
    /// Already connected: EISCONN.
    IsConnected,
}

impl TcpPortError {
    pub fn errno(self) -> i32 {
        match self {
            TcpPortError::AddrInUse | TcpPortError::NoEphemeralPort => libc::EADDRINUSE,
            TcpPortError::AddrNotAvailable => libc::EADDRNOTAVAIL,
            TcpPortError::PermissionDenied => libc::EACCES,
            TcpPortError::AlreadyBound | TcpPortError::InvalidState => libc::EINVAL,
            TcpPortError::IsConnected => libc::EISCONN,
        }
    }
}

impl fmt::Display for TcpPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcpPortError::AddrInUse => "address in use",
            TcpPortError::NoEphemeralPort => "no ephemeral port available",
            TcpPortError::AddrNotAvailable => "address not available",
            TcpPortError::PermissionDenied => "privileged port",
            TcpPortError::AlreadyBound => "already bound",
            TcpPortError::InvalidState => "invalid state",
            TcpPortError::IsConnected => "already connected",
        })
    }
}

impl std::error::Error for TcpPortError {}

/// A successful connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// The connection's local address (ours, the chosen port).
    pub local: SocketAddrV4,
    /// A TIME_WAIT connection the new one took over (its entry is gone; the caller ends it).
    pub took_over: Option<Owner>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: Owner,
    addr: Ipv4Addr,
    reuse_addr: bool,
    reuse_port: bool,
    uid: u32,
    state: PortUse,
    /// The connection used TCP timestamps (known for connections handed to the netserver).
    timestamps: bool,
}

impl Entry {
    /// `inet_bind_conflict` with `relax` and `reuseport_ok` (explicit bind, listen): whether
    /// `self` may not share the port with `other`.
    fn conflicts(&self, other: &Entry) -> bool {
        if self.owner == other.owner || !addrs_overlap(self.addr, other.addr) {
            return false;
        }
        if self.reuse_addr && other.reuse_addr && other.state != PortUse::Listening {
            return false;
        }
        let reuse_port_group = self.reuse_port
            && other.reuse_port
            && (matches!(other.state, PortUse::TimeWait { .. }) || self.uid == other.uid);
        !reuse_port_group
    }
}

fn addrs_overlap(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// The sockets on one port (Linux's bind bucket).
#[derive(Debug, Default)]
struct Bucket {
    entries: Vec<Entry>,
    /// Created by a connect's port choice and joined by nothing else: later connects may
    /// share it (`fastreuse == -1`).
    connect_shareable: bool,
}

/// The TCP port table. See the module documentation for the rules.
#[derive(Debug)]
pub struct TcpPortTable {
    config: TcpPortConfig,
    buckets: BTreeMap<u16, Bucket>,
    by_owner: HashMap<Owner, u16>,
    rng: u64,
}

impl TcpPortTable {
    pub fn new(config: TcpPortConfig) -> TcpPortTable {
        let mut table = TcpPortTable {
            config,
            buckets: BTreeMap::new(),
            by_owner: HashMap::new(),
            rng: config.seed,
        };
        table.set_ephemeral_range(config.ephemeral.0, config.ephemeral.1);
        table
    }

    pub fn config(&self) -> &TcpPortConfig {
        &self.config
    }

    /// Changes the ephemeral range (`ip_local_port_range` can change at any time); a range
    /// with `low` 0 or above `high` is clamped to something valid.
    pub fn set_ephemeral_range(&mut self, low: u16, high: u16) {
        let low = low.max(1);
        self.config.ephemeral = (low, high.max(low));
    }

    fn entry(&self, owner: Owner) -> Option<&Entry> {
        let port = self.by_owner.get(&owner)?;
        self.buckets
            .get(port)?
            .entries
            .iter()
            .find(|e| e.owner == owner)
    }

    fn entry_mut(&mut self, owner: Owner) -> Option<&mut Entry> {
        let port = self.by_owner.get(&owner)?;
        self.buckets
            .get_mut(port)?
            .entries
            .iter_mut()
            .find(|e| e.owner == owner)
    }

    fn conflict_on(&self, port: u16, new: &Entry) -> bool {
        self.buckets
            .get(&port)
            .is_some_and(|b| b.entries.iter().any(|e| new.conflicts(e)))
    }

    fn insert(&mut self, port: u16, entry: Entry, connect_created: bool) {
        let bucket = self.buckets.entry(port).or_insert_with(|| Bucket {
            entries: Vec::new(),
            connect_shareable: connect_created,
        });
        if !connect_created {
            bucket.connect_shareable = false;
        }
        bucket.entries.push(entry);
        self.by_owner.insert(entry.owner, port);
    }

    /// `bind(2)` of `socket` to `local` (port 0: ephemeral).
    pub fn bind(
        &mut self,
        socket: TcpSocket,
        local: SocketAddrV4,
    ) -> Result<SocketAddrV4, TcpPortError> {
        if self.by_owner.contains_key(&socket.owner) {
            return Err(TcpPortError::AlreadyBound);
        }
        let addr = *local.ip();
        if !addr.is_unspecified() && addr != self.config.local_addr {
            return Err(TcpPortError::AddrNotAvailable);
        }
        let port = local.port();
        if port != 0
            && port < FIRST_UNPRIVILEGED_PORT
            && socket.uid != 0
            && !self.config.allow_unprivileged_low_ports
        {
            return Err(TcpPortError::PermissionDenied);
        }
        let entry = Entry {
            owner: socket.owner,
            addr,
            reuse_addr: socket.reuse_addr,
            reuse_port: socket.reuse_port,
            uid: socket.uid,
            state: PortUse::Bound,
            timestamps: false,
        };
        let port = if port == 0 {
            self.find_open_port(&entry)?
        } else if self.conflict_on(port, &entry) {
            return Err(TcpPortError::AddrInUse);
        } else {
            port
        };
        self.insert(port, entry, false);
        Ok(SocketAddrV4::new(addr, port))
    }

    /// `inet_csk_find_open_port` (no `ip_autobind_reuse`): a port with no entry whose address
    /// overlaps ours.
    fn find_open_port(&mut self, new: &Entry) -> Result<u16, TcpPortError> {
        let (low, high) = self.config.ephemeral;
        let (low, high) = (u32::from(low), u32::from(high) + 1);
        let halves: Vec<(u32, u32)> = if new.reuse_addr && high - low >= 4 {
            let half = low + (((high - low) >> 2) << 1);
            vec![(low, half), (half, high)]
        } else {
            vec![(low, high)]
        };
        for (lo, hi) in halves {
            let random = self.next_random();
            // Bind takes the parity opposite to the range's low end first.
            if let Some(port) = scan(lo, hi, random, true).find(|&p| {
                self.buckets.get(&p).is_none_or(|b| {
                    !b.entries
                        .iter()
                        .any(|e| e.owner != new.owner && addrs_overlap(e.addr, new.addr))
                })
            }) {
                return Ok(port);
            }
        }
        Err(TcpPortError::NoEphemeralPort)
    }

    /// `listen(2)` of a bound socket: the conflict check again, now as a listener. Listening
    /// again is a no-op.
    pub fn listen(&mut self, owner: Owner) -> Result<SocketAddrV4, TcpPortError> {
        let Some(&port) = self.by_owner.get(&owner) else {
            return Err(TcpPortError::InvalidState);
        };
        let Some(entry) = self.entry(owner).copied() else {
            return Err(TcpPortError::InvalidState);
        };
        match entry.state {
            PortUse::Bound => {}
            PortUse::Listening => return Ok(SocketAddrV4::new(entry.addr, port)),
            _ => return Err(TcpPortError::InvalidState),
        }
        let listening = Entry {
            state: PortUse::Listening,
            ..entry
        };
        if self.conflict_on(port, &listening) {
            return Err(TcpPortError::AddrInUse);
        }
        if let Some(e) = self.entry_mut(owner) {
            e.state = PortUse::Listening;
        }
        Ok(SocketAddrV4::new(entry.addr, port))
    }

    /// Whether the 4-tuple (our `port`, `remote`) is free for a new connection; `Err` with the
    /// TIME_WAIT owner it may take over when `take_over_time_wait`.
    fn four_tuple_free(
        &self,
        port: u16,
        remote: SocketAddrV4,
        take_over_time_wait: bool,
    ) -> Result<Option<Owner>, TcpPortError> {
        let Some(bucket) = self.buckets.get(&port) else {
            return Ok(None);
        };
        let mut took_over = None;
        for e in &bucket.entries {
            match e.state {
                PortUse::TimeWait {
                    remote: r,
                    timestamps: true,
                } if r == remote && take_over_time_wait => took_over = Some(e.owner),
                state if state.remote() == Some(remote) => {
                    return Err(TcpPortError::AddrNotAvailable);
                }
                _ => {}
            }
        }
        Ok(took_over)
    }

    /// `connect(2)` of a bound socket to `remote`: reserves the 4-tuple.
    pub fn connect(
        &mut self,
        owner: Owner,
        remote: SocketAddrV4,
    ) -> Result<Connected, TcpPortError> {
        let Some(&port) = self.by_owner.get(&owner) else {
            return Err(TcpPortError::InvalidState);
        };
        match self.entry(owner).map(|e| e.state) {
            Some(PortUse::Bound) => {}
            Some(PortUse::Listening) => return Err(TcpPortError::IsConnected),
            Some(_) => return Err(TcpPortError::IsConnected),
            None => return Err(TcpPortError::InvalidState),
        }
        let took_over = self.four_tuple_free(port, remote, true)?;
        if let Some(old) = took_over {
            self.release(old);
        }
        let local_addr = self.config.local_addr;
        if let Some(e) = self.entry_mut(owner) {
            e.state = PortUse::Connected { remote };
            // A wildcard-bound socket takes the route's source address (ours) on connect.
            e.addr = local_addr;
        }
        Ok(Connected {
            local: SocketAddrV4::new(local_addr, port),
            took_over,
        })
    }

    /// `connect(2)` of an unbound socket: chooses the port (`__inet_hash_connect`) and
    /// reserves the 4-tuple.
    pub fn connect_unbound(
        &mut self,
        socket: TcpSocket,
        remote: SocketAddrV4,
    ) -> Result<Connected, TcpPortError> {
        if self.by_owner.contains_key(&socket.owner) {
            return Err(TcpPortError::AlreadyBound);
        }
        let (low, high) = self.config.ephemeral;
        let random = self.next_random();
        let port = scan(u32::from(low), u32::from(high) + 1, random, false).find(|p| {
            match self.buckets.get(p) {
                None => true,
                Some(b) => {
                    b.connect_shareable
                        && matches!(self.four_tuple_free(*p, remote, false), Ok(None))
                }
            }
        });
        let Some(port) = port else {
            return Err(TcpPortError::AddrNotAvailable);
        };
        let local = SocketAddrV4::new(self.config.local_addr, port);
        let entry = Entry {
            owner: socket.owner,
            addr: *local.ip(),
            reuse_addr: socket.reuse_addr,
            reuse_port: socket.reuse_port,
            uid: socket.uid,
            state: PortUse::Connected { remote },
            timestamps: false,
        };
        self.insert(port, entry, true);
        Ok(Connected {
            local,
            took_over: None,
        })
    }

    /// A connection accepted from listener `listener` becomes entry `child` on the
    /// listener's port, with the listener's options and uid.
    pub fn inherit(
        &mut self,
        listener: Owner,
        child: Owner,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, TcpPortError> {
        if self.by_owner.contains_key(&child) {
            return Err(TcpPortError::AlreadyBound);
        }
        let Some(&port) = self.by_owner.get(&listener) else {
            return Err(TcpPortError::InvalidState);
        };
        let Some(parent) = self.entry(listener).copied() else {
            return Err(TcpPortError::InvalidState);
        };
        let entry = Entry {
            owner: child,
            addr: self.config.local_addr,
            state: PortUse::Connected { remote },
            ..parent
        };
        // The child joins the parent's bucket as it is (no conflict check, as Linux).
        if let Some(bucket) = self.buckets.get_mut(&port) {
            bucket.entries.push(entry);
        }
        self.by_owner.insert(child, port);
        Ok(SocketAddrV4::new(self.config.local_addr, port))
    }

    /// Re-keys `owner`'s entry to `held` (a connection the netserver now finishes), keeping its
    /// options; it is connected to `remote` from then on, `timestamps` saying whether the
    /// connection uses TCP timestamps. False if `owner` has no entry or `held` already has one.
    pub fn hold(
        &mut self,
        owner: Owner,
        held: Owner,
        remote: SocketAddrV4,
        timestamps: bool,
    ) -> bool {
        if self.by_owner.contains_key(&held) {
            return false;
        }
        let local_addr = self.config.local_addr;
        let Some(e) = self.entry_mut(owner) else {
            return false;
        };
        e.owner = held;
        e.addr = local_addr;
        e.timestamps = timestamps;
        if !matches!(e.state, PortUse::TimeWait { .. }) {
            e.state = PortUse::Connected { remote };
        }
        if let Some(port) = self.by_owner.remove(&owner) {
            self.by_owner.insert(held, port);
        }
        true
    }

    /// A held connection reached TIME_WAIT.
    pub fn enter_time_wait(&mut self, owner: Owner) {
        if let Some(e) = self.entry_mut(owner)
            && let Some(remote) = e.state.remote()
        {
            e.state = PortUse::TimeWait {
                remote,
                timestamps: e.timestamps,
            };
        }
    }

    /// Reserves our `port` for a connection to `remote` whose socket's entry is unknown, with
    /// the strictest options (no SO_REUSEADDR, no SO_REUSEPORT, no timestamps). False if
    /// `owner` already has an entry.
    pub fn reserve(&mut self, owner: Owner, port: u16, remote: SocketAddrV4) -> bool {
        if self.by_owner.contains_key(&owner) {
            return false;
        }
        let entry = Entry {
            owner,
            addr: self.config.local_addr,
            reuse_addr: false,
            reuse_port: false,
            uid: 0,
            state: PortUse::Connected { remote },
            timestamps: false,
        };
        self.insert(port, entry, false);
        true
    }

    /// A listener that could not start after all goes back to bound.
    pub fn unlisten(&mut self, owner: Owner) {
        if let Some(e) = self.entry_mut(owner)
            && e.state == PortUse::Listening
        {
            e.state = PortUse::Bound;
        }
    }

    /// Removes `owner`'s entry; returns its local address.
    pub fn release(&mut self, owner: Owner) -> Option<SocketAddrV4> {
        let port = self.by_owner.remove(&owner)?;
        let bucket = self.buckets.get_mut(&port)?;
        let index = bucket.entries.iter().position(|e| e.owner == owner)?;
        let entry = bucket.entries.remove(index);
        if bucket.entries.is_empty() {
            self.buckets.remove(&port);
        }
        Some(SocketAddrV4::new(entry.addr, port))
    }

    /// `owner`'s local address and use.
    pub fn get(&self, owner: Owner) -> Option<(SocketAddrV4, PortUse)> {
        let port = *self.by_owner.get(&owner)?;
        self.entry(owner)
            .map(|e| (SocketAddrV4::new(e.addr, port), e.state))
    }

    /// The entries on `port`, in the order they came.
    pub fn on_port(&self, port: u16) -> impl Iterator<Item = (Owner, PortUse)> + '_ {
        self.buckets
            .get(&port)
            .into_iter()
            .flat_map(|b| b.entries.iter().map(|e| (e.owner, e.state)))
    }

    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Linux's ephemeral scan over `[low, high)`: an even count of ports (`remaining &= ~1`), from
/// a random offset, one parity first (`odd_first`: offsets odd relative to `low`, as bind;
/// else even, as connect), stepping by two with wrap-around, then the other parity.
fn scan(low: u32, high: u32, random: u64, odd_first: bool) -> impl Iterator<Item = u16> + Clone {
    let span = high.saturating_sub(low);
    let remaining = if span > 1 { span & !1 } else { span };
    let offset = if remaining == 0 {
        0
    } else {
        (random % u64::from(remaining)) as u32
    };
    let first = if odd_first { offset | 1 } else { offset & !1 };
    let (passes, per_pass) = match remaining {
        0 => (0, 0),
        1 => (1, 1),
        r => (2, r / 2),
    };
    let modulus = remaining.max(1);
    (0..passes).flat_map(move |pass| {
        let start = if pass == 0 { first } else { first ^ 1 };
        (0..per_pass).map(move |i| (low + (start + 2 * i) % modulus) as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn table() -> TcpPortTable {
        TcpPortTable::new(TcpPortConfig {
            seed: 42,
            ..TcpPortConfig::new(OURS)
        })
    }

    fn sock(owner: Owner) -> TcpSocket {
        TcpSocket {
            owner,
            reuse_addr: false,
            reuse_port: false,
            uid: 1000,
        }
    }

    fn ra(owner: Owner) -> TcpSocket {
        TcpSocket {
            reuse_addr: true,
            ..sock(owner)
        }
    }

    fn rp(owner: Owner, uid: u32) -> TcpSocket {
        TcpSocket {
            reuse_port: true,
            uid,
            ..sock(owner)
        }
    }

    fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(ip, port)
    }

    fn peer(port: u16) -> SocketAddrV4 {
        at(PEER, port)
    }

    #[test]
    fn plain_binds_conflict_on_overlapping_addresses() {
        let mut t = table();
        assert_eq!(t.bind(sock(1), at(OURS, 5000)), Ok(at(OURS, 5000)));
        assert_eq!(
            t.bind(sock(2), at(OURS, 5000)),
            Err(TcpPortError::AddrInUse)
        );
        assert_eq!(t.bind(sock(2), at(ANY, 5000)), Err(TcpPortError::AddrInUse));
        assert_eq!(t.bind(sock(2), at(OURS, 5001)), Ok(at(OURS, 5001)));
        assert_eq!(TcpPortError::AddrInUse.errno(), libc::EADDRINUSE);
        let mut t = table();
        assert!(t.bind(sock(1), at(ANY, 6000)).is_ok());
        assert_eq!(
            t.bind(sock(2), at(OURS, 6000)),
            Err(TcpPortError::AddrInUse)
        );
    }

    #[test]
    fn address_privilege_and_double_bind_checks() {
        let mut t = table();
        let other = Ipv4Addr::new(198, 18, 0, 9);
        assert_eq!(
            t.bind(sock(1), at(other, 80)),
            Err(TcpPortError::AddrNotAvailable),
            "address before privilege"
        );
        assert_eq!(
            t.bind(sock(1), at(ANY, 80)),
            Err(TcpPortError::PermissionDenied)
        );
        assert_eq!(TcpPortError::PermissionDenied.errno(), libc::EACCES);
        assert!(t.bind(TcpSocket { uid: 0, ..sock(1) }, at(ANY, 80)).is_ok());
        assert_eq!(
            t.bind(sock(1), at(ANY, 5000)),
            Err(TcpPortError::AlreadyBound)
        );
        assert_eq!(TcpPortError::AlreadyBound.errno(), libc::EINVAL);
        let mut open = TcpPortTable::new(TcpPortConfig {
            allow_unprivileged_low_ports: true,
            ..TcpPortConfig::new(OURS)
        });
        assert!(open.bind(sock(1), at(ANY, 80)).is_ok());
    }

    #[test]
    fn reuse_addr_shares_until_one_listens() {
        let mut t = table();
        assert!(t.bind(ra(1), at(ANY, 5000)).is_ok());
        assert!(t.bind(ra(2), at(OURS, 5000)).is_ok());
        assert_eq!(t.listen(1), Ok(at(ANY, 5000)), "the other is not listening");
        assert_eq!(t.listen(1), Ok(at(ANY, 5000)), "listening again");
        assert_eq!(t.listen(2), Err(TcpPortError::AddrInUse), "second listener");
        assert_eq!(
            t.bind(ra(3), at(ANY, 5000)),
            Err(TcpPortError::AddrInUse),
            "never over a listener"
        );
        t.release(1);
        assert_eq!(t.listen(2), Ok(at(OURS, 5000)));
    }

    #[test]
    fn reuse_addr_needs_both_sockets() {
        let mut t = table();
        assert!(t.bind(sock(1), at(ANY, 5000)).is_ok());
        assert_eq!(t.bind(ra(2), at(ANY, 5000)), Err(TcpPortError::AddrInUse));
        let mut t = table();
        assert!(t.bind(ra(1), at(ANY, 5000)).is_ok());
        assert_eq!(t.bind(sock(2), at(ANY, 5000)), Err(TcpPortError::AddrInUse));
    }

    #[test]
    fn reuse_port_needs_all_sockets_and_one_uid() {
        let mut t = table();
        assert!(t.bind(rp(1, 1000), at(OURS, 7000)).is_ok());
        assert!(t.listen(1).is_ok());
        assert!(
            t.bind(rp(2, 1000), at(OURS, 7000)).is_ok(),
            "joins a listener"
        );
        assert!(t.listen(2).is_ok(), "listeners share");
        assert_eq!(
            t.bind(rp(3, 1001), at(OURS, 7000)),
            Err(TcpPortError::AddrInUse),
            "another uid"
        );
        assert_eq!(
            t.bind(sock(3), at(ANY, 7000)),
            Err(TcpPortError::AddrInUse),
            "without SO_REUSEPORT"
        );
    }

    #[test]
    fn time_wait_keeps_its_sockets_options() {
        let mut t = table();
        // A SO_REUSEADDR socket's TIME_WAIT admits SO_REUSEADDR binds only.
        assert!(t.bind(ra(1), at(OURS, 5000)).is_ok());
        assert!(t.connect(1, peer(80)).is_ok());
        assert!(t.hold(1, 100, peer(80), true));
        t.enter_time_wait(100);
        assert_eq!(
            t.bind(sock(2), at(OURS, 5000)),
            Err(TcpPortError::AddrInUse)
        );
        assert!(t.bind(ra(2), at(OURS, 5000)).is_ok());
        // One without: nobody binds over it with SO_REUSEADDR alone …
        let mut t = table();
        assert!(t.bind(sock(1), at(OURS, 5000)).is_ok());
        assert!(t.connect(1, peer(80)).is_ok());
        assert!(t.hold(1, 100, peer(80), true));
        t.enter_time_wait(100);
        assert_eq!(t.bind(ra(2), at(OURS, 5000)), Err(TcpPortError::AddrInUse));
        // … and SO_REUSEPORT ignores a TIME_WAIT socket's uid.
        let mut t = table();
        assert!(t.bind(rp(1, 0), at(OURS, 5000)).is_ok());
        assert!(t.connect(1, peer(80)).is_ok());
        assert!(
            t.bind(rp(2, 7), at(OURS, 5000)).is_err(),
            "live: uid counts"
        );
        assert!(t.hold(1, 100, peer(80), true));
        t.enter_time_wait(100);
        assert!(
            t.bind(rp(2, 7), at(OURS, 5000)).is_ok(),
            "TIME_WAIT: it does not"
        );
    }

    #[test]
    fn connect_reserves_the_four_tuple() {
        let mut t = table();
        assert!(t.bind(ra(1), at(OURS, 5000)).is_ok());
        assert!(t.bind(ra(2), at(ANY, 5000)).is_ok());
        assert_eq!(
            t.connect(1, peer(80)),
            Ok(Connected {
                local: at(OURS, 5000),
                took_over: None
            })
        );
        assert_eq!(t.connect(2, peer(80)), Err(TcpPortError::AddrNotAvailable));
        assert_eq!(TcpPortError::AddrNotAvailable.errno(), libc::EADDRNOTAVAIL);
        assert_eq!(
            t.get(2),
            Some((at(ANY, 5000), PortUse::Bound)),
            "still bound"
        );
        assert!(t.connect(2, peer(81)).is_ok(), "another remote");
        assert_eq!(t.connect(2, peer(82)), Err(TcpPortError::IsConnected));
        assert_eq!(
            t.get(2),
            Some((at(OURS, 5000), PortUse::Connected { remote: peer(81) }))
        );
        assert_eq!(t.connect(9, peer(80)), Err(TcpPortError::InvalidState));
        // An accepted connection holds its 4-tuple too.
        let mut t = table();
        assert!(t.bind(ra(1), at(ANY, 6000)).is_ok());
        assert!(t.listen(1).is_ok());
        assert_eq!(t.inherit(1, 2, peer(80)), Ok(at(OURS, 6000)));
        assert_eq!(t.connect(1, peer(80)), Err(TcpPortError::IsConnected));
        t.release(1);
        assert!(
            t.bind(ra(3), at(OURS, 6000)).is_ok(),
            "child has SO_REUSEADDR"
        );
        assert_eq!(t.connect(3, peer(80)), Err(TcpPortError::AddrNotAvailable));
        assert!(t.connect(3, peer(81)).is_ok());
    }

    #[test]
    fn accepted_children_keep_a_plain_listeners_port() {
        let mut t = table();
        assert!(t.bind(sock(1), at(ANY, 6000)).is_ok());
        assert!(t.listen(1).is_ok());
        assert!(t.inherit(1, 2, peer(80)).is_ok());
        assert_eq!(t.inherit(1, 2, peer(81)), Err(TcpPortError::AlreadyBound));
        assert_eq!(t.inherit(9, 3, peer(81)), Err(TcpPortError::InvalidState));
        t.release(1);
        assert_eq!(t.bind(ra(3), at(ANY, 6000)), Err(TcpPortError::AddrInUse));
        t.release(2);
        assert!(t.bind(sock(3), at(ANY, 6000)).is_ok());
    }

    #[test]
    fn time_wait_with_timestamps_is_taken_over_by_a_bound_connect() {
        let mut t = table();
        assert!(t.bind(ra(1), at(OURS, 5000)).is_ok());
        assert!(t.connect(1, peer(80)).is_ok());
        assert!(t.hold(1, 100, peer(80), true));
        assert!(t.bind(ra(2), at(OURS, 5000)).is_ok());
        assert_eq!(
            t.connect(2, peer(80)),
            Err(TcpPortError::AddrNotAvailable),
            "not yet in TIME_WAIT"
        );
        t.enter_time_wait(100);
        assert_eq!(
            t.connect(2, peer(80)),
            Ok(Connected {
                local: at(OURS, 5000),
                took_over: Some(100)
            })
        );
        assert_eq!(t.get(100), None);
        assert_eq!(t.on_port(5000).count(), 1);
        // Without timestamps (no PAWS) the TIME_WAIT 4-tuple stays taken.
        let mut t = table();
        assert!(t.bind(ra(1), at(OURS, 5000)).is_ok());
        assert!(t.connect(1, peer(80)).is_ok());
        assert!(t.hold(1, 100, peer(80), false));
        t.enter_time_wait(100);
        assert!(t.bind(ra(2), at(OURS, 5000)).is_ok());
        assert_eq!(
            t.connect(2, peer(80)),
            Err(TcpPortError::AddrNotAvailable),
            "no timestamps, no PAWS"
        );
        // A connection whose socket is unknown is reserved with the strictest options.
        assert!(t.reserve(200, 5001, peer(80)));
        assert!(!t.reserve(200, 5002, peer(80)));
        assert_eq!(t.bind(ra(3), at(ANY, 5001)), Err(TcpPortError::AddrInUse));
        t.enter_time_wait(200);
        assert!(
            t.bind(ra(3), at(ANY, 5001)).is_err(),
            "TIME_WAIT without SO_REUSEADDR"
        );
        assert!(t.bind(ra(3), at(ANY, 5002)).is_ok());
        assert_eq!(
            t.connect(3, peer(80)),
            Ok(Connected {
                local: at(OURS, 5002),
                took_over: None
            })
        );
    }

    #[test]
    fn hold_rekeys_and_release_frees() {
        let mut t = table();
        assert!(t.bind(sock(1), at(ANY, 5000)).is_ok());
        assert!(!t.hold(2, 100, peer(80), true), "no such owner");
        assert!(t.hold(1, 100, peer(80), true));
        assert!(!t.hold(1, 101, peer(80), true), "moved");
        assert_eq!(
            t.get(100),
            Some((at(OURS, 5000), PortUse::Connected { remote: peer(80) }))
        );
        assert_eq!(t.bind(sock(2), at(ANY, 5000)), Err(TcpPortError::AddrInUse));
        assert_eq!(t.release(100), Some(at(OURS, 5000)));
        assert_eq!(t.release(100), None);
        assert!(t.is_empty());
        assert!(t.bind(sock(2), at(ANY, 5000)).is_ok());
        assert_eq!(t.len(), 1);
    }

    fn small(low: u16, high: u16, seed: u64) -> TcpPortTable {
        TcpPortTable::new(TcpPortConfig {
            ephemeral: (low, high),
            seed,
            ..TcpPortConfig::new(OURS)
        })
    }

    #[test]
    fn scan_covers_an_even_count_parity_first() {
        for random in 0..16 {
            let odd: Vec<u16> = scan(40000, 40008, random, true).collect();
            assert_eq!(odd.len(), 8);
            assert!(odd[..4].iter().all(|p| p % 2 == 1), "{odd:?}");
            assert!(odd[4..].iter().all(|p| p % 2 == 0), "{odd:?}");
            let mut sorted = odd.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (40000..40008).collect::<Vec<u16>>());
            let even: Vec<u16> = scan(40000, 40008, random, false).collect();
            assert!(even[..4].iter().all(|p| p % 2 == 0), "{even:?}");
        }
        // An odd span leaves its last port out, as Linux does.
        let three: Vec<u16> = scan(40000, 40003, 5, false).collect();
        assert_eq!(three.len(), 2);
        assert!(!three.contains(&40002));
        assert_eq!(
            scan(40000, 40001, 5, true).collect::<Vec<u16>>(),
            vec![40000]
        );
        assert_eq!(scan(40000, 40000, 5, true).count(), 0);
    }

    #[test]
    fn ephemeral_bind_takes_only_unused_ports() {
        for seed in 0..8 {
            let mut t = small(40000, 40001, seed);
            assert_eq!(t.bind(sock(1), at(ANY, 0)), Ok(at(ANY, 40001)), "odd first");
            assert_eq!(t.bind(ra(2), at(ANY, 0)), Ok(at(ANY, 40000)));
            assert_eq!(
                t.bind(ra(3), at(ANY, 0)),
                Err(TcpPortError::NoEphemeralPort),
                "never shares, even with SO_REUSEADDR"
            );
            assert_eq!(TcpPortError::NoEphemeralPort.errno(), libc::EADDRINUSE);
            assert_eq!(
                t.connect_unbound(sock(4), peer(80)),
                Err(TcpPortError::AddrNotAvailable),
                "connect never takes a port someone bound"
            );
        }
        let mut t = small(40000, 40001, 1);
        assert!(t.connect_unbound(sock(1), peer(80)).is_ok());
        assert!(t.bind(sock(2), at(ANY, 0)).is_ok());
        assert_eq!(
            t.bind(sock(3), at(ANY, 0)),
            Err(TcpPortError::NoEphemeralPort)
        );
    }

    #[test]
    fn ephemeral_bind_with_reuse_addr_prefers_the_lower_half() {
        for seed in 0..32 {
            let mut t = small(40000, 40007, seed);
            let p = t.bind(ra(1), at(ANY, 0)).unwrap().port();
            assert!((40000..40004).contains(&p), "{p}");
            let q = t.bind(sock(2), at(ANY, 0)).unwrap().port();
            assert!((40000..40008).contains(&q));
        }
        let mut t = small(40000, 40007, 3);
        let ports: Vec<u16> = (0..8)
            .map(|o| t.bind(ra(o), at(ANY, 0)).unwrap().port())
            .collect();
        assert!(ports[..4].iter().all(|p| *p < 40004), "{ports:?}");
        assert!(ports[4..].iter().all(|p| *p >= 40004), "{ports:?}");
    }

    #[test]
    fn connect_unbound_shares_ports_between_distinct_four_tuples() {
        for seed in 0..8 {
            let mut t = small(40000, 40001, seed);
            let a = t.connect_unbound(sock(1), peer(80)).unwrap().local;
            assert_eq!(a.port(), 40000, "low parity first");
            assert_eq!(*a.ip(), OURS);
            let b = t.connect_unbound(sock(2), peer(80)).unwrap().local;
            assert_eq!(b.port(), 40001);
            assert_eq!(
                t.connect_unbound(sock(3), peer(80)),
                Err(TcpPortError::AddrNotAvailable)
            );
            assert!(t.connect_unbound(sock(3), peer(81)).is_ok());
            assert!(t.connect_unbound(sock(4), peer(81)).is_ok());
            assert!(t.connect_unbound(sock(5), peer(81)).is_err());
            assert_eq!(
                t.connect_unbound(sock(3), peer(82)),
                Err(TcpPortError::AlreadyBound)
            );
            assert_eq!(
                t.bind(sock(9), at(ANY, 0)),
                Err(TcpPortError::NoEphemeralPort)
            );
        }
    }

    #[test]
    fn connect_unbound_does_not_reuse_time_wait() {
        let mut t = small(40000, 40001, 0);
        let a = t.connect_unbound(sock(1), peer(80)).unwrap().local;
        assert!(t.hold(1, 100, peer(80), true));
        t.enter_time_wait(100);
        let b = t.connect_unbound(sock(2), peer(80)).unwrap();
        assert_ne!(b.local.port(), a.port());
        assert_eq!(b.took_over, None);
        assert_eq!(
            t.connect_unbound(sock(3), peer(80)),
            Err(TcpPortError::AddrNotAvailable)
        );
        // An explicit bind joining a connect-created bucket makes it unshareable.
        let mut t = small(40000, 40001, 0);
        let mut reuse_all = ra(1);
        reuse_all.reuse_port = true;
        let a = t.connect_unbound(reuse_all, peer(80)).unwrap().local;
        let mut joiner = ra(2);
        joiner.reuse_port = true;
        assert!(t.bind(joiner, at(ANY, a.port())).is_ok());
        let b = t.connect_unbound(sock(3), peer(81)).unwrap().local;
        assert_ne!(b.port(), a.port());
    }

    #[test]
    fn ephemeral_range_follows_changes_and_clamps() {
        let mut t = small(40000, 40001, 0);
        t.set_ephemeral_range(50000, 50001);
        assert_eq!(t.config().ephemeral, (50000, 50001));
        let p = t.bind(sock(1), at(ANY, 0)).unwrap().port();
        assert!((50000..=50001).contains(&p));
        t.set_ephemeral_range(0, 0);
        assert_eq!(t.config().ephemeral, (1, 1));
        t.set_ephemeral_range(9, 3);
        assert_eq!(t.config().ephemeral, (9, 9));
    }

    #[test]
    fn listen_needs_a_bound_socket() {
        let mut t = table();
        assert!(t.bind(ra(5), at(ANY, 6000)).is_ok());
        assert!(t.listen(5).is_ok());
        t.unlisten(5);
        assert_eq!(t.get(5), Some((at(ANY, 6000), PortUse::Bound)));
        assert!(t.bind(ra(6), at(ANY, 6000)).is_ok(), "no listener any more");
        assert_eq!(t.listen(1), Err(TcpPortError::InvalidState));
        assert!(t.bind(sock(1), at(ANY, 5000)).is_ok());
        assert!(t.connect(1, peer(80)).is_ok());
        assert_eq!(t.listen(1), Err(TcpPortError::InvalidState));
        assert_eq!(TcpPortError::IsConnected.errno(), libc::EISCONN);
    }
}
