//! Endpoint channels made ahead of demand. Creating an AF_PACKET socket's rings waits for an
//! RCU grace period in the kernel (`packet_set_ring` calls `synchronize_net`): 8–16 ms here,
//! which made every bind and accept cost that much (BENCHMARKS.md, `control`). Background
//! threads keep channels ready — rings set, bound, filter `reject_all` so no frame reaches
//! them — and [`ChannelPool::take`] only attaches the endpoint's filter and locks it, which
//! does not wait. An empty pool falls back to creating one in the caller.
//!
//! Throughput: one maker makes at most one channel per grace period (~80/s), but concurrent
//! makers share grace periods, so the pool scales its makers with demand: [`BASE_MAKERS`]
//! always, up to [`MAX_MAKERS`] while channels are taken faster than they are made. The number
//! kept ready likewise grows from [`BASE_READY`] up to [`MAX_READY`] when the pool runs dry,
//! and falls back (the surplus closed in the background) after [`CALM`] without a miss.
//! Inetd-style loops taking thousands of channels a second are served from the pool.
//!
//! Threads: the netserver's loop stays single-threaded; the makers only create descriptors and
//! hand them over under a mutex (parking_lot), and stop when the pool is dropped.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::channel::bpf::BpfProgram;
use crate::channel::{PacketChannel, RingConfig, closer};

/// Channels kept ready when demand is low, and at most.
pub const BASE_READY: usize = 8;
pub const MAX_READY: usize = 64;
/// Maker threads always running, and at most (extra ones leave after [`CALM`] idle).
pub const BASE_MAKERS: usize = 2;
pub const MAX_MAKERS: usize = 32;
/// How long without a miss or a near-empty pool before the pool shrinks back.
pub const CALM: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Channels handed out from the pool, and made in the caller because it was empty.
    pub hits: u64,
    pub misses: u64,
    /// Channels the makers could not create.
    pub failures: u64,
    /// Channels kept ready now (target), and maker threads running.
    pub target: usize,
    pub makers: usize,
}

struct State {
    ready: Vec<OwnedFd>,
    /// Channels being made now.
    making: usize,
    /// How many to keep ready (ready + making).
    target: usize,
    makers: usize,
    /// Last time the pool ran low.
    pressed: Instant,
    stop: bool,
    stats: PoolStats,
}

impl State {
    fn wanted(&self) -> bool {
        !self.stop && self.ready.len() + self.making < self.target
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a channel is taken (makers refill) or on stop.
    refill: Condvar,
    ifindex: u32,
    ring: RingConfig,
}

pub struct ChannelPool {
    shared: Arc<Shared>,
    makers: Mutex<Vec<JoinHandle<()>>>,
}

impl ChannelPool {
    /// Starts the makers for channels on interface `ifindex` with rings `ring`.
    pub fn start(ifindex: u32, ring: RingConfig) -> ChannelPool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(MAX_READY),
                making: 0,
                target: BASE_READY,
                makers: 0,
                pressed: Instant::now(),
                stop: false,
                stats: PoolStats::default(),
            }),
            refill: Condvar::new(),
            ifindex,
            ring,
        });
        let pool = ChannelPool {
            shared,
            makers: Mutex::new(Vec::new()),
        };
        for _ in 0..BASE_MAKERS {
            pool.spawn_maker();
        }
        pool
    }

    /// Starts one maker if below [`MAX_MAKERS`].
    fn spawn_maker(&self) {
        {
            let mut state = self.shared.state.lock();
            if state.makers >= MAX_MAKERS || state.stop {
                return;
            }
            state.makers += 1;
        }
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("msock-chan".into())
            .stack_size(128 * 1024)
            .spawn(move || make_channels(&shared));
        match spawned {
            Ok(handle) => {
                let mut makers = self.makers.lock();
                makers.retain(|h| !h.is_finished());
                makers.push(handle);
            }
            Err(_) => self.shared.state.lock().makers -= 1,
        }
    }

    /// A channel with `filter` set and locked: a ready one when there is one, else made now.
    pub fn take(&self, filter: &BpfProgram) -> std::io::Result<OwnedFd> {
        let (ready, more_makers) = {
            let mut state = self.shared.state.lock();
            let fd = state.ready.pop();
            if fd.is_some() {
                state.stats.hits += 1;
            } else {
                state.stats.misses += 1;
            }
            // Running low: keep more ready, made by more threads.
            let low = state.ready.len() < state.target / 2;
            if low {
                state.pressed = Instant::now();
                if state.ready.is_empty() {
                    state.target = (state.target * 2).min(MAX_READY);
                }
            }
            let needed = state.target - (state.ready.len() + state.making).min(state.target);
            let idle_makers = state.makers - state.making.min(state.makers);
            (fd, low && needed > idle_makers)
        };
        self.shared.refill.notify_all();
        if more_makers {
            self.spawn_maker();
        }
        match ready {
            Some(fd) => match PacketChannel::arm_fd(fd.as_fd(), filter, true) {
                Ok(()) => Ok(fd),
                Err(e) => {
                    closer::close_later(fd);
                    Err(e)
                }
            },
            None => {
                let ring = self.shared.ring;
                PacketChannel::create_fd(self.shared.ifindex, &ring, filter, true)
            }
        }
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.shared.state.lock();
        PoolStats {
            target: state.target,
            makers: state.makers,
            ..state.stats
        }
    }
}

