//! Releases: numbered, immutable folders under `data_dir/apps/<app>/releases/<n>/`, each with a
//! `release.json` that says what it is and how to start it (built by [`crate::build`]); and the
//! toolchain builds and spinlets use.

use serde::{Deserialize, Serialize};
use spinforge_state::config::AppConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `release.json`: what a release is and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub number: u64,
    /// `express`, `next`, `remix`, `static` or `node`.
    pub framework: String,
    /// argv; the first element is a program path, or `@spinforge` for this binary.
    pub start: Vec<String>,
    /// Where the source came from (a git URL without its password).
    pub source: String,
    /// The source's identity: the checksum of a folder or archive, or the git commit.
    pub source_checksum: String,
    /// The git commit, for git sources.
    #[serde(default)]
    pub source_commit: Option<String>,
    /// blake3 of the lockfile, when there is one.
    #[serde(default)]
    pub lockfile_hash: Option<String>,
    #[serde(default)]
    pub package_manager: Option<String>,
    #[serde(default)]
    pub typescript: bool,
    /// The Node version it was built with.
    #[serde(default)]
    pub node_version: String,
    /// What in the config shaped this build (`framework`, `spa`): a change rebuilds.
    #[serde(default)]
    pub build_config: String,
    /// The id of the build that made it.
    #[serde(default)]
    pub build_id: String,
    pub build_ms: u64,
    pub created_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Release {
    pub dir: PathBuf,
    pub info: ReleaseInfo,
}

/// Paths and programs the builder needs.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub node: PathBuf,
    pub npm: PathBuf,
    /// For yarn and pnpm; `None` if not installed (those projects then fail with a clear error).
    pub corepack: Option<PathBuf>,
    /// For git sources.
    pub git: Option<PathBuf>,
    /// `node --version`, e.g. `v20.11.1`.
    pub node_version: String,
}

impl Toolchain {
    /// Finds `node` and `npm` on PATH.
    pub fn discover() -> Result<Toolchain, String> {
        let find = |name: &str| {
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|dir| dir.join(name))
                        .find(|p| p.is_file())
                })
                .ok_or_else(|| format!("`{name}` is not on PATH: install Node.js 18 or newer"))
        };
        let node = find("node")?;
        let node_version = std::process::Command::new(&node)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Ok(Toolchain {
            npm: find("npm")?,
            corepack: find("corepack").ok(),
            git: find("git").ok(),
            node,
            node_version,
        })
    }

    /// The PATH spinlets and builds get: the release's own binaries, then node's folder and the
    /// system's.
    pub fn path_for(&self, release_dir: &Path) -> String {
        let node_dir = self
            .node
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        format!(
            "{}:{node_dir}:/usr/local/bin:/usr/bin:/bin",
            release_dir.join("node_modules/.bin").display()
        )
    }
}

/// Where an app's releases live: `data_dir/apps/<app>/releases`.
pub fn releases_dir(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(app).join("releases")
}

/// The releases in `releases`, oldest first; half-written ones (`.build-*`) are not releases.
pub async fn list_releases(releases: &Path) -> Vec<Release> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(releases).await else {
        return out;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let dir = entry.path();
        let Some(number) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(text) = tokio::fs::read_to_string(dir.join("release.json")).await else {
            continue;
        };
        match serde_json::from_str::<ReleaseInfo>(&text) {
            Ok(info) if info.number == number => out.push(Release { dir, info }),
            _ => {
                tracing::warn!(release = %dir.display(), "ignoring a release with an unreadable release.json")
            }
        }
    }
    out.sort_by_key(|r| r.info.number);
    out
}

/// A rollback's choice, kept on disk (`releases/pin.json`) so that it outlives the supervisor:
/// a restarted supervisor's check build reuses the newest release when the source is unchanged,
/// and without the pin it would roll out that release over the rollback. A pin holds while the
/// app's build definition is the one it was made under, and goes with the next deploy or source
/// edit (as a rollback on Heroku holds until the next deploy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub release: u64,
    /// [`build_definition`] when the rollback was asked for.
    pub definition: String,
}

/// Whether two definitions build the same: what a build makes depends on the source, the
/// framework and `spa` alone (a change of env or limits rolls out the same release).
pub fn same_build(a: &AppConfig, b: &AppConfig) -> bool {
    a.source == b.source && a.framework == b.framework && a.spa == b.spa
}

/// What [`same_build`] compares, as a digest (kept on disk with a rollback's pin: a git URL's
/// password never reaches the disk this way).
pub fn build_definition(app: &AppConfig) -> String {
    let text = format!("{}\n{}", app.source, build_config(app));
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// What in the config shapes a build besides its source, as [`ReleaseInfo::build_config`]
/// records it.
pub fn build_config(app: &AppConfig) -> String {
    format!("framework={};spa={}", app.framework.as_str(), app.spa)
}

const PIN_FILE: &str = "pin.json";

/// The pin in `releases`, if there is a readable one (an unreadable one is no pin, said once).
pub async fn read_pin(releases: &Path) -> Option<Pin> {
    let path = releases.join(PIN_FILE);
    let text = tokio::fs::read_to_string(&path).await.ok()?;
    match serde_json::from_str(&text) {
        Ok(pin) => Some(pin),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable rollback pin");
            None
        }
    }
}

