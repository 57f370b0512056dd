//! The edge: SpinForge's front door, a Pingora HTTP proxy.
//!
//! A request's Host picks an app from the routing snapshot ([`routing`]), kept current from the
//! store by [`sync`]; the app's healthy spinlets are its upstreams. An app with none is woken:
//! the request is held until the supervisor publishes an upstream (one `wake` event per app,
//! however many requests wait), at most `edge.wake_timeout`, then 503. The request path never
//! waits on the store or a lock: wakes and last-access times go out through [`background`].
//!
//! We drive Pingora's listening service ourselves instead of through `pingora::Server`, so that
//! the listener can be bound before start (port 0 in tests, the bound address reported) and
//! shutdown ends as soon as requests have drained rather than after a fixed grace sleep.

pub mod accept;
pub mod background;
pub mod balance;
pub mod breaker;
pub mod challenge;
pub mod cluster;
pub mod compress;
pub mod errors;
pub mod fast;
pub mod limits;
pub mod metrics;
pub mod park;
pub mod policy;
pub mod proxy;
pub mod routing;
pub mod sync;
pub mod tls;
pub mod upgrade;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::Stream;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::configuration::ServerConf;
use spinforge_state::Store;
use spinforge_state::config::EdgeConfig;
use spinforge_state::stop::{CancellationToken, StopSignal, TaskTracker};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long the edge waits for its first routing table before it starts answering anyway.
const FIRST_TABLE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Upgrade(#[from] upgrade::UpgradeError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound, not yet serving edge.
#[derive(Debug)]
pub struct Edge {
    listener: std::net::TcpListener,
    http_addr: SocketAddr,
    /// The `/metrics` listener, when `edge.metrics` is set and could be bound.
    metrics_listener: Option<std::net::TcpListener>,
    /// Where a reload sends the next `/metrics` listener (`None`: off).
    metrics_swaps: mpsc::UnboundedReceiver<Option<std::net::TcpListener>>,
    config: EdgeConfig,
    /// The settings the request path reads, swapped by a reload (see [`EdgeControl`]).
    settings: proxy::LiveSettings,
    control: EdgeControl,
    store: Store,
    /// The HTTPS listener and its address, when `edge.listen_https` is set.
    https: Option<(std::net::TcpListener, SocketAddr)>,
    /// Certificates by name, challenge answers, and which names are TLS apps.
    tls: Arc<tls::TlsState>,
}

impl Edge {
    /// Binds `edge.listen_http` (port 0 picks a free port; see [`Edge::http_addr`]).
    pub fn bind(config: &EdgeConfig, store: Store) -> Result<Edge, EdgeError> {
        Self::bind_or_inherit(config, store, None)
    }

    /// Like [`Edge::bind`], but takes the listener over from the edge being replaced when
    /// `inherited` is given (zero-downtime upgrade; see [`upgrade`]).
    pub fn bind_or_inherit(
        config: &EdgeConfig,
        store: Store,
        mut inherited: Option<&mut upgrade::InheritedListeners>,
    ) -> Result<Edge, EdgeError> {
        let addr = config.listen_http;
        let bind_err = |source| EdgeError::Bind { addr, source };
        let listener = match inherited.as_deref_mut() {
            Some(from) => take_or_bind(from, addr)?,
            None => std::net::TcpListener::bind(addr).map_err(bind_err)?,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let http_addr = listener.local_addr().map_err(bind_err)?;
        let https = match config.listen_https {
            Some(addr) => {
                let bind_err = |source| EdgeError::Bind { addr, source };
                let l = match inherited {
                    Some(from) => take_or_bind(from, addr)?,
                    None => std::net::TcpListener::bind(addr).map_err(bind_err)?,
                };
                l.set_nonblocking(true).map_err(bind_err)?;
                let bound = l.local_addr().map_err(bind_err)?;
                Some((l, bound))
            }
            None => None,
        };
        let https_port = https.as_ref().map(|(_, a)| a.port());
        // Metrics are not worth refusing to serve traffic for: a taken port is logged, not fatal.
        let metrics_listener = config.metrics.and_then(|addr| match metrics::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for /metrics (edge.metrics); serving without metrics");
                None
            }
        });
        let settings: proxy::LiveSettings = Arc::new(arc_swap::ArcSwap::from_pointee(
            proxy::ProxySettings::from_config(config),
        ));
        let tls = Arc::new(tls::TlsState::new(tls::TlsPolicy::default(), https_port));
        let (metrics_tx, metrics_swaps) = mpsc::unbounded_channel();
        let control = EdgeControl {
            settings: settings.clone(),
            tls: tls.clone(),
            metrics: Arc::new(std::sync::Mutex::new(MetricsSlot {
                configured: config.metrics,
                bound: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
                swaps: metrics_tx,
            })),
        };
        Ok(Edge {
            listener,
            http_addr,
            metrics_listener,
            metrics_swaps,
            config: config.clone(),
            settings,
            control,
            store,
            https,
            tls,
        })
    }

    /// Which names are TLS apps (`tls: auto` or files); the default knows none.
    pub fn with_tls_policy(self, policy: tls::TlsPolicy) -> Edge {
        self.tls.set_policy(policy);
        self
    }

    /// What a reload changes the running edge through.
    pub fn control(&self) -> EdgeControl {
        self.control.clone()
    }

    /// The address the HTTPS listener is bound to, if any.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(_, a)| *a)
    }

    /// The certificate state the edge serves from (for the ACME job in the same process).
    pub fn tls_state(&self) -> Arc<tls::TlsState> {
        self.tls.clone()
    }

    /// The address `/metrics` is served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Copies of the listening sockets, to hand to a successor on upgrade.
    pub fn handoff(&self) -> std::io::Result<upgrade::Handoff> {
        let mut listeners = vec![(self.config.listen_http, self.listener.try_clone()?)];
        if let (Some(addr), Some((l, _))) = (self.config.listen_https, &self.https) {
            listeners.push((addr, l.try_clone()?));
        }
        Ok(upgrade::Handoff::new(listeners))
    }

    /// The address the plain-HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` asks for a [`Stop`], then stops accepting, lets in-flight requests
    /// finish until its deadline, and returns.
    // Boxed at this crate's edge so that the body compiles here, in parallel with the other
    // crates, and once: rustc compiles an async fn's body in every crate that awaits it.
    #[inline(never)]
    pub fn serve(
        self,
        shutdown: StopSignal,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), EdgeError>> + Send>> {
        Box::pin(self.serve_here(shutdown))
    }

    async fn serve_here(self, shutdown: StopSignal) -> Result<(), EdgeError> {
        let snapshot = Arc::new(sync::Snapshot::new());
        // Ends the background tasks (table sync, activity, drain reports, metrics, …).
        let background = CancellationToken::new();
        let (wake_tx, wake_rx) = mpsc::channel(background::WAKE_QUEUE);
        // Requests in flight and the proxy threads serving: the stop waits for both.
        let in_flight = TaskTracker::new();
        let metrics = Arc::new(metrics::Metrics::default());

        let mut first_table = snapshot.changes();
        let sync_task = tokio::spawn(sync::keep_in_sync(
            self.store.clone(),
            snapshot.clone(),
            background.clone(),
        ));
        let wake_task = tokio::spawn(background::publish_wakes(self.store.clone(), wake_rx));
        let activity_task = tokio::spawn(background::flush_activity(
            self.store.clone(),
            snapshot.clone(),
            background.clone(),
        ));
        let tls_config = match &self.https {
            Some(_) => Some(tls::listener::server_config(self.tls.clone())?),
            None => None,
        };
        let tls_task = tls_config.is_some().then(|| {
            let model = tls::sync::initial(&self.tls);
            tokio::spawn(tls::sync::keep_in_sync(
                self.store.clone(),
                self.tls.clone(),
                model,
                background.clone(),
            ))
        });
        if tokio::time::timeout(FIRST_TABLE_WAIT, first_table.changed())
            .await
            .is_err()
        {
            tracing::warn!("no routing table from the store yet; serving 404s until one arrives");
        }

        // Cluster-wide rate limits need a store the edges share; embedded, they count locally.
        let client_rates: Arc<std::sync::OnceLock<limits::ClientRates>> = Default::default();
        let (cluster, cluster_task) = if self.store.kind() == "redis" {
            let (rates, notes) = cluster::ClusterRates::new();
            let rates = Arc::new(rates);
            let task = tokio::spawn(cluster::exchange(
                self.store.clone(),
                notes,
                snapshot.clone(),
                client_rates.clone(),
                rates.clone(),
                background.clone(),
            ));
            (Some(rates), Some(task))
        } else {
            (None, None)
        };
        let proxy = proxy::EdgeProxy {
            snapshot: snapshot.clone(),
            wakes: wake_tx,
            settings: self.settings.clone(),
            in_flight: in_flight.clone(),
            metrics: metrics.clone(),
            client_rates,
            cluster,
            tls: self.tls.clone(),
        };
        let _ = metrics.tls.set(self.tls.clone());
        let metrics_addr = self.metrics_addr();
        let metrics_task = tokio::spawn(serve_metrics(
            self.metrics_listener,
            self.metrics_swaps,
            metrics.clone(),
            snapshot.clone(),
            background.clone(),
        ));
        let layout = RuntimeLayout::from_env();
        // The fast path's upstream pool is per thread: it needs connections that stay on theirs.
        // `SPINFORGE_EDGE_FAST=0` turns it off (to compare the two in loadtest/bench.sh).
        let fast_path = matches!(layout, RuntimeLayout::PerThread(_))
            && std::env::var("SPINFORGE_EDGE_FAST").as_deref() != Ok("0");
        let server_conf = Arc::new(ServerConf {
            threads: layout.threads(),
            ..ServerConf::default()
        });
        // Pingora's `process_new` takes its own shutdown watch: set when the stop begins.
        let (service_stop_tx, service_stop_rx) = watch::channel(false);
        // Per-thread runtimes live until this is cancelled (after the drain), then drop their
        // tasks.
        let release = CancellationToken::new();
        // Shared by every proxy thread: one count of connections per client IP, one linger.
        let guard = accept::Guard {
            counts: Arc::new(limits::ConnectionCounts::default()),
            settings: self.settings.clone(),
        };
        let linger = Arc::new(accept::Linger::default());
        // One app per proxy thread, for plain and HTTPS connections alike: the fast path in
        // front (HTTP/1.1), Pingora's proxy behind it (HTTP/2, and what the fast path leaves),
        // with its own upstream pool.
        let pingora = |h2c: bool| {
            let mut http = pingora_proxy::http_proxy(&server_conf, proxy.clone());
            let mut options = HttpServerOptions::default();
            options.h2c = h2c;
            options.h2_idle_timeout = Some(self.config.keepalive_timeout);
            http.server_options = Some(options);
            Arc::new(http)
        };
        // With the fast path, h2c is its to serve (`edge.h2c` read per connection) and Pingora
        // never sees a prior-knowledge preface while h2c is on: its own h2c stays off. Without
        // it, each thread has a Pingora app of each kind and picks by the live setting.
        let app_for = || {
            Arc::new(Counted {
                inner: pingora(false),
                inner_h2c: (!fast_path).then(|| pingora(true)),
                settings: self.settings.clone(),
                metrics: metrics.clone(),
                fast: fast_path.then(|| fast::FastPath {
                    proxy: proxy.clone(),
                    closing: CancellationToken::new(),
                }),
            })
        };
        let acceptor = tls_config.map(|config| {
            Arc::new(pingora_core::listeners::tls::Acceptor::from_server_config(
                config,
            ))
        });
        if let Some((_, addr)) = &self.https {
            tracing::info!(https = %addr, "HTTPS listening");
        }
        // Every thread accepts from its own copy of each listening socket (see `accept`).
        let n = match layout {
            RuntimeLayout::Shared => 1,
            RuntimeLayout::PerThread(n) => n,
        };
        let (threads, inboxes) = accept::Threads::new(n);
        let mut listeners: Vec<Vec<accept::Listener>> = Vec::with_capacity(n);
        for _ in 0..n {
            let mut mine = Vec::new();
            match self.listener.try_clone() {
                Ok(socket) => mine.push(accept::Listener { socket, tls: None }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot share the listener with a proxy thread")
                }
            }
            if let (Some((l, _)), Some(acceptor)) = (&self.https, &acceptor) {
                match l.try_clone() {
                    Ok(socket) => mine.push(accept::Listener {
                        socket,
                        tls: Some(acceptor.clone()),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot share the HTTPS listener with a proxy thread")
                    }
                }
            }
            listeners.push(mine);
        }
        // The threads hold their copies; the handover to a successor has its own (`handoff`).
        drop(self.listener);
        drop(self.https);
        // Each thread's server, with its park's entrance, and the park's inbox for its `run`.
        let server_for = || {
            let (park, parked) = park::channel();
            let server = accept::ThreadServer {
                app: app_for(),
                guard: guard.clone(),
                threads: threads.clone(),
                linger: linger.clone(),
                park,
            };
            (server, parked)
        };
        let mut service_task = None;
        // The proxy threads still serving (their cleanup, with the linger, included).
        let serving = TaskTracker::new();
        for ((i, mine), inbox) in listeners.into_iter().enumerate().zip(inboxes) {
            let (server, parked) = server_for();
            let (stop, running) = (service_stop_rx.clone(), serving.token());
            match layout {
                RuntimeLayout::Shared => {
                    service_task = Some(tokio::spawn(async move {
                        server.run(mine, inbox, parked, stop).await;
                        drop(running);
                    }));
                }
                RuntimeLayout::PerThread(_) => {
                    // Each thread serves its connections start to end, with its own upstream
                    // pool: no task migrates between threads, no cross-thread wake-ups on the
                    // request path.
                    let release = release.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("spinforge-edge-{i}"))
                        .spawn(move || {
                            let runtime = match tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                            {
                                Ok(r) => r,
                                Err(e) => {
                                    return tracing::error!(error = %e, "cannot start a proxy thread's runtime");
                                }
                            };
                            runtime.block_on(async move {
                                server.run(mine, inbox, parked, stop).await;
                                drop(running);
                                release.cancelled().await;
                            });
                        });
                    if let Err(e) = spawned {
                        tracing::error!(error = %e, "cannot start a proxy thread");
                    }
                }
            }
        }
        serving.close();
        tracing::info!(http = %self.http_addr, metrics = ?metrics_addr, store = self.store.kind(), "edge serving");

        let stop = shutdown.requested().await;
        let deadline = stop.deadline;
        linger.set(
            stop.linger
                .min(deadline.saturating_duration_since(Instant::now())),
        );
        let _ = service_stop_tx.send(true);
        in_flight.close();
        if !in_flight.is_empty() {
            tracing::info!(in_flight = in_flight.len(), "draining requests");
        }
        let drained = async {
            // Threads still serving can start requests after the count first reached zero.
            loop {
                in_flight.wait().await;
                serving.wait().await;
                if in_flight.is_empty() {
                    break;
                }
            }
        };
        if tokio::time::timeout_at(deadline, drained).await.is_err() && !in_flight.is_empty() {
            tracing::warn!(
                in_flight = in_flight.len(),
                "grace period over; closing requests still in flight"
            );
        }
        background.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), activity_task).await;
        sync_task.abort();
        for t in [tls_task, cluster_task].into_iter().flatten() {
            t.abort();
        }
        wake_task.abort();
        release.cancel();
        if let Some(t) = service_task {
            t.abort();
        }
        metrics_task.abort();
        tracing::info!("edge stopped");
        Ok(())
    }
}

