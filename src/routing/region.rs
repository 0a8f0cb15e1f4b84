//! The routing region (paper §4.3): the routing table in a shared-memory region that the
//! netserver writes and every client maps read-only, so a cached socket finds its next hop and
//! the neighbour's MAC with no request to the netserver.
//!
//! The region is a sealed memfd of fixed size ([`REGION_LEN`]) holding one position-independent
//! `#[repr(C)]` [`Layout`] (plain words and fixed arrays, no pointers): a header (magic, layout
//! version, sizes, a sequence counter and a generation counter), the interface, up to
//! [`MAX_ROUTES`] routes sorted longest prefix first, and up to [`MAX_NEIGHBORS`] neighbours in
//! an open-addressing hash (linear probing, backward-shift deletion, load factor ≤ ½) keyed by
//! IPv4 address, so a neighbour lookup is constant time.
//!
//! Concurrency: one writer ([`RegionWriter`], the netserver), any number of lock-free readers
//! ([`RegionReader`]) in other processes. Every field is an atomic word; the writer brackets each
//! update with a **seqlock** (sequence odd while writing) and then bumps the generation. A reader
//! loads the sequence (Acquire), reads the fields it needs in place (Relaxed), issues an Acquire
//! fence and re-loads the sequence; it retries when the sequence was odd or moved. Retries are
//! bounded (spins, then yields): the writer holds the sequence odd only for a handful of stores,
//! and a writer that died mid-update must not hang its clients, so after the bound a lookup
//! reports "no route" instead. [`RegionReader::generation`] is one Acquire load, stored *after*
//! the sequence closes, so a sender that caches a next hop together with the generation it read
//! *before* the lookup never keeps a hop older than the generation it remembers.
//!
//! Protection: the memfd is sealed against shrinking and growing (a mapped reader can never hit
//! SIGBUS) and with `F_SEAL_FUTURE_WRITE` after the writer's own mapping exists, so nobody else
//! can map it writable or `write(2)` it, even through a reopened `/proc/self/fd` path. Clients
//! receive a descriptor reopened `O_RDONLY` ([`RegionWriter::readonly_fd`]); a reader validates
//! size, seals, magic and version before use and treats every value as untrusted (bounded
//! indices, bounded probes), so a bad region is an error value, never a crash.
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::stat::fstat;
use nix::unistd::ftruncate;

pub use super::table::NextHop;
use super::table::{InterfaceConfig, Route, RoutingTable, TableError, validate_route};
use crate::wire::EthernetAddress;

/// "msockRT\0", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"msockRT\0");
/// Bumped on any change of [`Layout`].
pub const LAYOUT_VERSION: u32 = 1;
/// Route slots.
pub const MAX_ROUTES: usize = 64;
/// Neighbour entries (the hash has twice as many slots).
pub const MAX_NEIGHBORS: usize = 1024;
/// Hash slots: a power of two, twice [`MAX_NEIGHBORS`].
pub const NEIGHBOR_SLOTS: usize = 2 * MAX_NEIGHBORS;
/// Size of the memfd: the layout rounded up to 4 KiB.
pub const REGION_LEN: usize = size_of::<Layout>().next_multiple_of(4096);

/// Optimistic attempts that only spin before a reader starts yielding.
const SPIN_ATTEMPTS: u32 = 128;
/// Total attempts before a reader gives up (≈ milliseconds of a writer stuck mid-update).
const MAX_ATTEMPTS: u32 = SPIN_ATTEMPTS + 20_000;

/// The region's header. All words are atomics: the region is shared with other processes.
#[repr(C)]
pub struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    /// `size_of::<Layout>()` as written by the netserver.
    pub layout_len: AtomicU32,
    /// [`REGION_LEN`] as written by the netserver.
    pub region_len: AtomicU64,
    /// Seqlock sequence: odd while an update is in progress.
    pub seq: AtomicU64,
    /// Completed updates; stored after `seq` closes.
    pub generation: AtomicU64,
    pub route_count: AtomicU32,
    pub neighbor_count: AtomicU32,
    /// 1 when the interface fields are set.
    pub if_present: AtomicU32,
    pub if_index: AtomicU32,
    /// IPv4 addresses are stored as `u32::from(Ipv4Addr)`.
    pub if_addr: AtomicU32,
    pub if_prefix_len: AtomicU32,
    pub if_mtu: AtomicU32,
    pub _pad: AtomicU32,
    /// MAC in the low 48 bits, byte 0 least significant.
    pub if_mac: AtomicU64,
    pub _reserved: [AtomicU64; 6],
}

/// One route slot.
#[repr(C)]
pub struct RouteSlot {
    pub dest: AtomicU32,
    pub gateway: AtomicU32,
    pub prefix_len: AtomicU32,
    /// Bit 0: `gateway` is valid.
    pub flags: AtomicU32,
}

/// One neighbour hash slot.
#[repr(C)]
pub struct NeighborSlot {
    pub ip: AtomicU32,
    /// 0 empty, 1 used.
    pub state: AtomicU32,
    pub mac: AtomicU64,
}

