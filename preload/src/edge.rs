//! Every exported symbol of libmsock.so. Arguments are converted to safe types at the top of
//! each function; the operation itself is safe code in `core_stack::client::api`.

use std::ffi::c_void;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use core_stack::client::api::{self, Handle, Outcome, Received, SockAddrIn};
use core_stack::client::{fdguard, guard};
use core_stack::msock_debug;
use libc::{c_int, c_uint, c_ulong, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::real;

#[ctor::ctor]
fn init() {
    // Panics inside msock are caught at the edge (EIO); report them without Rust's stdio
    // (this hook belongs to libmsock's own copy of std, not to the program's).
    std::panic::set_hook(Box::new(|info| {
        msock_debug!("internal panic: {info}");
    }));
    // SAFETY: registering a child handler that only stores to an atomic (async-signal-safe).
    unsafe {
        libc::pthread_atfork(None, None, Some(guard::atfork_child));
        // Normal exit hands cached TCP connections to the netserver (no data lost).
        libc::atexit(at_exit);
    }
    // The channel closer's threads are msock's own: their closes must reach libc (and
    // release the descriptors msock protects from the program).
    core_stack::channel::closer::set_thread_init(guard::mark_thread_inside);
    guard::set_ready();
    // A previous program image of this process may have handed its sockets over (execve).
    if std::env::var_os(core_stack::client::process::INHERIT_ENV).is_some() {
        let _g = guard::enter();
        if catch_unwind(core_stack::client::process::adopt_inherited).is_err() {
            msock_debug!("adopting inherited sockets panicked; they are ignored");
        }
    }
}

/// `atexit` handler: releases every msock socket as the kernel closes a process's sockets.
extern "C" fn at_exit() {
    let Some(_g) = guard::enter() else { return };
    if !api::active() {
        return;
    }
    let _ = catch_unwind(api::at_exit);
}

// ---------------------------------------------------------------------------------------------
// Helpers: errno, panics, argument conversion.

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn fail<R: From<i8>>(e: c_int) -> R {
    set_errno(e);
    R::from(-1)
}

/// Runs a safe operation, turning a panic into EIO (never unwinding into C).
fn run<T>(what: &str, fd: c_int, op: impl FnOnce() -> Outcome<T>) -> Outcome<T> {
    match catch_unwind(AssertUnwindSafe(op)) {
        Ok(outcome) => {
            if let Outcome::Error(e) = outcome {
                msock_debug!("{what}(fd {fd}) -> errno {e}");
            }
            outcome
        }
        Err(_) => {
            msock_debug!("{what}(fd {fd}): internal panic, EIO");
            Outcome::Error(libc::EIO)
        }
    }
}

/// `&[u8]` from a C buffer; EFAULT for a null pointer with a non-zero length.
///
/// # Safety
/// `ptr` must be valid for `len` bytes (or null).
unsafe fn slice<'a>(ptr: *const c_void, len: size_t) -> Result<&'a [u8], c_int> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(libc::EFAULT);
    }
    if len > isize::MAX as usize {
        return Err(libc::EINVAL);
    }
    // SAFETY: non-null, caller guarantees validity for `len` bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// # Safety
/// `ptr` must be valid for writes of `len` bytes (or null).
unsafe fn slice_mut<'a>(ptr: *mut c_void, len: size_t) -> Result<&'a mut [u8], c_int> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(libc::EFAULT);
    }
    if len > isize::MAX as usize {
        return Err(libc::EINVAL);
    }
    // SAFETY: non-null, caller guarantees validity for `len` bytes.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) })
}

/// An iovec array (at most IOV_MAX entries).
///
/// # Safety
/// `iov` must point to `cnt` valid iovecs.
unsafe fn iovecs<'a>(iov: *const libc::iovec, cnt: usize) -> Result<&'a [libc::iovec], c_int> {
    if cnt > libc::UIO_MAXIOV as usize {
        return Err(libc::EINVAL);
    }
    if cnt == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: caller guarantees `cnt` iovecs.
    Ok(unsafe { std::slice::from_raw_parts(iov, cnt) })
}

/// Iovecs as byte slices (at most IOV_MAX).
///
/// # Safety
/// `iov` must point to `cnt` valid iovecs whose buffers are valid.
unsafe fn iov_slices<'a>(iov: *const libc::iovec, cnt: usize) -> Result<Vec<&'a [u8]>, c_int> {
    // SAFETY: the caller's iovec contract; each iovec describes a valid buffer.
    unsafe { iovecs(iov, cnt)? }
        .iter()
        .map(|v| unsafe { slice(v.iov_base, v.iov_len) })
        .collect()
}

/// # Safety
/// As [`iov_slices`], buffers writable.
unsafe fn iov_slices_mut<'a>(
    iov: *const libc::iovec,
    cnt: usize,
) -> Result<Vec<&'a mut [u8]>, c_int> {
    // SAFETY: the caller's iovec contract; each iovec describes a valid writable buffer.
    unsafe { iovecs(iov, cnt)? }
        .iter()
        .map(|v| unsafe { slice_mut(v.iov_base, v.iov_len) })
        .collect()
}

/// `msg_iovlen` is `size_t` in glibc and `int` in musl.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn iov_count<T: TryInto<usize>>(n: T) -> usize {
    n.try_into().unwrap_or(usize::MAX)
}

