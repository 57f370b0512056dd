//! The builder: from a source (folder, git URL, `.tar.gz`) to an immutable release.
//!
//! One job per module: [`source`] fetches and checks sources, [`detect`] works out the framework,
//! [`package_manager`] knows npm, yarn and pnpm, [`cache`] reuses `node_modules` across builds with
//! the same lockfile, [`start`] resolves the start command, [`runner`] runs commands with a log,
//! a deadline and a cancel, and [`queue`] puts builds through `build:queue` with a concurrency
//! limit. [`prepare`] strings them together.

pub mod cache;
pub mod detect;
pub mod package_manager;
pub mod queue;
pub mod runner;
pub mod source;
pub mod start;

use crate::release::{self, Release, ReleaseInfo, Toolchain};
use package_manager::PackageManager;
use runner::{RunAs, Runner};
use spinforge_state::config::{AppConfig, AppSource, BuildLimits, Framework};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    Command {
        command: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("the build ran out of its time limit ({}s, supervisor.builds.timeout)", limit.as_secs())]
    TimedOut { limit: Duration },
    #[error("the build was cancelled")]
    Cancelled,
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What every build shares.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub data_dir: PathBuf,
    pub tools: Toolchain,
    pub limits: BuildLimits,
    pub run_as: Option<RunAs>,
}

/// A built (or reused) release.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub release: Release,
    /// The newest release already was this source: nothing was built.
    pub reused: bool,
}

/// Host variables passed on to builds: proxies, registries, certificates, corepack and git
/// settings. Nothing else of the supervisor's environment reaches a build.
const PASSED_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "npm_config_registry",
    "NPM_CONFIG_REGISTRY",
    "COREPACK_NPM_REGISTRY",
    "COREPACK_INTEGRITY_KEYS",
    "GIT_SSH_COMMAND",
    "SSH_AUTH_SOCK",
];

