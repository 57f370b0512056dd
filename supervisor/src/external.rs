//! Apps with `upstream: host:port`: services SpinForge routes to but does not run. Their task
//! health-checks the service every [`CHECK_INTERVAL`] and keeps `upstreams:{app}` to the addresses
//! that answer; it never starts, wakes or idles anything. A name is resolved here, on each check,
//! so that the edge only ever sees IP addresses (it never waits on DNS).

use crate::app::publish::Publisher;
use crate::app::{AppContext, Command, Inbox};
use crate::process;
use spinforge_state::config::{AppConfig, ExternalUpstream};
use spinforge_state::records::{AppRecord, Route};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the service is probed.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// One probe's (and one DNS lookup's) limit, unless `health_check.timeout` is shorter.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed probes in a row that take an address out of routing; one success puts it back.
pub const FAILS_TO_REMOVE: u32 = 2;

type Probe = Pin<Box<dyn Future<Output = Result<Vec<(SocketAddr, bool)>, String>> + Send>>;

/// The task of one external app.
pub struct ExternalTask {
    app: AppConfig,
    upstream: ExternalUpstream,
    inbox: Inbox,
    /// Writes its record, routes and upstreams (the only writer of them).
    publisher: Publisher,
    /// Addresses published to `upstreams:{app}`.
    healthy: BTreeSet<SocketAddr>,
    /// Failed probes in a row, per address seen.
    fails: BTreeMap<SocketAddr, u32>,
}

impl std::fmt::Debug for ExternalTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalTask")
            .field("app", &self.app.name)
            .field("upstream", &self.upstream)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

impl ExternalTask {
    /// The task for the app if it has `upstream:`; else the inbox back, for an [`AppTask`].
    ///
    /// [`AppTask`]: crate::app::AppTask
    pub fn new(ctx: Arc<AppContext>, mut inbox: Inbox) -> Result<Self, Inbox> {
        let app = (*inbox.definition.borrow_and_update().config).clone();
        let Some(upstream) = app.external().cloned() else {
            return Err(inbox);
        };
        Ok(Self {
            publisher: Publisher::new(ctx.store.clone(), &app.name),
            app,
            upstream,
            inbox,
            healthy: BTreeSet::new(),
            fails: BTreeMap::new(),
        })
    }

