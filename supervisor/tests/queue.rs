//! The build queue with real builds (npm running a slow build script): the concurrency limit,
//! status and log in the store, cancelling a queued and a running build, and the time limit.

use spinforge_state::Store;
use spinforge_state::config::{AppConfig, AppSource, BuildLimits, Framework, HealthCheck};
use spinforge_state::records::BuildState;
use spinforge_supervisor::build::queue::Builder;
use spinforge_supervisor::build::{BuildContext, BuildError};
use spinforge_supervisor::release::Toolchain;
use std::path::Path;
use std::time::{Duration, Instant};

/// An app whose build script writes its pid, then sleeps for `secs`.
fn slow_app(dir: &Path, name: &str, secs: u32) -> AppConfig {
    let src = dir.join(name);
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(
        src.join("package.json"),
        format!(
            r#"{{"name":"{name}","private":true,"scripts":{{"build":"node build.js","start":"node server.js"}}}}"#
        ),
    )
    .expect("write");
    std::fs::write(
        src.join("build.js"),
        format!(
            "require('fs').writeFileSync({:?}, String(process.pid));\nsetTimeout(() => {{}}, {}000);\n",
            dir.join(format!("{name}.pid")).display().to_string(),
            secs
        ),
    )
    .expect("write");
    std::fs::write(src.join("server.js"), "").expect("write");
    AppConfig {
        name: name.into(),
        domains: vec![format!("{name}.test")],
        source: AppSource::Directory(src),
        framework: Framework::Auto,
        env: Default::default(),
        instances: 1,
        memory: None,
        cpu: None,
        idle_timeout: None,
        drain_timeout: spinforge_state::config::DEFAULT_DRAIN_TIMEOUT,
        health_check: HealthCheck::default(),
        policy: Default::default(),
        tls: Default::default(),
        spa: false,
    }
}

fn builder(dir: &Path, store: &Store, timeout: Duration) -> Builder {
    Builder::new(
        store.clone(),
        BuildContext {
            data_dir: dir.join("data"),
            tools: Toolchain::discover().expect("node and npm"),
            limits: BuildLimits {
                concurrency: 1,
                timeout,
                ..BuildLimits::default()
            },
            run_as: None,
        },
    )
}

