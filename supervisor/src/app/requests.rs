//! Requests: what the supervisor asks of an app (a definition, a deploy, a rollback, a
//! start, stop or restart, a wake, an idle check, a shutdown) and the end of the builds they
//! start. Each only changes what is *wanted*; `Machine::reconcile` then moves what runs.

use super::effect::{Answer, BuildResult, BuildSeq, Effect, Input, Now, ReplyId};
use super::machine::{Fx, Machine};
use super::state::{
    AfterStop, ExitKind, Exiting, Failure, InFlight, Phase, Pinned, Role, Waiter, Want,
};
use crate::control::Lifecycle;
use crate::release::{self, Release};
use spinforge_state::config::AppConfig;
use spinforge_state::records::SpinletState;
use std::sync::Arc;
use tokio::time::Instant;

impl Machine {
    /// While exiting, requests are answered as gone and changes ignored; what came of effects
    /// (exits, stops, build ends, ticks) is still handled. True if `input` was dealt with.
    pub(super) fn refuse_while_exiting(&mut self, input: &Input, fx: &mut Fx) -> bool {
        match input {
            Input::Rollback { reply, .. } | Input::Lifecycle { reply, .. } => {
                fx.push(Effect::Reply {
                    to: *reply,
                    answer: Answer::Gone,
                });
                true
            }
            Input::Shutdown { reply, .. } | Input::Detach { reply, .. } => {
                if let Some(e) = &mut self.exiting {
                    e.replies.push(*reply);
                }
                true
            }
            Input::Begin { .. }
            | Input::Wake
            | Input::IdleCheck { .. }
            | Input::Republish
            | Input::Update(_)
            | Input::Deploy(_) => true,
            _ => false,
        }
    }

    /// A new definition. A change of source or build settings builds (and the build's end
    /// converges); anything else converges now. An edit also revives a failed app.
    pub(super) fn update(&mut self, config: Arc<AppConfig>, fx: &mut Fx) {
        if *config == *self.config {
            return;
        }
        let rebuild = !release::same_build(&config, &self.config);
        self.define(config);
        if self.failed.is_some() && self.desired.is_some() {
            tracing::info!(app = %self.name, "the app changed: trying to start it again");
            self.failed = None;
            self.start_failures = 0;
        }
        if rebuild {
            tracing::info!(app = %self.name, "app source or build settings changed: rebuilding");
            self.request_build(fx);
        }
    }

    pub(super) fn define(&mut self, config: Arc<AppConfig>) {
        self.settings = self.key.fingerprint(&config);
        self.name = config.name.clone();
        self.config = config;
        self.config_gen += 1;
    }

    /// Asks for a build of the current definition, as a deploy or an edit does: it ends the last
    /// rollback's pin.
    pub(super) fn request_build(&mut self, fx: &mut Fx) {
        if self.pin.take().is_some() {
            fx.push(Effect::Pin(None));
        }
        self.ask_build(false, fx);
    }

    /// Asks for a build (`check`: see [`InFlight::check`]); the one in flight, if any, is
    /// cancelled (its end comes and is ignored).
    pub(super) fn ask_build(&mut self, check: bool, fx: &mut Fx) {
        self.build_seq += 1;
        let seq = self.build_seq;
        let previous = self.build.replace(InFlight {
            seq,
            check,
            config_gen: self.config_gen,
        });
        if let Some(previous) = previous {
            fx.push(Effect::CancelBuild { seq: previous.seq });
        }
        fx.push(Effect::Build {
            seq,
            config: self.config.clone(),
        });
    }

    pub(super) fn wake(&mut self, now: Now) {
        self.want = Want::Awake;
        if let Some(f) = &self.failed {
            if self.desired.is_some() && now.at >= f.since + self.timing.failed_retry {
                self.failed = None;
                self.start_failures = 0;
            } else {
                tracing::debug!(app = %self.name, reason = %f.reason, "wake ignored: the app has failed");
            }
        }
    }

