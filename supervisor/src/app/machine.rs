//! The app's lifecycle as a state machine. [`Machine::step`] takes one [`Input`] and the time,
//! changes the state and returns the [`Effect`]s to carry out; it never waits, so no message
//! ever queues behind a start, and a test can drive thousands of sequences through it in virtual
//! time.
//!
//! The machine is a reconciler. Requests change what is *wanted* — the definition (`config`),
//! the release to serve (`desired`), a restart (`generation`), awake or asleep (`want`) — and
//! after every input [`Machine::reconcile`] moves what *runs* one step towards it:
//!
//! - asleep: every spinlet of the app stops, and the serving set switches to the wanted target
//!   at once (nothing runs, so nobody waits for it);
//! - awake, serving another target than wanted: a rollout starts candidates beside the serving
//!   set (see `rollout.rs`), or, when nothing serves yet, the set switches and starts;
//! - awake, serving the wanted target: the set is kept at `instances` — extras drain, crashed
//!   ones restart when their backoff is over.
//!
//! Since only the latest wish is kept, edits coalesce: nothing can be dropped, only superseded.

use super::effect::{Adoptee, Answer, BuildSeq, Effect, Input, Now, ReplyId};
use super::publish::{self, AppView};
use super::state::{
    AfterStop, ExitKind, Exiting, Failure, InFlight, Phase, Pinned, Refusal, Role, Rollout,
    Serving, Slot, Target, Waiter, Want,
};
use super::timing::Timing;
use crate::release::{self, Release};
use crate::settings;
use spinforge_state::config::AppConfig;
use spinforge_state::records::{Drain, Spinlet, SpinletState};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::time::Instant;

/// Effects collected during a step.
#[derive(Debug, Default)]
pub(super) struct Fx {
    pub effects: Vec<Effect>,
    /// Write the app's record even if its view did not change (its releases may have).
    pub force_view: bool,
}

impl Fx {
    pub fn push(&mut self, e: Effect) {
        self.effects.push(e);
    }
}

#[derive(Debug)]
pub struct Machine {
    pub(super) name: String,
    pub(super) config: Arc<AppConfig>,
    /// `config`'s settings fingerprint.
    pub(super) settings: String,
    /// Counts definition changes.
    pub(super) config_gen: u64,
    pub(super) key: settings::Key,
    pub(super) timing: Timing,
    pub(super) rng: fastrand::Rng,
    /// `Begin` came: the machine knows what a previous supervisor left.
    pub(super) begun: bool,

    // --- what is wanted ---
    pub(super) want: Want,
    pub(super) desired: Option<Release>,
    /// The last rollback, while no deploy or source edit has come since.
    pub(super) pin: Option<Pinned>,
    pub(super) generation: u64,
    /// Counts requests someone waits on (see [`Waiter`]).
    pub(super) stamp: u64,
    pub(super) failed: Option<Failure>,

    // --- what runs ---
    pub(super) serving: Option<Serving>,
    pub(super) rollout: Option<Rollout>,
    pub(super) refused: Option<Refusal>,
    /// Rollouts begun and refused so far (tests watch them).
    pub(super) rollouts: u64,
    pub(super) refusals: u64,
    pub(super) slots: Vec<Slot>,
    /// When each crashed spinlet of the serving set starts again (sorted).
    pub(super) retries: Vec<Instant>,
    /// Restarts since the last stable run, for the backoff.
    pub(super) restarts: u32,
    /// Starts of the serving set that failed in a row.
    pub(super) start_failures: u32,
    pub(super) next_check: Option<Instant>,
    pub(super) build: Option<InFlight>,
    pub(super) build_seq: BuildSeq,
    pub(super) waiters: Vec<Waiter>,
    pub(super) stop_waiters: Vec<ReplyId>,
    pub(super) exiting: Option<Exiting>,

    // --- what was last written, so only changes are ---
    /// The upstreams and the drains.
    pub(super) published_upstreams: Option<(Vec<String>, Vec<Drain>)>,
    /// The serving set has been published since it was last empty.
    pub(super) shown: bool,
    pub(super) published_view: Option<AppView>,
}

