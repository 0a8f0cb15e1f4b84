//! The routing table as plain data (paper §4.3): msock's interface, its IPv4 routes and its
//! neighbour (ARP) entries, with longest-prefix-match [`RoutingTable::lookup`].
//!
//! This is the safe model of what the shared-memory region ([`super::region`]) holds: the
//! netserver's writer applies the same operations to the region, clients read it in place and
//! `msock route` prints a [`RoutingTable`] snapshot. Contract: a route's destination is stored
//! masked to its prefix (`198.18.0.7/24` is stored as `198.18.0.0/24`); at most one route per
//! (destination, prefix) — adding it again replaces the gateway, as `ip route replace`; among
//! matching routes the longest prefix wins (RFC 1812 §5.2.4.3). A route with no gateway is
//! on-link: the neighbour to resolve is the destination itself; otherwise it is the gateway.
#![forbid(unsafe_code)]

use core::fmt;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::wire::EthernetAddress;

/// The interface msock owns (one per netserver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub ifindex: u32,
    pub mac: EthernetAddress,
    /// msock's own address on the interface.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u16,
}

/// One IPv4 route out of msock's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Addr,
    pub prefix_len: u8,
    /// `None`: the destination is on-link.
    pub gateway: Option<Ipv4Addr>,
}

impl Route {
    /// The netmask of a prefix length (0..=32; longer lengths are treated as 32).
    pub fn mask(prefix_len: u8) -> u32 {
        match prefix_len {
            0 => 0,
            n if n >= 32 => u32::MAX,
            n => u32::MAX << (32 - u32::from(n)),
        }
    }

    /// Whether `addr` falls inside this route's prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = Self::mask(self.prefix_len);
        u32::from(addr) & mask == u32::from(self.dest) & mask
    }

    /// The same route with its destination masked to the prefix.
    pub fn normalized(&self) -> Route {
        let dest = Ipv4Addr::from(u32::from(self.dest) & Self::mask(self.prefix_len));
        Route { dest, ..*self }
    }
}

/// Where to send a datagram for a destination: everything the send path needs to build the
/// Ethernet and IP headers without asking the netserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The neighbour to ARP for: the destination (on-link) or the route's gateway.
    pub ip: Ipv4Addr,
    /// Source address (msock's address on the interface).
    pub src: Ipv4Addr,
    /// The interface MTU.
    pub mtu: u16,
    /// The interface's MAC address.
    pub src_mac: EthernetAddress,
    /// The neighbour's MAC when it is in the neighbour table; `None`: resolve first.
    pub dst_mac: Option<EthernetAddress>,
}

/// Why a routing-table update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// A prefix length above 32.
    BadPrefix,
    /// A gateway that is unspecified, broadcast or multicast.
    BadGateway,
    /// The table (or the shared region) holds as many entries as it can.
    Full,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableError::BadPrefix => "prefix length above 32",
            TableError::BadGateway => "gateway is not a unicast address",
            TableError::Full => "routing table full",
        })
    }
}

impl std::error::Error for TableError {}

