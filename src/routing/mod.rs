//! Routing (paper §4.3): the netserver owns routes and neighbours and publishes them in a
//! shared-memory region that every client maps read-only, so a cached socket's send path finds
//! its next hop and destination MAC with no request to the netserver.
//!
//! - [`table`]: the plain, safe model (interface, routes with longest-prefix match, neighbours)
//!   and the [`NextHop`] a lookup returns; what `msock route` prints.
//! - [`region`]: the unsafe shell — a sealed memfd with a fixed position-independent layout,
//!   written by the netserver under a seqlock and read in place by clients without locks.

pub mod region;
pub mod table;

pub use region::{RegionReader, RegionWriter};
pub use table::{InterfaceConfig, NextHop, Route, RoutingTable, TableError};
