//! The schema walk: YAML nodes → [`Config`], every error collected with its place. Which keys a
//! mapping may hold, their types and ranges come from the table in [`super::schema`].

use super::schema::{self, Key, Ty, Zero};
use super::yaml::{self, Node, Pos, Value};
use super::{
    AccessLog, AcmeConfig, AppConfig, AppSource, AppTls, BuildLimits, ChallengeKind, Config,
    ConfigError, ConfigErrors, EdgeConfig, EnvValue, ExternalUpstream, Framework, GitUrl,
    HealthCheck, LogLimits, PortRange, RedisUrl, StateConfig, SupervisorConfig, TlsConfig, units,
};
use crate::policy::{EdgePolicy, RateLimit, RateLimitScope, SecurityHeaders};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names SpinForge sets in every spinlet's environment.
const RESERVED_ENV: &[&str] = &["PORT", "HOST"];

pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let mut w = Walker {
        file,
        lines: text.lines().collect(),
        errors: Vec::new(),
        default_source: None,
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = match yaml::read(text) {
        Ok(root) => root,
        Err(e) => {
            w.error(e.pos, "", format!("invalid YAML: {}", e.message));
            return Err(ConfigErrors(w.errors));
        }
    };
    let config = w.config(&root, &base);
    if w.errors.is_empty() {
        Ok(config)
    } else {
        w.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(w.errors))
    }
}

/// One app section on its own (an admin API body, a hot-deployed folder's `spinforge.yaml`):
/// the mapping that sits under `apps.<name>` in the main file. Key paths in errors are relative
/// to it (`domains`, `env.KEY`). Relative paths resolve against `file`'s folder. Without
/// `source:`/`upstream:` the app gets `default_source`, or an error when there is none. Domains
/// taken by other apps are the caller's to check.
pub fn parse_app(
    name: &str,
    text: &str,
    file: &Path,
    default_source: Option<AppSource>,
) -> Result<AppConfig, ConfigErrors> {
    let mut w = Walker {
        file,
        lines: text.lines().collect(),
        errors: Vec::new(),
        default_source,
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = match yaml::read(text) {
        Ok(root) => root,
        Err(e) => {
            w.error(e.pos, "", format!("invalid YAML: {}", e.message));
            return Err(ConfigErrors(w.errors));
        }
    };
    if let Err(message) = app_name(name) {
        w.error(root.pos, "", format!("app name: {message}"));
    }
    let app = w.app(name, &root, "", &base, &mut HashMap::new());
    match app {
        Some(app) if w.errors.is_empty() => Ok(app),
        _ => {
            w.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(w.errors))
        }
    }
}

struct Walker<'a> {
    file: &'a Path,
    lines: Vec<&'a str>,
    errors: Vec<ConfigError>,
    /// The source of an app section that names none (see [`parse_app`]).
    default_source: Option<AppSource>,
}

/// The entries of one mapping, handed out by name; whatever is left at `finish` is unknown.
struct Fields<'n> {
    path: String,
    /// What this mapping may hold.
    keys: &'static [Key],
    entries: Vec<(&'n yaml::Key, &'n Node)>,
}

/// One entry taken from a mapping, with its schema entry.
struct Field<'n> {
    path: String,
    node: &'n Node,
    key: &'static Key,
}

