//! The flaws found in the app task before it was a state machine, each as a test the old code
//! fails, and the behaviours the end-to-end tests rely on, in virtual time.

use super::world::{self, Plan, Truth, World};
use crate::app::effect::{Answer, Input};
use crate::app::state::{Phase, Want};
use crate::control::Lifecycle;
use spinforge_state::config::{AppConfig, EnvValue};
use spinforge_state::records::SpinletState;
use std::sync::Arc;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(120);

/// An always-on app serving release 1 with two spinlets.
fn serving() -> World {
    let mut config = world::config();
    config.idle_timeout = None;
    let mut w = World::new(config, 1);
    w.begin();
    assert!(w.settle(SETTLE));
    assert_eq!(w.published_procs().len(), 2);
    w
}

fn edit(w: &mut World, change: impl FnOnce(&mut AppConfig)) {
    let mut config = (*w.m.config).clone();
    change(&mut config);
    w.step(Input::Update(Arc::new(config)));
}

fn modes(w: &World) -> Vec<String> {
    w.published_procs().iter().map(|p| p.mode.clone()).collect()
}

fn set_mode(w: &mut World, mode: &str) {
    w.model.mode = mode.to_string();
    edit(w, |c| {
        c.env.insert(world::MODE.into(), EnvValue::new(mode));
    });
}

/// Flaw: while spinlets started, other commands waited in a queue of 32 and the rest were
/// dropped — a dropped edit was a config change silently lost. Edits now coalesce: however
/// many come while a rollout runs, the last one is what serves.
#[test]
fn edits_during_a_rollout_coalesce_and_the_last_one_serves() {
    let mut w = serving();
    set_mode(&mut w, "b");
    assert!(w.m.rollout.is_some(), "the first edit rolls out");
    for i in 0..100 {
        set_mode(&mut w, ["c", "d", "e"][i % 3]);
    }
    set_mode(&mut w, "last");
    assert!(w.settle(SETTLE));
    assert_eq!(modes(&w), ["last", "last"]);
    // One rollout for the first edit, one for the last: the ones between never started.
    let spawned_modes: std::collections::BTreeSet<String> =
        w.procs.values().map(|p| p.mode.clone()).collect();
    assert_eq!(
        spawned_modes,
        ["a", "b", "last"].map(String::from).into(),
        "intermediate edits were superseded, not rolled out"
    );
}

/// Flaw: an edit of source and env whose build failed dropped the env part too.
#[test]
fn a_failed_build_still_applies_the_env_part_of_its_edit() {
    let mut w = serving();
    w.plans.insert(
        world::source(9).to_string(),
        Plan {
            fails: true,
            broken: false,
        },
    );
    w.model.mode = "b".into();
    edit(&mut w, |c| {
        c.source = world::source(9);
        c.env.insert(world::MODE.into(), EnvValue::new("b"));
    });
    // The env part waits for the build (one rollout with both, had it succeeded)...
    assert!(w.m.rollout.is_none() && w.m.build.is_some());
    assert!(w.settle(SETTLE));
    // ...and applies when it failed.
    assert_eq!(modes(&w), ["b", "b"]);
    assert!(w.published_procs().iter().all(|p| p.release == 1));
}

/// Flaw: an edit did not revive a failed app; it waited for a wake a minute later.
#[test]
fn an_edit_revives_a_failed_app_at_once() {
    let mut w = serving();
    // Nothing serves (both crashed), and the env it restarts with cannot start.
    for p in w.alive().iter().map(|p| p.id.clone()).collect::<Vec<_>>() {
        w.crash(&p);
    }
    set_mode(&mut w, "broken");
    assert!(w.settle(SETTLE));
    assert!(w.m.failed.is_some(), "gave up: {:?}", w.m.state_name());
    assert_eq!(
        w.store.record.as_ref().map(|r| r.state.as_str()),
        Some("failed")
    );
    // A fixing edit starts it now, not after a wake a minute later.
    set_mode(&mut w, "fixed");
    assert!(w.m.failed.is_none());
    w.run_for(Duration::from_secs(4));
    assert_eq!(modes(&w), ["fixed", "fixed"]);
    assert_eq!(
        w.store.record.as_ref().map(|r| r.state.as_str()),
        Some("running")
    );
}

