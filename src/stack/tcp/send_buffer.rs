//! The send queue of a TCP connection (RFC 9293 §3.8.6, the "send buffer" of §3.10.4): a byte
//! ring whose byte 0 is the oldest unacknowledged byte (SND.UNA, or ISS+1 before the SYN is
//! acknowledged). Segments are read from it in place with [`SendBuffer::slices`] — two slices
//! when the region wraps — so output copies each payload byte once, into the frame.
//!
//! Contract: [`SendBuffer::push`] copies as much as fits under the capacity (SO_SNDBUF) and never
//! allocates once the ring has grown to the bytes it holds; storage grows lazily (doubling, up to
//! the capacity) so idle connections stay small. [`SendBuffer::set_capacity`] never drops queued
//! bytes: a smaller capacity only refuses new bytes until the queue has drained below it, and the
//! storage shrinks when the queue empties. The state exports to the connection image
//! ([`super::image`]); import validates it, as the image may come from an untrusted process.
//!
//! Storage is a `Vec` by default. [`SendBuffer::attach_shared`] moves the ring into memory the
//! caller supplies ([`SharedRingStorage`], e.g. a client's crash-record memfd, see
//! [`super::crash_record`]): the queued bytes are then already where the netserver can read
//! them if the process dies, with no copy per push. A shared ring has a fixed size; a push that
//! needs more (the capacity was raised past it) moves the queue back into a `Vec` (detach), and
//! [`SendBuffer::shared_layout`] then says so.
#![forbid(unsafe_code)]

use core::fmt;

use super::image::{ImageError, ImageReader, ImageWriter};

/// Section tag of a send buffer in a state image.
const SECTION: u8 = 0x53; // 'S'
/// Smallest storage allocated once data arrives (avoids many tiny reallocations).
const MIN_STORAGE: usize = 4096;
/// Largest capacity this engine accepts, from a caller or from an image (Linux's SO_SNDBUF is
/// capped by `wmem_max`; no sane configuration comes near 1 GiB).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Fixed-size memory a [`SendBuffer`] may keep its ring in (see the module documentation).
/// `bytes` and `bytes_mut` must always return the same region, of the same length.
pub trait SharedRingStorage: fmt::Debug + Send + Sync {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// Where the ring lives.
#[derive(Debug)]
enum Storage {
    Owned(Vec<u8>),
    Shared(Box<dyn SharedRingStorage>),
}

impl Storage {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Shared(s) => s.bytes(),
        }
    }

    #[inline]
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Shared(s) => s.bytes_mut(),
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.bytes().len()
    }

    fn is_shared(&self) -> bool {
        matches!(self, Storage::Shared(_))
    }
}

/// A byte ring holding the bytes queued for sending, the unacknowledged ones first.
#[derive(Debug)]
pub struct SendBuffer {
    /// Ring storage; its length is the ring size (0 until the first push).
    storage: Storage,
    /// Index in `storage` of byte 0 (SND.UNA).
    head: usize,
    /// Bytes queued.
    len: usize,
    /// Most bytes [`SendBuffer::push`] admits.
    capacity: usize,
}

/// A clone never shares memory: a shared ring is copied into a `Vec` (same layout).
impl Clone for SendBuffer {
    fn clone(&self) -> SendBuffer {
        SendBuffer {
            storage: Storage::Owned(self.storage.bytes().to_vec()),
            head: self.head,
            len: self.len,
            capacity: self.capacity,
        }
    }
}

impl SendBuffer {
    /// An empty queue admitting `capacity` bytes (clamped to [`MAX_CAPACITY`]); allocates nothing
    /// until data is pushed.
    pub fn new(capacity: usize) -> SendBuffer {
        SendBuffer {
            storage: Storage::Owned(Vec::new()),
            head: 0,
            len: 0,
            capacity: capacity.min(MAX_CAPACITY),
        }
    }

