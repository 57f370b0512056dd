//! Memory and CPU limits per spinlet with Linux control groups.
//!
//! Each spinlet gets its own group `spinforge/<app>/<spinlet-id>`: one folder on cgroup v2
//! (`/sys/fs/cgroup` unified), or one in each v1 hierarchy we use (memory, cpu, cpuacct). The
//! limits are written before the child starts, and the child joins the group itself between
//! `fork` and `exec` (through files opened here, see [`Cgroup::procs_files`]), so it never runs
//! unlimited. Groups of live spinlets are left alone by a restarting supervisor; empty ones are
//! removed when their spinlet has exited (or found stale on a later create).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Our subtree in every hierarchy.
const BASE: &str = "spinforge";
/// CFS period for `cpu`: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;
/// An empty group older than this, found beside a new one, is left over from a killed
/// supervisor and removed. (Younger ones may be another supervisor's, between mkdir and spawn.)
const STALE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("`{0}` cannot name a cgroup (empty, `.`/`..`, or contains `/`)")]
    BadName(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.display().to_string();
    move |source| CgroupError::Io { what, path, source }
}

/// What a spinlet may use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (RAM plus swap).
    pub memory: Option<u64>,
    /// Cores (`0.5`: half of one).
    pub cpu: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu.is_none()
    }
}

/// Which cgroup layout the host has, found once.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Unified hierarchy; our base folder (controllers enabled down to it).
    V2 { base: PathBuf },
    /// Per-controller hierarchies: our base folder in each (memory, cpu, cpuacct; a co-mounted
    /// `cpu,cpuacct` appears once, as both).
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
    /// No usable cgroups (not root, or not mounted): limits are not enforced.
    None { why: String },
}

/// The host's layout, detected on first use.
pub fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let layout = detect(Path::new("/sys/fs/cgroup"), Path::new("/proc/self/mountinfo"));
        match &layout {
            Layout::None { why } => tracing::warn!(
                reason = %why,
                "cgroups are not usable: apps' `memory` and `cpu` are not enforced (memory only caps V8's heap)"
            ),
            other => tracing::info!(layout = ?other, "cgroups enforce apps' memory and cpu"),
        }
        layout
    })
}

fn detect(root: &Path, mountinfo: &Path) -> Layout {
    if !nix::unistd::geteuid().is_root() {
        return Layout::None {
            why: "SpinForge is not running as root".into(),
        };
    }
    if root.join("cgroup.controllers").is_file() {
        let base = root.join(BASE);
        return match enable_v2(root, &base) {
            Ok(()) => Layout::V2 { base },
            Err(e) => Layout::None {
                why: format!("cgroup v2: {e}"),
            },
        };
    }
    let text = std::fs::read_to_string(mountinfo).unwrap_or_default();
    let mounts = v1_mounts(&text);
    let find = |controller: &str| {
        let mount = mounts
            .iter()
            .find(|(_, cs)| cs.iter().any(|c| c == controller))?;
        let base = mount.0.join(BASE);
        match std::fs::create_dir_all(&base) {
            Ok(()) => Some(base),
            Err(e) => {
                tracing::warn!(controller, error = %e, "cannot create our cgroup folder");
                None
            }
        }
    };
    let (memory, cpu, cpuacct) = (find("memory"), find("cpu"), find("cpuacct"));
    if memory.is_none() && cpu.is_none() {
        return Layout::None {
            why: "no writable memory or cpu cgroup hierarchy is mounted".into(),
        };
    }
    Layout::V1 {
        memory,
        cpu,
        cpuacct,
    }
}

