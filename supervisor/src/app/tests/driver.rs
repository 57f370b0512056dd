//! The app task's driver against fake processes and builds, on the embedded store, in real
//! (short) time: what only the driver can get wrong — a build that panics, definitions that
//! pile up, the order in which two apps hand a domain over, an app removed.

use crate::app::builds::{BuildEnd, BuildJob, Builds};
use crate::app::command::{self, Outbox};
use crate::app::driver::{AppContext, AppTask};
use crate::app::spawner::{Exits, ProbeFailure, Process, Spawner, StartSpec};
use crate::app::timing::Timing;
use crate::ports::PortAllocator;
use crate::release::Release;
use futures::future::BoxFuture;
use spinforge_state::Store;
use spinforge_state::config::{AppConfig, AppSource, EnvValue, PortRange};
use spinforge_state::records::Spinlet;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// Fake spinlet processes, by port: alive or not, and the env they were started with.
#[derive(Debug, Default)]
struct Fakes {
    procs: Mutex<BTreeMap<u16, FakeProc>>,
}

#[derive(Debug, Clone)]
struct FakeProc {
    id: String,
    mode: String,
    alive: bool,
    exits: Exits,
}

impl Fakes {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, FakeProc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn healthy(&self, port: u16) -> bool {
        self.lock()
            .get(&port)
            .is_some_and(|p| p.alive && p.mode != "broken")
    }

    /// Modes of the live processes.
    fn modes(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|p| p.alive)
            .map(|p| p.mode.clone())
            .collect()
    }
}

#[derive(Debug, Clone)]
struct FakeSpawner(Arc<Fakes>);

#[derive(Debug)]
struct FakeHandle {
    port: u16,
    fakes: Arc<Fakes>,
}

impl Spawner for FakeSpawner {
    fn start(&self, spec: StartSpec<'_>, exits: Exits) -> Result<Arc<dyn Process>, String> {
        let mode = spec
            .config
            .env
            .get("MODE")
            .map(|v| v.expose().to_string())
            .unwrap_or_default();
        self.0.lock().insert(
            spec.port,
            FakeProc {
                id: spec.id.to_string(),
                mode,
                alive: true,
                exits,
            },
        );
        Ok(Arc::new(FakeHandle {
            port: spec.port,
            fakes: self.0.clone(),
        }))
    }

    fn adopt(&self, _: &Spinlet, _: &AppConfig, _: Exits) -> Option<Arc<dyn Process>> {
        None
    }

    fn wait_healthy(
        &self,
        port: u16,
        _: &str,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), String>> {
        let fakes = self.0.clone();
        Box::pin(async move {
            loop {
                if fakes.healthy(port) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err("never healthy (fake)".into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }

    fn probe(
        &self,
        port: u16,
        _: &str,
        _: Duration,
    ) -> BoxFuture<'static, Result<(), ProbeFailure>> {
        let ok = self.0.healthy(port);
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(ProbeFailure::Unhealthy("refused (fake)".into()))
            }
        })
    }

    fn log_tail(&self, _: &str) -> BoxFuture<'static, String> {
        Box::pin(async { String::new() })
    }

    fn sweep(&self, _: &str, _: &[&str]) {}
}

impl Process for FakeHandle {
    fn pid(&self) -> u32 {
        u32::from(self.port)
    }

    fn start_ticks(&self) -> u64 {
        1
    }

    fn stop(self: Arc<Self>, _: Instant) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut procs = self.fakes.lock();
            if let Some(p) = procs.get_mut(&self.port)
                && p.alive
            {
                p.alive = false;
                let _ = p.exits.send((p.id.clone(), "stopped (fake)".into()));
            }
        })
    }

    fn describe_exit(&self, status: &str) -> String {
        status.to_string()
    }

    fn cleanup(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Builds that write a release for their source; a source named `fail` fails, one named
/// `panic` panics.
#[derive(Debug)]
struct FakeBuilds {
    data_dir: PathBuf,
    built: Mutex<u64>,
}

struct FakeJob {
    id: String,
    data_dir: PathBuf,
}

impl Builds for FakeBuilds {
    fn enqueue<'a>(&'a self, _: &'a AppConfig) -> BoxFuture<'a, Box<dyn BuildJob>> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        *built += 1;
        let job = FakeJob {
            id: format!("build-{built}"),
            data_dir: self.data_dir.clone(),
        };
        Box::pin(async move { Box::new(job) as Box<dyn BuildJob> })
    }

    fn cancel(&self, _: &str) {}

    fn keep_releases(&self) -> usize {
        5
    }
}

impl BuildJob for FakeJob {
    fn id(&self) -> &str {
        &self.id
    }