fn pid_alive(path: &Path) -> Option<bool> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Some(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_at_a_time_and_cancellable_queued_or_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::embedded();
    let b = builder(dir.path(), &store, Duration::from_secs(120));
    let (a, c) = (
        slow_app(dir.path(), "first", 60),
        slow_app(dir.path(), "second", 60),
    );
    let ticket_a = b.enqueue(&a).await;
    let id_a = ticket_a.id().to_string();
    let run_a = tokio::spawn(async move { ticket_a.run(&a).await });
    let pid_a = dir.path().join("first.pid");
    until("the first build runs its script", || {
        pid_alive(&pid_a) == Some(true)
    })
    .await;
    let ticket_c = b.enqueue(&c).await;
    let id_c = ticket_c.id().to_string();
    let run_c = tokio::spawn(async move { ticket_c.run(&c).await });
    // The second waits: queued, in build:queue, its script not started.
    let mut queued = false;
    for _ in 0..100 {
        if store.build_queue().await.expect("queue") == vec![id_c.clone()] {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queued, "the second build waits in build:queue");
    let status = store.build(&id_c).await.expect("read").expect("status");
    assert_eq!(status.state, BuildState::Queued);
    assert_eq!(
        store
            .build(&id_a)
            .await
            .expect("read")
            .expect("status")
            .state,
        BuildState::Running
    );

    assert!(b.cancel(&id_c), "a queued build can be cancelled");
    let done = run_c.await.expect("join");
    assert!(
        matches!(done.result(), Err(BuildError::Cancelled)),
        "{:?}",
        done.result()
    );
    assert!(
        !dir.path().join("second.pid").exists(),
        "a cancelled queued build never ran"
    );

    assert!(b.cancel(&id_a), "a running build can be cancelled");
    let done = run_a.await.expect("join");
    assert!(
        matches!(done.result(), Err(BuildError::Cancelled)),
        "{:?}",
        done.result()
    );
    until("the build script is killed", || {
        pid_alive(&pid_a) == Some(false)
    })
    .await;
    for id in [&id_a, &id_c] {
        let s = store.build(id).await.expect("read").expect("status");
        assert_eq!(s.state, BuildState::Cancelled, "{s:?}");
        assert!(s.finished.is_some());
    }
    assert!(store.build_queue().await.expect("queue").is_empty());
    assert!(
        !b.cancel(&id_a),
        "a finished build is no longer cancellable"
    );
    let log = store.build_log(&id_a, None, 100).await.expect("log");
    assert!(
        log.iter().any(|l| l.line.contains("npm run build")),
        "{log:?}"
    );
    let releases = dir.path().join("data/apps/first/releases");
    assert_eq!(
        std::fs::read_dir(&releases).expect("releases").count(),
        0,
        "a cancelled build leaves no release and no staging folder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_past_its_time_limit_fails_and_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::embedded();
    let b = builder(dir.path(), &store, Duration::from_secs(3));
    let app = slow_app(dir.path(), "slow", 60);
    let ticket = b.enqueue(&app).await;
    let id = ticket.id().to_string();
    let t = Instant::now();
    let done = ticket.run(&app).await;
    assert!(
        matches!(done.result(), Err(BuildError::TimedOut { .. })),
        "{:?}",
        done.result()
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let s = store.build(&id).await.expect("read").expect("status");
    assert_eq!(s.state, BuildState::Failed);
    assert!(
        s.error.as_deref().is_some_and(|e| e.contains("time limit")),
        "{s:?}"
    );
    until("the build script is killed", || {
        pid_alive(&dir.path().join("slow.pid")) == Some(false)
    })
    .await;
}

/// A build is recorded as queued before its id is known to anyone, and a build whose task is
/// dropped — queued or mid-command — still ends: `cancelled`, with its event and a log line, its
/// script killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_build_ends_cancelled_and_its_script_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::embedded();
    let mut events = store.subscribe();
    let b = builder(dir.path(), &store, Duration::from_secs(120));

    // Queued, never run.
    let app = slow_app(dir.path(), "never", 60);
    let ticket = b.enqueue(&app).await;
    let id = ticket.id().to_string();
    assert_eq!(
        store.build(&id).await.expect("read").map(|s| s.state),
        Some(BuildState::Queued),
        "recorded before enqueue returns"
    );
    drop(ticket);
    until_state(&store, &id, BuildState::Cancelled).await;

    // Running its script when the task is aborted.
    let app = slow_app(dir.path(), "aborted", 60);
    let ticket = b.enqueue(&app).await;
    let id2 = ticket.id().to_string();
    let task = tokio::spawn(async move { ticket.run(&app).await });
    let pid = dir.path().join("aborted.pid");
    until("the build script runs", || pid_alive(&pid) == Some(true)).await;
    task.abort();
    until_state(&store, &id2, BuildState::Cancelled).await;
    until("the build script is killed", || {
        pid_alive(&pid) == Some(false)
    })
    .await;
    let log = store.build_log(&id2, None, 100).await.expect("log");
    assert!(
        log.iter().any(|l| l.line == "[spinforge] build cancelled"),
        "{log:?}"
    );

    // Each went queued → (running →) cancelled, one event per state.
    let mut states: Vec<(String, String)> = Vec::new();
    while let Some(signal) = events.try_next() {
        if let spinforge_state::Signal::Event(spinforge_state::Event::BuildState {
            id,
            state,
            ..
        }) = signal
        {
            states.push((id, state));
        }
    }
    let of = |id: &str| -> Vec<&str> {
        states
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    assert_eq!(of(&id), ["queued", "cancelled"]);
    assert_eq!(of(&id2), ["queued", "running", "cancelled"]);
}

async fn until_state(store: &Store, id: &str, want: BuildState) {
    let t = Instant::now();
    loop {
        let state = store.build(id).await.expect("read").map(|s| s.state);
        if state == Some(want) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{id}: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
