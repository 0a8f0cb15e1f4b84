//! Relays: a flushed TCP connection whose bytes the netserver carries through a socketpair.
//!
//! A program reaches some of its descriptors without going through any interposed symbol:
//! glibc's stdio calls its internal `__write`/`__read`, so `printf` on a socket that was
//! `dup2`ed onto descriptor 1 goes straight to the kernel. For such descriptors libmsock
//! replaces the placeholder with one end of a fresh stream socketpair and hands the other end
//! to the netserver (`Request::Relay`). From then on the descriptor *is* a kernel socket with
//! the connection's bytes behind it, whatever path the program (or any process it forks, or
//! the image it execs) uses, and the kernel's reference counting decides when the program is
//! done with it. The netserver holds the connection on the relay's behalf, as one more holder.
//!
//! [`Relay::pump`] moves what it can each event-loop pass, never blocking:
//! - connection → program: the connection's in-order bytes are written to the socket; the
//!   peer's FIN becomes `shutdown(SHUT_WR)` (the program reads end of file).
//! - program → connection: bytes read from the socket are queued on the connection, no more
//!   than its send buffer has room for (back-pressure reaches the program as a full socket).
//!   End of file is the program's `shutdown(SHUT_WR)` or its last close: with `POLLHUP` (both
//!   directions gone) it is the last close, else a shutdown, sent as the FIN at once (Linux's
//!   `shutdown` acts on a shared socket too). A connection that can no longer send (shut by
//!   another holder) gets the relay's reading side shut: the program's writes fail (EPIPE).
//! - the relay ends when the program closed every descriptor, or when both directions are
//!   over (what it wrote stays readable); then it lets go of the connection like a closing
//!   process.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{MsgFlags, Shutdown, recv, send, shutdown};

use super::endpoints::ClientId;
use crate::control::EndpointId;
use crate::stack::Instant;
use crate::stack::tcp::connection::{RecvError, TcpConnection};

/// Holder ids of relays: a range client ids never take (`Server::register_client`).
pub const RELAY_HOLDER_BASE: ClientId = 0x8000_0000;

/// Most bytes moved per direction per pass (other relays and the loop get their turn).
const PASS_BUDGET: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;

/// What a pass left the relay in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Nothing more to do until an event (socket edge, packets, timers).
    Idle,
    /// Stopped by the pass budget with more to move: run another pass soon.
    More,
    /// Every program descriptor of the socket is closed: the relay lets go of the connection.
    ProgramGone,
    /// The connection failed (reset, timed out): the socket is closed, the relay ends.
    ConnectionFailed,
}

/// One relayed connection.
pub struct Relay {
    pub endpoint: EndpointId,
    /// (local port, remote) of the connection in `host.tcp`.
    pub key: (u16, std::net::SocketAddrV4),
    socket: OwnedFd,
    /// Taken from the connection, not yet written to the socket (`to_program[written..]`).
    to_program: Vec<u8>,
    written: usize,
    scratch: Vec<u8>,
    /// Readable edge seen and no EAGAIN since.
    readable: bool,
    /// Writable edge seen and no EAGAIN since.
    writable: bool,
    program_eof: bool,
    /// The peer's end of stream was passed on (`shutdown(SHUT_WR)` of the socket).
    fin_passed: bool,
}

