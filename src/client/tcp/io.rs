//! The data path of a cached TCP connection (paper §3.1: served in the process, no netserver
//! hop): the engine ([`TcpConnection`]) and its [`TcpLink`] (channel, frames, next hop, crash
//! record). Both halves drive it under the socket's state lock: the receive thread and the
//! timer thread (bottom half), and a caller blocked in the socket processing its own channel
//! inline (upper half).
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use crate::client::tcp_session::{ControlLink, IcmpReport, TcpLink, apply_icmp};
use crate::stack::Instant;
use crate::stack::tcp::connection::{TcpConnection, reset_for};
use crate::wire::TcpRepr;

/// Frames read between two runs of the engine's output (ACKs leave while a burst is read).
const RX_BATCH: usize = 32;
/// Resets sent per batch to segments of other peers (never an unbounded reflector).
const MAX_STRAY_RESETS: usize = 8;

/// A connection running in this process.
pub struct Cached {
    pub conn: TcpConnection,
    pub link: TcpLink,
}

impl Cached {
    /// Reads every waiting frame into the engine, answering between batches, then runs the
    /// engine's output. Returns whether in-order data (or a FIN) arrived for the reader.
    pub fn pump(&mut self, ctl: &dyn ControlLink, now: Instant) -> bool {
        let before = (self.conn.recv_queue_len(), self.conn.readiness().read_hup);
        let remote = self.conn.remote();
        loop {
            let mut strays: Vec<(SocketAddrV4, TcpRepr<'static>)> = Vec::new();
            let conn = &mut self.conn;
            let frames = self
                .link
                .receive_up_to(RX_BATCH, |src, seg| {
                    if src == remote {
                        conn.process(now, seg);
                    } else if strays.len() < MAX_STRAY_RESETS
                        && let Some(rst) = reset_for(seg)
                    {
                        strays.push((src, rst));
                    }
                })
                .unwrap_or(0);
            for (dst, rst) in strays {
                let _ = self.link.send_segment(ctl, dst, &rst);
            }
            let _ = self.link.transmit(ctl, &mut self.conn, now);
            if frames < RX_BATCH {
                break;
            }
        }
        let after = (self.conn.recv_queue_len(), self.conn.readiness().read_hup);
        after.0 > before.0 || (after.1 && !before.1)
    }

    /// Runs the engine's output (after a user call or a timer).
    pub fn transmit(&mut self, ctl: &dyn ControlLink, now: Instant) {
        let _ = self.link.transmit(ctl, &mut self.conn, now);
    }

    /// An ICMP error the netserver forwarded about one of our segments.
    pub fn icmp(&mut self, ctl: &dyn ControlLink, now: Instant, report: &IcmpReport) {
        apply_icmp(&mut self.conn, now, report);
        self.transmit(ctl, now);
    }
}