/// A C socket address as a safe value; `None` for a null pointer.
///
/// # Safety
/// `addr` must be valid for `len` bytes (or null).
unsafe fn read_addr(addr: *const sockaddr, len: socklen_t) -> Option<SockAddrIn> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the caller says `addr` is valid for `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len as usize) };
    Some(SockAddrIn::parse(bytes))
}

/// Writes `addr` to a C (address, length) pair with the kernel's truncation rule: copy at most
/// `*len` bytes, always store the full length.
///
/// # Safety
/// `out` valid for `*len` bytes and `len` valid, or either null.
unsafe fn write_addr(
    addr: &SocketAddr,
    out: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<(), c_int> {
    if out.is_null() || len.is_null() {
        return Ok(());
    }
    // SAFETY: `len` non-null and valid per the caller.
    let cap = unsafe { *len } as i32;
    if cap < 0 {
        return Err(libc::EINVAL);
    }
    let encoded = encode_addr(addr);
    let n = encoded.len().min(cap as usize);
    // SAFETY: `out` holds `cap` ≥ n bytes; `encoded` is a local buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(encoded.as_ptr(), out.cast::<u8>(), n);
        *len = encoded.len() as socklen_t;
    }
    Ok(())
}

fn encode_addr(addr: &SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(a) => {
            let mut b = vec![0u8; size_of::<libc::sockaddr_in>()];
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            b
        }
        SocketAddr::V6(a) => {
            let mut b = vec![0u8; size_of::<libc::sockaddr_in6>()];
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            b
        }
    }
}

/// A C return value for a done operation: byte counts as `ssize_t`, ints as they are, `()` as 0.
trait CValue<R> {
    fn c(self) -> R;
}

impl CValue<ssize_t> for usize {
    fn c(self) -> ssize_t {
        self as ssize_t
    }
}

impl CValue<c_int> for c_int {
    fn c(self) -> c_int {
        self
    }
}

impl CValue<c_int> for () {
    fn c(self) -> c_int {
        0
    }
}

/// An outcome as the C result: the value, the real function for a bypass, or -1 with errno.
fn to_c<T: CValue<R>, R: From<i8>>(outcome: Outcome<T>, bypass: impl FnOnce() -> R) -> R {
    match outcome {
        Outcome::Done(v) => v.c(),
        Outcome::Bypass => bypass(),
        Outcome::Error(e) => fail(e),
    }
}

/// The shape of every fd export (STYLE.md, "The C boundary"): not initialised or re-entered →
/// `real_call`; not a msock fd → `real_call`; ours → `op` on the socket (which enters msock
/// through [`run`], the `catch_unwind`), its outcome returned by [`to_c`].
fn on_fd<T: CValue<R>, R: From<i8>>(
    fd: c_int,
    real_call: impl Fn() -> R,
    op: impl FnOnce(&Handle) -> Outcome<T>,
) -> R {
    let Some(_g) = guard::enter() else {
        return real_call();
    };
    let Some(h) = api::lookup(fd) else {
        return real_call();
    };
    to_c(op(&h), real_call)
}
/// Shared body of send/sendto/write: one buffer, optional destination.
///
/// # Safety
/// C contract of `sendto` (`addr` may be null).
#[allow(clippy::too_many_arguments)]
unsafe fn send_one(
    h: &Handle,
    what: &str,
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> Outcome<usize> {
    // SAFETY: the caller's buffer contract.
    Outcome::from(unsafe { slice(buf, len) }).and_then(|data| {
        // SAFETY: the caller's address contract.
        let dst = unsafe { read_addr(addr, alen) };
        run(what, fd, || api::send(h, fd, &[data], flags, dst.as_ref()))
    })
}

/// Shared body of recv/recvfrom/read: one buffer, optional source address.
///
/// # Safety
/// C contract of `recvfrom`.
unsafe fn recv_one(
    h: &Handle,
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> Outcome<usize> {
    // SAFETY: the caller's buffer contract.
    Outcome::from(unsafe { slice_mut(buf, len) }).and_then(|buf| {
        let mut bufs = [buf];
        run("recv", fd, || api::recv(h, fd, &mut bufs, flags)).and_then(|r| {
            if let Some(src) = r.src {
                // SAFETY: the caller's address-buffer contract.
                if let Err(e) = unsafe { write_addr(&src, addr, alen) } {
                    return Outcome::Error(e);
                }
            }
            Outcome::Done(r.len)
        })
    })
}

/// Shared body of recvmsg/recvmmsg.
///
/// # Safety
/// `msg` valid per the C contract of `recvmsg`.
unsafe fn recv_msg(h: &Handle, fd: c_int, msg: *mut msghdr, flags: c_int) -> Outcome<usize> {
    if msg.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: non-null and valid per the caller.
    let m = unsafe { &mut *msg };
    // SAFETY: the iovecs of a valid msghdr.
    let mut bufs = match unsafe { iov_slices_mut(m.msg_iov, iov_count(m.msg_iovlen)) } {
        Ok(b) => b,
        Err(e) => return Outcome::Error(e),
    };
    let r: Received = match run("recvmsg", fd, || api::recv(h, fd, &mut bufs, flags)) {
        Outcome::Done(r) => r,
        Outcome::Bypass => return Outcome::Bypass,
        Outcome::Error(e) => return Outcome::Error(e),
    };
    if let Some(src) = r.src {
        let mut namelen = m.msg_namelen;
        // SAFETY: msg_name holds msg_namelen bytes per the caller.
        if let Err(e) = unsafe { write_addr(&src, m.msg_name.cast(), &mut namelen) } {
            return Outcome::Error(e);
        }
        m.msg_namelen = namelen;
    } else {
        m.msg_namelen = 0;
    }
    // No ancillary data is produced.
    m.msg_controllen = 0;
    m.msg_flags = if r.truncated { libc::MSG_TRUNC } else { 0 };
    Outcome::Done(r.len)
}

/// Shared body of sendmsg/sendmmsg.
///
/// # Safety
/// `msg` valid per the C contract of `sendmsg`.
unsafe fn send_msg(h: &Handle, fd: c_int, msg: *const msghdr, flags: c_int) -> Outcome<usize> {
    if msg.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: non-null and valid per the caller.
    let m = unsafe { &*msg };
    // SAFETY: the iovecs of a valid msghdr.
    Outcome::from(unsafe { iov_slices(m.msg_iov, iov_count(m.msg_iovlen)) }).and_then(|bufs| {
        // SAFETY: msg_name holds msg_namelen bytes per the caller.
        let dst = unsafe { read_addr(m.msg_name.cast(), m.msg_namelen) };
        run("sendmsg", fd, || {
            api::send(h, fd, &bufs, flags, dst.as_ref())
        })
    })
}

/// Shared loop of sendmmsg/recvmmsg over the first `vlen` (at most IOV_MAX) entries: `op` on
/// each message (with its index), storing `msg_len`, until one fails or `more` says stop. An
/// error counts only on the first entry; a bypass hands the call to `bypass` (given the index
/// and the clamped count), whose result is returned as it is (libc has set errno).
///
/// # Safety
/// `msgs` non-null (or `vlen` 0) and holding `vlen` entries per the C contract.
unsafe fn each_mmsg(
    msgs: *mut libc::mmsghdr,
    vlen: c_uint,
    mut op: impl FnMut(usize, &mut msghdr) -> Outcome<usize>,
    mut more: impl FnMut() -> bool,
    bypass: impl FnOnce(usize, usize) -> c_int,
) -> Outcome<c_int> {
    let vlen = vlen.min(libc::UIO_MAXIOV as c_uint) as usize;
    let mut done = 0usize;
    while done < vlen {
        // SAFETY: `msgs` holds `vlen` entries per the caller.
        let entry = unsafe { &mut *msgs.add(done) };
        match op(done, &mut entry.msg_hdr) {
            Outcome::Done(n) => {
                entry.msg_len = n as c_uint;
                done += 1;
            }
            Outcome::Bypass => return Outcome::Done(bypass(done, vlen)),
            Outcome::Error(e) if done == 0 => return Outcome::Error(e),
            Outcome::Error(_) => break,
        }
        if !more() {
            break;
        }
    }
    Outcome::Done(done as c_int)
}

/// Shared body of bind/connect: the address converted, then `op`.
///
/// # Safety
/// `addr` valid for `len` bytes (or null).
unsafe fn with_addr(
    h: &Handle,
    what: &str,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    op: fn(&Handle, c_int, &SockAddrIn) -> Outcome<()>,
) -> Outcome<()> {
    // SAFETY: the caller's address contract.
    match unsafe { read_addr(addr, len) } {
        Some(a) => run(what, fd, || op(h, fd, &a)),
        None => Outcome::Error(libc::EFAULT),
    }
}

/// Shared body of getsockname/getpeername.
///
/// # Safety
/// `addr`/`len` per the C contract of `getsockname`.
unsafe fn name_of(
    h: &Handle,
    what: &str,
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    op: fn(&Handle, c_int) -> Outcome<SocketAddr>,
) -> Outcome<()> {
    if addr.is_null() || len.is_null() {
        return Outcome::Error(libc::EFAULT);
    }
    // SAFETY: `addr`/`len` per the caller's contract.
    run(what, fd, || op(h, fd)).and_then(|a| Outcome::from(unsafe { write_addr(&a, addr, len) }))
}
// ---------------------------------------------------------------------------------------------
// Exports.

/// `socket(2)`: AF_INET/AF_INET6 datagram sockets are registered with the netserver.
///
/// # Safety
/// C contract of `socket`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY (all `real::` calls below): forwarded under the caller's C contract.
    let Some(_g) = guard::enter() else {
        return unsafe { real::socket(domain, ty, protocol) };
    };
    let outcome = run("socket", -1, || api::socket(domain, ty, protocol));
    to_c(outcome, || unsafe { real::socket(domain, ty, protocol) })
}

/// `bind(2)`: the first bind decides msock or kernel.
///
/// # Safety
/// C contract of `bind`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::bind(fd, addr, len) };
    // SAFETY: `addr` valid for `len` bytes per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        with_addr(h, "bind", fd, addr, len, api::bind)
    })
}

/// `connect(2)`.
///
/// # Safety
/// C contract of `connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::connect(fd, addr, len) };
    // SAFETY: `addr` valid for `len` bytes per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        with_addr(h, "connect", fd, addr, len, api::connect)
    })
}

