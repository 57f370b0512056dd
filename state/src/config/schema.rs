//! The config's schema as data: every key, its type, range and default, in one table.
//!
//! The parser ([`super::parse`]) takes keys only through this table — whatever a mapping holds
//! beyond its keys is an unknown key, with "did you mean" among them — and reads each key's
//! type and range from it. [`json_schema`] turns the same table into a JSON Schema for editors
//! (`conf/spinforge.schema.json`, printed by `spinforge schema`). Checks a JSON Schema cannot say
//! (a folder exists, a domain is taken once) stay in the parser.

use serde_json::{Map, Value, json};

/// One key of a mapping.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub ty: Ty,
    /// As it would be written in the file (`30s`, `0.0.0.0:80`); `None`: absent unless given.
    pub default: Option<&'static str>,
    /// The parser refuses the mapping without it.
    pub required: bool,
    /// One line for editors' hover help; docs/config.md tells the whole story.
    pub doc: &'static str,
    /// What a reload (SIGHUP, `spinforge reload`, an edit of the file) does with a change of it.
    pub reload: Reload,
}

/// What a reload does with a changed key (see [`super::reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Applied by the running process.
    Live,
    /// Only a new process can apply it; the text says why (and what to do), for the log and
    /// `spinforge reload`'s output.
    Restart(&'static str),
}

/// What a key's value may be.
#[derive(Debug)]
pub enum Ty {
    /// `true`/`false` (also `on`/`off`, `yes`/`no`).
    Bool,
    /// `30s`, `5m`, `1h30m`, `250ms`.
    Duration { zero: Zero },
    /// Bytes, `256M`: from `min` to `max` (inclusive).
    Size { min: u64, max: u64 },
    /// A whole number from `min` to `max` (inclusive).
    Int { min: u64, max: u64 },
    /// A number from `min` (or above it, when `exclusive`) up to `max`; `what` says what it
    /// counts, for errors.
    Number {
        min: f64,
        exclusive: bool,
        max: f64,
        what: &'static str,
    },
    /// One word of a fixed set.
    Choice(&'static [&'static str]),
    /// `IP:port` (or `localhost:port`).
    Address,
    /// An address, or one of `words` (`off`).
    AddressOr(&'static [&'static str]),
    /// Text the parser checks itself (paths, URLs, names). `what` names it in errors ("a folder
    /// path"); `pattern`, when there is one, is what editors check.
    Text {
        what: &'static str,
        pattern: Option<&'static str>,
    },
    /// A nested mapping.
    Section(&'static [Key]),
    /// One of `words`, or a mapping of `keys` (`security_headers: off`, `tls: { cert, key }`).
    WordOrSection {
        words: &'static [&'static str],
        keys: &'static [Key],
    },
    /// `apps:` — app names to app sections.
    Apps(&'static [Key]),
    /// `env:` — variable names to scalar values.
    Env,
    /// `domains:` — one host name or a list.
    Domains,
}

/// What a duration of zero means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// Refused: "must be longer than 0".
    Refused,
    /// Allowed, meaning "never" (`idle_timeout: 0`).
    Never,
}

const fn key(name: &'static str, ty: Ty, default: Option<&'static str>, doc: &'static str) -> Key {
    Key {
        name,
        ty,
        default,
        required: false,
        doc,
        reload: Reload::Live,
    }
}

/// `k`, which only a new process can apply: a reload names it as needing a restart, with `why`.
const fn restart(k: Key, why: &'static str) -> Key {
    Key {
        reload: Reload::Restart(why),
        ..k
    }
}

const fn required(name: &'static str, ty: Ty, doc: &'static str) -> Key {
    Key {
        name,
        ty,
        default: None,
        required: true,
        doc,
        reload: Reload::Live,
    }
}

const fn text(what: &'static str) -> Ty {
    Ty::Text {
        what,
        pattern: None,
    }
}

/// Words YAML 1.1 reads as false; `off` is one, so a key that takes `off` gets `false` too.
pub(crate) const OFF: &[&str] = &["off"];

