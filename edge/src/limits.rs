//! Rate limits and per-IP connection counts, without locks: fixed-size tables of atomics, so
//! memory stays the same whether ten or ten million client IPs show up.
//!
//! Rate limits are GCRA (the algorithm behind NGINX's `limit_req` with `nodelay`): a client's
//! state is one number, its "theoretical arrival time". A request is allowed when that time is
//! no more than `burst` intervals ahead of now, and pushes it one interval further.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Slots in the client rate table (8 bytes each: 2 MiB). When more clients than this are active
/// at once, the least recently limited lose their history (they may burst again).
const RATE_SLOTS: usize = 1 << 18;
/// Slots in the per-IP connection table (8 bytes each: 512 KiB).
const CONN_SLOTS: usize = 1 << 16;
const TAT_BITS: u32 = 48;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

/// Microseconds since this process's limiter epoch (fits 48 bits for 8 years).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A rate and a burst, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between requests at the steady rate.
    interval_us: u64,
    /// How far ahead of now the arrival time may run: `burst` intervals.
    tolerance_us: u64,
}

impl Gcra {
    pub fn new(rps: f64, burst: u32) -> Gcra {
        let interval_us = ((1_000_000.0 / rps).round() as u64).max(1);
        Gcra {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst)),
        }
    }

    /// Given the stored arrival time, the new one if the request may pass, else how long until
    /// one would.
    fn step(&self, tat: u64, now: u64) -> Result<u64, Duration> {
        let tat = tat.max(now);
        if tat - now > self.tolerance_us {
            return Err(Duration::from_micros(tat - now - self.tolerance_us));
        }
        Ok(tat + self.interval_us)
    }
}

impl Gcra {
    /// The arrival time after `n` requests counted elsewhere since `at` (GCRA is additive: each
    /// request pushes the arrival time one interval, wherever it was let through).
    fn charged(&self, tat: u64, n: u64, at: u64) -> u64 {
        tat.max(at)
            .saturating_add(self.interval_us.saturating_mul(n))
            .min(TAT_MASK)
    }
}

/// What a rate check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit; a request would pass again after this long.
    Deny(Duration),
}

/// One GCRA cell: a whole app's budget.
#[derive(Debug, Default)]
pub struct RateCell(AtomicU64);

impl RateCell {
    pub fn check(&self, gcra: Gcra, now: u64) -> Verdict {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            match gcra.step(current, now) {
                Err(wait) => return Verdict::Deny(wait),
                Ok(next) => match self.0.compare_exchange_weak(
                    current,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Verdict::Allow,
                    Err(actual) => current = actual,
                },
            }
        }
    }

    /// Counts `n` requests let through elsewhere (other edges) at about `at`.
    pub fn charge(&self, gcra: Gcra, n: u64, at: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(gcra.charged(tat, n, at))
            });
    }
}

/// The key a client is limited by: its IPv4 address, or its IPv6 /64 (one subscriber's network,
/// which one client can fill with addresses at will).
pub fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64 << 64) | (1 << 127),
        },
    }
}

/// Two places a key may live in a table, and the tag that tells keys sharing a place apart.
fn places(hash: u64, slots: usize) -> (usize, usize, u64) {
    let mask = (slots - 1) as u64;
    let first = (hash & mask) as usize;
    let second = ((hash >> 24) & mask) as usize;
    // 16 bits, never 0 (0 marks an empty slot).
    let tag = (hash >> 48) | 1;
    (first, second, tag)
}

/// Per-client GCRA state for every app, in one table. Slot = tag (16 bits) | arrival time (48).
#[derive(Debug)]
pub struct ClientRates {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ClientRates {
    fn default() -> Self {
        Self::with_slots(RATE_SLOTS)
    }
}

impl ClientRates {
    pub fn with_slots(n: usize) -> ClientRates {
        assert!(n.is_power_of_two());
        ClientRates {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            // Seeded per process: nobody can pick addresses that collide on purpose.
            hasher: Default::default(),
        }
    }

