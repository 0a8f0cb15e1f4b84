//! msock: a user-level TCP/IP stack with migrating sockets.
//!
//! The layout is the architecture (paper §3, `docs/notes/design.md`):
//! - [`wire`]: zero-copy packet views and plain representations; depends on nothing but
//!   [`checksum`].
//! - [`checksum`]: RFC 1071 Internet checksum, naive, optimized and integrated with copy (§7.2).
//! - [`stack`]: sans-I/O protocol logic (ARP cache, IP fragmentation and reassembly, routing
//!   decisions, UDP endpoint table, drop accounting). Time and I/O are injected.
//! - [`channel`]: the kernel packet channel (AF_PACKET mmap rings, classic-BPF filters) and an
//!   in-memory channel for deterministic tests.
//! - [`routing`]: the shared-memory routing region the netserver writes and clients read (§4.3).
//! - [`control`]: the typed, versioned protocol between libmsock and the netserver.
//! - [`netserver`]: the per-namespace daemon doing boundary operations.
//! - [`client`]: the in-process runtime behind libmsock (cached sockets, receive thread).
//! - [`testnet`]: namespaces and veth links for tests and demos.
//! - [`cli`]: the `msock` command.

pub mod channel;
pub mod checksum;
pub mod cli;
pub mod client;
pub mod control;
pub mod netserver;
pub mod routing;
pub mod stack;
pub mod testnet;
pub mod wire;
