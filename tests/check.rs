//! `spinforge check`: the real binary on good and bad configs.

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("app")).expect("app dir");
    let path = dir.path().join("spinforge.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_spinforge"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run spinforge check");
    let code = out.status.code().expect("exit code");
    (
        code,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const APP: &str = "apps:\n  a:\n    domains: [a.test]\n    source: ./app\n";

/// Asserts exit 1 and that stderr has `spinforge.yaml:LINE:COL: KEY:` and `words`.
fn assert_refused(yaml: &str, line: u32, column: u32, key: &str, words: &str) {
    let (code, _, err) = check(yaml);
    assert_eq!(code, 1, "expected exit 1 for:\n{yaml}\nstderr:\n{err}");
    let place = format!("spinforge.yaml:{line}:{column}: {key}: ");
    let found = err.lines().find(|l| l.contains(&place));
    let found = found.unwrap_or_else(|| panic!("no `{place}` in:\n{err}"));
    assert!(found.contains(words), "`{words}` missing from `{found}`");
}

#[test]
fn a_good_config_passes() {
    let (code, out, err) = check(&format!("edge:\n  listen_http: 127.0.0.1:8080\n{APP}"));
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.contains("ok (1 app(s), 1 domain(s), embedded state)"),
        "{out}"
    );
}

#[test]
fn the_shipped_demo_config_passes() {
    let out = Command::new(env!("CARGO_BIN_EXE_spinforge"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/spinforge.yaml"),
        ])
        .output()
        .expect("run spinforge check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_key() {
    assert_refused(
        &format!("edge:\n  wake_timout: 5s\n{APP}"),
        2,
        3,
        "edge.wake_timout",
        "did you mean `wake_timeout`",
    );
}

#[test]
fn bad_duration() {
    assert_refused(
        &format!("{APP}    idle_timeout: 5 minutes\n"),
        5,
        19,
        "apps.a.idle_timeout",
        "not a duration",
    );
}

#[test]
fn bad_size() {
    assert_refused(
        &format!("{APP}    memory: 256Q\n"),
        5,
        13,
        "apps.a.memory",
        "not a size",
    );
}

#[test]
fn bad_address() {
    assert_refused(
        &format!("edge:\n  listen_http: 127.0.0.1\n{APP}"),
        2,
        16,
        "edge.listen_http",
        "not an address",
    );
}

#[test]
fn duplicate_domain_across_apps() {
    let yaml = format!("{APP}  b:\n    domains: [A.TEST]\n    source: ./app\n");
    assert_refused(
        &yaml,
        6,
        15,
        "apps.b.domains",
        "already the domain of app `a`",
    );
}

#[test]
fn port_range_too_small() {
    let yaml = format!("supervisor:\n  port_range: 30000-30004\n{APP}");
    assert_refused(
        &yaml,
        2,
        15,
        "supervisor.port_range",
        "at least 10 are needed",
    );
}

#[test]
fn yaml_syntax_error() {
    let (code, _, err) = check("edge:\n  listen_http: [127.0.0.1:80\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("spinforge.yaml:2:") && err.contains("invalid YAML"),
        "{err}"
    );
}

#[test]
fn every_error_is_printed_with_a_caret() {
    let yaml =
        format!("edge:\n  grace: forever\n  listen_http: nowhere\n{APP}    idle_timeout: soon\n");
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1);
    for place in [
        "spinforge.yaml:2:10: edge.grace",
        "spinforge.yaml:3:16: edge.listen_http",
        "spinforge.yaml:8:19: apps.a.idle_timeout",
    ] {
        assert!(err.contains(place), "missing {place} in:\n{err}");
    }
    assert!(err.contains("3 error(s)"), "{err}");
    // The offending line is quoted with a caret under the column.
    assert!(
        err.contains(" 2 |   grace: forever\n   |          ^"),
        "{err}"
    );
}

#[test]
fn missing_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_spinforge"))
        .args(["check", "--config", "/nonexistent/spinforge.yaml"])
        .output()
        .expect("run spinforge check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}
