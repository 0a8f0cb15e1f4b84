//! The few system calls the client runtime makes, as small safe functions returning
//! `io::Result`. This is the only unsafe file of the runtime besides `stats`.
//!
//! Inside libmsock.so these `libc::` calls resolve to libmsock's own exports (it interposes
//! `read`, `close`, `socket`...); they reach libc because the calling thread is inside msock
//! (see `guard`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Writes `bytes` to stderr with one raw write; errors are ignored (logging only).
pub fn write_stderr(bytes: &[u8]) {
    // SAFETY: a valid buffer of `bytes.len()` bytes.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

/// Writes `bytes` to `fd` with one raw write; errors are ignored (logging only).
pub fn write_fd(fd: RawFd, bytes: &[u8]) {
    // SAFETY: a valid buffer of `bytes.len()` bytes.
    unsafe {
        libc::write(fd, bytes.as_ptr().cast(), bytes.len());
    }
}

/// Opens `path` for appending (created 0600 if missing, close-on-exec); the raw number.
pub fn open_append(path: &std::path::Path) -> io::Result<RawFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path; plain syscall.
    let fd = check(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )
    })?;
    let moved = own_raw(fd);
    if moved != fd {
        // SAFETY: our own fresh descriptor, replaced by `moved`.
        unsafe { libc::close(fd) };
    }
    Ok(moved)
}

/// Marks `fd` as msock's own (`client::fdguard`).
pub fn protect_fd(fd: RawFd) {
    super::fdguard::protect(fd);
}

/// Moves a descriptor msock creates for itself to a high number (close-on-exec) and protects
/// it (`client::fdguard`); kept where it is if no high number is free.
pub fn own(fd: OwnedFd) -> OwnedFd {
    let moved = own_raw(fd.as_raw_fd());
    if moved == fd.as_raw_fd() {
        return fd;
    }
    drop(fd);
    // SAFETY: `own_raw` returned a fresh duplicate that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(moved) }
}

/// [`own`] for a raw descriptor: returns the number to use from now on; the old number is
/// left open for the caller to close when it differs (it still owns it).
pub fn own_raw(fd: RawFd) -> RawFd {
    let base = super::fdguard::relocation_base();
    let target = if fd >= base {
        fd
    } else {
        // SAFETY: plain syscall on a descriptor the caller owns.
        let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
        if moved < 0 { fd } else { moved }
    };
    super::fdguard::protect(target);
    target
}

/// `socket(2)` returning the raw number (the program will own it).
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<RawFd> {
    // SAFETY: plain syscall, no pointers.
    check(unsafe { libc::socket(domain, ty, protocol) })
}

/// An AF_UNIX SOCK_STREAM pair, both ends close-on-exec.
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors are fresh and ours.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((own(a), own(b)))
}

/// `dup3(old, new, flags)`: replaces whatever `new` referred to.
pub fn dup3(old: RawFd, new: RawFd, flags: i32) -> io::Result<RawFd> {
    // SAFETY: plain syscall; replacing `new` is the caller's intent.
    check(unsafe { libc::dup3(old, new, flags) })
}

/// `dup2(old, new)`.
pub fn dup2(old: RawFd, new: RawFd) -> io::Result<RawFd> {
    // SAFETY: plain syscall; replacing `new` is the caller's intent.
    check(unsafe { libc::dup2(old, new) })
}

/// `dup(fd)`.
pub fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: plain syscall.
    check(unsafe { libc::dup(fd) })
}

/// `fcntl(fd, F_DUPFD or F_DUPFD_CLOEXEC, min)`.
pub fn dupfd(fd: RawFd, min: RawFd, cloexec: bool) -> io::Result<RawFd> {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: plain syscall with an integer argument.
    check(unsafe { libc::fcntl(fd, cmd, min) })
}

/// `close(fd)` of a descriptor number the program owns.
pub fn close(fd: RawFd) -> io::Result<()> {
    // SAFETY: closing a descriptor number; the caller has removed every msock reference to it.
    check(unsafe { libc::close(fd) }).map(drop)
}

/// File status flags (`F_GETFL`).
pub fn get_status_flags(fd: RawFd) -> io::Result<i32> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// Sets file status flags (`F_SETFL`).
pub fn set_status_flags(fd: RawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// Descriptor flags (`F_GETFD`).
pub fn get_fd_flags(fd: RawFd) -> io::Result<i32> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })
}

/// Sets the descriptor flags (`F_SETFD`: FD_CLOEXEC or 0).
pub fn set_fd_flags(fd: RawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }).map(|_| ())
}