/// The newest release of `app` if its source (and the config that shapes the build) is
/// unchanged, else a new release built from source. `build_id` names the build in release.json.
pub async fn prepare(
    app: &AppConfig,
    ctx: &BuildContext,
    runner: &Runner,
    build_id: &str,
) -> Result<Outcome, BuildError> {
    let started = Instant::now();
    let releases = release::releases_dir(&ctx.data_dir, &app.name);
    tokio::fs::create_dir_all(&releases)
        .await
        .map_err(io(format!("creating {}", releases.display())))?;
    let existing = release::list_releases(&releases).await;
    let number = existing.last().map_or(1, |r| r.info.number + 1);
    let staging = releases.join(format!(".build-{number}"));
    let final_dir = releases.join(number.to_string());
    let _ = tokio::fs::remove_dir_all(&staging).await;
    let build_config = release::build_config(app);
    let reusable = |identity: &str| {
        existing
            .last()
            .filter(|r| r.info.source_checksum == identity && r.info.build_config == build_config)
    };
    runner.log.line(format!(
        "[spinforge] build {build_id} of app {} from {}",
        app.name, app.source
    ));
    let runner = &runner.with_env(build_env(app, ctx, &staging)?);

    // 1. The source, into the staging folder.
    runner.log.step("source");
    let (identity, commit) = match &app.source {
        AppSource::External(upstream) => {
            // Not ours to build: the supervisor runs an ExternalTask for it instead.
            return Err(BuildError::Source(format!(
                "app {} routes to {upstream}, which SpinForge does not build",
                app.name
            )));
        }
        AppSource::Directory(dir) => {
            let sum = blocking({
                let dir = dir.clone();
                move || source::checksum_tree(&dir)
            })
            .await
            .map_err(io(format!("reading {}", dir.display())))?;
            if let Some(r) = reusable(&sum) {
                return Ok(reuse(runner, r));
            }
            let (from, to) = (dir.clone(), staging.clone());
            blocking_build(move || source::copy_tree(&from, &to)).await?;
            (sum, None)
        }
        AppSource::Tarball(file) => {
            let sum = blocking({
                let file = file.clone();
                move || source::checksum_file(&file)
            })
            .await
            .map_err(io(format!("reading {}", file.display())))?;
            if let Some(r) = reusable(&sum) {
                return Ok(reuse(runner, r));
            }
            runner
                .log
                .line(format!("[spinforge] unpacking {}", file.display()));
            let (from, to, max) = (file.clone(), staging.clone(), ctx.limits.max_archive_size);
            // A refused archive leaves no staging folder behind (the extractor removes it).
            blocking_build(move || source::extract_tarball(&from, &to, max)).await?;
            (sum, None)
        }
        AppSource::Git { url, reference } => {
            let git = ctx.tools.git.clone().ok_or_else(|| {
                BuildError::Source(
                    "`git` is not on PATH: install git to build from a git URL".into(),
                )
            })?;
            chown_tree(&staging, ctx.run_as, true).await?;
            let result = source::git_clone(
                runner,
                &git,
                url.expose(),
                &url.to_string(),
                reference.as_deref(),
                &staging,
            )
            .await;
            let checked = match result {
                Ok(c) => {
                    let (dir, shown) = (staging.clone(), url.to_string());
                    blocking_build(move || source::check_checkout(&dir, &shown))
                        .await
                        .map(|()| c)
                }
                Err(e) => Err(e),
            };
            let commit = match checked {
                Ok(c) => c,
                Err(e) => {
                    let _ = tokio::fs::remove_dir_all(&staging).await;
                    return Err(e);
                }
            };
            if let Some(r) = reusable(&commit) {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Ok(reuse(runner, r));
            }
            (commit.clone(), Some(commit))
        }
    };

    // 2. Everything else happens in the staging folder; a failure removes it.
    let result = build_in(app, ctx, runner, &staging, existing.last()).await;
    let built = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
    };
    let info = ReleaseInfo {
        number,
        framework: built.framework.as_str().to_string(),
        start: built.start,
        source: app.source.to_string(),
        source_checksum: identity,
        source_commit: commit,
        lockfile_hash: built.lockfile_hash,
        package_manager: built.package_manager.map(|p| p.name().to_string()),
        typescript: built.typescript,
        node_version: ctx.tools.node_version.clone(),
        build_config,
        build_id: build_id.to_string(),
        build_ms: started.elapsed().as_millis() as u64,
        created_ms: spinforge_state::now_ms(),
    };
    let json = serde_json::to_vec_pretty(&info).expect("release info serializes");
    // The source may hold a release.json of its own, or a link by that name: replace it, never
    // write through it.
    let release_json = staging.join("release.json");
    let _ = tokio::fs::remove_file(&release_json).await;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&release_json)
        .await
        .map_err(io("writing release.json"))?;
    tokio::io::AsyncWriteExt::write_all(&mut file, &json)
        .await
        .map_err(io("writing release.json"))?;
    // The rename makes a release appear whole or not at all.
    tokio::fs::rename(&staging, &final_dir)
        .await
        .map_err(io(format!("publishing {}", final_dir.display())))?;
    runner.log.line(format!(
        "[spinforge] release {number} built in {:.1}s: {} started with `{}`",
        info.build_ms as f64 / 1000.0,
        info.framework,
        info.start.join(" ")
    ));
    // Old releases are pruned by the app's task, which knows which one serves.
    Ok(Outcome {
        release: Release {
            dir: final_dir,
            info,
        },
        reused: false,
    })
}

fn reuse(runner: &Runner, r: &Release) -> Outcome {
    runner.log.line(format!(
        "[spinforge] source unchanged since release {}: reusing it",
        r.info.number
    ));
    Outcome {
        release: r.clone(),
        reused: true,
    }
}

async fn blocking_build<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(BuildError::Source(format!("task failed: {e}"))))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("task failed: {e}"))))
}

struct Built {
    framework: Framework,
    start: Vec<String>,
    lockfile_hash: Option<String>,
    package_manager: Option<PackageManager>,
    typescript: bool,
}