impl From<TableError> for std::io::Error {
    fn from(e: TableError) -> std::io::Error {
        let kind = match e {
            TableError::Full => std::io::ErrorKind::StorageFull,
            TableError::BadPrefix | TableError::BadGateway => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

/// Checks a route for validity and returns it normalized.
pub fn validate_route(route: &Route) -> Result<Route, TableError> {
    if route.prefix_len > 32 {
        return Err(TableError::BadPrefix);
    }
    if let Some(gw) = route.gateway
        && (gw.is_unspecified() || gw.is_broadcast() || gw.is_multicast())
    {
        return Err(TableError::BadGateway);
    }
    Ok(route.normalized())
}

/// The interface, the routes and the neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    pub interface: Option<InterfaceConfig>,
    /// Sorted by prefix length, longest first (ties: by destination), so the first match is the
    /// longest-prefix match.
    routes: Vec<Route>,
    pub neighbors: BTreeMap<Ipv4Addr, EthernetAddress>,
}

impl RoutingTable {
    pub fn new() -> RoutingTable {
        RoutingTable::default()
    }

    pub fn set_interface(&mut self, config: InterfaceConfig) {
        self.interface = Some(config);
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Adds a route, or replaces the gateway of the route with the same destination and prefix.
    pub fn add_route(&mut self, route: &Route) -> Result<(), TableError> {
        let route = validate_route(route)?;
        match self
            .routes
            .iter_mut()
            .find(|r| r.dest == route.dest && r.prefix_len == route.prefix_len)
        {
            Some(existing) => existing.gateway = route.gateway,
            None => {
                let at = self
                    .routes
                    .iter()
                    .position(|r| {
                        (r.prefix_len, u32::from(route.dest))
                            < (route.prefix_len, u32::from(r.dest))
                    })
                    .unwrap_or(self.routes.len());
                self.routes.insert(at, route);
            }
        }
        Ok(())
    }

    /// Removes the route for `dest/prefix_len` (`dest` is masked first); false if absent.
    pub fn del_route(&mut self, dest: Ipv4Addr, prefix_len: u8) -> bool {
        let key = Route {
            dest,
            prefix_len,
            gateway: None,
        }
        .normalized();
        let before = self.routes.len();
        self.routes
            .retain(|r| !(r.dest == key.dest && r.prefix_len == prefix_len));
        self.routes.len() != before
    }

    pub fn set_neighbor(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        self.neighbors.insert(ip, mac);
    }

    /// Removes a neighbour entry; false if absent.
    pub fn remove_neighbor(&mut self, ip: Ipv4Addr) -> bool {
        self.neighbors.remove(&ip).is_some()
    }

    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.neighbors.get(&ip).copied()
    }

    /// The longest-prefix route matching `dst`.
    pub fn route_for(&self, dst: Ipv4Addr) -> Option<&Route> {
        self.routes.iter().find(|r| r.contains(dst))
    }

    /// The next hop for `dst`; `None` when there is no interface or no route (ENETUNREACH).
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        let iface = self.interface?;
        let route = self.route_for(dst)?;
        let ip = route.gateway.unwrap_or(dst);
        Some(NextHop {
            ip,
            src: iface.addr,
            mtu: iface.mtu,
            src_mac: iface.mac,
            dst_mac: self.neighbor(ip),
        })
    }

    /// A JSON object: `{"interface": {...}|null, "routes": [...], "neighbors": [...]}`.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"interface\":");
        match &self.interface {
            Some(i) => {
                let _ = write!(
                    out,
                    "{{\"ifindex\":{},\"mac\":\"{}\",\"addr\":\"{}\",\"prefix_len\":{},\"mtu\":{}}}",
                    i.ifindex, i.mac, i.addr, i.prefix_len, i.mtu
                );
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"routes\":[");
        for (n, r) in self.routes.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"dest\":\"{}\",\"prefix_len\":{},\"gateway\":",
                r.dest, r.prefix_len
            );
            match r.gateway {
                Some(gw) => {
                    let _ = write!(out, "\"{gw}\"}}");
                }
                None => out.push_str("null}"),
            }
        }
        out.push_str("],\"neighbors\":[");
        for (n, (ip, mac)) in self.neighbors.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let _ = write!(out, "{{\"ip\":\"{ip}\",\"mac\":\"{mac}\"}}");
        }
        out.push_str("]}");
        out
    }
}

