//! ICMP errors about a TCP connection (RFC 1122 §4.2.3.9, RFC 1191, RFC 5927): which errno an
//! ICMP destination-unreachable maps to, and handing it to the engine, which checks that the
//! quoted sequence number is in its flight. Used where the connection lives: the process
//! (`client::tcp_session`) or the netserver (`netserver::tcp_host`).
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use super::connection::{ConnError, TcpConnection};
use crate::stack::Instant;
use crate::wire::tcp::TcpSeqNumber;

/// An ICMP destination-unreachable quoting a segment this session sent (the netserver
/// forwards it to the process holding the connection as `Upcall::TcpIcmpError`, or applies it
/// itself to a connection it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpReport {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// As Linux maps the ICMP code: EMSGSIZE (fragmentation needed), ECONNREFUSED (port),
    /// ENETUNREACH, EHOSTUNREACH, ENOPROTOOPT.
    pub errno: i32,
    pub next_hop_mtu: u16,
    pub quoted_seq: TcpSeqNumber,
}

/// Hands `report` to `conn` if it is about `conn`'s 4-tuple: fragmentation needed lowers the
/// path MTU (`on_icmp_frag_needed`), anything else is an unreachable error (hard while
/// connecting, soft afterwards: the engine decides). The engine ignores messages quoting a
/// sequence number outside its flight (RFC 5927). Returns whether it applied.
pub fn apply_icmp(conn: &mut TcpConnection, now: Instant, report: &IcmpReport) -> bool {
    if report.remote != conn.remote() || report.local.port() != conn.local().port() {
        return false;
    }
    let error = match report.errno {
        libc::EMSGSIZE => {
            conn.on_icmp_frag_needed(now, report.next_hop_mtu, report.quoted_seq);
            return true;
        }
        libc::ECONNREFUSED | libc::ENOPROTOOPT => ConnError::PortUnreachable,
        libc::ENETUNREACH => ConnError::NetUnreachable,
        _ => ConnError::HostUnreachable,
    };
    conn.on_icmp_error(now, error, report.quoted_seq)
}