/// The listener for `addr` handed over by the edge being replaced; an address it did not have
/// (the config's listener changed: the upgrade applies it) is bound anew.
fn take_or_bind(
    from: &mut upgrade::InheritedListeners,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, EdgeError> {
    match from.take(addr) {
        Ok(l) => Ok(l),
        Err(upgrade::UpgradeError::Missing { .. }) => {
            tracing::info!(%addr, "not among the handed-over sockets (a new listen address): binding it");
            std::net::TcpListener::bind(addr).map_err(|source| EdgeError::Bind { addr, source })
        }
        Err(e) => Err(e.into()),
    }
}

/// How the proxy's connections are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuntimeLayout {
    /// On the process's multi-threaded (work-stealing) tokio runtime, with everything else.
    Shared,
    /// N threads, each with a single-threaded runtime and its own accept loop (NGINX's model).
    PerThread(usize),
}

impl RuntimeLayout {
    /// Per-thread with one thread per core, unless `SPINFORGE_EDGE_RUNTIME=shared` (kept for
    /// comparing the two in loadtest/bench.sh); `SPINFORGE_EDGE_THREADS` overrides the count.
    fn from_env() -> Self {
        let threads = std::env::var("SPINFORGE_EDGE_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        match std::env::var("SPINFORGE_EDGE_RUNTIME").as_deref() {
            Ok("shared") => RuntimeLayout::Shared,
            _ => RuntimeLayout::PerThread(threads),
        }
    }

