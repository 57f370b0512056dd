//! The app task: feeds the [`Machine`] what happens (commands, definitions, exits, the ends of
//! the work it started, its timers) one input at a time, and carries out the effects it returns
//! through the [`Spawner`], the [`Builds`] and the [`Publisher`].
//!
//! Every effect that starts work owes the machine one input, and the driver keeps that promise
//! whatever the work does: work runs in a `JoinSet` whose tasks are mapped to what they owe, so
//! a build, probe or stop that panics still reports (as failed, or done). That is what lets the
//! machine wait for a build without a watchdog of its own.

use super::builds::{BuildEnd, BuildJob, Builds};
use super::command::{Command, Inbox};
use super::effect::{
    Adoptee, Answer, BuildResult, BuildSeq, Effect, Input, Now, ProcInfo, ReplyId,
};
use super::machine::Machine;
use super::publish::Publisher;
use super::spawner::{Exits, ProbeFailure, Process, Spawner, StartSpec};
use super::timing::Timing;
use crate::control::ControlError;
use crate::ports::PortAllocator;
use crate::release::{self, Release};
use crate::spinlet::Exit;
use spinforge_state::Store;
use spinforge_state::config::{AppConfig, AppSource};
use spinforge_state::records::Spinlet;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a detaching app task gives its spinlets that are not serving, and its cancelled
/// builds, to end.
const DETACH_DEADLINE: Duration = Duration::from_secs(3);

/// What every app task shares.
#[derive(Debug)]
pub struct AppContext {
    pub store: Store,
    pub ports: PortAllocator,
    pub data_dir: PathBuf,
    pub builds: Arc<dyn Builds>,
    pub spawner: Arc<dyn Spawner>,
    pub timing: Timing,
    /// Keys the fingerprint of what spinlets run with (see [`crate::settings`]).
    pub settings_key: crate::settings::Key,
}

impl AppContext {
    pub fn releases_dir(&self, app: &str) -> PathBuf {
        release::releases_dir(&self.data_dir, app)
    }
}

/// What a piece of work owes the machine if it ends without saying (it panicked, or was
/// aborted).
#[derive(Debug)]
enum Owed {
    Build(BuildSeq),
    Health(String),
    Probe(String),
    Stop(String),
    Drain(String),
}

/// A spinlet process the task holds, and the port it was given.
#[derive(Debug)]
struct Held {
    proc: Arc<dyn Process>,
    port: u16,
}

#[derive(Debug)]
enum Reply {
    Rollback(oneshot::Sender<Result<u64, ControlError>>),
    Lifecycle(oneshot::Sender<Result<(), ControlError>>),
    Done(oneshot::Sender<()>),
    /// Nobody to tell (the supervisor went away).
    Nobody,
}

pub struct AppTask {
    machine: Machine,
    ctx: Arc<AppContext>,
    inbox: Inbox,
    commands_open: bool,
    definition_open: bool,
    exits_tx: Exits,
    exits: mpsc::UnboundedReceiver<Exit>,
    work: JoinSet<Input>,
    owed: HashMap<tokio::task::Id, Owed>,
    /// Drain watches, by spinlet: a spinlet stopped or gone needs its watch no more.
    drain_watches: HashMap<String, tokio::task::AbortHandle>,
    procs: HashMap<String, Held>,
    /// Build ids of the builds in flight, by the machine's number.
    builds: HashMap<BuildSeq, String>,
    /// The ticket of the deploy being handled, for the build it asks for.
    deploy: Option<Box<dyn BuildJob>>,
    replies: HashMap<ReplyId, Reply>,
    next_reply: ReplyId,
    publisher: Publisher,
    /// Inputs that came straight out of effects (a spawn's result), handled before anything
    /// else.
    queued: VecDeque<Input>,
    /// The definition's version the machine has.
    version: u64,
    /// Builds still running are given until then to end, once the machine is done.
    exit_deadline: Option<Instant>,
    /// The republish the step about to run writes everything for (see `Inbox::republished`).
    writing: Option<u64>,
}

impl std::fmt::Debug for AppTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTask")
            .field("app", &self.machine.config.name)
            .field("state", &self.machine.state_name())
            .field("spinlets", &self.machine.slots.len())
            .finish_non_exhaustive()
    }
}

