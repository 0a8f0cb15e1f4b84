//! LISTEN (RFC 9293 §3.10.7.2) for one local address and port, and reset generation for
//! segments that reach no connection (RFC 9293 §3.10.7.1).
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;

use super::{InitialSequence, TcpConfig, TcpConnection, TcpDropReason};
use crate::stack::Instant;
use crate::stack::tcp::isn::IsnGenerator;
use crate::wire::tcp::{TcpControl, TcpOptions, TcpRepr, TcpSeqNumber};

/// What a listener did with a segment.
#[derive(Debug)]
pub enum ListenOutcome {
    /// A SYN opened a connection in SYN_RECEIVED; its dispatch sends the SYN-ACK.
    Connection(Box<TcpConnection>),
    /// The segment must be answered with this RST.
    Reset(TcpRepr<'static>),
    Dropped(TcpDropReason),
}

/// A passive endpoint.
#[derive(Debug, Clone)]
pub struct TcpListener {
    config: TcpConfig,
    local: SocketAddrV4,
    isn: IsnGenerator,
}

impl TcpListener {
    pub fn new(config: TcpConfig, local: SocketAddrV4, isn: IsnGenerator) -> TcpListener {
        TcpListener { config, local, isn }
    }

    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// The ISN and timestamp-offset generator (its secret also keys SYN cookies).
    pub fn isn(&self) -> &IsnGenerator {
        &self.isn
    }

    /// "first check for an RST … second check for an ACK … third check for a SYN".
    pub fn process(&mut self, now: Instant, src: SocketAddrV4, seg: &TcpRepr<'_>) -> ListenOutcome {
        if seg.dst_port != self.local.port() {
            return ListenOutcome::Dropped(TcpDropReason::WrongPorts);
        }
        if seg.control.rst {
            return ListenOutcome::Dropped(TcpDropReason::NoConnection);
        }
        if seg.ack_number.is_some() {
            return match reset_for(seg) {
                Some(rst) => ListenOutcome::Reset(rst),
                None => ListenOutcome::Dropped(TcpDropReason::NoConnection),
            };
        }
        if !seg.control.syn || seg.control.fin {
            return ListenOutcome::Dropped(TcpDropReason::BadSyn);
        }
        let initial = InitialSequence {
            iss: self.isn.initial_sequence(self.local, src, now),
            ts_offset: self.isn.timestamp_offset(self.local, src),
        };
        match TcpConnection::accept(self.config.clone(), self.local, src, seg, initial, now) {
            Ok(conn) => ListenOutcome::Connection(Box::new(conn)),
            Err(reason) => ListenOutcome::Dropped(reason),
        }
    }
}

/// The RST answering `seg` sent to a port with no connection: "If the incoming segment has an
/// ACK field, the reset takes its sequence number from the ACK field of the segment, otherwise
/// the reset has sequence number zero and the ACK field is set to the sum of the sequence
/// number and segment length". No reply to an RST.
pub fn reset_for(seg: &TcpRepr<'_>) -> Option<TcpRepr<'static>> {
    if seg.control.rst {
        return None;
    }
    let (seq_number, ack_number) = match seg.ack_number {
        Some(ack) => (ack, None),
        None => {
            let len =
                seg.payload.len() + usize::from(seg.control.syn) + usize::from(seg.control.fin);
            (TcpSeqNumber(0), Some(seg.seq_number + len))
        }
    };
    Some(TcpRepr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        seq_number,
        ack_number,
        control: TcpControl::RST,
        window_len: 0,
        urgent_pointer: None,
        options: TcpOptions::default(),
        payload: &[],
    })
}
