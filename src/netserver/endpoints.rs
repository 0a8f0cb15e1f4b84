//! The netserver's global endpoint table (paper §3.1: "the network server knows about all the
//! sockets in an end system").
//!
//! Every endpoint has its holders (the clients with a descriptor for it, the creator first: a
//! `fork` adds the child, paper §3.1 "sharing"), the holder it is cached in if any, a lifecycle
//! state and a count of the control requests that named it, so `msock stat` can prove that a
//! cached socket's data path makes none. Any holder may name the endpoint in a request; the
//! endpoint ends when its last holder lets go.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use crate::control::{EndpointId, Family, SockKind};

/// A connected client process (one control connection).
pub type ClientId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Created by `socket()`, no local address yet.
    Unbound,
    /// Bound and cached in a client ([`Endpoint::cached_in`]): it sends and receives on its own
    /// channel (a TCP endpoint with a `remote` is a connection, on a 4-tuple channel).
    Cached { local: SocketAddrV4 },
    /// A TCP listener held by the netserver for its holders (handshakes, SYN cookies and the
    /// accept queue live in `host.tcp`); any holder may accept.
    Listening { local: SocketAddrV4 },
    /// A TCP connection flushed into the netserver (paper §3.1): `host.tcp` runs it, the holders
    /// keep the socket and reach it with send/recv requests until one caches it again.
    Flushed { local: SocketAddrV4 },
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: EndpointId,
    /// The clients holding the endpoint, the creator first; never empty while it is in the
    /// table (the last holder's close or death removes it).
    pub holders: Vec<ClientId>,
    /// The holder the endpoint is cached in (its channel, its engine) while `state` is
    /// [`EndpointState::Cached`].
    pub cached_in: Option<ClientId>,
    pub family: Family,
    pub kind: SockKind,
    pub state: EndpointState,
    pub remote: Option<SocketAddrV4>,
    /// Control requests that named this endpoint, `Socket` included.
    pub requests: u64,
    /// `SO_CONCURRENT_SERVER` (paper §4.2): connections accepted through this listener stay in
    /// the netserver ([`Endpoint::deferred`]).
    pub concurrent_server: bool,
    /// Accepted through a `SO_CONCURRENT_SERVER` listener and not cached since: the first
    /// holder to ask may cache it even while others hold it (delayed caching, §4.2).
    pub deferred: bool,
    /// The caching holder has been sent `Upcall::Recall` for this connection (once per recall).
    pub recall_sent: bool,
    /// Holders told `ERR_RECALLING` while the connection was being recalled: each gets a
    /// `TcpReady` with every bit set once it is flushed.
    pub recall_waiters: Vec<ClientId>,
    /// The caching holder died or closed without its connection and it could not be rebuilt:
    /// the peer was reset and the other holders' requests fail with ECONNRESET.
    pub lost: bool,
    /// Times the connection was cached in a process (accepted into one, or `Cache`) and
    /// flushed back (`Flush`, or a shared connection's holder handing it over).
    pub caches: u64,
    pub flushes: u64,
}

impl Endpoint {
    /// The client acting for the endpoint: the one it is cached in, else its first holder.
    pub fn owner(&self) -> ClientId {
        self.cached_in
            .or_else(|| self.holders.first().copied())
            .unwrap_or(0)
    }

    pub fn is_held_by(&self, client: ClientId) -> bool {
        self.holders.contains(&client)
    }

    /// A TCP connection (an accepted or connected stream endpoint).
    pub fn is_tcp_connection(&self) -> bool {
        self.kind == SockKind::Stream && self.remote.is_some()
    }

    pub fn local(&self) -> Option<SocketAddrV4> {
        match self.state {
            EndpointState::Unbound => None,
            EndpointState::Cached { local }
            | EndpointState::Listening { local }
            | EndpointState::Flushed { local } => Some(local),
        }
    }
}

