//! In-memory channels: a [`MemoryHub`] is a simulated Ethernet segment joining any number of
//! [`MemoryChannel`]s, so the netserver and the client runtime can be tested deterministically
//! without a network or privileges.
//!
//! Contract (mirrors [`super::PacketChannel`]):
//! - a flushed frame reaches every *other* channel on the hub whose classic-BPF filter accepts
//!   it, run by the same interpreter semantics as the kernel ([`BpfProgram::run`]), truncated to
//!   the filter's return value; a channel never receives its own frames
//!   (PACKET_IGNORE_OUTGOING);
//! - each channel's receive queue is bounded; a frame arriving at a full queue is dropped and
//!   counted in `kernel_drops`;
//! - frames are queued by `send`/`send_with` and delivered only at `flush` (or implicitly when
//!   the batch is full), so a missing flush shows in tests as it would on a real ring;
//! - [`Channel::wake_fd`] is an eventfd, readable exactly while the receive queue is non-empty;
//! - [`MemoryHub::inject`] delivers a frame "from the wire" to every channel (through filters),
//!   for tests that feed hand-made or malformed frames.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

use super::{BpfProgram, Channel, ChannelStats, check_frame_len};

/// Default largest frame: a 1500-byte MTU plus the Ethernet header.
pub const DEFAULT_MAX_FRAME: usize = 1514;
/// Default receive queue length per channel, in frames.
pub const DEFAULT_QUEUE: usize = 1024;
/// Frames queued by `send` before an implicit flush.
const BATCH: usize = 64;

struct Port {
    queue: VecDeque<Vec<u8>>,
    filter: BpfProgram,
    locked: bool,
    drops: u64,
    wake: Arc<EventFd>,
}

struct Hub {
    ports: Vec<Option<Port>>,
    max_frame: usize,
    queue_capacity: usize,
}

impl Hub {
    /// Delivers `frame` to every port but `from`.
    fn deliver(&mut self, from: Option<usize>, frame: &[u8]) {
        let capacity = self.queue_capacity;
        for (id, port) in self.ports.iter_mut().enumerate() {
            let Some(port) = port else { continue };
            if Some(id) == from {
                continue;
            }
            let keep = port.filter.run(frame);
            if keep == 0 {
                continue;
            }
            if port.queue.len() >= capacity {
                port.drops += 1;
                continue;
            }
            let len = usize::try_from(keep).unwrap_or(usize::MAX).min(frame.len());
            if port.queue.is_empty() {
                // Counter eventfd: any non-zero value is readable; an error (overflow after
                // 2^64-2 writes) cannot happen as the counter is reset when the queue drains.
                let _ = port.wake.write(1);
            }
            port.queue.push_back(frame[..len].to_vec());
        }
    }
}

/// A simulated Ethernet segment.
#[derive(Clone)]
pub struct MemoryHub {
    inner: Arc<Mutex<Hub>>,
}

impl Default for MemoryHub {
    fn default() -> MemoryHub {
        MemoryHub::new()
    }
}

impl MemoryHub {
    pub fn new() -> MemoryHub {
        MemoryHub::with_limits(DEFAULT_MAX_FRAME, DEFAULT_QUEUE)
    }

    /// A hub whose channels send frames of at most `max_frame` bytes and queue at most
    /// `queue_capacity` received frames each.
    pub fn with_limits(max_frame: usize, queue_capacity: usize) -> MemoryHub {
        MemoryHub {
            inner: Arc::new(Mutex::new(Hub {
                ports: Vec::new(),
                max_frame,
                queue_capacity,
            })),
        }
    }

    /// Attaches a new channel receiving what `filter` accepts.
    pub fn channel(&self, filter: BpfProgram) -> io::Result<MemoryChannel> {
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        let mut hub = self.inner.lock();
        let port = Port {
            queue: VecDeque::new(),
            filter,
            locked: false,
            drops: 0,
            wake: wake.clone(),
        };
        let id = match hub.ports.iter().position(Option::is_none) {
            Some(free) => {
                hub.ports[free] = Some(port);
                free
            }
            None => {
                hub.ports.push(Some(port));
                hub.ports.len() - 1
            }
        };
        let max_frame = hub.max_frame;
        Ok(MemoryChannel {
            hub: self.inner.clone(),
            id,
            wake,
            pending: Vec::new(),
            max_frame,
            stats: ChannelStats::default(),
        })
    }

    /// Delivers `frame` to every channel whose filter accepts it, as if it came from the wire.
    pub fn inject(&self, frame: &[u8]) {
        self.inner.lock().deliver(None, frame);
    }
}

