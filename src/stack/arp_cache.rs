//! The netserver's ARP neighbour cache (RFC 826, with Linux-like neighbour states and
//! timers, `net/core/neighbour.c`), sans-I/O.
//!
//! States per address: *incomplete* (our broadcast requests are outstanding: [`Lookup::Pending`]),
//! *reachable* (confirmed: [`Lookup::Known`]), *probe* (the confirmation is `reachable_time`
//! old: unicast requests to the known MAC while the entry stays usable). Transitions:
//! - [`ArpCache::start_resolve`]: unknown → incomplete, with a broadcast request.
//! - [`ArpCache::on_arp`] (RFC 826 merge rule): "if the pair <protocol type, sender protocol
//!   address> is already in my translation table, update the sender hardware address field"
//!   (any state → reachable); "if I am the target protocol address … and merge_flag is false,
//!   add the triplet" (a new reachable entry, only for ARP aimed at our address).
//! - [`ArpCache::poll`]: incomplete retries every `retry_interval` up to `request_tries`
//!   broadcasts, then [`ArpAction::Failed`] (waiters must be told) and removal; reachable
//!   past `reachable_time` → probe with a unicast request, up to `probe_tries` one
//!   `retry_interval` apart, then [`ArpAction::Expired`] (the routing region must drop it).
//!
//! Bounds (flood resistance): entries are created only by our own resolutions and by ARP
//! targeting our address, never by other ARP traffic; at most `max_pending` resolutions are
//! outstanding and at most `max_entries` entries exist. A new entry in a full cache evicts a
//! usable one — passively learned before resolved by us, then the least recently confirmed —
//! reported as [`ArpAction::Expired`] by the next `poll` (and `poll_at` asks for that poll at
//! once). Incomplete entries are never evicted (they have waiters). What cannot be stored is
//! counted as [`DropReason::ArpTableFull`].
//!
//! Cost: lookups are O(log n); `poll` and `poll_at` scan every entry (n ≤ `max_entries`).
//! Entries are kept in address order so `poll`'s output is deterministic.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::stats::{DropCounters, DropReason};
use super::{Duration, Instant};
use crate::wire::EthernetAddress;

/// Cache parameters (Linux sysctl names in parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    /// Entries of any state (`gc_thresh3`).
    pub max_entries: usize,
    /// Resolutions outstanding at once.
    pub max_pending: usize,
    /// Broadcast requests before a resolution fails (`mcast_solicit`).
    pub request_tries: u8,
    /// Unicast refresh probes before a known entry expires (`ucast_solicit`).
    pub probe_tries: u8,
    /// Interval between requests or probes (`retrans_time_ms`).
    pub retry_interval: Duration,
    /// How long a confirmation lasts before probing starts (`base_reachable_time_ms`).
    pub reachable_time: Duration,
}

impl Default for ArpConfig {
    /// 1024 entries, 256 pending, 3 requests and 3 probes 1 s apart, 30 s reachable.
    fn default() -> Self {
        ArpConfig {
            max_entries: 1024,
            max_pending: 256,
            request_tries: 3,
            probe_tries: 3,
            retry_interval: Duration::from_secs(1),
            reachable_time: Duration::from_secs(30),
        }
    }
}

/// What the cache knows about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Known(EthernetAddress),
    /// A resolution is outstanding.
    Pending,
    Unknown,
}

/// Something the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpAction {
    /// Send an ARP request for `ip`: broadcast, or unicast to the known MAC (a refresh probe).
    SendRequest {
        ip: Ipv4Addr,
        unicast_to: Option<EthernetAddress>,
    },
    /// Resolution of `ip` gave up: fail whatever waits for it.
    Failed { ip: Ipv4Addr },
    /// The entry for `ip` was removed (refresh failed, or evicted): forget its MAC.
    Expired { ip: Ipv4Addr },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Incomplete {
        sent: u8,
        next: Instant,
    },
    Reachable {
        mac: EthernetAddress,
        until: Instant,
    },
    Probe {
        mac: EthernetAddress,
        sent: u8,
        next: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    state: State,
    /// Last confirmation (creation for incomplete entries).
    confirmed: Instant,
    /// Created by an ARP aimed at us rather than by our own resolution: evicted first.
    passive: bool,
}

impl Entry {
    fn deadline(&self) -> Instant {
        match self.state {
            State::Incomplete { next, .. } | State::Probe { next, .. } => next,
            State::Reachable { until, .. } => until,
        }
    }

