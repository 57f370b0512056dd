//! The builder end to end: real fixtures in tests/fixtures/build, real installs from the npm
//! registry (npm, pnpm and yarn through corepack), real framework builds, served through the edge
//! of the real `spinforge` binary. Timings are printed (run with `--nocapture`) and recorded in
//! loadtest/RESULTS.md.
//!
//! The heavy fixtures (Next.js, Remix) have one test each; the light ones share one spinforge.

// Timings are reported on stdout on purpose.
#![allow(clippy::print_stdout)]

mod support;

use serde_json::Value;
use spinforge_state::records::BuildState;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::spinforge::{Http, Spinforge, Workspace, fixture, port_block};
use support::{RedisServer, eventually, free_port};

/// A cold Next.js build on a busy 2-core machine takes minutes.
const BUILD_WAIT: Duration = Duration::from_secs(900);

/// The registry this machine reaches serves package metadata without corepack's signatures; the
/// default (checking them) stays on everywhere else.
const ENV: &[(&str, &str)] = &[("COREPACK_INTEGRITY_KEYS", "0")];

fn build_fixture(name: &str) -> PathBuf {
    fixture("build").join(name)
}

/// An app block.
fn app(name: &str, source: &Path, extra: &str) -> String {
    format!(
        "  {name}:\n    domains: [{name}.test]\n    source: {}\n{extra}",
        source.display()
    )
}

fn config(ws: &Workspace, port: u16, supervisor_extra: &str, state: &str, apps: &str) -> PathBuf {
    let yaml = format!(
        "{state}edge:\n  listen_http: 127.0.0.1:{port}\n  grace: 4s\n  wake_timeout: 60s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n{supervisor_extra}apps:\n{apps}",
        port_block()
    );
    ws.write("spinforge.yaml", &yaml)
}

fn up(ws: &Workspace, port: u16, path: &Path) -> Spinforge {
    Spinforge::start_env(ws, "up", path, Some(([127, 0, 0, 1], port).into()), ENV)
}

/// An app in `ws/src` whose build runs `build_js` (`node build.js`) and whose start runs
/// `server_js` (`node server.js`).
fn scripted_app(ws: &Workspace, build_js: &str, server_js: &str) -> PathBuf {
    let src = ws.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(
        src.join("package.json"),
        r#"{"name":"scripted","private":true,"scripts":{"build":"node build.js","start":"node server.js"}}"#,
    )
    .expect("write");
    std::fs::write(src.join("build.js"), build_js).expect("write");
    std::fs::write(src.join("server.js"), server_js).expect("write");
    src
}

fn release_dir(ws: &Workspace, app: &str, n: u64) -> PathBuf {
    ws.data_dir()
        .join("apps")
        .join(app)
        .join("releases")
        .join(n.to_string())
}

/// Waits until release `n` of `app` exists and returns its release.json; fails early with the
/// build log if the build failed.
fn wait_release(ws: &Workspace, sf: &Spinforge, app: &str, n: u64) -> Value {
    let path = release_dir(ws, app, n).join("release.json");
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return serde_json::from_str(&text).expect("release.json is JSON");
        }
        let log = sf.log_text();
        let failed = log
            .lines()
            .any(|l| l.contains("build failed") && l.contains(&format!("app={app} ")));
        assert!(
            !failed,
            "the build of {app} failed:\n{}",
            build_logs(ws, app)
        );
        assert!(
            started.elapsed() < BUILD_WAIT,
            "release {n} of {app} not built after {BUILD_WAIT:?}:\n{}",
            build_logs(ws, app)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every build log of `app`.
fn build_logs(ws: &Workspace, app: &str) -> String {
    let mut out = String::new();
    if let Ok(dir) = std::fs::read_dir(ws.data_dir().join("logs/builds")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{app}-")) {
                out += &format!(
                    "--- {name}\n{}\n",
                    std::fs::read_to_string(e.path()).unwrap_or_default()
                );
            }
        }
    }
    out
}

