//! The readiness mirror of a TCP socket (design.md "Descriptors"): the program's descriptor is
//! one end (`prog`) of an AF_UNIX stream socketpair whose other end (`lib`) libmsock keeps, and
//! the kernel's own view of `prog` is driven so that `poll`/`select`/`epoll` (level, edge,
//! ONESHOT, EXCLUSIVE, RDHUP) report the TCP socket's readiness natively:
//!
//! | TCP socket                         | done on the pair                         | `prog` polls  |
//! |------------------------------------|------------------------------------------|---------------|
//! | readable (data, FIN, error, queue) | one byte `lib` → `prog`                  | POLLIN        |
//! | more data while already readable   | one more byte (a fresh EPOLLET edge)     | POLLIN        |
//! | no longer readable                 | `prog`'s bytes drained                   | —             |
//! | not writable (connecting, full)    | filler `prog` → `lib` until EAGAIN       | no POLLOUT    |
//! | writable again                     | `lib` drained                            | POLLOUT       |
//! | peer's FIN                         | `shutdown(lib, SHUT_WR)`                 | POLLIN+RDHUP  |
//! | fully closed / reset               | `shutdown(lib, SHUT_RDWR)`               | POLLHUP too   |
//!
//! POLLERR cannot be produced on an AF_UNIX stream socket from the other end: a socket error
//! shows as readable and writable (and HUP once the connection is closed), and `SO_ERROR`
//! tells the error, which is what programs waiting for a non-blocking connect read.
//! "Writable" follows Linux's `tcp_poll`/`sk_stream_is_writeable`: free space at least half
//! of what is queued. `prog`'s SO_SNDBUF is set to the minimum so that filling it takes a few
//! kilobytes. Every change is made under the socket's state lock ([`Mirror::sync`]).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, Shutdown, recv, send, shutdown};

use crate::client::sys;

/// What the socket's readiness should look like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its write side (or reads are shut): POLLRDHUP.
    pub read_hup: bool,
    /// Closed or reset: POLLHUP.
    pub hup: bool,
}

/// The placeholder pair and what it shows now.
#[derive(Debug)]
pub struct Mirror {
    prog: OwnedFd,
    lib: OwnedFd,
    readable: bool,
    writable: bool,
    read_hup: bool,
    hup: bool,
}

impl Mirror {
    /// A new pair, showing writable only (a fresh socketpair's state).
    pub fn new() -> io::Result<Mirror> {
        let (prog, lib) = sys::stream_pair()?;
        // The kernel raises it to its minimum (SOCK_MIN_SNDBUF).
        sys::setsockopt(
            prog.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &0i32.to_ne_bytes(),
        )?;
        Ok(Mirror {
            prog,
            lib,
            readable: false,
            writable: true,
            read_hup: false,
            hup: false,
        })
    }

    /// A pair a previous program image of this process made (inherited across `execve`):
    /// `prog` is our own handle on the program's end (a dup of one of its descriptors), `lib`
    /// the library's end. What it shows is read back from the kernel.
    pub fn adopt(prog: OwnedFd, lib: OwnedFd) -> io::Result<Mirror> {
        let ev = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLHUP;
        let shown = sys::poll(&[(prog.as_raw_fd(), ev)], Some(std::time::Duration::ZERO))?
            .first()
            .copied()
            .unwrap_or(0);
        let hup = shown & libc::POLLHUP != 0;
        sys::protect_fd(lib.as_raw_fd());
        Ok(Mirror {
            prog,
            lib,
            // After SHUT_WR the pair reads EOF, so POLLIN alone does not tell; a readable byte
            // is what `sync` would drain, and draining an empty end is harmless.
            readable: shown & libc::POLLIN != 0,
            writable: shown & libc::POLLOUT != 0,
            read_hup: shown & libc::POLLRDHUP != 0 || hup,
            hup,
        })
    }

    /// The library's end (kept open across `execve` for the next image).
    pub fn lib_raw(&self) -> RawFd {
        self.lib.as_raw_fd()
    }

