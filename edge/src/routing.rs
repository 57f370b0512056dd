//! The routing snapshot the request path reads: host → app → upstreams, immutable once built and
//! swapped whole (an `ArcSwap`), so a request never takes a lock or asks the store.

pub mod drain;

use crate::metrics::AppMetrics;
use drain::Draining;
use spinforge_state::policy::EdgePolicy;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// One immutable routing table.
#[derive(Debug, Default)]
pub struct RoutingTable {
    hosts: HashMap<Box<str>, Arc<AppEntry>>,
    apps: HashMap<Arc<str>, Arc<AppEntry>>,
    /// The apps with spinlets that drain (the drain reporter reads these, not every app).
    draining: Vec<Arc<AppEntry>>,
    /// The largest request head any app accepts (`limits.headers`): no connection buffers a
    /// longer one, whichever app it turns out to be for.
    max_header_bytes: u64,
}

/// An app as the request path sees it.
#[derive(Debug)]
pub struct AppEntry {
    pub name: Arc<str>,
    /// Healthy spinlets (or healthy addresses of an external service), in a stable order.
    pub upstreams: Box<[SocketAddr]>,
    /// Spinlets out of routing that finish what they serve (see [`drain`]).
    pub draining: Box<[Draining]>,
    /// Rate limits, size limits, compression, security headers.
    pub policy: Arc<EdgePolicy>,
    /// What a request gets while the app has no upstream.
    pub no_upstream: NoUpstream,
    /// Counters that outlive table swaps.
    pub runtime: Arc<AppRuntime>,
}

/// What the edge does with a request for an app that has no upstream right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoUpstream {
    /// Holds it and asks the supervisor to wake the app (stopped, or still starting).
    Wake,
    /// Answers 502 at once: a service SpinForge does not run (`upstream:`), never woken.
    External,
    /// Answers 503 at once: the app failed (its build, or its starts) and has nothing to run.
    /// A wake is still asked for: it is how the supervisor retries a failed app in time.
    Failed,
}

impl NoUpstream {
    /// For a route as the supervisor published it.
    pub fn of(route: &spinforge_state::records::Route) -> NoUpstream {
        if route.external {
            NoUpstream::External
        } else if route.failed {
            NoUpstream::Failed
        } else {
            NoUpstream::Wake
        }
    }
}

/// Per-app counters kept across snapshots: the next table reuses the previous one's.
#[derive(Debug, Default)]
pub struct AppRuntime {
    /// Last request start or end (ms since the epoch).
    last_access_ms: AtomicU64,
    /// What the activity flusher last wrote to the store.
    flushed_ms: AtomicU64,
    /// Round-robin cursor over the upstreams.
    next_upstream: AtomicUsize,
    /// Requests currently held waiting for the app to wake.
    held: AtomicUsize,
    /// When a wake was last asked for (ms), so that many held requests cause one wake a second.
    last_wake_ms: AtomicU64,
    /// WebSockets and event streams open now: they keep the app awake.
    open_streams: AtomicUsize,
    /// Passive health of each upstream.
    pub breakers: crate::breaker::Breakers,
    /// Requests in flight per upstream, for least-in-flight balancing.
    pub loads: Arc<crate::balance::Loads>,
    /// The app-wide rate budget (`rate_limit.app_rps`).
    pub app_rate: crate::limits::RateCell,
    /// The wake whose cold start was counted (its `last_wake_ms`), so it is counted once.
    counted_wake_ms: AtomicU64,
    /// The app's metrics, from its first request on.
    metrics: OnceLock<Box<AppMetrics>>,
}

/// A wake is asked again this often while requests are held (in case one got lost).
const WAKE_REPEAT_MS: u64 = 1000;