/// App names: they end up in paths, store keys and process names.
pub const APP_NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
const ENV_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
const DURATION_PATTERN: &str = r"^\s*([0-9]+(ms|s|m|h|d))+\s*$";
const SIZE_PATTERN: &str = r"^\s*[0-9]+\s*[KMGTkmgt]?[iI]*[bB]*\s*$";
const ADDRESS_PATTERN: &str =
    r"^\s*(localhost|[0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}\s*$";

/// An app has exactly one of these: code SpinForge runs, or a service it only routes to.
pub const SOURCE_KEYS: [&str; 2] = ["source", "upstream"];

/// Keys about running an app's processes, refused for an app with `upstream:`.
pub const RUN_KEYS: &[&str] = &[
    "framework",
    "env",
    "instances",
    "memory",
    "idle_timeout",
    "drain_timeout",
];

/// The top of the file.
pub static ROOT: &[Key] = &[
    key(
        "state",
        Ty::Section(STATE),
        None,
        "Where shared state lives: in memory, or Redis.",
    ),
    key(
        "edge",
        Ty::Section(EDGE),
        None,
        "The proxy: listeners, timeouts, metrics.",
    ),
    key(
        "supervisor",
        Ty::Section(SUPERVISOR),
        None,
        "Builds, spinlets, the admin API.",
    ),
    key(
        "tls",
        Ty::Section(TLS),
        None,
        "Automatic HTTPS (with edge.listen_https).",
    ),
    key(
        "apps",
        Ty::Apps(APP),
        None,
        "Apps by name (1-63 lowercase letters, digits and -).",
    ),
];

static STATE: &[Key] = &[restart(
    key(
        "redis",
        Ty::Text {
            what: "a redis:// URL",
            pattern: Some("^(redis|rediss|redis\\+unix|unix)://"),
        },
        None,
        "redis://[user:password@]host:port/db; absent: the embedded in-memory store (spinforge up only).",
    ),
    "the state store is connected at start",
)];

/// Why a listener address needs a new process, and how to get one without refusing a connection.
const LISTENER: &str = "the listening socket is bound at start; restart, or for `spinforge edge` start a new one with --upgrade and send the running one SIGQUIT (no connection is refused)";

static EDGE: &[Key] = &[
    restart(
        key(
            "listen_http",
            Ty::Address,
            Some("0.0.0.0:80"),
            "The plain-HTTP listener, IP:port.",
        ),
        LISTENER,
    ),
    key(
        "wake_timeout",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("30s"),
        "How long a request for a stopped app is held while the app starts; then 503.",
    ),
    key(
        "grace",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("10s"),
        "On SIGTERM, the whole shutdown happens within it.",
    ),
    key(
        "max_held_requests",
        Ty::Int {
            min: 1,
            max: u32::MAX as u64,
        },
        Some("1000"),
        "Requests held per cold app; beyond it, 503 at once.",
    ),
    key(
        "h2c",
        Ty::Bool,
        Some("false"),
        "Also accept HTTP/2 without TLS (prior knowledge) on the plain listener.",
    ),
    key(
        "max_connections_per_ip",
        Ty::Int {
            min: 1,
            max: u32::MAX as u64,
        },
        Some("256"),
        "Connections one client IP (IPv6: one /64) may hold open at once.",
    ),
    key(
        "keepalive_timeout",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("60s"),
        "An idle client keep-alive connection is closed after this.",
    ),
    key(
        "header_timeout",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("10s"),
        "A new connection must send its request head within this.",
    ),
    key(
        "upgrade_sock",
        text("a file path"),
        Some("/tmp/spinforge-upgrade.sock"),
        "Unix socket on which `spinforge edge --upgrade` receives the running edge's sockets.",
    ),
    key(
        "metrics",
        Ty::AddressOr(OFF),
        Some("127.0.0.1:9101"),
        "Where Prometheus GET /metrics is served (IP:port), or off.",
    ),
    key(
        "access_log",
        Ty::Choice(&["off", "json"]),
        Some("off"),
        "json: one JSON object per request on stdout.",
    ),
    restart(
        key(
            "listen_https",
            Ty::Address,
            None,
            "The HTTPS listener, IP:port (e.g. 0.0.0.0:443); absent: no HTTPS.",
        ),
        LISTENER,
    ),
];