impl<'n> Fields<'n> {
    /// The entry `name`, which must be a key of this mapping's schema.
    fn take(&mut self, name: &str) -> Option<Field<'n>> {
        let Some(key) = self.keys.iter().find(|k| k.name == name) else {
            debug_assert!(false, "`{name}` is not in the schema of `{}`", self.path);
            return None;
        };
        let i = self.entries.iter().position(|(k, _)| k.name == name)?;
        let (_, node) = self.entries.remove(i);
        Some(Field {
            path: join(&self.path, name),
            node,
            key,
        })
    }

    /// Reports the keys nobody took as unknown, with the closest known name.
    fn finish(self, w: &mut Walker<'_>) {
        let known = schema::names(self.keys);
        for (key, _) in self.entries {
            let path = join(&self.path, &key.name);
            let mut message = "unknown key".to_string();
            if let Some(best) = closest(&key.name, &known) {
                message.push_str(&format!("; did you mean `{best}`?"));
            } else if !known.is_empty() {
                message.push_str(&format!("; known keys here: {}", known.join(", ")));
            }
            w.error(key.pos, &path, message);
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `4096` → `4K`, for range messages.
fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

impl Walker<'_> {
    fn error(&mut self, pos: Pos, key: &str, message: impl Into<String>) {
        // Quoted in logs and API answers: a git URL on the line keeps its token to itself.
        let source_line = (pos.line >= 1)
            .then(|| {
                self.lines
                    .get(pos.line as usize - 1)
                    .map(|l| super::redact_userinfo(l).into_owned())
            })
            .flatten();
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key: key.to_string(),
            message: message.into(),
            source_line,
        });
    }

    /// A mapping's fields against `keys`; `null` (a key with nothing under it) is an empty
    /// mapping.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        keys: &'static [Key],
    ) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                path: path.to_string(),
                keys,
                entries: entries.iter().map(|(k, v)| (k, v)).collect(),
            }),
            Value::Null => Some(Fields {
                path: path.to_string(),
                keys,
                entries: Vec::new(),
            }),
            other => {
                self.error(
                    node.pos,
                    path,
                    format!("expected a mapping, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// The fields of a nested section (`Ty::Section`, or the mapping of a `Ty::WordOrSection`).
    fn section<'n>(&mut self, field: &Field<'n>) -> Option<Fields<'n>> {
        let keys = match &field.key.ty {
            Ty::Section(keys) | Ty::WordOrSection { keys, .. } => keys,
            other => {
                debug_assert!(false, "{} is {other:?}, not a section", field.path);
                return None;
            }
        };
        self.fields(field.node, &field.path, keys)
    }

    fn scalar<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Scalar(s) => Some(s),
            other => {
                self.error(
                    node.pos,
                    path,
                    format!("expected {what}, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Reads a scalar and converts it; a conversion error is reported at the value.
    fn convert<T>(
        &mut self,
        field: Option<Field<'_>>,
        what: &str,
        convert: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let field = field?;
        let text = self.scalar(field.node, &field.path, what)?;
        match convert(text) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(field.node.pos, &field.path, message);
                None
            }
        }
    }

    /// A `Ty::Text` key, checked by `check`.
    fn text<T>(
        &mut self,
        field: Option<Field<'_>>,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let what = match field.as_ref().map(|f| &f.key.ty) {
            Some(Ty::Text { what, .. }) => *what,
            _ => "text",
        };
        self.convert(field, what, check)
    }

    /// A `Ty::Duration` key: zero refused or meaning "never", as the schema says.
    fn duration(&mut self, field: Option<Field<'_>>) -> Option<Duration> {
        let zero = match field.as_ref().map(|f| &f.key.ty) {
            Some(Ty::Duration { zero }) => *zero,
            _ => Zero::Refused,
        };
        self.convert(field, "a duration such as 30s", |s| {
            let d = units::parse_duration(s)?;
            if d.is_zero() && zero == Zero::Refused {
                return Err("must be longer than 0".into());
            }
            Ok(d)
        })
    }

    /// A `Ty::Size` key, within its range.
    fn size(&mut self, field: Option<Field<'_>>) -> Option<u64> {
        let (min, max) = match field.as_ref().map(|f| &f.key.ty) {
            Some(Ty::Size { min, max }) => (*min, *max),
            _ => (0, u64::MAX),
        };
        self.convert(field, "a size such as 256M", |s| {
            let bytes = units::parse_size(s)?;
            if (min..=max).contains(&bytes) {
                Ok(bytes)
            } else if max == u64::MAX {
                Err(format!(
                    "`{s}` is too small: give at least {}",
                    size_text(min)
                ))
            } else {
                Err(format!(
                    "`{s}` is out of range: give between {} and {}",
                    size_text(min),
                    size_text(max)
                ))
            }
        })
    }

    /// A `Ty::Int` key, within its range.
    fn int(&mut self, field: Option<Field<'_>>) -> Option<u64> {
        let (min, max) = match field.as_ref().map(|f| &f.key.ty) {
            Some(Ty::Int { min, max }) => (*min, *max),
            _ => (0, u64::MAX),
        };
        self.convert(field, "a whole number", |s| {
            s.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| match (min, max) {
                    (_, max) if max <= 1_000_000 => {
                        format!("`{s}` is not a whole number from {min} to {max}")
                    }
                    (0, _) => format!("`{s}` is not a whole number"),
                    (1, _) => format!("`{s}` is not a positive whole number"),
                    _ => format!("`{s}` is not a whole number of at least {min}"),
                })
        })
    }

    /// A `Ty::Number` key, within its range.
    fn number(&mut self, field: Option<Field<'_>>) -> Option<f64> {
        let Some(Ty::Number {
            min,
            exclusive,
            max,
            what,
        }) = field.as_ref().map(|f| &f.key.ty)
        else {
            debug_assert!(field.is_none(), "not a number key");
            return None;
        };
        let (min, exclusive, max, what) = (*min, *exclusive, *max, *what);
        self.convert(field, what, |s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| {
                    n.is_finite() && *n <= max && if exclusive { *n > min } else { *n >= min }
                })
                .ok_or_else(|| format!("`{s}` is not {what}"))
        })
    }

    fn boolean(&mut self, field: Option<Field<'_>>) -> Option<bool> {
        self.convert(field, "true or false", |s| match s {
            "true" | "on" | "yes" => Ok(true),
            "false" | "off" | "no" => Ok(false),
            _ => Err(format!("`{s}` is not true or false")),
        })
    }

    /// A `Ty::Choice` key: one of its words (`false` read as `off`, as YAML 1.1 writes it).
    fn choice(&mut self, field: Option<Field<'_>>) -> Option<&'static str> {
        let words: &'static [&'static str] = match field.as_ref().map(|f| &f.key.ty) {
            Some(Ty::Choice(words)) => words,
            _ => &[],
        };
        let name = field.as_ref().map(|f| f.key.name).unwrap_or_default();
        self.convert(field, &format!("one of {}", words.join(", ")), |s| {
            word(words, s)
                .ok_or_else(|| format!("`{s}` is not a possible `{name}`: use {}", or_list(words)))
        })
    }

    /// A `Ty::Address` key.
    fn address(&mut self, field: Option<Field<'_>>) -> Option<SocketAddr> {
        self.convert(field, "an address (IP:port)", socket_addr)
    }

    fn config(&mut self, root: &Node, base: &Path) -> Config {
        let mut config = Config {
            file: self.file.to_path_buf(),
            state: StateConfig::default(),
            edge: EdgeConfig::default(),
            supervisor: SupervisorConfig::default(),
            tls: TlsConfig::default(),
            apps: BTreeMap::new(),
        };
        let Some(mut top) = self.fields(root, "", schema::ROOT) else {
            return config;
        };
        if let Some(f) = top.take("state") {
            self.state(&f, &mut config.state);
        }
        if let Some(f) = top.take("edge") {
            self.edge(&f, base, &mut config.edge);
        }
        if let Some(f) = top.take("supervisor") {
            self.supervisor(&f, base, &mut config.supervisor);
        }
        if let Some(f) = top.take("tls") {
            self.tls(&f, base, &mut config.tls);
        }
        if let Some(f) = top.take("apps") {
            config.apps = self.apps(&f, base);
        }
        top.finish(self);
        config
    }

    fn state(&mut self, field: &Field<'_>, out: &mut StateConfig) {
        let Some(mut f) = self.section(field) else {
            return;
        };
        out.redis = self.text(f.take("redis"), |s| {
            if ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| s.starts_with(scheme))
            {
                Ok(RedisUrl::new(s))
            } else {
                Err(format!(
                    "`{}` is not a Redis URL: write redis://host:port/db (or rediss:// for TLS)",
                    RedisUrl::new(s)
                ))
            }
        });
        f.finish(self);
    }

    fn edge(&mut self, field: &Field<'_>, base: &Path, out: &mut EdgeConfig) {
        let Some(mut f) = self.section(field) else {
            return;
        };
        if let Some(a) = self.address(f.take("listen_http")) {
            out.listen_http = a;
        }
        if let Some(d) = self.duration(f.take("wake_timeout")) {
            out.wake_timeout = d;
        }
        if let Some(d) = self.duration(f.take("grace")) {
            out.grace = d;
        }
        if let Some(n) = self.int(f.take("max_held_requests")) {
            out.max_held_requests = n as usize;
        }
        if let Some(on) = self.boolean(f.take("h2c")) {
            out.h2c = on;
        }
        if let Some(n) = self.int(f.take("max_connections_per_ip")) {
            out.max_connections_per_ip = n as u32;
        }
        if let Some(d) = self.duration(f.take("keepalive_timeout")) {
            out.keepalive_timeout = d;
        }
        if let Some(d) = self.duration(f.take("header_timeout")) {
            out.header_timeout = d;
        }
        if let Some(p) = self.text(f.take("upgrade_sock"), |s| {
            let p = base.join(s);
            // sockaddr_un holds 108 bytes, the terminating NUL included.
            if p.as_os_str().len() > 107 {
                return Err(format!(
                    "`{s}` is too long for a Unix socket path (at most 107 bytes once resolved)"
                ));
            }
            Ok(p)
        }) {
            out.upgrade_sock = p;
        }
        if let Some(m) = self.convert(f.take("metrics"), "an address or off", |s| {
            match word(schema::OFF, s) {
                Some(_) => Ok(None),
                None => socket_addr(s).map(Some),
            }
        }) {
            out.metrics = m;
        }
        if let Some(a) = self.choice(f.take("access_log")) {
            out.access_log = match a {
                "json" => AccessLog::Json,
                _ => AccessLog::Off,
            };
        }
        if let Some(a) = self.address(f.take("listen_https")) {
            out.listen_https = Some(a);
        }
        f.finish(self);
    }

    fn supervisor(&mut self, field: &Field<'_>, base: &Path, out: &mut SupervisorConfig) {
        let Some(mut f) = self.section(field) else {
            return;
        };
        let folder = |s: &str| {
            if s.trim().is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(base.join(s))
            }
        };
        if let Some(dir) = self.text(f.take("data_dir"), folder) {
            out.data_dir = dir;
        }
        if let Some(r) = self.text(f.take("port_range"), port_range) {
            out.port_range = r;
        }
        out.run_as = self.text(f.take("run_as"), |s| {
            let ok = !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                && !s.starts_with('-');
            if ok {
                Ok(s.to_string())
            } else {
                Err(format!("`{s}` is not a user name"))
            }
        });
        if let Some(b) = f.take("builds") {
            out.builds = self.builds(&b);
        }
        if let Some(addr) = self.address(f.take("admin_listen")) {
            out.admin_listen = addr;
        }
        if let Some(name) = self.text(f.take("admin_token_env"), |s| {
            if env_name_ok(s) {
                Ok(s.to_string())
            } else {
                Err(format!("`{s}` is not an environment variable name"))
            }
        }) {
            out.admin_token_env = name;
        }
        out.deploy_dir = self.text(f.take("deploy_dir"), folder);
        if let Some(l) = f.take("logs") {
            out.logs = self.log_limits(&l);
        }
        f.finish(self);
    }

    fn log_limits(&mut self, field: &Field<'_>) -> LogLimits {
        let mut l = LogLimits::default();
        let Some(mut f) = self.section(field) else {
            return l;
        };
        if let Some(n) = self.size(f.take("max_size")) {
            l.max_size = n;
        }
        if let Some(n) = self.int(f.take("keep")) {
            l.keep = n as usize;
        }
        f.finish(self);
        l
    }

    fn builds(&mut self, field: &Field<'_>) -> BuildLimits {
        let mut b = BuildLimits::default();
        let Some(mut f) = self.section(field) else {
            return b;
        };
        if let Some(n) = self.int(f.take("concurrency")) {
            b.concurrency = n as usize;
        }
        if let Some(d) = self.duration(f.take("timeout")) {
            b.timeout = d;
        }
        if let Some(n) = self.int(f.take("keep_releases")) {
            b.keep_releases = n as usize;
        }
        if let Some(n) = self.size(f.take("max_archive_size")) {
            b.max_archive_size = n;
        }
        f.finish(self);
        b
    }

    fn apps(&mut self, field: &Field<'_>, base: &Path) -> BTreeMap<String, AppConfig> {
        let (node, path) = (field.node, field.path.as_str());
        let mut apps = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            if !matches!(node.value, Value::Null) {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected a mapping of app names, found {}",
                        node.value.kind()
                    ),
                );
            }
            return apps;
        };
        // Which app claimed each domain first, and where, for the duplicate message.
        let mut claimed: HashMap<String, (String, u32)> = HashMap::new();
        for (key, app_node) in entries {
            let app_path = join(path, &key.name);
            if let Err(message) = app_name(&key.name) {
                self.error(key.pos, &app_path, message);
            }
            if let Some(app) = self.app(&key.name, app_node, &app_path, base, &mut claimed) {
                apps.insert(key.name.clone(), app);
            }
        }
        apps
    }

    fn app(
        &mut self,
        name: &str,
        node: &Node,
        path: &str,
        base: &Path,
        claimed: &mut HashMap<String, (String, u32)>,
    ) -> Option<AppConfig> {
        let errors_before = self.errors.len();
        let mut f = self.fields(node, path, schema::APP)?;
        let domains = self.domains(f.take("domains"), path, node.pos, name, claimed);
        let [source_key, upstream_key] = schema::SOURCE_KEYS;
        let source = match (f.take(source_key), f.take(upstream_key)) {
            (Some(s), None) => self.source(&s, base),
            (None, Some(u)) => {
                let upstream = self.text(Some(u), external_upstream);
                // SpinForge routes to that service but does not run it: run-time keys do not apply.
                for key in schema::RUN_KEYS {
                    if let Some(run) = f.take(key) {
                        self.error(
                            run.node.pos,
                            &run.path,
                            format!("`{key}` does not apply to an app with `upstream:`: SpinForge routes to that service but does not run it; remove the key"),
                        );
                    }
                }
                upstream.map(AppSource::External)
            }
            (Some(_), Some(u)) => {
                self.error(
                    u.node.pos,
                    &u.path,
                    "an app has either `source:` (code SpinForge runs) or `upstream:` (a service it only routes to), not both",
                );
                None
            }
            (None, None) if self.default_source.is_some() => self.default_source.clone(),
            (None, None) => {
                self.error(
                    node.pos,
                    path,
                    "an app needs `source:`, the folder of its code (or `upstream:`, host:port of a service SpinForge routes to but does not run)",
                );
                None
            }
        };
        let framework = match self.choice(f.take("framework")) {
            Some("express") => Framework::Express,
            Some("next") => Framework::Next,
            Some("remix") => Framework::Remix,
            Some("static") => Framework::Static,
            Some("node") => Framework::Node,
            _ => Framework::Auto,
        };
        let env = f
            .take("env")
            .map(|e| self.env(&e.path, e.node))
            .unwrap_or_default();
        let instances = self.int(f.take("instances")).map_or(1, |n| n as u32);
        let cpu = self.number(f.take("cpu"));
        let memory = self.size(f.take("memory"));
        let idle_timeout = match f.take("idle_timeout") {
            Some(field) => self
                .duration(Some(field))
                .map(|d| (!d.is_zero()).then_some(d)),
            None => Some(Some(Duration::from_secs(300))),
        };
        let drain_timeout = self
            .duration(f.take("drain_timeout"))
            .unwrap_or(super::DEFAULT_DRAIN_TIMEOUT);
        let health_check = f
            .take("health_check")
            .map(|h| self.health_check(&h))
            .unwrap_or_default();
        let mut policy = EdgePolicy::default();
        if let Some(r) = f.take("rate_limit") {
            policy.rate_limit = self.rate_limit(&r);
        }
        if let Some(l) = f.take("limits") {
            self.limits(&l, &mut policy);
        }
        if let Some(on) = self.boolean(f.take("compression")) {
            policy.compression = on;
        }
        if let Some(s) = f.take("security_headers") {
            policy.security_headers = self.security_headers(&s);
        }
        let tls = f
            .take("tls")
            .map(|t| self.app_tls(&t, base))
            .unwrap_or_default();
        let spa = self.boolean(f.take("spa")).unwrap_or(false);
        f.finish(self);
        if self.errors.len() > errors_before {
            return None;
        }
        let source = source?;
        // An external app is never stopped for being idle: SpinForge does not run it.
        let idle_timeout = match source {
            AppSource::External(_) => None,
            _ => idle_timeout?,
        };
        Some(AppConfig {
            name: name.to_string(),
            domains,
            source,
            framework,
            env,
            instances,
            memory,
            cpu,
            idle_timeout,
            drain_timeout,
            health_check,
            policy,
            tls,
            spa,
        })
    }

    fn domains(
        &mut self,
        field: Option<Field<'_>>,
        app_path: &str,
        app_pos: Pos,
        app: &str,
        claimed: &mut HashMap<String, (String, u32)>,
    ) -> Vec<String> {
        let Some(Field { path, node, .. }) = field else {
            self.error(
                app_pos,
                app_path,
                "an app needs `domains:`, the host names it answers on",
            );
            return Vec::new();
        };
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar(_) => vec![node],
            other => {
                self.error(
                    node.pos,
                    &path,
                    format!("expected a list of domains, found {}", other.kind()),
                );
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.error(node.pos, &path, "an app needs at least one domain");
        }
        let mut domains = Vec::new();
        for item in items {
            let Some(text) = self.scalar(item, &path, "a domain") else {
                continue;
            };
            match domain(text) {
                Ok(d) => match claimed.get(&d) {
                    Some((other, line)) if other == app => {
                        self.error(
                            item.pos,
                            &path,
                            format!("`{d}` is listed twice (also on line {line})"),
                        );
                    }
                    Some((other, line)) => {
                        self.error(
                            item.pos,
                            &path,
                            format!("`{d}` is already the domain of app `{other}` (line {line}); a domain routes to one app"),
                        );
                    }
                    None => {
                        claimed.insert(d.clone(), (app.to_string(), item.pos.line));
                        domains.push(d);
                    }
                },
                Err(message) => self.error(item.pos, &path, message),
            }
        }
        domains
    }

    fn source(&mut self, field: &Field<'_>, base: &Path) -> Option<AppSource> {
        let what = "a folder, git URL or .tar.gz path";
        let text = self.scalar(field.node, &field.path, what)?;
        match source(text, base) {
            Ok(s) => Some(s),
            Err(message) => {
                self.error(field.node.pos, &field.path, message);
                None
            }
        }
    }

    fn env(&mut self, path: &str, node: &Node) -> BTreeMap<String, EnvValue> {
        let mut env = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            if !matches!(node.value, Value::Null) {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected a mapping of NAME: value, found {}",
                        node.value.kind()
                    ),
                );
            }
            return env;
        };
        for (key, value) in entries {
            let var_path = join(path, &key.name);
            if !env_name_ok(&key.name) {
                self.error(key.pos, &var_path, "an environment variable name is letters, digits and _, not starting with a digit");
                continue;
            }
            if RESERVED_ENV.contains(&key.name.as_str()) {
                self.error(
                    key.pos,
                    &var_path,
                    format!("{} is set by SpinForge for every spinlet", key.name),
                );
                continue;
            }
            match &value.value {
                Value::Scalar(s) => {
                    env.insert(key.name.clone(), EnvValue::new(s.clone()));
                }
                Value::Null => {
                    env.insert(key.name.clone(), EnvValue::new(""));
                }
                other => self.error(
                    value.pos,
                    &var_path,
                    format!("expected a scalar value, found {}", other.kind()),
                ),
            }
        }
        env
    }

    fn health_check(&mut self, field: &Field<'_>) -> HealthCheck {
        let mut hc = HealthCheck::default();
        let Some(mut f) = self.section(field) else {
            return hc;
        };
        if let Some(p) = self.text(f.take("path"), |s| {
            if s.starts_with('/') && !s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "`{s}` is not a request path: it starts with / and has no spaces"
                ))
            }
        }) {
            hc.path = p;
        }
        if let Some(d) = self.duration(f.take("timeout")) {
            hc.timeout = d;
        }
        f.finish(self);
        hc
    }

    fn rate_limit(&mut self, field: &Field<'_>) -> Option<RateLimit> {
        let errors_before = self.errors.len();
        let mut f = self.section(field)?;
        let rps = match f.take("rps") {
            Some(rps) => self.number(Some(rps)),
            None => {
                self.error(
                    field.node.pos,
                    &field.path,
                    "a rate limit needs `rps:`, the requests per second each client IP may send",
                );
                None
            }
        };
        let burst = self.int(f.take("burst")).map_or(0, |n| n as u32);
        let app_rps = self.number(f.take("app_rps"));
        let app_burst = self.int(f.take("app_burst")).map(|n| n as u32);
        let scope = match self.choice(f.take("scope")) {
            Some("cluster") => RateLimitScope::Cluster,
            _ => RateLimitScope::Local,
        };
        f.finish(self);
        if app_burst.is_some() && app_rps.is_none() {
            self.error(
                field.node.pos,
                &field.path,
                "`app_burst` needs `app_rps`, the app-wide rate it adds to",
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        Some(RateLimit {
            rps: rps?,
            burst,
            app_rps,
            app_burst,
            scope,
        })
    }

    fn limits(&mut self, field: &Field<'_>, policy: &mut EdgePolicy) {
        let Some(mut f) = self.section(field) else {
            return;
        };
        if let Some(b) = self.size(f.take("body")) {
            policy.max_body_bytes = b;
        }
        if let Some(b) = self.size(f.take("headers")) {
            policy.max_header_bytes = b;
        }
        f.finish(self);
    }

    fn security_headers(&mut self, field: &Field<'_>) -> SecurityHeaders {
        if let Value::Scalar(s) = &field.node.value {
            match s.as_str() {
                "off" | "false" => return SecurityHeaders::none(),
                "on" | "true" => return SecurityHeaders::default(),
                _ => {}
            }
        }
        let mut out = SecurityHeaders::default();
        let Some(mut f) = self.section(field) else {
            return out;
        };
        // Each: a header value, or `off` to leave the header out.
        let header = |w: &mut Self, field: Option<Field<'_>>, slot: &mut Option<String>| {
            if let Some(v) = w.text(field, |s| {
                if s.bytes().any(|b| b.is_ascii_control()) {
                    return Err(format!(
                        "`{s}` has control characters; a header value cannot"
                    ));
                }
                Ok(s.to_string())
            }) {
                *slot = (v != "off" && v != "false").then_some(v);
            }
        };
        header(self, f.take("hsts"), &mut out.hsts);
        header(
            self,
            f.take("content_type_options"),
            &mut out.content_type_options,
        );
        header(self, f.take("referrer_policy"), &mut out.referrer_policy);
        header(self, f.take("frame_options"), &mut out.frame_options);
        f.finish(self);
        out
    }
}

