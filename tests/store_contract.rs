//! The contract of `spinforge_state::Store`, checked once against each backend: the embedded store
//! and a real `redis-server`. Every test gets a fresh store (and its own Redis), so they run in
//! parallel. Then a few Redis-only cases: Redis going away and coming back.

mod support;

use spinforge_state::config::RedisUrl;
use spinforge_state::records::{
    AppRecord, BuildState, BuildStatus, BuildStep, CertRecord, Challenge, ChallengeType, DrainLoad,
    Route, Spinlet, SpinletState,
};
use spinforge_state::{Event, Signal, Store, Subscription};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{EVENTUALLY, RedisServer, eventually};

/// How long a published event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

// --- harness ---

async fn connect(server: &RedisServer) -> Store {
    let store = Store::connect_redis(&RedisUrl::new(server.url()), Duration::from_secs(5))
        .await
        .expect("connect to the test redis-server");
    assert_eq!(store.kind(), "redis");
    store
}

/// Writes each contract case once, and runs it against both backends:
/// `on_embedded::case` and `on_redis::case`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = spinforge_state::Store::embedded();
                    assert_eq!(store.kind(), "embedded");
                    super::$case(store).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = crate::support::RedisServer::start();
                    super::$case(super::connect(&server).await).await;
                    drop(server);
                }
            )*
        }
    };
}

contract!(
    routes_roundtrip,
    apps_roundtrip,
    spinlets_roundtrip,
    upstreams_roundtrip,
    upstreams_of_many_apps,
    activity_keeps_the_latest_time,
    subscription_starts_with_resync,
    writes_publish_their_events,
    writes_without_events_publish_nothing,
    every_subscriber_gets_every_event,
    subscription_ends_when_the_store_is_gone,
    certs_roundtrip_and_announce,
    challenges_expire,
    locks_exclude_expire_and_fence,
    builds_queue_status_and_log,
    rate_counts_add_up_across_edges,
    edge_reports_add_up_and_expire,
);

// --- fixtures ---

fn build(id: &str, app: &str, state: BuildState) -> BuildStatus {
    BuildStatus {
        id: id.into(),
        app: app.into(),
        state,
        queued: 1_700_000_000_000,
        started: None,
        finished: None,
        release: None,
        error: None,
        steps: Vec::new(),
    }
}

fn route(domain: &str, app: &str, release: Option<u64>) -> Route {
    Route {
        domain: domain.into(),
        app: app.into(),
        release,
        policy: Default::default(),
        external: false,
        failed: false,
    }
}

fn app(name: &str, domains: &[&str]) -> AppRecord {
    AppRecord {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        source: format!("/srv/{name}"),
        idle_timeout_ms: Some(300_000),
        current_release: Some(2),
        releases: vec![1, 2],
        state: "running".into(),
        reason: None,
        instances: 2,
    }
}

