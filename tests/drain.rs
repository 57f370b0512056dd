//! Drains that end exactly (issue 15, deliverable 3), with the real binary and the echo app: a
//! replaced spinlet finishes what it serves and stops as soon as every edge has nothing left on
//! it — or, at its `drain_timeout`, its WebSockets get a close frame (1001) and its event streams
//! end at an event boundary, and what still runs is cut. With two edges over Redis the drain
//! waits for both, and an edge that dies stops holding it once its report expires.
//!
//! Tests wait for states (the app answering from a new process, a process gone, the edges'
//! reports in Redis), not for log lines; every measured time is printed (`--nocapture`).

mod support;

use futures::{SinkExt, StreamExt};
use spinforge_state::Store;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::spinforge::{Spinforge, Workspace, alive, echo_app, fixture, port_block};
use support::{RedisServer, eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const HOST: &str = "alpha.test";
/// How long after a spinlet's last request it may take to stop: the edges report every 250 ms,
/// the supervisor reads every 200 ms, then SIGTERM.
const STOP_AFTER_IDLE: Duration = Duration::from_millis(1500);

fn up_env(ws: &Workspace, edge_extra: &str, app_extra: &str, env: &[(&str, &str)]) -> Spinforge {
    let port = free_port();
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n  metrics: off\n  grace: 4s\n{edge_extra}supervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{}",
        port_block(),
        echo_app(
            ws,
            "alpha",
            HOST,
            &format!("    idle_timeout: 0\n{app_extra}")
        ),
    );
    let path = ws.write("spinforge.yaml", &yaml);
    Spinforge::start_env(ws, "up", &path, Some(([127, 0, 0, 1], port).into()), env)
}

fn up(ws: &Workspace, app_extra: &str) -> Spinforge {
    up_env(ws, "", app_extra, &[])
}

/// The pid of the spinlet that answers `/` through the edge at `addr`.
async fn serving_pid(addr: SocketAddr) -> Option<u32> {
    let r = support::spinforge::Http::new(addr)
        .get(HOST, "/")
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

async fn first_pid(addr: SocketAddr) -> u32 {
    eventually(Duration::from_secs(60), "the app answers", || {
        serving_pid(addr)
    })
    .await
}

/// Restarts the app through the admin API; it answers once the new spinlets serve, the old
/// ones draining. Returns when that was.
async fn restart(sf: &Spinforge) -> Instant {
    let admin = sf.admin.expect("an admin API");
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/api/v1/apps/alpha/restart"))
        .bearer_auth(&sf.token)
        .send()
        .await
        .expect("restart");
    let status = r.status();
    assert!(
        status.is_success(),
        "restart: {status} {}",
        r.text().await.unwrap_or_default()
    );
    Instant::now()
}

/// Sends `GET path` on a new connection (written before this returns, so it reaches the spinlet
/// that serves now) and returns a task with the whole answer (status line first; empty when the
/// connection was cut without one) and when it ended.
async fn send_slow(addr: SocketAddr, path: &str) -> tokio::task::JoinHandle<(String, Instant)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send");
    tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await; // a reset is a cut too: what came is the answer
        (String::from_utf8_lossy(&out).into_owned(), Instant::now())
    })
}

/// Waits for process `pid` to be gone; returns when it was seen gone.
async fn gone(pid: u32, limit: Duration) -> Instant {
    eventually(limit, format!("spinlet {pid} exits"), || async {
        (!alive(pid)).then(Instant::now)
    })
    .await
}

/// The echo app in a folder of its own (a deploy source); `marker` makes two copies differ.
fn echo_copy(ws: &Workspace, name: &str, marker: &str) -> std::path::PathBuf {
    let dir = ws.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in ["package.json", "server.js"] {
        std::fs::copy(fixture("echo").join(f), dir.join(f)).expect("copy the echo app");
    }
    std::fs::write(dir.join("VERSION"), marker).expect("marker");
    dir
}

