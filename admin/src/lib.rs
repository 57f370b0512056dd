//! SpinForge's admin API: the HTTP face of a running supervisor, for the CLI and CI pipelines.
//!
//! Everything under `/api/v1` (design.md, "Admin API") needs the bearer token from the variable
//! `supervisor.admin_token_env` names; `/healthz`, `/metrics` and `/api/v1/openapi.json` do not.
//! Reads come from the store and from files under `data_dir`; changes go through the
//! supervisor's [`SupervisorHandle`], and each one is appended to `data_dir/audit.log`.

mod apps;
mod audit;
mod auth;
mod dashboard;
mod metrics;
mod problem;
mod reads;
mod router;
mod sse;
mod upload;

use spinforge_state::Store;
use spinforge_state::config::Config;
use spinforge_state::config::reload::Reloader;
use spinforge_state::stop::CancellationToken;
use spinforge_supervisor::control::SupervisorHandle;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use auth::token_id;

/// The OpenAPI 3 document the API serves at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Log and build-log streams open at once; more get 429.
const MAX_STREAMS: usize = 32;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Connections one client address (IPv6: one /64) may hold at once, so that one address cannot
/// take all of [`MAX_CONNECTIONS`]: a CLI or a CI job needs a few, a dashboard a few log streams
/// (at most [`MAX_STREAMS`] in all). More are answered 503 and closed at once.
const MAX_CONNECTIONS_PER_CLIENT: usize = 32;
/// How long a client has to send its request head. Heads of the API are small and sent at once:
/// a slow one is a client holding a connection, not a slow network.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen for the admin API on {addr} (supervisor.admin_listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the admin API would listen on {addr}, which is not loopback, without a token: set the variable {var} (supervisor.admin_token_env), or listen on 127.0.0.1"
    )]
    NoToken { addr: SocketAddr, var: String },
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every request handler may use.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub store: Store,
    pub handle: SupervisorHandle,
    pub data_dir: PathBuf,
    /// The largest upload accepted, compressed bytes; also the unpacked limit
    /// (`supervisor.builds.max_archive_size`, which a reload may change).
    pub max_upload: Arc<AtomicU64>,
    pub token: Option<auth::Token>,
    pub audit: Arc<audit::Audit>,
    /// Reloads the process's config file (`POST /api/v1/reload`), when the process has one.
    pub reloader: Option<Reloader>,
    pub metrics: metrics::Metrics,
    pub streams: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    /// The web dashboard's sessions and failed sign-ins.
    pub sessions: dashboard::Sessions,
    /// The dashboard's per-app traffic, read from the edge's `/metrics`.
    pub traffic: Arc<dashboard::Traffic>,
}

/// The admin API, bound and ready to serve.
#[derive(Debug)]
pub struct AdminApi {
    listener: TcpListener,
    store: Store,
    data_dir: PathBuf,
    max_upload: Arc<AtomicU64>,
    token: Option<auth::Token>,
    /// Rotated like the spinlet logs, at `supervisor.logs`.
    audit: Arc<audit::Audit>,
    reloader: Option<Reloader>,
    traffic: Arc<dashboard::Traffic>,
}

/// What a reload changes in a running admin API: the upload limit, audit.log's rotation, and
/// where the dashboard reads the edge's counters.
#[derive(Debug, Clone)]
pub struct AdminControl {
    max_upload: Arc<AtomicU64>,
    audit: Arc<audit::Audit>,
    traffic: Arc<dashboard::Traffic>,
}

impl AdminControl {
    /// Applies `config`'s `supervisor.builds.max_archive_size` and `supervisor.logs`.
    pub fn apply(&self, config: &Config) {
        let s = &config.supervisor;
        self.max_upload
            .store(s.builds.max_archive_size, Ordering::Relaxed);
        self.audit.set_limits(s.logs);
        self.traffic.set_addr(config.edge.metrics);
    }
}

