//! Package managers: which one a project uses (by lockfile and `packageManager`), and the
//! commands that install, and later prune, its dependencies. Yarn and pnpm run through corepack,
//! at the version package.json pins.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Npm,
    YarnClassic,
    YarnBerry,
    Pnpm,
}

/// Lockfiles by package manager, in the order they are looked for.
const LOCKFILES: &[(&str, PackageManager)] = &[
    ("pnpm-lock.yaml", PackageManager::Pnpm),
    ("yarn.lock", PackageManager::YarnClassic),
    ("package-lock.json", PackageManager::Npm),
    ("npm-shrinkwrap.json", PackageManager::Npm),
];

impl PackageManager {
    /// From the lockfile, else from `packageManager`, else npm.
    pub fn detect(dir: &Path, manifest: &serde_json::Value) -> Result<PackageManager, String> {
        let declared = manifest
            .get("packageManager")
            .and_then(|v| v.as_str())
            .map(|s| s.split('@').next().unwrap_or(""));
        for (file, pm) in LOCKFILES {
            let path = dir.join(file);
            if path.is_file() {
                if *pm == PackageManager::YarnClassic {
                    return Ok(yarn_flavour(&path));
                }
                return Ok(*pm);
            }
        }
        Ok(match declared {
            Some("pnpm") => PackageManager::Pnpm,
            Some("yarn") => {
                let version = manifest
                    .get("packageManager")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.split('@').nth(1))
                    .unwrap_or("1");
                if version.starts_with("1.") || version == "1" {
                    PackageManager::YarnClassic
                } else {
                    PackageManager::YarnBerry
                }
            }
            Some("npm") | None => PackageManager::Npm,
            Some(other) => {
                return Err(format!(
                    "package.json asks for the package manager `{other}`; SpinForge knows npm, yarn and pnpm"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Npm => "npm",
            PackageManager::YarnClassic => "yarn (classic)",
            PackageManager::YarnBerry => "yarn (berry)",
            PackageManager::Pnpm => "pnpm",
        }
    }

    /// The lockfile present in `dir`, if any.
    pub fn lockfile(self, dir: &Path) -> Option<std::path::PathBuf> {
        let names: &[&str] = match self {
            PackageManager::Npm => &["package-lock.json", "npm-shrinkwrap.json"],
            PackageManager::YarnClassic | PackageManager::YarnBerry => &["yarn.lock"],
            PackageManager::Pnpm => &["pnpm-lock.yaml"],
        };
        names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
    }

    /// The program and its leading arguments: `npm`, or `corepack yarn` / `corepack pnpm`.
    pub fn program(self) -> (&'static str, &'static [&'static str]) {
        match self {
            PackageManager::Npm => ("npm", &[]),
            PackageManager::YarnClassic | PackageManager::YarnBerry => ("corepack", &["yarn"]),
            PackageManager::Pnpm => ("corepack", &["pnpm"]),
        }
    }

    /// Installs every dependency, dev ones included (the build needs them), exactly as locked
    /// when there is a lockfile.
    pub fn install_args(self, locked: bool) -> Vec<&'static str> {
        match (self, locked) {
            (PackageManager::Npm, true) => vec!["ci", "--include=dev", "--no-audit", "--no-fund"],
            (PackageManager::Npm, false) => {
                vec!["install", "--include=dev", "--no-audit", "--no-fund"]
            }
            (PackageManager::YarnClassic, true) => vec![
                "install",
                "--frozen-lockfile",
                "--production=false",
                "--non-interactive",
            ],
            (PackageManager::YarnClassic, false) => {
                vec!["install", "--production=false", "--non-interactive"]
            }
            (PackageManager::YarnBerry, true) => vec!["install", "--immutable"],
            (PackageManager::YarnBerry, false) => vec!["install"],
            (PackageManager::Pnpm, true) => vec!["install", "--frozen-lockfile", "--prod=false"],
            (PackageManager::Pnpm, false) => vec!["install", "--prod=false"],
        }
    }

    /// Removes dev dependencies after the build. `None`: this manager cannot (the log says so).
    pub fn prune_args(self, locked: bool) -> Option<Vec<&'static str>> {
        match self {
            PackageManager::Npm => Some(vec!["prune", "--omit=dev", "--no-audit", "--no-fund"]),
            PackageManager::YarnClassic => Some(if locked {
                vec![
                    "install",
                    "--frozen-lockfile",
                    "--production=true",
                    "--non-interactive",
                    "--ignore-scripts",
                    "--prefer-offline",
                ]
            } else {
                vec![
                    "install",
                    "--production=true",
                    "--non-interactive",
                    "--ignore-scripts",
                    "--prefer-offline",
                ]
            }),
            PackageManager::YarnBerry => Some(vec!["workspaces", "focus", "--all", "--production"]),
            PackageManager::Pnpm => Some(vec!["prune", "--prod"]),
        }
    }

    /// Runs a package.json script.
    pub fn run_args(self, script: &'static str) -> Vec<&'static str> {
        vec!["run", script]
    }
}

/// yarn.lock of berry starts its entries after a `__metadata:` block; classic has none.
fn yarn_flavour(lockfile: &Path) -> PackageManager {
    let head = std::fs::read_to_string(lockfile).unwrap_or_default();
    if head.lines().take(20).any(|l| l.starts_with("__metadata:")) {
        PackageManager::YarnBerry
    } else {
        PackageManager::YarnClassic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn by_lockfile_then_package_manager_field() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            PackageManager::detect(d.path(), &json!({})),
            Ok(PackageManager::Npm)
        );
        assert_eq!(
            PackageManager::detect(d.path(), &json!({"packageManager": "pnpm@9.15.9"})),
            Ok(PackageManager::Pnpm)
        );
        assert_eq!(
            PackageManager::detect(d.path(), &json!({"packageManager": "yarn@4.5.0"})),
            Ok(PackageManager::YarnBerry)
        );
        assert!(PackageManager::detect(d.path(), &json!({"packageManager": "bun@1"})).is_err());
        std::fs::write(d.path().join("yarn.lock"), "# yarn lockfile v1\n\nms@2:\n").expect("write");
        assert_eq!(
            PackageManager::detect(d.path(), &json!({})),
            Ok(PackageManager::YarnClassic)
        );
        std::fs::write(
            d.path().join("yarn.lock"),
            "# generated\n\n__metadata:\n  version: 8\n",
        )
        .expect("write");
        assert_eq!(
            PackageManager::detect(d.path(), &json!({})),
            Ok(PackageManager::YarnBerry)
        );
        std::fs::write(d.path().join("pnpm-lock.yaml"), "lockfileVersion: '9.0'\n").expect("write");
        assert_eq!(
            PackageManager::detect(d.path(), &json!({})),
            Ok(PackageManager::Pnpm)
        );
    }
}
