//! `rate_limit.scope: cluster`: edges sharing one Redis enforce one budget per app and client.
//!
//! The request path still decides from memory alone (the tables in [`crate::limits`]); it only
//! notes each request it lets through on a bounded queue. A background task sums those notes per
//! key and, every [`INTERVAL`], exchanges them with the store: its own counts go into the current
//! wall-clock window, and every edge's totals for an older window come back. What the *other*
//! edges let through (total minus our own) is charged to the local limiter, as if those requests
//! had arrived here. GCRA is additive, so each edge's state converges to the cluster's.
//!
//! Windows are numbered from the wall clock, so edges agree on them as long as their clocks do
//! (within an interval: NTP). A window is read two windows later, when every edge has written it.
//! The price is lag: for about two intervals an edge does not know what the others let through,
//! so a burst that hits every edge at once may pass up to once per edge before the counts meet.

use crate::limits::{self, ClientRates, Gcra};
use crate::sync::Snapshot;
use spinforge_state::Store;
use spinforge_state::policy::RateLimitScope;
use spinforge_state::stop::CancellationToken;
use spinforge_state::store::RateCount;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How often counts are exchanged, and the length of a window.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Notes the request path may queue before new ones are dropped (and so not shared).
const QUEUE: usize = 65_536;
/// Distinct keys (app, client) kept per window; beyond it new keys are not shared that window.
const MAX_KEYS: usize = 100_000;
/// How long the store keeps a window: a few seconds, long after it was read.
const WINDOW_TTL: Duration = Duration::from_secs(5);
/// No exchange waits longer than this; the counts of a failed one are dropped (lenient).
const EXCHANGE_DEADLINE: Duration = Duration::from_millis(1000);

/// How often a failing exchange is logged.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Whose budget a request used: the app-wide cap or one client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    App,
    Client(u128),
}

/// A note: one request of this app and budget let through.
pub type Key = (Arc<str>, Who);

/// The request path's side: notes requests let through, never waits.
#[derive(Debug)]
pub struct ClusterRates {
    notes: mpsc::Sender<Key>,
    /// Notes dropped because the queue was full.
    dropped: AtomicU64,
}

impl ClusterRates {
    /// The notes' side, and the receiver for [`exchange`].
    pub fn new() -> (ClusterRates, mpsc::Receiver<Key>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rates = ClusterRates {
            notes: tx,
            dropped: AtomicU64::new(0),
        };
        (rates, rx)
    }

    /// One request let through under the app-wide cap.
    pub fn app_passed(&self, app: &Arc<str>) {
        self.note((app.clone(), Who::App));
    }

    /// One request of `client` let through.
    pub fn client_passed(&self, app: &Arc<str>, client: u128) {
        self.note((app.clone(), Who::Client(client)));
    }

