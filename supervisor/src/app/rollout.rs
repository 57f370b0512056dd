//! Rollouts: a change of release, of settings, or a restart, with no downtime. `instances`
//! candidates start beside the serving set; once *all* are healthy the upstreams flip to them
//! in one write and the old ones drain; if any fails, all candidates stop and the serving set
//! serves on — an automatic rollback. One rollout at a time: a change asked for meanwhile is
//! rolled out after it (only the latest one: changes coalesce).

use super::effect::{Answer, Effect, Now};
use super::machine::{Fx, Machine};
use super::state::{AfterStop, Phase, Refusal, Role, Rollout, Serving, Target};
use crate::release::Release;
use spinforge_state::records::SpinletState;

impl Machine {
    pub(super) fn begin_rollout(
        &mut self,
        target: Target,
        release: Release,
        now: Now,
        fx: &mut Fx,
    ) {
        let number = release.info.number;
        match &self.serving {
            Some(s) if s.target.release != number => {
                tracing::info!(app = %self.name, release = number, "deploying")
            }
            Some(s) if s.target.settings != target.settings => {
                let stale = self.serving_running().count();
                tracing::info!(app = %self.name, release = number, spinlets = stale, "app settings changed: replacing its spinlets")
            }
            _ => {
                tracing::info!(app = %self.name, release = number, "restarting the app's spinlets")
            }
        }
        let config = self.config.clone();
        for _ in 0..config.instances {
            self.spawn(Role::Candidate, &target, &release, &config, now, fx);
        }
        self.rollouts += 1;
        self.rollout = Some(Rollout {
            target,
            release,
            config,
            stamp: self.stamp,
        });
        self.rollout_progress(now, fx);
    }

    /// Flips once every candidate is healthy.
    pub(super) fn rollout_progress(&mut self, now: Now, fx: &mut Fx) {
        if self.rollout.is_none() {
            return;
        }
        let ready = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Candidate && !matches!(s.phase, Phase::Stopping { .. }))
            .all(|s| s.phase.is_running());
        if ready {
            self.flip(now, fx);
        }
    }

    /// The candidates become the serving set (the upstream write that leads this step's
    /// effects makes the edges go from the old set straight to the new one); the old set drains.
    fn flip(&mut self, now: Now, fx: &mut Fx) {
        let Some(r) = self.rollout.take() else { return };
        let old: Vec<(String, bool)> = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Serving && s.phase.is_live())
            .map(|s| (s.id.clone(), s.phase.is_running()))
            .collect();
        let replaced = old.iter().filter(|(_, running)| *running).count();
        for (id, running) in old {
            if running {
                let then = AfterStop::Record(SpinletState::Stopped, None);
                self.drain(&id, then, now, fx);
            } else {
                self.stop(&id, AfterStop::Forget, now.at + self.timing.stop_grace, fx);
            }
        }
        for s in &mut self.slots {
            if s.role == Role::Candidate && s.phase.is_running() {
                s.role = Role::Serving;
            }
        }
        let number = r.release.info.number;
        self.serving = Some(Serving {
            target: r.target,
            release: r.release,
            config: r.config,
            stamp: r.stamp,
        });
        self.retries.clear();
        self.start_failures = 0;
        self.failed = None;
        self.next_check
            .get_or_insert(now.at + self.timing.check_every);
        tracing::info!(app = %self.name, release = number, replaced, "release live; draining the previous spinlets");
    }

    /// A candidate failed (`cause`): all candidates stop, the serving set serves on, and the
    /// target is not tried again until asked for anew.
    pub(super) fn refuse(&mut self, cause: &str, reason: &str, now: Now, fx: &mut Fx) {
        let Some(r) = self.rollout.take() else { return };
        self.stop_candidates(now, fx);
        let number = r.release.info.number;
        let serving = self.serving.as_ref().map_or(0, |s| s.release.info.number);
        tracing::error!(app = %self.name, release = number, %reason, serving, "the new release did not get healthy: rolled back, the running release keeps serving");
        self.failure_record(number, reason, fx);
        let message = format!(
            "release {number} did not get healthy, so release {serving} keeps serving: {reason}"
        );
        for w in std::mem::take(&mut self.waiters) {
            if w.stamp <= r.stamp {
                fx.push(Effect::Reply {
                    to: w.reply,
                    answer: Answer::Refused(message.clone()),
                });
            } else {
                self.waiters.push(w);
            }
        }
        // An automatic rollback: unless something newer was asked for meanwhile, the release
        // that serves is the wanted one again (a restart or rollback then starts from it).
        if let Some(s) = &self.serving
            && self.desired.as_ref().map(|d| d.info.number) == Some(number)
        {
            self.desired = Some(s.release.clone());
        }
        self.refusals += 1;
        self.refused = Some(Refusal {
            target: r.target,
            cause: cause.to_string(),
            reason: message,
        });
    }

    /// The app goes to sleep or away mid-rollout: its candidates stop, unrefused (the wanted
    /// target is switched to without them).
    pub(super) fn abort_rollout(&mut self, now: Now, fx: &mut Fx) {
        if self.rollout.take().is_some() {
            self.stop_candidates(now, fx);
        }
    }

    fn stop_candidates(&mut self, now: Now, fx: &mut Fx) {
        let kill_at = now.at + self.timing.stop_grace;
        let ids: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Candidate && !matches!(s.phase, Phase::Stopping { .. }))
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.stop(&id, AfterStop::Forget, kill_at, fx);
        }
    }
}