impl Machine {
    /// A machine for `config`; `seed` picks spinlet ids (fixed in tests).
    pub fn new(config: Arc<AppConfig>, key: settings::Key, timing: Timing, seed: u64) -> Machine {
        let settings = key.fingerprint(&config);
        Machine {
            name: config.name.clone(),
            // Never-idle apps run from the start.
            want: if config.idle_timeout.is_none() {
                Want::Awake
            } else {
                Want::Asleep
            },
            config,
            settings,
            config_gen: 0,
            key,
            timing,
            rng: fastrand::Rng::with_seed(seed),
            begun: false,
            desired: None,
            pin: None,
            generation: 0,
            stamp: 0,
            failed: None,
            serving: None,
            rollout: None,
            refused: None,
            rollouts: 0,
            refusals: 0,
            slots: Vec::new(),
            retries: Vec::new(),
            restarts: 0,
            start_failures: 0,
            next_check: None,
            build: None,
            build_seq: 0,
            waiters: Vec::new(),
            stop_waiters: Vec::new(),
            exiting: None,
            published_upstreams: None,
            shown: false,
            published_view: None,
        }
    }

    /// Handles `input` at `now`; returns what to do, in order. The upstream write, when the
    /// set changed, comes first: no stop in the same step can reach a published spinlet.
    pub fn step(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let mut fx = Fx::default();
        self.handle(input, now, &mut fx);
        self.reconcile(now, &mut fx);
        self.finish(now, fx)
    }

    /// When the machine next needs a [`Input::Tick`]: only deadlines a tick acts on, so a tick
    /// never finds the same deadline still due.
    pub fn next_timer(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for s in &self.slots {
            match &s.phase {
                Phase::Spawning { deadline }
                | Phase::Starting { deadline, .. }
                | Phase::Stopping { deadline, .. } => consider(*deadline),
                Phase::Running {
                    probing: Some(due), ..
                } => consider(*due),
                Phase::Running { .. } => {}
                Phase::Draining { until, .. } => consider(*until),
            }
        }
        if self.can_fill()
            && let Some(first) = self.retries.first()
        {
            consider(*first);
        }
        if let Some(check) = self.next_check
            && self.exiting.is_none()
            && self.serving_running().next().is_some()
        {
            consider(check);
        }
        if let Some(e) = &self.exiting {
            consider(e.deadline + self.timing.slack);
        }
        at
    }

