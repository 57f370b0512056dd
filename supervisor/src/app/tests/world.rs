//! A simulated world for the [`Machine`]: fake processes, builds, releases on disk and a store,
//! in virtual time. It carries out the machine's effects as the driver would (every effect
//! that starts work gets exactly one answer, at a random later moment), injects the faults a
//! test asks for, and checks invariants after every effect:
//!
//! - the store's upstreams only name spinlets the machine was told are healthy, and not told
//!   have exited, failed their health checks, or been stopped;
//! - never more than `instances` of them;
//! - no process runs that the machine does not know about (no leak, no orphan);
//! - a rollout ends within its health-check timeout (plus the slack for a lost answer), a
//!   build within the world's longest build, a shutdown within its deadline;
//! - a refused rollout was refused because one of its spinlets really failed;
//! - pruning never removes a release a process runs;
//! - the store's routes and upstreams are written only through the machine's publishing
//!   effects (the fake store records the writer of each write);
//! - drains: a draining spinlet is never published (and is listed as draining); it is stopped
//!   only once the edges have nothing left on it or its deadline has passed (or the supervisor
//!   is going away); every drain ends by its deadline, which is the app's `drain_timeout` plus
//!   the margin.

use crate::app::effect::{Adoptee, Answer, BuildResult, BuildSeq, Effect, Input, Now, ProcInfo};
use crate::app::machine::Machine;
use crate::app::publish::AppView;
use crate::app::timing::Timing;
use crate::release::{self, Release, ReleaseInfo};
use spinforge_state::config::{AppConfig, AppSource, EnvValue, Framework, HealthCheck};
use spinforge_state::records::{AppRecord, Drain, Route, Spinlet, SpinletState};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const APP: &str = "shop";
/// Releases kept on disk (`supervisor.builds.keep_releases`).
pub const KEEP: usize = 3;
/// The world's longest build.
pub const BUILD_MAX: Duration = Duration::from_secs(3);
/// The env key whose value says how a spinlet behaves: `broken` never gets healthy.
pub const MODE: &str = "MODE";

/// The timing the tests run with: SpinForge's, with shorter waits where they only cost time.
pub fn timing() -> Timing {
    Timing {
        failed_retry: Duration::from_secs(20),
        backoff_max: Duration::from_secs(8),
        ..Timing::new()
    }
}

pub fn config() -> AppConfig {
    AppConfig {
        name: APP.into(),
        domains: vec!["shop.test".into()],
        source: source(0),
        framework: Framework::Auto,
        env: [(MODE.to_string(), EnvValue::new("a"))].into(),
        instances: 2,
        memory: None,
        cpu: None,
        idle_timeout: Some(Duration::from_secs(30)),
        drain_timeout: Duration::from_secs(3),
        health_check: HealthCheck {
            path: "/health".into(),
            timeout: Duration::from_secs(5),
        },
        policy: Default::default(),
        tls: Default::default(),
        spa: false,
    }
}

pub fn source(n: u8) -> AppSource {
    AppSource::Directory(format!("/src/{n}").into())
}

pub fn key() -> crate::settings::Key {
    crate::settings::Key::fixed([7; 32])
}

/// What a fake build of `source` records as release `number`.
pub fn release_info(number: u64, source: &str) -> ReleaseInfo {
    ReleaseInfo {
        number,
        framework: "node".into(),
        start: vec!["node".into(), "server.js".into()],
        source: source.into(),
        source_checksum: source.into(),
        source_commit: None,
        lockfile_hash: None,
        package_manager: None,
        typescript: false,
        node_version: String::new(),
        build_config: String::new(),
        build_id: String::new(),
        build_ms: 0,
        created_ms: 0,
    }
}

fn release(number: u64, source: &str) -> Release {
    Release {
        dir: format!("/releases/{number}").into(),
        info: release_info(number, source),
    }
}

/// What a fake process is, in truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Starting,
    Healthy,
    /// Answers no health probe (any more).
    Sick,
    /// Got SIGTERM.
    Stopping,
    Dead,
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub id: String,
    pub release: u64,
    pub mode: String,
    pub port: u16,
    pub truth: Truth,
    /// Never gets healthy (a broken release or env).
    pub broken: bool,
    /// The supervisor (epoch) that holds it: its exits go there.
    pub owner: u32,
    pub spawned_at: Instant,
    // What the machine has been told or has asked.
    pub healthy_told: bool,
    pub exit_told: bool,
    pub stop_asked: bool,
    pub stopped_told: bool,
    pub failed_probes_told: u32,
}