    fn run(self: Box<Self>, app: AppConfig) -> BoxFuture<'static, BuildEnd> {
        Box::pin(async move {
            let source = app.source.to_string();
            tokio::time::sleep(Duration::from_millis(20)).await;
            if source.ends_with("panic") {
                panic!("the build blew up (fake)");
            }
            if source.ends_with("fail") {
                return BuildEnd::Failed("the build failed (fake)".into());
            }
            let dir = self.data_dir.join("apps").join(&app.name).join("releases");
            let releases = crate::release::list_releases(&dir).await;
            if let Some(newest) = releases.last().filter(|r| r.info.source == source) {
                return BuildEnd::Built {
                    release: Box::new(newest.clone()),
                    reused: true,
                };
            }
            let number = releases.last().map_or(1, |r| r.info.number + 1);
            let release = release_at(&dir, number, &source);
            BuildEnd::Built {
                release: Box::new(release),
                reused: false,
            }
        })
    }

    fn fail(self: Box<Self>, _: String) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

fn release_at(dir: &std::path::Path, number: u64, source: &str) -> Release {
    let info = super::world::release_info(number, source);
    let path = dir.join(number.to_string());
    std::fs::create_dir_all(&path).expect("release dir");
    std::fs::write(
        path.join("release.json"),
        serde_json::to_string(&info).expect("json"),
    )
    .expect("release.json");
    Release { dir: path, info }
}

struct Harness {
    store: Store,
    ctx: Arc<AppContext>,
    fakes: Arc<Fakes>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(ports: (u16, u16)) -> Harness {
        let dir = tempfile::tempdir().expect("tmp");
        let fakes = Arc::new(Fakes::default());
        let store = Store::embedded();
        let ctx = Arc::new(AppContext {
            store: store.clone(),
            ports: PortAllocator::new(PortRange::new(ports.0, ports.1).expect("range")),
            data_dir: dir.path().to_path_buf(),
            builds: Arc::new(FakeBuilds {
                data_dir: dir.path().to_path_buf(),
                built: Mutex::new(0),
            }),
            spawner: Arc::new(FakeSpawner(fakes.clone())),
            timing: Timing {
                stop_grace: Duration::from_secs(1),
                check_every: Duration::from_millis(200),
                check_timeout: Duration::from_millis(200),
                slack: Duration::from_secs(2),
                ..Timing::new()
            },
            settings_key: crate::settings::Key::fixed([1; 32]),
        });
        Harness {
            store,
            ctx,
            fakes,
            _dir: dir,
        }
    }

    fn start(&self, config: AppConfig) -> Outbox {
        let (outbox, inbox) = command::channel(config);
        tokio::spawn(AppTask::new(self.ctx.clone(), inbox).run(Vec::new()));
        outbox
    }
}

fn app(name: &str, domains: &[&str], mode: &str) -> AppConfig {
    let mut config = super::world::config();
    config.name = name.into();
    config.domains = domains.iter().map(|d| d.to_string()).collect();
    config.idle_timeout = None;
    config.source = AppSource::Directory(format!("/src/{name}").into());
    config.health_check.timeout = Duration::from_secs(2);
    config.env = [("MODE".to_string(), EnvValue::new(mode))].into();
    config
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let t = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < WAIT, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Flaw: a build task that panicked never reported, so the app waited on that build id until
/// the next build — here, with the env part of the edit held for it. The driver now reports
/// the panic as a failed build, and the env rolls out.
#[tokio::test]
async fn a_panicking_build_is_a_failed_build_and_the_app_goes_on() {
    let h = Harness::new((25100, 25139));
    let config = app("shop", &["shop.test"], "a");
    let outbox = h.start(config.clone());
    until("two spinlets of mode a", || async {
        (h.fakes.modes() == ["a", "a"]).then_some(())
    })
    .await;
    let mut edit = config;
    edit.source = AppSource::Directory("/src/panic".into());
    edit.env.insert("MODE".into(), EnvValue::new("b"));
    outbox.define(edit);
    until("the env part of the edit serves", || async {
        (h.fakes.modes() == ["b", "b"]).then_some(())
    })
    .await;
    let record = h.store.app("shop").await.expect("read").expect("record");
    assert_eq!(
        record.current_release,
        Some(1),
        "the release that served serves on"
    );
}

/// Definitions sent faster than the task takes them coalesce in their channel: none is
/// dropped, the last one is what the app runs, and its publication is acknowledged.
#[tokio::test]
async fn a_flood_of_definitions_ends_with_the_last_one() {
    let h = Harness::new((25140, 25179));
    let config = app("shop", &["shop.test"], "a");
    let outbox = h.start(config.clone());
    let mut last = 0;
    for i in 0..500 {
        let mut edit = config.clone();
        edit.env
            .insert("MODE".into(), EnvValue::new(format!("m{i}")));
        last = outbox.define(edit);
    }
    assert!(
        outbox.published(last, WAIT).await,
        "the last one is published"
    );
    until("the last definition serves", || async {
        (h.fakes.modes() == ["m499", "m499"]).then_some(())
    })
    .await;
}

/// A domain moves from one app to another: the app losing it deletes its route and says so
/// before the other claims it (as `Supervisor::apply` does), so the route ends with the new
/// owner whatever the timing.
#[tokio::test]
async fn a_domain_moves_between_apps_in_order() {
    let h = Harness::new((25180, 25219));
    let a = h.start(app("alpha", &["a.test", "moving.test"], "a"));
    let b = h.start(app("beta", &["b.test"], "a"));
    for outbox in [&a, &b] {
        assert!(outbox.published(1, WAIT).await);
    }
    let route = |d: &'static str| {
        let store = h.store.clone();
        async move { store.route(d).await.expect("read").map(|r| r.app) }
    };
    assert_eq!(route("moving.test").await.as_deref(), Some("alpha"));
    let version = a.define(app("alpha", &["a.test"], "a"));
    assert!(a.published(version, WAIT).await);
    assert_eq!(route("moving.test").await, None, "alpha deleted its route");
    let version = b.define(app("beta", &["b.test", "moving.test"], "a"));
    assert!(b.published(version, WAIT).await);
    assert_eq!(route("moving.test").await.as_deref(), Some("beta"));
    // A republish by the old owner does not take it back.
    a.republish();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(route("moving.test").await.as_deref(), Some("beta"));
}

