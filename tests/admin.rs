//! The admin API and the CLI against a real `spinforge up`: the token on every endpoint, reads,
//! bad input refused with nothing changed, hostile uploads refused with nothing written, the
//! audit log, log streams, and the CLI's tables and exit codes.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::spinforge::{
    ADMIN_TOKEN, Spinforge, Workspace, binary, echo_app, fixture, port_block,
};
use support::{eventually, free_port};

/// The app's env value that must never come out of the API.
const SECRET: &str = "hunter2-do-not-show";

fn config(ws: &Workspace, edge_port: u16, supervisor_extra: &str, apps: &str) -> PathBuf {
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{edge_port}\n  grace: 3s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n{supervisor_extra}apps:\n{apps}",
        port_block()
    );
    ws.write("spinforge.yaml", &yaml)
}

/// `up` with an echo app `echo` (holding a secret env value) and an external app `ext`.
fn up(ws: &Workspace, supervisor_extra: &str) -> Spinforge {
    let port = free_port();
    let apps = echo_app(ws, "echo", "echo.test", "")
        .replace("env: {", &format!("env: {{ API_SECRET: {SECRET},"))
        + "  ext:\n    domains: [ext.test]\n    upstream: 127.0.0.1:1\n";
    let path = config(ws, port, supervisor_extra, &apps);
    Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()))
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
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
    async fn send(&self, r: reqwest::RequestBuilder) -> support::spinforge::Reply {
        support::spinforge::Reply::read(r.send().await.expect("admin API answers")).await
    }
    async fn get(&self, path: &str) -> support::spinforge::Reply {
        self.send(self.req("GET", path, Some(ADMIN_TOKEN))).await
    }
}

fn api(sf: &Spinforge) -> Api {
    Api::new(sf.admin.expect("up has an admin API"))
}

fn assert_problem(r: &support::spinforge::Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let detail = r.json()["detail"].as_str().unwrap_or("").to_string();
    assert!(
        detail.contains(needle),
        "detail `{detail}` does not mention `{needle}`"
    );
}

