//! The UDP port table behind `bind` in the netserver, with Linux's UDP semantics
//! (`inet_bind`, `udp_lib_get_port`, `udp_lib_lport_inuse`, `udp4_lib_lookup2`).
//!
//! Contract:
//! - [`PortTable::bind`] checks, in Linux's order: the endpoint is not already bound (EINVAL),
//!   the address is the wildcard or ours (EADDRNOTAVAIL), a port below 1024 needs uid 0 unless
//!   `allow_unprivileged_low_ports` (EACCES), then the port itself. Port 0 takes an ephemeral
//!   port from `ephemeral` (Linux default 32768..=60999), starting at a random point and scanning
//!   linearly with wrap-around; a port nobody holds is preferred (one of the outcomes Linux's
//!   random choice can give) before one shared under the reuse rules.
//! - Two bindings of the same port conflict (EADDRINUSE) when their addresses overlap (equal, or
//!   either is the wildcard), unless both set SO_REUSEADDR, or both set SO_REUSEPORT with the
//!   same uid.
//! - [`PortTable::lookup`] picks the receiver of a unicast datagram: a binding to the exact
//!   destination address beats a wildcard one; among equals, the most recently bound wins
//!   (Linux inserts at the head of the chain), unless it is in a SO_REUSEPORT group, in which
//!   case the flow hash picks a member (`reciprocal_scale`, as Linux's `reuseport_select_sock`).
//!
//! Connected-socket scoring (a UDP socket connected to the source wins) is not modelled: the
//! netserver only sees bound endpoints; connected ones are cached in their processes.
#![forbid(unsafe_code)]

use core::fmt;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Identifies an endpoint (the same number as `control::EndpointId`).
pub type EndpointId = u64;

/// Linux's `ip_local_port_range` default.
pub const EPHEMERAL_DEFAULT: (u16, u16) = (32768, 60999);
/// Linux's `ip_unprivileged_port_start` default.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Table configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConfig {
    /// Inclusive ephemeral port range (low, high); `low` must be ≥ 1 and ≤ `high`.
    pub ephemeral: (u16, u16),
    /// Let any uid bind ports below 1024 (as `ip_unprivileged_port_start=0`).
    pub allow_unprivileged_low_ports: bool,
    /// Our address: binding any other non-wildcard address is EADDRNOTAVAIL. `None` leaves the
    /// address check to the caller.
    pub local_addr: Option<Ipv4Addr>,
    /// Seed of the ephemeral-port start generator (deterministic tests).
    pub seed: u64,
}

impl Default for PortConfig {
    /// Linux defaults; the seed is random (from the standard library's per-process hash keys).
    fn default() -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x006d_736f_636b_u64);
        PortConfig {
            ephemeral: EPHEMERAL_DEFAULT,
            allow_unprivileged_low_ports: false,
            local_addr: None,
            seed,
        }
    }
}

/// A `bind` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindRequest {
    /// Address (wildcard or ours) and port (0: ephemeral).
    pub local: SocketAddrV4,
    pub owner: EndpointId,
    /// SO_REUSEADDR.
    pub reuse_addr: bool,
    /// SO_REUSEPORT.
    pub reuse_port: bool,
    /// The binding process's uid (SO_PEERCRED).
    pub uid: u32,
}

/// Why a bind failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindError {
    /// The port is taken for an overlapping address: EADDRINUSE.
    AddrInUse,
    /// The address is not ours: EADDRNOTAVAIL.
    AddrNotAvailable,
    /// Every ephemeral port is taken: EADDRINUSE, as Linux's `bind` (EAGAIN on autobind).
    NoEphemeralPort,
    /// A privileged port without privilege: EACCES.
    PermissionDenied,
    /// This endpoint is already bound: EINVAL.
    AlreadyBound,
}

impl BindError {
    pub fn errno(self) -> i32 {
        match self {
            BindError::AddrInUse | BindError::NoEphemeralPort => libc::EADDRINUSE,
            BindError::AddrNotAvailable => libc::EADDRNOTAVAIL,
            BindError::PermissionDenied => libc::EACCES,
            BindError::AlreadyBound => libc::EINVAL,
        }
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindError::AddrInUse => "address in use",
            BindError::AddrNotAvailable => "address not available",
            BindError::NoEphemeralPort => "no ephemeral port available",
            BindError::PermissionDenied => "privileged port",
            BindError::AlreadyBound => "already bound",
        })
    }
}