static SUPERVISOR: &[Key] = &[
    restart(
        key(
            "data_dir",
            text("a folder path"),
            Some("/var/lib/spinforge"),
            "Releases, logs, caches and certificates.",
        ),
        "everything under it (releases, logs, keys, app users) is opened there at start",
    ),
    key(
        "port_range",
        Ty::Text {
            what: "a port range such as 30000-39999",
            pattern: Some(r"^\s*[0-9]{1,5}\s*-\s*[0-9]{1,5}\s*$"),
        },
        Some("30000-39999"),
        "FIRST-LAST ports handed to spinlets on 127.0.0.1; at least 10.",
    ),
    restart(
        key(
            "run_as",
            Ty::Text {
                what: "a user name",
                pattern: Some("^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$"),
            },
            None,
            "As root: run builds and spinlets unprivileged, each app as its own user id.",
        ),
        "releases, caches and app user ids were made for the user at start",
    ),
    key(
        "builds",
        Ty::Section(BUILDS),
        None,
        "The build queue's limits.",
    ),
    restart(
        key(
            "admin_listen",
            Ty::Address,
            Some("127.0.0.1:9000"),
            "Where the admin API listens, IP:port.",
        ),
        "the admin API's socket is bound at start",
    ),
    restart(
        key(
            "admin_token_env",
            Ty::Text {
                what: "a variable name",
                pattern: Some(ENV_NAME_PATTERN),
            },
            Some("SPINFORGE_TOKEN"),
            "The environment variable holding the admin API's bearer token.",
        ),
        "the token is read from the environment at start",
    ),
    key(
        "deploy_dir",
        text("a folder path"),
        None,
        "Hot deploy folder: app folders or .tar.gz files dropped here are deployed.",
    ),
    key("logs", Ty::Section(LOGS), None, "Spinlet log files."),
];

static LOGS: &[Key] = &[
    key(
        "max_size",
        Ty::Size {
            min: 4 << 10,
            max: u64::MAX,
        },
        Some("10M"),
        "Each app's log file is rotated at this size (at least 4K).",
    ),
    key(
        "keep",
        Ty::Int { min: 0, max: 100 },
        Some("3"),
        "Rotated log files kept per app.",
    ),
];

static BUILDS: &[Key] = &[
    key(
        "concurrency",
        Ty::Int { min: 1, max: 64 },
        Some("1"),
        "Builds that run at once; others wait in the queue.",
    ),
    key(
        "timeout",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("15m"),
        "A build running longer is stopped and fails.",
    ),
    key(
        "keep_releases",
        Ty::Int { min: 1, max: 64 },
        Some("5"),
        "Releases kept per app, for rollback.",
    ),
    key(
        "max_archive_size",
        Ty::Size {
            min: 1 << 20,
            max: u64::MAX,
        },
        Some("1G"),
        "The most a .tar.gz source may unpack to (at least 1M).",
    ),
];

static TLS: &[Key] = &[key(
    "acme",
    Ty::Section(ACME),
    None,
    "The ACME certificate authority.",
)];

