//! Work the request path hands off so that it never waits on the store: publishing wakes,
//! writing last-access times in batches, and reporting what this edge still has on spinlets
//! that drain.

use crate::sync::Snapshot;
use spinforge_state::records::DrainLoad;
use spinforge_state::stop::CancellationToken;
use spinforge_state::{DRAIN_REPORT_INTERVAL, DRAIN_REPORT_TTL, Event, Store};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How many wake requests may queue before new ones are dropped (they repeat every second anyway).
pub const WAKE_QUEUE: usize = 1024;
/// How often last-access times go to the store.
pub const ACTIVITY_FLUSH: Duration = spinforge_state::ACTIVITY_FLUSH_INTERVAL;
/// No store call from here waits longer than this.
const STORE_DEADLINE: Duration = Duration::from_secs(5);
/// A drain report that takes longer is given up (the next one is due soon, and a report must
/// land well within its TTL to count).
const REPORT_DEADLINE: Duration = Duration::from_secs(1);

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
/// Meanwhile, on a task of its own, reports drains ([`report_drains`]).
pub async fn flush_activity(store: Store, snapshot: Arc<Snapshot>, stop: CancellationToken) {
    let reports = tokio::spawn(report_drains(store.clone(), snapshot.clone(), stop.clone()));
    flush_activity_until_stop(&store, &snapshot, &stop).await;
    let _ = tokio::time::timeout(REPORT_DEADLINE, reports).await;
}

async fn flush_activity_until_stop(store: &Store, snapshot: &Snapshot, stop: &CancellationToken) {
    let mut tick = tokio::time::interval(ACTIVITY_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        flush_once(store, snapshot).await;
        if stopping {
            return;
        }
    }
}

/// Every [`DRAIN_REPORT_INTERVAL`], tells the store that this edge is alive and what it still
/// has — requests in flight, and of those WebSockets and event streams — on each spinlet that
/// drains: the supervisor stops a drained spinlet once every live edge reports nothing left on
/// it. A report lives [`DRAIN_REPORT_TTL`], so an edge that dies (or loses the store) holds no
/// drain beyond that; on stop, with its requests finished, the edge withdraws at once. Nothing
/// here touches the request path: counts are atomics the requests keep, read here.
pub async fn report_drains(store: Store, snapshot: Arc<Snapshot>, stop: CancellationToken) {
    let edge = spinforge_state::instance_id("edge");
    let mut tick = tokio::time::interval(DRAIN_REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Drains the previous round saw. One is reported from the round after it first appears:
    // by then every request that chose its spinlet from an older table is counted.
    let mut known: HashSet<Arc<str>> = HashSet::new();
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        if stopping {
            match tokio::time::timeout(REPORT_DEADLINE, store.withdraw_edge(&edge)).await {
                Ok(Ok(())) => {}
                // Its reports expire on their own.
                _ => tracing::debug!(%edge, "could not withdraw this edge's drain reports"),
            }
            return;
        }
        let table = snapshot.load_full();
        let mut seen = HashSet::new();
        let mut loads = Vec::new();
        for e in table.draining() {
            for d in e.draining.iter() {
                seen.insert(d.spinlet.clone());
                if known.contains(&d.spinlet) {
                    let (requests, streams) = e.runtime.loads.draining_load(d.addr);
                    let load = DrainLoad {
                        requests: requests as u64,
                        streams: streams as u64,
                    };
                    loads.push((d.spinlet.to_string(), load));
                }
            }
        }
        known = seen;
        let report = store.report_drains(&edge, &loads, DRAIN_REPORT_TTL);
        let error = match tokio::time::timeout(REPORT_DEADLINE, report).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_string()),
        };
        // Said once when it starts failing and once when it works again, not every round.
        match error {
            Some(error) if !failing => {
                tracing::warn!(%edge, %error, "cannot report drains: replaced spinlets may be stopped by their drain_timeout instead");
                failing = true;
            }
            None if failing => {
                tracing::info!(%edge, "reporting drains again");
                failing = false;
            }
            _ => {}
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
