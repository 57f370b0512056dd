//! The config file: one YAML document that declares the edge, the supervisor and the apps.
//!
//! Two layers, as in river: [`yaml`] reads the file into a tree of nodes that keep their line and
//! column, and [`parse`] walks that tree against the schema ([`schema`]: every key, its type,
//! range and default, in one table that also gives the JSON Schema), collecting *every* error
//! (unknown key, wrong type, bad value) instead of stopping at the first. What comes out is a [`Config`] whose
//! values are already checked: durations are `Duration`s, addresses are `SocketAddr`s, and relative
//! paths are resolved against the config file's folder.

mod parse;
pub mod reload;
pub mod schema;
mod units;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use parse::{app_name as check_app_name, parse_app};
pub use units::{parse_duration, parse_size};

/// A validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from (used to resolve relative paths and in messages).
    pub file: PathBuf,
    pub state: StateConfig,
    pub edge: EdgeConfig,
    pub supervisor: SupervisorConfig,
    /// `tls`: how certificates are obtained (automatic HTTPS).
    pub tls: TlsConfig,
    /// Apps by name, in name order.
    pub apps: BTreeMap<String, AppConfig>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateConfig {
    /// `state.redis`: absent means the embedded in-memory store.
    pub redis: Option<RedisUrl>,
}

/// A `redis://` URL. It may carry a password, so `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The full URL, password included: for connecting, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // redis://user:password@host:port/db → redis://user:***@host:port/db
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &self.0[scheme_end + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                write!(
                    f,
                    "{}{}:***{}",
                    &self.0[..scheme_end + 3],
                    user,
                    &self.0[at..]
                )
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// `edge.listen_http`: the plain-HTTP listener.
    pub listen_http: SocketAddr,
    /// `edge.wake_timeout`: how long a request waits for a cold app before 503.
    pub wake_timeout: Duration,
    /// `edge.grace`: on SIGTERM, how long in-flight requests may finish and spinlets may stop.
    pub grace: Duration,
    /// `edge.max_held_requests`: requests held per cold app; more are answered 503 at once.
    pub max_held_requests: usize,
    /// `edge.h2c`: accept HTTP/2 without TLS (prior knowledge) on the plain listener.
    pub h2c: bool,
    /// `edge.max_connections_per_ip`: open connections one client IP may hold; more are closed.
    pub max_connections_per_ip: u32,
    /// `edge.header_timeout`: a new connection must start its request within this.
    pub header_timeout: Duration,
    /// `edge.keepalive_timeout`: an idle client connection is closed after this.
    pub keepalive_timeout: Duration,
    /// `edge.upgrade_sock`: where a new edge (`--upgrade`) receives the old one's sockets.
    pub upgrade_sock: PathBuf,
    /// `edge.metrics`: where Prometheus `/metrics` is served; `None` (written `off`) for nowhere.
    pub metrics: Option<SocketAddr>,
    /// `edge.access_log`: one line per request, or none.
    pub access_log: AccessLog,
    /// `edge.listen_https`: the TLS listener; `None` serves plain HTTP only.
    pub listen_https: Option<SocketAddr>,
}

/// `edge.access_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// No access log (one is still available at debug level: `RUST_LOG=spinforge::access=debug`).
    #[default]
    Off,
    /// One JSON object per request on stdout (the tracing target `spinforge::access`, at info).
    Json,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen_http: SocketAddr::from(([0, 0, 0, 0], 80)),
            wake_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            max_held_requests: 1000,
            h2c: false,
            max_connections_per_ip: 256,
            keepalive_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            upgrade_sock: PathBuf::from("/tmp/spinforge-upgrade.sock"),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
            access_log: AccessLog::Off,
            listen_https: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// `supervisor.data_dir`: releases, logs and caches live here.
    pub data_dir: PathBuf,
    /// `supervisor.port_range`: ports handed to spinlets.
    pub port_range: PortRange,
    /// `supervisor.run_as`: the unprivileged user builds and spinlets run as (when SpinForge
    /// runs as root).
    pub run_as: Option<String>,
    /// `supervisor.builds`: the build queue's limits.
    pub builds: BuildLimits,
    /// `supervisor.admin_listen`: where the admin API listens.
    pub admin_listen: SocketAddr,
    /// `supervisor.admin_token_env`: the variable that holds the admin API's bearer token.
    pub admin_token_env: String,
    /// `supervisor.deploy_dir`: hot deploy folder (`None`: off).
    pub deploy_dir: Option<PathBuf>,
    /// `supervisor.logs`: spinlet log files.
    pub logs: LogLimits,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/spinforge"),
            port_range: PortRange::new(30000, 39999).expect("static range is valid"),
            run_as: None,
            builds: BuildLimits::default(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            admin_token_env: "SPINFORGE_TOKEN".into(),
            deploy_dir: None,
            logs: LogLimits::default(),
        }
    }
}