impl AppTask {
    pub fn new(ctx: Arc<AppContext>, mut inbox: Inbox) -> Self {
        let definition = inbox.definition.borrow_and_update().clone();
        let machine = Machine::new(
            definition.config.clone(),
            ctx.settings_key.clone(),
            ctx.timing.clone(),
            fastrand::u64(..),
        );
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let publisher = Publisher::new(ctx.store.clone(), &definition.config.name);
        Self {
            machine,
            ctx,
            inbox,
            commands_open: true,
            definition_open: true,
            exits_tx,
            exits,
            work: JoinSet::new(),
            owed: HashMap::new(),
            drain_watches: HashMap::new(),
            procs: HashMap::new(),
            builds: HashMap::new(),
            deploy: None,
            replies: HashMap::new(),
            next_reply: 0,
            publisher,
            queued: VecDeque::new(),
            version: definition.version,
            exit_deadline: None,
            writing: None,
        }
    }

    fn name(&self) -> &str {
        &self.machine.config.name
    }

    /// Runs the app: takes over `adopted` (spinlet records of a previous supervisor), then
    /// answers until shut down or detached.
    pub async fn run(mut self, adopted: Vec<Spinlet>) {
        let releases = self.releases().await;
        let config = self.machine.config.clone();
        let mut adoptees = Vec::with_capacity(adopted.len());
        for record in adopted {
            let proc = self
                .ctx
                .spawner
                .adopt(&record, &config, self.exits_tx.clone());
            let alive = proc.is_some();
            if let Some(proc) = proc {
                self.ctx.ports.claim(record.port);
                self.procs.insert(
                    record.id.clone(),
                    Held {
                        proc,
                        port: record.port,
                    },
                );
            }
            adoptees.push(Adoptee { record, alive });
        }
        let keep: Vec<&str> = self.procs.keys().map(String::as_str).collect();
        self.ctx.spawner.sweep(&config.name, &keep);
        let pin = release::read_pin(&self.ctx.releases_dir(self.name())).await;
        // The first step publishes everything: it answers the first republish.
        self.writing = Some(self.inbox.republish_asked());
        self.queued.push_back(Input::Begin {
            adopted: adoptees,
            releases,
            pin,
        });
        loop {
            let input = match self.queued.pop_front() {
                Some(input) => input,
                None => self.next_input().await,
            };
            let effects = self.machine.step(input, Now::current());
            let done = self.execute(effects).await;
            // Whatever the step was, the machine has (and has published) this definition.
            self.inbox.acknowledge(self.version);
            if let Some(generation) = self.writing.take() {
                self.inbox.republished(generation);
            }
            // A deploy's ticket is for the build its step asked for, or none: unused, it ends
            // as cancelled.
            self.deploy = None;
            if done {
                return;
            }
        }
    }

    async fn next_input(&mut self) -> Input {
        loop {
            let timer = self.machine.next_timer();
            tokio::select! {
                // What came of earlier work first: a command then meets the newest state.
                biased;
                Some(joined) = self.work.join_next_with_id(), if !self.work.is_empty() => {
                    if let Some(input) = self.joined(joined).await {
                        return input;
                    }
                }
                Some((id, status)) = self.exits.recv() => return self.exit_input(id, status).await,
                changed = self.inbox.definition.changed(), if self.definition_open => match changed {
                    Ok(()) => {
                        let d = self.inbox.definition.borrow_and_update().clone();
                        self.version = d.version;
                        return Input::Update(d.config);
                    }
                    Err(_) => self.definition_open = false,
                },
                () = self.inbox.republish.notified() => {
                    self.writing = Some(self.inbox.republish_asked());
                    return Input::Republish;
                }
                cmd = self.inbox.commands.recv(), if self.commands_open => match cmd {
                    Some(cmd) => return self.command(cmd).await,
                    None => {
                        // The supervisor is gone: leave nothing running.
                        self.commands_open = false;
                        let deadline = Instant::now() + self.ctx.timing.stop_grace;
                        self.exit_deadline = Some(deadline);
                        let reply = self.register(Reply::Nobody);
                        return Input::Shutdown { deadline, forget: false, reply };
                    }
                },
                () = sleep_until(timer) => return Input::Tick,
            }
        }
    }

    async fn command(&mut self, cmd: Command) -> Input {
        match cmd {
            Command::Wake => Input::Wake,
            Command::IdleCheck { last_access_ms } => Input::IdleCheck { last_access_ms },
            Command::Deploy { ticket, app } => {
                self.deploy = Some(ticket);
                Input::Deploy(Arc::new(*app))
            }
            Command::Rollback { release, reply } => Input::Rollback {
                release,
                releases: self.releases().await,
                reply: self.register(Reply::Rollback(reply)),
            },
            Command::Lifecycle { action, reply } => Input::Lifecycle {
                action,
                reply: self.register(Reply::Lifecycle(reply)),
            },
            Command::Shutdown {
                deadline,
                forget,
                done,
            } => {
                self.exit_deadline.get_or_insert(deadline);
                Input::Shutdown {
                    deadline,
                    forget,
                    reply: self.register(Reply::Done(done)),
                }
            }
            Command::Detach { done } => {
                let deadline = Instant::now() + DETACH_DEADLINE;
                self.exit_deadline.get_or_insert(deadline);
                Input::Detach {
                    deadline,
                    reply: self.register(Reply::Done(done)),
                }
            }
        }
    }