    fn mac(&self) -> Option<EthernetAddress> {
        match self.state {
            State::Incomplete { .. } => None,
            State::Reachable { mac, .. } | State::Probe { mac, .. } => Some(mac),
        }
    }
}

/// Event counts (not drops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArpStats {
    pub resolutions_started: u64,
    pub resolutions_failed: u64,
    pub entries_learned: u64,
    pub entries_expired: u64,
    pub entries_evicted: u64,
}

/// The neighbour cache. See the module documentation.
#[derive(Debug)]
pub struct ArpCache {
    config: ArpConfig,
    entries: BTreeMap<Ipv4Addr, Entry>,
    pending: usize,
    /// Evictions to report from the next `poll`, and when the first happened.
    queued: Vec<ArpAction>,
    queued_at: Option<Instant>,
    drops: DropCounters,
    stats: ArpStats,
}

impl ArpCache {
    pub fn new(mut config: ArpConfig) -> Self {
        config.request_tries = config.request_tries.max(1);
        config.probe_tries = config.probe_tries.max(1);
        ArpCache {
            config,
            entries: BTreeMap::new(),
            pending: 0,
            queued: Vec::new(),
            queued_at: None,
            drops: DropCounters::default(),
            stats: ArpStats::default(),
        }
    }

    pub fn config(&self) -> &ArpConfig {
        &self.config
    }

    /// What is known about `ip`. A known entry stays usable while its refresh probes run.
    pub fn lookup(&self, ip: Ipv4Addr, _now: Instant) -> Lookup {
        match self.entries.get(&ip) {
            None => Lookup::Unknown,
            Some(e) => e.mac().map_or(Lookup::Pending, Lookup::Known),
        }
    }

    /// Starts resolving `ip`: the first broadcast request, or `None` if the address is already
    /// known or pending, or no resolution can be started (pending budget spent, or a full cache
    /// with nothing evictable; counted as [`DropReason::ArpTableFull`]).
    pub fn start_resolve(&mut self, ip: Ipv4Addr, now: Instant) -> Option<ArpAction> {
        if self.entries.contains_key(&ip) || !is_resolvable(ip) {
            return None;
        }
        if self.pending >= self.config.max_pending || !self.make_room(now) {
            self.drops.count(DropReason::ArpTableFull);
            return None;
        }
        let next = now + self.config.retry_interval;
        self.entries.insert(
            ip,
            Entry {
                state: State::Incomplete { sent: 1, next },
                confirmed: now,
                passive: false,
            },
        );
        self.pending += 1;
        self.stats.resolutions_started += 1;
        Some(ArpAction::SendRequest {
            ip,
            unicast_to: None,
        })
    }

    /// Merges an ARP packet (request or reply) from `sender_ip`/`sender_mac` (RFC 826);
    /// `for_us`: its target protocol address is ours. Returns the MAC now cached for
    /// `sender_ip`, if any (an entry was refreshed, resolved or learned).
    pub fn on_arp(
        &mut self,
        sender_ip: Ipv4Addr,
        sender_mac: EthernetAddress,
        for_us: bool,
        now: Instant,
    ) -> Option<EthernetAddress> {
        if !is_resolvable(sender_ip) || !sender_mac.is_unicast() {
            return None;
        }
        let reachable = State::Reachable {
            mac: sender_mac,
            until: now + self.config.reachable_time,
        };
        if let Some(e) = self.entries.get_mut(&sender_ip) {
            // "?Yes: If the pair ... is already in my translation table, update the sender
            // hardware address field of the entry with the new information in the packet".
            if matches!(e.state, State::Incomplete { .. }) {
                self.pending -= 1;
            }
            e.state = reachable;
            e.confirmed = now;
            return Some(sender_mac);
        }
        if !for_us {
            return None;
        }
        // "?Am I the target protocol address? Yes: If the merge_flag is false, add the triplet".
        if !self.make_room(now) {
            self.drops.count(DropReason::ArpTableFull);
            return None;
        }
        self.entries.insert(
            sender_ip,
            Entry {
                state: reachable,
                confirmed: now,
                passive: true,
            },
        );
        self.stats.entries_learned += 1;
        Some(sender_mac)
    }

