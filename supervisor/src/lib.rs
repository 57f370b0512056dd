//! The supervisor: turns the config's apps into running spinlets.
//!
//! For each app a task ([`app::AppTask`]) builds a release ([`release`]) and, on a `wake` from an
//! edge, starts a spinlet ([`process`]) on a port from [`ports`], health-checks it and publishes it
//! to `upstreams:{app}`; it restarts crashed spinlets with backoff and stops idle ones. Each task
//! writes its own app's routes, record and upstreams (see [`app::publish`]). This module wires the
//! tasks to the rest: definitions, wake events, activity and control requests to the tasks, a
//! republish request whenever the store may have lost what they wrote (a Redis restart), and a
//! sweep of routes no app claims.

pub mod app;
pub mod build;
pub mod cgroup; // limits (issue #6 item 2)
pub mod control;
pub mod external;
mod hot_deploy;
pub mod logs; // spinlet logs: rotation, tail (issue #6 item 8)
mod managed;
pub mod ports;
pub mod process;
pub mod release;
pub mod settings;
pub mod spinlet;
pub mod static_site;
pub mod users; // one uid per app under run_as (issue #6 item 2)

use app::{AppContext, AppTask, Command, Outbox};
use control::{ControlError, ManagedApp, Origin};
use spinforge_state::config::{AppConfig, AppSource, Config, LogLimits};
use spinforge_state::records::Spinlet;
use spinforge_state::stop::StopSignal;
use spinforge_state::{Event, Signal, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// After a resync the store refused, try again this soon.
const RESYNC_RETRY: Duration = Duration::from_millis(500);

/// A removed app's spinlets get this long to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// How long the supervisor waits for an app task to publish a definition (its first, at start;
/// one that takes a domain away from it, before another app may claim the domain).
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

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

/// An app the supervisor runs: its definition, where it came from, and its task's channels.
#[derive(Debug)]
struct Entry {
    app: ManagedApp,
    outbox: Outbox,
    task: AbortHandle,
}

/// A supervisor whose routes are in the store and whose app tasks are running.
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    store: Store,
    ctx: Arc<AppContext>,
    apps: BTreeMap<String, Entry>,
    tasks: JoinSet<()>,
    handle: control::SupervisorHandle,
    requests: mpsc::Receiver<control::Request>,
    /// Live spinlets of a previous supervisor, per app, until their app task takes them.
    adoptable: HashMap<String, Vec<Spinlet>>,
    /// The build queue (a reload changes its limits).
    builder: build::queue::Builder,
    /// `supervisor.logs`, read by the log rotator each round.
    log_limits: watch::Sender<LogLimits>,
    /// The hot-deploy watcher, while `supervisor.deploy_dir` is set.
    hot_deploy: Option<AbortHandle>,
    /// Configs handed in by the process's reloader ([`Supervisor::config_updates`]; every
    /// binary mode attaches one, `src/reload.rs`); without one the config stays as started.
    updates: Option<mpsc::Receiver<ConfigUpdate>>,
    /// Marks the store whole once every app has written back what it owns (after the start or
    /// a resync; see [`Supervisor::mark_published_once_written`]).
    published_marker: Option<AbortHandle>,
}

/// How long the supervisor waits for every app to write its state back before it marks the
/// store whole anyway: an app that has not by then is stuck, and edges keep their last routes
/// for what the store lacks until the mark.
const REPUBLISH_DEADLINE: Duration = Duration::from_secs(30);

/// A new config for a running supervisor: what a reload applies to it (`apps:`, and
/// `supervisor.builds`, `logs`, `port_range`, `deploy_dir`). Keys only a new process can apply
/// (`data_dir`, `run_as`, `admin_listen`, …) must hold the values the supervisor started with
/// (`spinforge_state::config::reload::effective`). `done` is answered once every app task has its
/// new definition (and apps losing a domain have published), with what could not be applied.
#[derive(Debug)]
pub struct ConfigUpdate {
    pub config: Config,
    pub done: oneshot::Sender<Vec<String>>,
}

/// Where a running supervisor takes new configs ([`Supervisor::config_updates`]).
pub type ConfigUpdates = mpsc::Sender<ConfigUpdate>;

