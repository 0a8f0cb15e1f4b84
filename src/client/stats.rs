//! The per-process stats page: data-path counters of every cached socket, in shared memory.
//!
//! A cached socket sends and receives with no netserver hop (paper §3.2), so the netserver cannot
//! count its traffic; instead each client publishes a page of counters the netserver maps
//! read-only and renders in `msock stat`. The client creates a sealed memfd ([`StatsPage::create`])
//! and passes it with `Hello`; the netserver maps it with [`StatsPage::map_readonly`].
//!
//! Layout (`#[repr(C)]`, native endian, all fields 64-bit): a [`PageHeader`] then
//! [`SLOT_COUNT`] fixed [`SocketSlot`]s. A slot is free when its `endpoint` is 0 (endpoint ids
//! start at 1). Counters are relaxed atomics: single writer per counter (the owning process), any
//! number of readers; a reader may see a slot mid-update (counts one datagram apart), never torn
//! 64-bit values.
//!
//! Trust: the netserver must not trust the page. The client seals the memfd against shrinking
//! (`F_SEAL_SHRINK`), and [`StatsPage::map_readonly`] refuses anything but a shmem memfd with
//! that seal (a page truncated, or a hugetlbfs page punched out, under the mapping would SIGBUS
//! the reader), checks magic, version and geometry against its own constants, and never derives
//! an index or length from page contents.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::control::EndpointId;
use crate::stack::stats::DropReason;

/// `"MSOCKSTA"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MSOCKSTA");
/// Layout version; bumped on any change of [`PageHeader`] or [`SocketSlot`].
pub const LAYOUT_VERSION: u64 = 1;
/// Number of socket slots per page. Sockets beyond this are still served, just not counted.
pub const SLOT_COUNT: usize = 256;
/// Drop counters per slot, indexed by [`DropReason::index`] (stable discriminants).
pub const DROP_SLOTS: usize = 32;

const _: () = assert!(DropReason::COUNT <= DROP_SLOTS);

/// The first bytes of the page.
#[repr(C)]
pub struct PageHeader {
    pub magic: AtomicU64,
    pub version: AtomicU64,
    pub slot_count: AtomicU64,
    pub slot_size: AtomicU64,
    pub pid: AtomicU64,
    pub reserved: [AtomicU64; 3],
}

/// Counters of one cached socket.
#[repr(C)]
pub struct SocketSlot {
    /// Owning endpoint id; 0 = free slot.
    pub endpoint: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Frames taken from the socket's channel (valid or not).
    pub frames_in: AtomicU64,
    pub reserved: [AtomicU64; 2],
    /// Indexed by [`DropReason::index`].
    pub drops: [AtomicU64; DROP_SLOTS],
}

/// Total page length in bytes.
pub const PAGE_LEN: usize = size_of::<PageHeader>() + SLOT_COUNT * size_of::<SocketSlot>();

/// A snapshot of one socket's counters, as read by the netserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketCounters {
    pub endpoint: EndpointId,
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    /// Aligned with [`DropReason::ALL`].
    pub drops: Vec<u64>,
}

impl SocketCounters {
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        drop_index(reason)
            .and_then(|i| self.drops.get(i).copied())
            .unwrap_or(0)
    }
}

fn drop_index(reason: DropReason) -> Option<usize> {
    Some(reason.index()).filter(|&i| i < DROP_SLOTS)
}

/// A shared mapping of [`PAGE_LEN`] bytes (read-write for the owner, read-only for readers).
struct Mapping {
    base: NonNull<u8>,
}