fn spinlet(id: &str, app: &str, state: SpinletState, port: u16) -> Spinlet {
    Spinlet {
        id: id.into(),
        app: app.into(),
        release: 3,
        state,
        pid: 4242,
        host: "127.0.0.1".into(),
        port,
        started: 1_732_000_000_123,
        restarts: 1,
        proc_start: 12345,
        reason: Some("out of memory".into()),
        settings: Some("5e771n95".into()),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The next signal, failing the test instead of hanging when none comes.
async fn next_signal(sub: &mut Subscription) -> Signal {
    match tokio::time::timeout(EVENT_TIMEOUT, sub.next()).await {
        Ok(Some(signal)) => signal,
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no signal within {EVENT_TIMEOUT:?}"),
    }
}

async fn expect_event(sub: &mut Subscription, expected: Event) {
    assert_eq!(next_signal(sub).await, Signal::Event(expected));
}

async fn subscribe_synced(store: &Store) -> Subscription {
    let mut sub = store.subscribe();
    assert_eq!(
        next_signal(&mut sub).await,
        Signal::Resync,
        "a subscription starts with a resync"
    );
    sub
}

// --- contract cases ---

async fn routes_roundtrip(store: Store) {
    assert_eq!(store.routes().await.expect("routes"), vec![]);
    assert_eq!(store.route("a.example.com").await.expect("route"), None);

    let routes = [
        route("b.example.com", "blog", Some(1)),
        route("a.example.com", "api", None),
        // A prefix of another domain, to catch sloppy prefix scans.
        route("a.example.com.au", "api-au", Some(7)),
    ];
    for r in &routes {
        store.put_route(r).await.expect("put_route");
    }
    // Other kinds of record must not show up among routes.
    store
        .put_app(&app("api", &["a.example.com"]))
        .await
        .expect("put_app");
    store
        .add_upstream("api", "127.0.0.1:4000")
        .await
        .expect("add_upstream");

    for r in &routes {
        assert_eq!(
            store.route(&r.domain).await.expect("route").as_ref(),
            Some(r)
        );
    }
    let mut listed = store.routes().await.expect("routes");
    listed.sort_by(|x, y| x.domain.cmp(&y.domain));
    assert_eq!(
        listed,
        vec![routes[1].clone(), routes[2].clone(), routes[0].clone()]
    );

    // Putting again replaces.
    let moved = route("a.example.com", "api-v2", Some(9));
    store.put_route(&moved).await.expect("put_route again");
    assert_eq!(
        store.route("a.example.com").await.expect("route"),
        Some(moved.clone())
    );
    assert_eq!(store.routes().await.expect("routes").len(), 3);

    store
        .delete_route("b.example.com")
        .await
        .expect("delete_route");
    assert_eq!(store.route("b.example.com").await.expect("route"), None);
    let mut listed = store.routes().await.expect("routes");
    listed.sort_by(|x, y| x.domain.cmp(&y.domain));
    assert_eq!(listed, vec![moved, routes[2].clone()]);

    // Deleting what is not there is fine.
    store
        .delete_route("never.example.com")
        .await
        .expect("delete_route of a missing route");
    assert_eq!(store.routes().await.expect("routes").len(), 2);
}

async fn apps_roundtrip(store: Store) {
    assert_eq!(store.apps().await.expect("apps"), vec![]);
    assert_eq!(store.app("api").await.expect("app"), None);

    let api = app("api", &["a.example.com", "api.example.com"]);
    let blog = AppRecord {
        idle_timeout_ms: None,
        current_release: None,
        releases: vec![],
        ..app("blog", &[])
    };
    store.put_app(&api).await.expect("put_app api");
    store.put_app(&blog).await.expect("put_app blog");
    store
        .put_route(&route("a.example.com", "api", None))
        .await
        .expect("put_route");

    assert_eq!(store.app("api").await.expect("app"), Some(api.clone()));
    assert_eq!(store.app("blog").await.expect("app"), Some(blog.clone()));
    let mut listed = store.apps().await.expect("apps");
    listed.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(listed, vec![api.clone(), blog.clone()]);

    let api2 = AppRecord {
        current_release: Some(3),
        releases: vec![1, 2, 3],
        ..api
    };
    store.put_app(&api2).await.expect("put_app again");
    assert_eq!(store.app("api").await.expect("app"), Some(api2));

    // Deleting an app takes its upstreams along.
    store
        .add_upstream("blog", "127.0.0.1:4001")
        .await
        .expect("add_upstream");
    store.delete_app("blog").await.expect("delete_app");
    assert_eq!(store.app("blog").await.expect("app"), None);
    assert_eq!(
        store.upstreams("blog").await.expect("upstreams"),
        Vec::<String>::new()
    );
    assert_eq!(store.apps().await.expect("apps").len(), 1);
    store
        .delete_app("never")
        .await
        .expect("delete_app of a missing app");
}

async fn spinlets_roundtrip(store: Store) {
    assert_eq!(store.spinlets().await.expect("spinlets"), vec![]);

    // Exactly one: the single-reply case of a Redis pipeline.
    let lone = spinlet("solo-1", "solo", SpinletState::Stopping, 3999);
    store.put_spinlet(&lone).await.expect("put_spinlet");
    assert_eq!(store.spinlets().await.expect("spinlets"), vec![lone]);
    store
        .delete_spinlet("solo-1")
        .await
        .expect("delete_spinlet");
    assert_eq!(store.spinlets().await.expect("spinlets"), vec![]);

    let a1 = spinlet("api-1", "api", SpinletState::Starting, 4000);
    let a2 = spinlet("api-2", "api", SpinletState::Running, 4001);
    let b1 = Spinlet {
        restarts: 0,
        proc_start: 0,
        reason: None,
        ..spinlet("blog-1", "blog", SpinletState::Crashed, 4002)
    };
    for s in [&a1, &a2, &b1] {
        store.put_spinlet(s).await.expect("put_spinlet");
    }
    store
        .put_route(&route("a.example.com", "api", None))
        .await
        .expect("put_route");

    let mut listed = store.spinlets().await.expect("spinlets");
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, vec![a1.clone(), a2.clone(), b1.clone()]);

    // Putting again replaces the whole record.
    let a1_running = Spinlet {
        state: SpinletState::Running,
        pid: 5151,
        ..a1
    };
    store
        .put_spinlet(&a1_running)
        .await
        .expect("put_spinlet again");
    store.delete_spinlet("api-2").await.expect("delete_spinlet");
    store
        .delete_spinlet("never")
        .await
        .expect("delete_spinlet of a missing spinlet");

    let mut listed = store.spinlets().await.expect("spinlets");
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed, vec![a1_running, b1]);
}