    pub(super) fn idle_check(&mut self, last_access_ms: Option<u64>, now: Now) {
        let Some(idle) = self.config.idle_timeout else {
            return;
        };
        if self.want != Want::Awake || self.rollout.is_some() {
            return;
        }
        let Some(newest_start) = self.serving_running().map(|s| s.started_ms).max() else {
            return;
        };
        let last = last_access_ms.unwrap_or(0).max(newest_start);
        let idle_for = now.wall_ms.saturating_sub(last);
        // The edges' numbers may be up to one flush old.
        let limit = idle + spinforge_state::ACTIVITY_FLUSH_INTERVAL;
        if idle_for >= limit.as_millis() as u64 {
            tracing::info!(app = %self.name, idle_ms = idle_for, "stopping idle spinlets");
            self.want = Want::Asleep;
        }
    }

    pub(super) fn republish(&mut self, fx: &mut Fx) {
        self.published_upstreams = None;
        self.published_view = None;
        for s in &self.slots {
            if s.role == Role::Serving && s.phase.is_running() {
                fx.push(Effect::Record(self.record(s, SpinletState::Running, None)));
            }
        }
    }

    pub(super) fn rollback(
        &mut self,
        wanted: Option<u64>,
        releases: Vec<Release>,
        reply: ReplyId,
        fx: &mut Fx,
    ) {
        let current = self.desired.as_ref().map(|r| r.info.number);
        let numbers: Vec<u64> = releases.iter().map(|r| r.info.number).collect();
        // The same choice pruning spares (`release::prunable`).
        let number = wanted.or_else(|| release::previous(&numbers, current));
        let Some(target) = releases.into_iter().find(|r| Some(r.info.number) == number) else {
            let answer = match wanted {
                Some(n) => Answer::UnknownRelease(n),
                None => Answer::Refused(format!(
                    "app `{}` has no release before the current one",
                    self.name
                )),
            };
            fx.push(Effect::Reply { to: reply, answer });
            return;
        };
        let number = target.info.number;
        tracing::info!(app = %self.name, release = number, "rolling back");
        let pinned = Pinned {
            release: target.clone(),
            definition: release::build_definition(&self.config),
        };
        fx.push(Effect::Pin(Some(pinned.on_disk())));
        self.pin = Some(pinned);
        self.desired = Some(target);
        self.wait_for_change(reply, Some(number));
    }

    pub(super) fn lifecycle(&mut self, action: Lifecycle, reply: ReplyId, fx: &mut Fx) {
        if self.desired.is_none() {
            fx.push(Effect::Reply {
                to: reply,
                answer: Answer::Refused(format!(
                    "app `{}` has no release yet: deploy it first",
                    self.name
                )),
            });
            return;
        }
        match action {
            // Answered at once; the spinlets' progress shows in the app's state.
            Lifecycle::Start => {
                self.want = Want::Awake;
                self.failed = None;
                self.start_failures = 0;
                // Asked for now: crashed ones do not wait out their backoff.
                self.retries.clear();
                fx.push(Effect::Reply {
                    to: reply,
                    answer: Answer::Ok,
                });
            }
            Lifecycle::Stop => {
                tracing::info!(app = %self.name, "stopping through the admin API");
                self.want = Want::Asleep;
                self.failed = None;
                self.stop_waiters.push(reply);
            }
            Lifecycle::Restart => {
                self.generation += 1;
                self.wait_for_change(reply, None);
            }
        }
    }

    /// Someone waits until the app serves what is wanted now: a new request, tried afresh.
    pub(super) fn wait_for_change(&mut self, reply: ReplyId, release: Option<u64>) {
        self.stamp += 1;
        self.refused = None;
        self.failed = None;
        self.start_failures = 0;
        self.waiters.push(Waiter {
            reply,
            stamp: self.stamp,
            release,
        });
    }