/// The whole region.
#[repr(C)]
pub struct Layout {
    pub header: Header,
    pub routes: [RouteSlot; MAX_ROUTES],
    pub neighbors: [NeighborSlot; NEIGHBOR_SLOTS],
}

const ROUTE_HAS_GATEWAY: u32 = 1;
const SLOT_USED: u32 = 1;

fn mac_to_word(mac: EthernetAddress) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac.0);
    u64::from_le_bytes(b)
}

fn word_to_mac(word: u64) -> EthernetAddress {
    let b = word.to_le_bytes();
    EthernetAddress([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// Home slot of an address (Fibonacci hashing onto the power-of-two table).
fn home_slot(ip: u32) -> usize {
    const BITS: u32 = NEIGHBOR_SLOTS.trailing_zeros();
    (ip.wrapping_mul(0x9e37_79b1) >> (32 - BITS)) as usize
}

const SLOT_MASK: usize = NEIGHBOR_SLOTS - 1;

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("routing region: {what}"),
    )
}

/// Reads, relaxed, that only make sense inside a seqlock section (or in the writer).
impl Layout {
    fn interface(&self) -> Option<InterfaceConfig> {
        let h = &self.header;
        (h.if_present.load(Ordering::Relaxed) == 1).then(|| InterfaceConfig {
            ifindex: h.if_index.load(Ordering::Relaxed),
            mac: word_to_mac(h.if_mac.load(Ordering::Relaxed)),
            addr: Ipv4Addr::from(h.if_addr.load(Ordering::Relaxed)),
            prefix_len: h.if_prefix_len.load(Ordering::Relaxed).min(32) as u8,
            mtu: h.if_mtu.load(Ordering::Relaxed) as u16,
        })
    }

    fn route(&self, i: usize) -> Route {
        let s = &self.routes[i];
        let gateway = (s.flags.load(Ordering::Relaxed) & ROUTE_HAS_GATEWAY != 0)
            .then(|| Ipv4Addr::from(s.gateway.load(Ordering::Relaxed)));
        Route {
            dest: Ipv4Addr::from(s.dest.load(Ordering::Relaxed)),
            prefix_len: s.prefix_len.load(Ordering::Relaxed).min(32) as u8,
            gateway,
        }
    }

    fn route_count(&self) -> usize {
        (self.header.route_count.load(Ordering::Relaxed) as usize).min(MAX_ROUTES)
    }

    /// The slot holding `ip`, probing at most the whole table.
    fn find_neighbor(&self, ip: u32) -> Option<usize> {
        let mut i = home_slot(ip);
        for _ in 0..NEIGHBOR_SLOTS {
            let s = &self.neighbors[i];
            if s.state.load(Ordering::Relaxed) != SLOT_USED {
                return None;
            }
            if s.ip.load(Ordering::Relaxed) == ip {
                return Some(i);
            }
            i = (i + 1) & SLOT_MASK;
        }
        None
    }

    fn neighbor(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        let i = self.find_neighbor(u32::from(ip))?;
        Some(word_to_mac(self.neighbors[i].mac.load(Ordering::Relaxed)))
    }

    fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        let iface = self.interface()?;
        let route = (0..self.route_count())
            .map(|i| self.route(i))
            .find(|r| r.contains(dst))?;
        let ip = route.gateway.unwrap_or(dst);
        Some(NextHop {
            ip,
            src: iface.addr,
            mtu: iface.mtu,
            src_mac: iface.mac,
            dst_mac: self.neighbor(ip),
        })
    }

    fn snapshot(&self) -> RoutingTable {
        let mut t = RoutingTable::new();
        if let Some(i) = self.interface() {
            t.set_interface(i);
        }
        for i in 0..self.route_count() {
            // A route the writer would not have written is skipped, not trusted.
            let _ = t.add_route(&self.route(i));
        }
        for s in &self.neighbors {
            if s.state.load(Ordering::Relaxed) == SLOT_USED {
                let ip = Ipv4Addr::from(s.ip.load(Ordering::Relaxed));
                t.set_neighbor(ip, word_to_mac(s.mac.load(Ordering::Relaxed)));
            }
        }
        t
    }

    /// Runs `read` inside a seqlock read section until it saw a consistent state.
    fn read<T>(&self, read: impl Fn(&Layout) -> T) -> Option<T> {
        let seq = &self.header.seq;
        for attempt in 0..MAX_ATTEMPTS {
            let before = seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let value = read(self);
                fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return Some(value);
                }
            }
            if attempt < SPIN_ATTEMPTS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        None
    }
}

/// An `mmap`ed [`Layout`], unmapped on drop.
struct Mapping {
    ptr: NonNull<Layout>,
}

