//! A spinlet's process, whether this supervisor started it or adopted it from a previous one.
//!
//! Either way a watcher task reports the exit once, on the app task's `exits` channel and on a
//! watch the stopper waits on; signals go to the process group by pid, so stopping needs no
//! `Child` handle. An adopted process is not our child: its exit is seen by polling /proc, and it
//! is only adopted if its start time still matches the record (a reused pid is someone else) and
//! it is the spinlet the record names — the leader of its own process group, started with
//! [`SPINLET_ENV`] naming it — so a record planted in a shared store cannot aim our signals at
//! another process.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Every spinlet starts with this variable set to its id (after the app's own env, so an app
/// cannot set it): what a supervisor checks before adopting a process a record names.
pub const SPINLET_ENV: &str = "SPINFORGE_SPINLET";

/// How often an adopted process (not our child, so no wait()) is checked for its exit.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// An exit: the spinlet id and how it ended.
pub type Exit = (String, String);

#[derive(Debug)]
pub struct Proc {
    pub pid: u32,
    /// Start time in clock ticks since boot (see [`start_ticks`]).
    pub start_ticks: u64,
    exited: watch::Receiver<Option<String>>,
}

impl Proc {
    /// Watches a child this supervisor spawned.
    pub fn watch_child(mut child: Child, id: String, exits: mpsc::UnboundedSender<Exit>) -> Proc {
        let pid = child.id().unwrap_or(0);
        let start_ticks = start_ticks(pid).unwrap_or(0);
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let _ = tx.send(Some(status.clone()));
            let _ = exits.send((id, status));
        });
        Proc {
            pid,
            start_ticks,
            exited,
        }
    }

    /// Takes over a spinlet a previous supervisor started: `None` unless `pid` is alive, started
    /// at `recorded_ticks`, and is spinlet `id` ([`is_spinlet`]).
    pub fn adopt(
        pid: u32,
        recorded_ticks: u64,
        id: String,
        releases: &Path,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> Option<Proc> {
        if pid == 0 || recorded_ticks == 0 || start_ticks(pid) != Some(recorded_ticks) {
            return None;
        }
        if !is_spinlet(pid, &id, releases) {
            tracing::warn!(spinlet = %id, pid, "a spinlet record names a process that is not that spinlet: not adopted, not signalled");
            return None;
        }
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            // Not our child: no wait(). Poll instead; a zombie or a different start time is gone.
            while start_ticks(pid) == Some(recorded_ticks) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            let status = "exited (adopted; status unknown)".to_string();
            let _ = tx.send(Some(status.clone()));
            let _ = exits.send((id, status));
        });
        Some(Proc {
            pid,
            start_ticks: recorded_ticks,
            exited,
        })
    }

    pub fn has_exited(&self) -> bool {
        self.exited.borrow().is_some()
    }

    /// Waits until the process has exited, at most until `deadline`; true if it has.
    pub async fn wait_until(&self, deadline: Instant) -> bool {
        let mut rx = self.exited.clone();
        tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// SIGTERM to the process group, SIGKILL at `kill_at` if it has not exited by then; returns
    /// how it ended.
    pub async fn stop(&self, kill_at: Instant) -> Option<String> {
        let group = Pid::from_raw(self.pid as i32);
        if !self.has_exited() {
            let _ = killpg(group, Signal::SIGTERM);
            if !self.wait_until(kill_at).await {
                tracing::warn!(
                    pid = self.pid,
                    "spinlet did not stop after SIGTERM; killing it"
                );
                let _ = killpg(group, Signal::SIGKILL);
                self.wait_until(Instant::now() + Duration::from_secs(5))
                    .await;
            }
        }
        // Leftovers of the group (a worker the app forked) go too.
        let _ = killpg(group, Signal::SIGKILL);
        self.exited.borrow().clone()
    }

    /// SIGKILL to the group now (a crash-test or a give-up), without waiting.
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
    }
}

/// `/proc/<pid>/stat` field `n` (1-based, `n` ≥ 3). The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from its last `)`.
fn stat_field<T: std::str::FromStr>(stat: &str, n: usize) -> Option<T> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

