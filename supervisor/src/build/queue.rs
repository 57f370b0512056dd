//! The build queue: every build is recorded in `build:status:{id}` and waits in `build:queue`
//! until one of `supervisor.builds.concurrency` slots is free (first come, first served); its log
//! goes to `data_dir/logs/builds/<id>.log` and `build:log:{id}`. A build has a time limit and can
//! be cancelled, queued or running.
//!
//! A build is a [`Ticket`] from the moment it has an id. [`Builder::enqueue`] records it as
//! queued before it returns, so an id is never handed out before its record exists. From there
//! every path ends the build exactly once, in `succeeded`, `failed` or `cancelled`, with a
//! `build_state` event, a line in the build log and one in the supervisor's log:
//! [`Ticket::run`] and [`Ticket::fail`] consume the ticket and end it in [`Ticket::finish`], the
//! only place a [`Finished`] is made; a ticket dropped unfinished (its task aborted, a full queue,
//! a supervisor going away) ends as `cancelled` from its `Drop` (`failed` if it unwinds from a
//! panic), and so does every process its command started.
//!
//! The store is told, never asked: a build goes on when the store is slow or away (its writes
//! have a deadline and are dropped on failure).

use super::runner::{BuildLog, Runner};
use super::{BuildContext, BuildError, Outcome, prepare};
use spinforge_state::config::{AppConfig, BuildLimits};
use spinforge_state::records::{BuildState, BuildStatus};
use spinforge_state::{Event, Store};

use spinforge_state::stop::CancellationToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// No store write of the queue waits longer than this.
const STORE_DEADLINE: Duration = Duration::from_secs(3);
/// Log lines waiting for the store; beyond it lines go to the file only.
const LOG_BUFFER: usize = 2048;
/// Log lines written to the store in one batch.
const LOG_BATCH: usize = 256;
/// Lines of the log quoted in a failed build's status.
const ERROR_TAIL: usize = 20;

/// Runs builds through the queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    ctx: BuildContext,
    /// `supervisor.builds` as last set (a reload changes it: [`Builder::set_limits`]); a build
    /// takes the limits current when it starts.
    limits: Mutex<BuildLimits>,
    slots: Semaphore,
    /// Cancel switches of queued and running builds.
    live: Mutex<HashMap<String, CancellationToken>>,
}

/// A finished build. Only [`Ticket::finish`] makes one, after recording how the build ended.
#[derive(Debug)]
pub struct Finished {
    id: String,
    result: Result<Outcome, BuildError>,
}

impl Finished {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn result(&self) -> &Result<Outcome, BuildError> {
        &self.result
    }

    pub fn into_result(self) -> Result<Outcome, BuildError> {
        self.result
    }
}

