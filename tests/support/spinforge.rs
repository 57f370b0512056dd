//! Runs the real `spinforge` binary for end-to-end tests: a config written into a temp folder,
//! the process started on ephemeral ports, an HTTP client that sets Host, and cleanup that leaves
//! no spinlet behind.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_spinforge")
}

/// The repository root (for fixtures and conf/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// A block of spinlet ports no other test in this binary uses, below Linux's ephemeral range
/// (32768+) so that client sockets never hold them.
pub fn port_block() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let first = 20000 + (std::process::id() as u16 % 50) * 200 + n * 20;
    format!("{first}-{}", first + 19)
}

/// A test's folder: the config and `data_dir` live here.
#[derive(Debug)]
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            // SPINFORGE_TEST_KEEP=1 keeps the folder (configs, data, every process's log) to
            // look at after a failure.
            dir: tempfile::Builder::new()
                .prefix("spinforge-test-")
                .disable_cleanup(std::env::var_os("SPINFORGE_TEST_KEEP").is_some())
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Writes `name` with `text` and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    /// Lines in a START_LOG file: one per process start.
    pub fn starts(&self, log: &str) -> Vec<u32> {
        std::fs::read_to_string(self.path().join(log))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// One `spinforge` process; SIGTERM on drop, then whatever it left running is killed.
#[derive(Debug)]
pub struct Spinforge {
    child: Option<Child>,
    pub http: Option<SocketAddr>,
    pub log: PathBuf,
    data_dir: PathBuf,
    /// The admin API (`up` and `supervisor` only), on an ephemeral port.
    pub admin: Option<SocketAddr>,
    /// The admin API's bearer token.
    pub token: String,
}

/// The token every test SpinForge's admin API takes.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Gives the config's supervisor an ephemeral `admin_listen` unless it sets one; returns it.
fn admin_listen(config: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(config).expect("read the test config");
    if let Some(line) = text
        .lines()
        .find(|l| l.trim_start().starts_with("admin_listen:"))
    {
        return line
            .split_once(':')
            .map(|(_, v)| v.trim())
            .and_then(|v| v.parse().ok())
            .expect("admin_listen in a test config is host:port");
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
    let entry = format!("  admin_listen: {addr}\n");
    let text = if text.starts_with("supervisor:\n") {
        text.replacen("supervisor:\n", &format!("supervisor:\n{entry}"), 1)
    } else if text.contains("\nsupervisor:\n") {
        text.replacen("\nsupervisor:\n", &format!("\nsupervisor:\n{entry}"), 1)
    } else {
        format!("{text}\nsupervisor:\n{entry}")
    };
    std::fs::write(config, text).expect("write the test config");
    addr
}

impl Spinforge {
    /// `spinforge <role> --config <config>`; when `http` is given, waits until it accepts.
    pub fn start(ws: &Workspace, role: &str, config: &Path, http: Option<SocketAddr>) -> Spinforge {
        Self::start_full(ws, &[role], config, http, &[])
    }

    /// [`Spinforge::start`] with extra environment variables.
    pub fn start_env(
        ws: &Workspace,
        role: &str,
        config: &Path,
        http: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> Spinforge {
        Self::start_full(ws, &[role], config, http, env)
    }

    /// `spinforge up` with no admin token (the API then trusts loopback clients only).
    pub fn up_without_token(ws: &Workspace, config: &Path, http: SocketAddr) -> Spinforge {
        Self::start_full(ws, &["up"], config, Some(http), &[("SPINFORGE_TOKEN", "")])
    }

    /// `spinforge <args…> --config <config>`.
    pub fn start_with(
        ws: &Workspace,
        args: &[&str],
        config: &Path,
        http: Option<SocketAddr>,
    ) -> Spinforge {
        Self::start_full(ws, args, config, http, &[])
    }

    fn start_full(
        ws: &Workspace,
        args: &[&str],
        config: &Path,
        http: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> Spinforge {
        // Numbered, so that two processes of one role in one workspace keep separate logs.
        static STARTED: AtomicU16 = AtomicU16::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = ws
            .path()
            .join(format!("{}-{}-{n}.log", args[0], std::process::id()));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create log");
        let admin = matches!(args[0], "up" | "supervisor").then(|| admin_listen(config));
        let child = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(config)
            .env("SPINFORGE_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,spinforge=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .expect("start spinforge");
        let mut sf = Spinforge {
            child: Some(child),
            http,
            log,
            data_dir: ws.data_dir(),
            admin,
            token: ADMIN_TOKEN.to_string(),
        };
        if let Some(addr) = http {
            sf.wait_listening(addr);
            if let Some(admin) = admin {
                sf.wait_listening(admin);
            }
        }
        sf
    }

    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "spinforge exited ({status}) before listening on {addr}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "spinforge not listening on {addr} after 30s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGTERM and wait (at most `limit`) for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        signal(self.pid(), nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(limit)
    }

    /// Waits (at most `limit`) for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "spinforge did not exit within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An HTTP client for this edge; see [`Http`].
    pub fn client(&self) -> Http {
        Http::new(self.http.expect("started with an http address"))
    }
}

impl Drop for Spinforge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_processes_under(&self.data_dir);
        if std::thread::panicking() {
            eprintln!(
                "--- spinforge log ({}) ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Kills every process whose working directory is inside `dir` (spinlets run in their release
/// folder), so a failed test leaves nothing behind.
pub fn kill_processes_under(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(p.path().join("cwd")) {
            if cwd.starts_with(&dir) {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// An HTTP/1.1 client aimed at one edge, sending any Host.
#[derive(Debug, Clone)]
pub struct Http {
    pub addr: SocketAddr,
    client: reqwest::Client,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .expect("http client");
        Http { addr, client }
    }

    pub fn get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("http://{}{path}", self.addr))
            .header("host", host)
    }

    /// GET and return (status, headers, body); panics on a transport error.
    pub async fn fetch(&self, host: &str, path: &str) -> Reply {
        let resp = self
            .get(host, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET http://{host}{path}: {e}"));
        Reply::read(resp).await
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("body");
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The config block of an echo app named `name` answering on `domains` (comma-separated).
pub fn echo_app(ws: &Workspace, name: &str, domains: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    domains: [{domains}]\n    source: {src}\n    env: {{ APP_NAME: {name}, START_LOG: {log} }}\n{extra}",
        src = fixture("echo").display(),
        log = ws.path().join(format!("{name}.starts")).display(),
    )
}