/// The word of `words` that `s` is; `false` counts as `off` (YAML 1.1 reads a bare `off` as
/// false).
fn word(words: &'static [&'static str], s: &str) -> Option<&'static str> {
    let s = if s == "false" && words.contains(&"off") {
        "off"
    } else {
        s
    };
    words.iter().find(|w| **w == s).copied()
}

/// `a, b or c`.
fn or_list(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

// --- automatic HTTPS ---

impl Walker<'_> {
    fn tls(&mut self, field: &Field<'_>, base: &Path, out: &mut TlsConfig) {
        let Some(mut f) = self.section(field) else {
            return;
        };
        if let Some(acme) = f.take("acme") {
            self.acme(&acme, base, &mut out.acme);
        }
        f.finish(self);
    }

    fn acme(&mut self, field: &Field<'_>, base: &Path, out: &mut AcmeConfig) {
        let Some(mut f) = self.section(field) else {
            return;
        };
        if let Some(d) = self.text(f.take("directory"), |s| {
            let s = s.trim();
            if s.starts_with("https://") && s.len() > "https://".len() && !s.contains(' ') {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "`{s}` is not an ACME directory URL: write https://..., e.g. {}",
                    super::LETS_ENCRYPT_DIRECTORY
                ))
            }
        }) {
            out.directory = d;
        }
        out.email = self.text(f.take("email"), |s| {
            let s = s.trim();
            match s.split_once('@') {
                Some((user, host))
                    if !user.is_empty() && host.contains('.') && !s.contains(' ') =>
                {
                    Ok(s.to_string())
                }
                _ => Err(format!("`{s}` is not an email address")),
            }
        });
        out.ca_bundle = self.text(f.take("ca_bundle"), |s| existing_file(s, base));
        if let Some(c) = self.choice(f.take("challenge")) {
            out.challenge = match c {
                "tls-alpn-01" => ChallengeKind::TlsAlpn01,
                _ => ChallengeKind::Http01,
            };
        }
        f.finish(self);
    }

    /// `tls: auto | off | { cert: PATH, key: PATH }`.
    fn app_tls(&mut self, field: &Field<'_>, base: &Path) -> AppTls {
        let (node, path) = (field.node, field.path.as_str());
        match &node.value {
            Value::Scalar(s) => match s.as_str() {
                "auto" => AppTls::Auto,
                // YAML 1.1 reads a bare `off` as false.
                "off" | "false" => AppTls::Off,
                other => {
                    self.error(
                        node.pos,
                        path,
                        format!("`{other}` is not a TLS mode: use auto, off, or {{ cert: PATH, key: PATH }}"),
                    );
                    AppTls::Auto
                }
            },
            Value::Map(_) => {
                let Some(mut f) = self.section(field) else {
                    return AppTls::Auto;
                };
                let mut file = |w: &mut Self, name: &str| {
                    let file = f.take(name);
                    if file.is_none() {
                        w.error(
                            node.pos,
                            path,
                            format!("`tls` with files needs both `cert:` and `key:`; `{name}:` is missing"),
                        );
                    }
                    w.text(file, |s| existing_file(s, base))
                };
                let cert = file(self, "cert");
                let key = file(self, "key");
                f.finish(self);
                match (cert, key) {
                    (Some(cert), Some(key)) => AppTls::Files { cert, key },
                    _ => AppTls::Auto,
                }
            }
            other => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "expected auto, off or a mapping with cert and key, found {}",
                        other.kind()
                    ),
                );
                AppTls::Auto
            }
        }
    }
}