    fn threads(self) -> usize {
        match self {
            RuntimeLayout::Shared => std::thread::available_parallelism().map_or(1, |n| n.get()),
            RuntimeLayout::PerThread(n) => n,
        }
    }
}

/// Wraps the proxy to count open downstream connections: it runs the keep-alive loop that
/// Pingora would run around the proxy itself, holding a gauge for the connection's life.
/// With a fast path, each request is offered to it first; one it leaves is served by the proxy
/// (Pingora's full path), and the connection comes back for the next request.
struct Counted<A> {
    inner: Arc<A>,
    /// Without the fast path: the same with Pingora's h2c on, for connections accepted while
    /// `edge.h2c` is.
    inner_h2c: Option<Arc<A>>,
    settings: proxy::LiveSettings,
    metrics: Arc<metrics::Metrics>,
    fast: Option<fast::FastPath>,
}

/// A Pingora HTTP/1.1 session over `stream`, keep-alive as Pingora's own loop sets it (the
/// proxy's early filter then sets the configured timeout). Not inline in `process_new`: the
/// session (~680 bytes) would keep its slot in that future's state after being moved out.
fn pingora_session(stream: Stream, shutdown: &ShutdownWatch) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive((!*shutdown.borrow()).then_some(60));
    session
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> accept::App for Counted<A> {
    async fn serve(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<park::Idle> {
        let open = self.metrics.connection();
        let Some(fast) = &self.fast else {
            // Pingora's own loop serves every request of the connection.
            let inner = match &self.inner_h2c {
                Some(h2c) if self.settings.load().h2c => h2c,
                _ => &self.inner,
            };
            let mut next = Some(stream);
            while let Some(s) = next {
                next = inner.process_new(s, shutdown).await;
            }
            return None;
        };
        loop {
            // Boxed: the fast path's future is large and would otherwise be moved whole into
            // this one's state.
            match Box::pin(fast.serve(stream, shutdown)).await {
                fast::Served::Closed => return None,
                fast::Served::Idle { socket, until } => {
                    return Some(park::Idle {
                        socket,
                        until,
                        open,
                    });
                }
                fast::Served::Fallback(s) => stream = s,
                fast::Served::Handover(s) => {
                    // Pingora's loop: it gives the connection back only for another request.
                    stream = self.inner.process_new(s, shutdown).await?;
                    continue;
                }
            }
            let reused = self
                .inner
                .process_new_http(pingora_session(stream, shutdown), shutdown)
                .await?;
            stream = reused.consume().0;
        }
    }

    async fn cleanup(&self) {
        if let Some(fast) = &self.fast {
            fast.closing.cancel();
        }
        self.inner.cleanup().await;
        if let Some(h2c) = &self.inner_h2c {
            h2c.cleanup().await;
        }
    }
}

/// Changes a running edge: what a reload of the config file applies to it.
#[derive(Debug, Clone)]
pub struct EdgeControl {
    settings: proxy::LiveSettings,
    tls: Arc<tls::TlsState>,
    metrics: Arc<std::sync::Mutex<MetricsSlot>>,
}

#[derive(Debug)]
struct MetricsSlot {
    /// `edge.metrics` as last applied.
    configured: Option<SocketAddr>,
    /// Where `/metrics` is served now.
    bound: Option<SocketAddr>,
    swaps: mpsc::UnboundedSender<Option<std::net::TcpListener>>,
}

impl EdgeControl {
    /// Applies `config`'s settings the edge can change while running: the next connection and
    /// request read them (timeouts, `h2c`, `max_connections_per_ip`, `max_held_requests`,
    /// `access_log`), and `/metrics` moves to its new address (or stops). Listener addresses
    /// are not among them. Returns what could not be applied, with why.
    pub fn apply(&self, config: &EdgeConfig) -> Vec<String> {
        let mut warnings = Vec::new();
        let next = proxy::ProxySettings::from_config(config);
        if **self.settings.load() != next {
            self.settings.store(Arc::new(next));
        }
        let mut slot = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if slot.configured != config.metrics {
            match config.metrics {
                None => {
                    let _ = slot.swaps.send(None);
                    slot.bound = None;
                    slot.configured = None;
                }
                Some(addr) => match metrics::bind(addr) {
                    Ok(l) => {
                        slot.bound = l.local_addr().ok();
                        let _ = slot.swaps.send(Some(l));
                        slot.configured = Some(addr);
                    }
                    Err(e) => warnings.push(format!(
                        "edge.metrics: cannot listen on {addr} ({e}); /metrics stays {}",
                        slot.bound.map_or("off".to_string(), |a| format!("on {a}"))
                    )),
                },
            }
        }
        warnings
    }

    /// Which names are TLS apps, after the apps changed.
    pub fn set_tls_policy(&self, policy: tls::TlsPolicy) {
        self.tls.set_policy(policy);
    }

    /// Where `/metrics` is served now.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).bound
    }
}

