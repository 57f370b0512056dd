//! Limits and isolation end to end (`spinforge up`, real node spinlets, real cgroups): a memory
//! hog is OOM-killed, reported and restarted while its neighbour keeps serving; a `cpu: 0.2` app
//! is throttled; under `run_as` one app cannot read another's environment, release or log; logs
//! rotate at their cap; a spinlet no record knows (its supervisor was killed before recording
//! it) is stopped when the next one starts. Needs root and cgroups (v1 or v2), as on the CI
//! machine.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::free_port;
use support::spinforge::{Spinforge, Workspace, alive, fixture, port_block};

fn up(ws: &Workspace, supervisor_extra: &str, apps: &str) -> Spinforge {
    let port = free_port();
    let yaml = format!(
        "edge:\n  listen_http: 127.0.0.1:{port}\n  grace: 4s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\n{supervisor_extra}apps:\n{apps}",
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    Spinforge::start(ws, "up", &path, Some(([127, 0, 0, 1], port).into()))
}

/// An always-on app block of the limits fixture.
fn app(name: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    domains: [{name}.test]\n    source: {}\n    idle_timeout: 0\n{extra}",
        fixture("limits").display()
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// GET `path` on app `host` until it answers 200 (the app builds and starts first).
async fn get_json(sf: &Spinforge, host: &str, path: &str) -> serde_json::Value {
    let http = sf.client();
    support::eventually(
        Duration::from_secs(60),
        format!("{host}{path} answers"),
        || {
            let http = http.clone();
            async move {
                let r = http.fetch(host, path).await;
                (r.status == 200).then(|| r.json())
            }
        },
    )
    .await
}

async fn pid_of(sf: &Spinforge, host: &str) -> u32 {
    get_json(sf, host, "/").await["pid"].as_u64().expect("pid") as u32
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit(')').next().expect("stat fields");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("Uid line")
}

/// The folder of the group `pid` is in, in the memory hierarchy (v1) or the unified one (v2).
fn memory_cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some(PathBuf::from(format!("/sys/fs/cgroup/memory{path}")));
        }
    }
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        return Some(PathBuf::from(format!("/sys/fs/cgroup{path}")));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_only_the_offender() {
    if !is_root() {
        eprintln!("skipped: cgroup limits need root");
        return;
    }
    let ws = Workspace::new();
    let sf = up(
        &ws,
        "",
        &(app("hog", "    memory: 64M\n") + &app("calm", "    memory: 128M\n")),
    );
    let hog = pid_of(&sf, "hog.test").await;
    let calm = pid_of(&sf, "calm.test").await;
    // Each spinlet is in its own group with its limit.
    let group = memory_cgroup_of(calm).expect("calm's memory cgroup");
    assert!(
        group.to_string_lossy().contains("spinforge/calm/calm-"),
        "{}",
        group.display()
    );
    let limit = ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .find_map(|f| std::fs::read_to_string(group.join(f)).ok())
        .expect("a memory limit file");
    assert_eq!(limit.trim(), (128u64 << 20).to_string());

    assert_eq!(get_json(&sf, "hog.test", "/hog").await["hogging"], true);
    // The supervisor names the OOM kill; measure how soon after the hog's last allocation.
    let began = Instant::now();
    let seen_at_ms = loop {
        if sf.log_text().contains("out of memory (limit 64M)") {
            break std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "no OOM reported:\n{}",
            sf.log_text()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(!alive(hog), "the hog was killed");
    let hog_log = std::fs::read_to_string(ws.data_dir().join("logs/hog.log")).expect("hog log");
    let last_alloc_ms: u64 = hog_log
        .lines()
        .filter_map(|l| l.rsplit_once(" at ").and_then(|(_, t)| t.parse().ok()))
        .next_back()
        .expect("the hog logged its allocations");
    let allocated = hog_log.lines().filter(|l| l.starts_with("hog ")).count() * 8;
    eprintln!(
        "OOM: reported {} ms after the hog's last allocation ({allocated} MB allocated before the kill)",
        seen_at_ms.saturating_sub(last_alloc_ms)
    );
    assert!(allocated <= 128, "killed near its 64M limit, not later");

    // Restarted with backoff, as a new process.
    let again = pid_of(&sf, "hog.test").await;
    assert_ne!(again, hog);
    // The neighbour never noticed.
    assert_eq!(pid_of(&sf, "calm.test").await, calm);
    let log = sf.log_text();
    assert_eq!(
        log.matches("starting spinlet app=calm").count(),
        1,
        "calm was never restarted:\n{log}"
    );
    assert_eq!(log.matches("out of memory").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limit_throttles() {
    if !is_root() {
        eprintln!("skipped: cgroup limits need root");
        return;
    }
    let ws = Workspace::new();
    let busy = "    env: { BUSY: \"1\" }\n";
    let sf = up(
        &ws,
        "",
        &(app("slow", &format!("{busy}    cpu: 0.2\n")) + &app("free", busy)),
    );
    let slow = pid_of(&sf, "slow.test").await;
    let free = pid_of(&sf, "free.test").await;
    let (s0, f0, t0) = (cpu_seconds(slow), cpu_seconds(free), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secs = t0.elapsed().as_secs_f64();
    let slow_share = (cpu_seconds(slow) - s0) / secs;
    let free_share = (cpu_seconds(free) - f0) / secs;
    eprintln!("CPU: cpu 0.2 app used {slow_share:.3} of a core; unlimited app {free_share:.3}");
    assert!(
        slow_share <= 0.3,
        "cpu: 0.2 must be throttled, got {slow_share:.3}"
    );
    assert!(slow_share >= 0.05, "it still runs: {slow_share:.3}");
    assert!(
        free_share > slow_share * 2.0,
        "the measurement sees an unlimited busy loop ({free_share:.3})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_cannot_read_each_other() {
    if !is_root() {
        eprintln!("skipped: per-app users need root");
        return;
    }
    let ws = Workspace::new();
    // The per-app users must be able to reach data_dir (tempdirs are 0700).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = "s3cret-value-of-a";
    let sf = up(
        &ws,
        "  run_as: nobody\n",
        &(app("a", &format!("    env: {{ SECRET_TOKEN: {secret} }}\n")) + &app("b", "")),
    );
    let a = get_json(&sf, "a.test", "/").await;
    let b = get_json(&sf, "b.test", "/").await;
    let (a_pid, b_pid) = (
        a["pid"].as_u64().expect("pid"),
        b["pid"].as_u64().expect("pid"),
    );
    let (a_uid, b_uid) = (uid_of(a_pid as u32), uid_of(b_pid as u32));
    assert_ne!(a_uid, 0);
    assert_ne!(a_uid, b_uid, "each app has its own user");
    let data = ws.data_dir().canonicalize().expect("data dir");
    let a_paths = [
        format!("/proc/{a_pid}/environ"),
        data.join("apps/a/releases/1/server.js")
            .display()
            .to_string(),
        data.join("apps/a/releases").display().to_string(),
        data.join("apps/a/home").display().to_string(),
        data.join("logs/a.log").display().to_string(),
        data.join("logs").display().to_string(),
    ];
    let own = [
        "/proc/self/environ".to_string(),
        data.join("apps/b/releases/1/server.js")
            .display()
            .to_string(),
    ];
    let query = a_paths
        .iter()
        .chain(&own)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let seen = get_json(&sf, "b.test", &format!("/peek?paths={query}")).await;
    eprintln!("what app b could read: {seen:#}");
    for p in &a_paths {
        let what = seen[p.as_str()].as_str().unwrap_or_default();
        assert!(
            what == "EACCES" || what == "EPERM",
            "app b got `{what}` for {p}"
        );
    }
    for p in &own {
        let what = seen[p.as_str()].as_str().unwrap_or_default();
        assert!(
            what.starts_with("read "),
            "b cannot read its own {p}: {what}"
        );
    }
    // The value reached a (root can see it) but no log.
    let environ = std::fs::read(format!("/proc/{a_pid}/environ")).expect("environ");
    assert!(String::from_utf8_lossy(&environ).contains(secret));
    assert!(!sf.log_text().contains(secret), "the env value was logged");
    let a_log = std::fs::read_to_string(data.join("logs/a.log")).unwrap_or_default();
    assert!(!a_log.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_rotate_at_the_cap() {
    let ws = Workspace::new();
    let sf = up(
        &ws,
        "  logs: { max_size: 8K, keep: 2 }\n",
        &app("chatty", ""),
    );
    let logs = ws.data_dir().join("logs");
    let size = |n: &str| std::fs::metadata(logs.join(n)).map(|m| m.len()).ok();
    for round in 1..=4 {
        get_json(&sf, "chatty.test", "/spam?kb=10").await;
        let began = Instant::now();
        // Rotated within a couple of the rotator's 1 s ticks.
        while size("chatty.log").unwrap_or(0) >= 8 << 10 {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "round {round}: chatty.log not rotated ({:?} bytes)",
                size("chatty.log")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The rotator may have copied it mid-burst, but only once past the cap.
        assert!(
            size("chatty.log.1").unwrap_or(0) >= 8 << 10,
            "round {round}"
        );
    }
    assert!(size("chatty.log.2").is_some(), "two kept");
    assert!(size("chatty.log.3").is_none(), "no more than `keep`");
    // The spinlet writes on into the same (truncated) file, from its start.
    get_json(&sf, "chatty.test", "/spam?kb=1").await;
    let len = size("chatty.log").expect("log");
    assert!((1000..8 << 10).contains(&len), "{len}");
    let head = std::fs::read(logs.join("chatty.log")).expect("log");
    assert_ne!(head[0], 0, "no hole of zeros where the old content was");
}

/// A supervisor killed between starting a spinlet and recording it leaves a process no record
/// knows, in a group of the app's: the next supervisor stops it (and removes the group) before
/// the app starts anything, so it holds no port and no release folder for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinlet_no_record_knows_is_stopped_when_the_next_supervisor_starts() {
    use std::os::unix::process::CommandExt as _;
    if !is_root() {
        eprintln!("skipped: cgroups need root");
        return;
    }
    let name = format!("orphan{}", std::process::id());
    let hierarchy = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    let group = hierarchy
        .join("spinforge")
        .join(&name)
        .join(format!("{name}-1-stray0"));
    std::fs::create_dir_all(&group).expect("make the stray spinlet's group");
    let mut stray = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("spawn the stray");
    std::fs::write(group.join("cgroup.procs"), stray.id().to_string()).expect("join the group");
    let ws = Workspace::new();
    let _sf = up(&ws, "", &app(&name, ""));
    let began = Instant::now();
    while stray.try_wait().expect("wait").is_none() {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the stray spinlet still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while group.exists() {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "its group is left: {}",
            group.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