impl Supervisor {
    /// Removes routes of apps no longer configured, starts one task per app (which writes its
    /// routes, then builds its release in the background) and returns once every task has
    /// written its routes. Spinlets a previous supervisor left running are adopted by their
    /// app's task.
    pub async fn start(config: &Config, store: Store) -> Result<Supervisor, SupervisorError> {
        let tools = release::Toolchain::discover().map_err(SupervisorError::Toolchain)?;
        let data_dir = config.supervisor.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| SupervisorError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let run_as = resolve_run_as(config.supervisor.run_as.as_deref())?;
        let settings_key = settings::Key::load_or_create(&data_dir).map_err(|source| {
            SupervisorError::DataDir {
                path: data_dir.join("settings.key").display().to_string(),
                source,
            }
        })?;

        // Spinlet logs are rotated in the background (issue #6 item 8).
        let (log_limits, limits_rx) = watch::channel(config.supervisor.logs);
        logs::spawn_rotator(data_dir.join("logs"), limits_rx);
        let builder = build::queue::Builder::new(
            store.clone(),
            build::BuildContext {
                data_dir: data_dir.clone(),
                tools: tools.clone(),
                limits: config.supervisor.builds.clone(),
                run_as,
            },
        );
        let spawner = app::spawner::ProcessSpawner {
            tools,
            data_dir: data_dir.clone(),
            run_as,
        };
        let ctx = Arc::new(AppContext {
            store: store.clone(),
            ports: ports::PortAllocator::new(config.supervisor.port_range),
            data_dir: data_dir.clone(),
            builds: Arc::new(builder.clone()),
            spawner: Arc::new(spawner),
            timing: app::Timing::new(),
            settings_key,
        });
        let (handle, requests) = control::SupervisorHandle::new();
        let mut sup = Supervisor {
            config: config.clone(),
            store: store.clone(),
            ctx,
            apps: BTreeMap::new(),
            tasks: JoinSet::new(),
            handle,
            requests,
            adoptable: HashMap::new(),
            builder,
            log_limits,
            hot_deploy: None,
            updates: None,
            published_marker: None,
        };
        let mut wanted: Vec<ManagedApp> = config
            .apps
            .values()
            .map(|a| ManagedApp {
                config: a.clone(),
                origin: Origin::Config,
            })
            .collect();
        for app in managed::load_all(&data_dir) {
            if config.apps.contains_key(&app.config.name) {
                tracing::warn!(app = %app.config.name, "an app created through the API has the name of a config-file app; the config file wins");
                continue;
            }
            wanted.push(app);
        }
        // What a previous run left for apps gone since; every other route is its app's to write.
        let configs: Vec<&AppConfig> = wanted.iter().map(|a| &a.config).collect();
        app::publish::sweep(&store, &configs).await?;
        sup.adoptable = adoptable_spinlets(&wanted, &store).await?;
        for app in wanted {
            sup.spawn_app(app);
        }
        // Each task's first step writes its routes: once they all have, the routes are in.
        for (name, e) in &sup.apps {
            if !e.outbox.published(1, PUBLISH_WAIT).await {
                tracing::warn!(app = %name, "the app task has not published its routes yet");
            }
        }
        tracing::info!(
            apps = sup.apps.len(),
            store = store.kind(),
            "supervisor started"
        );
        Ok(sup)
    }

    /// A handle for the admin API and the hot-deploy watcher.
    pub fn handle(&self) -> control::SupervisorHandle {
        self.handle.clone()
    }

    /// Where the process's reloader (`src/reload.rs`: SIGHUP, `spinforge reload`, edits of
    /// the file) hands this supervisor new configs.
    pub fn config_updates(&mut self) -> ConfigUpdates {
        let (tx, rx) = mpsc::channel(4);
        self.updates = Some(rx);
        tx
    }

    /// (Re)starts the hot-deploy watcher for the current `supervisor.deploy_dir` and limits.
    fn start_hot_deploy(&mut self) {
        if let Some(old) = self.hot_deploy.take() {
            old.abort();
        }
        if let Some(dir) = self.config.supervisor.deploy_dir.clone() {
            self.hot_deploy = Some(
                self.tasks.spawn(
                    hot_deploy::Watcher {
                        dir,
                        data_dir: self.ctx.data_dir.clone(),
                        handle: self.handle.clone(),
                        store: self.store.clone(),
                        limits: self.config.supervisor.builds.clone(),
                    }
                    .run(),
                ),
            );
        }
    }

