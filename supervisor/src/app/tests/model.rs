//! The model-based test: random sequences of what users and the world do to an app — deploys
//! (good, failing, broken), env and source edits, rescales, domain edits, rollbacks, restarts,
//! stops, starts, wakes, idle periods, crashes, health failures, supervisor restarts (graceful
//! and killed), store resyncs — against the machine in a simulated world ([`World`]), in
//! virtual time. The world checks its invariants after every effect; once the sequence is over
//! and faults stop, the app must settle in bounded time into the last requested state.
//!
//! `SPINFORGE_MODEL_CASES` sets the number of sequences (default [`CASES`], a few seconds).

use super::world::{self, Plan, Truth, World};
use crate::app::effect::{Answer, Input};
use crate::app::state::Want;
use crate::control::Lifecycle;
use crate::release;
use proptest::prelude::*;
use spinforge_state::config::{AppConfig, EnvValue};
use std::sync::Arc;
use std::time::Duration;

/// Sequences per run by default.
pub const CASES: u32 = 2000;

#[derive(Debug, Clone)]
pub enum Op {
    /// A deploy through the API of source `n` (its plan decided the first time it is built).
    Deploy {
        source: u8,
        plan: (bool, bool),
    },
    /// A config edit of the source.
    EditSource {
        source: u8,
        plan: (bool, bool),
    },
    /// A config edit of the env (`3`: a value the app cannot start with).
    EditEnv(u8),
    EditInstances(u8),
    EditDomains(bool),
    Rollback(Option<u8>),
    Restart,
    Stop,
    Start,
    Wake,
    /// No request for longer than the idle timeout, then an idle check.
    Idle,
    Crash(u8),
    Sicken(u8),
    SupervisorRestart {
        graceful: bool,
    },
    Republish,
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let plan = (prop::bool::weighted(0.15), prop::bool::weighted(0.15));
    prop_oneof![
        4 => (0u8..5, plan).prop_map(|(source, plan)| Op::Deploy { source, plan }),
        2 => (0u8..5, plan).prop_map(|(source, plan)| Op::EditSource { source, plan }),
        3 => (0u8..4).prop_map(Op::EditEnv),
        2 => (1u8..=3).prop_map(Op::EditInstances),
        1 => any::<bool>().prop_map(Op::EditDomains),
        2 => prop::option::of(1u8..8).prop_map(Op::Rollback),
        2 => Just(Op::Restart),
        1 => Just(Op::Stop),
        2 => Just(Op::Start),
        2 => Just(Op::Wake),
        1 => Just(Op::Idle),
        3 => any::<u8>().prop_map(Op::Crash),
        2 => any::<u8>().prop_map(Op::Sicken),
        1 => any::<bool>().prop_map(|graceful| Op::SupervisorRestart { graceful }),
        1 => Just(Op::Republish),
        3 => (0u16..8000).prop_map(Op::Wait),
    ]
}

/// What was asked, to be checked when it is answered.
#[derive(Debug)]
enum Asked {
    Restart { at: tokio::time::Instant },
    Rollback { release: u64 },
    Other,
}

struct Case {
    w: World,
    asked: Vec<(u64, Asked)>,
}

impl Case {
    fn new(seed: u64) -> Case {
        let mut w = World::new(world::config(), seed);
        w.faults = true;
        w.begin();
        Case {
            w,
            asked: Vec::new(),
        }
    }

    fn edit(&mut self, change: impl FnOnce(&mut AppConfig)) {
        let mut config = (*self.w.m.config).clone();
        change(&mut config);
        self.w.step(Input::Update(Arc::new(config)));
    }

    fn pick(&self, k: u8, sick: bool) -> Option<String> {
        let candidates: Vec<&world::Proc> = self
            .w
            .procs
            .values()
            .filter(|p| match sick {
                true => matches!(p.truth, Truth::Starting | Truth::Healthy),
                false => p.alive(),
            })
            .collect();
        (!candidates.is_empty()).then(|| candidates[k as usize % candidates.len()].id.clone())
    }

    fn plan(&mut self, source: u8, (fails, broken): (bool, bool)) {
        self.w
            .plans
            .entry(world::source(source).to_string())
            .or_insert(Plan { fails, broken });
    }

