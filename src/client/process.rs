//! Sockets across `fork` and `execve` (paper §3.1: "a socket shared by several processes is
//! flushed back to the network server; it is cached again when a close leaves one holder";
//! §4.2: `SO_CONCURRENT_SERVER`, delayed caching for inetd-style servers).
//!
//! **fork.** [`fork`] takes the fd table's lock and every TCP socket's state lock, flushes
//! every TCP connection cached in this process (its state then lives in the netserver,
//! reachable from both processes) except one accepted through a `SO_CONCURRENT_SERVER`
//! listener and never cached (it is still in the netserver: *deferred*), asks the netserver
//! for the child's session (`Fork`, naming every TCP endpoint this process holds: the child is
//! a holder of each *before* the fork, so a parent that closes its copy at once cannot end a
//! connection the child still holds) and runs the real `fork`, all under those locks: no other
//! thread closes, adds or caches a socket in between, and none is inside one when the address
//! space is copied (`client::forksafe`). The child says `Hello` on its new control connection, gets its own receive
//! and timer threads, and adopts every inherited TCP socket; a deferred connection is cached
//! into the child at its first use (Fig. 5: accept, fork, the child serves: one cache, no
//! flush). A connection the parent shares with the child is cached again by whichever process
//! is left holding it alone (the netserver's `SoleHolder` upcall).
//!
//! **exec.** [`exec_prepare`] flushes every cached connection, keeps the session's
//! descriptors open across `execve`, and describes the session and every TCP socket whose
//! program descriptors survive in `MSOCK_INHERIT` ([`super::inherit`]); [`adopt_inherited`]
//! (the new image's constructor) rebuilds them. Sockets whose descriptors are all
//! close-on-exec are closed by the new image, because a failed `execve` keeps them
//! ([`exec_failed`] undoes the descriptor flag changes and caches the connections again).
//!
//! UDP sockets are not shared: a child sees its parent's cached UDP sockets as detached
//! (EBADFD, `runtime`), and a new image does not inherit them.
#![deny(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use super::inherit::{ENV, Inheritance, InheritedRelay, InheritedSocket};
use super::relay::{self, RelayedSocket};
use super::runtime::{self, table};
use super::sys;
use super::tcp::{ForkHold, TcpSocket};
use crate::control::{EndpointId, Reply, Request};
use crate::msock_debug;

/// The name of the exec hand-off variable (for the C edge, which filters it out of `envp`).
pub const INHERIT_ENV: &str = ENV;

/// `fork` with msock's sockets: takes the runtime's locks, flushes, asks the netserver for
/// the child's session and runs `real_fork` with them held by this thread (they are released
/// in both processes when it returns: `client::forksafe`), then sets the child up. Returns what
/// `real_fork` returned (-1 for a failed fork, errno untouched by this function afterwards).
///
/// A connection that cannot be flushed stays the parent's (the child sees it detached); the
/// `Result` is for future failures that must stop the fork.
pub fn fork(real_fork: impl FnOnce() -> i32) -> Result<i32, i32> {
    let (pid, sockets, child_control, shared) = {
        // Order: table, then each socket (no other thread holds two socket locks, and none
        // takes the table's while holding a socket's). Held from the flush through the `Fork`
        // request to the real fork: no other thread can close, add or cache again a socket in
        // between, so the netserver's holders are exactly what the child inherits.
        let held_table = table().hold_for_fork();
        let sockets = held_table.tcp_sockets();
        let mut held: Vec<_> = sockets.iter().map(|s| s.hold_for_fork()).collect();
        let (child_control, shared) = prepare_child_session(&sockets, &mut held)?;
        let pid = real_fork();
        drop(held);
        drop(held_table);
        (pid, sockets, child_control, shared)
    };
    if pid == 0 {
        // A panic here must not make the child look like a failed fork.
        let adopted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fork_child(child_control, &sockets, &shared)
        }));
        if adopted.is_err() {
            msock_debug!("fork child: internal panic while adopting; sockets detached");
        }
    } else if pid < 0 {
        msock_debug!("fork failed; the child's session is dropped");
    }
    // In the parent, our copy of the child's control connection goes (the child has its own;
    // if the fork failed, closing it ends that session and the netserver drops its holds).
    Ok(pid)
}