/// `supervisor.logs.*`: each spinlet's stdout/stderr file is rotated at `max_size`, keeping
/// `keep` old files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub keep: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            keep: 3,
        }
    }
}

/// `supervisor.builds.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildLimits {
    /// `concurrency`: builds that run at once; more wait in `build:queue`.
    pub concurrency: usize,
    /// `timeout`: a build running longer is stopped and counts as failed.
    pub timeout: Duration,
    /// `keep_releases`: releases kept per app (the newest ones), for rollback.
    pub keep_releases: usize,
    /// `max_archive_size`: the largest `.tar.gz` source accepted, unpacked bytes.
    pub max_archive_size: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        Self {
            concurrency: 1,
            timeout: Duration::from_secs(15 * 60),
            keep_releases: 5,
            max_archive_size: 1 << 30,
        }
    }
}

/// An inclusive port range with at least [`PortRange::MIN_PORTS`] ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// Fewer ports than this cannot run a deploy beside a running release for a handful of apps.
    pub const MIN_PORTS: u32 = 10;

    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first == 0 {
            return Err("port 0 is not a usable port".into());
        }
        if last < first {
            return Err(format!(
                "range {first}-{last} is empty: the end is below the start"
            ));
        }
        let len = u32::from(last) - u32::from(first) + 1;
        if len < Self::MIN_PORTS {
            return Err(format!(
                "range {first}-{last} has {len} port(s); at least {} are needed",
                Self::MIN_PORTS
            ));
        }
        Ok(Self { first, last })
    }
    pub fn first(&self) -> u16 {
        self.first
    }
    pub fn last(&self) -> u16 {
        self.last
    }
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    pub name: String,
    /// Lowercase host names, without port, unique across all apps.
    pub domains: Vec<String>,
    pub source: AppSource,
    /// `framework`: how the app is started.
    pub framework: Framework,
    /// Extra environment for the app's processes. Values may be secrets.
    pub env: BTreeMap<String, EnvValue>,
    /// `instances`: spinlets that serve the app at once (1 to 64).
    pub instances: u32,
    /// `memory`: bytes, per spinlet.
    pub memory: Option<u64>,
    /// `cpu`: cores, per spinlet (0.5 = half of one core).
    pub cpu: Option<f64>,
    /// `idle_timeout`: `None` (written `0`) never stops the app for being idle.
    pub idle_timeout: Option<Duration>,
    /// `drain_timeout`: how long a replaced spinlet may finish what it serves before it is
    /// stopped (sooner once the edges have nothing left on it).
    pub drain_timeout: Duration,
    pub health_check: HealthCheck,
    /// `rate_limit`, `limits`, `compression`, `security_headers`: how the edge treats requests.
    pub policy: crate::policy::EdgePolicy,
    /// `tls`: how the app's domains get certificates.
    pub tls: AppTls,
    /// `spa`: static sites answer unknown paths with `/index.html` (single-page apps).
    pub spa: bool,
}

/// Where an app's code comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum AppSource {
    /// A local folder (absolute once validated).
    Directory(PathBuf),
    /// A git repository, cloned shallowly at `reference` (a branch, tag or commit; `None`: the
    /// default branch).
    Git {
        url: GitUrl,
        reference: Option<String>,
    },
    /// A local `.tar.gz` (or `.tgz`) file (absolute once validated).
    Tarball(PathBuf),
    /// `upstream: host:port`: a service SpinForge routes to and health-checks but does not run.
    External(ExternalUpstream),
}

impl fmt::Display for AppSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppSource::Directory(p) | AppSource::Tarball(p) => write!(f, "{}", p.display()),
            AppSource::Git {
                url,
                reference: Some(r),
            } => write!(f, "{url}#{r}"),
            AppSource::Git {
                url,
                reference: None,
            } => write!(f, "{url}"),
            AppSource::External(u) => write!(f, "upstream:{u}"),
        }
    }
}