/// A file that must exist, resolved against the config's folder.
fn existing_file(s: &str, base: &Path) -> Result<PathBuf, String> {
    let p = base.join(s);
    if p.is_file() {
        Ok(absolute(&p))
    } else {
        Err(format!("`{s}` is not a file (looked for {})", p.display()))
    }
}

/// `source:` — a git URL (`https://…`, `ssh://…`, `git@host:path`, `file://…`, or anything
/// ending in `.git`, with an optional `#ref`), a `.tar.gz`/`.tgz` file, or a folder.
fn source(text: &str, base: &Path) -> Result<AppSource, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let archive = text.ends_with(".tar.gz") || text.ends_with(".tgz");
    if archive && text.contains("://") {
        return Err(format!(
            "`{}`: downloading archives is not supported; give a local .tar.gz, a git URL or a folder",
            super::redact_userinfo(text)
        ));
    }
    let (url, reference) = match text.rsplit_once('#') {
        Some((u, r)) => (u, Some(r)),
        None => (text, None),
    };
    let schemed = ["http://", "https://", "git://", "ssh://", "file://"]
        .iter()
        .any(|p| url.starts_with(p));
    let scp_like = url.starts_with("git@");
    let is_git = schemed || scp_like || url.ends_with(".git") || url.ends_with(".git/");
    if is_git {
        if let Some(r) = reference {
            let ok = !r.is_empty()
                && r.len() <= 200
                && !r.starts_with('-')
                && !r.contains("..")
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
            if !ok {
                return Err(format!(
                    "`#{r}` is not a git branch, tag or commit: letters, digits, / . _ -"
                ));
            }
        }
        if !schemed && !scp_like {
            // A local repository given by path.
            let dir = base.join(url);
            if !dir.exists() {
                return Err(format!(
                    "`{url}` looks like a git repository but does not exist (looked for {})",
                    dir.display()
                ));
            }
            return Ok(AppSource::Git {
                url: GitUrl::new(absolute(&dir).display().to_string()),
                reference: reference.map(str::to_string),
            });
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let after = url.split_once("://").map_or("", |(_, r)| r);
            if after.split('/').next().unwrap_or("").is_empty() {
                return Err(format!("`{}` has no host", GitUrl::new(url)));
            }
        }
        return Ok(AppSource::Git {
            url: GitUrl::new(url),
            reference: reference.map(str::to_string),
        });
    }
    if archive {
        let file = base.join(text);
        if !file.is_file() {
            return Err(format!(
                "`{text}` is not a file (looked for {})",
                file.display()
            ));
        }
        return Ok(AppSource::Tarball(absolute(&file)));
    }
    let dir = base.join(text);
    if !dir.is_dir() {
        return Err(format!(
            "`{text}` is not a folder (looked for {}); a source is a folder, a git URL or a .tar.gz file",
            dir.display()
        ));
    }
    Ok(AppSource::Directory(absolute(&dir)))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    s.parse().map_err(|_| {
        format!(
            "`{s}` is not an address: write IP:port, e.g. 0.0.0.0:80, 127.0.0.1:8080 or [::]:80"
        )
    })
}

