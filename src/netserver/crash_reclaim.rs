//! The netserver's side of crash records (docs/notes/tcp-ownership.md, "Crash record"): each
//! cached TCP connection's record file is kept per endpoint; when the process dies (control
//! socket EOF) the file is read with `pread` — never mapped here, so a client cannot make the
//! netserver fault by truncating it — and decides how the connection ends, as Linux ends the
//! sockets of a process that exits (`tcp_close`): unread received data (or SO_LINGER 0) → RST;
//! otherwise the queued data is still delivered, then FIN, FIN_WAIT/TIME_WAIT held here.
//!
//! A connection whose socket other processes still hold (shared after a `fork`) does not end
//! when the process it was cached in dies: [`resume`] rebuilds it live from the record, to be
//! run flushed in the netserver for the other holders — possible only when nothing received
//! was left unread in the dead process (that data is gone; the peer is reset instead).
//!
//! Everything read is untrusted: the file must be a regular file no larger than a record
//! file, the block must decode ([`CrashRecord::read`]), name the endpoint's own 4-tuple and
//! rebuild ([`TcpConnection::from_crash_record`]); anything else is [`Reclaim::Fallback`]
//! (the 4-tuple reset, `TcpHost::reset_orphan`).
#![forbid(unsafe_code)]

use std::net::SocketAddrV4;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::stack::tcp::connection::{State, TcpConfig, TcpConnection};
use crate::stack::tcp::crash_record::{BLOCK_LEN, CrashRecord, FILE_LEN, HEADER_LEN};
use crate::stack::{Duration, Instant};

pub use crate::client::crash_file::create_record_file;

/// What to do with a dead process's connection.
#[derive(Debug)]
pub enum Reclaim {
    /// Nothing: it was still opening (SYN_SENT) or had already ended.
    Nothing,
    /// Reset the peer (unread data or SO_LINGER 0), at its exact sequence number.
    Reset,
    /// Deliver what is queued, then FIN: the rebuilt connection, already closed.
    Close(Box<TcpConnection>),
    /// No usable record (why): fall back to resetting the 4-tuple.
    Fallback(&'static str),
}

/// A descriptor a client passed as its connection's record file, if it may be one: a regular
/// file in shared memory (a pipe, a socket or a file on FUSE/NFS could block its reads).
pub fn accept_record_file(fd: OwnedFd) -> Option<OwnedFd> {
    let meta = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)).ok()?;
    (meta.st_mode & libc::S_IFMT == libc::S_IFREG && super::on_shmem(fd.as_fd())).then_some(fd)
}

/// Reads exactly `buf.len()` bytes at `at`, or fails.
fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], at: usize) -> Result<(), &'static str> {
    let mut done = 0;
    while done < buf.len() {
        let offset = libc::off_t::try_from(at + done).map_err(|_| "offset")?;
        match nix::sys::uio::pread(fd, &mut buf[done..], offset) {
            Ok(0) => return Err("file shorter than the record says"),
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Err("read error"),
        }
    }
    Ok(())
}

/// Decides, from the record file `fd`, how the connection `local`–`remote` of a dead process
/// ends; `now` is the netserver's engine clock.
pub fn reclaim(fd: impl AsFd, local: SocketAddrV4, remote: SocketAddrV4, now: Instant) -> Reclaim {
    match read_record(fd.as_fd(), local, remote, now, true) {
        Ok(r) => r,
        Err(why) => Reclaim::Fallback(why),
    }
}

/// The connection `local`–`remote` of a dead process, rebuilt from the record file `fd` still
/// open (not closed), for the processes that share its socket; `None` when it cannot go on
/// exactly (no usable record, not established yet, or received data left unread).
pub fn resume(
    fd: impl AsFd,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    now: Instant,
) -> Option<TcpConnection> {
    match read_record(fd.as_fd(), local, remote, now, false) {
        Ok(Reclaim::Close(conn)) => Some(*conn),
        _ => None,
    }
}

