//! What a reload of the config file changes (SIGHUP, `spinforge reload`, an edit of the file).
//!
//! A reload reads the file whole: an invalid one changes nothing. A valid one is compared with
//! the config the process runs ([`changed`]): keys the schema marks [`Reload::Live`] are handed
//! to the parts that apply them; keys marked [`Reload::Restart`] (a listener address, the state
//! store, `data_dir`, …) stay as the process started with them ([`effective`]) and are named as
//! needing a restart ([`needs_restart`]) until one happens. Which key is which is the schema
//! table's to say ([`super::schema`]); this module only knows where each key sits in a
//! [`Config`].

use super::schema::{self, Reload};
use super::{Config, ConfigErrors};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// One key outside `apps:`: its dotted path, and where it sits in a [`Config`].
struct Leaf {
    path: &'static str,
    differs: fn(&Config, &Config) -> bool,
    /// Copies the key's value from the second config into the first.
    keep: fn(&mut Config, &Config),
}

macro_rules! leaf {
    ($path:literal, $($field:ident).+) => {
        Leaf {
            path: $path,
            differs: |a, b| a.$($field).+ != b.$($field).+,
            keep: |into, from| into.$($field).+ = from.$($field).+.clone(),
        }
    };
}

/// Every key outside `apps:` (a test holds this list to the schema table).
static LEAVES: &[Leaf] = &[
    leaf!("state.redis", state.redis),
    leaf!("edge.listen_http", edge.listen_http),
    leaf!("edge.wake_timeout", edge.wake_timeout),
    leaf!("edge.grace", edge.grace),
    leaf!("edge.max_held_requests", edge.max_held_requests),
    leaf!("edge.h2c", edge.h2c),
    leaf!("edge.max_connections_per_ip", edge.max_connections_per_ip),
    leaf!("edge.keepalive_timeout", edge.keepalive_timeout),
    leaf!("edge.header_timeout", edge.header_timeout),
    leaf!("edge.upgrade_sock", edge.upgrade_sock),
    leaf!("edge.metrics", edge.metrics),
    leaf!("edge.access_log", edge.access_log),
    leaf!("edge.listen_https", edge.listen_https),
    leaf!("supervisor.data_dir", supervisor.data_dir),
    leaf!("supervisor.port_range", supervisor.port_range),
    leaf!("supervisor.run_as", supervisor.run_as),
    leaf!(
        "supervisor.builds.concurrency",
        supervisor.builds.concurrency
    ),
    leaf!("supervisor.builds.timeout", supervisor.builds.timeout),
    leaf!(
        "supervisor.builds.keep_releases",
        supervisor.builds.keep_releases
    ),
    leaf!(
        "supervisor.builds.max_archive_size",
        supervisor.builds.max_archive_size
    ),
    leaf!("supervisor.admin_listen", supervisor.admin_listen),
    leaf!("supervisor.admin_token_env", supervisor.admin_token_env),
    leaf!("supervisor.deploy_dir", supervisor.deploy_dir),
    leaf!("supervisor.logs.max_size", supervisor.logs.max_size),
    leaf!("supervisor.logs.keep", supervisor.logs.keep),
    leaf!("tls.acme.directory", tls.acme.directory),
    leaf!("tls.acme.email", tls.acme.email),
    leaf!("tls.acme.ca_bundle", tls.acme.ca_bundle),
    leaf!("tls.acme.challenge", tls.acme.challenge),
];

/// How the schema treats `path` (a key outside `apps:`).
fn reload_of(path: &str) -> Reload {
    schema::paths()
        .into_iter()
        .find(|(p, _)| p == path)
        .map_or(Reload::Live, |(_, k)| k.reload)
}

/// What differs between `old` and `new`: dotted keys outside `apps:` (`edge.h2c`), then
/// `apps.<name>` for every app added, removed or changed.
pub fn changed(old: &Config, new: &Config) -> Vec<String> {
    let mut out: Vec<String> = LEAVES
        .iter()
        .filter(|l| (l.differs)(old, new))
        .map(|l| l.path.to_string())
        .collect();
    let names: std::collections::BTreeSet<&String> =
        old.apps.keys().chain(new.apps.keys()).collect();
    for name in names {
        if old.apps.get(name) != new.apps.get(name) {
            out.push(format!("apps.{name}"));
        }
    }
    out
}

