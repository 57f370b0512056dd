//! Everything an app shows the edges and the admin API: its record, its routes, its upstreams
//! and its spinlets' records. **These are written here and nowhere else**: each app task (or
//! external task) owns a [`Publisher`] for its own app, and the supervisor's loop only sweeps
//! away what no app claims ([`sweep`]), at start and after the store came back. One writer per
//! record, so a removed or changed app can never be written back by a second, stale writer.

use crate::release::Release;
use spinforge_state::config::AppConfig;
use spinforge_state::records::{AppRecord, Drain, Route, Spinlet};
use spinforge_state::{Store, StoreError};
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

/// No store call waits longer than this.
const STORE_DEADLINE: Duration = Duration::from_secs(5);

/// The app's record and routes as the machine sees them (the list of releases on disk is added
/// when written).
#[derive(Debug, Clone, PartialEq)]
pub struct AppView {
    pub record: AppRecord,
    pub routes: Vec<Route>,
}

/// The view of `config` serving `serving` in `state` (`waiting`, `idle`, `running`, `failed`).
pub fn view(
    config: &AppConfig,
    serving: Option<&Release>,
    state: &str,
    reason: Option<String>,
) -> AppView {
    let current = serving.map(|r| r.info.number);
    AppView {
        record: AppRecord {
            name: config.name.clone(),
            domains: config.domains.clone(),
            source: serving
                .map(|r| r.info.source.clone())
                .unwrap_or_else(|| config.source.to_string()),
            idle_timeout_ms: config.idle_timeout.map(|d| d.as_millis() as u64),
            current_release: current,
            releases: Vec::new(),
            state: state.into(),
            reason,
            instances: config.instances,
        },
        routes: config
            .domains
            .iter()
            .map(|d| Route {
                domain: d.clone(),
                app: config.name.clone(),
                release: current,
                policy: config.policy.clone(),
                external: false,
                failed: state == "failed",
            })
            .collect(),
    }
}

/// Writes one app's records. Remembers the domains it wrote routes for, so a domain the app
/// lost is deleted by the app itself (the supervisor hands it to another app only after).
#[derive(Debug)]
pub struct Publisher {
    store: Store,
    app: String,
    domains: BTreeSet<String>,
}

impl Publisher {
    pub fn new(store: Store, app: &str) -> Publisher {
        Publisher {
            store,
            app: app.to_string(),
            domains: BTreeSet::new(),
        }
    }

    /// The app's record (with `releases`, the ones on disk) and its routes; routes of domains
    /// it no longer has are deleted.
    pub async fn app(&mut self, view: &AppView, releases: Vec<u64>) {
        let mut record = view.record.clone();
        record.releases = releases;
        let routes = view.routes.clone();
        let now: BTreeSet<String> = routes.iter().map(|r| r.domain.clone()).collect();
        let gone: Vec<String> = self.domains.difference(&now).cloned().collect();
        let written = self
            .call("publishing the app", |s| async move {
                for domain in &gone {
                    s.delete_route(domain).await?;
                }
                s.put_app(&record).await?;
                for route in &routes {
                    s.put_route(route).await?;
                }
                Ok(())
            })
            .await;
        if written {
            self.domains = now;
        } else {
            // Deleted next time: keep them in mind.
            self.domains.extend(now);
        }
    }

    /// Routes of an app SpinForge does not run (`external: true`) and its record.
    pub async fn external(&mut self, record: &AppRecord, routes: &[Route]) {
        let view = AppView {
            record: record.clone(),
            routes: routes.to_vec(),
        };
        self.app(&view, Vec::new()).await;
    }

    /// The app's upstreams (and no drains: an app SpinForge does not run).
    pub async fn upstreams(&self, addrs: &[String]) {
        self.upstreams_and_drains(addrs, &[]).await;
    }

    /// The app's upstreams and its draining spinlets, in one write.
    pub async fn upstreams_and_drains(&self, addrs: &[String], drains: &[Drain]) {
        let (name, addrs, drains) = (self.app.clone(), addrs.to_vec(), drains.to_vec());
        self.call("publishing upstreams", |s| async move {
            s.set_upstreams_and_drains(&name, &addrs, &drains).await
        })
        .await;
    }

    pub async fn spinlet(&self, spinlet: &Spinlet) {
        let sp = spinlet.clone();
        self.call(
            "recording spinlet",
            |s| async move { s.put_spinlet(&sp).await },
        )
        .await;
    }

    pub async fn forget_spinlet(&self, id: &str) {
        let id = id.to_string();
        self.call("deleting spinlet", |s| async move {
            s.delete_spinlet(&id).await
        })
        .await;
    }

    /// The app is removed: its routes go first (requests for it get 404 from now on), then its
    /// record and upstreams.
    pub async fn unpublish(&mut self, domains: &[String]) {
        let mut all = std::mem::take(&mut self.domains);
        all.extend(domains.iter().cloned());
        let name = self.app.clone();
        self.call("removing the app", |s| async move {
            for domain in &all {
                s.delete_route(domain).await?;
            }
            s.delete_app(&name).await
        })
        .await;
    }

    async fn call<F, Fut>(&self, what: &str, call: F) -> bool
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        store_write(&self.store, &self.app, what, call).await
    }
}

/// Deletes routes of domains no app in `apps` claims, and records of apps not in `apps`: what a
/// previous run (or a store restored from an old snapshot) left. A claimed domain is never
/// touched: its app's publisher owns it.
pub async fn sweep(store: &Store, apps: &[&AppConfig]) -> Result<(), StoreError> {
    let claimed: HashSet<&str> = apps
        .iter()
        .flat_map(|a| a.domains.iter().map(String::as_str))
        .collect();
    for route in store.routes().await? {
        if !claimed.contains(route.domain.as_str()) {
            tracing::info!(domain = %route.domain, app = %route.app, "removing route of an app no longer configured");
            store.delete_route(&route.domain).await?;
        }
    }
    let names: HashSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    for record in store.apps().await? {
        if !names.contains(record.name.as_str()) {
            store.delete_app(&record.name).await?;
        }
    }
    Ok(())
}

/// Runs a store write for `app` with a deadline; failures are logged, not fatal: the next resync
/// republishes everything. True if it was written.
pub(crate) async fn store_write<F, Fut>(store: &Store, app: &str, what: &str, call: F) -> bool
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    match tokio::time::timeout(STORE_DEADLINE, call(store.clone())).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(%app, error = %e, "store write failed while {what}");
            false
        }
        Err(_) => {
            tracing::warn!(%app, "store write timed out while {what}");
            false
        }
    }
}