    /// Most bytes the queue admits.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the capacity (clamped to [`MAX_CAPACITY`]). Queued bytes are never dropped: below
    /// the queue length, [`SendBuffer::free`] is 0 until enough bytes are acknowledged.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.min(MAX_CAPACITY);
        if self.len == 0
            && !self.storage.is_shared()
            && self.storage.len() > self.capacity.max(MIN_STORAGE)
        {
            self.storage = Storage::Owned(Vec::new());
            self.head = 0;
        }
    }

    /// Moves the ring into `storage` (its whole length is the ring size): the queued bytes are
    /// copied there once, from index 0. Refused (the storage is handed back) when it cannot
    /// hold the bytes already queued or is empty.
    pub fn attach_shared(
        &mut self,
        mut storage: Box<dyn SharedRingStorage>,
    ) -> Result<(), Box<dyn SharedRingStorage>> {
        let ring = storage.bytes().len();
        if ring == 0 || ring < self.len || ring > MAX_CAPACITY {
            return Err(storage);
        }
        let [a, b] = self.slices(0, self.len);
        let dst = storage.bytes_mut();
        dst[..a.len()].copy_from_slice(a);
        dst[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.storage = Storage::Shared(storage);
        self.head = 0;
        Ok(())
    }

    /// Where the queue lies in a shared ring: (index of byte 0, ring size). `None` while the
    /// ring is in a `Vec` (never attached, or detached by a push the ring could not hold).
    pub fn shared_layout(&self) -> Option<(usize, usize)> {
        self.storage
            .is_shared()
            .then(|| (self.head, self.storage.len()))
    }

    /// Bytes queued (unacknowledged and not yet sent).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes [`SendBuffer::push`] would accept now.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.len)
    }

    /// Moves the queue into fresh storage of `size` bytes (≥ `len`), laid out from index 0 (a
    /// shared ring is left: the bytes move into a `Vec`).
    fn reshape(&mut self, size: usize) {
        debug_assert!(size >= self.len);
        let mut fresh = vec![0u8; size];
        let [a, b] = self.slices(0, self.len);
        fresh[..a.len()].copy_from_slice(a);
        fresh[a.len()..a.len() + b.len()].copy_from_slice(b);
        self.storage = Storage::Owned(fresh);
        self.head = 0;
    }

    /// Appends as much of `data` as fits under the capacity; returns the count.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        let needed = self.len + n;
        if needed > self.storage.len() {
            // Doubling keeps pushes amortised O(1); never beyond the capacity (needed ≤ it).
            let size = needed
                .max(self.storage.len().saturating_mul(2))
                .max(MIN_STORAGE)
                .min(self.capacity.max(needed));
            self.reshape(size);
        }
        let head = self.head;
        let len = self.len;
        let storage = self.storage.bytes_mut();
        let ring = storage.len();
        let tail = (head + len) % ring;
        let first = n.min(ring - tail);
        storage[tail..tail + first].copy_from_slice(&data[..first]);
        storage[..n - first].copy_from_slice(&data[first..n]);
        self.len = needed;
        n
    }

    /// The bytes `[offset, offset + len)` counted from SND.UNA, clamped to what is queued, as the
    /// two parts of the ring (the second is empty unless the region wraps).
    pub fn slices(&self, offset: usize, len: usize) -> [&[u8]; 2] {
        if offset >= self.len || len == 0 {
            return [&[], &[]];
        }
        let len = len.min(self.len - offset);
        let storage = self.storage.bytes();
        let ring = storage.len();
        let start = (self.head + offset) % ring;
        let first = len.min(ring - start);
        [&storage[start..start + first], &storage[..len - first]]
    }

    /// Drops `n` acknowledged bytes from the front (clamped to the queue length).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
            // Lazy shrink after the capacity was lowered (a shared ring keeps its size).
            if !self.storage.is_shared() && self.storage.len() > self.capacity.max(MIN_STORAGE) {
                self.storage = Storage::Owned(Vec::new());
            }
        } else {
            self.head = (self.head + n) % self.storage.len();
        }
    }

    /// Writes the queue (capacity and bytes) to a state image.
    pub fn export(&self, w: &mut ImageWriter) {
        w.section(SECTION);
        w.usize(self.capacity);
        let [a, b] = self.slices(0, self.len);
        w.bytes_parts(&[a, b]);
    }

    /// Reads a queue written by [`SendBuffer::export`].
    ///
    /// The queue may hold more bytes than the capacity (SO_SNDBUF lowered while data was queued),
    /// so the check is that both are within [`MAX_CAPACITY`]; the bytes themselves are in the
    /// image, so they bound the allocation.
    pub fn import(r: &mut ImageReader<'_>) -> Result<SendBuffer, ImageError> {
        r.read_section(SECTION)?;
        let capacity = r.read_usize()?;
        if capacity > MAX_CAPACITY {
            return Err(ImageError::Invalid("send buffer capacity"));
        }
        let bytes = r.read_bytes()?;
        if bytes.len() > MAX_CAPACITY {
            return Err(ImageError::Invalid("send buffer length"));
        }
        let mut buf = SendBuffer {
            storage: Storage::Owned(bytes.to_vec()),
            head: 0,
            len: bytes.len(),
            capacity,
        };
        if buf.len < buf.capacity && !bytes.is_empty() {
            // Room to grow without an immediate reallocation on the next push.
            buf.reshape(buf.capacity.min(buf.len.saturating_mul(2).max(MIN_STORAGE)));
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Instant;

    fn joined(parts: [&[u8]; 2]) -> Vec<u8> {
        [parts[0], parts[1]].concat()
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn empty_buffer_reads_nothing() {
        let b = SendBuffer::new(100);
        assert!(b.is_empty());
        assert_eq!(b.free(), 100);
        assert_eq!(joined(b.slices(0, 10)), b"");
        let mut b = b;
        b.consume(5);
        assert_eq!(b.len(), 0);
        assert_eq!(SendBuffer::new(usize::MAX).capacity(), MAX_CAPACITY);
    }

    #[test]
    fn push_consume_wrap_and_slices() {
        let mut b = SendBuffer::new(8192);
        let data: Vec<u8> = (0..=255u8).cycle().take(9000).collect();
        assert_eq!(b.push(&data[..5000]), 5000);
        b.consume(3000);
        assert_eq!(b.push(&data[5000..]), 4000, "fills to capacity");
        assert_eq!(b.len(), 6000);
        b.consume(2000);
        assert_eq!(b.push(&data[..4192]), 4192);
        assert_eq!(b.free(), 0);
        assert_eq!(b.push(b"x"), 0);
        let mut expect = data[5000..9000].to_vec();
        expect.extend_from_slice(&data[..4192]);
        assert_eq!(joined(b.slices(0, b.len())), expect);
        // The ring wraps: some window reads as two parts.
        let [a, c] = b.slices(0, b.len());
        assert!(!a.is_empty() && !c.is_empty(), "expected a wrapped ring");
        assert_eq!(joined(b.slices(100, 50)), expect[100..150]);
        assert_eq!(joined(b.slices(b.len(), 10)), b"");
        assert_eq!(
            joined(b.slices(b.len() - 3, 10)),
            expect[expect.len() - 3..]
        );
        assert_eq!(joined(b.slices(0, 0)), b"");
        b.consume(usize::MAX);
        assert!(b.is_empty());
    }

    #[test]
    fn storage_stops_growing_once_large_enough() {
        let mut b = SendBuffer::new(1 << 20);
        let chunk = [7u8; 1448];
        for _ in 0..2000 {
            b.push(&chunk);
            b.consume(1448);
        }
        for _ in 0..400 {
            b.push(&chunk);
        }
        let ring = b.storage.len();
        assert!(ring <= 1 << 20);
        for _ in 0..10_000 {
            b.consume(1448);
            assert_eq!(b.push(&chunk), 1448);
            assert_eq!(b.storage.len(), ring, "no reallocation in steady state");
        }
    }

    #[test]
    fn random_operations_match_a_vecdeque() {
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..20 {
            let cap = 1 + rng.below(20_000);
            let mut b = SendBuffer::new(cap);
            let mut model = std::collections::VecDeque::new();
            let mut counter = 0u8;
            for _ in 0..500 {
                match rng.below(4) {
                    0 | 1 => {
                        let n = rng.below(3000);
                        let data: Vec<u8> = (0..n)
                            .map(|_| {
                                counter = counter.wrapping_add(1);
                                counter
                            })
                            .collect();
                        let took = b.push(&data);
                        assert_eq!(took, n.min(cap.saturating_sub(model.len())));
                        model.extend(&data[..took]);
                    }
                    2 => {
                        let n = rng.below(4000);
                        b.consume(n);
                        for _ in 0..n.min(model.len()) {
                            model.pop_front();
                        }
                    }
                    _ => {
                        let off = rng.below(model.len() + 10);
                        let len = rng.below(model.len() + 10);
                        let got = joined(b.slices(off, len));
                        let want: Vec<u8> = model.iter().skip(off).take(len).copied().collect();
                        assert_eq!(got, want);
                    }
                }
                assert_eq!(b.len(), model.len());
            }
        }
    }

    #[test]
    fn capacity_changes_never_drop_bytes() {
        let mut b = SendBuffer::new(10);
        assert_eq!(b.push(b"0123456789abc"), 10);
        assert_eq!(b.push(b"x"), 0);
        b.set_capacity(4);
        assert_eq!(b.len(), 10);
        assert_eq!(b.free(), 0);
        b.consume(8);
        assert_eq!(b.free(), 2);
        assert_eq!(joined(b.slices(0, 10)), b"89");
        b.set_capacity(20_000);
        assert_eq!(b.push(&[1u8; 15_000]), 15_000);
        assert_eq!(joined(b.slices(0, 2)), b"89");
        // Shrinking a large, drained buffer releases its storage.
        b.consume(usize::MAX);
        b.set_capacity(100);
        assert_eq!(b.storage.len(), 0);
        assert_eq!(b.push(b"ok"), 2);
        assert_eq!(joined(b.slices(0, 2)), b"ok");
    }

    /// Caller-supplied storage for the tests: a fixed `Vec` standing for shared memory.
    #[derive(Debug)]
    struct Fixed(Vec<u8>);
    impl SharedRingStorage for Fixed {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }

    #[test]
    fn shared_ring_behaves_like_the_vec_ring_and_holds_the_bytes() {
        let mut rng = Rng(0x5eed_0002);
        let cap = 10_000;
        let mut b = SendBuffer::new(cap);
        b.push(&[1, 2, 3]);
        b.consume(1);
        assert!(b.shared_layout().is_none());
        assert!(
            b.attach_shared(Box::new(Fixed(vec![0; 1]))).is_err(),
            "too small"
        );
        assert!(b.attach_shared(Box::new(Fixed(Vec::new()))).is_err());
        b.attach_shared(Box::new(Fixed(vec![0; cap]))).unwrap();
        assert_eq!(b.shared_layout(), Some((0, cap)));
        assert_eq!(joined(b.slices(0, 10)), [2, 3]);
        let mut model: std::collections::VecDeque<u8> = [2u8, 3].into_iter().collect();
        let mut counter = 0u8;
        for _ in 0..2000 {
            if rng.below(2) == 0 {
                let data: Vec<u8> = (0..rng.below(3000))
                    .map(|_| {
                        counter = counter.wrapping_add(1);
                        counter
                    })
                    .collect();
                let took = b.push(&data);
                model.extend(&data[..took]);
            } else {
                let n = rng.below(4000);
                b.consume(n);
                model.drain(..n.min(model.len()));
            }
            let (head, ring) = b.shared_layout().expect("stays shared within its size");
            assert_eq!(ring, cap);
            // The queue, read straight from the ring as a crash reader would.
            let Storage::Shared(s) = &b.storage else {
                unreachable!()
            };
            let raw = s.bytes();
            let got: Vec<u8> = (0..b.len()).map(|i| raw[(head + i) % ring]).collect();
            assert!(got.iter().eq(model.iter()));
        }
        // A clone never shares the memory.
        let c = b.clone();
        assert!(c.shared_layout().is_none());
        assert_eq!(joined(c.slices(0, cap)), joined(b.slices(0, cap)));
        // Raising the capacity past the ring: a push that needs more detaches into a Vec.
        b.set_capacity(cap * 4);
        let before = joined(b.slices(0, b.len()));
        let fill = vec![7u8; cap];
        b.push(&fill);
        assert!(b.shared_layout().is_none());
        assert_eq!(joined(b.slices(0, before.len())), before);
    }

    fn image_of(b: &SendBuffer) -> Vec<u8> {
        let mut w = ImageWriter::new(Instant::ZERO);
        b.export(&mut w);
        w.finish()
    }

    fn import_all(image: &[u8]) -> Result<SendBuffer, ImageError> {
        let mut r = ImageReader::new(image, Instant::ZERO)?;
        let b = SendBuffer::import(&mut r)?;
        r.finish()?;
        Ok(b)
    }

    #[test]
    fn image_round_trip() {
        for (cap, push, consume) in [(100, 11, 6), (5000, 4500, 4000), (16, 0, 0)] {
            let mut b = SendBuffer::new(cap);
            let data: Vec<u8> = (0..push).map(|i| i as u8).collect();
            b.push(&data);
            b.consume(consume);
            b.push(&data[..push.min(cap - (push - consume))]);
            let mut back = import_all(&image_of(&b)).unwrap();
            assert_eq!(back.capacity(), b.capacity());
            assert_eq!(back.len(), b.len());
            assert_eq!(joined(back.slices(0, cap)), joined(b.slices(0, cap)));
            assert_eq!(back.push(&[9; 3]), b.free().min(3));
        }
        // Over capacity after a shrink: still a valid image.
        let mut b = SendBuffer::new(10);
        b.push(b"0123456789");
        b.set_capacity(2);
        let back = import_all(&image_of(&b)).unwrap();
        assert_eq!((back.len(), back.capacity(), back.free()), (10, 2, 0));
    }

    #[test]
    fn corrupted_images_are_rejected() {
        let mut b = SendBuffer::new(100);
        b.push(b"hello world");
        b.consume(6);
        let image = image_of(&b);
        for cut in 6..image.len() {
            assert_eq!(
                import_all(&image[..cut]).unwrap_err(),
                ImageError::Truncated
            );
        }
        let mut bad = image.clone();
        bad[6] ^= 1;
        assert_eq!(
            import_all(&bad).unwrap_err(),
            ImageError::Invalid("section marker")
        );
        let mut w = ImageWriter::new(Instant::ZERO);
        w.section(SECTION);
        w.usize(MAX_CAPACITY + 1);
        w.bytes(b"");
        assert_eq!(
            import_all(&w.finish()).unwrap_err(),
            ImageError::Invalid("send buffer capacity")
        );
        let mut long = image;
        long.push(0);
        assert_eq!(import_all(&long).unwrap_err(), ImageError::TrailingBytes);
    }
}
