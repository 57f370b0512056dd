//! The request path: Host → app → upstream, holding requests for cold apps until they wake.
//! It reads the routing snapshot and atomics only; anything for the store goes through a queue.

use crate::compress::{self, Encoder};
use crate::errors::EdgeError;
use crate::limits::{self, ClientRates, Gcra, Verdict};
use crate::metrics::{Gauge, Metrics, method_index};
use crate::policy;
use crate::routing::{AppEntry, NoUpstream, OpenStream};
use crate::sync::Snapshot;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use spinforge_state::now_ms;
use spinforge_state::policy::{RateLimit, RateLimitScope};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Spinlets are on loopback: a connect that takes this long is not going to work.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled upstream connections are dropped before Node's default 5 s keep-alive closes them.
pub(crate) const UPSTREAM_IDLE: Duration = Duration::from_secs(4);
/// Retry-After for 503s.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The `edge:` settings the request path reads. A reload swaps in a new one
/// ([`LiveSettings`]); each connection and request reads the one current when it starts (an
/// `ArcSwap` load: no lock, no store call).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub wake_timeout: Duration,
    pub max_held_requests: usize,
    /// Idle time after which a client's keep-alive connection is closed.
    pub keepalive: Duration,
    /// `edge.access_log: json`: a line per request at info (else at debug only).
    pub access_log: bool,
    /// `edge.header_timeout`: the first byte of a connection, and a begun request head, must
    /// arrive within it.
    pub header_timeout: Duration,
    /// `edge.h2c`: HTTP/2 with prior knowledge on plain connections.
    pub h2c: bool,
    /// `edge.max_connections_per_ip`.
    pub max_connections_per_ip: u32,
}

impl ProxySettings {
    pub fn from_config(config: &spinforge_state::config::EdgeConfig) -> ProxySettings {
        ProxySettings {
            wake_timeout: config.wake_timeout,
            max_held_requests: config.max_held_requests,
            keepalive: config.keepalive_timeout,
            access_log: config.access_log == spinforge_state::config::AccessLog::Json,
            header_timeout: config.header_timeout,
            h2c: config.h2c,
            max_connections_per_ip: config.max_connections_per_ip,
        }
    }
}

/// The settings every proxy thread reads, swapped whole by a reload.
pub type LiveSettings = Arc<arc_swap::ArcSwap<ProxySettings>>;

/// The edge's `ProxyHttp`.
#[derive(Debug, Clone)]
pub struct EdgeProxy {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) wakes: mpsc::Sender<Arc<str>>,
    pub(crate) settings: LiveSettings,
    /// Requests in flight (and the proxy threads serving), which a stop waits for.
    pub(crate) in_flight: spinforge_state::stop::TaskTracker,
    /// Per-client rate state, made on the first request to an app with a rate limit.
    pub(crate) client_rates: Arc<OnceLock<ClientRates>>,
    /// Where requests under `scope: cluster` limits are noted for the other edges (Redis only).
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterRates>>,
    pub(crate) metrics: Arc<Metrics>,
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
    /// The upstream of the current attempt.
    upstream: Option<SocketAddr>,
    /// Counts this request against its upstream's load while it lives.
    upstream_load: Option<crate::balance::UpstreamLoad>,
    request_id: Option<HeaderValue>,
    /// The authority of an absolute-form target (it wins over Host; the app gets it as Host).
    target_authority: Option<HeaderValue>,
    /// Idempotent and bodiless: the policy lets a failed exchange be sent again.
    replayable: bool,
    /// An upgrade (WebSocket) as the policy reads it: `Upgrade` listed in `Connection`.
    upgrade: bool,
    /// Sends left on a fresh connection after a pooled one failed (the policy allows one).
    replays_left: u8,
    /// The next attempt goes to the same upstream on a fresh connection ([`policy::Retry::Fresh`]).
    same_upstream: bool,
    cold_start: Option<Duration>,
    /// Request body bytes seen so far (for the body limit on chunked uploads).
    body_bytes: u64,
    /// What the client accepts, read before the request head goes upstream.
    accept_encoding: Option<compress::Encoding>,
    encoder: Option<Encoder>,
    /// Set while a WebSocket or event stream is open.
    open_stream: Option<OpenStream>,
    /// The current upstream connection's socket (see `connected_to_upstream`).
    upstream_fd: Option<std::os::fd::RawFd>,
    /// Ends a WebSocket or event stream cleanly when its upstream drains.
    closer: Option<crate::routing::drain::StreamCloser>,
    started: Instant,
    /// Counts an upgraded (WebSocket) stream as open while the request lives.
    websocket: Option<Gauge>,
    _in_flight: InFlight,
}

