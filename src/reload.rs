//! Reloading the config file while running, as `nginx -s reload` does: on SIGHUP, on
//! `POST /api/v1/reload` (`spinforge reload`), and when the file changes (polled every second).
//!
//! The file is read and validated whole; an invalid one changes nothing (every error is logged
//! with file:line:column, and returned to the API) and the running config goes on. A valid one
//! is applied to every part this process runs — the edge's settings and TLS names, the
//! supervisor (apps, builds, logs, ports, deploy folder), the certificate job, the admin API —
//! and what only a new process can apply (the schema says which keys: listeners, the state
//! store, `data_dir`, …) is named, in the log and the report, as needing a restart, until one
//! happens.

use spinforge_acme::AcmeService;
use spinforge_admin::AdminControl;
use spinforge_edge::EdgeControl;
use spinforge_edge::tls::TlsPolicy;
use spinforge_state::config::Config;
use spinforge_state::config::reload::{self, Outcome, ReloadReport, Reloader};
use spinforge_state::stop::{CancellationToken, DropGuard};
use spinforge_supervisor::{ConfigUpdate, ConfigUpdates};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often the config file is checked for edits.
const POLL: Duration = Duration::from_secs(1);
/// How long a reload waits for the supervisor to take a new config (apps moving domains wait
/// for each other).
const SUPERVISOR_WAIT: Duration = Duration::from_secs(60);

/// The parts of this process a reload changes; absent ones this process does not run.
#[derive(Default)]
pub struct Parts {
    pub edge: Option<EdgeControl>,
    pub supervisor: Option<ConfigUpdates>,
    pub acme: Option<AcmeService>,
    pub admin: Option<AdminControl>,
}

