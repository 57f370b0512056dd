//! Apps created through the admin API or the deploy folder, kept on disk so they survive restarts
//! of either store backend: `data_dir/managed/<app>.json` holds the app section as it was given
//! (env values included, so the file is 0600) and the source of the last deploy.

use crate::control::{ManagedApp, Origin};
use serde::{Deserialize, Serialize};
use spinforge_state::config::{AppSource, GitUrl};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The app section (JSON or YAML text).
    pub section: String,
    /// The last deployed source, if any.
    pub source: Option<SavedSource>,
    /// `api` or `deploy_dir`.
    pub origin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SavedSource {
    Directory {
        path: PathBuf,
    },
    Tarball {
        path: PathBuf,
    },
    Git {
        url: String,
        reference: Option<String>,
    },
}

impl SavedSource {
    pub fn from_app(source: &AppSource) -> Option<SavedSource> {
        Some(match source {
            AppSource::Directory(p) => SavedSource::Directory { path: p.clone() },
            AppSource::Tarball(p) => SavedSource::Tarball { path: p.clone() },
            AppSource::Git { url, reference } => SavedSource::Git {
                url: url.expose().to_string(),
                reference: reference.clone(),
            },
            AppSource::External(_) => return None,
        })
    }
}

impl From<SavedSource> for AppSource {
    fn from(s: SavedSource) -> AppSource {
        match s {
            SavedSource::Directory { path } => AppSource::Directory(path),
            SavedSource::Tarball { path } => AppSource::Tarball(path),
            SavedSource::Git { url, reference } => AppSource::Git {
                url: GitUrl::new(url),
                reference,
            },
        }
    }
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("managed")
}

pub fn path(data_dir: &Path, name: &str) -> PathBuf {
    dir(data_dir).join(format!("{name}.json"))
}

/// Where an app without a source yet expects its first upload; until it exists, the app waits.
pub fn awaiting_upload(data_dir: &Path, name: &str) -> AppSource {
    AppSource::Tarball(
        data_dir
            .join("uploads")
            .join(format!("{name}.awaiting.tar.gz")),
    )
}

impl Saved {
    pub fn read(data_dir: &Path, name: &str) -> Option<Saved> {
        let text = std::fs::read_to_string(path(data_dir, name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes atomically (temp file, then rename), readable by the owner only.
    pub fn write(&self, data_dir: &Path, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir(data_dir))?;
        let target = path(data_dir, name);
        let tmp = target.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(tmp, target)
    }
}

pub fn remove(data_dir: &Path, name: &str) {
    let _ = std::fs::remove_file(path(data_dir, name));
}

/// Every saved app that still parses; the others are logged and skipped.
pub fn load_all(data_dir: &Path) -> Vec<ManagedApp> {
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        let Some(name) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Some(saved) = Saved::read(data_dir, name) else {
            tracing::error!(file = %p.display(), "cannot read a saved app; skipping it");
            continue;
        };
        let origin = match saved.origin.as_str() {
            "deploy_dir" => Origin::DeployDir,
            _ => Origin::Api,
        };
        let source = saved
            .source
            .clone()
            .map(AppSource::from)
            .unwrap_or_else(|| awaiting_upload(data_dir, name));
        match spinforge_state::config::parse_app(name, &saved.section, &p, Some(source.clone())) {
            Ok(mut config) => {
                if saved.source.is_some() {
                    config.source = source;
                }
                out.push(ManagedApp { config, origin });
            }
            Err(errors) => {
                tracing::error!(file = %p.display(), "a saved app no longer parses; skipping it:\n{errors}")
            }
        }
    }
    out.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    out
}
