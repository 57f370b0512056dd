//! Least-in-flight balancing across an app's spinlets, and what the edge still has on each
//! spinlet that drains: each upstream's requests in flight (and, of those, its WebSockets and
//! event streams) are counted in a small fixed array of atomics per app, keyed by address like
//! the breakers, so the counts survive routing-table swaps and neither the pick nor the count
//! takes a lock.
//!
//! An address takes a slot of its own the first time it is used (a compare-and-swap on an empty
//! slot), and gives it back once it is neither routed nor draining and has nothing in flight
//! ([`Loads::forget_except`], from the task that builds routing tables). With every slot taken,
//! an address shares one; its requests then count in [`Loads::draining_load`] for every
//! draining address, so a drain can only last longer for it (to its deadline), never end early.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upstreams with a slot of their own per app (an app's spinlets, and during a rollout the ones
/// they replace).
const SLOTS: usize = 16;

#[derive(Debug, Default)]
struct Slot {
    /// The upstream this slot counts for (see [`key`]); 0: free.
    addr: AtomicU64,
    in_flight: AtomicUsize,
    /// Of `in_flight`, the long-lived streams.
    streams: AtomicUsize,
    /// Answer heads the upstream sent (ever): evidence it is alive even when it is too busy to
    /// answer a health probe in time (see [`Loads::answers`]).
    answers: AtomicU64,
}

/// Allocated on the app's first request: with 10,000 routes most apps may never see one.
#[derive(Debug, Default)]
pub struct Loads {
    slots: std::sync::OnceLock<Box<[Slot; SLOTS]>>,
    /// Requests and streams counted in a slot their address does not own (every slot taken).
    shared_requests: AtomicUsize,
    shared_streams: AtomicUsize,
}

fn key(addr: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() | 1
}

fn home(key: u64) -> usize {
    (key as usize >> 1) % SLOTS
}

impl Loads {
    fn slots(&self) -> &[Slot; SLOTS] {
        self.slots.get_or_init(Default::default)
    }

    /// `addr`'s slot, taking a free one the first time; `(index, owned)`: not owned when every
    /// slot was taken (it counts in its home slot, shared).
    fn slot_for(&self, addr: SocketAddr) -> (usize, bool) {
        let k = key(addr);
        let slots = self.slots();
        let start = home(k);
        // Its own slot, wherever it went (a freed slot before it does not end the search).
        for i in 0..SLOTS {
            let s = (start + i) % SLOTS;
            if slots[s].addr.load(Ordering::Acquire) == k {
                return (s, true);
            }
        }
        for i in 0..SLOTS {
            let s = (start + i) % SLOTS;
            match slots[s]
                .addr
                .compare_exchange(0, k, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (s, true),
                Err(taken) if taken == k => return (s, true), // another request took it for us
                Err(_) => {}
            }
        }
        (start, false)
    }

