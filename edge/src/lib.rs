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

pub mod background;
pub mod breaker;
pub mod compress;
pub mod connections;
pub mod errors;
pub mod limits;
pub mod proxy;
pub mod routing;
pub mod sync;
pub mod upgrade;

use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::Service as _;
use pingora_core::services::listening::Service;
use spinforge_state::Store;
use spinforge_state::config::EdgeConfig;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

/// How the edge should stop.
#[derive(Debug, Clone, Copy)]
pub struct Stop {
    /// In-flight requests may finish until then.
    pub deadline: Instant,
    /// How long idle keep-alive connections stay open after the listener closed, so that their
    /// next request is still answered (with `Connection: close`) instead of meeting a closed
    /// socket. Worth it when a successor took the listener over; zero on a plain stop.
    pub linger: Duration,
}

impl Stop {
    pub fn at(deadline: Instant) -> Stop {
        Stop {
            deadline,
            linger: Duration::ZERO,
        }
    }
}

/// A bound, not yet serving edge.
#[derive(Debug)]
pub struct Edge {
    listener: std::net::TcpListener,
    http_addr: SocketAddr,
    config: EdgeConfig,
    store: Store,
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
        inherited: Option<&mut upgrade::InheritedListeners>,
    ) -> Result<Edge, EdgeError> {
        let addr = config.listen_http;
        let bind_err = |source| EdgeError::Bind { addr, source };
        let listener = match inherited {
            Some(from) => from.take(addr)?,
            None => std::net::TcpListener::bind(addr).map_err(bind_err)?,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let http_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Edge {
            listener,
            http_addr,
            config: config.clone(),
            store,
        })
    }

    /// Copies of the listening sockets, to hand to a successor on upgrade.
    pub fn handoff(&self) -> std::io::Result<upgrade::Handoff> {
        Ok(upgrade::Handoff::new(vec![(
            self.config.listen_http,
            self.listener.try_clone()?,
        )]))
    }

    /// The address the plain-HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` carries a deadline, then stops accepting, lets in-flight requests
    /// finish until that deadline, and returns.
    pub async fn serve(self, mut shutdown: watch::Receiver<Option<Stop>>) {
        let snapshot = Arc::new(sync::Snapshot::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (wake_tx, wake_rx) = mpsc::channel(background::WAKE_QUEUE);
        let in_flight = Arc::new(AtomicUsize::new(0));

        let mut first_table = snapshot.changes();
        let sync_task = tokio::spawn(sync::keep_in_sync(
            self.store.clone(),
            snapshot.clone(),
            stop_rx.clone(),
        ));
        let wake_task = tokio::spawn(background::publish_wakes(self.store.clone(), wake_rx));
        let activity_task = tokio::spawn(background::flush_activity(
            self.store.clone(),
            snapshot.clone(),
            stop_rx.clone(),
        ));
        if tokio::time::timeout(FIRST_TABLE_WAIT, first_table.changed())
            .await
            .is_err()
        {
            tracing::warn!("no routing table from the store yet; serving 404s until one arrives");
        }

        let proxy = proxy::EdgeProxy {
            snapshot: snapshot.clone(),
            wakes: wake_tx,
            settings: proxy::ProxySettings {
                wake_timeout: self.config.wake_timeout,
                max_held_requests: self.config.max_held_requests,
                keepalive: self.config.keepalive_timeout,
            },
            in_flight: in_flight.clone(),
            client_rates: Default::default(),
        };
        let server_conf = Arc::new(ServerConf {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ..ServerConf::default()
        });
        let mut http = pingora_proxy::http_proxy(&server_conf, proxy);
        let mut options = HttpServerOptions::default();
        options.h2c = self.config.h2c;
        options.h2_idle_timeout = Some(self.config.keepalive_timeout);
        http.server_options = Some(options);
        let linger = Arc::new(connections::Linger::default());
        let app = connections::PerIpCap {
            inner: Arc::new(http),
            counts: Default::default(),
            max_per_ip: self.config.max_connections_per_ip,
            linger: linger.clone(),
            first_byte_timeout: self.config.header_timeout,
        };
        let mut service = Service::new("spinforge-edge".to_string(), app);
        // Hand Pingora the socket we bound, under the address string it will look it up by.
        let key = self.http_addr.to_string();
        service.add_tcp(&key);
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        fds.lock().add(key, self.listener.into_raw_fd());
        let (service_stop_tx, service_stop_rx) = watch::channel(false);
        let service_task = tokio::spawn(async move {
            service.start_service(Some(fds), service_stop_rx, 1).await;
        });
        tracing::info!(http = %self.http_addr, store = self.store.kind(), "edge serving");

        let stop = match shutdown.wait_for(Option::is_some).await {
            Ok(s) => s.unwrap_or_else(|| Stop::at(Instant::now())),
            Err(_) => Stop::at(Instant::now()), // the sender is gone: shut down at once
        };
        let deadline = stop.deadline;
        linger.set(
            stop.linger
                .min(deadline.saturating_duration_since(Instant::now())),
        );
        let _ = service_stop_tx.send(true);
        let mut logged = false;
        while (in_flight.load(Ordering::Acquire) > 0 || !service_task.is_finished())
            && Instant::now() < deadline
        {
            if !logged {
                tracing::info!(
                    in_flight = in_flight.load(Ordering::Acquire),
                    "draining requests"
                );
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = in_flight.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "grace period over; closing requests still in flight"
            );
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), activity_task).await;
        sync_task.abort();
        wake_task.abort();
        service_task.abort();
        tracing::info!("edge stopped");
    }
}