    fn note(&self, key: Key) {
        if self.notes.try_send(key).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one edge let through in one window.
#[derive(Debug, Default)]
struct Window {
    number: u64,
    counts: HashMap<Key, u64>,
}

/// The wall-clock window `at` falls in.
fn window_of(at: SystemTime) -> u64 {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    ms / INTERVAL.as_millis() as u64
}

/// How long until just after the next window starts.
fn until_next_window(now: SystemTime) -> Duration {
    let step = INTERVAL.as_millis() as u64;
    let ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    // A few ms in, so that this window's number is unambiguous despite timer slop.
    Duration::from_millis(step - ms % step + 5)
}

fn field(who: Who) -> String {
    match who {
        Who::App => "*".to_string(),
        Who::Client(c) => format!("{c:x}"),
    }
}

/// Sums the request path's notes and exchanges them with the store every [`INTERVAL`] until
/// `stop`; charges what other edges let through to `client_rates` and the apps' caps.
pub async fn exchange(
    store: Store,
    mut notes: mpsc::Receiver<Key>,
    snapshot: Arc<Snapshot>,
    client_rates: Arc<OnceLock<ClientRates>>,
    rates: Arc<ClusterRates>,
    stop: CancellationToken,
) {
    let mut current: HashMap<Key, u64> = HashMap::new();
    // What we wrote one window ago: read back (with the others' counts) at the next tick.
    let mut written: [Window; 2] = Default::default();
    let mut last_tick = 0;
    let mut reported_drops = 0;
    // During a store outage every exchange fails: say so once per [`FAILURE_LOG_EVERY`].
    let mut failure_logged: Option<tokio::time::Instant> = None;
    let mut failures = 0u64;
    // Absolute, so that a steady stream of notes cannot keep pushing the tick away.
    let mut next_tick = tokio::time::Instant::now() + until_next_window(SystemTime::now());
    loop {
        tokio::select! {
            note = notes.recv() => match note {
                Some(key) => {
                    if current.len() < MAX_KEYS || current.contains_key(&key) {
                        *current.entry(key).or_default() += 1;
                    }
                    continue;
                }
                None => return,
            },
            _ = tokio::time::sleep_until(next_tick) => {}
            _ = stop.cancelled() => return,
        }
        next_tick = tokio::time::Instant::now() + until_next_window(SystemTime::now());
        let now = window_of(SystemTime::now());
        if now == last_tick || now < 2 {
            continue;
        }
        last_tick = now;
        let dropped = rates.dropped.load(Ordering::Relaxed);
        if dropped > reported_drops {
            tracing::warn!(
                dropped = dropped - reported_drops,
                "cluster rate limits: the note queue was full; some requests were not shared"
            );
            reported_drops = dropped;
        }
        // Ours go into the window just ended; the one before it is complete everywhere.
        let fresh = Window {
            number: now - 1,
            counts: std::mem::take(&mut current),
        };
        let read = now - 2;
        let older = written.iter().find(|w| w.number == read);
        let mut keys: Vec<(Key, u64)> = fresh.counts.iter().map(|(k, n)| (k.clone(), *n)).collect();
        if let Some(older) = older {
            keys.extend(
                older
                    .counts
                    .keys()
                    .filter(|k| !fresh.counts.contains_key(*k))
                    .map(|k| (k.clone(), 0)),
            );
        }
        if !keys.is_empty() {
            let entries: Vec<RateCount> = keys
                .iter()
                .map(|((app, who), n)| RateCount {
                    app: app.to_string(),
                    client: field(*who),
                    add: *n,
                })
                .collect();
            let exchanged = tokio::time::timeout(
                EXCHANGE_DEADLINE,
                store.exchange_rate_counts(fresh.number, read, WINDOW_TTL, &entries),
            )
            .await;
            match exchanged {
                Ok(Ok(totals)) => {
                    let ours = |k: &Key| older.and_then(|w| w.counts.get(k)).copied().unwrap_or(0);
                    let others = keys
                        .iter()
                        .zip(totals)
                        .map(|((k, _), total)| (k, total.saturating_sub(ours(k))))
                        .filter(|(_, n)| *n > 0);
                    charge(&snapshot, &client_rates, others);
                }
                failed => {
                    failures += 1;
                    if failure_logged.is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY) {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {EXCHANGE_DEADLINE:?}"),
                        };
                        tracing::warn!(%error, failures, "cluster rate limits: exchange failed; counting locally meanwhile");
                        failure_logged = Some(tokio::time::Instant::now());
                        failures = 0;
                    }
                }
            }
        }
        // Keep the last two windows written: the next tick reads the newer one.
        written = [std::mem::take(&mut written[1]), fresh];
    }
}

/// Charges other edges' counts (from about two windows ago) to the local limiters.
fn charge<'a>(
    snapshot: &Snapshot,
    client_rates: &OnceLock<ClientRates>,
    others: impl Iterator<Item = (&'a Key, u64)>,
) {
    let table = snapshot.load();
    // They were let through over the window read, which ended one interval ago.
    let at = limits::now_us().saturating_sub(2 * INTERVAL.as_micros() as u64);
    for ((app, who), n) in others {
        let Some(entry) = table.app(app) else {
            continue;
        };
        let Some(limit) = &entry.policy.rate_limit else {
            continue;
        };
        if limit.scope != RateLimitScope::Cluster {
            continue;
        }
        match who {
            Who::App => {
                if let Some(app_rps) = limit.app_rps {
                    let burst = limit.app_burst.unwrap_or(app_rps.ceil() as u32);
                    entry
                        .runtime
                        .app_rate
                        .charge(Gcra::new(app_rps, burst), n, at);
                }
            }
            Who::Client(c) => client_rates.get_or_init(ClientRates::default).charge(
                app,
                *c,
                Gcra::new(limit.rps, limit.burst),
                n,
                at,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_wall_clock() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_050);
        assert_eq!(window_of(t), 17_000_000_000);
        assert_eq!(until_next_window(t), Duration::from_millis(55));
        assert_eq!(field(Who::Client(0xabc)), "abc");
        assert_eq!(field(Who::App), "*");
    }

    #[tokio::test]
    async fn a_full_queue_drops_notes_instead_of_waiting() {
        let (rates, _rx) = ClusterRates::new();
        let app: Arc<str> = Arc::from("a");
        for _ in 0..QUEUE + 10 {
            rates.client_passed(&app, 1);
        }
        assert_eq!(rates.dropped.load(Ordering::Relaxed), 10);
    }
}