/// The first request to a stopped app (it starts on the way): status, body and how long it took.
async fn cold_get(http: &Http, host: &str, path: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let r = http.fetch(host, path).await;
    (r.status, r.body, t.elapsed())
}

/// Runs a release's start command by hand (as the supervisor would, on a free port) and
/// returns how long until it answered HTTP.
fn start_by_hand(dir: &Path, start: &[Value]) -> Duration {
    let argv: Vec<String> = start
        .iter()
        .map(|v| v.as_str().expect("argv strings").to_string())
        .collect();
    let program = if argv[0] == "@spinforge" {
        support::spinforge::binary().to_string()
    } else {
        argv[0].clone()
    };
    let port = free_port();
    let t = Instant::now();
    let mut child = std::process::Command::new(program)
        .args(&argv[1..])
        .current_dir(dir)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("NODE_ENV", "production")
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start by hand");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let answered = loop {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .is_ok()
            {
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    break t.elapsed();
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never answered");
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    answered
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Checks one built app: detection, the start command, its pages through the edge, and prints
/// cold-start timings (through the edge vs by hand).
async fn check_app(
    ws: &Workspace,
    sf: &Spinforge,
    name: &str,
    framework: &str,
    pm: Option<&str>,
    pages: &[(&str, &str)],
) -> Value {
    let info = wait_release(ws, sf, name, 1);
    assert_eq!(info["framework"], framework, "{name}: {info:#}");
    if let Some(pm) = pm {
        assert_eq!(info["package_manager"], pm, "{name}: {info:#}");
    }
    let start = info["start"].as_array().expect("start argv").clone();
    let first = start[0].as_str().expect("program");
    assert!(
        first.ends_with("/node") || first == "@spinforge",
        "{name} must start with node or the static server, not {start:?}"
    );
    let http = sf.client();
    let host = format!("{name}.test");
    let (status, body, cold) = cold_get(&http, &host, pages[0].0).await;
    assert_eq!(status, 200, "{name} {}: {body}", pages[0].0);
    assert!(body.contains(pages[0].1), "{name} {}: {body}", pages[0].0);
    for (path, text) in &pages[1..] {
        let r = http.fetch(&host, path).await;
        assert_eq!(r.status, 200, "{name} {path}: {}", r.body);
        assert!(r.body.contains(text), "{name} {path}: {}", r.body);
    }
    let by_hand = start_by_hand(&release_dir(ws, name, 1), &start);
    println!(
        "[builder] {name:<12} framework={framework:<8} build={:>6} ms  cold start through the edge={:>7}  start command by hand={:>7}",
        info["build_ms"],
        ms(cold),
        ms(by_hand)
    );
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_frameworks_are_detected_built_and_served() {
    let ws = Workspace::new();
    let port = free_port();
    let apps = [
        app("express-js", &build_fixture("express-js"), ""),
        app("express-ts", &build_fixture("express-ts"), ""),
        app("npm-node", &build_fixture("npm-node"), ""),
        app("pnpm-app", &build_fixture("pnpm-app"), ""),
        app("yarn-app", &build_fixture("yarn-app"), ""),
        app("static-html", &build_fixture("static-html"), ""),
        app(
            "static-vite",
            &build_fixture("static-vite"),
            "    spa: true\n",
        ),
    ]
    .concat();
    let path = config(&ws, port, "  builds: { concurrency: 2 }\n", "", &apps);
    let sf = up(&ws, port, &path);

    check_app(
        &ws,
        &sf,
        "express-js",
        "express",
        Some("npm"),
        &[
            ("/", "express-js home"),
            ("/api/info", "\"framework\":\"express\""),
        ],
    )
    .await;
    let ts = check_app(
        &ws,
        &sf,
        "express-ts",
        "express",
        Some("npm"),
        &[
            ("/", "express-ts home"),
            ("/api/info", "\"typescript\":true"),
        ],
    )
    .await;
    assert_eq!(ts["typescript"], true);
    assert!(
        !release_dir(&ws, "express-ts", 1)
            .join("node_modules/typescript")
            .exists(),
        "dev dependencies are pruned from the release"
    );
    check_app(
        &ws,
        &sf,
        "npm-node",
        "node",
        Some("npm"),
        &[("/", "\"pm\":\"npm\"")],
    )
    .await;
    assert!(
        build_logs(&ws, "npm-node").contains("package.json wants Node >=99"),
        "an engines range that excludes this Node is a warning:\n{}",
        build_logs(&ws, "npm-node")
    );
    check_app(
        &ws,
        &sf,
        "pnpm-app",
        "node",
        Some("pnpm"),
        &[("/", "\"pm\":\"pnpm\"")],
    )
    .await;
    check_app(
        &ws,
        &sf,
        "yarn-app",
        "node",
        Some("yarn (classic)"),
        &[("/", "\"pm\":\"yarn\"")],
    )
    .await;
    check_app(
        &ws,
        &sf,
        "static-html",
        "static",
        None,
        &[("/", "plain html home"), ("/about", "plain html about")],
    )
    .await;
    check_app(
        &ws,
        &sf,
        "static-vite",
        "static",
        Some("npm"),
        &[
            ("/", "vite static home"),
            ("/deep/client/route", "vite static home"),
        ],
    )
    .await;

    // The static server's headers: validators, caching, no way out of the root.
    let http = sf.client();
    let page = http.fetch("static-vite.test", "/").await;
    let asset = page
        .body
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("a fingerprinted script in {}", page.body))
        .to_string();
    let r = http.fetch("static-vite.test", &asset).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let etag = r.header("etag").expect("etag").to_string();
    assert!(r.header("last-modified").is_some());
    let again = http
        .get("static-vite.test", &asset)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional GET");
    assert_eq!(again.status().as_u16(), 304);
    let r = http
        .fetch("static-html.test", "/%2e%2e/%2e%2e/etc/passwd")
        .await;
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
    assert!(!r.body.contains("root:"), "{}", r.body);
    assert_eq!(
        http.fetch("static-html.test", "/missing.css").await.status,
        404
    );
}

/// Copies a fixture into the workspace so a test can change it.
fn copy_fixture(name: &str, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(build_fixture(name))
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// Builds `name`, changes a file, builds again (restart), and reports cold vs cached build. What
/// is checked is that the rebuild skipped the install; the times are printed, not asserted (the
/// house rule: no timing assertions; the numbers go to loadtest/RESULTS.md).
async fn cold_then_cached(
    name: &str,
    framework: &str,
    pages: &[(&str, &str)],
    edit: (&str, &str, &str),
) {
    let ws = Workspace::new();
    let src = ws.path().join("src");
    copy_fixture(name, &src);
    let port = free_port();
    let path = config(&ws, port, "", "", &app(name, &src, ""));
    let mut sf = up(&ws, port, &path);
    let cold = check_app(&ws, &sf, name, framework, Some("npm"), pages).await;
    sf.terminate(Duration::from_secs(15));

    let (file, from, to) = edit;
    let text = std::fs::read_to_string(src.join(file)).expect("read");
    assert!(text.contains(from));
    std::fs::write(src.join(file), text.replace(from, to)).expect("write");
    let sf = up(&ws, port, &path);
    let cached = wait_release(&ws, &sf, name, 2);
    assert!(
        build_logs(&ws, name).contains("node_modules reused"),
        "{}",
        build_logs(&ws, name)
    );
    assert_eq!(cached["lockfile_hash"], cold["lockfile_hash"]);
    if framework == "next" {
        assert!(
            build_logs(&ws, name).contains(".next/cache reused from release 1"),
            "{}",
            build_logs(&ws, name)
        );
    }
    let r = sf.client().fetch(&format!("{name}.test"), pages[0].0).await;
    assert!(r.body.contains(to), "the new release serves: {}", r.body);
    let (c, w) = (
        cold["build_ms"].as_u64().expect("ms"),
        cached["build_ms"].as_u64().expect("ms"),
    );
    println!(
        "[builder] {name:<12} cold build={c} ms  cached rebuild (same lockfile)={w} ms  ratio={:.2}",
        w as f64 / c as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_cached_rebuild_vs_cold() {
    cold_then_cached(
        "express-js",
        "express",
        &[("/", "express-js home")],
        ("server.js", "express-js home", "express-js home v2"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_app_router_with_api_route() {
    cold_then_cached(
        "next",
        "next",
        &[
            ("/", "next app router home"),
            ("/api/hello", "\"api\":\"hello\""),
        ],
        (
            "app/page.js",
            "next app router home",
            "next app router home v2",
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remix_app() {
    let ws = Workspace::new();
    let port = free_port();
    let path = config(
        &ws,
        port,
        "",
        "",
        &app("remix", &build_fixture("remix"), ""),
    );
    let sf = up(&ws, port, &path);
    let info = check_app(
        &ws,
        &sf,
        "remix",
        "remix",
        Some("npm"),
        &[
            ("/", "remix home"),
            ("/api/info", "\"framework\":\"remix\""),
        ],
    )
    .await;
    let start: Vec<&str> = info["start"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        start[1..],
        [
            "node_modules/@remix-run/serve/dist/cli.js",
            "./build/server/index.js"
        ],
        "remix-serve runs under node directly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_build_leaves_the_old_release_serving() {
    let ws = Workspace::new();
    let src = scripted_app(
        &ws,
        "require('fs').writeFileSync('built.txt', 'release one');\n",
        "const t = require('fs').readFileSync(__dirname + '/built.txt', 'utf8');\nrequire('http').createServer((q, s) => s.end(t)).listen(+process.env.PORT, process.env.HOST);\n",
    );
    let port = free_port();
    let path = config(&ws, port, "", "", &app("keeper", &src, ""));
    let mut sf = up(&ws, port, &path);
    wait_release(&ws, &sf, "keeper", 1);
    assert_eq!(
        sf.client().fetch("keeper.test", "/").await.body,
        "release one"
    );
    sf.terminate(Duration::from_secs(15));

    std::fs::write(
        src.join("build.js"),
        "console.error('the build breaks here'); process.exit(3);\n",
    )
    .expect("write");
    let sf = up(&ws, port, &path);
    assert_eventually!(
        timeout = Duration::from_secs(120),
        sf.log_text()
            .contains("build failed; serving the previous release"),
        "the failed build is reported:\n{}",
        sf.log_text()
    );
    let r = sf.client().fetch("keeper.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "release one"));
    assert!(!release_dir(&ws, "keeper", 2).exists(), "no release 2");
    let releases = ws.data_dir().join("apps/keeper/releases");
    let leftovers: Vec<_> = std::fs::read_dir(&releases)
        .expect("releases")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("1")],
        "no half-built release is left"
    );
    let logs = build_logs(&ws, "keeper");
    assert!(logs.contains("the build breaks here"), "{logs}");
    assert!(
        sf.log_text().contains("node build.js"),
        "the error names the failed command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_first_build_fails_answers_503_at_once_not_after_the_wake_timeout() {
    let ws = Workspace::new();
    let src = scripted_app(
        &ws,
        "console.error('this build always breaks'); process.exit(3);\n",
        "require('http').createServer((q, s) => s.end('never')).listen(+process.env.PORT);\n",
    );
    let port = free_port();
    // wake_timeout is 60 s here: a request held for a wake would take that long.
    let path = config(&ws, port, "", "", &app("doomed", &src, ""));
    let sf = up(&ws, port, &path);
    assert_eventually!(
        timeout = Duration::from_secs(120),
        sf.log_text()
            .contains("build failed; the app will answer 503"),
        "the failed build is reported:\n{}",
        sf.log_text()
    );
    // The route says so: the edge answers 503 without holding the request. (A request sent
    // before the route was updated would still be answered as soon as it is.)
    let http = sf.client();
    let took = eventually(
        Duration::from_secs(15),
        "a request for the failed app is answered 503",
        || async {
            let (status, _, took) = cold_get(&http, "doomed.test", "/").await;
            (status == 503).then_some(took)
        },
    )
    .await;
    assert!(
        took < Duration::from_secs(5),
        "answered at once, not held for a wake: {took:?}"
    );
    let r = http.fetch("doomed.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.header("retry-after").is_some(),
        "a 503 says when to retry"
    );
    assert!(
        !r.body.contains("this build always breaks"),
        "the build's output stays with the operator: {}",
        r.body
    );
}

fn write_tarball(
    path: &Path,
    build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>),
) {
    let file = std::fs::File::create(path).expect("create");
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    build(&mut b);
    b.into_inner().expect("tar").finish().expect("gz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarball_sources_build_and_hostile_ones_are_refused() {
    let ws = Workspace::new();
    let good = ws.path().join("site.tar.gz");
    write_tarball(&good, |b| {
        b.append_dir_all("site", build_fixture("static-html"))
            .expect("append");
    });
    let evil = ws.path().join("evil.tar.gz");
    write_tarball(&evil, |b| {
        let body = b"<h1>pwned</h1>";
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        // A raw name: the tar crate's own helpers refuse to write `..`.
        let gnu = h.as_gnu_mut().expect("gnu");
        gnu.name[..20].copy_from_slice(b"../../escaped.html\0\0");
        h.set_cksum();
        b.append(&h, &body[..]).expect("append");
    });
    let port = free_port();
    let apps = app("good", &good, "") + &app("evil", &evil, "");
    let path = config(&ws, port, "", "", &apps);
    let sf = up(&ws, port, &path);
    let info = check_app(
        &ws,
        &sf,
        "good",
        "static",
        None,
        &[("/", "plain html home")],
    )
    .await;
    assert_eq!(
        info["source"].as_str(),
        Some(good.display().to_string().as_str())
    );
    assert_eventually!(
        timeout = Duration::from_secs(60),
        build_logs(&ws, "evil").contains("points outside the archive's root"),
        "the hostile archive is refused with a clear error:\n{}",
        build_logs(&ws, "evil")
    );
    assert!(!ws.data_dir().join("apps/escaped.html").exists());
    assert!(!ws.path().join("escaped.html").exists());
    let releases = ws.data_dir().join("apps/evil/releases");
    assert_eq!(
        std::fs::read_dir(&releases).map(|r| r.count()).unwrap_or(0),
        0,
        "nothing of the hostile archive is kept"
    );
}

fn git(dir: &Path, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sources_build_the_requested_ref_and_record_the_commit() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    copy_fixture("static-html", &repo);
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    git(&repo, &["tag", "v1"]);
    let v1 = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("index.html"), "<h1>second commit</h1>").expect("write");
    git(&repo, &["commit", "-qam", "two"]);
    let port = free_port();
    let apps = format!(
        "  tagged:\n    domains: [tagged.test]\n    source: file://{}#v1\n  head:\n    domains: [head.test]\n    source: file://{}\n",
        repo.display(),
        repo.display()
    );
    let path = config(&ws, port, "", "", &apps);
    let sf = up(&ws, port, &path);
    let info = check_app(
        &ws,
        &sf,
        "tagged",
        "static",
        None,
        &[("/", "plain html home")],
    )
    .await;
    assert_eq!(info["source_commit"].as_str(), Some(v1.as_str()));
    let head = check_app(&ws, &sf, "head", "static", None, &[("/", "second commit")]).await;
    assert_ne!(head["source_commit"], info["source_commit"]);
    assert!(!release_dir(&ws, "head", 1).join(".git").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_go_through_the_queue_with_status_and_log_in_redis() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let port = free_port();
    let apps =
        app("one", &build_fixture("static-html"), "") + &app("two", &build_fixture("npm-node"), "");
    let state = format!("state:\n  redis: {}\n", redis.url());
    let path = config(&ws, port, "  builds: { concurrency: 1 }\n", &state, &apps);
    let sf = up(&ws, port, &path);
    let one = wait_release(&ws, &sf, "one", 1);
    let two = wait_release(&ws, &sf, "two", 1);
    let store = redis.store().await;
    let mut spans = Vec::new();
    for info in [&one, &two] {
        let id = info["build_id"].as_str().expect("build id");
        let status = store.build(id).await.expect("read").expect("a status");
        assert_eq!(status.state, BuildState::Succeeded, "{status:?}");
        assert_eq!(status.release, Some(1));
        let (started, finished) = (
            status.started.expect("started"),
            status.finished.expect("finished"),
        );
        assert!(
            status.queued <= started && started <= finished,
            "{status:?}"
        );
        spans.push((started, finished));
        let log = store.build_log(id, None, 1000).await.expect("log");
        assert!(
            log.iter()
                .any(|e| e.line.contains("[spinforge] framework:")),
            "{log:?}"
        );
        // Resuming after an entry gives the rest.
        let rest = store
            .build_log(id, Some(&log[0].id), 1000)
            .await
            .expect("log");
        assert_eq!(rest.len(), log.len() - 1);
    }
    spans.sort();
    assert!(
        spans[0].1 <= spans[1].0,
        "with concurrency 1 the second build starts after the first ends: {spans:?}"
    );
    assert!(store.build_queue().await.expect("queue").is_empty());
    drop(sf);
}

/// The pid of a process whose working directory is `dir`.
fn process_in(dir: &Path) -> Option<u32> {
    let dir = dir.canonicalize().ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        (std::fs::read_link(p.path().join("cwd")).ok()? == dir).then_some(pid)
    })
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_builds_and_serves_as_that_user_and_refuses_unknown_users() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ws = Workspace::new();
    // The unprivileged user must reach its releases.
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port();
    let path = config(
        &ws,
        port,
        "  run_as: no-such-user-here\n",
        "",
        &app("alone", &build_fixture("static-html"), ""),
    );
    let out = std::process::Command::new(support::spinforge::binary())
        .args(["up", "--config"])
        .arg(&path)
        .output()
        .expect("run spinforge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("there is no user `no-such-user-here`"),
        "{err}"
    );

    if !nix::unistd::geteuid().is_root() {
        // Not root: SpinForge cannot switch users (it warns and runs as itself). CI runs as root.
        println!("[builder] run_as as a non-root user: only the unknown-user check ran");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("lookup")
        .expect("a `nobody` user");
    let path = config(
        &ws,
        port,
        "  run_as: nobody\n",
        "",
        &app("npm-node", &build_fixture("npm-node"), ""),
    );
    let sf = up(&ws, port, &path);
    wait_release(&ws, &sf, "npm-node", 1);
    let r = sf.client().fetch("npm-node.test", "/").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let release = release_dir(&ws, "npm-node", 1);
    // Under run_as every app has its own user id (kept in app-users.json), not run_as's.
    let users: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ws.data_dir().join("app-users.json")).expect("app-users.json"),
    )
    .expect("json");
    let app_uid = users["npm-node"].as_u64().expect("the app's uid") as u32;
    assert_ne!(app_uid, nobody.uid.as_raw());
    assert_ne!(app_uid, 0);
    let installed =
        std::fs::metadata(release.join("node_modules/ms/package.json")).expect("ms installed");
    assert_eq!(installed.uid(), app_uid, "npm ran as the app's user");
    let pid = process_in(&release).expect("the spinlet runs in its release");
    assert_eq!(
        uid_of(pid),
        Some(app_uid),
        "the spinlet runs as the app's user"
    );
}