static ACME: &[Key] = &[
    key(
        "directory",
        Ty::Text {
            what: "an https:// URL",
            pattern: Some(r"^\s*https://\S+\s*$"),
        },
        Some(super::LETS_ENCRYPT_DIRECTORY),
        "The ACME directory URL.",
    ),
    key(
        "email",
        Ty::Text {
            what: "an email address",
            pattern: Some(r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$"),
        },
        None,
        "The account's contact, for expiry notices from the CA.",
    ),
    key(
        "ca_bundle",
        text("a file path"),
        None,
        "A PEM file of extra roots trusted for the ACME server's own HTTPS.",
    ),
    key(
        "challenge",
        Ty::Choice(&["http-01", "tls-alpn-01"]),
        Some("http-01"),
        "How domain control is proven: a token on port 80, or a certificate on port 443.",
    ),
];

/// One app, as it sits under `apps.<name>` (and alone in a deploy folder's spinforge.yaml).
pub static APP: &[Key] = &[
    required(
        "domains",
        Ty::Domains,
        "Host names the app answers on: a list, or one name (*.example.com: one label).",
    ),
    key(
        "source",
        text("a folder, git URL or .tar.gz path"),
        None,
        "The app's code: a folder, a git URL (#branch, #tag or #commit) or a .tar.gz file.",
    ),
    key(
        "upstream",
        Ty::Text {
            what: "host:port",
            pattern: Some(r"^\s*[^/\s]+:[0-9]{1,5}\s*$"),
        },
        None,
        "Instead of source: host:port of a service SpinForge routes to but does not run.",
    ),
    key(
        "framework",
        Ty::Choice(&["auto", "express", "next", "remix", "static", "node"]),
        Some("auto"),
        "How the app is built and started; auto: detected.",
    ),
    key(
        "env",
        Ty::Env,
        None,
        "Extra environment variables for the app (NAME: value).",
    ),
    key(
        "instances",
        Ty::Int { min: 1, max: 64 },
        Some("1"),
        "Spinlets that serve the app at once.",
    ),
    key(
        "memory",
        Ty::Size {
            min: 32 << 20,
            max: u64::MAX,
        },
        None,
        "Memory each spinlet may use (at least 32M), enforced with a cgroup.",
    ),
    key(
        "cpu",
        Ty::Number {
            min: 0.01,
            exclusive: false,
            max: 1024.0,
            what: "a number of cores from 0.01 up (0.5 = half a core)",
        },
        None,
        "Cores each spinlet may use (0.5: half of one core).",
    ),
    key(
        "idle_timeout",
        Ty::Duration { zero: Zero::Never },
        Some("5m"),
        "Stop the app after this long without requests; 0: never.",
    ),
    key(
        "drain_timeout",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("30s"),
        "A replaced spinlet finishes what it serves for at most this long, then stops.",
    ),
    key(
        "spa",
        Ty::Bool,
        Some("false"),
        "Static sites: answer unknown page paths with /index.html.",
    ),
    key(
        "health_check",
        Ty::Section(HEALTH_CHECK),
        None,
        "How a spinlet is found healthy.",
    ),
    key(
        "rate_limit",
        Ty::Section(RATE_LIMIT),
        None,
        "Requests per second per client IP (and for the whole app).",
    ),
    key("limits", Ty::Section(LIMITS), None, "Request size limits."),
    key(
        "compression",
        Ty::Bool,
        Some("true"),
        "Compress text responses (zstd, gzip or brotli, as the client prefers).",
    ),
    key(
        "security_headers",
        Ty::WordOrSection {
            words: &["off", "on"],
            keys: SECURITY_HEADERS,
        },
        None,
        "Response headers added when the app did not set them; off: none.",
    ),
    key(
        "tls",
        Ty::WordOrSection {
            words: &["auto", "off"],
            keys: APP_TLS_FILES,
        },
        Some("auto"),
        "auto: a certificate from ACME; off: plain HTTP only; { cert, key }: your PEM files.",
    ),
];

static HEALTH_CHECK: &[Key] = &[
    key(
        "path",
        Ty::Text {
            what: "a path",
            pattern: Some(r"^/\S*$"),
        },
        Some("/"),
        "Requested on each spinlet; any answer below 500 is healthy.",
    ),
    key(
        "timeout",
        Ty::Duration {
            zero: Zero::Refused,
        },
        Some("30s"),
        "How long a starting spinlet has to answer.",
    ),
];

static RATE_LIMIT: &[Key] = &[
    required(
        "rps",
        Ty::Number {
            min: 0.0,
            exclusive: true,
            max: 1_000_000.0,
            what: "a rate: give requests per second, a number above 0 (e.g. 50 or 0.5)",
        },
        "Requests per second each client IP may send.",
    ),
    key(
        "burst",
        Ty::Int {
            min: 0,
            max: u32::MAX as u64,
        },
        Some("0"),
        "Requests a client may send at once on top of the rate.",
    ),
    key(
        "app_rps",
        Ty::Number {
            min: 0.0,
            exclusive: true,
            max: 1_000_000.0,
            what: "a rate: give requests per second, a number above 0 (e.g. 50 or 0.5)",
        },
        None,
        "A budget for the whole app, all clients together.",
    ),
    key(
        "app_burst",
        Ty::Int {
            min: 0,
            max: u32::MAX as u64,
        },
        None,
        "Burst of the app-wide budget (needs app_rps).",
    ),
    key(
        "scope",
        Ty::Choice(&["local", "cluster"]),
        Some("local"),
        "local: each edge counts alone; cluster: edges sharing Redis count together.",
    ),
];

static LIMITS: &[Key] = &[
    key(
        "body",
        Ty::Size {
            min: 0,
            max: u64::MAX,
        },
        Some("10M"),
        "The largest request body; larger gets 413.",
    ),
    key(
        "headers",
        Ty::Size {
            min: 1 << 10,
            max: 1 << 20,
        },
        Some("32K"),
        "The largest request head, 1K-1M; larger gets 431.",
    ),
];

static SECURITY_HEADERS: &[Key] = &[
    key(
        "hsts",
        text("a header value, or off"),
        Some("max-age=31536000"),
        "Strict-Transport-Security (HTTPS only), or off.",
    ),
    key(
        "content_type_options",
        text("a header value, or off"),
        Some("nosniff"),
        "X-Content-Type-Options, or off.",
    ),
    key(
        "referrer_policy",
        text("a header value, or off"),
        Some("strict-origin-when-cross-origin"),
        "Referrer-Policy, or off.",
    ),
    key(
        "frame_options",
        text("a header value, or off"),
        None,
        "X-Frame-Options (not sent unless set).",
    ),
];

static APP_TLS_FILES: &[Key] = &[
    required(
        "cert",
        text("a file path"),
        "PEM certificate chain, leaf first.",
    ),
    required(
        "key",
        text("a file path"),
        "PEM private key (PKCS#8, PKCS#1 or SEC1).",
    ),
];

/// The names of `keys`, for "known keys here" and "did you mean".
pub fn names(keys: &[Key]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name).collect()
}

