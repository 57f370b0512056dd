//! Regression tests of issue 13 (findings 5, 6, 7 and 9) against the real `spinforge up`: git
//! credentials never shown, static sites serving their files only, one address unable to starve
//! the admin API or fill the disk through audit.log, and log lines unable to inject SSE events.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::free_port;
use support::spinforge::{ADMIN_TOKEN, Reply, Spinforge, Workspace, port_block};

fn config(ws: &Workspace, edge_port: u16, supervisor_extra: &str, apps: &str) -> PathBuf {
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{edge_port}\n  grace: 3s\n  wake_timeout: 60s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n{supervisor_extra}apps:\n{apps}",
        port_block()
    );
    ws.write("spinforge.yaml", &yaml)
}

/// `up` with `apps` (YAML under `apps:`, or `{}` for none); returns it and its edge's port.
fn up(ws: &Workspace, supervisor_extra: &str, apps: &str) -> (Spinforge, u16) {
    let port = free_port();
    let apps = if apps.is_empty() { "  {}\n" } else { apps };
    let path = config(ws, port, supervisor_extra, apps);
    let sf = Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()));
    (sf, port)
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(sf: &Spinforge) -> Api {
        Api {
            base: format!("http://{}", sf.admin.expect("up has an admin API")),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }
    fn req(&self, method: &str, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }
    async fn send(&self, r: reqwest::RequestBuilder) -> Reply {
        Reply::read(r.send().await.expect("admin API answers")).await
    }
    async fn get(&self, path: &str) -> Reply {
        self.send(self.req("GET", path, Some(ADMIN_TOKEN))).await
    }
    async fn send_json(&self, method: &str, path: &str, body: serde_json::Value) -> Reply {
        self.send(
            self.req(method, path, Some(ADMIN_TOKEN))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }
}

/// Events as a browser's EventSource reads them (WHATWG HTML, "Interpreting an event stream"):
/// lines end at CRLF, LF or a lone CR; `event:` names the next event; a blank line dispatches.
fn event_source(stream: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    let mut rest = stream;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        rest = if rest[end..].starts_with("\r\n") {
            &rest[end + 2..]
        } else {
            &rest[end + 1..]
        };
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let kind = if name.is_empty() { "message" } else { &name };
                events.push((kind.to_string(), std::mem::take(&mut data)));
            }
            name.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value.to_string(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            _ => {}
        }
    }
    events
}

