//! Taking over the spinlets a previous supervisor left running (an upgrade, a restart over
//! Redis). The driver has already checked each record's process (pid *and* start time, so a
//! reused pid is never taken for a spinlet, and that the process is that spinlet — see
//! `crate::spinlet::is_spinlet` — so a planted record names no other process); what to do with
//! each is decided here, without I/O:
//! keep up to `instances` running one release that is still on disk, stop the other live ones
//! (those that were starting, draining or stopping too), forget the dead.

use super::effect::{Adoptee, Effect, Now, ProcInfo};
use super::machine::{Fx, Machine};
use super::state::{AfterStop, Phase, Role, Serving, Slot, Target, Want};
use crate::release::Release;
use spinforge_state::records::{Spinlet, SpinletState};

/// What becomes of a previous supervisor's spinlets.
#[derive(Debug, Default)]
pub struct Plan {
    /// The release the kept ones run.
    pub release: Option<Release>,
    /// Serve on.
    pub keep: Vec<Spinlet>,
    /// Alive but not wanted (more than `instances`, another release, one no longer on disk).
    pub stop: Vec<Spinlet>,
    /// Their process is gone: only the record is left.
    pub forget: Vec<String>,
}

pub fn plan(adopted: Vec<Adoptee>, releases: &[Release], instances: usize) -> Plan {
    let mut plan = Plan::default();
    for a in adopted {
        if !a.alive {
            plan.forget.push(a.record.id);
            continue;
        }
        if a.record.state != SpinletState::Running {
            // Starting, draining or stopping when its supervisor went away: not one to serve.
            plan.stop.push(a.record);
            continue;
        }
        let release = releases.iter().find(|r| r.info.number == a.record.release);
        let fits = release.is_some_and(|r| {
            plan.release
                .as_ref()
                .is_none_or(|kept| kept.info.number == r.info.number)
        });
        match release {
            Some(r) if fits && plan.keep.len() < instances => {
                plan.release.get_or_insert_with(|| r.clone());
                plan.keep.push(a.record);
            }
            _ => plan.stop.push(a.record),
        }
    }
    plan
}

impl Machine {
    pub(super) fn adopt(
        &mut self,
        adopted: Vec<Adoptee>,
        releases: &[Release],
        now: Now,
        fx: &mut Fx,
    ) {
        let plan = plan(adopted, releases, self.config.instances as usize);
        for id in plan.forget {
            fx.push(Effect::Forget { id });
        }
        let kill_at = now.at + self.timing.stop_grace;
        for record in plan.stop {
            tracing::info!(app = %self.name, spinlet = %record.id, "stopping an adopted spinlet the app no longer needs");
            self.push_slot(Slot {
                id: record.id.clone(),
                target: target_of(&record),
                role: Role::Serving,
                phase: Phase::Stopping {
                    proc: Some(proc_of(&record)),
                    then: AfterStop::Forget,
                    deadline: kill_at + self.timing.slack,
                },
                config: self.config.clone(),
                since: now.at,
                started_ms: record.started,
                restarts: record.restarts,
            });
            fx.push(Effect::Stop {
                id: record.id,
                kill_at,
            });
        }
        let Some(release) = plan.release else { return };
        // One fingerprint for the set; spinlets started with different settings make it
        // unknown, so the check build's end rolls out fresh ones.
        let first = plan.keep.first().and_then(|r| r.settings.clone());
        let same = plan.keep.iter().all(|r| r.settings == first);
        let target = Target {
            release: release.info.number,
            settings: first.filter(|_| same).unwrap_or_default(),
            generation: 0,
        };
        for record in plan.keep {
            tracing::info!(app = %self.name, spinlet = %record.id, pid = record.pid, port = record.port, release = record.release, "adopted a running spinlet");
            let slot = Slot {
                id: record.id.clone(),
                // Its own settings, kept in its record for the next supervisor.
                target: target_of(&record),
                role: Role::Serving,
                phase: Phase::Running {
                    proc: proc_of(&record),
                    failed_checks: 0,
                    probing: None,
                },
                config: self.config.clone(),
                since: now.at,
                started_ms: record.started,
                restarts: record.restarts,
            };
            fx.push(Effect::Record(self.record(
                &slot,
                SpinletState::Running,
                None,
            )));
            self.push_slot(slot);
        }
        self.desired = Some(release.clone());
        self.serving = Some(Serving {
            target,
            release,
            config: self.config.clone(),
            stamp: self.stamp,
        });
        self.want = Want::Awake;
        self.next_check = Some(now.at + self.timing.check_every);
    }
}

fn proc_of(record: &Spinlet) -> ProcInfo {
    ProcInfo {
        pid: record.pid,
        port: record.port,
        proc_start: record.proc_start,
    }
}

fn target_of(record: &Spinlet) -> Target {
    Target {
        release: record.release,
        settings: record.settings.clone().unwrap_or_default(),
        generation: 0,
    }
}