/// A request running on the old spinlet when a deploy replaces it finishes (200), and the old
/// process exits right after it — not at a fixed grace, nor at `drain_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_finishes_across_a_deploy_and_its_spinlet_stops_right_after() {
    let ws = Workspace::new();
    let v1 = echo_copy(&ws, "v1", "1");
    let v2 = echo_copy(&ws, "v2", "2");
    let port = free_port();
    let config = |src: &std::path::Path| {
        format!(
            "edge:\n  listen_http: 127.0.0.1:{port}\n  metrics: off\n  grace: 4s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n  alpha:\n    domains: [{HOST}]\n    source: {}\n    idle_timeout: 0\n    drain_timeout: 20s\n",
            port_block(),
            src.display()
        )
    };
    let path = ws.write("spinforge.yaml", &config(&v1));
    let sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], port).into()));
    let addr = sf.http.expect("addr");
    let old = first_pid(addr).await;

    let asked = Instant::now();
    let slow = send_slow(addr, "/slow?ms=4000").await;
    // The deploy: a new source, built into release 2, rolled out beside the old spinlet.
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace(&v1.display().to_string(), &v2.display().to_string()),
    )
    .expect("edit");
    let new = eventually(Duration::from_secs(60), "release 2 serves", || async {
        serving_pid(addr).await.filter(|p| *p != old)
    })
    .await;
    let flipped = Instant::now();
    let (answer, finished) = slow.await.expect("the slow request");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the slow request finished: {answer}"
    );
    assert!(answer.ends_with("slow 4000\n"), "{answer}");
    assert!(
        flipped < finished,
        "the deploy replaced the spinlet while the request ran on it"
    );
    let exited = gone(old, Duration::from_secs(30)).await;
    eprintln!(
        "deploy: request {:?}, flip after {:?}, request done after {:?}, old spinlet gone {:?} after it (drain {:?} of drain_timeout 20s)",
        finished - asked,
        flipped - asked,
        finished - asked,
        exited.saturating_duration_since(finished),
        exited - flipped
    );
    assert!(
        exited.saturating_duration_since(finished) < STOP_AFTER_IDLE,
        "the old spinlet stops right after its last request ({:?})",
        exited.saturating_duration_since(finished)
    );
    assert!(alive(new), "the new one serves on");
    assert_eq!(serving_pid(addr).await, Some(new));
}

/// A request that outlasts `drain_timeout` is cut at the deadline (SIGTERM, SIGKILL 2 s later:
/// the echo app's SIGTERM handler waits for its requests), not held for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_drain_timeout_is_cut_at_the_deadline() {
    let ws = Workspace::new();
    let sf = up(&ws, "    drain_timeout: 3s\n");
    let addr = sf.http.expect("addr");
    let old = first_pid(addr).await;
    let slow = send_slow(addr, "/slow?ms=60000").await;
    let flipped = restart(&sf).await;
    let (answer, cut) = slow.await.expect("the slow request");
    let after = cut - flipped;
    eprintln!("cut {after:?} after the flip (drain_timeout 3s): {answer:?}");
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "cut, not served: {answer}"
    );
    assert!(
        after >= Duration::from_millis(2900),
        "not before the deadline: {after:?}"
    );
    // The deadline, the margin for the edges (1 s), the SIGTERM grace (2 s), and some slack.
    assert!(
        after <= Duration::from_secs(7),
        "at the deadline: {after:?}"
    );
    gone(old, Duration::from_secs(10)).await;
}

