//! `spinforge init`: the real binary on the build fixtures — the starter config it writes
//! passes `spinforge check` and the JSON Schema, `spinforge up` serves it, and a second init
//! refuses to overwrite it.

mod schema_check;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::spinforge::{Spinforge, Workspace, binary, fixture};

/// Copies a build fixture into `ws` (as `ws/<name>`), without installed dependencies.
fn copy_fixture(ws: &Workspace, name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read fixture") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_name() == "node_modules" {
                continue;
            }
            if entry.file_type().expect("type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
    let dir = ws.path().join(name);
    copy(&fixture("build").join(name), &dir);
    dir
}

/// `spinforge init DIR` with the user's data folder inside the workspace.
fn init(ws: &Workspace, dir: &Path) -> Output {
    Command::new(binary())
        .arg("init")
        .arg(dir)
        .env("XDG_DATA_HOME", ws.data_dir())
        .output()
        .expect("run spinforge init")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_detects_each_fixture_and_writes_a_config_check_and_the_schema_accept() {
    let ws = Workspace::new();
    for (fixture, app, framework) in [
        ("express-js", "fixture-express-js", "express"),
        ("express-ts", "fixture-express-ts", "express"),
        ("next", "fixture-next", "next"),
        ("npm-node", "fixture-npm-node", "node"),
        ("pnpm-app", "fixture-pnpm-app", "node"),
        ("remix", "fixture-remix", "remix"),
        ("static-html", "static-html", "static"),
        ("static-vite", "fixture-static-vite", "static"),
        ("yarn-app", "fixture-yarn-app", "node"),
    ] {
        let dir = copy_fixture(&ws, fixture);
        let out = init(&ws, &dir);
        assert!(out.status.success(), "{fixture}: {}", text(&out.stderr));
        let config = dir.join("spinforge.yaml");
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("spinforge up --config {}", config.display())),
            "{fixture}: the command that serves it:\n{stdout}"
        );
        let written = std::fs::read_to_string(&config).expect("init wrote spinforge.yaml");
        for line in [
            format!("    framework: {framework}\n"),
            format!("    domains: [{app}.localhost]"),
            "  data_dir: ".to_string(),
            "    idle_timeout: 5m".to_string(),
        ] {
            assert!(
                written.contains(&line),
                "{fixture}: no `{line}` in:\n{written}"
            );
        }
        // The modeline names a schema file that is there, and the file matches it.
        let first = written.lines().next().unwrap_or_default();
        let schema = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{fixture}: no modeline: {first}"));
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(schema).expect("the schema is there"))
                .expect("JSON");
        assert!(schema == schema_check::shipped_schema(), "{fixture}");
        schema_check::assert_valid(&config);

        let check = Command::new(binary())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("run spinforge check");
        assert!(
            check.status.success(),
            "{fixture}: spinforge check refused what init wrote:\n{}\n{written}",
            text(&check.stderr)
        );

        // Never overwritten.
        let again = init(&ws, &dir);
        assert!(
            !again.status.success(),
            "{fixture}: a second init succeeded"
        );
        let err = text(&again.stderr);
        assert!(
            err.contains("already exists") && err.contains("never overwrites"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&config).expect("still there"),
            written
        );
    }
}

#[test]
fn init_names_what_it_cannot_tell_and_writes_nothing() {
    let ws = Workspace::new();
    let dir = ws.path().join("notes");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("README.md"), "hello").expect("write");
    let out = init(&ws, &dir);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot tell what the app in") && err.contains("package.json"),
        "{err}"
    );
    assert!(!dir.join("spinforge.yaml").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_what_init_wrote() {
    let ws = Workspace::new();
    let dir = copy_fixture(&ws, "static-html");
    let out = init(&ws, &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // As a user whose port 8080 is taken would: another port.
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let config = dir.join("spinforge.yaml");
    let written = std::fs::read_to_string(&config).expect("read");
    std::fs::write(
        &config,
        written.replace("127.0.0.1:8080", &http.to_string()),
    )
    .expect("write");
    let sf = Spinforge::start(&ws, "up", &config, Some(http));
    let reply = sf.client().fetch("static-html.localhost", "/").await;
    assert_eq!(reply.status, 200, "{}", sf.log_text());
    assert!(reply.body.contains("plain html home"), "{}", reply.body);
}