// SAFETY: the mapping is only accessed through `&Layout`, whose fields are all atomics, so
// sharing or moving it between threads is as safe as sharing atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, prot: ProtFlags) -> io::Result<Mapping> {
        let len = NonZeroUsize::new(REGION_LEN).ok_or_else(|| bad("empty layout"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address, so nothing
        // existing is replaced) of a file whose size the caller checked or set to REGION_LEN
        // and sealed against shrinking, so every page of the mapping stays backed.
        let ptr = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) }
            .map_err(io::Error::from)?;
        Ok(Mapping { ptr: ptr.cast() })
    }

    fn layout(&self) -> &Layout {
        // SAFETY: `ptr` is a page-aligned mapping of REGION_LEN ≥ size_of::<Layout>() bytes,
        // valid until drop; Layout is only atomics, for which every bit pattern (including the
        // memfd's initial zeros) is valid and concurrent access from other processes is
        // expected. Only shared references are ever made, and a PROT_READ mapping is only read
        // with plain atomic loads of at most 8 bytes.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/REGION_LEN is exactly the mapping made in `new`; no reference into it
        // outlives `self` (all borrow `&self`).
        let _ = unsafe { munmap(self.ptr.cast(), REGION_LEN) };
    }
}

/// The netserver's side: creates the region and is its only writer.
pub struct RegionWriter {
    fd: OwnedFd,
    map: Mapping,
    /// The routes as written (the model that keeps them validated and sorted).
    routes: RoutingTable,
}