impl std::error::Error for BindError {}

#[derive(Debug, Clone, Copy)]
struct Binding {
    addr: Ipv4Addr,
    owner: EndpointId,
    reuse_addr: bool,
    reuse_port: bool,
    uid: u32,
}

impl Binding {
    /// `udp_lib_lport_inuse`: whether `self` may not share a port with `other`.
    fn conflicts(&self, other: &Binding) -> bool {
        let addrs_overlap =
            self.addr == other.addr || self.addr.is_unspecified() || other.addr.is_unspecified();
        let both_reuse_addr = self.reuse_addr && other.reuse_addr;
        let reuse_port_group = self.reuse_port && other.reuse_port && self.uid == other.uid;
        addrs_overlap && !both_reuse_addr && !reuse_port_group
    }
}

/// The UDP port table. See the module documentation for the rules.
#[derive(Debug)]
pub struct PortTable {
    config: PortConfig,
    /// Bindings per port, in bind order (most recent last).
    by_port: HashMap<u16, Vec<Binding>>,
    by_owner: HashMap<EndpointId, SocketAddrV4>,
    rng: u64,
}

impl Default for PortTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PortTable {
    /// A table with Linux's defaults and a random seed.
    pub fn new() -> Self {
        Self::with_config(PortConfig::default())
    }

    pub fn with_config(mut config: PortConfig) -> Self {
        let (low, high) = config.ephemeral;
        let low = low.max(1);
        config.ephemeral = (low, high.max(low));
        PortTable {
            config,
            by_port: HashMap::new(),
            by_owner: HashMap::new(),
            rng: config.seed,
        }
    }

    pub fn config(&self) -> &PortConfig {
        &self.config
    }

    /// Binds `req.owner`; returns the address actually bound (with the chosen port).
    pub fn bind(&mut self, req: BindRequest) -> Result<SocketAddrV4, BindError> {
        if self.by_owner.contains_key(&req.owner) {
            return Err(BindError::AlreadyBound);
        }
        let addr = *req.local.ip();
        if let Some(ours) = self.config.local_addr
            && !addr.is_unspecified()
            && addr != ours
        {
            return Err(BindError::AddrNotAvailable);
        }
        let port = req.local.port();
        if port != 0
            && port < FIRST_UNPRIVILEGED_PORT
            && req.uid != 0
            && !self.config.allow_unprivileged_low_ports
        {
            return Err(BindError::PermissionDenied);
        }
        let new = Binding {
            addr,
            owner: req.owner,
            reuse_addr: req.reuse_addr,
            reuse_port: req.reuse_port,
            uid: req.uid,
        };
        let port = if port == 0 {
            self.pick_ephemeral(&new)?
        } else if self.in_use(port, &new) {
            return Err(BindError::AddrInUse);
        } else {
            port
        };
        self.by_port.entry(port).or_default().push(new);
        let bound = SocketAddrV4::new(addr, port);
        self.by_owner.insert(req.owner, bound);
        Ok(bound)
    }