    /// Requests in flight to `addr` (0 for an address never used), for balancing.
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let Some(slots) = self.slots.get() else {
            return 0;
        };
        // Where `slot_for` puts it: probing from its home slot (on the request path: stop at
        // the first match rather than reading every slot's cache line).
        let k = key(addr);
        let start = home(k);
        (0..SLOTS)
            .map(|i| &slots[(start + i) % SLOTS])
            .find(|s| s.addr.load(Ordering::Relaxed) == k)
            .map_or(0, |s| s.in_flight.load(Ordering::Relaxed))
    }

    /// What is still in flight to a draining `addr`: `(requests, of which streams)`. Never less
    /// than the truth: requests counted in a shared slot are added to every draining address.
    pub fn draining_load(&self, addr: SocketAddr) -> (usize, usize) {
        let shared = (
            self.shared_requests.load(Ordering::Acquire),
            self.shared_streams.load(Ordering::Acquire),
        );
        let Some(slots) = self.slots.get() else {
            return shared;
        };
        let k = key(addr);
        slots
            .iter()
            .filter(|s| s.addr.load(Ordering::Acquire) == k)
            .fold(shared, |(r, st), s| {
                (
                    r + s.in_flight.load(Ordering::Acquire),
                    st + s.streams.load(Ordering::Acquire),
                )
            })
    }

    /// How many answers `addr` has sent while it had a slot of its own (`None`: it has none).
    pub fn answers(&self, addr: SocketAddr) -> Option<u64> {
        let slots = self.slots.get()?;
        let k = key(addr);
        slots
            .iter()
            .find(|s| s.addr.load(Ordering::Acquire) == k)
            .map(|s| s.answers.load(Ordering::Relaxed))
    }

    /// Counts a request to `addr` until the guard is dropped.
    pub fn start(self: &Arc<Self>, addr: SocketAddr) -> UpstreamLoad {
        let (index, owned) = self.slot_for(addr);
        self.slots()[index].in_flight.fetch_add(1, Ordering::AcqRel);
        if !owned {
            self.shared_requests.fetch_add(1, Ordering::AcqRel);
        }
        UpstreamLoad {
            loads: self.clone(),
            index,
            owned,
        }
    }

    /// Counts a long-lived stream (a WebSocket, an event stream) to `addr` until the guard is
    /// dropped (its request is counted by its [`UpstreamLoad`] as well).
    pub fn stream(self: &Arc<Self>, addr: SocketAddr) -> StreamLoad {
        let (index, owned) = self.slot_for(addr);
        self.slots()[index].streams.fetch_add(1, Ordering::AcqRel);
        if !owned {
            self.shared_streams.fetch_add(1, Ordering::AcqRel);
        }
        StreamLoad {
            loads: self.clone(),
            index,
            owned,
        }
    }

    /// Frees the slots of addresses not in `keep` (the app's upstreams and draining spinlets)
    /// that have nothing in flight, for the addresses of the next spinlets.
    pub fn forget_except(&self, keep: &[SocketAddr]) {
        let Some(slots) = self.slots.get() else {
            return;
        };
        let keep: Vec<u64> = keep.iter().map(|a| key(*a)).collect();
        for s in slots.iter() {
            let k = s.addr.load(Ordering::Acquire);
            if k != 0
                && !keep.contains(&k)
                && s.in_flight.load(Ordering::Acquire) == 0
                && s.streams.load(Ordering::Acquire) == 0
            {
                // A request that counts in it meanwhile is only counted for the slot's next
                // owner too (more, never less).
                let _ = s
                    .addr
                    .compare_exchange(k, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Of `candidates` (in round-robin order, so ties rotate), the one with the fewest requests
    /// in flight. `None` when there are none.
    pub fn least_loaded(&self, candidates: impl Iterator<Item = SocketAddr>) -> Option<SocketAddr> {
        candidates.min_by_key(|a| self.in_flight(*a))
    }
}

/// One request in flight to an upstream.
#[derive(Debug)]
pub struct UpstreamLoad {
    loads: Arc<Loads>,
    index: usize,
    owned: bool,
}

impl UpstreamLoad {
    /// The upstream sent an answer's head (counted only in a slot of its own: a shared slot's
    /// count would vouch for another upstream).
    pub fn answered(&self) {
        if self.owned {
            self.loads.slots()[self.index]
                .answers
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for UpstreamLoad {
    fn drop(&mut self) {
        self.loads.slots()[self.index]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
        if !self.owned {
            self.loads.shared_requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One long-lived stream open to an upstream.
#[derive(Debug)]
pub struct StreamLoad {
    loads: Arc<Loads>,
    index: usize,
    owned: bool,
}

impl Drop for StreamLoad {
    fn drop(&mut self) {
        self.loads.slots()[self.index]
            .streams
            .fetch_sub(1, Ordering::AcqRel);
        if !self.owned {
            self.loads.shared_streams.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn picks_the_upstream_with_fewest_requests_in_flight_and_rotates_ties() {
        let loads = Arc::new(Loads::default());
        let (a, b, c) = (addr(1001), addr(1002), addr(1003));
        let busy_a = [loads.start(a), loads.start(a)];
        let busy_b = loads.start(b);
        assert_eq!(loads.least_loaded([a, b, c].into_iter()), Some(c));
        let busy_c = [loads.start(c), loads.start(c)];
        assert_eq!(loads.least_loaded([a, b, c].into_iter()), Some(b));
        drop(busy_a);
        assert_eq!(loads.in_flight(a), 0);
        // Ties go to the first candidate: the caller's rotation spreads them.
        drop(busy_b);
        drop(busy_c);
        assert_eq!(loads.least_loaded([b, c, a].into_iter()), Some(b));
        assert_eq!(loads.least_loaded([c, a, b].into_iter()), Some(c));
    }

    /// Two addresses never share a count while slots are free (hashing alone put two of four
    /// addresses in one slot about a third of the time): a drain reads its own spinlet's count.
    #[test]
    fn each_address_counts_apart_and_freed_slots_are_reused() {
        let loads = Arc::new(Loads::default());
        let mut guards = Vec::new();
        for port in 2000..2000 + SLOTS as u16 {
            guards.push(loads.start(addr(port)));
        }
        for port in 2000..2000 + SLOTS as u16 {
            assert_eq!(loads.in_flight(addr(port)), 1);
            assert_eq!(loads.draining_load(addr(port)), (1, 0));
        }
        // Full: a new address shares a slot, and counts for every draining one.
        let extra = loads.start(addr(3000));
        assert_eq!(loads.draining_load(addr(2000)), (2, 0));
        drop(extra);
        guards.clear();
        loads.forget_except(&[addr(2000)]);
        let fresh = loads.start(addr(3001));
        let stream = loads.stream(addr(3001));
        assert_eq!(loads.draining_load(addr(3001)), (1, 1));
        assert_eq!(loads.draining_load(addr(2001)), (0, 0));
        drop((fresh, stream));
        assert_eq!(loads.draining_load(addr(3001)), (0, 0));
    }

    /// A slot with something in flight is never freed, nor one of a kept address.
    #[test]
    fn busy_or_kept_slots_stay() {
        let loads = Arc::new(Loads::default());
        let busy = loads.start(addr(1));
        let kept = loads.start(addr(2));
        drop(kept);
        loads.forget_except(&[addr(2)]);
        let slots = loads.slots();
        let owners: Vec<u64> = slots
            .iter()
            .map(|s| s.addr.load(Ordering::Relaxed))
            .filter(|k| *k != 0)
            .collect();
        assert_eq!(owners.len(), 2);
        assert_eq!(loads.draining_load(addr(1)), (1, 0));
        drop(busy);
    }
}