    /// Checks one request from `client` to `app` (any stable app identity).
    pub fn check(&self, app: &str, client: u128, gcra: Gcra, now: u64) -> Verdict {
        let (slot, tag) = self.slot(app, client, now);
        let cell = &self.slots[slot];
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let tat = if current & !TAT_MASK == tag {
                current & TAT_MASK
            } else {
                0 // someone else's (or nobody's): start fresh
            };
            match gcra.step(tat, now) {
                Err(wait) => return Verdict::Deny(wait),
                Ok(next) => match cell.compare_exchange_weak(
                    current,
                    tag | (next & TAT_MASK),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Verdict::Allow,
                    Err(actual) => current = actual,
                },
            }
        }
    }

    /// Counts `n` requests from `client` to `app` that other edges let through at about `at`.
    pub fn charge(&self, app: &str, client: u128, gcra: Gcra, n: u64, at: u64) {
        let (slot, tag) = self.slot(app, client, at);
        let _ = self.slots[slot].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            let tat = if current & !TAT_MASK == tag {
                current & TAT_MASK
            } else {
                0
            };
            Some(tag | gcra.charged(tat, n, at))
        });
    }

    /// The slot `client` of `app` is counted in, and its tag (already shifted into place).
    fn slot(&self, app: &str, client: u128, now: u64) -> (usize, u64) {
        let (a, b, tag) = places(self.hasher.hash_one((app, client)), self.slots.len());
        let tag = tag << TAT_BITS;
        // The client's own slot if it has one; else a slot whose owner has fully recovered (its
        // state equals a fresh one); else the one closer to recovery.
        let slot = [a, b]
            .into_iter()
            .find(|&i| self.slots[i].load(Ordering::Relaxed) & !TAT_MASK == tag)
            .or_else(|| {
                [a, b]
                    .into_iter()
                    .find(|&i| self.slots[i].load(Ordering::Relaxed) & TAT_MASK <= now)
            })
            .unwrap_or_else(|| {
                let tat = |i: usize| self.slots[i].load(Ordering::Relaxed) & TAT_MASK;
                if tat(a) <= tat(b) { a } else { b }
            });
        (slot, tag)
    }
}

