//! `spinforge edge` and `spinforge supervisor` as separate processes sharing a real Redis.

mod support;

use spinforge_state::records::Route;
use std::time::Duration;
use support::spinforge::{Spinforge, Workspace, echo_app, port_block};
use support::{RedisServer, eventually, free_port};

struct Split {
    edge: Spinforge,
    supervisor: Spinforge,
}

fn start_split(ws: &Workspace, redis: &RedisServer, apps: &str) -> Split {
    let port = free_port();
    let yaml = format!(
        "state:\n  redis: {}\nedge:\n  listen_http: 127.0.0.1:{port}\n  grace: 3s\nsupervisor:\n  data_dir: ./data\n  port_range: {}\napps:\n{apps}",
        redis.url(),
        port_block()
    );
    let path = ws.write("spinforge.yaml", &yaml);
    let supervisor = Spinforge::start(ws, "supervisor", &path, None);
    let edge = Spinforge::start(ws, "edge", &path, Some(([127, 0, 0, 1], port).into()));
    Split { edge, supervisor }
}

/// A split setup serving one app, `alpha`, that never idles (it must keep running while Redis
/// is away), once it answers.
async fn start_alpha(ws: &Workspace, redis: &RedisServer) -> Split {
    let split = start_split(
        ws,
        redis,
        &echo_app(ws, "alpha", "alpha.test", "    idle_timeout: 0\n"),
    );
    let http = split.edge.client();
    eventually(Duration::from_secs(20), "alpha answers", || async {
        (http.fetch("alpha.test", "/").await.status == 200).then_some(())
    })
    .await;
    split
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_supervisor_apart_wake_an_app_through_redis() {
    let redis = RedisServer::start();
    let ws = Workspace::new();
    let split = start_split(
        &ws,
        &redis,
        &(echo_app(&ws, "alpha", "alpha.test", "") + &echo_app(&ws, "beta", "beta.test", "")),
    );
    let http = split.edge.client();

    let a = eventually(Duration::from_secs(20), "alpha answers", || async {
        let r = http.fetch("alpha.test", "/").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(a.json()["app"], "alpha");
    assert!(
        a.header("server-timing")
            .is_some_and(|t| t.starts_with("cold-start")),
        "woken by the edge's wake event"
    );
    assert_eq!(http.fetch("beta.test", "/").await.json()["app"], "beta");
    assert_eq!(http.fetch("gamma.test", "/").await.status, 404);

    // The edge batches last access into `active` for the supervisor's idle checks.
    let store = redis.store().await;
    let activity = eventually(Duration::from_secs(5), "activity recorded", || async {
        let a = store.activity().await.ok()?;
        (a.contains_key("alpha") && a.contains_key("beta")).then_some(a)
    })
    .await;
    assert!(activity["alpha"] > 0);
    assert_eq!(ws.starts("alpha.starts").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_through_a_redis_outage_and_catches_up_after() {
    let mut redis = RedisServer::start();
    let ws = Workspace::new();
    let split = start_alpha(&ws, &redis).await;
    let http = split.edge.client();

    redis.stop();
    // Known routes keep working from the edge's snapshot, for well past a reload period.
    for _ in 0..10 {
        let r = http.fetch("alpha.test", "/").await;
        assert_eq!(r.status, 200, "served while Redis is down: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Redis comes back empty (no persistence): the supervisor republishes, the edge reloads.
    redis.restart();
    let store = redis.store().await;
    eventually(
        Duration::from_secs(15),
        "the supervisor republished alpha's route",
        || async { store.route("alpha.test").await.ok().flatten() },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            http.fetch("alpha.test", "/").await.status,
            200,
            "served across the reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A change made after the outage reaches the edge.
    store
        .put_route(&Route {
            domain: "new.alpha.test".into(),
            app: "alpha".into(),
            release: None,
            policy: Default::default(),
            external: false,
            failed: false,
        })
        .await
        .expect("write a route");
    let r = eventually(
        Duration::from_secs(10),
        "the new route is served",
        || async {
            let r = http.fetch("new.alpha.test", "/").await;
            (r.status == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(r.json()["app"], "alpha");
    assert_eq!(
        ws.starts("alpha.starts").len(),
        1,
        "the spinlet ran through the outage"
    );
}

/// After Redis restarts empty, the store is refilled app by app; until the supervisor says it is
/// whole again, the edge keeps its last routes for what the store lacks instead of answering
/// 404 for an app whose route is not back yet. The supervisor is frozen (SIGSTOP) for the
/// edge's whole reconnect and reload, so the store stays empty for as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_redis_restart_costs_no_route_while_the_supervisor_writes_back() {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    let mut redis = RedisServer::start();
    let ws = Workspace::new();
    let split = start_alpha(&ws, &redis).await;
    let http = split.edge.client();
    let store = redis.store().await;
    eventually(
        Duration::from_secs(10),
        "the store is marked whole",
        || async { store.published().await.ok()?.then_some(()) },
    )
    .await;

    support::spinforge::signal(split.supervisor.pid(), SIGSTOP);
    redis.restart();
    // Past the edge's reconnect, its settle pause (1 s) and a refill retry: every answer is
    // alpha's, from an empty store.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    let mut answered = 0;
    while std::time::Instant::now() < until {
        let r = http.fetch("alpha.test", "/").await;
        assert_eq!(
            r.status, 200,
            "answer {answered} from an empty store: {}",
            r.body
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !store.published().await.expect("read"),
        "the store is still empty"
    );

    support::spinforge::signal(split.supervisor.pid(), SIGCONT);
    eventually(
        Duration::from_secs(15),
        "the supervisor wrote everything back and said so",
        || async {
            let route = store.route("alpha.test").await.ok()??;
            store.published().await.ok()?.then_some(route)
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(http.fetch("alpha.test", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ws.starts("alpha.starts").len(),
        1,
        "the spinlet ran through"
    );
}

/// A spinlet record is only trusted as far as the process it names: one planted in the shared
/// store (naming another process by its real pid and start time) is not adopted, so the
/// supervisor sends that process no signal and forgets the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_spinlet_record_cannot_aim_the_supervisors_signals() {
    use spinforge_state::records::{Spinlet, SpinletState};
    use std::os::unix::process::CommandExt as _;
    let redis = RedisServer::start();
    let ws = Workspace::new();
    // The canary: its own process group, like a spinlet, but not one.
    let mut canary = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .expect("spawn the canary");
    let pid = canary.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let proc_start: u64 = stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("ticks");
    let store = redis.store().await;
    store
        .put_spinlet(&Spinlet {
            id: "alpha-planted".into(),
            app: "alpha".into(),
            release: 1,
            state: SpinletState::Stopping,
            pid,
            host: "127.0.0.1".into(),
            port: 1,
            started: 1,
            restarts: 0,
            proc_start,
            reason: None,
            settings: None,
        })
        .await
        .expect("plant the record");
    let _split = start_split(&ws, &redis, &echo_app(&ws, "alpha", "alpha.test", ""));
    eventually(
        Duration::from_secs(30),
        "the planted record is forgotten",
        || async {
            let all = store.spinlets().await.ok()?;
            (!all.iter().any(|s| s.id == "alpha-planted")).then_some(())
        },
    )
    .await;
    assert!(
        canary.try_wait().expect("wait").is_none(),
        "the canary was signalled"
    );
    let _ = canary.kill();
    let _ = canary.wait();
}