fn stat(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// `/proc/<pid>/stat` field 22: when the process started, in clock ticks since boot. `None` for
/// a process that is gone (or a zombie: it has exited).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = stat(pid)?;
    let state: String = stat_field(&stat, 3)?;
    if state == "Z" || state == "X" {
        return None;
    }
    stat_field(&stat, 22)
}

/// Whether `pid` is spinlet `id`: the leader of its own process group (what our signals go to)
/// whose environment at start held `SPINFORGE_SPINLET=<id>` — or, started by a supervisor from
/// before that variable (none in its environment), working in one of its app's `releases`.
pub fn is_spinlet(pid: u32, id: &str, releases: &Path) -> bool {
    // Field 5: the process group.
    let group_leader = stat(pid).and_then(|s| stat_field::<u32>(&s, 5)) == Some(pid);
    if !group_leader {
        return false;
    }
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let marker = format!("{SPINLET_ENV}={id}");
    let prefix = format!("{SPINLET_ENV}=");
    let mut vars = environ.split(|&b| b == 0);
    if vars.clone().any(|v| v == marker.as_bytes()) {
        return true;
    }
    !vars.any(|v| v.starts_with(prefix.as_bytes()))
        && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(releases))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adopts_only_the_same_process_and_sees_its_exit() {
        use std::os::unix::process::CommandExt as _;
        let child = std::process::Command::new("sleep")
            .arg("30")
            .env(SPINLET_ENV, "x")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // `spawn` may return before the new program's environment is in place (the parent of a
        // vfork resumes when the child's memory is replaced, a moment before execve fills it).
        let began = Instant::now();
        while std::fs::read(format!("/proc/{pid}/environ")).map_or(true, |e| e.is_empty()) {
            assert!(began.elapsed() < Duration::from_secs(5), "sleep never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ticks = start_ticks(pid).expect("alive");
        let (tx, mut exits) = mpsc::unbounded_channel();
        let releases = std::path::PathBuf::from("/nonexistent/apps/x/releases");
        assert!(
            Proc::adopt(pid, ticks + 1, "x".into(), &releases, tx.clone()).is_none(),
            "a different start time is a different process"
        );
        assert!(
            Proc::adopt(pid, ticks, "y".into(), &releases, tx.clone()).is_none(),
            "another spinlet's record"
        );
        // Not started as a spinlet (this test's own process, in its parent's group).
        let me = std::process::id();
        let my_ticks = start_ticks(me).expect("alive");
        assert!(Proc::adopt(me, my_ticks, "x".into(), &releases, tx.clone()).is_none());
        let proc = Proc::adopt(pid, ticks, "x".into(), &releases, tx).expect("adopted");
        assert!(!proc.has_exited());
        let ended = proc.stop(Instant::now() + Duration::from_secs(5)).await;
        assert!(ended.is_some(), "the exit was seen");
        let (id, _) = tokio::time::timeout(Duration::from_secs(5), exits.recv())
            .await
            .expect("reported in time")
            .expect("reported");
        assert_eq!(id, "x");
        // Reap our own child so the test leaves no zombie.
        let mut child = child;
        let _ = child.wait();
    }

    /// A spinlet from a supervisor before `SPINFORGE_SPINLET` is known by where it works.
    #[tokio::test]
    async fn a_spinlet_started_before_the_marker_is_known_by_its_release_folder() {
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let releases = dir.path().join("apps/old/releases");
        std::fs::create_dir_all(releases.join("1")).expect("mkdir");
        let spawn = |cwd: &Path| {
            std::process::Command::new("sleep")
                .arg("30")
                .current_dir(cwd)
                .env_remove(SPINLET_ENV)
                .process_group(0)
                .spawn()
                .expect("spawn sleep")
        };
        let (tx, _exits) = mpsc::unbounded_channel();
        let mut elsewhere = spawn(dir.path());
        let ticks = start_ticks(elsewhere.id()).expect("alive");
        assert!(Proc::adopt(elsewhere.id(), ticks, "x".into(), &releases, tx.clone()).is_none());
        let _ = elsewhere.kill();
        let _ = elsewhere.wait();
        let mut old = spawn(&releases.join("1"));
        let ticks = start_ticks(old.id()).expect("alive");
        let proc = Proc::adopt(old.id(), ticks, "x".into(), &releases, tx).expect("adopted");
        proc.stop(Instant::now() + Duration::from_secs(5)).await;
        let _ = old.wait();
    }
}