/// `ip route`-like text: the interface, one line per route, one per neighbour.
impl fmt::Display for RoutingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.interface {
            Some(i) => writeln!(
                f,
                "interface ifindex {} {}/{} lladdr {} mtu {}",
                i.ifindex, i.addr, i.prefix_len, i.mac, i.mtu
            )?,
            None => writeln!(f, "interface (none)")?,
        }
        for r in &self.routes {
            let dest = if r.prefix_len == 0 {
                "default".to_string()
            } else {
                format!("{}/{}", r.dest, r.prefix_len)
            };
            match r.gateway {
                Some(gw) => writeln!(f, "route {dest} via {gw}")?,
                None => writeln!(f, "route {dest} scope link")?,
            }
        }
        for (ip, mac) in &self.neighbors {
            writeln!(f, "neigh {ip} lladdr {mac}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const GW_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn table() -> RoutingTable {
        let mut t = RoutingTable::new();
        t.set_interface(InterfaceConfig {
            ifindex: 7,
            mac: MAC,
            addr: ip("198.18.0.2"),
            prefix_len: 24,
            mtu: 1500,
        });
        t.add_route(&Route {
            dest: ip("198.18.0.0"),
            prefix_len: 24,
            gateway: None,
        })
        .unwrap();
        t
    }

    #[test]
    fn on_link_route_resolves_the_destination() {
        let mut t = table();
        let hop = t.lookup(ip("198.18.0.1")).unwrap();
        assert_eq!(
            hop,
            NextHop {
                ip: ip("198.18.0.1"),
                src: ip("198.18.0.2"),
                mtu: 1500,
                src_mac: MAC,
                dst_mac: None
            }
        );
        t.set_neighbor(ip("198.18.0.1"), GW_MAC);
        assert_eq!(t.lookup(ip("198.18.0.1")).unwrap().dst_mac, Some(GW_MAC));
        assert!(t.lookup(ip("198.19.0.1")).is_none(), "no default route yet");
    }

    #[test]
    fn default_route_goes_through_the_gateway() {
        let mut t = table();
        t.add_route(&Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(ip("198.18.0.1")),
        })
        .unwrap();
        t.set_neighbor(ip("198.18.0.1"), GW_MAC);
        let hop = t.lookup(ip("8.8.8.8")).unwrap();
        assert_eq!(hop.ip, ip("198.18.0.1"));
        assert_eq!(hop.dst_mac, Some(GW_MAC));
        // The on-link /24 still wins for local destinations.
        assert_eq!(t.lookup(ip("198.18.0.77")).unwrap().ip, ip("198.18.0.77"));
    }

    #[test]
    fn host_route_and_overlapping_prefixes_pick_the_longest() {
        let mut t = table();
        t.add_route(&Route {
            dest: ip("10.0.0.0"),
            prefix_len: 8,
            gateway: Some(ip("198.18.0.1")),
        })
        .unwrap();
        t.add_route(&Route {
            dest: ip("10.1.0.0"),
            prefix_len: 16,
            gateway: Some(ip("198.18.0.4")),
        })
        .unwrap();
        t.add_route(&Route {
            dest: ip("10.1.2.3"),
            prefix_len: 32,
            gateway: Some(ip("198.18.0.5")),
        })
        .unwrap();
        t.add_route(&Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(ip("198.18.0.9")),
        })
        .unwrap();
        assert_eq!(t.lookup(ip("10.9.9.9")).unwrap().ip, ip("198.18.0.1"));
        assert_eq!(t.lookup(ip("10.1.9.9")).unwrap().ip, ip("198.18.0.4"));
        assert_eq!(t.lookup(ip("10.1.2.3")).unwrap().ip, ip("198.18.0.5"));
        assert_eq!(t.lookup(ip("10.1.2.4")).unwrap().ip, ip("198.18.0.4"));
        assert_eq!(t.lookup(ip("11.0.0.1")).unwrap().ip, ip("198.18.0.9"));
        let lens: Vec<u8> = t.routes().iter().map(|r| r.prefix_len).collect();
        assert_eq!(lens, vec![32, 24, 16, 8, 0]);
        assert!(t.del_route(ip("10.1.2.3"), 32));
        assert!(!t.del_route(ip("10.1.2.3"), 32));
        assert_eq!(t.lookup(ip("10.1.2.3")).unwrap().ip, ip("198.18.0.4"));
    }

    #[test]
    fn add_normalizes_and_replaces() {
        let mut t = table();
        t.add_route(&Route {
            dest: ip("10.1.2.3"),
            prefix_len: 16,
            gateway: Some(ip("198.18.0.1")),
        })
        .unwrap();
        assert!(t.routes().contains(&Route {
            dest: ip("10.1.0.0"),
            prefix_len: 16,
            gateway: Some(ip("198.18.0.1"))
        }));
        t.add_route(&Route {
            dest: ip("10.1.0.0"),
            prefix_len: 16,
            gateway: Some(ip("198.18.0.6")),
        })
        .unwrap();
        assert_eq!(t.routes().len(), 2);
        assert_eq!(t.lookup(ip("10.1.0.1")).unwrap().ip, ip("198.18.0.6"));
        // del_route masks its argument too.
        assert!(t.del_route(ip("10.1.255.255"), 16));
        assert_eq!(t.routes().len(), 1);
    }

    #[test]
    fn invalid_routes_are_refused() {
        let mut t = table();
        let bad = Route {
            dest: ip("10.0.0.0"),
            prefix_len: 33,
            gateway: None,
        };
        assert_eq!(t.add_route(&bad), Err(TableError::BadPrefix));
        for gw in ["0.0.0.0", "255.255.255.255", "224.0.0.1"] {
            let r = Route {
                dest: ip("10.0.0.0"),
                prefix_len: 8,
                gateway: Some(ip(gw)),
            };
            assert_eq!(t.add_route(&r), Err(TableError::BadGateway), "{gw}");
        }
        assert_eq!(t.routes().len(), 1);
    }

    #[test]
    fn no_interface_means_no_hop() {
        let mut t = RoutingTable::new();
        t.add_route(&Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: None,
        })
        .unwrap();
        assert!(t.lookup(ip("1.2.3.4")).is_none());
    }

    #[test]
    fn masks() {
        assert_eq!(Route::mask(0), 0);
        assert_eq!(Route::mask(1), 0x8000_0000);
        assert_eq!(Route::mask(24), 0xffff_ff00);
        assert_eq!(Route::mask(32), u32::MAX);
        assert_eq!(Route::mask(200), u32::MAX);
    }

    #[test]
    fn neighbours_and_text() {
        let mut t = table();
        t.add_route(&Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(ip("198.18.0.1")),
        })
        .unwrap();
        t.set_neighbor(ip("198.18.0.1"), GW_MAC);
        assert_eq!(t.neighbor(ip("198.18.0.1")), Some(GW_MAC));
        let text = t.to_string();
        assert!(text.contains("route 198.18.0.0/24 scope link"), "{text}");
        assert!(text.contains("route default via 198.18.0.1"), "{text}");
        assert!(
            text.contains("neigh 198.18.0.1 lladdr 02:00:00:00:00:01"),
            "{text}"
        );
        let json = t.to_json();
        assert!(json.starts_with("{\"interface\":{\"ifindex\":7,"), "{json}");
        assert!(
            json.contains("{\"dest\":\"0.0.0.0\",\"prefix_len\":0,\"gateway\":\"198.18.0.1\"}"),
            "{json}"
        );
        assert!(
            json.ends_with(
                "\"neighbors\":[{\"ip\":\"198.18.0.1\",\"mac\":\"02:00:00:00:00:01\"}]}"
            ),
            "{json}"
        );
        assert!(t.remove_neighbor(ip("198.18.0.1")));
        assert!(!t.remove_neighbor(ip("198.18.0.1")));
        assert_eq!(t.lookup(ip("9.9.9.9")).unwrap().dst_mac, None);
    }
}
