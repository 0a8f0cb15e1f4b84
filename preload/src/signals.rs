//! `sigaction` and `signal`: a program's handler runs behind a trampoline that tells msock
//! which signal interrupted a blocking call (`core_stack::client::signals`), so the call is
//! restarted or fails with EINTR per that handler's SA_RESTART, as Linux decides.
//!
//! The program sees only its own handlers: `oldact` reports the handler it installed, never
//! the trampoline. glibc's `signal` installs through an internal `__sigaction` our
//! `sigaction` never sees, so `signal` is interposed too (BSD semantics, as glibc's: SA_RESTART).
//!
//! The trampoline finds the program's handler and its arity (SA_SIGINFO: three arguments, or
//! one) in one atomic word per signal ([`Installed`]), so a signal arriving while `sigaction`
//! changes them runs either the old handler the old way or the new one the new way, never a
//! handler called with the other's arity.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use core_stack::client::signals;
use libc::{c_int, c_void, sighandler_t, siginfo_t};

use crate::real;

const SLOTS: usize = signals::MAX_SIGNAL + 1;

/// The program's handler per signal, [`Installed::pack`]ed (0: none through msock).
static INSTALLED: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

/// A program's handler as the trampoline calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    /// The handler's address (`sa_sigaction`, never SIG_DFL or SIG_IGN).
    handler: usize,
    /// Installed with SA_SIGINFO: `void (*)(int, siginfo_t *, void *)`, else `void (*)(int)`.
    siginfo: bool,
}

/// Where a packed word keeps SA_SIGINFO. No Linux user-space address has it set (user space is
/// the lower half of the address space on every 64-bit architecture; a 32-bit address is
/// below it), so it never collides with a handler's address.
const SIGINFO_BIT: u64 = 1 << 63;

impl Installed {
    /// The handler installed by `act`, or `None` for SIG_DFL and SIG_IGN.
    fn of(act: &libc::sigaction) -> Option<Installed> {
        let handler = act.sa_sigaction;
        (handler != libc::SIG_DFL && handler != libc::SIG_IGN).then_some(Installed {
            handler,
            siginfo: act.sa_flags & libc::SA_SIGINFO != 0,
        })
    }

    /// One word: the address with SA_SIGINFO in [`SIGINFO_BIT`]; never 0. `None` if the
    /// address itself has that bit (not a user-space address: it cannot be wrapped).
    fn pack(self) -> Option<u64> {
        let address = u64::try_from(self.handler).ok()?;
        if address & SIGINFO_BIT != 0 {
            return None;
        }
        Some(address | if self.siginfo { SIGINFO_BIT } else { 0 })
    }

    /// The handler a word holds; `None` for 0 (no handler) or SIG_DFL / SIG_IGN.
    fn unpack(word: u64) -> Option<Installed> {
        let handler = usize::try_from(word & !SIGINFO_BIT).ok()?;
        (handler != libc::SIG_DFL && handler != libc::SIG_IGN).then_some(Installed {
            handler,
            siginfo: word & SIGINFO_BIT != 0,
        })
    }
}

fn slot(sig: c_int) -> Option<usize> {
    usize::try_from(sig)
        .ok()
        .filter(|&s| (1..SLOTS).contains(&s))
}

/// Runs on signal delivery: notes the signal, then calls the program's handler the way it was
/// installed. Async-signal-safe (one atomic load, one thread-local store, the call); handler
/// and arity come from the same load.
extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    signals::note_delivered(sig);
    let Some(i) = slot(sig) else { return };
    let Some(installed) = Installed::unpack(INSTALLED[i].load(Ordering::Acquire)) else {
        return;
    };
    if installed.siginfo {
        // SAFETY: installed by the program with SA_SIGINFO: this is its prototype.
        let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(installed.handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: installed by the program without SA_SIGINFO: `void (*)(int)`.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(installed.handler) };
        f(sig);
    }
}