    /// Ensures a new entry fits, evicting one usable entry if the cache is full.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.entries.len() < self.config.max_entries {
            return true;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.mac().is_some())
            .min_by_key(|(_, e)| (!e.passive, e.confirmed))
            .map(|(&ip, _)| ip);
        let Some(ip) = victim else { return false };
        self.entries.remove(&ip);
        self.stats.entries_evicted += 1;
        self.queued.push(ArpAction::Expired { ip });
        self.queued_at.get_or_insert(now);
        true
    }

    /// Runs the timers due at `now`: retries, refresh probes, failures and expiries, plus the
    /// evictions made since the last call.
    pub fn poll(&mut self, now: Instant) -> Vec<ArpAction> {
        let mut out = std::mem::take(&mut self.queued);
        self.queued_at = None;
        // An evicted address learned again since is known once more: do not report it gone.
        out.retain(|a| match a {
            ArpAction::Expired { ip } => self.entries.get(ip).is_none_or(|e| e.mac().is_none()),
            _ => true,
        });
        let interval = self.config.retry_interval;
        let mut removed = Vec::new();
        for (&ip, e) in self.entries.iter_mut() {
            if e.deadline() > now {
                continue;
            }
            match e.state {
                State::Incomplete { sent, .. } if sent < self.config.request_tries => {
                    e.state = State::Incomplete {
                        sent: sent + 1,
                        next: now + interval,
                    };
                    out.push(ArpAction::SendRequest {
                        ip,
                        unicast_to: None,
                    });
                }
                State::Incomplete { .. } => {
                    removed.push(ip);
                    out.push(ArpAction::Failed { ip });
                }
                State::Reachable { mac, .. } => {
                    e.state = State::Probe {
                        mac,
                        sent: 1,
                        next: now + interval,
                    };
                    out.push(ArpAction::SendRequest {
                        ip,
                        unicast_to: Some(mac),
                    });
                }
                State::Probe { mac, sent, .. } if sent < self.config.probe_tries => {
                    e.state = State::Probe {
                        mac,
                        sent: sent + 1,
                        next: now + interval,
                    };
                    out.push(ArpAction::SendRequest {
                        ip,
                        unicast_to: Some(mac),
                    });
                }
                State::Probe { .. } => {
                    removed.push(ip);
                    out.push(ArpAction::Expired { ip });
                }
            }
        }
        for ip in removed {
            if let Some(e) = self.entries.remove(&ip) {
                if matches!(e.state, State::Incomplete { .. }) {
                    self.pending -= 1;
                    self.stats.resolutions_failed += 1;
                } else {
                    self.stats.entries_expired += 1;
                }
            }
        }
        out
    }

    /// When [`ArpCache::poll`] next has work.
    pub fn poll_at(&self) -> Option<Instant> {
        let timers = self.entries.values().map(Entry::deadline).min();
        match (timers, self.queued_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The usable entries, in address order.
    pub fn entries(&self) -> Vec<(Ipv4Addr, EthernetAddress)> {
        self.entries
            .iter()
            .filter_map(|(&ip, e)| e.mac().map(|m| (ip, m)))
            .collect()
    }

    /// Entries of any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resolutions outstanding.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// What the cache refused to store ([`DropReason::ArpTableFull`]).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    pub fn stats(&self) -> &ArpStats {
        &self.stats
    }
}

