//! `fork`, `vfork` and the `execve` family (paper §3.1: sharing a socket with a child, or
//! handing it to a new program image, flushes it back to the netserver).
//!
//! The work is safe code in `core_stack::client::process`; this file only brackets the real
//! calls:
//! - `fork`: [`process::fork`] flushes cached connections, asks the netserver for the child's
//!   session, runs the real `fork` with the runtime's locks held (released in both processes)
//!   and, in the child, adopts the new session (`SO_CONCURRENT_SERVER` connections are cached
//!   straight into it at their first use).
//! - `vfork` is `fork`: a vfork child shares the parent's memory and could not run the
//!   session hand-off without corrupting it (POSIX allows vfork to be fork).
//! - `execve` and friends: [`process::exec_prepare`] (flush, keep the session's descriptors
//!   open, describe everything in `MSOCK_INHERIT`) → the real call with that variable added
//!   to the environment → [`process::exec_failed`] if it returns.
//!
//! `execl`, `execlp` and `execle` are variadic: `execl.c` (compiled by build.rs) collects
//! their arguments and calls `execv`, `execvp` and `execve` here.
//!
//! Programs with no msock socket pay one atomic load and call libc directly. Nothing here
//! allocates between `fork` and the return to the program, except the child's session
//! hand-off, which runs after glibc's `fork` has made the allocator usable in the child.

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use core_stack::client::{api, guard, process};
use core_stack::msock_debug;
use libc::{c_int, pid_t};

use crate::real;

unsafe extern "C" {
    static environ: *const *const c_char;
}

/// `fork(2)`.
///
/// # Safety
/// C contract of `fork`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> pid_t {
    let Some(g) = guard::enter() else {
        // SAFETY: plain forward.
        return unsafe { real::fork() };
    };
    if !api::active() {
        drop(g);
        // SAFETY: plain forward.
        return unsafe { real::fork() };
    }
    // SAFETY: the real fork; the runtime's locks are held around it and released in both
    // processes (`client::process::fork`).
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        process::fork(|| unsafe { real::fork() })
    }));
    // SAFETY: __errno_location is this thread's errno slot.
    let saved = unsafe { *libc::__errno_location() };
    drop(g);
    match outcome {
        Ok(Ok(pid)) => {
            crate::edge::set_errno(saved);
            pid
        }
        Ok(Err(e)) => {
            crate::edge::set_errno(e);
            -1
        }
        Err(_) => {
            msock_debug!("fork: internal panic");
            crate::edge::set_errno(libc::EAGAIN);
            -1
        }
    }
}

/// `vfork(2)`: behaves as [`fork`] (see the module doc).
///
/// # Safety
/// C contract of `vfork` (the fork semantics are a subset).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() -> pid_t {
    // SAFETY: same contract.
    unsafe { fork() }
}