/// Flushes every cached connection and has the netserver make the child's session, holding
/// every TCP endpoint this process holds. The caller holds the fd table's lock and the lock of
/// every socket in `sockets` (`held`, in the same order), so the sockets stay as they will be
/// at the fork: the request names each endpoint this process holds and none it has cached.
/// (When another thread could close or cache a socket again between the flush and the
/// request, the netserver refused it, and under steady closes every retry too: the child's
/// sockets were all detached.)
fn prepare_child_session(
    sockets: &[Arc<TcpSocket>],
    held: &mut [ForkHold<'_>],
) -> Result<(Option<OwnedFd>, Vec<EndpointId>), i32> {
    let mut ids = Vec::new();
    for (sock, hold) in sockets.iter().zip(held.iter_mut()) {
        // A connection that cannot be flushed (the netserver is gone) stays the parent's; the
        // child sees it detached. fork itself never fails because of a socket.
        if let Err(e) = sock.flush_for_fork(hold) {
            msock_debug!("fork: endpoint {:?} not flushed (errno {e})", sock.id());
        }
        if let Some(id) = sock.shareable_id(hold) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Ok((None, ids));
    }
    let Ok(session) = runtime::session() else {
        return Ok((None, Vec::new()));
    };
    match session.request(&Request::Fork { ids: ids.clone() }, &[]) {
        Ok((Reply::Forked, fds)) => return Ok((fds.into_iter().next(), ids)),
        Ok(_) => msock_debug!("fork: unexpected reply to Fork"),
        Err(e) => msock_debug!("fork: the netserver refused Fork: errno {e}"),
    }
    // The child's sockets will be detached (EBADFD), as without a netserver.
    Ok((None, Vec::new()))
}

/// In the child after `fork`: drop the parent's session, adopt the new one and every
/// inherited TCP socket.
fn fork_child(control: Option<OwnedFd>, sockets: &[Arc<TcpSocket>], shared: &[EndpointId]) {
    runtime::drop_parent_session_in_child();
    let Some(control) = control else {
        return;
    };
    let session = match runtime::adopt_forked_session(control) {
        Ok(s) => s,
        Err(e) => {
            msock_debug!("fork child: no session (errno {e}); inherited sockets detached");
            return;
        }
    };
    // Only what the netserver made the child a holder of: a socket another thread bound,
    // listened on or accepted after the `Fork` request stays the parent's (detached here).
    for sock in sockets {
        // (An undecided socket has no endpoint yet: it decides through the child's session.)
        if sock.id().is_none_or(|id| shared.contains(&id)) {
            sock.adopt_session(session);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// exec

/// Descriptors whose FD_CLOEXEC [`exec_prepare`] cleared, and connections it flushed, for
/// [`exec_failed`].
static EXEC_UNDO: parking_lot::Mutex<Option<ExecUndo>> = parking_lot::Mutex::new(None);

struct ExecUndo {
    cleared: Vec<RawFd>,
    flushed: Vec<Arc<TcpSocket>>,
}

/// Before `execve`: flush, keep the session open, describe it. Returns the `NAME=value`
/// environment entry to add (`None` when this process has no msock TCP socket). Fails only
/// if the session's descriptors cannot be kept open across the exec.
pub fn exec_prepare() -> Result<Option<CString>, i32> {
    if !table().active() {
        return Ok(None);
    }
    // A connection the new image will have on a standard descriptor is relayed first: its
    // stdio would bypass the library (`client::relay`).
    for sock in table().tcp_sockets() {
        let on_standard = sock.fds().into_iter().any(|fd| {
            relay::wants_relay(fd) && sys::get_fd_flags(fd).is_ok_and(|f| f & libc::FD_CLOEXEC == 0)
        });
        if on_standard {
            match sock.to_relay() {
                Ok(relayed) => {
                    for fd in relayed.fds() {
                        table().insert(fd, runtime::Socket::Relayed(Arc::clone(&relayed)));
                    }
                }
                Err(e) => msock_debug!("exec: endpoint {:?} not relayed (errno {e})", sock.id()),
            }
        }
    }
    let sockets = table().tcp_sockets();
    let relayed = table().relayed_sockets();
    let datagram: Vec<EndpointId> = table()
        .sockets()
        .into_iter()
        .filter_map(|s| match s {
            runtime::Socket::Udp(u) => Some(u.id),
            _ => None,
        })
        .collect();
    // Without TCP sockets the session need not survive: its descriptors close with the exec
    // and the netserver reclaims what this process held (its UDP endpoints included).
    if sockets.is_empty() && relayed.is_empty() {
        return Ok(None);
    }
    let session = runtime::session()?;
    let mut flushed = Vec::new();
    for sock in &sockets {
        if sock.is_cached() {
            // One that cannot be flushed is not handed over (the new image sees a plain
            // descriptor); execve never fails because of a socket.
            match sock.flush() {
                Ok(()) => flushed.push(Arc::clone(sock)),
                Err(e) => msock_debug!("exec: endpoint {:?} not flushed (errno {e})", sock.id()),
            }
        }
    }
    let (control, upcall, region, stats) = session.inheritable_fds();
    let mut inheritance = Inheritance {
        pid: std::process::id(),
        control,
        upcall,
        region,
        stats,
        // UDP sockets live in this image only (their descriptors go on as kernel sockets):
        // their endpoints end with it.
        close: datagram,
        sockets: Vec::new(),
        relays: Vec::new(),
    };
    for sock in &sockets {
        let Some(rec) = sock.inherit_record() else {
            // Cached again by another thread since the flush: its state dies with this
            // image, so its endpoint must not outlive it.
            if sock.is_cached()
                && let Some(id) = sock.id()
            {
                inheritance.close.push(id);
            }
            continue;
        };
        let surviving: Vec<RawFd> = rec
            .fds
            .iter()
            .copied()
            .filter(|&fd| sys::get_fd_flags(fd).is_ok_and(|f| f & libc::FD_CLOEXEC == 0))
            .collect();
        if surviving.is_empty() {
            inheritance.close.push(rec.id);
        } else {
            inheritance.sockets.push(InheritedSocket {
                fds: surviving,
                ..rec
            });
        }
    }
    for r in &relayed {
        let surviving: Vec<RawFd> = r
            .fds()
            .into_iter()
            .filter(|&fd| sys::get_fd_flags(fd).is_ok_and(|f| f & libc::FD_CLOEXEC == 0))
            .collect();
        let Some(&first) = surviving.first() else {
            continue;
        };
        let Ok((_, ino)) = sys::identity(first) else {
            continue;
        };
        inheritance.relays.push(InheritedRelay {
            fds: surviving,
            ino,
            domain: r.domain,
            local: r.local,
            remote: r.remote,
        });
    }
    let mut cleared = Vec::new();
    let keep = [control, upcall, region, stats]
        .into_iter()
        .chain(inheritance.sockets.iter().map(|s| s.lib));
    for fd in keep {
        if sys::get_fd_flags(fd).is_ok_and(|f| f & libc::FD_CLOEXEC != 0) {
            sys::set_fd_flags(fd, 0).map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))?;
            cleared.push(fd);
        }
    }
    *EXEC_UNDO.lock() = Some(ExecUndo { cleared, flushed });
    let entry = format!("{ENV}={}", inheritance.encode());
    CString::new(entry).map(Some).map_err(|_| libc::EINVAL)
}

/// After a failed `execve`: descriptors close-on-exec again, connections cached again.
pub fn exec_failed() {
    let Some(undo) = EXEC_UNDO.lock().take() else {
        return;
    };
    for fd in undo.cleared {
        let _ = sys::set_fd_flags(fd, libc::FD_CLOEXEC);
    }
    for sock in undo.flushed {
        if let Err(e) = sock.cache() {
            msock_debug!("exec failed; connection stays flushed (cache: errno {e})");
        }
    }
}

/// In a new program image (the library's constructor): rebuilds what the previous image of
/// this process described in `MSOCK_INHERIT`, then removes the variable. Malformed or stale
/// descriptions are ignored (logged): the descriptors then stay what they are.
pub fn adopt_inherited() {
    let Some(value) = std::env::var_os(ENV) else {
        return;
    };
    remove_env();
    let Some(value) = value.to_str() else {
        msock_debug!("{ENV} is not UTF-8; ignored");
        return;
    };
    let inheritance = match Inheritance::parse(value) {
        Ok(i) => i,
        Err(e) => {
            msock_debug!("{e}; ignored");
            return;
        }
    };
    if inheritance.pid != std::process::id() {
        // Passed on by an image that did not load libmsock: not ours to take over.
        msock_debug!("{ENV} of pid {} ignored", inheritance.pid);
        return;
    }
    let session = match runtime::adopt_exec_session(&inheritance) {
        Ok(s) => s,
        Err(e) => {
            msock_debug!("{ENV}: session not adopted (errno {e}); sockets ignored");
            return;
        }
    };
    for id in &inheritance.close {
        close_endpoint(session, *id);
    }
    for rec in &inheritance.sockets {
        let valid = rec
            .fds
            .iter()
            .all(|&fd| sys::identity(fd).is_ok_and(|(_, ino)| ino == rec.ino));
        if !valid {
            msock_debug!(
                "{ENV}: endpoint {} no longer on its descriptors; closed",
                rec.id
            );
            close_endpoint(session, rec.id);
            // Its library end was left open for this image only.
            let _ = sys::close(rec.lib);
            continue;
        }
        match TcpSocket::from_inherited(session, rec) {
            Ok(sock) => {
                for &fd in &rec.fds {
                    table().insert(fd, runtime::Socket::Tcp(Arc::clone(&sock)));
                }
            }
            Err(e) => {
                msock_debug!("{ENV}: endpoint {} not adopted: errno {e}", rec.id);
                close_endpoint(session, rec.id);
            }
        }
    }
    for rec in &inheritance.relays {
        // Only descriptors still on the relay's socket (a program may have reused a number
        // before exec'ing through something that does not load libmsock).
        let fds: Vec<RawFd> = rec
            .fds
            .iter()
            .copied()
            .filter(|&fd| sys::identity(fd).is_ok_and(|(_, ino)| ino == rec.ino))
            .collect();
        if fds.is_empty() {
            continue;
        }
        let relayed = RelayedSocket::new(rec.domain, rec.local, rec.remote, fds.clone());
        for fd in fds {
            table().insert(fd, runtime::Socket::Relayed(Arc::clone(&relayed)));
        }
    }
    // The session's descriptors are ours again: close-on-exec, as at creation.
    for fd in [
        inheritance.control,
        inheritance.upcall,
        inheritance.region,
        inheritance.stats,
    ] {
        let _ = sys::set_fd_flags(fd, libc::FD_CLOEXEC);
    }
}

fn close_endpoint(session: &runtime::Session, id: EndpointId) {
    let _ = session.request(&Request::Close { id }, &[]);
}

#[allow(unsafe_code)]
fn remove_env() {
    // SAFETY: called from the library constructor only, before `main` and before any thread
    // of the program exists, so nothing reads or writes the environment concurrently.
    unsafe { std::env::remove_var(ENV) };
}
