//! Spinlet lifecycle end to end: several instances, zero-downtime deploys under load, automatic
//! rollback of a release that never gets healthy, config edits applied live, the hot deploy
//! folder, and a supervisor killed and restarted that re-adopts its spinlets. Real binary, real
//! Node spinlets, real HTTP clients (and a real Redis for the split setup).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::spinforge::{Http, Spinforge, Workspace, port_block, signal};
use support::{RedisServer, eventually, free_port};

/// A dependency-free app that answers `{"version", "pid"}` (and `/slow?ms=` after a delay).
/// `broken`: it exits at once instead of listening.
fn versioned_app(dir: &Path, version: &str, broken: bool) -> PathBuf {
    std::fs::create_dir_all(dir).expect("app dir");
    std::fs::write(
        dir.join("package.json"),
        r#"{ "name": "versioned", "version": "1.0.0", "private": true, "scripts": { "start": "node server.js" } }"#,
    )
    .expect("package.json");
    let body = if broken {
        "console.error('this release is broken'); process.exit(3);".to_string()
    } else {
        format!(
            r#"const http = require("http");
let sick = false, stalled = false;
http.createServer((req, res) => {{
  const url = new URL(req.url, "http://x");
  const answer = () => {{
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({{ version: "{version}", pid: process.pid, env: process.env.GREETING || null }}));
  }};
  if (url.pathname === "/slow") setTimeout(answer, Number(url.searchParams.get("ms") || 500));
  else if (url.pathname === "/sick") {{ sick = true; answer(); }}
  else if (url.pathname === "/stall") {{ stalled = true; answer(); }}
  else if (url.pathname === "/health") {{ if (!stalled) {{ res.statusCode = sick ? 500 : 200; res.end(sick ? "sick" : "ok"); }} }}
  else answer();
}}).listen(Number(process.env.PORT), process.env.HOST);
"#
        )
    };
    std::fs::write(dir.join("server.js"), body).expect("server.js");
    dir.to_path_buf()
}

fn yaml(edge_port: u16, state: &str, supervisor_extra: &str, apps: &str) -> String {
    format!(
        "{state}edge:\n  listen_http: 127.0.0.1:{edge_port}\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n{supervisor_extra}apps:\n{apps}",
        port_block()
    )
}

fn app_block(name: &str, source: &Path, extra: &str) -> String {
    format!(
        "  {name}:\n    domains: [{name}.test]\n    source: {}\n    idle_timeout: 0\n    health_check: {{ timeout: 5s }}\n{extra}",
        source.display()
    )
}