/// The running reloader: ask it through [`Reloader`]s, read the config it runs through
/// [`ReloadHandle::current`], and stop it (which stops the certificate job) at shutdown.
pub struct ReloadHandle {
    pub reloader: Reloader,
    current: watch::Receiver<Arc<Config>>,
    /// Stops the reloader when dropped (with the handle, or by `stop`).
    stop: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl ReloadHandle {
    /// The config the process runs now (what it started with, plus every reload applied).
    pub fn current(&self) -> Arc<Config> {
        self.current.borrow().clone()
    }

    /// Stops reloading, and the certificate job with it.
    pub async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

/// Starts reloading `boot` (the config the process started with) into `parts`. `hangup` is the
/// SIGHUP stream, taken when the process started (SIGHUP would otherwise end it).
pub fn start(boot: &Config, parts: Parts, hangup: tokio::signal::unix::Signal) -> ReloadHandle {
    let (reloader, asks) = Reloader::new();
    let (current_tx, current) = watch::channel(Arc::new(boot.clone()));
    let stop = CancellationToken::new();
    let state = State {
        boot: boot.clone(),
        current: boot.clone(),
        stamp: FileStamp::of(&boot.file),
        parts,
        published: current_tx,
    };
    let task = tokio::spawn(state.run(asks, hangup, stop.clone()));
    ReloadHandle {
        reloader,
        current,
        stop: stop.drop_guard(),
        task,
    }
}

/// Listens for SIGHUP: call first thing, before anything else runs, since SIGHUP's default
/// action ends the process.
pub fn hangup() -> anyhow::Result<tokio::signal::unix::Signal> {
    use anyhow::Context;
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")
}

struct State {
    /// What the process started with: keys only a new process can apply keep these values.
    boot: Config,
    /// What runs now.
    current: Config,
    /// The file as last read.
    stamp: Option<FileStamp>,
    parts: Parts,
    published: watch::Sender<Arc<Config>>,
}

impl State {
    async fn run(
        mut self,
        mut asks: mpsc::Receiver<oneshot::Sender<ReloadReport>>,
        mut hangup: tokio::signal::unix::Signal,
        stop: CancellationToken,
    ) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!(file = %self.boot.file.display(), "SIGHUP: reloading the config");
                    self.reload().await;
                }
                Some(reply) = asks.recv() => {
                    tracing::info!(file = %self.boot.file.display(), "reload asked through the admin API");
                    let report = self.reload().await;
                    let _ = reply.send(report);
                }
                _ = poll.tick() => {
                    if FileStamp::of(&self.boot.file) != self.stamp {
                        tracing::info!(file = %self.boot.file.display(), "the config file changed: reloading it");
                        self.reload().await;
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
        if let Some(acme) = self.parts.acme.take() {
            acme.stop();
        }
    }

    /// Reads the file and applies it whole, or refuses it whole.
    async fn reload(&mut self) -> ReloadReport {
        let started = std::time::Instant::now();
        let path = self.boot.file.clone();
        self.stamp = FileStamp::of(&path);
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                tracing::error!(
                    file = %path.display(),
                    "the config file is invalid; nothing was changed and the running config goes on:\n{errors}"
                );
                let mut report = ReloadReport::refused(&path, &errors);
                report.took_ms = started.elapsed().as_secs_f64() * 1000.0;
                return report;
            }
        };
        let restart = reload::needs_restart(&self.boot, &new);
        let next = reload::effective(&new, &self.boot);
        let applied = reload::changed(&self.current, &next);
        let mut warnings = Vec::new();
        if !applied.is_empty() {
            warnings = self.apply(&next, &applied).await;
            self.current = next;
            self.published.send_replace(Arc::new(self.current.clone()));
        }
        for r in &restart {
            tracing::warn!(key = %r.key, "config change not applied: it needs a restart ({})", r.why);
        }
        for w in &warnings {
            tracing::warn!("config reload: {w}");
        }
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        if applied.is_empty() {
            tracing::info!(file = %path.display(), took_ms, "config reloaded: nothing to apply");
        } else {
            tracing::info!(file = %path.display(), applied = %applied.join(", "), took_ms, "config reloaded");
        }
        ReloadReport {
            file: path.display().to_string(),
            outcome: if applied.is_empty() {
                Outcome::Unchanged
            } else {
                Outcome::Applied
            },
            applied,
            restart,
            warnings,
            errors: Vec::new(),
            took_ms,
        }
    }

    /// Hands `next` to every part; returns what could not be applied.
    async fn apply(&mut self, next: &Config, changed: &[String]) -> Vec<String> {
        let mut warnings = Vec::new();
        let apps_changed = changed.iter().any(|k| k.starts_with("apps."));
        if let Some(edge) = &self.parts.edge {
            warnings.extend(edge.apply(&next.edge));
            if apps_changed {
                edge.set_tls_policy(TlsPolicy::from_apps(next.apps.values()));
            }
        }
        if let Some(admin) = &self.parts.admin {
            admin.apply(next);
        }
        if let Some(acme) = &mut self.parts.acme
            && let Some(note) = acme.apply(next)
        {
            tracing::info!("{note}");
        }
        if let Some(supervisor) = &self.parts.supervisor {
            let (done, answer) = oneshot::channel();
            let update = ConfigUpdate {
                config: next.clone(),
                done,
            };
            if supervisor.send(update).await.is_err() {
                warnings.push(
                    "the supervisor is stopping: apps and supervisor settings were not applied"
                        .into(),
                );
            } else {
                match tokio::time::timeout(SUPERVISOR_WAIT, answer).await {
                    Ok(Ok(w)) => warnings.extend(w),
                    Ok(Err(_)) => warnings.push("the supervisor stopped while applying the config".into()),
                    Err(_) => warnings.push(format!(
                        "the supervisor has not finished applying the config after {} s; it goes on in the background",
                        SUPERVISOR_WAIT.as_secs()
                    )),
                }
            }
        }
        warnings
    }
}

/// When a file was last changed, to notice edits by polling.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: std::time::SystemTime,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &std::path::Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok()?,
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}
