//! `spinforge init [DIR]`: a starter `spinforge.yaml` for the app in DIR, found out with the
//! builder's own detection, and the one command that serves it.

use spinforge_state::config::{Framework, check_app_name, schema};
use spinforge_supervisor::build::detect::{Detected, detect};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The app's folder (a package.json, or an index.html for a static site).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

/// Where the starter config listens: a port any user may bind, on this machine only.
const LISTEN: &str = "127.0.0.1:8080";

/// The file `init` writes in DIR.
const FILE: &str = "spinforge.yaml";

pub fn run(args: InitArgs) -> ExitCode {
    match init(&args.dir) {
        Ok(done) => {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{done}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes DIR/spinforge.yaml and returns what to tell the user.
fn init(dir: &Path) -> Result<String, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let config = dir.join(FILE);
    if config.symlink_metadata().is_ok() {
        return Err(already_there(&config));
    }
    let manifest = read_manifest(dir)?;
    let detected = detect(dir, manifest.as_ref(), Framework::Auto)
        .map_err(|why| format!("cannot tell what the app in {} is: {why}", dir.display()))?;
    let name = app_name(dir, manifest.as_ref());
    let data_dir = data_dir(&name);
    let schema = write_schema(&data_dir);
    let text = starter(&name, &detected, &data_dir, schema.as_deref());
    // create_new: a file that appeared since the check above is not overwritten either.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&config)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => already_there(&config),
            _ => format!("cannot write {}: {e}", config.display()),
        })?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let port = LISTEN.rsplit(':').next().unwrap_or("8080");
    Ok(format!(
        "wrote {config}: {framework} app `{name}` on {name}.localhost\n\nServe it with:\n\n  spinforge up --config {config}\n\nthen open http://{name}.localhost:{port}/\n",
        config = config.display(),
        framework = detected.framework.as_str(),
    ))
}

fn already_there(config: &Path) -> String {
    format!(
        "{0} already exists, and `spinforge init` never overwrites a config: check it with `spinforge check --config {0}`, or move it away to start over",
        config.display()
    )
}

fn read_manifest(dir: &Path) -> Result<Option<serde_json::Value>, String> {
    let path = dir.join("package.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The app's name: package.json's `name` (without an npm scope), else the folder's, made into
/// a valid app name (lowercase letters, digits and `-`).
fn app_name(dir: &Path, manifest: Option<&serde_json::Value>) -> String {
    let from_manifest = manifest
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(|n| n.rsplit('/').next().unwrap_or(n).to_string());
    let from_folder = || {
        std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    for candidate in [from_manifest, from_folder()].into_iter().flatten() {
        let name = plain_name(&candidate);
        if check_app_name(&name).is_ok() {
            return name;
        }
    }
    "app".into()
}

/// `My_Shop.v2` → `my-shop-v2`.
fn plain_name(text: &str) -> String {
    let mut name = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// A data folder of the user's own, outside the app's folder (whose contents are the app's
/// source): `$XDG_DATA_HOME/spinforge/<app>`, else `~/.local/share/spinforge/<app>`.
fn data_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        });
    match base {
        Some(base) => base.join("spinforge").join(name),
        None => PathBuf::from("/var/lib/spinforge"),
    }
}

/// Writes this version's JSON Schema into the data folder, for the modeline editors read;
/// `None` (and no modeline) when it cannot be written.
fn write_schema(data_dir: &Path) -> Option<PathBuf> {
    let path = data_dir.join("spinforge.schema.json");
    let text = serde_json::to_string_pretty(&schema::json_schema()).ok()?;
    let written = std::fs::create_dir_all(data_dir).and_then(|()| std::fs::write(&path, text));
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!(
                "note: cannot write the config's JSON Schema to {} ({e}); editors will not complete keys",
                path.display()
            );
            None
        }
    }
}

/// The commented starter config.
fn starter(name: &str, detected: &Detected, data_dir: &Path, schema: Option<&Path>) -> String {
    let mut out = String::new();
    if let Some(schema) = schema {
        out.push_str(&format!(
            "# yaml-language-server: $schema={}\n",
            schema.display()
        ));
    }
    out.push_str(&format!(
        "# SpinForge config for `{name}`, written by `spinforge init`.\n\
         # Serve it:  spinforge up --config {FILE}      (then open http://{name}.localhost:8080/)\n\
         # Check it:  spinforge check --config {FILE}\n\
         # Every key and its default: docs/config.md in SpinForge's repository.\n\
         \n\
         edge:\n\
         \x20 listen_http: {LISTEN}      # where requests come in; on a server: 0.0.0.0:80\n\
         \n\
         supervisor:\n\
         \x20 # Releases, logs and caches; outside the app's folder, which is the app's source.\n\
         \x20 data_dir: {data_dir}\n\
         \n\
         apps:\n\
         \x20 {name}:\n\
         \x20   domains: [{name}.localhost]      # *.localhost reaches this machine\n\
         \x20   source: .                        # this folder (relative to this file)\n\
         \x20   # Detected: {reason}.\n\
         \x20   # `auto` detects again on every build.\n\
         \x20   framework: {framework}\n\
         \x20   idle_timeout: 5m                 # stopped after 5 minutes without requests; 0: always on\n",
        data_dir = data_dir.display(),
        reason = detected.reason,
        framework = detected.framework.as_str(),
    ));
    if detected.framework == Framework::Static {
        out.push_str(
            "    # spa: true                      # a single-page app: unknown paths get /index.html\n",
        );
    } else {
        out.push_str("    # env: { KEY: value }            # the app's environment (PORT is set by SpinForge)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_app_names() {
        assert_eq!(plain_name("@acme/My_Shop.v2"), "acme-my-shop-v2");
        assert_eq!(plain_name("--x--"), "x");
        assert_eq!(plain_name("日本"), "");
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = serde_json::json!({ "name": "@acme/Web Site" });
        assert_eq!(app_name(dir.path(), Some(&manifest)), "web-site");
    }
}