/// Flaw: `fill()` cleared the crash backoff, so an edit restarted crashed spinlets at once.
#[test]
fn an_edit_does_not_cut_a_crash_backoff_short() {
    let mut w = serving();
    // Crash the same slot until its backoff is long (250 ms, 500 ms, 1 s, 2 s, 4 s...).
    for _ in 0..5 {
        let victim = w.published_procs()[0].id.clone();
        w.crash(&victim);
        assert!(w.settle(SETTLE));
    }
    let victim = w.published_procs()[0].id.clone();
    w.crash(&victim);
    let retry = *w.m.retries.first().expect("a restart is pending");
    let wait = retry - w.now.at;
    assert!(wait >= Duration::from_secs(4), "{wait:?}");
    // An edit that needs no rollout (a domain) while the restart waits.
    edit(&mut w, |c| c.domains.push("www.shop.test".into()));
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.alive().len(), 1, "the crashed one waits out its backoff");
    assert!(w.m.slots.iter().all(|s| s.phase.is_running()));
    w.run_for(wait);
    assert!(w.settle(SETTLE));
    assert_eq!(w.published_procs().len(), 2);
}

/// Flaw: a detaching task dropped its draining spinlets without notice (they ran on, recorded
/// `stopping`, until the next supervisor killed them). Now they are stopped and forgotten
/// before the task says it is done; the serving ones run on for the next supervisor.
#[test]
fn detach_stops_draining_spinlets_and_leaves_the_serving_ones() {
    let mut w = serving();
    let old: Vec<String> = w.alive().iter().map(|p| p.id.clone()).collect();
    set_mode(&mut w, "b");
    // Until the flip: the old ones then drain for 2 s.
    while w.m.rollout.is_some() {
        w.run_for(Duration::from_millis(50));
    }
    assert!(
        w.m.slots
            .iter()
            .filter(|s| matches!(s.phase, Phase::Draining { .. }))
            .count()
            == 2
    );
    let reply = w.reply_id();
    let deadline = w.now.at + Duration::from_secs(3);
    w.step(Input::Detach { deadline, reply });
    while !w.done {
        w.run_for(Duration::from_millis(50));
    }
    for id in &old {
        assert_eq!(w.procs[id].truth, Truth::Dead, "draining {id} was stopped");
        assert!(!w.store.spinlets.contains_key(id), "and its record removed");
    }
    let serving = w.alive();
    assert_eq!(serving.len(), 2);
    for p in serving {
        let record = &w.store.spinlets[&p.id];
        assert_eq!(
            record.state.as_str(),
            "running",
            "left for the next supervisor"
        );
    }
}

/// A release whose spinlets never get healthy is refused: the running one serves on, and the
/// refusal is answered with the reason.
#[test]
fn a_broken_release_is_refused_and_the_running_one_serves_on() {
    let mut w = serving();
    let before: Vec<String> = w.published_procs().iter().map(|p| p.id.clone()).collect();
    w.plans.insert(
        world::source(5).to_string(),
        Plan {
            fails: false,
            broken: true,
        },
    );
    let mut config = (*w.m.config).clone();
    config.source = world::source(5);
    w.step(Input::Deploy(Arc::new(config)));
    assert!(w.settle(SETTLE));
    let now: Vec<String> = w.published_procs().iter().map(|p| p.id.clone()).collect();
    assert_eq!(now, before, "the same spinlets serve");
    assert_eq!(w.m.refusals, 1);
    assert_eq!(w.m.desired.as_ref().map(|r| r.info.number), Some(1));
    // A restart then restarts the serving release.
    let reply = w.reply_id();
    w.step(Input::Lifecycle {
        action: Lifecycle::Restart,
        reply,
    });
    assert!(w.settle(SETTLE));
    assert_eq!(w.answer(reply), Some(Answer::Ok));
    assert!(w.published_procs().iter().all(|p| p.release == 1));
}