/// `send(2)`.
///
/// # Safety
/// C contract of `send`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::send(fd, buf, len, flags) };
    // SAFETY: `buf` valid for `len` bytes per the C contract; no address.
    on_fd(fd, real_call, |h| unsafe {
        send_one(h, "send", fd, buf, len, flags, std::ptr::null(), 0)
    })
}

/// `sendto(2)`.
///
/// # Safety
/// C contract of `sendto`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::sendto(fd, buf, len, flags, addr, alen) };
    // SAFETY: `buf`/`addr` valid for their lengths per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        send_one(h, "sendto", fd, buf, len, flags, addr, alen)
    })
}

/// `sendmsg(2)`. Ancillary data (`msg_control`) is ignored on msock sockets.
///
/// # Safety
/// C contract of `sendmsg`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::sendmsg(fd, msg, flags) };
    // SAFETY: `msg` per the C contract.
    on_fd(fd, real_call, |h| unsafe { send_msg(h, fd, msg, flags) })
}

/// `sendmmsg(2)`: sends until one fails; an error is returned only if nothing was sent.
///
/// # Safety
/// C contract of `sendmmsg`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::sendmmsg(fd, msgs, vlen, flags) };
    on_fd(fd, real_call, |h| {
        if vlen > 0 && msgs.is_null() {
            return Outcome::Error(libc::EFAULT);
        }
        // SAFETY: `msgs` holds `vlen` entries (checked non-null) per the C contract; so does
        // each entry's msghdr. A bypass (decided for the kernel on the first send) lets libc
        // do the rest of the call.
        unsafe {
            each_mmsg(
                msgs,
                vlen,
                |_, m| send_msg(h, fd, m, flags),
                || true,
                |sent, vlen| real::sendmmsg(fd, msgs.add(sent), (vlen - sent) as c_uint, flags),
            )
        }
    })
}

