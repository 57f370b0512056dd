//! The values kept in the store. Readers ignore fields they do not know, so that a newer writer
//! and an older reader can share one Redis during an upgrade.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `routes:{domain}`: which app answers a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub domain: String,
    pub app: String,
    /// The release the app's spinlets run, once one is built.
    #[serde(default)]
    pub release: Option<u64>,
    /// How the edge treats the app's requests (the same for all of an app's domains).
    #[serde(default)]
    pub policy: crate::policy::EdgePolicy,
    /// The app is a service SpinForge does not run (`upstream:`): the edge never holds a request
    /// for it or asks to wake it; with no healthy upstream it answers 502 at once.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external: bool,
    /// The app failed (its build, with no release built before, or its starts) and has nothing
    /// to run until the supervisor retries it: the edge answers 503 at once instead of holding
    /// the request for a wake that cannot come in time.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `apps:{app}`: an app as the supervisor knows it. Env values are not stored (they may be secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: String,
    pub domains: Vec<String>,
    pub source: String,
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub current_release: Option<u64>,
    #[serde(default)]
    pub releases: Vec<u64>,
    /// `idle` (no spinlet; the next request starts one), `running`, `failed` (see `reason`), or
    /// `waiting` (no release yet).
    #[serde(default)]
    pub state: String,
    /// Why the app failed, with the end of its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Spinlets it runs when awake.
    #[serde(default)]
    pub instances: u32,
}

/// The states of design.md, as stored and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpinletState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
    Failed,
}

impl SpinletState {
    pub fn as_str(self) -> &'static str {
        match self {
            SpinletState::Starting => "starting",
            SpinletState::Running => "running",
            SpinletState::Stopping => "stopping",
            SpinletState::Stopped => "stopped",
            SpinletState::Crashed => "crashed",
            SpinletState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "starting" => SpinletState::Starting,
            "running" => SpinletState::Running,
            "stopping" => SpinletState::Stopping,
            "stopped" => SpinletState::Stopped,
            "crashed" => SpinletState::Crashed,
            "failed" => SpinletState::Failed,
            _ => return None,
        })
    }
}

/// `spinlets:{id}` (a HASH): one running instance of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spinlet {
    pub id: String,
    pub app: String,
    pub release: u64,
    pub state: SpinletState,
    pub pid: u32,
    pub host: String,
    pub port: u16,
    /// ms since the epoch.
    pub started: u64,
    pub restarts: u32,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with
    /// the pid it names one process for ever, so a new supervisor never adopts a reused pid.
    /// 0: unknown (never adopted).
    pub proc_start: u64,
    /// Why the spinlet failed or crashed (with the log's last lines), when it did.
    pub reason: Option<String>,
    /// A keyed fingerprint of what it was started with besides its release (env, limits, health
    /// check), so that a supervisor adopting it knows whether it still matches its app's
    /// definition. `None`: not known (a record of an older supervisor).
    pub settings: Option<String>,
}

impl Spinlet {
    pub fn to_fields(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("app", self.app.clone()),
            ("release", self.release.to_string()),
            ("state", self.state.as_str().to_string()),
            ("pid", self.pid.to_string()),
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("started", self.started.to_string()),
            ("restarts", self.restarts.to_string()),
            ("proc_start", self.proc_start.to_string()),
            ("reason", self.reason.clone().unwrap_or_default()),
            ("settings", self.settings.clone().unwrap_or_default()),
        ])
    }

    /// Rebuilds a spinlet from its hash; `None` when a field is missing or malformed.
    pub fn from_fields(id: &str, f: &BTreeMap<String, String>) -> Option<Spinlet> {
        Some(Spinlet {
            id: id.to_string(),
            app: f.get("app")?.clone(),
            release: f.get("release")?.parse().ok()?,
            state: SpinletState::parse(f.get("state")?)?,
            pid: f.get("pid")?.parse().ok()?,
            host: f.get("host")?.clone(),
            port: f.get("port")?.parse().ok()?,
            started: f.get("started")?.parse().ok()?,
            restarts: f.get("restarts")?.parse().ok()?,
            proc_start: f
                .get("proc_start")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            reason: f.get("reason").filter(|r| !r.is_empty()).cloned(),
            settings: f.get("settings").filter(|s| !s.is_empty()).cloned(),
        })
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

// --- automatic HTTPS ---

/// `certs:{domain}`: a certificate chain and its private key, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub domain: String,
    /// Leaf first, then intermediates.
    pub chain_pem: String,
    /// A secret: never logged (`Debug` hides it).
    pub key_pem: String,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// When it was issued (ms since the epoch).
    pub issued_ms: u64,
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("domain", &self.domain)
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &"***")
            .field("not_after", &self.not_after)
            .field("issued_ms", &self.issued_ms)
            .finish()
    }
}

impl CertRecord {
    pub fn to_fields(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("chain", self.chain_pem.clone()),
            ("key", self.key_pem.clone()),
            ("not_after", self.not_after.to_string()),
            ("issued", self.issued_ms.to_string()),
        ])
    }

    /// `None` when a field is missing or malformed (the PEM itself is checked by its users).
    pub fn from_fields(domain: &str, f: &BTreeMap<String, String>) -> Option<CertRecord> {
        Some(CertRecord {
            domain: domain.to_string(),
            chain_pem: f.get("chain")?.clone(),
            key_pem: f.get("key")?.clone(),
            not_after: f.get("not_after")?.parse().ok()?,
            issued_ms: f.get("issued").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }
}

/// Which ACME challenge a [`Challenge`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChallengeType {
    Http01,
    TlsAlpn01,
}

