//! The start command of a release: `node <file> …` run directly, never `npm start` as the
//! long-lived process (npm would sit between SpinForge and the app, eat signals and cost ~300 ms
//! of boot).

use super::detect::ENTRY_FILES;
use spinforge_state::config::Framework;
use std::path::Path;

/// The first element of a start command meaning "this spinforge binary" (static sites).
pub const SELF: &str = "@spinforge";

/// argv for the app in `dir` (built, dependencies installed). `node` is the node binary's path.
pub fn resolve(
    framework: Framework,
    manifest: Option<&serde_json::Value>,
    dir: &Path,
    node: &str,
    static_root: Option<&str>,
    spa: bool,
) -> Result<Vec<String>, String> {
    if framework == Framework::Static {
        let root = static_root.unwrap_or(".");
        let mut argv = vec![
            SELF.to_string(),
            "static-serve".into(),
            "--root".into(),
            root.into(),
        ];
        if spa {
            argv.push("--spa".into());
        }
        return Ok(argv);
    }
    let start = manifest
        .and_then(|m| m.pointer("/scripts/start"))
        .and_then(|s| s.as_str());
    if framework == Framework::Next {
        let bin = "node_modules/next/dist/bin/next";
        if !dir.join(bin).is_file() {
            return Err(format!(
                "{bin} is missing: is `next` in dependencies (not devDependencies)?"
            ));
        }
        // `next start` reads PORT; bind to the host SpinForge gives.
        return Ok(vec![
            node.into(),
            bin.into(),
            "start".into(),
            "-H".into(),
            "127.0.0.1".into(),
        ]);
    }
    if let Some(script) = start {
        if let Some(argv) = direct(script, dir, node) {
            return Ok(argv);
        }
        return Ok(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("exec {script}"),
        ]);
    }
    if framework == Framework::Remix {
        for (bin, build) in [
            (
                "node_modules/@remix-run/serve/dist/cli.js",
                "build/server/index.js",
            ),
            (
                "node_modules/@remix-run/serve/dist/cli.js",
                "build/index.js",
            ),
            (
                "node_modules/@react-router/serve/dist/cli.js",
                "build/server/index.js",
            ),
        ] {
            if dir.join(bin).is_file() && dir.join(build).is_file() {
                return Ok(vec![node.into(), bin.into(), build.into()]);
            }
        }
        return Err("cannot tell how to start this Remix app: add a `start` script such as `remix-serve ./build/server/index.js`".into());
    }
    let main = manifest
        .and_then(|m| m.get("main"))
        .and_then(|m| m.as_str());
    let compiled = [
        "dist/server.js",
        "dist/index.js",
        "build/server.js",
        "build/index.js",
    ];
    let entry = main
        .into_iter()
        .chain(ENTRY_FILES.iter().copied())
        .chain(compiled)
        .find(|f| dir.join(f).is_file())
        .ok_or_else(|| {
            "cannot tell how to start the app: add a `start` script to package.json, or a server.js or index.js".to_string()
        })?;
    Ok(vec![node.into(), entry.to_string()])
}

/// `node file args` as is; `some-bin args` as `node node_modules/<pkg>/<bin>.js args` when the
/// binary is a Node script of an installed package. `None` when the script needs a shell.
fn direct(script: &str, dir: &Path, node: &str) -> Option<Vec<String>> {
    let plain = script
        .bytes()
        .all(|b| !b"|&;<>()$`\\\"'*?[]#~=%".contains(&b));
    if !plain {
        return None;
    }
    let words: Vec<&str> = script.split_whitespace().collect();
    let (first, rest) = words.split_first()?;
    let rest = rest.iter().map(|w| w.to_string());
    if *first == "node" {
        return Some(std::iter::once(node.to_string()).chain(rest).collect());
    }
    if first.contains('/') {
        return None;
    }
    let link = dir.join("node_modules/.bin").join(first);
    let target = std::fs::canonicalize(&link).ok()?;
    let root = std::fs::canonicalize(dir).ok()?;
    let rel = target.strip_prefix(&root).ok()?.to_path_buf();
    let head = super::source::read_small(&target, 128).ok()?;
    let is_node = head.starts_with("#!") && head.lines().next()?.contains("node")
        || rel
            .extension()
            .is_some_and(|e| e == "js" || e == "cjs" || e == "mjs");
    is_node.then(|| {
        std::iter::once(node.to_string())
            .chain(std::iter::once(rel.display().to_string()))
            .chain(rest)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str = "/usr/bin/node";

    fn resolve_in(dir: &Path, fw: Framework, m: serde_json::Value) -> Vec<String> {
        resolve(fw, Some(&m), dir, NODE, None, false).expect("start")
    }

    #[test]
    fn node_scripts_and_entry_files() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            resolve_in(
                d.path(),
                Framework::Node,
                json!({"scripts": {"start": "node server.js --x"}})
            ),
            [NODE, "server.js", "--x"]
        );
        assert_eq!(
            resolve_in(
                d.path(),
                Framework::Node,
                json!({"scripts": {"start": "NODE_OPTIONS=x node a.js"}})
            )[..2],
            ["/bin/sh", "-c"]
        );
        std::fs::write(d.path().join("index.js"), "").expect("write");
        assert_eq!(
            resolve_in(d.path(), Framework::Express, json!({})),
            [NODE, "index.js"]
        );
        assert_eq!(
            resolve_in(d.path(), Framework::Express, json!({"main": "missing.js"})),
            [NODE, "index.js"]
        );
    }

    #[test]
    fn package_binaries_run_with_node() {
        let d = tempfile::tempdir().expect("tempdir");
        let pkg = d.path().join("node_modules/@remix-run/serve/dist");
        std::fs::create_dir_all(&pkg).expect("mkdir");
        std::fs::write(pkg.join("cli.js"), "#!/usr/bin/env node\n").expect("write");
        std::fs::create_dir_all(d.path().join("node_modules/.bin")).expect("mkdir");
        std::os::unix::fs::symlink(
            "../@remix-run/serve/dist/cli.js",
            d.path().join("node_modules/.bin/remix-serve"),
        )
        .expect("symlink");
        assert_eq!(
            resolve_in(
                d.path(),
                Framework::Remix,
                json!({"scripts": {"start": "remix-serve ./build/server/index.js"}})
            ),
            [
                NODE,
                "node_modules/@remix-run/serve/dist/cli.js",
                "./build/server/index.js"
            ]
        );
        // Not installed: a shell runs it.
        assert_eq!(
            resolve_in(
                d.path(),
                Framework::Remix,
                json!({"scripts": {"start": "react-router-serve ./build/server/index.js"}})
            )[0],
            "/bin/sh"
        );
    }

    #[test]
    fn next_and_static() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(
            resolve(
                Framework::Next,
                Some(&json!({})),
                d.path(),
                NODE,
                None,
                false
            )
            .is_err()
        );
        std::fs::create_dir_all(d.path().join("node_modules/next/dist/bin")).expect("mkdir");
        std::fs::write(d.path().join("node_modules/next/dist/bin/next"), "").expect("write");
        assert_eq!(
            resolve_in(
                d.path(),
                Framework::Next,
                json!({"scripts": {"start": "next start"}})
            ),
            [
                NODE,
                "node_modules/next/dist/bin/next",
                "start",
                "-H",
                "127.0.0.1"
            ]
        );
        assert_eq!(
            resolve(Framework::Static, None, d.path(), NODE, Some("dist"), true).expect("static"),
            [SELF, "static-serve", "--root", "dist", "--spa"]
        );
    }
}