/// `recv(2)`.
///
/// # Safety
/// C contract of `recv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::recv(fd, buf, len, flags) };
    // SAFETY: buffer per the C contract; no address wanted.
    on_fd(fd, real_call, |h| unsafe {
        recv_one(
            h,
            fd,
            buf,
            len,
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    })
}

/// `recvfrom(2)`.
///
/// # Safety
/// C contract of `recvfrom`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::recvfrom(fd, buf, len, flags, addr, alen) };
    // SAFETY: buffers per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        recv_one(h, fd, buf, len, flags, addr, alen)
    })
}

/// `recvmsg(2)`: fills `msg_name`, sets `msg_flags` (MSG_TRUNC), produces no ancillary data.
///
/// # Safety
/// C contract of `recvmsg`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if guard::inside() {
        // msock's own control traffic: descriptors it receives are its own.
        // SAFETY: forwarded under the caller's C contract.
        let n = unsafe { real::recvmsg(fd, msg, flags) };
        if n >= 0 {
            // SAFETY: `msg` was just filled by the kernel.
            unsafe { protect_passed_fds(msg) };
        }
        return n;
    }
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::recvmsg(fd, msg, flags) };
    // SAFETY: `msg` per the C contract.
    on_fd(fd, real_call, |h| unsafe { recv_msg(h, fd, msg, flags) })
}

/// Makes every descriptor an SCM_RIGHTS message in `msg` carried msock's own: moved to a
/// high number (the message is rewritten) and protected (`client::fdguard`).
///
/// # Safety
/// `msg` must be a msghdr the kernel just filled (valid control buffer).
unsafe fn protect_passed_fds(msg: *const msghdr) {
    if msg.is_null() {
        return;
    }
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / size_of::<c_int>();
                for i in 0..count {
                    let slot = data.add(i);
                    let fd = slot.read_unaligned();
                    // Moved high and protected; the message now names the new number.
                    let moved = core_stack::client::sys::own_raw(fd);
                    if moved != fd {
                        real::close(fd);
                        slot.write_unaligned(moved);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// `recvmmsg(2)`. Like Linux, the timeout is checked only after each datagram; with
/// MSG_WAITFORONE only the first receive may block.
///
/// # Safety
/// C contract of `recvmmsg`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::recvmmsg(fd, msgs, vlen, flags, timeout) };
    on_fd(fd, real_call, |h| {
        if vlen > 0 && msgs.is_null() {
            return Outcome::Error(libc::EFAULT);
        }
        let deadline = if timeout.is_null() {
            None
        } else {
            // SAFETY: non-null timespec per the C contract.
            let ts = unsafe { *timeout };
            if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
                return Outcome::Error(libc::EINVAL);
            }
            Some(Instant::now() + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
        };
        let first = flags & !libc::MSG_WAITFORONE;
        // With MSG_WAITFORONE, every receive after the first is non-blocking.
        let later = if flags & libc::MSG_WAITFORONE != 0 {
            first | libc::MSG_DONTWAIT
        } else {
            first
        };
        // SAFETY: `msgs` holds `vlen` entries (checked non-null) per the C contract; so does
        // each entry's msghdr. A bypass lets libc do the whole call.
        unsafe {
            each_mmsg(
                msgs,
                vlen,
                |i, m| recv_msg(h, fd, m, if i == 0 { first } else { later }),
                || deadline.is_none_or(|d| Instant::now() < d),
                |_, vlen| real::recvmmsg(fd, msgs, vlen as c_uint, flags, timeout),
            )
        }
    })
}

/// `read(2)`: on a msock socket, `recv(fd, buf, len, 0)`.
///
/// # Safety
/// C contract of `read`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::read(fd, buf, len) };
    // SAFETY: buffer per the C contract; no address wanted.
    on_fd(fd, real_call, |h| unsafe {
        recv_one(
            h,
            fd,
            buf,
            len,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    })
}

/// `__read_chk` (`read` under `_FORTIFY_SOURCE`).
///
/// # Safety
/// C contract of `__read_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
) -> ssize_t {
    if len > buflen {
        // libc's version reports the overflow and aborts.
        // SAFETY: forwarded under the caller's C contract.
        return unsafe { real::__read_chk(fd, buf, len, buflen) };
    }
    // SAFETY: same contract as `read` once the bound is checked.
    unsafe { read(fd, buf, len) }
}

/// `write(2)`: on a msock socket, `send(fd, buf, len, 0)`.
///
/// # Safety
/// C contract of `write`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::write(fd, buf, len) };
    // SAFETY: buffer per the C contract; no address.
    on_fd(fd, real_call, |h| unsafe {
        send_one(h, "write", fd, buf, len, 0, std::ptr::null(), 0)
    })
}

/// `readv(2)`.
///
/// # Safety
/// C contract of `readv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::readv(fd, iov, cnt) };
    on_fd(fd, real_call, |h| {
        if cnt < 0 {
            return Outcome::Error(libc::EINVAL);
        }
        // SAFETY: iovecs per the C contract.
        Outcome::from(unsafe { iov_slices_mut(iov, cnt as usize) })
            .and_then(|mut bufs| run("readv", fd, || api::recv(h, fd, &mut bufs, 0)).map(|r| r.len))
    })
}