/// `acme:challenge:{token}`: what an edge answers while the CA validates `domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub token: String,
    pub domain: String,
    #[serde(rename = "type")]
    pub kind: ChallengeType,
    /// The key authorization: the HTTP-01 answer body, or what the TLS-ALPN-01 certificate's
    /// acmeIdentifier extension carries the SHA-256 of.
    pub key_authorization: String,
}

/// A lock that was taken: the fencing token orders every holder ever (larger is later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    pub name: String,
    pub owner: String,
    pub fence: u64,
}

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => BuildState::Queued,
            "running" => BuildState::Running,
            "succeeded" => BuildState::Succeeded,
            "failed" => BuildState::Failed,
            "cancelled" => BuildState::Cancelled,
            _ => return None,
        })
    }
    /// Succeeded, failed or cancelled: nothing will change it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

/// `build:status:{id}` (a HASH): one build's state and timings (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStatus {
    pub id: String,
    pub app: String,
    pub state: BuildState,
    pub queued: u64,
    pub started: Option<u64>,
    pub finished: Option<u64>,
    /// The release it produced (or reused).
    pub release: Option<u64>,
    /// Why it failed, with the end of its log.
    pub error: Option<String>,
    /// How long each step took, in order (empty until it ends; a reused release has only
    /// `source`).
    pub steps: Vec<BuildStep>,
}

/// One step of a build and how long it took: `source` (fetching or unpacking it), `install`
/// (the packages, or restoring them), `compile` (the build script or tsc), `prune` (dev
/// dependencies), `release` (writing the release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStep {
    pub name: String,
    pub ms: u64,
}

impl BuildStep {
    /// `name=ms;name=ms` (names are plain words).
    fn join(steps: &[BuildStep]) -> String {
        steps
            .iter()
            .map(|s| format!("{}={}", s.name, s.ms))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The pairs that parse; anything else is skipped.
    fn split(text: &str) -> Vec<BuildStep> {
        text.split(';')
            .filter_map(|pair| {
                let (name, ms) = pair.split_once('=')?;
                let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase());
                ok.then_some(())?;
                Some(BuildStep {
                    name: name.to_string(),
                    ms: ms.parse().ok()?,
                })
            })
            .collect()
    }
}

impl BuildStatus {
    pub fn to_fields(&self) -> BTreeMap<&'static str, String> {
        let mut f = BTreeMap::from([
            ("app", self.app.clone()),
            ("state", self.state.as_str().to_string()),
            ("queued", self.queued.to_string()),
        ]);
        if let Some(v) = self.started {
            f.insert("started", v.to_string());
        }
        if let Some(v) = self.finished {
            f.insert("finished", v.to_string());
        }
        if let Some(v) = self.release {
            f.insert("release", v.to_string());
        }
        if let Some(v) = &self.error {
            f.insert("error", v.clone());
        }
        if !self.steps.is_empty() {
            f.insert("steps", BuildStep::join(&self.steps));
        }
        f
    }

    /// Rebuilds a status from its hash; `None` when a required field is missing or malformed.
    pub fn from_fields(id: &str, f: &BTreeMap<String, String>) -> Option<BuildStatus> {
        let num = |k: &str| f.get(k).and_then(|v| v.parse().ok());
        Some(BuildStatus {
            id: id.to_string(),
            app: f.get("app")?.clone(),
            state: BuildState::parse(f.get("state")?)?,
            queued: num("queued")?,
            started: num("started"),
            finished: num("finished"),
            release: num("release"),
            error: f.get("error").cloned(),
            steps: f
                .get("steps")
                .map(|t| BuildStep::split(t))
                .unwrap_or_default(),
        })
    }
}

/// One line of `build:log:{id}`, with its stream id (`<ms>-<seq>`) to resume after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub id: String,
    pub line: String,
}

// --- drains ---

/// One spinlet of `drains:{app}`: taken out of routing, it finishes what it serves. Edges end
/// the long-lived streams (WebSockets, event streams) still open on `addr` at `close_at_ms`, and
/// report what they still have on it (see [`DrainLoad`]) until it stops.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drain {
    pub spinlet: String,
    /// `host:port`, as in `upstreams:{app}`.
    pub addr: String,
    /// When edges close what is still open on it (ms since the epoch).
    pub close_at_ms: u64,
}

impl Drain {
    /// The hash value: `{addr} {close_at_ms}`.
    pub fn to_value(&self) -> String {
        format!("{} {}", self.addr, self.close_at_ms)
    }

    /// `None` when the value is malformed.
    pub fn from_value(spinlet: &str, value: &str) -> Option<Drain> {
        let (addr, close) = value.split_once(' ')?;
        Some(Drain {
            spinlet: spinlet.to_string(),
            addr: addr.to_string(),
            close_at_ms: close.parse().ok()?,
        })
    }
}

/// What one edge still has on a draining spinlet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainLoad {
    /// Requests in flight to it, long-lived streams included.
    pub requests: u64,
    /// Of those, WebSockets and event streams.
    pub streams: u64,
}

impl DrainLoad {
    pub fn to_value(self) -> String {
        format!("{} {}", self.requests, self.streams)
    }

    pub fn from_value(value: &str) -> Option<DrainLoad> {
        let (requests, streams) = value.split_once(' ')?;
        Some(DrainLoad {
            requests: requests.parse().ok()?,
            streams: streams.parse().ok()?,
        })
    }
}

/// Every live edge's report on one draining spinlet, added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Edges alive now (their reports have not expired).
    pub edges: usize,
    /// Of those, the ones that reported on this spinlet (an edge reports a drain once it has
    /// taken the spinlet out of its own routing).
    pub reported: usize,
    pub load: DrainLoad,
}

impl DrainReport {
    /// Every live edge said it has nothing left on the spinlet: it can stop without cutting
    /// anything.
    pub fn idle(&self) -> bool {
        self.reported == self.edges && self.load == DrainLoad::default()
    }
}
