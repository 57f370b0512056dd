//! Helpers shared by the integration tests: free ports, a throwaway `redis-server`, and polling
//! assertions. Each test file pulls this in with `mod support;`.

#![allow(dead_code)]

pub mod h2wire;
pub mod pebble;
pub mod spinforge;
pub mod upstream;

use std::future::Future;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`assert_eventually!`] and friends wait by default.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// How often they look again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test is about to start.
///
/// Taken from 10000–19999, below the kernel's ephemeral range (32768–60999 by default; spinlets
/// get 20000 and up, see `port_block`), so that no outgoing connection — a test's clients hold
/// hundreds — can be given it as its source port before the server binds it. A process hands
/// its ports out in turn, from a start that depends on its id, skipping any that are taken.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const COUNT: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + start.wrapping_add(n) % COUNT) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST}-{}", FIRST + COUNT - 1);
}

/// A TCP port on 127.0.0.1 that refuses connections for as long as this lives: the socket is
/// bound but never listens, so no other test can take the port and the kernel never picks it as
/// a connection's source port (which would let a connect to it succeed by connecting to itself).
#[derive(Debug)]
pub struct ClosedPort {
    port: u16,
    _socket: socket2::Socket,
}

impl ClosedPort {
    pub fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an inet address")
            .port();
        Self {
            port,
            _socket: socket,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A real `redis-server` on 127.0.0.1 with no persistence, in its own temporary directory.
/// Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How long a starting `redis-server` has to answer PING.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("spinforge-redis-")
            .tempdir()
            .expect("create a temp dir for redis");
        // Another process may take the port between `free_port` and redis binding it: try a few.
        let mut last_failure = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn_redis(port, dir.path());
            match wait_ready(port, &mut child, dir.path()) {
                Ok(()) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Some(child),
                    };
                }
                Err(failure) => {
                    kill(&mut child);
                    last_failure = failure;
                }
            }
        }
        panic!("redis-server did not start: {last_failure}");
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A store client on this server, as the binaries connect one.
    pub async fn store(&self) -> spinforge_state::Store {
        let url = spinforge_state::config::RedisUrl::new(self.url());
        spinforge_state::Store::connect_redis(&url, Duration::from_secs(5))
            .await
            .expect("connect to the test redis-server")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it to exit. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// Stops the server if it runs, and starts it again on the same port. Nothing survives:
    /// there is no persistence.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = spawn_redis(self.port, self.dir.path());
        if let Err(failure) = wait_ready(self.port, &mut child, self.dir.path()) {
            kill(&mut child);
            panic!(
                "redis-server did not restart on port {}: {failure}",
                self.port
            );
        }
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(port: u16, dir: &Path) -> Child {
    let port_arg = port.to_string();
    let result = Command::new("redis-server")
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
            "--port",
            &port_arg,
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(log_path(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("redis-server not found: run ./scripts/setup (apt-get install redis-server)")
        }
        Err(e) => panic!("cannot run redis-server: {e}"),
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// Waits until the server on `port` answers PING; on failure says why, with the end of its log.
fn wait_ready(port: u16, child: &mut Child, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + REDIS_READY_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("cannot poll redis-server: {e}"))?
        {
            return Err(format!(
                "redis-server on port {port} exited with {status}{}",
                log_tail(dir)
            ));
        }
        if pings(port) {
            // Another test may have picked the same free port and started its redis-server first
            // (ours then fails to bind and exits): make sure the one answering is ours.
            match server_pid(port) {
                Some(pid) if pid == child.id() => return Ok(()),
                Some(pid) => {
                    return Err(format!(
                        "port {port} is served by another redis-server (pid {pid})"
                    ));
                }
                None => {} // not ready to say yet
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server on port {port} did not answer PING within {REDIS_READY_TIMEOUT:?}{}",
                log_tail(dir)
            ));
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Whether something on `port` answers `PING` with `+PONG`.
fn pings(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && reply == *b"+PONG\r\n"
}

/// The `process_id` that the redis-server on `port` reports in `INFO server`.
fn server_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

fn log_tail(dir: &Path) -> String {
    match std::fs::read_to_string(log_path(dir)) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "; redis.log ends with:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        }
        Err(_) => String::new(),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill(); // fails only if it already exited
    let _ = child.wait();
}

/// Polls a (synchronous) condition every 20 ms until it holds, or panics with the message after
/// 10 s (or the given `timeout = ...`). Blocks the thread: in async tests, prefer
/// [`eventually`](crate::support::eventually).
///
/// ```ignore
/// assert_eventually!(path.exists(), "{} was never written", path.display());
/// assert_eventually!(timeout = Duration::from_secs(2), done.load(SeqCst), "never done");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    (timeout = $timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        let deadline = ::std::time::Instant::now() + timeout;
        while !$cond {
            if ::std::time::Instant::now() >= deadline {
                panic!("not true after {:?}: {}", timeout, format_args!($($msg)+));
            }
            ::std::thread::sleep(::std::time::Duration::from_millis(20));
        }
    }};
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!(timeout = ::std::time::Duration::from_secs(10), $cond, $($msg)+)
    };
}

/// Calls `attempt` every 20 ms until it yields `Some`, and returns that; panics with `what` if
/// that takes longer than `timeout` (a hanging attempt counts against it too).
///
/// ```ignore
/// let route = eventually(EVENTUALLY, "the route comes back", || async { store.route("a").await.ok().flatten() }).await;
/// ```
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: impl std::fmt::Display,
    mut attempt: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(value) = attempt().await {
                return value;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    };
    match tokio::time::timeout(timeout, poll).await {
        Ok(value) => value,
        Err(_) => panic!("not true after {timeout:?}: {what}"),
    }
}

/// `/metrics` of an edge (`edge.metrics` at `addr`), checked to be Prometheus text.
pub async fn scrape(addr: &str) -> String {
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape /metrics");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    r.text().await.expect("body")
}

/// The value of the series `name{labels}` exactly as written, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