impl Proc {
    pub fn alive(&self) -> bool {
        self.truth != Truth::Dead
    }
}

/// How a source builds, decided the first time it is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plan {
    pub fails: bool,
    pub broken: bool,
}

#[derive(Debug)]
enum Ev {
    /// An input for the machine of `epoch` (dropped if that supervisor is gone).
    Input(u32, Input),
    /// A starting process's health wait resolves (healthy now, or failed at `deadline`).
    Health {
        id: String,
        epoch: u32,
        deadline: Instant,
    },
    Probe {
        id: String,
        epoch: u32,
    },
    /// A process exits.
    Dies {
        id: String,
    },
}

/// A drain as the world's edges see it: requests in flight on the spinlet until `busy_until`
/// (none are added: it is out of routing).
#[derive(Debug, Clone, Copy)]
pub struct DrainSim {
    pub started: Instant,
    pub busy_until: Instant,
    pub until: Instant,
}

/// The store as the world keeps it, with who wrote what.
#[derive(Debug, Default)]
pub struct FakeStore {
    pub upstreams: Vec<String>,
    pub drains: Vec<Drain>,
    pub record: Option<AppRecord>,
    pub routes: BTreeMap<String, Route>,
    pub spinlets: BTreeMap<String, Spinlet>,
    /// `(writer, key)` of every route and upstream write.
    pub writes: Vec<(String, String)>,
}

/// The last requested state, as the test's operations asked for it.
#[derive(Debug, Clone)]
pub struct Model {
    pub awake: bool,
    pub release: Option<u64>,
    pub mode: String,
    /// Spinlets serving after a restart request were started after it.
    pub restart_at: Option<Instant>,
    pub restart_reply: Option<u64>,
    /// The newest build asked for: `(epoch, seq)`.
    pub latest_build: Option<(u32, BuildSeq)>,
    /// The build a starting supervisor asked for to check what runs.
    pub check_build: Option<(u32, BuildSeq)>,
    /// The last rollback's release and the source it was asked under, until a deploy or a
    /// source edit: a check build under that source keeps it.
    pub pin: Option<(u64, String)>,
}

pub struct World {
    pub m: Machine,
    pub epoch: u32,
    pub now: Now,
    pub rng: fastrand::Rng,
    queue: BTreeMap<(Instant, u64), Ev>,
    qseq: u64,
    immediate: VecDeque<Input>,
    pub procs: BTreeMap<String, Proc>,
    next_port: u16,
    pub releases: Vec<Release>,
    pub broken_releases: BTreeSet<u64>,
    pub plans: BTreeMap<String, Plan>,
    next_release: u64,
    /// Pending build ends, for cancels.
    builds: BTreeMap<(u32, BuildSeq), (Instant, u64)>,
    pub replies: BTreeMap<u64, Option<Answer>>,
    next_reply: u64,
    pub store: FakeStore,
    /// Drains in progress, by spinlet id.
    pub drains: BTreeMap<String, DrainSim>,
    /// Drains that ended, and how: `(idle before its deadline, ended at its deadline)`.
    pub drain_ends: (u64, u64),
    /// How long the edges keep requests on a draining spinlet; random when `None`.
    pub drain_busy: Option<Duration>,
    /// Random spawn failures.
    pub faults: bool,
    /// Processes whose failure the world caused (broken, crashed, sickened, spawn refused).
    pub faulted: BTreeSet<String>,
    pub refusals: u64,
    pub done: bool,
    /// The rollback pin as the supervisor left it on disk.
    pub disk_pin: Option<release::Pin>,
    pub model: Model,
    rollout_since: Option<(u64, Instant)>,
    build_since: Option<(BuildSeq, Instant)>,
    exit_since: Option<Instant>,
    published: BTreeSet<String>,
    seed: u64,
    /// What happened, for a failing case's report.
    pub trace: Vec<String>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("epoch", &self.epoch)
            .field("procs", &self.procs.len())
            .finish_non_exhaustive()
    }
}

