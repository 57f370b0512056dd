//! Spinlets: what came of starting, probing and stopping them (and their exits), their
//! deadlines, and the helpers that start, stop and drain them and write their records.

use super::effect::{Answer, Effect, Now, ProcInfo};
use super::machine::{Fx, Machine};
use super::state::{AfterStop, Failure, Phase, Role, Slot, Target};
use crate::release::Release;
use spinforge_state::config::AppConfig;
use spinforge_state::records::{Spinlet, SpinletState};
use std::sync::Arc;
use tokio::time::Instant;

impl Machine {
    pub(super) fn spawned(&mut self, id: &str, proc: ProcInfo, now: Now, fx: &mut Fx) {
        let slack = self.timing.slack;
        let grace = self.timing.stop_grace;
        let Some(s) = self.slot_mut(id) else {
            // A process nobody asked for any more: stop it.
            return self.adopt_stray(id, proc, now, fx);
        };
        match &mut s.phase {
            Phase::Spawning { deadline } => {
                let deadline = *deadline;
                s.phase = Phase::Starting { proc, deadline };
                let path = s.config.health_check.path.clone();
                let record = self.record_of(id, SpinletState::Starting, None);
                tracing::info!(app = %self.name, spinlet = %id, pid = proc.pid, port = proc.port, "starting spinlet");
                fx.extend_record(record);
                fx.push(Effect::AwaitHealthy {
                    id: id.to_string(),
                    port: proc.port,
                    path,
                    deadline: deadline - slack,
                });
            }
            Phase::Stopping {
                proc: p @ None,
                deadline,
                ..
            } => {
                // Stopped before its spawn answered: now it can be.
                *p = Some(proc);
                *deadline = now.at + grace + slack;
                fx.push(Effect::Stop {
                    id: id.to_string(),
                    kill_at: now.at + grace,
                });
            }
            _ => {}
        }
    }

    pub(super) fn adopt_stray(&mut self, id: &str, proc: ProcInfo, now: Now, fx: &mut Fx) {
        let kill_at = now.at + self.timing.stop_grace;
        self.slots.push(Slot {
            id: id.to_string(),
            target: Target {
                release: 0,
                settings: String::new(),
                generation: 0,
            },
            // Not a candidate: no rollout waits for it.
            role: Role::Serving,
            phase: Phase::Stopping {
                proc: Some(proc),
                then: AfterStop::Forget,
                deadline: kill_at + self.timing.slack,
            },
            config: self.config.clone(),
            since: now.at,
            started_ms: now.wall_ms,
            restarts: 0,
        });
        fx.push(Effect::Stop {
            id: id.to_string(),
            kill_at,
        });
    }

    pub(super) fn healthy(&mut self, id: &str, now: Now, fx: &mut Fx) {
        let Some(s) = self.slot_mut(id) else { return };
        let Phase::Starting { proc, .. } = s.phase else {
            return;
        };
        s.phase = Phase::Running {
            proc,
            failed_checks: 0,
            probing: None,
        };
        let (role, boot_ms) = (s.role, now.at.saturating_duration_since(s.since));
        tracing::info!(app = %self.name, spinlet = %id, port = proc.port, boot_ms = boot_ms.as_millis() as u64, "spinlet healthy");
        let record = self.record_of(id, SpinletState::Running, None);
        fx.extend_record(record);
        match role {
            Role::Serving => {
                self.start_failures = 0;
                self.next_check
                    .get_or_insert(now.at + self.timing.check_every);
            }
            Role::Candidate => self.rollout_progress(now, fx),
        }
    }