/// `writev(2)`.
///
/// # Safety
/// C contract of `writev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::writev(fd, iov, cnt) };
    on_fd(fd, real_call, |h| {
        if cnt < 0 {
            return Outcome::Error(libc::EINVAL);
        }
        // SAFETY: iovecs per the C contract.
        Outcome::from(unsafe { iov_slices(iov, cnt as usize) })
            .and_then(|bufs| run("writev", fd, || api::send(h, fd, &bufs, 0, None)))
    })
}

/// `__recv_chk` (`recv` under `_FORTIFY_SOURCE`).
///
/// # Safety
/// C contract of `__recv_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if len > buflen {
        // SAFETY: forwarded under the caller's C contract.
        return unsafe { real::__recv_chk(fd, buf, len, buflen, flags) };
    }
    // SAFETY: same contract as `recv` once the bound is checked.
    unsafe { recv(fd, buf, len, flags) }
}

/// `__recvfrom_chk` (`recvfrom` under `_FORTIFY_SOURCE`).
///
/// # Safety
/// C contract of `__recvfrom_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if len > buflen {
        // SAFETY: forwarded under the caller's C contract.
        return unsafe { real::__recvfrom_chk(fd, buf, len, buflen, flags, addr, alen) };
    }
    // SAFETY: same contract as `recvfrom` once the bound is checked.
    unsafe { recvfrom(fd, buf, len, flags, addr, alen) }
}

/// `close(2)`: a msock socket is released when its last descriptor closes; the descriptor
/// itself is always closed with the real `close`.
///
/// # Safety
/// C contract of `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if guard::inside() {
        // msock closing one of its own descriptors: the number is free for the program.
        fdguard::release(fd);
        // SAFETY: plain forward.
        return unsafe { real::close(fd) };
    }
    if fdguard::is_protected(fd) {
        // msock's own (control connection, channel...): not open as far as the program knows.
        msock_debug!("close(fd {fd}): msock's own descriptor, refused");
        set_errno(libc::EBADF);
        return -1;
    }
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::close(fd) };
    on_fd(fd, real_call, |h| run("close", fd, || api::close(h, fd)))
}

/// `close_range(2)`: the program's descriptors in the range, never msock's own.
///
/// # Safety
/// C contract of `close_range`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if guard::inside() || !api::active() && !fdguard_any() {
        // SAFETY: plain forward.
        return unsafe { real::close_range(first, last, flags) };
    }
    if first > last {
        set_errno(libc::EINVAL);
        return -1;
    }
    // msock sockets in the range are closed through msock (their endpoints released).
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        for sock_fd in api::fds_in(first, last) {
            // SAFETY: an open descriptor of the program's.
            unsafe { close(sock_fd) };
        }
    }
    for (a, b) in fdguard::unprotected_runs(first, last) {
        // SAFETY: forwarded range, msock's own descriptors excluded.
        if unsafe { real::close_range(a, b, flags) } != 0 {
            return -1;
        }
    }
    0
}

/// `closefrom(3)`: `close_range(lowfd, ~0, 0)` without msock's own descriptors.
///
/// # Safety
/// C contract of `closefrom`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(lowfd: c_int) {
    let first = c_uint::try_from(lowfd.max(0)).unwrap_or(0);
    // SAFETY: same contract.
    unsafe { close_range(first, c_uint::MAX, 0) };
}

/// Whether msock holds any descriptor of its own (a session exists).
fn fdguard_any() -> bool {
    api::has_session()
}

/// `getsockname(2)`.
///
/// # Safety
/// C contract of `getsockname`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::getsockname(fd, addr, len) };
    // SAFETY: `addr`/`len` per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        name_of(h, "getsockname", fd, addr, len, api::getsockname)
    })
}

/// `getpeername(2)`.
///
/// # Safety
/// C contract of `getpeername`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::getpeername(fd, addr, len) };
    // SAFETY: `addr`/`len` per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        name_of(h, "getpeername", fd, addr, len, api::getpeername)
    })
}

/// `getsockopt(2)`: values are truncated to `*optlen` like the kernel does.
///
/// # Safety
/// C contract of `getsockopt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::getsockopt(fd, level, name, val, len) };
    on_fd(fd, real_call, |h| {
        if len.is_null() {
            return Outcome::Error(libc::EFAULT);
        }
        // SAFETY: `len` non-null per the C contract.
        let cap = unsafe { *len } as i32;
        if cap < 0 {
            return Outcome::Error(libc::EINVAL);
        }
        run("getsockopt", fd, || api::getsockopt(h, fd, level, name)).and_then(|v: Vec<u8>| {
            let n = v.len().min(cap as usize);
            if n > 0 && val.is_null() {
                return Outcome::Error(libc::EFAULT);
            }
            // SAFETY: `val` holds `cap` ≥ n bytes per the C contract.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), val.cast::<u8>(), n);
                *len = n as socklen_t;
            }
            Outcome::Done(())
        })
    })
}

/// `setsockopt(2)`.
///
/// # Safety
/// C contract of `setsockopt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::setsockopt(fd, level, name, val, len) };
    on_fd(fd, real_call, |h| {
        // SAFETY: `val` valid for `len` bytes per the C contract.
        Outcome::from(unsafe { slice(val, len as size_t) }).and_then(|value| {
            run("setsockopt", fd, || {
                api::setsockopt(h, fd, level, name, value)
            })
        })
    })
}

