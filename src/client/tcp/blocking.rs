//! Blocking waits of TCP socket calls, always made with no lock held (paper §3.2, Fig. 4: the
//! upper half releases its locks before it sleeps and takes them again in the normal order).
//!
//! A waiter sleeps in `poll` on the placeholder (the readiness mirror, kept by whichever
//! thread changes the socket) and, for a cached connection, on the channel's descriptor so
//! that it processes arriving frames itself (inline, one wake-up). SO_RCVTIMEO / SO_SNDTIMEO
//! bound the sleep (EAGAIN). Signals: a call interrupted by a handler returns EINTR unless that
//! handler has SA_RESTART and no timeout is set, in which case it goes on waiting, as Linux
//! restarts it (`client::signals` tells which handler ran).
//!
//! [`Inline`] is a caller's claim on its socket's channel: from the first sleep of a call
//! until the call returns, the receive thread does not watch the channel (muted), so a frame
//! wakes only the caller, which processes it itself; the receive thread then never takes the
//! socket's lock against the caller nor writes a readiness byte the caller drains again. The
//! claim holds a [`ChannelWaker`]: the channel's own descriptor number (the one the receive
//! thread's epoll knows; a `dup` could not mute it), kept open while the lock is released.
//! Cost: one `epoll_ctl` when the first caller claims a channel, one when the last leaves.
#![forbid(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::channel::ChannelWaker;
use crate::client::runtime::Session;
use crate::client::sys;
use crate::control::EndpointId;

/// Who stops and resumes watching a channel for the bottom half (the session's receive
/// thread; tests use a recorder).
pub trait Muter: Sync {
    /// Stop watching `fd`, the channel of socket `id`.
    fn mute(&self, id: EndpointId, fd: RawFd);
    /// Watch `fd` again (frames already waiting are reported at once: level-triggered).
    fn unmute(&self, id: EndpointId, fd: RawFd);
}

impl Muter for Session {
    fn mute(&self, id: EndpointId, fd: RawFd) {
        self.mute_socket(id, fd);
    }
    fn unmute(&self, id: EndpointId, fd: RawFd) {
        self.unmute_socket(id, fd);
    }
}

/// A caller that sleeps on a cached socket's channel and processes it inline (see the module
/// doc). Made before the call's first sleep, dropped when the call returns: after its last
/// pass over the channel, so frames it processes itself never wake the receive thread too.
/// `blocked` (one counter per socket) counts the claims: the first mutes, the last unmutes.
/// Taking and dropping one needs no lock; it may be dropped with the socket's lock held.
pub struct Inline<'a, W: AsRawFd = ChannelWaker> {
    blocked: &'a AtomicU32,
    muter: &'a dyn Muter,
    id: EndpointId,
    waker: W,
}

impl<'a, W: AsRawFd> Inline<'a, W> {
    pub fn claim(
        blocked: &'a AtomicU32,
        muter: &'a dyn Muter,
        id: EndpointId,
        waker: W,
    ) -> Inline<'a, W> {
        if blocked.fetch_add(1, Ordering::AcqRel) == 0 {
            muter.mute(id, waker.as_raw_fd());
        }
        Inline {
            blocked,
            muter,
            id,
            waker,
        }
    }

    /// The channel's descriptor, to poll.
    pub fn fd(&self) -> RawFd {
        self.waker.as_raw_fd()
    }
}

impl<W: AsRawFd> Drop for Inline<'_, W> {
    fn drop(&mut self) {
        // The last claim of the channel unmutes it. A claim racing this one (another caller
        // muting while we unmute) can at worst leave the channel watched while a caller
        // sleeps on it: two wake-ups, never a frame nobody processes.
        if self.blocked.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A channel replaced meanwhile (flush, recall) is no longer registered: the
            // kernel says ENOENT and nothing changes; the new one was registered unmuted.
            self.muter.unmute(self.id, self.waker.as_raw_fd());
        }
    }
}

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

    /// Records mute/unmute calls.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(bool, EndpointId, RawFd)>>);

    impl Muter for Recorder {
        fn mute(&self, id: EndpointId, fd: RawFd) {
            self.0.lock().unwrap().push((true, id, fd));
        }
        fn unmute(&self, id: EndpointId, fd: RawFd) {
            self.0.lock().unwrap().push((false, id, fd));
        }
    }

    #[test]
    fn the_first_claim_mutes_and_the_last_unmutes() {
        let (a, b) = sys::stream_pair().unwrap();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let blocked = AtomicU32::new(0);
        let rec = Recorder::default();
        let first = Inline::claim(&blocked, &rec, 9, a);
        assert_eq!(first.fd(), fa);
        let second = Inline::claim(&blocked, &rec, 9, b);
        assert_eq!(*rec.0.lock().unwrap(), vec![(true, 9, fa)], "one mute");
        drop(first);
        assert_eq!(
            rec.0.lock().unwrap().len(),
            1,
            "a claim is left: still muted"
        );
        drop(second);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![(true, 9, fa), (false, 9, fb)],
            "the last claim unmutes (its own channel)"
        );
        assert_eq!(blocked.load(Ordering::Acquire), 0);
        // Claims from many threads at once leave the count at zero and end unmuted.
        let (c, _d) = sys::stream_pair().unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let fd = c.try_clone().unwrap();
                        drop(Inline::claim(&blocked, &rec, 9, fd));
                    }
                });
            }
        });
        assert_eq!(blocked.load(Ordering::Acquire), 0);
        let log = rec.0.lock().unwrap();
        let mutes = log[2..].iter().filter(|e| e.0).count();
        let unmutes = log[2..].iter().filter(|e| !e.0).count();
        assert_eq!(mutes, unmutes, "every mute has its unmute");
        assert!(!log.last().unwrap().0, "ends unmuted");
    }

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
