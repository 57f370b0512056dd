//! Spinlet processes: started in their own session and process group, with a cleared
//! environment, as the app's own user (see [`crate::users`]), inside their cgroup (see
//! [`crate::cgroup`]) and with output appended to the app's log; health-checked over HTTP;
//! stopped with SIGTERM, then SIGKILL after a grace.

use crate::build::runner::RunAs;
use crate::build::start::SELF;
use crate::cgroup::{self, Cgroup, Limits};
use crate::release::{Release, Toolchain};
use crate::{logs, users};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use spinforge_state::config::AppConfig;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
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

/// A started spinlet process and the cgroup that limits it (none without cgroups or limits).
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub cgroup: Option<Cgroup>,
}

/// Starts the release's start command on `port` as spinlet `spinlet_id`.
///
/// `run_as` is `supervisor.run_as` as resolved at start: when set, the app runs as its own user
/// id instead (its home, log and release are that id's alone).
pub fn spawn(
    app: &AppConfig,
    release: &Release,
    tools: &Toolchain,
    port: u16,
    data_dir: &Path,
    run_as: Option<RunAs>,
    spinlet_id: &str,
) -> std::io::Result<Spawned> {
    let user = users::for_app(data_dir, &app.name, run_as)?;
    let app_dir = data_dir.join("apps").join(&app.name);
    let home = app_dir.join("home");
    std::fs::create_dir_all(&home)?;
    if user.is_some() {
        // Other apps cannot enter the app's folder: releases, home and caches are under it.
        users::hand_over(&app_dir, user, 0o700)?;
        users::hand_over(&home, user, 0o700)?;
        hand_release_over(&release.dir, user)?;
    }
    let out = logs::open_append(&logs::path(data_dir, &app.name), user)?;
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
        .env("HOME", &home)
        .env("NODE_ENV", "production");
    for (k, v) in &app.env {
        cmd.env(k, v.expose());
    }
    if let Some(bytes) = app.memory {
        // V8 collects before its heap reaches three quarters of the limit, instead of growing
        // into the cgroup's OOM kill (and without cgroups this is the only memory cap).
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
        .env(crate::spinlet::SPINLET_ENV, spinlet_id)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid);
    }
    let limits = Limits {
        memory: app.memory,
        cpu: app.cpu,
    };
    let cgroup = Cgroup::create(&app.name, spinlet_id, limits).map_err(std::io::Error::other)?;
    let procs = match &cgroup {
        Some(cg) => cg.procs_files().map_err(std::io::Error::other)?,
        None => Vec::new(),
    };
    let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    in_child(&mut cmd, fds);
    let spawned = cmd.spawn();
    drop(procs); // the child has its own copies until exec (they are close-on-exec)
    match spawned {
        Ok(child) => Ok(Spawned { child, cgroup }),
        Err(e) => {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            Err(e)
        }
    }
}

/// A release built before the app had its own user (or before `run_as` was set) is handed to
/// it once; the owner of the release folder says whether that is needed.
fn hand_release_over(dir: &Path, user: Option<RunAs>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(u) = user else { return Ok(()) };
    if std::fs::metadata(dir)?.uid() == u.uid {
        return Ok(());
    }
    tracing::info!(release = %dir.display(), uid = u.uid, "handing the release to the app's user");
    // No link followed, no file with other hard links changed (see chown_tree).
    spinforge_unpack::chown_tree(dir, u.uid, u.gid).map_err(std::io::Error::other)
}

/// Between fork and exec, in the child: a session of its own (so its process group is its own
/// and no terminal's signals reach it), no core dumps (they would hold the app's secrets), and
/// into its cgroup by writing `0` (itself) to each `cgroup.procs` opened by the supervisor — so
/// the app's first instruction already runs limited. A failure aborts the spawn.
#[allow(unsafe_code)]
fn in_child(cmd: &mut Command, procs: Vec<i32>) {
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setsid, setrlimit, write) on memory allocated before the fork; it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            for &fd in &procs {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Why a spinlet ended, for logs and crash reasons: the kernel's OOM kill is named as such.
pub fn exit_reason(status: &str, cgroup: Option<&Cgroup>) -> String {
    match cgroup {
        Some(cg) if cg.oom_killed() => {
            let limit = cg
                .limits()
                .memory
                .map(|b| format!(" (limit {})", cgroup::show_size(b)))
                .unwrap_or_default();
            format!("out of memory{limit}: killed by the kernel ({status})")
        }
        _ => status.to_string(),
    }
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
