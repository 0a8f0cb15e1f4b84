//! The re-entrancy guard of the C edge and the fork marker.
//!
//! Every interposed call enters msock through [`enter`]. It refuses (so the edge calls the real
//! libc function) when the library is not ready yet or when this thread is already inside msock:
//! msock's own code calls `read`, `close`, `socket`... which resolve to libmsock's exports
//! again, and must reach libc. msock's receive thread marks itself inside for its whole life
//! ([`mark_thread_inside`]).
//!
//! [`atfork_child`] is registered with `pthread_atfork`; it only stores to an atomic
//! (async-signal-safe: no allocation, no locks). The runtime checks [`forked_generation`] and
//! rebuilds its process state lazily in the child (see `runtime`).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static READY: AtomicBool = AtomicBool::new(false);
static FORKS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Held while a thread runs msock code; clears the mark on drop.
pub struct Guard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|c| c.set(false));
    }
}

/// Marks the library ready (called from its constructor).
pub fn set_ready() {
    READY.store(true, Ordering::Release);
}

/// Enters msock, or `None` if the caller must use libc directly.
pub fn enter() -> Option<Guard> {
    if !READY.load(Ordering::Acquire) {
        return None;
    }
    INSIDE
        .try_with(|c| {
            if c.get() {
                None
            } else {
                c.set(true);
                Some(Guard {
                    _not_send: std::marker::PhantomData,
                })
            }
        })
        .ok()
        .flatten()
}

/// Whether this thread is inside msock now.
pub fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(true)
}

/// Marks the calling thread as inside msock for good (msock's own threads).
pub fn mark_thread_inside() {
    let _ = INSIDE.try_with(|c| c.set(true));
}

/// `pthread_atfork` child handler: async-signal-safe.
pub extern "C" fn atfork_child() {
    FORKS.fetch_add(1, Ordering::SeqCst);
    // The thread that called fork() was inside `fork`, not inside msock, unless msock itself
    // forked (it never does); nothing else to reset.
}

/// Number of forks this process descends from (0 in the original process).
pub fn forked_generation() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_nests_and_clears() {
        set_ready();
        std::thread::spawn(|| {
            assert!(!inside());
            let g = enter().expect("first entry");
            assert!(inside());
            assert!(enter().is_none(), "re-entry must be refused");
            drop(g);
            assert!(!inside());
            assert!(enter().is_some());
            mark_thread_inside();
            assert!(enter().is_none());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn fork_marker_counts() {
        let before = forked_generation();
        atfork_child();
        assert_eq!(forked_generation(), before + 1);
    }
}