/// v1 mount points and their controllers, from `/proc/self/mountinfo`.
fn v1_mounts(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            if r.next()? != "cgroup" {
                return None;
            }
            let superopts = r.nth(1)?;
            let mountpoint = left.split_whitespace().nth(4)?;
            let controllers = superopts
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                .map(str::to_string)
                .collect();
            Some((PathBuf::from(unescape_mount(mountpoint)), controllers))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Makes `memory` and `cpu` available to groups under `base` (v2 hands controllers down one
/// level at a time through `cgroup.subtree_control`).
fn enable_v2(root: &Path, base: &Path) -> Result<(), String> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|e| format!("reading cgroup.controllers: {e}"))?;
    for c in ["memory", "cpu"] {
        if !available.split_whitespace().any(|a| a == c) {
            return Err(format!("the `{c}` controller is not available"));
        }
    }
    std::fs::create_dir_all(base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    write_str(&root.join("cgroup.subtree_control"), "+memory +cpu")
        .map_err(|e| format!("enabling memory and cpu at the root: {e}"))?;
    write_str(&base.join("cgroup.subtree_control"), "+memory +cpu")
        .map_err(|e| format!("enabling memory and cpu in {}: {e}", base.display()))
}

fn write_str(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

/// A cgroup path component must not climb out of our subtree.
fn check_name(name: &str) -> Result<&str, CgroupError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0', '\n']) {
        return Err(CgroupError::BadName(name.to_string()));
    }
    Ok(name)
}

/// One spinlet's group.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Every folder the spinlet joins (one on v2; one per hierarchy on v1).
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    v2: bool,
    limits: Limits,
}

impl Cgroup {
    /// Creates `spinforge/<app>/<spinlet>` and writes the limits; `None` when the host has no
    /// usable cgroups (a warning said so once) or there is nothing to limit.
    pub fn create(app: &str, spinlet: &str, limits: Limits) -> Result<Option<Cgroup>, CgroupError> {
        Self::create_in(layout(), app, spinlet, limits)
    }

