//! Closing packet channels off the caller's path (`docs/notes/design.md`, "Receive path").
//!
//! Releasing an AF_PACKET socket that has a ring waits for RCU grace periods in the kernel
//! (`packet_release` and `packet_set_ring` each call `synchronize_net`): 13–25 ms per socket on
//! the test machine, in whichever thread drops the last reference. A client closing a channel
//! after its connection ended, or the netserver dropping one it took over, would stall that
//! long. [`close_later`] (and [`PacketChannel`](super::PacketChannel)'s `Drop`) instead queue
//! the descriptor — and the ring mapping, unmapped first while the descriptor still holds the
//! socket, so the unmap is cheap — for background closer threads.
//!
//! Contract:
//! - **Never blocks on the grace period** unless it must: when the queue is full, or no
//!   closer thread can run in this process, the caller closes inline (slow but correct).
//! - **Bounded**: at most [`QUEUE_SLOTS`] items wait, and at most [`MAX_CLOSERS`] threads close
//!   in parallel (concurrent waiters share grace periods, so throughput grows with them: 200
//!   parallel closes took 38 ms in all). Closers beyond the first exit after
//!   [`IDLE_EXIT`] without work.
//! - **Fork-safe**: the queue is a fixed array of atomics (no lock a forked child could
//!   inherit held). A `pthread_atfork` child handler hands the child a fresh pool (no threads,
//!   items being written or closed at the fork forgotten, queued ones kept: the child's
//!   copies of those descriptors and mappings are closed by its own closers). A process made
//!   without that handler (raw `clone`) sees a pid that is not the owner's and closes inline.
//! - Descriptors are closed with `close(2)` through libc, exactly as dropping the `OwnedFd`
//!   would; a closed channel stops receiving frames only when its close completes.
//!
//! The queue is shared by every channel in the process: nothing here is per channel.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

/// Items that may wait for a closer.
pub const QUEUE_SLOTS: usize = 64;
/// Closer threads at most (each closes one socket at a time and waits in the kernel).
pub const MAX_CLOSERS: usize = 64;
/// A closer other than the last exits after this long without work.
pub const IDLE_EXIT: Duration = Duration::from_secs(2);
/// Closer threads need little stack: they only call munmap and close.
const CLOSER_STACK: usize = 64 * 1024;

const EMPTY: u8 = 0;
/// A producer is filling the slot.
const WRITING: u8 = 1;
/// Queued.
const FULL: u8 = 2;
/// A closer took it and is closing.
const TAKING: u8 = 3;

/// One queued release: a descriptor and, optionally, a mapping to unmap before it is closed.
struct Slot {
    state: AtomicU8,
    fd: AtomicI32,
    addr: AtomicUsize,
    len: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU8::new(EMPTY),
            fd: AtomicI32::new(-1),
            addr: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
        }
    }
}

static QUEUE: [Slot; QUEUE_SLOTS] = [const { Slot::new() }; QUEUE_SLOTS];
/// FULL slots.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Queued or being closed.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Futex word closers sleep on; bumped after every enqueue.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// Closer threads alive, and those sleeping on [`WAKE`].
static CLOSERS: AtomicUsize = AtomicUsize::new(0);
static IDLE: AtomicUsize = AtomicUsize::new(0);
/// The process the pool belongs to (0: not used yet).
static OWNER: AtomicU32 = AtomicU32::new(0);
static ATFORK: AtomicBool = AtomicBool::new(false);
static QUEUED_TOTAL: AtomicU64 = AtomicU64::new(0);
static INLINE_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Counters of this process's closer since it started (or since the fork that made it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloserStats {
    /// Releases handed to closer threads, and closed in the caller (queue full, no thread).
    pub queued: u64,
    pub inline: u64,
    /// Releases queued or being closed now.
    pub pending: usize,
    /// Closer threads alive.
    pub closers: usize,
}

pub fn stats() -> CloserStats {
    CloserStats {
        queued: QUEUED_TOTAL.load(SeqCst),
        inline: INLINE_TOTAL.load(SeqCst),
        pending: PENDING.load(SeqCst),
        closers: CLOSERS.load(SeqCst),
    }
}

/// Closes `fd` in a closer thread (inline if none can take it). For descriptors whose last
/// close is slow: packet sockets, above all.
pub fn close_later(fd: OwnedFd) {
    release(fd, None);
}

/// A ring mapping a [`release_later`] unmaps before closing its descriptor.
pub(crate) struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// # Safety
    /// `addr..addr + len` must be a mapping the caller owns alone, with no reference into it
    /// left: it is unmapped (once) by whoever consumes this value.
    pub(crate) unsafe fn new(addr: *mut u8, len: usize) -> Mapping {
        Mapping {
            addr: addr as usize,
            len,
        }
    }
}