impl Relay {
    /// `socket` must be non-blocking (the caller sets it).
    pub fn new(endpoint: EndpointId, key: (u16, std::net::SocketAddrV4), socket: OwnedFd) -> Relay {
        Relay {
            endpoint,
            key,
            socket,
            to_program: Vec::new(),
            written: 0,
            scratch: vec![0; CHUNK],
            readable: true,
            writable: true,
            program_eof: false,
            fin_passed: false,
        }
    }

    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// An epoll edge on the socket: it may be readable or writable again.
    pub fn wake(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Bytes taken from the connection the program has not read yet (they count as unread
    /// data when the relay ends: Linux resets a connection closed with unread data).
    pub fn undelivered(&self) -> usize {
        self.to_program.len() - self.written
    }

    /// Moves what it can both ways (see the module doc). The program's side is read first:
    /// a reply written just before the program exits is queued on the connection before a
    /// write towards the program finds the socket gone.
    pub fn pump(&mut self, conn: &mut TcpConnection, now: Instant) -> Pumped {
        let mut more = false;
        match self.take_from_program(conn, now) {
            Ok(busy) => more |= busy,
            Err(outcome) => return outcome,
        }
        match self.deliver_to_program(conn) {
            Ok(busy) => more |= busy,
            Err(outcome) => return outcome,
        }
        if self.program_eof {
            // Both directions are over: what was written stays readable in the program's
            // socket after the relay's end is closed.
            if self.fin_passed && self.undelivered() == 0 {
                return Pumped::ProgramGone;
            }
            // Before the relay shuts its own sending side, both directions gone means the
            // program closed every descriptor.
            if !self.fin_passed && self.hung_up() {
                return Pumped::ProgramGone;
            }
        }
        if more { Pumped::More } else { Pumped::Idle }
    }

    /// Connection → program. `Ok(true)` when stopped by the budget.
    fn deliver_to_program(&mut self, conn: &mut TcpConnection) -> Result<bool, Pumped> {
        let mut moved = 0;
        loop {
            if self.written == self.to_program.len() && !self.fin_passed {
                self.to_program.clear();
                self.written = 0;
                self.to_program.resize(CHUNK, 0);
                match conn.recv(&mut self.to_program) {
                    Ok(0) => {
                        self.to_program.clear();
                        // The peer's FIN: the program reads end of file.
                        let _ = shutdown(self.socket.as_raw_fd(), Shutdown::Write);
                        self.fin_passed = true;
                    }
                    Ok(n) => self.to_program.truncate(n),
                    Err(RecvError::WouldBlock) => self.to_program.clear(),
                    Err(_) => {
                        self.to_program.clear();
                        return Err(Pumped::ConnectionFailed);
                    }
                }
            }
            if self.written == self.to_program.len() || !self.writable {
                return Ok(false);
            }
            if moved >= PASS_BUDGET {
                return Ok(true);
            }
            // Never blocking whatever the description's flags (the client that sent the
            // socket shares them and may clear O_NONBLOCK).
            match send(
                self.socket.as_raw_fd(),
                &self.to_program[self.written..],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    self.written += n;
                    moved += n;
                }
                Err(Errno::EAGAIN) => self.writable = false,
                Err(Errno::EINTR) => {}
                // EPIPE: every program descriptor is closed (or it shut its reading side).
                Err(_) => return Err(Pumped::ProgramGone),
            }
        }
    }

    /// Program → connection. `Ok(true)` when stopped by the budget. End of file is the
    /// program's last close (the socket hung up) or its `shutdown(SHUT_WR)`, which sends
    /// the connection's FIN at once, as Linux's `shutdown` does on a shared socket too.
    fn take_from_program(
        &mut self,
        conn: &mut TcpConnection,
        now: Instant,
    ) -> Result<bool, Pumped> {
        if self.program_eof {
            return Ok(false);
        }
        if !conn.can_send() {
            // Shut for writing already (another holder's shutdown, or the connection is
            // closing): the program's writes fail with EPIPE, as they would on Linux, and
            // the relay stops reading.
            let _ = shutdown(self.socket.as_raw_fd(), Shutdown::Read);
            self.program_eof = true;
            return Ok(false);
        }
        let mut moved = 0;
        while self.readable {
            let room = conn.send_free().min(CHUNK);
            if room == 0 {
                // A reset after the peer's FIN shows only here (nothing more to receive).
                if conn.readiness().error {
                    return Err(Pumped::ConnectionFailed);
                }
                return Ok(false);
            }
            if moved >= PASS_BUDGET {
                return Ok(true);
            }
            match recv(
                self.socket.as_raw_fd(),
                &mut self.scratch[..room],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => {
                    self.program_eof = true;
                    if !self.fin_passed && self.hung_up() {
                        return Err(Pumped::ProgramGone);
                    }
                    conn.shutdown_write(now);
                    return Ok(false);
                }
                Ok(n) => {
                    // `room` was free: the connection takes all of it, or it failed.
                    match conn.send(&self.scratch[..n]) {
                        Ok(taken) if taken == n => moved += n,
                        _ => return Err(Pumped::ConnectionFailed),
                    }
                }
                Err(Errno::EAGAIN) => self.readable = false,
                Err(Errno::EINTR) => {}
                // ECONNRESET: the program closed with bytes the relay wrote left unread.
                Err(_) => return Err(Pumped::ProgramGone),
            }
        }
        Ok(false)
    }

    /// Both directions of the socket are gone: every program descriptor is closed (a
    /// `shutdown(SHUT_WR)` alone leaves the other direction open).
    fn hung_up(&self) -> bool {
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::empty())];
        matches!(nix::poll::poll(&mut fds, PollTimeout::ZERO), Ok(1))
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::tcp::connection::TcpConfig;
    use crate::stack::tcp::connection::tests::{exchange, pair};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn relay_for(conn: &TcpConnection) -> (Relay, UnixStream) {
        let (ours, program) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let key = (conn.local().port(), conn.remote());
        (Relay::new(1, key, OwnedFd::from(ours)), program)
    }

