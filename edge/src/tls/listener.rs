//! HTTPS handshakes. Pingora's `TlsSettings` offers one ALPN set (h2 + http/1.1, or a single
//! custom protocol); TLS-ALPN-01 needs `acme-tls/1` beside them. So we build the rustls
//! `ServerConfig` ourselves (TLS 1.2 and 1.3, SNI resolver, session cache and tickets for
//! resumption), accept TCP in [`crate::accept`], run the handshake through Pingora's `Acceptor`,
//! and hand the stream to the same HTTP app as plain connections. An `acme-tls/1` connection is
//! closed right after its handshake: the validator only looks at the certificate.

use super::{ACME_TLS_ALPN, Resolver, TlsState};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::Ssl;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::ALPN;
use rustls::ServerConfig;
use rustls::server::ServerSessionMemoryCache;
use std::sync::Arc;

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

/// Completes the TLS handshake of an accepted connection (within
/// [`crate::accept::HANDSHAKE_TIMEOUT`]). `None`: it failed, or it was an ACME TLS-ALPN-01
/// validation (answered by the handshake itself: the validator only looks at the certificate).
pub async fn handshake(
    acceptor: &Acceptor,
    l4: L4Stream,
    peer: std::net::SocketAddr,
) -> Option<pingora_core::protocols::Stream> {
    let tls =
        match tokio::time::timeout(crate::accept::HANDSHAKE_TIMEOUT, acceptor.tls_handshake(l4))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        };
    if let Some(ALPN::Custom(p)) = tls.selected_alpn_proto() {
        if p.protocol() == ACME_TLS_ALPN {
            tracing::debug!(%peer, "answered a TLS-ALPN-01 validation");
        }
        return None; // nothing but HTTP is spoken here
    }
    Some(Box::new(tls))
}