fn fcntl_common(
    fd: c_int,
    cmd: c_int,
    arg: c_ulong,
    real_fn: unsafe fn(c_int, c_int, c_ulong) -> c_int,
) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real_fn(fd, cmd, arg) };
    on_fd(fd, real_call, |h| {
        run("fcntl", fd, || api::fcntl(h, fd, cmd, arg))
    })
}

/// `fcntl(2)`: F_GETFL/F_SETFL track O_NONBLOCK, F_DUPFD* keep the fd table right; the rest
/// applies to the descriptor. Fixed three-argument form: see the crate documentation.
///
/// # Safety
/// C contract of `fcntl`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_common(fd, cmd, arg, real::fcntl)
}

/// `fcntl64`: as [`fcntl`].
///
/// # Safety
/// C contract of `fcntl64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    fcntl_common(fd, cmd, arg, real::fcntl64)
}

/// `ioctl(2)`: FIONREAD/SIOCINQ (size of the next datagram), SIOCOUTQ (0: sends complete
/// synchronously) and FIONBIO are served by msock; every other request goes to the real ioctl
/// on the placeholder socket (interface queries such as SIOCGIFINDEX work on any socket).
///
/// # Safety
/// C contract of `ioctl`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::ioctl(fd, request, arg) };
    on_fd(fd, real_call, |h| {
        let ptr = arg as *mut c_int;
        match request {
            libc::FIONREAD | libc::TIOCOUTQ if ptr.is_null() => Outcome::Error(libc::EFAULT),
            libc::FIONREAD => run("ioctl", fd, || api::fionread(h, fd)).map(|n| {
                // SAFETY: FIONREAD's argument is an `int *` (checked non-null).
                unsafe { *ptr = n };
                0
            }),
            // SIOCOUTQ has the value of TIOCOUTQ.
            libc::TIOCOUTQ => run("ioctl", fd, || api::outq(h, fd)).map(|n| {
                // SAFETY: SIOCOUTQ's argument is an `int *` (checked non-null).
                unsafe { *ptr = n };
                0
            }),
            libc::FIONBIO if ptr.is_null() => Outcome::Error(libc::EFAULT),
            libc::FIONBIO => {
                // SAFETY: FIONBIO's argument is a readable `int *` (checked non-null).
                let on = unsafe { *ptr } != 0;
                run("ioctl", fd, || api::fionbio(h, fd, on)).map(|()| 0)
            }
            _ => Outcome::Bypass,
        }
    })
}

/// `dup(2)`: a duplicate of a msock descriptor is the same socket.
///
/// # Safety
/// C contract of `dup`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::dup(fd) };
    on_fd(fd, real_call, |h| run("dup", fd, || api::dup(h, fd)))
}

/// `dup2(2)`: also releases the socket `new` referred to, if it was msock's.
///
/// # Safety
/// C contract of `dup2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::dup2(old, new) };
    on_pair(old, new, real_call, |ho| {
        run("dup2", old, || api::dup3(ho, old, new, None))
    })
}

/// `dup3(2)`.
///
/// # Safety
/// C contract of `dup3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::dup3(old, new, flags) };
    on_pair(old, new, real_call, |ho| {
        run("dup3", old, || api::dup3(ho, old, new, Some(flags)))
    })
}

/// [`on_fd`] for dup2/dup3: msock's when either descriptor is.
fn on_pair(
    old: c_int,
    new: c_int,
    real_call: impl Fn() -> c_int,
    op: impl FnOnce(Option<&Handle>) -> Outcome<c_int>,
) -> c_int {
    let Some(_g) = guard::enter() else {
        // msock's own dup3 lands on program numbers only; whatever `new` was is gone.
        fdguard::release(new);
        return real_call();
    };
    if fdguard::is_protected(new) {
        // msock's own descriptor: the program never opened it, and msock cannot move it.
        set_errno(libc::EBUSY);
        return -1;
    }
    let (ho, hn) = (api::lookup(old), api::lookup(new));
    if ho.is_none() && hn.is_none() {
        return real_call();
    }
    to_c(op(ho.as_ref()), real_call)
}

/// `listen(2)`: a msock TCP socket listens at the netserver.
///
/// # Safety
/// C contract of `listen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::listen(fd, backlog) };
    on_fd(fd, real_call, |h| {
        run("listen", fd, || api::listen(h, fd, backlog))
    })
}

/// Shared body of accept/accept4.
///
/// # Safety
/// `addr`/`len` per the C contract of `accept4` (either may be null).
unsafe fn accept_common(
    h: &Handle,
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Outcome<c_int> {
    run("accept", fd, || api::accept(h, fd, flags)).and_then(|(new, peer)| {
        // SAFETY: `addr`/`len` per the caller's contract (null allowed).
        match unsafe { write_addr(&peer, addr, len) } {
            Ok(()) => Outcome::Done(new),
            Err(e) => Outcome::Error(e),
        }
    })
}

/// `accept(2)`.
///
/// # Safety
/// C contract of `accept`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::accept(fd, addr, len) };
    // SAFETY: `addr`/`len` per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        accept_common(h, fd, addr, len, 0)
    })
}

/// `accept4(2)`: SOCK_NONBLOCK / SOCK_CLOEXEC on the new descriptor.
///
/// # Safety
/// C contract of `accept4`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::accept4(fd, addr, len, flags) };
    // SAFETY: `addr`/`len` per the C contract.
    on_fd(fd, real_call, |h| unsafe {
        accept_common(h, fd, addr, len, flags)
    })
}

/// `shutdown(2)`.
///
/// # Safety
/// C contract of `shutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::shutdown(fd, how) };
    on_fd(fd, real_call, |h| {
        run("shutdown", fd, || api::shutdown(h, fd, how))
    })
}

