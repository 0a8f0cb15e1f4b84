//! Locks that a `fork` may be taken across (paper §3.1 sharing; `client::process`).
//!
//! Before the real `fork`, the forking thread takes the fd table's lock and every TCP socket's
//! state lock, so no other thread of the parent is half-way through a structure the child
//! copies; the guards live in that thread's stack frame and are dropped after `fork` returns,
//! in both processes. That needs locks whose whole state is the lock word itself: std's
//! futex-based `Mutex`/`RwLock`. parking_lot keeps waiters in a process-global table and may
//! hand a released lock directly to a waiting thread, which in a fork child is a thread that no
//! longer exists: the child then waits forever.
//!
//! Poisoning is ignored (a panic in msock is caught at the C edge; the state it leaves is
//! what the next call sees, as with parking_lot).
#![deny(unsafe_code)]

use std::sync::PoisonError;
use std::time::{Duration, Instant};

pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
pub type RwLockReadGuard<'a, T> = std::sync::RwLockReadGuard<'a, T>;
pub type RwLockWriteGuard<'a, T> = std::sync::RwLockWriteGuard<'a, T>;

#[derive(Debug, Default)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Mutex<T> {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock if it can be had within `wait` (polling: used only where a lock may be held
    /// by a thread that did not survive a fork).
    pub fn try_lock_for(&self, wait: Duration) -> Option<MutexGuard<'_, T>> {
        let give_up = Instant::now() + wait;
        loop {
            match self.0.try_lock() {
                Ok(g) => return Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct RwLock<T>(std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub const fn new(value: T) -> RwLock<T> {
        RwLock(std::sync::RwLock::new(value))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_across_fork_is_usable_in_the_child() {
        use nix::sys::wait::{WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};
        use std::sync::Arc;
        let m = Arc::new(Mutex::new(0u32));
        // A waiter parked on the lock while the fork happens.
        let held = m.lock();
        let waiter = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || *m.lock() += 1)
        };
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: the child only takes the lock, checks it and exits.
        #[allow(unsafe_code)]
        let child = unsafe { fork() }.expect("fork");
        drop(held);
        match child {
            ForkResult::Child => {
                let ok = m.try_lock_for(Duration::from_secs(2)).is_some();
                std::process::exit(if ok { 0 } else { 1 });
            }
            ForkResult::Parent { child } => {
                waiter.join().unwrap();
                assert_eq!(*m.lock(), 1);
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }
}
