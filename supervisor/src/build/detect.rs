//! What an app is: its framework, package manager and language, from package.json and files.

use super::package_manager::PackageManager;
use spinforge_state::config::Framework;
use std::path::Path;

/// The outcome of detection, before anything is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// Never [`Framework::Auto`].
    pub framework: Framework,
    /// Why: shown in the build log.
    pub reason: String,
    /// `None`: no package.json (a plain static site).
    pub package_manager: Option<PackageManager>,
    /// A tsconfig.json and TypeScript sources for a server app.
    pub typescript: bool,
    /// package.json has `scripts.build`.
    pub build_script: bool,
}

/// Entry files tried, in order, when package.json names none.
pub const ENTRY_FILES: &[&str] = &["server.js", "index.js", "app.js"];

/// Detects what the app in `dir` is. `requested` is the config's `framework:`; anything but
/// `auto` wins over detection.
pub fn detect(
    dir: &Path,
    manifest: Option<&serde_json::Value>,
    requested: Framework,
) -> Result<Detected, String> {
    let Some(m) = manifest else {
        return match requested {
            Framework::Auto | Framework::Static => {
                if dir.join("index.html").is_file() || dir.join("public/index.html").is_file() {
                    Ok(Detected {
                        framework: Framework::Static,
                        reason: "no package.json; an index.html: a plain static site".into(),
                        package_manager: None,
                        typescript: false,
                        build_script: false,
                    })
                } else {
                    Err("no package.json and no index.html: SpinForge cannot tell what this app is (a Node app needs a package.json, a static site an index.html)".into())
                }
            }
            other => Err(format!(
                "framework `{}` needs a package.json, and there is none",
                other.as_str()
            )),
        };
    };
    let has_dep = |name: &str| {
        ["dependencies", "devDependencies"]
            .iter()
            .any(|k| m.get(k).and_then(|d| d.get(name)).is_some())
    };
    let any_dep = |pred: &dyn Fn(&str) -> bool| {
        ["dependencies", "devDependencies"].iter().any(|k| {
            m.get(k)
                .and_then(|d| d.as_object())
                .is_some_and(|d| d.keys().any(|n| pred(n)))
        })
    };
    let script = |name: &str| {
        m.pointer(&format!("/scripts/{name}"))
            .and_then(|s| s.as_str())
    };
    let build_script = script("build").is_some();
    let package_manager = Some(PackageManager::detect(dir, m)?);
    let tsconfig = dir.join("tsconfig.json").is_file();

    let server_entry = script("start").is_some()
        || m.get("main").and_then(|v| v.as_str()).is_some()
        || ENTRY_FILES.iter().any(|f| dir.join(f).is_file())
        || ["src/server.ts", "src/index.ts", "server.ts", "index.ts"]
            .iter()
            .any(|f| dir.join(f).is_file());

    let (framework, reason) = if requested != Framework::Auto {
        (
            requested,
            format!("framework: {} (from the config)", requested.as_str()),
        )
    } else if has_dep("next") {
        (Framework::Next, "package.json depends on `next`".into())
    } else if any_dep(&|n| n.starts_with("@remix-run/")) {
        (
            Framework::Remix,
            "package.json depends on @remix-run/* (Remix)".into(),
        )
    } else if has_dep("@react-router/dev") || has_dep("@react-router/serve") {
        (
            Framework::Remix,
            "package.json depends on @react-router/dev or /serve (React Router framework mode)"
                .into(),
        )
    } else if has_dep("express") {
        (
            Framework::Express,
            "package.json depends on `express`".into(),
        )
    } else if server_entry {
        (
            Framework::Node,
            "a start script or entry file: a Node server".into(),
        )
    } else if build_script {
        (
            Framework::Static,
            "a build script and no server (no start script or entry file): a static site built into dist/, build/, out/ or public/".into(),
        )
    } else if dir.join("index.html").is_file() || dir.join("public/index.html").is_file() {
        (
            Framework::Static,
            "no server and an index.html: a static site".into(),
        )
    } else {
        return Err("cannot tell how to run this app: add a `start` script (or a server.js/index.js) for a server, a `build` script for a static site, or set `framework:`".into());
    };
    let typescript = tsconfig
        && matches!(framework, Framework::Express | Framework::Node)
        && has_dep("typescript");
    Ok(Detected {
        framework,
        reason,
        package_manager,
        typescript,
        build_script,
    })
}

/// Whether the installed Node `version` (e.g. `v20.11.1`) satisfies the `engines.node` range.
/// `None` when the range uses syntax this check does not read (then nothing is said).
pub fn node_satisfies(range: &str, version: &str) -> Option<bool> {
    let v = parse_version(version.trim().trim_start_matches('v'))?;
    let mut any = false;
    for alternative in range.split("||") {
        let alternative = alternative.trim();
        if alternative.is_empty() || alternative == "*" || alternative == "x" {
            return Some(true);
        }
        // `1.2.3 - 2.3.4`
        if let Some((lo, hi)) = alternative.split_once(" - ") {
            let lo = partial(lo.trim())?;
            let hi = partial(hi.trim())?;
            if v >= lo.floor() && v < hi.ceiling() {
                any = true;
            }
            continue;
        }
        let mut all = true;
        for comparator in alternative.split_whitespace() {
            all &= comparator_holds(comparator, v)?;
        }
        any |= all;
    }
    Some(any)
}