/// One end on a [`MemoryHub`].
pub struct MemoryChannel {
    hub: Arc<Mutex<Hub>>,
    id: usize,
    wake: Arc<EventFd>,
    pending: Vec<Vec<u8>>,
    max_frame: usize,
    stats: ChannelStats,
}

impl MemoryChannel {
    /// Two channels joined by a fresh hub, both accepting every frame.
    pub fn pair() -> io::Result<(MemoryChannel, MemoryChannel)> {
        let hub = MemoryHub::new();
        Ok((
            hub.channel(BpfProgram::accept_all())?,
            hub.channel(BpfProgram::accept_all())?,
        ))
    }

    /// Locks the filter (SO_LOCK_FILTER): later `set_filter` calls fail with EPERM.
    pub fn lock_filter(&mut self) {
        if let Some(Some(port)) = self.hub.lock().ports.get_mut(self.id) {
            port.locked = true;
        }
    }

    /// Frames waiting in the receive queue.
    pub fn queued(&self) -> usize {
        match self.hub.lock().ports.get(self.id) {
            Some(Some(port)) => port.queue.len(),
            _ => 0,
        }
    }
}

impl AsFd for MemoryChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

impl Channel for MemoryChannel {
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        // Take the frames out under the lock, run callbacks without it: a callback may send on
        // another channel of this hub.
        let frames: Vec<Vec<u8>> = {
            let mut hub = self.hub.lock();
            let Some(Some(port)) = hub.ports.get_mut(self.id) else {
                return Ok(0);
            };
            let n = max.min(port.queue.len());
            let frames = port.queue.drain(..n).collect();
            if port.queue.is_empty() {
                // Reset the eventfd; EAGAIN just means it was already clear.
                let _ = port.wake.read();
            }
            frames
        };
        for frame in &frames {
            self.stats.frames_in += 1;
            self.stats.bytes_in += frame.len() as u64;
            f(frame);
        }
        Ok(frames.len())
    }

    fn send_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        check_frame_len(len, self.max_frame)?;
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        let mut frame = vec![0u8; len];
        fill(&mut frame);
        self.pending.push(frame);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut hub = self.hub.lock();
        for frame in self.pending.drain(..) {
            self.stats.frames_out += 1;
            self.stats.bytes_out += frame.len() as u64;
            hub.deliver(Some(self.id), &frame);
        }
        Ok(())
    }

    fn max_frame_len(&self) -> usize {
        self.max_frame
    }

    fn wake_fd(&self) -> RawFd {
        self.wake.as_fd().as_raw_fd()
    }

    fn set_filter(&mut self, filter: &BpfProgram) -> io::Result<()> {
        let mut hub = self.hub.lock();
        let Some(Some(port)) = hub.ports.get_mut(self.id) else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        if port.locked {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        port.filter = filter.clone();
        Ok(())
    }

    fn stats(&self) -> ChannelStats {
        let drops = match self.hub.lock().ports.get(self.id) {
            Some(Some(port)) => port.drops,
            _ => 0,
        };
        ChannelStats {
            kernel_drops: drops,
            ..self.stats
        }
    }
}

