//! Endpoint channels made ahead of demand. Creating an AF_PACKET socket's rings waits for an
//! RCU grace period in the kernel (`packet_set_ring` calls `synchronize_net`): 8–16 ms here,
//! which made every bind and accept cost that much (BENCHMARKS.md, `control`). Background
//! threads keep a few channels ready — rings set, bound, filter `reject_all` so no frame
//! reaches them — and [`ChannelPool::take`] only attaches the endpoint's filter and locks it,
//! which does not wait. An empty pool falls back to creating one in the caller.
//!
//! Threads: the netserver's loop stays single-threaded; the makers only create descriptors and
//! hand them over under a mutex (parking_lot), and stop when the pool is dropped.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::channel::bpf::BpfProgram;
use crate::channel::{PacketChannel, RingConfig};

/// Channels kept ready, and threads making them (grace periods of concurrent makers overlap).
const READY: usize = 8;
const MAKERS: usize = 2;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Channels handed out from the pool, and made in the caller because it was empty.
    pub hits: u64,
    pub misses: u64,
    /// Channels the makers could not create.
    pub failures: u64,
}

struct State {
    ready: Vec<OwnedFd>,
    stop: bool,
    stats: PoolStats,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a channel is taken (makers refill) or on stop.
    refill: Condvar,
}

pub struct ChannelPool {
    ifindex: u32,
    ring: RingConfig,
    shared: Arc<Shared>,
    makers: Vec<JoinHandle<()>>,
}

impl ChannelPool {
    /// Starts the makers for channels on interface `ifindex` with rings `ring`.
    pub fn start(ifindex: u32, ring: RingConfig) -> ChannelPool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(READY),
                stop: false,
                stats: PoolStats::default(),
            }),
            refill: Condvar::new(),
        });
        let makers = (0..MAKERS)
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("msock-chan-{i}"))
                    .spawn(move || make_channels(&shared, ifindex, ring))
                    .ok()
            })
            .collect();
        ChannelPool {
            ifindex,
            ring,
            shared,
            makers,
        }
    }

    /// A channel with `filter` set and locked: a ready one when there is one, else made now.
    pub fn take(&self, filter: &BpfProgram) -> std::io::Result<OwnedFd> {
        let ready = {
            let mut state = self.shared.state.lock();
            let fd = state.ready.pop();
            if fd.is_some() {
                state.stats.hits += 1;
            } else {
                state.stats.misses += 1;
            }
            fd
        };
        self.shared.refill.notify_one();
        match ready {
            Some(fd) => {
                PacketChannel::arm_fd(fd.as_fd(), filter, true)?;
                Ok(fd)
            }
            None => PacketChannel::create_fd(self.ifindex, &self.ring, filter, true),
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.shared.state.lock().stats
    }
}

impl Drop for ChannelPool {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.refill.notify_all();
        for maker in self.makers.drain(..) {
            let _ = maker.join();
        }
    }
}

/// A maker thread: keeps `READY` channels in the pool until told to stop.
fn make_channels(shared: &Shared, ifindex: u32, ring: RingConfig) {
    let idle = BpfProgram::reject_all();
    loop {
        {
            let mut state = shared.state.lock();
            while !state.stop && state.ready.len() >= READY {
                shared.refill.wait(&mut state);
            }
            if state.stop {
                return;
            }
        }
        match PacketChannel::create_fd(ifindex, &ring, &idle, false) {
            Ok(fd) => {
                let mut state = shared.state.lock();
                if state.stop {
                    return;
                }
                // Another maker may have filled the pool meanwhile: at most READY wait.
                if state.ready.len() < READY {
                    state.ready.push(fd);
                }
            }
            Err(_) => {
                shared.state.lock().stats.failures += 1;
                // The interface may be going away: do not spin.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