impl Builder {
    pub fn new(store: Store, ctx: BuildContext) -> Builder {
        let slots = Semaphore::new(ctx.limits.concurrency.max(1));
        Builder {
            inner: Arc::new(Inner {
                store,
                limits: Mutex::new(ctx.limits.clone()),
                ctx,
                slots,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// What builds share, with the limits current now.
    pub fn context(&self) -> BuildContext {
        BuildContext {
            limits: self.limits(),
            ..self.inner.ctx.clone()
        }
    }

    /// The limits current now.
    pub fn limits(&self) -> BuildLimits {
        self.inner
            .limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New limits (a reload): builds that start from now on take the new time limit and
    /// archive size, pruning keeps the new number of releases, and the number of builds that
    /// run at once grows at once or shrinks as running builds end.
    pub fn set_limits(&self, limits: BuildLimits) {
        let old = {
            let mut current = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *current, limits.clone())
        };
        let (was, now) = (old.concurrency.max(1), limits.concurrency.max(1));
        if now > was {
            self.inner.slots.add_permits(now - was);
        } else if now < was {
            // Taken in the queue's order, as builds end, and never given back.
            let inner = self.inner.clone();
            let fewer = u32::try_from(was - now).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = inner.slots.acquire_many(fewer).await {
                    p.forget();
                }
            });
        }
    }

    /// A new build id: `<app>-<ms>-<random>`.
    fn new_id(app: &str) -> String {
        format!(
            "{app}-{}-{:04x}",
            spinforge_state::now_ms(),
            fastrand::u16(..)
        )
    }

    /// A new build of `app`, recorded as queued (in `build:status:{id}` and `build:queue`, with
    /// an event) when this returns. Nothing runs until [`Ticket::run`].
    pub async fn enqueue(&self, app: &AppConfig) -> Ticket {
        let id = Self::new_id(&app.name);
        let cancel = CancellationToken::new();
        self.lock().insert(id.clone(), cancel.clone());
        let (log, log_error, flusher) = self.open_log(app, &id);
        let status = BuildStatus {
            id,
            app: app.name.clone(),
            state: BuildState::Queued,
            queued: spinforge_state::now_ms(),
            started: None,
            finished: None,
            release: None,
            error: None,
            steps: Vec::new(),
        };
        // The ticket first: should this future be dropped during the write, the build still ends.
        let ticket = Ticket {
            inner: self.inner.clone(),
            status,
            cancel,
            log: Some(log),
            log_error,
            flusher: Some(flusher),
            ended: false,
        };
        let s = ticket.status.clone();
        let store = self.inner.store.clone();
        store_write("queueing the build", async move {
            store.enqueue_build(&s).await?;
            store.publish(&state_event(&s)).await
        })
        .await;
        ticket
    }

    /// The build's log, and the task that copies its lines to the store. A log file that cannot
    /// be created fails the build when it runs; its lines still reach the store.
    fn open_log(
        &self,
        app: &AppConfig,
        id: &str,
    ) -> (Arc<BuildLog>, Option<BuildError>, JoinHandle<()>) {
        let ctx = &self.inner.ctx;
        let logs = ctx.data_dir.join("logs");
        let path = logs.join("builds").join(format!("{id}.log"));
        let (lines_tx, lines_rx) = mpsc::channel(LOG_BUFFER);
        let flusher = tokio::spawn(flush_log(
            self.inner.store.clone(),
            id.to_string(),
            lines_rx,
        ));
        let secured = match ctx.run_as {
            // Logs are the supervisor's to read: spinlets write theirs through inherited files.
            Some(_) => std::fs::create_dir_all(&logs)
                .and_then(|_| crate::users::hand_over(&logs, None, 0o700))
                .map_err(super::io(format!("securing {}", logs.display()))),
            None => Ok(()),
        };
        let created = secured.and_then(|()| {
            BuildLog::create(&path, Some(lines_tx.clone()), secrets_of(app))
                .map_err(super::io(format!("creating {}", path.display())))
        });
        match created {
            Ok(log) => (Arc::new(log), None, flusher),
            Err(e) => {
                let log = BuildLog::without_file(&path, Some(lines_tx), secrets_of(app));
                (Arc::new(log), Some(e), flusher)
            }
        }
    }

    /// Cancels a queued or running build; false if there is no such build (any more).
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        lock_live(&self.inner)
    }
}

fn lock_live(inner: &Inner) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
    inner.live.lock().unwrap_or_else(|p| p.into_inner())
}