async fn upstreams_roundtrip(store: Store) {
    let none = Vec::<String>::new();
    assert_eq!(
        store
            .upstreams("api")
            .await
            .expect("upstreams of a missing app"),
        none
    );

    // A set: adding twice keeps one. Both backends list members sorted.
    for addr in [
        "127.0.0.1:4002",
        "127.0.0.1:4000",
        "127.0.0.1:4001",
        "127.0.0.1:4000",
    ] {
        store.add_upstream("api", addr).await.expect("add_upstream");
    }
    assert_eq!(
        store.upstreams("api").await.expect("upstreams"),
        strings(&["127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002"])
    );

    store
        .remove_upstream("api", "127.0.0.1:4001")
        .await
        .expect("remove_upstream");
    store
        .remove_upstream("api", "127.0.0.1:9999")
        .await
        .expect("remove_upstream of a missing member");
    store
        .remove_upstream("never", "127.0.0.1:9999")
        .await
        .expect("remove_upstream of a missing app");
    assert_eq!(
        store.upstreams("api").await.expect("upstreams"),
        strings(&["127.0.0.1:4000", "127.0.0.1:4002"])
    );

    // One member: the single-value case of a Redis reply.
    store
        .set_upstreams("api", &strings(&["10.0.0.1:80"]))
        .await
        .expect("set_upstreams one");
    assert_eq!(
        store.upstreams("api").await.expect("upstreams"),
        strings(&["10.0.0.1:80"])
    );

    store
        .set_upstreams("api", &strings(&["10.0.0.3:80", "10.0.0.2:80"]))
        .await
        .expect("set_upstreams two");
    assert_eq!(
        store.upstreams("api").await.expect("upstreams"),
        strings(&["10.0.0.2:80", "10.0.0.3:80"])
    );

    store
        .set_upstreams("api", &[])
        .await
        .expect("set_upstreams none");
    assert_eq!(store.upstreams("api").await.expect("upstreams"), none);

    // Removing the last member leaves nothing behind.
    store
        .add_upstream("api", "127.0.0.1:4000")
        .await
        .expect("add_upstream");
    store
        .remove_upstream("api", "127.0.0.1:4000")
        .await
        .expect("remove_upstream");
    assert_eq!(store.upstreams("api").await.expect("upstreams"), none);
}

async fn upstreams_of_many_apps(store: Store) {
    let none = Vec::<String>::new();
    assert_eq!(
        store.upstreams_of(&[]).await.expect("upstreams_of nothing"),
        Vec::<Vec<String>>::new()
    );
    assert_eq!(
        store
            .upstreams_of(&strings(&["ghost"]))
            .await
            .expect("upstreams_of one missing"),
        vec![none.clone()]
    );
    assert_eq!(
        store
            .upstreams_of(&strings(&["ghost", "phantom"]))
            .await
            .expect("upstreams_of two missing"),
        vec![none.clone(), none.clone()]
    );

    store
        .set_upstreams("api", &strings(&["127.0.0.1:4001", "127.0.0.1:4000"]))
        .await
        .expect("set_upstreams");
    store
        .add_upstream("blog", "127.0.0.1:5000")
        .await
        .expect("add_upstream");
    store
        .set_upstreams(
            "shop",
            &strings(&["127.0.0.1:6000", "127.0.0.1:6001", "127.0.0.1:6002"]),
        )
        .await
        .expect("set");

    // One key.
    assert_eq!(
        store
            .upstreams_of(&strings(&["api"]))
            .await
            .expect("upstreams_of api"),
        vec![strings(&["127.0.0.1:4000", "127.0.0.1:4001"])]
    );
    assert_eq!(
        store
            .upstreams_of(&strings(&["blog"]))
            .await
            .expect("upstreams_of blog"),
        vec![strings(&["127.0.0.1:5000"])]
    );

    // Many keys: answers in the order asked, missing apps as empty lists.
    assert_eq!(
        store
            .upstreams_of(&strings(&["shop", "ghost", "blog", "api"]))
            .await
            .expect("upstreams_of many"),
        vec![
            strings(&["127.0.0.1:6000", "127.0.0.1:6001", "127.0.0.1:6002"]),
            none.clone(),
            strings(&["127.0.0.1:5000"]),
            strings(&["127.0.0.1:4000", "127.0.0.1:4001"]),
        ]
    );
    // Only single-member sets, which a reply decoder could mistake for a flat list.
    assert_eq!(
        store
            .upstreams_of(&strings(&["blog", "blog"]))
            .await
            .expect("upstreams_of the same app twice"),
        vec![strings(&["127.0.0.1:5000"]), strings(&["127.0.0.1:5000"])]
    );
    assert_eq!(
        store
            .upstreams_of(&strings(&["ghost", "blog"]))
            .await
            .expect("upstreams_of missing then one"),
        vec![none, strings(&["127.0.0.1:5000"])]
    );
}