/// Unmaps `map` and then closes `fd`, in a closer thread when one can take it.
pub(crate) fn release_later(fd: OwnedFd, map: Mapping) {
    release(fd, Some(map));
}

fn release(fd: OwnedFd, map: Option<Mapping>) {
    let (addr, len) = map.map_or((0, 0), |m| (m.addr, m.len));
    let raw = fd.into_raw_fd();
    if !owned_here() || !enqueue(raw, addr, len) {
        INLINE_TOTAL.fetch_add(1, SeqCst);
        close_now(raw, addr, len);
    }
}

/// Unmaps, then closes: with the descriptor still open the unmap drops a reference that is
/// not the last, so only the close waits in the kernel.
fn close_now(fd: RawFd, addr: usize, len: usize) {
    if len > 0 {
        // SAFETY: the mapping was handed over with `Mapping::new`, whose contract makes it
        // ours alone and unreferenced; it is unmapped exactly once, here.
        unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    }
    // SAFETY: `fd` came from `OwnedFd::into_raw_fd`; ownership ends here.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Whether the pool may be used by this process: claims it on first use (and registers the
/// fork handler); false in a child made without that handler.
fn owned_here() -> bool {
    let pid = getpid();
    match OWNER.load(SeqCst) {
        owner if owner == pid => true,
        0 => {
            if OWNER.compare_exchange(0, pid, SeqCst, SeqCst).is_err() {
                return OWNER.load(SeqCst) == pid;
            }
            if !ATFORK.swap(true, SeqCst) {
                // SAFETY: registers a plain function with no preconditions; it runs in the
                // child only, single-threaded, and touches atomics alone.
                unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
            }
            true
        }
        _ => false,
    }
}

/// The child of a fork has none of its parent's closer threads: start over with what was
/// queued (the child's copies of those descriptors and mappings), forgetting slots a thread
/// that does not exist here was writing or closing (their descriptors are close-on-exec).
extern "C" fn after_fork_in_child() {
    let mut queued = 0;
    for slot in &QUEUE {
        match slot.state.load(SeqCst) {
            FULL => queued += 1,
            EMPTY => {}
            _ => slot.state.store(EMPTY, SeqCst),
        }
    }
    QUEUED.store(queued, SeqCst);
    PENDING.store(queued, SeqCst);
    CLOSERS.store(0, SeqCst);
    IDLE.store(0, SeqCst);
    OWNER.store(getpid(), SeqCst);
}

/// Queues a release and makes sure a closer will take it; false if the queue is full or no
/// closer can run (the caller closes inline).
fn enqueue(fd: RawFd, addr: usize, len: usize) -> bool {
    let Some(slot) = QUEUE.iter().find(|slot| {
        slot.state
            .compare_exchange(EMPTY, WRITING, SeqCst, SeqCst)
            .is_ok()
    }) else {
        return false;
    };
    slot.fd.store(fd, SeqCst);
    slot.addr.store(addr, SeqCst);
    slot.len.store(len, SeqCst);
    PENDING.fetch_add(1, SeqCst);
    QUEUED.fetch_add(1, SeqCst);
    QUEUED_TOTAL.fetch_add(1, SeqCst);
    slot.state.store(FULL, SeqCst);
    WAKE.fetch_add(1, SeqCst);
    if IDLE.load(SeqCst) > 0 {
        futex_wake_one();
    }
    // More waiting than sleeping closers to take them: another closer, while allowed (each
    // closes one at a time and concurrent closes share grace periods).
    if QUEUED.load(SeqCst) > IDLE.load(SeqCst) && !spawn_closer() && CLOSERS.load(SeqCst) == 0 {
        // No closer at all in this process: close what is queued here, ours included.
        while let Some(item) = take() {
            finish(item);
        }
    }
    true
}

/// Starts one more closer if below [`MAX_CLOSERS`]; false if none was started.
fn spawn_closer() -> bool {
    let mut n = CLOSERS.load(SeqCst);
    loop {
        if n >= MAX_CLOSERS {
            return false;
        }
        match CLOSERS.compare_exchange(n, n + 1, SeqCst, SeqCst) {
            Ok(_) => break,
            Err(now) => n = now,
        }
    }
    let spawned = std::thread::Builder::new()
        .name("msock-closer".into())
        .stack_size(CLOSER_STACK)
        .spawn(closer);
    if spawned.is_err() {
        CLOSERS.fetch_sub(1, SeqCst);
        return false;
    }
    true
}

/// Takes one queued release.
fn take() -> Option<(RawFd, usize, usize)> {
    if QUEUED.load(SeqCst) == 0 {
        return None;
    }
    for slot in &QUEUE {
        if slot
            .state
            .compare_exchange(FULL, TAKING, SeqCst, SeqCst)
            .is_ok()
        {
            QUEUED.fetch_sub(1, SeqCst);
            let item = (
                slot.fd.load(SeqCst),
                slot.addr.load(SeqCst),
                slot.len.load(SeqCst),
            );
            slot.state.store(EMPTY, SeqCst);
            return Some(item);
        }
    }
    None
}

fn finish((fd, addr, len): (RawFd, usize, usize)) {
    close_now(fd, addr, len);
    PENDING.fetch_sub(1, SeqCst);
}

/// A closer thread: closes queued releases one at a time; sleeps on [`WAKE`] when there are
/// none; exits after [`IDLE_EXIT`] idle unless it is the last.
/// Run first on every closer thread (set once by the process's runtime: libmsock marks the
/// thread as inside msock, so its closes reach libc and free the numbers it protected).
static THREAD_INIT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what each closer thread runs when it starts (first call wins).
pub fn set_thread_init(init: fn()) {
    let _ = THREAD_INIT.set(init);
}

fn closer() {
    if let Some(init) = THREAD_INIT.get() {
        init();
    }
    loop {
        if let Some(item) = take() {
            finish(item);
            continue;
        }
        let seen = WAKE.load(SeqCst);
        IDLE.fetch_add(1, SeqCst);
        if let Some(item) = take() {
            IDLE.fetch_sub(1, SeqCst);
            finish(item);
            continue;
        }
        let started = Instant::now();
        futex_wait(seen, IDLE_EXIT);
        IDLE.fetch_sub(1, SeqCst);
        if started.elapsed() < IDLE_EXIT {
            continue;
        }
        if let Some(item) = take() {
            finish(item);
            continue;
        }
        // Idle long enough: leave unless last (someone must take what comes next).
        let mut n = CLOSERS.load(SeqCst);
        while n > 1 {
            match CLOSERS.compare_exchange(n, n - 1, SeqCst, SeqCst) {
                Ok(_) => return,
                Err(now) => n = now,
            }
        }
    }
}

fn futex_wait(seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a static word with a valid timespec; the kernel only reads them.
    // Any result (woken, EAGAIN because the word changed, EINTR, timeout) is handled by the
    // caller looking at the queue again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &ts as *const libc::timespec,
        )
    };
}

