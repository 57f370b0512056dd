//! The hot deploy folder (`supervisor.deploy_dir`): an app folder (with a `spinforge.yaml` that
//! holds its app section) or a `.tar.gz` of one dropped there is built and deployed as the app
//! named after it; `<name>.deployed` or `<name>.failed` (with the reason) is written beside it.
//! Either is first written into `data_dir/deploys/<name>` by the builder's extractor (nothing
//! followed through a link, links out of it refused) and built from there; links dropped in the
//! folder itself are ignored.
//!
//! The folder is polled. Something is picked up only once it has stopped changing for
//! [`SETTLE`] (a folder still being copied keeps changing), and again whenever it changes after
//! that; the marker records what was deployed, so a restart does not deploy it twice.

use crate::control::{Origin, SupervisorHandle};
use spinforge_state::Store;
use spinforge_state::config::{AppSource, BuildLimits};
use spinforge_state::records::BuildState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tokio::time::Instant;

const POLL: Duration = Duration::from_secs(1);
/// How long an entry must stay unchanged before it is deployed.
const SETTLE: Duration = Duration::from_secs(2);
/// Deploys followed at once; more wait for the next poll.
const MAX_IN_FLIGHT: usize = 4;
/// The app section inside a dropped folder or archive.
const APP_FILE: &str = "spinforge.yaml";
/// Bytes of it read at most.
const MAX_APP_FILE: u64 = 1 << 20;

/// What an entry looked like: file count, bytes and newest change. Equal stamps: unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    files: u64,
    bytes: u64,
    newest: SystemTime,
}

impl Stamp {
    fn text(&self) -> String {
        let newest = self
            .newest
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{}:{}:{newest}", self.files, self.bytes)
    }
}

#[derive(Debug)]
struct Seen {
    stamp: Stamp,
    since: Instant,
}

pub struct Watcher {
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub handle: SupervisorHandle,
    pub store: Store,
    pub limits: BuildLimits,
}

impl Watcher {
    pub async fn run(self) {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot create supervisor.deploy_dir; hot deploy is off");
            return;
        }
        tracing::info!(dir = %self.dir.display(), "watching the deploy folder");
        let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut busy: Vec<PathBuf> = Vec::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut poll = tokio::time::interval(POLL);
        loop {
            poll.tick().await;
            while let Ok(path) = done_rx.try_recv() {
                busy.retain(|p| *p != path);
            }
            while in_flight.try_join_next().is_some() {}
            let entries = match scan(&self.dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the deploy folder");
                    continue;
                }
            };
            seen.retain(|p, _| entries.iter().any(|(q, _)| q == p));
            for (path, stamp) in entries {
                let now = Instant::now();
                let entry = seen
                    .entry(path.clone())
                    .or_insert(Seen { stamp, since: now });
                if entry.stamp != stamp {
                    *entry = Seen { stamp, since: now };
                    continue;
                }
                if now.duration_since(entry.since) < SETTLE || busy.contains(&path) {
                    continue;
                }
                if marker_stamp(&path).as_deref() == Some(stamp.text().as_str()) {
                    continue; // deployed (or failed) as it is now
                }
                if in_flight.len() >= MAX_IN_FLIGHT {
                    break;
                }
                busy.push(path.clone());
                let job = Job {
                    path: path.clone(),
                    stamp,
                    data_dir: self.data_dir.clone(),
                    handle: self.handle.clone(),
                    store: self.store.clone(),
                    limits: self.limits.clone(),
                };
                let done = done_tx.clone();
                in_flight.spawn(async move {
                    job.run().await;
                    let _ = done.send(path);
                });
            }
        }
    }
}

/// Candidate entries and their stamps: folders holding `spinforge.yaml`, and `.tar.gz`/`.tgz`
/// files. Hidden names and our own markers are skipped.
fn scan(dir: &Path) -> std::io::Result<Vec<(PathBuf, Stamp)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.file_type().is_symlink() {
            continue; // a link to what its dropper may not read: never followed
        }
        if meta.is_dir() {
            if std::fs::symlink_metadata(path.join(APP_FILE)).is_ok_and(|m| m.is_file()) {
                out.push((path, tree_stamp(&entry.path())?));
            }
        } else if archive_name(name).is_some() {
            out.push((
                path,
                Stamp {
                    files: 1,
                    bytes: meta.len(),
                    newest: meta.modified()?,
                },
            ));
        }
    }
    Ok(out)
}

fn archive_name(file: &str) -> Option<&str> {
    file.strip_suffix(".tar.gz")
        .or_else(|| file.strip_suffix(".tgz"))
}

