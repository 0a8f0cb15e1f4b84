//! Which signal interrupted a blocking call, so it is restarted or fails with EINTR exactly as
//! Linux decides: per the SA_RESTART flag of *that* signal's handler (signal(7)), and never
//! for a call with a timeout (SO_RCVTIMEO/SO_SNDTIMEO).
//!
//! The C edge interposes `sigaction` and `signal`: a program's handler is installed behind a
//! trampoline that notes the signal in a thread-local ([`note_delivered`]) before calling it,
//! and each signal's SA_RESTART is remembered ([`set_restart`]). A blocking wait clears the
//! note before it sleeps ([`begin_wait`]); when `poll` fails with EINTR, [`restarts`] says what
//! Linux would do. A handler msock never saw installed (set before libmsock loaded, or with a
//! raw system call) leaves no note: the caller then falls back to "restart only if every
//! installed handler has SA_RESTART".
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// Signal numbers tracked (Linux: 1..=64).
pub const MAX_SIGNAL: usize = 64;

const UNKNOWN: u8 = 0;
const RESTART: u8 = 1;
const NO_RESTART: u8 = 2;

static FLAGS: [AtomicU8; MAX_SIGNAL + 1] = [const { AtomicU8::new(UNKNOWN) }; MAX_SIGNAL + 1];

thread_local! {
    static LAST: Cell<i32> = const { Cell::new(0) };
}

fn index(sig: i32) -> Option<usize> {
    usize::try_from(sig)
        .ok()
        .filter(|&s| (1..=MAX_SIGNAL).contains(&s))
}

/// A handler for `sig` was installed through msock, with (`true`) or without SA_RESTART.
pub fn set_restart(sig: i32, restart: bool) {
    if let Some(i) = index(sig) {
        FLAGS[i].store(
            if restart { RESTART } else { NO_RESTART },
            Ordering::Release,
        );
    }
}

/// `sig` went back to SIG_DFL / SIG_IGN (no handler runs, no call is interrupted by it).
pub fn clear(sig: i32) {
    if let Some(i) = index(sig) {
        FLAGS[i].store(UNKNOWN, Ordering::Release);
    }
}

/// Called by the trampoline on the thread the signal was delivered to. Async-signal-safe: one
/// store to a const-initialised thread-local without destructor.
pub fn note_delivered(sig: i32) {
    let _ = LAST.try_with(|c| c.set(sig));
}

/// Before a blocking wait sleeps.
pub fn begin_wait() {
    let _ = LAST.try_with(|c| c.set(0));
}

/// After the wait failed with EINTR: `Some(true)` if the handler that ran has SA_RESTART,
/// `Some(false)` if not, `None` if msock does not know which handler ran.
pub fn restarts() -> Option<bool> {
    let sig = LAST.try_with(Cell::get).unwrap_or(0);
    match FLAGS[index(sig)?].load(Ordering::Acquire) {
        RESTART => Some(true),
        NO_RESTART => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivered_signal_decides() {
        std::thread::spawn(|| {
            set_restart(10, true);
            set_restart(12, false);
            begin_wait();
            assert_eq!(restarts(), None, "nothing delivered");
            note_delivered(10);
            assert_eq!(restarts(), Some(true));
            begin_wait();
            note_delivered(12);
            assert_eq!(restarts(), Some(false));
            clear(12);
            assert_eq!(restarts(), None);
            note_delivered(0);
            assert_eq!(restarts(), None);
            note_delivered(99);
            assert_eq!(restarts(), None);
        })
        .join()
        .unwrap();
    }
}