    /// The program's end (dup'ed over the program's descriptor numbers).
    pub fn prog(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    pub fn prog_raw(&self) -> RawFd {
        self.prog.as_raw_fd()
    }

    /// What the pair shows now.
    pub fn shown(&self) -> Want {
        Want {
            readable: self.readable,
            writable: self.writable,
            read_hup: self.read_hup,
            hup: self.hup,
        }
    }

    /// Makes the pair show `want`. `more_data`: data arrived in this step (an extra byte is
    /// written when the socket was readable already, so edge-triggered waiters see an edge).
    pub fn sync(&mut self, want: Want, more_data: bool) {
        if want.hup && !self.hup {
            let _ = shutdown(self.lib.as_raw_fd(), Shutdown::Both);
            self.hup = true;
            self.read_hup = true;
        }
        if want.read_hup && !self.read_hup {
            let _ = shutdown(self.lib.as_raw_fd(), Shutdown::Write);
            self.read_hup = true;
        }
        if want.readable {
            if !self.readable || more_data {
                // EAGAIN (the program never reads its end) bounds the extra bytes; after
                // SHUT_WR the pair is readable for good anyway.
                let _ = sys::send_byte(self.lib.as_fd());
            }
            self.readable = true;
        } else if self.readable {
            drain(self.prog.as_fd());
            self.readable = false;
        }
        if want.writable && !self.writable {
            drain(self.lib.as_fd());
            self.writable = true;
        } else if !want.writable && self.writable {
            fill(self.prog.as_fd());
            self.writable = false;
        }
    }
}

impl Mirror {
    /// The program just found the socket not readable (EAGAIN): `prog` is emptied even if
    /// this mirror wrote nothing, because a process sharing the placeholder (fork) may have.
    /// A byte left there by another process would keep `poll` reporting readable, and the
    /// program retrying, for ever.
    pub fn clear_readable(&mut self) {
        drain(self.prog.as_fd());
        self.readable = false;
    }
}

/// Reads and discards whatever `fd` holds, without blocking.
fn drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 4096];
    loop {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n == buf.len() => continue,
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Writes filler bytes into `fd` until the kernel refuses (its send buffer is full).
fn fill(fd: BorrowedFd<'_>) {
    let buf = [0u8; 1024];
    loop {
        match send(
            fd.as_raw_fd(),
            &buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn revents(m: &Mirror) -> i16 {
        let ev = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLHUP;
        sys::poll(&[(m.prog_raw(), ev)], Some(Duration::ZERO)).unwrap()[0]
    }

    #[test]
    fn readable_and_writable_follow_the_socket() {
        let mut m = Mirror::new().unwrap();
        assert_eq!(revents(&m), libc::POLLOUT, "fresh: writable only");
        m.sync(
            Want {
                readable: true,
                writable: false,
                ..Want::default()
            },
            false,
        );
        assert_eq!(revents(&m), libc::POLLIN, "readable, filled: no POLLOUT");
        m.sync(
            Want {
                readable: false,
                writable: true,
                ..Want::default()
            },
            false,
        );
        assert_eq!(revents(&m), libc::POLLOUT, "drained both ways");
        assert!(m.shown().writable);
    }

    #[test]
    fn more_data_makes_a_new_edge() {
        let mut m = Mirror::new().unwrap();
        let ep = sys::epoll_create().unwrap();
        sys::epoll_add(ep.as_fd(), m.prog_raw(), 7).unwrap();
        let edge = (libc::EPOLLIN | libc::EPOLLET) as u32;
        sys::epoll_mod(ep.as_fd(), m.prog_raw(), 7, edge).unwrap();
        let want = Want {
            readable: true,
            writable: true,
            ..Want::default()
        };
        m.sync(want, true);
        assert_eq!(
            sys::epoll_wait(ep.as_fd(), 4, Some(Duration::ZERO)).unwrap(),
            vec![7]
        );
        assert!(
            sys::epoll_wait(ep.as_fd(), 4, Some(Duration::ZERO))
                .unwrap()
                .is_empty(),
            "edge consumed"
        );
        m.sync(want, false);
        assert!(
            sys::epoll_wait(ep.as_fd(), 4, Some(Duration::ZERO))
                .unwrap()
                .is_empty(),
            "no new data: no new edge"
        );
        m.sync(want, true);
        assert_eq!(
            sys::epoll_wait(ep.as_fd(), 4, Some(Duration::ZERO)).unwrap(),
            vec![7],
            "new data while readable: a new edge"
        );
    }

    #[test]
    fn fin_and_close_show_rdhup_and_hup() {
        let mut m = Mirror::new().unwrap();
        m.sync(
            Want {
                readable: true,
                writable: true,
                read_hup: true,
                hup: false,
            },
            false,
        );
        let r = revents(&m);
        assert_ne!(r & libc::POLLIN, 0);
        assert_ne!(r & libc::POLLRDHUP, 0);
        assert_eq!(r & libc::POLLHUP, 0);
        m.sync(
            Want {
                readable: true,
                writable: true,
                read_hup: true,
                hup: true,
            },
            false,
        );
        assert_ne!(revents(&m) & libc::POLLHUP, 0);
    }
}