/// Waits for a build to end; returns its status document.
async fn wait_build(api: &Api, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let b = api.get(&format!("/api/v1/builds/{id}")).await.json();
        if matches!(
            b["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return b;
        }
        assert!(Instant::now() < deadline, "build {id} did not end: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A git server that asks every request for credentials (HTTP 401 + `WWW-Authenticate`), as a
/// private repository does: git then prints why it could not authenticate.
async fn asking_git_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

/// One raw HTTP/1.1 request to `addr`; the whole answer (the connection is closed after it).
fn raw_get(addr: SocketAddr, host: &str, target: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn header_of<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// Finding 5: a token in a git URL (as the user name, or as user:password) shows nowhere: not in
// the API, the build log (SSE and file), the build's error, release.json, the served site, the
// process's own output or the audit log — also when git itself fails and prints the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_credentials_show_nowhere() {
    let ws = Workspace::new();
    let repo = ws.path().join("site");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("index.html"), "<h1>from git</h1>\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    let asking = asking_git_server().await;
    let (sf, edge_port) = up(&ws, "", "");
    let api = Api::new(&sf);
    let edge: SocketAddr = ([127, 0, 0, 1], edge_port).into();
    // (app, source, the secret in it, whether the build succeeds)
    let cases = [
        (
            "tokenuser",
            format!("file://ghp_TokenAsUser0001@localhost{}", repo.display()),
            "ghp_TokenAsUser0001",
            true,
        ),
        (
            "userpass",
            format!(
                "file://someone:Passw0rdSecret02@localhost{}",
                repo.display()
            ),
            "Passw0rdSecret02",
            true,
        ),
        (
            "askuser",
            format!("http://ghp_TokenAsUser0003@{asking}/o/r.git"),
            "ghp_TokenAsUser0003",
            false,
        ),
        (
            "askpass",
            format!("http://someone:Passw0rdSecret04@{asking}/o/r.git"),
            "Passw0rdSecret04",
            false,
        ),
    ];
    for (app, source, secret, succeeds) in &cases {
        let r = api
            .send_json(
                "PUT",
                &format!("/api/v1/apps/{app}"),
                serde_json::json!({ "domains": [format!("{app}.test")] }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = api
            .send_json(
                "POST",
                &format!("/api/v1/apps/{app}/deploy"),
                serde_json::json!({ "source": source }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["build"].as_str().unwrap().to_string();
        let build = wait_build(&api, &id).await;
        let expected = if *succeeds { "succeeded" } else { "failed" };
        assert_eq!(build["state"], expected, "{app}: {build}");
        assert!(!build.to_string().contains(secret), "{app}: build {build}");

        let shown = api.get(&format!("/api/v1/apps/{app}")).await;
        assert!(!shown.body.contains(secret), "{app}: {}", shown.body);
        assert!(
            shown.json()["source"].as_str().unwrap().contains("***@"),
            "{app}: the source is shown redacted: {}",
            shown.body
        );
        for path in [
            "/api/v1/apps".to_string(),
            format!("/api/v1/apps/{app}/releases"),
        ] {
            let r = api.get(&path).await;
            assert!(!r.body.contains(secret), "{app}: {path}: {}", r.body);
        }
        let sse = api.get(&format!("/api/v1/builds/{id}/log")).await;
        assert!(
            !sse.body.contains(secret),
            "{app}: build log (SSE): {}",
            sse.body
        );
        assert!(sse.body.contains("***@"), "{app}: {}", sse.body);
        let file =
            std::fs::read_to_string(ws.data_dir().join(format!("logs/builds/{id}.log"))).unwrap();
        assert!(!file.contains(secret), "{app}: build log (file): {file}");
        if *app == "askuser" {
            // git's own failure names the URL it could not read a password for.
            assert!(
                file.contains("could not read Password for 'http://***@"),
                "{file}"
            );
        }
        if *succeeds {
            let release = ws
                .data_dir()
                .join(format!("apps/{app}/releases/1/release.json"));
            let info = std::fs::read_to_string(release).unwrap();
            assert!(!info.contains(secret), "{app}: release.json: {info}");
            let page = raw_get(edge, &format!("{app}.test"), "/");
            assert!(page.contains("from git"), "{app}: {page}");
            let meta = raw_get(edge, &format!("{app}.test"), "/release.json");
            assert!(!meta.contains(secret), "{app}: served: {meta}");
        }
    }
    let output = sf.log_text();
    let audit = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap_or_default();
    for (app, _, secret, _) in &cases {
        assert!(
            !output.contains(secret),
            "{app}: spinforge's output: {output}"
        );
        assert!(!audit.contains(secret), "{app}: audit.log: {audit}");
    }
}

// Finding 6: a plain static site (served from its release folder) serves its own files only:
// not SpinForge's release.json or the app's spinforge.yaml, no dotfiles but `.well-known`, and a
// folder's redirect never names another host (`//docs` would be the host `docs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_sites_serve_their_files_only() {
    let ws = Workspace::new();
    let site = ws.path().join("site");
    for dir in ["docs", ".well-known", ".private"] {
        std::fs::create_dir_all(site.join(dir)).unwrap();
    }
    std::fs::write(site.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(site.join("docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(site.join(".env"), "DB_PASSWORD=dotenv-secret\n").unwrap();
    std::fs::write(site.join(".private/key.txt"), "dotdir-secret\n").unwrap();
    std::fs::write(site.join(".well-known/security.txt"), "Contact: x\n").unwrap();
    std::fs::write(site.join("spinforge.yaml"), "env: { KEY: yaml-secret }\n").unwrap();
    let apps = format!(
        "  plain:\n    domains: [plain.test]\n    source: {}\n",
        site.display()
    );
    let (_sf, port) = up(&ws, "", &apps);
    let edge: SocketAddr = ([127, 0, 0, 1], port).into();
    let home = raw_get(edge, "plain.test", "/");
    assert_eq!(status_of(&home), 200, "{home}");
    assert!(
        ws.data_dir()
            .join("apps/plain/releases/1/release.json")
            .is_file(),
        "the site is served from its release folder, beside release.json"
    );
    for (path, secret) in [
        ("/release.json", "source_checksum"),
        ("/release.json?x=1", "source_checksum"),
        ("/RELEASE.JSON", "source_checksum"),
        ("/.env", "dotenv-secret"),
        ("/%2eenv", "dotenv-secret"),
        ("/docs/../.env", "dotenv-secret"),
        ("/.private/key.txt", "dotdir-secret"),
        ("/spinforge.yaml", "yaml-secret"),
    ] {
        let r = raw_get(edge, "plain.test", path);
        assert!(
            matches!(status_of(&r), 400 | 404),
            "{path} must not be served: {r}"
        );
        assert!(!r.contains(secret), "{path}: {r}");
    }
    let r = raw_get(edge, "plain.test", "/.well-known/security.txt");
    assert_eq!(status_of(&r), 200, "{r}");
    for (target, location) in [
        ("/docs", "/docs/"),
        ("//docs", "/docs/"),
        ("///docs?a=1", "/docs/?a=1"),
        ("/./docs", "/docs/"),
    ] {
        let r = raw_get(edge, "plain.test", target);
        assert_eq!(status_of(&r), 301, "{target}: {r}");
        assert_eq!(header_of(&r, "location"), Some(location), "{target}: {r}");
    }
    let r = raw_get(edge, "plain.test", "/docs/");
    assert!(r.contains("<h1>docs</h1>"), "{r}");
}

/// Opens a connection to `to` from the local address `from` (any of 127.0.0.0/8 is loopback).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

// Finding 7: one address holding many half-sent request heads cannot keep others out of the
// admin API: its connections over the per-address cap are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_starve_the_admin_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = Workspace::new();
    let (sf, _) = up(&ws, "", "");
    let admin = sf.admin.unwrap();
    let mut held = Vec::new();
    for _ in 0..256 {
        let mut s = connect_from([127, 0, 0, 2], admin).await.unwrap();
        // A head that never ends.
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n").await;
        held.push(s);
    }
    let started = Instant::now();
    let mut s = connect_from([127, 0, 0, 1], admin).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 200"),
        "/healthz from another address: {answer:?} after {:?}",
        started.elapsed()
    );
    // The flooding address got most of its connections closed rather than held.
    let mut closed = 0;
    for s in &mut held {
        let mut buf = [0u8; 512];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 192, "only {closed} of 256 connections closed");
}

fn audit_size(ws: &Workspace) -> u64 {
    std::fs::metadata(ws.data_dir().join("audit.log")).map_or(0, |m| m.len())
}

// Finding 7: unauthenticated requests with huge paths cannot fill the disk through audit.log:
// lines are bounded, and failed-auth lines are rate-limited (what is left out is counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_cannot_fill_the_audit_log() {
    use futures::StreamExt;
    let ws = Workspace::new();
    let (sf, _) = up(&ws, "", "");
    let api = Api::new(&sf);
    let before = audit_size(&ws);
    let long = format!("/api/v1/apps/{}/deploy", "a".repeat(60_000));
    // Eight at a time: a client within the per-address connection cap.
    let statuses: Vec<u16> = futures::stream::iter(0..200)
        .map(|_| async { api.send(api.req("POST", &long, None)).await.status })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let grown = audit_size(&ws) - before;
    assert!(grown < 64 << 10, "audit.log grew by {grown} bytes");
    // An admin's change with a huge path is recorded, shortened.
    let r = api.send(api.req("POST", &long, Some(ADMIN_TOKEN))).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // After a second, the next failed attempt is recorded with a count of those left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = api.send(api.req("DELETE", "/api/v1/apps/x", None)).await;
    assert_eq!(r.status, 401);
    let audit = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| {
            assert!(l.len() <= 2048, "a line of {} bytes", l.len());
            serde_json::from_str(l).unwrap()
        })
        .collect();
    let admin_line = lines
        .iter()
        .find(|l| l["status"] == 400 && l["token"] != "unauthenticated")
        .expect("the admin's request is recorded");
    assert!(
        admin_line["path"]
            .as_str()
            .unwrap()
            .starts_with("/api/v1/apps/aaaa"),
        "{admin_line}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["not_recorded"].as_u64().is_some_and(|n| n > 0)),
        "the dropped lines are counted: {audit}"
    );
    assert_eq!(lines.last().unwrap()["path"], "/api/v1/apps/x");
}

// Finding 7: audit.log is rotated like the spinlet logs (`supervisor.logs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_rotated() {
    let ws = Workspace::new();
    let (sf, _) = up(&ws, "  logs: { max_size: 4K, keep: 2 }\n", "");
    let api = Api::new(&sf);
    for i in 0..60 {
        let r = api
            .send(api.req(
                "DELETE",
                &format!("/api/v1/apps/nope{i}"),
                Some(ADMIN_TOKEN),
            ))
            .await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let data = ws.data_dir();
    assert!(audit_size(&ws) <= 4096 + 2048, "{} bytes", audit_size(&ws));
    assert!(data.join("audit.log.1").is_file());
    assert!(!data.join("audit.log.3").exists());
    let kept = std::fs::read_to_string(data.join("audit.log.1")).unwrap()
        + &std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(kept.contains("/api/v1/apps/nope59"), "{kept}");
}

/// An app whose log gets `before<CR>event: end<CR>data: injected` at start and on `GET /log`.
fn cr_logging_app(ws: &Workspace) -> PathBuf {
    let dir = ws.path().join("crlog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        r#"{"name": "crlog", "version": "1.0.0", "scripts": {"start": "node server.js"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("server.js"),
        r#"const http = require("http");
const evil = () => process.stdout.write("before\revent: end\rdata: injected\n");
evil();
http.createServer((req, res) => {
  if (req.url === "/log") evil();
  res.end("ok\n");
}).listen(Number(process.env.PORT), "127.0.0.1");
"#,
    )
    .unwrap();
    dir
}

// Finding 9: a log line holding a bare CR stays data in the admin API's event stream; it
// cannot end the stream early or inject an event, whether tailed or followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_cannot_inject_sse_events() {
    use futures::StreamExt;
    let ws = Workspace::new();
    let src = cr_logging_app(&ws);
    let apps = format!(
        "  crlog:\n    domains: [crlog.test]\n    source: {}\n",
        src.display()
    );
    let (sf, port) = up(&ws, "", &apps);
    let edge: SocketAddr = ([127, 0, 0, 1], port).into();
    let r = raw_get(edge, "crlog.test", "/");
    assert_eq!(status_of(&r), 200, "{r}");
    let api = Api::new(&sf);
    let log = ws.data_dir().join("logs/crlog.log");
    support::eventually(Duration::from_secs(10), "the app logged its line", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("injected"))
        }
    })
    .await;

    // The tail.
    let tail = api.get("/api/v1/apps/crlog/logs?lines=50").await;
    let events = event_source(&tail.body);
    let ends: Vec<usize> = (0..events.len())
        .filter(|i| events[*i].0 == "end")
        .collect();
    assert_eq!(ends, vec![events.len() - 1], "{events:?}");
    assert!(
        events
            .iter()
            .any(|(kind, data)| kind == "message" && data.contains("event: end")),
        "the line arrives as data: {events:?}"
    );

    // Following: a new line with the same content.
    let resp = api
        .req(
            "GET",
            "/api/v1/apps/crlog/logs?lines=0&follow=1",
            Some(ADMIN_TOKEN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = raw_get(edge, "crlog.test", "/log");
    assert_eq!(status_of(&r), 200, "{r}");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !event_source(&seen)
        .iter()
        .any(|(_, data)| data.contains("injected"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the followed line did not arrive ({other:?}): {seen:?}"),
        }
    }
    let events = event_source(&seen);
    assert!(
        events.iter().all(|(kind, _)| kind == "message"),
        "{events:?}"
    );
}
