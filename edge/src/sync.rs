//! Keeps the routing snapshot in step with the store: events change single routes or upstream
//! sets; a resync (first subscription, reconnect, lag, or every [`FULL_RELOAD`]) reloads it all.
//! While the store is unreachable the last table keeps serving and the reload is retried.
//!
//! A store that lost its data (a Redis restarted empty) is refilled by the supervisor app by
//! app; until it says it is whole again (`Store::published`), a reload takes what the store has
//! and keeps the last routes and upstreams for what it lacks — a route the store has not got
//! back yet is not a route that was removed — and reloads again soon.

use crate::routing::drain::Draining;
use crate::routing::{NoUpstream, RoutingTable};
use arc_swap::ArcSwap;
use spinforge_state::records::{Drain, Route};
use spinforge_state::stop::CancellationToken;
use spinforge_state::{Event, Signal, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A safety net against lost events: reload everything this often.
const FULL_RELOAD: Duration = Duration::from_secs(30);
/// After a failed reload, or one from a store still being refilled, try again after this long
/// (doubling while the store stays incomplete, up to [`FULL_RELOAD`]).
const RETRY: Duration = Duration::from_millis(500);
/// After a reconnect, wait this long before reloading: a Redis that restarted empty is refilled
/// by the supervisor's republish within it, and until then the last table keeps serving.
const RECONNECT_SETTLE: Duration = Duration::from_secs(1);

/// The current routing table and a counter that ticks on every swap, for held requests to wait on.
#[derive(Debug)]
pub struct Snapshot {
    table: ArcSwap<RoutingTable>,
    version: watch::Sender<u64>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self {
            table: ArcSwap::from_pointee(RoutingTable::default()),
            version: watch::channel(0).0,
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    fn publish(&self, table: RoutingTable) {
        self.table.store(Arc::new(table));
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that sees every swap from now on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

/// What the store holds, as far as routing cares.
#[derive(Debug, Default)]
struct Model {
    /// domain → route (app and its edge policy)
    routes: BTreeMap<String, Route>,
    /// app → healthy upstreams
    upstreams: HashMap<String, Vec<SocketAddr>>,
    /// app → spinlets out of routing that finish what they serve (read with the upstreams)
    draining: HashMap<String, Vec<Draining>>,
}

impl Model {
    /// Everything, and whether the store said it was whole before it was read.
    async fn load(store: &Store) -> Result<(Model, bool), StoreError> {
        // Asked first: what is read after a "whole" answer is whole.
        let whole = store.published().await?;
        let routes: BTreeMap<String, Route> = store
            .routes()
            .await?
            .into_iter()
            .map(|r| (r.domain.clone(), r))
            .collect();
        let mut apps: Vec<String> = routes.values().map(|r| r.app.clone()).collect();
        apps.sort();
        apps.dedup();
        let sets = store.upstreams_and_drains_of(&apps).await?;
        let mut model = Model {
            routes,
            ..Model::default()
        };
        for (app, (set, drains)) in apps.into_iter().zip(sets) {
            model.set(app, &set, &drains);
        }
        Ok((model, whole))
    }

    /// A reload from a store being refilled: what it has wins; what it lacks (a route, or an
    /// app's upstreams not written back yet) is kept from before.
    fn refill(&mut self, fresh: Model) {
        self.routes.extend(fresh.routes);
        for (app, set) in fresh.upstreams {
            if !set.is_empty() || !self.upstreams.contains_key(&app) {
                self.upstreams.insert(app, set);
            }
        }
        self.draining.extend(fresh.draining);
    }

    /// An app's upstreams and drains, as read together.
    fn set(&mut self, app: String, set: &[String], drains: &[Drain]) {
        let draining = parse_drains(drains);
        if draining.is_empty() {
            self.draining.remove(&app);
        } else {
            self.draining.insert(app.clone(), draining);
        }
        self.upstreams.insert(app, parse_addrs(set));
    }

    async fn reload_app(&mut self, store: &Store, app: &str) -> Result<(), StoreError> {
        let (set, drains) = store
            .upstreams_and_drains_of(&[app.to_string()])
            .await?
            .pop()
            .unwrap_or_default();
        self.set(app.to_string(), &set, &drains);
        Ok(())
    }

    async fn apply(&mut self, store: &Store, event: &Event) -> Result<bool, StoreError> {
        match event {
            Event::RouteChanged { domain } => {
                match store.route(domain).await? {
                    Some(route) => {
                        if !self.upstreams.contains_key(&route.app) {
                            self.reload_app(store, &route.app).await?;
                        }
                        self.routes.insert(route.domain.clone(), route);
                    }
                    None => {
                        self.routes.remove(domain);
                    }
                }
                Ok(true)
            }
            Event::UpstreamsChanged { app } => {
                self.reload_app(store, app).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn table(&self, previous: &RoutingTable) -> RoutingTable {
        RoutingTable::build(
            self.routes
                .iter()
                .map(|(d, r)| (d.as_str(), r.app.as_str(), &r.policy, NoUpstream::of(r))),
            &self.upstreams,
            &self.draining,
            previous,
        )
    }
}

fn parse_addrs(set: &[String]) -> Vec<SocketAddr> {
    // Sized exactly: with 10,000 apps the model holds 10,000 of these.
    let mut addrs = Vec::with_capacity(set.len());
    for s in set {
        match s.parse() {
            Ok(a) => addrs.push(a),
            // The edge never resolves names: a request must not wait on DNS.
            Err(_) => tracing::warn!(upstream = %s, "ignoring an upstream that is not IP:port"),
        }
    }
    addrs
}

fn parse_drains(drains: &[Drain]) -> Vec<Draining> {
    drains
        .iter()
        .filter_map(|d| {
            Some(Draining {
                spinlet: d.spinlet.as_str().into(),
                addr: d.addr.parse().ok()?,
                close_at_ms: d.close_at_ms,
            })
        })
        .collect()
}

/// Runs until `stop` is cancelled. The first table is published as soon as it is loaded.
pub async fn keep_in_sync(store: Store, snapshot: Arc<Snapshot>, stop: CancellationToken) {
    let mut model = Model::default();
    let mut sub = store.subscribe();
    let mut full_reload = tokio::time::interval(FULL_RELOAD);
    full_reload.tick().await; // the subscription's first signal is a resync already
    let mut first = true;
    let mut loaded = false;
    // When the next full reload is due, if one is scheduled.
    let mut reload_at: Option<tokio::time::Instant> = None;
    // The pause before the next reload while the store is being refilled.
    let mut refill_retry = RETRY;
    let mut events = Vec::new();
    loop {
        let reload_timer = async {
            match reload_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut reload_now = false;
        let mut signals = Vec::new();
        tokio::select! {
            signal = sub.next() => match signal {
                Some(s) => signals.push(s),
                None => return,
            },
            _ = full_reload.tick() => reload_now = true,
            _ = reload_timer => reload_now = true,
            _ = stop.cancelled() => return,
        }
        // Take the rest of a burst so that it makes one table, not many.
        while let Some(s) = sub.try_next() {
            signals.push(s);
        }
        for s in signals {
            match s {
                Signal::Event(e) => events.push(e),
                Signal::Resync if std::mem::take(&mut first) => reload_now = true,
                // After a reconnect, let the store be refilled (a Redis that restarted empty is
                // republished by the supervisor) before reloading; the last table serves meanwhile.
                Signal::Resync => {
                    reload_at.get_or_insert(tokio::time::Instant::now() + RECONNECT_SETTLE);
                }
            }
        }
        let outcome = if reload_now {
            Model::load(&store).await.map(|(fresh, whole)| {
                reload_at = None;
                if whole || !loaded {
                    model = fresh;
                    refill_retry = RETRY;
                } else {
                    tracing::debug!(
                        routes = fresh.routes.len(),
                        "the store is being refilled; keeping the last routes for what it lacks"
                    );
                    model.refill(fresh);
                    // Again soon, and less often while the store stays incomplete.
                    reload_at = Some(tokio::time::Instant::now() + refill_retry);
                    refill_retry = (refill_retry * 2).min(FULL_RELOAD);
                }
                loaded = true;
                true
            })
        } else {
            apply_all(&mut model, &store, &events).await
        };
        events.clear();
        match outcome {
            Ok(changed) => {
                if changed {
                    let table = model.table(&snapshot.load());
                    tracing::debug!(routes = table.len(), "routing table updated");
                    snapshot.publish(table);
                }
            }
            Err(e) => {
                // Keep serving the last table; reload everything once the store answers again.
                tracing::warn!(error = %e, "cannot refresh routes from the store; serving the last known routes");
                reload_at = Some(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

async fn apply_all(model: &mut Model, store: &Store, events: &[Event]) -> Result<bool, StoreError> {
    let mut changed = false;
    for e in events {
        changed |= model.apply(store, e).await?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(domain: &str, app: &str) -> Route {
        Route {
            domain: domain.into(),
            app: app.into(),
            release: None,
            policy: Default::default(),
            external: false,
            failed: false,
        }
    }

    fn model(routes: &[(&str, &str)], upstreams: &[(&str, &[&str])]) -> Model {
        let mut m = Model::default();
        for (d, a) in routes {
            m.routes.insert(d.to_string(), route(d, a));
        }
        for (app, set) in upstreams {
            let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
            m.set(app.to_string(), &set, &[]);
        }
        m
    }

    #[test]
    fn a_refill_keeps_what_the_store_lacks_and_takes_what_it_has() {
        let mut last = model(
            &[("a.test", "a"), ("b.test", "b")],
            &[("a", &["127.0.0.1:1"]), ("b", &["127.0.0.1:2"])],
        );
        // The store has a's route back with a new upstream set, and b's not yet.
        let fresh = model(
            &[("a.test", "a"), ("c.test", "c")],
            &[("a", &["127.0.0.1:3"]), ("c", &[])],
        );
        last.refill(fresh);
        let domains: Vec<&str> = last.routes.keys().map(String::as_str).collect();
        assert_eq!(domains, ["a.test", "b.test", "c.test"]);
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            last.upstreams["a"],
            [addr("127.0.0.1:3")],
            "the store's wins"
        );
        assert_eq!(last.upstreams["b"], [addr("127.0.0.1:2")], "kept");
        assert!(last.upstreams["c"].is_empty(), "new, and empty");
        // An app's upstreams not written back yet (read as empty) are kept too.
        last.refill(model(&[], &[("a", &[])]));
        assert_eq!(last.upstreams["a"], [addr("127.0.0.1:3")]);
    }
}