/// `host:port` of a service SpinForge routes to (an IP, or a name the supervisor resolves).
fn external_upstream(s: &str) -> Result<ExternalUpstream, String> {
    let s = s.trim();
    let bad = |why: &str| {
        format!(
            "`{s}` is not an upstream: {why}; write host:port, e.g. 127.0.0.1:8081 or api.internal:80"
        )
    };
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(bad("port 0 is not a port"));
        }
        return Ok(ExternalUpstream {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    if s.contains("://") || s.contains('/') {
        return Err(bad("give the address only, without scheme or path"));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("the port is missing"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        domain(host).map_err(|_| bad("the host is not a valid name or IP address"))?
    };
    if host.starts_with("*.") {
        return Err(bad("a wildcard is not a host"));
    }
    Ok(ExternalUpstream { host, port })
}

fn port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("`{s}` is not a port range: write FIRST-LAST, e.g. 30000-39999");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let first: u16 = a.trim().parse().map_err(|_| bad())?;
    let last: u16 = b.trim().parse().map_err(|_| bad())?;
    PortRange::new(first, last)
}

/// App names end up in paths, store keys and process names: keep them plain. The one check for
/// every place a name comes in (config, admin API, CLI).
pub fn app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid app name: use 1-63 lowercase letters, digits and -, not starting or ending with -"
        ))
    }
}