    fn create_in(
        layout: &Layout,
        app: &str,
        spinlet: &str,
        limits: Limits,
    ) -> Result<Option<Cgroup>, CgroupError> {
        let rel = Path::new(check_name(app)?).join(check_name(spinlet)?);
        match layout {
            Layout::None { .. } => Ok(None),
            _ if limits.is_empty() => Ok(None),
            Layout::V2 { base } => {
                let app_dir = base.join(app);
                mkdir(&app_dir)?;
                sweep_stale(&app_dir);
                // Hand the controllers on to the spinlet's group.
                write_str(&app_dir.join("cgroup.subtree_control"), "+memory +cpu")
                    .map_err(io_err("enable controllers in", &app_dir))?;
                let dir = base.join(&rel);
                mkdir(&dir)?;
                let cg = Cgroup {
                    dirs: vec![dir.clone()],
                    memory: Some(dir.clone()),
                    cpuacct: Some(dir.clone()),
                    v2: true,
                    limits,
                };
                if let Err(e) = cg.write_v2(&dir) {
                    cg.remove();
                    return Err(e);
                }
                Ok(Some(cg))
            }
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
            } => {
                let mut cg = Cgroup {
                    dirs: Vec::new(),
                    memory: None,
                    cpuacct: None,
                    v2: false,
                    limits,
                };
                let mut join = |base: &Option<PathBuf>| -> Result<Option<PathBuf>, CgroupError> {
                    let Some(base) = base else { return Ok(None) };
                    let app_dir = base.join(app);
                    mkdir(&app_dir)?;
                    sweep_stale(&app_dir);
                    let dir = base.join(&rel);
                    mkdir(&dir)?;
                    if !cg.dirs.contains(&dir) {
                        cg.dirs.push(dir.clone());
                    }
                    Ok(Some(dir))
                };
                let made = (|| Ok::<_, CgroupError>((join(memory)?, join(cpu)?, join(cpuacct)?)))();
                let (mem_dir, cpu_dir, acct_dir) = match made {
                    Ok(d) => d,
                    Err(e) => {
                        cg.remove();
                        return Err(e);
                    }
                };
                cg.memory = mem_dir;
                cg.cpuacct = acct_dir;
                if let Err(e) = cg.write_v1(cpu_dir.as_deref()) {
                    cg.remove();
                    return Err(e);
                }
                Ok(Some(cg))
            }
        }
    }

    fn write_v2(&self, dir: &Path) -> Result<(), CgroupError> {
        if let Some(bytes) = self.limits.memory {
            let f = dir.join("memory.max");
            write_str(&f, &bytes.to_string()).map_err(io_err("write", &f))?;
            // No swapping around the limit.
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_str(&swap, "0").map_err(io_err("write", &swap))?;
            }
        }
        if let Some(cores) = self.limits.cpu {
            let f = dir.join("cpu.max");
            write_str(&f, &format!("{} {CPU_PERIOD_US}", quota_us(cores)))
                .map_err(io_err("write", &f))?;
        }
        Ok(())
    }

    fn write_v1(&self, cpu_dir: Option<&Path>) -> Result<(), CgroupError> {
        if let (Some(bytes), Some(dir)) = (self.limits.memory, &self.memory) {
            let f = dir.join("memory.limit_in_bytes");
            write_str(&f, &bytes.to_string()).map_err(io_err("write", &f))?;
            // RAM plus swap: without it the group would swap instead of being limited. Only
            // present when the kernel accounts swap; written after the RAM limit (it must not
            // be below it).
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write_str(&memsw, &bytes.to_string()).map_err(io_err("write", &memsw))?;
            }
        }
        if let (Some(cores), Some(dir)) = (self.limits.cpu, cpu_dir) {
            let period = dir.join("cpu.cfs_period_us");
            write_str(&period, &CPU_PERIOD_US.to_string()).map_err(io_err("write", &period))?;
            let quota = dir.join("cpu.cfs_quota_us");
            write_str(&quota, &quota_us(cores).to_string()).map_err(io_err("write", &quota))?;
        }
        Ok(())
    }

    /// `cgroup.procs` of every folder, opened for writing now (as the supervisor), for the child
    /// to write `0` into between fork and exec — after it dropped privileges, which the kernel
    /// allows because it checks the opener's credentials.
    pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(io_err("open", &p))
            })
            .collect()
    }

    /// The limits this group enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many processes of this group the kernel killed for exceeding its memory.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .map(|t| counter(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// Whether the kernel OOM-killed anything in this group.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills() > 0
    }

    /// CPU time the group has used.
    pub fn cpu_usage(&self) -> Option<Duration> {
        let dir = self.cpuacct.as_ref()?;
        if self.v2 {
            let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            Some(Duration::from_micros(counter(&text, "usage_usec")))
        } else {
            let text = std::fs::read_to_string(dir.join("cpuacct.usage")).ok()?;
            Some(Duration::from_nanos(text.trim().parse().ok()?))
        }
    }

    /// Folders of the group (for messages and tests).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Removes the group's folders once no process is left in them (a group still in use stays:
    /// `rmdir` refuses it); then the app's folder, if it is empty too. True when all are gone.
    pub fn remove(&self) -> bool {
        let mut all = true;
        for d in &self.dirs {
            if std::fs::remove_dir(d).is_err() && d.exists() {
                all = false;
            }
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent); // fails while other spinlets use it
            }
        }
        all
    }

    /// SIGKILLs every process still in the group (a worker that left the spinlet's process
    /// group with its own `setsid` cannot leave its cgroup). Returns how many were signalled.
    pub fn kill_all(&self) -> usize {
        let Some(dir) = self.dirs.first() else {
            return 0;
        };
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|&pid| {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
            })
            .count()
    }

    /// For a spinlet whose main process has exited: kills what is left in its group, then
    /// [`Cgroup::remove`], retried for a moment while the killed processes are on their way out.
    pub async fn remove_soon(&self) {
        let left = self.kill_all();
        if left > 0 {
            tracing::debug!(processes = left, dirs = ?self.dirs, "killed processes left in a spinlet's cgroup");
        }
        for _ in 0..20 {
            if self.remove() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::debug!(dirs = ?self.dirs, "cgroup still in use; left in place");
    }
}