/// `oldact` as the program installed it (our trampoline replaced by its handler).
///
/// # Safety
/// `old` must be null or valid for writes; `previous` is the program's previous handler
/// (`None`: SIG_DFL).
unsafe fn present(old: *mut libc::sigaction, previous: Option<Installed>) {
    // SAFETY: caller's contract.
    let Some(old) = (unsafe { old.as_mut() }) else {
        return;
    };
    if old.sa_sigaction == trampoline as *const () as usize {
        old.sa_sigaction = previous.map_or(libc::SIG_DFL, |p| p.handler);
        if !previous.is_some_and(|p| p.siginfo) {
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
    let previous_word = INSTALLED[i].load(Ordering::Acquire);
    let previous = Installed::unpack(previous_word);
    // A copy: POSIX allows `act == old`, and the real call overwrites `*old`.
    // SAFETY: caller's contract: `act` is null or valid.
    let Some(new) = (unsafe { act.as_ref() }).copied() else {
        // SAFETY: a query; `old` is the caller's.
        let r = unsafe { real::sigaction(sig, act, old) };
        // SAFETY: as above.
        unsafe { present(old, previous) };
        return r;
    };
    // SIG_DFL, SIG_IGN, SIGKILL/SIGSTOP (the kernel refuses) and a handler that cannot be
    // packed are forwarded unchanged: no trampoline runs for them.
    let packed = Installed::of(&new)
        .filter(|_| sig != libc::SIGKILL && sig != libc::SIGSTOP)
        .and_then(Installed::pack);
    let Some(packed) = packed else {
        // SAFETY: forwarded unchanged.
        let r = unsafe { real::sigaction(sig, &new, old) };
        if r == 0 {
            INSTALLED[i].store(0, Ordering::Release);
            signals::clear(sig);
            // SAFETY: as above.
            unsafe { present(old, previous) };
        }
        return r;
    };
    let mut wrapped = new;
    wrapped.sa_sigaction = trampoline as *const () as usize;
    wrapped.sa_flags |= libc::SA_SIGINFO;
    // Handler and arity change together, before the trampoline can run for them.
    INSTALLED[i].store(packed, Ordering::Release);
    // SAFETY: a valid sigaction for the real call; `old` is the caller's.
    let r = unsafe { real::sigaction(sig, &wrapped, old) };
    if r == 0 {
        signals::set_restart(sig, new.sa_flags & libc::SA_RESTART != 0);
        // SAFETY: as above.
        unsafe { present(old, previous) };
    } else {
        INSTALLED[i].store(previous_word, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI32;

    #[test]
    fn a_packed_word_keeps_handler_and_arity_together() {
        for handler in [0x2usize, 0x1000, 0x7f12_3456_789b, usize::MAX >> 1] {
            for siginfo in [false, true] {
                let installed = Installed { handler, siginfo };
                let word = installed.pack().expect("a user-space address packs");
                assert_ne!(word, 0);
                assert_eq!(Installed::unpack(word), Some(installed));
            }
            let one = Installed {
                handler,
                siginfo: false,
            }
            .pack();
            let three = Installed {
                handler,
                siginfo: true,
            }
            .pack();
            assert_ne!(one, three);
        }
    }

    #[test]
    fn no_handler_unpacks_to_none() {
        assert_eq!(Installed::unpack(0), None);
        assert_eq!(Installed::unpack(SIGINFO_BIT), None);
        assert_eq!(Installed::unpack(libc::SIG_IGN as u64), None);
        assert_eq!(Installed::unpack(libc::SIG_IGN as u64 | SIGINFO_BIT), None);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_address_using_the_flag_bit_does_not_pack() {
        let handler = usize::MAX;
        assert_eq!(
            Installed {
                handler,
                siginfo: false
            }
            .pack(),
            None
        );
        assert_eq!(
            Installed {
                handler,
                siginfo: true
            }
            .pack(),
            None
        );
    }

    #[test]
    fn of_reads_handler_and_siginfo() {
        // SAFETY: a zeroed sigaction is a valid value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = libc::SIG_DFL;
        assert_eq!(Installed::of(&act), None);
        act.sa_sigaction = libc::SIG_IGN;
        assert_eq!(Installed::of(&act), None);
        act.sa_sigaction = 0x1234;
        act.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
        let want = Installed {
            handler: 0x1234,
            siginfo: true,
        };
        assert_eq!(Installed::of(&act), Some(want));
        act.sa_flags = libc::SA_RESTART;
        assert_eq!(Installed::of(&act).map(|i| i.siginfo), Some(false));
    }

    static ONE_ARG: AtomicI32 = AtomicI32::new(0);
    static THREE_ARGS: AtomicI32 = AtomicI32::new(0);

    extern "C" fn one_arg(sig: c_int) {
        ONE_ARG.store(sig, Ordering::SeqCst);
    }

    extern "C" fn three_args(sig: c_int, info: *mut siginfo_t, _ctx: *mut c_void) {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
        let signo = unsafe { info.as_ref() }.map_or(-1, |i| i.si_signo);
        THREE_ARGS.store(if signo == sig { sig } else { -1 }, Ordering::SeqCst);
    }

    /// Installs `handler` for SIGUSR2 through the interposed `sigaction`; the old action.
    fn install(handler: usize, flags: c_int) -> libc::sigaction {
        // SAFETY: zeroed sigactions are valid; the mask is emptied; valid pointers to locals.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            act.sa_flags = flags;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(sigaction(libc::SIGUSR2, &act, &mut old), 0);
            old
        }
    }

    fn raise_usr2() {
        // SAFETY: a handler is installed for SIGUSR2 (or the default is restored last).
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    }

    #[test]
    fn the_trampoline_calls_each_handler_with_its_own_arity() {
        let three = three_args as *const () as usize;
        let one = one_arg as *const () as usize;
        let original = install(three, libc::SA_SIGINFO | libc::SA_RESTART);
        raise_usr2();
        assert_eq!(THREE_ARGS.load(Ordering::SeqCst), libc::SIGUSR2);
        // The kernel runs the trampoline; the program sees its own handler.
        // SAFETY: a query into a zeroed local.
        let kernel = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            assert_eq!(
                real::sigaction(libc::SIGUSR2, std::ptr::null(), &mut act),
                0
            );
            act
        };
        assert_eq!(kernel.sa_sigaction, trampoline as *const () as usize);

        let shown = install(one, 0);
        assert_eq!(shown.sa_sigaction, three);
        assert_ne!(shown.sa_flags & libc::SA_SIGINFO, 0);
        raise_usr2();
        assert_eq!(ONE_ARG.load(Ordering::SeqCst), libc::SIGUSR2);

        let shown = install(original.sa_sigaction, original.sa_flags);
        assert_eq!(shown.sa_sigaction, one);
        assert_eq!(shown.sa_flags & libc::SA_SIGINFO, 0);
    }
}