impl World {
    pub fn new(config: AppConfig, seed: u64) -> World {
        let awake = config.idle_timeout.is_none();
        let mode = mode_of(&config);
        let t0 = Now {
            at: Instant::now(),
            wall_ms: 1_700_000_000_000,
        };
        let m = Machine::new(Arc::new(config.clone()), key(), timing(), seed);
        let mut plans = BTreeMap::new();
        plans.insert(config.source.to_string(), Plan::default());
        World {
            m,
            epoch: 0,
            now: t0,
            rng: fastrand::Rng::with_seed(seed),
            queue: BTreeMap::new(),
            qseq: 0,
            immediate: VecDeque::new(),
            procs: BTreeMap::new(),
            next_port: 30000,
            releases: Vec::new(),
            broken_releases: BTreeSet::new(),
            plans,
            next_release: 1,
            builds: BTreeMap::new(),
            replies: BTreeMap::new(),
            next_reply: 0,
            store: FakeStore::default(),
            drains: BTreeMap::new(),
            drain_ends: (0, 0),
            drain_busy: None,
            faults: false,
            faulted: BTreeSet::new(),
            refusals: 0,
            done: false,
            disk_pin: None,
            model: Model {
                awake,
                release: None,
                mode,
                restart_at: None,
                restart_reply: None,
                latest_build: None,
                check_build: None,
                pin: None,
            },
            rollout_since: None,
            build_since: None,
            exit_since: None,
            published: BTreeSet::new(),
            seed,
            trace: Vec::new(),
        }
    }

    /// Starts the machine with nothing to adopt.
    pub fn begin(&mut self) {
        let releases = self.releases.clone();
        self.step(Input::Begin {
            adopted: Vec::new(),
            releases,
            pin: None,
        });
        self.model.check_build = self.model.latest_build;
    }

    pub fn reply_id(&mut self) -> u64 {
        self.next_reply += 1;
        self.replies.insert(self.next_reply, None);
        self.next_reply
    }

    pub fn answer(&self, reply: u64) -> Option<Answer> {
        self.replies.get(&reply).cloned().flatten()
    }

