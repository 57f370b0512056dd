//! The build queue: every build is recorded in `build:status:{id}` and waits in `build:queue`
//! until one of `supervisor.builds.concurrency` slots is free (first come, first served); its log
//! goes to `data_dir/logs/builds/<id>.log` and `build:log:{id}`. A build has a time limit and can
//! be cancelled, queued or running.
//!
//! The store is told, never asked: a build goes on when the store is slow or away (its writes
//! have a deadline and are dropped on failure).

use super::runner::{BuildLog, Runner};
use super::{BuildContext, BuildError, Outcome, prepare};
use spinforge_state::Store;
use spinforge_state::config::AppConfig;
use spinforge_state::records::{BuildState, BuildStatus};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
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
    slots: Semaphore,
    /// Cancel switches of queued and running builds (at most one per app task at a time).
    live: Mutex<HashMap<String, watch::Sender<bool>>>,
}

/// A finished build.
#[derive(Debug)]
pub struct Finished {
    pub id: String,
    pub result: Result<Outcome, BuildError>,
}

impl Builder {
    pub fn new(store: Store, ctx: BuildContext) -> Builder {
        let slots = Semaphore::new(ctx.limits.concurrency.max(1));
        Builder {
            inner: Arc::new(Inner {
                store,
                ctx,
                slots,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn context(&self) -> &BuildContext {
        &self.inner.ctx
    }

    /// A new build id: `<app>-<ms>-<random>`.
    pub fn new_id(app: &str) -> String {
        format!(
            "{app}-{}-{:04x}",
            spinforge_state::now_ms(),
            fastrand::u16(..)
        )
    }

    /// Builds `app` through the queue under `id` and returns when it has finished (or was
    /// cancelled). Dropping the future stops the build.
    pub async fn build(&self, app: &AppConfig, id: String) -> Finished {
        let (cancel_tx, cancel) = watch::channel(false);
        self.lock().insert(id.clone(), cancel_tx);
        let _forget = Forget {
            inner: &self.inner,
            id: id.clone(),
        };
        let mut status = BuildStatus {
            id: id.clone(),
            app: app.name.clone(),
            state: BuildState::Queued,
            queued: spinforge_state::now_ms(),
            started: None,
            finished: None,
            release: None,
            error: None,
        };
        self.store_write("queueing the build", {
            let s = status.clone();
            let store = self.inner.store.clone();
            async move { store.enqueue_build(&s).await }
        })
        .await;

        let result = self.run(app, &id, &mut status, cancel).await;
        status.finished = Some(spinforge_state::now_ms());
        match &result {
            Ok(outcome) => {
                status.state = BuildState::Succeeded;
                status.release = Some(outcome.release.info.number);
            }
            Err(BuildError::Cancelled) => status.state = BuildState::Cancelled,
            Err(e) => {
                status.state = BuildState::Failed;
                status.error = Some(e.to_string());
            }
        }
        self.put_status(&status).await;
        Finished { id, result }
    }

    async fn run(
        &self,
        app: &AppConfig,
        id: &str,
        status: &mut BuildStatus,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<Outcome, BuildError> {
        let _slot = tokio::select! {
            slot = self.inner.slots.acquire() => slot.map_err(|_| BuildError::Cancelled)?,
            _ = super::runner::cancelled(&mut cancel) => return Err(BuildError::Cancelled),
        };
        status.state = BuildState::Running;
        status.started = Some(spinforge_state::now_ms());
        self.put_status(status).await;

        // Under `run_as`, each app builds as its own user (see `crate::users`), so its build
        // scripts cannot read other apps' releases.
        let app_user =
            crate::users::for_app(&self.inner.ctx.data_dir, &app.name, self.inner.ctx.run_as)
                .map_err(super::io("choosing the app's user id"))?;
        let app_ctx = super::BuildContext {
            run_as: app_user,
            ..self.inner.ctx.clone()
        };
        let ctx = &app_ctx;
        let path = ctx.data_dir.join("logs/builds").join(format!("{id}.log"));
        if ctx.run_as.is_some() {
            // Logs are the supervisor's to read: spinlets write theirs through inherited files.
            let logs = ctx.data_dir.join("logs");
            std::fs::create_dir_all(&logs)
                .and_then(|_| crate::users::hand_over(&logs, None, 0o700))
                .map_err(super::io(format!("securing {}", logs.display())))?;
        }
        let (lines_tx, lines_rx) = mpsc::channel(LOG_BUFFER);
        let log = BuildLog::create(&path, Some(lines_tx), secrets_of(app))
            .map_err(super::io(format!("creating {}", path.display())))?;
        let flusher = tokio::spawn(flush_log(
            self.inner.store.clone(),
            id.to_string(),
            lines_rx,
        ));
        let limit = ctx.limits.timeout;
        let runner = Runner {
            log: Arc::new(log),
            deadline: Instant::now() + limit,
            limit,
            cancel,
            run_as: ctx.run_as,
            env: Vec::new(),
        };
        tracing::info!(app = %app.name, build = %id, "build started");
        let result = prepare(app, ctx, &runner, id).await;
        match &result {
            Ok(o) if o.reused => {}
            Ok(o) => {
                tracing::info!(app = %app.name, build = %id, release = o.release.info.number, build_ms = o.release.info.build_ms, "build succeeded")
            }
            Err(e) => {
                runner.log.line(format!("[spinforge] build failed: {e}"));
                tracing::warn!(app = %app.name, build = %id, log = %path.display(), "build failed");
            }
        }
        let tail = runner.log.tail(ERROR_TAIL);
        drop(runner);
        // The flusher ends once every sender (the log) is gone; give it a moment to write.
        let _ = tokio::time::timeout(STORE_DEADLINE, flusher).await;
        result.map_err(|e| match e {
            // The status shows the end of the log even when the error itself does not.
            BuildError::Source(msg) if !tail.is_empty() => {
                BuildError::Source(format!("{msg}\nthe end of the build log:\n{tail}"))
            }
            other => other,
        })
    }

    /// Cancels a queued or running build; false if there is no such build (any more).
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(tx) => {
                let _ = tx.send(true);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn put_status(&self, status: &BuildStatus) {
        let s = status.clone();
        let store = self.inner.store.clone();
        self.store_write("recording the build status", async move {
            store.put_build(&s).await
        })
        .await;
    }

    async fn store_write(
        &self,
        what: &str,
        write: impl std::future::Future<Output = Result<(), spinforge_state::StoreError>>,
    ) {
        match tokio::time::timeout(STORE_DEADLINE, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "store write failed while {what}"),
            Err(_) => tracing::warn!("store write timed out while {what}"),
        }
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

/// Removes a build's cancel switch when its future ends (finished or dropped).
struct Forget<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
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