    fn spawn_app(&mut self, app: ManagedApp) {
        let (outbox, inbox) = app::command::channel(app.config.clone());
        let name = app.config.name.clone();
        let task = match external::ExternalTask::new(self.ctx.clone(), inbox) {
            Ok(task) => self.tasks.spawn(task.run()),
            Err(inbox) => {
                let adopted = self.adoptable.remove(&name).unwrap_or_default();
                self.tasks
                    .spawn(AppTask::new(self.ctx.clone(), inbox).run(adopted))
            }
        };
        self.apps.insert(name, Entry { app, outbox, task });
    }

    /// Routes wakes, idle checks, control requests and config edits until `shutdown` asks for a
    /// stop; then stops every spinlet by its deadline.
    pub async fn run(mut self, shutdown: StopSignal) {
        let mut events = self.store.subscribe();
        let _ = events.next().await; // the initial resync: `start` has just written everything
        self.mark_published_once_written();
        self.start_hot_deploy();
        let mut reap = tokio::time::interval(reap_interval(&self.app_configs()));
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
                Some(update) = async {
                    match self.updates.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let warnings = self.apply_config(update.config).await;
                    let _ = update.done.send(warnings);
                    reap = tokio::time::interval(reap_interval(&self.app_configs()));
                    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                Some(request) = self.requests.recv() => {
                    if let control::Request::Detach(done) = request {
                        self.detach().await;
                        let _ = done.send(());
                        return;
                    }
                    self.control(request).await;
                }
                stop = shutdown.requested() => break stop.deadline,
            }
        };
        self.shutdown(deadline).await;
    }

    fn app_configs(&self) -> Vec<AppConfig> {
        self.apps.values().map(|e| e.app.config.clone()).collect()
    }

    async fn control(&mut self, request: control::Request) {
        use control::Request;
        match request {
            Request::Apps(reply) => {
                let _ = reply.send(self.apps.values().map(|e| e.app.clone()).collect());
            }
            Request::PutApp {
                name,
                text,
                origin,
                reply,
            } => {
                let _ = reply.send(self.put_app(&name, &text, origin).await);
            }
            Request::DeleteApp { name, reply } => {
                let _ = reply.send(self.delete_app(&name).await);
            }
            Request::Deploy { app, source, reply } => {
                let _ = reply.send(self.deploy(&app, source).await);
            }
            Request::Rollback {
                app,
                release,
                reply,
            } => match self.apps.get(&app) {
                Some(e) => forward(&e.outbox, Command::Rollback { release, reply }),
                None => drop(reply.send(Err(ControlError::UnknownApp(app)))),
            },
            Request::Lifecycle { app, action, reply } => match self.apps.get(&app) {
                Some(e) => forward(&e.outbox, Command::Lifecycle { action, reply }),
                None => drop(reply.send(Err(ControlError::UnknownApp(app)))),
            },
            // Handled by `run`, which ends after it.
            Request::Detach(done) => drop(done.send(())),
        }
    }

    /// Every app task lets go of its spinlets without stopping them.
    async fn detach(mut self) {
        tracing::info!(
            apps = self.apps.len(),
            "detaching: spinlets keep running for the next supervisor"
        );
        for e in self.apps.values() {
            let (done, wait) = oneshot::channel();
            if e.outbox
                .commands
                .send(Command::Detach { done })
                .await
                .is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
            }
        }
        self.tasks.abort_all();
    }

    /// Creates or replaces an app that is not in the config file.
    async fn put_app(
        &mut self,
        name: &str,
        text: &str,
        origin: Origin,
    ) -> Result<ManagedApp, ControlError> {
        if let Some(e) = self.apps.get(name)
            && e.app.origin == Origin::Config
        {
            return Err(ControlError::Conflict(format!(
                "app `{name}` is defined in the config file ({}); change it there",
                self.config.file.display()
            )));
        }
        let saved = managed::Saved::read(&self.ctx.data_dir, name);
        let source = saved
            .as_ref()
            .and_then(|s| s.source.clone())
            .map(AppSource::from)
            .unwrap_or_else(|| managed::awaiting_upload(&self.ctx.data_dir, name));
        let file = managed::path(&self.ctx.data_dir, name);
        let mut config = spinforge_state::config::parse_app(name, text, &file, Some(source))
            .map_err(ControlError::Invalid)?;
        if let Some(deployed) = saved.and_then(|s| s.source) {
            // The last deploy's source stands until the next deploy.
            config.source = deployed.into();
        }
        self.check_domains(&config)?;
        let record = managed::Saved {
            section: text.to_string(),
            source: managed::SavedSource::from_app(&config.source),
            origin: origin.as_str().to_string(),
        };
        record
            .write(&self.ctx.data_dir, name)
            .map_err(|e| ControlError::Internal(format!("cannot save app `{name}`: {e}")))?;
        let app = ManagedApp { config, origin };
        self.apply(app.clone()).await;
        Ok(app)
    }

    /// Refuses a domain another app answers on.
    fn check_domains(&self, app: &AppConfig) -> Result<(), ControlError> {
        for e in self.apps.values() {
            if e.app.config.name == app.name {
                continue;
            }
            if let Some(d) = app
                .domains
                .iter()
                .find(|d| e.app.config.domains.contains(d))
            {
                return Err(ControlError::Conflict(format!(
                    "domain `{d}` belongs to app `{}`",
                    e.app.config.name
                )));
            }
        }
        Ok(())
    }

    /// Starts a new app, or hands a changed definition to its task (which publishes its routes).
    /// A definition that takes domains away from an app is waited for: only once that app has
    /// deleted their routes may another claim them.
    async fn apply(&mut self, app: ManagedApp) {
        let name = app.config.name.clone();
        let external_changed = self
            .apps
            .get(&name)
            .is_some_and(|e| e.app.config.external().is_some() != app.config.external().is_some());
        if external_changed {
            // Running it and routing to something else are different tasks: replace the task.
            let _ = self.remove_task(&name).await; // logged there
        }
        match self.apps.get_mut(&name) {
            Some(e) => {
                if e.app.config != app.config {
                    let loses_domains = e
                        .app
                        .config
                        .domains
                        .iter()
                        .any(|d| !app.config.domains.contains(d));
                    let version = e.outbox.define(app.config.clone());
                    if loses_domains && !e.outbox.published(version, PUBLISH_WAIT).await {
                        tracing::warn!(app = %name, "the app task has not published its new domains yet");
                    }
                }
                e.app = app;
            }
            None => self.spawn_app(app),
        }
    }

    async fn delete_app(&mut self, name: &str) -> Result<(), ControlError> {
        let Some(e) = self.apps.get(name) else {
            return Err(ControlError::UnknownApp(name.to_string()));
        };
        if e.app.origin == Origin::Config {
            return Err(ControlError::Conflict(format!(
                "app `{name}` is defined in the config file ({}); remove it there",
                self.config.file.display()
            )));
        }
        managed::remove(&self.ctx.data_dir, name);
        self.remove_task(name)
            .await
            .map_err(|e| ControlError::Internal(format!("cannot remove routes: {e}")))
    }

    /// Stops an app's task, which takes its routes away first (no request meets a stopping
    /// spinlet), then stops its spinlets and deletes its record. A task that does not answer by
    /// the deadline is aborted and what it left is swept.
    async fn remove_task(&mut self, name: &str) -> Result<(), StoreError> {
        let Some(e) = self.apps.remove(name) else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        let deadline = Instant::now() + STOP_DEADLINE;
        let command = Command::Shutdown {
            deadline,
            forget: true,
            done,
        };
        let answered = e.outbox.commands.send(command).await.is_ok()
            && tokio::time::timeout_at(deadline + Duration::from_secs(1), wait)
                .await
                .is_ok_and(|r| r.is_ok());
        let mut result = Ok(());
        if !answered {
            tracing::warn!(app = %name, "the app task did not stop in time; sweeping its routes");
            e.task.abort();
            result = self.sweep().await;
        }
        tracing::info!(app = %name, "app removed");
        result
    }

    /// Queues a build of `name` (recorded before its id is returned, so the id is known to every
    /// reader at once) and hands it to the app's task.
    async fn deploy(
        &mut self,
        name: &str,
        source: Option<AppSource>,
    ) -> Result<String, ControlError> {
        let Some(e) = self.apps.get_mut(name) else {
            return Err(ControlError::UnknownApp(name.to_string()));
        };
        if e.app.config.external().is_some() {
            return Err(ControlError::Conflict(format!(
                "app `{name}` routes to a service SpinForge does not run: there is nothing to deploy"
            )));
        }
        let mut config = e.app.config.clone();
        if let Some(source) = source {
            config.source = source;
            if e.app.origin != Origin::Config {
                if let Some(mut saved) = managed::Saved::read(&self.ctx.data_dir, name) {
                    saved.source = managed::SavedSource::from_app(&config.source);
                    if let Err(err) = saved.write(&self.ctx.data_dir, name) {
                        return Err(ControlError::Internal(format!(
                            "cannot save app `{name}`: {err}"
                        )));
                    }
                }
                e.app.config = config.clone();
            }
        }
        let ticket = self.ctx.builds.enqueue(&config).await;
        let build_id = ticket.id().to_string();
        // Refused: the command, and the ticket in it, drop here, which ends the build as cancelled.
        e.outbox
            .commands
            .try_send(Command::Deploy {
                ticket,
                app: Box::new(config),
            })
            .map_err(|_| ControlError::Busy)?;
        Ok(build_id)
    }

    /// Applies a new config: `supervisor.builds`, `logs`, `port_range` and `deploy_dir`, then
    /// the apps — added, removed (their task unpublishes them) or given their new definition,
    /// apps losing a domain first. Keys only a new process can apply must hold their running
    /// values (see [`ConfigUpdate`]). Returns what could not be applied.
    async fn apply_config(&mut self, new: Config) -> Vec<String> {
        let mut warnings = Vec::new();
        let (old, now) = (&self.config.supervisor, &new.supervisor);
        if old.builds != now.builds {
            self.builder.set_limits(now.builds.clone());
        }
        if old.port_range != now.port_range {
            self.ctx.ports.set_range(now.port_range);
        }
        if old.logs != now.logs {
            self.log_limits.send_replace(now.logs);
        }
        let restart_hot_deploy = old.deploy_dir != now.deploy_dir || old.builds != now.builds;
        if old.data_dir != now.data_dir || old.run_as != now.run_as {
            // A caller's mistake (see `ConfigUpdate`): never act on them here.
            warnings.push("supervisor.data_dir and run_as apply at the next start".to_string());
        }
        let removed: Vec<String> = self
            .apps
            .values()
            .filter(|e| {
                e.app.origin == Origin::Config && !new.apps.contains_key(&e.app.config.name)
            })
            .map(|e| e.app.config.name.clone())
            .collect();
        for name in removed {
            let _ = self.remove_task(&name).await; // logged there
        }
        // Apps losing domains first: each deletes their routes before another claims them.
        let mut changed: Vec<&AppConfig> = new.apps.values().collect();
        changed.sort_by_key(|app| {
            let loses = self.apps.get(&app.name).is_some_and(|e| {
                e.app
                    .config
                    .domains
                    .iter()
                    .any(|d| !app.domains.contains(d))
            });
            !loses
        });
        for app in changed {
            if self
                .apps
                .get(&app.name)
                .is_some_and(|e| e.app.origin != Origin::Config)
            {
                tracing::warn!(app = %app.name, "the config file now defines an app created through the API; the config file wins");
                let _ = self.remove_task(&app.name).await; // logged there
                managed::remove(&self.ctx.data_dir, &app.name);
            }
            self.apply(ManagedApp {
                config: app.clone(),
                origin: Origin::Config,
            })
            .await;
        }
        let file = self.config.file.clone();
        self.config = new;
        self.config.file = file;
        if restart_hot_deploy {
            self.start_hot_deploy();
        }
        warnings
    }

    fn send(&self, app: &str, cmd: Command) {
        match self.apps.get(app) {
            Some(e) => {
                if e.outbox.commands.try_send(cmd).is_err() {
                    tracing::debug!(%app, "app task busy; dropping a message it will get again");
                }
            }
            None => tracing::debug!(%app, "message for an app this supervisor does not run"),
        }
    }

    /// The store may have lost what we wrote (Redis restarted empty): write it all again.
    /// False when the store refused the routes; the caller tries again shortly.
    async fn resync(&mut self) -> bool {
        tracing::info!("store resynced; republishing routes and spinlets");
        // Each task writes its own again (a request that is never dropped)...
        for e in self.apps.values() {
            e.outbox.republish();
        }
        // ...and what no app claims goes.
        if let Err(e) = self.sweep().await {
            tracing::warn!(error = %e, "cannot sweep routes yet; retrying");
            return false;
        }
        self.mark_published_once_written();
        true
    }

    /// Once every app task has written back everything it owns (as of the republish asked
    /// last), says so in the store: an edge reloading from a store that lost its data keeps its
    /// last routes for what the store lacks until then, instead of answering 404 for an app whose
    /// routes are still being written (see `spinforge_state::keys::PUBLISHED`). A newer resync
    /// replaces the wait.
    fn mark_published_once_written(&mut self) {
        if let Some(previous) = self.published_marker.take() {
            previous.abort();
        }
        let written: Vec<_> = self.apps.values().map(|e| e.outbox.written()).collect();
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let all = futures::future::join_all(written);
            if tokio::time::timeout(REPUBLISH_DEADLINE, all).await.is_err() {
                tracing::warn!(
                    "not every app wrote its state back within {}s; marking the store whole anyway",
                    REPUBLISH_DEADLINE.as_secs()
                );
            }
            match store.mark_published().await {
                Ok(()) => tracing::debug!("every app's state is in the store"),
                // The store went away again: its next resync marks it.
                Err(e) => tracing::warn!(error = %e, "cannot mark the store whole"),
            }
        });
        self.published_marker = Some(task.abort_handle());
    }

    /// Deletes routes no app claims and records of apps that are gone (see [`app::publish`]).
    async fn sweep(&self) -> Result<(), StoreError> {
        let configs: Vec<&AppConfig> = self.apps.values().map(|e| &e.app.config).collect();
        app::publish::sweep(&self.store, &configs).await
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
        for (name, e) in &self.apps {
            let _ = e.outbox.commands.try_send(Command::IdleCheck {
                last_access_ms: activity.get(name).copied(),
            });
        }
    }

    async fn shutdown(mut self, deadline: Instant) {
        tracing::info!(apps = self.apps.len(), "stopping spinlets");
        let mut waits = Vec::new();
        for e in self.apps.values() {
            let (done, wait) = oneshot::channel();
            // `send().await`, not `try_send`: a shutdown must not be dropped on a full queue.
            let command = Command::Shutdown {
                deadline,
                forget: false,
                done,
            };
            if e.outbox.commands.send(command).await.is_ok() {
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

/// Hands a command to an app task; a full queue answers the caller's reply as busy by dropping
/// it (the handle turns a dropped reply into an error).
fn forward(outbox: &Outbox, cmd: Command) {
    if outbox.commands.try_send(cmd).is_err() {
        tracing::warn!("app task busy; a control request was refused");
    }
}

async fn futures_join_all(waits: Vec<oneshot::Receiver<()>>) {
    for w in waits {
        let _ = w.await;
    }
}

/// Idle checks run often enough to stop an app within a quarter of its idle timeout.
fn reap_interval(apps: &[AppConfig]) -> Duration {
    apps.iter()
        .filter_map(|a| a.idle_timeout)
        .min()
        .map_or(Duration::from_secs(5), |d| {
            (d / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
        })
}

/// Spinlet records of a previous run: those of apps still wanted are handed to their tasks
/// (which adopt the running ones whose process still runs, and stop the rest properly: cgroup
/// and port freed); those of other apps are deleted, their processes stopped if they still run.
async fn adoptable_spinlets(
    apps: &[ManagedApp],
    store: &Store,
) -> Result<HashMap<String, Vec<Spinlet>>, StoreError> {
    let mut out: HashMap<String, Vec<Spinlet>> = HashMap::new();
    let names: BTreeSet<&str> = apps.iter().map(|a| a.config.name.as_str()).collect();
    for s in store.spinlets().await? {
        if names.contains(s.app.as_str()) {
            out.entry(s.app.clone()).or_default().push(s);
            continue;
        }
        if s.pid != 0 && spinlet::start_ticks(s.pid).is_some_and(|t| t == s.proc_start) {
            tracing::info!(spinlet = %s.id, app = %s.app, pid = s.pid, "stopping a spinlet of an app no longer configured");
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(s.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        store.delete_spinlet(&s.id).await?;
    }
    Ok(out)
}