/// Serves `/metrics` on `first`, then on each listener a reload sends (none: off), until stop.
async fn serve_metrics(
    first: Option<std::net::TcpListener>,
    mut swaps: mpsc::UnboundedReceiver<Option<std::net::TcpListener>>,
    metrics: Arc<metrics::Metrics>,
    snapshot: Arc<sync::Snapshot>,
    stop: CancellationToken,
) {
    let mut current: Option<tokio::task::JoinHandle<()>> = None;
    let mut next = first;
    loop {
        if let Some(t) = current.take() {
            t.abort();
        }
        current = next.and_then(|l| {
            let l = tokio::net::TcpListener::from_std(l)
                .inspect_err(|e| tracing::error!(error = %e, "cannot serve /metrics"))
                .ok()?;
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "serving /metrics");
            }
            Some(tokio::spawn(metrics::serve(
                l,
                metrics.clone(),
                snapshot.clone(),
                stop.clone(),
            )))
        });
        let swap = tokio::select! {
            swap = swaps.recv() => swap,
            _ = stop.cancelled() => break,
        };
        next = match swap {
            Some(l) => l,
            // No reload can come any more: serve what we have until the stop.
            None => {
                stop.cancelled().await;
                break;
            }
        };
    }
    if let Some(t) = current {
        t.abort();
    }
}
