//! One task per app: it owns the app's release and spinlet, and changes them only in answer to
//! its own messages (`Wake`, `IdleCheck`, `Republish`, `Shutdown`) and its child's exit — so two
//! wakes can never start two processes, and no map is shared behind a lock.

use crate::build::queue::Builder;
use crate::build::runner::RunAs;
use crate::ports::PortAllocator;
use crate::process;
use crate::release::{self, Release, Toolchain};
use spinforge_state::config::AppConfig;
use spinforge_state::records::{AppRecord, Route, Spinlet, SpinletState};
use spinforge_state::{Store, StoreError, now_ms};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Start attempts that may fail in a row before the app is `Failed`.
const MAX_START_FAILURES: u32 = 5;
/// A `Failed` app tries again on a wake after this long.
const FAILED_RETRY: Duration = Duration::from_secs(60);
/// A spinlet that ran this long before crashing starts its backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// SIGTERM → SIGKILL for idle stops.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// No store call waits longer than this.
const STORE_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Command {
    /// An edge holds requests for this app.
    Wake,
    /// The app's last access (ms) as the edges recorded it.
    IdleCheck { last_access_ms: Option<u64> },
    /// Write this app's routes, spinlet and upstreams again (after the store lost or may have lost them).
    Republish,
    /// Stop everything by `deadline`, then answer on `done`.
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
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
}

#[derive(Debug)]
struct Running {
    child: Child,
    /// Limits the spinlet; removed when it has exited (issue #6 item 2).
    cgroup: Option<crate::cgroup::Cgroup>,
    spinlet: Spinlet,
    since: Instant,
}

#[derive(Debug)]
enum State {
    Stopped,
    Running(Box<Running>),
    /// Crashed or failed to start; starts again at `retry_at`.
    Crashed {
        retry_at: Instant,
    },
    /// Gave up (no release, or too many failed starts in a row).
    Failed {
        reason: String,
        since: Instant,
    },
}

/// Whether the task goes on after handling something.
enum Flow {
    Continue,
    Exit,
}

pub struct AppTask {
    app: AppConfig,
    ctx: Arc<AppContext>,
    rx: mpsc::Receiver<Command>,
    release: Option<Release>,
    state: State,
    /// Restarts since the last stable run, for the backoff.
    restarts: u32,
    /// Start attempts that failed in a row.
    start_failures: u32,
}

