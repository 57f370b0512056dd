//! Prometheus `/metrics` on `edge.metrics` and the JSON access log, watched while real traffic
//! flows through the real binary.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::spinforge::{Spinforge, Workspace, echo_app, port_block};
use support::upstream::Upstream;
use support::{eventually, free_port, metric_value as value, scrape};

/// Waits until `series` reads `expected` (counters move just after a response is sent).
async fn settled(addr: &str, series: &str, expected: f64) {
    let mut last = None;
    for _ in 0..250 {
        last = value(&scrape(addr).await, series);
        if last == Some(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{series} is {last:?}, expected {expected}:\n{}",
        scrape(addr).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic_and_requests_are_logged_as_json() {
    let service = Upstream::start("legacy").await;
    let ws = Workspace::new();
    let (port, metrics_port) = (free_port(), free_port());
    let metrics = format!("127.0.0.1:{metrics_port}");
    let apps = format!(
        "  legacy:\n    domains: [legacy.test]\n    upstream: {}\n    health_check: {{ path: /healthz }}\n",
        service.addr
    ) + &echo_app(&ws, "alpha", "alpha.test", "")
        .replace("START_LOG", "BOOT_DELAY_MS: 300, START_LOG");
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n  grace: 4s\n  metrics: {metrics}\n  access_log: json\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], port).into()));
    let http = sf.client();

    let before = scrape(&metrics).await;
    assert!(
        before.contains("# TYPE spinforge_requests_total counter"),
        "{before}"
    );
    assert_eq!(value(&before, "spinforge_open_websockets"), Some(0.0));
    assert_eq!(value(&before, "spinforge_routes"), Some(2.0), "{before}");

    eventually(
        Duration::from_secs(10),
        "the upstream is routed",
        || async { (http.fetch("legacy.test", "/").await.status == 200).then_some(()) },
    )
    .await;
    // A request is counted when it ends, just after its answer reached the client: wait for it.
    let get_ok = r#"spinforge_requests_total{app="legacy",method="GET",status="2xx"}"#;
    settled(&metrics, get_ok, 1.0).await;
    for _ in 0..3 {
        assert_eq!(http.fetch("legacy.test", "/a").await.status, 200);
    }
    let posted = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/form"))
        .header("host", "legacy.test")
        .body("x=1")
        .send()
        .await
        .expect("POST");
    assert_eq!(posted.status(), 200);
    assert_eq!(http.fetch("nobody.test", "/").await.status, 404);

    settled(&metrics, get_ok, 4.0).await;
    settled(
        &metrics,
        r#"spinforge_requests_total{app="legacy",method="POST",status="2xx"}"#,
        1.0,
    )
    .await;
    settled(
        &metrics,
        r#"spinforge_requests_total{app="",method="other",status="4xx"}"#,
        1.0,
    )
    .await;
    let after = scrape(&metrics).await;
    let count = value(
        &after,
        r#"spinforge_request_duration_seconds_count{app="legacy"}"#,
    )
    .expect("latency histogram");
    assert!(count >= 5.0, "{after}");
    assert_eq!(
        value(
            &after,
            r#"spinforge_request_duration_seconds_bucket{app="legacy",le="+Inf"}"#
        ),
        Some(count)
    );

    // An unhealthy upstream: 502s counted as 5xx.
    service.set_healthy(false);
    eventually(
        Duration::from_secs(15),
        "the upstream is taken out",
        || async { (http.fetch("legacy.test", "/").await.status == 502).then_some(()) },
    )
    .await;
    let down = scrape(&metrics).await;
    assert!(
        value(
            &down,
            r#"spinforge_requests_total{app="legacy",method="GET",status="5xx"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{down}"
    );

    // A cold start: many held requests, one start counted, its duration observed.
    let held = (0..5).map(|_| {
        let http = http.clone();
        tokio::spawn(async move { http.fetch("alpha.test", "/").await.status })
    });
    for r in futures::future::join_all(held).await {
        assert_eq!(r.expect("request task"), 200);
    }
    settled(
        &metrics,
        r#"spinforge_cold_start_duration_seconds_count{app="alpha"}"#,
        1.0,
    )
    .await;
    let cold = scrape(&metrics).await;
    assert_eq!(
        value(&cold, r#"spinforge_cold_starts_total{app="alpha"}"#),
        Some(1.0),
        "{cold}"
    );
    assert_eq!(
        value(
            &cold,
            r#"spinforge_cold_start_duration_seconds_count{app="alpha"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &cold,
            r#"spinforge_cold_start_duration_seconds_bucket{app="alpha",le="0.1"}"#
        ),
        Some(0.0),
        "the app took 300 ms to boot: {cold}"
    );

    // An open keep-alive connection shows as open until it is closed, parked ones too (idle
    // past a quarter of a second, held as their socket alone).
    let open_before = value(&cold, "spinforge_open_connections").expect("gauge");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.write_all(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let open = value(&scrape(&metrics).await, "spinforge_open_connections").expect("gauge");
    assert!(open >= open_before + 1.0, "{open} vs {open_before}");
    drop(conn);
    eventually(
        Duration::from_secs(5),
        "the connection is closed",
        || async {
            let now = value(&scrape(&metrics).await, "spinforge_open_connections")?;
            (now < open).then_some(())
        },
    )
    .await;

    // One JSON access line per request, with the app and the status.
    let log = sf.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("\"spinforge::access\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["app"] == "legacy"
            && l["status"] == 200
            && l["method"] == "POST"
            && l["path"] == "/form"
            && l["request_id"].as_str().is_some_and(|id| id.len() == 32)),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 404 && l["host"] == "nobody.test"),
        "{log}"
    );
}
