//! Apps with `upstream: host:port`: routed to a service SpinForge does not run, health-checked,
//! never woken or idled. The service is a small HTTP server inside the test.

mod support;

use std::time::{Duration, Instant};
use support::eventually;
use support::free_port;
use support::spinforge::{Spinforge, Workspace, echo_app, port_block};
use support::upstream::Upstream;

fn up(ws: &Workspace, apps: &str) -> Spinforge {
    let port = free_port();
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n  grace: 4s\n  wake_timeout: 20s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_upstream_is_routed_while_healthy_and_refused_at_once_while_not() {
    let service = Upstream::start("legacy").await;
    let ws = Workspace::new();
    let apps = format!(
        "  legacy:\n    domains: [legacy.test]\n    upstream: {}\n    health_check: {{ path: /healthz }}\n",
        service.addr
    ) + &echo_app(&ws, "alpha", "alpha.test", "");
    let sf = up(&ws, &apps);
    let http = sf.client();

    // Routed once its first health check passed.
    let first = eventually(
        Duration::from_secs(10),
        "the upstream is routed",
        || async {
            let r = http.fetch("legacy.test", "/hello?x=1").await;
            (r.status == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(first.body, "upstream legacy saw /hello?x=1\n");
    assert!(
        first.header("server-timing").is_none(),
        "nothing was started: no cold start"
    );
    assert!(first.header("x-request-id").is_some());

    // Failing its health check, it leaves routing; requests are answered 502 at once, not held
    // for `wake_timeout` (20 s) waiting for a start that will never come.
    service.set_healthy(false);
    let refused = eventually(
        Duration::from_secs(15),
        "the upstream is taken out",
        || async {
            let r = http.fetch("legacy.test", "/").await;
            (r.status != 200).then_some(r)
        },
    )
    .await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    let served_before = service.requests();
    let started = Instant::now();
    let again = http.fetch("legacy.test", "/").await;
    assert_eq!(again.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a request for an unhealthy external app was held ({:?})",
        started.elapsed()
    );
    assert_eq!(
        service.requests(),
        served_before,
        "no request reaches an upstream out of routing"
    );

    // Healthy again: back in routing.
    service.set_healthy(true);
    let back = eventually(
        Duration::from_secs(10),
        "the upstream comes back",
        || async {
            let r = http.fetch("legacy.test", "/back").await;
            (r.status == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(back.body, "upstream legacy saw /back\n");

    // The supervisor never tried to run anything for it, and the spinlet app beside it still works.
    assert_eq!(http.fetch("alpha.test", "/").await.json()["app"], "alpha");
    let log = sf.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("legacy") && l.contains("spinlet")),
        "{log}"
    );
    assert!(log.contains("external upstream healthy"), "{log}");
    assert!(
        !std::fs::exists(ws.data_dir().join("apps/legacy")).unwrap_or(false),
        "no release folder for an external app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_upstream_that_never_answers_gets_502_not_a_wait() {
    // A port nothing listens on (held, so no other test takes it meanwhile).
    let dead_port = support::ClosedPort::new();
    let dead = dead_port.port();
    let ws = Workspace::new();
    let apps = format!("  gone:\n    domains: [gone.test]\n    upstream: 127.0.0.1:{dead}\n");
    let sf = up(&ws, &apps);
    let http = sf.client();
    // The route is there from the start (the app is known), but with no healthy upstream.
    let started = Instant::now();
    let r = http.fetch("gone.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "held for {:?}",
        started.elapsed()
    );
    assert!(r.body.contains("health check"), "{}", r.body);
}

/// An upstream that closes idle keep-alive connections sooner than the edge's pool drops them:
/// a GET that meets a closed pooled connection is sent again on a new one, a POST never goes out
/// on one (the edge checks first), and each request reaches the upstream exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_upstream_closed_are_not_used_for_requests() {
    let service = Upstream::start_closing_idle("brief", Duration::from_millis(100)).await;
    let ws = Workspace::new();
    let apps = format!(
        "  brief:\n    domains: [brief.test]\n    upstream: {}\n    health_check: {{ path: /healthz }}\n",
        service.addr
    );
    let sf = up(&ws, &apps);
    let http = sf.client();
    eventually(
        Duration::from_secs(10),
        "the upstream is routed",
        || async { (http.fetch("brief.test", "/warm").await.status == 200).then_some(()) },
    )
    .await;
    let before = service.requests();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{}", sf.http.expect("addr"));
    for i in 0..6 {
        // Past the upstream's 100 ms idle close, well within the edge's 4 s pool time.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let req = if i % 2 == 0 {
            client.get(format!("{url}/get{i}"))
        } else {
            client.post(format!("{url}/post{i}")).body("x=1")
        };
        let resp = req
            .header("host", "brief.test")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
        let body = resp.text().await.expect("body");
        assert!(
            body.contains(&format!(
                "saw /{}{i}",
                if i % 2 == 0 { "get" } else { "post" }
            )),
            "{body}"
        );
    }
    assert_eq!(
        service.requests() - before,
        6,
        "each request reached the upstream once"
    );
}