impl std::fmt::Debug for AppTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTask")
            .field("app", &self.app.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl AppTask {
    pub fn new(app: AppConfig, ctx: Arc<AppContext>, rx: mpsc::Receiver<Command>) -> Self {
        Self {
            app,
            ctx,
            rx,
            release: None,
            state: State::Stopped,
            restarts: 0,
            start_failures: 0,
        }
    }

    pub async fn run(mut self) {
        let name = self.app.name.clone();
        // Ports of a previous run are not ours any more.
        self.store_call("clearing upstreams", |s| {
            let name = name.clone();
            async move { s.set_upstreams(&name, &[]).await }
        })
        .await;

        let mut woken = self.app.idle_timeout.is_none(); // never-idle apps run from the start
        let (app, ctx) = (self.app.clone(), self.ctx.clone());
        let build = async move {
            let id = Builder::new_id(&app.name);
            ctx.builder.build(&app, id).await
        };
        tokio::pin!(build);
        loop {
            tokio::select! {
                finished = &mut build => {
                    match finished.result {
                        Ok(outcome) => self.release = Some(outcome.release),
                        Err(e) => {
                            // A failed build changes nothing that serves: the newest release
                            // built before (if any) goes on.
                            let releases = self.ctx.data_dir.join("apps").join(&name).join("releases");
                            match release::list_releases(&releases).await.pop() {
                                Some(previous) => {
                                    tracing::error!(app = %name, build = %finished.id, error = %e, release = previous.info.number, "build failed; serving the previous release");
                                    self.release = Some(previous);
                                }
                                None => {
                                    tracing::error!(app = %name, build = %finished.id, error = %e, "build failed; the app will answer 503");
                                    self.state = State::Failed { reason: e.to_string(), since: Instant::now() };
                                }
                            }
                        }
                    }
                    break;
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Wake) => woken = true,
                    Some(Command::Shutdown { done, .. }) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(Command::IdleCheck { .. } | Command::Republish) => {}
                    None => return,
                },
            }
        }
        self.republish().await;
        if woken && self.release.is_some() && matches!(self.run_start().await, Flow::Exit) {
            return;
        }

        loop {
            let cmd = match &mut self.state {
                State::Running(r) => tokio::select! {
                    status = r.child.wait() => {
                        self.on_exit(status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())).await;
                        continue;
                    }
                    cmd = self.rx.recv() => cmd,
                },
                State::Crashed { retry_at } => {
                    let retry_at = *retry_at;
                    tokio::select! {
                        _ = tokio::time::sleep_until(retry_at) => {
                            if matches!(self.run_start().await, Flow::Exit) { return; }
                            continue;
                        }
                        cmd = self.rx.recv() => cmd,
                    }
                }
                State::Stopped | State::Failed { .. } => self.rx.recv().await,
            };
            let Some(cmd) = cmd else {
                // The supervisor is gone: leave nothing running.
                self.stop("supervisor gone", Instant::now() + STOP_GRACE)
                    .await;
                return;
            };
            match cmd {
                Command::Wake => {
                    let start = match &self.state {
                        State::Stopped => true,
                        State::Failed { reason, since } => {
                            let retry = self.release.is_some() && since.elapsed() >= FAILED_RETRY;
                            if !retry {
                                tracing::debug!(app = %self.app.name, %reason, "wake ignored: the app has failed");
                            }
                            retry
                        }
                        State::Running(_) | State::Crashed { .. } => false,
                    };
                    if start && matches!(self.run_start().await, Flow::Exit) {
                        return;
                    }
                }
                Command::IdleCheck { last_access_ms } => self.idle_check(last_access_ms).await,
                Command::Republish => self.republish().await,
                Command::Shutdown { deadline, done } => {
                    self.stop("shutdown", deadline).await;
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Starts a spinlet and waits for its health check, still answering a shutdown meanwhile.
    async fn run_start(&mut self) -> Flow {
        let Some(release) = self.release.clone() else {
            return Flow::Continue;
        };
        let name = self.app.name.clone();
        let Some(port) = self.ctx.ports.allocate() else {
            self.start_failed("no free port in supervisor.port_range")
                .await;
            return Flow::Continue;
        };
        let spinlet_id = format!(
            "{name}-{}-{:06x}",
            release.info.number,
            fastrand::u32(..0x0100_0000)
        );
        // Home, log, app user and cgroup are set up by `process::spawn` (issue #6 item 2).
        let spawned = process::spawn(
            &self.app,
            &release,
            &self.ctx.tools,
            port,
            &self.ctx.data_dir,
            self.ctx.run_as,
            &spinlet_id,
        );
        let (mut child, cgroup) = match spawned {
            Ok(s) => (s.child, s.cgroup),
            Err(e) => {
                self.ctx.ports.release(port);
                self.start_failed(&format!(
                    "cannot start `{}`: {e}",
                    release.info.start.join(" ")
                ))
                .await;
                return Flow::Continue;
            }
        };
        let spinlet = Spinlet {
            id: spinlet_id,
            app: name.clone(),
            release: release.info.number,
            state: SpinletState::Starting,
            pid: child.id().unwrap_or(0),
            host: "127.0.0.1".into(),
            port,
            started: now_ms(),
            restarts: self.restarts,
        };
        tracing::info!(app = %name, spinlet = %spinlet.id, pid = spinlet.pid, port, "starting spinlet");
        self.put_spinlet(&spinlet).await;

        let started = Instant::now();
        let check = self.app.health_check.clone();
        let health =
            async move { process::wait_healthy(port, &check.path, started + check.timeout).await };
        tokio::pin!(health);
        let outcome = loop {
            tokio::select! {
                result = &mut health => break result,
                status = child.wait() => {
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let status = process::exit_reason(&status, cgroup.as_ref()); // names an OOM kill
                    break Err(format!("exited during start ({status})"));
                }
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Shutdown { deadline, done }) => {
                        process::stop(&mut child, deadline).await;
                        remove_cgroup(&cgroup).await;
                        self.forget_spinlet(&spinlet).await;
                        let _ = done.send(());
                        return Flow::Exit;
                    }
                    None => {
                        process::stop(&mut child, Instant::now() + STOP_GRACE).await;
                        remove_cgroup(&cgroup).await;
                        self.forget_spinlet(&spinlet).await;
                        return Flow::Exit;
                    }
                    // Already starting; idle checks and republishing wait until it is up.
                    Some(Command::Wake | Command::IdleCheck { .. } | Command::Republish) => {}
                }
            }
        };
        match outcome {
            Ok(()) => {
                let spinlet = Spinlet {
                    state: SpinletState::Running,
                    ..spinlet
                };
                tracing::info!(app = %name, spinlet = %spinlet.id, port, boot_ms = started.elapsed().as_millis() as u64, "spinlet healthy");
                self.put_spinlet(&spinlet).await;
                let addr = spinlet.addr();
                self.store_call("publishing upstream", |s| {
                    let name = name.clone();
                    async move { s.add_upstream(&name, &addr).await }
                })
                .await;
                self.start_failures = 0;
                self.state = State::Running(Box::new(Running {
                    child,
                    cgroup,
                    spinlet,
                    since: started,
                }));
            }
            Err(reason) => {
                process::stop(&mut child, Instant::now() + STOP_GRACE).await;
                remove_cgroup(&cgroup).await;
                self.forget_spinlet(&spinlet).await;
                self.start_failed(&reason).await;
            }
        }
        Flow::Continue
    }

    async fn start_failed(&mut self, reason: &str) {
        self.start_failures += 1;
        let tail = self.log_tail().await;
        if self.start_failures >= MAX_START_FAILURES {
            tracing::error!(app = %self.app.name, reason, failures = self.start_failures, log_tail = %tail, "spinlet keeps failing to start; giving up until the next wake in a minute");
            self.state = State::Failed {
                reason: reason.to_string(),
                since: Instant::now(),
            };
        } else {
            let retry_at = self.backoff();
            tracing::warn!(app = %self.app.name, reason, log_tail = %tail, "spinlet failed to start; retrying");
            self.state = State::Crashed { retry_at };
        }
    }

    /// The running spinlet exited on its own.
    async fn on_exit(&mut self, status: String) {
        let r = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(r) => r,
            other => {
                self.state = other;
                return;
            }
        };
        if r.since.elapsed() >= STABLE_AFTER {
            self.restarts = 0;
        }
        self.remove_upstream(&r.spinlet).await;
        self.forget_spinlet(&r.spinlet).await;
        // "out of memory (limit 256M)" when the kernel killed it (issue #6 item 2).
        let status = process::exit_reason(&status, r.cgroup.as_ref());
        remove_cgroup(&r.cgroup).await;
        let retry_at = self.backoff();
        let tail = self.log_tail().await;
        tracing::warn!(
            app = %self.app.name, spinlet = %r.spinlet.id, %status,
            restart_in_ms = retry_at.saturating_duration_since(Instant::now()).as_millis() as u64,
            log_tail = %tail,
            "spinlet exited; restarting"
        );
        self.state = State::Crashed { retry_at };
    }

    fn backoff(&mut self) -> Instant {
        self.restarts += 1;
        let factor = 1u32 << self.restarts.saturating_sub(1).min(16);
        Instant::now() + (BACKOFF_FIRST * factor).min(BACKOFF_MAX)
    }

    async fn idle_check(&mut self, last_access_ms: Option<u64>) {
        let (State::Running(r), Some(idle)) = (&self.state, self.app.idle_timeout) else {
            return;
        };
        let last = last_access_ms.unwrap_or(0).max(r.spinlet.started);
        let idle_for = now_ms().saturating_sub(last);
        // The edges' numbers may be up to one flush old.
        let limit = idle + spinforge_state::ACTIVITY_FLUSH_INTERVAL;
        if idle_for >= limit.as_millis() as u64 {
            tracing::info!(app = %self.app.name, idle_ms = idle_for, "stopping idle spinlet");
            self.stop("idle", Instant::now() + STOP_GRACE).await;
        }
    }

    /// Takes the spinlet out of routing, then stops its process (SIGKILL at `kill_at`).
    async fn stop(&mut self, why: &str, kill_at: Instant) {
        let mut r = match std::mem::replace(&mut self.state, State::Stopped) {
            State::Running(r) => *r,
            other => {
                self.state = other;
                return;
            }
        };
        self.remove_upstream(&r.spinlet).await;
        self.put_spinlet(&Spinlet {
            state: SpinletState::Stopping,
            ..r.spinlet.clone()
        })
        .await;
        let status = process::stop(&mut r.child, kill_at).await;
        remove_cgroup(&r.cgroup).await;
        tracing::info!(app = %self.app.name, spinlet = %r.spinlet.id, why, status = ?status, "spinlet stopped");
        self.forget_spinlet(&r.spinlet).await;
    }

    /// Writes what this app owns in the store: its record, routes (with the release) and upstreams.
    async fn republish(&mut self) {
        let release = self.release.as_ref().map(|r| r.info.number);
        let record = AppRecord {
            name: self.app.name.clone(),
            domains: self.app.domains.clone(),
            source: self
                .release
                .as_ref()
                .map(|r| r.info.source.clone())
                .unwrap_or_default(),
            idle_timeout_ms: self.app.idle_timeout.map(|d| d.as_millis() as u64),
            current_release: release,
            releases: release.into_iter().collect(),
        };
        let routes: Vec<Route> = self
            .app
            .domains
            .iter()
            .map(|d| Route {
                domain: d.clone(),
                app: self.app.name.clone(),
                release,
                policy: self.app.policy.clone(),
                external: false,
            })
            .collect();
        let running = match &self.state {
            State::Running(r) => Some(r.spinlet.clone()),
            _ => None,
        };
        let name = self.app.name.clone();
        self.store_call("republishing", |s| async move {
            s.put_app(&record).await?;
            for route in &routes {
                s.put_route(route).await?;
            }
            if let Some(sp) = &running {
                s.put_spinlet(sp).await?;
            }
            let addrs: Vec<String> = running.iter().map(Spinlet::addr).collect();
            s.set_upstreams(&name, &addrs).await
        })
        .await;
    }

    async fn put_spinlet(&self, spinlet: &Spinlet) {
        let sp = spinlet.clone();
        self.store_call(
            "recording spinlet",
            |s| async move { s.put_spinlet(&sp).await },
        )
        .await;
    }

    async fn remove_upstream(&self, spinlet: &Spinlet) {
        let (app, addr) = (spinlet.app.clone(), spinlet.addr());
        self.store_call("withdrawing upstream", |s| async move {
            s.remove_upstream(&app, &addr).await
        })
        .await;
    }

    async fn forget_spinlet(&self, spinlet: &Spinlet) {
        let id = spinlet.id.clone();
        self.store_call("deleting spinlet", |s| async move {
            s.delete_spinlet(&id).await
        })
        .await;
        self.ctx.ports.release(spinlet.port);
    }

    /// Runs a store call with a deadline; failures are logged, not fatal: the next resync
    /// republishes everything.
    async fn store_call<F, Fut>(&self, what: &str, call: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        match tokio::time::timeout(STORE_DEADLINE, call(self.ctx.store.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(app = %self.app.name, error = %e, "store write failed while {what}")
            }
            Err(_) => tracing::warn!(app = %self.app.name, "store write timed out while {what}"),
        }
    }

    async fn log_tail(&self) -> String {
        // Read backwards from the end, not the whole file (issue #6 item 8).
        crate::logs::tail_joined(&self.ctx.data_dir, &self.app.name, 5).await
    }
}

/// A spinlet's cgroup goes once it has exited (issue #6 item 2).
async fn remove_cgroup(cgroup: &Option<crate::cgroup::Cgroup>) {
    if let Some(cg) = cgroup {
        cg.remove_soon().await;
    }
}
