//! The config's JSON Schema (conf/spinforge.schema.json): generated from the parser's own table
//! and current, valid for every example config, refusing what `spinforge check` refuses for
//! unknown keys and wrong types, and documented key by key in docs/config.md.

mod schema_check;

use schema_check::{as_json, assert_valid, repo, schema_errors, shipped_schema};
use spinforge_state::config::schema::{Ty, paths};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

fn spinforge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spinforge"))
        .args(args)
        .output()
        .expect("run spinforge")
}

#[test]
fn the_shipped_schema_is_what_the_parser_enforces() {
    let out = spinforge(&["schema"]);
    assert!(out.status.success());
    let generated: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("`spinforge schema` prints JSON");
    assert!(
        generated == shipped_schema(),
        "conf/spinforge.schema.json is stale: the config schema changed. Regenerate it with\n  cargo run -- schema > conf/spinforge.schema.json"
    );
}

/// The YAML blocks of a Markdown file that are whole config files (not indented fragments).
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line == "```yaml" => current = Some(String::new()),
            Some(block) if line == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
        .into_iter()
        .filter(|b| b.starts_with(|c: char| c.is_ascii_lowercase()))
        .collect()
}

#[test]
fn every_example_config_matches_the_schema() {
    let demo = repo().join("conf/spinforge.yaml");
    assert_valid(&demo);
    let text = std::fs::read_to_string(&demo).expect("read the demo config");
    assert!(
        text.starts_with("# yaml-language-server: $schema=./spinforge.schema.json\n"),
        "the demo config names its schema for editors on its first line"
    );
    let mut examples = 0;
    for doc in ["README.md", "docs/config.md"] {
        let markdown = std::fs::read_to_string(repo().join(doc)).expect("read the docs");
        for block in yaml_blocks(&markdown) {
            let errors = schema_errors(&block);
            assert!(errors.is_empty(), "{doc}:\n{block}\n{}", errors.join("\n"));
            examples += 1;
        }
    }
    assert!(
        examples >= 3,
        "found {examples} example configs in the docs"
    );
}

const APP: &str = "apps:\n  a:\n    domains: [a.test]\n    source: ./app\n";

