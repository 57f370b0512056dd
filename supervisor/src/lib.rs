//! The supervisor: turns the config's apps into running spinlets.
//!
//! For each app a task ([`app::AppTask`]) builds a release ([`release`]) and, on a `wake` from an
//! edge, starts a spinlet ([`process`]) on a port from [`ports`], health-checks it and publishes it
//! to `upstreams:{app}`; it restarts crashed spinlets with backoff and stops idle ones. This module
//! wires the tasks to the store: routes in, wake events and activity to the tasks, and a
//! republish of everything whenever the store may have lost it (a Redis restart).

pub mod app;
pub mod build;
pub mod cgroup; // limits (issue #6 item 2)
pub mod control;
pub mod external;
pub mod logs; // spinlet logs: rotation, tail (issue #6 item 8)
pub mod ports;
pub mod process;
pub mod release;
pub mod static_site;
pub mod users; // one uid per app under run_as (issue #6 item 2)

use app::{AppContext, AppTask, Command};
use spinforge_state::config::{AppConfig, Config};
use spinforge_state::{Event, Signal, Store, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// After a resync the store refused, try again this soon.
const RESYNC_RETRY: Duration = Duration::from_millis(500);

/// Messages queued per app task; wakes beyond it are dropped (edges repeat them every second).
const APP_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{0}")]
    Toolchain(String),
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write routes to the store: {0}")]
    Store(#[from] StoreError),
    #[error("supervisor.run_as: {0}")]
    RunAs(String),
}

/// `supervisor.run_as` as a uid and gid: `None` when unset, or when SpinForge does not run as
/// root (it cannot switch users then; a warning says so). A user that does not exist is an error.
pub fn resolve_run_as(name: Option<&str>) -> Result<Option<build::runner::RunAs>, SupervisorError> {
    let Some(name) = name else { return Ok(None) };
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| SupervisorError::RunAs(format!("cannot look up user `{name}`: {e}")))?
        .ok_or_else(|| {
            SupervisorError::RunAs(format!(
                "there is no user `{name}` on this machine: create it (e.g. `useradd --system --home /nonexistent spinforge`) or remove run_as"
            ))
        })?;
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(user = %name, "supervisor.run_as is set, but SpinForge is not running as root and cannot switch users: builds and spinlets run as the current user");
        return Ok(None);
    }
    Ok(Some(build::runner::RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// A supervisor whose routes are in the store and whose app tasks are running.
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    store: Store,
    apps: HashMap<String, mpsc::Sender<Command>>,
    tasks: JoinSet<()>,
    handle: control::SupervisorHandle,
    requests: mpsc::Receiver<control::Request>,
}

impl Supervisor {
    /// Writes the config's routes to the store, removes routes of apps no longer configured, and
    /// starts one task per app (which builds its release in the background).
    pub async fn start(config: &Config, store: Store) -> Result<Supervisor, SupervisorError> {
        let tools = release::Toolchain::discover().map_err(SupervisorError::Toolchain)?;
        let data_dir = config.supervisor.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| SupervisorError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let run_as = resolve_run_as(config.supervisor.run_as.as_deref())?;
        reconcile_routes(config, &store).await?;
        forget_stale_spinlets(config, &store).await?;

        // Spinlet logs are rotated in the background (issue #6 item 8).
        logs::spawn_rotator(data_dir.join("logs"), config.supervisor.logs);
        let builder = build::queue::Builder::new(
            store.clone(),
            build::BuildContext {
                data_dir: data_dir.clone(),
                tools: tools.clone(),
                limits: config.supervisor.builds.clone(),
                run_as,
            },
        );
        let ctx = Arc::new(AppContext {
            store: store.clone(),
            tools,
            ports: ports::PortAllocator::new(config.supervisor.port_range),
            data_dir,
            builder,
            run_as,
        });
        let mut apps = HashMap::new();
        let mut tasks = JoinSet::new();
        for app in config.apps.values() {
            let (tx, rx) = mpsc::channel(APP_QUEUE);
            match external::ExternalTask::new(app.clone(), ctx.clone(), rx) {
                Ok(task) => tasks.spawn(task.run()),
                Err(rx) => tasks.spawn(AppTask::new(app.clone(), ctx.clone(), rx).run()),
            };
            apps.insert(app.name.clone(), tx);
        }
        tracing::info!(
            apps = apps.len(),
            store = store.kind(),
            "supervisor started"
        );
        let (handle, requests) = control::SupervisorHandle::new();
        Ok(Supervisor {
            config: config.clone(),
            store,
            apps,
            tasks,
            handle,
            requests,
        })
    }

    /// A handle for the admin API and the hot-deploy watcher.
    pub fn handle(&self) -> control::SupervisorHandle {
        self.handle.clone()
    }

    /// Routes wakes and idle checks to the app tasks until `shutdown` carries a deadline; then
    /// stops every spinlet by that deadline.
    pub async fn run(mut self, mut shutdown: watch::Receiver<Option<Instant>>) {
        let mut events = self.store.subscribe();
        let _ = events.next().await; // the initial resync: `start` has just written everything
        let mut reap = tokio::time::interval(reap_interval(&self.config));
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A resync whose writes failed (the command connection not back yet) is tried again.
        let mut resync_retry: Option<Instant> = None;
        let deadline = loop {
            let retry = async {
                match resync_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                signal = events.next() => match signal {
                    Some(Signal::Event(Event::Wake { app })) => self.send(&app, Command::Wake),
                    Some(Signal::Event(_)) => {}
                    Some(Signal::Resync) => {
                        resync_retry = (!self.resync().await).then(|| Instant::now() + RESYNC_RETRY);
                    }
                    None => break Instant::now() + Duration::from_secs(5),
                },
                _ = retry => {
                    resync_retry = (!self.resync().await).then(|| Instant::now() + RESYNC_RETRY);
                }
                _ = reap.tick() => self.idle_checks().await,
                Some(request) = self.requests.recv() => self.control(request).await,
                d = async { shutdown.wait_for(Option::is_some).await.ok().and_then(|d| *d) } => {
                    break d.unwrap_or_else(Instant::now);
                }
            }
        };
        self.shutdown(deadline).await;
    }

    async fn control(&mut self, request: control::Request) {
        use control::{ControlError, ManagedApp, Origin, Request};
        let not_yet = || ControlError::Refused("not supported by this version yet".into());
        match request {
            Request::Apps(reply) => {
                let apps = self
                    .config
                    .apps
                    .values()
                    .map(|a| ManagedApp {
                        config: a.clone(),
                        origin: Origin::Config,
                    })
                    .collect();
                let _ = reply.send(apps);
            }
            Request::PutApp { reply, .. } => drop(reply.send(Err(not_yet()))),
            Request::DeleteApp { reply, .. } => drop(reply.send(Err(not_yet()))),
            Request::Deploy { reply, .. } => drop(reply.send(Err(not_yet()))),
            Request::Rollback { reply, .. } => drop(reply.send(Err(not_yet()))),
            Request::Lifecycle { reply, .. } => drop(reply.send(Err(not_yet()))),
        }
    }

    fn send(&self, app: &str, cmd: Command) {
        match self.apps.get(app) {
            Some(tx) => {
                if tx.try_send(cmd).is_err() {
                    tracing::debug!(%app, "app task busy; dropping a message it will get again");
                }
            }
            None => tracing::debug!(%app, "message for an app this supervisor does not run"),
        }
    }

    /// The store may have lost what we wrote (Redis restarted empty): write it all again.
    /// False when the store refused the routes; the caller tries again shortly.
    async fn resync(&self) -> bool {
        tracing::info!("store resynced; republishing routes and spinlets");
        if let Err(e) = reconcile_routes(&self.config, &self.store).await {
            tracing::warn!(error = %e, "cannot republish routes yet; retrying");
            return false;
        }
        for tx in self.apps.values() {
            let _ = tx.try_send(Command::Republish);
        }
        true
    }

    async fn idle_checks(&self) {
        let activity = match tokio::time::timeout(Duration::from_secs(5), self.store.activity())
            .await
        {
            Ok(Ok(a)) => a,
            // Without the edges' numbers we cannot know an app is idle: stop nothing.
            Ok(Err(e)) => {
                return tracing::debug!(error = %e, "cannot read activity; skipping idle checks");
            }
            Err(_) => return tracing::debug!("reading activity timed out; skipping idle checks"),
        };
        for (name, tx) in &self.apps {
            let _ = tx.try_send(Command::IdleCheck {
                last_access_ms: activity.get(name).copied(),
            });
        }
    }

    async fn shutdown(mut self, deadline: Instant) {
        tracing::info!(apps = self.apps.len(), "stopping spinlets");
        let mut waits = Vec::new();
        for tx in self.apps.values() {
            let (done, wait) = oneshot::channel();
            // `send().await`, not `try_send`: a shutdown must not be dropped on a full queue.
            if tx.send(Command::Shutdown { deadline, done }).await.is_ok() {
                waits.push(wait);
            }
        }
        // Each task SIGKILLs at the deadline; allow a moment past it for the reaping.
        let all = futures_join_all(waits);
        if tokio::time::timeout_at(deadline + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!("some app tasks did not stop in time");
        }
        self.tasks.abort_all();
        tracing::info!("supervisor stopped");
    }
}

async fn futures_join_all(waits: Vec<oneshot::Receiver<()>>) {
    for w in waits {
        let _ = w.await;
    }
}

/// Idle checks run often enough to stop an app within a quarter of its idle timeout.
fn reap_interval(config: &Config) -> Duration {
    config
        .apps
        .values()
        .filter_map(|a| a.idle_timeout)
        .min()
        .map_or(Duration::from_secs(5), |d| {
            (d / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
        })
}

/// Routes for every configured domain; routes for anything else are removed.
async fn reconcile_routes(config: &Config, store: &Store) -> Result<(), StoreError> {
    let existing = store.routes().await?;
    let wanted: HashMap<&str, &AppConfig> = config
        .apps
        .values()
        .flat_map(|a| a.domains.iter().map(move |d| (d.as_str(), a)))
        .collect();
    for route in &existing {
        if !wanted.contains_key(route.domain.as_str()) {
            tracing::info!(domain = %route.domain, app = %route.app, "removing route of an app no longer configured");
            store.delete_route(&route.domain).await?;
        }
    }
    for (domain, app) in &wanted {
        let external = app.external().is_some();
        let current = existing.iter().find(|r| r.domain == *domain);
        if current
            .is_none_or(|r| r.app != app.name || r.policy != app.policy || r.external != external)
        {
            store
                .put_route(&spinforge_state::records::Route {
                    domain: domain.to_string(),
                    app: app.name.clone(),
                    release: current.and_then(|r| r.release),
                    policy: app.policy.clone(),
                    external,
                })
                .await?;
        }
    }
    let configured: BTreeSet<&str> = config.apps.keys().map(String::as_str).collect();
    for record in store.apps().await? {
        if !configured.contains(record.name.as_str()) {
            store.delete_app(&record.name).await?;
        }
    }
    Ok(())
}

/// Spinlet records of a previous run describe processes this supervisor does not own.
async fn forget_stale_spinlets(config: &Config, store: &Store) -> Result<(), StoreError> {
    for s in store.spinlets().await? {
        if config.apps.contains_key(&s.app) {
            store.delete_spinlet(&s.id).await?;
        }
    }
    Ok(())
}
