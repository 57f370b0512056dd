//! The supervisor's control handle (what the admin API and the deploy folder use) against a real
//! supervisor running real Node spinlets on the embedded store: apps created, deployed, rolled
//! back, stopped, started, restarted, refused, deleted, and kept across a restart.

mod support;

use spinforge_state::Store;
use spinforge_state::config::AppSource;
use spinforge_supervisor::control::{ControlError, Lifecycle, Origin};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn versioned_app(dir: &Path, version: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("app dir");
    std::fs::write(
        dir.join("package.json"),
        r#"{ "name": "v", "private": true, "scripts": { "start": "node server.js" } }"#,
    )
    .expect("package.json");
    std::fs::write(
        dir.join("server.js"),
        format!(
            r#"require("http").createServer((q, s) => s.end(JSON.stringify({{ version: "{version}", pid: process.pid }}))).listen(Number(process.env.PORT), process.env.HOST);"#
        ),
    )
    .expect("server.js");
    dir.to_path_buf()
}

async fn start(dir: &Path, store: Store, ports: &str) -> Running {
    let yaml = format!(
        "edge:\n  grace: 1s\nsupervisor:\n  data_dir: {}\n  port_range: {ports}\napps:\n  fromfile:\n    domains: [file.test]\n    source: {}\n",
        dir.join("data").display(),
        versioned_app(&dir.join("file-src"), "file").display()
    );
    Running::start(dir, &yaml, store).await
}

/// `GET /` straight from the app's first upstream: (version, pid).
async fn answer(store: &Store, app: &str) -> Option<(String, i64)> {
    let addr = store.upstreams(app).await.ok()?.into_iter().next()?;
    let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((v["version"].as_str()?.to_string(), v["pid"].as_i64()?))
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
        assert!(t.elapsed() < Duration::from_secs(40), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serving(store: &Store, app: &str, version: &str) -> i64 {
    until(&format!("{app} serves version {version}"), || async {
        answer(store, app)
            .await
            .filter(|(v, _)| v == version)
            .map(|(_, pid)| pid)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_apps_deploy_roll_back_stop_start_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::embedded();
    let ports = "24600-24639";
    let sup = start(dir.path(), store.clone(), ports).await;
    let h = &sup.handle;

    // Created without a source: it waits for its first deploy.
    let app = h
        .put_app("shop", r#"{"domains": ["shop.test"], "idle_timeout": 0}"#)
        .await
        .expect("created");
    assert_eq!(app.origin, Origin::Api);
    let v1 = versioned_app(&dir.path().join("v1"), "1");
    h.deploy("shop", Some(AppSource::Directory(v1)))
        .await
        .expect("deploy 1");
    serving(&store, "shop", "1").await;
    let v2 = versioned_app(&dir.path().join("v2"), "2");
    let build = h
        .deploy("shop", Some(AppSource::Directory(v2)))
        .await
        .expect("deploy 2");
    assert!(build.starts_with("shop-"), "{build}");
    serving(&store, "shop", "2").await;

    // Rollback: to the previous release, then to a named one; an unknown one is refused.
    assert_eq!(h.rollback("shop", None).await.expect("rollback"), 1);
    serving(&store, "shop", "1").await;
    assert_eq!(h.rollback("shop", Some(2)).await.expect("rollback to 2"), 2);
    let pid = serving(&store, "shop", "2").await;
    assert!(matches!(
        h.rollback("shop", Some(9)).await,
        Err(ControlError::UnknownRelease(_, 9))
    ));

    // Restart gives new processes of the same release; stop and start.
    h.lifecycle("shop", Lifecycle::Restart)
        .await
        .expect("restart");
    until("a new process serves", || async {
        answer(&store, "shop")
            .await
            .filter(|(v, p)| v == "2" && *p != pid)
    })
    .await;
    h.lifecycle("shop", Lifecycle::Stop).await.expect("stop");
    until("stopped", || async {
        store.upstreams("shop").await.ok().filter(Vec::is_empty)
    })
    .await;
    assert_eq!(
        store
            .app("shop")
            .await
            .expect("read")
            .expect("record")
            .state,
        "idle"
    );
    h.lifecycle("shop", Lifecycle::Start).await.expect("start");
    serving(&store, "shop", "2").await;

    // Refusals change nothing.
    assert!(matches!(
        h.put_app("other", r#"{"domains": ["shop.test"]}"#).await,
        Err(ControlError::Conflict(m)) if m.contains("shop.test")
    ));
    assert!(matches!(
        h.put_app("fromfile", r#"{"domains": ["f2.test"]}"#).await,
        Err(ControlError::Conflict(m)) if m.contains("config file")
    ));
    match h
        .put_app("bad", r#"{"domains": ["bad.test"], "memroy": "1G"}"#)
        .await
    {
        Err(ControlError::Invalid(errors)) => {
            assert!(errors.0.iter().any(|e| e.key == "memroy"), "{errors}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(matches!(
        h.delete_app("fromfile").await,
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        h.deploy("nobody", None).await,
        Err(ControlError::UnknownApp(_))
    ));
    let names: Vec<String> = h
        .apps()
        .await
        .expect("apps")
        .into_iter()
        .map(|a| a.config.name)
        .collect();
    assert_eq!(names, ["fromfile", "shop"]);

    // A second API app, then a restart: both API apps come back, with their deployed source.
    h.put_app("gone", r#"{"domains": ["gone.test"]}"#)
        .await
        .expect("created");
    h.delete_app("gone").await.expect("deleted");
    assert!(store.route("gone.test").await.expect("read").is_none());
    sup.shutdown().await;

    let again = start(dir.path(), store.clone(), ports).await;
    let shop = again.handle.app("shop").await.expect("shop survived");
    assert_eq!(shop.origin, Origin::Api);
    assert!(matches!(&shop.config.source, AppSource::Directory(p) if p.ends_with("v2")));
    assert!(again.handle.app("gone").await.is_err());
    serving(&store, "shop", "2").await;
    again.shutdown().await;
}
