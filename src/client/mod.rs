//! The in-process runtime behind libmsock (paper §3.2): cached UDP and TCP sockets that send and
//! receive on their own packet channel with no netserver hop, the fd table, the session with
//! the netserver, the receive thread, and the per-process stats page.
//!
//! - [`api`]: the operations the C edge (`preload/`) calls, in safe types, with a three-way
//!   [`Outcome`].
//! - [`udp`]: one UDP socket (lifecycle, options, blocking and readiness).
//! - [`tcp`]: one TCP socket (lifecycle, cached/flushed connection, readiness mirror,
//!   blocking, the lock model of paper §3.2); [`tcp_session`] its data path (frames, next
//!   hop, crash record), shared with `msock tcp`; [`timer`] the per-process timer thread.
//! - [`datapath`]: its sans-I/O data path (frame validation, receive queue, header building,
//!   fragmentation) over any [`crate::channel::Channel`].
//! - [`relay`]: connections on the standard descriptors, carried by the netserver through a
//!   kernel socketpair (glibc's stdio bypasses the exported symbols).
//! - [`runtime`]: process-wide state (fd table, session, receive thread, neighbour queues).
//! - [`crash_file`]: a cached TCP connection's crash record (send ring + control block in a
//!   memfd the netserver reads if the process is killed).
//! - [`stats`]: the stats page the netserver maps read-only (`msock stat`).
//! - [`guard`], [`log`], [`sys`]: re-entrancy guard and fork marker, raw debug logging, the
//!   few system calls.

pub mod api;
pub mod crash_file;
pub mod datapath;
pub mod fdguard;
pub mod forksafe;
pub mod guard;
pub mod inherit;
pub mod log;
pub mod process;
pub mod relay;
pub mod runtime;
pub mod signals;
pub mod stats;
pub mod sys;
pub mod tcp;
pub mod tcp_session;
pub mod timer;
pub mod udp;

/// The outcome of an interposed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Done by msock; the value is the call's result.
    Done(T),
    /// Not msock's: the edge calls the real libc function.
    Bypass,
    /// Failed with this errno.
    Error(i32),
}

impl<T> Outcome<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        self.and_then(|v| Outcome::Done(f(v)))
    }

    /// Chains a further step after a done operation; bypass and errors pass through.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Outcome<U>) -> Outcome<U> {
        match self {
            Outcome::Done(v) => f(v),
            Outcome::Bypass => Outcome::Bypass,
            Outcome::Error(e) => Outcome::Error(e),
        }
    }
}

/// A step that either succeeds or fails with an errno (never a bypass).
impl<T> From<Result<T, i32>> for Outcome<T> {
    fn from(r: Result<T, i32>) -> Self {
        match r {
            Ok(v) => Outcome::Done(v),
            Err(e) => Outcome::Error(e),
        }
    }
}