/// A WebSocket open on a spinlet that a restart replaces stays open until `drain_timeout`, then
/// gets a close frame from the edge: 1001, going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_across_a_restart_gets_going_away_at_the_deadline() {
    let ws = Workspace::new();
    let sf = up(&ws, "    drain_timeout: 3s\n");
    let addr = sf.http.expect("addr");
    let old = first_pid(addr).await;
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/ws"),
    )
    .map(|mut r| {
        r.headers_mut()
            .insert("host", HOST.parse().expect("header"));
        r
    })
    .expect("request");
    let (mut socket, resp) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    socket.send(Message::text("one")).await.expect("send");
    let echo = socket.next().await.expect("open").expect("frame");
    assert_eq!(echo.into_text().expect("text"), "echo: one");

    let flipped = restart(&sf).await;
    // Still served by the draining spinlet meanwhile.
    socket.send(Message::text("two")).await.expect("send");
    let echo = socket.next().await.expect("open").expect("frame");
    assert_eq!(echo.into_text().expect("text"), "echo: two");
    let close = tokio::time::timeout(Duration::from_secs(15), socket.next())
        .await
        .expect("closed by the deadline")
        .expect("a frame")
        .expect("a clean close, not a cut");
    let after = flipped.elapsed();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}");
    };
    eprintln!(
        "websocket: close {} after {after:?} (drain_timeout 3s)",
        frame.code
    );
    assert_eq!(frame.code, CloseCode::Away);
    assert!(after >= Duration::from_millis(2800), "{after:?}");
    assert!(after <= Duration::from_millis(4500), "{after:?}");
    let exited = gone(old, Duration::from_secs(10)).await;
    eprintln!(
        "websocket: old spinlet gone {:?} after the flip",
        exited - flipped
    );
    assert!(
        exited - flipped < Duration::from_secs(3) + STOP_AFTER_IDLE,
        "stopped once closed"
    );
}

/// Reads an event stream to its end; returns the text, whether it ended cleanly (no transport
/// error: its framing was complete), and when it ended.
async fn read_events(
    resp: reqwest::Response,
    restarted: tokio::sync::oneshot::Sender<()>,
) -> (String, bool, Instant) {
    let mut restarted = Some(restarted);
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    let clean = loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.matches("\n\n").count() >= 3
                    && let Some(tx) = restarted.take()
                {
                    let _ = tx.send(());
                }
            }
            Some(Err(e)) => {
                eprintln!("event stream error: {e}");
                break false;
            }
            None => break true,
        }
    };
    (text, clean, Instant::now())
}

