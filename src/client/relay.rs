//! Relayed sockets: TCP connections whose program descriptors are a plain kernel socketpair
//! with the netserver carrying the bytes (`netserver::relay`, `Request::Relay`).
//!
//! Interposition cannot see every path to the kernel: glibc's stdio writes through its
//! internal `__write`, not the exported `write`, so `printf` on a socket `dup2`ed onto
//! descriptor 1 would go into the placeholder and be lost. A connection that lands on
//! descriptor 0, 1 or 2 (`dup2`, `accept`, or still there at `execve`) is therefore *relayed*:
//! flushed, handed to the netserver together with one end of a fresh socketpair, and every
//! program descriptor of it replaced by the other end. Reads, writes, `poll`, `shutdown`,
//! `close`, `fork` and `execve` then act on a real kernel socket whose bytes are the
//! connection's, whatever path the program or its children take.
//!
//! What the kernel socketpair cannot answer is answered here: the addresses
//! (`getsockname`/`getpeername` name the connection, not an AF_UNIX socket) and the socket's
//! domain and protocol. TCP-level options are remembered and read back but have no effect:
//! the netserver's engine sends what the relay gives it as it comes.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::Outcome;
use super::forksafe::Mutex;

/// Whether a connection on descriptor `fd` is relayed: the standard descriptors, which
/// glibc's stdio reaches without the exported symbols.
pub fn wants_relay(fd: RawFd) -> bool {
    (0..=2).contains(&fd)
}

/// One relayed connection as this process sees it.
pub struct RelayedSocket {
    /// AF_INET or AF_INET6 (the family the program made the socket with).
    pub domain: i32,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    state: Mutex<RelayedState>,
}

struct RelayedState {
    fds: Vec<RawFd>,
    /// TCP-level options set since (level IPPROTO_TCP): name → value.
    tcp_options: Vec<(i32, Vec<u8>)>,
}

impl RelayedSocket {
    pub fn new(
        domain: i32,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        fds: Vec<RawFd>,
    ) -> Arc<RelayedSocket> {
        Arc::new(RelayedSocket {
            domain,
            local,
            remote,
            state: Mutex::new(RelayedState {
                fds,
                tcp_options: Vec::new(),
            }),
        })
    }

    pub fn add_fd(&self, fd: RawFd) {
        let mut st = self.state.lock();
        if !st.fds.contains(&fd) {
            st.fds.push(fd);
        }
    }

    /// Removes a descriptor number; true if it was the last one.
    pub fn remove_fd(&self, fd: RawFd) -> bool {
        let mut st = self.state.lock();
        st.fds.retain(|&f| f != fd);
        st.fds.is_empty()
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.state.lock().fds.clone()
    }

    fn family_addr(&self, a: SocketAddrV4) -> SocketAddr {
        family_addr(self.domain, a)
    }

    pub fn getsockname(&self) -> Outcome<SocketAddr> {
        Outcome::Done(self.family_addr(self.local))
    }

    pub fn getpeername(&self) -> Outcome<SocketAddr> {
        Outcome::Done(self.family_addr(self.remote))
    }

    /// What the socketpair would answer wrongly: its domain and protocol, and TCP options.
    pub fn getsockopt(&self, level: i32, name: i32) -> Outcome<Vec<u8>> {
        match (level, name) {
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => {
                Outcome::Done(self.domain.to_ne_bytes().to_vec())
            }
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => {
                Outcome::Done(libc::IPPROTO_TCP.to_ne_bytes().to_vec())
            }
            (libc::IPPROTO_TCP, _) => {
                let st = self.state.lock();
                match st.tcp_options.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => Outcome::Done(v.clone()),
                    None if name == libc::TCP_NODELAY => Outcome::Done(0i32.to_ne_bytes().to_vec()),
                    None => Outcome::Error(libc::ENOPROTOOPT),
                }
            }
            _ => Outcome::Bypass,
        }
    }

    /// TCP-level options are remembered (see the module doc); the rest is the socketpair's.
    pub fn setsockopt(&self, level: i32, name: i32, value: &[u8]) -> Outcome<()> {
        if level != libc::IPPROTO_TCP {
            return Outcome::Bypass;
        }
        if value.len() < 4 {
            return Outcome::Error(libc::EINVAL);
        }
        let mut st = self.state.lock();
        st.tcp_options.retain(|(n, _)| *n != name);
        st.tcp_options.push((name, value.to_vec()));
        Outcome::Done(())
    }
}

/// `a` as the family a socket of `domain` reports (v4-mapped for AF_INET6).
pub fn family_addr(domain: i32, a: SocketAddrV4) -> SocketAddr {
    if domain == libc::AF_INET6 {
        let ip = if a.ip().is_unspecified() {
            std::net::Ipv6Addr::UNSPECIFIED
        } else {
            a.ip().to_ipv6_mapped()
        };
        SocketAddr::V6(SocketAddrV6::new(ip, a.port(), 0, 0))
    } else {
        SocketAddr::V4(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sock(domain: i32) -> Arc<RelayedSocket> {
        RelayedSocket::new(
            domain,
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000),
            vec![0, 1],
        )
    }

    #[test]
    fn only_the_standard_descriptors_are_relayed() {
        assert!(wants_relay(0) && wants_relay(1) && wants_relay(2));
        assert!(!wants_relay(3) && !wants_relay(-1) && !wants_relay(57));
    }

    #[test]
    fn names_are_the_connections_in_the_sockets_family() {
        let s = sock(libc::AF_INET);
        assert_eq!(
            s.getpeername(),
            Outcome::Done("198.18.0.1:40000".parse().unwrap())
        );
        let s6 = sock(libc::AF_INET6);
        assert_eq!(
            s6.getsockname(),
            Outcome::Done("[::ffff:198.18.0.2]:80".parse().unwrap())
        );
    }

    #[test]
    fn descriptors_and_tcp_options_are_tracked() {
        let s = sock(libc::AF_INET);
        assert!(!s.remove_fd(0));
        s.add_fd(5);
        assert_eq!(s.fds(), vec![1, 5]);
        assert_eq!(
            s.getsockopt(libc::IPPROTO_TCP, libc::TCP_NODELAY),
            Outcome::Done(0i32.to_ne_bytes().to_vec())
        );
        assert_eq!(
            s.setsockopt(libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32.to_ne_bytes()),
            Outcome::Done(())
        );
        assert_eq!(
            s.getsockopt(libc::IPPROTO_TCP, libc::TCP_NODELAY),
            Outcome::Done(1i32.to_ne_bytes().to_vec())
        );
        assert_eq!(
            s.setsockopt(libc::IPPROTO_TCP, libc::TCP_NODELAY, &[1]),
            Outcome::Error(libc::EINVAL)
        );
        assert_eq!(
            s.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, &[0; 4]),
            Outcome::Bypass
        );
        assert_eq!(
            s.getsockopt(libc::SOL_SOCKET, libc::SO_DOMAIN),
            Outcome::Done(libc::AF_INET.to_ne_bytes().to_vec())
        );
        assert!(!s.remove_fd(1) && s.remove_fd(5));
    }
}