/// Every endpoint design.md lists, with a body where it takes one.
const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/api/v1/apps"),
    ("GET", "/api/v1/apps/echo"),
    ("PUT", "/api/v1/apps/newapp"),
    ("DELETE", "/api/v1/apps/echo"),
    ("POST", "/api/v1/apps/echo/deploy"),
    ("GET", "/api/v1/builds/echo-1-abc"),
    ("GET", "/api/v1/builds/echo-1-abc/log"),
    ("GET", "/api/v1/apps/echo/logs"),
    ("GET", "/api/v1/apps/echo/releases"),
    ("POST", "/api/v1/apps/echo/rollback"),
    ("POST", "/api/v1/apps/echo/restart"),
    ("POST", "/api/v1/apps/echo/stop"),
    ("POST", "/api/v1/apps/echo/start"),
    ("GET", "/api/v1/routes"),
    ("GET", "/api/v1/spinlets"),
    ("GET", "/api/v1/certs"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_the_token_and_answers_with_it() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let api = api(&sf);
    for (method, path) in ENDPOINTS {
        for token in [None, Some("wrong-token"), Some("")] {
            let r = api.send(api.req(method, path, token)).await;
            assert_problem(&r, 401, "");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer"))
            );
        }
        // With the token: no 401, no 5xx (what each answers is checked below and in the fuzzer).
        let r = api.send(api.req(method, path, Some(ADMIN_TOKEN))).await;
        assert!(
            r.status != 401 && r.status < 500,
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
    }
    // Public: health, metrics, the OpenAPI document.
    for path in ["/healthz", "/metrics", "/api/v1/openapi.json"] {
        let r = api.send(api.req("GET", path, None)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // The OpenAPI document names every endpoint.
    let doc = api
        .send(api.req("GET", "/api/v1/openapi.json", None))
        .await
        .json();
    for (method, path) in ENDPOINTS {
        let templ = path
            .replace("/echo-1-abc", "/{id}")
            .replace("/apps/echo", "/apps/{app}")
            .replace("/apps/newapp", "/apps/{app}");
        assert!(
            doc["paths"][&templ][method.to_lowercase()].is_object(),
            "openapi.json lacks {method} {templ}"
        );
    }
    // Unknown endpoints and wrong methods.
    assert_problem(&api.get("/api/v1/nope").await, 404, "no endpoint");
    let r = api
        .send(api.req("PATCH", "/api/v1/apps/echo", Some(ADMIN_TOKEN)))
        .await;
    assert_problem(&r, 405, "does not take PATCH");
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    // Counted.
    let metrics = api.send(api.req("GET", "/metrics", None)).await.body;
    assert!(
        metrics.contains("spinforge_admin_requests_total{route=\"apps\",status=\"401\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_show_apps_routes_and_state_but_never_secrets() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let api = api(&sf);

    let apps = api.get("/api/v1/apps").await;
    assert_eq!(apps.status, 200, "{}", apps.body);
    assert!(
        !apps.body.contains(SECRET),
        "env value leaked: {}",
        apps.body
    );
    let list = apps.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "ext"]);
    let echo = api.get("/api/v1/apps/echo").await.json();
    assert_eq!(echo["origin"], "config");
    assert_eq!(echo["domains"][0], "echo.test");
    let env: Vec<&str> = echo["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"API_SECRET"), "{env:?}");
    assert_eq!(api.get("/api/v1/apps/ext").await.json()["external"], true);

    assert_problem(&api.get("/api/v1/apps/nope").await, 404, "no app `nope`");
    assert_problem(
        &api.get("/api/v1/apps/Bad_Name").await,
        400,
        "not a valid app name",
    );
    assert_problem(&api.get("/api/v1/builds/nope-1-x").await, 404, "no build");
    assert_problem(
        &api.get("/api/v1/builds/a%2Fb").await,
        400,
        "not a build id",
    );

    let routes = api.get("/api/v1/routes").await.json();
    let domains: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["echo.test", "ext.test"]);
    assert_eq!(api.get("/api/v1/certs").await.json(), serde_json::json!([]));

    // Waking the app through the edge makes a spinlet and a release show.
    let r = sf.client().fetch("echo.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let spinlets = api.get("/api/v1/spinlets").await.json();
    let s = &spinlets.as_array().unwrap()[0];
    assert_eq!(s["app"], "echo");
    assert_eq!(s["state"], "running");
    let releases = api.get("/api/v1/apps/echo/releases").await.json();
    assert_eq!(releases[0]["release"], 1, "{releases}");
    assert_eq!(releases[0]["current"], true);
    assert_eq!(
        api.get("/api/v1/apps/echo").await.json()["current_release"],
        1
    );

    // The build that made it: its status, and its log as events, ending with the final state
    // (with follow=1 too, since it has finished).
    let build = releases[0]["build_id"]
        .as_str()
        .expect("release.json names its build")
        .to_string();
    let b = api.get(&format!("/api/v1/builds/{build}")).await.json();
    assert_eq!(
        (b["app"].as_str(), b["state"].as_str()),
        (Some("echo"), Some("succeeded")),
        "{b}"
    );
    for query in ["", "?follow=1"] {
        let log = api.get(&format!("/api/v1/builds/{build}/log{query}")).await;
        assert_eq!(log.status, 200, "{}", log.body);
        assert_eq!(log.header("content-type"), Some("text/event-stream"));
        assert!(log.body.starts_with("id: "), "{}", log.body);
        assert!(log.body.matches("\ndata: ").count() >= 2, "{}", log.body);
        let end = log.body.rsplit("event: end\ndata: ").next().unwrap();
        let end: serde_json::Value = serde_json::from_str(end.trim()).unwrap();
        assert_eq!(end["state"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_logs_tail_and_follow_as_server_sent_events() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let api = api(&sf);
    let logs = ws.data_dir().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("ext.log");
    std::fs::write(
        &path,
        (1..=5).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();

    let r = api.get("/api/v1/apps/ext/logs?lines=2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        r.body,
        "data: line 4\n\ndata: line 5\n\nevent: end\ndata: {}\n\n"
    );
    assert_problem(
        &api.get("/api/v1/apps/ext/logs?lines=-1").await,
        400,
        "lines=-1",
    );

    // Follow: new lines arrive; a truncated file is read again from its start.
    let mut resp = api
        .req(
            "GET",
            "/api/v1/apps/ext/logs?lines=1&follow=1",
            Some(ADMIN_TOKEN),
        )
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    let mut wait_for = async |needle: &str, seen: &mut String| {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !seen.contains(needle) {
                let chunk = resp.chunk().await.unwrap().expect("stream stays open");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("`{needle}` never came; got {seen:?}"));
    };
    wait_for("data: line 5\n", &mut seen).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "line 6").unwrap();
    wait_for("data: line 6\n", &mut seen).await;
    std::fs::write(&path, "after truncation\n").unwrap();
    wait_for("data: after truncation\n", &mut seen).await;
    assert!(!seen.contains("line 4"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_problem_and_audited() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let api = api(&sf);
    let put = |app: &str, ctype: &str, body: &str| {
        api.req("PUT", &format!("/api/v1/apps/{app}"), Some(ADMIN_TOKEN))
            .header("content-type", ctype)
            .body(body.to_string())
    };
    assert_problem(
        &api.send(put("Bad_Name", "application/json", "{}")).await,
        400,
        "not a valid app name",
    );
    assert_problem(
        &api.send(put("new", "text/plain", "{}")).await,
        415,
        "application/json",
    );
    assert_problem(
        &api.send(put("new", "application/json", "{nope")).await,
        400,
        "not JSON",
    );
    assert_problem(
        &api.send(put("new", "application/json", "[]")).await,
        400,
        "JSON object",
    );
    let r = api
        .send(put(
            "new",
            "application/json",
            r#"{"domains": ["new.test"], "colour": "red"}"#,
        ))
        .await;
    assert_problem(&r, 422, "colour");
    assert_eq!(r.json()["errors"][0]["key"], "colour", "{}", r.body);
    let r = api
        .send(put(
            "new",
            "application/json",
            r#"{"domains": ["not a domain!"]}"#,
        ))
        .await;
    assert_problem(&r, 422, "domains");
    let r = api
        .send(put(
            "new",
            "application/json",
            r#"{"domains": ["echo.test"]}"#,
        ))
        .await;
    assert_problem(&r, 409, "domain echo.test is already taken by app `echo`");
    let big = format!(r#"{{"domains": ["{}"]}}"#, "a".repeat(70_000));
    assert_problem(
        &api.send(put("new", "application/json", &big)).await,
        413,
        "larger",
    );
    // Nothing changed.
    assert_problem(&api.get("/api/v1/apps/new").await, 404, "no app");

    // Deploy: unknown app, wrong content types, bad JSON sources.
    let deploy = |app: &str, ctype: &str, body: &str| {
        api.req(
            "POST",
            &format!("/api/v1/apps/{app}/deploy"),
            Some(ADMIN_TOKEN),
        )
        .header("content-type", ctype)
        .body(body.to_string())
    };
    assert_problem(
        &api.send(deploy("nope", "application/gzip", "x")).await,
        404,
        "no app",
    );
    assert_problem(
        &api.send(deploy("echo", "text/plain", "x")).await,
        415,
        "application/gzip",
    );
    let r = api
        .send(deploy("echo", "application/json", r#"{"source": "/etc"}"#))
        .await;
    assert_problem(&r, 422, "must be a git URL");
    let r = api
        .send(deploy(
            "echo",
            "application/json",
            r#"{"source": "https://x/r.git", "x": 1}"#,
        ))
        .await;
    assert_problem(&r, 400, "unknown field");
    let r = api
        .send(
            api.req("POST", "/api/v1/apps/echo/rollback", Some(ADMIN_TOKEN))
                .header("content-type", "application/json")
                .body(r#"{"release": -1}"#),
        )
        .await;
    assert_problem(&r, 400, "not what this endpoint takes");

    // Each change attempt is in the audit log, with the token's id and never the token.
    let audit = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap();
    assert!(!audit.contains(ADMIN_TOKEN));
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let conflict = lines
        .iter()
        .find(|l| l["status"] == 409 && l["method"] == "PUT")
        .expect("the refused PUT is audited");
    assert_eq!(conflict["app"], "new");
    assert_eq!(conflict["path"], "/api/v1/apps/new");
    assert_eq!(conflict["token"], spinforge_token_id(ADMIN_TOKEN));
    assert!(
        conflict["result"]
            .as_str()
            .unwrap()
            .contains("already taken")
    );
    assert!(conflict["time"].is_string());
    // An unauthenticated attempt is audited too, as such.
    api.send(api.req("DELETE", "/api/v1/apps/echo", None)).await;
    let audit = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap();
    let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["token"].as_str(), last["status"].as_u64()),
        (Some("unauthenticated"), Some(401))
    );
}

/// The audit log's token id, computed as the admin crate does.
fn spinforge_token_id(token: &str) -> String {
    spinforge_admin::token_id(token)
}

/// A `.tar.gz` of `entries` built by hand: (path, kind, data or link target).
fn tarball(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        // set_path refuses `..` and absolute paths: write the name bytes directly.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
            h.set_size(0);
            h.set_cksum();
            builder.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            builder.append(&h, *data).unwrap();
        }
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn uploads_left(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("uploads"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_are_refused_and_leave_nothing_behind() {
    use tar::EntryType as T;
    let ws = Workspace::new();
    // A small cap, so that "too large" is quick to reach.
    let sf = up(&ws, "  builds:\n    max_archive_size: 1M\n");
    let api = api(&sf);
    let ok_pkg: &[u8] = b"{\"name\":\"x\"}";
    let bomb = gzip(&{
        // Small compressed, 2 MiB unpacked: over the cap once unpacked.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("big.bin").unwrap();
        h.set_size(2 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, std::io::repeat(0).take_bytes(2 << 20))
            .unwrap();
        b.into_inner().unwrap()
    });
    let noise: Vec<u8> = (0..(1u32 << 20) + 4096)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not gzip", b"just some text".to_vec(), 400, "gzip"),
        ("gzip, not tar", gzip(&[7u8; 3000]), 400, ""),
        (
            "dot-dot",
            tarball(&[
                ("package.json", T::Regular, ok_pkg),
                ("../escape.txt", T::Regular, b"x"),
            ]),
            400,
            "outside the archive's root",
        ),
        (
            "absolute",
            tarball(&[("/tmp/abs.txt", T::Regular, b"x")]),
            400,
            "outside the archive's root",
        ),
        (
            "symlink out",
            tarball(&[
                ("package.json", T::Regular, ok_pkg),
                ("link", T::Symlink, b"../../etc/passwd"),
            ]),
            400,
            "points outside",
        ),
        (
            "absolute symlink",
            tarball(&[("link", T::Symlink, b"/etc/passwd")]),
            400,
            "points outside",
        ),
        (
            "hard link out",
            tarball(&[("hl", T::Link, b"../x")]),
            400,
            "points outside",
        ),
        ("device", tarball(&[("dev", T::Char, b"")]), 400, "device"),
        ("fifo", tarball(&[("pipe", T::Fifo, b"")]), 400, "FIFO"),
        ("bomb", bomb, 413, "unpacks to more than"),
        ("too large", noise, 413, "larger than"),
        ("empty", Vec::new(), 400, "empty"),
    ];
    for (what, body, status, needle) in cases {
        for chunked in [false, true] {
            let req = api
                .req("POST", "/api/v1/apps/echo/deploy", Some(ADMIN_TOKEN))
                .header("content-type", "application/gzip");
            let req = if chunked {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    body.chunks(16 << 10).map(|c| Ok(c.to_vec())).collect();
                req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            } else {
                req.body(body.clone())
            };
            let r = api.send(req).await;
            assert_eq!(r.status, status, "{what} (chunked: {chunked}): {}", r.body);
            assert_problem(&r, status, needle);
            assert_eq!(
                uploads_left(&ws.data_dir()),
                Vec::<String>::new(),
                "{what} left files"
            );
        }
    }
    assert!(!Path::new("/tmp/abs.txt").exists());
    assert!(!ws.path().join("escape.txt").exists() && !ws.data_dir().join("escape.txt").exists());
    let audit = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("/deploy")).count(), 24);
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

/// Runs the CLI against `admin` with `token`; returns (exit code, stdout, stderr).
fn cli(admin: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    cli_env(admin, token, args, &[])
}

/// [`cli`] with more environment variables.
fn cli_env(admin: &str, token: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("SPINFORGE_ADMIN_URL", admin)
        .env("SPINFORGE_TOKEN", token)
        .envs(env.iter().copied())
        .output()
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_tables_json_and_says_what_happened_in_its_exit_code() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let admin = format!("http://{}", sf.admin.unwrap());
    let r = sf.client().fetch("echo.test", "/").await;
    assert_eq!(r.status, 200);

    let (code, out, err) = cli(&admin, ADMIN_TOKEN, &["apps"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME  ORIGIN  RELEASE  DOMAINS"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("echo  config  1        echo.test"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("ext   config  -        ext.test"),
        "{out}"
    );

    let (code, out, err) = cli(&admin, ADMIN_TOKEN, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SPINLETS\nAPP   ID"), "{out}");
    assert!(
        out.contains("CERTIFICATES\nDOMAIN  EXPIRES  NOT_AFTER"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("echo  ") && l.contains("running")),
        "{out}"
    );

    let (code, out, _) = cli(&admin, ADMIN_TOKEN, &["status", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["apps"][0]["name"], "echo");
    assert_eq!(v["spinlets"][0]["app"], "echo");

    // Logs: what the spinlet wrote (the echo fixture logs its start).
    let log = std::fs::read_to_string(ws.data_dir().join("logs/echo.log")).unwrap_or_default();
    let (code, out, err) = cli(&admin, ADMIN_TOKEN, &["logs", "echo", "-n", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, log, "the CLI prints the log file's lines");
    // A line with terminal escapes (retitle, clear screen) is shown, not obeyed; `--raw` prints
    // it as written. (A carriage return ends a line in the API's event stream, as in any
    // EventSource: it cannot hide what came before it.)
    let r = sf
        .client()
        .fetch(
            "echo.test",
            "/say?line=%1B%5D0%3Bpwned%07%1B%5B2Jhidden%0Dcanary",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let shown = "\\x1b]0;pwned\\x07\\x1b[2Jhidden\ncanary";
    let out = support::eventually(Duration::from_secs(10), "the line in the log", || async {
        let (code, out, _) = cli(&admin, ADMIN_TOKEN, &["logs", "echo"]);
        (code == 0 && out.contains("canary")).then_some(out)
    })
    .await;
    assert!(out.contains(shown), "{out:?}");
    assert!(!out.contains(['\x1b', '\x07', '\r']), "{out:?}");
    let (code, raw, err) = cli(&admin, ADMIN_TOKEN, &["logs", "echo", "--raw"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        raw.contains("\x1b]0;pwned\x07\x1b[2Jhidden\ncanary"),
        "{raw:?}"
    );

    // Exit codes: 3 for a wrong token or nothing listening, 2 for usage, 1 for a refused operation.
    let (code, _, err) = cli(&admin, "wrong", &["apps"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("401") && err.contains("SPINFORGE_TOKEN"),
        "{err}"
    );
    let (code, _, err) = cli(
        &format!("http://127.0.0.1:{}", free_port()),
        ADMIN_TOKEN,
        &["apps"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");
    let (code, _, err) = cli(
        &admin,
        ADMIN_TOKEN,
        &["deploy", "/no/such/folder", "--app", "x"],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(&admin, ADMIN_TOKEN, &["apps", "--bogus"]);
    assert_eq!(code, 2);
    let (code, _, err) = cli(&admin, ADMIN_TOKEN, &["logs", "nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no app `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bind_failures_are_clear() {
    let ws = Workspace::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let port = free_port();
    let path = config(
        &ws,
        port,
        &format!("  admin_listen: {addr}\n"),
        &echo_app(&ws, "a", "a.test", ""),
    );
    let mut sf = Spinforge::start(&ws, "up", &path, None);
    let (status, _) = sf.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = sf.log_text();
    assert!(
        log.contains(&format!(
            "cannot listen on {addr} (supervisor.admin_listen)"
        )),
        "{log}"
    );

    // No token and not loopback: refused.
    let path = config(
        &ws,
        port,
        "  admin_listen: 0.0.0.0:0\n",
        &echo_app(&ws, "a", "a.test", ""),
    );
    let mut sf = Spinforge::start_env(&ws, "up", &path, None, &[("SPINFORGE_TOKEN", "")]);
    let (status, _) = sf.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        sf.log_text().contains("not loopback, without a token"),
        "{}",
        sf.log_text()
    );
}

// --- With the lifecycle backend (the lead's work on main): create, deploy, roll back, delete. ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploys_a_folder_serves_it_through_the_edge_and_rolls_back() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let admin = format!("http://{}", sf.admin.unwrap());
    // Version 1: the echo fixture, plus files the packer must leave out.
    let src = ws.path().join("site");
    std::fs::create_dir_all(src.join("node_modules/junk")).unwrap();
    for f in ["package.json", "server.js"] {
        std::fs::copy(fixture("echo").join(f), src.join(f)).unwrap();
    }
    std::fs::write(src.join(".gitignore"), "*.secret\n").unwrap();
    std::fs::write(src.join("key.secret"), "nope").unwrap();
    let (code, out, err) = cli(
        &admin,
        ADMIN_TOKEN,
        &[
            "deploy",
            src.to_str().unwrap(),
            "--app",
            "site",
            "--domain",
            "site.test",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("creating app site"), "{err}");
    assert!(out.trim_end().ends_with("https://site.test/"), "{out}");
    let r = sf.client().fetch("site.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let release1 = eventually(support::EVENTUALLY, "release 1 serves", || async {
        let v = Api::new(sf.admin.unwrap())
            .get("/api/v1/apps/site")
            .await
            .json();
        v["current_release"].as_u64()
    })
    .await;

    // Version 2, then roll back to 1.
    std::fs::write(src.join("VERSION"), "2").unwrap();
    let (code, out, err) = cli(
        &admin,
        ADMIN_TOKEN,
        &["deploy", src.to_str().unwrap(), "--app", "site"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = cli(
        &admin,
        ADMIN_TOKEN,
        &["rollback", "site", &release1.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("site: now serving release {release1}\n"));
    // `releases` lists both, newest first: the first serves again, pinned by the rollback.
    let (code, out, err) = cli(&admin, ADMIN_TOKEN, &["releases", "site"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| {
            l.split("  ")
                .filter(|c| !c.is_empty())
                .map(str::trim)
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_ne!(rows[0][0], release1.to_string(), "newest first:\n{out}");
    assert_eq!(rows[0][1], "-", "{out}");
    assert_eq!(
        rows[1][..2],
        [release1.to_string().as_str(), "serving, pinned"],
        "{out}"
    );
    assert!(rows.iter().all(|r| r[2].ends_with(" ago")), "{out}");
    let (code, out, err) = cli(&admin, ADMIN_TOKEN, &["releases", "site", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed[1]["release"], release1, "{out}");
    assert_eq!(listed[1]["current"], true, "{out}");
    let (code, _, err) = cli(&admin, ADMIN_TOKEN, &["releases", "nope"]);
    assert_eq!(code, 1, "no such app: {err}");
    let api = Api::new(sf.admin.unwrap());
    assert_eq!(
        api.get("/api/v1/apps/site").await.json()["current_release"],
        release1
    );
    assert_eq!(sf.client().fetch("site.test", "/").await.status, 200);

    // Lifecycle, then delete.
    for action in ["stop", "start", "restart"] {
        let (code, _, err) = cli(&admin, ADMIN_TOKEN, &[action, "site"]);
        assert_eq!(code, 0, "{action}: {err}");
    }
    let r = api
        .send(api.req("DELETE", "/api/v1/apps/site", Some(ADMIN_TOKEN)))
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(api.get("/api/v1/apps/site").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_apps_persist_and_build_logs_stream() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let api = api(&sf);
    let r = api
        .send(
            api.req("PUT", "/api/v1/apps/made", Some(ADMIN_TOKEN))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"domains": ["made.test"], "source": "{}"}}"#,
                    fixture("echo").display()
                )),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = api
        .send(
            api.req("POST", "/api/v1/apps/made/deploy", Some(ADMIN_TOKEN))
                .header("content-type", "application/gzip")
                .body(tarball(&[
                    (
                        "package.json",
                        tar::EntryType::Regular,
                        std::fs::read(fixture("echo/package.json")).unwrap().leak(),
                    ),
                    (
                        "server.js",
                        tar::EntryType::Regular,
                        std::fs::read(fixture("echo/server.js")).unwrap().leak(),
                    ),
                ])),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let build = r.json()["build"].as_str().unwrap().to_string();
    let log = api
        .get(&format!("/api/v1/builds/{build}/log?follow=1"))
        .await;
    assert!(log.body.contains("event: end"), "{}", log.body);
    assert!(log.body.contains("\"state\":\"succeeded\""), "{}", log.body);
    let status = api.get(&format!("/api/v1/builds/{build}")).await.json();
    assert_eq!(status["state"], "succeeded");
    // Each step the builder went through, in order, with how long it took (no build script).
    let steps: Vec<&str> = status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            assert!(s["ms"].is_u64(), "{s}");
            s["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(steps, ["source", "install", "prune", "release"], "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_packs_the_folder_and_uploads_it() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let admin = format!("http://{}", sf.admin.unwrap());
    let src = ws.path().join("site");
    std::fs::create_dir_all(src.join("node_modules/junk")).unwrap();
    std::fs::create_dir_all(src.join(".git")).unwrap();
    for f in ["package.json", "server.js"] {
        std::fs::copy(fixture("echo").join(f), src.join(f)).unwrap();
    }
    std::fs::write(src.join("node_modules/junk/index.js"), "x").unwrap();
    std::fs::write(src.join(".git/HEAD"), "x").unwrap();
    std::fs::write(src.join(".gitignore"), "*.secret\n").unwrap();
    std::fs::write(src.join("key.secret"), "nope").unwrap();
    let (code, out, err) = cli(
        &admin,
        ADMIN_TOKEN,
        &["deploy", src.to_str().unwrap(), "--app", "echo"],
    );
    // package.json, server.js and .gitignore: not node_modules, .git or the ignored file.
    assert!(err.contains("packed 3 files"), "{err}");
    if code == 0 {
        // With the lifecycle backend: built, and the URL last.
        assert!(out.trim_end().ends_with("https://echo.test/"), "{out}");
    } else {
        // Until then the supervisor refuses deploys: the upload passed the checks, was handed
        // over, and was removed when refused.
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(
            err.contains("409") && err.contains("not supported"),
            "{err}"
        );
        assert_eq!(uploads_left(&ws.data_dir()), Vec::<String>::new());
        let audit = std::fs::read_to_string(ws.data_dir().join("audit.log")).unwrap();
        assert!(
            audit.contains("\"path\":\"/api/v1/apps/echo/deploy\""),
            "{audit}"
        );
    }
}

/// Issue 15: the id a deploy answers names a build that already exists, even while the app is
/// rolling out (here: a restart whose spinlets take 3 s to listen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_id_is_known_as_soon_as_the_deploy_answers() {
    let ws = Workspace::new();
    let sf = up(&ws, "");
    let api = api(&sf);
    let r = api
        .send(
            api.req("PUT", "/api/v1/apps/slowboot", Some(ADMIN_TOKEN))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"domains": ["slowboot.test"], "source": "{}", "idle_timeout": 0, "env": {{"BOOT_DELAY_MS": "3000"}}, "health_check": {{"timeout": "20s"}}}}"#,
                    fixture("echo").display()
                )),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    eventually(Duration::from_secs(30), "slowboot runs", || async {
        let list = api.get("/api/v1/spinlets").await.json();
        list.as_array()?
            .iter()
            .any(|s| s["app"] == "slowboot" && s["state"] == "running")
            .then_some(())
    })
    .await;
    // A restart keeps the app's task busy until the new spinlet listens.
    let restart = {
        let api = Api::new(sf.admin.unwrap());
        tokio::spawn(async move {
            api.send(api.req("POST", "/api/v1/apps/slowboot/restart", Some(ADMIN_TOKEN)))
                .await
        })
    };
    eventually(Duration::from_secs(10), "a spinlet is starting", || async {
        let list = api.get("/api/v1/spinlets").await.json();
        list.as_array()?
            .iter()
            .any(|s| s["app"] == "slowboot" && s["state"] == "starting")
            .then_some(())
    })
    .await;
    let echo = |f: &str| std::fs::read(fixture("echo").join(f)).unwrap().leak();
    let body = tarball(&[
        (
            "package.json",
            tar::EntryType::Regular,
            echo("package.json"),
        ),
        ("server.js", tar::EntryType::Regular, echo("server.js")),
    ]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = api
            .send(
                api.req("POST", "/api/v1/apps/slowboot/deploy", Some(ADMIN_TOKEN))
                    .header("content-type", "application/gzip")
                    .body(body.clone()),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let build = r.json()["build"].as_str().unwrap().to_string();
        let status = api.get(&format!("/api/v1/builds/{build}")).await;
        assert_eq!(status.status, 200, "{}", status.body);
        let log = api.get(&format!("/api/v1/builds/{build}/log")).await;
        assert_eq!(log.status, 200, "{}", log.body);
        ids.push(build);
    }
    let r = restart.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Each ends: the last builds (the same files: its release is reused); the others were
    // replaced by a newer deploy (cancelled), their upload by a newer one (failed), or built
    // before the next deploy came (succeeded: the app's task never waits behind a rollout).
    for (i, id) in ids.iter().enumerate() {
        let end = api.get(&format!("/api/v1/builds/{id}/log?follow=1")).await;
        let state = end
            .body
            .split("event: end\ndata: ")
            .nth(1)
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .and_then(|v| v["state"].as_str().map(str::to_string))
            .unwrap_or_default();
        let want: &[&str] = if i + 1 == ids.len() {
            &["succeeded"]
        } else {
            &["cancelled", "failed", "succeeded"]
        };
        assert!(want.contains(&state.as_str()), "{id}: {}", end.body);
    }
}

/// Without a token the API answers loopback clients — but not a web page the user has open,
/// which can make the browser POST to 127.0.0.1 (no CORS preflight for a form) or, through DNS
/// rebinding, read the answers. Canary: the app those requests try to stop keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_requests_from_web_pages_are_refused() {
    let ws = Workspace::new();
    let port = free_port();
    let path = config(&ws, port, "", &echo_app(&ws, "echo", "echo.test", ""));
    let sf = Spinforge::up_without_token(&ws, &path, ([127, 0, 0, 1], port).into());
    let edge = support::spinforge::Http::new(sf.http.expect("edge"));
    let pid = support::eventually(Duration::from_secs(60), "the app serves", || async {
        let r = edge.get("echo.test", "/").send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["pid"].as_u64()
    })
    .await;
    let api = api(&sf);
    let admin = sf.admin.expect("admin");
    let attacks: [(&str, &str); 4] = [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("host", "rebound.evil.example"),
    ];
    for (name, value) in attacks {
        for action in ["stop", "restart"] {
            let r = api
                .send(
                    api.req("POST", &format!("/api/v1/apps/echo/{action}"), None)
                        .header(name, value),
                )
                .await;
            assert_problem(&r, 403, "without a token");
        }
        let r = api
            .send(
                api.req("GET", "/api/v1/apps/echo", None)
                    .header(name, value),
            )
            .await;
        assert_problem(&r, 403, "without a token");
    }
    // The CLI's requests (no Origin, no Sec-Fetch-*, a loopback Host) are answered.
    let r = api.send(api.req("GET", "/api/v1/apps/echo", None)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (code, out, err) = cli(&format!("http://{admin}"), "", &["apps"]);
    assert_eq!(code, 0, "{out}{err}");
    // The canary: the same spinlet still serves.
    let r = edge
        .get("echo.test", "/")
        .send()
        .await
        .expect("the app answers");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        v["pid"].as_u64(),
        Some(pid),
        "the app was not stopped or restarted"
    );
}

/// The CLI reaches an admin API published over HTTPS (here by the edge itself: an app for
/// `localhost` whose upstream is the admin port, with a certificate from files) and checks the
/// certificate against the system's roots, which `SSL_CERT_FILE` names as it does for curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reaches_an_admin_api_over_https_and_checks_its_certificate() {
    let ws = Workspace::new();
    make_ca_and_leaf(ws.path(), "localhost");
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{http}\n  listen_https: 127.0.0.1:{https}\n  grace: 2s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n  admin_listen: 127.0.0.1:{admin}\napps:\n  api:\n    domains: [localhost]\n    upstream: 127.0.0.1:{admin}\n    tls: {{ cert: cert.pem, key: key.pem }}\n",
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let _sf = Spinforge::start(&ws, "up", &path, Some(([127, 0, 0, 1], http).into()));
    let url = format!("https://localhost:{https}");
    let apps = |roots: &Path| {
        let roots = roots.to_str().expect("a UTF-8 path");
        cli_env(&url, ADMIN_TOKEN, &["apps"], &[("SSL_CERT_FILE", roots)])
    };
    // Trusted: the listing comes through the edge.
    let (code, out, err) = apps(&ws.path().join("ca.pem"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("api ")),
        "the listing names the app: {out}"
    );
    // Not trusted (the system's usual roots do not include it): refused, and said why.
    let (code, _, err) = apps(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    assert_ne!(code, 0, "an untrusted certificate must not be accepted");
    assert!(
        err.contains("certificate"),
        "the error names the certificate: {err}"
    );
}

/// A CA (`ca.pem`) and a certificate for `name` it signed (`cert.pem`, `key.pem`) in `dir`.
fn make_ca_and_leaf(dir: &Path, name: &str) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let run = |line: String| openssl(&line.split_whitespace().collect::<Vec<_>>());
    run(format!(
        "req -x509 {ec} -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem"
    ));
    run(format!(
        "req {ec} -subj /CN={name} -keyout key.pem -out leaf.csr"
    ));
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"),
    )
    .expect("write leaf.ext");
    run(
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out cert.pem"
            .to_string(),
    );
}

/// Without a token the admin API trusts loopback clients, and an edge on the same machine is
/// one: a request the edge forwards to it (here, for an app on `localhost` whose upstream is the
/// admin port, with a client's `Host: localhost`) is refused, reads and changes alike, and the
/// canary app the request tried to stop keeps serving. Direct loopback clients are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_admin_api_refuses_what_a_proxy_forwards() {
    let ws = Workspace::new();
    let (http, admin) = (free_port(), free_port());
    let apps = echo_app(&ws, "echo", "echo.test", "")
        + &format!(
            "  api:\n    domains: [localhost]\n    upstream: 127.0.0.1:{admin}\n    tls: off\n"
        );
    let path = config(
        &ws,
        http,
        &format!("  admin_listen: 127.0.0.1:{admin}\n"),
        &apps,
    );
    let sf = Spinforge::up_without_token(&ws, &path, ([127, 0, 0, 1], http).into());
    let edge = sf.client();
    assert_eq!(edge.fetch("echo.test", "/").await.status, 200);
    let read = edge.fetch("localhost", "/api/v1/apps").await;
    assert_eq!(read.status, 403, "a forwarded read: {}", read.body);
    let stop = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/api/v1/apps/echo/stop"))
        .header("host", "localhost")
        .send()
        .await
        .expect("the edge answers");
    assert_eq!(stop.status().as_u16(), 403, "a forwarded change");
    // The canary: still running, still serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(edge.fetch("echo.test", "/").await.status, 200);
    let direct = Api::new(([127, 0, 0, 1], admin).into());
    let apps = direct
        .send(direct.req("GET", "/api/v1/apps/echo", None))
        .await;
    assert_eq!(apps.status, 200, "a direct loopback client: {}", apps.body);
    assert!(
        !apps.body.contains("\"stopped\""),
        "the app was not stopped: {}",
        apps.body
    );
}