/// Why an endpoint operation was refused (mapped to errno at the control edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointError {
    /// No such endpoint, or the client does not hold it.
    NotFound,
    /// The operation does not fit the endpoint's state (e.g. bind twice).
    InvalidState,
    /// Per-client endpoint limit reached.
    TooMany,
}

impl EndpointError {
    pub fn errno(self) -> i32 {
        match self {
            EndpointError::NotFound => libc::EBADF,
            EndpointError::InvalidState => libc::EINVAL,
            EndpointError::TooMany => libc::EMFILE,
        }
    }
}

/// Upper bound of endpoints one client may hold (a misbehaving client cannot exhaust memory).
pub const MAX_ENDPOINTS_PER_CLIENT: usize = 65536;

#[derive(Debug, Default)]
pub struct EndpointTable {
    next_id: EndpointId,
    endpoints: BTreeMap<EndpointId, Endpoint>,
}

impl EndpointTable {
    pub fn new() -> Self {
        EndpointTable {
            next_id: 1,
            endpoints: BTreeMap::new(),
        }
    }

    pub fn create(
        &mut self,
        owner: ClientId,
        family: Family,
        kind: SockKind,
    ) -> Result<EndpointId, EndpointError> {
        if self.held_by(owner).count() >= MAX_ENDPOINTS_PER_CLIENT {
            return Err(EndpointError::TooMany);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.endpoints.insert(
            id,
            Endpoint {
                id,
                holders: vec![owner],
                cached_in: None,
                family,
                kind,
                state: EndpointState::Unbound,
                remote: None,
                requests: 1,
                concurrent_server: false,
                deferred: false,
                recall_sent: false,
                recall_waiters: Vec::new(),
                lost: false,
                caches: 0,
                flushes: 0,
            },
        );
        Ok(id)
    }

    /// The endpoint `id` if `client` holds it; counts the request.
    pub fn request(
        &mut self,
        client: ClientId,
        id: EndpointId,
    ) -> Result<&mut Endpoint, EndpointError> {
        match self.endpoints.get_mut(&id) {
            Some(ep) if ep.is_held_by(client) => {
                ep.requests += 1;
                Ok(ep)
            }
            _ => Err(EndpointError::NotFound),
        }
    }

    /// [`Endpoint::owner`] of endpoint `id`.
    pub fn owner_of(&self, id: EndpointId) -> Option<ClientId> {
        self.endpoints.get(&id).map(Endpoint::owner)
    }

    pub fn get(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoints.get(&id)
    }

    pub fn get_mut(&mut self, id: EndpointId) -> Option<&mut Endpoint> {
        self.endpoints.get_mut(&id)
    }

    pub fn remove(&mut self, id: EndpointId) -> Option<Endpoint> {
        self.endpoints.remove(&id)
    }

    /// The endpoints `client` holds.
    pub fn held_by(&self, client: ClientId) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .values()
            .filter(move |ep| ep.is_held_by(client))
    }

    /// Adds `client` as a holder of endpoint `id` (a forked child); false if there is no such
    /// endpoint or `client` holds too many.
    pub fn add_holder(&mut self, id: EndpointId, client: ClientId) -> bool {
        if self.held_by(client).count() >= MAX_ENDPOINTS_PER_CLIENT {
            return false;
        }
        match self.endpoints.get_mut(&id) {
            Some(ep) => {
                if !ep.holders.contains(&client) {
                    ep.holders.push(client);
                }
                true
            }
            None => false,
        }
    }

