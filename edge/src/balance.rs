//! Least-in-flight balancing across an app's spinlets: each upstream's requests in flight are
//! counted in a small fixed array of atomics per app (keyed by address, like the breakers), so the
//! counts survive routing-table swaps and the pick takes no lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upstreams tracked per app; more share slots by hash (their counts then add up, which only
/// makes the pick less exact).
const SLOTS: usize = 16;

#[derive(Debug, Default)]
struct Slot {
    /// The upstream this slot counts for (see [`key`]); 0: none yet.
    addr: AtomicU64,
    in_flight: AtomicUsize,
}

/// Allocated on the app's first request: with 10,000 routes most apps may never see one.
#[derive(Debug, Default)]
pub struct Loads {
    slots: std::sync::OnceLock<Box<[Slot; SLOTS]>>,
}

fn key(addr: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() | 1
}

impl Loads {
    fn slots(&self) -> &[Slot; SLOTS] {
        self.slots.get_or_init(Default::default)
    }

    /// Requests in flight to `addr` (0 for an address never used).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        let Some(slots) = self.slots.get() else {
            return 0;
        };
        let slot = &slots[(key(addr) as usize >> 1) % SLOTS];
        if slot.addr.load(Ordering::Relaxed) == key(addr) {
            slot.in_flight.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Counts a request to `addr` until the guard is dropped.
    pub fn start(self: &Arc<Self>, addr: SocketAddr) -> UpstreamLoad {
        let index = (key(addr) as usize >> 1) % SLOTS;
        let slot = &self.slots()[index];
        slot.addr.store(key(addr), Ordering::Relaxed);
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        UpstreamLoad {
            loads: self.clone(),
            index,
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
}

impl Drop for UpstreamLoad {
    fn drop(&mut self) {
        self.loads.slots()[self.index]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_upstream_with_fewest_requests_in_flight_and_rotates_ties() {
        let loads = Arc::new(Loads::default());
        let a: SocketAddr = "127.0.0.1:1001".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:1002".parse().expect("addr");
        let c: SocketAddr = "127.0.0.1:1003".parse().expect("addr");
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
}