    /// Shutdown (stop everything) or detach (leave the serving spinlets running for the next
    /// supervisor). Either way builds are cancelled and the rest is stopped by `deadline`;
    /// nothing is dropped unseen, draining spinlets included.
    pub(super) fn exit(&mut self, kind: ExitKind, deadline: Instant, reply: ReplyId, fx: &mut Fx) {
        if let Some(build) = self.build.take() {
            fx.push(Effect::CancelBuild { seq: build.seq });
        }
        for w in std::mem::take(&mut self.waiters) {
            fx.push(Effect::Reply {
                to: w.reply,
                answer: Answer::Gone,
            });
        }
        for r in std::mem::take(&mut self.stop_waiters) {
            fx.push(Effect::Reply {
                to: r,
                answer: Answer::Gone,
            });
        }
        self.rollout = None;
        self.retries.clear();
        if let ExitKind::Shutdown { forget: true } = kind {
            fx.push(Effect::Unpublish);
        }
        let detach = matches!(kind, ExitKind::Detach);
        let ids: Vec<String> = self.slots.iter().map(|s| s.id.clone()).collect();
        for id in ids {
            let Some(s) = self.slot(&id) else { continue };
            if detach && s.role == Role::Serving && s.phase.is_running() {
                continue; // Its record stays `running`: the next supervisor adopts it.
            }
            if let Phase::Draining { .. } = s.phase {
                tracing::info!(app = %self.name, spinlet = %id, "stopping a draining spinlet before its drain ended: the supervisor is going away");
            }
            self.stop(&id, AfterStop::Forget, deadline, fx);
        }
        if detach {
            tracing::info!(app = %self.name, spinlets = self.serving_running().count(), "leaving spinlets running");
        }
        self.exiting = Some(Exiting {
            kind,
            deadline,
            replies: vec![reply],
        });
    }

    /// The release the last rollback holds, if `build`'s end leaves it serving: only a starting
    /// supervisor's check build under the definition the rollback was made under does (a deploy
    /// or source edit dropped the pin when it asked for its build). Any other ends the pin.
    fn held_after(&mut self, build: &InFlight, fx: &mut Fx) -> Option<Release> {
        let pin = self.pin.as_ref()?;
        if build.check && pin.definition == release::build_definition(&self.config) {
            return Some(pin.release.clone());
        }
        self.pin = None;
        fx.push(Effect::Pin(None));
        None
    }

    pub(super) fn build_ended(
        &mut self,
        seq: BuildSeq,
        result: BuildResult,
        now: Now,
        fx: &mut Fx,
    ) {
        let Some(build) = self.build.take_if(|b| b.seq == seq) else {
            tracing::debug!(app = %self.name, seq, "a replaced build ended");
            return;
        };
        fx.force_view = true;
        match result {
            BuildResult::Built { release, .. } => {
                let held = self.held_after(&build, fx);
                if let Some(held) = &held {
                    tracing::info!(app = %self.name, release = held.info.number, built = release.info.number, "keeping the release the last rollback chose until the next deploy or source edit");
                }
                // Asked for anew: a target refused before is tried again, a failed app too.
                self.desired = Some(held.unwrap_or(*release));
                self.refused = None;
                self.failed = None;
                self.start_failures = 0;
                fx.push(Effect::Prune {
                    serving: self.desired.as_ref().map(|r| r.info.number),
                    in_use: self.releases_in_use(),
                });
            }
            BuildResult::Failed { error, .. } if self.desired.is_some() => {
                let serving = self.desired.as_ref().map_or(0, |r| r.info.number);
                // Only the source part of the edit failed: the rest of it converges now.
                tracing::error!(app = %self.name, error = %error, release = serving, "build failed; the running release keeps serving");
            }
            BuildResult::Failed {
                error,
                fallback: Some(previous),
            } => {
                // A failed build changes nothing that serves: the newest release built before
                // goes on.
                tracing::error!(app = %self.name, error = %error, release = previous.info.number, "build failed; serving the previous release");
                self.desired = Some(*previous);
            }
            BuildResult::Failed {
                error,
                fallback: None,
            } => {
                tracing::error!(app = %self.name, error = %error, "build failed; the app will answer 503");
                self.failed = Some(Failure {
                    reason: error,
                    since: now.at,
                });
            }
            BuildResult::NoSource => {}
        }
    }
}