/// The keys of `new` that differ from what the process started with (`boot`) and that only a
/// new process can apply, each with why.
pub fn needs_restart(boot: &Config, new: &Config) -> Vec<RestartKey> {
    LEAVES
        .iter()
        .filter(|l| (l.differs)(boot, new))
        .filter_map(|l| match reload_of(l.path) {
            Reload::Restart(why) => Some(RestartKey {
                key: l.path.to_string(),
                why: why.to_string(),
            }),
            Reload::Live => None,
        })
        .collect()
}

/// `new` as the running process can take it: every key only a new process can apply keeps its
/// value from `boot` (what the process started with).
pub fn effective(new: &Config, boot: &Config) -> Config {
    let mut out = new.clone();
    for l in LEAVES {
        if matches!(reload_of(l.path), Reload::Restart(_)) {
            (l.keep)(&mut out, boot);
        }
    }
    out
}

/// A key a reload could not apply: only a new process can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartKey {
    pub key: String,
    pub why: String,
}

/// One problem of a refused file, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub key: String,
    pub message: String,
    /// As `spinforge check` prints it: `file:line:column: key: message` and the line quoted.
    pub text: String,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The file was valid and whatever changed in it that the process can apply, it applied.
    Applied,
    /// The file was valid and nothing in it differs from what runs.
    Unchanged,
    /// The file was invalid (or unreadable): nothing changed, the running config goes on.
    Refused,
}

/// What a reload did, for the log, `POST /api/v1/reload` and `spinforge reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub file: String,
    pub outcome: Outcome,
    /// Keys applied by this reload (`edge.h2c`, `apps.shop`).
    pub applied: Vec<String>,
    /// Keys whose new value waits for a restart (this reload's and earlier ones').
    pub restart: Vec<RestartKey>,
    /// Things applied only in part, or not at all, with why (e.g. a metrics port that is taken).
    pub warnings: Vec<String>,
    /// Every problem of a refused file.
    pub errors: Vec<ReloadError>,
    /// How long the reload took, from reading the file to every part having applied it.
    pub took_ms: f64,
}

impl ReloadReport {
    /// The report of a file refused with `errors`.
    pub fn refused(file: &std::path::Path, errors: &ConfigErrors) -> ReloadReport {
        ReloadReport {
            file: file.display().to_string(),
            outcome: Outcome::Refused,
            applied: Vec::new(),
            restart: Vec::new(),
            warnings: Vec::new(),
            errors: errors
                .0
                .iter()
                .map(|e| ReloadError {
                    file: e.file.display().to_string(),
                    line: e.line,
                    column: e.column,
                    key: e.key.clone(),
                    message: e.message.clone(),
                    text: e.to_string(),
                })
                .collect(),
            took_ms: 0.0,
        }
    }
}

/// Asks the process's reloader for a reload and waits for its report. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader(mpsc::Sender<oneshot::Sender<ReloadReport>>);

impl Reloader {
    /// A reloader, and the queue its requests arrive on.
    pub fn new() -> (Reloader, mpsc::Receiver<oneshot::Sender<ReloadReport>>) {
        let (tx, rx) = mpsc::channel(16);
        (Reloader(tx), rx)
    }

