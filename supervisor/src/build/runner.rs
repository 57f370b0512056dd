//! Running build commands: a cleared environment, the build's user, its own process group, every
//! output line to the build log (file and store), and a deadline and a cancel that kill the whole
//! group.

use super::BuildError;
use spinforge_state::stop::CancellationToken;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Lines of the log kept in memory for error messages.
const TAIL_LINES: usize = 30;
/// A longer output line is cut (a minified bundle printed by mistake must not fill memory).
const MAX_LINE: usize = 4096;

/// The unprivileged user builds and spinlets run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// One build's log: a file under `data_dir/logs`, a copy of its tail in memory, and lines sent on
/// to the store (`build:log:{id}`) through a bounded channel — dropped, never waited for, when the
/// store falls behind; the file has everything.
#[derive(Debug)]
pub struct BuildLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    tail: Mutex<VecDeque<String>>,
    store: Option<mpsc::Sender<String>>,
    /// Values shown as `***` wherever they appear (env values, a git URL's credentials).
    secrets: Vec<String>,
    /// Where each step began ([`BuildLog::step`]).
    steps: Mutex<Vec<(&'static str, Instant)>>,
}

/// Steps a build marks at most (a handful are named).
const MAX_STEPS: usize = 16;

impl BuildLog {
    pub fn create(
        path: &Path,
        store: Option<mpsc::Sender<String>>,
        secrets: Vec<String>,
    ) -> std::io::Result<BuildLog> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Private: a build's output is its app's business.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(BuildLog {
            file: Mutex::new(Some(file)),
            ..BuildLog::without_file(path, store, secrets)
        })
    }

    /// A log whose file could not be created: lines go to the store (and the tail) only.
    pub fn without_file(
        path: &Path,
        store: Option<mpsc::Sender<String>>,
        secrets: Vec<String>,
    ) -> BuildLog {
        BuildLog {
            path: path.to_path_buf(),
            file: Mutex::new(None),
            tail: Mutex::new(VecDeque::new()),
            store,
            // Short values would blank out ordinary words.
            secrets: secrets.into_iter().filter(|s| s.len() >= 6).collect(),
            steps: Mutex::new(Vec::new()),
        }
    }

    /// Marks the start of step `name` (one word: `source`, `install`, `compile`, `prune`,
    /// `release`); it lasts until the next one starts or the build ends.
    pub fn step(&self, name: &'static str) {
        let mut steps = lock(&self.steps);
        if steps.len() < MAX_STEPS {
            steps.push((name, Instant::now()));
        }
    }

    /// How long each marked step took, the last one until `end`.
    pub fn step_times(&self, end: Instant) -> Vec<spinforge_state::records::BuildStep> {
        let steps = lock(&self.steps);
        steps
            .iter()
            .enumerate()
            .map(|(i, (name, began))| {
                let until = steps.get(i + 1).map_or(end, |next| next.1);
                spinforge_state::records::BuildStep {
                    name: (*name).to_string(),
                    ms: until.saturating_duration_since(*began).as_millis() as u64,
                }
            })
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line.
    pub fn line(&self, text: impl Into<String>) {
        let mut text: String = text.into();
        // Credentials in any URL a tool prints (git names the URL it could not authenticate).
        if let std::borrow::Cow::Owned(redacted) = spinforge_state::config::redact_userinfo(&text) {
            text = redacted;
        }
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" […]");
        }
        if let Some(f) = lock(&self.file).as_mut() {
            let _ = writeln!(f, "{text}");
        }
        {
            let mut tail = lock(&self.tail);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.clone());
        }
        if let Some(tx) = &self.store {
            let _ = tx.try_send(text);
        }
    }

    /// The last lines, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let tail = lock(&self.tail);
        let skip = tail.len().saturating_sub(lines);
        tail.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every command of one build shares.
#[derive(Debug, Clone)]
pub struct Runner {
    pub log: std::sync::Arc<BuildLog>,
    pub deadline: Instant,
    /// The build's time limit, for messages.
    pub limit: std::time::Duration,
    pub cancel: CancellationToken,
    pub run_as: Option<RunAs>,
    /// The environment of every command (nothing else of the supervisor's leaks in).
    pub env: Vec<(OsString, OsString)>,
}

impl Runner {
    /// The same build with another environment.
    pub fn with_env(&self, env: Vec<(OsString, OsString)>) -> Runner {
        Runner {
            env,
            ..self.clone()
        }
    }

    /// Fails if the build was cancelled or ran out of time (checked between steps).
    pub fn check(&self) -> Result<(), BuildError> {
        if self.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        if Instant::now() >= self.deadline {
            return Err(BuildError::TimedOut { limit: self.limit });
        }
        Ok(())
    }

    /// Runs `program args` in `dir`, logging its output; any exit but 0 is an error quoting the
    /// end of the log.
    pub async fn run(
        &self,
        program: &Path,
        args: &[&str],
        dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Result<(), BuildError> {
        self.check()?;
        let shown = format!(
            "{} {}",
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            args.join(" ")
        );
        self.log.line(format!("$ {shown}"));
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        let mut child = cmd.spawn().map_err(|source| BuildError::Io {
            what: format!("starting `{shown}`"),
            source,
        })?;
        let pid = child.id();
        let out = child.stdout.take();
        let err = child.stderr.take();
        let pump = async {
            tokio::join!(self.pump(out), self.pump(err));
        };
        let began = Instant::now();
        let mut group = GroupKill(pid);
        let outcome = tokio::select! {
            (status, ()) = async { tokio::join!(child.wait(), pump) } => Ok(status),
            _ = tokio::time::sleep_until(self.deadline) => Err(BuildError::TimedOut { limit: self.limit }),
            _ = self.cancel.cancelled() => Err(BuildError::Cancelled),
        };
        if outcome.is_ok() {
            // Reaped: from here on its pid may name another process.
            group.disarm();
        }
        match outcome {
            Ok(Ok(status)) if status.success() => {
                self.log.line(format!(
                    "[spinforge] `{shown}` done in {:.1}s",
                    began.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Ok(Ok(status)) => Err(BuildError::Command {
                command: shown,
                status: status.to_string(),
                log: self.log.path().display().to_string(),
                tail: self.log.tail(20),
            }),
            Ok(Err(source)) => Err(BuildError::Io {
                what: format!("waiting for `{shown}`"),
                source,
            }),
            Err(e) => {
                drop(group); // kills the group
                let _ = child.wait().await;
                self.log.line(format!("[spinforge] `{shown}` stopped: {e}"));
                Err(e)
            }
        }
    }

    async fn pump<R: AsyncRead + Unpin>(&self, stream: Option<R>) {
        let Some(stream) = stream else { return };
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader)
                .take(MAX_LINE as u64 * 4)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    // Progress bars redraw with \r: keep what was drawn last.
                    let text = text.trim_end_matches(['\n', '\r']);
                    let text = text.rsplit('\r').next().unwrap_or(text);
                    self.log.line(text.to_string());
                }
            }
        }
    }
}

/// SIGKILLs a running command's whole process group when dropped: also when the build's future
/// is dropped mid-command (`kill_on_drop` reaches only the direct child, and `npm run build` runs
/// the script as a grandchild).
struct GroupKill(Option<u32>);

impl GroupKill {
    /// The command was reaped: nothing to kill.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