/// An event stream on a spinlet a restart replaces runs until `drain_timeout`, then ends at an
/// event boundary with its body properly ended.
async fn event_stream_across_a_restart(edge_extra: &str, env: &[(&str, &str)], h2c: bool) {
    let ws = Workspace::new();
    let sf = up_env(&ws, edge_extra, "    drain_timeout: 3s\n", env);
    let addr = sf.http.expect("addr");
    let old = first_pid(addr).await;
    let mut client = reqwest::Client::builder().no_proxy();
    if h2c {
        client = client.http2_prior_knowledge();
    }
    let client = client.build().expect("client");
    let resp = client
        .get(format!("http://{addr}/events?n=100000&ms=150"))
        .header("host", HOST)
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status(), 200);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(read_events(resp, tx));
    rx.await.expect("events arrive");
    let flipped = restart(&sf).await;
    let (text, clean, ended) = reader.await.expect("reader");
    let after = ended - flipped;
    let events = text.matches("\n\n").count();
    eprintln!(
        "event stream ({}): ended {after:?} after the flip, {events} events",
        if h2c { "h2c" } else { "http/1.1" }
    );
    assert!(
        clean,
        "the stream ended cleanly (its body complete): {text:?}"
    );
    assert!(text.ends_with("\n\n"), "at an event boundary: {text:?}");
    for event in text.trim_end().split("\n\n") {
        assert!(
            event.starts_with("id: ") && event.contains("\ndata: "),
            "a whole event: {event:?}"
        );
    }
    assert!(after >= Duration::from_millis(2800), "{after:?}");
    assert!(after <= Duration::from_millis(4500), "{after:?}");
    let exited = gone(old, Duration::from_secs(10)).await;
    assert!(
        exited - flipped < Duration::from_secs(3) + STOP_AFTER_IDLE,
        "stopped once ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_across_a_restart_ends_cleanly_on_the_fast_path() {
    event_stream_across_a_restart("", &[], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_across_a_restart_ends_cleanly_on_the_full_path() {
    event_stream_across_a_restart("", &[("SPINFORGE_EDGE_FAST", "0")], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_across_a_restart_ends_cleanly_over_http2() {
    event_stream_across_a_restart("  h2c: true\n", &[], true).await;
}

/// `spinforge supervisor` and two `spinforge edge`s over one Redis: a drain waits until both
/// edges report nothing left on the spinlet — here the one without the request says so at once,
/// the other only when its request ends. An edge killed mid-request holds the drain only until
/// its report expires (3 s), not for `drain_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_edges_over_redis_a_drain_waits_for_both() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let ports = port_block();
    let app = echo_app(
        &ws,
        "alpha",
        HOST,
        "    idle_timeout: 0\n    drain_timeout: 30s\n",
    );
    let config = |name: &str, port: u16| {
        ws.write(
            name,
            &format!(
                "state:\n  redis: {}\nedge:\n  listen_http: 127.0.0.1:{port}\n  metrics: off\n  grace: 3s\nsupervisor:\n  data_dir: ./data\n  port_range: {ports}\napps:\n{app}",
                redis.url()
            ),
        )
    };
    let (pa, pb) = (free_port(), free_port());
    let sup = Spinforge::start(&ws, "supervisor", &config("sup.yaml", pa), None);
    let a = Spinforge::start(
        &ws,
        "edge",
        &config("a.yaml", pa),
        Some(([127, 0, 0, 1], pa).into()),
    );
    let mut b = Spinforge::start(
        &ws,
        "edge",
        &config("b.yaml", pb),
        Some(([127, 0, 0, 1], pb).into()),
    );
    let (addr_a, addr_b) = (a.http.expect("a"), b.http.expect("b"));
    // The supervisor's admin API is up once it listens.
    eventually(Duration::from_secs(30), "the admin API listens", || async {
        TcpStream::connect(sup.admin.expect("admin")).await.ok()
    })
    .await;
    let old = first_pid(addr_a).await;
    assert_eq!(first_pid(addr_b).await, old);
    let store = redis.store().await;
    let report = |store: Store| async move {
        let (_, drains) = store
            .upstreams_and_drains_of(&["alpha".to_string()])
            .await
            .ok()?
            .pop()?;
        let ids: Vec<String> = drains.iter().map(|d| d.spinlet.clone()).collect();
        let reports = store.drain_reports(&ids).await.ok()?;
        reports.into_iter().next()
    };

    // One slow request through edge B; none through A.
    let slow = send_slow(addr_b, "/slow?ms=4000").await;
    let flipped = restart(&sup).await;
    let seen = eventually(
        Duration::from_secs(5),
        "both edges report on the drain",
        || async {
            report(store.clone())
                .await
                .filter(|r| r.edges == 2 && r.reported == 2)
        },
    )
    .await;
    assert_eq!(
        seen.load.requests, 1,
        "edge B still has the request: {seen:?}"
    );
    assert!(alive(old), "the drain holds while one edge has a request");
    let (answer, finished) = slow.await.expect("slow");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let exited = gone(old, Duration::from_secs(30)).await;
    eprintln!(
        "two edges: request done {:?} after the flip, old spinlet gone {:?} after it",
        finished - flipped,
        exited.saturating_duration_since(finished)
    );
    assert!(exited.saturating_duration_since(finished) < STOP_AFTER_IDLE);

    // Edge B dies with a request on the draining spinlet.
    let old = first_pid(addr_a).await;
    let _slow = send_slow(addr_b, "/slow?ms=60000").await;
    restart(&sup).await;
    eventually(
        Duration::from_secs(5),
        "edge B reports its request",
        || async {
            report(store.clone())
                .await
                .filter(|r| r.edges == 2 && r.load.requests == 1)
        },
    )
    .await;
    b.kill();
    let killed = Instant::now();
    let exited = gone(old, Duration::from_secs(30)).await;
    eprintln!(
        "two edges: edge B killed; old spinlet gone {:?} later (report TTL 3s, drain_timeout 30s)",
        exited - killed
    );
    assert!(exited - killed < Duration::from_secs(3) + STOP_AFTER_IDLE + Duration::from_secs(1));
    drop(a);
}
