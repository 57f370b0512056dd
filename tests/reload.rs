//! Reloading the config while running (SIGHUP, `spinforge reload`, an edit of the file), with
//! the real binary: edge settings apply to the next connection and request, an invalid file is
//! refused whole (every error located) while the old settings keep serving, a listener change is
//! named as needing a restart (or applied by `spinforge edge --upgrade`), and nothing fails
//! under load while reloading.
//!
//! The service behind the edge is an `upstream:` app inside the test (no Node, no build).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use support::spinforge::{Spinforge, Workspace, binary, port_block, signal};
use support::upstream::Upstream;
use support::{RedisServer, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one test's config is made of; `edge` and `app` are extra lines under `edge:` and the
/// app.
#[derive(Debug, Clone)]
struct Layout {
    http: u16,
    metrics: u16,
    admin: u16,
    ports: String,
    upstream: SocketAddr,
    edge: String,
    app: String,
}

impl Layout {
    fn new(upstream: SocketAddr) -> Layout {
        Layout {
            http: free_port(),
            metrics: free_port(),
            admin: free_port(),
            ports: port_block(),
            upstream,
            edge: String::new(),
            app: String::new(),
        }
    }

    fn yaml(&self) -> String {
        format!(
            "edge:\n  listen_http: 127.0.0.1:{}\n  metrics: 127.0.0.1:{}\n  grace: 2s\n{}supervisor:\n  data_dir: ./data\n  admin_listen: 127.0.0.1:{}\n  port_range: {}\napps:\n  svc:\n    domains: [svc.test]\n    upstream: {}\n    health_check: {{ path: /healthz }}\n{}",
            self.http, self.metrics, self.edge, self.admin, self.ports, self.upstream, self.app
        )
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.http).into()
    }
}

/// Writes the config so that the once-a-second poll does not notice it (same length, same
/// modification time, same inode): only an explicit reload (SIGHUP, `spinforge reload`) reads
/// it. This keeps what a test asks for apart from what the poll would do on its own.
fn write_quietly(path: &Path, text: &str) {
    const SIZE: usize = 4096;
    assert!(
        text.len() < SIZE - 2,
        "the test config grew past {SIZE} bytes"
    );
    let mut padded = text.to_string();
    if !padded.ends_with('\n') {
        padded.push('\n');
    }
    padded.push('#');
    while padded.len() < SIZE - 1 {
        padded.push('.');
    }
    padded.push('\n');
    std::fs::write(path, &padded).expect("write the config");
    let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(fixed))
        .expect("set the config's mtime");
}

