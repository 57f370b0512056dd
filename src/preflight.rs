//! What `up` and `supervisor` check before they start anything, so that the errors a new user
//! meets first name their cause and their fix: Node.js and npm present and new enough, the data
//! folder writable, the npm registry reachable.

use anyhow::{Result, bail};
use spinforge_state::config::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The oldest Node.js SpinForge builds and runs apps with (README: "Node.js 18+").
const NODE_MIN: u64 = 18;
/// The oldest npm that reads package-lock.json v2 and v3 (`npm ci`).
const NPM_MIN: u64 = 7;
/// How long the registry probe waits for a connection.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Refuses to start, with the cause and the fix, when the toolchain or the data folder is not
/// usable.
pub fn check(config: &Config) -> Result<()> {
    data_dir(config)?;
    toolchain()
}

/// `supervisor.data_dir` exists (or can be made) and this user can write in it.
fn data_dir(config: &Config) -> Result<()> {
    let dir = &config.supervisor.data_dir;
    let probe = dir.join(".spinforge-write-test");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe));
    let Err(e) = written else { return Ok(()) };
    let user = whoami();
    bail!(
        "the data folder {dir} (supervisor.data_dir in {file}) is not writable by {user}: {e}. \
         Make it {user}'s (`sudo install -d -o {user} {dir}`), or set supervisor.data_dir to a \
         folder {user} can write (e.g. ~/.local/share/spinforge)",
        dir = dir.display(),
        file = config.file.display(),
    )
}

fn whoami() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// `name` on PATH, found the way the supervisor finds it (the first regular file).
fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The major version in `v20.11.1` or `10.2.4`.
fn major(version: &str) -> Option<u64> {
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Node.js and npm on PATH, new enough.
fn toolchain() -> Result<()> {
    let Some(node) = on_path("node") else {
        bail!(
            "Node.js is not installed, or not on PATH (no `node` in {}): SpinForge builds and runs \
             apps with Node.js {NODE_MIN} or newer. Install it (Debian/Ubuntu: `sudo apt-get install \
             nodejs npm`, or from https://nodejs.org) and start SpinForge again",
            std::env::var("PATH").unwrap_or_default()
        );
    };
    let version = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(version) = version else {
        bail!(
            "{} does not run (`node --version` failed): reinstall Node.js {NODE_MIN} or newer",
            node.display()
        );
    };
    if major(&version).is_some_and(|m| m < NODE_MIN) {
        bail!(
            "Node.js {version} ({}) is too old: SpinForge needs Node.js {NODE_MIN} or newer. \
             Install a newer one (https://nodejs.org, or NodeSource's Debian packages) and put it \
             first on PATH",
            node.display()
        );
    }
    let Some(npm) = on_path("npm") else {
        bail!(
            "npm is not installed, or not on PATH, but builds install dependencies with it \
             (Node.js {version} is at {}). Install it (Debian/Ubuntu: `sudo apt-get install npm`) \
             and start SpinForge again",
            node.display()
        );
    };
    if let Some(npm_version) = npm_version(&npm) {
        if major(&npm_version).is_some_and(|m| m < NPM_MIN) {
            bail!(
                "npm {npm_version} ({}) is too old: builds need npm {NPM_MIN} or newer to read \
                 package-lock.json. Update it (`sudo npm install -g npm@10`) or install a newer \
                 Node.js, which brings its own",
                npm.display()
            );
        }
    }
    Ok(())
}

/// npm's version from the package.json beside the script `npm` links to — without starting
/// Node, which would cost every start a third of a second. `None` when npm is laid out
/// otherwise (then the build says what is wrong).
fn npm_version(npm: &Path) -> Option<String> {
    let script = std::fs::canonicalize(npm).ok()?;
    // …/lib/node_modules/npm/bin/npm-cli.js
    let manifest = script.parent()?.parent()?.join("package.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    (json.get("name")?.as_str()? == "npm").then_some(())?;
    Some(json.get("version")?.as_str()?.to_string())
}

/// Where builds fetch packages from: `npm_config_registry` (passed on to builds), else a
/// `registry=` of npm's global config files (builds have a home of their own, so a user's
/// ~/.npmrc does not count), else npm's default.
fn registry() -> String {
    let from_env = ["npm_config_registry", "NPM_CONFIG_REGISTRY"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let node_prefix = on_path("node")
        .and_then(|n| std::fs::canonicalize(n).ok())
        .and_then(|n| Some(n.parent()?.parent()?.to_path_buf()));
    let global_files = node_prefix
        .map(|p| p.join("etc/npmrc"))
        .into_iter()
        .chain([PathBuf::from("/etc/npmrc")]);
    from_env
        .or_else(|| {
            global_files
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .find_map(|text| {
                    text.lines().find_map(|l| {
                        let (k, v) = l.split_once('=')?;
                        (k.trim() == "registry").then(|| v.trim().to_string())
                    })
                })
        })
        .unwrap_or_else(|| "https://registry.npmjs.org/".into())
}

/// `host:port` of an http(s) URL.
fn authority(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let host_port = rest.split('/').next()?;
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let default = if scheme == "http" { 80 } else { 443 };
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host_port.starts_with('[') => Some((
            host.trim_matches(['[', ']']).to_string(),
            port.parse().ok()?,
        )),
        _ => Some((host_port.trim_matches(['[', ']']).to_string(), default)),
    }
}

/// Warns (without stopping anything) when the npm registry cannot be reached, which would make
/// every build that installs dependencies fail. Behind a proxy (`HTTPS_PROXY`, …) npm connects
/// through it, so nothing is probed.
pub fn spawn_registry_probe(config: &Config) {
    let builds = config.apps.values().any(|a| a.external().is_none());
    let proxied = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !builds || proxied {
        return;
    }
    let url = registry();
    let Some((host, port)) = authority(&url) else {
        return;
    };
    tokio::spawn(async move {
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        let failure = match tokio::time::timeout(REGISTRY_TIMEOUT, connect).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {}s", REGISTRY_TIMEOUT.as_secs()),
        };
        tracing::warn!(
            "the npm registry {url} cannot be reached ({failure}): builds that install \
             dependencies will fail. Check this machine's network and DNS, set HTTPS_PROXY if it \
             needs a proxy, or point npm_config_registry at a registry it can reach (a mirror)"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_authorities() {
        assert_eq!(
            authority("https://registry.npmjs.org/"),
            Some(("registry.npmjs.org".into(), 443))
        );
        assert_eq!(
            authority("http://127.0.0.1:4873/npm/"),
            Some(("127.0.0.1".into(), 4873))
        );
        assert_eq!(
            authority("http://u:p@[::1]:8080"),
            Some(("::1".into(), 8080))
        );
        assert_eq!(authority("registry"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(major("v20.11.1"), Some(20));
        assert_eq!(major("6.14.18\n"), Some(6));
        assert_eq!(major("x"), None);
    }
}