    /// Reloads the config file and returns what happened; `None` when the process is stopping.
    pub async fn reload(&self) -> Option<ReloadReport> {
        let (reply, report) = oneshot::channel();
        self.0.send(reply).await.ok()?;
        report.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Ty;

    /// A value of `path` other than its default, as written in a file.
    fn other_value(path: &str, ty: &Ty, default: Option<&str>) -> String {
        let special = match path {
            "state.redis" => Some("\"redis://127.0.0.1:1/0\""),
            "edge.upgrade_sock" => Some("/tmp/other.sock"),
            "edge.metrics" => Some("off"),
            "supervisor.data_dir" => Some("/tmp/other-data"),
            "supervisor.port_range" => Some("31000-31099"),
            "supervisor.run_as" => Some("nobody"),
            "supervisor.admin_token_env" => Some("OTHER_TOKEN"),
            "supervisor.deploy_dir" => Some("deploy"),
            "tls.acme.directory" => Some("https://ca.example.com/dir"),
            "tls.acme.email" => Some("ops@example.com"),
            "tls.acme.ca_bundle" => Some("ca.pem"),
            _ => None,
        };
        if let Some(v) = special {
            return v.to_string();
        }
        match ty {
            Ty::Bool => (default != Some("true")).to_string(),
            Ty::Duration { .. } => "7s".into(),
            Ty::Size { min, .. } => (min * 3).to_string(),
            Ty::Int { min, max } => {
                let v = (min + 2).min(*max);
                if default == Some(&v.to_string()) {
                    (v - 1).to_string()
                } else {
                    v.to_string()
                }
            }
            Ty::Address | Ty::AddressOr(_) => "\"127.0.0.1:4321\"".into(),
            Ty::Choice(words) => words
                .iter()
                .find(|w| Some(**w) != default)
                .expect("another word")
                .to_string(),
            other => panic!("`{path}` ({other:?}): give it a value in this test"),
        }
    }

    /// The config with `path` (`edge.h2c`) set to `value`, everything else default.
    fn with_key(path: &str, value: &str, dir: &std::path::Path) -> Config {
        let parts: Vec<&str> = path.split('.').collect();
        let mut text = String::new();
        for (depth, part) in parts.iter().enumerate() {
            let pad = "  ".repeat(depth);
            if depth + 1 == parts.len() {
                text.push_str(&format!("{pad}{part}: {value}\n"));
            } else {
                text.push_str(&format!("{pad}{part}:\n"));
            }
        }
        Config::parse(&text, &dir.join("spinforge.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n--- the config ---\n{text}"))
    }

    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("deploy")).expect("mkdir");
        std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
        dir
    }

    /// Every key of the table outside `apps:` that holds a value (not a section).
    fn leaf_paths() -> Vec<(String, &'static schema::Key)> {
        schema::paths()
            .into_iter()
            .filter(|(p, k)| {
                !p.starts_with("apps") && !matches!(k.ty, Ty::Section(_) | Ty::Apps(_))
            })
            .collect()
    }

    #[test]
    fn every_key_of_the_table_is_compared_once() {
        let table: Vec<String> = leaf_paths().into_iter().map(|(p, _)| p).collect();
        let here: Vec<String> = LEAVES.iter().map(|l| l.path.to_string()).collect();
        let mut sorted_table = table.clone();
        sorted_table.sort();
        let mut sorted_here = here.clone();
        sorted_here.sort();
        sorted_here.dedup();
        assert_eq!(sorted_here.len(), here.len(), "a key listed twice");
        assert_eq!(sorted_table, sorted_here);
    }

    #[test]
    fn a_change_of_each_key_is_found_and_kept_or_applied_as_the_table_says() {
        let dir = workspace();
        let file = dir.path().join("spinforge.yaml");
        let base = Config::parse("", &file).expect("empty config");
        for (path, key) in leaf_paths() {
            let value = other_value(&path, &key.ty, key.default);
            let new = with_key(&path, &value, dir.path());
            assert_eq!(changed(&base, &new), vec![path.clone()], "{path}: {value}");
            let restart: Vec<String> = needs_restart(&base, &new)
                .into_iter()
                .map(|r| r.key)
                .collect();
            let applied = effective(&new, &base);
            match key.reload {
                Reload::Restart(_) => {
                    assert_eq!(restart, vec![path.clone()]);
                    assert_eq!(applied, base, "{path} is kept as it started");
                }
                Reload::Live => {
                    assert!(restart.is_empty(), "{path}");
                    assert_eq!(applied, new, "{path} is applied");
                }
            }
        }
    }

    #[test]
    fn app_changes_are_named_by_app() {
        let dir = workspace();
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        let file = dir.path().join("spinforge.yaml");
        let app = |name: &str, domain: &str| {
            format!("  {name}:\n    domains: [{domain}]\n    source: a\n")
        };
        let old = Config::parse(
            &format!(
                "apps:\n{}{}",
                app("one", "one.test"),
                app("two", "two.test")
            ),
            &file,
        )
        .expect("old");
        let new = Config::parse(
            &format!(
                "apps:\n{}{}",
                app("two", "2.test"),
                app("three", "three.test")
            ),
            &file,
        )
        .expect("new");
        assert_eq!(
            changed(&old, &new),
            vec!["apps.one", "apps.three", "apps.two"]
        );
        assert!(changed(&old, &old).is_empty());
    }
}