    fn register(&mut self, reply: Reply) -> ReplyId {
        self.next_reply += 1;
        self.replies.insert(self.next_reply, reply);
        self.next_reply
    }

    async fn exit_input(&mut self, id: String, status: String) -> Input {
        let status = match self.procs.get(&id) {
            Some(h) => h.proc.describe_exit(&status),
            None => status,
        };
        // The log says why: read it only when the exit is news.
        let tail = if self.machine.cares_about_exit(&id) {
            self.ctx.spawner.log_tail(self.name()).await
        } else {
            String::new()
        };
        Input::Exited { id, status, tail }
    }

    /// What a piece of work said, or what it owes if it ended without saying.
    async fn joined(
        &mut self,
        joined: Result<(tokio::task::Id, Input), tokio::task::JoinError>,
    ) -> Option<Input> {
        let (id, input) = match joined {
            Ok((id, input)) => (id, Some(input)),
            Err(e) => (e.id(), None),
        };
        let owed = self.owed.remove(&id);
        if let Some(input) = input {
            if let Input::BuildEnded { seq, .. } = &input {
                self.builds.remove(seq);
            }
            return Some(input);
        }
        let app = self.name().to_string();
        Some(match owed? {
            Owed::Build(seq) => {
                self.builds.remove(&seq);
                tracing::error!(%app, "a build stopped on an internal error");
                Input::BuildEnded {
                    seq,
                    result: BuildResult::Failed {
                        error: "the build stopped on an internal error (see the supervisor's log)"
                            .into(),
                        fallback: self.releases().await.pop().map(Box::new),
                    },
                }
            }
            Owed::Health(id) => Input::StartFailed {
                id,
                reason: "the health check stopped on an internal error".into(),
            },
            Owed::Probe(id) => Input::Probed {
                id,
                result: Err("the probe stopped on an internal error".into()),
            },
            Owed::Stop(id) => Input::Stopped { id },
            Owed::Drain(id) => Input::Drained { id, idle: false },
        })
    }

    fn spawn_work(
        &mut self,
        owed: Owed,
        work: impl std::future::Future<Output = Input> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let handle = self.work.spawn(work);
        self.owed.insert(handle.id(), owed);
        handle
    }