/// A spinlet failing three health checks is replaced while the other serves.
#[test]
fn an_unhealthy_spinlet_is_replaced() {
    let mut w = serving();
    let sick = w.published_procs()[0].id.clone();
    w.sicken(&sick);
    w.run_for(Duration::from_secs(8));
    assert!(
        !w.published_procs().iter().any(|p| p.id == sick),
        "withdrawn"
    );
    assert!(
        !w.published_procs().is_empty(),
        "the other serves meanwhile"
    );
    assert!(w.settle(SETTLE));
    assert_eq!(w.published_procs().len(), 2);
    assert_eq!(w.store.spinlets.get(&sick), None);
}

/// A cold start of several instances is published once all of them are healthy, as before:
/// the first requests meet every instance.
#[test]
fn a_cold_start_shows_all_instances_at_once() {
    let mut w = World::new(world::config(), 3);
    w.begin();
    assert!(w.settle(SETTLE));
    assert!(w.alive().is_empty(), "idle until woken");
    w.model.awake = true;
    w.step(Input::Wake);
    let mut shown = Vec::new();
    for _ in 0..200 {
        w.run_for(Duration::from_millis(20));
        let n = w.published_procs().len();
        if shown.last() != Some(&n) {
            shown.push(n);
        }
    }
    assert_eq!(shown, [0, 2]);
}

/// An idle app stops; a wake starts it again.
#[test]
fn idle_stops_and_a_wake_starts_again() {
    let mut w = World::new(world::config(), 4);
    w.begin();
    w.model.awake = true;
    w.step(Input::Wake);
    assert!(w.settle(SETTLE));
    assert_eq!(w.published_procs().len(), 2);
    w.run_for(Duration::from_secs(40));
    w.model.awake = false;
    w.step(Input::IdleCheck {
        last_access_ms: None,
    });
    assert_eq!(w.m.want, Want::Asleep);
    assert!(w.store.upstreams.is_empty(), "out of routing at once");
    assert!(w.settle(SETTLE));
    assert!(w.alive().is_empty());
    assert_eq!(
        w.store.record.as_ref().map(|r| r.state.as_str()),
        Some("idle")
    );
    w.model.awake = true;
    w.step(Input::Wake);
    assert!(w.settle(SETTLE));
    assert_eq!(w.published_procs().len(), 2);
}

/// Spinlets left by a previous supervisor are adopted; ones started with other settings are
/// replaced once the check build ended (one rollout), not before.
#[test]
fn adopted_spinlets_with_stale_settings_roll_after_the_check_build() {
    let mut w = serving();
    let adopted: Vec<String> = w.alive().iter().map(|p| p.id.clone()).collect();
    // Edited while no supervisor ran.
    let mut config = (*w.m.config).clone();
    config
        .env
        .insert(world::MODE.into(), EnvValue::new("edited"));
    w.m.config = Arc::new(config);
    w.model.mode = "edited".into();
    w.restart_supervisor(false);
    assert_eq!(w.m.slots.len(), 2, "both adopted");
    assert!(
        w.m.build.is_some() && w.m.rollout.is_none(),
        "waits for the check build"
    );
    assert!(w.settle(SETTLE));
    assert_eq!(modes(&w), ["edited", "edited"]);
    for id in adopted {
        assert_eq!(w.procs[&id].truth, Truth::Dead, "replaced after draining");
    }
}

/// Flaw: a replaced spinlet got SIGTERM a fixed `edge.grace` after it left routing, whatever
/// it still served. Now it stops as soon as the edges have nothing left on it, well before its
/// `drain_timeout`; until then it is out of routing and listed as draining.
#[test]
fn a_replaced_spinlet_stops_once_the_edges_have_nothing_left_on_it() {
    let mut w = serving();
    w.drain_busy = Some(Duration::from_millis(1500));
    let old: Vec<String> = w.alive().iter().map(|p| p.id.clone()).collect();
    set_mode(&mut w, "b");
    while w.m.rollout.is_some() {
        w.run_for(Duration::from_millis(10));
    }
    let flipped = w.now.at;
    let drained: Vec<&str> = w.store.drains.iter().map(|d| d.spinlet.as_str()).collect();
    assert_eq!(drained, old, "the old ones drain, and the edges are told");
    assert!(w.published_procs().iter().all(|p| !old.contains(&p.id)));
    w.run_for(Duration::from_millis(1400));
    for id in &old {
        assert_ne!(w.procs[id].truth, Truth::Dead, "{id} still has requests");
        assert_eq!(w.store.spinlets[id].state.as_str(), "stopping");
    }
    w.run_for(Duration::from_millis(200));
    for id in &old {
        assert_ne!(w.procs[id].truth, Truth::Healthy, "{id} stops once idle");
    }
    assert!(w.settle(SETTLE));
    assert!(w.store.drains.is_empty());
    let deadline = w.m.config.drain_timeout + w.m.timing.drain_margin;
    assert!(
        w.now.at - flipped >= Duration::from_millis(1500) && w.drain_ends == (2, 0),
        "both ended idle, before their deadline ({deadline:?})"
    );
}

