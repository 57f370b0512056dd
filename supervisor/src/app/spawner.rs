//! The process side of spinlets behind a trait: starting one, taking one over from a previous
//! supervisor, health-probing it, stopping it, and observing its exit (on the [`Exits`]
//! channel, once). [`ProcessSpawner`] does it with real processes ([`crate::process`],
//! [`crate::cgroup`], [`crate::spinlet`]); tests put a fake in its place.

use crate::build::runner::RunAs;
use crate::cgroup::{Cgroup, Limits};
use crate::process;
use crate::release::{Release, Toolchain};
use crate::spinlet::{Exit, Proc};
use futures::future::BoxFuture;
use spinforge_state::config::AppConfig;
use spinforge_state::records::Spinlet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where spinlets report their exit: `(spinlet id, how it ended)`, once each.
pub type Exits = mpsc::UnboundedSender<Exit>;

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct StartSpec<'a> {
    pub id: &'a str,
    pub config: &'a AppConfig,
    pub release: &'a Release,
    pub port: u16,
}

/// Starts and finds spinlet processes.
pub trait Spawner: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a spinlet; its exit is reported on `exits`.
    fn start(&self, spec: StartSpec<'_>, exits: Exits) -> Result<Arc<dyn Process>, String>;

    /// Takes over a spinlet a previous supervisor started, if its process still runs (the same
    /// pid *and* start time); its exit is reported on `exits`.
    fn adopt(&self, record: &Spinlet, config: &AppConfig, exits: Exits)
    -> Option<Arc<dyn Process>>;

    /// Resolves once the spinlet answers `GET path` below 500, or with why not at `deadline`.
    fn wait_healthy(
        &self,
        port: u16,
        path: &str,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), String>>;

    /// One health probe, within `timeout`.
    fn probe(
        &self,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), ProbeFailure>>;

    /// The last lines of the app's log as `"; log: a | b"`, or nothing: quoted with failures.
    fn log_tail(&self, app: &str) -> BoxFuture<'static, String>;

    /// Frees what earlier supervisors left behind for `app` (the cgroups of its spinlets other
    /// than `keep`, the ones adopted). Called once, before the app starts anything.
    fn sweep(&self, app: &str, keep: &[&str]);
}

/// Why a health probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The spinlet said so (a 5xx), or nothing listens on its port.
    Unhealthy(String),
    /// No answer in time: hung, or too busy to get to the probe. The driver tells the two apart
    /// by whether the edges still get answers from it.
    NoAnswer(String),
}

impl ProbeFailure {
    pub fn why(self) -> String {
        match self {
            ProbeFailure::Unhealthy(why) | ProbeFailure::NoAnswer(why) => why,
        }
    }
}

/// A running spinlet process.
pub trait Process: Send + Sync + std::fmt::Debug + 'static {
    fn pid(&self) -> u32;
    /// Its start time in clock ticks since boot.
    fn start_ticks(&self) -> u64;
    /// SIGTERM, SIGKILL at `kill_at`; resolves once it has exited (or gave up waiting).
    fn stop(self: Arc<Self>, kill_at: Instant) -> BoxFuture<'static, ()>;
    /// How an exit reads in logs and records (the kernel's OOM kill is named).
    fn describe_exit(&self, status: &str) -> String;
    /// Frees what it leaves behind once it has exited (its cgroup).
    fn cleanup(self: Arc<Self>) -> BoxFuture<'static, ()>;
}

/// Log lines quoted with a failure.
const TAIL_LINES: usize = 10;

/// Real processes: a session and process group of their own, the app's user, its cgroup.
#[derive(Debug)]
pub struct ProcessSpawner {
    pub tools: Toolchain,
    pub data_dir: PathBuf,
    /// The user spinlets run as (`supervisor.run_as`, when SpinForge runs as root).
    pub run_as: Option<RunAs>,
}

#[derive(Debug)]
struct Real {
    proc: Proc,
    /// Limits it (`memory`, `cpu`); removed once it has exited.
    cgroup: Option<Cgroup>,
}

impl Spawner for ProcessSpawner {
    fn start(&self, spec: StartSpec<'_>, exits: Exits) -> Result<Arc<dyn Process>, String> {
        // Home, log, the app's user and its cgroup are set up by `process::spawn`.
        let spawned = process::spawn(
            spec.config,
            spec.release,
            &self.tools,
            spec.port,
            &self.data_dir,
            self.run_as,
            spec.id,
        )
        .map_err(|e| format!("cannot start `{}`: {e}", spec.release.info.start.join(" ")))?;
        let proc = Proc::watch_child(spawned.child, spec.id.to_string(), exits);
        Ok(Arc::new(Real {
            proc,
            cgroup: spawned.cgroup,
        }))
    }

    fn adopt(
        &self,
        record: &Spinlet,
        config: &AppConfig,
        exits: Exits,
    ) -> Option<Arc<dyn Process>> {
        let releases = crate::release::releases_dir(&self.data_dir, &config.name);
        let proc = Proc::adopt(
            record.pid,
            record.proc_start,
            record.id.clone(),
            &releases,
            exits,
        )?;
        // The group it runs in (re-opened, limits written again) for OOM reports.
        let limits = Limits {
            memory: config.memory,
            cpu: config.cpu,
        };
        let cgroup = Cgroup::create(&config.name, &record.id, limits)
            .ok()
            .flatten();
        Some(Arc::new(Real { proc, cgroup }))
    }

    fn wait_healthy(
        &self,
        port: u16,
        path: &str,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), String>> {
        let path = path.to_string();
        Box::pin(async move { process::wait_healthy(port, &path, deadline).await })
    }

    fn probe(
        &self,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), ProbeFailure>> {
        let path = path.to_string();
        Box::pin(async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            match tokio::time::timeout(timeout, process::probe_addr(addr, "localhost", &path)).await
            {
                Ok(Ok(status)) if status < 500 => Ok(()),
                Ok(Ok(status)) => Err(ProbeFailure::Unhealthy(format!("answered {status}"))),
                Ok(Err(e)) => Err(ProbeFailure::Unhealthy(e.to_string())),
                Err(_) => Err(ProbeFailure::NoAnswer(format!(
                    "no answer within {} s",
                    timeout.as_secs()
                ))),
            }
        })
    }

    fn sweep(&self, app: &str, keep: &[&str]) {
        crate::cgroup::sweep_app(app, keep);
    }

    fn log_tail(&self, app: &str) -> BoxFuture<'static, String> {
        let (data_dir, app) = (self.data_dir.clone(), app.to_string());
        Box::pin(async move {
            // Read backwards from the end, not the whole file.
            let tail = crate::logs::tail_joined(&data_dir, &app, TAIL_LINES).await;
            if tail.is_empty() {
                String::new()
            } else {
                format!("; log: {tail}")
            }
        })
    }
}

impl Process for Real {
    fn pid(&self) -> u32 {
        self.proc.pid
    }

    fn start_ticks(&self) -> u64 {
        self.proc.start_ticks
    }

    fn stop(self: Arc<Self>, kill_at: Instant) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.proc.stop(kill_at).await;
        })
    }

    fn describe_exit(&self, status: &str) -> String {
        // "out of memory (limit 256M)" when the kernel killed it.
        process::exit_reason(status, self.cgroup.as_ref())
    }

    fn cleanup(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(cg) = &self.cgroup {
                cg.remove_soon().await;
            }
        })
    }
}
