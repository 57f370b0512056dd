//! The web dashboard in a real browser: headless Chromium driven through WebDriver
//! (`chromedriver`, started here on an ephemeral port) against a real `spinforge up`. Signs in,
//! sees the app appear live, opens its page, watches a line the app writes (with markup in it)
//! appear live as text and the woken spinlet show up, rolls back (and sees a rollback made through
//! the API within a second), deploys a .tar.gz from the deploy page, lists certificates, signs
//! out; and checks over plain HTTP what a browser would not show: no
//! cookie, a wrong CSRF token and a wrong token are refused, and the failed sign-in is audited.
//! In split mode (`spinforge supervisor` and `spinforge edge` sharing a real Redis) a wake the
//! edge asks for and a restart reach the open app page within a second.
//!
//! axe-core (from npm, put under ~/.cache by scripts/setup) checks every page in the same browser:
//! a serious or critical violation fails the test. Screenshots of every page, and the first paint
//! and bytes of each, go to `target/dashboard-screenshots/`.

#![allow(clippy::unwrap_used)]

mod support;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;
use support::spinforge::{ADMIN_TOKEN, Spinforge, Workspace, port_block};

/// The demo app: answers `/`, and writes `?line=` to its log (stdout) on `/log`.
const SERVER_JS: &str = r#"const http = require("http");
const version = process.env.VERSION || "1";
http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/log") {
    console.log(url.searchParams.get("line"));
    res.end("logged\n");
    return;
  }
  res.end("demo " + version + "\n");
}).listen(process.env.PORT, () => console.log("demo listening"));
"#;
const PACKAGE_JSON: &str =
    r#"{"name":"demo","version":"1.0.0","private":true,"scripts":{"start":"node server.js"}}"#;

/// Where the screenshots and timings go.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chromedriver` on an ephemeral port, and the Chromium it starts, working in a folder of their
/// own: when dropped (also after a failed assertion) every process working there is killed.
struct Driver {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Driver {
    fn start(ws: &Workspace) -> Driver {
        let dir = ws.path().join("browser");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian: apt-get install chromium chromium-driver; scripts/setup installs them)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Driver {
            child,
            url: format!("http://{addr}"),
            dir,
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-first-run", "--no-proxy-server",
                    format!("--user-data-dir={}", self.dir.join("profile").display()),
                ],
            }),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium and its helpers work where chromedriver did.
        support::spinforge::kill_processes_under(&self.dir);
    }
}

/// A page's screenshot, and what it cost: first contentful paint (ms after navigation start) and
/// bytes transferred to load it (the document, its style sheet and script; not the live
/// updates and log lines that follow).
async fn record(b: &Client, name: &str, timings: &mut Vec<String>) -> (f64, u64) {
    // Fonts and layout settle in a frame or two.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let png = b.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
    let v = b
        .execute(
            r#"const nav = performance.getEntriesByType("navigation")[0] || {};
const paint = performance.getEntriesByName("first-contentful-paint")[0];
let bytes = nav.transferSize || 0;
for (const r of performance.getEntriesByType("resource"))
  if (r.initiatorType === "link" || r.initiatorType === "script") bytes += r.transferSize || 0;
return { fcp: paint ? paint.startTime : -1, bytes: bytes, decoded: nav.decodedBodySize || 0 };"#,
            vec![],
        )
        .await
        .unwrap();
    let fcp = v["fcp"].as_f64().unwrap_or(-1.0);
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    timings.push(format!(
        "{name}: first contentful paint {fcp:.0} ms, {bytes} bytes transferred (document {} bytes)",
        v["decoded"]
    ));
    (fcp, bytes)
}

/// axe-core's script: `AXE_CORE`, or where scripts/setup puts it.
fn axe_source() -> String {
    let path = std::env::var_os("AXE_CORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/spinforge/axe-core/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core at {}: {e} (scripts/setup installs it; or set AXE_CORE to an axe.min.js)",
            path.display()
        )
    })
}

