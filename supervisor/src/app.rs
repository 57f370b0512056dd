//! One task per app: it owns the app's release and spinlets, and changes them only in answer to
//! its own messages and its spinlets' exits — so two wakes can never start two sets of processes,
//! and no map is shared behind a lock.
//!
//! The app is in one [`Mode`]: `Idle` (nothing runs; a wake starts it), `Active` (it keeps
//! `instances` healthy spinlets of its release, restarting crashed ones with backoff) or `Failed`
//! (it gave up after repeated failed starts; a wake a minute later tries again). Changing the
//! release (deploy, rollback, restart) starts the new spinlets beside the old ones, flips the
//! upstreams to them in one write once all are healthy, and drains the old ones in the
//! background; new spinlets that never get healthy are stopped and the old ones keep serving.
//!
//! Whatever a build ends with (a new release, a reused one), and after any edit that needs no
//! build, the task converges: it serves the wanted release with spinlets started with the app's
//! current settings (their fingerprint, [`crate::settings`], is in each spinlet's record, so
//! adopted spinlets are judged too), `instances` of them.

use crate::build::queue::{Builder, Finished, Ticket};
use crate::build::runner::RunAs;
use crate::cgroup::Cgroup;
use crate::control::{ControlError, Lifecycle};
use crate::ports::PortAllocator;
use crate::process;
use crate::release::{self, Pins, Release, Toolchain};
use crate::spinlet::{Exit, Proc};
use spinforge_state::config::{AppConfig, AppSource};
use spinforge_state::records::{AppRecord, Route, Spinlet, SpinletState};
use spinforge_state::{Store, StoreError, now_ms};
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Start attempts that may fail in a row before the app is `Failed`.
const MAX_START_FAILURES: u32 = 5;
/// A `Failed` app tries again on a wake after this long.
const FAILED_RETRY: Duration = Duration::from_secs(60);
/// A spinlet that ran this long before crashing starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// SIGTERM → SIGKILL for stops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// No store call waits longer than this.
const STORE_DEADLINE: Duration = Duration::from_secs(5);
/// Log lines quoted with a failure.
const TAIL_LINES: usize = 10;
/// Running spinlets are health-checked this often...
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// ...each probe within this...
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and one that fails this many in a row is replaced.
const CHECK_FAILURES: u32 = 3;
/// Commands put aside while spinlets start; more are dropped (wakes and checks come again; a
/// dropped deploy's build ends as cancelled).
const PENDING_MAX: usize = 32;
/// How long a detaching app task waits for its cancelled builds to end.
const DETACH_BUILDS: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub enum Command {
    /// An edge holds requests for this app.
    Wake,
    /// The app's last access (ms) as the edges recorded it.
    IdleCheck { last_access_ms: Option<u64> },
    /// Write this app's routes, spinlets and upstreams again (after the store lost or may have lost them).
    Republish,
    /// The app's definition changed (a config edit, the admin API): rebuild, restart, rescale or
    /// just republish, whichever the change needs.
    Update(Box<AppConfig>),
    /// Build `app` (its source may be new) under `ticket` (already queued: its id is out) and
    /// roll the result out.
    Deploy {
        ticket: Box<Ticket>,
        app: Box<AppConfig>,
    },
    /// Serve a kept release again (`None`: the one before the current).
    Rollback {
        release: Option<u64>,
        reply: oneshot::Sender<Result<u64, ControlError>>,
    },
    Lifecycle {
        action: Lifecycle,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Stop everything by `deadline`, then answer on `done`.
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
    /// Let go of the spinlets without stopping them (the supervisor is being replaced), then
    /// answer on `done`.
    Detach { done: oneshot::Sender<()> },
}

/// What every app task shares.
#[derive(Debug)]
pub struct AppContext {
    pub store: Store,
    pub tools: Toolchain,
    pub ports: PortAllocator,
    pub data_dir: PathBuf,
    pub builder: Builder,
    /// The user spinlets run as (`supervisor.run_as`, when SpinForge runs as root).
    pub run_as: Option<RunAs>,
    /// How long replaced spinlets keep running after the upstreams flip away from them, for the
    /// requests they still serve (`edge.grace`).
    pub drain: Duration,
    /// Keys the fingerprint of what spinlets run with (see [`crate::settings`]).
    pub settings_key: crate::settings::Key,
}

/// A healthy spinlet, published in `upstreams:{app}`.
#[derive(Debug)]
struct Instance {
    spinlet: Spinlet,
    proc: Proc,
    /// Limits it (`memory`, `cpu`); removed once it has exited.
    cgroup: Option<Cgroup>,
    since: Instant,
    /// Health checks failed in a row while running.
    failed_checks: u32,
}

#[derive(Debug)]
enum Mode {
    /// Nothing runs; a wake starts the app.
    Idle,
    /// Keeps `instances` healthy spinlets; `crashed` holds when each missing one starts again.
    Active { crashed: Vec<Instant> },
    /// Gave up: no release, or too many failed starts in a row.
    Failed { reason: String, since: Instant },
}

/// Whether the task goes on after handling something.
#[must_use]
enum Flow {
    Continue,
    Exit,
}

/// How a change of release ended.
#[must_use]
enum Rolled {
    /// The new release serves.
    Live,
    /// Its spinlets did not get healthy; the previous release keeps serving.
    Refused(String),
    /// A shutdown came meanwhile.
    ShutDown,
}

impl Rolled {
    fn flow(&self) -> Flow {
        match self {
            Rolled::ShutDown => Flow::Exit,
            _ => Flow::Continue,
        }
    }

    /// The answer for whoever asked for the change (none after a shutdown: their reply drops).
    fn answer(&self) -> Option<Result<(), ControlError>> {
        match self {
            Rolled::Live => Some(Ok(())),
            Rolled::Refused(reason) => Some(Err(ControlError::Conflict(reason.clone()))),
            Rolled::ShutDown => None,
        }
    }
}

/// What the task's loop woke up for.
enum Woke {
    Exited(Exit),
    Built(Box<Finished>),
    Retry,
    HealthCheck,
    Command(Option<Command>),
}

enum Started {
    Healthy(Vec<Instance>),
    Unhealthy(String),
    /// A shutdown came while starting: everything is stopped.
    ShutDown,
}

pub struct AppTask {
    app: AppConfig,
    ctx: Arc<AppContext>,
    rx: mpsc::Receiver<Command>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    release: Option<Release>,
    mode: Mode,
    running: Vec<Instance>,
    /// A wake came before there was a release to start.
    wanted: bool,
    /// Restarts since the last stable run, for the backoff.
    restarts: u32,
    /// Start attempts that failed in a row.
    start_failures: u32,
    /// The id of the build whose result the app waits for; results of others (replaced,
    /// cancelled) are ignored.
    build: Option<String>,
    /// Every build task of this app still running (the current one and cancelled ones ending);
    /// each sends its [`Finished`] on `built`.
    builds: JoinSet<()>,
    built_tx: mpsc::UnboundedSender<Finished>,
    built: mpsc::UnboundedReceiver<Finished>,
    /// Replaced spinlets, each drained and stopped by its own task.
    draining: JoinSet<()>,
    /// Releases draining spinlets still run: pruning spares them.
    pins: Pins,
    /// Tells draining spinlets to stop by this deadline (supervisor shutdown).
    drain_stop: watch::Sender<Option<Instant>>,
    pending: VecDeque<Command>,
}

impl std::fmt::Debug for AppTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTask")
            .field("app", &self.app.name)
            .field("mode", &self.mode)
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl AppTask {
    pub fn new(app: AppConfig, ctx: Arc<AppContext>, rx: mpsc::Receiver<Command>) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let (built_tx, built) = mpsc::unbounded_channel();
        Self {
            app,
            ctx,
            rx,
            exits_tx,
            exits,
            release: None,
            mode: Mode::Idle,
            running: Vec::new(),
            wanted: false,
            restarts: 0,
            start_failures: 0,
            build: None,
            builds: JoinSet::new(),
            built_tx,
            built,
            draining: JoinSet::new(),
            pins: Pins::default(),
            drain_stop: watch::channel(None).0,
            pending: VecDeque::new(),
        }
    }

    /// Runs the app: adopts `adopted` (live spinlets of a previous supervisor), builds its
    /// source, then answers commands until shutdown.
    pub async fn run(mut self, adopted: Vec<Spinlet>) {
        self.adopt(adopted).await;
        self.wanted = self.app.idle_timeout.is_none(); // never-idle apps run from the start
        self.republish().await;
        // A check build: it reuses the release when the source is unchanged, and its end makes
        // what runs match the definition (adopted spinlets may predate an edit).
        let first = self.app.clone();
        self.start_build(None, first).await;
        let mut checks = tokio::time::interval(CHECK_EVERY);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(cmd) = self.pending.pop_front() {
                if matches!(self.handle(cmd).await, Flow::Exit) {
                    return;
                }
                continue;
            }
            let retry_at = match &self.mode {
                Mode::Active { crashed } => crashed.iter().min().copied(),
                _ => None,
            };
            let woke = tokio::select! {
                Some(exit) = self.exits.recv() => Woke::Exited(exit),
                Some(finished) = self.built.recv() => Woke::Built(Box::new(finished)),
                _ = sleep_until(retry_at), if retry_at.is_some() => Woke::Retry,
                _ = checks.tick(), if !self.running.is_empty() => Woke::HealthCheck,
                cmd = self.rx.recv() => Woke::Command(cmd),
            };
            let flow = match woke {
                Woke::Exited((id, status)) => {
                    self.on_exit(&id, status).await;
                    Flow::Continue
                }
                Woke::Built(finished) => self.on_built(*finished).await,
                Woke::Retry => self.fill().await,
                Woke::HealthCheck => {
                    self.check_running().await;
                    Flow::Continue
                }
                Woke::Command(Some(cmd)) => self.handle(cmd).await,
                Woke::Command(None) => {
                    // The supervisor is gone: leave nothing running.
                    self.stop_everything(Instant::now() + STOP_GRACE).await;
                    Flow::Exit
                }
            };
            if matches!(flow, Flow::Exit) {
                return;
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Wake => match &self.mode {
                Mode::Idle => {
                    self.wanted = true;
                    if self.release.is_some() {
                        self.mode = Mode::Active {
                            crashed: Vec::new(),
                        };
                        return self.fill().await;
                    }
                }
                Mode::Failed { reason, since } => {
                    if self.release.is_some() && since.elapsed() >= FAILED_RETRY {
                        self.start_failures = 0;
                        self.mode = Mode::Active {
                            crashed: Vec::new(),
                        };
                        return self.fill().await;
                    }
                    tracing::debug!(app = %self.app.name, %reason, "wake ignored: the app has failed");
                }
                Mode::Active { .. } => {}
            },
            Command::IdleCheck { last_access_ms } => self.idle_check(last_access_ms).await,
            Command::Republish => self.republish().await,
            Command::Update(app) => return self.update(*app).await,
            Command::Deploy { ticket, app } => {
                self.app = *app;
                let app = self.app.clone();
                self.start_build(Some(*ticket), app).await;
            }
            Command::Rollback { release, reply } => {
                let target = self.rollback_target(release).await;
                match target {
                    Ok(target) => {
                        let number = target.info.number;
                        tracing::info!(app = %self.app.name, release = number, "rolling back");
                        // The answer comes once the release serves (or did not get healthy).
                        let rolled = self.roll_to(target).await;
                        if let Some(result) = rolled.answer() {
                            let _ = reply.send(result.map(|()| number));
                        }
                        return rolled.flow();
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Lifecycle { action, reply } => return self.lifecycle(action, reply).await,
            Command::Shutdown { deadline, done } => {
                self.stop_everything(deadline).await;
                let _ = done.send(());
                return Flow::Exit;
            }
            Command::Detach { done } => {
                self.stop_builds(Instant::now() + DETACH_BUILDS).await;
                // Their records stay `running`: the next supervisor adopts them.
                tracing::info!(app = %self.app.name, spinlets = self.running.len(), "leaving spinlets running");
                let _ = done.send(());
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    async fn lifecycle(
        &mut self,
        action: Lifecycle,
        reply: oneshot::Sender<Result<(), ControlError>>,
    ) -> Flow {
        let Some(release) = self.release.clone() else {
            let _ = reply.send(Err(ControlError::Conflict(format!(
                "app `{}` has no release yet: deploy it first",
                self.app.name
            ))));
            return Flow::Continue;
        };
        if action == Lifecycle::Restart {
            let rolled = self.roll_to(release).await;
            if let Some(result) = rolled.answer() {
                let _ = reply.send(result);
            }
            return rolled.flow();
        }
        if action == Lifecycle::Stop {
            self.stop_running("stopped through the admin API").await;
            self.mode = Mode::Idle;
            self.republish().await;
            let _ = reply.send(Ok(()));
            return Flow::Continue;
        }
        // Start: answered at once; the spinlets' progress shows in the app's state.
        let _ = reply.send(Ok(()));
        self.start_failures = 0;
        self.mode = Mode::Active {
            crashed: Vec::new(),
        };
        self.fill().await
    }

    /// Applies a changed definition with as little disruption as it needs: a new source or
    /// build settings build (and the build's end converges); anything else converges now.
    async fn update(&mut self, new: AppConfig) -> Flow {
        let old = std::mem::replace(&mut self.app, new);
        let rebuild = old.source != self.app.source
            || old.framework != self.app.framework
            || old.spa != self.app.spa;
        self.republish().await;
        if rebuild {
            tracing::info!(app = %self.app.name, "app source or build settings changed: rebuilding");
            let app = self.app.clone();
            self.start_build(None, app).await;
            return Flow::Continue;
        }
        match self.release.clone() {
            Some(release) => self.converge(release).await,
            None => Flow::Continue,
        }
    }

    /// Builds `app` under `ticket` (a deploy's) or a new one. A newer build replaces the one in
    /// progress, which is cancelled: it ends on its own, recorded, and its result is ignored.
    async fn start_build(&mut self, ticket: Option<Ticket>, app: AppConfig) {
        if let AppSource::Tarball(path) = &app.source
            && !path.exists()
        {
            tracing::info!(app = %app.name, "no source yet: waiting for a deploy");
            if let Some(ticket) = ticket {
                self.builds.spawn(async move {
                    let reason = "there is no source to build: the archive was never uploaded, or a newer upload replaced it";
                    let _ = ticket.fail(reason).await;
                });
            }
            return;
        }
        let ticket = match ticket {
            Some(t) => t,
            None => self.ctx.builder.enqueue(&app).await,
        };
        if let Some(previous) = self.build.replace(ticket.id().to_string()) {
            self.ctx.builder.cancel(&previous);
        }
        let done = self.built_tx.clone();
        self.builds.spawn(async move {
            let _ = done.send(ticket.run(&app).await);
        });
        // Reap the ended ones so the set does not grow.
        while self.builds.try_join_next().is_some() {}
    }

    /// Cancels every build of the app and waits for them to end until `deadline`; one still
    /// running then is dropped, which records it as cancelled.
    async fn stop_builds(&mut self, deadline: Instant) {
        if let Some(current) = self.build.take() {
            self.ctx.builder.cancel(&current);
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while self.builds.join_next().await.is_some() {}
        })
        .await;
        self.builds.abort_all();
    }

    async fn on_built(&mut self, finished: Finished) -> Flow {
        let id = finished.id().to_string();
        if self.build.as_deref() != Some(id.as_str()) {
            tracing::debug!(app = %self.app.name, build = %id, "a replaced build ended");
            return Flow::Continue;
        }
        self.build = None;
        let name = self.app.name.clone();
        match finished.into_result() {
            Ok(outcome) => {
                let flow = self.converge(outcome.release).await;
                if matches!(flow, Flow::Continue) {
                    self.prune().await;
                }
                flow
            }
            Err(e) if self.release.is_some() => {
                let serving = self.release.as_ref().map_or(0, |r| r.info.number);
                tracing::error!(app = %name, build = %id, error = %e, release = serving, "build failed; the running release keeps serving");
                Flow::Continue
            }
            Err(e) => {
                // A failed build changes nothing that serves: the newest release built before
                // (if any) goes on.
                let releases = self.releases_dir();
                match release::list_releases(&releases).await.pop() {
                    Some(previous) => {
                        tracing::error!(app = %name, build = %id, error = %e, release = previous.info.number, "build failed; serving the previous release");
                        self.release = Some(previous);
                        self.after_first_release().await
                    }
                    None => {
                        tracing::error!(app = %name, build = %id, error = %e, "build failed; the app will answer 503");
                        self.mode = Mode::Failed {
                            reason: e.to_string(),
                            since: Instant::now(),
                        };
                        self.republish().await;
                        Flow::Continue
                    }
                }
            }
        }
    }

    /// Makes what runs what is asked for: `target`, started with the app's current settings,
    /// `instances` of it. Another release, or spinlets started with other settings (an env or
    /// limit edit, an edit made while no supervisor ran), roll out new spinlets with no
    /// downtime; otherwise only the count is corrected.
    async fn converge(&mut self, target: Release) -> Flow {
        let Some(current) = self.release.as_ref().map(|r| r.info.number) else {
            self.release = Some(target);
            return self.after_first_release().await;
        };
        let number = target.info.number;
        if current != number {
            tracing::info!(app = %self.app.name, release = number, "deploying");
            return self.roll_to(target).await.flow();
        }
        let settings = self.settings();
        let stale = self
            .running
            .iter()
            .filter(|i| i.spinlet.settings.as_deref() != Some(settings.as_str()))
            .count();
        if stale > 0 {
            tracing::info!(app = %self.app.name, release = number, spinlets = stale, "app settings changed: replacing its spinlets");
            return self.roll_to(target).await.flow();
        }
        self.rescale().await
    }

    /// `instances` spinlets for an active app: extra ones drain, missing ones start.
    async fn rescale(&mut self) -> Flow {
        if !matches!(self.mode, Mode::Active { .. }) {
            return Flow::Continue;
        }
        let wanted = self.app.instances as usize;
        while self.running.len() > wanted {
            if let Some(extra) = self.running.pop() {
                self.withdraw(&extra).await;
                self.drain(vec![extra]).await;
            }
        }
        self.fill().await
    }

    /// The fingerprint of what this app's spinlets are to be started with.
    fn settings(&self) -> String {
        self.ctx.settings_key.fingerprint(&self.app)
    }

    /// Removes releases beyond `keep_releases`, sparing the one that serves, the one a rollback
    /// would pick, and any a spinlet still runs.
    async fn prune(&self) {
        let mut in_use: BTreeSet<u64> = self.running.iter().map(|i| i.spinlet.release).collect();
        in_use.extend(self.pins.pinned());
        let keep = self.ctx.builder.context().limits.keep_releases;
        let serving = self.release.as_ref().map(|r| r.info.number);
        let removed = release::prune_releases(&self.releases_dir(), keep, serving, &in_use).await;
        if !removed.is_empty() {
            tracing::info!(app = %self.app.name, ?removed, "removed old releases");
        }
    }

    async fn after_first_release(&mut self) -> Flow {
        self.republish().await;
        if self.wanted && matches!(self.mode, Mode::Idle) {
            self.mode = Mode::Active {
                crashed: Vec::new(),
            };
        }
        match self.mode {
            Mode::Active { .. } => self.fill().await,
            _ => Flow::Continue,
        }
    }

    /// Serves `target` from now on: beside the running spinlets, start new ones; once all are
    /// healthy, flip the upstreams to them in one write and drain the old ones. If they fail,
    /// stop them: the old ones never stopped serving.
    async fn roll_to(&mut self, target: Release) -> Rolled {
        if self.running.is_empty() {
            // Nothing serves: no one to keep waiting. Switch, and start if the app is awake.
            self.release = Some(target);
            self.republish().await;
            let flow = match self.mode {
                Mode::Active { .. } => self.fill().await,
                _ => Flow::Continue,
            };
            return match flow {
                Flow::Exit => Rolled::ShutDown,
                Flow::Continue => Rolled::Live,
            };
        }
        let count = self.app.instances as usize;
        match self.start_instances(&target, count).await {
            Started::Healthy(fresh) => {
                let old = std::mem::replace(&mut self.running, fresh);
                let number = target.info.number;
                self.release = Some(target);
                self.mode = Mode::Active {
                    crashed: Vec::new(),
                };
                self.start_failures = 0;
                // One write: the edges go from the old set straight to the new one.
                self.republish().await;
                tracing::info!(app = %self.app.name, release = number, replaced = old.len(), "release live; draining the previous spinlets");
                self.drain(old).await;
                Rolled::Live
            }
            Started::Unhealthy(reason) => {
                let serving = self.release.as_ref().map_or(0, |r| r.info.number);
                tracing::error!(app = %self.app.name, release = target.info.number, %reason, serving, "the new release did not get healthy: rolled back, the running release keeps serving");
                self.put_failure(&target, &reason).await;
                Rolled::Refused(format!(
                    "release {} did not get healthy, so release {serving} keeps serving: {reason}",
                    target.info.number
                ))
            }
            Started::ShutDown => Rolled::ShutDown,
        }
    }

    /// Starts the spinlets the app is missing (crashed, or all of them after a wake).
    async fn fill(&mut self) -> Flow {
        let Some(release) = self.release.clone() else {
            return Flow::Continue;
        };
        if let Mode::Active { crashed } = &mut self.mode {
            // Every missing slot is (re)started now; their retry times are spent.
            crashed.clear();
        } else {
            return Flow::Continue;
        }
        let missing = (self.app.instances as usize).saturating_sub(self.running.len());
        if missing == 0 {
            return Flow::Continue;
        }
        match self.start_instances(&release, missing).await {
            Started::Healthy(fresh) => {
                self.start_failures = 0;
                self.running.extend(fresh);
                self.republish_upstreams().await;
            }
            Started::Unhealthy(reason) => {
                self.start_failures += 1;
                // With some instances still serving the app is not failed: keep retrying the
                // missing ones (the backoff caps at 30 s).
                if self.start_failures >= MAX_START_FAILURES && self.running.is_empty() {
                    tracing::error!(app = %self.app.name, %reason, failures = self.start_failures, "spinlets keep failing to start; giving up until the next wake in a minute");
                    self.mode = Mode::Failed {
                        reason: reason.clone(),
                        since: Instant::now(),
                    };
                    self.put_failure(&release, &reason).await;
                    self.republish().await;
                } else {
                    tracing::warn!(app = %self.app.name, %reason, "spinlet failed to start; retrying");
                    let at = self.backoff();
                    if let Mode::Active { crashed } = &mut self.mode {
                        crashed.extend(std::iter::repeat_n(at, missing));
                    }
                }
            }
            Started::ShutDown => return Flow::Exit,
        }
        Flow::Continue
    }

    /// Starts `count` spinlets of `release` and waits until all are healthy, answering a shutdown
    /// meanwhile (other commands wait their turn).
    async fn start_instances(&mut self, release: &Release, count: usize) -> Started {
        let mut starting: Vec<Instance> = Vec::with_capacity(count);
        let mut failure = None;
        for _ in 0..count {
            match self.spawn(release).await {
                Ok(i) => starting.push(i),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            let started = Instant::now();
            let deadline = started + self.app.health_check.timeout;
            let path = self.app.health_check.path.clone();
            let outcome = {
                let checks = futures::future::join_all(starting.iter().map(|i| {
                    let path = path.clone();
                    async move {
                        let died = async {
                            if i.proc.wait_until(deadline).await {
                                Err("exited during start".to_string())
                            } else {
                                std::future::pending().await
                            }
                        };
                        tokio::select! {
                            r = process::wait_healthy(i.spinlet.port, &path, deadline) => r,
                            r = died => r,
                        }
                    }
                }));
                tokio::pin!(checks);
                loop {
                    tokio::select! {
                        results = &mut checks => break Ok(results),
                        cmd = self.rx.recv() => match cmd {
                            Some(Command::Shutdown { deadline, done }) => break Err((deadline, Some(done))),
                            None => break Err((Instant::now() + STOP_GRACE, None)),
                            // Already starting: these come again.
                            Some(Command::Wake | Command::IdleCheck { .. } | Command::Republish) => {}
                            Some(other) => {
                                if self.pending.len() < PENDING_MAX {
                                    self.pending.push_back(other);
                                }
                            }
                        }
                    }
                }
            };
            let results = match outcome {
                Ok(results) => results,
                Err((deadline, done)) => {
                    self.stop_instances(starting, deadline).await;
                    self.stop_everything(deadline).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return Started::ShutDown;
                }
            };
            failure = results.into_iter().find_map(Result::err);
            if failure.is_none() {
                let boot_ms = started.elapsed().as_millis() as u64;
                for i in &mut starting {
                    i.spinlet.state = SpinletState::Running;
                    tracing::info!(app = %self.app.name, spinlet = %i.spinlet.id, port = i.spinlet.port, boot_ms, "spinlet healthy");
                }
                for i in &starting {
                    self.put_spinlet(&i.spinlet).await;
                }
                return Started::Healthy(starting);
            }
        }
        let reason = format!(
            "{}{}",
            failure.unwrap_or_default(),
            self.log_tail_suffix().await
        );
        self.stop_instances(starting, Instant::now() + STOP_GRACE)
            .await;
        Started::Unhealthy(reason)
    }

    /// Spawns one spinlet of `release` (recorded as `Starting`).
    async fn spawn(&mut self, release: &Release) -> Result<Instance, String> {
        let name = self.app.name.clone();
        let port = self
            .ctx
            .ports
            .allocate()
            .ok_or("no free port in supervisor.port_range")?;
        let id = format!(
            "{name}-{}-{:06x}",
            release.info.number,
            fastrand::u32(..0x0100_0000)
        );
        // Home, log, the app's user and its cgroup are set up by `process::spawn`.
        let spawned = process::spawn(
            &self.app,
            release,
            &self.ctx.tools,
            port,
            &self.ctx.data_dir,
            self.ctx.run_as,
            &id,
        );
        let (child, cgroup) = match spawned {
            Ok(s) => (s.child, s.cgroup),
            Err(e) => {
                self.ctx.ports.release(port);
                return Err(format!(
                    "cannot start `{}`: {e}",
                    release.info.start.join(" ")
                ));
            }
        };
        let proc = Proc::watch_child(child, id.clone(), self.exits_tx.clone());
        let spinlet = Spinlet {
            id,
            app: name.clone(),
            release: release.info.number,
            state: SpinletState::Starting,
            pid: proc.pid,
            host: "127.0.0.1".into(),
            port,
            started: now_ms(),
            restarts: self.restarts,
            proc_start: proc.start_ticks,
            reason: None,
            settings: Some(self.settings()),
        };
        tracing::info!(app = %name, spinlet = %spinlet.id, pid = spinlet.pid, port, release = release.info.number, "starting spinlet");
        self.put_spinlet(&spinlet).await;
        Ok(Instance {
            spinlet,
            proc,
            cgroup,
            since: Instant::now(),
            failed_checks: 0,
        })
    }

    /// Probes every running spinlet; one that fails [`CHECK_FAILURES`] checks in a row is taken
    /// out of routing, stopped and replaced, while the others serve.
    async fn check_running(&mut self) {
        let path = self.app.health_check.path.clone();
        let results = futures::future::join_all(self.running.iter().map(|i| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], i.spinlet.port));
            let path = path.clone();
            async move {
                match tokio::time::timeout(
                    CHECK_TIMEOUT,
                    process::probe_addr(addr, "localhost", &path),
                )
                .await
                {
                    Ok(Ok(status)) if status < 500 => Ok(()),
                    Ok(Ok(status)) => Err(format!("answered {status}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within 2 s".to_string()),
                }
            }
        }))
        .await;
        let mut sick = Vec::new();
        for (i, result) in self.running.iter_mut().zip(results) {
            match result {
                Ok(()) => i.failed_checks = 0,
                Err(why) => {
                    i.failed_checks += 1;
                    if i.failed_checks >= CHECK_FAILURES {
                        sick.push((i.spinlet.id.clone(), why));
                    }
                }
            }
        }
        for (id, why) in sick {
            let Some(at) = self.running.iter().position(|i| i.spinlet.id == id) else {
                continue;
            };
            let gone = self.running.remove(at);
            self.withdraw(&gone).await;
            let reason =
                format!("failed {CHECK_FAILURES} health checks in a row ({why} at {path})");
            tracing::warn!(app = %self.app.name, spinlet = %id, %reason, "replacing an unhealthy spinlet");
            gone.proc.stop(Instant::now() + STOP_GRACE).await;
            remove_cgroup(&gone.cgroup).await;
            self.put_spinlet(&Spinlet {
                state: SpinletState::Crashed,
                reason: Some(reason),
                ..gone.spinlet.clone()
            })
            .await;
            self.forget(&gone.spinlet).await;
            let retry_at = self.backoff();
            if let Mode::Active { crashed } = &mut self.mode {
                crashed.push(retry_at);
            }
        }
    }

    /// A spinlet exited on its own (or was killed by someone else).
    async fn on_exit(&mut self, id: &str, status: String) {
        let Some(at) = self.running.iter().position(|i| i.spinlet.id == id) else {
            return; // one we stopped, or a starting one (its health wait sees it)
        };
        let gone = self.running.remove(at);
        if gone.since.elapsed() >= STABLE_AFTER {
            self.restarts = 0;
        }
        self.withdraw(&gone).await;
        // "out of memory (limit 256M)" when the kernel killed it.
        let status = process::exit_reason(&status, gone.cgroup.as_ref());
        remove_cgroup(&gone.cgroup).await;
        let tail = self.log_tail_suffix().await;
        let reason = format!("exited ({status}){tail}");
        self.put_spinlet(&Spinlet {
            state: SpinletState::Crashed,
            reason: Some(reason.clone()),
            ..gone.spinlet.clone()
        })
        .await;
        self.forget(&gone.spinlet).await;
        let retry_at = self.backoff();
        tracing::warn!(
            app = %self.app.name, spinlet = %id, %reason,
            restart_in_ms = retry_at.saturating_duration_since(Instant::now()).as_millis() as u64,
            "spinlet exited; restarting"
        );
        match &mut self.mode {
            Mode::Active { crashed } => crashed.push(retry_at),
            _ => {
                self.mode = Mode::Active {
                    crashed: vec![retry_at],
                }
            }
        }
    }

    fn backoff(&mut self) -> Instant {
        self.restarts += 1;
        let factor = 1u32 << self.restarts.saturating_sub(1).min(16);
        Instant::now() + (BACKOFF_FIRST * factor).min(BACKOFF_MAX)
    }

    async fn idle_check(&mut self, last_access_ms: Option<u64>) {
        let Some(idle) = self.app.idle_timeout else {
            return;
        };
        if !matches!(self.mode, Mode::Active { .. }) || self.running.is_empty() {
            return;
        }
        let newest_start = self.running.iter().map(|i| i.spinlet.started).max();
        let last = last_access_ms.unwrap_or(0).max(newest_start.unwrap_or(0));
        let idle_for = now_ms().saturating_sub(last);
        // The edges' numbers may be up to one flush old.
        let limit = idle + spinforge_state::ACTIVITY_FLUSH_INTERVAL;
        if idle_for >= limit.as_millis() as u64 {
            tracing::info!(app = %self.app.name, idle_ms = idle_for, "stopping idle spinlets");
            self.stop_running("idle").await;
            self.mode = Mode::Idle;
            self.wanted = false;
            self.republish().await;
        }
    }

    /// Takes every running spinlet out of routing, then stops them.
    async fn stop_running(&mut self, why: &str) {
        let running = std::mem::take(&mut self.running);
        self.republish_upstreams().await;
        for i in &running {
            self.put_spinlet(&Spinlet {
                state: SpinletState::Stopping,
                ..i.spinlet.clone()
            })
            .await;
        }
        let kill_at = Instant::now() + STOP_GRACE;
        futures::future::join_all(running.iter().map(|i| i.proc.stop(kill_at))).await;
        for i in &running {
            remove_cgroup(&i.cgroup).await;
            tracing::info!(app = %self.app.name, spinlet = %i.spinlet.id, why, "spinlet stopped");
            self.put_spinlet(&Spinlet {
                state: SpinletState::Stopped,
                ..i.spinlet.clone()
            })
            .await;
            self.forget(&i.spinlet).await;
        }
    }

    async fn stop_instances(&self, instances: Vec<Instance>, kill_at: Instant) {
        futures::future::join_all(instances.iter().map(|i| i.proc.stop(kill_at))).await;
        for i in &instances {
            remove_cgroup(&i.cgroup).await;
            self.forget(&i.spinlet).await;
        }
    }

    /// Shutdown: the build, the running spinlets and the draining ones, all by `deadline`.
    async fn stop_everything(&mut self, deadline: Instant) {
        if let Some(current) = &self.build {
            // Its processes stop while the spinlets do; `stop_builds` waits for its end.
            self.ctx.builder.cancel(current);
        }
        let running = std::mem::take(&mut self.running);
        // Out of routing first, so that no new request meets a stopping process.
        self.republish_upstreams().await;
        self.stop_instances(running, deadline).await;
        let _ = self.drain_stop.send(Some(deadline));
        let _ = tokio::time::timeout_at(deadline + Duration::from_millis(500), async {
            while self.draining.join_next().await.is_some() {}
        })
        .await;
        self.stop_builds(deadline).await;
    }

    /// Replaced spinlets keep serving what they have in flight for `ctx.drain`, then stop.
    /// They are recorded as `stopping` at once: a supervisor that takes over meanwhile must not
    /// adopt them as serving (it stops them instead).
    async fn drain(&mut self, old: Vec<Instance>) {
        if old.is_empty() {
            return;
        }
        for i in &old {
            self.put_spinlet(&Spinlet {
                state: SpinletState::Stopping,
                ..i.spinlet.clone()
            })
            .await;
        }
        let ctx = self.ctx.clone();
        let mut shutdown = self.drain_stop.subscribe();
        let app = self.app.name.clone();
        let pins: Vec<_> = old
            .iter()
            .map(|i| self.pins.pin(i.spinlet.release))
            .collect();
        self.draining.spawn(async move {
            let _pins = pins;
            let kill_at = tokio::select! {
                _ = tokio::time::sleep(ctx.drain) => Instant::now() + STOP_GRACE,
                d = shutdown.wait_for(Option::is_some) => d.ok().and_then(|d| *d).unwrap_or_else(Instant::now),
            };
            futures::future::join_all(old.iter().map(|i| i.proc.stop(kill_at))).await;
            for i in &old {
                remove_cgroup(&i.cgroup).await;
                tracing::info!(%app, spinlet = %i.spinlet.id, "drained spinlet stopped");
                let stopped = Spinlet {
                    state: SpinletState::Stopped,
                    ..i.spinlet.clone()
                };
                store_write(&ctx.store, &app, "recording spinlet", |s| async move {
                    s.put_spinlet(&stopped).await?;
                    s.delete_spinlet(&stopped.id).await
                })
                .await;
                ctx.ports.release(i.spinlet.port);
            }
        });
        // Reap the finished drains so the set does not grow.
        while self.draining.try_join_next().is_some() {}
    }

    /// The release a rollback goes to.
    async fn rollback_target(&self, wanted: Option<u64>) -> Result<Release, ControlError> {
        let releases = release::list_releases(&self.releases_dir()).await;
        let current = self.release.as_ref().map(|r| r.info.number);
        let numbers: Vec<u64> = releases.iter().map(|r| r.info.number).collect();
        // The same choice pruning spares (`release::prunable`).
        let wanted_number = wanted.or_else(|| release::previous(&numbers, current));
        let found = releases
            .into_iter()
            .find(|r| Some(r.info.number) == wanted_number);
        found.ok_or_else(|| match wanted {
            Some(n) => ControlError::UnknownRelease(self.app.name.clone(), n),
            None => ControlError::Conflict(format!(
                "app `{}` has no release before the current one",
                self.app.name
            )),
        })
    }

    /// Takes over the spinlets a previous supervisor left running, if they run a release that
    /// is still on disk.
    async fn adopt(&mut self, adopted: Vec<Spinlet>) {
        if adopted.is_empty() {
            self.clear_upstreams().await;
            return;
        }
        let releases = release::list_releases(&self.releases_dir()).await;
        for s in adopted {
            let release = releases.iter().find(|r| r.info.number == s.release);
            let fits = release.is_some_and(|r| {
                self.release
                    .as_ref()
                    .is_none_or(|current| current.info.number == r.info.number)
            });
            let proc = fits
                .then(|| Proc::adopt(s.pid, s.proc_start, s.id.clone(), self.exits_tx.clone()))
                .flatten();
            match proc {
                Some(proc) if self.running.len() < self.app.instances as usize => {
                    self.ctx.ports.claim(s.port);
                    // The group it runs in (re-opened, limits written again) for OOM reports.
                    let cgroup = Cgroup::create(
                        &self.app.name,
                        &s.id,
                        crate::cgroup::Limits {
                            memory: self.app.memory,
                            cpu: self.app.cpu,
                        },
                    )
                    .ok()
                    .flatten();
                    tracing::info!(app = %self.app.name, spinlet = %s.id, pid = s.pid, port = s.port, release = s.release, "adopted a running spinlet");
                    self.release = release.cloned();
                    self.running.push(Instance {
                        spinlet: Spinlet {
                            state: SpinletState::Running,
                            ..s
                        },
                        proc,
                        cgroup,
                        since: Instant::now(),
                        failed_checks: 0,
                    });
                }
                Some(proc) => {
                    // More than the app wants now: stop the extra one.
                    tracing::info!(app = %self.app.name, spinlet = %s.id, "stopping an adopted spinlet the app no longer needs");
                    proc.stop(Instant::now() + STOP_GRACE).await;
                    self.forget_record(&s.id).await;
                }
                None => self.forget_record(&s.id).await,
            }
        }
        if self.running.is_empty() {
            self.clear_upstreams().await;
        } else {
            self.mode = Mode::Active {
                crashed: Vec::new(),
            };
        }
    }

    fn releases_dir(&self) -> PathBuf {
        self.ctx
            .data_dir
            .join("apps")
            .join(&self.app.name)
            .join("releases")
    }

    fn state_name(&self) -> &'static str {
        match (&self.mode, &self.release) {
            (Mode::Failed { .. }, _) => "failed",
            (_, None) => "waiting",
            (Mode::Active { .. }, _) => "running",
            (Mode::Idle, _) => "idle",
        }
    }

    /// Writes what this app owns in the store: its record, routes (with the release), its
    /// spinlets and upstreams.
    async fn republish(&mut self) {
        let current = self.release.as_ref().map(|r| r.info.number);
        let kept = release::list_releases(&self.releases_dir()).await;
        let record = AppRecord {
            name: self.app.name.clone(),
            domains: self.app.domains.clone(),
            source: self
                .release
                .as_ref()
                .map(|r| r.info.source.clone())
                .unwrap_or_else(|| self.app.source.to_string()),
            idle_timeout_ms: self.app.idle_timeout.map(|d| d.as_millis() as u64),
            current_release: current,
            releases: kept.iter().map(|r| r.info.number).collect(),
            state: self.state_name().into(),
            reason: match &self.mode {
                Mode::Failed { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            instances: self.app.instances,
        };
        let routes: Vec<Route> = self
            .app
            .domains
            .iter()
            .map(|d| Route {
                domain: d.clone(),
                app: self.app.name.clone(),
                release: current,
                policy: self.app.policy.clone(),
                external: false,
            })
            .collect();
        let spinlets: Vec<Spinlet> = self.running.iter().map(|i| i.spinlet.clone()).collect();
        let name = self.app.name.clone();
        self.store_call("republishing", |s| async move {
            s.put_app(&record).await?;
            for route in &routes {
                s.put_route(route).await?;
            }
            for sp in &spinlets {
                s.put_spinlet(sp).await?;
            }
            let addrs: Vec<String> = spinlets.iter().map(Spinlet::addr).collect();
            s.set_upstreams(&name, &addrs).await
        })
        .await;
    }

    async fn republish_upstreams(&self) {
        let addrs: Vec<String> = self.running.iter().map(|i| i.spinlet.addr()).collect();
        let name = self.app.name.clone();
        self.store_call("publishing upstreams", |s| async move {
            s.set_upstreams(&name, &addrs).await
        })
        .await;
    }

    async fn clear_upstreams(&self) {
        let name = self.app.name.clone();
        self.store_call("clearing upstreams", |s| async move {
            s.set_upstreams(&name, &[]).await
        })
        .await;
    }

    /// Takes one spinlet out of routing.
    async fn withdraw(&self, instance: &Instance) {
        let (app, addr) = (instance.spinlet.app.clone(), instance.spinlet.addr());
        self.store_call("withdrawing upstream", |s| async move {
            s.remove_upstream(&app, &addr).await
        })
        .await;
    }

    /// Records a start that failed (state `failed`, with the reason), for `status` and events.
    async fn put_failure(&self, release: &Release, reason: &str) {
        let failed = Spinlet {
            id: format!("{}-{}-failed", self.app.name, release.info.number),
            app: self.app.name.clone(),
            release: release.info.number,
            state: SpinletState::Failed,
            pid: 0,
            host: "127.0.0.1".into(),
            port: 0,
            started: now_ms(),
            restarts: self.restarts,
            proc_start: 0,
            reason: Some(reason.to_string()),
            settings: None,
        };
        self.put_spinlet(&failed).await;
        // The record carried the event; the reason stays in the app record and the log.
        self.forget_record(&failed.id).await;
    }

    async fn put_spinlet(&self, spinlet: &Spinlet) {
        let sp = spinlet.clone();
        self.store_call(
            "recording spinlet",
            |s| async move { s.put_spinlet(&sp).await },
        )
        .await;
    }

    /// Deletes a stopped spinlet's record and frees its port.
    async fn forget(&self, spinlet: &Spinlet) {
        self.forget_record(&spinlet.id).await;
        self.ctx.ports.release(spinlet.port);
    }

    async fn forget_record(&self, id: &str) {
        let id = id.to_string();
        self.store_call("deleting spinlet", |s| async move {
            s.delete_spinlet(&id).await
        })
        .await;
    }

    async fn store_call<F, Fut>(&self, what: &str, call: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        store_write(&self.ctx.store, &self.app.name, what, call).await
    }

    /// `"; log: a | b | c"` with the app log's last lines, or nothing.
    async fn log_tail_suffix(&self) -> String {
        // Read backwards from the end, not the whole file.
        let tail = crate::logs::tail_joined(&self.ctx.data_dir, &self.app.name, TAIL_LINES).await;
        if tail.is_empty() {
            String::new()
        } else {
            format!("; log: {tail}")
        }
    }
}

/// Runs a store write for `app` with a deadline; failures are logged, not fatal: the next resync
/// republishes everything. Shared by app tasks, external tasks and drains.
pub(crate) async fn store_write<F, Fut>(store: &Store, app: &str, what: &str, call: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    match tokio::time::timeout(STORE_DEADLINE, call(store.clone())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%app, error = %e, "store write failed while {what}"),
        Err(_) => tracing::warn!(%app, "store write timed out while {what}"),
    }
}

/// A spinlet's cgroup goes once it has exited.
async fn remove_cgroup(cgroup: &Option<Cgroup>) {
    if let Some(cg) = cgroup {
        cg.remove_soon().await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