/// One build, from its queued record to its end; see the module's documentation.
pub struct Ticket {
    inner: Arc<Inner>,
    status: BuildStatus,
    cancel: CancellationToken,
    /// Until the end is recorded.
    log: Option<Arc<BuildLog>>,
    /// The log file could not be created: the build fails when it runs.
    log_error: Option<BuildError>,
    flusher: Option<JoinHandle<()>>,
    /// The end is recorded (by `finish` or `drop`): never twice.
    ended: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.status.id)
            .field("app", &self.status.app)
            .field("state", &self.status.state)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    pub fn id(&self) -> &str {
        &self.status.id
    }

    /// Builds `app` (waiting for a slot first) and records how it ended. Dropping the future
    /// ends the build as cancelled.
    pub async fn run(mut self, app: &AppConfig) -> Finished {
        let result = self.execute(app).await;
        self.finish(result).await
    }

    /// Ends the build as failed without running it.
    pub async fn fail(self, reason: impl Into<String>) -> Finished {
        self.finish(Err(BuildError::Source(reason.into()))).await
    }

    async fn execute(&mut self, app: &AppConfig) -> Result<Outcome, BuildError> {
        if let Some(e) = self.log_error.take() {
            return Err(e);
        }
        let _slot = tokio::select! {
            slot = self.inner.slots.acquire() => slot.map_err(|_| BuildError::Cancelled)?,
            _ = self.cancel.cancelled() => return Err(BuildError::Cancelled),
        };
        self.status.state = BuildState::Running;
        self.status.started = Some(spinforge_state::now_ms());
        put_status(&self.inner.store, &self.status).await;

        // Under `run_as`, each app builds as its own user (see `crate::users`), so its build
        // scripts cannot read other apps' releases.
        let ctx = &self.inner.ctx;
        let app_user = crate::users::for_app(&ctx.data_dir, &app.name, ctx.run_as)
            .map_err(super::io("choosing the app's user id"))?;
        let ctx = &BuildContext {
            run_as: app_user,
            limits: self
                .inner
                .limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..ctx.clone()
        };
        let log = self.log.clone().ok_or(BuildError::Cancelled)?;
        let limit = ctx.limits.timeout;
        let runner = Runner {
            log,
            deadline: Instant::now() + limit,
            limit,
            cancel: self.cancel.clone(),
            run_as: ctx.run_as,
            env: Vec::new(),
        };
        tracing::info!(app = %app.name, build = %self.status.id, "build started");
        prepare(app, ctx, &runner, &self.status.id).await
    }

    /// The one way a build ends: its final state, a line in both logs, then (once the log's
    /// lines are in the store) the status and its event.
    async fn finish(mut self, result: Result<Outcome, BuildError>) -> Finished {
        let result = self.conclude(result);
        let id = self.status.id.clone();
        // Recorded by a task of its own, so that it happens even if this future is dropped.
        let recording = tokio::spawn(record(
            self.inner.store.clone(),
            self.status.clone(),
            self.flusher.take(),
        ));
        let _ = recording.await;
        Finished { id, result }
    }

    /// Sets the final state and writes the log lines (synchronous, so `Drop` can use it too).
    /// The error of a failed build gets the end of its log.
    fn conclude(&mut self, result: Result<Outcome, BuildError>) -> Result<Outcome, BuildError> {
        self.ended = true;
        lock_live(&self.inner).remove(&self.status.id);
        let log = self.log.take();
        let line = |text: String| {
            if let Some(log) = &log {
                log.line(text);
            }
        };
        let (app, id) = (self.status.app.clone(), self.status.id.clone());
        self.status.finished = Some(spinforge_state::now_ms());
        if let Some(log) = &log {
            self.status.steps = log.step_times(tokio::time::Instant::now());
        }
        match result {
            Ok(outcome) => {
                let release = outcome.release.info.number;
                self.status.state = BuildState::Succeeded;
                self.status.release = Some(release);
                if outcome.reused {
                    line(format!(
                        "[spinforge] build succeeded: release {release} reused"
                    ));
                    tracing::info!(%app, build = %id, release, reused = true, "build succeeded");
                } else {
                    line(format!("[spinforge] build succeeded: release {release}"));
                    tracing::info!(%app, build = %id, release, build_ms = outcome.release.info.build_ms, "build succeeded");
                }
                Ok(outcome)
            }
            Err(BuildError::Cancelled) => {
                self.status.state = BuildState::Cancelled;
                line("[spinforge] build cancelled".into());
                tracing::info!(%app, build = %id, "build cancelled");
                Err(BuildError::Cancelled)
            }
            Err(e) => {
                self.status.state = BuildState::Failed;
                line(format!("[spinforge] build failed: {e}"));
                let path = log.as_ref().map(|l| l.path().display().to_string());
                tracing::warn!(%app, build = %id, log = path.unwrap_or_default(), "build failed");
                let tail = log.as_ref().map(|l| l.tail(ERROR_TAIL)).unwrap_or_default();
                let e = match e {
                    // The status shows the end of the log even when the error itself does not.
                    BuildError::Source(msg) if !tail.is_empty() => {
                        BuildError::Source(format!("{msg}\nthe end of the build log:\n{tail}"))
                    }
                    other => other,
                };
                self.status.error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Dropped before it finished: its task was aborted or never ran (a cancel), or it
        // panicked (a failure).
        let end = if std::thread::panicking() {
            BuildError::Source(
                "the build stopped on an internal error (see the supervisor's log)".into(),
            )
        } else {
            BuildError::Cancelled
        };
        let _ = self.conclude(Err(end));
        let recording = record(
            self.inner.store.clone(),
            self.status.clone(),
            self.flusher.take(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(recording)),
            Err(_) => {
                tracing::warn!(build = %self.status.id, "no runtime left to record the cancelled build")
            }
        }
    }
}

/// Writes a build's final status and its event, once its log lines are in the store (a reader
/// that sees the end has every line).
async fn record(store: Store, status: BuildStatus, flusher: Option<JoinHandle<()>>) {
    if let Some(flusher) = flusher {
        // The flusher ends once every sender (the log) is gone; give it a moment to write.
        let _ = tokio::time::timeout(STORE_DEADLINE, flusher).await;
    }
    put_status(&store, &status).await;
}

async fn put_status(store: &Store, status: &BuildStatus) {
    let (store, s) = (store.clone(), status.clone());
    store_write("recording the build status", async move {
        store.put_build(&s).await?;
        store.publish(&state_event(&s)).await
    })
    .await;
}

fn state_event(status: &BuildStatus) -> Event {
    Event::BuildState {
        id: status.id.clone(),
        app: status.app.clone(),
        state: status.state.as_str().to_string(),
    }
}

async fn store_write(
    what: &str,
    write: impl std::future::Future<Output = Result<(), spinforge_state::StoreError>>,
) {
    match tokio::time::timeout(STORE_DEADLINE, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "store write failed while {what}"),
        Err(_) => tracing::warn!("store write timed out while {what}"),
    }
}

