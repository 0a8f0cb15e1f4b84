//! The descriptor-passing system calls of the control transport that cannot be written in safe
//! Rust: receiving a message with `SCM_RIGHTS` descriptors (turning the kernel's raw numbers into
//! [`OwnedFd`]s, including the ones a truncated control buffer still delivered, so none leak)
//! and `accept4`. Everything else of `control::transport` is safe code over `nix`.
//! It is the only file of `control` allowed `unsafe`. Contract: on success every descriptor the kernel installed is
//! returned owned (close-on-exec); on error none remains open.
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Largest number of descriptors [`recv_with_fds_into`] accepts in one message.
pub const MAX_FDS: usize = 8;

/// Control buffer: room for one SCM_RIGHTS message of [`MAX_FDS`] descriptors, aligned for
/// `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; 64]);

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the message copied into the buffer (≤ buffer length).
    pub len: usize,
    /// Every descriptor that arrived with it.
    pub fds: Vec<OwnedFd>,
    /// `msg_flags` as the kernel returned them (MSG_TRUNC, MSG_CTRUNC, ...).
    pub flags: i32,
}

/// Marks the first `len` bytes of `buf`'s spare capacity, filled by [`recv_with_fds_into`], as
/// the vector's contents (`buf` was empty). Panics if `len` exceeds the capacity (a kernel
/// never returns more than it was given).
pub fn set_received_len(buf: &mut Vec<u8>, len: usize) {
    assert!(
        buf.is_empty() && len <= buf.capacity(),
        "received length past the buffer"
    );
    // SAFETY: recvmsg initialised `len` bytes of the spare capacity, which `len` does not
    // exceed (checked), and the vector held nothing before.
    unsafe { buf.set_len(len) };
}

/// Receives one message into uninitialised memory (a `Vec`'s spare capacity, so a 70 KB
/// receive buffer is not zeroed for every message) with the descriptors it carries (closed on
/// exec). The first `len` bytes are initialised on return.
pub fn recv_with_fds_into(
    sock: BorrowedFd<'_>,
    buf: &mut [std::mem::MaybeUninit<u8>],
    flags: i32,
) -> io::Result<Received> {
    let mut control = ControlBuffer([0; 64]);
    // SAFETY: CMSG_SPACE is pure arithmetic.
    let control_len = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    debug_assert!(control_len <= control.0.len());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control_len.min(control.0.len());
    // SAFETY: `msg` points at one iovec covering `buf` (writable, `buf.len()` bytes) and at
    // `control` (writable, `msg_controllen` bytes); both outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with well-formed cmsghdrs;
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay within that length and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: non-null cmsg pointers from CMSG_FIRSTHDR/NXTHDR point at a complete header
        // inside `control` (aligned by construction).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: arithmetic only.
            let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (header.cmsg_len as usize).saturating_sub(data_offset) / size_of::<RawFd>();
            // SAFETY: CMSG_DATA of a header inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` ints after the header, within `cmsg_len`
                // (which it bounded by msg_controllen); the data may be unaligned for i32 in
                // principle, hence read_unaligned.
                let raw = unsafe { data.add(i).read_unaligned() };
                if raw >= 0 {
                    // SAFETY: SCM_RIGHTS installed `raw` as a new descriptor in this process
                    // for this message only; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: `cmsg` is a header inside the buffer described by `msg`.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        len: n as usize,
        fds,
        flags: msg.msg_flags,
    })
}

/// `accept4(2)` with the given `SOCK_*` flags.
pub fn accept4(listener: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: no address is requested (null pointers are allowed).
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