    pub async fn run(mut self) {
        // Nothing is known healthy until it answers.
        let first = self.inbox.republish_asked();
        self.republish().await;
        self.inbox.republished(first);
        self.acknowledge();
        let mut next_check = Instant::now();
        let mut probe: Option<Probe> = None;
        let mut definition_open = true;
        loop {
            tokio::select! {
                result = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                    probe = None;
                    self.apply(result).await;
                    next_check = Instant::now() + CHECK_INTERVAL;
                }
                _ = tokio::time::sleep_until(next_check), if probe.is_none() => {
                    probe = Some(Box::pin(check(
                        self.upstream.clone(),
                        self.app.health_check.path.clone(),
                        self.app.health_check.timeout.min(PROBE_TIMEOUT),
                    )));
                }
                changed = self.inbox.definition.changed(), if definition_open => match changed {
                    Ok(()) => {
                        let app = (*self.inbox.definition.borrow_and_update().config).clone();
                        if let Some(upstream) = app.external().cloned() {
                            self.upstream = upstream;
                        }
                        self.app = app;
                        self.republish().await;
                        self.acknowledge();
                    }
                    Err(_) => definition_open = false,
                },
                () = self.inbox.republish.notified() => {
                    let generation = self.inbox.republish_asked();
                    self.republish().await;
                    self.inbox.republished(generation);
                }
                cmd = self.inbox.commands.recv() => match cmd {
                    // Never started, never idled: SpinForge does not run it.
                    Some(Command::Wake | Command::IdleCheck { .. }) => {}
                    // The supervisor refuses deploys of an external app; nothing to build.
                    Some(Command::Deploy { .. }) => {}
                    Some(Command::Rollback { reply, .. }) => {
                        let _ = reply.send(Err(not_ours(&self.app.name)));
                    }
                    Some(Command::Lifecycle { reply, .. }) => {
                        let _ = reply.send(Err(not_ours(&self.app.name)));
                    }
                    Some(Command::Detach { done }) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::Shutdown { done, forget, .. }) => {
                        if forget {
                            let domains = self.app.domains.clone();
                            self.publisher.unpublish(&domains).await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    /// Takes one round of probe results into the healthy set; publishes it when it changed.
    async fn apply(&mut self, result: Result<Vec<(SocketAddr, bool)>, String>) {
        let before = self.healthy.clone();
        match result {
            Ok(results) => {
                let seen: BTreeSet<SocketAddr> = results.iter().map(|(a, _)| *a).collect();
                // Addresses the name no longer resolves to leave at once.
                self.healthy.retain(|a| seen.contains(a));
                self.fails.retain(|a, _| seen.contains(a));
                for (addr, ok) in results {
                    let fails = self.fails.entry(addr).or_insert(0);
                    if ok {
                        *fails = 0;
                        self.healthy.insert(addr);
                    } else {
                        *fails += 1;
                        if *fails >= FAILS_TO_REMOVE {
                            self.healthy.remove(&addr);
                        }
                    }
                }
            }
            Err(e) => {
                // A name that does not resolve counts as a failed probe of every known address.
                tracing::debug!(app = %self.app.name, upstream = %self.upstream, error = %e, "cannot resolve the upstream");
                for (addr, fails) in self.fails.iter_mut() {
                    *fails += 1;
                    if *fails >= FAILS_TO_REMOVE {
                        self.healthy.remove(addr);
                    }
                }
            }
        }
        if self.healthy == before {
            return;
        }
        if self.healthy.len() > before.len() || before.is_subset(&self.healthy) {
            tracing::info!(app = %self.app.name, upstream = %self.upstream, healthy = ?self.healthy, "external upstream healthy");
        } else {
            tracing::warn!(app = %self.app.name, upstream = %self.upstream, healthy = ?self.healthy, "external upstream failing its health check; taken out of routing");
        }
        self.publish_upstreams().await;
    }

    /// Says the current definition is published (see [`crate::app::Outbox::published`]).
    fn acknowledge(&self) {
        let version = self.inbox.definition.borrow().version;
        self.inbox.acknowledge(version);
    }

    async fn publish_upstreams(&self) {
        let addrs: Vec<String> = self.healthy.iter().map(SocketAddr::to_string).collect();
        self.publisher.upstreams(&addrs).await;
    }

    /// Writes the app's record, its routes (marked external) and its healthy upstreams.
    async fn republish(&mut self) {
        let record = AppRecord {
            name: self.app.name.clone(),
            domains: self.app.domains.clone(),
            source: format!("upstream:{}", self.upstream),
            idle_timeout_ms: None,
            current_release: None,
            releases: Vec::new(),
            state: "external".into(),
            reason: None,
            instances: 0,
        };
        let routes: Vec<Route> = self
            .app
            .domains
            .iter()
            .map(|d| Route {
                domain: d.clone(),
                app: self.app.name.clone(),
                release: None,
                policy: self.app.policy.clone(),
                external: true,
                failed: false,
            })
            .collect();
        self.publisher.external(&record, &routes).await;
        self.publish_upstreams().await;
    }
}

/// Resolves the upstream and probes every address it has, at once; each probe within `timeout`.
async fn check(
    upstream: ExternalUpstream,
    path: String,
    timeout: Duration,
) -> Result<Vec<(SocketAddr, bool)>, String> {
    let target = (upstream.host.as_str(), upstream.port);
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host(target)).await {
            Ok(Ok(addrs)) => addrs.collect::<BTreeSet<_>>().into_iter().collect(),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("DNS lookup timed out".into()),
        };
    let host = upstream.to_string();
    let mut probes = tokio::task::JoinSet::new();
    for addr in addrs {
        let (host, path) = (host.clone(), path.clone());
        probes.spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, process::probe_addr(addr, &host, &path)).await,
                Ok(Ok(status)) if status < 500
            );
            (addr, ok)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = probes.join_next().await {
        if let Ok(r) = r {
            results.push(r);
        }
    }
    results.sort();
    Ok(results)
}

fn not_ours(app: &str) -> crate::control::ControlError {
    crate::control::ControlError::Conflict(format!(
        "app `{app}` routes to a service SpinForge does not run: it has no releases or spinlets"
    ))
}