/// Counts a request as in flight until dropped: the edge's stop waits for every one (within its
/// deadline).
pub(crate) type InFlight = spinforge_state::stop::TaskTrackerToken;

impl EdgeProxy {
    /// `Some(wait)` when this request is over the app's rate limit (the app-wide cap first, then
    /// the client's own budget).
    pub(crate) fn rate_limited(
        &self,
        client_ip: Option<std::net::IpAddr>,
        app: &AppEntry,
        limit: &RateLimit,
    ) -> Option<Duration> {
        let now = limits::now_us();
        let cluster = match limit.scope {
            RateLimitScope::Cluster => self.cluster.as_deref(),
            RateLimitScope::Local => None,
        };
        if let Some(app_rps) = limit.app_rps {
            let burst = limit.app_burst.unwrap_or(app_rps.ceil() as u32);
            if let Verdict::Deny(wait) = app.runtime.app_rate.check(Gcra::new(app_rps, burst), now)
            {
                return Some(wait);
            }
            if let Some(c) = cluster {
                c.app_passed(&app.name);
            }
        }
        let client = limits::client_key(client_ip?);
        let rates = self.client_rates.get_or_init(ClientRates::default);
        match rates.check(&app.name, client, Gcra::new(limit.rps, limit.burst), now) {
            Verdict::Allow => {
                if let Some(c) = cluster {
                    c.client_passed(&app.name, client);
                }
                None
            }
            Verdict::Deny(wait) => Some(wait),
        }
    }

    /// `entry` when it has an upstream; else what its route says ([`NoUpstream`]): a `502`
    /// for a service SpinForge does not run, a `503` for a failed app or one that did not
    /// wake in time, or the woken app with how long the request waited (counted once in the
    /// app's cold-start metric). Both front ends call this before choosing an upstream.
    pub(crate) async fn ready_upstream(
        &self,
        host: &str,
        entry: &Arc<AppEntry>,
    ) -> Result<Ready, EdgeError> {
        if !entry.upstreams.is_empty() {
            return Ok(Ready {
                app: entry.clone(),
                cold_start: None,
            });
        }
        if entry.no_upstream == NoUpstream::External {
            return Err(EdgeError::UpstreamUnhealthy); // not ours to start: nothing to wait for
        }
        let started = Instant::now();
        let Some(woken) = self.wait_for_wake(host, entry).await else {
            tracing::debug!(%host, app = %entry.name, "cold app did not come up in time");
            return Err(EdgeError::Unavailable {
                retry_after: RETRY_AFTER,
            });
        };
        let waited = started.elapsed();
        if woken.runtime.claim_cold_start() {
            woken.runtime.metrics().cold_start(waited);
        }
        Ok(Ready {
            app: woken,
            cold_start: Some(waited),
        })
    }

