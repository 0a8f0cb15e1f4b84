//! `sigaction` and `signal`: a program's handler runs behind a trampoline that tells msock
//! which signal interrupted a blocking call (`core_stack::client::signals`), so the call is
//! restarted or fails with EINTR per that handler's SA_RESTART, as Linux decides.
//!
//! The program sees only its own handlers: `oldact` reports the handler it installed, never
//! the trampoline. glibc's `signal` installs through an internal `__sigaction` our
//! `sigaction` never sees, so `signal` is interposed too (BSD semantics, as glibc's: SA_RESTART).

use std::sync::atomic::{AtomicUsize, Ordering};

use core_stack::client::signals;
use libc::{c_int, c_void, sighandler_t, siginfo_t};

use crate::real;

const SLOTS: usize = signals::MAX_SIGNAL + 1;

/// The program's handler per signal (0: none through msock).
static HANDLERS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Whether that handler takes three arguments (SA_SIGINFO).
static SIGINFO: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

fn slot(sig: c_int) -> Option<usize> {
    usize::try_from(sig)
        .ok()
        .filter(|&s| (1..SLOTS).contains(&s))
}

/// Runs on signal delivery: notes the signal, then calls the program's handler the way it was
/// installed. Async-signal-safe (atomic loads, one thread-local store, the call).
extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    signals::note_delivered(sig);
    let Some(i) = slot(sig) else { return };
    let handler = HANDLERS[i].load(Ordering::Acquire);
    if handler == 0 || handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        return;
    }
    if SIGINFO[i].load(Ordering::Acquire) != 0 {
        // SAFETY: installed by the program with SA_SIGINFO: this is its prototype.
        let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: installed by the program without SA_SIGINFO: `void (*)(int)`.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// `oldact` as the program installed it (our trampoline replaced by its handler).
///
/// # Safety
/// `old` must be null or valid for writes; `previous` is the program's previous handler.
unsafe fn present(old: *mut libc::sigaction, previous: usize, previous_siginfo: bool) {
    // SAFETY: caller's contract.
    let Some(old) = (unsafe { old.as_mut() }) else {
        return;
    };
    if old.sa_sigaction == trampoline as *const () as usize {
        old.sa_sigaction = previous;
        if !previous_siginfo {
            old.sa_flags &= !libc::SA_SIGINFO;
        }
    }
}

/// `sigaction(2)`.
///
/// # Safety
/// C contract of `sigaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let Some(i) = slot(sig) else {
        // SAFETY: plain forward (the kernel reports EINVAL for bad numbers).
        return unsafe { real::sigaction(sig, act, old) };
    };
    let previous = HANDLERS[i].load(Ordering::Acquire);
    let previous_siginfo = SIGINFO[i].load(Ordering::Acquire) != 0;
    // A copy: POSIX allows `act == old`, and the real call overwrites `*old`.
    // SAFETY: caller's contract: `act` is null or valid.
    let Some(new) = (unsafe { act.as_ref() }).copied() else {
        // SAFETY: a query; `old` is the caller's.
        let r = unsafe { real::sigaction(sig, act, old) };
        // SAFETY: as above.
        unsafe { present(old, previous, previous_siginfo) };
        return r;
    };
    let handler = new.sa_sigaction;
    if handler == libc::SIG_DFL
        || handler == libc::SIG_IGN
        || sig == libc::SIGKILL
        || sig == libc::SIGSTOP
    {
        // SAFETY: forwarded unchanged.
        let r = unsafe { real::sigaction(sig, &new, old) };
        if r == 0 {
            HANDLERS[i].store(0, Ordering::Release);
            signals::clear(sig);
            // SAFETY: as above.
            unsafe { present(old, previous, previous_siginfo) };
        }
        return r;
    }
    let mut wrapped = new;
    wrapped.sa_sigaction = trampoline as *const () as usize;
    wrapped.sa_flags |= libc::SA_SIGINFO;
    SIGINFO[i].store(
        usize::from(new.sa_flags & libc::SA_SIGINFO != 0),
        Ordering::Release,
    );
    HANDLERS[i].store(handler, Ordering::Release);
    // SAFETY: a valid sigaction for the real call; `old` is the caller's.
    let r = unsafe { real::sigaction(sig, &wrapped, old) };
    if r == 0 {
        signals::set_restart(sig, new.sa_flags & libc::SA_RESTART != 0);
        // SAFETY: as above.
        unsafe { present(old, previous, previous_siginfo) };
    } else {
        HANDLERS[i].store(previous, Ordering::Release);
        SIGINFO[i].store(usize::from(previous_siginfo), Ordering::Release);
    }
    r
}

/// `signal(3)` with glibc's (BSD) semantics: the handler stays installed and interrupted
/// calls are restarted (SA_RESTART).
///
/// # Safety
/// C contract of `signal`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    // SAFETY: a zeroed sigaction is valid; the mask is emptied below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = if interrupting(sig) {
        0
    } else {
        libc::SA_RESTART
    };
    // SAFETY: `act.sa_mask` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: a zeroed sigaction is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// Signals `siginterrupt(sig, 1)` marked: glibc's `signal` then installs without SA_RESTART.
static INTERRUPTING: AtomicUsize = AtomicUsize::new(0);
static INTERRUPTING_HIGH: AtomicUsize = AtomicUsize::new(0);

fn interrupt_bit(sig: c_int) -> Option<(&'static AtomicUsize, usize)> {
    let n = usize::try_from(sig)
        .ok()
        .filter(|&n| (1..SLOTS).contains(&n))?;
    if n < 64 {
        Some((&INTERRUPTING, 1usize << n))
    } else {
        Some((&INTERRUPTING_HIGH, 1usize << (n - 64)))
    }
}

fn interrupting(sig: c_int) -> bool {
    interrupt_bit(sig).is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
}

/// `siginterrupt(3)`: glibc changes SA_RESTART through an internal call this library would
/// not see, so it is done here through [`sigaction`] (the trampoline's table follows).
///
/// # Safety
/// C contract of `siginterrupt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn siginterrupt(sig: c_int, flag: c_int) -> c_int {
    let Some((word, bit)) = interrupt_bit(sig) else {
        // SAFETY: errno slot of this thread.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    };
    // SAFETY: a zeroed sigaction is a valid out-parameter.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query into a local.
    if unsafe { sigaction(sig, std::ptr::null(), &mut act) } != 0 {
        return -1;
    }
    if flag != 0 {
        word.fetch_or(bit, Ordering::AcqRel);
        act.sa_flags &= !libc::SA_RESTART;
    } else {
        word.fetch_and(!bit, Ordering::AcqRel);
        act.sa_flags |= libc::SA_RESTART;
    }
    // SAFETY: the program's own action with only SA_RESTART changed.
    unsafe { sigaction(sig, &act, std::ptr::null_mut()) }
}
