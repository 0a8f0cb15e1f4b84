//! The real libc functions, found with `dlsym(RTLD_NEXT, name)` on first use and cached.
//!
//! Resolution needs nothing from Rust's runtime or from our constructor, so these work from the
//! very first interposed call (some libraries open sockets from their own constructors, before
//! ours has run). A symbol that cannot be resolved makes the call fail with ENOSYS.
//!
//! `fcntl` and `ioctl` are variadic in C; they are called through a variadic pointer here, so
//! whatever the program passed is forwarded exactly.

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_uint, c_ulong, msghdr, size_t, sockaddr, socklen_t, ssize_t};

fn resolve(cache: &AtomicUsize, name: &CStr) -> usize {
    let cached = cache.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `name` is NUL-terminated; dlsym has no other preconditions and is thread safe.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if found != 0 {
        cache.store(found, Ordering::Relaxed);
    }
    found
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

macro_rules! real {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {$(
        /// The next definition of this symbol after libmsock (normally libc's).
        ///
        /// # Safety
        /// Same contract as the C function of the same name.
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            static CACHE: AtomicUsize = AtomicUsize::new(0);
            let name = CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes());
            let ptr = match name { Ok(n) => resolve(&CACHE, n), Err(_) => 0 };
            if ptr == 0 {
                set_errno(libc::ENOSYS);
                return -1 as $ret;
            }
            // SAFETY: `ptr` is the address dlsym returned for this exact symbol, whose C
            // prototype is the one spelled here.
            let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(ptr) };
            // SAFETY: forwarded under the caller's contract.
            unsafe { f($($arg),*) }
        }
    )*};
}

real! {
    fork() -> libc::pid_t;
    sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    execve(path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    execvpe(file: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    fexecve(fd: c_int, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    execveat(dirfd: c_int, path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char, flags: c_int) -> c_int;
    socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: c_uint, flags: c_int) -> c_int;
    recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t;
    write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t;
    __read_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t) -> ssize_t;
    __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
    close(fd: c_int) -> c_int;
    getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(old: c_int, new: c_int) -> c_int;
    dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    shutdown(fd: c_int, how: c_int) -> c_int;
    sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut libc::off64_t, count: size_t) -> ssize_t;
    splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: c_uint) -> ssize_t;
}

/// `fcntl` with one integer-or-pointer argument (every command takes at most one).
///
/// # Safety
/// Same contract as C `fcntl`.
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    let ptr = resolve(&CACHE, c"fcntl");
    if ptr == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: dlsym's address of libc's variadic `int fcntl(int, int, ...)`.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = unsafe { std::mem::transmute(ptr) };
    // SAFETY: forwarded under the caller's contract.
    unsafe { f(fd, cmd, arg) }
}

/// `fcntl64` (glibc ≥ 2.28 routes `fcntl` here under `_FILE_OFFSET_BITS=64`).
///
/// # Safety
/// Same contract as C `fcntl64`.
pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    let ptr = resolve(&CACHE, c"fcntl64");
    if ptr == 0 {
        // Older libcs: plain fcntl has the same behaviour on 64-bit targets.
        // SAFETY: forwarded under the caller's contract.
        return unsafe { fcntl(fd, cmd, arg) };
    }
    // SAFETY: dlsym's address of libc's variadic `int fcntl64(int, int, ...)`.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = unsafe { std::mem::transmute(ptr) };
    // SAFETY: forwarded under the caller's contract.
    unsafe { f(fd, cmd, arg) }
}

/// `ioctl` with one argument.
///
/// # Safety
/// Same contract as C `ioctl`.
pub unsafe fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    static CACHE: AtomicUsize = AtomicUsize::new(0);
    let ptr = resolve(&CACHE, c"ioctl");
    if ptr == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: dlsym's address of libc's variadic `int ioctl(int, unsigned long, ...)`.
    let f: unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int = unsafe { std::mem::transmute(ptr) };
    // SAFETY: forwarded under the caller's contract.
    unsafe { f(fd, request, arg) }
}
