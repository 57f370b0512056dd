//! Passive circuit breaking per upstream: after [`TRIP_AFTER`] failures in a row an upstream is
//! skipped for [`OPEN_FOR`], then tried again (one success closes it). State lives in a small
//! fixed array of atomics per app, keyed by address, so it survives routing-table swaps and takes
//! no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const TRIP_AFTER: u32 = 5;
pub const OPEN_FOR_MS: u64 = 10_000;
/// Upstreams tracked per app; more than this share slots by hash (which can only trip early).
const SLOTS: usize = 8;

#[derive(Debug, Default)]
struct Slot {
    /// The upstream this slot tracks (see [`key`]); 0: none.
    addr: AtomicU64,
    failures: AtomicU32,
    /// Until when (ms since the epoch) the upstream is skipped.
    open_until_ms: AtomicU64,
}

/// Allocated on the first failure: most apps never have one.
#[derive(Debug, Default)]
pub struct Breakers {
    slots: std::sync::OnceLock<Box<[Slot; SLOTS]>>,
}

fn key(addr: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() | 1
}

impl Breakers {
    /// The upstream's slot, once any upstream of the app has failed.
    fn slot(&self, addr: SocketAddr) -> Option<(&Slot, u64)> {
        let k = key(addr);
        Some((&self.slots.get()?[(k as usize >> 1) % SLOTS], k))
    }

    /// True when the upstream should not be tried now.
    pub fn is_open(&self, addr: SocketAddr, now_ms: u64) -> bool {
        let Some((slot, k)) = self.slot(addr) else {
            return false;
        };
        slot.addr.load(Ordering::Relaxed) == k
            && slot.open_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// A failure to connect to or hear from the upstream. Returns true when this one tripped it.
    pub fn failure(&self, addr: SocketAddr, now_ms: u64) -> bool {
        let k = key(addr);
        let slot = &self.slots.get_or_init(Default::default)[(k as usize >> 1) % SLOTS];
        if slot.addr.swap(k, Ordering::Relaxed) != k {
            slot.failures.store(0, Ordering::Relaxed);
        }
        let n = slot.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TRIP_AFTER {
            slot.failures.store(0, Ordering::Relaxed);
            slot.open_until_ms
                .store(now_ms + OPEN_FOR_MS, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// An answer came back: the upstream works.
    pub fn success(&self, addr: SocketAddr) {
        let Some((slot, k)) = self.slot(addr) else {
            return;
        };
        if slot.addr.load(Ordering::Relaxed) == k {
            slot.failures.store(0, Ordering::Relaxed);
            slot.open_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_failures_in_a_row_and_recovers() {
        let b = Breakers::default();
        let a: SocketAddr = "127.0.0.1:3000".parse().expect("addr");
        for _ in 0..TRIP_AFTER - 1 {
            assert!(!b.failure(a, 1000));
        }
        assert!(!b.is_open(a, 1000));
        assert!(b.failure(a, 1000));
        assert!(b.is_open(a, 1000));
        assert!(!b.is_open(a, 1000 + OPEN_FOR_MS));
        b.success(a);
        assert!(!b.is_open(a, 1001));
        // A success in between resets the count.
        for _ in 0..TRIP_AFTER - 1 {
            b.failure(a, 2000);
        }
        b.success(a);
        assert!(!b.failure(a, 2000));
    }
}