fn futex_wake_one() {
    // SAFETY: FUTEX_WAKE on a static word; no memory is passed.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            WAKE.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
}

/// Waits until nothing is queued or being closed, at most `timeout`; whether that happened.
/// For tests and orderly shutdown (a process exiting need not wait: the kernel closes).
pub fn wait_idle(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while PENDING.load(SeqCst) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only queries the descriptor table.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    fn anonymous_mapping(len: usize) -> *mut u8 {
        // SAFETY: a fresh private anonymous mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    fn is_mapped(addr: *mut u8, len: usize) -> bool {
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: mincore only reports on the range; `vec` has a byte per page.
        unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) == 0 }
    }

    /// A pipe's two ends (plain descriptors stand in for packet sockets: the closer does not
    /// care what it closes).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        (r, w)
    }

    #[test]
    fn closes_and_unmaps_in_the_background() {
        let mut maps = Vec::new();
        for _ in 0..20 {
            let (r, w) = pipe();
            close_later(r);
            let len = 3 * 4096;
            let addr = anonymous_mapping(len);
            maps.push((addr, len));
            // SAFETY: the mapping is fresh and nothing refers to it.
            release_later(w, unsafe { Mapping::new(addr, len) });
        }
        assert!(
            wait_idle(Duration::from_secs(5)),
            "closer stuck: {:?}",
            stats()
        );
        // Other tests may reuse the numbers meanwhile; the mappings are the reliable check.
        for (addr, len) in maps {
            assert!(!is_mapped(addr, len), "mapping left behind");
        }
        let s = stats();
        assert!(s.queued + s.inline >= 40, "{s:?}");
        assert!(s.closers >= 1 && s.closers <= MAX_CLOSERS, "{s:?}");
    }

    #[test]
    fn a_forked_child_closes_with_its_own_closers() {
        // Start the parent's pool first, so the child inherits a claimed one.
        let (r, _w) = pipe();
        close_later(r);
        assert!(wait_idle(Duration::from_secs(5)));
        // SAFETY: the child only uses async-signal-safe calls and this module (atomics,
        // thread creation), then leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let (r, w) = pipe();
            let raw = r.as_raw_fd();
            close_later(r);
            let ok = wait_idle(Duration::from_secs(5))
                && !is_open(raw)
                && stats().closers >= 1
                && OWNER.load(SeqCst) == getpid();
            drop(w);
            // SAFETY: leaving the child without running the test harness's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
    }
}