async fn activity_keeps_the_latest_time(store: Store) {
    assert_eq!(store.activity().await.expect("activity"), BTreeMap::new());
    store
        .record_activity(&[])
        .await
        .expect("record_activity of nothing");
    assert_eq!(store.activity().await.expect("activity"), BTreeMap::new());

    // Real clock values: they must survive Redis' float scores exactly.
    let t = spinforge_state::now_ms();
    store
        .record_activity(&[("api".into(), t - 10)])
        .await
        .expect("record_activity of one app");
    assert_eq!(
        store.activity().await.expect("activity"),
        BTreeMap::from([("api".into(), t - 10)])
    );
    store
        .record_activity(&[("api".into(), t), ("blog".into(), t + 5)])
        .await
        .expect("record_activity");
    assert_eq!(
        store.activity().await.expect("activity"),
        BTreeMap::from([("api".into(), t), ("blog".into(), t + 5)])
    );

    // An older time does not lower the score; a newer one raises it; new apps are added.
    store
        .record_activity(&[("api".into(), t - 1_000)])
        .await
        .expect("record_activity older");
    store
        .record_activity(&[
            ("blog".into(), t + 7),
            ("shop".into(), 42),
            ("api".into(), t - 1),
        ])
        .await
        .expect("record_activity mixed");
    assert_eq!(
        store.activity().await.expect("activity"),
        BTreeMap::from([
            ("api".into(), t),
            ("blog".into(), t + 7),
            ("shop".into(), 42)
        ])
    );

    // The same time again changes nothing.
    store
        .record_activity(&[("shop".into(), 42)])
        .await
        .expect("record_activity same");
    assert_eq!(
        store.activity().await.expect("activity").get("shop"),
        Some(&42)
    );
}

async fn subscription_starts_with_resync(store: Store) {
    // (No write before subscribing: on Redis its event reaches the store asynchronously, so a
    // subscription opened just after the write may or may not see it. The resync covers both.)
    let mut sub = store.subscribe();
    assert_eq!(
        sub.try_next(),
        Some(Signal::Resync),
        "try_next hands out the first resync too"
    );
    assert_eq!(sub.try_next(), None, "nothing else is pending");

    let mut sub = store.subscribe();
    assert_eq!(next_signal(&mut sub).await, Signal::Resync);
    store
        .publish(&Event::Wake { app: "api".into() })
        .await
        .expect("publish");
    expect_event(&mut sub, Event::Wake { app: "api".into() }).await;
}

async fn writes_publish_their_events(store: Store) {
    let mut sub = subscribe_synced(&store).await;
    let changed_route = |d: &str| Event::RouteChanged { domain: d.into() };
    let changed_upstreams = |a: &str| Event::UpstreamsChanged { app: a.into() };

    store
        .put_route(&route("a.example.com", "api", Some(1)))
        .await
        .expect("put_route");
    expect_event(&mut sub, changed_route("a.example.com")).await;
    store
        .delete_route("a.example.com")
        .await
        .expect("delete_route");
    expect_event(&mut sub, changed_route("a.example.com")).await;

    store
        .add_upstream("api", "127.0.0.1:4000")
        .await
        .expect("add_upstream");
    expect_event(&mut sub, changed_upstreams("api")).await;
    store
        .remove_upstream("api", "127.0.0.1:4000")
        .await
        .expect("remove_upstream");
    expect_event(&mut sub, changed_upstreams("api")).await;
    store
        .set_upstreams("blog", &strings(&["127.0.0.1:5000"]))
        .await
        .expect("set_upstreams");
    expect_event(&mut sub, changed_upstreams("blog")).await;
    store.delete_app("blog").await.expect("delete_app");
    expect_event(&mut sub, changed_upstreams("blog")).await;

    store
        .put_spinlet(&spinlet("api-1", "api", SpinletState::Running, 4000))
        .await
        .expect("put_spinlet");
    expect_event(
        &mut sub,
        Event::SpinletState {
            id: "api-1".into(),
            app: "api".into(),
            state: "running".into(),
        },
    )
    .await;
    store
        .put_spinlet(&spinlet("api-1", "api", SpinletState::Crashed, 4000))
        .await
        .expect("put_spinlet");
    expect_event(
        &mut sub,
        Event::SpinletState {
            id: "api-1".into(),
            app: "api".into(),
            state: "crashed".into(),
        },
    )
    .await;

    store
        .publish(&Event::Wake { app: "api".into() })
        .await
        .expect("publish");
    expect_event(&mut sub, Event::Wake { app: "api".into() }).await;

    // A burst arrives complete and in order.
    for i in 0..50 {
        store
            .put_route(&route(&format!("d{i}.example.com"), "api", None))
            .await
            .expect("put_route");
    }
    for i in 0..50 {
        expect_event(&mut sub, changed_route(&format!("d{i}.example.com"))).await;
    }
}

async fn writes_without_events_publish_nothing(store: Store) {
    let mut sub = subscribe_synced(&store).await;
    store
        .put_app(&app("api", &["a.example.com"]))
        .await
        .expect("put_app");
    store.delete_spinlet("api-1").await.expect("delete_spinlet");
    store
        .record_activity(&[("api".into(), 1)])
        .await
        .expect("record_activity");
    // Published after the writes above, so it would come after anything they published.
    store
        .publish(&Event::Wake {
            app: "marker".into(),
        })
        .await
        .expect("publish");
    expect_event(
        &mut sub,
        Event::Wake {
            app: "marker".into(),
        },
    )
    .await;
}

