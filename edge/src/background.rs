//! Work the request path hands off so that it never waits on the store: publishing wakes,
//! writing last-access times in batches, and reporting what this edge still has on spinlets
//! that drain and which upstreams answer.

use crate::routing::{NoUpstream, RoutingTable};
use crate::sync::Snapshot;
use spinforge_state::records::DrainLoad;
use spinforge_state::stop::CancellationToken;
use spinforge_state::{DRAIN_REPORT_INTERVAL, DRAIN_REPORT_TTL, Event, Store};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
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

/// Every [`DRAIN_REPORT_INTERVAL`], tells the store that this edge is alive, what it still
/// has — requests in flight, and of those WebSockets and event streams — on each spinlet that
/// drains, and which upstreams answered requests lately: the supervisor stops a drained spinlet
/// once every live edge reports nothing left on it, and keeps a spinlet that misses health
/// probes while it answers requests (busy, not hung). A report lives [`DRAIN_REPORT_TTL`], so an
/// edge that dies (or loses the store) holds no drain beyond that; on stop, with its requests
/// finished, the edge withdraws at once. Nothing here touches the request path: counts are
/// atomics the requests keep, read here.
pub async fn report_drains(store: Store, snapshot: Arc<Snapshot>, stop: CancellationToken) {
    let edge = spinforge_state::instance_id("edge");
    let mut tick = tokio::time::interval(DRAIN_REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Drains the previous round saw. One is reported from the round after it first appears:
    // by then every request that chose its spinlet from an older table is counted.
    let mut known: HashSet<Arc<str>> = HashSet::new();
    let mut answers = RecentAnswers::default();
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
        let answered = answers.update(&table, spinforge_state::now_ms());
        let report = store.report_edge(&edge, &loads, &answered, DRAIN_REPORT_TTL);
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

/// How long an upstream's last answer is reported after it came: well past a health probe's
/// timeout, so that a supervisor whose probe went unanswered still finds it.
const ANSWERS_REPORTED_FOR_MS: u64 = 10_000;

/// The serving upstreams that answered requests lately, from the answer counts the requests
/// keep ([`crate::balance::Loads::answers`]): `host:port` and when (ms) more answers were seen.
#[derive(Debug, Default)]
struct RecentAnswers {
    /// Per upstream: its count when last looked at, and when it last grew (0: not seen grow).
    seen: HashMap<SocketAddr, (u64, u64)>,
}

impl RecentAnswers {
    fn update(&mut self, table: &RoutingTable, now_ms: u64) -> Vec<(String, u64)> {
        let mut next = HashMap::with_capacity(self.seen.len());
        for e in table
            .apps()
            .filter(|e| e.no_upstream != NoUpstream::External)
        {
            for &addr in e.upstreams.iter() {
                let Some(count) = e.runtime.loads.answers(addr) else {
                    continue;
                };
                let grew_at = match self.seen.get(&addr) {
                    Some(&(before, at)) if before == count => at,
                    Some(_) => now_ms,
                    // First look: the count so far may be from before (a reused slot).
                    None => 0,
                };
                next.insert(addr, (count, grew_at));
            }
        }
        self.seen = next;
        self.seen
            .iter()
            .filter(|(_, (_, at))| *at > 0 && now_ms.saturating_sub(*at) <= ANSWERS_REPORTED_FOR_MS)
            .map(|(addr, (_, at))| (addr.to_string(), *at))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use spinforge_state::policy::EdgePolicy;

    #[test]
    fn upstreams_that_answered_lately_are_reported_and_the_others_are_not() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:4001".parse().expect("addr"),
            "127.0.0.1:4002".parse().expect("addr"),
        );
        let p = EdgePolicy::default();
        let ups = HashMap::from([("app".to_string(), vec![a, b])]);
        let table = RoutingTable::build(
            [("app.test", "app", &p, NoUpstream::Wake)],
            &ups,
            &HashMap::new(),
            &RoutingTable::default(),
        );
        let loads = table
            .lookup("app.test")
            .expect("routed")
            .runtime
            .loads
            .clone();
        let answer = |addr| loads.start(addr).answered();
        let mut recent = RecentAnswers::default();
        // Nothing asked yet: nothing to say.
        assert!(recent.update(&table, 1_000).is_empty());
        // Counts seen for the first time are a baseline, not evidence.
        answer(a);
        let _b_in_flight = loads.start(b); // b has a slot, but never answers
        assert!(recent.update(&table, 2_000).is_empty());
        // a answers again: reported from this round, with when it was seen.
        answer(a);
        assert_eq!(recent.update(&table, 3_000), [(a.to_string(), 3_000)]);
        // Still reported for a while without new answers, then no more.
        assert_eq!(
            recent.update(&table, 3_000 + ANSWERS_REPORTED_FOR_MS),
            [(a.to_string(), 3_000)]
        );
        assert!(
            recent
                .update(&table, 3_001 + ANSWERS_REPORTED_FOR_MS)
                .is_empty()
        );
    }
}