/// Copies a NULL-terminated C string array (argv/envp) into a vector of pointers, leaving out
/// entries for which `skip` is true.
///
/// # Safety
/// `list` must be null or a NULL-terminated array of valid C strings.
unsafe fn c_list(list: *const *const c_char, skip: impl Fn(&CStr) -> bool) -> Vec<*const c_char> {
    let mut out = Vec::new();
    if list.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: the array is NULL-terminated (caller's contract); we stop at the NULL.
        let p = unsafe { *list.add(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: every non-null entry is a valid C string.
        if !skip(unsafe { CStr::from_ptr(p) }) {
            out.push(p);
        }
        i += 1;
    }
    out
}

/// Runs an exec-family call with msock's inheritance added to `envp`: flushes the sockets
/// first and undoes what it can if the call returns (it failed).
///
/// # Safety
/// `envp` must be null or a valid environment array; `call` must be the real exec call.
unsafe fn exec_with(
    what: &str,
    envp: *const *const c_char,
    call: impl FnOnce(*const *const c_char) -> c_int,
) -> c_int {
    let Some(g) = guard::enter() else {
        return call(envp);
    };
    if !api::active() {
        drop(g);
        return call(envp);
    }
    let entry: Option<CString> = match catch_unwind(process::exec_prepare) {
        Ok(Ok(entry)) => entry,
        Ok(Err(e)) => {
            // The sockets could not be flushed: the new image would not find them. Fail as
            // the kernel fails an exec it cannot start, before anything changed.
            msock_debug!("{what}: cannot hand sockets over, errno {e}");
            drop(g);
            crate::edge::set_errno(e);
            return -1;
        }
        Err(_) => {
            drop(g);
            crate::edge::set_errno(libc::ENOMEM);
            return -1;
        }
    };
    let prefix = format!("{}=", process::INHERIT_ENV);
    // SAFETY: caller's contract on `envp`.
    let mut env = unsafe { c_list(envp, |e| e.to_bytes().starts_with(prefix.as_bytes())) };
    // The inherited sockets are only usable if the new image loads libmsock too: some
    // programs (openbsd-inetd) strip LD_PRELOAD from their environment, so put it back.
    let preload = entry.as_ref().and_then(|_| {
        // SAFETY: every entry of `env` is a valid C string (from `c_list`).
        let current = env.iter().position(|&e| {
            unsafe { CStr::from_ptr(e) }
                .to_bytes()
                .starts_with(b"LD_PRELOAD=")
        });
        // SAFETY: as above.
        let current = current.map(|i| (i, unsafe { CStr::from_ptr(env[i]) }));
        preload_entry(current.map(|(_, c)| c)).map(|c| (current.map(|(i, _)| i), c))
    });
    if let Some((index, value)) = preload.as_ref() {
        match index {
            Some(i) => env[*i] = value.as_ptr(),
            None => env.push(value.as_ptr()),
        }
    }
    if let Some(e) = entry.as_ref() {
        env.push(e.as_ptr());
    }
    env.push(std::ptr::null());
    let r = call(env.as_ptr());
    // SAFETY: __errno_location is this thread's errno slot.
    let saved = unsafe { *libc::__errno_location() };
    let _ = catch_unwind(process::exec_failed);
    msock_debug!("{what} failed: errno {saved}");
    drop(g);
    crate::edge::set_errno(saved);
    r
}

/// The path this library was loaded from (`dladdr` of one of its functions).
fn own_path() -> Option<CString> {
    // SAFETY: a zeroed Dl_info is a valid out-parameter; the address is a function of ours.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; dladdr only writes `info`.
    let found = unsafe { libc::dladdr(own_path as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr's dli_fname is a NUL-terminated path owned by the loader.
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_owned())
}

/// `LD_PRELOAD=...` with this library first, or `None` if `current` already names it.
fn preload_entry(current: Option<&CStr>) -> Option<CString> {
    let ours = own_path()?;
    let ours = ours.to_str().ok()?;
    let value = current
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.strip_prefix("LD_PRELOAD="));
    if value.is_some_and(|v| v.split([' ', ':']).any(|lib| lib == ours)) {
        return None;
    }
    let joined = match value {
        Some(v) if !v.is_empty() => format!("LD_PRELOAD={ours} {v}"),
        _ => format!("LD_PRELOAD={ours}"),
    };
    CString::new(joined).ok()
}

/// `execve(2)`.
///
/// # Safety
/// C contract of `execve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded under the caller's contract.
    unsafe { exec_with("execve", envp, |env| real::execve(path, argv, env)) }
}

/// `execv(3)`: `execve` with the current environment.
///
/// # Safety
/// C contract of `execv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the process environment (valid NULL-terminated array).
    let envp = unsafe { environ };
    // SAFETY: forwarded under the caller's contract.
    unsafe { exec_with("execv", envp, |env| real::execve(path, argv, env)) }
}

/// `execvp(3)`: PATH search with the current environment.
///
/// # Safety
/// C contract of `execvp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the process environment.
    let envp = unsafe { environ };
    // SAFETY: forwarded under the caller's contract.
    unsafe { exec_with("execvp", envp, |env| real::execvpe(file, argv, env)) }
}

/// `execvpe(3)`.
///
/// # Safety
/// C contract of `execvpe`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded under the caller's contract.
    unsafe { exec_with("execvpe", envp, |env| real::execvpe(file, argv, env)) }
}

/// `fexecve(3)`.
///
/// # Safety
/// C contract of `fexecve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: forwarded under the caller's contract.
    unsafe { exec_with("fexecve", envp, |env| real::fexecve(fd, argv, env)) }
}

/// `execveat(2)`.
///
/// # Safety
/// C contract of `execveat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded under the caller's contract.
    unsafe {
        exec_with("execveat", envp, |env| {
            real::execveat(dirfd, path, argv, env, flags)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_list_copies_and_filters() {
        let a = c"A=1";
        let b = c"MSOCK_INHERIT=v1";
        let c = c"C=3";
        let list = [a.as_ptr(), b.as_ptr(), c.as_ptr(), std::ptr::null()];
        // SAFETY: a NULL-terminated array of valid C strings.
        let out = unsafe {
            c_list(list.as_ptr(), |e| {
                e.to_bytes().starts_with(b"MSOCK_INHERIT=")
            })
        };
        assert_eq!(out, vec![a.as_ptr(), c.as_ptr()]);
        // SAFETY: null is allowed.
        assert!(unsafe { c_list(std::ptr::null(), |_| false) }.is_empty());
    }
}