/// Checks a host name (or `*.` wildcard, or IP address) and returns it lowercase.
pub(crate) fn domain(text: &str) -> Result<String, String> {
    let d = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Ok(d);
    }
    if d.contains(':') || d.contains('/') {
        return Err(format!(
            "`{text}` is not a domain: give the host name only, without scheme, port or path"
        ));
    }
    let name = d.strip_prefix("*.").unwrap_or(&d);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty() || d.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{text}` is not a valid domain: labels of letters, digits and - separated by dots (a leading `*.` for a wildcard)"
        ));
    }
    Ok(d)
}

fn env_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The known name nearest to `name` (at most 2 edits, a swap of two neighbours counting as
/// one), for "did you mean".
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::osa_distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("apps/hello")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("apps/api")).expect("mkdir");
        dir
    }

    fn parse_in(dir: &tempfile::TempDir, text: &str) -> Result<Config, ConfigErrors> {
        parse(text, &dir.path().join("spinforge.yaml"))
    }

    #[test]
    fn full_config_with_defaults() {
        let dir = fixture();
        let cfg = parse_in(
            &dir,
            "edge:\n  listen_http: 127.0.0.1:8080\n  wake_timeout: 5s\nsupervisor:\n  data_dir: data\n  port_range: 31000-31099\napps:\n  hello:\n    domains: [Hello.Localhost, www.hello.localhost]\n    source: ./apps/hello\n    env: { NODE_ENV: production, WORKERS: 2 }\n    idle_timeout: 0\n",
        )
        .expect("valid");
        assert_eq!(
            cfg.edge.listen_http,
            "127.0.0.1:8080".parse().expect("addr")
        );
        assert_eq!(cfg.edge.wake_timeout, Duration::from_secs(5));
        assert_eq!(cfg.edge.grace, Duration::from_secs(10));
        assert_eq!(
            cfg.edge.metrics,
            Some("127.0.0.1:9101".parse().expect("addr"))
        );
        assert_eq!(cfg.edge.access_log, AccessLog::Off);
        assert_eq!(cfg.supervisor.data_dir, dir.path().join("data"));
        assert_eq!(cfg.supervisor.port_range.len(), 100);
        let hello = &cfg.apps["hello"];
        assert_eq!(
            hello.domains,
            vec!["hello.localhost", "www.hello.localhost"]
        );
        assert_eq!(hello.idle_timeout, None);
        assert_eq!(hello.env["WORKERS"].expose(), "2");
        assert_eq!(hello.health_check, HealthCheck::default());
        assert!(matches!(&hello.source, AppSource::Directory(p) if p.ends_with("apps/hello")));
        assert!(cfg.state.redis.is_none());
    }

    #[test]
    fn edge_policy_keys() {
        let dir = fixture();
        let good = "apps:\n  hello:\n    domains: [a.test]\n    source: ./apps/hello\n    rate_limit: { rps: 0.5, burst: 10, app_rps: 100 }\n    limits: { body: 1M, headers: 8K }\n    compression: false\n    security_headers: { hsts: max-age=60, referrer_policy: off }\n";
        let c = parse_in(&dir, good).expect("valid");
        let p = &c.apps["hello"].policy;
        let rl = p.rate_limit.as_ref().expect("rate limit");
        assert_eq!(
            (rl.rps, rl.burst, rl.app_rps, rl.app_burst),
            (0.5, 10, Some(100.0), None)
        );
        assert_eq!(
            (p.max_body_bytes, p.max_header_bytes, p.compression),
            (1 << 20, 8 << 10, false)
        );
        assert_eq!(p.security_headers.hsts.as_deref(), Some("max-age=60"));
        assert_eq!(p.security_headers.referrer_policy, None);
        assert_eq!(
            p.security_headers.content_type_options.as_deref(),
            Some("nosniff")
        );

        let bad = "apps:\n  hello:\n    domains: [a.test]\n    source: ./apps/hello\n    rate_limit: { rps: 0, burts: 3, scope: global }\n    limits: { headers: 10 }\n    compression: maybe\n";
        let errs = parse_in(&dir, bad).expect_err("invalid").0;
        let found: Vec<(u32, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            found,
            vec![
                (5, "apps.hello.rate_limit.rps"),
                (5, "apps.hello.rate_limit.burts"),
                (5, "apps.hello.rate_limit.scope"),
                (6, "apps.hello.limits.headers"),
                (7, "apps.hello.compression"),
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn every_error_is_reported_with_its_place() {
        let dir = fixture();
        let text = "edge:\n  listen_htp: 1.2.3.4:80\n  wake_timeout: soon\nsupervisor:\n  port_range: 30000-30002\napps:\n  hello:\n    domains: [a.test]\n    source: ./apps/hello\n    memory: lots\n  api:\n    domains: [A.test]\n    source: ./apps/api\n";
        let errs = parse_in(&dir, text).expect_err("invalid").0;
        let found: Vec<(u32, u32, &str)> = errs
            .iter()
            .map(|e| (e.line, e.column, e.key.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (2, 3, "edge.listen_htp"),
                (3, 17, "edge.wake_timeout"),
                (5, 15, "supervisor.port_range"),
                (10, 13, "apps.hello.memory"),
                (12, 15, "apps.api.domains"),
            ],
            "{errs:#?}"
        );
        assert!(
            errs[0].message.contains("did you mean `listen_http`"),
            "{}",
            errs[0].message
        );
        assert!(
            errs[4].message.contains("app `hello`"),
            "{}",
            errs[4].message
        );
        let shown = ConfigErrors(errs).to_string();
        assert!(
            shown.contains("spinforge.yaml:3:17: edge.wake_timeout: `soon` is not a duration"),
            "{shown}"
        );
    }

    #[test]
    fn instances_and_cpu_are_checked() {
        let dir = fixture();
        let cfg = parse_in(
            &dir,
            "apps:\n  hello:\n    domains: [a.test]\n    source: apps/hello\n    cpu: 0.5\n    instances: 3\n",
        )
        .expect("valid");
        assert_eq!(cfg.apps["hello"].cpu, Some(0.5));
        assert_eq!(cfg.apps["hello"].instances, 3);
        let errs = parse_in(
            &dir,
            "apps:\n  hello:\n    domains: [a.test]\n    source: apps/hello\n    cpu: lots\n    instances: 0\n",
        )
        .expect_err("bad values")
        .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["apps.hello.cpu", "apps.hello.instances"], "{errs:?}");
    }

    #[test]
    fn tls_keys() {
        let dir = fixture();
        std::fs::write(dir.path().join("c.pem"), "x").expect("write");
        std::fs::write(dir.path().join("k.pem"), "x").expect("write");
        let cfg = parse_in(
            &dir,
            "edge:\n  listen_https: 127.0.0.1:8443\ntls:\n  acme:\n    directory: https://ca.test/dir\n    email: ops@example.com\n    ca_bundle: c.pem\n    challenge: tls-alpn-01\napps:\n  hello:\n    domains: [a.test]\n    source: apps/hello\n    tls: { cert: c.pem, key: k.pem }\n  api:\n    domains: [b.test]\n    source: apps/api\n    tls: off\n",
        )
        .expect("valid");
        assert_eq!(
            cfg.edge.listen_https,
            Some("127.0.0.1:8443".parse().expect("addr"))
        );
        assert_eq!(cfg.tls.acme.directory, "https://ca.test/dir");
        assert_eq!(cfg.tls.acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(cfg.tls.acme.challenge, ChallengeKind::TlsAlpn01);
        assert!(
            cfg.tls
                .acme
                .ca_bundle
                .as_ref()
                .is_some_and(|p| p.ends_with("c.pem"))
        );
        assert!(
            matches!(&cfg.apps["hello"].tls, AppTls::Files { cert, key } if cert.ends_with("c.pem") && key.ends_with("k.pem"))
        );
        assert_eq!(cfg.apps["api"].tls, AppTls::Off);

        // Defaults: no HTTPS listener, Let's Encrypt, HTTP-01, tls: auto.
        let cfg = parse_in(
            &dir,
            "apps:\n  hello:\n    domains: [a.test]\n    source: apps/hello\n",
        )
        .expect("valid");
        assert_eq!(cfg.edge.listen_https, None);
        assert_eq!(cfg.tls.acme.directory, super::super::LETS_ENCRYPT_DIRECTORY);
        assert_eq!(cfg.tls.acme.challenge, ChallengeKind::Http01);
        assert_eq!(cfg.apps["hello"].tls, AppTls::Auto);

        let errs = parse_in(
            &dir,
            "tls:\n  acme:\n    directory: http://ca.test\n    challenge: dns-01\n    ca_bundle: nope.pem\napps:\n  hello:\n    domains: [a.test]\n    source: apps/hello\n    tls: { cert: c.pem }\n",
        )
        .expect_err("invalid")
        .0;
        let found: Vec<(u32, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            found,
            vec![
                (3, "tls.acme.directory"),
                (4, "tls.acme.challenge"),
                (5, "tls.acme.ca_bundle"),
                (10, "apps.hello.tls"),
            ],
            "{errs:#?}"
        );
        assert!(
            errs[3].message.contains("`key:` is missing"),
            "{}",
            errs[3].message
        );
    }

    #[test]
    fn acme_eligibility() {
        use super::super::acme_eligible;
        assert!(acme_eligible("shop.example.com"));
        for no in [
            "localhost",
            "a.localhost",
            "*.example.com",
            "10.0.0.1",
            "::1",
            "intranet",
        ] {
            assert!(!acme_eligible(no), "{no}");
        }
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        let dir = fixture();
        let errs = parse_in(&dir, "edge:\n  grace: [1\n")
            .expect_err("bad yaml")
            .0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
        assert!(
            errs[0].message.starts_with("invalid YAML"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn missing_source_and_bad_names() {
        let dir = fixture();
        let errs = parse_in(&dir, "apps:\n  Bad_Name:\n    domains: [x.test, 'http://y.test']\n    source: ./nope\n    env: { PORT: 1, 9X: a }\n")
            .expect_err("invalid")
            .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "apps.Bad_Name",
                "apps.Bad_Name.domains",
                "apps.Bad_Name.source",
                "apps.Bad_Name.env.PORT",
                "apps.Bad_Name.env.9X"
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn external_upstreams() {
        let dir = fixture();
        let cfg = parse_in(
            &dir,
            "apps:\n  legacy:\n    domains: [api.test]\n    upstream: 127.0.0.1:8081\n    health_check: { path: /healthz }\n  named:\n    domains: [n.test]\n    upstream: Backend.Internal:80\n",
        )
        .expect("valid");
        let legacy = &cfg.apps["legacy"];
        let up = legacy.external().expect("external");
        assert_eq!((up.host.as_str(), up.port), ("127.0.0.1", 8081));
        assert_eq!(legacy.idle_timeout, None, "never idled");
        assert_eq!(legacy.health_check.path, "/healthz");
        assert_eq!(
            cfg.apps["named"].external().expect("external").to_string(),
            "backend.internal:80"
        );

        let text = "apps:\n  both:\n    domains: [a.test]\n    source: apps/hello\n    upstream: 127.0.0.1:1\n  neither:\n    domains: [b.test]\n  runs:\n    domains: [c.test]\n    upstream: 127.0.0.1:2\n    idle_timeout: 5m\n    env: { A: b }\n  bad:\n    domains: [d.test]\n    upstream: http://x.test/\n  noport:\n    domains: [e.test]\n    upstream: x.test\n";
        let errs = parse_in(&dir, text).expect_err("invalid").0;
        let found: Vec<(u32, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            found,
            vec![
                (5, "apps.both.upstream"),
                (7, "apps.neither"),
                (11, "apps.runs.idle_timeout"),
                (12, "apps.runs.env"),
                (15, "apps.bad.upstream"),
                (18, "apps.noport.upstream"),
            ],
            "{errs:#?}"
        );
        assert!(errs[0].message.contains("not both"), "{}", errs[0].message);
        assert!(
            errs[2].message.contains("does not apply"),
            "{}",
            errs[2].message
        );
        assert!(
            errs[4].message.contains("without scheme"),
            "{}",
            errs[4].message
        );
        assert!(
            errs[5].message.contains("port is missing"),
            "{}",
            errs[5].message
        );
    }

    #[test]
    fn metrics_and_access_log() {
        let dir = fixture();
        let cfg = parse_in(&dir, "edge:\n  metrics: off\n  access_log: json\n").expect("valid");
        assert_eq!(cfg.edge.metrics, None);
        assert_eq!(cfg.edge.access_log, AccessLog::Json);
        let cfg = parse_in(&dir, "edge:\n  metrics: localhost:9200\n").expect("valid");
        assert_eq!(
            cfg.edge.metrics,
            Some("127.0.0.1:9200".parse().expect("addr"))
        );
        let errs = parse_in(&dir, "edge:\n  metrics: yes please\n  access_log: text\n")
            .expect_err("invalid")
            .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["edge.metrics", "edge.access_log"], "{errs:#?}");
    }

    #[test]
    fn domains() {
        assert_eq!(domain("Example.COM."), Ok("example.com".into()));
        assert_eq!(domain("*.example.com"), Ok("*.example.com".into()));
        assert_eq!(domain("10.0.0.1"), Ok("10.0.0.1".into()));
        for bad in ["", "a..b", "-a.com", "a_b.com", "example.com:80", "*.*.x"] {
            assert!(domain(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sources_frameworks_and_build_limits() {
        let dir = fixture();
        std::fs::write(dir.path().join("site.tar.gz"), b"").expect("write");
        let cfg = parse_in(
            &dir,
            "supervisor:\n  run_as: spinforge\n  builds: { concurrency: 2, timeout: 5m, keep_releases: 3, max_archive_size: 64M }\napps:\n  a:\n    domains: [a.test]\n    source: https://tok:s3cret@git.example.com/a.git#v1.2\n    framework: next\n  b:\n    domains: [b.test]\n    source: site.tar.gz\n    framework: static\n    spa: true\n  c:\n    domains: [c.test]\n    source: git@github.com:me/c.git\n",
        )
        .expect("valid");
        assert_eq!(cfg.supervisor.run_as.as_deref(), Some("spinforge"));
        assert_eq!(cfg.supervisor.builds.concurrency, 2);
        assert_eq!(cfg.supervisor.builds.timeout, Duration::from_secs(300));
        assert_eq!(cfg.supervisor.builds.keep_releases, 3);
        assert_eq!(cfg.supervisor.builds.max_archive_size, 64 << 20);
        let a = &cfg.apps["a"];
        assert_eq!(a.framework, Framework::Next);
        match &a.source {
            AppSource::Git { url, reference } => {
                assert_eq!(reference.as_deref(), Some("v1.2"));
                assert!(url.expose().contains("s3cret"));
                assert!(!url.to_string().contains("s3cret"));
                assert!(!format!("{:?}", a.source).contains("s3cret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&cfg.apps["b"].source, AppSource::Tarball(p) if p.ends_with("site.tar.gz"))
        );
        assert!(cfg.apps["b"].spa);
        assert!(matches!(
            &cfg.apps["c"].source,
            AppSource::Git {
                reference: None,
                ..
            }
        ));
        let errs = parse_in(
            &dir,
            "supervisor:\n  builds: { concurrency: 0 }\napps:\n  a:\n    domains: [a.test]\n    source: missing.tar.gz\n    framework: rails\n  b:\n    domains: [b.test]\n    source: https://x.test/a.git#--upload-pack=evil\n  c:\n    domains: [c.test]\n    source: https://x.test/app.tar.gz\n",
        )
        .expect_err("invalid")
        .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "supervisor.builds.concurrency",
                "apps.a.source",
                "apps.a.framework",
                "apps.b.source",
                "apps.c.source"
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn redis_url_hides_its_password() {
        let url = RedisUrl::new("redis://user:s3cret@10.0.0.2:6379/0");
        assert_eq!(url.to_string(), "redis://user:***@10.0.0.2:6379/0");
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}

#[cfg(test)]
mod app_section_tests {
    use super::*;

    #[test]
    fn an_app_section_parses_alone_with_relative_key_paths() {
        let file = Path::new("/tmp/api/app.json");
        let app = parse_app(
            "shop",
            r#"{"domains": ["shop.test"], "instances": 2, "env": {"A": "1"}}"#,
            file,
            Some(AppSource::Tarball("/tmp/api/shop.tar.gz".into())),
        )
        .expect("valid");
        assert_eq!(app.name, "shop");
        assert_eq!(app.instances, 2);
        assert_eq!(
            app.source,
            AppSource::Tarball("/tmp/api/shop.tar.gz".into())
        );

        let errs = parse_app(
            "shop",
            r#"{"domains": ["shop.test"], "memroy": "1G"}"#,
            file,
            None,
        )
        .expect_err("no source, misspelt key")
        .0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"memroy"), "{errs:?}");
        assert!(
            keys.contains(&""),
            "missing source reported at the root: {errs:?}"
        );
        let bad_name = parse_app("Bad Name", "{}", file, None)
            .expect_err("bad name")
            .0;
        assert!(bad_name[0].message.contains("app name"), "{bad_name:?}");
    }
}