    /// Removes holder `client` from endpoint `id` when others remain: the holders left, or
    /// `None` if `client` was the last one (or not a holder; the endpoint is left as it is:
    /// the caller ends it).
    pub fn release_holder(&mut self, id: EndpointId, client: ClientId) -> Option<usize> {
        let ep = self.endpoints.get_mut(&id)?;
        if !ep.is_held_by(client) || ep.holders.len() == 1 {
            return None;
        }
        ep.holders.retain(|&c| c != client);
        ep.recall_waiters.retain(|&c| c != client);
        if ep.cached_in == Some(client) {
            ep.cached_in = None;
        }
        Some(ep.holders.len())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// UDP ports cached in some client: the netserver's own filter excludes them.
    pub fn cached_udp_ports(&self) -> Vec<u16> {
        self.cached_ports(SockKind::Datagram)
    }

    /// TCP ports held by processes (excluded from the netserver's own filter).
    pub fn cached_tcp_ports(&self) -> Vec<u16> {
        self.cached_ports(SockKind::Stream)
    }

    fn cached_ports(&self, kind: SockKind) -> Vec<u16> {
        // A whole port is a process's when it is cached there; TCP connections accepted from a
        // netserver listener share the listener's port and are told apart by 4-tuple instead.
        let mut ports: Vec<u16> = self
            .endpoints
            .values()
            .filter(|ep| ep.kind == kind)
            .filter(|ep| kind == SockKind::Datagram || ep.remote.is_none())
            .filter_map(|ep| match ep.state {
                EndpointState::Cached { local } => Some(local.port()),
                _ => None,
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn udp(table: &mut EndpointTable, owner: ClientId) -> EndpointId {
        table
            .create(owner, Family::Inet, SockKind::Datagram)
            .unwrap()
    }

    #[test]
    fn ids_are_unique_and_owned() {
        let mut t = EndpointTable::new();
        let a = udp(&mut t, 1);
        let b = udp(&mut t, 2);
        assert_ne!(a, b);
        assert!(t.request(1, a).is_ok());
        assert_eq!(t.request(1, b).unwrap_err(), EndpointError::NotFound);
        assert_eq!(t.get(a).unwrap().requests, 2);
    }

    #[test]
    fn held_by_lists_only_the_clients_endpoints() {
        let mut t = EndpointTable::new();
        udp(&mut t, 1);
        udp(&mut t, 1);
        let other = udp(&mut t, 2);
        assert_eq!(t.held_by(1).count(), 2);
        assert_eq!(t.held_by(2).map(|ep| ep.id).collect::<Vec<_>>(), [other]);
    }

    #[test]
    fn any_holder_may_name_a_shared_endpoint_and_the_last_one_ends_it() {
        let mut t = EndpointTable::new();
        let id = t.create(1, Family::Inet, SockKind::Stream).unwrap();
        assert!(t.add_holder(id, 2));
        assert!(t.add_holder(id, 2), "adding twice is harmless");
        assert!(!t.add_holder(id + 100, 2), "no such endpoint");
        assert_eq!(t.get(id).unwrap().holders, [1, 2]);
        assert!(t.request(2, id).is_ok());
        assert_eq!(t.request(3, id).unwrap_err(), EndpointError::NotFound);
        t.get_mut(id).unwrap().cached_in = Some(1);
        t.get_mut(id).unwrap().recall_waiters = vec![2];
        assert_eq!(t.owner_of(id), Some(1));
        // The creator lets go: the child is left, the cache mark goes with its holder.
        assert_eq!(t.release_holder(id, 1), Some(1));
        let ep = t.get(id).unwrap();
        assert_eq!(
            (ep.holders.as_slice(), ep.cached_in),
            ([2].as_slice(), None)
        );
        assert_eq!(ep.owner(), 2);
        assert_eq!(t.release_holder(id, 3), None, "not a holder");
        assert_eq!(t.release_holder(id, 2), None, "the last holder ends it");
        assert!(t.get(id).is_some(), "ending it is the caller's");
    }

    #[test]
    fn cached_ports_sorted_unique() {
        let mut t = EndpointTable::new();
        for port in [9000, 53, 9000] {
            let id = udp(&mut t, 1);
            t.request(1, id).unwrap().state = EndpointState::Cached {
                local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            };
        }
        udp(&mut t, 1);
        assert_eq!(t.cached_udp_ports(), vec![53, 9000]);
    }
}
