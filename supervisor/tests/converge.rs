//! Every change converges (issue 15), against a real supervisor running real Node spinlets on the
//! embedded store:
//!
//! - a watchdog follows every build through its `build_state` events and fails the test if one
//!   stays in flight past its deadline, ends twice, or ends without its event — while builds are
//!   driven through every path: a check build at start, a fresh build, a reused release, a failing
//!   build, a deploy with no source, a build replaced by a newer one, and a supervisor shut down
//!   mid-build;
//! - an env edit with an unchanged source rolls out new spinlets of the same release;
//! - release pruning spares the release that serves and the one a rollback would pick.

mod support;

use spinforge_state::config::AppSource;
use spinforge_state::records::{BuildState, SpinletState};
use spinforge_state::{Event, Signal, Store};
use spinforge_supervisor::control::Lifecycle;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// No build of these tests may stay in flight longer (the slow ones are cancelled well before).
const BUILD_DEADLINE: Duration = Duration::from_secs(30);
/// Nor may a change take longer to serve.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(30);

/// An app answering `{"version", "pid", "greeting"}`; with `build_secs`, a build script that
/// writes its pid to `build.pid` beside the source and sleeps that long; `broken`: it exits at
/// once instead of listening.
fn app_source(dir: &Path, version: &str, build_secs: Option<u32>, broken: bool) -> PathBuf {
    std::fs::create_dir_all(dir).expect("app dir");
    let build = match build_secs {
        Some(secs) => {
            std::fs::write(
                dir.join("build.js"),
                format!(
                    "require('fs').writeFileSync({:?}, String(process.pid));\nsetTimeout(() => {{}}, {secs}000);\n",
                    dir.with_extension("pid").display().to_string()
                ),
            )
            .expect("build.js");
            r#", "build": "node build.js""#
        }
        None => "",
    };
    std::fs::write(
        dir.join("package.json"),
        format!(
            r#"{{ "name": "v", "private": true, "scripts": {{ "start": "node server.js"{build} }} }}"#
        ),
    )
    .expect("package.json");
    let server = if broken {
        "process.exit(3);".to_string()
    } else {
        format!(
            r#"require("http").createServer((q, s) => s.end(JSON.stringify({{ version: "{version}", pid: process.pid, greeting: process.env.GREETING || null }}))).listen(Number(process.env.PORT), process.env.HOST);"#
        )
    };
    std::fs::write(dir.join("server.js"), server).expect("server.js");
    dir.to_path_buf()
}

async fn start(dir: &Path, store: Store, ports: &str, builds: &str, apps: &str) -> Running {
    let yaml = format!(
        "edge:\n  grace: 1s\nsupervisor:\n  data_dir: {}\n  port_range: {ports}\n  builds: {{ {builds} }}\napps:\n{apps}",
        dir.join("data").display(),
    );
    Running::start(dir, &yaml, store).await
}

/// What the watchdog saw of one build.
#[derive(Debug, Default, Clone)]
struct Seen {
    app: String,
    states: Vec<String>,
}

impl Seen {
    fn ends(&self) -> Vec<&str> {
        self.states
            .iter()
            .map(String::as_str)
            .filter(|s| matches!(*s, "succeeded" | "failed" | "cancelled"))
            .collect()
    }
}

/// Follows every build's `build_state` events.
#[derive(Clone)]
struct Watchdog {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    lagged: Arc<Mutex<bool>>,
}

impl Watchdog {
    fn start(store: &Store) -> Watchdog {
        let dog = Watchdog {
            seen: Arc::default(),
            lagged: Arc::default(),
        };
        let mut events = store.subscribe();
        let d = dog.clone();
        tokio::spawn(async move {
            let mut resyncs = 0;
            while let Some(signal) = events.next().await {
                match signal {
                    Signal::Event(Event::BuildState { id, app, state }) => {
                        let mut seen = d.seen.lock().expect("lock");
                        let entry = seen.entry(id).or_default();
                        entry.app = app;
                        entry.states.push(state);
                    }
                    Signal::Event(_) => {}
                    // The first is the subscription's start; another means events were lost.
                    Signal::Resync => {
                        resyncs += 1;
                        if resyncs > 1 {
                            *d.lagged.lock().expect("lock") = true;
                        }
                    }
                }
            }
        });
        dog
    }

    /// The id of a build of `app` it saw, once there is one.
    async fn any_of(&self, app: &str) -> String {
        until(&format!("a build of {app}"), || async {
            let seen = self.seen.lock().expect("lock");
            seen.iter()
                .find(|(_, s)| s.app == app)
                .map(|(id, _)| id.clone())
        })
        .await
    }

    fn get(&self, id: &str) -> Option<Seen> {
        self.seen.lock().expect("lock").get(id).cloned()
    }