/// `spinforge reload` against `sf`'s admin API: (exit code, stdout, stderr).
async fn reload_cli(sf: &Spinforge) -> (i32, String, String) {
    let admin = sf.admin.expect("an admin API");
    let token = sf.token.clone();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(binary())
            .arg("reload")
            .env("SPINFORGE_ADMIN_URL", format!("http://{admin}"))
            .env("SPINFORGE_TOKEN", token)
            .output()
            .expect("run spinforge reload");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// `POST /api/v1/reload`: (status, the JSON answer).
async fn reload_api(sf: &Spinforge) -> (u16, serde_json::Value) {
    let admin = sf.admin.expect("an admin API");
    let resp = reqwest::Client::new()
        .post(format!("http://{admin}/api/v1/reload"))
        .bearer_auth(&sf.token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("POST /api/v1/reload");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

fn client(addr: SocketAddr, h2c: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .resolve("svc.test", addr)
        .no_proxy()
        .timeout(Duration::from_secs(10));
    let b = if h2c { b.http2_prior_knowledge() } else { b };
    b.build().expect("client")
}

/// A GET to svc.test with HTTP/2 prior knowledge: `Some(status)` when the edge took it.
async fn h2c_status(addr: SocketAddr) -> Option<u16> {
    let r = client(addr, true)
        .get(format!("http://svc.test:{}/", addr.port()))
        .send()
        .await
        .ok()?;
    (r.version() == reqwest::Version::HTTP_2).then(|| r.status().as_u16())
}

/// Starts `spinforge up` and waits until the service answers through it.
async fn up(ws: &Workspace, layout: &Layout) -> (Spinforge, std::path::PathBuf) {
    let path = ws.path().join("spinforge.yaml");
    write_quietly(&path, &layout.yaml());
    let sf = Spinforge::start(ws, "up", &path, Some(layout.addr()));
    let http = client(layout.addr(), false);
    let url = format!("http://svc.test:{}/", layout.http);
    eventually(Duration::from_secs(15), "svc answers", || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    (sf, path)
}

/// One HTTP/1.1 GET on `conn`; the answer's status line, or `None` when the edge closed the
/// connection instead of answering.
async fn raw_get(conn: &mut TcpStream) -> Option<String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return head.lines().next().map(str::to_string);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// How long until the edge closes `conn` (reads return 0 or fail), at most `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0u8; 64];
    match tokio::time::timeout(limit, conn.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        Ok(Ok(_)) => panic!("the edge sent bytes nobody asked for"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_edge_settings_to_the_next_connection_and_request() {
    let service = Upstream::start("svc").await;
    let ws = Workspace::new();
    let mut layout = Layout::new(service.addr);
    let (sf, path) = up(&ws, &layout).await;
    let addr = layout.addr();

    // h2c: off at start — a prior-knowledge client is not served.
    assert_eq!(h2c_status(addr).await, None, "h2c is off at start");
    layout.edge = "  h2c: true\n".into();
    write_quietly(&path, &layout.yaml());
    let (code, out, err) = reload_cli(&sf).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("applied: edge.h2c"), "{out}");
    assert_eq!(h2c_status(addr).await, Some(200), "h2c on after the reload");

    // …and off again.
    layout.edge = "  h2c: false\n".into();
    write_quietly(&path, &layout.yaml());
    assert_eq!(reload_cli(&sf).await.0, 0);
    assert_eq!(h2c_status(addr).await, None, "h2c off after the reload");

    // max_connections_per_ip: 2 → a third connection from this address is closed unanswered.
    layout.edge = "  max_connections_per_ip: 2\n".into();
    write_quietly(&path, &layout.yaml());
    let (code, out, err) = reload_cli(&sf).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("edge.h2c, edge.max_connections_per_ip")
            || out.contains("edge.max_connections_per_ip"),
        "{out}"
    );
    let mut a = TcpStream::connect(addr).await.expect("connect");
    let mut b = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(raw_get(&mut a).await.as_deref(), Some("HTTP/1.1 200 OK"));
    assert_eq!(raw_get(&mut b).await.as_deref(), Some("HTTP/1.1 200 OK"));
    let mut c = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(
        raw_get(&mut c).await,
        None,
        "a third connection is refused under max_connections_per_ip: 2"
    );
    drop((a, b, c));
    // Raised again: three at once are served.
    layout.edge = "  max_connections_per_ip: 3\n".into();
    write_quietly(&path, &layout.yaml());
    assert_eq!(reload_cli(&sf).await.0, 0);
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = eventually(
            Duration::from_secs(5),
            "a connection is admitted",
            || async {
                let mut conn = TcpStream::connect(addr).await.ok()?;
                raw_get(&mut conn).await.map(|_| conn)
            },
        )
        .await;
        assert_eq!(raw_get(&mut conn).await.as_deref(), Some("HTTP/1.1 200 OK"));
        conns.push(conn);
    }
    drop(conns);

    // keepalive_timeout: 1s → an idle keep-alive connection is closed after about a second
    // (60 s before the reload).
    layout.edge = "  keepalive_timeout: 1s\n".into();
    write_quietly(&path, &layout.yaml());
    assert_eq!(reload_cli(&sf).await.0, 0);
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(raw_get(&mut idle).await.as_deref(), Some("HTTP/1.1 200 OK"));
    let closed = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("the idle connection is closed after keepalive_timeout: 1s");
    assert!(closed >= Duration::from_millis(700), "{closed:?}");

    // header_timeout: 1s → a new connection that sends nothing is closed after about a second.
    layout.edge = "  header_timeout: 1s\n".into();
    write_quietly(&path, &layout.yaml());
    assert_eq!(reload_cli(&sf).await.0, 0);
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let closed = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed after header_timeout: 1s");
    assert!(closed >= Duration::from_millis(700), "{closed:?}");

    // An app's limits: a body over the new limits.body is refused with 413.
    layout.edge = String::new();
    layout.app = "    limits: { body: 1K }\n".into();
    write_quietly(&path, &layout.yaml());
    let (code, out, err) = reload_cli(&sf).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("apps.svc"), "{out}");
    let http = client(addr, false);
    let url = format!("http://svc.test:{}/upload", layout.http);
    let status = eventually(Duration::from_secs(10), "the new body limit", || async {
        let r = http.post(&url).body(vec![b'x'; 4096]).send().await.ok()?;
        (r.status() == 413).then_some(413)
    })
    .await;
    assert_eq!(status, 413);
    let small = http
        .post(&url)
        .body(vec![b'x'; 100])
        .send()
        .await
        .expect("POST");
    assert_eq!(small.status(), 200);

    // /metrics moves to another port: served there, no longer on the old one.
    let old_metrics = layout.metrics;
    layout.metrics = free_port();
    write_quietly(&path, &layout.yaml());
    let (code, out, err) = reload_cli(&sf).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("edge.metrics"), "{out}");
    let text = support::scrape(&format!("127.0.0.1:{}", layout.metrics)).await;
    assert!(text.contains("spinforge_requests_total"), "{text}");
    eventually(
        Duration::from_secs(5),
        "the old /metrics port closes",
        || async {
            TcpStream::connect(("127.0.0.1", old_metrics))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(sf.log_text().contains("config reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_whole_and_the_running_config_goes_on() {
    let service = Upstream::start("svc").await;
    let ws = Workspace::new();
    let mut layout = Layout::new(service.addr);
    let (sf, path) = up(&ws, &layout).await;
    let addr = layout.addr();

    // A valid change (h2c on) beside an unknown key and a value of the wrong type.
    layout.edge = "  h2c: true\n  header_timeoutt: 5s\n  max_connections_per_ip: many\n".into();
    let text = layout.yaml();
    write_quietly(&path, &text);
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("the line")
    };
    let (code, out, err) = reload_cli(&sf).await;
    assert_eq!(code, 1, "refused: {out}{err}");
    let unknown = format!(
        "{}:{}:3: edge.header_timeoutt: unknown key",
        path.display(),
        line_of("header_timeoutt")
    );
    let wrong = format!(
        "{}:{}:27: edge.max_connections_per_ip:",
        path.display(),
        line_of("max_connections_per_ip")
    );
    assert!(err.contains(&unknown), "{unknown} in:\n{err}");
    assert!(err.contains(&wrong), "{wrong} in:\n{err}");
    assert!(err.contains("nothing was changed"), "{err}");

    // The API says the same, located.
    let (status, problem) = reload_api(&sf).await;
    assert_eq!(status, 422, "{problem}");
    let errors = problem["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{problem}");
    assert_eq!(errors[0]["line"], line_of("header_timeoutt"));
    assert_eq!(errors[0]["column"], 3);
    assert_eq!(errors[0]["key"], "edge.header_timeoutt");

    // Nothing of the file was applied (h2c stays off) and the old settings serve.
    assert_eq!(h2c_status(addr).await, None, "the refused file's h2c: true");
    let r = client(addr, false)
        .get(format!("http://svc.test:{}/", layout.http))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert!(
        sf.log_text()
            .contains("the config file is invalid; nothing was changed")
    );

    // Fixed: applied.
    layout.edge = "  h2c: true\n".into();
    write_quietly(&path, &layout.yaml());
    let (status, report) = reload_api(&sf).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["applied"], serde_json::json!(["edge.h2c"]));
    assert_eq!(h2c_status(addr).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_change_is_named_as_needing_a_restart_and_the_rest_applies() {
    let service = Upstream::start("svc").await;
    let ws = Workspace::new();
    let mut layout = Layout::new(service.addr);
    let (sf, path) = up(&ws, &layout).await;
    let old = layout.addr();

    let moved = free_port();
    let first = layout.clone();
    layout.http = moved;
    layout.edge = "  h2c: true\n".into();
    write_quietly(&path, &layout.yaml());
    let (code, out, err) = reload_cli(&sf).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("needs a restart: edge.listen_http (the listening socket is bound at start"),
        "{out}"
    );
    assert!(out.contains("applied: edge.h2c"), "{out}");
    let (_, report) = reload_api(&sf).await;
    assert_eq!(report["outcome"], "unchanged", "{report}");
    assert_eq!(report["restart"][0]["key"], "edge.listen_http", "{report}");
    assert!(
        sf.log_text()
            .contains("config change not applied: it needs a restart"),
        "{}",
        sf.log_text()
    );

    // The edge goes on where it listened, with the settings that could apply.
    assert_eq!(h2c_status(old).await, Some(200));
    assert!(
        TcpStream::connect(("127.0.0.1", moved)).await.is_err(),
        "nothing listens on the new address before a restart"
    );

    // Back to the old address: nothing is pending any more.
    layout.http = first.http;
    write_quietly(&path, &layout.yaml());
    let (_, report) = reload_api(&sf).await;
    assert_eq!(report["restart"], serde_json::json!([]), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_is_applied_by_the_poll_and_sighup_reloads() {
    let service = Upstream::start("svc").await;
    let ws = Workspace::new();
    let mut layout = Layout::new(service.addr);
    let (sf, path) = up(&ws, &layout).await;
    let addr = layout.addr();

    // A plain edit of the file: the once-a-second poll applies it, edge settings included.
    layout.edge = "  h2c: true\n".into();
    std::fs::write(&path, layout.yaml()).expect("edit");
    eventually(
        Duration::from_secs(5),
        "the poll applies h2c: true",
        || async { (h2c_status(addr).await == Some(200)).then_some(()) },
    )
    .await;

    // An invalid edit changes nothing, found by the poll too.
    std::fs::write(&path, layout.yaml().replace("h2c: true", "h2c: sometimes")).expect("edit");
    eventually(
        Duration::from_secs(5),
        "the poll refuses the file",
        || async {
            sf.log_text()
                .contains("edge.h2c: `sometimes` is not true or false")
                .then_some(())
        },
    )
    .await;
    assert_eq!(h2c_status(addr).await, Some(200), "still on");

    // SIGHUP reads the file at once (the poll cannot see this edit).
    layout.edge = "  h2c: false\n".into();
    write_quietly(&path, &layout.yaml());
    signal(sf.pid(), nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(5),
        "SIGHUP applies h2c: false",
        || async { (h2c_status(addr).await.is_none()).then_some(()) },
    )
    .await;
    assert!(sf.log_text().contains("SIGHUP: reloading the config"));
    let r = client(addr, false)
        .get(format!("http://svc.test:{}/", layout.http))
        .send()
        .await
        .expect("the process lives on after SIGHUP");
    assert_eq!(r.status(), 200);
}

/// Requests sent and failed by the load loops.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicUsize,
    failed: AtomicUsize,
}

/// GETs and POSTs in a loop until `stop`: on one keep-alive connection, or (`fresh`) on a new
/// connection each time.
fn load(
    addr: SocketAddr,
    fresh: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut b = reqwest::Client::builder()
            .resolve("svc.test", addr)
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if fresh {
            b = b.pool_max_idle_per_host(0);
        }
        let http = b.build().expect("client");
        let url = format!("http://svc.test:{}/load", addr.port());
        let mut errors = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let req = if i % 3 == 0 {
                http.post(&url).body(vec![b'p'; 512])
            } else {
                http.get(&url)
            };
            tally.sent.fetch_add(1, Ordering::Relaxed);
            match req.send().await {
                Ok(r) if r.status() == 200 => {
                    let _ = r.bytes().await;
                }
                Ok(r) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("status {}", r.status()));
                }
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{e:?}"));
                }
            }
        }
        errors
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_reloading_under_load() {
    let service = Upstream::start("svc").await;
    let ws = Workspace::new();
    let mut layout = Layout::new(service.addr);
    let (sf, path) = up(&ws, &layout).await;
    let addr = layout.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut loads: Vec<_> = (0..4)
        .map(|_| load(addr, false, stop.clone(), tally.clone()))
        .collect();
    loads.push(load(addr, true, stop.clone(), tally.clone()));
    eventually(Duration::from_secs(10), "load is flowing", || async {
        (tally.sent.load(Ordering::Relaxed) >= 20).then_some(())
    })
    .await;

    // Ten reloads, each changing edge settings and the app's policy (its route is published
    // again, the edge swaps its routing table).
    let mut took = Vec::new();
    for i in 0..10u32 {
        layout.edge = format!(
            "  keepalive_timeout: {}s\n  header_timeout: {}s\n  max_connections_per_ip: {}\n  h2c: {}\n  max_held_requests: {}\n  wake_timeout: {}s\n",
            30 + i,
            10 + i,
            256 + i,
            i % 2 == 0,
            1000 + i,
            30 + i
        );
        layout.app = format!(
            "    limits: {{ body: {}M, headers: {}K }}\n    compression: {}\n",
            10 + i,
            32 + i,
            i % 2 == 1
        );
        write_quietly(&path, &layout.yaml());
        let sent_before = tally.sent.load(Ordering::Relaxed);
        let (status, report) = reload_api(&sf).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["outcome"], "applied", "{report}");
        took.push(report["took_ms"].as_f64().expect("took_ms"));
        // Some requests between reloads.
        eventually(
            Duration::from_secs(10),
            "requests between reloads",
            || async { (tally.sent.load(Ordering::Relaxed) >= sent_before + 30).then_some(()) },
        )
        .await;
    }
    eventually(
        Duration::from_secs(30),
        "a few hundred requests",
        || async { (tally.sent.load(Ordering::Relaxed) >= 400).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for l in loads.drain(..) {
        errors.extend(l.await.expect("load loop"));
    }
    let sent = tally.sent.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let max = took.iter().copied().fold(0.0, f64::max);
    let mean = took.iter().sum::<f64>() / took.len() as f64;
    eprintln!(
        "reload under load: {sent} requests (4 keep-alive clients, 1 on fresh connections), 10 reloads, {failed} failed; reload took {mean:.1} ms on average, {max:.1} ms at most"
    );
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(sent >= 400, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinforge_edge_reloads_on_sighup_and_takes_a_new_listener_through_the_upgrade() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let first = free_port();
    let yaml = |port: u16, h2c: bool| {
        format!(
            "state:\n  redis: {}\nedge:\n  listen_http: 127.0.0.1:{port}\n  metrics: off\n  grace: 2s\n  h2c: {h2c}\n  upgrade_sock: {}\nsupervisor:\n  data_dir: ./data\n",
            redis.url(),
            ws.path().join("upgrade.sock").display(),
        )
    };
    let path = ws.path().join("spinforge.yaml");
    write_quietly(&path, &yaml(first, false));
    let first_addr: SocketAddr = ([127, 0, 0, 1], first).into();
    let mut old = Spinforge::start(&ws, "edge", &path, Some(first_addr));
    // No apps: every host is unknown, answered 404 by the edge itself.
    assert_eq!(h2c_status(first_addr).await, None);
    write_quietly(&path, &yaml(first, true));
    signal(old.pid(), nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(5), "SIGHUP turns h2c on", || async {
        (h2c_status(first_addr).await == Some(404)).then_some(())
    })
    .await;

    // A new listener: named as needing a restart, then applied by a hand-over.
    let second = free_port();
    let second_addr: SocketAddr = ([127, 0, 0, 1], second).into();
    write_quietly(&path, &yaml(second, true));
    signal(old.pid(), nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(5), "the restart is named", || async {
        old.log_text()
            .contains("key=edge.listen_http")
            .then_some(())
    })
    .await;
    let new = Spinforge::start_with(&ws, &["edge", "--upgrade"], &path, None);
    eventually(
        Duration::from_secs(5),
        "the new edge waits for sockets",
        || async {
            new.log_text()
                .contains("waiting for the running edge's sockets")
                .then_some(())
        },
    )
    .await;
    signal(old.pid(), nix::sys::signal::Signal::SIGQUIT);
    eventually(
        Duration::from_secs(10),
        "the new edge serves the new address",
        || async { (h2c_status(second_addr).await == Some(404)).then_some(()) },
    )
    .await;
    assert!(
        new.log_text().contains("a new listen address"),
        "{}",
        new.log_text()
    );
    old.wait_exit(Duration::from_secs(10));
    eventually(
        Duration::from_secs(5),
        "the old address is closed",
        || async { TcpStream::connect(first_addr).await.is_err().then_some(()) },
    )
    .await;
}

/// docs/config.md's "Reloading" table names exactly the keys the schema says need a restart.
#[test]
fn the_docs_name_every_key_that_needs_a_restart() {
    use spinforge_state::config::schema::{Reload, paths};
    let text = std::fs::read_to_string(support::spinforge::repo().join("docs/config.md"))
        .expect("read docs/config.md");
    let section = text
        .split("\n## Reloading\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Reloading section");
    let mut documented: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split(" | ").next().unwrap_or("");
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    documented.sort();
    let mut restart: Vec<String> = paths()
        .into_iter()
        .filter(|(_, k)| matches!(k.reload, Reload::Restart(_)))
        .map(|(p, _)| p)
        .collect();
    restart.sort();
    assert_eq!(documented, restart);
}
