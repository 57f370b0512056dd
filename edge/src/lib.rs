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
pub mod challenge;
pub mod proxy;
pub mod routing;
pub mod sync;
pub mod tls;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::Service as _;
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
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound, not yet serving edge.
#[derive(Debug)]
pub struct Edge {
    listener: std::net::TcpListener,
    http_addr: SocketAddr,
    config: EdgeConfig,
    store: Store,
    /// The HTTPS listener, when `edge.listen_https` is set.
    https: Option<(std::net::TcpListener, SocketAddr)>,
    tls: Arc<tls::TlsState>,
}

impl Edge {
    /// Binds `edge.listen_http` (port 0 picks a free port; see [`Edge::http_addr`]).
    pub fn bind(config: &EdgeConfig, store: Store) -> Result<Edge, EdgeError> {
        let addr = config.listen_http;
        let bind_err = |source| EdgeError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let http_addr = listener.local_addr().map_err(bind_err)?;
        let https = match config.listen_https {
            Some(addr) => {
                let bind_err = |source| EdgeError::Bind { addr, source };
                let l = std::net::TcpListener::bind(addr).map_err(bind_err)?;
                l.set_nonblocking(true).map_err(bind_err)?;
                let bound = l.local_addr().map_err(bind_err)?;
                Some((l, bound))
            }
            None => None,
        };
        let https_port = https.as_ref().map(|(_, a)| a.port());
        Ok(Edge {
            listener,
            http_addr,
            config: config.clone(),
            store,
            https,
            tls: Arc::new(tls::TlsState::new(tls::TlsPolicy::default(), https_port)),
        })
    }

    /// Which names are served over HTTPS and how (from the apps' `tls`). Without it, every TLS
    /// handshake fails.
    pub fn with_tls_policy(mut self, policy: tls::TlsPolicy) -> Edge {
        self.tls = Arc::new(tls::TlsState::new(
            policy,
            self.https_addr().map(|a| a.port()),
        ));
        self
    }

    /// The address the HTTPS listener is bound to, if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(_, a)| *a)
    }

    /// The certificates state: expiries for metrics, self-signed handshake count.
    pub fn tls_state(&self) -> Arc<tls::TlsState> {
        self.tls.clone()
    }

    /// The address the plain-HTTP listener is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` carries a deadline, then stops accepting, lets in-flight requests
    /// finish until that deadline, and returns.
    pub async fn serve(
        self,
        mut shutdown: watch::Receiver<Option<Instant>>,
    ) -> Result<(), EdgeError> {
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
        let tls_config = match &self.https {
            Some(_) => Some(tls::listener::server_config(self.tls.clone())?),
            None => None,
        };
        // Certificates and challenges matter only with an HTTPS listener.
        let tls_task = tls_config.is_some().then(|| {
            let model = tls::sync::initial(&self.tls);
            tokio::spawn(tls::sync::keep_in_sync(
                self.store.clone(),
                self.tls.clone(),
                model,
                stop_rx.clone(),
            ))
        });
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
            },
            in_flight: in_flight.clone(),
            tls: self.tls.clone(),
        };
        let server_conf = Arc::new(ServerConf {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ..ServerConf::default()
        });
        // One HTTP app for both listeners: Pingora's service runs the plain one, our TLS accept
        // loop (tls::listener) the other.
        let app = Arc::new(pingora_proxy::http_proxy(&server_conf, proxy));
        let mut service = pingora_core::services::listening::Service::new(
            "spinforge-edge".to_string(),
            tls::listener::SharedApp(app.clone()),
        );
        // Hand Pingora the socket we bound, under the address string it will look it up by.
        let key = self.http_addr.to_string();
        service.add_tcp(&key);
        let fds: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
        fds.lock().add(key, self.listener.into_raw_fd());
        let (service_stop_tx, service_stop_rx) = watch::channel(false);
        let https_task = match (self.https, tls_config) {
            (Some((listener, addr)), Some(config)) => {
                tracing::info!(https = %addr, "HTTPS listening");
                Some(tokio::spawn(tls::listener::serve(
                    listener,
                    config,
                    app,
                    service_stop_rx.clone(),
                )))
            }
            _ => None,
        };
        let service_task = tokio::spawn(async move {
            service.start_service(Some(fds), service_stop_rx, 1).await;
        });
        tracing::info!(http = %self.http_addr, store = self.store.kind(), "edge serving");

        let deadline = match shutdown.wait_for(Option::is_some).await {
            Ok(d) => d.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(), // the sender is gone: shut down at once
        };
        let _ = service_stop_tx.send(true);
        let mut logged = false;
        while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
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
        for t in [tls_task, https_task].into_iter().flatten() {
            t.abort();
        }
        wake_task.abort();
        service_task.abort();
        tracing::info!("edge stopped");
        Ok(())
    }
}
