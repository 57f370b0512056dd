//! The listener's application: Pingora's HTTP proxy behind a per-client-IP connection cap.

use crate::limits::{Admission, ConnectionCounts, client_key};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long to keep idle connections after the listener closed (set when the stop begins).
#[derive(Debug, Default)]
pub struct Linger(AtomicU64);

impl Linger {
    pub fn set(&self, d: Duration) {
        self.0.store(d.as_millis() as u64, Ordering::Relaxed);
    }
    fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// Wraps a [`ServerApp`] (the proxy) so that one client IP holds at most `max_per_ip`
/// connections at a time; connections over that are closed at once, before any byte is read.
#[derive(Debug)]
pub struct PerIpCap<A> {
    pub inner: Arc<A>,
    pub counts: Arc<ConnectionCounts>,
    pub max_per_ip: u32,
    pub linger: Arc<Linger>,
    /// A new connection that sends nothing for this long is closed.
    pub first_byte_timeout: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for PerIpCap<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Counted while the connection is inside the app — for HTTP/1 keep-alive that is also
        // the wait for its next request — as NGINX's limit_conn does.
        let _slot = match ip {
            Some(ip) => match self.counts.admit(client_key(ip), self.max_per_ip) {
                Admission::Refused => {
                    tracing::debug!(%ip, "too many connections from one address; closing");
                    return None;
                }
                admitted => Some(admitted),
            },
            None => None,
        };
        // Connections that open and then say nothing would otherwise sit for Pingora's 60 s
        // read timeout. (Peeking one byte consumes nothing: Pingora re-reads it.)
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.first_byte_timeout, stream.try_peek(&mut first)).await {
            Err(_) => {
                tracing::debug!(?ip, "no request within the header timeout; closing");
                return None;
            }
            Ok(Err(_)) => return None, // closed before sending anything
            Ok(Ok(_)) => {}
        }
        self.inner.process_new(stream, shutdown).await
    }

    /// Runs once the listener has stopped. Pingora's cleanup closes idle keep-alive
    /// connections at once; lingering first lets their next request through (answered with
    /// `Connection: close`, as Pingora does for every request once shutdown began).
    async fn cleanup(&self) {
        let linger = self.linger.get();
        if !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
        self.inner.cleanup().await;
    }
}
