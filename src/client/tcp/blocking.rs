//! Blocking waits of TCP socket calls, always made with no lock held (paper §3.2, Fig. 4: the
//! upper half releases its locks before it sleeps and takes them again in the normal order).
//!
//! A waiter sleeps in `poll` on the placeholder (the readiness mirror, kept by whichever
//! thread changes the socket) and, for a cached connection, on a duplicate of the channel's
//! descriptor so that it processes arriving frames itself (inline, one wake-up). SO_RCVTIMEO /
//! SO_SNDTIMEO bound the sleep (EAGAIN). Signals: a call interrupted by a handler returns EINTR
//! unless that handler has SA_RESTART and no timeout is set, in which case it goes on waiting,
//! as Linux restarts it (`client::signals` tells which handler ran).
#![forbid(unsafe_code)]

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::client::sys;

/// The longest single sleep: a waiter re-checks its socket at least this often (covers a
/// readiness change it could not be woken for, e.g. its channel moved away by a recall).
pub const MAX_SLEEP: Duration = Duration::from_millis(200);

/// When a call with timeout `timeo` started now gives up.
pub fn deadline(timeo: Option<Duration>) -> Option<Instant> {
    timeo.map(|t| Instant::now() + t)
}

/// Sleeps until one of `fds` shows its events, `deadline` passes (`Err(EAGAIN)`), or a signal
/// handler runs (`Err(EINTR)` unless the call is restarted, see the module doc).
pub fn wait(fds: &[(RawFd, i16)], deadline: Option<Instant>, timed: bool) -> Result<(), i32> {
    let sleep = match deadline {
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => left.min(MAX_SLEEP),
            _ => return Err(libc::EAGAIN),
        },
        None => MAX_SLEEP,
    };
    match sys::poll(fds, Some(sleep)) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
            if timed || !sys::all_handlers_restart() {
                Err(libc::EINTR)
            } else {
                Ok(())
            }
        }
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn times_out_with_eagain_and_wakes_on_readiness() {
        let (a, b) = sys::stream_pair().unwrap();
        let d = deadline(Some(Duration::from_millis(30)));
        let start = Instant::now();
        loop {
            match wait(&[(b.as_raw_fd(), libc::POLLIN)], d, true) {
                Ok(()) => continue,
                Err(e) => {
                    assert_eq!(e, libc::EAGAIN);
                    break;
                }
            }
        }
        assert!(start.elapsed() >= Duration::from_millis(30));
        sys::send_byte(a.as_fd()).unwrap();
        let start = Instant::now();
        assert_eq!(wait(&[(b.as_raw_fd(), libc::POLLIN)], None, false), Ok(()));
        assert!(start.elapsed() < MAX_SLEEP);
    }
}
