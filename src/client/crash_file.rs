//! A cached TCP connection's crash-record file on the client side
//! ([`crate::stack::tcp::crash_record`] has the layout; docs/notes/tcp-ownership.md the plan):
//! a memfd of [`FILE_LEN`] bytes (sparse), sealed against shrinking and growing, mapped
//! read-write. The connection's send ring lives in it ([`CrashFile::attach`] moves the engine's
//! `SendBuffer` there, zero-copy from then on) and [`CrashFile::publish`] rewrites the control
//! block after each engine step. If the process is killed, the netserver reads the file (with
//! `pread`; it never maps a client's file) and closes the connection as Linux would.
//!
//! Contract: `publish` is a few dozen stores and one `clock_gettime` (vDSO), no allocation and
//! no system call. The ring region is handed to one connection at a time (a lease): a second
//! `attach` while the first connection still holds the ring fails, so two engines never write
//! the same bytes.
#![deny(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};

use crate::stack::Instant;
use crate::stack::tcp::connection::TcpConnection;
use crate::stack::tcp::crash_record::{BLOCK_LEN, CrashRecord, FILE_LEN, HEADER_LEN, MAX_RING};
use crate::stack::tcp::send_buffer::SharedRingStorage;

/// Creates a record file: a memfd of [`FILE_LEN`] bytes, sealed so that nobody (the process
/// itself included) can shrink or grow it. Used by the client for a connection it opens and
/// by the netserver for one it accepts.
pub fn create_record_file() -> io::Result<OwnedFd> {
    let fd = memfd_create(
        c"msock-tcp-crash",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    nix::unistd::ftruncate(&fd, FILE_LEN as libc::off_t)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Microseconds of CLOCK_MONOTONIC: the clock a record's `stamp_us` is on (shared by every
/// process of the host, unlike each process's `Instant` epoch).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

/// The shared read-write mapping of a whole record file.
struct Mapping {
    base: NonNull<u8>,
    /// The ring region is held by a connection's send buffer.
    ring_leased: AtomicBool,
}

// SAFETY: the pointer is never changed after creation and the memory lives until `Drop`. The
// two regions are written through disjoint paths: the control block only by `CrashFile`
// (`&mut self` methods), the ring only by the one `RingView` holding the lease.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read the pointer value and the atomic lease.
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: BorrowedFd<'_>) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping chosen by the kernel; the file is a memfd sealed
        // against shrinking and at least FILE_LEN long (checked by the callers), so no access
        // within FILE_LEN can fault with SIGBUS.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>())
            .map(|base| Mapping {
                base,
                ring_leased: AtomicBool::new(false),
            })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`; every view holds an `Arc` to
        // this mapping, so none outlives it.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), FILE_LEN);
        }
    }
}

/// The ring region of a record file as a send buffer's storage (holds the lease).
struct RingView {
    map: Arc<Mapping>,
    len: usize,
}

impl std::fmt::Debug for RingView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingView({} bytes)", self.len)
    }
}

impl SharedRingStorage for RingView {
    fn bytes(&self) -> &[u8] {
        // SAFETY: [HEADER_LEN, HEADER_LEN + len) lies inside the FILE_LEN mapping (len ≤
        // MAX_RING); only this view (the lease holder) writes it, and only through
        // `bytes_mut(&mut self)`, so no mutable reference coexists with this one.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.map.base.as_ptr().add(HEADER_LEN), self.len)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only live reference to the ring
        // region in this process (the lease excludes other views).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.map.base.as_ptr().add(HEADER_LEN), self.len)
        }
    }
}

impl Drop for RingView {
    fn drop(&mut self) {
        self.map.ring_leased.store(false, Ordering::Release);
    }
}

/// One connection's record file, mapped.
pub struct CrashFile {
    fd: OwnedFd,
    map: Arc<Mapping>,
    /// What the block holds now (`stamp_us` 0), `None` when it holds nothing valid: a
    /// `publish` that would write the same is skipped.
    published: Option<CrashRecord>,
}

impl std::fmt::Debug for CrashFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CrashFile(fd {})", self.fd.as_raw_fd())
    }
}

impl CrashFile {
    /// A new record file (for a connection this process opens).
    pub fn create() -> io::Result<CrashFile> {
        let fd = create_record_file()?;
        let map = Arc::new(Mapping::map(fd.as_fd())?);
        Ok(CrashFile {
            fd,
            map,
            published: None,
        })
    }

    /// Maps a record file the netserver created (for an accepted connection). Refused unless
    /// it is a memfd sealed against shrinking of at least [`FILE_LEN`] bytes (a shorter or
    /// shrinkable file could fault under the mapping).
    pub fn from_fd(fd: OwnedFd) -> io::Result<CrashFile> {
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?;
        let seals = SealFlag::from_bits_truncate(seals);
        let meta = nix::sys::stat::fstat(fd.as_raw_fd())?;
        if !seals.contains(SealFlag::F_SEAL_SHRINK) || (meta.st_size as u64) < FILE_LEN as u64 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // msock's own descriptor from here on (moved high, protected from the program).
        let fd = super::sys::own(fd);
        let map = Arc::new(Mapping::map(fd.as_fd())?);
        Ok(CrashFile {
            fd,
            map,
            published: None,
        })
    }

    /// The descriptor, to pass to the netserver.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Moves `conn`'s send ring into the file (the queued bytes are copied once). The ring is
    /// sized to the send buffer (at least a page); `false` when it cannot be: the buffer is
    /// larger than [`MAX_RING`], or another connection still holds the ring.
    pub fn attach(&self, conn: &mut TcpConnection) -> bool {
        if conn.send_ring_shared() {
            return true;
        }
        let len = conn
            .config()
            .send_buffer
            .max(conn.send_queue_len())
            .max(4096);
        if len > MAX_RING {
            return false;
        }
        if self
            .map
            .ring_leased
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let view = RingView {
            map: self.map.clone(),
            len,
        };
        // On refusal the view is dropped, which releases the lease.
        conn.attach_send_ring(Box::new(view)).is_ok()
    }

    fn block(&mut self) -> &mut [u8] {
        // SAFETY: [0, BLOCK_LEN) lies inside the mapping, is disjoint from the ring region
        // (BLOCK_LEN ≤ HEADER_LEN) and is written only here, under `&mut self`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.map.base.as_ptr(), BLOCK_LEN)
        }
    }

    /// Rewrites the control block from `conn` (attaching its ring first if it is not in the
    /// file yet, e.g. after an import).
    ///
    /// Skipped when nothing but the timestamp clock moved since the last publish: the block
    /// then keeps an older `ts_val` with the older `stamp_us` it was taken at, a pair the
    /// reader turns into the same TSval clock (`ts_val` + time since `stamp_us`). Callers
    /// publish around every engine step, most of which change nothing (an idle pump, a
    /// transmit with nothing to send).
    pub fn publish(&mut self, conn: &mut TcpConnection, now: Instant) {
        if !conn.send_ring_shared() {
            self.attach(conn);
        }
        let mut record = conn.crash_record(now);
        if self.published.is_some_and(|p| {
            CrashRecord {
                ts_val: p.ts_val,
                ..record
            } == p
        }) {
            return;
        }
        self.published = Some(record);
        record.stamp_us = monotonic_us();
        // BLOCK_LEN bytes are always there: publish cannot fail.
        let _ = record.publish(self.block());
    }

    /// Marks the record unusable (the connection left this process some other way).
    pub fn invalidate(&mut self) {
        self.published = None;
        CrashRecord::invalidate(self.block());
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::stack::tcp::connection::{InitialSequence, TcpConfig};
    use crate::wire::tcp::TcpSeqNumber;

    fn conn() -> TcpConnection {
        TcpConnection::connect(
            TcpConfig::default(),
            "198.18.0.1:1000".parse::<SocketAddrV4>().unwrap(),
            "198.18.0.2:2000".parse().unwrap(),
            InitialSequence {
                iss: TcpSeqNumber(1),
                ts_offset: 0,
            },
            Instant::from_secs(1),
        )
    }

    fn pread(fd: BorrowedFd<'_>, len: usize, at: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let n = nix::sys::uio::pread(fd, &mut buf, at as libc::off_t).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_file_holds_the_block_and_the_ring_bytes() {
        let mut file = CrashFile::create().unwrap();
        assert_eq!(
            nix::sys::stat::fstat(file.fd().as_raw_fd())
                .unwrap()
                .st_size as usize,
            FILE_LEN
        );
        assert!(nix::unistd::ftruncate(file.fd(), 10).is_err(), "sealed");
        let mut c = conn();
        assert!(file.attach(&mut c));
        // A second connection cannot take the same ring while the first holds it.
        let mut other = conn();
        assert!(!file.attach(&mut other));
        file.publish(&mut c, Instant::from_secs(2));
        let (record, generation) = CrashRecord::read(&pread(file.fd(), BLOCK_LEN, 0)).unwrap();
        assert_eq!(generation, 2);
        assert_eq!(record.remote, c.remote());
        assert!(record.ring_shared && record.ring_size as usize == c.config().send_buffer);
        assert!(record.stamp_us > 0);
        // Data pushed into the engine's ring is in the file.
        drop(other);
        let mut c2 = conn();
        drop(c);
        assert!(
            file.attach(&mut c2),
            "the lease is released with the connection"
        );
        drop(c2);
        // Bytes written into the ring are in the file where a reader finds them.
        let mut view = RingView {
            map: file.map.clone(),
            len: 4096,
        };
        view.bytes_mut()[..5].copy_from_slice(b"hello");
        assert_eq!(pread(file.fd(), 5, HEADER_LEN), b"hello");
        file.invalidate();
        assert!(CrashRecord::read(&pread(file.fd(), BLOCK_LEN, 0)).is_err());
    }

    #[test]
    fn an_unchanged_record_is_not_rewritten() {
        let mut file = CrashFile::create().unwrap();
        let mut c = conn();
        let generation =
            |f: &CrashFile| CrashRecord::read(&pread(f.fd(), BLOCK_LEN, 0)).map(|r| r.1);
        file.publish(&mut c, Instant::from_secs(2));
        let (first, g1) = CrashRecord::read(&pread(file.fd(), BLOCK_LEN, 0)).unwrap();
        // Only the clock moved: the block keeps the earlier TSval with its earlier stamp.
        file.publish(&mut c, Instant::from_secs(3));
        let (same, g2) = CrashRecord::read(&pread(file.fd(), BLOCK_LEN, 0)).unwrap();
        assert_eq!((same, g2), (first, g1));
        // A change of the connection is written at once.
        c.close(Instant::from_secs(3));
        file.publish(&mut c, Instant::from_secs(3));
        let (closed, g3) = CrashRecord::read(&pread(file.fd(), BLOCK_LEN, 0)).unwrap();
        assert_eq!(g3, g1 + 2);
        assert_ne!(closed.state, first.state);
        // After an invalidation the same record is written again (valid once more).
        file.invalidate();
        assert!(generation(&file).is_err());
        file.publish(&mut c, Instant::from_secs(3));
        assert!(generation(&file).is_ok_and(|g| g > g3));
    }

    #[test]
    fn mapping_a_file_that_could_shrink_is_refused() {
        let fd = memfd_create(c"t", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, FILE_LEN as libc::off_t).unwrap();
        assert!(CrashFile::from_fd(fd).is_err());
        let short = memfd_create(c"t", MemFdCreateFlag::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&short, 4096).unwrap();
        fcntl(
            short.as_raw_fd(),
            FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK),
        )
        .unwrap();
        assert!(CrashFile::from_fd(short).is_err());
        assert!(CrashFile::from_fd(create_record_file().unwrap()).is_ok());
    }
}