    fn run(&mut self, op: &Op) {
        let w = &mut self.w;
        w.trace.push(format!("{:?} op {op:?}", w.elapsed()));
        match op {
            Op::Deploy { source, plan } => {
                self.plan(*source, *plan);
                let mut config = (*self.w.m.config).clone();
                config.source = world::source(*source);
                self.w.model.pin = None;
                self.w.step(Input::Deploy(Arc::new(config)));
            }
            Op::EditSource { source, plan } => {
                self.plan(*source, *plan);
                let src = world::source(*source);
                if src != self.w.m.config.source {
                    self.w.model.pin = None;
                }
                self.edit(|c| c.source = src);
            }
            Op::EditEnv(n) => {
                let value = ["a", "b", "c", "broken"][*n as usize % 4];
                self.w.model.mode = value.to_string();
                self.edit(|c| {
                    c.env.insert(world::MODE.into(), EnvValue::new(value));
                });
            }
            Op::EditInstances(n) => self.edit(|c| c.instances = u32::from(*n)),
            Op::EditDomains(two) => self.edit(|c| {
                c.domains = if *two {
                    vec!["shop.test".into(), "www.shop.test".into()]
                } else {
                    vec!["shop.test".into()]
                }
            }),
            Op::Rollback(wanted) => {
                let numbers: Vec<u64> = w.releases.iter().map(|r| r.info.number).collect();
                let wanted = wanted.map(u64::from);
                let target = wanted.or_else(|| release::previous(&numbers, w.model.release));
                let exists = target.filter(|n| numbers.contains(n));
                if let Some(n) = exists {
                    w.model.release = Some(n);
                    w.model.pin = Some((n, w.m.config.source.to_string()));
                }
                let reply = w.reply_id();
                let releases = w.releases.clone();
                w.step(Input::Rollback {
                    release: wanted,
                    releases,
                    reply,
                });
                let asked = match exists {
                    Some(release) => Asked::Rollback { release },
                    None => {
                        assert!(
                            matches!(
                                w.answer(reply),
                                Some(Answer::UnknownRelease(_) | Answer::Refused(_))
                            ),
                            "a rollback to no release is refused at once"
                        );
                        Asked::Other
                    }
                };
                self.asked.push((reply, asked));
            }
            Op::Restart | Op::Stop | Op::Start => {
                let action = match op {
                    Op::Restart => Lifecycle::Restart,
                    Op::Stop => Lifecycle::Stop,
                    _ => Lifecycle::Start,
                };
                let has_release = w.model.release.is_some();
                match action {
                    Lifecycle::Stop if has_release => w.model.awake = false,
                    Lifecycle::Start if has_release => w.model.awake = true,
                    Lifecycle::Restart if has_release => w.model.restart_at = Some(w.now.at),
                    _ => {}
                }
                let reply = w.reply_id();
                if action == Lifecycle::Restart && has_release {
                    w.model.restart_reply = Some(reply);
                }
                w.step(Input::Lifecycle { action, reply });
                if !has_release {
                    assert!(matches!(w.answer(reply), Some(Answer::Refused(_))));
                }
                let asked = match action {
                    Lifecycle::Restart if has_release => Asked::Restart { at: w.now.at },
                    _ => Asked::Other,
                };
                self.asked.push((reply, asked));
            }
            Op::Wake => {
                w.model.awake = true;
                w.step(Input::Wake);
            }
            Op::Idle => {
                let idle = w.m.config.idle_timeout.unwrap_or_default();
                w.run_for(idle + Duration::from_secs(2));
                // Idle: awake, not mid-rollout, and its newest running spinlet (nothing was
                // accessed) older than the timeout plus one activity flush.
                let newest = w.m.serving_running().map(|s| s.started_ms).max();
                let limit = idle + spinforge_state::ACTIVITY_FLUSH_INTERVAL;
                let idle_now = w.m.want == Want::Awake
                    && w.m.rollout.is_none()
                    && newest.is_some_and(|t| w.now.wall_ms - t >= limit.as_millis() as u64);
                if idle_now {
                    w.model.awake = false;
                }
                w.step(Input::IdleCheck {
                    last_access_ms: None,
                });
            }
            Op::Crash(k) => {
                if let Some(id) = self.pick(*k, false) {
                    self.w.crash(&id);
                }
            }
            Op::Sicken(k) => {
                if let Some(id) = self.pick(*k, true) {
                    self.w.sicken(&id);
                }
            }
            Op::SupervisorRestart { graceful } => w.restart_supervisor(*graceful),
            Op::Republish => w.step(Input::Republish),
            Op::Wait(ms) => w.run_for(Duration::from_millis(u64::from(*ms))),
        }
        // Things interleave: a little time passes between two requests.
        let pause = Duration::from_millis(self.w.rng.u64(0..1500));
        self.w.run_for(pause);
        self.check_answers();
    }

    /// An answer means the app serves what was asked (or something asked later).
    fn check_answers(&mut self) {
        let w = &self.w;
        let mut open = Vec::new();
        for (reply, asked) in std::mem::take(&mut self.asked) {
            let Some(answer) = w.answer(reply) else {
                open.push((reply, asked));
                continue;
            };
            let awake = w.m.want == Want::Awake;
            match (asked, answer) {
                (Asked::Restart { at }, Answer::Ok) if awake => {
                    for p in w.published_procs() {
                        assert!(p.spawned_at >= at, "restart answered; {} is older", p.id);
                    }
                }
                (Asked::Rollback { release }, Answer::Release(n)) => {
                    assert_eq!(n, release);
                    if awake && w.model.release == Some(release) {
                        for p in w.published_procs() {
                            assert_eq!(p.release, release, "rolled back; {} is not", p.id);
                        }
                    }
                }
                _ => {}
            }
        }
        self.asked = open;
    }

