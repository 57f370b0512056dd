//! The errors a new user meets in the first five minutes, each tried with the real binary: every
//! one names its cause and its fix.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::spinforge::{Workspace, binary, fixture};

/// The account tests run SpinForge as when they need an unprivileged user.
const NOBODY: u32 = 65534;

/// A config serving a static site from `ws/site` on `http`, with `data_dir` and more
/// top-level YAML.
fn write_config(ws: &Workspace, http: SocketAddr, data_dir: &Path, top: &str) -> PathBuf {
    let site = ws.path().join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    std::fs::copy(
        fixture("build/static-html/index.html"),
        site.join("index.html"),
    )
    .expect("copy");
    let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    ws.write(
        "spinforge.yaml",
        &format!(
            "{top}edge:\n  listen_http: {http}\n  metrics: off\nsupervisor:\n  data_dir: {data}\n  admin_listen: {admin}\napps:\n  site:\n    domains: [site.localhost]\n    source: ./site\n",
            data = data_dir.display()
        ),
    )
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], support::free_port()))
}

/// `spinforge up` until it exits (at most `limit`): its exit code and what it logged.
fn up_until_exit(mut cmd: Command, config: &Path, limit: Duration) -> (Option<i32>, String) {
    let log = config.with_extension("log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = cmd
        .args(["up", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("start spinforge");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

fn assert_says(log: &str, words: &[&str]) {
    for w in words {
        assert!(log.contains(w), "`{w}` missing from:\n{log}");
    }
}

/// A folder `bin` in the workspace holding only `programs` (name → file to link), for a PATH
/// with exactly those on it.
fn path_with(ws: &Workspace, programs: &[(&str, &Path)]) -> PathBuf {
    let bin = ws.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for (name, target) in programs {
        std::os::unix::fs::symlink(target, bin.join(name)).expect("link");
    }
    bin
}

fn real(program: &str) -> PathBuf {
    let paths = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is needed on PATH for this test"))
}

fn script(ws: &Workspace, name: &str, text: &str) -> PathBuf {
    let path = ws.write(name, text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn a_taken_port_names_the_key_and_how_to_find_the_process() {
    let ws = Workspace::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let http = taken.local_addr().expect("addr");
    let config = write_config(&ws, http, &ws.data_dir(), "");
    let (code, log) = up_until_exit(Command::new(binary()), &config, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert_says(
        &log,
        &[
            &format!("cannot listen on {http} (edge.listen_http)"),
            "another process is listening",
            &format!("ss -ltnp 'sport = :{}'", http.port()),
        ],
    );

    // The admin API's port too. The edge's port is a free one picked before the start, which a
    // test running alongside can take meanwhile: then the edge's is the port named, and the
    // check is run again with new ports.
    for attempt in 1.. {
        let ws = Workspace::new();
        let config = write_config(&ws, free_addr(), &ws.data_dir(), "");
        let text = std::fs::read_to_string(&config).expect("read");
        let admin = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("admin_listen: "))
            .expect("admin_listen")
            .to_string();
        let _held = TcpListener::bind(&admin).expect("hold the admin port");
        let (code, log) = up_until_exit(Command::new(binary()), &config, Duration::from_secs(20));
        assert_eq!(code, Some(1), "{log}");
        if attempt < 3 && log.contains("(edge.listen_http)") {
            continue;
        }
        assert_says(
            &log,
            &["(supervisor.admin_listen)", "another process is listening"],
        );
        break;
    }
}

#[test]
fn node_missing_or_too_old_and_npm_missing_or_too_old_say_what_to_install() {
    let ws = Workspace::new();
    let config = write_config(&ws, free_addr(), &ws.data_dir(), "");
    let run = |path: &Path| {
        let mut cmd = Command::new(binary());
        cmd.env("PATH", path);
        up_until_exit(cmd, &config, Duration::from_secs(20))
    };

    let empty = ws.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let (code, log) = run(&empty);
    assert_eq!(code, Some(1), "{log}");
    assert_says(
        &log,
        &[
            "Node.js is not installed",
            "18 or newer",
            "apt-get install nodejs",
        ],
    );

    let old_node = script(&ws, "old-node", "#!/bin/sh\necho v16.20.2\n");
    let bin = path_with(&ws, &[("node", &old_node)]);
    let (code, log) = run(&bin);
    assert_eq!(code, Some(1), "{log}");
    assert_says(&log, &["Node.js v16.20.2", "is too old", "18 or newer"]);

    let ws = Workspace::new();
    let config = write_config(&ws, free_addr(), &ws.data_dir(), "");
    let run = |path: &Path| {
        let mut cmd = Command::new(binary());
        cmd.env("PATH", path);
        up_until_exit(cmd, &config, Duration::from_secs(20))
    };
    let node = real("node");
    let bin = path_with(&ws, &[("node", &node)]);
    let (code, log) = run(&bin);
    assert_eq!(code, Some(1), "{log}");
    assert_says(&log, &["npm is not installed", "apt-get install npm"]);

    // npm 6, laid out as npm is: bin/npm → lib/node_modules/npm/bin/npm-cli.js.
    let npm_dir = ws.path().join("lib/node_modules/npm");
    std::fs::create_dir_all(npm_dir.join("bin")).expect("mkdir");
    std::fs::write(
        npm_dir.join("package.json"),
        r#"{"name": "npm", "version": "6.14.18"}"#,
    )
    .expect("write");
    let cli = npm_dir.join("bin/npm-cli.js");
    std::fs::write(&cli, "").expect("write");
    std::os::unix::fs::symlink(&cli, bin.join("npm")).expect("link");
    let (code, log) = run(&bin);
    assert_eq!(code, Some(1), "{log}");
    assert_says(&log, &["npm 6.14.18", "is too old", "npm 7 or newer"]);
}

#[test]
fn an_unreachable_npm_registry_is_named_with_the_way_round_it() {
    let ws = Workspace::new();
    let closed_port = support::ClosedPort::new();
    let closed = closed_port.port();
    let http = free_addr();
    let config = write_config(&ws, http, &ws.data_dir(), "");
    let log = ws.path().join("up.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Command::new(binary())
        .args(["up", "--config"])
        .arg(&config)
        .env("npm_config_registry", format!("http://127.0.0.1:{closed}/"))
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("start spinforge");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("npm registry") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    support::spinforge::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    support::spinforge::kill_processes_under(&ws.data_dir());
    assert_says(
        &text,
        &[
            &format!("the npm registry http://127.0.0.1:{closed}/ cannot be reached"),
            "builds that install dependencies will fail",
            "HTTPS_PROXY",
            "npm_config_registry",
        ],
    );
}

/// The binary where an unprivileged user can run it (the build folder may sit under a home
/// only root enters).
fn runnable_binary(ws: &Workspace) -> PathBuf {
    let copy = ws.path().join("spinforge");
    if std::fs::hard_link(binary(), &copy).is_err() {
        std::fs::copy(binary(), &copy).expect("copy the binary");
    }
    copy
}

/// `ws` opened to other users, so that `nobody` can read the config.
fn open_to_all(ws: &Workspace) {
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// SpinForge as an unprivileged user: `nobody` when the tests run as root, else the current
/// user.
fn as_nobody(ws: &Workspace) -> Command {
    if !nix::unistd::geteuid().is_root() {
        return Command::new(binary());
    }
    open_to_all(ws);
    let mut cmd = Command::new(runnable_binary(ws));
    cmd.uid(NOBODY).gid(NOBODY).env("HOME", "/");
    cmd
}

#[test]
fn port_80_without_the_capability_names_setcap_and_the_systemd_line() {
    let ws = Workspace::new();
    let data = ws.path().join("data-for-all");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let http = SocketAddr::from(([127, 0, 0, 1], 80));
    let config = write_config(&ws, http, &data, "");
    let cmd = as_nobody(&ws);
    let (code, log) = up_until_exit(cmd, &config, Duration::from_secs(20));
    if code.is_none() {
        // Ports below 1024 are open to everyone here (net.ipv4.ip_unprivileged_port_start).
        eprintln!("port 80 could be bound without privileges; nothing to check");
        return;
    }
    assert_eq!(code, Some(1), "{log}");
    assert_says(
        &log,
        &[
            "cannot listen on 127.0.0.1:80 (edge.listen_http)",
            "CAP_NET_BIND_SERVICE",
            "setcap cap_net_bind_service=+ep",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        ],
    );
}

#[test]
fn a_data_dir_the_user_cannot_write_names_the_key_and_the_fix() {
    let ws = Workspace::new();
    // Root's folder, not writable by others.
    let locked = ws.path().join("locked");
    std::fs::create_dir_all(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = locked.join("data");
    let config = write_config(&ws, free_addr(), &data, "");
    let cmd = as_nobody(&ws);
    if !nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    let (code, log) = up_until_exit(cmd, &config, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert_says(
        &log,
        &[
            &format!("the data folder {}", data.display()),
            "(supervisor.data_dir in",
            "is not writable by",
            "Permission denied",
            "sudo install -d -o",
        ],
    );
}

#[test]
fn redis_not_running_says_how_to_start_it_at_once_and_at_the_end() {
    let ws = Workspace::new();
    let closed_port = support::ClosedPort::new();
    let closed = closed_port.port();
    let url = format!("redis://127.0.0.1:{closed}/0");
    let config = write_config(
        &ws,
        free_addr(),
        &ws.data_dir(),
        &format!("state:\n  redis: {url}\n"),
    );
    let (code, log) = up_until_exit(Command::new(binary()), &config, Duration::from_secs(45));
    assert_eq!(code, Some(1), "{log}");
    let hint = format!("Redis at {url} (state.redis in");
    let first = log
        .find(&hint)
        .unwrap_or_else(|| panic!("no `{hint}` in:\n{log}"));
    assert!(
        log[first..].contains("waiting up to 30 s"),
        "said at once, before the wait:\n{log}"
    );
    assert_says(
        &log,
        &[
            "does not answer: start it",
            "systemctl start redis-server",
            &format!("redis-server --port {closed}"),
            "remove state.redis to keep state in memory",
        ],
    );
    assert!(
        log.matches(&hint).count() >= 2,
        "and again when giving up:\n{log}"
    );
}