/// Puts the open file description of `placeholder` under every number in `fds` (the
/// program's numbers of one socket, all sharing one open file description) with `dup3`, so
/// the program's `poll`/`epoll`/`close` act on the placeholder from now on. Returns whether
/// the socket was non-blocking.
///
/// What the program can observe through `fcntl` is kept:
/// - each number keeps its own FD_CLOEXEC (it is per descriptor, not per description);
/// - the socket's O_NONBLOCK (read from `fds[0]`: it is per description) is given to, or
///   taken from, the placeholder's description before any number moves, so `F_GETFL` on
///   every number still shows it.
///
/// Errors: an empty `fds` is EBADF. Every number's flags are read, and the placeholder's
/// O_NONBLOCK set, before any number is replaced: a number that is not open (EBADF), or any
/// other failure up to there, leaves every number as it was. Only a `dup3` failing after that
/// (`placeholder` itself not open, or a number raced to by another thread) leaves the numbers
/// before it replaced.
pub fn cover_fds(placeholder: RawFd, fds: &[RawFd]) -> io::Result<bool> {
    let first = *fds
        .first()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
    let nonblocking = get_status_flags(first)? & libc::O_NONBLOCK != 0;
    let dup_flags = fds
        .iter()
        .map(|&fd| {
            let cloexec = get_fd_flags(fd)? & libc::FD_CLOEXEC != 0;
            Ok((fd, if cloexec { libc::O_CLOEXEC } else { 0 }))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let shown = get_status_flags(placeholder)?;
    let wanted = if nonblocking {
        shown | libc::O_NONBLOCK
    } else {
        shown & !libc::O_NONBLOCK
    };
    if wanted != shown {
        set_status_flags(placeholder, wanted)?;
    }
    for (fd, flags) in dup_flags {
        dup3(placeholder, fd, flags)?;
    }
    Ok(nonblocking)
}

/// (device, inode) of an open descriptor: a placeholder's identity.
pub fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: fstat into a zeroed buffer of the right type.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        check(libc::fstat(fd, &mut st))?;
        Ok((st.st_dev, st.st_ino))
    }
}

/// Sends one byte without blocking (placeholder readiness).
pub fn send_byte(fd: BorrowedFd<'_>) -> io::Result<()> {
    let b = [1u8];
    // SAFETY: one-byte buffer.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            b.as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads and discards whatever is buffered, without blocking.
pub fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < buf.len() as isize {
            return;
        }
    }
}