    /// Carries out a step's effects, in order; true once the task is done.
    async fn execute(&mut self, effects: Vec<Effect>) -> bool {
        for effect in effects {
            match effect {
                Effect::Spawn {
                    id,
                    release,
                    config,
                } => {
                    let input = self.spawn(id, &release, &config);
                    self.queued.push_back(input);
                }
                Effect::AwaitHealthy {
                    id,
                    port,
                    path,
                    deadline,
                } => {
                    let wait = self.ctx.spawner.wait_healthy(port, &path, deadline);
                    let tail = self.ctx.spawner.log_tail(self.name());
                    let owed = Owed::Health(id.clone());
                    self.spawn_work(owed, async move {
                        match wait.await {
                            Ok(()) => Input::Healthy { id },
                            Err(e) => Input::StartFailed {
                                id,
                                reason: format!("{e}{}", tail.await),
                            },
                        }
                    });
                }
                Effect::Probe { id, port, path } => {
                    let probe = self
                        .ctx
                        .spawner
                        .probe(port, &path, self.ctx.timing.check_timeout);
                    let store = self.ctx.store.clone();
                    let owed = Owed::Probe(id.clone());
                    self.spawn_work(owed, async move {
                        let sent_ms = spinforge_state::now_ms();
                        let result = match probe.await {
                            Err(ProbeFailure::NoAnswer(why)) => {
                                busy_or_hung(&store, &id, port, sent_ms, why).await
                            }
                            other => other.map_err(ProbeFailure::why),
                        };
                        Input::Probed { id, result }
                    });
                }
                Effect::WatchDrain { id, until } => {
                    let watch = watch_drain(
                        self.ctx.store.clone(),
                        id.clone(),
                        until,
                        self.ctx.timing.drain_poll,
                    );
                    let handle = self.spawn_work(Owed::Drain(id.clone()), watch);
                    if let Some(old) = self.drain_watches.insert(id, handle) {
                        old.abort();
                    }
                }
                Effect::Stop { id, kill_at } => match self.procs.get(&id) {
                    Some(held) => {
                        if let Some(watch) = self.drain_watches.remove(&id) {
                            watch.abort();
                        }
                        let stop = held.proc.clone().stop(kill_at);
                        let owed = Owed::Stop(id.clone());
                        self.spawn_work(owed, async move {
                            stop.await;
                            Input::Stopped { id }
                        });
                    }
                    None => self.queued.push_back(Input::Stopped { id }),
                },
                Effect::Record(spinlet) => self.publisher.spinlet(&spinlet).await,
                Effect::Forget { id } => {
                    if let Some(watch) = self.drain_watches.remove(&id) {
                        watch.abort();
                    }
                    self.publisher.forget_spinlet(&id).await;
                    if let Some(held) = self.procs.remove(&id) {
                        self.ctx.ports.release(held.port);
                        tokio::spawn(held.proc.cleanup());
                    }
                }
                Effect::Upstreams { addrs, drains } => {
                    self.publisher.upstreams_and_drains(&addrs, &drains).await
                }
                Effect::Publish(view) => {
                    let releases = self.releases().await;
                    let numbers = releases.iter().map(|r| r.info.number).collect();
                    self.publisher.app(&view, numbers).await;
                }
                Effect::Unpublish => {
                    let domains = self.machine.config.domains.clone();
                    self.publisher.unpublish(&domains).await;
                }
                Effect::Build { seq, config } => self.build(seq, config).await,
                Effect::CancelBuild { seq } => {
                    if let Some(id) = self.builds.get(&seq) {
                        self.ctx.builds.cancel(id);
                    }
                }
                Effect::Pin(pin) => {
                    let dir = self.ctx.releases_dir(self.name());
                    if let Err(e) = release::write_pin(&dir, pin.as_ref()).await {
                        // The rollback serves; only a restart of the supervisor may undo it.
                        tracing::error!(app = %self.name(), error = %e, "cannot record the rollback on disk");
                    }
                }
                Effect::Prune { serving, in_use } => self.prune(serving, &in_use).await,
                Effect::Reply { to, answer } => self.reply(to, answer),
                Effect::Done { replies } => {
                    self.stop_builds().await;
                    for r in replies {
                        self.reply(r, Answer::Ok);
                    }
                    return true;
                }
            }
        }
        false
    }

    fn spawn(&mut self, id: String, release: &Release, config: &AppConfig) -> Input {
        let Some(port) = self.ctx.ports.allocate() else {
            return Input::SpawnFailed {
                id,
                reason: "no free port in supervisor.port_range".into(),
            };
        };
        let spec = StartSpec {
            id: &id,
            config,
            release,
            port,
        };
        match self.ctx.spawner.start(spec, self.exits_tx.clone()) {
            Ok(proc) => {
                let info = ProcInfo {
                    pid: proc.pid(),
                    port,
                    proc_start: proc.start_ticks(),
                };
                self.procs.insert(id.clone(), Held { proc, port });
                Input::Spawned { id, proc: info }
            }
            Err(reason) => {
                self.ctx.ports.release(port);
                Input::SpawnFailed { id, reason }
            }
        }
    }

    /// Runs a build of `config`: under the deploy's ticket when there is one, else a new one.
    async fn build(&mut self, seq: BuildSeq, config: Arc<AppConfig>) {
        let ticket = self.deploy.take();
        if let AppSource::Tarball(path) = &config.source
            && !path.exists()
        {
            tracing::info!(app = %config.name, "no source yet: waiting for a deploy");
            if let Some(ticket) = ticket {
                tokio::spawn(ticket.fail("there is no source to build: the archive was never uploaded, or a newer upload replaced it".into()));
            }
            self.queued.push_back(Input::BuildEnded {
                seq,
                result: BuildResult::NoSource,
            });
            return;
        }
        let job = match ticket {
            Some(t) => t,
            None => self.ctx.builds.enqueue(&config).await,
        };
        self.builds.insert(seq, job.id().to_string());
        let dir = self.ctx.releases_dir(&config.name);
        self.spawn_work(Owed::Build(seq), async move {
            let end = job.run((*config).clone()).await;
            let result = match end {
                BuildEnd::Built { release, reused } => BuildResult::Built { release, reused },
                BuildEnd::Failed(error) => BuildResult::Failed {
                    error,
                    fallback: release::list_releases(&dir).await.pop().map(Box::new),
                },
                BuildEnd::Cancelled => BuildResult::Failed {
                    error: "the build was cancelled".into(),
                    fallback: release::list_releases(&dir).await.pop().map(Box::new),
                },
            };
            Input::BuildEnded { seq, result }
        });
    }

