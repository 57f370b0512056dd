//! Releases: numbered, immutable folders under `data_dir/apps/<app>/releases/<n>/`, each with a
//! `release.json` that says what it is and how to start it (built by [`crate::build`]); and the
//! toolchain builds and spinlets use.

use serde::{Deserialize, Serialize};
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

/// Deletes all but the newest `keep` releases (never fewer than one).
pub async fn prune_releases(releases: &Path, keep: usize) -> Vec<u64> {
    let all = list_releases(releases).await;
    let keep = keep.max(1);
    let mut removed = Vec::new();
    if all.len() <= keep {
        return removed;
    }
    for old in &all[..all.len() - keep] {
        match tokio::fs::remove_dir_all(&old.dir).await {
            Ok(()) => removed.push(old.info.number),
            Err(e) => {
                tracing::warn!(release = %old.dir.display(), error = %e, "cannot remove an old release")
            }
        }
    }
    removed
}