/// Runs axe-core on the page (WCAG 2 A and AA, and best practices) and fails on serious or
/// critical violations; the rest are written down with the timings.
async fn accessible(b: &Client, axe: &str, page: &str, notes: &mut Vec<String>) {
    let loaded = b
        .execute(
            &format!("{axe}\n;return typeof window.axe === 'object';"),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(loaded, json!(true), "axe-core did not load");
    let found = b
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
axe.run(document, { resultTypes: ["violations"] })
  .then((r) => done(r.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    targets: v.nodes.map((n) => n.target.join(" ")),
  }))))
  .catch((e) => done([{ id: "axe-error", impact: "critical", help: String(e), targets: [] }]));"#,
            vec![],
        )
        .await
        .unwrap();
    let found = found.as_array().cloned().unwrap_or_default();
    let serious: Vec<&Value> = found
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(
        serious.is_empty(),
        "axe-core on {page}: {}",
        serde_json::to_string_pretty(&serious).unwrap()
    );
    notes.push(format!(
        "{page}: axe-core: no serious or critical violations; {} minor or moderate: {}",
        found.len(),
        found
            .iter()
            .map(|v| format!("{} ({})", v["id"].as_str().unwrap_or(""), v["impact"]))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

/// Waits until `script` (a JS expression) is true in the page.
async fn until(b: &Client, what: &str, script: &str) {
    until_within(b, Duration::from_secs(15), what, script).await
}

async fn until_within(b: &Client, limit: Duration, what: &str, script: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let v = b
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap_or(Value::Bool(false));
        if v == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = b
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap_or_default();
            panic!("not true after {limit:?}: {what}\npage: {text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Types `token` into the sign-in form and submits it.
async fn submit_token(b: &Client, token: &str) {
    b.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until the open page listens to the store's events.
async fn until_live(b: &Client) {
    until(
        b,
        "the live event stream is open",
        "document.documentElement.getAttribute('data-live') === 'open'",
    )
    .await;
}

/// The demo app's source, in `ws/demo`.
fn demo_source(ws: &Workspace) -> PathBuf {
    let src = ws.path().join("demo");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("server.js"), SERVER_JS).unwrap();
    std::fs::write(src.join("package.json"), PACKAGE_JSON).unwrap();
    src
}

/// The demo app as the admin API shows it.
async fn demo_view(api: &reqwest::Client, base: &str) -> reqwest::Result<Value> {
    api.get(format!("{base}/api/v1/apps/demo"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await
}

/// The demo app's current release, once it has one (waiting `limit` at most).
async fn first_release(api: &reqwest::Client, base: &str, limit: Duration) -> u64 {
    support::eventually(limit, "the first release", || async {
        demo_view(api, base).await.ok()?["current_release"].as_u64()
    })
    .await
}

/// An HTTP client that keeps no cookies and follows no redirects, from `local` (any loopback
/// address reaches the admin API on 127.0.0.1; the sign-in rate limit is per address).
fn http(local: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from(local))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The value of `name="<field>" value="…"` in a page.
fn field(page: &str, name: &str) -> String {
    let at = page
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in {page}"));
    let rest = &page[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The `name=value` of a `Set-Cookie` for `name`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// Signs in over plain HTTP: the session cookie (`name=value`) and the page's CSRF token.
async fn sign_in(c: &reqwest::Client, base: &str, token: &str) -> (reqwest::Response, String) {
    let r = c.get(format!("{base}/ui/login")).send().await.unwrap();
    let login = set_cookie(&r, "spinforge_signin").unwrap();
    let login = login.split(';').next().unwrap().to_string();
    let csrf = field(&r.text().await.unwrap(), "csrf");
    let r = c
        .post(format!("{base}/ui/login"))
        .header("cookie", &login)
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    (r, login)
}

fn audit(ws: &Workspace) -> Vec<Value> {
    std::fs::read_to_string(ws.data_dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let started = Instant::now();
    let ws = Workspace::new();
    let edge_port = free_port();
    let config = ws.write(
        "spinforge.yaml",
        &format!(
            "edge:\n  listen_http: 127.0.0.1:{edge_port}\n  metrics: 127.0.0.1:{}\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps: {{}}\n",
            free_port(),
            port_block()
        ),
    );
    let sf = Spinforge::start(&ws, "up", &config, Some(([127, 0, 0, 1], edge_port).into()));
    let base = format!("http://{}", sf.admin.unwrap());
    let driver = Driver::start(&ws);
    let b = driver.browser().await;
    let mut timings = Vec::new();

    // Not signed in: the overview sends the browser to the sign-in page.
    b.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/login");
    record(&b, "1-sign-in", &mut timings).await;
    let axe = axe_source();
    accessible(&b, &axe, "sign-in", &mut timings).await;

    // A wrong token: refused, said so, and the token typed is not echoed.
    submit_token(&b, "not-the-token").await;
    until(
        &b,
        "the refusal shows",
        "document.getElementById('signin-error')",
    )
    .await;
    let page = b.source().await.unwrap();
    assert!(!page.contains("not-the-token"), "{page}");

    // The right token: the overview, empty (no apps yet), with its hint.
    submit_token(&b, ADMIN_TOKEN).await;
    until(&b, "the overview", "location.pathname === '/ui/'").await;
    let text = b
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("No apps yet"), "{text}");
    assert!(text.contains("spinforge deploy"), "{text}");
    let (fcp, bytes) = record(&b, "2-overview-empty", &mut timings).await;
    accessible(&b, &axe, "overview (empty)", &mut timings).await;
    assert!(bytes < 200_000, "{bytes} bytes");
    assert!(fcp < 2_000.0, "first paint after {fcp} ms");
    // The session cookie is out of the page's reach.
    let cookies = b.execute("return document.cookie;", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""), "HttpOnly cookies are not readable");

    // The page listens to the store's events before anything happens.
    until_live(&b).await;

    // An app through the API, built from a folder with a secret env value.
    let api = http([127, 0, 0, 1]);
    let src = demo_source(&ws);
    let r = api
        .put(format!("{base}/api/v1/apps/demo"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(
            json!({
                "domains": ["demo.test"],
                "source": src.display().to_string(),
                "env": { "DEMO_SECRET": "hunter2-never-shown" },
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    // Its first release, from the folder; then an upload makes the second.
    let first = first_release(&api, &base, Duration::from_secs(30)).await;
    let r = api
        .post(format!("{base}/api/v1/apps/demo/deploy"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/gzip")
        .body(tarball(&[
            ("server.js", SERVER_JS),
            ("package.json", PACKAGE_JSON),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let build: Value = r.json().await.unwrap();
    let build = build["build"].as_str().unwrap().to_string();
    let log = api
        .get(format!("{base}/api/v1/builds/{build}/log?follow=1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("\"state\":\"succeeded\""), "{log}");
    let current = support::eventually(support::EVENTUALLY, "the upload's release", || async {
        demo_view(&api, &base).await.ok()?["current_release"]
            .as_u64()
            .filter(|n| *n > first)
    })
    .await;

    // The open overview lists it, live (no reload), with its release and domain.
    until(
        &b,
        "the demo app on the overview, live",
        &format!(
            "document.querySelector('tr[data-app=demo]') && document.querySelector('tr[data-app=demo]').textContent.includes('#{current}')"
        ),
    )
    .await;
    let row = b
        .find(Locator::Css("tr[data-app=demo]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains("demo.test"), "{row}");
    assert!(row.contains(&format!("#{current}")), "{row}");
    let page = b.source().await.unwrap();
    assert!(!page.contains("hunter2"), "an env value reached the page");
    assert!(!page.contains(ADMIN_TOKEN), "the token reached the page");
    let (_, bytes) = record(&b, "3-overview", &mut timings).await;
    assert!(bytes < 200_000, "{bytes} bytes");
    accessible(&b, &axe, "overview", &mut timings).await;
    // At phone width, nothing overflows the page sideways.
    b.set_window_size(390, 844).await.unwrap();
    record(&b, "3-overview-phone", &mut timings).await;
    let wide = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        wide,
        json!(true),
        "the page scrolls sideways at phone width"
    );
    b.set_window_size(1280, 900).await.unwrap();

    // The app's page: facts, env names without values, releases, buttons.
    b.find(Locator::Css("tr[data-app=demo] a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the app's page",
        "location.pathname === '/ui/apps/demo'",
    )
    .await;
    let text = b
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("DEMO_SECRET"), "{text}");
    assert!(text.contains("demo.test — certificate: ACME"), "{text}");
    assert!(!b.source().await.unwrap().contains("hunter2"));
    let older = first;
    let serving = b
        .find(Locator::Css(&format!("tr[data-release='{current}']")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serving.contains("serving"), "{serving}");

    // Its builds, newest first, each with its steps as a bar and in words; a build's own page
    // has its log.
    let builds = b
        .find(Locator::Css("#builds"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(builds.contains("succeeded"), "{builds}");
    let steps = b
        .find(Locator::Css("#builds tr[data-build] svg.steps"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap_or_default();
    for step in ["Build steps: source ", " · install ", " · release "] {
        assert!(steps.contains(step), "{step:?} in {steps:?}");
    }
    b.find(Locator::Css("#builds tr[data-build] a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "a build's page",
        "location.pathname.startsWith('/ui/builds/')",
    )
    .await;
    let build_log = b
        .find(Locator::Css("#build-log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        build_log.contains("[spinforge] build succeeded"),
        "{build_log}"
    );
    record(&b, "4-build", &mut timings).await;
    accessible(&b, &axe, "build", &mut timings).await;
    b.goto(&format!("{base}/ui/apps/demo")).await.unwrap();
    until(
        &b,
        "the app's page again",
        "location.pathname === '/ui/apps/demo' && !!document.getElementById('log-status')",
    )
    .await;

    // A line the app writes shows up live, as text: markup in it stays text.
    until(
        &b,
        "the log stream is open",
        "document.getElementById('log-status').textContent.startsWith('Live')",
    )
    .await;
    let marker = format!("marker-{}", std::process::id());
    let r = sf
        .client()
        .fetch(
            "demo.test",
            &format!(
                "/log?line=%3Cscript%3Ewindow.pwned%3D1%3C%2Fscript%3E%3Cb%3E{marker}%3C%2Fb%3E"
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    until(
        &b,
        "the app's log line in the page",
        &format!("document.getElementById('log').textContent.includes('<script>window.pwned=1</script><b>{marker}</b>')"),
    )
    .await;
    // The request woke a spinlet: the open page shows it running, live.
    until(
        &b,
        "the spinlet running on the open page, with its memory",
        "document.getElementById('spinlets').textContent.includes('running') && document.getElementById('spinlets').textContent.includes('MiB')",
    )
    .await;
    // The edge counted those requests: the open page shows them within a reading or two.
    until(
        &b,
        "the app's traffic on the open page",
        "(() => { const m = /(\\d+) in the last hour/.exec(document.getElementById('traffic').textContent); return m && Number(m[1]) > 0; })()",
    )
    .await;
    let section = b.find(Locator::Css("#traffic")).await.unwrap();
    std::fs::write(
        shots().join("4-app-traffic.png"),
        section.screenshot().await.unwrap(),
    )
    .unwrap();
    let traffic = section.text().await.unwrap();
    assert!(traffic.contains("Cold starts"), "{traffic}");
    timings.push(format!("app traffic: {}", traffic.replace('\n', " ")));
    let injected = b
        .execute(
            "return [window.pwned === undefined, document.querySelectorAll('#log *').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!([true, 0]), "a log line became markup");
    let log = b.find(Locator::Css("#log")).await.unwrap();
    log.click().await.unwrap();
    std::fs::write(
        shots().join("4-app-log.png"),
        log.screenshot().await.unwrap(),
    )
    .unwrap();
    let (_, bytes) = record(&b, "4-app", &mut timings).await;
    accessible(&b, &axe, "app", &mut timings).await;
    assert!(bytes < 200_000, "{bytes} bytes");

    // Roll back to the older release with its button.
    b.find(Locator::Css(&format!("tr[data-release='{older}'] button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the rollback's notice",
        &format!("location.search === '?done=rollback-{older}'"),
    )
    .await;
    let notice = b
        .find(Locator::Css(".notice"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(notice.contains(&format!("release {older}")), "{notice}");
    let v = demo_view(&api, &base).await.unwrap();
    assert_eq!(v["current_release"], older, "the API sees the rollback");
    let serving = b
        .find(Locator::Css(&format!("tr[data-release='{older}']")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serving.contains("serving"), "{serving}");
    assert!(
        serving.contains("held until the next deploy"),
        "the page says the rollback holds: {serving}"
    );
    record(&b, "5-app-rolled-back", &mut timings).await;
    // A rollback from elsewhere (the API) reaches the open page within a second.
    until_live(&b).await;
    // A keyboard user on a rollback button keeps their place through the update.
    b.execute(
        &format!("document.querySelector(\"tr[data-release='{current}'] button\").focus();"),
        vec![],
    )
    .await
    .unwrap();
    let r = api
        .post(format!("{base}/api/v1/apps/demo/rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(json!({ "release": current }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let changed = Instant::now();
    until_within(
        &b,
        Duration::from_secs(1),
        "the API's rollback on the open page within a second",
        &format!(
            "document.querySelector(\"tr[data-release='{current}']\").textContent.includes('serving')"
        ),
    )
    .await;
    timings.push(format!(
        "live update: a rollback through the API shown on the open app page after {} ms",
        changed.elapsed().as_millis()
    ));
    let focused = b
        .execute(
            "const a = document.activeElement; return a.tagName === 'BUTTON' && document.getElementById('releases').contains(a);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(focused, json!(true), "focus was lost in the live update");
    b.set_window_size(390, 844).await.unwrap();
    record(&b, "5-app-phone", &mut timings).await;
    let wide = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        wide,
        json!(true),
        "the app page scrolls sideways at phone width"
    );
    b.set_window_size(1280, 900).await.unwrap();

    // Deploy a .tar.gz from the deploy page: the build log streams, and it ends with the URL.
    let archive = ws.path().join("demo-v3.tar.gz");
    std::fs::write(
        &archive,
        tarball(&[
            ("server.js", SERVER_JS),
            ("package.json", PACKAGE_JSON),
            ("VERSION", "3"),
        ]),
    )
    .unwrap();
    b.find(Locator::Css("a.button[href='/ui/deploy?app=demo']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&b, "the deploy page", "location.pathname === '/ui/deploy'").await;
    let chosen = b
        .execute(
            "return document.getElementById('deploy-app').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(chosen, json!("demo"));
    record(&b, "6-deploy", &mut timings).await;
    b.find(Locator::Css("#deploy-file"))
        .await
        .unwrap()
        .send_keys(archive.to_str().unwrap())
        .await
        .unwrap();
    b.find(Locator::Css("#deploy button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the build succeeded",
        "document.getElementById('deploy-status').textContent.startsWith('Deployed')",
    )
    .await;
    let result = b
        .find(Locator::Css("#deploy-result a"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(result, "https://demo.test/");
    let build_log = b
        .find(Locator::Css("#build-log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!build_log.trim().is_empty(), "the build log streamed");
    record(&b, "6-deploy-done", &mut timings).await;
    accessible(&b, &axe, "deploy", &mut timings).await;
    let v = demo_view(&api, &base).await.unwrap();
    let newest = v["current_release"].as_u64().unwrap();
    assert!(newest > current, "the upload is a new release: {v}");
    let served = sf.client().fetch("demo.test", "/").await;
    assert_eq!(served.status, 200, "{}", served.body);

    // From git: a URL that is none is refused with the API's reason; a file:// repository builds.
    let repo = ws.path().join("demo-git");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("server.js"), SERVER_JS).unwrap();
    std::fs::write(repo.join("package.json"), PACKAGE_JSON).unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "v4",
        ],
    ] {
        let ok = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    b.execute("document.getElementById('deploy-file').value = '';", vec![])
        .await
        .unwrap();
    let git = b.find(Locator::Css("#deploy-git")).await.unwrap();
    git.send_keys("not a repository").await.unwrap();
    b.find(Locator::Css("#deploy button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the bad URL refused",
        "document.getElementById('deploy-status').textContent.startsWith('Refused') && document.getElementById('deploy-status').textContent.includes('git URL')",
    )
    .await;
    git.clear().await.unwrap();
    git.send_keys(&format!("file://{}", repo.display()))
        .await
        .unwrap();
    b.find(Locator::Css("#deploy button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the git build succeeded",
        &format!(
            "document.getElementById('deploy-status').textContent.startsWith('Deployed: release {}')",
            newest + 1
        ),
    )
    .await;
    record(&b, "6-deploy-git", &mut timings).await;

    // A folder, packed in the browser: long paths kept, node_modules left out.
    let folder = ws.path().join("demo-folder");
    let long = format!("assets/{}/{}.txt", "d".repeat(60), "f".repeat(60));
    for (path, text) in [
        ("server.js", SERVER_JS),
        ("package.json", PACKAGE_JSON),
        (long.as_str(), "long path"),
        ("node_modules/junk/index.js", "left out"),
    ] {
        let at = folder.join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, text).unwrap();
    }
    git.clear().await.unwrap();
    b.find(Locator::Css("#deploy-folder"))
        .await
        .unwrap()
        .send_keys(folder.to_str().unwrap())
        .await
        .unwrap();
    b.find(Locator::Css("#deploy button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the folder's build succeeded",
        &format!(
            "document.getElementById('deploy-status').textContent.startsWith('Deployed: release {}')",
            newest + 2
        ),
    )
    .await;
    let release = ws
        .data_dir()
        .join(format!("apps/demo/releases/{}", newest + 2));
    assert_eq!(
        std::fs::read_to_string(release.join(&long)).unwrap(),
        "long path"
    );
    assert!(!release.join("node_modules/junk").exists());

    // Certificates: every domain, its app and where its certificate comes from.
    b.find(Locator::Css("nav a[href='/ui/certs']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &b,
        "the certificates page",
        "location.pathname === '/ui/certs'",
    )
    .await;
    let row = b
        .find(Locator::Css("tr[data-domain='demo.test']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains("demo") && row.contains("ACME"), "{row}");
    record(&b, "7-certificates", &mut timings).await;
    accessible(&b, &axe, "certificates", &mut timings).await;
    b.set_window_size(390, 844).await.unwrap();
    record(&b, "7-certificates-phone", &mut timings).await;
    let wide = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        wide,
        json!(true),
        "the certificates page scrolls sideways at phone width"
    );
    b.set_window_size(1280, 900).await.unwrap();

    // Sign out: back to the sign-in page, and the overview is gone with the session.
    b.find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(&b, "the sign-in page", "location.pathname === '/ui/login'").await;
    b.goto(&format!("{base}/ui/")).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/ui/login");
    b.close().await.unwrap();

    // --- Over plain HTTP: what a browser would not show. ---
    // No cookie: pages redirect to the sign-in page; changes are refused.
    let r = api.get(format!("{base}/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = api
        .post(format!("{base}/ui/logout"))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A forged session id is no session.
    let r = api
        .get(format!("{base}/ui/"))
        .header("cookie", format!("spinforge_session={}", "ab".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    // A session; its cookie's attributes.
    let (r, _) = sign_in(&api, &base, ADMIN_TOKEN).await;
    assert_eq!(r.status(), 303);
    let cookie = set_cookie(&r, "spinforge_session").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let page = api
        .get(format!("{base}/ui/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let csrf = field(&page.text().await.unwrap(), "csrf");
    // Behind an HTTPS proxy the cookie is Secure.
    let (r, _) = {
        let r = api.get(format!("{base}/ui/login")).send().await.unwrap();
        let login = set_cookie(&r, "spinforge_signin").unwrap();
        let login = login.split(';').next().unwrap().to_string();
        let nonce = field(&r.text().await.unwrap(), "csrf");
        let r = api
            .post(format!("{base}/ui/login"))
            .header("cookie", &login)
            .header("x-forwarded-proto", "https")
            .form(&[("csrf", nonce.as_str()), ("token", ADMIN_TOKEN)])
            .send()
            .await
            .unwrap();
        (r, login)
    };
    assert!(
        set_cookie(&r, "spinforge_session")
            .unwrap()
            .contains("; Secure"),
        "over HTTPS the cookie is Secure"
    );

    // A wrong CSRF token: 403, the session stays, and the refusal is audited.
    for wrong in ["", "0000", &csrf[..csrf.len() - 1]] {
        let r = api
            .post(format!("{base}/ui/logout"))
            .header("cookie", &session)
            .form(&[("csrf", wrong)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "csrf `{wrong}`");
    }
    // The app's buttons too: nothing restarts.
    let r = api
        .post(format!("{base}/ui/apps/demo/restart"))
        .header("cookie", &session)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The right one from another site: refused too.
    let r = api
        .post(format!("{base}/ui/logout"))
        .header("cookie", &session)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = api
        .get(format!("{base}/ui/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the session survived the refused changes");

    // Failed sign-ins: refused, audited, and rate-limited per address (from another loopback
    // address, so the limit does not touch the rest of this test).
    let other = http([127, 0, 0, 2]);
    let (r, _) = sign_in(&other, &base, "wrong-token").await;
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("wrong-token"),
        "the token typed is not echoed"
    );
    let mut limited = false;
    for _ in 0..10 {
        let (r, _) = sign_in(&other, &base, "wrong-token").await;
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            limited = true;
            break;
        }
        assert_eq!(r.status(), 401);
    }
    assert!(limited, "failed sign-ins are rate-limited");
    // Even the right token waits now, from that address…
    let (r, _) = sign_in(&other, &base, ADMIN_TOKEN).await;
    assert_eq!(r.status(), 429);
    // …but not from another.
    let (r, _) = sign_in(&api, &base, ADMIN_TOKEN).await;
    assert_eq!(r.status(), 303);

    let lines = audit(&ws);
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["result"]
                .as_str()
                .is_some_and(|r| r.contains("sign-in refused"))
        })
        .collect();
    assert!(!refused.is_empty(), "{lines:?}");
    assert_eq!(refused[0]["token"], "unauthenticated");
    assert_eq!(refused[0]["status"], 401);
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 403 && l["path"] == "/ui/logout"),
        "the wrong CSRF token is audited: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["result"] == "dashboard: signed in" && l["token"] != "unauthenticated"),
        "{lines:?}"
    );
    let text = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap();
    assert!(!text.contains(ADMIN_TOKEN) && !text.contains("wrong-token"));

    let mut f = std::fs::File::create(shots().join("timings.txt")).unwrap();
    for t in &timings {
        writeln!(f, "{t}").unwrap();
        eprintln!("{t}");
    }
    eprintln!(
        "dashboard test: {:?}; screenshots in {}",
        started.elapsed(),
        shots().display()
    );
}

fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, data.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Without a token the dashboard is for this machine only: one click signs in, but only for a
/// loopback `Host`, so that a web page cannot reach it through DNS rebinding.
/// Split mode: the dashboard is served by `spinforge supervisor`, the traffic goes through a
/// separate `spinforge edge`, and the two share only Redis. A wake the edge asks for and a restart
/// through the API reach the open app page within a second of the API seeing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_live_in_split_mode() {
    let redis = support::RedisServer::start();
    let ws = Workspace::new();
    let edge_port = free_port();
    let src = demo_source(&ws);
    let config = ws.write(
        "spinforge.yaml",
        &format!(
            "state:\n  redis: {}\nedge:\n  listen_http: 127.0.0.1:{edge_port}\n  metrics: off\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n  demo:\n    domains: [demo.test]\n    source: {}\n",
            redis.url(),
            port_block(),
            src.display()
        ),
    );
    let supervisor = Spinforge::start(&ws, "supervisor", &config, None);
    let edge = Spinforge::start(
        &ws,
        "edge",
        &config,
        Some(([127, 0, 0, 1], edge_port).into()),
    );
    let base = format!("http://{}", supervisor.admin.unwrap());
    let api = http([127, 0, 0, 1]);
    first_release(&api, &base, Duration::from_secs(60)).await;
    let driver = Driver::start(&ws);
    let b = driver.browser().await;
    b.goto(&format!("{base}/ui/login")).await.unwrap();
    submit_token(&b, ADMIN_TOKEN).await;
    until(&b, "the overview", "location.pathname === '/ui/'").await;
    b.goto(&format!("{base}/ui/apps/demo")).await.unwrap();
    until_live(&b).await;
    // The first pid the API lists running for the app, other than `not`.
    let running_pid = |not: Option<u64>| {
        let (api, base) = (api.clone(), base.clone());
        async move {
            let list: Value = api
                .get(format!("{base}/api/v1/spinlets"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            list.as_array()?
                .iter()
                .filter(|s| s["app"] == "demo" && s["state"] == "running")
                .filter_map(|s| s["pid"].as_u64())
                .find(|pid| Some(*pid) != not)
        }
    };

    // A request to the edge wakes the app (edge → Redis → supervisor): the open page shows
    // the spinlet the API sees, within a second.
    let r = edge.client().fetch("demo.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let woken = support::eventually(Duration::from_secs(30), "a running spinlet", || {
        running_pid(None)
    })
    .await;
    until_within(
        &b,
        Duration::from_secs(1),
        "the woken spinlet on the open page within a second",
        &format!("document.getElementById('spinlets').textContent.includes('{woken}')"),
    )
    .await;

    // A restart through the API: its new spinlet, within a second of the API listing it.
    let r = api
        .post(format!("{base}/api/v1/apps/demo/restart"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let restarted = support::eventually(Duration::from_secs(30), "a new running spinlet", || {
        running_pid(Some(woken))
    })
    .await;
    let seen = Instant::now();
    until_within(
        &b,
        Duration::from_secs(1),
        "the restarted spinlet on the open page within a second",
        &format!("document.getElementById('spinlets').textContent.includes('{restarted}')"),
    )
    .await;
    eprintln!(
        "split mode: the restarted spinlet showed {} ms after the API listed it",
        seen.elapsed().as_millis()
    );
    b.close().await.unwrap();
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_hosts() {
    let ws = Workspace::new();
    let edge_port = free_port();
    let config = ws.write(
        "spinforge.yaml",
        &format!(
            "edge:\n  listen_http: 127.0.0.1:{edge_port}\n  metrics: off\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps: {{}}\n",
            port_block()
        ),
    );
    let sf = Spinforge::up_without_token(&ws, &config, ([127, 0, 0, 1], edge_port).into());
    let admin = sf.admin.unwrap();
    let base = format!("http://{admin}");
    let c = http([127, 0, 0, 1]);
    for path in ["/ui/", "/ui/login", "/ui/static/app.js"] {
        let r = c
            .get(format!("{base}{path}"))
            .header("host", format!("rebound.example:{}", admin.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    let r = c.get(format!("{base}/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(!page.contains("name=\"token\""), "no token to ask for");
    let (r, _) = sign_in(&c, &base, "").await;
    assert_eq!(r.status(), 303);
    let session = set_cookie(&r, "spinforge_session").unwrap();
    let session = session.split(';').next().unwrap().to_string();
    let r = c
        .get(format!("{base}/ui/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The same session through a rebound name: refused.
    let r = c
        .get(format!("{base}/ui/"))
        .header("cookie", &session)
        .header("host", format!("rebound.example:{}", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let lines = audit(&ws);
    assert!(
        lines
            .iter()
            .any(|l| l["result"] == "dashboard: signed in" && l["token"] == "local"),
        "{lines:?}"
    );
}