    /// Holds the request until `host`'s app has an upstream or the wake timeout passes, or
    /// until its route says it failed (`None` at once: nothing would start in time).
    async fn wait_for_wake(&self, host: &str, entry: &AppEntry) -> Option<Arc<AppEntry>> {
        let settings = self.settings.load();
        let _held = entry.runtime.try_hold(settings.max_held_requests)?;
        let deadline = tokio::time::Instant::now() + settings.wake_timeout;
        drop(settings);
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
                if e.no_upstream == NoUpstream::Failed {
                    // Its build or starts failed: no wake comes in time (the one just asked
                    // for lets the supervisor retry it after its pause). 503 now, not later.
                    return None;
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

/// An app ready for a request ([`EdgeProxy::ready_upstream`]).
pub(crate) struct Ready {
    pub app: Arc<AppEntry>,
    /// How long the request waited for the app to wake, when it had to.
    pub cold_start: Option<Duration>,
}

/// The upstream for attempt `attempt` (0 first) of a request whose rotation starts at `first`
/// (`app.runtime.next_upstream()`). The app must have at least one upstream.
///
/// First attempt: of the upstreams whose breaker is closed, the one with the fewest requests in
/// flight (scanned from the rotating start, so ties take turns). A retry moves on to the next
/// one. If all breakers are open, the next one anyway (a probe beats a certain error).
pub(crate) fn choose_upstream(app: &AppEntry, first: usize, attempt: usize) -> SocketAddr {
    let n = app.upstreams.len();
    let now = now_ms();
    let pick = |i: usize| app.upstreams[(first + attempt + i) % n];
    let closed = (0..n)
        .map(pick)
        .filter(|a| !app.runtime.breakers.is_open(*a, now));
    let chosen = if attempt == 0 && n > 1 {
        app.runtime.loads.least_loaded(closed)
    } else {
        closed.into_iter().next()
    };
    chosen.unwrap_or_else(|| pick(0))
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    Some(session.client_addr()?.as_inet()?.ip())
}

/// Answers with one of the edge's own pages.
async fn answer(session: &mut Session, ctx: &RequestCtx, error: EdgeError) -> Result<()> {
    let accept = session
        .req_header()
        .headers
        .get(header::ACCEPT)
        .map(|v| v.as_bytes().to_vec());
    let id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (mut head, body) = error.render(accept.as_deref(), id)?;
    if let Some(v) = &ctx.request_id {
        head.insert_header("x-request-id", v.clone())?;
    }
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Reads the request head with the one request policy. Pingora drops a Content-Length sent
/// beside Transfer-Encoding (and goes on): the raw head is looked at for that one shape, so
/// that the policy refuses it as the fast path does.
fn read_request(session: &Session) -> std::result::Result<policy::RequestFacts<'_>, EdgeError> {
    let req = session.req_header();
    let headers = &req.headers;
    let hidden_length = headers.contains_key(header::TRANSFER_ENCODING)
        && session.as_downstream().as_http1().is_some_and(|h1| {
            h1.get_headers_raw_bytes()
                .split(|&b| b == b'\n')
                .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        });
    let extra_length = hidden_length.then_some((&b"content-length"[..], &b"0"[..]));
    let (version, target): (_, &[u8]) = match req.version {
        http::Version::HTTP_2 | http::Version::HTTP_3 => (
            policy::Version::Http2,
            req.uri
                .path_and_query()
                .map_or(b"/", |p| p.as_str().as_bytes()),
        ),
        http::Version::HTTP_10 | http::Version::HTTP_09 => {
            (policy::Version::Http10, req.raw_path())
        }
        _ => (policy::Version::Http11, req.raw_path()),
    };
    // HTTP/2 names the authority in `:authority`; Host, when sent too, must agree with it.
    let authority = (version == policy::Version::Http2 && !headers.contains_key(header::HOST))
        .then(|| req.uri.authority())
        .flatten()
        .map(|a| (&b"host"[..], a.as_str().as_bytes()));
    policy::read_request(
        req.method.as_str().as_bytes(),
        target,
        version,
        headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .chain(extra_length)
            .chain(authority),
    )
}

/// The size of the request head as the client sent it.
fn head_size(session: &Session) -> usize {
    if let Some(h1) = session.as_downstream().as_http1() {
        return h1.get_headers_raw_bytes().len();
    }
    let req = session.req_header();
    crate::policy::h2_head_size(&req.uri, &req.headers)
}

fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The headers of a message the policy drops (`request`: on the way to the app, else on the
/// way to the client). Pingora writes the framing headers itself. Allocates only when there is
/// something to drop.
fn dropped_headers(headers: &http::HeaderMap, request: bool) -> Vec<http::HeaderName> {
    let mut connection = policy::ConnectionHeaders::default();
    let mut too_many = false;
    for v in headers.get_all(header::CONNECTION) {
        too_many |= connection.push_value(v.as_bytes()).is_err();
    }
    let mut names: Vec<http::HeaderName> = Vec::new();
    for name in headers.keys() {
        let rule = if request {
            policy::request_header(name.as_str().as_bytes(), &connection)
        } else {
            policy::response_header(name.as_str().as_bytes(), &connection)
        };
        if rule == policy::Forward::Drop && !names.contains(name) {
            names.push(name.clone());
        }
    }
    let _ = too_many; // the request was refused already; an answer's extra lists name nothing new
    names
}

/// A client's X-Request-Id is kept when it is short and plain; otherwise we make one.
fn sane_request_id(v: &HeaderValue) -> bool {
    sane_request_id_bytes(v.as_bytes())
}

pub(crate) fn sane_request_id_bytes(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&new_request_id_hex()).expect("hex is a valid header value")
}

/// 128 random bits as 32 lowercase hex digits.
pub(crate) fn new_request_id_hex() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    buf
}

/// One request's access-log line (target `spinforge::access`), from either request path.
pub(crate) struct AccessLine<'a> {
    pub request_id: &'a str,
    pub app: &'a str,
    pub client: Option<&'a dyn std::fmt::Display>,
    pub host: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    pub took: Duration,
    pub body_bytes: u64,
    pub cold_start: Option<Duration>,
    pub error: Option<&'a dyn std::fmt::Display>,
}

/// Logs a request at info with `edge.access_log: json` (`info`), else at debug; `line` is only
/// called when that level is enabled, so a disabled log costs nothing on the request path.
pub(crate) fn log_access<'a>(info: bool, line: impl FnOnce() -> AccessLine<'a>) {
    macro_rules! at {
        ($level:expr) => {
            if tracing::enabled!(target: "spinforge::access", $level) {
                let l = line();
                tracing::event!(
                    target: "spinforge::access",
                    $level,
                    request_id = l.request_id,
                    app = l.app,
                    client = %l.client.map(|c| c.to_string()).unwrap_or_default(),
                    host = l.host,
                    method = %l.method,
                    path = l.path,
                    status = l.status,
                    duration_ms = l.took.as_secs_f64() * 1000.0,
                    body_bytes = l.body_bytes,
                    cold_start_ms = l.cold_start.map(|d| d.as_millis() as u64),
                    error = l.error.map(|e| e.to_string()),
                    "request"
                );
            }
        };
    }
    if info {
        at!(tracing::Level::INFO);
    } else {
        at!(tracing::Level::DEBUG);
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            app: None,
            first_upstream: 0,
            attempts: 0,
            upstream: None,
            upstream_load: None,
            request_id: None,
            target_authority: None,
            replayable: false,
            upgrade: false,
            replays_left: 1,
            same_upstream: false,
            cold_start: None,
            body_bytes: 0,
            accept_encoding: None,
            encoder: None,
            open_stream: None,
            upstream_fd: None,
            closer: None,
            started: Instant::now(),
            websocket: None,
            _in_flight: self.in_flight.token(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Our idle timeout, unless Pingora already decided to close (HTTP/1.0, `close`, or a
        // framing it found doubtful): never turn keep-alive back on.
        if session.as_downstream().as_http1().is_some() && session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.settings.load().keepalive.as_secs().max(1)));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = Some(match req.headers.get("x-request-id") {
            Some(v) if sane_request_id(v) => v.clone(),
            _ => new_request_id(),
        });
        let facts = match read_request(session) {
            Ok(f) => f,
            Err(refused) => {
                tracing::debug!(
                    status = refused.status(),
                    "refusing a request the policy does not accept"
                );
                // Its framing is in doubt: nothing more is read from this connection.
                session.set_keepalive(None);
                answer(session, ctx, refused).await?;
                return Ok(true);
            }
        };
        let Some(host) = facts.host().map(|h| h.into_owned()) else {
            session.set_keepalive(None);
            answer(session, ctx, EdgeError::NoHost).await?;
            return Ok(true);
        };
        let acme = facts.is_acme_challenge();
        let path = facts.path.clone().into_owned();
        let close = facts.close;
        ctx.replayable = facts.replayable(session.req_header().method.as_str().as_bytes());
        ctx.upgrade = facts.upgrade;
        if facts.from_target {
            ctx.target_authority = HeaderValue::from_bytes(facts.authority).ok();
        }
        if close {
            // Any `Connection: close` the client sent, not only the first header's.
            session.set_keepalive(None);
        }
        if crate::challenge::wants(&self.tls, session, &host, acme) {
            crate::challenge::answer(&self.tls, session, &host, &path).await?;
            return Ok(true);
        }
        let entry = match self.snapshot.load().lookup(&host) {
            Some(e) => e.clone(),
            None => {
                answer(session, ctx, EdgeError::UnknownHost).await?;
                return Ok(true);
            }
        };
        let policy = entry.policy.clone();
        if head_size(session) as u64 > policy.max_header_bytes {
            answer(session, ctx, EdgeError::HeadersTooLarge).await?;
            return Ok(true);
        }
        let declared_body = compress::content_length(&session.req_header().headers);
        if declared_body.is_some_and(|n| n > policy.max_body_bytes) {
            answer(session, ctx, EdgeError::BodyTooLarge).await?;
            return Ok(true);
        }
        if let Some(limit) = &policy.rate_limit
            && let Some(wait) = self.rate_limited(client_ip(session), &entry, limit)
        {
            tracing::debug!(%host, app = %entry.name, "rate limited");
            entry.runtime.metrics().rate_limited();
            ctx.app = Some(entry);
            answer(session, ctx, EdgeError::RateLimited { retry_after: wait }).await?;
            return Ok(true);
        }
        ctx.accept_encoding = if policy.compression {
            session
                .req_header()
                .headers
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| compress::negotiate(v.as_bytes()))
        } else {
            None
        };
        entry.runtime.touch(now_ms());
        match self.ready_upstream(&host, &entry).await {
            Ok(ready) => {
                ctx.cold_start = ready.cold_start;
                ctx.app = Some(ready.app);
                Ok(false)
            }
            Err(error) => {
                ctx.app = Some(entry);
                answer(session, ctx, error).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(chunk), Some(app)) = (body.as_ref(), ctx.app.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > app.policy.max_body_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the app's limit",
                ));
            }
        }
        Ok(())
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
        let addr = match ctx.upstream {
            Some(same) if std::mem::take(&mut ctx.same_upstream) => same,
            _ => {
                ctx.attempts += 1;
                choose_upstream(app, ctx.first_upstream, ctx.attempts - 1)
            }
        };
        ctx.upstream = Some(addr);
        ctx.upstream_load = None; // a failed attempt's count ends before the next one's starts
        ctx.upstream_load = Some(app.runtime.loads.start(addr));
        // A SocketAddr converts without a DNS lookup.
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        // No read or write timeouts: WebSockets and event streams may sit quiet for hours.
        Ok(Box::new(peer))
    }

    /// A failure once the request went out: sent again only where the policy says it is safe
    /// (the same rule as the fast path's).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let upstreams = ctx.app.as_ref().map_or(0, |a| a.upstreams.len());
        let retry = policy::retry_after(
            reused,
            ctx.replayable,
            &mut ctx.replays_left,
            ctx.attempts.saturating_sub(1),
            upstreams,
        );
        ctx.same_upstream = retry == policy::Retry::Fresh;
        if retry == policy::Retry::Next
            && let (Some(app), Some(addr)) = (&ctx.app, ctx.upstream)
        {
            app.runtime.breakers.failure(addr, now_ms());
        }
        e.set_retry(retry != policy::Retry::No);
        e
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
        if let (Some(app), Some(addr)) = (&ctx.app, ctx.upstream)
            && app.runtime.breakers.failure(addr, now_ms())
        {
            tracing::warn!(app = %app.name, upstream = %addr, "upstream failing; skipping it for a while");
        }
        if let Some(app) = &ctx.app {
            app.runtime.metrics().connect_failure();
        }
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
        for name in dropped_headers(&upstream.headers, true) {
            upstream.remove_header(&name);
        }
        if !ctx.upgrade {
            // Not listed in Connection: not an upgrade (RFC 9110 §7.8), whatever Pingora made of
            // it (it would add `Connection: Upgrade` of its own).
            upstream.remove_header(&header::UPGRADE);
            upstream.remove_header(&header::CONNECTION);
        }
        // An absolute-form target: the app gets the origin form, and the target's authority as
        // Host (RFC 9112 §3.2.2).
        if let Some(authority) = ctx.target_authority.clone() {
            let path = upstream
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            upstream.set_raw_path(path.as_bytes())?;
            upstream.insert_header(header::HOST, authority)?;
        }
        // We are the edge: the forwarding headers are ours (`policy::FORWARDING`), the client's
        // were dropped above.
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
        if let Some(host) = upstream.headers.get(header::HOST).cloned() {
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
        let head_request = session.req_header().method == http::Method::HEAD;
        let upgrade_asked = ctx.upgrade;
        let version = match resp.version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => policy::Version::Http10,
            _ => policy::Version::Http11,
        };
        if let Err(policy::BadResponse(why)) = policy::read_response(
            resp.status.as_u16(),
            version,
            head_request,
            upgrade_asked,
            resp.headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        ) {
            return Err(Error::explain(ErrorType::InvalidHTTPHeader, why).into_up());
        }
        if let (Some(app), Some(addr)) = (&ctx.app, ctx.upstream) {
            app.runtime.answered(addr, ctx.upstream_load.as_ref());
        }
        for name in dropped_headers(&resp.headers, false) {
            resp.remove_header(&name);
        }
        if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            resp.remove_header(&header::UPGRADE);
        }
        if resp.status == http::StatusCode::NO_CONTENT {
            // A 204 has no body (RFC 9110 §15.3.5): it announces none either.
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.remove_header(&header::TRANSFER_ENCODING);
        }
        // We speak HTTP/1.1 to the client whatever the app spoke (RFC 9110 §2.5).
        if version == policy::Version::Http10
            && session.req_header().version == http::Version::HTTP_11
        {
            resp.set_version(http::Version::HTTP_11);
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.websocket = Some(self.metrics.websocket());
        }
        if let Some(d) = ctx.cold_start {
            resp.append_header("server-timing", format!("cold-start;dur={}", d.as_millis()))?;
        }
        let Some(app) = ctx.app.clone() else {
            return Ok(());
        };
        // HSTS only over HTTPS, for names with a trusted certificate.
        let tls = crate::challenge::hsts_applies(&self.tls, session);
        for (name, value) in policy::security_headers(&app.policy, tls) {
            if !resp.headers.contains_key(name) {
                resp.insert_header(name, value)?;
            }
        }
        if (resp.status.as_u16() == 101 || is_event_stream(resp))
            && let Some(addr) = ctx.upstream
        {
            ctx.open_stream = Some(app.runtime.open_stream(addr));
            ctx.closer = ctx.upstream_fd.and_then(|fd| {
                let ws = resp.status.as_u16() == 101;
                crate::routing::drain::StreamCloser::start(&self.snapshot, &app.name, addr, fd, ws)
            });
        }
        if app.policy.compression {
            let length = compress::content_length(&resp.headers);
            if let Some(enc) = compress::decide(resp, ctx.accept_encoding, head_request) {
                ctx.encoder = Some(
                    Encoder::for_length(enc, length)
                        .map_err(|e| Error::because(ErrorType::InternalError, "compressor", e))?,
                );
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(closer) = ctx.closer.as_mut() {
            closer.filter(body, end_of_stream);
        }
        if let Some(encoder) = ctx.encoder.as_mut() {
            let chunk = body.take().unwrap_or_default();
            let out = encoder
                .encode(&chunk, end_of_stream)
                .map_err(|e| Error::because(ErrorType::InternalError, "compressing", e))?;
            *body = Some(out);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use pingora_error::ErrorSource;
        if ctx.closer.as_ref().is_some_and(|c| c.ended())
            && let Some(status) = session.response_written().map(|r| r.status.as_u16())
        {
            // An event stream the edge ended at its drain's close time, at an event end: the
            // upstream's body was cut there on purpose, the client's ends properly.
            if let Err(write) = session.write_response_body(None, true).await {
                tracing::debug!(error = %write, "could not end an event stream");
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let edge_error = match e.etype() {
            ErrorType::HTTPStatus(413) => Some(EdgeError::BodyTooLarge),
            ErrorType::ConnectNoRoute => Some(EdgeError::Unavailable {
                retry_after: RETRY_AFTER,
            }),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                Some(EdgeError::GatewayTimeout)
            }
            _ if e.esource() == &ErrorSource::Upstream => Some(EdgeError::BadGateway),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => None,
            _ if e.esource() == &ErrorSource::Downstream => Some(EdgeError::BadRequest),
            _ => Some(EdgeError::BadGateway),
        };
        if e.esource() == &ErrorSource::Upstream
            && let (Some(app), Some(addr)) = (&ctx.app, ctx.upstream)
        {
            app.runtime.breakers.failure(addr, now_ms());
        }
        let code = match edge_error {
            // Nothing can be sent once the response has started.
            Some(err) if session.response_written().is_none() => {
                if let Err(write) = answer(session, ctx, err).await {
                    tracing::debug!(error = %write, "could not send the error page");
                }
                err.status()
            }
            Some(err) => err.status(),
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // A stream the edge ended because its upstream drains is no error.
        ctx.closer.as_ref().is_some_and(|c| c.ended())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::fd::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let e = e.filter(|_| !ctx.closer.as_ref().is_some_and(|c| c.ended()));
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let took = ctx.started.elapsed();
        match &ctx.app {
            Some(app) => {
                // The end of a long request counts as activity too.
                app.runtime.touch(now_ms());
                let m = app.runtime.metrics();
                m.request(method_index(&session.req_header().method), status, took);
                if e.is_some_and(|e| matches!(e.esource(), pingora_error::ErrorSource::Upstream)) {
                    m.upstream_error();
                }
            }
            None => self.metrics.unrouted(status),
        }
        ctx.websocket = None;
        log_access(self.settings.load().access_log, || {
            let req = session.req_header();
            AccessLine {
                request_id: ctx
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                app: ctx.app.as_ref().map(|a| &*a.name).unwrap_or(""),
                client: session.client_addr().map(|a| a as &dyn std::fmt::Display),
                host: req
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(""),
                method: &req.method,
                path: req.uri.path(),
                status,
                took,
                body_bytes: session.body_bytes_sent() as u64,
                cold_start: ctx.cold_start,
                error: e.map(|e| e as &dyn std::fmt::Display),
            }
        });
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