    fn in_use(&self, port: u16, new: &Binding) -> bool {
        self.by_port
            .get(&port)
            .is_some_and(|bs| bs.iter().any(|b| new.conflicts(b)))
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick_ephemeral(&mut self, new: &Binding) -> Result<u16, BindError> {
        let (low, high) = self.config.ephemeral;
        let span = u32::from(high) - u32::from(low) + 1;
        let start = (self.next_random() % u64::from(span)) as u32;
        let candidates = (0..span).map(|i| (u32::from(low) + (start + i) % span) as u16);
        if let Some(p) = candidates.clone().find(|p| !self.by_port.contains_key(p)) {
            return Ok(p);
        }
        candidates
            .into_iter()
            .find(|&p| !self.in_use(p, new))
            .ok_or(BindError::NoEphemeralPort)
    }

    /// Unbinds `owner`; returns what it was bound to.
    pub fn release(&mut self, owner: EndpointId) -> Option<SocketAddrV4> {
        let bound = self.by_owner.remove(&owner)?;
        if let Some(bs) = self.by_port.get_mut(&bound.port()) {
            bs.retain(|b| b.owner != owner);
            if bs.is_empty() {
                self.by_port.remove(&bound.port());
            }
        }
        Some(bound)
    }

    /// The endpoint that receives a unicast datagram to `dst_ip:dst_port`; `flow_hash` (e.g. a
    /// hash of the 4-tuple) chooses within a SO_REUSEPORT group.
    pub fn lookup(&self, dst_port: u16, dst_ip: Ipv4Addr, flow_hash: u32) -> Option<EndpointId> {
        let bindings = self.by_port.get(&dst_port)?;
        let matching = |b: &&Binding| b.addr == dst_ip;
        let best_addr = if bindings.iter().any(|b| matching(&b)) {
            dst_ip
        } else if bindings.iter().any(|b| b.addr.is_unspecified()) {
            Ipv4Addr::UNSPECIFIED
        } else {
            return None;
        };
        let winner = bindings.iter().rev().find(|b| b.addr == best_addr)?;
        if !winner.reuse_port {
            return Some(winner.owner);
        }
        let group = || {
            bindings
                .iter()
                .filter(move |b| b.addr == best_addr && b.reuse_port && b.uid == winner.uid)
        };
        let n = group().count() as u64;
        // reciprocal_scale(hash, n): maps a 32-bit hash uniformly onto 0..n.
        let index = ((u64::from(flow_hash) * n) >> 32) as usize;
        group().nth(index).map(|b| b.owner)
    }

    /// What `owner` is bound to.
    pub fn local_of(&self, owner: EndpointId) -> Option<SocketAddrV4> {
        self.by_owner.get(&owner).copied()
    }

    /// Number of bound endpoints.
    pub fn len(&self) -> usize {
        self.by_owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_owner.is_empty()
    }

    /// Every bound (endpoint, address), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (EndpointId, SocketAddrV4)> + '_ {
        self.by_owner.iter().map(|(&id, &addr)| (id, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const ANY: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

    fn table() -> PortTable {
        PortTable::with_config(PortConfig {
            local_addr: Some(OURS),
            seed: 42,
            ..PortConfig::default()
        })
    }

    fn req(ip: Ipv4Addr, port: u16, owner: EndpointId) -> BindRequest {
        BindRequest {
            local: SocketAddrV4::new(ip, port),
            owner,
            reuse_addr: false,
            reuse_port: false,
            uid: 1000,
        }
    }

    #[test]
    fn same_port_conflicts_on_overlapping_addresses() {
        let mut t = table();
        assert_eq!(
            t.bind(req(OURS, 5000, 1)),
            Ok(SocketAddrV4::new(OURS, 5000))
        );
        assert_eq!(t.bind(req(OURS, 5000, 2)), Err(BindError::AddrInUse));
        assert_eq!(
            t.bind(req(ANY, 5000, 2)),
            Err(BindError::AddrInUse),
            "wildcard overlaps everything"
        );
        assert_eq!(
            t.bind(req(OURS, 5001, 2)),
            Ok(SocketAddrV4::new(OURS, 5001))
        );
        let mut t = table();
        assert!(t.bind(req(ANY, 6000, 1)).is_ok());
        assert_eq!(t.bind(req(OURS, 6000, 2)), Err(BindError::AddrInUse));
        assert_eq!(BindError::AddrInUse.errno(), libc::EADDRINUSE);
    }

    #[test]
    fn reuse_addr_needs_both() {
        let mut t = table();
        assert!(
            t.bind(BindRequest {
                reuse_addr: true,
                ..req(ANY, 5000, 1)
            })
            .is_ok()
        );
        assert_eq!(t.bind(req(ANY, 5000, 2)), Err(BindError::AddrInUse));
        assert!(
            t.bind(BindRequest {
                reuse_addr: true,
                ..req(OURS, 5000, 2)
            })
            .is_ok()
        );
        assert!(
            t.bind(BindRequest {
                reuse_addr: true,
                ..req(ANY, 5000, 3)
            })
            .is_ok()
        );
        // A later socket without the option conflicts with every one of them.
        assert_eq!(
            t.bind(BindRequest {
                reuse_port: true,
                ..req(OURS, 5000, 4)
            }),
            Err(BindError::AddrInUse)
        );
    }

    #[test]
    fn reuse_port_needs_both_and_same_uid() {
        let mut t = table();
        let rp = |owner, uid| BindRequest {
            reuse_port: true,
            uid,
            ..req(OURS, 7000, owner)
        };
        assert!(t.bind(rp(1, 1000)).is_ok());
        assert!(t.bind(rp(2, 1000)).is_ok());
        assert_eq!(
            t.bind(rp(3, 1001)),
            Err(BindError::AddrInUse),
            "different uid"
        );
        assert_eq!(
            t.bind(req(OURS, 7000, 3)),
            Err(BindError::AddrInUse),
            "no SO_REUSEPORT"
        );
        assert!(t.bind(rp(3, 1000)).is_ok());
    }

    #[test]
    fn privileged_ports() {
        let mut t = table();
        assert_eq!(t.bind(req(OURS, 53, 1)), Err(BindError::PermissionDenied));
        assert_eq!(BindError::PermissionDenied.errno(), libc::EACCES);
        assert!(
            t.bind(BindRequest {
                uid: 0,
                ..req(OURS, 53, 1)
            })
            .is_ok()
        );
        assert!(t.bind(req(OURS, 1024, 2)).is_ok());
        let mut open = PortTable::with_config(PortConfig {
            allow_unprivileged_low_ports: true,
            ..PortConfig::default()
        });
        assert!(open.bind(req(OURS, 53, 1)).is_ok());
    }

    #[test]
    fn address_checks_come_first() {
        let mut t = table();
        assert_eq!(
            t.bind(req(Ipv4Addr::new(198, 18, 0, 3), 53, 1)),
            Err(BindError::AddrNotAvailable)
        );
        assert_eq!(
            t.bind(req(Ipv4Addr::new(198, 18, 0, 3), 5000, 1)),
            Err(BindError::AddrNotAvailable)
        );
        assert!(t.bind(req(OURS, 5000, 1)).is_ok());
        assert_eq!(t.bind(req(OURS, 5001, 1)), Err(BindError::AlreadyBound));
        assert_eq!(BindError::AlreadyBound.errno(), libc::EINVAL);
        // Without a configured address the caller checks it.
        let mut t = PortTable::with_config(PortConfig {
            seed: 1,
            ..PortConfig::default()
        });
        assert!(t.bind(req(Ipv4Addr::new(10, 9, 9, 9), 5000, 1)).is_ok());
    }

    #[test]
    fn ephemeral_ports_are_in_range_random_start_and_unique() {
        let mut t = table();
        let mut seen = std::collections::HashSet::new();
        for owner in 0..1000 {
            let bound = t.bind(req(ANY, 0, owner)).unwrap();
            assert!((32768..=60999).contains(&bound.port()));
            assert!(seen.insert(bound.port()), "ephemeral port reused");
        }
        // Different seeds start at different places.
        let first = |seed| {
            let mut t = PortTable::with_config(PortConfig {
                seed,
                ..PortConfig::default()
            });
            t.bind(req(ANY, 0, 1)).unwrap().port()
        };
        assert_ne!(
            (first(1), first(2), first(3)),
            (first(1), first(1), first(1))
        );
        // Deterministic for a seed.
        assert_eq!(first(7), first(7));
    }

    #[test]
    fn ephemeral_linear_scan_and_exhaustion() {
        let cfg = PortConfig {
            ephemeral: (40000, 40003),
            seed: 9,
            ..PortConfig::default()
        };
        let mut t = PortTable::with_config(cfg);
        let ports: Vec<u16> = (0..4)
            .map(|o| t.bind(req(ANY, 0, o)).unwrap().port())
            .collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![40000, 40001, 40002, 40003]);
        assert_eq!(t.bind(req(ANY, 0, 10)), Err(BindError::NoEphemeralPort));
        assert_eq!(BindError::NoEphemeralPort.errno(), libc::EADDRINUSE);
        // Whatever the random start, the scan wraps around to the only free port.
        for seed in 0..32 {
            let mut t = PortTable::with_config(PortConfig { seed, ..cfg });
            for (o, p) in [40000, 40001, 40003].into_iter().enumerate() {
                assert!(t.bind(req(ANY, p, o as u64)).is_ok());
            }
            assert_eq!(t.bind(req(ANY, 0, 9)).unwrap().port(), 40002);
        }
        // A port shared under the reuse rules is taken only when no free one is left.
        let reusing = |owner| BindRequest {
            reuse_addr: true,
            ..req(ANY, 0, owner)
        };
        let mut t = PortTable::with_config(cfg);
        let a = t.bind(reusing(1)).unwrap().port();
        let b = t.bind(reusing(2)).unwrap().port();
        assert_ne!(a, b);
        assert_eq!(t.release(1), Some(SocketAddrV4::new(ANY, a)));
        assert!(t.bind(req(ANY, 0, 3)).is_ok());
        assert!(t.bind(req(ANY, 0, 4)).is_ok());
        assert!(t.bind(req(ANY, 0, 5)).is_ok());
        assert_eq!(
            t.bind(reusing(6)).unwrap().port(),
            b,
            "shares with the SO_REUSEADDR holder"
        );
    }

    #[test]
    fn release_frees_the_port() {
        let mut t = table();
        assert!(t.bind(req(OURS, 5000, 1)).is_ok());
        assert_eq!(t.local_of(1), Some(SocketAddrV4::new(OURS, 5000)));
        assert_eq!(t.release(1), Some(SocketAddrV4::new(OURS, 5000)));
        assert_eq!(t.release(1), None);
        assert!(t.is_empty());
        assert_eq!(t.lookup(5000, OURS, 0), None);
        assert!(t.bind(req(OURS, 5000, 2)).is_ok());
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            vec![(2, SocketAddrV4::new(OURS, 5000))]
        );
    }

    #[test]
    fn lookup_most_specific_then_most_recent() {
        let mut t = table();
        let ra = |ip, owner| BindRequest {
            reuse_addr: true,
            ..req(ip, 5000, owner)
        };
        assert!(t.bind(ra(ANY, 1)).is_ok());
        assert_eq!(t.lookup(5000, OURS, 0), Some(1));
        assert!(t.bind(ra(OURS, 2)).is_ok());
        assert!(t.bind(ra(ANY, 3)).is_ok());
        assert_eq!(
            t.lookup(5000, OURS, 0),
            Some(2),
            "exact address beats wildcard"
        );
        assert_eq!(
            t.lookup(5000, Ipv4Addr::BROADCAST, 0),
            Some(3),
            "most recent wildcard"
        );
        assert!(t.bind(ra(OURS, 4)).is_ok());
        assert_eq!(
            t.lookup(5000, OURS, 0),
            Some(4),
            "most recently bound among equals"
        );
        assert_eq!(t.lookup(5001, OURS, 0), None);
        let mut t = table();
        assert!(t.bind(req(OURS, 5000, 1)).is_ok());
        assert_eq!(
            t.lookup(5000, Ipv4Addr::new(198, 18, 0, 9), 0),
            None,
            "other address, no wildcard"
        );
    }

    #[test]
    fn lookup_reuse_port_group_by_hash() {
        let mut t = table();
        for owner in 1..=4 {
            assert!(
                t.bind(BindRequest {
                    reuse_port: true,
                    ..req(OURS, 8000, owner)
                })
                .is_ok()
            );
        }
        assert_eq!(t.lookup(8000, OURS, 0), Some(1));
        assert_eq!(t.lookup(8000, OURS, u32::MAX), Some(4));
        assert_eq!(t.lookup(8000, OURS, 0x4000_0000), Some(2));
        assert_eq!(t.lookup(8000, OURS, 0x8000_0000), Some(3));
        // Same hash, same owner (flows stick); every member is reachable.
        let mut hit = std::collections::HashSet::new();
        for h in (0..64u32).map(|i| i.wrapping_mul(0x0400_0000)) {
            let owner = t.lookup(8000, OURS, h).unwrap();
            assert_eq!(t.lookup(8000, OURS, h), Some(owner));
            hit.insert(owner);
        }
        assert_eq!(hit.len(), 4);
        t.release(2);
        let mut hit = std::collections::HashSet::new();
        for h in (0..64u32).map(|i| i.wrapping_mul(0x0400_0000)) {
            hit.insert(t.lookup(8000, OURS, h).unwrap());
        }
        assert_eq!(hit, [1, 3, 4].into_iter().collect());
    }
}