/// Open connections per client IP. Slot = tag (32 bits) | count (32 bits).
#[derive(Debug)]
pub struct ConnectionCounts {
    slots: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for ConnectionCounts {
    fn default() -> Self {
        Self::with_slots(CONN_SLOTS)
    }
}

/// One counted connection; uncounted on drop. Owned, so that it can stay with a connection
/// that leaves its task while it idles (`park`).
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    slot: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let cell = &self.counts.slots[self.slot];
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let count = current & 0xffff_ffff;
            // Back to empty when the last connection goes, so that another IP may take the slot.
            let next = if count <= 1 { 0 } else { current - 1 };
            match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// What happened to a new connection.
#[derive(Debug)]
pub enum Admission {
    Counted(ConnectionSlot),
    /// The IP already holds `max` connections.
    Refused,
    /// Both of the IP's slots belong to other busy IPs: let it in uncounted rather than refuse
    /// a client for someone else's connections.
    Uncounted,
}

impl ConnectionCounts {
    pub fn with_slots(n: usize) -> ConnectionCounts {
        assert!(n.is_power_of_two());
        ConnectionCounts {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    pub fn admit(self: &Arc<Self>, client: u128, max: u32) -> Admission {
        let (a, b, _) = places(self.hasher.hash_one(client), self.slots.len());
        let tag = (self.hasher.hash_one((client, 1u8)) | 1) << 32;
        for pass in 0..2 {
            for slot in [a, b] {
                let cell = &self.slots[slot];
                let mut current = cell.load(Ordering::Relaxed);
                loop {
                    let mine = current & !0xffff_ffff == tag && current & 0xffff_ffff > 0;
                    // First pass: only the IP's own slot; second: an empty one — or its own,
                    // when another connection of the IP took that slot meanwhile (else one IP
                    // could end up counted in two slots, each under the cap).
                    let usable = mine || (pass == 1 && current == 0);
                    if !usable {
                        break;
                    }
                    let count = current & 0xffff_ffff;
                    if count >= u64::from(max) {
                        return Admission::Refused;
                    }
                    match cell.compare_exchange_weak(
                        current,
                        tag | (count + 1),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            return Admission::Counted(ConnectionSlot {
                                counts: self.clone(),
                                slot,
                            });
                        }
                        Err(actual) => current = actual,
                    }
                }
            }
        }
        Admission::Uncounted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        // 10/s with a burst of 5: 6 at once, then one every 100 ms.
        let g = Gcra::new(10.0, 5);
        let cell = RateCell::default();
        let t0 = 1_000_000;
        for _ in 0..6 {
            assert_eq!(cell.check(g, t0), Verdict::Allow);
        }
        match cell.check(g, t0) {
            Verdict::Deny(wait) => assert_eq!(wait, Duration::from_millis(100)),
            v => panic!("expected a deny, got {v:?}"),
        }
        assert!(matches!(cell.check(g, t0 + 99_000), Verdict::Deny(_)));
        assert_eq!(cell.check(g, t0 + 100_000), Verdict::Allow);
        assert!(matches!(cell.check(g, t0 + 100_000), Verdict::Deny(_)));
        // After a quiet second the whole burst is back.
        for _ in 0..6 {
            assert_eq!(cell.check(g, t0 + 1_200_000), Verdict::Allow);
        }
    }

    #[test]
    fn requests_counted_elsewhere_use_up_the_budget() {
        // 10/s, burst 5: 6 at once. Four went through another edge; two are left here.
        let g = Gcra::new(10.0, 5);
        let t0 = 10_000_000;
        let rates = ClientRates::with_slots(1024);
        rates.charge("a", 1, g, 4, t0);
        assert_eq!(rates.check("a", 1, g, t0), Verdict::Allow);
        assert_eq!(rates.check("a", 1, g, t0), Verdict::Allow);
        assert!(matches!(rates.check("a", 1, g, t0), Verdict::Deny(_)));
        assert_eq!(
            rates.check("a", 2, g, t0),
            Verdict::Allow,
            "others untouched"
        );
        let cell = RateCell::default();
        cell.charge(g, 6, t0);
        assert!(matches!(cell.check(g, t0), Verdict::Deny(_)));
        // Counted in the past: the budget has partly recovered since.
        let cell = RateCell::default();
        cell.charge(g, 6, t0 - 200_000);
        assert_eq!(cell.check(g, t0), Verdict::Allow);
        assert_eq!(cell.check(g, t0), Verdict::Allow);
        assert!(matches!(cell.check(g, t0), Verdict::Deny(_)));
    }

    #[test]
    fn clients_are_limited_apart() {
        let rates = ClientRates::with_slots(1024);
        let g = Gcra::new(1.0, 0);
        let now = 5_000_000;
        assert_eq!(rates.check("a", 1, g, now), Verdict::Allow);
        assert!(matches!(rates.check("a", 1, g, now), Verdict::Deny(_)));
        assert_eq!(rates.check("a", 2, g, now), Verdict::Allow);
        assert_eq!(rates.check("b", 1, g, now), Verdict::Allow);
    }

    #[test]
    fn a_million_clients_fit_in_a_fixed_table() {
        let rates = ClientRates::with_slots(1 << 12);
        let g = Gcra::new(1.0, 0);
        let now = 5_000_000;
        // Every client is new, so every request should pass; a client whose 16-bit tag matches
        // an earlier one in the same slot is mistaken for it — rarely.
        let wrongly_denied = (0..1_000_000u128)
            .filter(|&c| rates.check("a", c, g, now) != Verdict::Allow)
            .count();
        assert!(wrongly_denied < 200, "{wrongly_denied} of a million denied");
        assert_eq!(rates.slots.len(), 1 << 12);
        // A client seen just now, and still in the table, is still limited.
        assert!(matches!(
            rates.check("a", 999_999, g, now),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_key(v4), client_key(mapped));
    }

    #[test]
    fn connections_per_ip() {
        let counts = Arc::new(ConnectionCounts::with_slots(64));
        let a = counts.admit(7, 2);
        let b = counts.admit(7, 2);
        assert!(matches!(a, Admission::Counted(_)));
        assert!(matches!(b, Admission::Counted(_)));
        assert!(matches!(counts.admit(7, 2), Admission::Refused));
        assert!(matches!(counts.admit(8, 2), Admission::Counted(_)));
        drop(a);
        assert!(matches!(counts.admit(7, 2), Admission::Counted(_)));
        drop(b);
        assert!(counts.slots.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }
}
