//! SpinForge's shared state: what every other part agrees on.
//!
//! - [`config`]: the YAML file users write, parsed into a validated [`config::Config`] with errors
//!   that name file, line, column and key.
//! - [`store`]: the state store — embedded in memory (one process) or Redis (several processes or
//!   machines) — behind one typed interface, with the key schema of [`keys`] and the
//!   [`events::Event`]s published on `spinforge:events`.
//! - [`records`]: the values kept in the store; [`policy`]: the per-app edge settings they carry.

pub mod config;
pub mod events;
pub mod keys;
pub mod policy;
pub mod records;
pub mod stop;
pub mod store;

pub use events::Event;
pub use store::{Signal, Store, StoreError, Subscription};

/// Edges write their apps' last access to `active` at least this often. The supervisor allows for
/// this lag before it calls an app idle.
pub const ACTIVITY_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Edges report what they still have on draining spinlets this often...
pub const DRAIN_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// ...and a report counts this long: an edge that stops reporting (it died, or lost the store)
/// holds no drain for longer.
pub const DRAIN_REPORT_TTL: std::time::Duration = std::time::Duration::from_secs(3);

/// A name for this process among those sharing a store: `<hostname>-<pid>-<random>` (the
/// hostname cut to 64 safe characters; `fallback` when there is none). Edges report drains under
/// it; the certificate job holds its lock with it.
pub fn instance_id(fallback: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    format!(
        "{}-{}-{:08x}",
        if host.is_empty() { fallback } else { &host },
        std::process::id(),
        fastrand::u32(..)
    )
}

/// Milliseconds since the Unix epoch: the clock the store's timestamps use.
#[inline] // per request in the edge, which compiles it at its own opt-level
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
