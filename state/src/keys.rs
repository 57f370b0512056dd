//! The key schema: every key SpinForge keeps in the store, all under `spinforge:`.
//! One place builds them, so that the embedded store and Redis never disagree.

pub const PREFIX: &str = "spinforge:";

/// The pub/sub channel all [`crate::Event`]s travel on.
pub const EVENTS: &str = "spinforge:events";

/// ZSET app → last access (ms), written by edges in batches.
pub const ACTIVE: &str = "spinforge:active";

/// JSON [`crate::records::Route`] for one domain.
pub fn route(domain: &str) -> String {
    format!("spinforge:routes:{domain}")
}
pub const ROUTES_PATTERN: &str = "spinforge:routes:*";
pub const ROUTES_PREFIX: &str = "spinforge:routes:";

/// When the supervisor last finished writing everything it owns (ms): after its start, and
/// after every resync. A store without it lost its data and is being refilled, so a reader
/// must not take what it lacks as gone.
pub const PUBLISHED: &str = "spinforge:published";

/// JSON [`crate::records::AppRecord`].
pub fn app(name: &str) -> String {
    format!("spinforge:apps:{name}")
}
pub const APPS_PATTERN: &str = "spinforge:apps:*";
pub const APPS_PREFIX: &str = "spinforge:apps:";

/// HASH of one [`crate::records::Spinlet`].
pub fn spinlet(id: &str) -> String {
    format!("spinforge:spinlets:{id}")
}
pub const SPINLETS_PATTERN: &str = "spinforge:spinlets:*";
pub const SPINLETS_PREFIX: &str = "spinforge:spinlets:";

/// SET of `host:port` of an app's spinlets that passed their health check.
pub fn upstreams(app: &str) -> String {
    format!("spinforge:upstreams:{app}")
}

/// HASH spinlet id → `{addr} {close_at_ms}` ([`crate::records::Drain`]): an app's spinlets that
/// are out of routing and finishing what they serve. Written with `upstreams:{app}`, in one batch.
pub fn drains(app: &str) -> String {
    format!("spinforge:drains:{app}")
}

/// SET of the ids of edges that report on drains (each while its `inflight:{edge}` lives).
pub const EDGES: &str = "spinforge:edges";

/// HASH of one edge's report, rewritten every [`crate::DRAIN_REPORT_INTERVAL`] and expiring
/// after [`crate::DRAIN_REPORT_TTL`]: field `_` (always there while the edge lives); per
/// draining spinlet the edge knows, `{requests} {streams}` it still has on it; and per serving
/// upstream that answered a request lately, `answered:{host:port}` → when (ms).
pub fn inflight(edge: &str) -> String {
    format!("spinforge:inflight:{edge}")
}

/// LIST of build ids waiting for a builder, oldest first.
pub const BUILD_QUEUE: &str = "spinforge:build:queue";

/// HASH of one [`crate::records::BuildStatus`].
pub fn build_status(id: &str) -> String {
    format!("spinforge:build:status:{id}")
}

/// LIST of an app's newest build ids, oldest first (at most
/// [`crate::store::BUILDS_KEPT_PER_APP`]); their statuses expire on their own.
pub fn app_builds(app: &str) -> String {
    format!("spinforge:builds:{app}")
}

/// STREAM of one build's log lines (field `line`).
pub fn build_log(id: &str) -> String {
    format!("spinforge:build:log:{id}")
}

// --- automatic HTTPS ---

/// HASH of one [`crate::records::CertRecord`]: chain PEM, key PEM, not_after.
pub fn cert(domain: &str) -> String {
    format!("spinforge:certs:{domain}")
}
pub const CERTS_PATTERN: &str = "spinforge:certs:*";
pub const CERTS_PREFIX: &str = "spinforge:certs:";

/// JSON of the ACME account's credentials (a secret: it holds the account key).
pub const ACME_ACCOUNT: &str = "spinforge:acme:account";

/// JSON [`crate::records::Challenge`], with a TTL: one pending ACME challenge.
pub fn challenge(token: &str) -> String {
    format!("spinforge:acme:challenge:{token}")
}
pub const CHALLENGES_PATTERN: &str = "spinforge:acme:challenge:*";
pub const CHALLENGES_PREFIX: &str = "spinforge:acme:challenge:";

/// A lock: `{owner} {fencing token}`, with an expiry.
pub fn lock(name: &str) -> String {
    format!("spinforge:locks:{name}")
}

/// The counter fencing tokens are drawn from (INCR): every lock taken gets a larger one.
pub const FENCING: &str = "spinforge:fencing";
