//! `node_modules` reused across builds: after an install, a copy (hard links, so it costs
//! little space and time) is kept under `data_dir/cache/node_modules/<app>/<key>/full/`, the key
//! being the lockfile, the dependency lists, the package manager and the Node version; after the
//! prune, the production set too (`prod/`). A later build with the same key links `full` into its
//! release instead of installing — or, when it has no build step that could change
//! `node_modules`, links `prod` and skips the prune as well. One key per app is kept.

use super::package_manager::PackageManager;
use spinforge_unpack::link_tree;
use std::path::{Path, PathBuf};

/// The cache key of an install.
pub fn key(
    pm: PackageManager,
    lockfile_hash: &str,
    manifest: &serde_json::Value,
    node_version: &str,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(pm.name().as_bytes());
    h.update(&[0]);
    h.update(lockfile_hash.as_bytes());
    h.update(&[0]);
    for k in [
        "dependencies",
        "devDependencies",
        "optionalDependencies",
        "overrides",
        "resolutions",
        "pnpm",
    ] {
        h.update(
            manifest
                .get(k)
                .map(|v| v.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        h.update(&[0]);
    }
    h.update(node_version.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

#[derive(Debug)]
pub struct NodeModulesCache {
    dir: PathBuf,
}

/// Marks a complete copy (a crash mid-copy leaves none).
const COMPLETE: &str = ".spinforge-complete";
/// Everything the install put in `node_modules`, dev dependencies included.
pub const FULL: &str = "full";
/// What is left after the prune.
pub const PROD: &str = "prod";

impl NodeModulesCache {
    pub fn new(data_dir: &Path, app: &str) -> Self {
        Self {
            dir: data_dir.join("cache/node_modules").join(app),
        }
    }

    /// Links the cached `node_modules` of `key` (`set`: [`FULL`] or [`PROD`]) into `release`;
    /// false if there is none.
    pub async fn restore(&self, key: &str, set: &str, release: &Path) -> bool {
        let cached = self.dir.join(key).join(set);
        if !cached.join(COMPLETE).is_file() {
            return false;
        }
        let (from, to) = (cached.join("node_modules"), release.join("node_modules"));
        let result = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&to);
            link_tree(&from, &to)
        })
        .await;
        match result {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reuse cached node_modules; installing");
                let _ = tokio::fs::remove_dir_all(release.join("node_modules")).await;
                false
            }
            Err(_) => false,
        }
    }

    /// Keeps `release/node_modules` as the `set` of `key`; saving [`FULL`] drops older keys.
    pub async fn save(&self, key: &str, set: &str, release: &Path) {
        let dir = self.dir.clone();
        let key = key.to_string();
        let set = set.to_string();
        let from = release.join("node_modules");
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir()) {
                return Ok(());
            }
            if set == FULL {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let target = dir.join(&key).join(&set);
            let _ = std::fs::remove_dir_all(&target);
            // `from` is what the app's install left: link_tree does not follow its name or any
            // link inside, so a `node_modules` turned into a link to elsewhere is refused.
            link_tree(&from, &target.join("node_modules")).map_err(std::io::Error::other)?;
            std::fs::write(target.join(COMPLETE), b"")?;
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "cannot keep node_modules for the next build");
        }
    }
}