impl Drop for ChannelPool {
    /// Stops the makers and closes the ready channels in parallel (closed one after another,
    /// as process exit would, they would take a grace period each).
    fn drop(&mut self) {
        let ready = {
            let mut state = self.shared.state.lock();
            state.stop = true;
            std::mem::take(&mut state.ready)
        };
        self.shared.refill.notify_all();
        ready.into_iter().for_each(closer::close_later);
        for maker in self.makers.lock().drain(..) {
            let _ = maker.join();
        }
    }
}

/// A maker thread: keeps the pool at its target until told to stop; a maker beyond
/// [`BASE_MAKERS`] leaves once the pool has been calm for [`CALM`], and the last maker to
/// notice the calm shrinks the target back (closing the surplus in the background).
fn make_channels(shared: &Shared) {
    let idle = BpfProgram::reject_all();
    loop {
        {
            let mut state = shared.state.lock();
            loop {
                if state.stop {
                    state.makers -= 1;
                    return;
                }
                if state.wanted() {
                    break;
                }
                let calm = state.pressed.elapsed() >= CALM;
                if calm && state.target > BASE_READY {
                    state.target = BASE_READY;
                    let surplus = state.ready.len().saturating_sub(BASE_READY);
                    let extra: Vec<OwnedFd> = state.ready.drain(..surplus).collect();
                    drop(state);
                    extra.into_iter().for_each(closer::close_later);
                    state = shared.state.lock();
                    continue;
                }
                if calm && state.makers > BASE_MAKERS {
                    state.makers -= 1;
                    return;
                }
                shared.refill.wait_for(&mut state, CALM);
            }
            state.making += 1;
        }
        let made = PacketChannel::create_fd(shared.ifindex, &shared.ring, &idle, false);
        let mut state = shared.state.lock();
        state.making -= 1;
        match made {
            Ok(fd) => {
                if state.stop || state.ready.len() >= state.target {
                    drop(state);
                    closer::close_later(fd);
                } else {
                    state.ready.push(fd);
                }
            }
            Err(_) => {
                state.stats.failures += 1;
                drop(state);
                // The interface may be going away: do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_state_wants_channels_below_target_only() {
        let mut state = State {
            ready: Vec::new(),
            making: 0,
            target: 2,
            makers: 1,
            pressed: Instant::now(),
            stop: false,
            stats: PoolStats::default(),
        };
        assert!(state.wanted());
        state.making = 2;
        assert!(!state.wanted());
        state.making = 1;
        assert!(state.wanted());
        state.stop = true;
        assert!(!state.wanted());
    }
}