fn tree_stamp(root: &Path) -> std::io::Result<Stamp> {
    let mut stamp = Stamp {
        files: 0,
        bytes: 0,
        newest: SystemTime::UNIX_EPOCH,
    };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                if !crate::build::source::SKIPPED
                    .iter()
                    .any(|s| entry.file_name() == *s)
                {
                    stack.push(entry.path());
                }
                continue;
            }
            stamp.files += 1;
            stamp.bytes += meta.len();
            stamp.newest = stamp.newest.max(meta.modified()?);
        }
    }
    Ok(stamp)
}

/// The app name an entry deploys as: the folder name, or the archive name without `.tar.gz`.
fn app_name(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    Some(archive_name(name).unwrap_or(name))
}

fn marker(path: &Path, kind: &str) -> PathBuf {
    let name = app_name(path).unwrap_or("app");
    path.with_file_name(format!("{name}.{kind}"))
}

/// The stamp recorded in the entry's marker (its first line), if it has one.
fn marker_stamp(path: &Path) -> Option<String> {
    ["deployed", "failed"].iter().find_map(|kind| {
        let text = std::fs::read_to_string(marker(path, kind)).ok()?;
        text.lines()
            .next()
            .and_then(|l| l.strip_prefix("stamp: "))
            .map(str::to_string)
    })
}

struct Job {
    path: PathBuf,
    stamp: Stamp,
    data_dir: PathBuf,
    handle: SupervisorHandle,
    store: Store,
    limits: BuildLimits,
}

impl Job {
    async fn run(self) {
        let outcome = self.deploy().await;
        let (kind, stale) = match &outcome {
            Ok(_) => ("deployed", "failed"),
            Err(_) => ("failed", "deployed"),
        };
        let body = match &outcome {
            Ok(release) => format!("release: {release}\n"),
            Err(reason) => format!("error: {reason}\n"),
        };
        let text = format!("stamp: {}\n{body}", self.stamp.text());
        let _ = std::fs::remove_file(marker(&self.path, stale));
        if let Err(e) = std::fs::write(marker(&self.path, kind), text) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the deploy marker");
        }
        match outcome {
            Ok(release) => {
                tracing::info!(path = %self.path.display(), release, "hot deploy done")
            }
            Err(reason) => {
                tracing::warn!(path = %self.path.display(), %reason, "hot deploy failed")
            }
        }
    }

    /// Deploys the entry; the release now serving, or why not.
    async fn deploy(&self) -> Result<u64, String> {
        let name = app_name(&self.path)
            .ok_or("the entry has no usable name")?
            .to_string();
        // Written by the builder's own extractor (spinforge_unpack) into a folder of ours — a
        // folder copied, an archive unpacked — so that its spinforge.yaml can be read and what
        // gets built no longer changes under the build. That copy is the app's source.
        let folder = self.data_dir.join("deploys").join(&name);
        let _ = std::fs::remove_dir_all(&folder);
        let is_folder = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir());
        let (from, to, max) = (
            self.path.clone(),
            folder.clone(),
            self.limits.max_archive_size,
        );
        tokio::task::spawn_blocking(move || {
            if is_folder {
                crate::build::source::copy_dropped_folder(&from, &to)
            } else {
                crate::build::source::extract_tarball(&from, &to, max)
            }
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        // Not through a link: `spinforge.yaml -> /etc/shadow` would quote its lines in errors.
        let section = spinforge_unpack::read_small(&folder, APP_FILE, MAX_APP_FILE)
            .map_err(|e| format!("cannot read {APP_FILE}: {e}"))?;
        let app = self
            .handle
            .put_app_from(&name, &section, Origin::DeployDir)
            .await
            .map_err(|e| e.to_string())?;
        let build = self
            .handle
            .deploy(&name, Some(AppSource::Directory(folder)))
            .await
            .map_err(|e| e.to_string())?;
        let release = self.wait_build(&build).await?;
        // Built: the release serves once its spinlets are healthy (or at the next wake of an
        // idle app, which counts as deployed: the route names it).
        let deadline = Instant::now() + app.config.health_check.timeout + Duration::from_secs(30);
        loop {
            let current = self
                .store
                .app(&name)
                .await
                .ok()
                .flatten()
                .and_then(|a| a.current_release);
            if current == Some(release) {
                return Ok(release);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "release {release} was built but did not get healthy; the previous release keeps serving (see logs/{name}.log)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_build(&self, id: &str) -> Result<u64, String> {
        let deadline = Instant::now() + self.limits.timeout + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.store.build(id).await
                && status.state.is_final()
            {
                return match (status.state, status.release) {
                    (BuildState::Succeeded, Some(release)) => Ok(release),
                    _ => Err(status
                        .error
                        .unwrap_or_else(|| format!("build {}", status.state.as_str()))),
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("build {id} did not finish in time"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