impl AppRuntime {
    pub fn touch(&self, now_ms: u64) {
        self.last_access_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// The last access not yet flushed, if any.
    pub fn unflushed_access(&self) -> Option<u64> {
        let last = self.last_access_ms.load(Ordering::Relaxed);
        (last > self.flushed_ms.load(Ordering::Relaxed)).then_some(last)
    }

    pub fn mark_flushed(&self, ms: u64) {
        self.flushed_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// An answer's head came back from `upstream` (on the request `load` counts): it works (its
    /// breaker closes) and it is alive, which the edge reports for the supervisor's health
    /// checks (a spinlet too busy to answer a probe in time still answers requests).
    pub fn answered(&self, upstream: SocketAddr, load: Option<&crate::balance::UpstreamLoad>) {
        self.breakers.success(upstream);
        if let Some(load) = load {
            load.answered();
        }
    }

    /// Counts a long-lived stream (WebSocket, event stream) to `upstream` until the guard is
    /// dropped: for the app (it keeps the app awake) and for that upstream (a drain waits for
    /// it).
    pub fn open_stream(self: &Arc<Self>, upstream: SocketAddr) -> OpenStream {
        self.open_streams.fetch_add(1, Ordering::AcqRel);
        OpenStream {
            runtime: self.clone(),
            _upstream: self.loads.stream(upstream),
        }
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Acquire)
    }

    /// The app's metrics (allocated on first use).
    pub fn metrics(&self) -> &AppMetrics {
        self.metrics.get_or_init(Box::default)
    }

    /// The app's metrics if it has had any.
    pub fn metrics_if_used(&self) -> Option<&AppMetrics> {
        self.metrics.get().map(|m| &**m)
    }

    /// True for the first held request to get through after a wake: that one counts the start.
    pub fn claim_cold_start(&self) -> bool {
        let wake = self.last_wake_ms.load(Ordering::Acquire);
        let counted = self.counted_wake_ms.load(Ordering::Acquire);
        counted != wake
            && self
                .counted_wake_ms
                .compare_exchange(counted, wake, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    pub fn next_upstream(&self) -> usize {
        self.next_upstream.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a place among the requests held for this app, unless `max` are held already.
    pub fn try_hold(self: &Arc<Self>, max: usize) -> Option<HeldRequest> {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(HeldRequest {
            runtime: self.clone(),
        })
    }

    /// True when this caller should publish a wake now (at most once per [`WAKE_REPEAT_MS`]).
    pub fn wake_due(&self, now_ms: u64) -> bool {
        let last = self.last_wake_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= WAKE_REPEAT_MS
            && self
                .last_wake_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// An open WebSocket or event stream, counted while it lives.
#[derive(Debug)]
pub struct OpenStream {
    runtime: Arc<AppRuntime>,
    _upstream: crate::balance::StreamLoad,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.runtime.open_streams.fetch_sub(1, Ordering::AcqRel);
        self.runtime.touch(spinforge_state::now_ms());
    }
}

/// A place among an app's held requests, given back on drop.
#[derive(Debug)]
pub struct HeldRequest {
    runtime: Arc<AppRuntime>,
}

impl Drop for HeldRequest {
    fn drop(&mut self) {
        self.runtime.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppEntry {
    /// `addr`'s drain, when it drains.
    pub fn drain_of(&self, addr: SocketAddr) -> Option<&Draining> {
        self.draining.iter().find(|d| d.addr == addr)
    }
}

impl RoutingTable {
    /// Builds a table from `routes` (domain, app, the app's policy, what it gets without upstream),
    /// `upstreams` (app → addresses) and `draining` (app → spinlets that drain), reusing the
    /// runtimes of `previous` for apps it already had.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (&'a str, &'a str, &'a EdgePolicy, NoUpstream)>,
        upstreams: &HashMap<String, Vec<SocketAddr>>,
        draining: &HashMap<String, Vec<Draining>>,
        previous: &RoutingTable,
    ) -> RoutingTable {
        let mut table = RoutingTable::default();
        // Apps mostly share a few policies (the default above all): one Arc for each distinct
        // one, or the previous table's when unchanged, instead of one copy per app.
        let mut distinct: Vec<Arc<EdgePolicy>> = Vec::new();
        for (domain, app, policy, no_upstream) in routes {
            let entry = match table.apps.get(app) {
                Some(e) => e.clone(),
                None => {
                    let name: Arc<str> = Arc::from(app);
                    let runtime = previous
                        .apps
                        .get(app)
                        .map(|e| e.runtime.clone())
                        .unwrap_or_default();
                    let mut addrs = upstreams.get(app).cloned().unwrap_or_default();
                    addrs.sort();
                    addrs.dedup();
                    // A routed address does not drain (an update seen half-way): it is counted
                    // and reported once it leaves routing.
                    let drains: Box<[Draining]> = draining
                        .get(app)
                        .into_iter()
                        .flatten()
                        .filter(|d| addrs.binary_search(&d.addr).is_err())
                        .cloned()
                        .collect();
                    // Slots of spinlets gone for good are free for the next ones.
                    let live: Vec<SocketAddr> = addrs
                        .iter()
                        .copied()
                        .chain(drains.iter().map(|d| d.addr))
                        .collect();
                    runtime.loads.forget_except(&live);
                    let shared = previous
                        .apps
                        .get(app)
                        .map(|e| &e.policy)
                        .into_iter()
                        .chain(distinct.iter())
                        .find(|p| ***p == *policy)
                        .cloned();
                    let policy = shared.unwrap_or_else(|| {
                        let p = Arc::new(policy.clone());
                        if distinct.len() < 8 {
                            distinct.push(p.clone());
                        }
                        p
                    });
                    let e = Arc::new(AppEntry {
                        name: name.clone(),
                        upstreams: addrs.into(),
                        draining: drains,
                        policy,
                        no_upstream,
                        runtime,
                    });
                    table.apps.insert(name, e.clone());
                    if !e.draining.is_empty() {
                        table.draining.push(e.clone());
                    }
                    e
                }
            };
            table.max_header_bytes = table.max_header_bytes.max(entry.policy.max_header_bytes);
            table.hosts.insert(domain.into(), entry);
        }
        table
    }

    /// The largest request head any app accepts; the default limit when there is no app.
    pub fn max_header_bytes(&self) -> u64 {
        if self.hosts.is_empty() {
            EdgePolicy::default().max_header_bytes
        } else {
            self.max_header_bytes
        }
    }

    /// The app for a normalized host: the exact name, else the wildcard one label up.
    pub fn lookup(&self, host: &str) -> Option<&Arc<AppEntry>> {
        if let Some(e) = self.hosts.get(host) {
            return Some(e);
        }
        let (_, parent) = host.split_once('.')?;
        // Wildcards are rare: only a miss pays for this allocation.
        let mut wildcard = String::with_capacity(parent.len() + 2);
        wildcard.push_str("*.");
        wildcard.push_str(parent);
        self.hosts.get(wildcard.as_str())
    }

    pub fn apps(&self) -> impl Iterator<Item = &Arc<AppEntry>> {
        self.apps.values()
    }

    /// The apps with spinlets that drain.
    pub fn draining(&self) -> impl Iterator<Item = &Arc<AppEntry>> {
        self.draining.iter()
    }

    pub fn app(&self, name: &str) -> Option<&Arc<AppEntry>> {
        self.apps.get(name)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// The host a request is for: port removed, lowercased (borrowed when already lowercase, which is
/// nearly always). `None` when empty or malformed.
pub fn normalize_host(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let raw = std::str::from_utf8(raw).ok()?.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        &raw[..rest.find(']')? + 2]
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host(b"Hello.Localhost:8080").as_deref(),
            Some("hello.localhost")
        );
        assert_eq!(
            normalize_host(b"example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host(b"example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host(b"[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(b":80"), None);
        assert_eq!(normalize_host(b""), None);
    }

    #[test]
    fn exact_then_wildcard() {
        let p = EdgePolicy::default();
        let ups = HashMap::from([("a".to_string(), vec![addr("127.0.0.1:3001")])]);
        let t = RoutingTable::build(
            [
                ("a.test", "a", &p, NoUpstream::Wake),
                ("*.b.test", "b", &p, NoUpstream::Wake),
            ],
            &ups,
            &HashMap::new(),
            &RoutingTable::default(),
        );
        assert_eq!(&*t.lookup("a.test").expect("exact").name, "a");
        assert_eq!(t.lookup("a.test").expect("exact").upstreams.len(), 1);
        assert_eq!(&*t.lookup("x.b.test").expect("wildcard").name, "b");
        assert!(t.lookup("b.test").is_none());
        assert!(t.lookup("y.x.b.test").is_none());
    }

    #[test]
    fn apps_with_equal_policies_share_one() {
        let default = EdgePolicy::default();
        let strict = EdgePolicy {
            max_body_bytes: 1024,
            ..EdgePolicy::default()
        };
        let copy = default.clone();
        let t = RoutingTable::build(
            [
                ("a.test", "a", &default, NoUpstream::Wake),
                ("b.test", "b", &strict, NoUpstream::Wake),
                ("c.test", "c", &copy, NoUpstream::Wake),
            ],
            &HashMap::new(),
            &HashMap::new(),
            &RoutingTable::default(),
        );
        let policy = |h: &str| t.lookup(h).expect("routed").policy.clone();
        assert!(Arc::ptr_eq(&policy("a.test"), &policy("c.test")));
        assert!(!Arc::ptr_eq(&policy("a.test"), &policy("b.test")));
        assert_eq!(policy("b.test").max_body_bytes, 1024);
        // A rebuild keeps an unchanged app's policy, and a changed one gets its new one.
        let t2 = RoutingTable::build(
            [
                ("a.test", "a", &default, NoUpstream::Wake),
                ("b.test", "b", &default, NoUpstream::Wake),
            ],
            &HashMap::new(),
            &HashMap::new(),
            &t,
        );
        assert!(Arc::ptr_eq(
            &t2.lookup("a.test").expect("a").policy,
            &policy("a.test")
        ));
        assert_eq!(
            t2.lookup("b.test").expect("b").policy.max_body_bytes,
            default.max_body_bytes
        );
    }

    #[test]
    fn runtimes_survive_rebuilds() {
        let p = EdgePolicy::default();
        let t1 = RoutingTable::build(
            [("a.test", "a", &p, NoUpstream::Wake)],
            &HashMap::new(),
            &HashMap::new(),
            &RoutingTable::default(),
        );
        t1.lookup("a.test").expect("a").runtime.touch(42);
        let t2 = RoutingTable::build(
            [
                ("a.test", "a", &p, NoUpstream::Wake),
                ("www.a.test", "a", &p, NoUpstream::Wake),
            ],
            &HashMap::new(),
            &HashMap::new(),
            &t1,
        );
        let e = t2.lookup("www.a.test").expect("a");
        assert_eq!(e.runtime.unflushed_access(), Some(42));
        assert!(Arc::ptr_eq(e, t2.lookup("a.test").expect("a")));
    }

    #[test]
    fn drains_are_in_the_table_unless_still_routed() {
        let p = EdgePolicy::default();
        let ups = HashMap::from([("a".to_string(), vec![addr("127.0.0.1:3001")])]);
        let drain = |port: u16| Draining {
            spinlet: format!("a-{port}").into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            close_at_ms: 42,
        };
        let drains = HashMap::from([("a".to_string(), vec![drain(3000), drain(3001)])]);
        let t = RoutingTable::build(
            [("a.test", "a", &p, NoUpstream::Wake)],
            &ups,
            &drains,
            &RoutingTable::default(),
        );
        let e = t.lookup("a.test").expect("a");
        // 3001 is routed (an update seen half-way): not draining until it leaves routing.
        assert_eq!(&*e.draining, &[drain(3000)]);
        assert_eq!(e.drain_of(addr("127.0.0.1:3000")), Some(&drain(3000)));
        assert!(e.drain_of(addr("127.0.0.1:3001")).is_none());
        assert_eq!(t.draining().count(), 1);
    }

    #[test]
    fn held_requests_are_bounded() {
        let rt = Arc::new(AppRuntime::default());
        let a = rt.try_hold(2).expect("first");
        let _b = rt.try_hold(2).expect("second");
        assert!(rt.try_hold(2).is_none());
        drop(a);
        assert!(rt.try_hold(2).is_some());
    }

    #[test]
    fn one_wake_per_second() {
        let rt = AppRuntime::default();
        assert!(rt.wake_due(10_000));
        assert!(!rt.wake_due(10_500));
        assert!(rt.wake_due(11_000));
    }
}