/// An app removed (shutdown with `forget`): its routes, record and upstreams go, its
/// spinlets stop, then it answers.
#[tokio::test]
async fn a_removed_app_takes_its_records_away() {
    let h = Harness::new((25220, 25259));
    let outbox = h.start(app("gone", &["gone.test"], "a"));
    until("it serves", || async {
        let ups = h.store.upstreams("gone").await.ok()?;
        (ups.len() == 2).then_some(())
    })
    .await;
    let (done, wait) = tokio::sync::oneshot::channel();
    let deadline = Instant::now() + Duration::from_secs(2);
    outbox
        .commands
        .send(command::Command::Shutdown {
            deadline,
            forget: true,
            done,
        })
        .await
        .expect("sent");
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("answered")
        .expect("done");
    assert_eq!(h.store.route("gone.test").await.expect("read"), None);
    assert_eq!(h.store.app("gone").await.expect("read"), None);
    assert!(h.store.upstreams("gone").await.expect("read").is_empty());
    assert!(h.fakes.modes().is_empty(), "its spinlets stopped");
    assert!(
        h.store
            .spinlets()
            .await
            .expect("read")
            .iter()
            .all(|s| s.app != "gone")
    );
}

/// A replaced spinlet drains as long as an edge reports a request on it, and stops as soon as
/// that edge reports none — through the store, as edges and the supervisor talk. An edge that
/// has not reported on the drain yet holds it too; one that stops reporting holds it no more.
#[tokio::test]
async fn a_drain_lasts_while_an_edge_reports_requests_on_the_spinlet() {
    use spinforge_state::records::DrainLoad;
    use std::sync::atomic::{AtomicU64, Ordering};
    let h = Harness::new((25260, 25299));
    let mut config = app("busy", &["busy.test"], "a");
    config.instances = 1;
    config.drain_timeout = Duration::from_secs(60);
    let outbox = h.start(config.clone());
    until("it serves", || async {
        (h.fakes.modes() == ["a"]).then_some(())
    })
    .await;
    // A fake edge: every 50 ms, the requests it has on each draining spinlet it knows.
    let busy = Arc::new(AtomicU64::new(1));
    let edge = {
        let (store, busy) = (h.store.clone(), busy.clone());
        tokio::spawn(async move {
            loop {
                let drains = store
                    .upstreams_and_drains_of(&["busy".to_string()])
                    .await
                    .expect("read");
                let loads: Vec<(String, DrainLoad)> = drains[0]
                    .1
                    .iter()
                    .map(|d| {
                        let requests = busy.load(Ordering::Relaxed);
                        (
                            d.spinlet.clone(),
                            DrainLoad {
                                requests,
                                streams: 0,
                            },
                        )
                    })
                    .collect();
                store
                    .report_edge("edge-1", &loads, &[], Duration::from_millis(500))
                    .await
                    .expect("report");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut edit = config;
    edit.env.insert("MODE".into(), EnvValue::new("b"));
    outbox.define(edit);
    until("b serves and a drains", || async {
        let (ups, drains) = h
            .store
            .upstreams_and_drains_of(&["busy".to_string()])
            .await
            .ok()?
            .pop()?;
        (ups.len() == 1 && drains.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.fakes.modes(),
        ["a", "b"],
        "a drains while a request runs on it"
    );
    busy.store(0, Ordering::Relaxed);
    let t = std::time::Instant::now();
    until("a stops once the edge has nothing left on it", || async {
        (h.fakes.modes() == ["b"]).then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    until("no drain is left", || async {
        let drains = h
            .store
            .upstreams_and_drains_of(&["busy".to_string()])
            .await
            .ok()?;
        drains[0].1.is_empty().then_some(())
    })
    .await;
    edge.abort();
}