    /// Cancels the app's builds and gives them until the exit deadline to end; one still
    /// running then is dropped, which records it as cancelled.
    async fn stop_builds(&mut self) {
        for id in self.builds.values() {
            self.ctx.builds.cancel(id);
        }
        let deadline = self
            .exit_deadline
            .unwrap_or_else(|| Instant::now() + DETACH_DEADLINE);
        let _ = tokio::time::timeout_at(deadline, async {
            while self.work.join_next().await.is_some() {}
        })
        .await;
        self.work.abort_all();
    }

    async fn prune(&self, serving: Option<u64>, in_use: &BTreeSet<u64>) {
        let keep = self.ctx.builds.keep_releases();
        let dir = self.ctx.releases_dir(self.name());
        let removed = release::prune_releases(&dir, keep, serving, in_use).await;
        if !removed.is_empty() {
            tracing::info!(app = %self.name(), ?removed, "removed old releases");
        }
    }

    fn reply(&mut self, to: ReplyId, answer: Answer) {
        let name = self.name().to_string();
        let error = |answer: &Answer| match answer {
            Answer::Refused(m) => ControlError::Conflict(m.clone()),
            Answer::UnknownRelease(n) => ControlError::UnknownRelease(name.clone(), *n),
            _ => ControlError::Gone,
        };
        match self.replies.remove(&to) {
            Some(Reply::Rollback(tx)) => {
                let _ = tx.send(match &answer {
                    Answer::Release(n) => Ok(*n),
                    other => Err(error(other)),
                });
            }
            Some(Reply::Lifecycle(tx)) => {
                let _ = tx.send(match &answer {
                    Answer::Ok | Answer::Release(_) => Ok(()),
                    other => Err(error(other)),
                });
            }
            Some(Reply::Done(tx)) => {
                let _ = tx.send(());
            }
            Some(Reply::Nobody) | None => {}
        }
    }

    async fn releases(&self) -> Vec<Release> {
        release::list_releases(&self.ctx.releases_dir(self.name())).await
    }
}

/// No read of the edges' reports waits longer than this.
const DRAIN_READ_DEADLINE: Duration = Duration::from_secs(2);

/// Reads the edges' reports on draining spinlet `id` every `poll` until none has anything left
/// on it, or `until`. A store that does not answer only makes the drain last to its deadline.
async fn watch_drain(store: Store, id: String, until: Instant, poll: Duration) -> Input {
    let ids = [id];
    let mut last = None;
    loop {
        let read = tokio::time::timeout_at(
            until.min(Instant::now() + DRAIN_READ_DEADLINE),
            store.drain_reports(&ids),
        );
        match read.await {
            Ok(Ok(reports)) => {
                let report = reports.first().copied().unwrap_or_default();
                if report.idle() {
                    let [id] = ids;
                    return Input::Drained { id, idle: true };
                }
                if last != Some(report) {
                    tracing::debug!(spinlet = %ids[0], edges = report.edges, reported = report.reported, requests = report.load.requests, streams = report.load.streams, "draining");
                    last = Some(report);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(spinlet = %ids[0], error = %e, "cannot read the edges' drain reports")
            }
            Err(_) => {
                tracing::debug!(spinlet = %ids[0], "reading the edges' drain reports timed out")
            }
        }
        let now = Instant::now();
        if now >= until {
            let [id] = ids;
            return Input::Drained { id, idle: false };
        }
        tokio::time::sleep_until(until.min(now + poll)).await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How long the driver waits for the edges' reports when a probe went unanswered.
const ANSWERS_DEADLINE: Duration = Duration::from_secs(1);

/// A probe sent at `sent_ms` went unanswered: the spinlet passes when an edge saw it answer a
/// request since (it is busy: replacing it would only drop what it serves and load the others
/// more); otherwise it failed. Without a report in time, it failed.
async fn busy_or_hung(
    store: &Store,
    id: &str,
    port: u16,
    sent_ms: u64,
    why: String,
) -> Result<(), String> {
    let addr = super::effect::spinlet_addr(port);
    match tokio::time::timeout(ANSWERS_DEADLINE, store.last_answered(&addr)).await {
        Ok(Ok(Some(at))) if at >= sent_ms => {
            tracing::debug!(spinlet = %id, "a health probe went unanswered, but the spinlet answers requests: busy, kept");
            Ok(())
        }
        _ => Err(why),
    }
}