/// `name value` lines (memory.events, memory.oom_control, cpu.stat).
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The CFS quota for `cores` per [`CPU_PERIOD_US`], at least the kernel's minimum of 1 ms.
fn quota_us(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", dir)(e)),
    }
}

/// Removes the groups of `app`'s spinlets other than `keep`: what a supervisor that was killed
/// left behind (spinlets it was stopping, that died while no supervisor ran, or that it started
/// and was killed before recording). Called before the app starts anything, so no group is half
/// made. A process still in such a group is a spinlet no record knows, which no supervisor would
/// ever stop: it is killed first (the group is ours, so is what runs in it), and the group removed
/// once it has gone.
pub fn sweep_app(app: &str, keep: &[&str]) {
    if check_name(app).is_err() {
        return;
    }
    let (bases, v2): (Vec<&PathBuf>, bool) = match layout() {
        Layout::V2 { base } => (vec![base], true),
        Layout::V1 {
            memory,
            cpu,
            cpuacct,
        } => (
            [memory, cpu, cpuacct].into_iter().flatten().collect(),
            false,
        ),
        Layout::None { .. } => return,
    };
    // Each gone spinlet's folders, in every hierarchy (the memory one first: `kill_all` reads it).
    let mut stale: std::collections::BTreeMap<std::ffi::OsString, Vec<PathBuf>> =
        Default::default();
    for base in bases {
        let Ok(entries) = std::fs::read_dir(base.join(app)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if e.file_type().is_ok_and(|t| t.is_dir()) && !keep.iter().any(|k| name == **k) {
                stale.entry(name).or_default().push(e.path());
            }
        }
    }
    for (spinlet, dirs) in stale {
        let group = Cgroup {
            dirs,
            memory: None,
            cpuacct: None,
            v2,
            limits: Limits::default(),
        };
        let killed = group.kill_all();
        if killed > 0 {
            tracing::warn!(%app, spinlet = ?spinlet, processes = killed, "killed the processes of a spinlet no record knew (its supervisor was killed before recording it)");
        }
        if !group.remove() {
            // Killed processes take a moment to leave their group.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { group.remove_soon().await });
            }
        }
    }
}

