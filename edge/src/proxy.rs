//! The request path: Host → app → upstream, holding requests for cold apps until they wake.
//! It reads the routing snapshot and atomics only; anything for the store goes through a queue.

use crate::routing::{AppEntry, normalize_host};
use crate::sync::Snapshot;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use spinforge_state::now_ms;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Spinlets are on loopback: a connect that takes this long is not going to work.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled upstream connections are dropped before Node's default 5 s keep-alive closes them.
const UPSTREAM_IDLE: Duration = Duration::from_secs(4);
/// Retry-After for 503s, in seconds.
const RETRY_AFTER: &str = "5";

#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub wake_timeout: Duration,
    pub max_held_requests: usize,
}

/// The edge's `ProxyHttp`.
#[derive(Debug)]
pub struct EdgeProxy {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) wakes: mpsc::Sender<Arc<str>>,
    pub(crate) settings: ProxySettings,
    pub(crate) in_flight: Arc<AtomicUsize>,
    /// Certificates and ACME challenge answers (automatic HTTPS).
    pub(crate) tls: Arc<crate::tls::TlsState>,
}

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    app: Option<Arc<AppEntry>>,
    /// Upstream index of the first attempt; retries move on from it.
    first_upstream: usize,
    attempts: usize,
    request_id: Option<HeaderValue>,
    cold_start: Option<Duration>,
    _in_flight: InFlight,
}

/// Counts a request as in flight until dropped; shutdown waits for the count to reach zero.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EdgeProxy {
    /// Holds the request until `host`'s app has an upstream or the wake timeout passes.
    async fn wait_for_wake(&self, host: &str, entry: &AppEntry) -> Option<Arc<AppEntry>> {
        let _held = entry.runtime.try_hold(self.settings.max_held_requests)?;
        let deadline = tokio::time::Instant::now() + self.settings.wake_timeout;
        let mut changes = self.snapshot.changes();
        loop {
            if let Some(e) = self.snapshot.load().lookup(host) {
                if !e.upstreams.is_empty() {
                    return Some(e.clone());
                }
                // Ask (again, at most once a second per app) for the app to be started.
                if e.runtime.wake_due(now_ms()) {
                    let _ = self.wakes.try_send(e.name.clone());
                }
            } else {
                return None; // the route went away while we waited
            }
            let tick = tokio::time::Instant::now() + Duration::from_secs(1);
            match tokio::time::timeout_at(deadline.min(tick), changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None, // the edge is shutting down
                Err(_) if tokio::time::Instant::now() >= deadline => return None,
                Err(_) => {} // a second passed: look again and repeat the wake
            }
        }
    }
}

async fn respond(
    session: &mut Session,
    status: u16,
    body: &'static str,
    retry_after: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if retry_after {
        resp.insert_header(header::RETRY_AFTER, RETRY_AFTER)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await
}

/// A client's X-Request-Id is kept when it is short and plain; otherwise we make one.
fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            app: None,
            first_upstream: 0,
            attempts: 0,
            request_id: None,
            cold_start: None,
            _in_flight: InFlight(self.in_flight.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = Some(match req.headers.get("x-request-id") {
            Some(v) if sane_request_id(v) => v.clone(),
            _ => new_request_id(),
        });
        let raw_host = match req.headers.get(header::HOST) {
            Some(h) => h.as_bytes(),
            None => req.uri.host().map(str::as_bytes).unwrap_or_default(),
        };
        let Some(host) = normalize_host(raw_host) else {
            respond(
                session,
                400,
                "400 Bad Request: the request has no Host\n",
                false,
            )
            .await?;
            return Ok(true);
        };
        if crate::challenge::wants(&self.tls, session, &host) {
            let host = host.into_owned();
            crate::challenge::answer(&self.tls, session, &host).await?;
            return Ok(true);
        }
        let entry = match self.snapshot.load().lookup(&host) {
            Some(e) => e.clone(),
            None => {
                respond(
                    session,
                    404,
                    "404 Not Found: no app is served on this host\n",
                    false,
                )
                .await?;
                return Ok(true);
            }
        };
        entry.runtime.touch(now_ms());
        if entry.upstreams.is_empty() {
            let started = Instant::now();
            let host = host.into_owned();
            match self.wait_for_wake(&host, &entry).await {
                Some(woken) => {
                    ctx.cold_start = Some(started.elapsed());
                    ctx.app = Some(woken);
                }
                None => {
                    tracing::debug!(%host, app = %entry.name, "cold app did not come up in time");
                    respond(
                        session,
                        503,
                        "503 Service Unavailable: the app is starting; try again shortly\n",
                        true,
                    )
                    .await?;
                    return Ok(true);
                }
            }
        } else {
            ctx.app = Some(entry);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let app = ctx
            .app
            .as_ref()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let n = app.upstreams.len();
        if n == 0 {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "the app has no healthy spinlet",
            ));
        }
        if ctx.attempts == 0 {
            ctx.first_upstream = app.runtime.next_upstream();
        }
        let addr = app.upstreams[(ctx.first_upstream + ctx.attempts) % n];
        ctx.attempts += 1;
        // A SocketAddr converts without a DNS lookup.
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the spinlet: trying another one is safe for any method.
        let tried_all = ctx
            .app
            .as_ref()
            .is_none_or(|a| ctx.attempts >= a.upstreams.len());
        tracing::debug!(upstream = %peer, error = %e, tried_all, "connect to a spinlet failed");
        if !tried_all {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // We are the edge: what the client claims in X-Forwarded-* is not to be trusted, replace it.
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
        }
        let proto = if crate::challenge::is_tls(session) {
            "https"
        } else {
            "http"
        };
        upstream.insert_header("x-forwarded-proto", proto)?;
        if let Some(host) = session.req_header().headers.get(header::HOST).cloned() {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        if let Some(id) = &ctx.request_id {
            upstream.insert_header("x-request-id", id.clone())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        if let Some(d) = ctx.cold_start {
            resp.append_header("server-timing", format!("cold-start;dur={}", d.as_millis()))?;
        }
        crate::challenge::add_hsts(&self.tls, session, resp)?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(app) = &ctx.app {
            // The end of a long request counts as activity too.
            app.runtime.touch(now_ms());
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        tracing::debug!(
            target: "spinforge::access",
            request_id = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            app = ctx.app.as_ref().map(|a| &*a.name).unwrap_or(""),
            method = %session.req_header().method,
            path = %session.req_header().uri.path(),
            status,
            cold_start_ms = ctx.cold_start.map(|d| d.as_millis() as u64),
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123_x.y")));
        assert!(!sane_request_id(&HeaderValue::from_static("has space")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        let long = "a".repeat(129);
        assert!(!sane_request_id(
            &HeaderValue::from_str(&long).expect("ascii")
        ));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(sane_request_id(&id));
        assert_ne!(id, new_request_id());
    }
}
