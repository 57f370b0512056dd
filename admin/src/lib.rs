//! SpinForge's admin API: the HTTP face of a running supervisor, for the CLI and CI pipelines.
//!
//! Everything under `/api/v1` (design.md, "Admin API") needs the bearer token from the variable
//! `supervisor.admin_token_env` names; `/healthz`, `/metrics` and `/api/v1/openapi.json` do not.
//! Reads come from the store and from files under `data_dir`; changes go through the
//! supervisor's [`SupervisorHandle`], and each one is appended to `data_dir/audit.log`.

mod apps;
mod audit;
mod auth;
mod metrics;
mod problem;
mod reads;
mod router;
mod sse;
mod upload;

use spinforge_state::Store;
use spinforge_state::config::Config;
use spinforge_supervisor::control::SupervisorHandle;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use auth::token_id;

/// The OpenAPI 3 document the API serves at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Log and build-log streams open at once; more get 429.
const MAX_STREAMS: usize = 32;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The largest upload accepted, compressed bytes; also the unpacked limit.
    pub max_upload: u64,
    pub token: Option<auth::Token>,
    pub audit: audit::Audit,
    pub metrics: metrics::Metrics,
    pub streams: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

/// The admin API, bound and ready to serve.
#[derive(Debug)]
pub struct AdminApi {
    listener: TcpListener,
    store: Store,
    data_dir: PathBuf,
    max_upload: u64,
    token: Option<auth::Token>,
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
            data_dir: s.data_dir.clone(),
            max_upload: s.builds.max_archive_size,
            token,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `stop` turns true; then closes open streams and returns within a second.
    pub async fn serve(self, handle: SupervisorHandle, mut stop: watch::Receiver<bool>) {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let addr = self.local_addr();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            audit: audit::Audit::new(self.data_dir.join("audit.log")),
            store: self.store,
            handle,
            data_dir: self.data_dir,
            max_upload: self.max_upload,
            token: self.token,
            metrics: metrics::Metrics::default(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            shutdown,
        });
        tracing::info!(%addr, "admin API listening");
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = stopped(&mut stop) => break,
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
                _ = stopped(&mut stop) => break,
            };
            let ctx = ctx.clone();
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let _permit = permit;
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
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        tracing::info!("admin API stopped");
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