/// Removes empty groups under `app_dir` left by a supervisor that was killed (rmdir refuses
/// groups that still hold a process, so live spinlets keep theirs).
fn sweep_stale(app_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(app_dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let old = e
            .metadata()
            .ok()
            .filter(|m| m.is_dir())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// A size for messages: `256M`, `1G`, or bytes.
pub fn show_size(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_subtree() {
        for bad in ["", ".", "..", "a/b", "../x", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name("shop-1-00ab12").is_ok());
        let layout = Layout::V2 {
            base: PathBuf::from("/nonexistent"),
        };
        let limits = Limits {
            memory: Some(1 << 28),
            cpu: None,
        };
        assert!(matches!(
            Cgroup::create_in(&layout, "..", "x", limits),
            Err(CgroupError::BadName(_))
        ));
    }

    #[test]
    fn finds_v1_hierarchies_in_mountinfo() {
        let text = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
27 25 0:24 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
30 25 0:27 / /mnt/odd\\040dir rw - cgroup cgroup rw,pids";
        let m = v1_mounts(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].0, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m[0].1, vec!["cpu", "cpuacct"]);
        assert_eq!(m[1].1, vec!["memory"]);
        assert_eq!(m[2].1, vec!["xattr"], "name= is not a controller");
        assert_eq!(m[3].0, PathBuf::from("/mnt/odd dir"));
    }

    #[test]
    fn groups_and_limits_in_a_fake_v1_tree() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mem, cpu) = (tmp.path().join("memory"), tmp.path().join("cpu"));
        let layout = Layout::V1 {
            memory: Some(mem.clone()),
            cpu: Some(cpu.clone()),
            cpuacct: Some(cpu.clone()), // co-mounted: one folder, joined once
        };
        std::fs::create_dir_all(&mem).expect("mkdir");
        std::fs::create_dir_all(&cpu).expect("mkdir");
        // A real cgroupfs has these files in every new group; a plain folder does not.
        let limits = Limits {
            memory: Some(256 << 20),
            cpu: Some(0.25),
        };
        let cg = Cgroup::create_in(&layout, "shop", "shop-1-abc", limits)
            .expect("create")
            .expect("a group");
        assert_eq!(
            cg.dirs(),
            &[mem.join("shop/shop-1-abc"), cpu.join("shop/shop-1-abc")]
        );
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(
            read(mem.join("shop/shop-1-abc/memory.limit_in_bytes")),
            "268435456"
        );
        assert_eq!(read(cpu.join("shop/shop-1-abc/cpu.cfs_quota_us")), "25000");
        assert_eq!(
            read(cpu.join("shop/shop-1-abc/cpu.cfs_period_us")),
            "100000"
        );
        assert!(!cg.oom_killed());
        std::fs::write(
            mem.join("shop/shop-1-abc/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .expect("write");
        assert!(cg.oom_killed());
        std::fs::write(cpu.join("shop/shop-1-abc/cpuacct.usage"), "1500000000\n").expect("w");
        assert_eq!(cg.cpu_usage(), Some(Duration::from_millis(1500)));
        // Plain folders with files in them are "in use": nothing is removed.
        assert!(!cg.remove());
        assert!(mem.join("shop/shop-1-abc").exists());
    }

    #[test]
    fn groups_and_limits_in_a_fake_v2_tree() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("spinforge");
        std::fs::create_dir_all(&base).expect("mkdir");
        // Files the kernel would provide; plain files here.
        let layout = Layout::V2 { base: base.clone() };
        let limits = Limits {
            memory: Some(64 << 20),
            cpu: Some(1.5),
        };
        let cg = Cgroup::create_in(&layout, "api", "api-2-ff", limits)
            .expect("create")
            .expect("a group");
        let dir = base.join("api/api-2-ff");
        assert_eq!(cg.dirs(), std::slice::from_ref(&dir));
        let read = |p: PathBuf| std::fs::read_to_string(p).expect("read");
        assert_eq!(
            read(base.join("api/cgroup.subtree_control")),
            "+memory +cpu"
        );
        assert_eq!(read(dir.join("memory.max")), "67108864");
        assert_eq!(read(dir.join("cpu.max")), "150000 100000");
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n",
        )
        .expect("write");
        assert!(cg.oom_killed());
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .expect("write");
        assert_eq!(cg.cpu_usage(), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn nothing_to_limit_or_no_cgroups_means_no_group() {
        let none = Layout::None { why: "test".into() };
        let limits = Limits {
            memory: Some(1 << 28),
            cpu: Some(1.0),
        };
        assert!(
            Cgroup::create_in(&none, "a", "b", limits)
                .expect("ok")
                .is_none()
        );
        let v2 = Layout::V2 {
            base: PathBuf::from("/nonexistent"),
        };
        assert!(
            Cgroup::create_in(&v2, "a", "b", Limits::default())
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn counters_quotas_and_sizes() {
        assert_eq!(
            counter("low 0\nhigh 2\nmax 5\noom 1\noom_kill 3\n", "oom_kill"),
            3
        );
        assert_eq!(
            counter("usage_usec 1234\nuser_usec 1000", "usage_usec"),
            1234
        );
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(2.0), 200_000);
        assert_eq!(quota_us(0.001), 1000);
        assert_eq!(show_size(256 << 20), "256M");
        assert_eq!(show_size(1 << 30), "1G");
        assert_eq!(show_size(1000), "1000 bytes");
    }
}