/// Requests from `clients` keep-alive clients in a loop until stopped; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, host: &'static str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let http = Http::new(addr);
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(host, "/").send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failed
                                .lock()
                                .expect("lock")
                                .push(format!("status {}", r.status())),
                            Err(e) => failed.lock().expect("lock").push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the clients; returns (answered, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let failed = self.failed.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

async fn version_of(http: &Http, host: &str) -> Option<String> {
    let r = http.get(host, "/").send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["version"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_load_and_a_killed_one_is_skipped() {
    let ws = Workspace::new();
    let src = versioned_app(&ws.path().join("v1"), "1", false);
    let port = free_port();
    let config = ws.write(
        "spinforge.yaml",
        &yaml(port, "", "", &app_block("trio", &src, "    instances: 3\n")),
    );
    let sf = Spinforge::start(&ws, "up", &config, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();

    // Concurrent slow requests spread over all three (least in flight first).
    let pids = eventually(Duration::from_secs(30), "three spinlets answer", || async {
        let pids = pids_of(&http, "trio.test", 9, 300).await;
        (pids.len() == 3).then_some(pids)
    })
    .await;

    // One dies: every request still gets an answer from the other two.
    let victim = *pids.iter().next().expect("a pid") as u32;
    signal(victim, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..30 {
        let r = http.fetch("trio.test", "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_ne!(r.json()["pid"].as_i64(), Some(i64::from(victim)));
    }
    // And it is replaced.
    eventually(
        Duration::from_secs(20),
        "the killed instance is replaced",
        || async {
            let now = pids_of(&http, "trio.test", 9, 300).await;
            (now.len() == 3 && !now.contains(&i64::from(victim))).then_some(())
        },
    )
    .await;
}

/// `spinforge up` with one always-on app `name` (version 1 of [`versioned_app`], `extra` YAML
/// lines) health-checked at `/health`, once it serves.
async fn up_probed(ws: &Workspace, name: &str, extra: &str) -> Spinforge {
    let src = versioned_app(&ws.path().join("v1"), "1", false);
    let port = free_port();
    let block = format!(
        "  {name}:\n    domains: [{name}.test]\n    source: {}\n    idle_timeout: 0\n{extra}    health_check: {{ path: /health, timeout: 5s }}\n",
        src.display()
    );
    let config = ws.write("spinforge.yaml", &yaml(port, "", "", &block));
    let sf = Spinforge::start(ws, "up", &config, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();
    let host = format!("{name}.test");
    eventually(
        Duration::from_secs(30),
        format!("{name} serves"),
        || async { version_of(&http, &host).await },
    )
    .await;
    sf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_fails_its_health_checks_is_replaced_while_the_other_serves() {
    let ws = Workspace::new();
    let sf = up_probed(&ws, "duo", "    instances: 2\n").await;
    let http = sf.client();
    let load = Load::start(sf.http.expect("edge"), "duo.test", 2);
    // One instance turns sick: it still answers `/`, but its health check fails from now on.
    let sick = http.fetch("duo.test", "/sick").await.json()["pid"]
        .as_i64()
        .expect("pid");
    eventually(
        Duration::from_secs(30),
        "the sick instance is replaced",
        || async {
            sf.log_text()
                .contains("replacing an unhealthy spinlet")
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "two healthy instances again",
        || async {
            let pids = pids_of(&http, "duo.test", 8, 200).await;
            (pids.len() == 2 && !pids.contains(&sick)).then_some(())
        },
    )
    .await;
    let (answered, failed) = load.finish().await;
    assert!(answered > 10, "{answered}");
    assert!(failed.is_empty(), "{failed:?}");
}

/// A spinlet whose health probes go unanswered while it answers requests is busy, not hung (a
/// saturated app answers its probe late too): it is kept while the edge gets answers from it,
/// and replaced once it answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinlet_that_misses_probes_but_answers_requests_is_kept_until_it_answers_nothing() {
    let ws = Workspace::new();
    let sf = up_probed(&ws, "stall", "").await;
    let http = sf.client();
    // From now on its health probes get no answer; requests still do.
    let stalled = http.fetch("stall.test", "/stall").await.json()["pid"]
        .as_i64()
        .expect("pid");
    let load = Load::start(sf.http.expect("edge"), "stall.test", 2);
    // Three unanswered probes in a row (every 2 s, 2 s each) would replace it within ~8 s.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(16) {
        let running = running_pids(&sf, "stall").await;
        assert_eq!(
            running,
            BTreeSet::from([stalled]),
            "replaced while it answered requests, after {:?}",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (answered, failed) = load.finish().await;
    assert!(answered > 10, "{answered}");
    assert!(failed.is_empty(), "{failed:?}");
    // No requests: nothing vouches for it any more.
    eventually(
        Duration::from_secs(30),
        "the stalled spinlet is replaced once it answers nothing",
        || async {
            let running = running_pids(&sf, "stall").await;
            (running.len() == 1 && !running.contains(&stalled)).then_some(())
        },
    )
    .await;
}

/// The pids of `app`'s running spinlets, as the admin API lists them.
/// `GET path` of the admin API at `admin`, as JSON.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let text = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
        .get(format!("http://{admin}{path}"))
        .bearer_auth(support::spinforge::ADMIN_TOKEN)
        .send()
        .await
        .expect("admin API answers")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&text).expect("JSON")
}

async fn running_pids(sf: &Spinforge, app: &str) -> BTreeSet<i64> {
    let admin = sf.admin.expect("up has an admin API");
    let list = admin_get(admin, "/api/v1/spinlets").await;
    list.as_array()
        .expect("a list")
        .iter()
        .filter(|s| s["app"] == app && s["state"] == "running")
        .filter_map(|s| s["pid"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_deploys_under_load_lose_no_request_and_a_broken_release_rolls_back() {
    let ws = Workspace::new();
    let port = free_port();
    let write_config = |version: &str, broken: bool| {
        let src = versioned_app(&ws.path().join(format!("v{version}")), version, broken);
        ws.write(
            "spinforge.yaml",
            &yaml(port, "", "", &app_block("busy", &src, "    instances: 2\n")),
        )
    };
    let config = write_config("0", false);
    let sf = Spinforge::start(&ws, "up", &config, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();
    eventually(Duration::from_secs(30), "version 0 serves", || async {
        (version_of(&http, "busy.test").await.as_deref() == Some("0")).then_some(())
    })
    .await;

    let load = Load::start(sf.http.expect("edge"), "busy.test", 4);
    let started = std::time::Instant::now();
    for v in 1..=10 {
        let version = v.to_string();
        // A new source folder: the config edit rebuilds and redeploys.
        write_config(&version, false);
        eventually(
            Duration::from_secs(60),
            format!("version {version} serves"),
            || async {
                (version_of(&http, "busy.test").await.as_deref() == Some(version.as_str()))
                    .then_some(())
            },
        )
        .await;
    }
    let deploys_took = started.elapsed();

    // A release that never gets healthy: the running one keeps serving, by itself.
    write_config("broken", true);
    eventually(
        Duration::from_secs(60),
        "the broken release is refused",
        || async {
            sf.log_text()
                .contains("the new release did not get healthy")
                .then_some(())
        },
    )
    .await;
    assert_eq!(version_of(&http, "busy.test").await.as_deref(), Some("10"));
    let (answered, failed) = load.finish().await;
    eprintln!(
        "10 deploys in {deploys_took:?} under load: {answered} answered, {} failed",
        failed.len()
    );
    assert!(answered > 100, "the load kept going: {answered}");
    assert!(
        failed.is_empty(),
        "failed requests during deploys: {failed:?}"
    );
    let log = sf.log_text();
    assert!(
        log.contains("this release is broken"),
        "the failure quotes the app's log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_apply_live_and_a_bad_edit_changes_nothing() {
    let ws = Workspace::new();
    let src = versioned_app(&ws.path().join("app"), "1", false);
    let port = free_port();
    let one = app_block("first", &src, "");
    let config = ws.write("spinforge.yaml", &yaml(port, "", "", &one));
    let sf = Spinforge::start(&ws, "up", &config, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();
    eventually(Duration::from_secs(30), "first serves", || async {
        version_of(&http, "first.test").await
    })
    .await;
    assert_eq!(http.fetch("second.test", "/").await.status, 404);

    // Add an app and change the first one's env.
    let both =
        app_block("first", &src, "    env: { GREETING: hello }\n") + &app_block("second", &src, "");
    ws.write("spinforge.yaml", &yaml(port, "", "", &both));
    eventually(Duration::from_secs(30), "second is added", || async {
        version_of(&http, "second.test").await
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "first gets its new env",
        || async {
            let r = http.fetch("first.test", "/").await;
            (r.status == 200 && r.json()["env"] == "hello").then_some(())
        },
    )
    .await;

    // A broken edit: logged with its place, nothing changes.
    ws.write(
        "spinforge.yaml",
        &yaml(port, "", "", &both).replace("idle_timeout: 0", "idle_timeout: soon"),
    );
    eventually(
        Duration::from_secs(10),
        "the bad edit is reported",
        || async {
            let log = sf.log_text();
            (log.contains("the config file is invalid; nothing was changed")
                && log.contains("idle_timeout"))
            .then_some(())
        },
    )
    .await;
    assert!(version_of(&http, "first.test").await.is_some());
    assert!(version_of(&http, "second.test").await.is_some());

    // Removing an app takes its route away.
    ws.write("spinforge.yaml", &yaml(port, "", "", &one));
    eventually(Duration::from_secs(20), "second is removed", || async {
        (http.fetch("second.test", "/").await.status == 404).then_some(())
    })
    .await;
    assert!(version_of(&http, "first.test").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_or_archive_dropped_in_deploy_dir_is_served() {
    let ws = Workspace::new();
    let port = free_port();
    let deploy = ws.path().join("deploy");
    std::fs::create_dir_all(&deploy).expect("deploy dir");
    let config = ws.write(
        "spinforge.yaml",
        &yaml(
            port,
            "",
            &format!("  deploy_dir: {}\n", deploy.display()),
            "",
        ),
    );
    let sf = Spinforge::start(&ws, "up", &config, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();

    // A folder with its app section, copied in slowly: nothing happens while it still changes.
    let folder = deploy.join("dropped");
    std::fs::create_dir_all(&folder).expect("folder");
    std::fs::write(
        folder.join("spinforge.yaml"),
        "domains: [dropped.test]\nidle_timeout: 0\n",
    )
    .expect("app section");
    for i in 0..6 {
        std::fs::write(folder.join(format!("asset-{i}.txt")), "still copying").expect("asset");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !deploy.join("dropped.deployed").exists() && !deploy.join("dropped.failed").exists(),
            "a folder still being copied is not picked up"
        );
    }
    versioned_app(&folder, "d1", false);
    eventually(
        Duration::from_secs(60),
        "the dropped folder serves",
        || async {
            (version_of(&http, "dropped.test").await.as_deref() == Some("d1")).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the .deployed marker", || async {
        std::fs::read_to_string(deploy.join("dropped.deployed"))
            .ok()
            .filter(|t| t.contains("release: 1"))
    })
    .await;

    // An archive of one.
    let staging = ws.path().join("packed");
    let src = versioned_app(&staging, "a1", false);
    std::fs::write(src.join("spinforge.yaml"), "domains: [packed.test]\n").expect("app section");
    let archive = ws.path().join("packed.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&staging)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    // Moved in whole (a rename), as users should.
    std::fs::rename(&archive, deploy.join("packed.tar.gz")).expect("move archive");
    eventually(
        Duration::from_secs(60),
        "the dropped archive serves",
        || async {
            (version_of(&http, "packed.test").await.as_deref() == Some("a1")).then_some(())
        },
    )
    .await;

    // A broken section gets a .failed marker saying why.
    let bad = versioned_app(&deploy.join("bad"), "b", false);
    std::fs::write(
        bad.join("spinforge.yaml"),
        "domains: [bad.test]\nmemroy: 1G\n",
    )
    .expect("section");
    let failed = eventually(Duration::from_secs(30), "the .failed marker", || async {
        std::fs::read_to_string(deploy.join("bad.failed")).ok()
    })
    .await;
    assert!(failed.contains("memroy"), "{failed}");
    assert_eq!(http.fetch("bad.test", "/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_is_replaced_and_readopts_its_spinlets_with_no_failed_request() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let src = versioned_app(&ws.path().join("app"), "1", false);
    let port = free_port();
    let state = format!("state:\n  redis: {}\n", redis.url());
    let config = ws.write(
        "spinforge.yaml",
        &yaml(
            port,
            &state,
            "",
            &app_block("steady", &src, "    instances: 2\n"),
        ),
    );
    let mut supervisor = Spinforge::start(&ws, "supervisor", &config, None);
    let edge = Spinforge::start(&ws, "edge", &config, Some(([127, 0, 0, 1], port).into()));
    let http = edge.client();
    eventually(Duration::from_secs(30), "the app serves", || async {
        version_of(&http, "steady.test").await
    })
    .await;
    let pids_before = spinlet_pids(&http).await;
    assert_eq!(pids_before.len(), 2, "{pids_before:?}");

    let load = Load::start(edge.http.expect("edge"), "steady.test", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    supervisor.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Spinforge::start(&ws, "supervisor", &config, None);
    eventually(
        Duration::from_secs(30),
        "the new supervisor adopts",
        || async {
            (second
                .log_text()
                .matches("adopted a running spinlet")
                .count()
                == 2)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (answered, failed) = load.finish().await;
    eprintln!(
        "supervisor replaced under load: {answered} answered, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        spinlet_pids(&http).await,
        pids_before,
        "the same processes serve"
    );

    // The adopted spinlets are really watched: one that dies is restarted.
    let victim = *pids_before.iter().next().expect("pid") as u32;
    signal(victim, nix::sys::signal::Signal::SIGKILL);
    eventually(
        Duration::from_secs(20),
        "the new supervisor restarts it",
        || async {
            let now = spinlet_pids(&http).await;
            (now.len() == 2 && !now.contains(&i64::from(victim))).then_some(())
        },
    )
    .await;

    // A graceful hand-over: SIGQUIT leaves the spinlets running for the next supervisor.
    let mut second = second;
    let pids = spinlet_pids(&http).await;
    let load = Load::start(edge.http.expect("edge"), "steady.test", 4);
    signal(second.pid(), nix::sys::signal::Signal::SIGQUIT);
    let (status, _) = second.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let third = Spinforge::start(&ws, "supervisor", &config, None);
    eventually(
        Duration::from_secs(30),
        "the third supervisor adopts",
        || async {
            (third
                .log_text()
                .matches("adopted a running spinlet")
                .count()
                == 2)
                .then_some(())
        },
    )
    .await;
    let (answered, failed) = load.finish().await;
    eprintln!(
        "supervisor handed over with SIGQUIT: {answered} answered, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(spinlet_pids(&http).await, pids);
}

/// The pids that answer `n` concurrent slow requests for `host` (least-in-flight spreads them
/// over every instance).
async fn pids_of(http: &Http, host: &str, n: usize, slow_ms: u32) -> BTreeSet<i64> {
    let path = format!("/slow?ms={slow_ms}");
    let replies = futures::future::join_all((0..n).map(|_| http.get(host, &path).send())).await;
    let mut pids = BTreeSet::new();
    for r in replies.into_iter().flatten() {
        if let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(pid) = v["pid"].as_i64()
        {
            pids.insert(pid);
        }
    }
    pids
}

async fn spinlet_pids(http: &Http) -> BTreeSet<i64> {
    pids_of(http, "steady.test", 8, 200).await
}

/// A copy of the echo fixture in `dir` (the same files, so the same source checksum).
fn echo_copy(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("app dir");
    for f in ["package.json", "server.js"] {
        std::fs::copy(support::spinforge::fixture("echo").join(f), dir.join(f)).expect("copy");
    }
    dir.to_path_buf()
}

fn web_block(source: &Path, name: &str) -> String {
    format!(
        "  web:\n    domains: [web.test]\n    source: {}\n    idle_timeout: 0\n    env: {{ APP_NAME: {name} }}\n",
        source.display()
    )
}

/// `APP_NAME` of the spinlet that answers `web.test`.
async fn web_name(http: &Http) -> Option<String> {
    let r = http.get("web.test", "/").send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["app"].as_str().map(str::to_string)
}

/// Issue 15: moving an app to an identical copy of its source (the build reuses the release)
/// while changing its env must still roll out the new env, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_reuses_its_release_still_rolls_out_the_new_env() {
    let ws = Workspace::new();
    let (a1, a2) = (
        echo_copy(&ws.path().join("a1")),
        echo_copy(&ws.path().join("a2")),
    );
    let port = free_port();
    let config = ws.write("spinforge.yaml", &yaml(port, "", "", &web_block(&a1, "a1")));
    let sf = Spinforge::start(&ws, "up", &config, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();
    eventually(Duration::from_secs(30), "web serves a1", || async {
        (web_name(&http).await.as_deref() == Some("a1")).then_some(())
    })
    .await;

    let load = Load::start(sf.http.expect("edge"), "web.test", 4);
    ws.write("spinforge.yaml", &yaml(port, "", "", &web_block(&a2, "a2")));
    eventually(Duration::from_secs(30), "web serves a2", || async {
        (web_name(&http).await.as_deref() == Some("a2")).then_some(())
    })
    .await;
    let (answered, failed) = load.finish().await;
    assert!(answered > 0);
    assert!(failed.is_empty(), "{failed:?}");
    let releases = std::fs::read_dir(ws.data_dir().join("apps/web/releases"))
        .expect("releases")
        .count();
    assert_eq!(releases, 1, "the release is reused, not built again");
}

/// Issue 15: an edit made while the supervisor was down is applied by the next one, which
/// adopts the running spinlets and then rolls out the new env (the release is reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_while_the_supervisor_was_down_is_applied_after_adoption() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let (a1, a2) = (
        echo_copy(&ws.path().join("a1")),
        echo_copy(&ws.path().join("a2")),
    );
    let port = free_port();
    let state = format!("state:\n  redis: {}\n", redis.url());
    let config = ws.write(
        "spinforge.yaml",
        &yaml(port, &state, "", &web_block(&a1, "a1")),
    );
    let mut supervisor = Spinforge::start(&ws, "supervisor", &config, None);
    let edge = Spinforge::start(&ws, "edge", &config, Some(([127, 0, 0, 1], port).into()));
    let http = edge.client();
    eventually(Duration::from_secs(30), "web serves a1", || async {
        (web_name(&http).await.as_deref() == Some("a1")).then_some(())
    })
    .await;
    supervisor.kill();
    ws.write(
        "spinforge.yaml",
        &yaml(port, &state, "", &web_block(&a2, "a2")),
    );
    let load = Load::start(edge.http.expect("edge"), "web.test", 4);
    let _second = Spinforge::start(&ws, "supervisor", &config, None);
    eventually(Duration::from_secs(30), "web serves a2", || async {
        (web_name(&http).await.as_deref() == Some("a2")).then_some(())
    })
    .await;
    let (answered, failed) = load.finish().await;
    assert!(answered > 0);
    assert!(failed.is_empty(), "{failed:?}");
}

/// A rollback is a choice that holds until the next deploy or source edit: a supervisor killed
/// after it, whose successor's check build reuses the newest release (the source is unchanged),
/// keeps serving the rolled-back release; the next source edit then builds and serves as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_outlives_a_killed_supervisor_until_the_next_source_edit() {
    use spinforge_state::records::BuildState;

    let redis = RedisServer::start();
    let ws = Workspace::new();
    let sources: Vec<PathBuf> = ["1", "2", "3"]
        .iter()
        .map(|v| versioned_app(&ws.path().join(format!("v{v}")), v, false))
        .collect();
    let port = free_port();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let state = format!("state:\n  redis: {}\n", redis.url());
    let extra = format!("  admin_listen: {admin}\n");
    let write = |source: &Path| {
        ws.write(
            "spinforge.yaml",
            &yaml(port, &state, &extra, &app_block("web", source, "")),
        )
    };
    let config = write(&sources[0]);
    let mut supervisor = Spinforge::start(&ws, "supervisor", &config, None);
    let edge = Spinforge::start(&ws, "edge", &config, Some(([127, 0, 0, 1], port).into()));
    let http = edge.client();
    let serves = |version: &'static str| {
        let http = &http;
        async move {
            eventually(
                Duration::from_secs(60),
                &format!("web serves {version}"),
                || async {
                    (version_of(http, "web.test").await.as_deref() == Some(version)).then_some(())
                },
            )
            .await
        }
    };
    serves("1").await;
    write(&sources[1]);
    serves("2").await;

    let api = reqwest::Client::new();
    let rollback = api
        .post(format!("http://{admin}/api/v1/apps/web/rollback"))
        .bearer_auth(support::spinforge::ADMIN_TOKEN)
        .header("content-length", "0")
        .send()
        .await
        .expect("rollback");
    assert_eq!(rollback.status(), 200, "{:?}", rollback.text().await);
    serves("1").await;
    let pin = ws.data_dir().join("apps/web/releases/pin.json");
    assert!(pin.exists(), "the rollback is kept on disk");
    let pinned = |releases: serde_json::Value| -> Vec<u64> {
        let list = releases.as_array().cloned().unwrap_or_default();
        list.iter()
            .filter(|r| r["pinned"] == true)
            .filter_map(|r| r["release"].as_u64())
            .collect()
    };
    let releases = admin_get(admin, "/api/v1/apps/web/releases").await;
    assert_eq!(
        pinned(releases),
        [1],
        "the API shows what the rollback holds"
    );

    let store = redis.store().await;
    let builds_before = store.builds_of("web").await.expect("builds").len();
    supervisor.kill();
    let _second = Spinforge::start(&ws, "supervisor", &config, None);
    // The new supervisor's check build ends (reusing release 2, the source being unchanged)...
    let check = eventually(Duration::from_secs(60), "the check build ends", || async {
        let builds = store.builds_of("web").await.ok()?;
        let newest = builds.first()?;
        (builds.len() > builds_before && newest.state == BuildState::Succeeded)
            .then(|| newest.clone())
    })
    .await;
    assert_eq!(check.release, Some(2), "{check:?}");
    // ...and release 1 serves on: the app record says so, and every answer is 1's.
    eventually(Duration::from_secs(10), "release 1 is current", || async {
        let app = store.app("web").await.ok()??;
        (app.current_release == Some(1) && app.state == "running").then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            version_of(&http, "web.test").await.as_deref(),
            Some("1"),
            "the rollback was undone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The next source edit builds and serves as usual, and the pin is gone.
    write(&sources[2]);
    serves("3").await;
    assert!(!pin.exists(), "a source edit ends the rollback");
    let releases = admin_get(admin, "/api/v1/apps/web/releases").await;
    assert!(pinned(releases).is_empty(), "nothing is held any more");
}