    /// Waits for build `id` to end (its event) and returns how.
    async fn ended(&self, id: &str) -> String {
        let t = Instant::now();
        loop {
            if let Some(end) = self
                .get(id)
                .and_then(|s| s.ends().first().map(|e| e.to_string()))
            {
                return end;
            }
            assert!(
                t.elapsed() < BUILD_DEADLINE,
                "build {id} still in flight after {BUILD_DEADLINE:?}: {:?}",
                self.get(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if any build it saw is still in flight past the deadline, ended more than once, or
    /// ended without its status saying so.
    async fn check_all(&self, store: &Store) {
        assert!(
            !*self.lagged.lock().expect("lock"),
            "the watchdog lost events"
        );
        let ids: Vec<String> = self.seen.lock().expect("lock").keys().cloned().collect();
        assert!(!ids.is_empty());
        for id in ids {
            let end = self.ended(&id).await;
            let seen = self.get(&id).expect("seen");
            assert_eq!(seen.ends().len(), 1, "build {id} ended once: {seen:?}");
            assert_eq!(
                seen.states.first().map(String::as_str),
                Some("queued"),
                "{seen:?}"
            );
            let status = store.build(&id).await.expect("read").expect("status");
            assert_eq!(status.state.as_str(), end, "{status:?}");
            assert!(status.finished.is_some(), "{status:?}");
        }
    }
}

/// `GET /` straight from the app's first upstream.
async fn answer(store: &Store, app: &str) -> Option<serde_json::Value> {
    let addr = store.upstreams(app).await.ok()?.into_iter().next()?;
    let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < ROLLOUT_DEADLINE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every upstream of `app` answers `version` (and `greeting`).
async fn serving(store: &Store, app: &str, version: &str, greeting: Option<&str>) {
    until(
        &format!("{app} serves {version} / {greeting:?}"),
        || async {
            let all = store.upstreams(app).await.ok()?;
            for _ in 0..all.len().max(1) {
                let v = answer(store, app).await?;
                if v["version"] != version || v["greeting"].as_str() != greeting {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
}

async fn build_state(store: &Store, id: &str) -> Option<BuildState> {
    store.build(id).await.ok().flatten().map(|s| s.state)
}

fn pid_alive(pid_file: &Path) -> Option<bool> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// Pids of the app's spinlets recorded as running (replaced ones are `stopping` as they drain).
async fn running_pids(store: &Store, app: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = store
        .spinlets()
        .await
        .expect("spinlets")
        .into_iter()
        .filter(|s| s.app == app && s.state == SpinletState::Running)
        .map(|s| s.pid)
        .collect();
    pids.sort_unstable();
    pids
}

fn releases(dir: &Path, app: &str) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir.join("data/apps").join(app).join("releases"))
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_build_ends_once_with_its_event_whatever_path_it_takes() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let store = Store::embedded();
    let dog = Watchdog::start(&store);
    let file_src = app_source(&d.join("file-src"), "file", None, false);
    let apps = format!(
        "  fromfile:\n    domains: [file.test]\n    source: {}\n    idle_timeout: 0\n",
        file_src.display()
    );
    let sup = start(d, store.clone(), "24640-24679", "", &apps).await;
    let h = &sup.handle;
    // The check build at start.
    serving(&store, "fromfile", "file", None).await;

    h.put_app("shop", r#"{"domains": ["shop.test"], "idle_timeout": 0}"#)
        .await
        .expect("created");
    // No source yet: the deploy's build fails at once, with its record.
    let id = h
        .deploy("shop", None)
        .await
        .expect("deploy without a source");
    assert_eq!(dog.ended(&id).await, "failed");

    // A fresh build, then the same content from another folder: the release is reused.
    let v1 = app_source(&d.join("v1"), "1", None, false);
    let id = h
        .deploy("shop", Some(AppSource::Directory(v1)))
        .await
        .expect("deploy v1");
    assert_eq!(dog.ended(&id).await, "succeeded");
    serving(&store, "shop", "1", None).await;
    let copy = app_source(&d.join("v1-copy"), "1", None, false);
    let id = h
        .deploy("shop", Some(AppSource::Directory(copy)))
        .await
        .expect("deploy the copy");
    assert_eq!(dog.ended(&id).await, "succeeded");
    assert_eq!(releases(d, "shop"), [1], "reused, not built again");

    // A failing build: the running release keeps serving.
    let bad = d.join("bad");
    std::fs::create_dir_all(&bad).expect("bad dir");
    std::fs::write(bad.join("package.json"), "{ not json").expect("package.json");
    let id = h
        .deploy("shop", Some(AppSource::Directory(bad)))
        .await
        .expect("deploy bad");
    assert_eq!(dog.ended(&id).await, "failed");
    serving(&store, "shop", "1", None).await;

    // A slow build replaced by a newer one: the first is cancelled (its script killed), the
    // second serves.
    let slow = app_source(&d.join("slow"), "slow", Some(120), false);
    let slow_id = h
        .deploy("shop", Some(AppSource::Directory(slow)))
        .await
        .expect("deploy slow");
    until("the slow build runs its script", || async {
        (pid_alive(&d.join("slow.pid")) == Some(true)).then_some(())
    })
    .await;
    let v2 = app_source(&d.join("v2"), "2", None, false);
    let id = h
        .deploy("shop", Some(AppSource::Directory(v2)))
        .await
        .expect("deploy v2");
    assert_eq!(dog.ended(&slow_id).await, "cancelled");
    assert_eq!(dog.ended(&id).await, "succeeded");
    serving(&store, "shop", "2", None).await;
    until("the replaced build's script is killed", || async {
        (pid_alive(&d.join("slow.pid")) == Some(false)).then_some(())
    })
    .await;

    // A supervisor shut down mid-build: the build ends cancelled, its script killed.
    let slow2 = app_source(&d.join("slow2"), "slow2", Some(120), false);
    let id = h
        .deploy("shop", Some(AppSource::Directory(slow2)))
        .await
        .expect("deploy slow2");
    until("the second slow build runs", || async {
        (pid_alive(&d.join("slow2.pid")) == Some(true)).then_some(())
    })
    .await;
    assert_eq!(build_state(&store, &id).await, Some(BuildState::Running));
    sup.shutdown().await;
    assert_eq!(dog.ended(&id).await, "cancelled");
    until("the build script is killed at shutdown", || async {
        (pid_alive(&d.join("slow2.pid")) == Some(false)).then_some(())
    })
    .await;

    dog.check_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_edit_rolls_out_the_same_release_and_a_restart_adopts_without_rolling() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let store = Store::embedded();
    let sup = start(d, store.clone(), "24680-24719", "", "").await;
    let h = &sup.handle;
    h.put_app(
        "shop",
        r#"{"domains": ["shop.test"], "idle_timeout": 0, "instances": 2}"#,
    )
    .await
    .expect("created");
    let v1 = app_source(&d.join("v1"), "1", None, false);
    h.deploy("shop", Some(AppSource::Directory(v1)))
        .await
        .expect("deploy");
    serving(&store, "shop", "1", None).await;
    h.put_app(
        "shop",
        r#"{"domains": ["shop.test"], "idle_timeout": 0, "instances": 2, "env": {"GREETING": "hi"}}"#,
    )
    .await
    .expect("env edit");
    serving(&store, "shop", "1", Some("hi")).await;
    assert_eq!(releases(d, "shop"), [1]);
    let record = store.app("shop").await.expect("read").expect("record");
    assert_eq!(record.current_release, Some(1));

    // The spinlets' records carry what they run with: a supervisor that adopts them (same
    // definition) keeps them as they are.
    let pids = running_pids(&store, "shop").await;
    assert_eq!(pids.len(), 2);
    h.detach().await.expect("detach");
    sup.exited().await;
    let dog = Watchdog::start(&store);
    let again = start(d, store.clone(), "24680-24719", "", "").await;
    // Its check build reuses the release and, the spinlets matching, changes nothing.
    let check = dog.any_of("shop").await;
    assert_eq!(dog.ended(&check).await, "succeeded");
    // Commands are handled in order: once this answers, the build's end has been handled.
    again
        .handle
        .lifecycle("shop", Lifecycle::Start)
        .await
        .expect("start");
    assert_eq!(
        running_pids(&store, "shop").await,
        pids,
        "the adopted spinlets serve on"
    );
    serving(&store, "shop", "1", Some("hi")).await;
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_spares_the_serving_release_and_the_rollback_target() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let store = Store::embedded();
    let sup = start(d, store.clone(), "24720-24759", "keep_releases: 1", "").await;
    let h = &sup.handle;
    h.put_app(
        "shop",
        r#"{"domains": ["shop.test"], "idle_timeout": 0, "health_check": {"timeout": "5s"}}"#,
    )
    .await
    .expect("created");
    for v in ["1", "2"] {
        let src = app_source(&d.join(format!("v{v}")), v, None, false);
        h.deploy("shop", Some(AppSource::Directory(src)))
            .await
            .expect("deploy");
        serving(&store, "shop", v, None).await;
    }
    // keep_releases 1, but a rollback from 2 picks 1: both stay.
    assert_eq!(releases(d, "shop"), [1, 2]);
    assert_eq!(h.rollback("shop", None).await.expect("rollback"), 1);
    serving(&store, "shop", "1", None).await;

    // Serving 1 (rolled back), a new release that never gets healthy: 1 keeps serving, so it
    // stays on disk and can start again.
    let mut events = store.subscribe();
    let broken = app_source(&d.join("v3"), "3", None, true);
    h.deploy("shop", Some(AppSource::Directory(broken)))
        .await
        .expect("deploy broken");
    tokio::time::timeout(ROLLOUT_DEADLINE, async {
        loop {
            match events.next().await.expect("the store is there") {
                Signal::Event(Event::SpinletState { id, state, .. })
                    if id == "shop-3-failed" && state == "failed" =>
                {
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("release 3 is refused");
    // Handled after the refusal (and the pruning that follows it): commands come in order.
    h.lifecycle("shop", Lifecycle::Restart)
        .await
        .expect("release 1 restarts");
    serving(&store, "shop", "1", None).await;
    assert_eq!(
        store
            .app("shop")
            .await
            .expect("read")
            .expect("record")
            .current_release,
        Some(1)
    );
    // keep_releases 1: the newest stays and 1 serves (2 goes, unless its spinlets still drain).
    let kept = releases(d, "shop");
    assert!(kept.contains(&1) && kept.contains(&3), "{kept:?}");
    sup.shutdown().await;
}
