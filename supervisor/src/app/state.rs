//! What the machine knows about an app, as types that keep bad states out: a spinlet has a
//! process only in the phases where one runs, and only a [`Phase::Running`] spinlet of the
//! serving set is ever published (see `Machine::upstreams`).

use super::effect::{ProcInfo, ReplyId};
use crate::release::Release;
use spinforge_state::config::AppConfig;
use spinforge_state::records::SpinletState;
use std::sync::Arc;
use tokio::time::Instant;

/// What a spinlet runs: two spinlets with the same target are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub release: u64,
    /// The fingerprint of its settings (env, limits, health check; see [`crate::settings`]).
    /// Empty when unknown (a record of an older supervisor): never equal to a real one.
    pub settings: String,
    /// Bumped by every restart request: a restart is a new target on the same release.
    pub generation: u64,
}

/// Whether the app should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Keep `instances` spinlets serving.
    Awake,
    /// Nothing runs (idle, or stopped through the API); a wake starts it.
    Asleep,
}

/// The app gave up starting: no release at all, or starts that kept failing.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: String,
    pub since: Instant,
}

/// A spinlet's place in the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Of the serving set: published once running.
    Serving,
    /// Started by a rollout beside the serving set; never published until the rollout flips.
    Candidate,
}

/// What is recorded once a stopped spinlet has exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterStop {
    /// Nothing but the record's removal (a start that failed, a shutdown).
    Forget,
    /// This state (and reason), then the removal.
    Record(SpinletState, Option<String>),
}

#[derive(Debug, Clone)]
pub enum Phase {
    /// Asked of the spawner; no process yet.
    Spawning { deadline: Instant },
    /// Its process runs but has not answered its health check yet.
    Starting { proc: ProcInfo, deadline: Instant },
    /// Healthy: the only phase that may be published.
    Running {
        proc: ProcInfo,
        /// Health checks failed in a row.
        failed_checks: u32,
        /// A probe is out; it counts as failed if no answer came by then.
        probing: Option<Instant>,
    },
    /// Replaced: out of routing, finishing what it serves. The edges report what they still
    /// have on it; it stops once none has anything left, or at `until` at the latest: the app's
    /// `drain_timeout` — when the edges end the streams still open on it (`close_at_ms`, their
    /// clock) — plus a margin for them to do so. `then` is recorded once it has stopped.
    Draining {
        proc: ProcInfo,
        close_at_ms: u64,
        until: Instant,
        then: AfterStop,
    },
    /// Told to stop (or to be stopped as soon as its spawn answers, without a process yet).
    Stopping {
        proc: Option<ProcInfo>,
        then: AfterStop,
        /// Taken as stopped by then even if the driver never says so.
        deadline: Instant,
    },
}

impl Phase {
    pub fn proc(&self) -> Option<ProcInfo> {
        match self {
            Phase::Spawning { .. } => None,
            Phase::Starting { proc, .. }
            | Phase::Running { proc, .. }
            | Phase::Draining { proc, .. } => Some(*proc),
            Phase::Stopping { proc, .. } => *proc,
        }
    }

    /// Spawning, starting or running: it is (or will be) part of its set.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            Phase::Spawning { .. } | Phase::Starting { .. } | Phase::Running { .. }
        )
    }

    pub fn is_starting(&self) -> bool {
        matches!(self, Phase::Spawning { .. } | Phase::Starting { .. })
    }

    pub fn is_running(&self) -> bool {
        matches!(self, Phase::Running { .. })
    }
}

/// One spinlet of the app, from the spawn request to the removal of its record.
#[derive(Debug, Clone)]
pub struct Slot {
    pub id: String,
    pub target: Target,
    pub role: Role,
    pub phase: Phase,
    /// What it was started with (its health check path, for one).
    pub config: Arc<AppConfig>,
    /// When it was started (monotonic), for the backoff after a crash.
    pub since: Instant,
    /// When it was started (ms since the epoch), for records and idle checks.
    pub started_ms: u64,
    /// Restarts before it, for its record.
    pub restarts: u32,
}

/// What the serving set runs (or, for an app that sleeps, will run on its next wake).
#[derive(Debug, Clone)]
pub struct Serving {
    pub target: Target,
    pub release: Release,
    pub config: Arc<AppConfig>,
    /// The newest request this set answers (see [`Waiter`]).
    pub stamp: u64,
}

/// A change of target in progress: candidates start beside the serving set; once all are
/// healthy the upstreams flip to them in one write, else they are stopped and the serving set
/// serves on.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub target: Target,
    pub release: Release,
    pub config: Arc<AppConfig>,
    pub stamp: u64,
}

/// A rollout that did not get healthy: the machine does not try that target again until
/// something asks for it anew.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub target: Target,
    /// The spinlet whose failure refused it.
    pub cause: String,
    pub reason: String,
}

/// Someone waiting for the app to serve what they asked for (a rollback, a restart): answered
/// once the serving set answers a request stamped at least `stamp`, or refused.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub reply: ReplyId,
    pub stamp: u64,
    /// What they get when it serves.
    pub release: Option<u64>,
}

/// A rollback's choice (see [`crate::release::Pin`]): the release, and the build definition it
/// was made under.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub release: Release,
    pub definition: String,
}

impl Pinned {
    /// What the disk keeps of it.
    pub fn on_disk(&self) -> crate::release::Pin {
        crate::release::Pin {
            release: self.release.info.number,
            definition: self.definition.clone(),
        }
    }
}

/// The build the app waits for.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub seq: u64,
    /// The build a starting task asks for to check what runs against the definition; unlike a
    /// deploy or an edit it keeps a rollback's [`Pinned`] release.
    pub check: bool,
    /// The definition's generation when it was asked for: while it runs, a change of settings
    /// alone waits for it (one rollout with both), unless the definition changed since.
    pub config_gen: u64,
}

#[derive(Debug, Clone)]
pub enum ExitKind {
    /// Stop everything; `forget`: the app is removed.
    Shutdown { forget: bool },
    /// Leave the serving spinlets running for the next supervisor.
    Detach,
}

#[derive(Debug, Clone)]
pub struct Exiting {
    pub kind: ExitKind,
    pub deadline: Instant,
    pub replies: Vec<ReplyId>,
}
