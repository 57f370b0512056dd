//! The machine's vocabulary: what happens to an app ([`Input`]) and what the machine wants done
//! about it ([`Effect`]). Every effect that starts work owes exactly one input back (the driver
//! keeps that promise even when the work panics), which is what lets the machine wait for it.

use super::publish::AppView;
use crate::control::Lifecycle;
use crate::release::{self, Release};
use spinforge_state::config::AppConfig;
use spinforge_state::records::{Drain, Spinlet};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The time a step happens at: monotonic for deadlines, wall clock for the records and the
/// edges' last-access times.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall_ms: u64,
}

impl Now {
    pub fn current() -> Now {
        Now {
            at: Instant::now(),
            wall_ms: spinforge_state::now_ms(),
        }
    }

    /// `d` later, on both clocks (virtual time in tests).
    pub fn after(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            wall_ms: self.wall_ms + d.as_millis() as u64,
        }
    }
}

/// Who waits for an answer, as the driver knows them.
pub type ReplyId = u64;
/// A build the machine asked for; only the newest one's end counts.
pub type BuildSeq = u64;

/// A spinlet's process, once it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub port: u16,
    /// Start time in clock ticks since boot (with the pid, one process for ever).
    pub proc_start: u64,
}

impl ProcInfo {
    pub fn addr(&self) -> String {
        spinlet_addr(self.port)
    }
}

/// Where the spinlet on `port` listens, as routes, upstreams and the edges' reports name it.
pub fn spinlet_addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A spinlet record a previous supervisor left, and whether its process still runs (the driver
/// has taken it over then).
#[derive(Debug, Clone)]
pub struct Adoptee {
    pub record: Spinlet,
    pub alive: bool,
}

/// How a build ended.
#[derive(Debug, Clone)]
pub enum BuildResult {
    Built {
        release: Box<Release>,
        /// The newest release already was this source: nothing was built.
        reused: bool,
    },
    Failed {
        error: String,
        /// The newest release on disk, for an app that serves none yet.
        fallback: Option<Box<Release>>,
    },
    /// There is nothing to build yet (an API app waiting for its first upload).
    NoSource,
}

#[derive(Debug)]
pub enum Input {
    /// The task starts: the spinlets a previous supervisor left, and the releases on disk.
    Begin {
        adopted: Vec<Adoptee>,
        releases: Vec<Release>,
        /// The last rollback's choice, as a previous supervisor left it on disk.
        pin: Option<release::Pin>,
    },
    // --- from the supervisor ---
    Wake,
    IdleCheck {
        last_access_ms: Option<u64>,
    },
    /// Write everything again (the store may have lost it).
    Republish,
    /// The latest definition.
    Update(Arc<AppConfig>),
    /// Build this definition and serve the result.
    Deploy(Arc<AppConfig>),
    /// `releases`: the ones on disk.
    Rollback {
        release: Option<u64>,
        releases: Vec<Release>,
        reply: ReplyId,
    },
    Lifecycle {
        action: Lifecycle,
        reply: ReplyId,
    },
    Shutdown {
        deadline: Instant,
        forget: bool,
        reply: ReplyId,
    },
    Detach {
        deadline: Instant,
        reply: ReplyId,
    },
    // --- what came of effects ---
    Spawned {
        id: String,
        proc: ProcInfo,
    },
    SpawnFailed {
        id: String,
        reason: String,
    },
    Healthy {
        id: String,
    },
    /// It never answered its health check in time (with the app log's last lines).
    StartFailed {
        id: String,
        reason: String,
    },
    /// Its process ended; `status` as the driver reads it, `tail` the app log's last lines.
    Exited {
        id: String,
        status: String,
        tail: String,
    },
    Probed {
        id: String,
        result: Result<(), String>,
    },
    Stopped {
        id: String,
    },
    /// A drain watch ended: `idle` when every edge reported nothing left on the spinlet (else
    /// it gave up at its deadline, which the machine has its own timer for).
    Drained {
        id: String,
        idle: bool,
    },
    BuildEnded {
        seq: BuildSeq,
        result: BuildResult,
    },
    /// A deadline the machine asked for ([`super::Machine::next_timer`]) has come.
    Tick,
}

#[derive(Debug, Clone)]
pub enum Effect {
    /// Start a spinlet → `Spawned` or `SpawnFailed`.
    Spawn {
        id: String,
        release: Release,
        config: Arc<AppConfig>,
    },
    /// Wait until it answers its health check, by `deadline` → `Healthy` or `StartFailed`.
    AwaitHealthy {
        id: String,
        port: u16,
        path: String,
        deadline: Instant,
    },
    /// One health probe → `Probed`.
    Probe {
        id: String,
        port: u16,
        path: String,
    },
    /// Read the edges' reports on a draining spinlet until none has anything left on it (→
    /// `Drained { idle: true }`) or `until` passes (→ `Drained { idle: false }`).
    WatchDrain {
        id: String,
        until: Instant,
    },
    /// SIGTERM, SIGKILL at `kill_at` → `Stopped`.
    Stop {
        id: String,
        kill_at: Instant,
    },
    /// Write a spinlet's record (its state, with an event).
    Record(Spinlet),
    /// Delete a spinlet's record; the driver lets go of its process, port and cgroup.
    Forget {
        id: String,
    },
    /// Replace the app's upstreams with exactly `addrs`, and its draining spinlets with exactly
    /// `drains` (one write: edges go from the old set straight to the new one, and learn which
    /// spinlets drain in the same update).
    Upstreams {
        addrs: Vec<String>,
        drains: Vec<Drain>,
    },
    /// Write the app's record and routes.
    Publish(AppView),
    /// The app is removed: its routes, record and upstreams go.
    Unpublish,
    /// Build this definition → `BuildEnded`.
    Build {
        seq: BuildSeq,
        config: Arc<AppConfig>,
    },
    /// A build whose result no longer matters; its end still comes, and is ignored.
    CancelBuild {
        seq: BuildSeq,
    },
    /// Keep (`Some`) or drop (`None`) the last rollback's choice on disk.
    Pin(Option<release::Pin>),
    /// Remove old releases, sparing those in use and `serving`'s rollback target.
    Prune {
        serving: Option<u64>,
        in_use: BTreeSet<u64>,
    },
    Reply {
        to: ReplyId,
        answer: Answer,
    },
    /// The task is done (shut down or detached): answer these and end.
    Done {
        replies: Vec<ReplyId>,
    },
}

/// The answer to a rollback or lifecycle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// Rolled back to this release.
    Release(u64),
    /// Not done; why.
    Refused(String),
    UnknownRelease(u64),
    /// The app is going away.
    Gone,
}