    /// The addresses the app publishes: its serving set's running spinlets, and nothing else.
    pub fn upstreams(&self) -> Vec<String> {
        // A cold set shows once every spinlet started with it has answered (or failed): the
        // first requests after a wake meet all `instances`.
        let starting = self
            .slots
            .iter()
            .any(|s| s.role == Role::Serving && s.phase.is_starting());
        if !self.shown && starting {
            return Vec::new();
        }
        let mut out: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Serving)
            .filter_map(|s| match &s.phase {
                Phase::Running { proc, .. } => Some(proc.addr()),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// The spinlets that drain, as the edges are told: each ends its streams at `close_at_ms`.
    pub fn drains(&self) -> Vec<Drain> {
        let mut out: Vec<Drain> = self
            .slots
            .iter()
            .filter_map(|s| match &s.phase {
                Phase::Draining {
                    proc, close_at_ms, ..
                } => Some(Drain {
                    spinlet: s.id.clone(),
                    addr: proc.addr(),
                    close_at_ms: *close_at_ms,
                }),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// True when nothing is in flight: no build, rollout, start, stop, drain or pending restart.
    pub fn is_settled(&self) -> bool {
        self.build.is_none()
            && self.rollout.is_none()
            && self.slots.iter().all(|s| s.phase.is_running())
            && (self.retries.is_empty() || !self.can_fill())
            && self.waiters.is_empty()
            && self.stop_waiters.is_empty()
    }

    /// Whether the driver should read the app's log for this spinlet's exit (it is news).
    pub fn cares_about_exit(&self, id: &str) -> bool {
        self.slot(id)
            .is_some_and(|s| s.phase.is_live() && self.exiting.is_none())
    }

    /// The state shown in the app's record.
    pub fn state_name(&self) -> &'static str {
        match (&self.failed, &self.serving, self.want) {
            (Some(_), _, _) => "failed",
            (None, None, _) => "waiting",
            (None, Some(_), Want::Awake) => "running",
            (None, Some(_), Want::Asleep) => "idle",
        }
    }

    pub(super) fn handle(&mut self, input: Input, now: Now, fx: &mut Fx) {
        if self.exiting.is_some() && self.refuse_while_exiting(&input, fx) {
            return;
        }
        match input {
            Input::Begin {
                adopted,
                releases,
                pin,
            } => self.begin(adopted, releases, pin, now, fx),
            Input::Wake => self.wake(now),
            Input::IdleCheck { last_access_ms } => self.idle_check(last_access_ms, now),
            Input::Republish => self.republish(fx),
            Input::Update(config) => self.update(config, fx),
            Input::Deploy(config) => {
                self.define(config);
                self.request_build(fx);
            }
            Input::Rollback {
                release,
                releases,
                reply,
            } => self.rollback(release, releases, reply, fx),
            Input::Lifecycle { action, reply } => self.lifecycle(action, reply, fx),
            Input::Shutdown {
                deadline,
                forget,
                reply,
            } => self.exit(ExitKind::Shutdown { forget }, deadline, reply, fx),
            Input::Detach { deadline, reply } => self.exit(ExitKind::Detach, deadline, reply, fx),
            Input::Spawned { id, proc } => self.spawned(&id, proc, now, fx),
            Input::SpawnFailed { id, reason } => self.start_failed(&id, reason, now, fx),
            Input::Healthy { id } => self.healthy(&id, now, fx),
            Input::StartFailed { id, reason } => self.start_failed(&id, reason, now, fx),
            Input::Exited { id, status, tail } => self.exited(&id, &status, &tail, now, fx),
            Input::Probed { id, result } => self.probed(&id, result, now, fx),
            Input::Stopped { id } => self.stopped(&id, fx),
            Input::Drained { id, idle } => self.drained(&id, idle, now, fx),
            Input::BuildEnded { seq, result } => self.build_ended(seq, result, now, fx),
            Input::Tick => self.tick(now, fx),
        }
    }

    /// Moves what runs one step towards what is wanted (see the module's documentation).
    pub(super) fn reconcile(&mut self, now: Now, fx: &mut Fx) {
        if self.exiting.is_some() || !self.begun {
            return;
        }
        let (Some(desired), Some(target)) = (self.desired.clone(), self.target()) else {
            return;
        };
        if self.want == Want::Asleep {
            self.abort_rollout(now, fx);
            self.stop_serving(now, fx);
            self.retries.clear();
            // Nothing runs: the wanted target serves from the next wake on.
            self.serving = Some(Serving {
                target,
                release: desired,
                config: self.config.clone(),
                stamp: self.stamp,
            });
            return;
        }
        // Fewer instances apply at once, even mid-rollout: never more serve than asked for.
        self.trim(now, fx);
        if self.failed.is_some() || self.rollout.is_some() {
            return;
        }
        // Every member too: a set adopted with other settings may have been topped up with
        // the then current ones.
        let serves_target = self.serving.as_ref().is_some_and(|s| s.target == target)
            && self
                .slots
                .iter()
                .filter(|s| s.role == Role::Serving && s.phase.is_live())
                .all(|s| s.target == target);
        if serves_target {
            if let Some(s) = &mut self.serving {
                s.stamp = self.stamp;
                // Same settings: restarts start with the newest definition (an adopted set's
                // was only a guess).
                s.config = self.config.clone();
            }
        } else if !self.held(&target) {
            if self.serving_running().next().is_some() {
                return self.begin_rollout(target, desired, now, fx);
            }
            // Nothing serves: nobody to keep waiting. Switch, and start.
            let starting: Vec<String> = self
                .slots
                .iter()
                .filter(|s| s.role == Role::Serving && s.phase.is_live())
                .map(|s| s.id.clone())
                .collect();
            for id in starting {
                self.stop(&id, AfterStop::Forget, now.at + self.timing.stop_grace, fx);
            }
            self.retries.clear();
            self.serving = Some(Serving {
                target,
                release: desired,
                config: self.config.clone(),
                stamp: self.stamp,
            });
        }
        self.fill(now, fx);
    }

    /// What is wanted: the desired release with the current settings and generation.
    pub(super) fn target(&self) -> Option<Target> {
        self.desired.as_ref().map(|d| Target {
            release: d.info.number,
            settings: self.settings.clone(),
            generation: self.generation,
        })
    }

    /// Whether a rollout to `target` waits: it was refused (until asked for anew), or only its
    /// settings differ while the build asked for with them runs (one rollout with both).
    pub(super) fn held(&self, target: &Target) -> bool {
        if self.refusal_holds(target) {
            return true;
        }
        let Some(s) = &self.serving else { return false };
        let settings_only =
            s.target.release == target.release && s.target.generation == target.generation;
        settings_only
            && self
                .build
                .as_ref()
                .is_some_and(|b| b.config_gen == self.config_gen)
    }

    /// A refused target is not tried again while the set it was refused for serves; once
    /// nothing of it runs, there is nothing to keep, and what is wanted is tried.
    pub(super) fn refusal_holds(&self, target: &Target) -> bool {
        self.refused.as_ref().is_some_and(|r| r.target == *target)
            && self.serving_running().next().is_some()
    }

    /// Whether the serving set may be topped up now.
    pub(super) fn can_fill(&self) -> bool {
        self.want == Want::Awake
            && self.failed.is_none()
            && self.exiting.is_none()
            && self.rollout.is_none()
            && self.serving.is_some()
    }

    /// `instances` spinlets in the serving set: extras go (starting ones first, running ones
    /// drain), missing ones start — those that crashed once their backoff is over, the others
    /// now. An edit does not cut a backoff short.
    pub(super) fn fill(&mut self, now: Now, fx: &mut Fx) {
        if !self.can_fill() {
            return;
        }
        let Some(serving) = self.serving.clone() else {
            return;
        };
        self.trim(now, fx);
        let wanted = self.config.instances as usize;
        let members = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Serving && s.phase.is_live())
            .count();
        let missing = wanted.saturating_sub(members);
        // Crashed ones beyond the count are not restarted.
        self.retries.truncate(missing);
        let due = self.retries.iter().filter(|t| **t <= now.at).count();
        self.retries.drain(..due);
        let start = missing - self.retries.len();
        for _ in 0..start {
            self.spawn(
                Role::Serving,
                &serving.target,
                &serving.release,
                &serving.config,
                now,
                fx,
            );
        }
    }

    /// Extras of the serving set go: starting ones first, then running ones (they drain).
    pub(super) fn trim(&mut self, now: Now, fx: &mut Fx) {
        let wanted = self.config.instances as usize;
        let mut members: Vec<(String, bool)> = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Serving && s.phase.is_live())
            .map(|s| (s.id.clone(), s.phase.is_running()))
            .collect();
        if members.len() <= wanted {
            return;
        }
        members.sort_by_key(|(_, running)| *running);
        for (id, running) in members.drain(..members.len() - wanted) {
            if running {
                let then = AfterStop::Record(SpinletState::Stopped, None);
                self.drain(&id, then, now, fx);
            } else {
                self.stop(&id, AfterStop::Forget, now.at + self.timing.stop_grace, fx);
            }
        }
    }

    /// Stops the serving set (the app goes to sleep): out of routing first (the upstream write
    /// leads the step's effects); running ones drain, recorded `stopping`, then `stopped`.
    pub(super) fn stop_serving(&mut self, now: Now, fx: &mut Fx) {
        let members: Vec<(String, bool)> = self
            .slots
            .iter()
            .filter(|s| s.role == Role::Serving && s.phase.is_live())
            .map(|s| (s.id.clone(), s.phase.is_running()))
            .collect();
        let kill_at = now.at + self.timing.stop_grace;
        for (id, running) in members {
            if running {
                let then = AfterStop::Record(SpinletState::Stopped, None);
                self.drain(&id, then, now, fx);
            } else {
                self.stop(&id, AfterStop::Forget, kill_at, fx);
            }
        }
    }

    pub(super) fn finish(&mut self, now: Now, fx: Fx) -> Vec<Effect> {
        let mut out = Vec::with_capacity(fx.effects.len() + 2);
        let forgotten = matches!(
            self.exiting,
            Some(Exiting {
                kind: ExitKind::Shutdown { forget: true },
                ..
            })
        );
        if !forgotten && self.begun {
            let ups = (self.upstreams(), self.drains());
            self.shown = !ups.0.is_empty();
            if self.published_upstreams.as_ref() != Some(&ups) {
                self.published_upstreams = Some(ups.clone());
                let (addrs, drains) = ups;
                out.push(Effect::Upstreams { addrs, drains });
            }
        }
        out.extend(fx.effects);
        if self.exiting.is_none() && self.begun {
            let reason = self.failed.as_ref().map(|f| f.reason.clone());
            let view = publish::view(
                &self.config,
                self.serving.as_ref().map(|s| &s.release),
                self.state_name(),
                reason,
            );
            if fx.force_view || self.published_view.as_ref() != Some(&view) {
                self.published_view = Some(view.clone());
                out.push(Effect::Publish(view));
            }
        }
        self.answer_waiters(&mut out);
        if let Some(e) = &self.exiting {
            let done = match e.kind {
                ExitKind::Shutdown { .. } => self.slots.is_empty(),
                ExitKind::Detach => self
                    .slots
                    .iter()
                    .all(|s| s.role == Role::Serving && s.phase.is_running()),
            };
            if done || now.at >= e.deadline + self.timing.slack {
                let replies = self
                    .exiting
                    .as_mut()
                    .map(|e| std::mem::take(&mut e.replies))
                    .unwrap_or_default();
                out.push(Effect::Done { replies });
            }
        }
        out
    }

    /// Answers those waiting for the app to serve what they asked for, once it does (or, for a
    /// stop, once nothing runs).
    pub(super) fn answer_waiters(&mut self, out: &mut Vec<Effect>) {
        if self.exiting.is_some() {
            return;
        }
        let settled = match self.want {
            Want::Asleep => true,
            Want::Awake => {
                self.rollout.is_none()
                    && self.serving_running().next().is_some()
                    && !self
                        .slots
                        .iter()
                        .any(|s| s.role == Role::Serving && s.phase.is_starting())
            }
        };
        if settled {
            let serving = self.serving.as_ref().map(|s| s.release.info.number);
            let answered = self.take_waiters(|w, serving| w.stamp <= serving);
            for w in answered {
                let answer = match (w.release, serving) {
                    // A rollback another request overtook: say so, not that it serves.
                    (Some(asked), Some(serves)) if asked != serves => Answer::Refused(format!(
                        "release {serves} serves: it was asked for after release {asked}"
                    )),
                    (Some(asked), _) => Answer::Release(asked),
                    (None, _) => Answer::Ok,
                };
                out.push(Effect::Reply {
                    to: w.reply,
                    answer,
                });
            }
        }
        // What is wanted was refused after they asked: it will not serve until asked anew.
        if self.rollout.is_none()
            && let Some(r) = &self.refused
            && self.target().is_some_and(|t| self.refusal_holds(&t))
        {
            for w in std::mem::take(&mut self.waiters) {
                out.push(Effect::Reply {
                    to: w.reply,
                    answer: Answer::Refused(r.reason.clone()),
                });
            }
        }
        let stopped = self.want == Want::Awake
            || !self
                .slots
                .iter()
                .any(|s| s.role == Role::Serving && !matches!(s.phase, Phase::Draining { .. }));
        if stopped {
            for r in std::mem::take(&mut self.stop_waiters) {
                out.push(Effect::Reply {
                    to: r,
                    answer: Answer::Ok,
                });
            }
        }
    }

    /// Removes and returns the waiters `pick` chooses, given the serving set's stamp.
    pub(super) fn take_waiters(&mut self, pick: impl Fn(&Waiter, u64) -> bool) -> Vec<Waiter> {
        let Some(stamp) = self.serving.as_ref().map(|s| s.stamp) else {
            return Vec::new();
        };
        let (taken, kept) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| pick(w, stamp));
        self.waiters = kept;
        taken
    }

    pub(super) fn slot(&self, id: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id == id)
    }