/// Addresses that can have a neighbour entry (not 0.0.0.0, broadcast, multicast or loopback).
fn is_resolvable(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    const MAC2: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn host(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)
    }

    fn mac(i: u32) -> EthernetAddress {
        let b = i.to_be_bytes();
        EthernetAddress([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn resolve_then_reply() {
        let mut c = ArpCache::new(ArpConfig::default());
        assert_eq!(c.lookup(PEER, t(0)), Lookup::Unknown);
        assert_eq!(
            c.start_resolve(PEER, t(0)),
            Some(ArpAction::SendRequest {
                ip: PEER,
                unicast_to: None
            })
        );
        assert_eq!(c.lookup(PEER, t(0)), Lookup::Pending);
        assert_eq!(c.start_resolve(PEER, t(1)), None, "one request outstanding");
        assert_eq!(c.poll_at(), Some(t(1000)));
        assert_eq!(c.on_arp(PEER, MAC, true, t(200)), Some(MAC));
        assert_eq!(c.lookup(PEER, t(200)), Lookup::Known(MAC));
        assert_eq!(c.pending(), 0);
        assert_eq!(c.poll(t(1000)), vec![]);
        assert_eq!(c.entries(), vec![(PEER, MAC)]);
    }

    #[test]
    fn three_tries_one_second_apart_then_failed() {
        let mut c = ArpCache::new(ArpConfig::default());
        assert!(c.start_resolve(PEER, t(0)).is_some());
        assert_eq!(c.poll(t(999)), vec![]);
        let retry = vec![ArpAction::SendRequest {
            ip: PEER,
            unicast_to: None,
        }];
        assert_eq!(c.poll(t(1000)), retry);
        assert_eq!(c.poll_at(), Some(t(2000)));
        assert_eq!(c.poll(t(2000)), retry);
        assert_eq!(c.lookup(PEER, t(2500)), Lookup::Pending);
        assert_eq!(c.poll(t(3000)), vec![ArpAction::Failed { ip: PEER }]);
        assert_eq!(c.lookup(PEER, t(3000)), Lookup::Unknown);
        assert_eq!(c.pending(), 0);
        assert_eq!(c.poll_at(), None);
        assert_eq!(c.stats().resolutions_failed, 1);
        // A new resolution may start afterwards.
        assert!(c.start_resolve(PEER, t(3001)).is_some());
    }

    #[test]
    fn refresh_probes_unicast_and_keep_entry_until_they_fail() {
        let mut c = ArpCache::new(ArpConfig::default());
        c.start_resolve(PEER, t(0));
        c.on_arp(PEER, MAC, true, t(100));
        assert_eq!(c.poll_at(), Some(t(30_100)));
        let probe = vec![ArpAction::SendRequest {
            ip: PEER,
            unicast_to: Some(MAC),
        }];
        assert_eq!(c.poll(t(30_100)), probe);
        assert_eq!(
            c.lookup(PEER, t(30_100)),
            Lookup::Known(MAC),
            "usable while probing"
        );
        assert_eq!(c.poll(t(31_100)), probe);
        assert_eq!(c.poll(t(32_100)), probe);
        assert_eq!(c.lookup(PEER, t(32_500)), Lookup::Known(MAC));
        assert_eq!(c.poll(t(33_100)), vec![ArpAction::Expired { ip: PEER }]);
        assert_eq!(c.lookup(PEER, t(33_100)), Lookup::Unknown);
        assert_eq!(c.stats().entries_expired, 1);
    }

    #[test]
    fn answered_probe_restores_reachable() {
        let mut c = ArpCache::new(ArpConfig::default());
        c.on_arp(PEER, MAC, true, t(0));
        assert_eq!(c.poll(t(30_000)).len(), 1);
        // The reply may even carry a new MAC.
        assert_eq!(c.on_arp(PEER, MAC2, true, t(30_010)), Some(MAC2));
        assert_eq!(c.lookup(PEER, t(30_010)), Lookup::Known(MAC2));
        assert_eq!(c.poll(t(33_000)), vec![]);
        assert_eq!(c.poll_at(), Some(t(60_010)));
    }

    #[test]
    fn merge_rule() {
        let mut c = ArpCache::new(ArpConfig::default());
        // Not for us and not known: nothing learned.
        assert_eq!(c.on_arp(PEER, MAC, false, t(0)), None);
        assert!(c.is_empty());
        // Aimed at us: learned.
        assert_eq!(c.on_arp(PEER, MAC, true, t(0)), Some(MAC));
        // Known: any ARP from it updates it, even one aimed elsewhere.
        assert_eq!(c.on_arp(PEER, MAC2, false, t(10)), Some(MAC2));
        assert_eq!(c.lookup(PEER, t(10)), Lookup::Known(MAC2));
        // A pending resolution is completed by any ARP from the address.
        let other = host(7);
        c.start_resolve(other, t(20));
        assert_eq!(c.on_arp(other, MAC, false, t(30)), Some(MAC));
        assert_eq!(c.pending(), 0);
        // Unusable senders are ignored.
        assert_eq!(c.on_arp(Ipv4Addr::UNSPECIFIED, MAC, true, t(40)), None);
        assert_eq!(c.on_arp(Ipv4Addr::BROADCAST, MAC, true, t(40)), None);
        assert_eq!(
            c.on_arp(host(9), EthernetAddress::BROADCAST, true, t(40)),
            None
        );
        assert_eq!(c.on_arp(host(9), EthernetAddress::ZERO, true, t(40)), None);
        assert_eq!(c.start_resolve(Ipv4Addr::new(224, 0, 0, 1), t(40)), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn flood_of_unknown_arp_does_not_grow() {
        let mut c = ArpCache::new(ArpConfig::default());
        for i in 0..100_000u32 {
            assert_eq!(
                c.on_arp(
                    Ipv4Addr::from(0x0a00_0000 + i),
                    mac(i),
                    false,
                    t(u64::from(i))
                ),
                None
            );
        }
        assert!(c.is_empty());
        assert_eq!(c.poll_at(), None);
    }

    #[test]
    fn flood_aimed_at_us_is_bounded_and_evicts_passive_entries_first() {
        let cfg = ArpConfig {
            max_entries: 16,
            ..ArpConfig::default()
        };
        let mut c = ArpCache::new(cfg);
        // Two entries we resolved ourselves.
        for i in 1..=2 {
            c.start_resolve(host(i), t(0));
            c.on_arp(host(i), mac(i), false, t(1));
        }
        for i in 0..10_000u32 {
            let ip = Ipv4Addr::from(0x0a00_0000 + i);
            assert_eq!(
                c.on_arp(ip, mac(i), true, t(10 + u64::from(i))),
                Some(mac(i))
            );
            assert!(c.len() <= 16);
        }
        assert_eq!(
            c.lookup(host(1), t(20_000)),
            Lookup::Known(mac(1)),
            "resolved entries survive"
        );
        assert_eq!(c.lookup(host(2), t(20_000)), Lookup::Known(mac(2)));
        // The oldest learned entries went first; each eviction is reported.
        assert_eq!(
            c.lookup(Ipv4Addr::from(0x0a00_0000), t(20_000)),
            Lookup::Unknown
        );
        assert_eq!(
            c.lookup(Ipv4Addr::from(0x0a00_0000 + 9_999), t(20_000)),
            Lookup::Known(mac(9_999))
        );
        assert_eq!(c.poll_at(), Some(t(24)), "evictions are reported at once");
        let expired = c
            .poll(t(24))
            .iter()
            .filter(|a| matches!(a, ArpAction::Expired { .. }))
            .count();
        assert_eq!(expired, 10_000 - 14);
        assert_eq!(c.stats().entries_evicted, 10_000 - 14);
    }

    #[test]
    fn eviction_of_a_relearned_address_is_not_reported() {
        let cfg = ArpConfig {
            max_entries: 1,
            ..ArpConfig::default()
        };
        let mut c = ArpCache::new(cfg);
        c.on_arp(host(1), mac(1), true, t(0));
        c.on_arp(host(2), mac(2), true, t(1));
        c.on_arp(host(1), mac(1), true, t(2));
        // host(1) evicted, then host(2) evicted by host(1) learned again.
        assert_eq!(c.poll(t(2)), vec![ArpAction::Expired { ip: host(2) }]);
        assert_eq!(c.entries(), vec![(host(1), mac(1))]);
        assert_eq!(c.stats().entries_evicted, 2);
    }

    #[test]
    fn pending_resolutions_are_bounded() {
        let cfg = ArpConfig {
            max_entries: 8,
            max_pending: 4,
            ..ArpConfig::default()
        };
        let mut c = ArpCache::new(cfg);
        for i in 0..4 {
            assert!(c.start_resolve(host(i + 1), t(0)).is_some());
        }
        assert_eq!(c.start_resolve(host(10), t(0)), None);
        assert_eq!(c.drops().get(DropReason::ArpTableFull), 1);
        // Fill the rest with learned entries; pending entries are never evicted.
        for i in 20..40 {
            c.on_arp(host(i), mac(i), true, t(1));
        }
        assert_eq!(c.len(), 8);
        assert_eq!(c.pending(), 4);
        for i in 0..4 {
            assert_eq!(c.lookup(host(i + 1), t(1)), Lookup::Pending);
        }
        // A cache full of pending entries refuses what it cannot place.
        let cfg = ArpConfig {
            max_entries: 2,
            max_pending: 2,
            ..ArpConfig::default()
        };
        let mut c = ArpCache::new(cfg);
        c.start_resolve(host(1), t(0));
        c.start_resolve(host(2), t(0));
        assert_eq!(c.on_arp(host(3), MAC, true, t(0)), None);
        assert_eq!(c.drops().get(DropReason::ArpTableFull), 1);
    }

    #[test]
    fn poll_is_deterministic_in_address_order() {
        let mut c = ArpCache::new(ArpConfig::default());
        for i in [9, 3, 5, 1] {
            c.start_resolve(host(i), t(0));
        }
        let ips: Vec<Ipv4Addr> = c
            .poll(t(1000))
            .into_iter()
            .map(|a| match a {
                ArpAction::SendRequest { ip, .. }
                | ArpAction::Failed { ip }
                | ArpAction::Expired { ip } => ip,
            })
            .collect();
        assert_eq!(ips, vec![host(1), host(3), host(5), host(9)]);
    }
}