/// `poll` on up to a few descriptors for readability (`events` per fd). Returns the revents;
/// `Err(EINTR)` when interrupted by a signal handler.
pub fn poll(fds: &[(RawFd, i16)], timeout: Option<Duration>) -> io::Result<Vec<i16>> {
    // A handler that runs during this sleep notes its signal (`client::signals`).
    super::signals::begin_wait();
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        // Round up so a 100 µs timeout still sleeps instead of spinning.
        let ms = t.as_micros().div_ceil(1000);
        ms.min(i32::MAX as u128) as i32
    });
    // SAFETY: `pfds` is a valid array of its length.
    check(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) })?;
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// Applies a socket option to a kernel socket.
pub fn setsockopt(fd: RawFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Reads an integer socket option of a kernel socket.
pub fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v`/`len` are valid for writes of their sizes.
    check(unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) })?;
    Ok(v)
}

/// Whether the call a signal handler just interrupted is restarted, as the kernel decides: the
/// SA_RESTART of the handler that ran (`client::signals`) when msock knows which ran,
/// otherwise whether every installed handler has SA_RESTART.
pub fn all_handlers_restart() -> bool {
    if let Some(known) = super::signals::restarts() {
        return known;
    }
    let max = libc::SIGRTMAX();
    (1..=max).all(|sig| {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return true;
        }
        // SAFETY: querying (not changing) the action into a zeroed struct.
        let act = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) != 0 {
                return true;
            }
            act
        };
        let handler = act.sa_sigaction;
        handler == libc::SIG_DFL || handler == libc::SIG_IGN || act.sa_flags & libc::SA_RESTART != 0
    })
}

/// A new epoll instance (close-on-exec).
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: a fresh descriptor we own.
    Ok(own(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Adds `fd` to `epoll` for readability, level-triggered, with `token`.
pub fn epoll_add(epoll: BorrowedFd<'_>, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: `ev` is a valid event; the kernel checks both descriptors.
    check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

/// Changes the events `epoll` watches on `fd` (`0` mutes it without removing it).
pub fn epoll_mod(epoll: BorrowedFd<'_>, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid event; the kernel checks both descriptors.
    check(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev) }).map(drop)
}

/// Removes `fd` from `epoll` (errors ignored by callers: closing also removes).
pub fn epoll_del(epoll: BorrowedFd<'_>, fd: RawFd) -> io::Result<()> {
    // SAFETY: a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
    check(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut(),
        )
    })
    .map(drop)
}

/// Waits for events; returns the tokens of the ready descriptors. `Ok(empty)` on timeout or
/// EINTR.
pub fn epoll_wait(
    epoll: BorrowedFd<'_>,
    max: usize,
    timeout: Option<Duration>,
) -> io::Result<Vec<u64>> {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `events` is a valid array of its length.
    let n = unsafe {
        libc::epoll_wait(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as i32,
            ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    Ok(events[..n as usize].iter().map(|e| e.u64).collect())
}

/// Reads a small integer from a /proc file (e.g. `/proc/sys/net/core/rmem_max`).
pub fn read_proc_int(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pair_byte_and_drain() {
        let (a, b) = stream_pair().unwrap();
        let r = poll(&[(b.as_raw_fd(), libc::POLLIN)], Some(Duration::ZERO)).unwrap();
        assert_eq!(r[0] & libc::POLLIN, 0);
        send_byte(a.as_fd()).unwrap();
        let r = poll(&[(b.as_raw_fd(), libc::POLLIN)], Some(Duration::ZERO)).unwrap();
        assert_ne!(r[0] & libc::POLLIN, 0);
        drain(b.as_fd());
        let r = poll(&[(b.as_raw_fd(), libc::POLLIN)], Some(Duration::ZERO)).unwrap();
        assert_eq!(r[0] & libc::POLLIN, 0);
        let (d1, i1) = identity(a.as_raw_fd()).unwrap();
        let (d2, i2) = identity(b.as_raw_fd()).unwrap();
        assert_eq!(d1, d2);
        assert_ne!(i1, i2);
    }

    /// A kernel TCP socket standing for the program's socket.
    fn program_socket() -> OwnedFd {
        let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0).unwrap();
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn cloexec(fd: RawFd) -> bool {
        get_fd_flags(fd).unwrap() & libc::FD_CLOEXEC != 0
    }

    fn nonblocking(fd: RawFd) -> bool {
        get_status_flags(fd).unwrap() & libc::O_NONBLOCK != 0
    }

    #[test]
    fn cover_fds_keeps_cloexec_per_number_and_nonblocking() {
        let a = program_socket();
        let b = own_dup(a.as_raw_fd(), false);
        set_fd_flags(a.as_raw_fd(), libc::FD_CLOEXEC).unwrap();
        let fl = get_status_flags(a.as_raw_fd()).unwrap();
        set_status_flags(a.as_raw_fd(), fl | libc::O_NONBLOCK).unwrap();
        let (placeholder, _lib) = stream_pair().unwrap();
        assert!(!nonblocking(placeholder.as_raw_fd()));

        let covered = cover_fds(placeholder.as_raw_fd(), &[a.as_raw_fd(), b.as_raw_fd()]);
        assert!(covered.unwrap());
        let id = identity(placeholder.as_raw_fd()).unwrap();
        assert_eq!(identity(a.as_raw_fd()).unwrap(), id);
        assert_eq!(identity(b.as_raw_fd()).unwrap(), id);
        assert!(cloexec(a.as_raw_fd()));
        assert!(!cloexec(b.as_raw_fd()));
        // The placeholder's own number keeps its close-on-exec.
        assert!(cloexec(placeholder.as_raw_fd()));
        assert!(nonblocking(a.as_raw_fd()) && nonblocking(b.as_raw_fd()));
    }

    #[test]
    fn cover_fds_clears_nonblocking_for_a_blocking_socket() {
        let a = program_socket();
        let (placeholder, _lib) = stream_pair().unwrap();
        let fl = get_status_flags(placeholder.as_raw_fd()).unwrap();
        set_status_flags(placeholder.as_raw_fd(), fl | libc::O_NONBLOCK).unwrap();
        assert!(!cover_fds(placeholder.as_raw_fd(), &[a.as_raw_fd()]).unwrap());
        assert!(!nonblocking(a.as_raw_fd()));
        assert!(!cloexec(a.as_raw_fd()));
    }

    #[test]
    fn cover_fds_replaces_nothing_when_a_number_is_closed() {
        let a = program_socket();
        let before = identity(a.as_raw_fd()).unwrap();
        // A number that is not open: a duplicate, closed again.
        let closed = dupfd(a.as_raw_fd(), 500, true).unwrap();
        close(closed).unwrap();
        let (placeholder, _lib) = stream_pair().unwrap();
        let err = cover_fds(placeholder.as_raw_fd(), &[a.as_raw_fd(), closed]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(identity(a.as_raw_fd()).unwrap(), before);
        assert_eq!(
            get_fd_flags(closed).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        let err = cover_fds(placeholder.as_raw_fd(), &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    /// A duplicate of `fd` (close-on-exec or not) owned by the test.
    fn own_dup(fd: RawFd, cloexec: bool) -> OwnedFd {
        let d = dupfd(fd, 0, cloexec).unwrap();
        // SAFETY: a fresh descriptor nothing else owns.
        unsafe { OwnedFd::from_raw_fd(d) }
    }

    #[test]
    fn epoll_reports_tokens() {
        let ep = epoll_create().unwrap();
        let (a, b) = stream_pair().unwrap();
        epoll_add(ep.as_fd(), b.as_raw_fd(), 42).unwrap();
        assert!(
            epoll_wait(ep.as_fd(), 8, Some(Duration::ZERO))
                .unwrap()
                .is_empty()
        );
        send_byte(a.as_fd()).unwrap();
        assert_eq!(
            epoll_wait(ep.as_fd(), 8, Some(Duration::ZERO)).unwrap(),
            vec![42]
        );
        epoll_del(ep.as_fd(), b.as_raw_fd()).unwrap();
        assert!(
            epoll_wait(ep.as_fd(), 8, Some(Duration::ZERO))
                .unwrap()
                .is_empty()
        );
    }
}