    /// Feeds the machine `input` now, and whatever comes straight out of its effects.
    pub fn step(&mut self, input: Input) {
        self.immediate.push_back(input);
        while let Some(input) = self.immediate.pop_front() {
            self.trace
                .push(format!("{:?} {}", self.elapsed(), short(&input)));
            let effects = self.m.step(input, self.now);
            for e in effects {
                self.apply(e);
                self.check_step();
            }
            self.after_step();
        }
    }

    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.now.wall_ms - 1_700_000_000_000)
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.qseq += 1;
        self.queue.insert((self.now.at + after, self.qseq), ev);
    }

    fn deliver_later(&mut self, after: Duration, input: Input) {
        self.schedule(after, Ev::Input(self.epoch, input));
    }

    fn rand_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.u64(lo..=hi.max(lo)))
    }

    /// Runs the world for `d` of virtual time: scheduled events and the machine's timers, in
    /// order.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now.at + d;
        let mut ticks_at_same = 0;
        loop {
            let event = self.queue.keys().next().map(|(t, _)| *t);
            let timer = self.m.next_timer().filter(|_| !self.done);
            let next = match (event, timer) {
                (Some(e), Some(t)) => e.min(t),
                (Some(e), None) => e,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.advance_to(next);
            if event == Some(next) {
                let (_, ev) = self.queue.pop_first().expect("an event");
                self.fire(ev);
                ticks_at_same = 0;
            } else {
                self.step(Input::Tick);
                ticks_at_same += 1;
                assert!(
                    self.m.next_timer().is_none_or(|t| t > self.now.at) || ticks_at_same < 3,
                    "a tick left its own deadline due: the machine would spin ({:?})",
                    self.m.next_timer()
                );
            }
        }
        self.advance_to(until.max(self.now.at));
    }

    fn advance_to(&mut self, at: Instant) {
        if at > self.now.at {
            let d = at - self.now.at;
            self.now = self.now.after(d);
        }
    }

    fn fire(&mut self, ev: Ev) {
        match ev {
            Ev::Input(epoch, input) => {
                if epoch == self.epoch && !self.done {
                    if let Input::BuildEnded { seq, result } = &input
                        && self.model.latest_build == Some((epoch, *seq))
                    {
                        // The newest build's release is what is wanted from now on.
                        match result {
                            BuildResult::Built { release, .. } => {
                                let check = self.model.check_build == Some((epoch, *seq));
                                let source = self.m.config.source.to_string();
                                self.model.release = match self.model.pin.take() {
                                    // A rollback made under this source outlives a restart.
                                    Some((n, under)) if check && under == source => {
                                        self.model.pin = Some((n, under));
                                        Some(n)
                                    }
                                    _ => Some(release.info.number),
                                };
                            }
                            BuildResult::Failed {
                                fallback: Some(f), ..
                            } if self.model.release.is_none() => {
                                self.model.release = Some(f.info.number)
                            }
                            _ => {}
                        }
                    }
                    self.step(input);
                }
            }
            Ev::Health {
                id,
                epoch,
                deadline,
            } => {
                let Some(p) = self.procs.get_mut(&id) else {
                    return;
                };
                if p.truth == Truth::Starting && !p.broken {
                    p.truth = Truth::Healthy;
                    if epoch == self.epoch && !self.done {
                        p.healthy_told = true;
                        self.step(Input::Healthy { id });
                    }
                } else if self.now.at < deadline {
                    // A dead, sick or broken one answers at its deadline, as a real wait does.
                    let after = deadline - self.now.at;
                    self.schedule(
                        after,
                        Ev::Health {
                            id,
                            epoch,
                            deadline,
                        },
                    );
                } else if epoch == self.epoch && !self.done {
                    self.step(Input::StartFailed {
                        id,
                        reason: "no healthy answer (fake)".into(),
                    });
                }
            }
            Ev::Probe { id, epoch } => {
                let Some(p) = self.procs.get_mut(&id) else {
                    return;
                };
                let ok = p.truth == Truth::Healthy;
                if epoch == self.epoch && !self.done {
                    if ok {
                        p.failed_probes_told = 0;
                    } else {
                        p.failed_probes_told += 1;
                    }
                    let result = if ok {
                        Ok(())
                    } else {
                        Err("refused (fake)".into())
                    };
                    self.step(Input::Probed { id, result });
                }
            }
            Ev::Dies { id } => self.dies(&id),
        }
    }

    /// A process exits: its holder hears of the exit, and of the stop it asked for.
    fn dies(&mut self, id: &str) {
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        let was_alive = p.alive();
        p.truth = Truth::Dead;
        let held = p.owner == self.epoch && !self.done;
        if was_alive && held {
            p.exit_told = true;
            self.step(Input::Exited {
                id: id.to_string(),
                status: "signal: 9 (fake)".into(),
                tail: String::new(),
            });
        }
        let Some(p) = self.procs.get_mut(id) else {
            return;
        };
        if p.stop_asked && !p.stopped_told && held {
            p.stopped_told = true;
            self.step(Input::Stopped { id: id.to_string() });
        }
    }

    /// Kills a process (a crash, the OOM killer, `kill -9`).
    pub fn crash(&mut self, id: &str) {
        if self.procs.get(id).is_some_and(Proc::alive) {
            self.faulted.insert(id.to_string());
            self.trace.push(format!("{:?} crash {id}", self.elapsed()));
            self.dies(id);
        }
    }

    /// Makes a process fail its health probes from now on (and a starting one never healthy).
    pub fn sicken(&mut self, id: &str) {
        if let Some(p) = self.procs.get_mut(id)
            && matches!(p.truth, Truth::Starting | Truth::Healthy)
        {
            p.truth = Truth::Sick;
            self.faulted.insert(id.to_string());
            self.trace.push(format!("{:?} sicken {id}", self.elapsed()));
        }
    }

    pub fn alive(&self) -> Vec<&Proc> {
        self.procs.values().filter(|p| p.alive()).collect()
    }

    /// The process behind a published address.
    pub fn published_procs(&self) -> Vec<&Proc> {
        self.store
            .upstreams
            .iter()
            .filter_map(|a| {
                let port: u16 = a.rsplit(':').next()?.parse().ok()?;
                self.procs.values().find(|p| p.port == port)
            })
            .collect()
    }

    fn apply(&mut self, e: Effect) {
        match e {
            Effect::Spawn {
                id,
                release,
                config,
            } => {
                if self.faults && self.rng.u8(..100) < 3 {
                    self.faulted.insert(id.clone());
                    self.immediate.push_back(Input::SpawnFailed {
                        id,
                        reason: "cannot start (fake)".into(),
                    });
                    return;
                }
                self.next_port += 1;
                let mode = mode_of(&config);
                let broken =
                    self.broken_releases.contains(&release.info.number) || mode == "broken";
                if broken {
                    self.faulted.insert(id.clone());
                }
                let proc = Proc {
                    id: id.clone(),
                    release: release.info.number,
                    mode,
                    port: self.next_port,
                    truth: Truth::Starting,
                    broken,
                    owner: self.epoch,
                    spawned_at: self.now.at,
                    healthy_told: false,
                    exit_told: false,
                    stop_asked: false,
                    stopped_told: false,
                    failed_probes_told: 0,
                };
                let info = ProcInfo {
                    pid: u32::from(proc.port),
                    port: proc.port,
                    proc_start: 1,
                };
                self.procs.insert(id.clone(), proc);
                self.immediate.push_back(Input::Spawned { id, proc: info });
            }
            Effect::AwaitHealthy { id, deadline, .. } => {
                let broken = self.procs.get(&id).is_none_or(|p| p.broken);
                let limit = deadline.saturating_duration_since(self.now.at).as_millis() as u64;
                let after = if broken {
                    Duration::from_millis(limit)
                } else {
                    self.rand_ms(10, limit.min(3000).saturating_sub(1))
                };
                let epoch = self.epoch;
                self.schedule(
                    after,
                    Ev::Health {
                        id,
                        epoch,
                        deadline,
                    },
                );
            }
            Effect::Probe { id, .. } => {
                let after = self.rand_ms(1, self.m.timing.check_timeout.as_millis() as u64);
                let epoch = self.epoch;
                self.schedule(after, Ev::Probe { id, epoch });
            }
            Effect::WatchDrain { id, until } => {
                // Requests in flight on it end at a random moment: mostly soon, sometimes after
                // its deadline (a long request, an open stream).
                let timeout = self.m.config.drain_timeout.as_millis() as u64;
                let busy = match self.drain_busy {
                    Some(d) => d,
                    None => self.rand_ms(200, timeout * 2),
                };
                let sim = DrainSim {
                    started: self.now.at,
                    busy_until: self.now.at + busy,
                    until,
                };
                let idle = sim.busy_until < until;
                let after = if idle { busy } else { until - self.now.at };
                self.drains.insert(id.clone(), sim);
                self.deliver_later(after, Input::Drained { id, idle });
            }
            Effect::Stop { id, kill_at } => {
                if let Some(d) = self.drains.remove(&id) {
                    let now = self.now.at;
                    assert!(
                        now >= d.busy_until || now >= d.until || self.m.exiting.is_some(),
                        "stopped draining {id} while the edges still had requests on it, before its deadline"
                    );
                    if now >= d.busy_until && now < d.until {
                        self.drain_ends.0 += 1;
                    } else if now >= d.until {
                        self.drain_ends.1 += 1;
                    }
                }
                let Some(p) = self.procs.get_mut(&id) else {
                    self.immediate.push_back(Input::Stopped { id });
                    return;
                };
                p.stop_asked = true;
                p.stopped_told = false;
                if p.alive() {
                    p.truth = Truth::Stopping;
                    let limit = kill_at.saturating_duration_since(self.now.at).as_millis() as u64;
                    let after = self.rand_ms(0, limit);
                    self.schedule(after, Ev::Dies { id });
                } else {
                    p.stopped_told = true;
                    self.immediate.push_back(Input::Stopped { id });
                }
            }
            Effect::Record(s) => {
                self.store.spinlets.insert(s.id.clone(), s);
            }
            Effect::Forget { id } => {
                self.drains.remove(&id);
                self.store.spinlets.remove(&id);
            }
            Effect::Upstreams { addrs, drains } => {
                self.store
                    .writes
                    .push(("publisher".into(), format!("upstreams:{APP}")));
                self.store.upstreams = addrs;
                self.store.drains = drains;
            }
            Effect::Publish(view) => self.publish(view),
            Effect::Unpublish => {
                for d in std::mem::take(&mut self.store.routes).into_keys() {
                    self.store
                        .writes
                        .push(("publisher".into(), format!("routes:{d}")));
                }
                self.store.record = None;
                self.store.upstreams.clear();
                self.store.drains.clear();
            }
            Effect::Build { seq, config } => self.build(seq, &config),
            Effect::CancelBuild { seq } => {
                if let Some(key) = self.builds.remove(&(self.epoch, seq))
                    && let Some(Ev::Input(_, input)) = self.queue.remove(&key)
                {
                    let result = match input {
                        Input::BuildEnded { result, .. } => result,
                        _ => unreachable!("a build's end"),
                    };
                    let cancelled = match result {
                        BuildResult::Built { .. } | BuildResult::Failed { .. } => {
                            BuildResult::Failed {
                                error: "the build was cancelled".into(),
                                fallback: self.releases.last().cloned().map(Box::new),
                            }
                        }
                        other => other,
                    };
                    let after = self.rand_ms(0, 100);
                    self.deliver_later(
                        after,
                        Input::BuildEnded {
                            seq,
                            result: cancelled,
                        },
                    );
                }
            }
            Effect::Pin(pin) => self.disk_pin = pin,
            Effect::Prune { serving, in_use } => {
                let numbers: Vec<u64> = self.releases.iter().map(|r| r.info.number).collect();
                let removed = release::prunable(&numbers, KEEP, serving, &in_use);
                for n in &removed {
                    assert!(
                        !self.procs.values().any(|p| p.alive() && p.release == *n),
                        "pruned release {n} while a process runs it"
                    );
                }
                self.releases.retain(|r| !removed.contains(&r.info.number));
            }
            Effect::Reply { to, answer } => self.replied(to, answer),
            Effect::Done { replies } => {
                for r in replies {
                    self.replied(r, Answer::Ok);
                }
                self.done = true;
            }
        }
    }

    fn replied(&mut self, to: u64, answer: Answer) {
        // A restart that did not happen (refused, or dropped with its supervisor) asks nothing.
        if self.model.restart_reply == Some(to) && answer != Answer::Ok {
            self.model.restart_at = None;
        }
        let slot = self.replies.entry(to).or_default();
        assert!(slot.is_none(), "reply {to} answered twice: {answer:?}");
        *slot = Some(answer);
    }

    fn publish(&mut self, view: AppView) {
        let mut record = view.record;
        record.releases = self.releases.iter().map(|r| r.info.number).collect();
        self.store.record = Some(record);
        let now: BTreeSet<String> = view.routes.iter().map(|r| r.domain.clone()).collect();
        let gone: Vec<String> = self
            .store
            .routes
            .keys()
            .filter(|d| !now.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            self.store.routes.remove(&d);
            self.store
                .writes
                .push(("publisher".into(), format!("routes:{d}")));
        }
        for r in view.routes {
            self.store
                .writes
                .push(("publisher".into(), format!("routes:{}", r.domain)));
            self.store.routes.insert(r.domain.clone(), r);
        }
    }

    /// A build: a source builds the same way every time (its plan); an unchanged source whose
    /// release is the newest is reused, as the real builder does.
    fn build(&mut self, seq: BuildSeq, config: &AppConfig) {
        self.model.latest_build = Some((self.epoch, seq));
        let src = config.source.to_string();
        let plan = *self.plans.entry(src.clone()).or_default();
        let result = if plan.fails {
            BuildResult::Failed {
                error: "the build failed (fake)".into(),
                fallback: self.releases.last().cloned().map(Box::new),
            }
        } else {
            match self.releases.last() {
                Some(newest) if newest.info.source == src => BuildResult::Built {
                    release: Box::new(newest.clone()),
                    reused: true,
                },
                _ => {
                    let r = release(self.next_release, &src);
                    self.next_release += 1;
                    if plan.broken {
                        self.broken_releases.insert(r.info.number);
                    }
                    self.releases.push(r.clone());
                    BuildResult::Built {
                        release: Box::new(r),
                        reused: false,
                    }
                }
            }
        };
        let after = self.rand_ms(50, BUILD_MAX.as_millis() as u64 - 200);
        self.qseq += 1;
        let key = (self.now.at + after, self.qseq);
        self.queue.insert(
            key,
            Ev::Input(self.epoch, Input::BuildEnded { seq, result }),
        );
        self.builds.insert((self.epoch, seq), key);
    }

    /// What the world learns from each step: refusals (checked for a cause), the wanted
    /// release (mirrored into the model where the machine decides), how long things take.
    fn after_step(&mut self) {
        if self.done {
            return;
        }
        let now = self.now.at;
        // A rollout ends within its health-check timeout, plus the slack for a lost answer.
        let bound = self.m.config.health_check.timeout + self.m.timing.slack;
        if let Some((n, since)) = self.rollout_since
            && (self.m.rollout.is_none() || self.m.rollouts != n)
        {
            assert!(
                now - since <= bound,
                "a rollout took {:?} (bound {bound:?})",
                now - since
            );
            self.rollout_since = None;
        }
        if self.m.rollout.is_some() && self.rollout_since.is_none() {
            self.rollout_since = Some((self.m.rollouts, now));
        }
        if let Some((_, since)) = self.rollout_since {
            assert!(
                now - since <= bound,
                "a rollout is in flight past its bound"
            );
        }
        // A build ends within the world's longest one (or is replaced by a newer one).
        match (&self.m.build, self.build_since) {
            (Some(b), Some((seq, _))) if b.seq != seq => self.build_since = Some((b.seq, now)),
            (Some(b), None) => self.build_since = Some((b.seq, now)),
            (None, Some(_)) => self.build_since = None,
            _ => {}
        }
        if let Some((_, since)) = self.build_since {
            assert!(
                now - since <= BUILD_MAX,
                "a build is in flight past its end"
            );
        }
        // A refusal needs a cause: one of its spinlets really failed. The release that
        // serves is wanted again then (the automatic rollback), unless a newer one was.
        if self.refusals_seen_changed() {
            let refusal = self.m.refused.clone().expect("a refusal");
            assert!(
                self.faulted.contains(&refusal.cause),
                "a rollout was refused for a spinlet that did not fail: {refusal:?}"
            );
            if self.model.release == Some(refusal.target.release) {
                self.model.release = self.m.serving.as_ref().map(|s| s.release.info.number);
            }
        }
        // Every drain ends by its deadline: the app's drain_timeout plus the margin.
        let longest = self.m.config.drain_timeout + self.m.timing.drain_margin;
        for (id, d) in &self.drains {
            assert!(now <= d.until, "{id} drains past its deadline");
            assert!(
                d.until - d.started <= longest,
                "{id}'s drain deadline is past its drain_timeout"
            );
        }
        // The edges are told exactly which spinlets drain (once a step is done).
        let told: BTreeSet<&str> = self
            .store
            .drains
            .iter()
            .map(|d| d.spinlet.as_str())
            .collect();
        let draining: BTreeSet<&str> = self
            .m
            .slots
            .iter()
            .filter(|s| matches!(s.phase, crate::app::state::Phase::Draining { .. }))
            .map(|s| s.id.as_str())
            .collect();
        if self.m.exiting.is_none() {
            assert_eq!(told, draining, "the drains the edges are told of");
        }
        match &self.m.exiting {
            Some(e) => {
                let since = *self.exit_since.get_or_insert(now);
                let _ = since;
                assert!(
                    now <= e.deadline + self.m.timing.slack,
                    "exiting past its deadline"
                );
            }
            None => self.exit_since = None,
        }
        if self.m.exiting.is_none() {
            let desired = self.m.desired.as_ref().map(|r| r.info.number);
            assert_eq!(
                desired, self.model.release,
                "the machine wants another release than was last asked for"
            );
            assert_eq!(
                self.m.want == crate::app::state::Want::Awake,
                self.model.awake,
                "the machine is awake or asleep against the last request"
            );
        }
    }

    fn refusals_seen_changed(&mut self) -> bool {
        let now = self.m.refusals;
        let changed = now != self.refusals;
        self.refusals = now;
        changed
    }

    /// The invariants that hold after every effect.
    fn check_step(&mut self) {
        let failures = self.m.timing.check_failures;
        let published: BTreeSet<String> = self.store.upstreams.iter().cloned().collect();
        for addr in &published {
            let port: u16 = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("host:port");
            let p = self
                .procs
                .values()
                .find(|p| p.port == port)
                .unwrap_or_else(|| panic!("published {addr}, which no process has"));
            assert!(
                !self.drains.contains_key(&p.id),
                "published {}, which drains",
                p.id
            );
            assert!(
                !self.store.drains.iter().any(|d| d.addr == *addr),
                "{addr} is published and listed as draining"
            );
            assert!(p.healthy_told, "published {} before it was healthy", p.id);
            assert!(!p.exit_told, "published {} after its exit", p.id);
            assert!(!p.stop_asked, "published {} while it stops", p.id);
            assert!(
                p.failed_probes_told < failures,
                "published {} after {failures} failed health checks",
                p.id
            );
        }
        assert!(
            published.len() <= self.m.config.instances as usize,
            "{} spinlets published for {} instances",
            published.len(),
            self.m.config.instances
        );
        self.published = published;
        if !self.done {
            for p in self.procs.values().filter(|p| p.alive()) {
                assert!(
                    p.owner < self.epoch || self.m.slot(&p.id).is_some(),
                    "process {} runs and the machine does not know it",
                    p.id
                );
            }
        }
        for (writer, _) in &self.store.writes {
            assert_eq!(writer, "publisher");
        }
    }

    /// The supervisor goes away — gracefully (it detaches: serving spinlets keep running) or
    /// killed — and a new one starts, taking the app's records as `lib.rs` hands them over: it
    /// adopts those in state `running` whose process lives and stops the other live ones.
    pub fn restart_supervisor(&mut self, graceful: bool) {
        if graceful {
            let reply = self.reply_id();
            let deadline = self.now.at + Duration::from_secs(3);
            self.step(Input::Detach { deadline, reply });
            let mut waited = Duration::ZERO;
            while !self.done {
                self.run_for(Duration::from_millis(100));
                waited += Duration::from_millis(100);
                assert!(waited < Duration::from_secs(20), "detach never ended");
            }
        }
        for (id, answer) in self.replies.iter_mut() {
            if answer.is_none() {
                self.trace
                    .push(format!("reply {id} dropped with its supervisor"));
                *answer = Some(Answer::Gone);
                // A restart answered as gone may never have happened.
                if self.model.restart_reply == Some(*id) {
                    self.model.restart_at = None;
                }
            }
        }
        self.epoch += 1;
        self.done = false;
        // The edges' drain reports belonged to the old supervisor's drains.
        self.drains.clear();
        self.rollout_since = None;
        self.build_since = None;
        self.refusals = 0;
        let config = self.m.config.clone();
        let records: Vec<Spinlet> = self.store.spinlets.values().cloned().collect();
        let mut adopted = Vec::new();
        for r in records {
            // Every record of the app is handed over: the machine keeps running ones and stops
            // the others (starting, draining, stopping) whose process lives.
            let alive = self.procs.get(&r.id).is_some_and(Proc::alive);
            if let Some(p) = self.procs.get_mut(&r.id).filter(|_| alive) {
                p.owner = self.epoch;
                p.stop_asked = false;
                p.stopped_told = false;
                p.exit_told = false;
                p.healthy_told = r.state == SpinletState::Running;
                p.failed_probes_told = 0;
            }
            adopted.push(Adoptee { record: r, alive });
        }
        // Processes with no record left (a kill between spawn and record cannot happen here:
        // records are written at once) or whose record says otherwise are gone.
        let adopted_ids: BTreeSet<String> = adopted.iter().map(|a| a.record.id.clone()).collect();
        for p in self.procs.values_mut() {
            if p.alive() && !adopted_ids.contains(&p.id) {
                p.truth = Truth::Dead;
            }
        }
        self.m = Machine::new(config, key(), timing(), self.seed ^ u64::from(self.epoch));
        self.trace.push(format!(
            "{:?} supervisor restarted (graceful: {graceful})",
            self.elapsed()
        ));
        let releases = self.releases.clone();
        // What the new supervisor wants comes from what it adopted (and its check build).
        self.model.release = adopted_release(&adopted, &self.releases);
        self.model.awake = adopted_release(&adopted, &self.releases).is_some()
            || self.m.config.idle_timeout.is_none();
        assert_eq!(
            self.disk_pin.as_ref().map(|p| p.release),
            self.model.pin.as_ref().map(|p| p.0),
            "the pin on disk is the last rollback's, until a deploy or source edit"
        );
        if let Some((n, _)) = self.model.pin
            && !releases.iter().any(|r| r.info.number == n)
        {
            self.model.pin = None;
        }
        let pin = self.disk_pin.clone();
        self.step(Input::Begin {
            adopted,
            releases,
            pin,
        });
        self.model.check_build = self.model.latest_build;
    }

    /// The app serves, but the spinlets it keeps starting to make up `instances` cannot
    /// start (its serving set was adopted from a supervisor that ran an older definition, and
    /// the current one is broken): nothing else is in flight.
    pub fn topping_up_broken(&self) -> bool {
        self.m.rollout.is_none()
            && self.m.build.is_none()
            && self.m.waiters.is_empty()
            && self.m.serving_running().next().is_some()
            && self
                .m
                .serving
                .as_ref()
                .is_some_and(|s| mode_of(&s.config) == "broken")
    }

    /// Runs until nothing is in flight (or `limit`); true if it got there.
    pub fn settle(&mut self, limit: Duration) -> bool {
        let mut waited = Duration::ZERO;
        while waited < limit {
            let pending = self.queue.values().any(|e| !matches!(e, Ev::Probe { .. }));
            if self.m.is_settled() && !pending {
                return true;
            }
            self.run_for(Duration::from_millis(250));
            waited += Duration::from_millis(250);
        }
        false
    }
}

/// The release a new supervisor serves on from what it adopts: that of the first live one whose
/// release is on disk.
fn adopted_release(adopted: &[Adoptee], releases: &[Release]) -> Option<u64> {
    adopted
        .iter()
        .filter(|a| a.alive && a.record.state == SpinletState::Running)
        .map(|a| a.record.release)
        .find(|n| releases.iter().any(|r| r.info.number == *n))
}

pub fn mode_of(config: &AppConfig) -> String {
    config
        .env
        .get(MODE)
        .map(|v| v.expose().to_string())
        .unwrap_or_default()
}

fn short(input: &Input) -> String {
    let text = format!("{input:?}");
    text.chars().take(160).collect()
}