async fn every_subscriber_gets_every_event(store: Store) {
    let mut first = subscribe_synced(&store).await;
    let mut second = subscribe_synced(&store).await;
    // A subscription through another handle of the same store.
    let mut third = subscribe_synced(&store.clone()).await;
    store
        .add_upstream("api", "127.0.0.1:4000")
        .await
        .expect("add_upstream");
    store
        .publish(&Event::Wake { app: "api".into() })
        .await
        .expect("publish");
    for sub in [&mut first, &mut second, &mut third] {
        expect_event(sub, Event::UpstreamsChanged { app: "api".into() }).await;
        expect_event(sub, Event::Wake { app: "api".into() }).await;
    }
}

async fn subscription_ends_when_the_store_is_gone(store: Store) {
    let mut sub = subscribe_synced(&store).await;
    let other = store.clone();
    drop(store);
    // A clone keeps the store alive.
    other
        .publish(&Event::Wake { app: "api".into() })
        .await
        .expect("publish");
    expect_event(&mut sub, Event::Wake { app: "api".into() }).await;
    drop(other);
    match tokio::time::timeout(EVENT_TIMEOUT, sub.next()).await {
        Ok(None) => {}
        Ok(Some(signal)) => panic!("expected the end of the subscription, got {signal:?}"),
        Err(_) => {
            panic!("the subscription did not end within {EVENT_TIMEOUT:?} of dropping the store")
        }
    }
}

// --- Redis only ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_resyncs_and_resubscribes() {
    let mut server = RedisServer::start();
    let store = connect(&server).await;
    let mut sub = subscribe_synced(&store).await;
    store
        .put_route(&route("before.example.com", "api", None))
        .await
        .expect("put_route before the restart");
    expect_event(
        &mut sub,
        Event::RouteChanged {
            domain: "before.example.com".into(),
        },
    )
    .await;

    server.stop();
    server.restart();

    // Events may have been missed while Redis was away: the subscription says so.
    match tokio::time::timeout(EVENTUALLY, sub.next()).await {
        Ok(Some(Signal::Resync)) => {}
        Ok(other) => panic!("expected a resync after Redis restarted, got {other:?}"),
        Err(_) => panic!("no resync within {EVENTUALLY:?} of Redis restarting"),
    }

    // The command connection may come back a little after the subscriber's: retry the write.
    let after = route("after.example.com", "api", Some(2));
    eventually(
        EVENTUALLY,
        "put_route succeeds after Redis restarted",
        || async { store.put_route(&after).await.ok() },
    )
    .await;
    // The write's event arrives: the store subscribed again. (A retried write may publish twice, and
    // a late reconnect may add resyncs; the first event must be ours.)
    loop {
        match next_signal(&mut sub).await {
            Signal::Resync => continue,
            Signal::Event(e) => {
                assert_eq!(
                    e,
                    Event::RouteChanged {
                        domain: "after.example.com".into()
                    }
                );
                break;
            }
        }
    }

    // Reads work, and show that the restart lost everything from before.
    assert_eq!(
        store.route("after.example.com").await.expect("route"),
        Some(after.clone())
    );
    assert_eq!(store.routes().await.expect("routes"), vec![after]);
    assert_eq!(
        store.route("before.example.com").await.expect("route"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_commands_fail_instead_of_hanging() {
    let mut server = RedisServer::start();
    let store = connect(&server).await;
    store
        .put_route(&route("a.example.com", "api", None))
        .await
        .expect("put_route while Redis is up");
    server.stop();

    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), store.route("a.example.com")).await;
    match read {
        Ok(Err(_)) => {}
        Ok(Ok(route)) => panic!("a read with Redis down succeeded: {route:?}"),
        Err(_) => panic!("a read with Redis down hung for 10 s instead of failing"),
    }
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        store.put_route(&route("b.example.com", "api", None)),
    )
    .await;
    assert!(
        matches!(write, Ok(Err(_))),
        "a write with Redis down must fail, not succeed or hang: {write:?}"
    );
    let batch = tokio::time::timeout(
        Duration::from_secs(10),
        store.upstreams_of(&strings(&["api", "blog"])),
    )
    .await;
    assert!(
        matches!(batch, Ok(Err(_))),
        "a pipeline with Redis down must fail, not succeed or hang: {batch:?}"
    );
    let scan = tokio::time::timeout(Duration::from_secs(10), store.routes()).await;
    assert!(
        matches!(scan, Ok(Err(_))),
        "a scan with Redis down must fail, not succeed or hang: {scan:?}"
    );
    eprintln!(
        "four commands with Redis down failed after {:?}",
        started.elapsed()
    );

    // And the store recovers once Redis is back.
    server.restart();
    eventually(
        EVENTUALLY,
        "the store answers again after Redis came back",
        || async { store.routes().await.ok() },
    )
    .await;
    let c = route("c.example.com", "api", None);
    store
        .put_route(&c)
        .await
        .expect("put_route after Redis came back");
    assert_eq!(store.route("c.example.com").await.expect("route"), Some(c));
    assert_eq!(
        store.route("a.example.com").await.expect("route"),
        None,
        "the restart lost everything"
    );
    // Not asserted: whether the write that failed above was applied after all. fred keeps a
    // timed-out MULTI/EXEC queued and sends it once Redis is back, so it usually is.
}