    pub(super) fn slot_mut(&mut self, id: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    pub(super) fn remove(&mut self, id: &str) {
        self.slots.retain(|s| s.id != id);
    }

    /// The serving set's running spinlets.
    pub(super) fn serving_running(&self) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .filter(|s| s.role == Role::Serving && s.phase.is_running())
    }

    /// Releases spinlets run or will run, and the wanted one: pruning spares them.
    pub(super) fn releases_in_use(&self) -> BTreeSet<u64> {
        let mut used: BTreeSet<u64> = self.slots.iter().map(|s| s.target.release).collect();
        used.extend(self.serving.as_ref().map(|s| s.release.info.number));
        used.extend(self.rollout.as_ref().map(|r| r.release.info.number));
        used.extend(self.desired.as_ref().map(|r| r.info.number));
        used
    }

    /// The task starts: spinlets a previous supervisor left are taken over (see `adopt.rs`),
    /// then a check build makes what runs match the definition (it reuses the release when the
    /// source is unchanged, and adopted spinlets may predate an edit) — or, while the last
    /// rollback's `pin` holds, keeps the release it chose.
    pub(super) fn begin(
        &mut self,
        adopted: Vec<Adoptee>,
        releases: Vec<Release>,
        pin: Option<release::Pin>,
        now: Now,
        fx: &mut Fx,
    ) {
        if self.begun {
            return;
        }
        self.begun = true;
        if let Some(pin) = pin {
            match releases.iter().find(|r| r.info.number == pin.release) {
                Some(r) => {
                    self.pin = Some(Pinned {
                        release: r.clone(),
                        definition: pin.definition,
                    })
                }
                None => {
                    tracing::warn!(app = %self.name, release = pin.release, "the release the last rollback chose is gone: forgetting the rollback");
                    fx.push(Effect::Pin(None));
                }
            }
        }
        self.adopt(adopted, &releases, now, fx);
        self.ask_build(true, fx);
    }

    pub(super) fn push_slot(&mut self, slot: Slot) {
        self.slots.push(slot);
    }
}

impl Fx {
    pub(super) fn extend_record(&mut self, record: Option<Spinlet>) {
        if let Some(r) = record {
            self.push(Effect::Record(r));
        }
    }
}
