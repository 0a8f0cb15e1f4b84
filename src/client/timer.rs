//! The per-process timer thread (paper §3.2: "timer processing is driven by a timer thread of
//! control"; §4.1: each process handles the timer events of its own endpoints only).
//!
//! A heap of `(deadline, weak target)` entries. A cached TCP socket arms the timer after every
//! operation with its engine's `poll_at()` — only when that is earlier than what it has armed
//! already (the socket remembers it), so the heap holds about one entry per socket. A stale
//! entry (the engine's deadline moved later) fires harmlessly: the target runs its engine,
//! which does nothing yet, and arms again. Targets are weak: a closed socket's entries expire.
//!
//! The thread sleeps on a condition variable with the earliest deadline as timeout; arming an
//! earlier deadline wakes it. Lock order: a socket's state lock may be held while arming (the
//! heap lock is the innermost lock of the runtime); the thread never holds the heap lock while
//! it runs a target.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::guard;

/// Something the timer thread runs when its deadline has come.
pub trait Timed: Send + Sync {
    /// Called on the timer thread, with no runtime lock held.
    fn on_timer(&self);
}

struct Entry {
    at: Instant,
    seq: u64,
    target: Weak<dyn Timed>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

/// The timer of one process (one per session, so a fork child gets its own).
pub struct Timer {
    heap: Mutex<Heap>,
    wake: Condvar,
    started: AtomicBool,
}

impl Default for Timer {
    fn default() -> Self {
        Timer::new()
    }
}

impl Timer {
    pub fn new() -> Timer {
        Timer {
            heap: Mutex::new(Heap::default()),
            wake: Condvar::new(),
            started: AtomicBool::new(false),
        }
    }

    /// Runs `target.on_timer()` at `at` (or soon after). Starts the thread on first use.
    pub fn arm(&'static self, at: Instant, target: Weak<dyn Timed>) {
        if !self.started.swap(true, Ordering::AcqRel)
            && std::thread::Builder::new()
                .name("msock-timer".into())
                .spawn(move || self.run())
                .is_err()
        {
            self.started.store(false, Ordering::Release);
        }
        let mut heap = self.heap.lock();
        let earliest = heap.entries.peek().map(|e| e.0.at);
        heap.seq += 1;
        let seq = heap.seq;
        heap.entries.push(Reverse(Entry { at, seq, target }));
        if earliest.is_none_or(|e| at < e) {
            self.wake.notify_one();
        }
    }

    /// Entries waiting (tests, statistics).
    pub fn pending(&self) -> usize {
        self.heap.lock().entries.len()
    }

    /// Takes every entry due at `now`.
    fn due(&self, now: Instant) -> Vec<Weak<dyn Timed>> {
        let mut heap = self.heap.lock();
        let mut out = Vec::new();
        while heap.entries.peek().is_some_and(|e| e.0.at <= now) {
            if let Some(Reverse(e)) = heap.entries.pop() {
                out.push(e.target);
            }
        }
        out
    }

    fn run(&self) {
        guard::mark_thread_inside();
        loop {
            for target in self.due(Instant::now()) {
                if let Some(t) = target.upgrade() {
                    t.on_timer();
                }
            }
            let mut heap = self.heap.lock();
            match heap.entries.peek().map(|e| e.0.at) {
                Some(at) if at <= Instant::now() => continue,
                Some(at) => {
                    let _ = self.wake.wait_until(&mut heap, at);
                }
                None => self.wake.wait(&mut heap),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    struct Counter(AtomicU32);
    impl Timed for Counter {
        fn on_timer(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn fires_in_order_and_skips_dropped_targets() {
        let timer: &'static Timer = Box::leak(Box::new(Timer::new()));
        let a = Arc::new(Counter(AtomicU32::new(0)));
        let b = Arc::new(Counter(AtomicU32::new(0)));
        let now = Instant::now();
        let wa: Weak<dyn Timed> = Arc::downgrade(&a) as Weak<dyn Timed>;
        let wb: Weak<dyn Timed> = Arc::downgrade(&b) as Weak<dyn Timed>;
        timer.arm(now + Duration::from_millis(200), wa.clone());
        timer.arm(now + Duration::from_millis(20), wa);
        timer.arm(now + Duration::from_millis(10), wb);
        drop(b);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(a.0.load(Ordering::SeqCst), 1, "the early entry fired");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(a.0.load(Ordering::SeqCst), 2, "the late entry fired too");
        assert_eq!(timer.pending(), 0);
    }
}
