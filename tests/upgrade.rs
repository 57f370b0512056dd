//! Zero-downtime upgrade of `spinforge edge`: a new edge takes the listening socket over from the
//! running one (SIGQUIT), which drains and exits, while clients keep sending requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::spinforge::{Spinforge, Workspace, echo_app, port_block, signal};
use support::{RedisServer, eventually, free_port};

/// Requests sent and failed by one client loop.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicUsize,
    failed: AtomicUsize,
}

/// GETs in a loop until `stop`; with `fresh_connections`, each request on a new connection.
fn load(
    addr: std::net::SocketAddr,
    fresh_connections: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if fresh_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        let client = builder.build().expect("client");
        let mut errors = Vec::new();
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let send = || {
                client
                    .get(format!("http://{addr}/"))
                    .header("host", "alpha.test")
                    .send()
            };
            let mut result = send().await;
            // The old edge answers requests on its keep-alive connections with `Connection:
            // close` for a while after the handover, so busy clients move over cleanly. A pooled
            // connection that sat idle through all of that is closed at the end, and a request
            // sent on it at that very moment fails before any answer; HTTP clients send such a
            // GET again on a new connection (RFC 9112 §9.3.1), and so does this one — once.
            // Requests on fresh connections get no second try.
            if !fresh_connections && result.as_ref().is_err_and(|e| e.is_request()) {
                result = send().await;
            }
            tally.sent.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(r) if r.status() == 200 => {
                    let _ = r.bytes().await;
                }
                Ok(r) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("status {}", r.status()));
                }
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!(
                        "{} connection, {:?} after start: {e:?}",
                        if fresh_connections { "fresh" } else { "pooled" },
                        started.elapsed()
                    ));
                }
            }
        }
        errors
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_upgrade_in_place_loses_no_request() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let port = free_port();
    let yaml = format!(
        "state:\n  redis: {}\nedge:\n  listen_http: 127.0.0.1:{port}\n  grace: 5s\n  upgrade_sock: {}\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{}",
        redis.url(),
        ws.path().join("upgrade.sock").display(),
        port_block(),
        echo_app(&ws, "alpha", "alpha.test", "    idle_timeout: 0\n"),
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let addr = ([127, 0, 0, 1], port).into();
    let _supervisor = Spinforge::start(&ws, "supervisor", &path, None);
    let mut old = Spinforge::start(&ws, "edge", &path, Some(addr));
    let http = old.client();
    eventually(Duration::from_secs(30), "alpha answers", || async {
        (http.fetch("alpha.test", "/").await.status == 200).then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let fresh = Arc::new(Tally::default());
    let pooled = Arc::new(Tally::default());
    let loads = [
        load(addr, true, stop.clone(), fresh.clone()),
        load(addr, true, stop.clone(), fresh.clone()),
        load(addr, false, stop.clone(), pooled.clone()),
        load(addr, false, stop.clone(), pooled.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = fresh.sent.load(Ordering::Relaxed) + pooled.sent.load(Ordering::Relaxed);

    // A keep-alive connection idle long enough to be parked (edge/src/park.rs) when the
    // handover begins.
    let mut parked = std::net::TcpStream::connect(addr).expect("connect");
    parked
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(answer_head(&mut parked).starts_with("http/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The upgrade: the new edge waits for the sockets, the old one hands them over on SIGQUIT.
    let new = Spinforge::start_with(&ws, &["edge", "--upgrade"], &path, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(old.pid(), nix::sys::signal::Signal::SIGQUIT);
    let took_over = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the new edge took the sockets",
        || async {
            new.log_text()
                .contains("took the listening sockets over")
                .then_some(())
        },
    )
    .await;
    // Within the old edge's linger, the parked connection's next request is served (a new task
    // takes it out of the park) and told to reconnect.
    let head = answer_head(&mut parked);
    assert!(
        head.starts_with("http/1.1 200") && head.contains("\r\nconnection: close\r\n"),
        "a parked connection's request during the handover: {head}"
    );
    let (status, _) = old.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "the old edge exits cleanly: {status}");
    assert!(took_over.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for l in loads {
        errors.extend(l.await.expect("load task"));
    }
    let sent = fresh.sent.load(Ordering::Relaxed) + pooled.sent.load(Ordering::Relaxed);
    assert!(sent > before + 20, "load kept flowing: {before} → {sent}");
    assert_eq!(
        errors.len(),
        0,
        "{} of {sent} requests failed: {errors:?}\nold edge:\n{}",
        errors.len(),
        old.log_text()
    );
    // The new edge serves on its own now.
    assert_eq!(new_client(addr).fetch("alpha.test", "/").await.status, 200);
    drop(new);
}

/// Sends `GET /` (Host alpha.test) on `conn` and reads the answer whole (its Content-Length);
/// returns its head, lower-cased.
fn answer_head(conn: &mut std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed before the answer: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("a Content-Length");
            if got.len() >= end + 4 + length {
                return text[..end + 4].to_string();
            }
        }
    }
}

fn new_client(addr: std::net::SocketAddr) -> support::spinforge::Http {
    support::spinforge::Http::new(addr)
}
