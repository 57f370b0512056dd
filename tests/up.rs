//! `spinforge up` end to end, on the embedded store: real binary, real Node spinlets, real HTTP.

mod support;

use std::time::Duration;
use support::spinforge::{Spinforge, Workspace, alive, echo_app, port_block, signal};
use support::{eventually, free_port};

/// A config for `apps` (YAML app blocks) with test-friendly edge settings.
fn config(ws: &Workspace, edge_port: u16, edge_extra: &str, apps: &str) -> std::path::PathBuf {
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{edge_port}\n  grace: 4s\n{edge_extra}supervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        port_block()
    );
    ws.write("spinforge.yaml", &yaml)
}

fn up(ws: &Workspace, edge_extra: &str, apps: &str) -> Spinforge {
    let port = free_port();
    let path = config(ws, port, edge_extra, apps);
    Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_answers_404_for_unknown_hosts() {
    let ws = Workspace::new();
    let apps = echo_app(&ws, "alpha", "alpha.test", "")
        + &echo_app(&ws, "beta", "beta.test, '*.beta.test'", "");
    let sf = up(&ws, "", &apps);
    let http = sf.client();

    let a = http.fetch("alpha.test", "/hello?x=1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["app"], "alpha");
    assert_eq!(a.json()["path"], "/hello?x=1");
    // Host matching ignores case and port; wildcards match one label.
    let b = http.fetch("BETA.test:8080", "/").await;
    assert_eq!(b.json()["app"], "beta");
    assert_eq!(http.fetch("www.beta.test", "/").await.json()["app"], "beta");

    let unknown = http.fetch("nobody.test", "/").await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body.to_lowercase().contains("no app"),
        "{}",
        unknown.body
    );
    assert_eq!(
        http.fetch("x.www.beta.test", "/").await.status,
        404,
        "a wildcard covers one label only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_client_address_host_and_request_id() {
    let ws = Workspace::new();
    let sf = up(&ws, "", &echo_app(&ws, "alpha", "alpha.test", ""));
    let http = sf.client();

    let r = http.fetch("alpha.test:81", "/").await;
    let seen = r.json();
    assert_eq!(seen["forwarded_for"], "127.0.0.1");
    assert_eq!(seen["forwarded_proto"], "http");
    assert_eq!(seen["forwarded_host"], "alpha.test:81");
    assert_eq!(
        seen["host"], "alpha.test:81",
        "the app sees the original Host"
    );
    let id = seen["request_id"]
        .as_str()
        .expect("a request id")
        .to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "the client gets the same id"
    );

    // A sane id from the client is kept; a spoofed X-Forwarded-For is replaced.
    let kept = http
        .get("alpha.test", "/")
        .header("x-request-id", "trace-abc_123")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .expect("request");
    let kept = support::spinforge::Reply::read(kept).await;
    assert_eq!(kept.json()["request_id"], "trace-abc_123");
    assert_eq!(kept.json()["forwarded_for"], "127.0.0.1");
    let replaced = http
        .get("alpha.test", "/")
        .header("x-request-id", "has spaces in it")
        .send()
        .await
        .expect("request");
    let replaced = support::spinforge::Reply::read(replaced).await;
    assert_ne!(replaced.json()["request_id"], "has spaces in it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_is_held_until_the_app_answers() {
    let ws = Workspace::new();
    let app = echo_app(&ws, "sleepy", "sleepy.test", "")
        .replace("START_LOG", "BOOT_DELAY_MS: 400, START_LOG");
    let sf = up(&ws, "", &app);
    let http = sf.client();

    assert!(
        ws.starts("sleepy.starts").is_empty(),
        "nothing runs before the first request"
    );
    let cold = http.fetch("sleepy.test", "/").await;
    assert_eq!(cold.status, 200, "{}", cold.body);
    let timing = cold
        .header("server-timing")
        .expect("Server-Timing on a cold start");
    let ms: u64 = timing
        .strip_prefix("cold-start;dur=")
        .and_then(|d| d.parse().ok())
        .expect(timing);
    assert!(
        ms >= 400,
        "the app took 400 ms to boot, the header says {ms}"
    );

    let warm = http.fetch("sleepy.test", "/").await;
    assert_eq!(warm.status, 200);
    assert!(
        warm.header("server-timing").is_none(),
        "a warm request has no cold-start timing"
    );
    assert_eq!(ws.starts("sleepy.starts").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_cold_requests_start_one_process() {
    let ws = Workspace::new();
    let app = echo_app(&ws, "crowd", "crowd.test", "")
        .replace("START_LOG", "BOOT_DELAY_MS: 300, START_LOG");
    let sf = up(&ws, "", &app);
    let http = sf.client();

    let requests = (0..20).map(|_| {
        let http = http.clone();
        tokio::spawn(async move { http.fetch("crowd.test", "/").await })
    });
    let replies = futures::future::join_all(requests).await;
    let pids: std::collections::BTreeSet<i64> = replies
        .into_iter()
        .map(|r| {
            let r = r.expect("request task");
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(
                r.header("server-timing")
                    .is_some_and(|t| t.starts_with("cold-start;dur="))
            );
            r.json()["pid"].as_i64().expect("pid")
        })
        .collect();
    assert_eq!(pids.len(), 1, "all 20 answered by one process: {pids:?}");
    assert_eq!(ws.starts("crowd.starts").len(), 1, "exactly one start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_app_is_stopped_and_the_next_request_starts_it() {
    let ws = Workspace::new();
    let sf = up(
        &ws,
        "",
        &echo_app(&ws, "napper", "napper.test", "    idle_timeout: 1s\n"),
    );
    let http = sf.client();

    let first = http.fetch("napper.test", "/").await;
    let pid = first.json()["pid"].as_i64().expect("pid") as u32;
    eventually(
        Duration::from_secs(10),
        "the idle spinlet exits",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    assert_eq!(ws.starts("napper.starts").len(), 1);

    let again = http.fetch("napper.test", "/").await;
    assert_eq!(again.status, 200);
    assert!(
        again.header("server-timing").is_some(),
        "woken again: a cold start"
    );
    assert_ne!(again.json()["pid"].as_i64(), Some(i64::from(pid)));
    assert_eq!(ws.starts("napper.starts").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_app_is_not_idled() {
    let ws = Workspace::new();
    let sf = up(
        &ws,
        "",
        &echo_app(&ws, "busy", "busy.test", "    idle_timeout: 1s\n"),
    );
    let http = sf.client();
    let pid = http.fetch("busy.test", "/").await.json()["pid"].clone();
    // Traffic every 200 ms for 3 idle timeouts: the same process answers throughout.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(http.fetch("busy.test", "/").await.json()["pid"], pid);
    }
    assert_eq!(ws.starts("busy.starts").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_spinlet_is_restarted() {
    let ws = Workspace::new();
    let sf = up(&ws, "", &echo_app(&ws, "phoenix", "phoenix.test", ""));
    let http = sf.client();

    let pid = http.fetch("phoenix.test", "/").await.json()["pid"]
        .as_i64()
        .expect("pid") as u32;
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    // Restarted by the supervisor on its own: the start log grows without any request.
    eventually(
        Duration::from_secs(10),
        "the supervisor restarts the killed spinlet",
        || async { (ws.starts("phoenix.starts").len() == 2).then_some(()) },
    )
    .await;
    let new_pid = eventually(
        Duration::from_secs(10),
        "the restarted spinlet answers",
        || async {
            let r = http.fetch("phoenix.test", "/").await;
            (r.status == 200)
                .then(|| r.json()["pid"].as_i64())
                .flatten()
        },
    )
    .await;
    assert_ne!(new_pid, i64::from(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_slower_than_wake_timeout_gets_503_with_retry_after() {
    let ws = Workspace::new();
    let app = echo_app(&ws, "glacial", "glacial.test", "")
        .replace("START_LOG", "BOOT_DELAY_MS: 3000, START_LOG");
    let sf = up(&ws, "  wake_timeout: 1s\n", &app);
    let http = sf.client();

    let started = std::time::Instant::now();
    let r = http.fetch("glacial.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the wake timeout, not later"
    );
    // The start goes on; once up, the app answers.
    eventually(
        Duration::from_secs(10),
        "the slow app answers once booted",
        || async { (http.fetch("glacial.test", "/").await.status == 200).then_some(()) },
    )
    .await;
    assert_eq!(ws.starts("glacial.starts").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_spinlets_and_exits_within_grace() {
    let ws = Workspace::new();
    let mut sf = up(&ws, "", &echo_app(&ws, "alpha", "alpha.test", ""));
    let pid = sf.client().fetch("alpha.test", "/").await.json()["pid"]
        .as_i64()
        .expect("pid") as u32;
    assert!(alive(pid));

    let (status, took) = sf.terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        took <= Duration::from_secs(4),
        "grace is 4s, exit took {took:?}"
    );
    assert!(!alive(pid), "the spinlet was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_config_serves_the_express_app() {
    // conf/spinforge.yaml as shipped, on a free port and a private data_dir: a real `npm ci` of
    // Express from the registry, then a request through the edge.
    let ws = Workspace::new();
    let repo = support::spinforge::repo();
    let port = free_port();
    let yaml = std::fs::read_to_string(repo.join("conf/spinforge.yaml"))
        .expect("read conf/spinforge.yaml")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("../.spinforge", &ws.data_dir().display().to_string())
        .replace("30000-30999", &port_block())
        .replace(
            "./apps/hello",
            &repo.join("conf/apps/hello").display().to_string(),
        );
    let path = ws.write("demo.yaml", &yaml);
    let sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], port).into()));

    // The first request may come before npm finished: it is held (30 s) or answered 503.
    let reply = eventually(
        Duration::from_secs(120),
        "the demo app answers 200",
        || async {
            let r = sf.client().fetch("hello.localhost", "/").await;
            (r.status == 200).then_some(r)
        },
    )
    .await;
    assert!(
        reply.body.starts_with("Hello from SpinForge!"),
        "{}",
        reply.body
    );
    assert!(
        ws.data_dir()
            .join("apps/hello/releases/1/node_modules/express")
            .is_dir()
    );
}