/// What must never show in a build log: the app's env values and a git URL's credentials (a
/// token may be the user name), also where a tool prints them outside a URL (ssh: `TOKEN@host`).
fn secrets_of(app: &AppConfig) -> Vec<String> {
    let mut out: Vec<String> = app.env.values().map(|v| v.expose().to_string()).collect();
    if let spinforge_state::config::AppSource::Git { url, .. } = &app.source {
        if let Some(userinfo) = url.userinfo() {
            // `user:password`, or a user name alone that is the token.
            out.push(userinfo.to_string());
            if let Some((_, password)) = userinfo.split_once(':') {
                out.push(password.to_string());
            }
        }
    }
    out
}

/// Moves log lines to `build:log:{id}` in batches until the log is dropped.
async fn flush_log(store: Store, id: String, mut rx: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(LOG_BATCH);
    while rx.recv_many(&mut batch, LOG_BATCH).await > 0 {
        let lines = std::mem::take(&mut batch);
        match tokio::time::timeout(STORE_DEADLINE, store.append_build_log(&id, lines)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(build = %id, error = %e, "cannot write build log lines to the store")
            }
            Err(_) => tracing::debug!(build = %id, "writing build log lines timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked_in_build_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BuildLog::create(
            &dir.path().join("b.log"),
            None,
            vec!["hunter2-secret".into(), "abc".into()],
        )
        .expect("log");
        log.line("token=hunter2-secret and abc");
        let text = std::fs::read_to_string(dir.path().join("b.log")).expect("read");
        assert_eq!(text, "token=*** and abc\n");
        assert!(!log.tail(5).contains("hunter2"));
    }
}