// SAFETY: the mapping is only accessed through atomics (`AtomicU64` is Sync); the pointer itself
// is never mutated after creation and the memory lives until `Drop`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: BorrowedFd<'_>, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a memfd we checked to be at least PAGE_LEN long and
        // sealed against shrinking (or created and sized by us); the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>())
            .map(|base| Mapping { base })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn header(&self) -> &PageHeader {
        // SAFETY: the mapping is PAGE_LEN bytes, page-aligned, and starts with a PageHeader made
        // only of AtomicU64 (any bit pattern is valid). Atomic loads from a read-only shared
        // mapping are plain 64-bit loads on the supported targets (x86_64, aarch64).
        unsafe { &*self.base.as_ptr().cast::<PageHeader>() }
    }

    fn slot(&self, index: usize) -> Option<&SocketSlot> {
        if index >= SLOT_COUNT {
            return None;
        }
        let offset = size_of::<PageHeader>() + index * size_of::<SocketSlot>();
        // SAFETY: index < SLOT_COUNT so the slot lies inside the PAGE_LEN mapping; it is 8-byte
        // aligned (header and slot sizes are multiples of 8) and made only of AtomicU64.
        Some(unsafe { &*self.base.as_ptr().add(offset).cast::<SocketSlot>() })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`; no references outlive `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), PAGE_LEN);
        }
    }
}

/// The owner's side: the memfd and a writable mapping.
pub struct StatsPage {
    fd: OwnedFd,
    map: Mapping,
}

impl StatsPage {
    /// Creates a sealed memfd of [`PAGE_LEN`] bytes with an initialised header.
    pub fn create() -> io::Result<StatsPage> {
        // SAFETY: a static NUL-terminated name; memfd_create has no other preconditions.
        let raw = unsafe {
            libc::memfd_create(
                c"msock-stats".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = super::sys::own(unsafe { OwnedFd::from_raw_fd(raw) });
        // SAFETY: plain syscalls on our own descriptor.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), PAGE_LEN as libc::off_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let map = Mapping::map(fd.as_fd(), true)?;
        let h = map.header();
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.slot_count.store(SLOT_COUNT as u64, Ordering::Relaxed);
        h.slot_size
            .store(size_of::<SocketSlot>() as u64, Ordering::Relaxed);
        h.pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(StatsPage { fd, map })
    }

    /// Maps again the page a previous program image of this process created (its memfd kept
    /// open across `execve`, `client::inherit`): the netserver still reads this memfd. Every
    /// slot is freed (the previous image's sockets are gone or flushed) and the header
    /// rewritten; the memfd must be one [`StatsPage::create`] made (size and seals checked).
    pub fn adopt(fd: OwnedFd) -> io::Result<StatsPage> {
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("stats page: {what}"));
        // SAFETY: F_GET_SEALS on a descriptor we own; fails harmlessly on non-memfds.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let wanted = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if seals < 0 || seals & wanted != wanted {
            return Err(invalid("not a sealed memfd"));
        }
        // SAFETY: fstat into a zeroed, properly sized stat buffer.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st.st_size
        };
        if size != PAGE_LEN as libc::off_t {
            return Err(invalid("wrong size"));
        }
        let map = Mapping::map(fd.as_fd(), true)?;
        let h = map.header();
        h.magic.store(0, Ordering::Release);
        for index in 0..SLOT_COUNT {
            if let Some(slot) = map.slot(index) {
                slot.endpoint.store(0, Ordering::Relaxed);
                for c in slot_counters(slot) {
                    c.store(0, Ordering::Relaxed);
                }
            }
        }
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.slot_count.store(SLOT_COUNT as u64, Ordering::Relaxed);
        h.slot_size
            .store(size_of::<SocketSlot>() as u64, Ordering::Relaxed);
        h.pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(StatsPage { fd, map })
    }

    /// The memfd, to pass with `Hello`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Claims a free slot for `endpoint` (all counters zeroed); `None` if the page is full or
    /// `endpoint` is 0.
    pub fn allocate(self: &Arc<Self>, endpoint: EndpointId) -> Option<SlotHandle> {
        if endpoint == 0 {
            return None;
        }
        (0..SLOT_COUNT).find_map(|index| {
            let slot = self.map.slot(index)?;
            if slot.endpoint.load(Ordering::Relaxed) != 0 {
                return None;
            }
            for c in slot_counters(slot) {
                c.store(0, Ordering::Relaxed);
            }
            slot.endpoint
                .compare_exchange(0, endpoint, Ordering::Release, Ordering::Relaxed)
                .ok()
                .map(|_| SlotHandle {
                    page: Arc::clone(self),
                    index,
                })
        })
    }

    /// Maps a client's page read-only after checking seals, size, magic and geometry.
    pub fn map_readonly(fd: OwnedFd) -> io::Result<StatsView> {
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("stats page: {what}"));
        // Only a shmem memfd: a hugetlbfs one can have its pages (and their reservation)
        // punched out under the mapping, and a later read then SIGBUSes the reader.
        let on_tmpfs = nix::sys::statfs::fstatfs(&fd)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !on_tmpfs {
            return Err(invalid("not a memfd"));
        }
        // SAFETY: F_GET_SEALS on a descriptor we own; fails harmlessly on non-memfds.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(invalid("not a memfd sealed against shrinking"));
        }
        // SAFETY: fstat into a zeroed, properly sized stat buffer.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st.st_size
        };
        if size < PAGE_LEN as libc::off_t {
            return Err(invalid("too short"));
        }
        let map = Mapping::map(fd.as_fd(), false)?;
        let h = map.header();
        if h.magic.load(Ordering::Acquire) != MAGIC
            || h.version.load(Ordering::Relaxed) != LAYOUT_VERSION
            || h.slot_count.load(Ordering::Relaxed) != SLOT_COUNT as u64
            || h.slot_size.load(Ordering::Relaxed) != size_of::<SocketSlot>() as u64
        {
            return Err(invalid("bad magic, version or geometry"));
        }
        Ok(StatsView { _fd: fd, map })
    }
}