/// A git URL. It may carry credentials (`https://TOKEN@host/...`, `https://user:token@host/...`),
/// so `Debug` and `Display` show it through [`redact_userinfo`].
#[derive(Clone, PartialEq, Eq)]
pub struct GitUrl(String);

impl GitUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The full URL, for `git` only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The credentials in the URL (`user`, or `user:password`), if any: what a log must never
    /// show, wherever a tool prints it.
    pub fn userinfo(&self) -> Option<&str> {
        let (start, end) = userinfo_span(&self.0, self.0.find("://")? + 3)?;
        Some(&self.0[start..end])
    }
}

impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_userinfo(&self.0))
    }
}

impl fmt::Debug for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitUrl({self})")
    }
}

/// `text` with the userinfo of every URL in it (`scheme://userinfo@host`) replaced by `***`,
/// whether it is a user name alone (a token, as GitHub documents it) or `user:password`: a user
/// name cannot be told from a token, so neither is shown. For anything that shows or stores a
/// source for people to read: the API, logs, release.json, error messages.
pub fn redact_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let authority = from + found + 3;
        from = authority;
        if let Some((start, end)) = userinfo_span(text, authority) {
            out.push_str(&text[copied..start]);
            out.push_str("***");
            copied = end;
            from = end;
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Where the userinfo of the URL whose authority starts at `authority` lies: up to its last `@`
/// before the path. As git reads a URL, the authority ends at the first `/` (a `?` or `#` before
/// the `@` still belongs to the user name); in free text (a log line) it also ends at white space
/// or a quote. `None` when there is no userinfo, or it is empty.
fn userinfo_span(text: &str, authority: usize) -> Option<(usize, usize)> {
    let rest = &text[authority..];
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace() || matches!(c, '\'' | '"' | '<' | '>' | '`'))
        .unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    (at > 0).then_some((authority, authority + at))
}

/// `upstream: host:port` of an app SpinForge does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalUpstream {
    /// An IP address (as text) or a lowercase DNS name, resolved by the supervisor, never the edge.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ExternalUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl AppConfig {
    /// The external service this app routes to, when it has `upstream:` instead of `source:`.
    pub fn external(&self) -> Option<&ExternalUpstream> {
        match &self.source {
            AppSource::External(u) => Some(u),
            _ => None,
        }
    }
}

/// How an app is built and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    /// Found out from package.json and the files.
    Auto,
    Express,
    Next,
    Remix,
    /// No server: files served by SpinForge's static file server.
    Static,
    Node,
}

impl Framework {
    pub fn as_str(self) -> &'static str {
        match self {
            Framework::Auto => "auto",
            Framework::Express => "express",
            Framework::Next => "next",
            Framework::Remix => "remix",
            Framework::Static => "static",
            Framework::Node => "node",
        }
    }
}

/// An env value: shown as `***` by `Debug` so that it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvValue(String);

impl EnvValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// The path requested; any answer below 500 means healthy.
    pub path: String,
    /// How long a starting spinlet has to answer before it counts as failed.
    pub timeout: Duration,
}

/// `drain_timeout`'s default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

// --- automatic HTTPS ---

/// `tls`: certificates for apps with `tls: auto`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsConfig {
    pub acme: AcmeConfig,
}

/// Let's Encrypt production's ACME directory, the default `tls.acme.directory`.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `tls.acme`: the ACME certificate authority and how to talk to it.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    /// `tls.acme.directory`: the ACME directory URL.
    pub directory: String,
    /// `tls.acme.email`: the account's contact, for expiry notices from the CA.
    pub email: Option<String>,
    /// `tls.acme.ca_bundle`: extra PEM roots trusted for the ACME server's own HTTPS.
    pub ca_bundle: Option<PathBuf>,
    /// `tls.acme.challenge`: how domain control is proven.
    pub challenge: ChallengeKind,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT_DIRECTORY.into(),
            email: None,
            ca_bundle: None,
            challenge: ChallengeKind::Http01,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token answered on port 80 at `/.well-known/acme-challenge/`.
    Http01,
    /// A special certificate offered on port 443 for the `acme-tls/1` protocol.
    TlsAlpn01,
}