// --- automatic HTTPS: certificates, challenges, locks ---

fn cert(domain: &str, not_after: i64) -> CertRecord {
    CertRecord {
        domain: domain.into(),
        chain_pem: format!("-----BEGIN CERTIFICATE-----\n{domain}\n-----END CERTIFICATE-----\n"),
        key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
        not_after,
        issued_ms: 1_700_000_000_000,
    }
}

async fn certs_roundtrip_and_announce(store: Store) {
    let mut sub = subscribe_synced(&store).await;
    assert_eq!(store.cert("a.test").await.expect("read"), None);
    let a = cert("a.test", 1_900_000_000);
    store.put_cert(&a).await.expect("put");
    expect_event(
        &mut sub,
        Event::CertUpdated {
            domain: "a.test".into(),
        },
    )
    .await;
    assert_eq!(store.cert("a.test").await.expect("read"), Some(a.clone()));
    assert!(!format!("{a:?}").contains("secret"), "Debug hides the key");

    // Fenced: only the current holder of the lock may write.
    let lock = store
        .try_lock("acme:b.test", "node-1", Duration::from_secs(30))
        .await
        .expect("lock")
        .expect("free");
    let b = cert("b.test", 1_900_000_001);
    assert!(store.put_cert_fenced(&b, &lock).await.expect("fenced put"));
    expect_event(
        &mut sub,
        Event::CertUpdated {
            domain: "b.test".into(),
        },
    )
    .await;
    store.unlock(&lock).await.expect("unlock");
    let stale = cert("b.test", 1);
    assert!(
        !store
            .put_cert_fenced(&stale, &lock)
            .await
            .expect("fenced put"),
        "a released lock cannot write"
    );
    assert_eq!(store.cert("b.test").await.expect("read"), Some(b.clone()));

    let mut all = store.certs().await.expect("all");
    all.sort_by(|x, y| x.domain.cmp(&y.domain));
    assert_eq!(all, vec![a, b]);

    store.delete_cert("a.test").await.expect("delete");
    expect_event(
        &mut sub,
        Event::CertUpdated {
            domain: "a.test".into(),
        },
    )
    .await;
    assert_eq!(store.cert("a.test").await.expect("read"), None);
    assert_eq!(store.certs().await.expect("all").len(), 1);

    // The account is a plain secret string.
    assert_eq!(store.acme_account().await.expect("read"), None);
    store.put_acme_account("{\"id\":\"x\"}").await.expect("put");
    assert_eq!(
        store.acme_account().await.expect("read").as_deref(),
        Some("{\"id\":\"x\"}")
    );
}