/// Every key with its dotted path (`edge.listen_http`, `apps.*.rate_limit.rps`), depth first in
/// table order; a section comes before its keys. For docs and tests.
pub fn paths() -> Vec<(String, &'static Key)> {
    fn walk(prefix: &str, keys: &'static [Key], out: &mut Vec<(String, &'static Key)>) {
        for k in keys {
            let path = if prefix.is_empty() {
                k.name.to_string()
            } else {
                format!("{prefix}.{}", k.name)
            };
            out.push((path.clone(), k));
            match &k.ty {
                Ty::Section(inner) | Ty::WordOrSection { keys: inner, .. } => {
                    walk(&path, inner, out)
                }
                Ty::Apps(app) => walk(&format!("{path}.*"), app, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk("", ROOT, &mut out);
    out
}

/// The whole schema as JSON Schema (draft-07, which editors' YAML support reads). A deploy
/// folder's app file can point at `#/definitions/app`.
pub fn json_schema() -> Value {
    let app = section(APP);
    // In the main file an app names its code or its upstream, not both; alone (a deploy folder,
    // an API body) the source is given by where it comes from.
    let app_in_file = json!({
        "allOf": [{ "$ref": "#/definitions/app" }],
        "oneOf": SOURCE_KEYS.iter().map(|k| json!({ "required": [k] })).collect::<Vec<_>>(),
        "dependencies": {
            "upstream": {
                "not": { "anyOf": RUN_KEYS.iter().map(|k| json!({ "required": [k] })).collect::<Vec<_>>() }
            }
        }
    });
    let mut root = section(ROOT);
    if let Some(obj) = root.as_object_mut() {
        obj.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-07/schema#"),
        );
        obj.insert("title".into(), json!("SpinForge config (spinforge.yaml)"));
        obj.insert(
            "definitions".into(),
            json!({ "app": app, "app_in_file": app_in_file }),
        );
    }
    root
}

/// A mapping of `keys`; `null` (a key with nothing under it) counts as an empty one.
fn section(keys: &[Key]) -> Value {
    let mut properties = Map::new();
    for k in keys {
        properties.insert(k.name.to_string(), property(k));
    }
    let required: Vec<&str> = keys.iter().filter(|k| k.required).map(|k| k.name).collect();
    let mut out = json!({
        "type": ["object", "null"],
        "additionalProperties": false,
        "properties": properties,
    });
    if !required.is_empty() {
        out["required"] = json!(required);
    }
    out
}

fn property(k: &Key) -> Value {
    let mut p = ty(&k.ty);
    if let Some(obj) = p.as_object_mut() {
        obj.insert("description".into(), json!(k.doc));
        if let Some(d) = k.default {
            obj.insert("default".into(), default_value(&k.ty, d));
        }
    }
    p
}

/// A default as the YAML would give it: booleans and numbers typed, the rest text.
fn default_value(ty: &Ty, text: &str) -> Value {
    match ty {
        Ty::Bool => json!(text == "true"),
        Ty::Int { .. } => text.parse::<u64>().map_or(json!(text), |n| json!(n)),
        _ => json!(text),
    }
}

/// `words`, and `false` when `off` is one of them (YAML 1.1 reads a bare `off` as false).
fn words(words: &[&str]) -> Value {
    let mut all: Vec<Value> = words.iter().map(|w| json!(w)).collect();
    if words.contains(&"off") {
        all.push(json!(false));
    }
    json!({ "enum": all })
}

fn ty(t: &Ty) -> Value {
    match t {
        Ty::Bool => json!({
            "anyOf": [
                { "type": "boolean" },
                { "enum": ["true", "false", "on", "off", "yes", "no"] }
            ]
        }),
        Ty::Duration { zero } => {
            let text = json!({ "type": "string", "pattern": DURATION_PATTERN });
            match zero {
                Zero::Never => json!({ "anyOf": [text, { "enum": [0, "0"] }] }),
                Zero::Refused => text,
            }
        }
        Ty::Size { min, max } => {
            let mut number = json!({ "type": "integer", "minimum": min });
            if *max != u64::MAX {
                number["maximum"] = json!(max);
            }
            json!({ "anyOf": [number, { "type": "string", "pattern": SIZE_PATTERN }] })
        }
        Ty::Int { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
        Ty::Number {
            min,
            exclusive,
            max,
            ..
        } => {
            let lower = if *exclusive {
                "exclusiveMinimum"
            } else {
                "minimum"
            };
            json!({ "type": "number", lower: min, "maximum": max })
        }
        Ty::Choice(w) => words(w),
        Ty::Address => json!({ "type": "string", "pattern": ADDRESS_PATTERN }),
        Ty::AddressOr(w) => json!({
            "anyOf": [{ "type": "string", "pattern": ADDRESS_PATTERN }, words(w)]
        }),
        Ty::Text { pattern, .. } => match pattern {
            Some(p) => json!({ "type": "string", "pattern": p }),
            None => json!({ "type": "string", "minLength": 1 }),
        },
        Ty::Section(keys) => section(keys),
        Ty::WordOrSection { words: w, keys } => json!({ "anyOf": [words(w), section(keys)] }),
        Ty::Apps(_) => json!({
            "type": ["object", "null"],
            "propertyNames": { "pattern": APP_NAME_PATTERN },
            "additionalProperties": { "$ref": "#/definitions/app_in_file" }
        }),
        Ty::Env => json!({
            "type": ["object", "null"],
            "propertyNames": { "pattern": ENV_NAME_PATTERN, "not": { "enum": ["PORT", "HOST"] } },
            "additionalProperties": { "type": ["string", "number", "boolean", "null"] }
        }),
        Ty::Domains => json!({
            "anyOf": [
                { "type": "string", "minLength": 1 },
                { "type": "array", "minItems": 1, "items": { "type": "string", "minLength": 1 } }
            ]
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A config file with every key of the table written out: its default, or (with
    /// `defaults_only` false) a sample value for keys without one.
    fn every_key(defaults_only: bool) -> String {
        let mut out = String::new();
        for k in ROOT.iter().filter(|k| k.name != "apps") {
            write_key(k, k.name, 0, defaults_only, &mut out);
        }
        out.push_str("apps:\n  a:\n");
        for k in APP.iter().filter(|k| k.name != "upstream") {
            let path = format!("apps.*.{}", k.name);
            write_key(k, &path, 4, defaults_only, &mut out);
        }
        if !defaults_only {
            // `upstream` excludes `source` and the run-time keys: an app of its own.
            out.push_str("  ext:\n    domains: [ext.test]\n    upstream: \"127.0.0.1:8081\"\n");
        }
        out
    }

    fn sample(path: &str) -> Option<&'static str> {
        Some(match path {
            "state.redis" => "\"redis://127.0.0.1:6379/0\"",
            "edge.listen_https" => "\"127.0.0.1:8443\"",
            "supervisor.run_as" => "nobody",
            "supervisor.deploy_dir" => "deploy",
            "tls.acme.email" => "ops@example.com",
            "tls.acme.ca_bundle" => "ca.pem",
            "apps.*.domains" => "[a.test, www.a.test]",
            "apps.*.source" => "apps/hello",
            "apps.*.env" => "{ A: b, N: 2 }",
            "apps.*.memory" => "64M",
            "apps.*.cpu" => "0.5",
            "apps.*.rate_limit.rps" => "5",
            "apps.*.rate_limit.app_rps" => "100",
            "apps.*.rate_limit.app_burst" => "20",
            "apps.*.security_headers.frame_options" => "DENY",
            "apps.*.tls.cert" => "ca.pem",
            "apps.*.tls.key" => "ca.pem",
            _ => return None,
        })
    }

    fn write_key(k: &Key, path: &str, indent: usize, defaults_only: bool, out: &mut String) {
        let pad = " ".repeat(indent);
        let nested = |keys: &'static [Key], out: &mut String| {
            out.push_str(&format!("{pad}{}:\n", k.name));
            for inner in keys {
                let p = format!("{path}.{}", inner.name);
                write_key(inner, &p, indent + 2, defaults_only, out);
            }
        };
        match (&k.ty, k.default) {
            // A rate limit has no default rate: with defaults only, there is none.
            (Ty::Section(keys), _) if defaults_only && keys.iter().any(|k| k.required) => {}
            (Ty::Section(keys), _) => nested(keys, out),
            (Ty::WordOrSection { .. }, Some(word)) if defaults_only => {
                out.push_str(&format!("{pad}{}: {word}\n", k.name))
            }
            (Ty::WordOrSection { keys, .. }, _) => nested(keys, out),
            (_, Some(d)) => {
                let quoted = serde_json::to_string(d).expect("a string");
                out.push_str(&format!("{pad}{}: {quoted}\n", k.name));
            }
            (_, None) if defaults_only => {}
            (_, None) => {
                let value = sample(path).unwrap_or_else(|| {
                    panic!("`{path}` has no default: give it a sample value in this test")
                });
                out.push_str(&format!("{pad}{}: {value}\n", k.name));
            }
        }
    }

    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("apps/hello")).expect("mkdir");
        std::fs::write(dir.path().join("ca.pem"), "x").expect("write");
        dir
    }

    #[test]
    fn the_parser_reads_every_key_of_the_table() {
        let dir = workspace();
        let text = every_key(false);
        let file = dir.path().join("spinforge.yaml");
        if let Err(e) = Config::parse(&text, &file) {
            panic!("{e}\n--- the config ---\n{text}");
        }
    }

    #[test]
    fn the_table_defaults_are_the_parsers() {
        let dir = workspace();
        let file = dir.path().join("spinforge.yaml");
        let minimal = "apps:\n  a:\n    domains: [a.test, www.a.test]\n    source: apps/hello\n";
        let text = every_key(true).replace(
            "apps:\n  a:\n",
            "apps:\n  a:\n    domains: [a.test, www.a.test]\n    source: apps/hello\n",
        );
        let spelled_out = Config::parse(&text, &file).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let implicit = Config::parse(minimal, &file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spelled_out, implicit, "{text}");
    }

    #[test]
    fn paths_name_nested_and_app_keys() {
        let paths: Vec<String> = paths().into_iter().map(|(p, _)| p).collect();
        for p in [
            "edge.listen_http",
            "supervisor.builds.timeout",
            "tls.acme.challenge",
            "apps.*.rate_limit.rps",
            "apps.*.tls.cert",
        ] {
            assert!(paths.contains(&p.to_string()), "{p} in {paths:?}");
        }
    }
}