impl RegionWriter {
    /// Creates, sizes, maps and seals a fresh region with no interface, routes or neighbours.
    pub fn create() -> io::Result<RegionWriter> {
        const NAME: &CStr = c"msock-routing";
        let fd = memfd_create(
            NAME,
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(io::Error::from)?;
        ftruncate(&fd, REGION_LEN as i64).map_err(io::Error::from)?;
        let map = Mapping::new(&fd, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
        // Future-write seals after our own writable mapping exists: it stays writable, no new
        // writable mapping or write(2) is possible for anyone.
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_FUTURE_WRITE
            | SealFlag::F_SEAL_SEAL;
        fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(io::Error::from)?;
        let h = &map.layout().header;
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.layout_len
            .store(size_of::<Layout>() as u32, Ordering::Relaxed);
        h.region_len.store(REGION_LEN as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(RegionWriter {
            fd,
            map,
            routes: RoutingTable::new(),
        })
    }

    /// Size of the region in bytes.
    #[allow(clippy::len_without_is_empty)] // fixed size, never empty
    pub fn len(&self) -> usize {
        REGION_LEN
    }

    /// A new descriptor for the region, opened read-only, for a client (SCM_RIGHTS).
    pub fn readonly_fd(&self) -> io::Result<OwnedFd> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        Ok(file.into())
    }

    /// One seqlock write section: sequence odd, `write`, sequence even, generation + 1.
    fn update<R>(&mut self, write: impl FnOnce(&Layout) -> R) -> R {
        let l = self.map.layout();
        let seq = l.header.seq.load(Ordering::Relaxed);
        l.header.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        let r = write(l);
        l.header.seq.store(seq.wrapping_add(2), Ordering::Release);
        let generation = l.header.generation.load(Ordering::Relaxed);
        l.header
            .generation
            .store(generation.wrapping_add(1), Ordering::Release);
        r
    }

    pub fn set_interface(&mut self, config: &InterfaceConfig) {
        self.routes.set_interface(*config);
        self.update(|l| {
            let h = &l.header;
            h.if_index.store(config.ifindex, Ordering::Relaxed);
            h.if_mac.store(mac_to_word(config.mac), Ordering::Relaxed);
            h.if_addr.store(u32::from(config.addr), Ordering::Relaxed);
            h.if_prefix_len
                .store(u32::from(config.prefix_len.min(32)), Ordering::Relaxed);
            h.if_mtu.store(u32::from(config.mtu), Ordering::Relaxed);
            h.if_present.store(1, Ordering::Relaxed);
        });
    }

    /// Adds a route or replaces the gateway of the route with the same prefix.
    pub fn add_route(&mut self, route: &Route) -> Result<(), TableError> {
        let route = validate_route(route)?;
        let mut next = self.routes.clone();
        next.add_route(&route)?;
        if next.routes().len() > MAX_ROUTES {
            return Err(TableError::Full);
        }
        self.routes = next;
        self.write_routes();
        Ok(())
    }

    /// Removes the route for `dest/prefix_len`; false if there was none.
    pub fn del_route(&mut self, dest: Ipv4Addr, prefix_len: u8) -> bool {
        let removed = self.routes.del_route(dest, prefix_len);
        if removed {
            self.write_routes();
        }
        removed
    }

    fn write_routes(&mut self) {
        let routes: Vec<Route> = self.routes.routes().to_vec();
        self.update(|l| {
            for (slot, r) in l.routes.iter().zip(&routes) {
                slot.dest.store(u32::from(r.dest), Ordering::Relaxed);
                slot.prefix_len
                    .store(u32::from(r.prefix_len), Ordering::Relaxed);
                slot.gateway
                    .store(r.gateway.map_or(0, u32::from), Ordering::Relaxed);
                slot.flags.store(
                    if r.gateway.is_some() {
                        ROUTE_HAS_GATEWAY
                    } else {
                        0
                    },
                    Ordering::Relaxed,
                );
            }
            for slot in l.routes.iter().skip(routes.len()) {
                slot.dest.store(0, Ordering::Relaxed);
                slot.prefix_len.store(0, Ordering::Relaxed);
                slot.gateway.store(0, Ordering::Relaxed);
                slot.flags.store(0, Ordering::Relaxed);
            }
            l.header
                .route_count
                .store(routes.len() as u32, Ordering::Relaxed);
        });
    }

    /// Adds or updates a neighbour entry ([`TableError::Full`] beyond [`MAX_NEIGHBORS`]).
    pub fn set_neighbor(&mut self, ip: Ipv4Addr, mac: EthernetAddress) -> Result<(), TableError> {
        let key = u32::from(ip);
        let l = self.map.layout();
        let word = mac_to_word(mac);
        if let Some(i) = l.find_neighbor(key) {
            if l.neighbors[i].mac.load(Ordering::Relaxed) != word {
                self.update(|l| l.neighbors[i].mac.store(word, Ordering::Relaxed));
            }
            return Ok(());
        }
        let count = l.header.neighbor_count.load(Ordering::Relaxed) as usize;
        if count >= MAX_NEIGHBORS {
            return Err(TableError::Full);
        }
        // The load factor is at most ½, so an empty slot exists on the probe sequence.
        let mut i = home_slot(key);
        while l.neighbors[i].state.load(Ordering::Relaxed) == SLOT_USED {
            i = (i + 1) & SLOT_MASK;
        }
        self.update(|l| {
            let s = &l.neighbors[i];
            s.ip.store(key, Ordering::Relaxed);
            s.mac.store(word, Ordering::Relaxed);
            s.state.store(SLOT_USED, Ordering::Relaxed);
            l.header
                .neighbor_count
                .store(count as u32 + 1, Ordering::Relaxed);
        });
        Ok(())
    }

    /// Removes a neighbour entry (no-op when absent).
    pub fn remove_neighbor(&mut self, ip: Ipv4Addr) {
        let Some(found) = self.map.layout().find_neighbor(u32::from(ip)) else {
            return;
        };
        self.update(|l| {
            // Backward-shift deletion: move later members of the probe run into the hole
            // unless their home slot lies cyclically in (hole, j].
            let mut hole = found;
            let mut j = found;
            for _ in 0..NEIGHBOR_SLOTS {
                j = (j + 1) & SLOT_MASK;
                let s = &l.neighbors[j];
                if s.state.load(Ordering::Relaxed) != SLOT_USED {
                    break;
                }
                let ip = s.ip.load(Ordering::Relaxed);
                let home = home_slot(ip);
                let stays = if hole <= j {
                    hole < home && home <= j
                } else {
                    hole < home || home <= j
                };
                if !stays {
                    let h = &l.neighbors[hole];
                    h.ip.store(ip, Ordering::Relaxed);
                    h.mac
                        .store(s.mac.load(Ordering::Relaxed), Ordering::Relaxed);
                    hole = j;
                }
            }
            let h = &l.neighbors[hole];
            h.state.store(0, Ordering::Relaxed);
            h.ip.store(0, Ordering::Relaxed);
            h.mac.store(0, Ordering::Relaxed);
            let count = l.header.neighbor_count.load(Ordering::Relaxed);
            l.header
                .neighbor_count
                .store(count.saturating_sub(1), Ordering::Relaxed);
        });
    }

    /// Completed updates so far.
    pub fn generation(&self) -> u64 {
        self.map.layout().header.generation.load(Ordering::Relaxed)
    }

    /// The neighbour entry for `ip` as clients will see it.
    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.map.layout().neighbor(ip)
    }

    /// The next hop for `dst` as clients will see it.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        self.map.layout().lookup(dst)
    }

    /// The whole table as written.
    pub fn snapshot(&self) -> RoutingTable {
        self.map.layout().snapshot()
    }
}

/// A client's read-only view of the region (clones share one mapping).
#[derive(Clone)]
pub struct RegionReader {
    map: std::sync::Arc<Mapping>,
}