/// A request that outlasts `drain_timeout` does not hold the drain: the spinlet stops at its
/// deadline (the edges have ended its streams by then), not a moment before.
#[test]
fn a_drain_ends_at_its_deadline_when_requests_outlast_it() {
    let mut w = serving();
    w.drain_busy = Some(Duration::from_secs(600));
    let old: Vec<String> = w.alive().iter().map(|p| p.id.clone()).collect();
    set_mode(&mut w, "b");
    while w.m.rollout.is_some() {
        w.run_for(Duration::from_millis(10));
    }
    let deadline = w.m.config.drain_timeout + w.m.timing.drain_margin;
    w.run_for(deadline - Duration::from_millis(20));
    for id in &old {
        assert_ne!(
            w.procs[id].truth,
            Truth::Dead,
            "{id} drains to its deadline"
        );
    }
    w.run_for(Duration::from_millis(30));
    for id in &old {
        assert_ne!(
            w.procs[id].truth,
            Truth::Healthy,
            "{id} is stopped at its deadline"
        );
    }
    assert!(w.settle(SETTLE));
    assert_eq!(w.drain_ends, (0, 2));
}

/// An unhealthy spinlet leaves routing at once and drains like a replaced one (what it still
/// serves may finish), then stops and is replaced.
#[test]
fn an_unhealthy_spinlet_drains_before_it_stops() {
    let mut w = serving();
    w.drain_busy = Some(Duration::from_millis(500));
    let sick = w.published_procs()[0].id.clone();
    w.sicken(&sick);
    let mut seen_draining = false;
    for _ in 0..3000 {
        w.run_for(Duration::from_millis(10));
        if w.store.drains.iter().any(|d| d.spinlet == sick) {
            seen_draining = true;
            assert!(!w.published_procs().iter().any(|p| p.id == sick));
        }
        if w.procs[&sick].truth == Truth::Dead {
            break;
        }
    }
    assert!(seen_draining, "it drained");
    assert_eq!(w.procs[&sick].truth, Truth::Dead);
    assert!(w.settle(SETTLE));
    assert_eq!(w.published_procs().len(), 2);
}

/// Flaw (found by the chaos soak): a spinlet still draining when its supervisor was killed was
/// signalled from outside its app's task by the next supervisor, so nothing freed its cgroup.
/// Now the app's task takes it over and stops it like any other (SIGTERM, SIGKILL at the
/// deadline, then its cgroup and port are freed), while the new release serves on.
#[test]
fn a_spinlet_draining_when_its_supervisor_was_killed_is_stopped_by_the_next() {
    let mut w = serving();
    w.drain_busy = Some(Duration::from_secs(20));
    let old: Vec<String> = w.alive().iter().map(|p| p.id.clone()).collect();
    set_mode(&mut w, "b");
    while w.m.rollout.is_some() {
        w.run_for(Duration::from_millis(10));
    }
    for id in &old {
        assert!(
            w.procs[id].alive(),
            "{id} drains while the edges are busy on it"
        );
        assert_ne!(w.store.spinlets[id].state, SpinletState::Running, "{id}");
    }
    w.restart_supervisor(false);
    assert!(w.settle(SETTLE));
    for id in &old {
        assert_eq!(
            w.procs[id].truth,
            Truth::Dead,
            "{id} stopped by the new supervisor"
        );
        assert!(
            !w.store.spinlets.contains_key(id),
            "{id}: its record is gone"
        );
    }
    assert_eq!(modes(&w), ["b", "b"]);
}