fn slot_counters(slot: &SocketSlot) -> impl Iterator<Item = &AtomicU64> {
    [
        &slot.datagrams_in,
        &slot.bytes_in,
        &slot.datagrams_out,
        &slot.bytes_out,
        &slot.frames_in,
    ]
    .into_iter()
    .chain(slot.reserved.iter())
    .chain(slot.drops.iter())
}

/// A claimed slot; frees it (endpoint ← 0) on drop.
pub struct SlotHandle {
    page: Arc<StatsPage>,
    index: usize,
}

impl SlotHandle {
    fn slot(&self) -> &SocketSlot {
        // `index` was checked in `allocate`; `slot` re-checks and the fallback is unreachable in
        // practice, so a static zero slot is not needed: use the first slot's header check.
        self.page
            .map
            .slot(self.index)
            .unwrap_or_else(|| unreachable_slot())
    }

    pub fn datagram_in(&self, bytes: usize) {
        let s = self.slot();
        s.datagrams_in.fetch_add(1, Ordering::Relaxed);
        s.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn datagram_out(&self, bytes: usize) {
        let s = self.slot();
        s.datagrams_out.fetch_add(1, Ordering::Relaxed);
        s.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn frames_in(&self, n: usize) {
        self.slot().frames_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) {
        if let Some(i) = drop_index(reason) {
            self.slot().drops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Current counters of this slot.
    pub fn snapshot(&self) -> SocketCounters {
        read_slot(self.slot())
    }
}

impl Drop for SlotHandle {
    fn drop(&mut self) {
        self.slot().endpoint.store(0, Ordering::Release);
    }
}

#[cold]
fn unreachable_slot() -> &'static SocketSlot {
    // A slot index is validated when the handle is created, so this cannot run; a static
    // fallback keeps the accessors total without `unwrap`.
    static FALLBACK: SocketSlot = SocketSlot {
        endpoint: AtomicU64::new(0),
        datagrams_in: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        datagrams_out: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        frames_in: AtomicU64::new(0),
        reserved: [const { AtomicU64::new(0) }; 2],
        drops: [const { AtomicU64::new(0) }; DROP_SLOTS],
    };
    &FALLBACK
}

fn read_slot(slot: &SocketSlot) -> SocketCounters {
    SocketCounters {
        endpoint: slot.endpoint.load(Ordering::Acquire),
        datagrams_in: slot.datagrams_in.load(Ordering::Relaxed),
        bytes_in: slot.bytes_in.load(Ordering::Relaxed),
        datagrams_out: slot.datagrams_out.load(Ordering::Relaxed),
        bytes_out: slot.bytes_out.load(Ordering::Relaxed),
        frames_in: slot.frames_in.load(Ordering::Relaxed),
        drops: slot.drops[..DropReason::COUNT]
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect(),
    }
}

/// The netserver's read-only view of a client's page.
pub struct StatsView {
    _fd: OwnedFd,
    map: Mapping,
}

impl StatsView {
    /// Counters of every slot in use. Values are whatever the client wrote: plausible or not,
    /// they are only displayed.
    pub fn sockets(&self) -> Vec<SocketCounters> {
        (0..SLOT_COUNT)
            .filter_map(|i| self.map.slot(i))
            .filter(|s| s.endpoint.load(Ordering::Acquire) != 0)
            .map(read_slot)
            .collect()
    }

    /// The pid the client wrote in the header (informational only).
    pub fn pid(&self) -> u64 {
        self.map.header().pid.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        fd.try_clone_to_owned().unwrap()
    }

    #[test]
    fn layout_is_fixed() {
        assert_eq!(size_of::<PageHeader>(), 64);
        assert_eq!(size_of::<SocketSlot>(), 8 * (8 + DROP_SLOTS));
        assert_eq!(std::mem::offset_of!(SocketSlot, drops), 64);
        assert_eq!(PAGE_LEN, 64 + SLOT_COUNT * size_of::<SocketSlot>());
    }

    #[test]
    fn adopted_page_is_the_same_memfd_with_every_slot_free() {
        let page = Arc::new(StatsPage::create().unwrap());
        let view = StatsPage::map_readonly(dup(page.fd())).unwrap();
        let slot = page.allocate(7).unwrap();
        slot.datagram_in(100);
        std::mem::forget(slot);
        assert_eq!(view.sockets().len(), 1);
        let again = Arc::new(StatsPage::adopt(dup(page.fd())).unwrap());
        assert!(view.sockets().is_empty(), "slots freed");
        assert_eq!(view.pid(), u64::from(std::process::id()));
        let kept = again.allocate(8).expect("a free slot");
        assert_eq!(view.sockets().len(), 1);
        drop(kept);
        // Not a stats page: refused.
        let other = crate::control::image_memfd(&[0u8; 16], c"not-stats").unwrap();
        assert!(StatsPage::adopt(other).is_err());
    }

    #[test]
    fn counters_round_trip_through_readonly_view() {
        let page = Arc::new(StatsPage::create().unwrap());
        let view = StatsPage::map_readonly(dup(page.fd())).unwrap();
        assert!(view.sockets().is_empty());
        assert_eq!(view.pid(), u64::from(std::process::id()));

        let a = page.allocate(7).unwrap();
        let b = page.allocate(9).unwrap();
        a.datagram_in(100);
        a.datagram_in(23);
        a.datagram_out(5);
        a.frames_in(3);
        let reason = DropReason::ALL[0];
        a.dropped(reason);
        a.dropped(reason);
        b.datagram_out(1);

        let socks = view.sockets();
        assert_eq!(socks.len(), 2);
        let sa = socks.iter().find(|s| s.endpoint == 7).unwrap();
        assert_eq!(
            (sa.datagrams_in, sa.bytes_in, sa.datagrams_out, sa.bytes_out),
            (2, 123, 1, 5)
        );
        assert_eq!(sa.frames_in, 3);
        assert_eq!(sa.drop_count(reason), 2);
        assert_eq!(sa.drops.iter().sum::<u64>(), 2);
        assert_eq!(sa, &a.snapshot());

        drop(a);
        let socks = view.sockets();
        assert_eq!(socks.len(), 1);
        assert_eq!(socks[0].endpoint, 9);
        // A freed slot is reused with zeroed counters.
        let c = page.allocate(11).unwrap();
        assert_eq!(c.snapshot().bytes_in, 0);
    }

    #[test]
    fn page_full_and_zero_id() {
        let page = Arc::new(StatsPage::create().unwrap());
        assert!(page.allocate(0).is_none());
        let handles: Vec<_> = (1..=SLOT_COUNT as u64)
            .map(|i| page.allocate(i).unwrap())
            .collect();
        assert!(page.allocate(1000).is_none());
        drop(handles);
        assert!(page.allocate(1000).is_some());
    }

    #[test]
    fn readonly_view_rejects_untrusted_fds() {
        // An unsealed memfd of the right size with a valid-looking header is refused.
        // SAFETY: test-only memfd creation and sizing.
        let fd = unsafe {
            let raw = libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC);
            assert!(raw >= 0);
            assert_eq!(libc::ftruncate(raw, PAGE_LEN as libc::off_t), 0);
            OwnedFd::from_raw_fd(raw)
        };
        assert!(StatsPage::map_readonly(fd).is_err());

        // A sealed page whose header was overwritten is refused.
        let page = StatsPage::create().unwrap();
        page.map
            .header()
            .slot_count
            .store(1 << 40, Ordering::Relaxed);
        assert!(StatsPage::map_readonly(dup(page.fd())).is_err());
        page.map
            .header()
            .slot_count
            .store(SLOT_COUNT as u64, Ordering::Relaxed);
        page.map.header().magic.store(0, Ordering::Relaxed);
        assert!(StatsPage::map_readonly(dup(page.fd())).is_err());

        // A pipe is not a memfd.
        let (r, _w) = std::io::pipe().unwrap();
        assert!(StatsPage::map_readonly(OwnedFd::from(r)).is_err());
    }

    /// A memfd made with `flags`, sized `len` and sealed with `seals`; `None` where the kernel
    /// refuses one of the steps (e.g. no huge pages for MFD_HUGETLB).
    fn sealed_memfd(flags: libc::c_uint, len: usize, seals: libc::c_int) -> Option<OwnedFd> {
        // SAFETY: test-only memfd creation, sizing and sealing of our own descriptor.
        unsafe {
            let raw = libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC | flags);
            if raw < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(raw);
            (libc::ftruncate(raw, len as libc::off_t) == 0
                && libc::fcntl(raw, libc::F_ADD_SEALS, seals) == 0)
                .then_some(fd)
        }
    }

    #[test]
    fn readonly_view_rejects_short_and_hugetlb_pages() {
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        let short = sealed_memfd(libc::MFD_ALLOW_SEALING, PAGE_LEN - 8, seals).unwrap();
        assert!(StatsPage::map_readonly(short).is_err());
        let empty = sealed_memfd(libc::MFD_ALLOW_SEALING, 0, seals).unwrap();
        assert!(StatsPage::map_readonly(empty).is_err());
        // Sealed, long enough, but on hugetlbfs (its pages can be punched out under the
        // reader's mapping): refused. Only where the kernel lets us make one.
        if let Some(huge) = sealed_memfd(
            libc::MFD_ALLOW_SEALING | libc::MFD_HUGETLB,
            2 << 20,
            libc::F_SEAL_SHRINK,
        ) {
            assert!(StatsPage::map_readonly(huge).is_err());
        }
        // A regular tmpfs file is not a memfd (its seals are fixed at F_SEAL_SEAL).
        let path = std::env::temp_dir().join(format!("msock-stats-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(PAGE_LEN as u64).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(StatsPage::map_readonly(OwnedFd::from(file)).is_err());
    }

    #[test]
    fn sealed_page_cannot_shrink() {
        let page = StatsPage::create().unwrap();
        // SAFETY: ftruncate on our own memfd; expected to fail because of the seal.
        let rc = unsafe { libc::ftruncate(page.fd().as_raw_fd(), 0) };
        assert_eq!(rc, -1);
    }
}
