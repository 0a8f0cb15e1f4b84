//! The TCP protocol engine (RFC 9293 and the RFCs it builds on), sans-I/O: one engine used by
//! the netserver for the connections it holds (listen, handshake, TIME_WAIT, flushed sockets)
//! and by client processes for cached ones (paper §3.1). Time comes in as an [`Instant`],
//! randomness as values ([`isn::IsnGenerator`] secrets), segments as [`crate::wire::TcpRepr`];
//! output leaves through an emit closure. The whole connection exports to a versioned byte
//! image ([`image`]) and restores in another process: that image is the unit of migration.
//!
//! - [`connection`]: the state machine, user calls, timers, export/import.
//! - [`send_buffer`], [`recv_buffer`]: byte rings; the receive side keeps bounded out-of-order
//!   ranges and produces SACK blocks (RFC 2018).
//! - [`scoreboard`]: the sender's SACK scoreboard (RFC 6675).
//! - [`rtt`]: RTO estimation (RFC 6298); [`congestion`]: Reno (RFC 5681) and CUBIC (RFC 9438)
//!   with pacing rates; [`isn`]: initial sequence numbers (RFC 6528).
//! - [`crash_record`]: the record a client keeps so the netserver can close its connection as
//!   Linux would after the process is killed.
//! - [`info`]: `TCP_INFO`; [`sim`]: a seeded network simulator for deterministic tests.
#![forbid(unsafe_code)]

pub mod congestion;
pub mod connection;
pub mod crash_record;
pub mod fuzzing;
pub mod icmp;
pub mod image;
pub mod info;
pub mod isn;
pub mod recv_buffer;
pub mod rtt;
pub mod scoreboard;
pub mod send_buffer;
pub mod sim;
pub mod sockopt;
pub mod syn_cookie;

#[cfg(test)]
mod tests;

#[allow(unused_imports)]
use crate::stack::Instant;