async fn build_in(
    app: &AppConfig,
    ctx: &BuildContext,
    runner: &Runner,
    dir: &Path,
    previous: Option<&Release>,
) -> Result<Built, BuildError> {
    runner.check()?;
    let manifest: Option<serde_json::Value> =
        match tokio::fs::read_to_string(dir.join("package.json")).await {
            Ok(text) => {
                Some(serde_json::from_str(&text).map_err(|e| {
                    BuildError::Source(format!("package.json is not valid JSON: {e}"))
                })?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading package.json")(e)),
        };
    let detected =
        detect::detect(dir, manifest.as_ref(), app.framework).map_err(BuildError::Source)?;
    runner.log.line(format!(
        "[spinforge] framework: {} ({}){}",
        detected.framework.as_str(),
        detected.reason,
        if detected.typescript {
            ", TypeScript"
        } else {
            ""
        }
    ));
    if let Some(range) = manifest
        .as_ref()
        .and_then(|m| m.pointer("/engines/node"))
        .and_then(|v| v.as_str())
    {
        match detect::node_satisfies(range, &ctx.tools.node_version) {
            Some(false) => runner.log.line(format!(
                "[spinforge] warning: package.json wants Node {range} (engines.node), but this machine has {}; building anyway",
                ctx.tools.node_version
            )),
            None => runner.log.line(format!(
                "[spinforge] note: cannot check engines.node `{range}` against {}",
                ctx.tools.node_version
            )),
            Some(true) => {}
        }
    }
    chown_tree(dir, ctx.run_as, false).await?;
    runner.log.step("install");
    let mut lockfile_hash = None;
    let pm = detected.package_manager;
    if let (Some(pm), Some(m)) = (pm, &manifest) {
        let program = match pm.program().0 {
            "npm" => ctx.tools.npm.clone(),
            _ => ctx.tools.corepack.clone().ok_or_else(|| {
                BuildError::Source(format!(
                    "this app uses {}, which SpinForge runs through corepack; `corepack` is not on PATH (it ships with Node.js 16.9+)",
                    pm.name()
                ))
            })?,
        };
        let lead = pm.program().1;
        let lockfile = pm.lockfile(dir);
        runner.log.line(format!(
            "[spinforge] package manager: {}{}",
            pm.name(),
            lockfile
                .as_ref()
                .and_then(|l| l.file_name())
                .map(|n| format!(" ({})", n.to_string_lossy()))
                .unwrap_or_else(|| " (no lockfile: versions are not pinned)".into())
        ));
        if let Some(l) = &lockfile {
            lockfile_hash = Some(source::checksum_file(l).map_err(io("reading the lockfile"))?);
        }
        let has_deps = ["dependencies", "devDependencies"].iter().any(|k| {
            m.get(k)
                .and_then(|d| d.as_object())
                .is_some_and(|d| !d.is_empty())
        });
        let cache_key = lockfile_hash
            .as_ref()
            .map(|h| cache::key(pm, h, m, &ctx.tools.node_version));
        let cache = cache::NodeModulesCache::new(&ctx.data_dir, &app.name);
        // No build step can have changed node_modules: the pruned set of the last build is
        // exactly what a prune would leave now.
        let no_build_step = !detected.build_script && !detected.typescript;
        let is_static = detected.framework == Framework::Static;
        let mut pruned = false;
        let reused = match &cache_key {
            Some(key) if has_deps => {
                if no_build_step && !is_static && cache.restore(key, cache::PROD, dir).await {
                    pruned = true;
                    true
                } else {
                    cache.restore(key, cache::FULL, dir).await
                }
            }
            _ => false,
        };
        if reused {
            runner.log.line(format!(
                "[spinforge] lockfile unchanged: node_modules reused from the last build{}",
                if pruned { " (already pruned)" } else { "" }
            ));
            chown_tree(&dir.join("node_modules"), ctx.run_as, false).await?;
        } else if has_deps {
            let args: Vec<&str> = lead
                .iter()
                .copied()
                .chain(pm.install_args(lockfile.is_some()))
                .collect();
            runner.run(&program, &args, dir, &[]).await?;
            if let Some(key) = &cache_key {
                cache.save(key, cache::FULL, dir).await;
            }
        }
        runner.check()?;
        if detected.typescript || detected.build_script {
            runner.log.step("compile");
        }
        if detected.typescript && !detected.build_script {
            let tsc = dir.join("node_modules/typescript/bin/tsc");
            if !tsc.is_file() {
                return Err(BuildError::Source(
                    "a TypeScript app without a build script needs `typescript` in its devDependencies: SpinForge compiles it with the project's own tsc".into(),
                ));
            }
            runner
                .log
                .line("[spinforge] no build script: compiling with the project's tsc");
            let tsc = tsc.display().to_string();
            runner
                .run(&ctx.tools.node, &[tsc.as_str(), "-p", "."], dir, &[])
                .await?;
        }
        if detected.build_script {
            if detected.framework == Framework::Next {
                let app_dir = ctx.data_dir.join("apps").join(&app.name);
                restore_build_cache(runner, previous, &app_dir, dir, ".next/cache", ctx.run_as)
                    .await;
            }
            let args: Vec<&str> = lead.iter().copied().chain(pm.run_args("build")).collect();
            runner.run(&program, &args, dir, &[]).await?;
        }
        runner.check()?;
        runner.log.step("prune");
        if detected.framework == Framework::Static {
            // The static server needs no packages.
            let _ = tokio::fs::remove_dir_all(dir.join("node_modules")).await;
        } else if has_deps && !pruned {
            match pm.prune_args(lockfile.is_some()) {
                Some(prune) => {
                    let args: Vec<&str> = lead.iter().copied().chain(prune).collect();
                    match runner.run(&program, &args, dir, &[]).await {
                        Ok(()) => {
                            if let (Some(key), true) = (&cache_key, no_build_step) {
                                cache.save(key, cache::PROD, dir).await;
                            }
                        }
                        Err(e @ BuildError::Command { .. }) => runner.log.line(format!(
                            "[spinforge] warning: could not prune dev dependencies; the release keeps them ({e})"
                        )),
                        Err(other) => return Err(other),
                    }
                }
                None => runner.log.line(
                    "[spinforge] dev dependencies kept (this package manager cannot prune them)",
                ),
            }
        }
    }

    runner.log.step("release");
    let static_root = if detected.framework == Framework::Static {
        Some(static_root(dir, manifest.is_some(), detected.build_script)?)
    } else {
        None
    };
    let node = ctx.tools.node.display().to_string();
    let start = start::resolve(
        detected.framework,
        manifest.as_ref(),
        dir,
        &node,
        static_root.as_deref(),
        app.spa,
    )
    .map_err(BuildError::Source)?;
    if let Some(entry) = start.get(1).filter(|_| start[0] == node) {
        if !entry.starts_with('-') && !dir.join(entry).exists() {
            return Err(BuildError::Source(format!(
                "the start command `{}` names {entry}, which the build did not produce",
                start.join(" ")
            )));
        }
    }
    Ok(Built {
        framework: detected.framework,
        start,
        lockfile_hash,
        package_manager: pm,
        typescript: detected.typescript,
    })
}

/// Copies a framework's build cache (e.g. Next's `.next/cache`) from the previous release, so an
/// unchanged part of the app is not compiled again. A copy, not links: the build rewrites these
/// files in place, and the previous release must not change. Both releases are the app's (its
/// code ran in them), so both are reached from `app_dir` without following a link, and the copy
/// is handed to the app's user as it is made. Any failure only costs the reuse.
async fn restore_build_cache(
    runner: &Runner,
    previous: Option<&Release>,
    app_dir: &Path,
    dir: &Path,
    rel: &str,
    run_as: Option<RunAs>,
) {
    let Some(previous) = previous else { return };
    let is_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if !is_dir(&previous.dir.join(rel)) || std::fs::symlink_metadata(dir.join(rel)).is_ok() {
        return;
    }
    let (Ok(from), Ok(to)) = (
        previous
            .dir
            .join(rel)
            .strip_prefix(app_dir)
            .map(Path::to_path_buf),
        dir.join(rel).strip_prefix(app_dir).map(Path::to_path_buf),
    ) else {
        return;
    };
    let anchor = app_dir.to_path_buf();
    let owner = run_as.map(|u| (u.uid, u.gid));
    let copied = tokio::task::spawn_blocking(move || {
        spinforge_unpack::copy_tree_beneath(&anchor, &from, &to, source::SKIPPED, owner)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match copied {
        Ok(()) => runner.log.line(format!(
            "[spinforge] {rel} reused from release {}",
            previous.info.number
        )),
        Err(e) => runner.log.line(format!(
            "[spinforge] note: cannot reuse {rel} ({e}); building without it"
        )),
    }
}

/// Where a static site's files are: the build's output (dist/, build/, out/, public/), or the
/// source itself.
fn static_root(dir: &Path, has_manifest: bool, built: bool) -> Result<String, BuildError> {
    let candidates: &[&str] = if has_manifest && built {
        &["dist", "build", "out", "public"]
    } else {
        &[".", "public"]
    };
    // A served folder that is a link could lead out of the release: only real folders.
    let real_dir =
        |c: &str| c == "." || std::fs::symlink_metadata(dir.join(c)).is_ok_and(|m| m.is_dir());
    for c in candidates {
        if real_dir(c) && dir.join(c).join("index.html").is_file() {
            return Ok((*c).to_string());
        }
    }
    for c in candidates {
        let p = dir.join(c);
        if *c != "."
            && real_dir(c)
            && std::fs::read_dir(&p)
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
        {
            return Ok((*c).to_string());
        }
    }
    Err(BuildError::Source(format!(
        "a static site, but none of {} holds its files (an index.html)",
        candidates.join(", ")
    )))
}

/// The environment of build commands.
fn build_env(
    app: &AppConfig,
    ctx: &BuildContext,
    dir: &Path,
) -> Result<Vec<(OsString, OsString)>, BuildError> {
    let app_dir = ctx.data_dir.join("apps").join(&app.name);
    // With per-app users (run_as), package caches are per app too, inside the app's private
    // folder: a shared writable cache would let one app's build plant files another's uses.
    let cache = match ctx.run_as {
        Some(_) => app_dir.join("cache"),
        None => ctx.data_dir.join("cache"),
    };
    let home = app_dir.join("home");
    if ctx.run_as.is_some() {
        std::fs::create_dir_all(&app_dir).map_err(io(format!("creating {}", app_dir.display())))?;
        crate::users::hand_over(&app_dir, ctx.run_as, 0o700).map_err(io(format!(
            "handing {} to the app's user",
            app_dir.display()
        )))?;
        // The supervisor keeps this app's node_modules here; no other app may look in.
        let modules = ctx.data_dir.join("cache/node_modules").join(&app.name);
        std::fs::create_dir_all(&modules)
            .and_then(|_| crate::users::hand_over(&modules, None, 0o700))
            .map_err(io(format!("securing {}", modules.display())))?;
    }
    for d in [
        cache.join("npm"),
        cache.join("corepack"),
        cache.join("yarn"),
        cache.join("pnpm-store"),
        home.clone(),
    ] {
        match (ctx.run_as, d.strip_prefix(&app_dir)) {
            // The app's own folder (its code may have put links there): created beneath it
            // without following one, each new folder handed to the app's user.
            (Some(u), Ok(rel)) => {
                spinforge_unpack::create_owned_dirs(&app_dir, rel, Some((u.uid, u.gid)))
                    .map_err(io(format!("creating {} for the app's user", d.display())))?;
            }
            _ => std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?,
        }
    }
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |k: &str, v: OsString| env.push((k.into(), v));
    set("PATH", ctx.tools.path_for(dir).into());
    set("HOME", home.into());
    set("NODE_ENV", "production".into());
    set("CI", "true".into());
    set("NEXT_TELEMETRY_DISABLED", "1".into());
    set("npm_config_cache", cache.join("npm").into());
    set("npm_config_update_notifier", "false".into());
    set("npm_config_fund", "false".into());
    set("npm_config_audit", "false".into());
    set("npm_config_store_dir", cache.join("pnpm-store").into());
    set("COREPACK_HOME", cache.join("corepack").into());
    set("COREPACK_ENABLE_DOWNLOAD_PROMPT", "0".into());
    set("COREPACK_ENABLE_AUTO_PIN", "0".into());
    set("YARN_CACHE_FOLDER", cache.join("yarn").into());
    set("YARN_ENABLE_GLOBAL_CACHE", "false".into());
    set("YARN_NODE_LINKER", "node-modules".into());
    set("YARN_ENABLE_TELEMETRY", "0".into());
    for var in PASSED_ENV {
        if let Some(v) = std::env::var_os(var) {
            set(var, v);
        }
    }
    // The app's own variables last (build-time settings such as NEXT_PUBLIC_*).
    for (k, v) in &app.env {
        env.retain(|(name, _)| name != k.as_str());
        env.push((k.into(), v.expose().into()));
    }
    Ok(env)
}

/// Hands `path` (and everything under it) to the build user; nothing without `run_as`. Through
/// [`spinforge_unpack::chown_tree`]: no link is followed, and a file with other hard links is
/// left as it is (one of them may be a file outside the tree).
async fn chown_tree(path: &Path, run_as: Option<RunAs>, create: bool) -> Result<(), BuildError> {
    let Some(user) = run_as else { return Ok(()) };
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    blocking(move || {
        if create {
            std::fs::create_dir_all(&path)?;
        }
        spinforge_unpack::chown_tree(&path, user.uid, user.gid).map_err(std::io::Error::other)
    })
    .await
    .map_err(io(format!("handing {shown} to the build user")))
}
