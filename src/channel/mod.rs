//! The packet channel: how msock exchanges Ethernet frames with the kernel (paper §4.4, §7;
//! `docs/notes/design.md`, "Receive path" and "Send path").
//!
//! A [`Channel`] moves whole Ethernet frames, non-blocking, in batches:
//! - receive: [`Channel::recv_batch`] hands frames to a callback straight from the receive ring
//!   (zero copy) and returns their slots to the kernel once the callback returns;
//! - send: [`Channel::send`] / [`Channel::send_with`] queue a frame (the latter lets the caller
//!   build it in place, e.g. with integrated checksum-and-copy, paper §7.2) and
//!   [`Channel::flush`] hands the queued batch to the kernel in one system call. A full queue is
//!   [`io::ErrorKind::WouldBlock`], reported only after an implicit flush attempt;
//! - [`Channel::wake_fd`] is readable (poll/epoll) when frames are waiting.
//!
//! Implementations: [`PacketChannel`] (AF_PACKET with PACKET_MMAP rings and a classic-BPF
//! filter, see [`packet`]) and [`MemoryChannel`] (in memory, same filters, for deterministic
//! tests). The trait is object-safe and leaves room for AF_XDP and paced transmission.
//!
//! Dropping a [`PacketChannel`] never waits for the kernel's slow socket release: [`closer`]
//! unmaps and closes it in the background (also [`closer::close_later`] for bare channel
//! descriptors).

pub mod bpf;
pub mod closer;
pub mod memory;
pub mod packet;

use std::io;
use std::os::fd::RawFd;

pub use bpf::BpfProgram;
pub use memory::{MemoryChannel, MemoryHub};
pub use packet::{ChannelWaker, Interface, PacketChannel, RingConfig, RingVersion};

/// Counters of one channel since it was opened (or adopted). Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Frames handed to `recv_batch` callbacks, and their bytes.
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Frames handed to the kernel (flushed), and their bytes.
    pub frames_out: u64,
    pub bytes_out: u64,
    /// Frames the kernel dropped because the receive ring was full (PACKET_STATISTICS).
    pub kernel_drops: u64,
    /// Frames received truncated (longer than a ring slot) and therefore not delivered.
    pub truncated: u64,
    /// Times a send found the transmit queue full (each reported as WouldBlock).
    pub ring_full: u64,
    /// Frames the kernel refused at flush (dropped, not retried).
    pub tx_errors: u64,
    /// Ring descriptors with impossible offsets or lengths (skipped, never dereferenced).
    pub ring_errors: u64,
}

/// A non-blocking, batched Ethernet frame channel.
pub trait Channel {
    /// Calls `f` once per waiting frame, for at most `max` frames, and returns how many were
    /// delivered (0: none waiting). Never blocks. The slice is valid only during the call.
    fn recv_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<usize>;

    /// Queues a copy of `frame` (a whole Ethernet frame) for the next [`Channel::flush`].
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.send_with(frame.len(), &mut |slot: &mut [u8]| {
            slot.copy_from_slice(frame)
        })
    }

    /// Queues a frame of `len` bytes that `fill` writes in place (the slice is exactly `len`
    /// bytes long, of unspecified content). Errors: `EMSGSIZE` (`InvalidInput` kind) over
    /// [`Channel::max_frame_len`], `EINVAL` under 14 bytes, `WouldBlock` when the queue is
    /// still full after a flush attempt (then `fill` is not called).
    fn send_with(&mut self, len: usize, fill: &mut dyn FnMut(&mut [u8])) -> io::Result<()>;

    /// Hands every queued frame to the kernel (one system call per batch). `WouldBlock` if
    /// the kernel could not take them all now; the rest stay queued.
    fn flush(&mut self) -> io::Result<()>;

    /// Largest frame `send`/`send_with` accept (slot size, and the interface MTU + 14 when
    /// known).
    fn max_frame_len(&self) -> usize;

    /// A descriptor that polls readable when frames are waiting.
    fn wake_fd(&self) -> RawFd;

    /// Replaces the receive filter. `EPERM` if the channel's filter is locked.
    fn set_filter(&mut self, filter: &BpfProgram) -> io::Result<()>;

    fn stats(&self) -> ChannelStats;
}

/// Ethernet header length: the shortest frame a channel sends.
pub const MIN_FRAME_LEN: usize = 14;

/// Checks a frame length against a channel's limits.
pub(crate) fn check_frame_len(len: usize, max: usize) -> io::Result<()> {
    if len < MIN_FRAME_LEN {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if len > max {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok(())
}