/// `spinforge check` on `yaml` (beside an `app` folder): the exit code and stderr.
fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("app")).expect("app dir");
    std::fs::write(dir.path().join("c.pem"), "x").expect("write");
    let path = dir.path().join("spinforge.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let out = spinforge(&["check", "--config", &path.display().to_string()]);
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn what_check_refuses_for_unknown_keys_and_wrong_types_the_schema_refuses() {
    let app = |extra: &str| format!("{APP}{extra}");
    let bad: Vec<(&str, String)> = vec![
        (
            "unknown top-level key",
            format!("edgee:\n  grace: 5s\n{APP}"),
        ),
        (
            "unknown edge key",
            format!("edge:\n  wake_timout: 5s\n{APP}"),
        ),
        ("unknown app key", app("    memroy: 1G\n")),
        (
            "unknown health_check key",
            app("    health_check: { pth: / }\n"),
        ),
        (
            "unknown rate_limit key",
            app("    rate_limit: { rps: 5, burts: 3 }\n"),
        ),
        (
            "unknown builds key",
            format!("supervisor:\n  builds: {{ concurency: 2 }}\n{APP}"),
        ),
        (
            "unknown acme key",
            format!("tls:\n  acme: {{ emial: a@b.example }}\n{APP}"),
        ),
        (
            "unknown security header",
            app("    security_headers: { hsts: off, csp: x }\n"),
        ),
        (
            "unknown tls file key",
            app("    tls: { cert: c.pem, key: c.pem, chain: c.pem }\n"),
        ),
        ("edge as a list", format!("edge: [1, 2]\n{APP}")),
        ("edge as a word", format!("edge: fast\n{APP}")),
        ("apps as a list", "apps: [a]\n".into()),
        (
            "address as a list",
            format!("edge:\n  listen_http: [127.0.0.1:80]\n{APP}"),
        ),
        (
            "address as a word",
            format!("edge:\n  listen_http: nowhere\n{APP}"),
        ),
        (
            "duration as a word",
            format!("edge:\n  grace: forever\n{APP}"),
        ),
        (
            "duration without a unit",
            format!("edge:\n  grace: 10\n{APP}"),
        ),
        ("boolean as a word", format!("edge:\n  h2c: maybe\n{APP}")),
        (
            "number as a word",
            format!("edge:\n  max_held_requests: many\n{APP}"),
        ),
        (
            "number below its range",
            format!("edge:\n  max_held_requests: 0\n{APP}"),
        ),
        (
            "number above its range",
            format!("supervisor:\n  logs: {{ keep: 101 }}\n{APP}"),
        ),
        (
            "choice not offered",
            format!("edge:\n  access_log: text\n{APP}"),
        ),
        (
            "address or off",
            format!("edge:\n  metrics: yes please\n{APP}"),
        ),
        (
            "redis without scheme",
            format!("state:\n  redis: localhost:6379\n{APP}"),
        ),
        (
            "challenge not offered",
            format!("tls:\n  acme: {{ challenge: dns-01 }}\n{APP}"),
        ),
        ("size as a word", app("    memory: lots\n")),
        ("size as a list", app("    memory: [1]\n")),
        ("instances zero", app("    instances: 0\n")),
        ("instances above 64", app("    instances: 65\n")),
        ("cpu as a word", app("    cpu: lots\n")),
        ("framework not offered", app("    framework: rails\n")),
        ("env as a list", app("    env: [A]\n")),
        ("env name with a digit first", app("    env: { 9X: a }\n")),
        ("env name SpinForge sets", app("    env: { PORT: 1 }\n")),
        ("env value as a mapping", app("    env: { A: { b: c } }\n")),
        (
            "health_check as a word",
            app("    health_check: /healthz\n"),
        ),
        (
            "headers size as a list",
            app("    limits: { headers: [1] }\n"),
        ),
        (
            "rate limit without rps",
            app("    rate_limit: { burst: 3 }\n"),
        ),
        (
            "rate limit scope",
            app("    rate_limit: { rps: 1, scope: global }\n"),
        ),
        ("tls word", app("    tls: maybe\n")),
        ("tls files without key", app("    tls: { cert: c.pem }\n")),
        ("compression as a word", app("    compression: maybe\n")),
        (
            "domains as a mapping",
            "apps:\n  a:\n    domains: { a: b }\n    source: ./app\n".into(),
        ),
        ("no domains", "apps:\n  a:\n    source: ./app\n".into()),
        (
            "bad app name",
            "apps:\n  Bad_Name:\n    domains: [a.test]\n    source: ./app\n".into(),
        ),
        ("source and upstream", app("    upstream: 127.0.0.1:1\n")),
        (
            "neither source nor upstream",
            "apps:\n  a:\n    domains: [a.test]\n".into(),
        ),
        (
            "run-time key on an upstream",
            "apps:\n  a:\n    domains: [a.test]\n    upstream: 127.0.0.1:1\n    instances: 2\n"
                .into(),
        ),
    ];
    let mut disagreements = Vec::new();
    for (what, yaml) in &bad {
        let (code, stderr) = check(yaml);
        let schema = schema_errors(yaml);
        if code != 1 || schema.is_empty() {
            disagreements.push(format!(
                "{what}: check exited {code}, schema found {} error(s)\n{yaml}{stderr}",
                schema.len()
            ));
        }
    }
    let good: Vec<(&str, String)> = vec![
        (
            "words YAML 1.1 reads as booleans",
            app("    tls: off\n    security_headers: off\n    compression: off\n    spa: yes\n"),
        ),
        ("off and on", format!("edge:\n  metrics: off\n  access_log: off\n  h2c: on\n{APP}")),
        ("idle_timeout 0", app("    idle_timeout: 0\n")),
        (
            "sizes as numbers and with units",
            app("    memory: 512MiB\n    limits: { body: 1024, headers: 8K }\n"),
        ),
        ("env values of any scalar", app("    env: { N: 2, B: true, EMPTY: }\n")),
        ("one domain as a word", "apps:\n  a:\n    domains: a.test\n    source: ./app\n".into()),
        ("an empty section", format!("supervisor:\n  builds:\n{APP}")),
        ("tls files", app("    tls: { cert: c.pem, key: c.pem }\n")),
        (
            "an upstream app",
            "apps:\n  a:\n    domains: [a.test]\n    upstream: 127.0.0.1:8081\n    health_check: { path: /healthz }\n".into(),
        ),
    ];
    for (what, yaml) in &good {
        let (code, stderr) = check(yaml);
        let schema = schema_errors(yaml);
        if code != 0 || !schema.is_empty() {
            disagreements.push(format!(
                "{what} (valid): check exited {code}, schema says {schema:?}\n{yaml}{stderr}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "check and the schema disagree:\n\n{}",
        disagreements.join("\n\n")
    );
}

/// docs/config.md's key tables: key path → (default cell, the whole row).
fn documented_keys() -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(repo().join("docs/config.md")).expect("read docs/config.md");
    let mut keys = BTreeMap::new();
    let mut prefix: Option<&str> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            prefix = match heading {
                "`state`" | "`edge`" | "`supervisor`" | "`tls`" => Some(""),
                "`apps.<name>`" => Some("apps.*."),
                _ => None,
            };
            continue;
        }
        let Some(prefix) = prefix else { continue };
        let cells: Vec<&str> = line.split(" | ").collect();
        if !line.starts_with("| `") || cells.len() < 3 {
            continue;
        }
        let names: Vec<&str> = cells[0].split('`').skip(1).step_by(2).collect();
        for name in &names {
            let default = if names.len() == 1 {
                cells[1].trim()
            } else {
                ""
            };
            keys.insert(
                format!("{prefix}{name}"),
                (default.to_string(), line.to_string()),
            );
        }
    }
    keys
}

#[test]
fn docs_config_md_documents_every_key_with_its_default() {
    let documented = documented_keys();
    assert!(documented.len() > 40, "read {} keys", documented.len());
    let schema = paths();
    let mut problems = Vec::new();
    let mut known = BTreeSet::new();
    for (path, key) in &schema {
        known.insert(path.clone());
        let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let under_word_or_section = schema
            .iter()
            .any(|(p, k)| p == parent && matches!(k.ty, Ty::WordOrSection { .. }));
        match &key.ty {
            // Containers are headings or groups, not rows.
            Ty::Section(_) | Ty::Apps(_) => continue,
            // Sub-keys of `security_headers` and `tls` are told in their parent's row.
            _ if under_word_or_section && !documented.contains_key(path) => {
                let row = documented
                    .get(parent)
                    .map(|(_, row)| row.as_str())
                    .unwrap_or("");
                if !row.contains(key.name) {
                    problems.push(format!("`{path}` is not mentioned in the `{parent}` row"));
                }
                continue;
            }
            _ => {}
        }
        let Some((default, _)) = documented.get(path) else {
            problems.push(format!("`{path}` has no row in docs/config.md"));
            continue;
        };
        // A default written as one literal must be the table's.
        let literal = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|d| !d.contains('`'));
        match (literal, key.default) {
            (Some(doc), Some(table)) if doc != table => problems.push(format!(
                "`{path}`: docs/config.md says the default is `{doc}`, the parser uses `{table}`"
            )),
            (Some(doc), None) if !matches!(key.ty, Ty::Env) => problems.push(format!(
                "`{path}`: docs/config.md gives the default `{doc}`; the parser has none"
            )),
            _ => {}
        }
    }
    for path in documented.keys() {
        if !known.contains(path) {
            problems.push(format!(
                "docs/config.md documents `{path}`, which the config does not have"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn yaml_1_1_words_reach_the_schema_as_the_parser_reads_them() {
    // serde-saphyr may read a bare `off` as false: the schema accepts both spellings.
    let v = as_json("a: off\n");
    assert!(v["a"] == serde_json::json!(false) || v["a"] == serde_json::json!("off"));
}
