//! Releases: an app's source copied into `data_dir/apps/<app>/releases/<n>/`, its dependencies
//! installed with npm, and its start command worked out — once, then immutable. A release whose
//! source checksum matches the newest one is reused instead of built again.

use serde::{Deserialize, Serialize};
use spinforge_state::config::{AppConfig, AppSource};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long `npm ci` may take before the build counts as failed.
const INSTALL_TIME_LIMIT: Duration = Duration::from_secs(600);
/// Lines of the build log quoted in a build error.
const LOG_TAIL_LINES: usize = 20;
/// Entries never copied from a source folder.
const SKIPPED: &[&str] = &["node_modules", ".git"];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Source(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); the end of {log}:\n{tail}")]
    Install {
        command: String,
        status: String,
        log: String,
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// `release.json`: what a release is and how to start it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub number: u64,
    pub framework: String,
    /// argv; the first element is a program path.
    pub start: Vec<String>,
    pub source: String,
    pub source_checksum: String,
    #[serde(default)]
    pub lockfile_hash: Option<String>,
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
        Ok(Toolchain {
            node: find("node")?,
            npm: find("npm")?,
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

/// The newest release of `app` if its source is unchanged, else a new one built from source.
pub async fn prepare(
    app: &AppConfig,
    data_dir: &Path,
    tools: &Toolchain,
) -> Result<Release, BuildError> {
    let AppSource::Directory(source) = &app.source else {
        return Err(BuildError::Source(format!(
            "app `{}` has `upstream:`: there is nothing to build",
            app.name
        )));
    };
    let source = source.clone();
    if !source.join("package.json").is_file() {
        return Err(BuildError::Source(format!(
            "{} has no package.json: SpinForge runs Node.js apps from a folder with a package.json",
            source.display()
        )));
    }
    let started = Instant::now();
    let releases = data_dir.join("apps").join(&app.name).join("releases");
    tokio::fs::create_dir_all(&releases)
        .await
        .map_err(io(format!("creating {}", releases.display())))?;

    let checksum = {
        let root = source.clone();
        tokio::task::spawn_blocking(move || checksum_tree(&root))
            .await
            .map_err(|e| BuildError::Source(format!("checksum task failed: {e}")))?
            .map_err(io(format!("reading {}", source.display())))?
    };
    let existing = list_releases(&releases).await;
    if let Some(newest) = existing.last() {
        if newest.info.source_checksum == checksum {
            tracing::info!(app = %app.name, release = newest.info.number, "source unchanged; reusing release");
            return Ok(newest.clone());
        }
    }

    let number = existing.last().map_or(1, |r| r.info.number + 1);
    let staging = releases.join(format!(".build-{number}"));
    let final_dir = releases.join(number.to_string());
    let _ = tokio::fs::remove_dir_all(&staging).await;
    {
        let (from, to) = (source.clone(), staging.clone());
        tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .map_err(|e| BuildError::Source(format!("copy task failed: {e}")))?
            .map_err(io(format!(
                "copying {} into {}",
                source.display(),
                staging.display()
            )))?;
    }
    let result = build_in(app, data_dir, tools, &staging, number).await;
    let (start, lockfile_hash) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
    };
    let info = ReleaseInfo {
        number,
        framework: "node".into(),
        start,
        source: source.display().to_string(),
        source_checksum: checksum,
        lockfile_hash,
        build_ms: started.elapsed().as_millis() as u64,
        created_ms: spinforge_state::now_ms(),
    };
    let json = serde_json::to_vec_pretty(&info).expect("release info serializes");
    tokio::fs::write(staging.join("release.json"), json)
        .await
        .map_err(io("writing release.json"))?;
    // The rename makes a release appear whole or not at all.
    tokio::fs::rename(&staging, &final_dir)
        .await
        .map_err(io(format!("publishing {}", final_dir.display())))?;
    tracing::info!(app = %app.name, release = number, build_ms = info.build_ms, "release built");
    Ok(Release {
        dir: final_dir,
        info,
    })
}

async fn build_in(
    app: &AppConfig,
    data_dir: &Path,
    tools: &Toolchain,
    dir: &Path,
    number: u64,
) -> Result<(Vec<String>, Option<String>), BuildError> {
    let manifest: serde_json::Value = {
        let text = tokio::fs::read_to_string(dir.join("package.json"))
            .await
            .map_err(io("reading package.json"))?;
        serde_json::from_str(&text)
            .map_err(|e| BuildError::Source(format!("package.json is not valid JSON: {e}")))?
    };
    let lockfile = ["package-lock.json", "npm-shrinkwrap.json"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file());
    let lockfile_hash = match &lockfile {
        Some(p) => Some(
            blake3::hash(
                &tokio::fs::read(p)
                    .await
                    .map_err(io("reading the lockfile"))?,
            )
            .to_hex()
            .to_string(),
        ),
        None => None,
    };
    let has_deps = manifest
        .get("dependencies")
        .and_then(|d| d.as_object())
        .is_some_and(|d| !d.is_empty());
    if has_deps {
        let logs = data_dir.join("logs");
        tokio::fs::create_dir_all(&logs)
            .await
            .map_err(io("creating the logs folder"))?;
        let log_path = logs.join(format!("{}-build-{number}.log", app.name));
        let verb = if lockfile.is_some() { "ci" } else { "install" };
        let args = [
            verb,
            "--omit=dev",
            "--no-audit",
            "--no-fund",
            "--loglevel=warn",
        ];
        run_logged(tools, dir, data_dir, &args, &log_path).await?;
    }
    Ok((start_command(&manifest, dir, tools)?, lockfile_hash))
}

/// Runs npm with a build environment: the PATH and HOME it needs, the proxy settings of the host,
/// a shared cache under `data_dir/cache`, and nothing else of ours.
async fn run_logged(
    tools: &Toolchain,
    dir: &Path,
    data_dir: &Path,
    args: &[&str],
    log_path: &Path,
) -> Result<(), BuildError> {
    let log =
        std::fs::File::create(log_path).map_err(io(format!("creating {}", log_path.display())))?;
    let log2 = log.try_clone().map_err(io("opening the build log"))?;
    let mut cmd = tokio::process::Command::new(&tools.npm);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", tools.path_for(dir))
        .env("NODE_ENV", "production")
        .env("npm_config_cache", data_dir.join("cache/npm"))
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(true);
    for var in [
        "HOME",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let command = format!("npm {}", args.join(" "));
    let status = match tokio::time::timeout(INSTALL_TIME_LIMIT, async {
        cmd.spawn()
            .map_err(io(format!("starting {command}")))?
            .wait()
            .await
            .map_err(io(format!("waiting for {command}")))
    })
    .await
    {
        Ok(status) => status?,
        Err(_) => {
            return Err(BuildError::Install {
                command,
                status: format!("timed out after {}s", INSTALL_TIME_LIMIT.as_secs()),
                log: log_path.display().to_string(),
                tail: log_tail(log_path).await,
            });
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Install {
            command,
            status: status.to_string(),
            log: log_path.display().to_string(),
            tail: log_tail(log_path).await,
        })
    }
}

async fn log_tail(path: &Path) -> String {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// How the app starts: `scripts.start` (run directly when it is `node <file> …`, else through
/// `sh -c`), else `main`, else the first of server.js, index.js, app.js.
fn start_command(
    manifest: &serde_json::Value,
    dir: &Path,
    tools: &Toolchain,
) -> Result<Vec<String>, BuildError> {
    let node = tools.node.display().to_string();
    if let Some(start) = manifest.pointer("/scripts/start").and_then(|s| s.as_str()) {
        let words: Vec<&str> = start.split_whitespace().collect();
        let plain = start
            .bytes()
            .all(|b| !b"|&;<>()$`\\\"'*?[]#~=%".contains(&b));
        if plain && words.first() == Some(&"node") {
            return Ok(std::iter::once(node)
                .chain(words[1..].iter().map(|w| w.to_string()))
                .collect());
        }
        return Ok(vec!["/bin/sh".into(), "-c".into(), format!("exec {start}")]);
    }
    let main = manifest.get("main").and_then(|m| m.as_str());
    let entry = main
        .into_iter()
        .chain(["server.js", "index.js", "app.js"])
        .find(|f| dir.join(f).is_file())
        .ok_or_else(|| {
            BuildError::Source(
                "cannot tell how to start the app: add a `start` script to package.json, or a server.js or index.js".into(),
            )
        })?;
    Ok(vec![node, entry.to_string()])
}

async fn list_releases(releases: &Path) -> Vec<Release> {
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

/// A checksum of every file's relative path and content (symlinks by target), skipping
/// [`SKIPPED`].
fn checksum_tree(root: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    walk(root, Path::new(""), &mut files)?;
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for rel in files {
        let path = root.join(&rel);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update(&[0]);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            hasher.update(std::fs::read_link(&path)?.to_string_lossy().as_bytes());
        } else {
            hasher.update_reader(std::fs::File::open(&path)?)?;
        }
        hasher.update(&[0]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if SKIPPED.iter().any(|s| name == *s) {
            continue;
        }
        let rel = rel.join(&name);
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(root, &rel, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(rel);
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut files = Vec::new();
    walk(from, Path::new(""), &mut files)?;
    std::fs::create_dir_all(to)?;
    for rel in files {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Toolchain {
        Toolchain {
            node: "/usr/bin/node".into(),
            npm: "/usr/bin/npm".into(),
        }
    }

    #[test]
    fn start_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = serde_json::json!({"scripts": {"start": "node server.js --port-from-env"}});
        assert_eq!(
            start_command(&m, dir.path(), &tools()).expect("start"),
            ["/usr/bin/node", "server.js", "--port-from-env"]
        );
        let m = serde_json::json!({"scripts": {"start": "NODE_OPTIONS=x node a.js"}});
        assert_eq!(
            start_command(&m, dir.path(), &tools()).expect("start")[..2],
            ["/bin/sh", "-c"]
        );
        std::fs::write(dir.path().join("index.js"), "").expect("write");
        let m = serde_json::json!({});
        assert_eq!(
            start_command(&m, dir.path(), &tools()).expect("start"),
            ["/usr/bin/node", "index.js"]
        );
        let m = serde_json::json!({"main": "missing.js"});
        assert_eq!(
            start_command(&m, dir.path(), &tools()).expect("start"),
            ["/usr/bin/node", "index.js"]
        );
    }

    #[test]
    fn checksum_ignores_node_modules_and_sees_edits() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.js"), "1").expect("write");
        let before = checksum_tree(dir.path()).expect("sum");
        std::fs::create_dir_all(dir.path().join("node_modules/x")).expect("mkdir");
        std::fs::write(dir.path().join("node_modules/x/i.js"), "2").expect("write");
        assert_eq!(before, checksum_tree(dir.path()).expect("sum"));
        std::fs::write(dir.path().join("a.js"), "2").expect("write");
        assert_ne!(before, checksum_tree(dir.path()).expect("sum"));
    }
}