type Version = (u64, u64, u64);

fn parse_version(s: &str) -> Option<Version> {
    let s = s.split(['-', '+']).next()?;
    let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        it.next()??,
        it.next().flatten().unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

/// A version with possibly missing parts (`20`, `20.1`, `20.x`).
#[derive(Debug, Clone, Copy)]
struct Partial {
    parts: [Option<u64>; 3],
}

impl Partial {
    fn floor(self) -> Version {
        (
            self.parts[0].unwrap_or(0),
            self.parts[1].unwrap_or(0),
            self.parts[2].unwrap_or(0),
        )
    }
    /// The first version above everything this partial version covers.
    fn ceiling(self) -> Version {
        match self.parts {
            [Some(a), None, _] => (a + 1, 0, 0),
            [Some(a), Some(b), None] => (a, b + 1, 0),
            [Some(a), Some(b), Some(c)] => (a, b, c + 1),
            [None, ..] => (u64::MAX, 0, 0),
        }
    }
}

fn partial(s: &str) -> Option<Partial> {
    let s = s.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = [None; 3];
    for (i, p) in s.split('.').enumerate() {
        if i >= 3 {
            return None;
        }
        parts[i] = match p {
            "x" | "X" | "*" => None,
            n => Some(n.parse().ok()?),
        };
    }
    Some(Partial { parts })
}

fn comparator_holds(c: &str, v: Version) -> Option<bool> {
    let (op, rest) = ["<=", ">=", "<", ">", "=", "^", "~"]
        .iter()
        .find_map(|op| c.strip_prefix(op).map(|r| (*op, r)))
        .unwrap_or(("", c));
    let p = partial(rest.trim())?;
    Some(match op {
        ">=" => v >= p.floor(),
        ">" => v >= p.ceiling(),
        "<" => v < p.floor(),
        "<=" => v < p.ceiling(),
        "^" => {
            let lo = p.floor();
            let hi = match lo {
                (0, 0, c) if p.parts[2].is_some() => (0, 0, c + 1),
                (0, b, _) if p.parts[1].is_some() => (0, b + 1, 0),
                (a, _, _) => (a + 1, 0, 0),
            };
            v >= lo && v < hi
        }
        "~" => {
            let lo = p.floor();
            let hi = match p.parts {
                [Some(a), Some(b), _] => (a, b + 1, 0),
                _ => p.ceiling(),
            };
            v >= lo && v < hi
        }
        _ => v >= p.floor() && v < p.ceiling(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for f in files {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, "").expect("write");
        }
        d
    }

    fn fw(files: &[&str], m: serde_json::Value) -> Framework {
        let d = dir_with(files);
        detect(d.path(), Some(&m), Framework::Auto)
            .expect("detected")
            .framework
    }

    #[test]
    fn frameworks_from_dependencies_and_files() {
        assert_eq!(
            fw(&[], json!({"dependencies": {"next": "15"}})),
            Framework::Next
        );
        assert_eq!(
            fw(&[], json!({"dependencies": {"@remix-run/serve": "2"}})),
            Framework::Remix
        );
        assert_eq!(
            fw(
                &[],
                json!({"devDependencies": {"@react-router/dev": "7"}, "dependencies": {"react-router": "7"}})
            ),
            Framework::Remix
        );
        assert_eq!(
            fw(&["server.js"], json!({"dependencies": {"express": "4"}})),
            Framework::Express
        );
        assert_eq!(fw(&["index.js"], json!({})), Framework::Node);
        assert_eq!(
            fw(
                &["index.html"],
                json!({"scripts": {"build": "vite build"}, "devDependencies": {"vite": "6"}})
            ),
            Framework::Static
        );
        let d = dir_with(&["index.html"]);
        assert_eq!(
            detect(d.path(), None, Framework::Auto)
                .expect("static")
                .framework,
            Framework::Static
        );
        let d = dir_with(&["README.md"]);
        assert!(detect(d.path(), None, Framework::Auto).is_err());
        assert!(detect(d.path(), Some(&json!({})), Framework::Auto).is_err());
    }

    #[test]
    fn typescript_servers_and_overrides() {
        let d = dir_with(&["tsconfig.json", "src/server.ts"]);
        let m = json!({"dependencies": {"express": "4"}, "devDependencies": {"typescript": "5"}});
        let got = detect(d.path(), Some(&m), Framework::Auto).expect("ts");
        assert_eq!(got.framework, Framework::Express);
        assert!(got.typescript);
        let got = detect(d.path(), Some(&m), Framework::Node).expect("override");
        assert_eq!(got.framework, Framework::Node);
        assert!(got.reason.contains("config"));
    }

    #[test]
    fn engines_ranges() {
        let v = "v20.11.1";
        for (range, ok) in [
            (">=18", true),
            (">=22", false),
            ("^20.0.0", true),
            ("^18.17.0", false),
            ("20.x", true),
            ("18.x || 20.x", true),
            (">=16 <20", false),
            ("~20.11.0", true),
            ("~20.10", false),
            ("18 - 20", true),
            ("*", true),
            ("<=20", true),
            ("<20", false),
        ] {
            assert_eq!(node_satisfies(range, v), Some(ok), "{range}");
        }
        assert_eq!(node_satisfies(">=abc", v), None);
    }
}
