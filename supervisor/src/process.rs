//! Spinlet processes: started in their own process group with a cleared environment and output to
//! a log file; health-checked over HTTP; stopped with SIGTERM, then SIGKILL after a grace.

use crate::build::runner::RunAs;
use crate::build::start::SELF;
use crate::release::{Release, Toolchain};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use spinforge_state::config::AppConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How often a starting spinlet is probed: short, since it is what a cold request waits on.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// One probe's own limit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the release's start command on `port`.
pub fn spawn(
    app: &AppConfig,
    release: &Release,
    tools: &Toolchain,
    port: u16,
    home: &Path,
    log: &Path,
    run_as: Option<RunAs>,
) -> std::io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let (program, args) = release.info.start.split_first().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the release has an empty start command",
        )
    })?;
    // Static sites are served by this very binary (`spinforge static-serve`).
    let mut cmd = if program == SELF {
        Command::new(std::env::current_exe()?)
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .current_dir(&release.dir)
        .env_clear()
        .env("PATH", tools.path_for(&release.dir))
        .env("HOME", home)
        .env("NODE_ENV", "production");
    for (k, v) in &app.env {
        cmd.env(k, v.expose());
    }
    if let Some(bytes) = app.memory {
        // Until cgroups enforce `memory`, keep V8's heap to three quarters of it.
        let heap_mb = (bytes / (1 << 20)) * 3 / 4;
        let user = app
            .env
            .get("NODE_OPTIONS")
            .map(|v| v.expose().to_string())
            .unwrap_or_default();
        cmd.env(
            "NODE_OPTIONS",
            format!("{user} --max-old-space-size={heap_mb}").trim(),
        );
    }
    cmd.env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own group: signals reach the whole tree (sh -c, npm, workers), and a Ctrl-C at our
        // terminal does not reach it.
        .process_group(0);
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd.spawn()
}

/// SIGTERM to the process group, SIGKILL at `kill_at` if it has not exited by then.
pub async fn stop(child: &mut Child, kill_at: Instant) -> Option<ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok(); // already reaped
    };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    match tokio::time::timeout_at(kill_at, child.wait()).await {
        Ok(status) => {
            // Leftover children of the group (a worker the app forked) go too.
            let _ = killpg(group, Signal::SIGKILL);
            status.ok()
        }
        Err(_) => {
            tracing::warn!(pid, "spinlet did not stop after SIGTERM; killing it");
            let _ = killpg(group, Signal::SIGKILL);
            child.wait().await.ok()
        }
    }
}

/// Polls `GET path` on the port until an answer below 500 or `deadline`.
pub async fn wait_healthy(port: u16, path: &str, deadline: Instant) -> Result<(), String> {
    loop {
        let last = match tokio::time::timeout(PROBE_TIMEOUT, probe(port, path)).await {
            Ok(Ok(status)) if status < 500 => return Ok(()),
            Ok(Ok(status)) => format!("answered {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "probe timed out".into(),
        };
        if Instant::now() + PROBE_INTERVAL >= deadline {
            return Err(format!(
                "no healthy answer on port {port} at {path} before the health-check timeout ({last})"
            ));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// One `GET` over HTTP/1.1 to a spinlet; returns the status code.
async fn probe(port: u16, path: &str) -> std::io::Result<u16> {
    probe_addr(SocketAddr::from(([127, 0, 0, 1], port)), "localhost", path).await
}

/// One `GET path` over HTTP/1.1 to `addr` with `Host: host`; returns the status code. No deadline
/// of its own: the caller puts one around it.
pub async fn probe_addr(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: spinforge-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let read = s.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
    head.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}