    /// Faults stop; the app must settle into the last requested state.
    fn finish(&mut self) {
        let w = &mut self.w;
        w.faults = false;
        let limit = Duration::from_secs(600);
        let mut settled = w.settle(limit);
        if settled && w.m.failed.is_some() && w.model.awake {
            // An edge's request wakes it again once the retry pause is over.
            let pause = w.m.timing.failed_retry;
            w.run_for(pause);
            w.step(Input::Wake);
            settled = w.settle(limit);
        }
        // Restarts that keep failing while the rest serves are retried for ever, with backoff:
        // legitimate only when what they start with cannot start.
        let topping_up = !settled && w.topping_up_broken();
        assert!(settled || topping_up, "did not settle within {limit:?}");
        self.check_answers();
        if let Some((reply, asked)) = self.asked.first() {
            panic!("request {reply} ({asked:?}) never answered");
        }
        let w = &self.w;
        let m = &w.m;
        let config = m.config.clone();
        // Routes and the record follow the definition.
        let domains: Vec<&String> = w.store.routes.keys().collect();
        let mut wanted: Vec<&String> = config.domains.iter().collect();
        wanted.sort();
        assert_eq!(domains, wanted, "routes");
        let record = w.store.record.as_ref().expect("an app record");
        assert_eq!(record.instances, config.instances);
        assert_eq!(record.state, m.state_name());
        let alive: Vec<&world::Proc> = w.alive();
        let published = w.published_procs();
        // Every record is of a live process (nothing leaked, no stale record).
        for id in w.store.spinlets.keys() {
            assert!(
                alive.iter().any(|p| &p.id == id),
                "record {id} of no process"
            );
        }
        if let Some(failed) = &m.failed {
            // Gave up: legitimate only on a release that cannot start, or none at all.
            let broken = w
                .model
                .release
                .is_none_or(|n| w.broken_releases.contains(&n))
                || w.model.mode == "broken";
            assert!(broken, "failed without cause: {failed:?}");
            assert!(alive.is_empty() && published.is_empty());
            return;
        }
        let Some(release) = w.model.release.filter(|_| w.model.awake) else {
            assert!(
                alive.is_empty(),
                "asleep, but {} processes run",
                alive.len()
            );
            assert!(published.is_empty());
            return;
        };
        let instances = config.instances as usize;
        if topping_up {
            assert!(!published.is_empty() && published.len() < instances);
            return;
        }
        assert_eq!(published.len(), instances, "published spinlets");
        assert_eq!(alive.len(), instances, "running spinlets (drains over)");
        assert_eq!(
            record.current_release,
            m.serving.as_ref().map(|s| s.release.info.number)
        );
        let expected = crate::app::state::Target {
            release,
            settings: world::key().fingerprint(&config),
            generation: m.generation,
        };
        let refused = m.refused.as_ref().is_some_and(|r| r.target == expected);
        if refused {
            // The last request was refused (with a cause, checked when it happened): what
            // served before serves on.
            return;
        }
        for p in &published {
            assert_eq!(p.release, release, "{} runs another release", p.id);
            assert_eq!(p.mode, w.model.mode, "{} runs another env", p.id);
            if let Some(at) = w.model.restart_at {
                assert!(
                    p.spawned_at >= at || !published.iter().all(|q| q.spawned_at < at),
                    "{} predates the last restart",
                    p.id
                );
            }
        }
    }
}

fn cases() -> u32 {
    std::env::var("SPINFORGE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_sequence_converges_to_the_last_request(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut case = Case::new(seed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for op in &ops {
                case.run(op);
            }
            case.finish();
        }));
        if let Err(panic) = result {
            let keep = if std::env::var_os("SPINFORGE_MODEL_TRACE").is_some() { usize::MAX } else { 60 };
            let trace = case.w.trace.iter().rev().take(keep).rev().cloned().collect::<Vec<_>>().join("\n");
            eprintln!("last steps:\n{trace}");
            let m = &case.w.m;
            eprintln!(
                "machine: want {:?}, failed {:?}, desired {:?}, serving {:?}, rollout {:?}, refused {:?}, start failures {}, retries {:?}\nslots: {:#?}",
                m.want,
                m.failed,
                m.desired.as_ref().map(|r| r.info.number),
                m.serving.as_ref().map(|s| &s.target),
                m.rollout.as_ref().map(|r| &r.target),
                m.refused,
                m.start_failures,
                m.retries,
                m.slots.iter().map(|s| (&s.id, s.role, &s.phase, &s.target)).collect::<Vec<_>>()
            );
            std::panic::resume_unwind(panic);
        }
    }
}