async fn challenges_expire(store: Store) {
    let mut sub = subscribe_synced(&store).await;
    let c = Challenge {
        token: "tok1".into(),
        domain: "a.test".into(),
        kind: ChallengeType::Http01,
        key_authorization: "tok1.thumb".into(),
    };
    store
        .put_challenge(&c, Duration::from_millis(300))
        .await
        .expect("put");
    expect_event(
        &mut sub,
        Event::ChallengeChanged {
            token: "tok1".into(),
        },
    )
    .await;
    let long = Challenge {
        token: "tok2".into(),
        kind: ChallengeType::TlsAlpn01,
        ..c.clone()
    };
    store
        .put_challenge(&long, Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(store.challenge("tok1").await.expect("read"), Some(c));
    assert_eq!(store.challenges().await.expect("all").len(), 2);
    eventually(EVENTUALLY, "the short challenge expires", || async {
        store
            .challenge("tok1")
            .await
            .expect("read")
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(store.challenges().await.expect("all"), vec![long]);
    store.delete_challenge("tok2").await.expect("delete");
    assert!(store.challenges().await.expect("all").is_empty());
}

async fn locks_exclude_expire_and_fence(store: Store) {
    let ttl = Duration::from_millis(400);
    let a = store
        .try_lock("acme:x", "a", ttl)
        .await
        .expect("lock")
        .expect("free");
    assert_eq!(a.owner, "a");
    assert!(
        store
            .try_lock("acme:x", "b", ttl)
            .await
            .expect("lock")
            .is_none(),
        "held by a"
    );
    // Another name is independent.
    let other = store
        .try_lock("acme:y", "b", ttl)
        .await
        .expect("lock")
        .expect("free");
    assert!(other.fence > a.fence, "fencing tokens grow");
    // Extending keeps it past the first expiry.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store.extend_lock(&a, ttl).await.expect("extend"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        store
            .try_lock("acme:x", "b", ttl)
            .await
            .expect("lock")
            .is_none()
    );
    // Then it expires and b gets it, with a larger token; a can no longer extend or release it.
    let b = eventually(EVENTUALLY, "the lock expires", || async {
        store
            .try_lock("acme:x", "b", Duration::from_secs(30))
            .await
            .expect("lock")
    })
    .await;
    assert!(b.fence > other.fence);
    assert!(!store.extend_lock(&a, ttl).await.expect("extend"));
    store
        .unlock(&a)
        .await
        .expect("unlock is a no-op for a stale guard");
    assert!(
        store
            .try_lock("acme:x", "c", ttl)
            .await
            .expect("lock")
            .is_none(),
        "still b's"
    );
    store.unlock(&b).await.expect("unlock");
    assert!(
        store
            .try_lock("acme:x", "c", ttl)
            .await
            .expect("lock")
            .is_some()
    );
}

async fn builds_queue_status_and_log(store: Store) {
    assert_eq!(store.build("nope").await.expect("read"), None);
    assert!(store.build_queue().await.expect("queue").is_empty());
    let mut sub = subscribe_synced(&store).await;

    let a = build("a-1", "a", BuildState::Queued);
    let b = build("b-1", "b", BuildState::Queued);
    store.enqueue_build(&a).await.expect("enqueue a");
    store.enqueue_build(&b).await.expect("enqueue b");
    assert_eq!(
        store.build_queue().await.expect("queue"),
        strings(&["a-1", "b-1"]),
        "oldest first"
    );
    assert_eq!(store.build("a-1").await.expect("read"), Some(a.clone()));

    // Running leaves the queue; timings and the release round-trip.
    let running = BuildStatus {
        state: BuildState::Running,
        started: Some(1_700_000_000_500),
        ..a.clone()
    };
    store.put_build(&running).await.expect("running");
    assert_eq!(store.build_queue().await.expect("queue"), strings(&["b-1"]));
    assert_eq!(
        store.build("a-1").await.expect("read"),
        Some(running.clone())
    );

    // Log lines keep their order; reading resumes after an entry id.
    store
        .append_build_log("a-1", vec!["one".into(), "two".into()])
        .await
        .expect("log");
    store
        .append_build_log("a-1", vec!["three".into()])
        .await
        .expect("log");
    store
        .append_build_log("a-1", Vec::new())
        .await
        .expect("nothing");
    let log = store.build_log("a-1", None, 100).await.expect("read log");
    let lines: Vec<&str> = log.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(lines, ["one", "two", "three"]);
    let rest = store
        .build_log("a-1", Some(&log[0].id), 100)
        .await
        .expect("resume");
    assert_eq!(rest, log[1..].to_vec());
    assert_eq!(
        store.build_log("a-1", None, 2).await.expect("count").len(),
        2
    );
    assert!(
        store
            .build_log("b-1", None, 10)
            .await
            .expect("empty")
            .is_empty()
    );

    let done = BuildStatus {
        state: BuildState::Failed,
        finished: Some(1_700_000_009_000),
        error: Some("`npm ci` failed (exit status: 1)\nline".into()),
        steps: vec![
            BuildStep {
                name: "source".into(),
                ms: 12,
            },
            BuildStep {
                name: "install".into(),
                ms: 8_400,
            },
        ],
        ..running
    };
    store.put_build(&done).await.expect("failed");
    assert_eq!(store.build("a-1").await.expect("read"), Some(done));
    let cancelled = BuildStatus {
        state: BuildState::Cancelled,
        finished: Some(1_700_000_001_000),
        ..b
    };
    store.put_build(&cancelled).await.expect("cancel queued");
    assert!(store.build_queue().await.expect("queue").is_empty());
    assert_eq!(
        store
            .build("a-1")
            .await
            .expect("still readable")
            .map(|s| s.state),
        Some(BuildState::Failed),
        "a final status stays readable (it expires days later)"
    );

    // Each app lists its builds, newest first, the newest BUILDS_KEPT_PER_APP of them.
    let listed = |v: Vec<BuildStatus>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(listed(store.builds_of("a").await.expect("a's")), ["a-1"]);
    assert_eq!(listed(store.builds_of("b").await.expect("b's")), ["b-1"]);
    assert!(store.builds_of("nope").await.expect("none").is_empty());
    let kept = spinforge_state::store::BUILDS_KEPT_PER_APP;
    for n in 2..=kept + 3 {
        let next = build(&format!("a-{n}"), "a", BuildState::Queued);
        store.enqueue_build(&next).await.expect("enqueue");
        store
            .put_build(&BuildStatus {
                state: BuildState::Cancelled,
                ..next
            })
            .await
            .expect("end");
    }
    let a_builds = listed(store.builds_of("a").await.expect("a's"));
    assert_eq!(a_builds.len(), kept);
    assert_eq!(a_builds[0], format!("a-{}", kept + 3), "newest first");
    assert_eq!(a_builds[kept - 1], "a-4", "the oldest ones left the list");
    assert!(store.build_queue().await.expect("queue").is_empty());

    // Build bookkeeping announces nothing on the events channel.
    store
        .publish(&Event::Wake {
            app: "marker".into(),
        })
        .await
        .expect("marker");
    expect_event(
        &mut sub,
        Event::Wake {
            app: "marker".into(),
        },
    )
    .await;
}

async fn rate_counts_add_up_across_edges(store: Store) {
    use spinforge_state::store::RateCount;
    let rc = |app: &str, client: &str, add: u64| RateCount {
        app: app.into(),
        client: client.into(),
        add,
    };
    let ttl = Duration::from_secs(5);
    // Window 10: two edges add for the same client of one app; other clients and apps apart.
    let none = store
        .exchange_rate_counts(10, 9, ttl, &[rc("a", "c1", 3), rc("a", "*", 3)])
        .await
        .expect("edge one adds");
    assert_eq!(none, vec![0, 0], "nothing was counted in window 9");
    store
        .exchange_rate_counts(10, 9, ttl, &[rc("a", "c1", 4), rc("b", "c1", 1)])
        .await
        .expect("edge two adds");
    // Window 12: read window 10 back, totals in the order asked, unknown keys 0; a zero `add`
    // reads without creating anything.
    let totals = store
        .exchange_rate_counts(
            12,
            10,
            ttl,
            &[
                rc("b", "c1", 0),
                rc("a", "c1", 0),
                rc("a", "c2", 0),
                rc("a", "*", 1),
            ],
        )
        .await
        .expect("read back");
    assert_eq!(totals, vec![1, 7, 0, 3]);
    let later = store
        .exchange_rate_counts(13, 12, ttl, &[rc("a", "*", 0), rc("a", "c2", 0)])
        .await
        .expect("read window 12");
    assert_eq!(
        later,
        vec![1, 0],
        "window 12 holds only what was added to it"
    );
    // A batch larger than one store call comes back whole and in order.
    let many: Vec<RateCount> = (0..2500)
        .map(|i| rc("m", &format!("k{i}"), i % 7 + 1))
        .collect();
    store
        .exchange_rate_counts(20, 19, ttl, &many)
        .await
        .expect("add many");
    let back = store
        .exchange_rate_counts(21, 20, ttl, &many)
        .await
        .expect("read many");
    let expected: Vec<u64> = (0..2500).map(|i| i % 7 + 1).collect();
    assert_eq!(back, expected);
}

/// Edges' reports: drain loads add up across the live edges, the latest answer an upstream gave
/// any of them is found, and an edge whose report expired or that withdrew counts no more.
async fn edge_reports_add_up_and_expire(store: Store) {
    let load = |requests, streams| DrainLoad { requests, streams };
    let drain = "web-r1-a".to_string();
    store
        .report_edge(
            "edge-a",
            &[(drain.clone(), load(2, 1))],
            &[("127.0.0.1:4001".into(), 1_000)],
            Duration::from_secs(30),
        )
        .await
        .expect("report a");
    store
        .report_edge(
            "edge-b",
            &[(drain.clone(), load(3, 0))],
            &[
                ("127.0.0.1:4001".into(), 2_000),
                ("127.0.0.1:4002".into(), 500),
            ],
            Duration::from_millis(400),
        )
        .await
        .expect("report b");
    let report = &store
        .drain_reports(std::slice::from_ref(&drain))
        .await
        .expect("read")[0];
    assert_eq!((report.edges, report.reported), (2, 2));
    assert_eq!(report.load, load(5, 1));
    assert_eq!(
        store.last_answered("127.0.0.1:4001").await.expect("read"),
        Some(2_000)
    );
    assert_eq!(
        store.last_answered("127.0.0.1:4002").await.expect("read"),
        Some(500)
    );
    assert_eq!(
        store.last_answered("127.0.0.1:4003").await.expect("read"),
        None
    );
    // edge-b's report expires: only edge-a is heard.
    eventually(EVENTUALLY, "edge-b's report expires", || async {
        (store.last_answered("127.0.0.1:4001").await.ok()? == Some(1_000)).then_some(())
    })
    .await;
    assert_eq!(
        store.last_answered("127.0.0.1:4002").await.expect("read"),
        None
    );
    let report = &store
        .drain_reports(std::slice::from_ref(&drain))
        .await
        .expect("read")[0];
    assert_eq!((report.edges, report.load), (1, load(2, 1)));
    store.withdraw_edge("edge-a").await.expect("withdraw");
    assert_eq!(
        store.last_answered("127.0.0.1:4001").await.expect("read"),
        None
    );
    assert_eq!(
        store.drain_reports(&[drain]).await.expect("read")[0].edges,
        0
    );
}
