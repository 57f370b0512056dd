//! The HTTPS accept loop. Pingora's `TlsSettings` offers one ALPN set (h2 + http/1.1, or a single
//! custom protocol); TLS-ALPN-01 needs `acme-tls/1` beside them. So we build the rustls
//! `ServerConfig` ourselves (TLS 1.2 and 1.3, SNI resolver, session cache and tickets for
//! resumption), accept TCP here, run the handshake through Pingora's `Acceptor`, and hand the
//! stream to the same Pingora HTTP app as the plain listener. An `acme-tls/1` connection is closed
//! right after its handshake: the validator only looks at the certificate.

use super::{ACME_TLS_ALPN, Resolver, TlsState};
use crate::limits::{Admission, ConnectionCounts, client_key};
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::ALPN;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Ssl};
use rustls::ServerConfig;
use rustls::server::ServerSessionMemoryCache;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS sessions kept for resumption by session id (tickets need no server state).
const SESSION_CACHE: usize = 20_000;

/// The rustls config of the HTTPS listener.
pub fn server_config(state: Arc<TlsState>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(state)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// What guards the HTTPS listener against abusive clients, as the plain listener is guarded
/// ([`crate::connections::PerIpCap`]): one connection table for both.
#[derive(Debug, Clone)]
pub struct Guard {
    pub counts: Arc<ConnectionCounts>,
    pub max_per_ip: u32,
    /// A new connection that sends nothing (no ClientHello) for this long is closed.
    pub first_byte_timeout: Duration,
}

/// Accepts on `listener` until `shutdown` turns true; each connection runs on its own task.
pub async fn serve<A>(
    listener: std::net::TcpListener,
    config: Arc<ServerConfig>,
    app: Arc<A>,
    guard: Guard,
    mut shutdown: watch::Receiver<bool>,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the HTTPS listener");
            return;
        }
    };
    let acceptor = Arc::new(Acceptor::from_server_config(config));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS accept failed");
                // Out of file descriptors: give others a moment to close some.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            // Counted before the handshake, so that refused connections cost no crypto.
            let _slot = match guard.counts.admit(client_key(peer.ip()), guard.max_per_ip) {
                Admission::Refused => {
                    tracing::debug!(%peer, "too many connections from one address; closing");
                    return;
                }
                admitted => admitted,
            };
            let mut first = [0u8; 1];
            match tokio::time::timeout(guard.first_byte_timeout, tcp.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return, // closed (or failed) before sending anything
                Err(_) => {
                    tracing::debug!(%peer, "no ClientHello within the header timeout; closing");
                    return;
                }
            }
            let _ = tcp.set_nodelay(true);
            let mut l4: L4Stream = tcp.into();
            let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
            let _ = digest.peer_addr.set(Some(peer.into()));
            l4.set_socket_digest(digest);
            let tls =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(l4)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            if let Some(ALPN::Custom(p)) = tls.selected_alpn_proto() {
                if p.protocol() == ACME_TLS_ALPN {
                    tracing::debug!(%peer, "answered a TLS-ALPN-01 validation");
                }
                return; // nothing but HTTP is spoken here
            }
            let mut stream: Option<pingora_core::protocols::Stream> = Some(Box::new(tls));
            while let Some(s) = stream {
                stream = app.process_new(s, &shutdown).await;
            }
        });
    }
}

/// One Pingora HTTP app shared by the plain listener (Pingora's `Service`) and ours.
pub struct SharedApp<A>(pub Arc<A>);

impl<A> std::fmt::Debug for SharedApp<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedApp")
    }
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for SharedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: pingora_core::protocols::Stream,
        shutdown: &pingora_core::server::ShutdownWatch,
    ) -> Option<pingora_core::protocols::Stream> {
        self.0.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.0.cleanup().await
    }
}