    /// A spinlet did not come up: no process, an exit, or no healthy answer in time.
    pub(super) fn start_failed(&mut self, id: &str, reason: String, now: Now, fx: &mut Fx) {
        let Some(s) = self.slot(id) else { return };
        if !s.phase.is_starting() {
            return;
        }
        let role = s.role;
        let release = s.target.release;
        // Even an exited one: a worker it forked may still hold the group.
        self.stop(id, AfterStop::Forget, now.at + self.timing.stop_grace, fx);
        match role {
            Role::Candidate => self.refuse(id, &reason, now, fx),
            Role::Serving => {
                self.start_failures += 1;
                for w in self.take_waiters(|w, s| w.stamp <= s) {
                    fx.push(Effect::Reply {
                        to: w.reply,
                        answer: Answer::Refused(format!(
                            "release {release} did not get healthy: {reason}"
                        )),
                    });
                }
                let nothing_serves = self.serving_running().next().is_none();
                if self.start_failures >= self.timing.max_start_failures && nothing_serves {
                    self.give_up(release, reason, now, fx);
                } else {
                    tracing::warn!(app = %self.name, %reason, "spinlet failed to start; retrying");
                    let at = self.backoff(now.at);
                    self.retry_at(at);
                }
            }
        }
    }

    /// Starts kept failing with nothing serving: no more tries until a wake a while later, an
    /// edit, a deploy or a start.
    pub(super) fn give_up(&mut self, release: u64, reason: String, now: Now, fx: &mut Fx) {
        tracing::error!(app = %self.name, %reason, failures = self.start_failures, "spinlets keep failing to start; giving up until the next wake in a minute");
        self.failure_record(release, &reason, fx);
        self.retries.clear();
        let starting: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Serving && s.phase.is_starting())
            .map(|s| s.id.clone())
            .collect();
        for id in starting {
            self.stop(&id, AfterStop::Forget, now.at + self.timing.stop_grace, fx);
        }
        for w in std::mem::take(&mut self.waiters) {
            fx.push(Effect::Reply {
                to: w.reply,
                answer: Answer::Refused(reason.clone()),
            });
        }
        self.failed = Some(Failure {
            reason,
            since: now.at,
        });
    }

    pub(super) fn exited(&mut self, id: &str, status: &str, tail: &str, now: Now, fx: &mut Fx) {
        let Some(s) = self.slot(id) else { return };
        match (&s.phase, s.role) {
            (Phase::Spawning { .. } | Phase::Starting { .. }, _) => {
                self.start_failed(id, format!("exited during start ({status}){tail}"), now, fx)
            }
            (Phase::Running { .. }, Role::Candidate) => {
                let reason = format!("exited ({status}){tail}");
                self.stop(id, AfterStop::Forget, now.at + self.timing.stop_grace, fx);
                self.refuse(id, &reason, now, fx);
            }
            (Phase::Running { .. }, Role::Serving) => {
                let reason = format!("exited ({status}){tail}");
                if now.at.saturating_duration_since(s.since) >= self.timing.stable_after {
                    self.restarts = 0;
                }
                let record = self.record_of(id, SpinletState::Crashed, Some(reason.clone()));
                self.remove(id);
                fx.extend_record(record);
                fx.push(Effect::Forget { id: id.to_string() });
                let at = self.backoff(now.at);
                tracing::warn!(
                    app = %self.name, spinlet = %id, %reason,
                    restart_in_ms = at.saturating_duration_since(now.at).as_millis() as u64,
                    "spinlet exited; restarting"
                );
                self.retry_at(at);
            }
            (Phase::Draining { then, .. }, _) => {
                // It ended before its drain did: nothing left to stop.
                let record = match then.clone() {
                    AfterStop::Record(state, reason) => self.record_of(id, state, reason),
                    AfterStop::Forget => None,
                };
                self.remove(id);
                fx.extend_record(record);
                fx.push(Effect::Forget { id: id.to_string() });
            }
            // Its stop answers soon.
            (Phase::Stopping { .. }, _) => {}
        }
    }

    pub(super) fn stopped(&mut self, id: &str, fx: &mut Fx) {
        let Some(s) = self.slot(id) else { return };
        let Phase::Stopping { then, .. } = &s.phase else {
            return;
        };
        let then = then.clone();
        if let AfterStop::Record(state, reason) = then {
            tracing::info!(app = %self.name, spinlet = %id, state = state.as_str(), "spinlet stopped");
            let record = self.record_of(id, state, reason);
            fx.extend_record(record);
        }
        self.remove(id);
        fx.push(Effect::Forget { id: id.to_string() });
    }

    pub(super) fn tick(&mut self, now: Now, fx: &mut Fx) {
        let due: Vec<(String, Phase)> = self
            .slots
            .iter()
            .map(|s| (s.id.clone(), s.phase.clone()))
            .collect();
        for (id, phase) in due {
            match phase {
                Phase::Spawning { deadline } | Phase::Starting { deadline, .. }
                    if deadline <= now.at =>
                {
                    let timeout = self.slot(&id).map(|s| s.config.health_check.timeout);
                    let reason = format!(
                        "no healthy answer within the health-check timeout ({}s)",
                        timeout.unwrap_or_default().as_secs()
                    );
                    self.start_failed(&id, reason, now, fx);
                }
                Phase::Running {
                    probing: Some(due), ..
                } if due <= now.at => {
                    let reason =
                        format!("no answer within {}s", self.timing.check_timeout.as_secs());
                    self.probed(&id, Err(reason), now, fx);
                }
                Phase::Draining { until, then, .. } if until <= now.at => {
                    tracing::info!(app = %self.name, spinlet = %id, "drain_timeout is over: stopping the replaced spinlet, cutting what it still serves");
                    let kill_at = now.at + self.timing.drain_kill_grace;
                    self.stop(&id, then, kill_at, fx);
                }
                Phase::Stopping { deadline, .. } if deadline <= now.at => {
                    tracing::warn!(app = %self.name, spinlet = %id, "a stop was never confirmed; taking the spinlet as stopped");
                    self.stopped(&id, fx);
                }
                _ => {}
            }
        }
        if self.next_check.is_some_and(|t| t <= now.at) {
            self.check_health(now, fx);
        }
    }

    /// Starts a spinlet of `target` in `role`.
    pub(super) fn spawn(
        &mut self,
        role: Role,
        target: &Target,
        release: &Release,
        config: &Arc<AppConfig>,
        now: Now,
        fx: &mut Fx,
    ) {
        let id = format!(
            "{}-{}-{:06x}",
            self.name,
            release.info.number,
            self.rng.u32(..0x0100_0000)
        );
        let deadline = now.at + config.health_check.timeout + self.timing.slack;
        // Its record says what it really runs with: the settings of `config` (a set adopted
        // with unknown settings is topped up with the current ones).
        let settings = if Arc::ptr_eq(config, &self.config) {
            self.settings.clone()
        } else {
            self.key.fingerprint(config)
        };
        let target = Target {
            settings,
            ..target.clone()
        };
        self.slots.push(Slot {
            id: id.clone(),
            target,
            role,
            phase: Phase::Spawning { deadline },
            config: config.clone(),
            since: now.at,
            started_ms: now.wall_ms,
            restarts: self.restarts,
        });
        fx.push(Effect::Spawn {
            id,
            release: release.clone(),
            config: config.clone(),
        });
    }

    /// Stops a spinlet (one without a process yet is stopped once its spawn answers); `then`
    /// is recorded once it has exited.
    pub(super) fn stop(&mut self, id: &str, then: AfterStop, kill_at: Instant, fx: &mut Fx) {
        let slack = self.timing.slack;
        let Some(s) = self.slot_mut(id) else { return };
        let deadline = kill_at + slack;
        match &s.phase {
            Phase::Stopping { .. } => {}
            Phase::Spawning { .. } => {
                s.phase = Phase::Stopping {
                    proc: None,
                    then,
                    deadline,
                };
            }
            phase => {
                let proc = phase.proc();
                s.phase = Phase::Stopping {
                    proc,
                    then,
                    deadline,
                };
                fx.push(Effect::Stop {
                    id: id.to_string(),
                    kill_at,
                });
            }
        }
    }

    /// A replaced spinlet, out of routing from this step on, finishes what it serves: it stops
    /// once every edge reports nothing left on it ([`Machine::drained`]), or when the app's
    /// `drain_timeout` is over (the edges then end its streams) plus `timing.drain_margin`. It
    /// is recorded `stopping` at once: a supervisor that takes over meanwhile must not adopt it
    /// as serving. `then` is recorded once it has stopped.
    pub(super) fn drain(&mut self, id: &str, then: AfterStop, now: Now, fx: &mut Fx) {
        let timeout = self.config.drain_timeout;
        let until = now.at + timeout + self.timing.drain_margin;
        let close_at_ms = now.wall_ms + timeout.as_millis() as u64;
        let Some(s) = self.slot_mut(id) else { return };
        let Phase::Running { proc, .. } = s.phase else {
            return;
        };
        s.phase = Phase::Draining {
            proc,
            close_at_ms,
            until,
            then,
        };
        let record = self.record_of(id, SpinletState::Stopping, None);
        fx.extend_record(record);
        fx.push(Effect::WatchDrain {
            id: id.to_string(),
            until,
        });
    }

    /// The edges have nothing left on a draining spinlet (`idle`): it stops now. A watch that
    /// gave up changes nothing: the drain's own deadline stops it.
    pub(super) fn drained(&mut self, id: &str, idle: bool, now: Now, fx: &mut Fx) {
        let Some(s) = self.slot(id) else { return };
        let Phase::Draining { then, .. } = &s.phase else {
            return;
        };
        if !idle {
            return;
        }
        let then = then.clone();
        tracing::info!(app = %self.name, spinlet = %id, "drained: no edge has anything left on the replaced spinlet; stopping it");
        self.stop(id, then, now.at + self.timing.stop_grace, fx);
    }

    pub(super) fn backoff(&mut self, now: Instant) -> Instant {
        self.restarts += 1;
        let factor = 1u32 << self.restarts.saturating_sub(1).min(16);
        now + (self.timing.backoff_first * factor).min(self.timing.backoff_max)
    }

    pub(super) fn retry_at(&mut self, at: Instant) {
        self.retries.push(at);
        self.retries.sort();
    }

    pub(super) fn record_of(
        &self,
        id: &str,
        state: SpinletState,
        reason: Option<String>,
    ) -> Option<Spinlet> {
        self.slot(id).map(|s| self.record(s, state, reason))
    }

    pub(super) fn record(&self, s: &Slot, state: SpinletState, reason: Option<String>) -> Spinlet {
        let proc = s.phase.proc();
        Spinlet {
            id: s.id.clone(),
            app: self.name.clone(),
            release: s.target.release,
            state,
            pid: proc.map_or(0, |p| p.pid),
            host: "127.0.0.1".into(),
            port: proc.map_or(0, |p| p.port),
            started: s.started_ms,
            restarts: s.restarts,
            proc_start: proc.map_or(0, |p| p.proc_start),
            reason,
            settings: (!s.target.settings.is_empty()).then(|| s.target.settings.clone()),
        }
    }

    /// Records a start that failed (state `failed`, with the reason) for `status` and events;
    /// the record carried the event, the reason stays in the app record and the log.
    pub(super) fn failure_record(&self, release: u64, reason: &str, fx: &mut Fx) {
        let id = format!("{}-{release}-failed", self.name);
        fx.push(Effect::Record(Spinlet {
            id: id.clone(),
            app: self.name.clone(),
            release,
            state: SpinletState::Failed,
            pid: 0,
            host: "127.0.0.1".into(),
            port: 0,
            started: 0,
            restarts: self.restarts,
            proc_start: 0,
            reason: Some(reason.to_string()),
            settings: None,
        }));
        fx.push(Effect::Forget { id });
    }
}