/// Copies up to `count` bytes from file `in_fd` (at `*offset`, or at its file position when
/// `offset` is null, which then advances by what was sent) to msock stream socket `h`.
/// Returns the bytes sent.
///
/// # Safety
/// `offset` null or valid for reads and writes.
unsafe fn file_to_socket(
    h: &Handle,
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off64_t,
    count: usize,
) -> Outcome<usize> {
    const CHUNK: usize = 256 * 1024;
    // SAFETY: `offset` per the caller.
    let explicit = (!offset.is_null()).then(|| unsafe { *offset });
    // SAFETY: plain syscall on the caller's descriptor.
    let start = match explicit {
        Some(o) => o,
        None => unsafe { libc::lseek64(in_fd, 0, libc::SEEK_CUR) },
    };
    // Not seekable (a pipe): bytes are consumed as read and sent whole, blocking.
    let seekable = start >= 0;
    let mut buf = vec![0u8; CHUNK.min(count.max(1))];
    let mut sent = 0usize;
    while sent < count {
        let want = buf.len().min(count - sent);
        // SAFETY: `buf` is valid for `want` bytes; the descriptors are the caller's.
        let n = unsafe {
            if seekable {
                libc::pread64(in_fd, buf.as_mut_ptr().cast(), want, start + sent as i64)
            } else {
                libc::read(in_fd, buf.as_mut_ptr().cast(), want)
            }
        };
        if n < 0 {
            // SAFETY: reading this thread's errno.
            let e = unsafe { *libc::__errno_location() };
            if sent > 0 {
                break;
            }
            return Outcome::Error(e);
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        let mut off = 0usize;
        let mut short = false;
        while off < n {
            let flags = if seekable { 0 } else { libc::MSG_NOSIGNAL };
            match run("sendfile", out_fd, || {
                api::send(h, out_fd, &[&buf[off..n]], flags, None)
            }) {
                Outcome::Done(m) => {
                    off += m;
                    if seekable && m < n - off + m {
                        short = true;
                        break;
                    }
                }
                Outcome::Error(libc::EAGAIN) if !seekable => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Outcome::Error(e) if sent + off == 0 => return Outcome::Error(e),
                _ => {
                    short = true;
                    break;
                }
            }
        }
        sent += off;
        if short {
            break;
        }
    }
    match explicit {
        // SAFETY: `offset` non-null per the check above.
        Some(o) => unsafe { *offset = o + sent as i64 },
        None if seekable => {
            // SAFETY: plain syscall on the caller's descriptor.
            unsafe { libc::lseek64(in_fd, start + sent as i64, libc::SEEK_SET) };
        }
        None => {}
    }
    Outcome::Done(sent)
}

/// `sendfile(2)` to a msock TCP socket: the file is read and the bytes sent.
///
/// # Safety
/// C contract of `sendfile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::sendfile(out_fd, in_fd, offset, count) };
    on_fd(out_fd, real_call, |h| {
        if !api::is_stream(h) {
            return Outcome::Bypass;
        }
        // SAFETY: off_t is off64_t on the supported 64-bit targets.
        unsafe { file_to_socket(h, out_fd, in_fd, offset.cast(), count) }
    })
}

/// `sendfile64`: as [`sendfile`].
///
/// # Safety
/// C contract of `sendfile64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off64_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::sendfile64(out_fd, in_fd, offset, count) };
    on_fd(out_fd, real_call, |h| {
        if !api::is_stream(h) {
            return Outcome::Bypass;
        }
        // SAFETY: `offset` per the C contract.
        unsafe { file_to_socket(h, out_fd, in_fd, offset, count) }
    })
}

/// `splice(2)` from a file or pipe to a msock TCP socket (read, then sent). Other directions
/// pass through (the kernel refuses a placeholder it cannot splice into meaningfully).
///
/// # Safety
/// C contract of `splice`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    // SAFETY: forwarded under the caller's C contract.
    let real_call = || unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) };
    on_fd(fd_out, real_call, |h| {
        if !api::is_stream(h) || api::lookup(fd_in).is_some() {
            return Outcome::Bypass;
        }
        // SAFETY: `off_in` per the C contract.
        unsafe { file_to_socket(h, fd_out, fd_in, off_in, len) }
    })
}

/// Busy-poll budget (`MSOCK_BUSY_POLL=<microseconds>`, default 0 = off): before sleeping in
/// poll/select, spin for up to this long, processing the channels of the msock sockets in the
/// set inline and re-checking readiness without blocking.
fn busy_poll(
    timeout: Option<Duration>,
    fds: impl Fn() -> Vec<c_int>,
    mut try_once: impl FnMut() -> c_int,
) -> Option<c_int> {
    let budget = api::busy_poll_budget()?;
    if timeout == Some(Duration::ZERO) {
        return None;
    }
    let ours: Vec<Handle> = fds().into_iter().filter_map(api::lookup).collect();
    if ours.is_empty() {
        return None;
    }
    let budget = timeout.map_or(budget, |t| t.min(budget));
    let start = Instant::now();
    loop {
        for h in &ours {
            api::drive(h);
        }
        let n = try_once();
        if n != 0 || start.elapsed() >= budget {
            return (n != 0).then_some(n);
        }
        std::hint::spin_loop();
    }
}

