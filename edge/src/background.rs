//! Work the request path hands off so that it never waits on the store: publishing wakes and
//! writing last-access times in batches.

use crate::sync::Snapshot;
use spinforge_state::{Event, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How many wake requests may queue before new ones are dropped (they repeat every second anyway).
pub const WAKE_QUEUE: usize = 1024;
/// How often last-access times go to the store.
pub const ACTIVITY_FLUSH: Duration = spinforge_state::ACTIVITY_FLUSH_INTERVAL;
/// No store call from here waits longer than this.
const STORE_DEADLINE: Duration = Duration::from_secs(5);

/// Publishes a `wake` event for each app name received.
pub async fn publish_wakes(store: Store, mut wakes: mpsc::Receiver<Arc<str>>) {
    while let Some(app) = wakes.recv().await {
        let event = Event::Wake {
            app: app.to_string(),
        };
        match tokio::time::timeout(STORE_DEADLINE, store.publish(&event)).await {
            Ok(Ok(())) => tracing::debug!(%app, "wake published"),
            Ok(Err(e)) => tracing::warn!(%app, error = %e, "could not publish a wake"),
            Err(_) => tracing::warn!(%app, "publishing a wake timed out"),
        }
    }
}

/// Every [`ACTIVITY_FLUSH`], writes the apps' last access times to `active`; once more on stop.
pub async fn flush_activity(
    store: Store,
    snapshot: Arc<Snapshot>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(ACTIVITY_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        flush_once(&store, &snapshot).await;
        if stopping {
            return;
        }
    }
}

async fn flush_once(store: &Store, snapshot: &Snapshot) {
    let table = snapshot.load_full();
    let now = spinforge_state::now_ms();
    for e in table.apps() {
        // An open WebSocket is activity even when no new request comes.
        if e.runtime.open_streams() > 0 {
            e.runtime.touch(now);
        }
    }
    let batch: Vec<(String, u64)> = table
        .apps()
        .filter_map(|e| {
            e.runtime
                .unflushed_access()
                .map(|ms| (e.name.to_string(), ms))
        })
        .collect();
    if batch.is_empty() {
        return;
    }
    match tokio::time::timeout(STORE_DEADLINE, store.record_activity(&batch)).await {
        Ok(Ok(())) => {
            for (app, ms) in &batch {
                if let Some(e) = table.app(app) {
                    e.runtime.mark_flushed(*ms);
                }
            }
        }
        // Not marked flushed: the next round tries again.
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record activity"),
        Err(_) => tracing::warn!("recording activity timed out"),
    }
}