impl Drop for MemoryChannel {
    fn drop(&mut self) {
        if let Some(slot) = self.hub.lock().ports.get_mut(self.id) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::bpf;
    use crate::wire::EthernetAddress;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::net::Ipv4Addr;

    fn readable(ch: &MemoryChannel) -> bool {
        let mut fds = [PollFd::new(ch.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        let mut f = vec![tag; len];
        f[12] = 0x88;
        f[13] = 0xb5;
        f
    }

    fn recv_all(ch: &mut MemoryChannel) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        ch.recv_batch(usize::MAX, &mut |f| out.push(f.to_vec()))
            .expect("recv");
        out
    }

    #[test]
    fn pair_delivers_on_flush_and_wakes() {
        let (mut a, mut b) = MemoryChannel::pair().expect("pair");
        assert!(!readable(&b));
        a.send(&frame(1, 60)).expect("send");
        a.send(&frame(2, 1514)).expect("send");
        assert!(!readable(&b), "nothing before flush");
        a.flush().expect("flush");
        assert!(readable(&b));
        assert!(!readable(&a), "no loopback of own frames");
        let mut got = Vec::new();
        assert_eq!(
            b.recv_batch(1, &mut |f| got.push(f.to_vec()))
                .expect("recv"),
            1
        );
        assert!(readable(&b), "one frame still waiting");
        assert_eq!(
            b.recv_batch(8, &mut |f| got.push(f.to_vec()))
                .expect("recv"),
            1
        );
        assert!(!readable(&b));
        assert_eq!(got, vec![frame(1, 60), frame(2, 1514)]);
        assert_eq!(
            b.recv_batch(8, &mut |_| panic!("no frame")).expect("recv"),
            0
        );
        let sa = a.stats();
        let sb = b.stats();
        assert_eq!((sa.frames_out, sa.bytes_out), (2, 1574));
        assert_eq!((sb.frames_in, sb.bytes_in), (2, 1574));
    }

    #[test]
    fn send_limits() {
        let (mut a, _b) = MemoryChannel::pair().expect("pair");
        let err = a.send(&[0u8; 13]).expect_err("runt");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let err = a.send(&vec![0u8; 1515]).expect_err("too big");
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        assert_eq!(a.max_frame_len(), 1514);
        let mut called = false;
        a.send_with(100, &mut |slot| {
            called = true;
            assert_eq!(slot.len(), 100);
        })
        .expect("send_with");
        assert!(called);
    }

    #[test]
    fn hub_applies_filters_and_locks() {
        let hub = MemoryHub::new();
        let ip = Ipv4Addr::new(198, 18, 0, 2);
        let mac = EthernetAddress([2, 0, 0, 0, 0, 2]);
        let mut wire = hub.channel(BpfProgram::accept_all()).expect("wire");
        let mut server = hub
            .channel(bpf::netserver(ip, mac, &[7000]))
            .expect("server");
        let mut endpoint = hub.channel(bpf::endpoint_udp(ip, 7000)).expect("endpoint");
        endpoint.lock_filter();
        assert_eq!(
            endpoint
                .set_filter(&BpfProgram::accept_all())
                .expect_err("locked")
                .raw_os_error(),
            Some(libc::EPERM)
        );
        server
            .set_filter(&bpf::netserver(ip, mac, &[7000]))
            .expect("unlocked");

        let udp = |port: u16| {
            let mut f = vec![0u8; 14 + 20 + 8];
            f[..6].copy_from_slice(&mac.0);
            f[12..14].copy_from_slice(&[8, 0]);
            f[14] = 0x45;
            f[14 + 9] = 17;
            f[14 + 16..14 + 20].copy_from_slice(&ip.octets());
            f[36..38].copy_from_slice(&port.to_be_bytes());
            f
        };
        wire.send(&udp(7000)).expect("send");
        wire.send(&udp(7001)).expect("send");
        wire.flush().expect("flush");
        assert_eq!(recv_all(&mut endpoint), vec![udp(7000)]);
        assert_eq!(recv_all(&mut server), vec![udp(7001)]);
        // The endpoint's reply reaches the wire (accept-all) but not the netserver (not to ip).
        endpoint.send(&frame(9, 64)).expect("send");
        endpoint.flush().expect("flush");
        assert_eq!(recv_all(&mut wire), vec![frame(9, 64)]);
        assert!(recv_all(&mut server).is_empty());
        // Injected truncated frames are filtered like any other: dropped by every filter but
        // the wire's.
        hub.inject(&udp(7000)[..30]);
        assert!(recv_all(&mut endpoint).is_empty());
        assert_eq!(recv_all(&mut wire).len(), 1);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let hub = MemoryHub::with_limits(1514, 3);
        let mut a = hub.channel(BpfProgram::accept_all()).expect("a");
        let mut b = hub.channel(BpfProgram::accept_all()).expect("b");
        for i in 0..5 {
            a.send(&frame(i, 64)).expect("send");
        }
        a.flush().expect("flush");
        let got = recv_all(&mut b);
        assert_eq!(got, vec![frame(0, 64), frame(1, 64), frame(2, 64)]);
        assert_eq!(b.stats().kernel_drops, 2);
        // A dropped channel frees its slot and receives nothing more.
        drop(b);
        a.send(&frame(7, 64)).expect("send");
        a.flush().expect("flush");
        let mut c = hub.channel(BpfProgram::accept_all()).expect("c");
        assert!(recv_all(&mut c).is_empty());
    }

    #[test]
    fn implicit_flush_when_batch_is_full() {
        let (mut a, mut b) = MemoryChannel::pair().expect("pair");
        for i in 0..=BATCH {
            a.send(&frame(i as u8, 64)).expect("send");
        }
        assert_eq!(recv_all(&mut b).len(), BATCH);
        a.flush().expect("flush");
        assert_eq!(recv_all(&mut b).len(), 1);
    }
}