impl RegionReader {
    /// Maps a region descriptor received from the netserver (read-only, shared) after checking
    /// that it is a memfd of the right size sealed against shrinking, and that its header has
    /// the right magic, version and sizes. The descriptor is closed (the mapping stays).
    pub fn map(fd: OwnedFd) -> io::Result<RegionReader> {
        let st = fstat(fd.as_raw_fd()).map_err(io::Error::from)?;
        if st.st_size != REGION_LEN as i64 {
            return Err(bad(&format!(
                "size {} bytes, expected {REGION_LEN}",
                st.st_size
            )));
        }
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)
            .map_err(|_| bad("not a sealable memfd"))?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("not sealed against shrinking"));
        }
        let map = Mapping::new(&fd, ProtFlags::PROT_READ)?;
        let h = &map.layout().header;
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(bad(&format!("bad magic {magic:#018x}")));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(bad(&format!(
                "layout version {version}, expected {LAYOUT_VERSION}"
            )));
        }
        if h.layout_len.load(Ordering::Relaxed) as usize != size_of::<Layout>()
            || h.region_len.load(Ordering::Relaxed) != REGION_LEN as u64
        {
            return Err(bad("layout size mismatch"));
        }
        Ok(RegionReader {
            map: std::sync::Arc::new(map),
        })
    }

    /// The next hop for `dst`, read in place under the seqlock; `None` when no route matches
    /// (or the writer stayed mid-update beyond the retry bound).
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<NextHop> {
        self.map.layout().read(|l| l.lookup(dst)).flatten()
    }

    /// msock's interface, read consistently.
    pub fn interface(&self) -> Option<InterfaceConfig> {
        self.map.layout().read(Layout::interface).flatten()
    }

    /// The neighbour entry for `ip`.
    pub fn neighbor(&self, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.map.layout().read(|l| l.neighbor(ip)).flatten()
    }

    /// Completed updates: one atomic load. A next hop looked up after reading generation `g`
    /// is at least as new as `g`, so it may be reused while `generation()` still returns `g`.
    pub fn generation(&self) -> u64 {
        self.map.layout().header.generation.load(Ordering::Acquire)
    }

    /// A consistent copy of the whole table (for `msock route`); empty if none could be taken.
    pub fn snapshot(&self) -> RoutingTable {
        self.map.layout().read(Layout::snapshot).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn iface(k: u8) -> InterfaceConfig {
        InterfaceConfig {
            ifindex: u32::from(k),
            mac: EthernetAddress([k; 6]),
            addr: Ipv4Addr::new(198, 18, k, k),
            prefix_len: k % 33,
            mtu: 1000 + u16::from(k),
        }
    }

    fn reader(w: &RegionWriter) -> RegionReader {
        RegionReader::map(w.readonly_fd().unwrap()).unwrap()
    }

    /// Deterministic xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn layout_is_fixed() {
        assert_eq!(size_of::<Header>(), 128);
        assert_eq!(offset_of!(Header, magic), 0);
        assert_eq!(offset_of!(Header, version), 8);
        assert_eq!(offset_of!(Header, layout_len), 12);
        assert_eq!(offset_of!(Header, region_len), 16);
        assert_eq!(offset_of!(Header, seq), 24);
        assert_eq!(offset_of!(Header, generation), 32);
        assert_eq!(offset_of!(Header, route_count), 40);
        assert_eq!(offset_of!(Header, neighbor_count), 44);
        assert_eq!(offset_of!(Header, if_present), 48);
        assert_eq!(offset_of!(Header, if_mtu), 64);
        assert_eq!(offset_of!(Header, if_mac), 72);
        assert_eq!(size_of::<RouteSlot>(), 16);
        assert_eq!(offset_of!(RouteSlot, flags), 12);
        assert_eq!(size_of::<NeighborSlot>(), 16);
        assert_eq!(offset_of!(NeighborSlot, mac), 8);
        assert_eq!(offset_of!(Layout, routes), 128);
        assert_eq!(offset_of!(Layout, neighbors), 128 + 16 * MAX_ROUTES);
        assert_eq!(
            size_of::<Layout>(),
            128 + 16 * MAX_ROUTES + 16 * NEIGHBOR_SLOTS
        );
        assert_eq!(REGION_LEN, 36864);
        assert!(NEIGHBOR_SLOTS.is_power_of_two());
    }

    #[test]
    fn reader_sees_what_the_writer_wrote() {
        let mut w = RegionWriter::create().unwrap();
        let r = reader(&w);
        assert_eq!(r.interface(), None);
        assert_eq!(r.lookup(ip("198.18.0.1")), None);
        let g0 = r.generation();
        let config = InterfaceConfig {
            ifindex: 3,
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            addr: ip("198.18.0.2"),
            prefix_len: 24,
            mtu: 1500,
        };
        w.set_interface(&config);
        w.add_route(&Route {
            dest: ip("198.18.0.0"),
            prefix_len: 24,
            gateway: None,
        })
        .unwrap();
        w.add_route(&Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(ip("198.18.0.1")),
        })
        .unwrap();
        assert!(r.generation() >= g0 + 3);
        assert_eq!(r.interface(), Some(config));
        let hop = r.lookup(ip("8.8.8.8")).unwrap();
        assert_eq!(
            hop,
            NextHop {
                ip: ip("198.18.0.1"),
                src: config.addr,
                mtu: 1500,
                src_mac: config.mac,
                dst_mac: None
            }
        );
        let g1 = r.generation();
        w.set_neighbor(ip("198.18.0.1"), EthernetAddress([2, 0, 0, 0, 0, 1]))
            .unwrap();
        assert_eq!(r.generation(), g1 + 1);
        assert_eq!(
            r.lookup(ip("8.8.8.8")).unwrap().dst_mac,
            Some(EthernetAddress([2, 0, 0, 0, 0, 1]))
        );
        // Setting the same MAC again is not a change.
        w.set_neighbor(ip("198.18.0.1"), EthernetAddress([2, 0, 0, 0, 0, 1]))
            .unwrap();
        assert_eq!(r.generation(), g1 + 1);
        assert_eq!(r.lookup(ip("198.18.0.9")).unwrap().ip, ip("198.18.0.9"));
        assert!(w.del_route(Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(r.lookup(ip("8.8.8.8")), None);
        let snap = r.snapshot();
        assert_eq!(snap, w.snapshot());
        assert_eq!(snap.routes().len(), 1);
        assert_eq!(snap.neighbors.len(), 1);
        assert_eq!(
            w.add_route(&Route {
                dest: ip("1.0.0.0"),
                prefix_len: 40,
                gateway: None
            }),
            Err(TableError::BadPrefix)
        );
    }

    #[test]
    fn region_matches_the_table_model() {
        let mut w = RegionWriter::create().unwrap();
        let r = reader(&w);
        let mut model = RoutingTable::new();
        let config = InterfaceConfig {
            ifindex: 1,
            mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            addr: ip("10.0.0.2"),
            prefix_len: 8,
            mtu: 9000,
        };
        w.set_interface(&config);
        model.set_interface(config);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        // Addresses from a small space so routes overlap and neighbours collide and recur.
        let addr = |rng: &mut Rng| Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x0000_0fff));
        for step in 0..20_000 {
            match rng.next() % 6 {
                0 => {
                    let route = Route {
                        dest: addr(&mut rng),
                        prefix_len: [0, 8, 20, 24, 28, 32][(rng.next() % 6) as usize],
                        gateway: rng.next().is_multiple_of(2).then(|| addr(&mut rng)),
                    };
                    let mut next = model.clone();
                    next.add_route(&route).unwrap();
                    match w.add_route(&route) {
                        Ok(()) => model = next,
                        Err(e) => {
                            assert_eq!(e, TableError::Full);
                            assert!(next.routes().len() > MAX_ROUTES);
                        }
                    }
                }
                1 => {
                    let (dest, len) = (
                        addr(&mut rng),
                        [0, 8, 20, 24, 28, 32][(rng.next() % 6) as usize],
                    );
                    assert_eq!(
                        w.del_route(dest, len),
                        model.del_route(dest, len),
                        "step {step}"
                    );
                }
                2 | 3 => {
                    let a = addr(&mut rng);
                    let mac =
                        EthernetAddress([2, 0, 0, 0, (rng.next() >> 8) as u8, rng.next() as u8]);
                    match w.set_neighbor(a, mac) {
                        Ok(()) => model.set_neighbor(a, mac),
                        Err(e) => {
                            assert_eq!(e, TableError::Full);
                            assert_eq!(model.neighbors.len(), MAX_NEIGHBORS);
                            assert!(model.neighbor(a).is_none());
                        }
                    }
                }
                _ => {
                    let a = addr(&mut rng);
                    w.remove_neighbor(a);
                    model.remove_neighbor(a);
                }
            }
            let probe = addr(&mut rng);
            assert_eq!(r.lookup(probe), model.lookup(probe), "step {step} {probe}");
            assert_eq!(
                r.neighbor(probe),
                model.neighbor(probe),
                "step {step} {probe}"
            );
        }
        assert_eq!(r.snapshot(), model);
        assert!(model.neighbors.len() > 100, "the run exercised the hash");
    }

    #[test]
    fn neighbor_table_fills_and_drains() {
        let mut w = RegionWriter::create().unwrap();
        let r = reader(&w);
        let key = |i: u32| Ipv4Addr::from(0xc612_0000 + i * 7);
        let mac = |i: u32| EthernetAddress([2, 1, 0, 0, (i >> 8) as u8, i as u8]);
        for i in 0..MAX_NEIGHBORS as u32 {
            w.set_neighbor(key(i), mac(i)).unwrap();
        }
        assert_eq!(w.set_neighbor(ip("1.1.1.1"), mac(0)), Err(TableError::Full));
        // An update of an existing entry still works when full.
        w.set_neighbor(key(5), mac(6)).unwrap();
        w.set_neighbor(key(5), mac(5)).unwrap();
        for i in (0..MAX_NEIGHBORS as u32).step_by(2) {
            w.remove_neighbor(key(i));
        }
        for i in 0..MAX_NEIGHBORS as u32 {
            let expect = (!i.is_multiple_of(2)).then(|| mac(i));
            assert_eq!(r.neighbor(key(i)), expect, "{i}");
        }
        assert_eq!(r.snapshot().neighbors.len(), MAX_NEIGHBORS / 2);
        w.set_neighbor(ip("1.1.1.1"), mac(0)).unwrap();
        assert_eq!(r.neighbor(ip("1.1.1.1")), Some(mac(0)));
    }

    /// Readers in other threads never see a torn update. Every interface they read is one the
    /// writer wrote whole. Neighbours come from a cluster of addresses hashing to a few adjacent
    /// slots (one long probe run), inserted and removed at random so backward shifts keep moving
    /// entries; each MAC's bytes all equal its address's low byte, so an address paired with
    /// another entry's MAC is caught, and the cluster's first entries, never removed, must
    /// always be found.
    #[test]
    fn concurrent_readers_never_see_torn_state() {
        let base = home_slot(u32::from(Ipv4Addr::new(10, 0, 0, 1)));
        let cluster: Vec<Ipv4Addr> = (1..=0x00ff_ffffu32)
            .map(|n| Ipv4Addr::from(0x0a00_0000 | n))
            .filter(|a| {
                a.octets()[3] != 0 && (home_slot(u32::from(*a)).wrapping_sub(base) & SLOT_MASK) < 4
            })
            .take(48)
            .collect();
        assert_eq!(cluster.len(), 48);
        let mac_of = |a: Ipv4Addr| EthernetAddress([a.octets()[3]; 6]);
        const STABLE: usize = 12;
        let mut w = RegionWriter::create().unwrap();
        w.set_interface(&iface(1));
        w.add_route(&Route {
            dest: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: None,
        })
        .unwrap();
        // Churn entries first, so the stable ones sit displaced behind them and move on removals.
        for a in &cluster[STABLE..] {
            w.set_neighbor(*a, mac_of(*a)).unwrap();
        }
        for a in &cluster[..STABLE] {
            w.set_neighbor(*a, mac_of(*a)).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|t| {
                let r = reader(&w);
                let stop = stop.clone();
                let cluster = cluster.clone();
                std::thread::spawn(move || {
                    let mut checks = 0u64;
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) || checks < 10_000 {
                        let i_cfg = r.interface().expect("interface always set");
                        let k = i_cfg.ifindex as u8;
                        assert_eq!(i_cfg, iface(k), "torn interface");
                        let a = cluster[i % cluster.len()];
                        let hop = r.lookup(a).expect("route always present");
                        match hop.dst_mac {
                            Some(mac) => {
                                assert_eq!(mac, mac_of(a), "{a} paired with another entry's MAC")
                            }
                            None => {
                                assert!(i % cluster.len() >= STABLE, "stable neighbour {a} lost")
                            }
                        }
                        assert_eq!(
                            hop.src_mac,
                            EthernetAddress([hop.src_mac.0[0]; 6]),
                            "torn interface MAC"
                        );
                        assert_eq!(
                            u16::from(hop.src_mac.0[0]) + 1000,
                            hop.mtu,
                            "hop mixes two updates"
                        );
                        i += 1;
                        checks += 1;
                    }
                    checks
                })
            })
            .collect();
        let mut rng = Rng(42);
        let start = std::time::Instant::now();
        let mut updates = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(700) {
            let k = (rng.next() % 200 + 1) as u8;
            w.set_interface(&iface(k));
            let a = cluster[STABLE + (rng.next() as usize % (cluster.len() - STABLE))];
            if w.lookup(a).and_then(|h| h.dst_mac).is_some() {
                w.remove_neighbor(a);
            } else {
                w.set_neighbor(a, mac_of(a)).unwrap();
            }
            updates += 2;
        }
        stop.store(true, Ordering::Relaxed);
        let checks: u64 = readers
            .into_iter()
            .map(|h| h.join().expect("reader saw a torn state"))
            .sum();
        assert!(
            updates > 1000 && checks > 1000,
            "updates {updates} checks {checks}"
        );
    }

    #[test]
    fn readonly_descriptor_cannot_be_mapped_writable() {
        let w = RegionWriter::create().unwrap();
        let fd = w.readonly_fd().unwrap();
        let len = NonZeroUsize::new(REGION_LEN).unwrap();
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a kernel-chosen address; the call is expected to fail, and if it did not the
        // mapping is unmapped at once without being touched.
        let res = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0) };
        match res {
            Err(e) => assert_eq!(e, nix::errno::Errno::EACCES),
            Ok(p) => {
                // SAFETY: the mapping just made, never referenced.
                let _ = unsafe { munmap(p, REGION_LEN) };
                panic!("read-only region mapped writable");
            }
        }
        // Reopening it read-write through /proc does not help: the future-write seal holds.
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        match rw {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
            Ok(rw) => {
                // SAFETY: as above.
                let res = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, rw.as_fd(), 0) };
                match res {
                    Err(e) => assert_eq!(e, nix::errno::Errno::EPERM),
                    Ok(p) => {
                        // SAFETY: as above.
                        let _ = unsafe { munmap(p, REGION_LEN) };
                        panic!("reopened region mapped writable");
                    }
                }
                assert_eq!(nix::unistd::write(&rw, b"x"), Err(nix::errno::Errno::EPERM));
            }
        }
    }

    #[test]
    fn writing_the_readonly_mapping_kills_the_writer_process() {
        let w = RegionWriter::create().unwrap();
        let r = reader(&w);
        let target = r.map.ptr.as_ptr().cast::<u64>();
        // SAFETY: the child only performs a volatile store (expected to fault) and `_exit`, both
        // async-signal-safe, so forking a multi-threaded test process is sound.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: deliberately writes the read-only mapping; the kernel must refuse
                // with SIGSEGV. `_exit(0)` only runs if it did not.
                unsafe {
                    std::ptr::write_volatile(target, 0);
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Signaled(child, nix::sys::signal::SIGSEGV, false)
                );
            }
        }
        assert_eq!(r.map.layout().header.magic.load(Ordering::Relaxed), MAGIC);
    }

    /// A memfd shaped like a region (right size, sealed) whose header `fill` writes.
    fn fake_region(len: i64, seal: bool, fill: impl FnOnce(&Layout)) -> OwnedFd {
        let fd = memfd_create(
            c"fake",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&fd, len).unwrap();
        if len == REGION_LEN as i64 {
            let map = Mapping::new(&fd, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).unwrap();
            fill(map.layout());
        }
        if seal {
            fcntl(
                fd.as_raw_fd(),
                FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
            )
            .unwrap();
        }
        fd
    }

    fn good_header(l: &Layout) {
        l.header.magic.store(MAGIC, Ordering::Relaxed);
        l.header.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        l.header
            .layout_len
            .store(size_of::<Layout>() as u32, Ordering::Relaxed);
        l.header
            .region_len
            .store(REGION_LEN as u64, Ordering::Relaxed);
    }

    #[test]
    fn bad_regions_are_rejected() {
        let len = REGION_LEN as i64;
        let invalid = |fd: OwnedFd| {
            let err = RegionReader::map(fd).err().expect("bad region accepted");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        };
        // The fake builder itself makes acceptable regions.
        assert!(RegionReader::map(fake_region(len, true, good_header)).is_ok());
        invalid(fake_region(len, true, |l| {
            good_header(l);
            l.header.magic.store(0xdead_beef, Ordering::Relaxed);
        }));
        invalid(fake_region(len, true, |l| {
            good_header(l);
            l.header
                .version
                .store(LAYOUT_VERSION + 1, Ordering::Relaxed);
        }));
        invalid(fake_region(len, true, |l| {
            good_header(l);
            l.header.layout_len.store(8, Ordering::Relaxed);
        }));
        invalid(fake_region(len, false, good_header));
        invalid(fake_region(len - 4096, true, good_header));
        invalid(fake_region(len + 4096, true, good_header));
        // Not a memfd at all.
        let (rx, _tx) = nix::unistd::pipe().unwrap();
        assert!(RegionReader::map(rx).is_err());
    }

    /// Garbage inside a valid header (huge counts, prefixes, a full hash with no empty slot)
    /// gives answers, not crashes or hangs.
    #[test]
    fn garbage_contents_do_not_crash_readers() {
        let fd = fake_region(REGION_LEN as i64, true, |l| {
            good_header(l);
            l.header.if_present.store(1, Ordering::Relaxed);
            l.header.if_prefix_len.store(u32::MAX, Ordering::Relaxed);
            l.header.if_mtu.store(u32::MAX, Ordering::Relaxed);
            l.header.route_count.store(u32::MAX, Ordering::Relaxed);
            for (n, s) in l.routes.iter().enumerate() {
                s.prefix_len.store(1000 + n as u32, Ordering::Relaxed);
                s.gateway.store(0x0a00_0001, Ordering::Relaxed);
                s.flags.store(u32::MAX, Ordering::Relaxed);
            }
            for (n, s) in l.neighbors.iter().enumerate() {
                s.state.store(SLOT_USED, Ordering::Relaxed);
                s.ip.store(n as u32, Ordering::Relaxed);
            }
        });
        let r = RegionReader::map(fd).unwrap();
        assert_eq!(r.interface().unwrap().prefix_len, 32);
        assert!(
            r.lookup(ip("9.9.9.9")).is_none(),
            "/32 routes to 0.0.0.0 only"
        );
        assert!(r.lookup(Ipv4Addr::UNSPECIFIED).is_some());
        assert_eq!(r.neighbor(ip("255.0.0.1")), None);
        let snap = r.snapshot();
        assert_eq!(snap.neighbors.len(), NEIGHBOR_SLOTS);
        assert_eq!(
            snap.routes().len(),
            1,
            "one distinct route after normalization"
        );
    }

    #[test]
    fn reader_gives_up_on_a_writer_stuck_mid_update() {
        let fd = fake_region(REGION_LEN as i64, true, |l| {
            good_header(l);
            l.header.seq.store(1, Ordering::Relaxed);
        });
        let r = RegionReader::map(fd).unwrap();
        assert_eq!(r.interface(), None);
        assert_eq!(r.lookup(ip("1.2.3.4")), None);
        assert_eq!(r.snapshot(), RoutingTable::new());
    }
}