/// An app's `tls`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AppTls {
    /// Certificates from ACME (self-signed until one is issued; no orders for `localhost`,
    /// `*.localhost`, IP addresses and wildcards).
    #[default]
    Auto,
    /// No HTTPS for this app.
    Off,
    /// Files the user provides (absolute once validated), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
}

impl AppTls {
    pub fn is_off(&self) -> bool {
        matches!(self, AppTls::Off)
    }
}

/// Whether ACME can be asked for a certificate for `domain` (a lowercase name from the config):
/// not `localhost` or under it, not an IP address, not a wildcard (HTTP-01 and TLS-ALPN-01 cannot
/// prove one).
pub fn acme_eligible(domain: &str) -> bool {
    !(domain == "localhost"
        || domain.ends_with(".localhost")
        || domain.starts_with("*.")
        || domain.parse::<std::net::IpAddr>().is_ok()
        || !domain.contains('.'))
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the file (e.g. it cannot be read).
    pub line: u32,
    pub column: u32,
    /// The dotted key the problem is about, e.g. `apps.hello.idle_timeout` (empty for the file).
    pub key: String,
    pub message: String,
    /// The offending source line, for the caret display.
    pub source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = &self.source_line {
            let gutter = self.line.to_string();
            write!(f, "\n {gutter} | {line}\n {} | ", " ".repeat(gutter.len()))?;
            let before: String = line
                .chars()
                .take(self.column.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "{before}^")?;
        }
        Ok(())
    }
}

/// Every problem found in a config file (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
                source_line: None,
            }])
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        parse::parse(text, path)
    }

    /// The app that serves `domain` (lowercase, no port), if any.
    pub fn app_for_domain(&self, domain: &str) -> Option<&AppConfig> {
        self.apps
            .values()
            .find(|a| a.domains.iter().any(|d| d == domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_never_show_their_credentials() {
        for (url, shown) in [
            // A token as the user name, as GitHub documents it.
            (
                "https://ghp_abc123@github.com/o/r.git",
                "https://***@github.com/o/r.git",
            ),
            (
                "https://user:s3cret@github.com/o/r.git",
                "https://***@github.com/o/r.git",
            ),
            ("https://x-access-token:t@h:8443/r", "https://***@h:8443/r"),
            ("ssh://git@host/r.git", "ssh://***@host/r.git"),
            // A password holding `@`, `?` or `#` unencoded: all of it up to the last `@`.
            ("https://u:p@ss?#x@host/r", "https://***@host/r"),
            // An `@` in the path is not userinfo.
            (
                "https://github.com/o/r@v1.git",
                "https://github.com/o/r@v1.git",
            ),
            ("https://github.com/o/r.git", "https://github.com/o/r.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("/srv/repos/app.git", "/srv/repos/app.git"),
            ("https://@host/r", "https://@host/r"),
        ] {
            let git = GitUrl::new(url);
            assert_eq!(git.to_string(), shown, "{url}");
            assert_eq!(format!("{git:?}"), format!("GitUrl({shown})"));
            assert_eq!(redact_userinfo(url), shown);
        }
        let source = AppSource::Git {
            url: GitUrl::new("https://TOKEN@github.com/o/r.git"),
            reference: Some("main".into()),
        };
        assert_eq!(source.to_string(), "https://***@github.com/o/r.git#main");
        assert_eq!(
            GitUrl::new("https://TOKEN@github.com/o/r.git").userinfo(),
            Some("TOKEN")
        );
        assert_eq!(GitUrl::new("https://u:p@h/r").userinfo(), Some("u:p"));
        assert_eq!(GitUrl::new("https://h/r").userinfo(), None);
    }

    #[test]
    fn urls_in_free_text_are_redacted() {
        for (text, shown) in [
            (
                "fatal: could not read Password for 'https://TOKEN@github.com': terminal prompts disabled",
                "fatal: could not read Password for 'https://***@github.com': terminal prompts disabled",
            ),
            (
                "a https://u:p@h/x and http://t@k/y",
                "a https://***@h/x and http://***@k/y",
            ),
            ("from https://***@h/x", "from https://***@h/x"),
            ("mail me@example.com", "mail me@example.com"),
            ("odd :// @", "odd :// @"),
            ("end with https://tok@", "end with https://***@"),
        ] {
            assert_eq!(redact_userinfo(text), shown, "{text}");
        }
    }
}