    fn read_some(conn: &mut TcpConnection) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let n = conn.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn bytes_cross_both_ways_then_shutdown_then_close() {
        let (mut ours, mut peer, mut now) = pair(TcpConfig::default());
        let (mut relay, mut program) = relay_for(&ours);
        program.write_all(b"from the program").unwrap();
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(read_some(&mut peer), b"from the program");

        peer.send(b"to the program").unwrap();
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        let mut buf = [0u8; 64];
        let n = program.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to the program");

        // The program's shutdown is the FIN at once; it can still read afterwards.
        program.shutdown(std::net::Shutdown::Write).unwrap();
        relay.wake(true, false);
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(read_some(&mut peer), b"", "the peer reads end of file");
        peer.send(b"late").unwrap();
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        let n = program.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"late");

        drop(program);
        relay.wake(true, true);
        assert_eq!(relay.pump(&mut ours, now), Pumped::ProgramGone);
    }

    #[test]
    fn the_last_reply_is_queued_even_if_the_program_is_gone() {
        let (mut ours, mut peer, mut now) = pair(TcpConfig::default());
        let (mut relay, mut program) = relay_for(&ours);
        // The program answers and exits while more of the peer's data arrives.
        program.write_all(b"reply").unwrap();
        drop(program);
        peer.send(b"pipelined request").unwrap();
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(relay.pump(&mut ours, now), Pumped::ProgramGone);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(read_some(&mut peer), b"reply");
    }

    #[test]
    fn a_connection_shut_by_another_holder_refuses_the_programs_writes() {
        let (mut ours, mut peer, mut now) = pair(TcpConfig::default());
        ours.shutdown_write(now);
        exchange(&mut ours, &mut peer, &mut now);
        let (mut relay, mut program) = relay_for(&ours);
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        assert!(program.write_all(b"too late").is_err(), "EPIPE");
        // The peer's last bytes and FIN still reach the program; then the relay is done.
        peer.send(b"bye").unwrap();
        peer.shutdown_write(now);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(relay.pump(&mut ours, now), Pumped::ProgramGone);
        let mut got = Vec::new();
        program.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
    }

    #[test]
    fn the_peers_fin_is_end_of_file_for_the_program() {
        let (mut ours, mut peer, mut now) = pair(TcpConfig::default());
        let (mut relay, mut program) = relay_for(&ours);
        peer.send(b"last words").unwrap();
        peer.shutdown_write(now);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        let mut got = Vec::new();
        program.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        // The program may still write after the peer's FIN (CLOSE_WAIT).
        program.write_all(b"reply").unwrap();
        relay.wake(true, false);
        assert_eq!(relay.pump(&mut ours, now), Pumped::Idle);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(read_some(&mut peer), b"reply");
    }

    #[test]
    fn a_full_connection_pushes_back_on_the_program() {
        let (mut ours, mut peer, mut now) = pair(TcpConfig::default());
        let (mut relay, mut program) = relay_for(&ours);
        program.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        // Nothing is acknowledged: the program fills the connection's buffer, then the socket.
        loop {
            match program.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => {
                    let free = ours.send_free();
                    relay.wake(true, false);
                    relay.pump(&mut ours, now);
                    if free == 0 && ours.send_free() == 0 {
                        break;
                    }
                }
            }
        }
        assert!(written > 0);
        // Everything written arrives once the peer reads.
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            relay.wake(true, true);
            relay.pump(&mut ours, now);
            exchange(&mut ours, &mut peer, &mut now);
            while let Ok(n) = peer.recv(&mut buf) {
                assert!(buf[..n].iter().all(|&b| b == 7));
                got += n;
                if n == 0 {
                    break;
                }
            }
            if got >= written {
                break;
            }
        }
        assert_eq!(got, written);
    }

    #[test]
    fn a_reset_connection_ends_the_relay() {
        let (mut ours, mut peer, mut now) = pair(TcpConfig::default());
        let (mut relay, _program) = relay_for(&ours);
        peer.abort(now);
        exchange(&mut ours, &mut peer, &mut now);
        assert_eq!(relay.pump(&mut ours, now), Pumped::ConnectionFailed);
    }
}
