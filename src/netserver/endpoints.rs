//! The netserver's global endpoint table (paper §3.1: "the network server knows about all the
//! sockets in an end system").
//!
//! Every endpoint has an owner client, a lifecycle state and a count of the control requests that
//! named it, so `msock stat` can prove that a cached socket's data path makes none.
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
    /// Bound and cached in the owning client: it sends and receives on its own channel (a
    /// TCP endpoint with a `remote` is an accepted connection, on a 4-tuple channel).
    Cached { local: SocketAddrV4 },
    /// A TCP listener held by the netserver for the owning client (handshakes, SYN cookies and
    /// the accept queue live in `host.tcp`).
    Listening { local: SocketAddrV4 },
    /// A TCP connection flushed into the netserver (paper §3.1): `host.tcp` runs it, the owner
    /// keeps the socket and reaches it with send/recv requests until it caches it again.
    Flushed { local: SocketAddrV4 },
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: EndpointId,
    pub owner: ClientId,
    pub owner_pid: u32,
    pub family: Family,
    pub kind: SockKind,
    pub state: EndpointState,
    pub remote: Option<SocketAddrV4>,
    /// Control requests that named this endpoint, `Socket` included.
    pub requests: u64,
}

impl Endpoint {
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
    /// No such endpoint, or it belongs to another client.
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
        owner_pid: u32,
        family: Family,
        kind: SockKind,
    ) -> Result<EndpointId, EndpointError> {
        if self.owned_by(owner).count() >= MAX_ENDPOINTS_PER_CLIENT {
            return Err(EndpointError::TooMany);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.endpoints.insert(
            id,
            Endpoint {
                id,
                owner,
                owner_pid,
                family,
                kind,
                state: EndpointState::Unbound,
                remote: None,
                requests: 1,
            },
        );
        Ok(id)
    }

    /// The endpoint `id` if `client` owns it; counts the request.
    pub fn request(
        &mut self,
        client: ClientId,
        id: EndpointId,
    ) -> Result<&mut Endpoint, EndpointError> {
        match self.endpoints.get_mut(&id) {
            Some(ep) if ep.owner == client => {
                ep.requests += 1;
                Ok(ep)
            }
            _ => Err(EndpointError::NotFound),
        }
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

    pub fn owned_by(&self, client: ClientId) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values().filter(move |ep| ep.owner == client)
    }

    /// Removes and returns every endpoint of `client` (its control socket closed).
    pub fn remove_client(&mut self, client: ClientId) -> Vec<Endpoint> {
        let ids: Vec<EndpointId> = self.owned_by(client).map(|ep| ep.id).collect();
        ids.iter()
            .filter_map(|id| self.endpoints.remove(id))
            .collect()
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
            .create(owner, 100 + owner, Family::Inet, SockKind::Datagram)
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
    fn remove_client_takes_only_its_endpoints() {
        let mut t = EndpointTable::new();
        udp(&mut t, 1);
        udp(&mut t, 1);
        let keep = udp(&mut t, 2);
        assert_eq!(t.remove_client(1).len(), 2);
        assert_eq!(t.len(), 1);
        assert!(t.get(keep).is_some());
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