/// `poll(2)`: placeholders' kernel readiness mirrors the sockets, so this passes through (after
/// the optional `MSOCK_BUSY_POLL` spin).
///
/// # Safety
/// C contract of `poll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let Some(_g) = guard::enter() else {
        return unsafe { real::poll(fds, n, timeout) };
    };
    if !api::active() || fds.is_null() {
        return unsafe { real::poll(fds, n, timeout) };
    }
    let t = (timeout >= 0).then(|| Duration::from_millis(timeout as u64));
    let list = || {
        // SAFETY: `fds` holds `n` entries per the C contract.
        unsafe { std::slice::from_raw_parts(fds, n as usize) }
            .iter()
            .map(|p| p.fd)
            .collect()
    };
    let started = Instant::now();
    // SAFETY: a zero-timeout poll on the caller's array.
    if let Some(r) = busy_poll(t, list, || unsafe { real::poll(fds, n, 0) }) {
        return r;
    }
    let remaining = match t {
        Some(t) => t
            .saturating_sub(started.elapsed())
            .as_millis()
            .min(c_int::MAX as u128) as c_int,
        None => timeout,
    };
    unsafe { real::poll(fds, n, remaining) }
}

/// `ppoll(2)`: as [`poll`].
///
/// # Safety
/// C contract of `ppoll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let Some(_g) = guard::enter() else {
        return unsafe { real::ppoll(fds, n, ts, mask) };
    };
    if !api::active() || fds.is_null() {
        return unsafe { real::ppoll(fds, n, ts, mask) };
    }
    // SAFETY: a non-null timespec per the C contract.
    let t = (!ts.is_null()).then(|| unsafe { *ts });
    let t = t.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    let list = || {
        // SAFETY: `fds` holds `n` entries per the C contract.
        unsafe { std::slice::from_raw_parts(fds, n as usize) }
            .iter()
            .map(|p| p.fd)
            .collect()
    };
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a zero-timeout ppoll on the caller's array and mask.
    if let Some(r) = busy_poll(t, list, || unsafe { real::ppoll(fds, n, &zero, mask) }) {
        return r;
    }
    unsafe { real::ppoll(fds, n, ts, mask) }
}

/// The descriptors set in an fd_set triple.
///
/// # Safety
/// Each set pointer is null or valid for `n` bits.
unsafe fn fdset_members(n: c_int, sets: [*mut libc::fd_set; 3]) -> Vec<c_int> {
    let n = n.clamp(0, libc::FD_SETSIZE as c_int);
    (0..n)
        // SAFETY: fd < n ≤ FD_SETSIZE and each set is valid per the caller.
        .filter(|&fd| {
            sets.iter()
                .any(|s| !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) })
        })
        .collect()
}

/// `select(2)`: passes through (after the optional `MSOCK_BUSY_POLL` spin).
///
/// # Safety
/// C contract of `select`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    let Some(_g) = guard::enter() else {
        return unsafe { real::select(n, r, w, e, tv) };
    };
    if !api::active() || api::busy_poll_budget().is_none() {
        return unsafe { real::select(n, r, w, e, tv) };
    }
    // SAFETY: a non-null timeval per the C contract.
    let t = (!tv.is_null()).then(|| unsafe { *tv });
    let t = t.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            (t.tv_usec.clamp(0, 999_999) * 1000) as u32,
        )
    });
    // SAFETY: the caller's sets, `n` bits each.
    let list = || unsafe { fdset_members(n, [r, w, e]) };
    let copy = |s: *mut libc::fd_set| (!s.is_null()).then(|| unsafe { *s });
    let (r0, w0, e0) = (copy(r), copy(w), copy(e));
    let restore = |s: *mut libc::fd_set, v: Option<libc::fd_set>| {
        if let Some(v) = v {
            // SAFETY: `s` is the caller's non-null set.
            unsafe { *s = v };
        }
    };
    let try_once = || {
        restore(r, r0);
        restore(w, w0);
        restore(e, e0);
        let mut zero = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: zero-timeout select on the caller's sets.
        unsafe { real::select(n, r, w, e, &mut zero) }
    };
    if let Some(res) = busy_poll(t, list, try_once) {
        return res;
    }
    restore(r, r0);
    restore(w, w0);
    restore(e, e0);
    unsafe { real::select(n, r, w, e, tv) }
}

/// `pselect(2)`: as [`select`].
///
/// # Safety
/// C contract of `pselect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    let Some(_g) = guard::enter() else {
        return unsafe { real::pselect(n, r, w, e, ts, mask) };
    };
    if !api::active() || api::busy_poll_budget().is_none() {
        return unsafe { real::pselect(n, r, w, e, ts, mask) };
    }
    // SAFETY: a non-null timespec per the C contract.
    let t = (!ts.is_null()).then(|| unsafe { *ts });
    let t = t.map(|t| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    });
    // SAFETY: the caller's sets, `n` bits each.
    let list = || unsafe { fdset_members(n, [r, w, e]) };
    let copy = |s: *mut libc::fd_set| (!s.is_null()).then(|| unsafe { *s });
    let (r0, w0, e0) = (copy(r), copy(w), copy(e));
    let restore = |s: *mut libc::fd_set, v: Option<libc::fd_set>| {
        if let Some(v) = v {
            // SAFETY: `s` is the caller's non-null set.
            unsafe { *s = v };
        }
    };
    let try_once = || {
        restore(r, r0);
        restore(w, w0);
        restore(e, e0);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: zero-timeout pselect on the caller's sets and mask.
        unsafe { real::pselect(n, r, w, e, &zero, mask) }
    };
    if let Some(res) = busy_poll(t, list, try_once) {
        return res;
    }
    restore(r, r0);
    restore(w, w0);
    restore(e, e0);
    unsafe { real::pselect(n, r, w, e, ts, mask) }
}

/// Body of `msock_is_msock_fd` (see `capi`).
pub(crate) fn is_msock_fd(fd: c_int) -> c_int {
    let Some(_g) = guard::enter() else { return 0 };
    match catch_unwind(|| api::is_msock_fd(fd)) {
        Ok(true) => 1,
        _ => 0,
    }
}