/// The record as a [`Reclaim`]; `close`: the connection is closed as the dead process's
/// socket (`Close` holds it closed), else it is rebuilt open (`Close` holds it open, and
/// `Reset` also stands for unread data).
fn read_record(
    fd: BorrowedFd<'_>,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    now: Instant,
    close: bool,
) -> Result<Reclaim, &'static str> {
    let meta = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd)).map_err(|_| "fstat")?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("not a regular file");
    }
    let size = usize::try_from(meta.st_size).map_err(|_| "size")?;
    if !(HEADER_LEN..=FILE_LEN).contains(&size) {
        return Err("file size");
    }
    let mut block = [0u8; BLOCK_LEN];
    pread_exact(fd, &mut block, 0)?;
    let (record, _) = CrashRecord::read(&block).map_err(|_| "control block")?;
    if record.local != local || record.remote != remote {
        return Err("another connection's record");
    }
    if matches!(record.state, State::Closed | State::Listen | State::SynSent) {
        return Ok(Reclaim::Nothing);
    }
    if record.unread > 0 || (close && record.linger_zero) {
        return Ok(Reclaim::Reset);
    }
    let mut queue = vec![0u8; record.send_len as usize];
    let [first, second] = record.queue_ranges();
    if HEADER_LEN + first.end.max(second.end) > size {
        return Err("ring beyond the file");
    }
    let split = first.len();
    pread_exact(fd, &mut queue[..split], HEADER_LEN + first.start)?;
    pread_exact(fd, &mut queue[split..], HEADER_LEN + second.start)?;
    let since = Duration::from_micros(
        crate::client::crash_file::monotonic_us().saturating_sub(record.stamp_us),
    );
    let mut conn =
        TcpConnection::from_crash_record(&record, &queue, TcpConfig::default(), now, since)
            .map_err(|_| "record does not rebuild")?;
    conn.apply_limits(&crate::stack::tcp::connection::ConfigLimits::default(), now);
    if !close {
        return Ok(Reclaim::Close(Box::new(conn)));
    }
    conn.close(now);
    if conn.state() == State::Closed {
        return Ok(Reclaim::Nothing);
    }
    Ok(Reclaim::Close(Box::new(conn)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::crash_file::CrashFile;
    use crate::stack::tcp::connection::InitialSequence;
    use crate::wire::tcp::TcpSeqNumber;

    fn addrs() -> (SocketAddrV4, SocketAddrV4) {
        (
            "198.18.0.1:40000".parse().unwrap(),
            "198.18.0.2:5000".parse().unwrap(),
        )
    }

    #[test]
    fn files_without_a_valid_record_fall_back() {
        let (local, remote) = addrs();
        let now = Instant::from_secs(1);
        // Never written.
        let file = CrashFile::create().unwrap();
        assert!(matches!(
            reclaim(file.fd(), local, remote, now),
            Reclaim::Fallback("control block")
        ));
        // A pipe is refused before any read.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(accept_record_file(r).is_none());
        // A short regular file.
        let short =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
                .unwrap();
        assert!(matches!(
            reclaim(&short, local, remote, now),
            Reclaim::Fallback("file size")
        ));
    }

    #[test]
    fn a_record_for_another_connection_or_still_opening_is_not_used() {
        let (local, remote) = addrs();
        let now = Instant::from_secs(1);
        let mut file = CrashFile::create().unwrap();
        let mut conn = TcpConnection::connect(
            TcpConfig::default(),
            local,
            remote,
            InitialSequence {
                iss: TcpSeqNumber(5),
                ts_offset: 0,
            },
            now,
        );
        file.publish(&mut conn, now);
        assert!(matches!(
            reclaim(file.fd(), local, remote, now),
            Reclaim::Nothing
        ));
        let other: SocketAddrV4 = "198.18.0.3:5000".parse().unwrap();
        assert!(matches!(
            reclaim(file.fd(), local, other, now),
            Reclaim::Fallback("another connection's record")
        ));
        // Nor is one resumed for the other holders of a shared socket.
        assert!(resume(file.fd(), local, remote, now).is_none());
        assert!(resume(file.fd(), local, other, now).is_none());
        let never_written = CrashFile::create().unwrap();
        assert!(resume(never_written.fd(), local, remote, now).is_none());
    }
}