/// Writes (`Some`) or removes (`None`) the pin in `releases`; a write is whole or absent for
/// any reader (a temporary file renamed over it).
pub async fn write_pin(releases: &Path, pin: Option<&Pin>) -> std::io::Result<()> {
    let path = releases.join(PIN_FILE);
    let Some(pin) = pin else {
        return match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    };
    tokio::fs::create_dir_all(releases).await?;
    let temp = releases.join(".pin.json.tmp");
    let text = serde_json::to_vec(pin).map_err(std::io::Error::other)?;
    tokio::fs::write(&temp, text).await?;
    tokio::fs::rename(&temp, &path).await
}

/// The release a rollback without a number goes to: the newest one older than `current`.
pub fn previous(numbers: &[u64], current: Option<u64>) -> Option<u64> {
    let current = current?;
    numbers.iter().copied().filter(|n| *n < current).max()
}

/// The releases pruning removes: all but the newest `keep` (at least one), and never the one
/// that serves, the one a rollback from it would pick ([`previous`]), or one in `in_use`
/// (releases spinlets still run, draining ones included).
pub fn prunable(
    numbers: &[u64],
    keep: usize,
    serving: Option<u64>,
    in_use: &BTreeSet<u64>,
) -> Vec<u64> {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    let old = sorted.len().saturating_sub(keep.max(1));
    let rollback = previous(&sorted, serving);
    sorted[..old]
        .iter()
        .copied()
        .filter(|n| Some(*n) != serving && Some(*n) != rollback && !in_use.contains(n))
        .collect()
}

/// Removes what [`prunable`] names. Each release is renamed out of the list first (instant, so
/// it is gone whole for every reader), then deleted.
pub async fn prune_releases(
    releases: &Path,
    keep: usize,
    serving: Option<u64>,
    in_use: &BTreeSet<u64>,
) -> Vec<u64> {
    sweep_pruned(releases).await;
    let all = list_releases(releases).await;
    let numbers: Vec<u64> = all.iter().map(|r| r.info.number).collect();
    let mut removed = Vec::new();
    for number in prunable(&numbers, keep, serving, in_use) {
        let dir = releases.join(number.to_string());
        let doomed = releases.join(format!(".pruned-{number}"));
        let gone = match tokio::fs::rename(&dir, &doomed).await {
            Ok(()) => tokio::fs::remove_dir_all(&doomed).await,
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => removed.push(number),
            Err(e) => {
                tracing::warn!(release = %dir.display(), error = %e, "cannot remove an old release")
            }
        }
    }
    removed
}

/// Folders a prune renamed but did not get to delete (the supervisor stopped in between).
async fn sweep_pruned(releases: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(releases).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_name().to_string_lossy().starts_with(".pruned-") {
            let _ = tokio::fs::remove_dir_all(entry.path()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_and_never_what_serves_or_a_rollback_would_pick() {
        let none = BTreeSet::new();
        let all = [1, 2, 3, 4, 5, 6];
        assert_eq!(prunable(&all, 3, Some(6), &none), [1, 2, 3]);
        // Rolled back to 1, then 6 was built (and did not get healthy): 1 serves.
        assert_eq!(prunable(&all, 3, Some(1), &none), [2, 3]);
        // Serving 2: a rollback goes to 1.
        assert_eq!(prunable(&all, 3, Some(2), &none), [3]);
        // keep 1: the one a rollback would pick stays.
        assert_eq!(prunable(&[1, 2], 1, Some(2), &none), Vec::<u64>::new());
        assert_eq!(prunable(&[1, 2, 3], 1, Some(3), &none), [1]);
        // keep 0 means 1; nothing serves yet.
        assert_eq!(prunable(&[1, 2], 0, None, &none), [1]);
        // In use by draining spinlets.
        assert_eq!(prunable(&all, 2, Some(6), &BTreeSet::from([2])), [1, 3, 4]);
        assert_eq!(previous(&all, Some(4)), Some(3));
        assert_eq!(previous(&all, Some(1)), None);
        assert_eq!(previous(&all, None), None);
    }

    #[tokio::test]
    async fn a_pin_is_written_whole_read_back_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let releases = dir.path().join("releases");
        assert_eq!(read_pin(&releases).await, None, "no pin, no folder");
        let pin = Pin {
            release: 3,
            definition: "d".repeat(64),
        };
        write_pin(&releases, Some(&pin)).await.expect("write");
        assert_eq!(read_pin(&releases).await, Some(pin));
        write_pin(&releases, None).await.expect("remove");
        write_pin(&releases, None)
            .await
            .expect("removing none is fine");
        assert_eq!(read_pin(&releases).await, None);
        // A torn or foreign file is no pin.
        std::fs::write(releases.join(PIN_FILE), b"{\"release\":").expect("write");
        assert_eq!(read_pin(&releases).await, None);
        let names: Vec<_> = std::fs::read_dir(&releases)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [PIN_FILE], "no temporary file is left");
    }
}