impl AdminApi {
    /// Binds `supervisor.admin_listen` (port 0 picks a free one) with the token read from the
    /// environment. Refuses to listen beyond loopback without a token. Bind before starting the
    /// supervisor, so that a taken port fails before any build starts.
    pub async fn bind(config: &Config, store: Store) -> Result<AdminApi, AdminError> {
        let s = &config.supervisor;
        let token = std::env::var(&s.admin_token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| auth::Token::new(&t));
        if token.is_none() && !s.admin_listen.ip().is_loopback() {
            return Err(AdminError::NoToken {
                addr: s.admin_listen,
                var: s.admin_token_env.clone(),
            });
        }
        let uploads = s.data_dir.join("uploads");
        std::fs::create_dir_all(&uploads).map_err(|source| AdminError::DataDir {
            path: uploads.display().to_string(),
            source,
        })?;
        upload::clean_partials(&uploads);
        let listener =
            TcpListener::bind(s.admin_listen)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: s.admin_listen,
                    source,
                })?;
        if token.is_none() {
            tracing::warn!(var = %s.admin_token_env, "no admin token set: the admin API is open to every local user");
        }
        Ok(AdminApi {
            listener,
            store,
            audit: Arc::new(audit::Audit::new(s.data_dir.join("audit.log"), s.logs)),
            data_dir: s.data_dir.clone(),
            max_upload: Arc::new(AtomicU64::new(s.builds.max_archive_size)),
            token,
            reloader: None,
            traffic: Arc::new(dashboard::Traffic::new(config.edge.metrics)),
        })
    }

    /// Lets `POST /api/v1/reload` reload the process's config file through `reloader`.
    pub fn with_reloader(mut self, reloader: Reloader) -> AdminApi {
        self.reloader = Some(reloader);
        self
    }

    /// What a reload changes the API through.
    pub fn control(&self) -> AdminControl {
        AdminControl {
            max_upload: self.max_upload.clone(),
            audit: self.audit.clone(),
            traffic: self.traffic.clone(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `stop` is cancelled; then closes open streams and returns within a second.
    pub async fn serve(self, handle: SupervisorHandle, stop: CancellationToken) {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let addr = self.local_addr();
        // Open streams and the dashboard's samplers end with the API.
        let shutdown = stop.child_token();
        let ctx = Arc::new(Ctx {
            audit: self.audit,
            store: self.store,
            handle,
            data_dir: self.data_dir,
            max_upload: self.max_upload,
            token: self.token,
            reloader: self.reloader,
            metrics: metrics::Metrics::default(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            shutdown,
            sessions: dashboard::Sessions::default(),
            traffic: self.traffic,
        });
        tracing::info!(%addr, "admin API listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_client = connections::PerClient::new(MAX_CONNECTIONS_PER_CLIENT);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = stop.cancelled() => break,
            };
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("admin API accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let Some(client_slot) = per_client.admit(peer.ip()) else {
                tracing::debug!(%peer, "admin API: too many connections from this address");
                connections::refuse(stream);
                continue;
            };
            let ctx = ctx.clone();
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let _permit = permit;
                let _client_slot = client_slot;
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(router::handle(ctx, req, peer).await)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "admin API connection: {e}");
                }
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        tracing::info!("admin API stopped");
    }
}

/// The per-client connection cap of the admin listener.
mod connections {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    /// Open connections per client address.
    #[derive(Debug)]
    pub(crate) struct PerClient {
        max: usize,
        /// Only addresses with open connections: at most `MAX_CONNECTIONS` entries.
        open: Mutex<HashMap<IpAddr, usize>>,
    }

    /// One admitted connection; gives its place back when dropped.
    #[derive(Debug)]
    pub(crate) struct Slot {
        owner: Arc<PerClient>,
        client: IpAddr,
    }

    impl PerClient {
        pub fn new(max: usize) -> Arc<PerClient> {
            Arc::new(PerClient {
                max,
                open: Mutex::new(HashMap::new()),
            })
        }

        /// A place for a connection from `ip`, or `None` when its address holds `max` already.
        pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
            let client = client_of(ip);
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(client).or_insert(0);
            if *n >= self.max {
                return None;
            }
            *n += 1;
            Some(Slot {
                owner: self.clone(),
                client,
            })
        }

        #[cfg(test)]
        fn open(&self, ip: IpAddr) -> usize {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.get(&client_of(ip)).copied().unwrap_or(0)
        }
    }

    impl Drop for Slot {
        fn drop(&mut self) {
            let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.client);
                }
            }
        }
    }

    /// Who a connection or a failed sign-in counts against: an IPv4 address (also when mapped
    /// into IPv6), or an IPv6 /64 (one subscriber's network: its addresses cost nothing to
    /// change).
    pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
                }
            },
        }
    }

    /// Answers a connection over the cap with 503 and closes it, without waiting for anything:
    /// what the client already sent is read away first, so the close is a FIN the client can
    /// read the answer before, not a reset.
    pub(crate) fn refuse(stream: tokio::net::TcpStream) {
        let mut sink = [0u8; 4096];
        for _ in 0..4 {
            match stream.try_read(&mut sink) {
                Ok(n) if n == sink.len() => continue,
                _ => break,
            }
        }
        let _ = stream.try_write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 40\r\nConnection: close\r\n\r\ntoo many connections from your address\r\n",
        );
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn each_address_has_its_own_cap() {
            let cap = PerClient::new(2);
            let a: IpAddr = "192.0.2.1".parse().expect("ip");
            let b: IpAddr = "192.0.2.2".parse().expect("ip");
            let one = cap.admit(a).expect("first");
            let two = cap.admit(a).expect("second");
            assert!(cap.admit(a).is_none());
            assert!(cap.admit(b).is_some());
            // The same address mapped into IPv6 is the same client.
            assert!(cap.admit("::ffff:192.0.2.1".parse().expect("ip")).is_none());
            drop(one);
            assert_eq!(cap.open(a), 1);
            let three = cap.admit(a).expect("a place again");
            drop((two, three));
            assert_eq!(cap.open(a), 0);
            assert!(
                cap.open.lock().expect("lock").is_empty(),
                "no entry left behind"
            );
        }

        #[test]
        fn an_ipv6_network_is_one_client() {
            let cap = PerClient::new(1);
            let _held = cap
                .admit("2001:db8:1:2::1".parse().expect("ip"))
                .expect("first");
            assert!(
                cap.admit("2001:db8:1:2:ffff::9".parse().expect("ip"))
                    .is_none()
            );
            assert!(cap.admit("2001:db8:1:3::1".parse().expect("ip")).is_some());
        }
    }
}
