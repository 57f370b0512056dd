//! The fast path: plain HTTP/1.1 requests to a running app, proxied without Pingora's per-request
//! machinery (its session objects, body tasks and channels, header maps, per-request
//! allocations), which cost about twice NGINX's CPU per request on the bench.
//!
//! A connection on the plain listener starts here. Each request head is read into the
//! connection's buffer and parsed once; a request the fast path takes is written to a pooled
//! upstream connection with its head rewritten (hop-by-hop headers dropped, X-Forwarded-* and
//! X-Request-Id set) and the answer passed back with the same rules the full path applies
//! (X-Request-Id, security headers, `Vary`). Anything else ([`head::Unfit`], an unknown host,
//! a stopped app, an ACME token or an HTTPS redirect, a body over the limit, a client that
//! accepts compression for an app that compresses) is handed to Pingora with the bytes read so
//! far put back, and that path answers it exactly as before; the connection comes back here
//! after it.
//!
//! The same rules hold as on the full path: no lock or store call (the routing snapshot, atomics,
//! a thread-local pool); rate limits, per-upstream load counts, breakers and metrics are shared;
//! a request is retried on another upstream when nothing of it was sent, and one whose bytes
//! went out only when it is idempotent and bodiless (NGINX's `proxy_next_upstream error`).

pub mod head;
mod pool;

use crate::errors::EdgeError;
use crate::metrics::method_index;
use crate::proxy::{AccessLine, EdgeProxy, InFlight, choose_upstream, log_access};
use crate::routing::{AppEntry, normalize_host};
use head::{BodyLength, Chunks, RequestHead, ResponseRules};
use pingora_core::protocols::Stream;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use spinforge_state::now_ms;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A request head (with whatever body bytes came along) must fit in this; larger ones go to
/// Pingora, which applies the app's header limit.
const READ_BUF: usize = 16 * 1024;
/// What a connection's buffers start with (and go back to between requests, for the upstream
/// side): most heads are well under this, and idle keep-alive connections should cost little.
const SMALL_BUF: usize = 4 * 1024;
/// Response heads larger than this are refused (502), as Pingora's own limit does.
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// How much of a body is moved per read.
const BODY_CHUNK: usize = 32 * 1024;
/// A client that sends none of its request body, or takes none of the answer, for this long is
/// dropped (Pingora's own downstream timeouts are the same). Upstream reads have no deadline:
/// event streams and long polls may be quiet for hours.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The fast path for one listener.
#[derive(Debug)]
pub struct FastPath {
    pub proxy: EdgeProxy,
    /// A request head that has begun must be complete within this.
    pub header_timeout: Duration,
    /// Set when the service's cleanup runs: idle keep-alive connections close.
    pub closing: watch::Sender<bool>,
}

/// How a connection left the fast path.
#[derive(Debug)]
pub enum Served {
    /// Done with: closed, or to be closed.
    Closed,
    /// The next request is the full path's (its bytes are put back into the stream); the
    /// connection comes back afterwards.
    Fallback(Stream),
    /// The connection is the full path's from here on: not HTTP/1.1 as the fast path reads it
    /// (HTTP/1.0, HTTP/2's prior-knowledge preface, garbage).
    Handover(Stream),
}

/// A client connection while the fast path has it.
struct Conn {
    client: Box<L4Stream>,
    /// The client's address (logged) and IP (forwarded, limited).
    peer: Option<pingora_core::protocols::l4::socket::SocketAddr>,
    ip: Option<IpAddr>,
    /// Bytes read from the client and not yet used: the current request's head first.
    buf: Vec<u8>,
    /// The head being written (upstream request, then client response).
    out: Vec<u8>,
    /// Bytes read from the upstream.
    up_buf: Vec<u8>,
}

impl Conn {
    fn fallback(mut self, whole_connection: bool) -> Served {
        if !self.buf.is_empty() {
            self.client.rewind(&self.buf);
        }
        if whole_connection {
            Served::Handover(self.client)
        } else {
            Served::Fallback(self.client)
        }
    }
}

/// What to do with one request that the fast path takes.
struct Plan {
    app: Arc<AppEntry>,
    /// Over the app's rate limit: answer 429 after this wait.
    limited: Option<Duration>,
}

/// How a request ended for its connection.
enum After {
    KeepAlive,
    Close,
}

/// A request id: the client's own when short and plain, else 32 random hex digits.
struct RequestId {
    bytes: [u8; 128],
    len: usize,
}

impl RequestId {
    fn for_request(given: Option<&[u8]>) -> Self {
        let mut id = RequestId {
            bytes: [0; 128],
            len: 0,
        };
        match given {
            Some(v) if crate::proxy::sane_request_id_bytes(v) => {
                id.bytes[..v.len()].copy_from_slice(v);
                id.len = v.len();
            }
            _ => {
                id.bytes[..32].copy_from_slice(&crate::proxy::new_request_id_hex());
                id.len = 32;
            }
        }
        id
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn as_str(&self) -> &str {
        // Checked to be ASCII (given) or hex (made).
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// What went wrong with the upstream exchange.
enum Failed {
    /// Nothing reached the client: answer 502.
    BeforeResponse,
    /// The answer had begun, or the client is gone: close.
    Midway,
}

impl FastPath {
    /// Serves `stream`'s requests until it closes or a request needs the full path.
    pub async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) -> Served {
        // Only plain TCP connections (HTTPS has its own accept loop and goes to Pingora).
        if !stream.as_any().is::<L4Stream>() {
            return Served::Handover(stream);
        }
        let Ok(client) = stream.into_any().downcast::<L4Stream>() else {
            return Served::Closed; // checked just above
        };
        use pingora_core::protocols::GetSocketDigest;
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let ip = peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        let mut conn = Conn {
            client,
            peer,
            ip,
            buf: Vec::with_capacity(SMALL_BUF),
            out: Vec::with_capacity(1024),
            up_buf: Vec::new(),
        };
        let mut closing = self.closing.subscribe();
        loop {
            let head = match self.next_head(&mut conn, &mut closing).await {
                Some(Ok(head)) => head,
                Some(Err(unfit)) => return conn.fallback(unfit != head::Unfit::Framing),
                None => return Served::Closed,
            };
            let Some(plan) = self.plan(&conn, &head) else {
                return conn.fallback(false);
            };
            match self.proxy_one(&mut conn, &head, plan, shutdown).await {
                After::KeepAlive => {}
                After::Close => return Served::Closed,
            }
        }
    }

    /// Reads until the buffer starts with a complete request head. `None`: the connection is
    /// done (closed, idle too long, slow head, or the service is closing while it idles).
    async fn next_head(
        &self,
        conn: &mut Conn,
        closing: &mut watch::Receiver<bool>,
    ) -> Option<Result<RequestHead, head::Unfit>> {
        let mut head_deadline = None;
        loop {
            if !conn.buf.is_empty() {
                match head::parse_request(&conn.buf, &mut conn.out) {
                    Ok(Some(head)) => return Some(Ok(head)),
                    Ok(None) if conn.buf.len() >= READ_BUF => {
                        return Some(Err(head::Unfit::Head));
                    }
                    Ok(None) => {}
                    Err(unfit) => return Some(Err(unfit)),
                }
            }
            let deadline = if conn.buf.is_empty() {
                tokio::time::Instant::now() + self.proxy.settings.keepalive
            } else {
                *head_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.header_timeout)
            };
            // Grows up to READ_BUF when a head needs it (then parse says Unfit::Head).
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(SMALL_BUF.min(READ_BUF - conn.buf.len()));
            }
            let read = tokio::select! {
                biased;
                r = tokio::time::timeout_at(deadline, conn.client.read_buf(&mut conn.buf)) => r,
                _ = closing.wait_for(|c| *c), if conn.buf.is_empty() => return None,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Whether the fast path takes this request, and for which app.
    fn plan(&self, conn: &Conn, head: &RequestHead) -> Option<Plan> {
        let buf = &conn.buf;
        let host = normalize_host(&buf[head.host.clone()?])?;
        let path = &buf[head.path.clone()];
        let tls = &self.proxy.tls;
        if path.starts_with(crate::challenge::CHALLENGE_PATH.as_bytes())
            || tls.has_trusted_cert(&host)
        {
            return None; // an ACME token or a redirect to HTTPS
        }
        let app = self.proxy.snapshot.load().lookup(&host)?.clone();
        let policy = &app.policy;
        if app.upstreams.is_empty()
            || head.len as u64 > policy.max_header_bytes
            || head.content_length > policy.max_body_bytes
        {
            return None; // wake-and-hold, or an error page with its own wording
        }
        if policy.compression
            && head
                .accept_encoding
                .clone()
                .and_then(|r| crate::compress::negotiate(&buf[r]))
                .is_some()
        {
            return None; // the answer may be compressed: the full path's encoders do that
        }
        let limited = policy
            .rate_limit
            .as_ref()
            .and_then(|limit| self.proxy.rate_limited(conn.ip, &app, limit));
        Some(Plan { app, limited })
    }

    /// Proxies one request (or answers it with 429 or 502).
    async fn proxy_one(
        &self,
        conn: &mut Conn,
        head: &RequestHead,
        plan: Plan,
        shutdown: &ShutdownWatch,
    ) -> After {
        let _in_flight = InFlight::start(&self.proxy.in_flight);
        let started = Instant::now();
        let app = plan.app;
        app.runtime.touch(now_ms());
        let id = RequestId::for_request(head.request_id.clone().map(|r| &conn.buf[r]));
        let method =
            http::Method::from_bytes(&conn.buf[head.method.clone()]).unwrap_or(http::Method::GET);
        let body_here = (conn.buf.len() - head.len).min(head.content_length as usize);
        let body_left = head.content_length - body_here as u64;
        let close = head.close || *shutdown.borrow();

        if let Some(wait) = plan.limited {
            tracing::debug!(app = %app.name, "rate limited");
            app.runtime.metrics().rate_limited();
            let error = EdgeError::RateLimited { retry_after: wait };
            // An unread body would be taken for the next request: close instead.
            let close = close || body_left > 0;
            let sent = self.answer(conn, head, error, &id, close).await;
            self.finish(
                conn,
                head,
                &app,
                &id,
                &method,
                error.status(),
                started,
                sent,
            );
            return if close || sent.is_none() {
                After::Close
            } else {
                conn.buf.drain(..head.len + body_here);
                After::KeepAlive
            };
        }

        // `conn.out` holds the upstream head as `next_head` began it.
        let host = head.host.clone().map_or(&[][..], |r| &conn.buf[r]);
        head::finish_upstream_request(&mut conn.out, conn.ip, host, id.as_bytes());
        conn.out
            .extend_from_slice(&conn.buf[head.len..head.len + body_here]);
        let rules = ResponseRules {
            request_id: id.as_bytes(),
            head_request: method == http::Method::HEAD,
            compression: app.policy.compression,
            security: {
                let sec = &app.policy.security_headers;
                [
                    (
                        "x-content-type-options",
                        sec.content_type_options.as_deref(),
                    ),
                    ("referrer-policy", sec.referrer_policy.as_deref()),
                    ("x-frame-options", sec.frame_options.as_deref()),
                ]
            },
            close,
        };
        let replayable = method.is_idempotent() && head.content_length == 0;
        let result = self
            .exchange(conn, &app, &rules, body_left, replayable)
            .await;
        let (status, sent, after) = match result {
            Ok((status, sent, keep)) => (status, Some(sent), keep),
            Err(Failed::BeforeResponse) => {
                app.runtime.metrics().upstream_error();
                let sent = self
                    .answer(conn, head, EdgeError::BadGateway, &id, true)
                    .await;
                (502, sent, false)
            }
            Err(Failed::Midway) => {
                app.runtime.metrics().upstream_error();
                (0, None, false)
            }
        };
        self.finish(conn, head, &app, &id, &method, status, started, sent);
        if after && !close {
            conn.buf.drain(..head.len + body_here);
            After::KeepAlive
        } else {
            After::Close
        }
    }

    /// Sends the request (its head and body already in `conn.out`, `body_left` bytes of body
    /// still to come from the client) and passes the answer back. `Ok((status, body bytes sent,
    /// whether the client connection can take another request))`.
    async fn exchange(
        &self,
        conn: &mut Conn,
        app: &AppEntry,
        rules: &ResponseRules<'_>,
        body_left: u64,
        replayable: bool,
    ) -> Result<(u16, u64, bool), Failed> {
        let n = app.upstreams.len();
        let first = app.runtime.next_upstream();
        let mut attempt = 0;
        let mut replays_left = 1u8;
        let mut fresh_only = false;
        let (mut up, addr, _load, status_head) = 'attempts: loop {
            let addr = choose_upstream(app, first, attempt);
            let pooled = if fresh_only { None } else { pool::take(addr) };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) if replayable || still_open(&up) => up,
                Some(_) => {
                    // Closed while idle: so probably are the others; the next try connects anew.
                    pool::forget(addr);
                    fresh_only = true;
                    continue;
                }
                None => match connect(addr).await {
                    Ok(up) => up,
                    Err(e) => {
                        tracing::debug!(upstream = %addr, error = %e, "connect to a spinlet failed");
                        app.runtime.metrics().connect_failure();
                        if app.runtime.breakers.failure(addr, now_ms()) {
                            tracing::warn!(app = %app.name, upstream = %addr, "upstream failing; skipping it for a while");
                        }
                        attempt += 1;
                        fresh_only = false;
                        if attempt < n {
                            continue; // nothing was sent: any method may try the next one
                        }
                        return Err(Failed::BeforeResponse);
                    }
                },
            };
            let load = app.runtime.loads.start(addr);
            // Failed before any answer: try again where that is safe (see `retry_after`).
            macro_rules! failed_before_answer {
                () => {
                    match retry_after(reused, replayable, &mut replays_left, attempt, n) {
                        Retry::Fresh => {
                            pool::forget(addr);
                            fresh_only = true;
                            continue 'attempts;
                        }
                        Retry::Next => {
                            app.runtime.breakers.failure(addr, now_ms());
                            attempt += 1;
                            fresh_only = false;
                            continue 'attempts;
                        }
                        Retry::No => {
                            if reused {
                                pool::forget(addr);
                            }
                            app.runtime.breakers.failure(addr, now_ms());
                            return Err(Failed::BeforeResponse);
                        }
                    }
                };
            }
            if up.write_all(&conn.out).await.is_err() {
                failed_before_answer!();
            }
            if body_left > 0 {
                copy_body(&mut conn.client, &mut up, &mut conn.up_buf, body_left).await?;
            }
            // Interim (1xx) answers pass on as they come; then the final head.
            conn.up_buf.clear();
            let mut interim_sent = false;
            loop {
                if !conn.up_buf.is_empty() {
                    conn.out.clear();
                    match head::rewrite_response(&conn.up_buf, &mut conn.out, rules) {
                        Ok(Some(h)) if h.status < 200 => {
                            write_client(&mut conn.client, &conn.out).await?;
                            conn.up_buf.drain(..h.len);
                            interim_sent = true;
                            continue;
                        }
                        Ok(Some(h)) => break 'attempts (up, addr, load, h),
                        Ok(None) if conn.up_buf.len() < RESPONSE_HEAD_MAX => {}
                        Ok(None) | Err(head::Malformed) => {
                            tracing::debug!(upstream = %addr, "unreadable response head");
                            return Err(Failed::BeforeResponse);
                        }
                    }
                }
                conn.up_buf.reserve(SMALL_BUF);
                match up.read_buf(&mut conn.up_buf).await {
                    Ok(0) | Err(_) if conn.up_buf.is_empty() && !interim_sent => {
                        failed_before_answer!();
                    }
                    Ok(0) | Err(_) => {
                        app.runtime.breakers.failure(addr, now_ms());
                        return Err(if interim_sent {
                            Failed::Midway
                        } else {
                            Failed::BeforeResponse
                        });
                    }
                    Ok(_) => {}
                }
            }
        };
        app.runtime.breakers.success(addr);
        let h = status_head;
        let _stream = h.event_stream.then(|| app.runtime.open_stream());
        let body = &conn.up_buf[h.len..];
        let mut sent = 0u64;
        let mut upstream_reusable = h.upstream_keepalive;
        let mut client_reusable = true;
        match h.body {
            BodyLength::None => {
                upstream_reusable &= body.is_empty();
                write_client(&mut conn.client, &conn.out).await?;
            }
            BodyLength::Exactly(len) => {
                let here = (body.len() as u64).min(len) as usize;
                upstream_reusable &= body.len() as u64 <= len;
                conn.out.extend_from_slice(&body[..here]);
                write_client(&mut conn.client, &conn.out).await?;
                sent += here as u64;
                let mut left = len - here as u64;
                while left > 0 {
                    let n = read_some(&mut up, &mut conn.up_buf, left).await?;
                    write_client(&mut conn.client, &conn.up_buf[..n]).await?;
                    left -= n as u64;
                    sent += n as u64;
                }
            }
            BodyLength::Chunked => {
                let mut chunks = Chunks::new();
                let used = chunks
                    .feed(body)
                    .map_err(|head::Malformed| Failed::Midway)?;
                upstream_reusable &= used == body.len();
                conn.out.extend_from_slice(&body[..used]);
                write_client(&mut conn.client, &conn.out).await?;
                sent += used as u64;
                while !chunks.done() {
                    let n = read_some(&mut up, &mut conn.up_buf, BODY_CHUNK as u64).await?;
                    let used = chunks
                        .feed(&conn.up_buf[..n])
                        .map_err(|head::Malformed| Failed::Midway)?;
                    upstream_reusable &= used == n;
                    write_client(&mut conn.client, &conn.up_buf[..used]).await?;
                    sent += used as u64;
                }
            }
            BodyLength::UntilClose => {
                upstream_reusable = false;
                client_reusable = false;
                conn.out.extend_from_slice(body);
                write_client(&mut conn.client, &conn.out).await?;
                sent += body.len() as u64;
                loop {
                    conn.up_buf.clear();
                    conn.up_buf.reserve(BODY_CHUNK);
                    match up.read_buf(&mut conn.up_buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            write_client(&mut conn.client, &conn.up_buf[..n]).await?;
                            sent += n as u64;
                        }
                        Err(_) => return Err(Failed::Midway),
                    }
                }
            }
        }
        if upstream_reusable {
            pool::put(addr, up);
        }
        // Large bodies grew the buffer; an idle connection gives that back.
        if conn.up_buf.capacity() > 2 * SMALL_BUF {
            conn.up_buf = Vec::new();
        }
        Ok((h.status, sent, client_reusable))
    }

    /// Writes one of the edge's own pages. `Some(body bytes)` when it was sent.
    async fn answer(
        &self,
        conn: &mut Conn,
        head: &RequestHead,
        error: EdgeError,
        id: &RequestId,
        close: bool,
    ) -> Option<u64> {
        let accept = head.accept.clone().map(|r| &conn.buf[r]);
        let (page, body) = error.render(accept, id.as_str()).ok()?;
        let out = &mut conn.out;
        out.clear();
        let status = page.status;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in page.headers.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        write_client(&mut conn.client, &conn.out).await.ok()?;
        Some(body.len() as u64)
    }

    /// Counts and logs a finished request (`sent`: body bytes, `None` when the answer failed).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        conn: &Conn,
        head: &RequestHead,
        app: &AppEntry,
        id: &RequestId,
        method: &http::Method,
        status: u16,
        started: Instant,
        sent: Option<u64>,
    ) {
        let took = started.elapsed();
        self.proxy.metrics.fast_path_request();
        app.runtime.touch(now_ms());
        app.runtime
            .metrics()
            .request(method_index(method), status, took);
        log_access(self.proxy.settings.access_log, || {
            let text = |r: Option<std::ops::Range<usize>>| {
                r.and_then(|r| std::str::from_utf8(&conn.buf[r]).ok())
                    .unwrap_or("")
            };
            AccessLine {
                request_id: id.as_str(),
                app: &app.name,
                client: conn.peer.as_ref().map(|a| a as &dyn std::fmt::Display),
                host: text(head.host.clone()),
                method,
                path: text(Some(head.path.clone()))
                    .split('?')
                    .next()
                    .unwrap_or(""),
                status,
                took,
                body_bytes: sent.unwrap_or(0),
                cold_start: None,
                error: sent
                    .is_none()
                    .then_some(&"the answer could not be completed" as &dyn std::fmt::Display),
            }
        });
    }
}

/// Where to send a request again whose exchange failed before any byte of an answer.
enum Retry {
    /// A new connection to the same upstream: the pooled one had been closed by it.
    Fresh,
    /// The next upstream.
    Next,
    No,
}

/// As NGINX's `proxy_next_upstream error`: only a request that is idempotent and has no body is
/// sent again once its bytes went out — once more on a fresh connection if it went out on a
/// pooled one (the upstream had closed it while idle), else to the next upstream (this one is
/// failing, or its process died with the request in its accept queue). Others get a 502.
fn retry_after(
    reused: bool,
    replayable: bool,
    replays_left: &mut u8,
    attempt: usize,
    upstreams: usize,
) -> Retry {
    if !replayable {
        Retry::No
    } else if reused && *replays_left > 0 {
        *replays_left -= 1;
        Retry::Fresh
    } else if attempt + 1 < upstreams {
        Retry::Next
    } else {
        Retry::No
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let up = tokio::time::timeout(crate::proxy::CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    up.set_nodelay(true)?;
    Ok(up)
}

/// Whether a pooled connection is still open (a read that would block), for requests that must
/// not be replayed. One non-blocking read: no bytes are expected from an idle upstream.
fn still_open(up: &TcpStream) -> bool {
    matches!(up.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Moves `len` body bytes from the client to the upstream (never reading past the body).
async fn copy_body(
    client: &mut L4Stream,
    up: &mut TcpStream,
    scratch: &mut Vec<u8>,
    mut len: u64,
) -> Result<(), Failed> {
    scratch.clear();
    scratch.resize(BODY_CHUNK, 0);
    while len > 0 {
        let want = (len as usize).min(BODY_CHUNK);
        let read = tokio::time::timeout(CLIENT_IO_TIMEOUT, client.read(&mut scratch[..want]));
        let n = match read.await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(Failed::Midway), // gone mid-upload
            Ok(Ok(n)) => n,
        };
        up.write_all(&scratch[..n])
            .await
            .map_err(|_| Failed::BeforeResponse)?;
        len -= n as u64;
    }
    Ok(())
}

/// Reads at most `limit` bytes from the upstream into `buf` (replacing its contents).
async fn read_some(up: &mut TcpStream, buf: &mut Vec<u8>, limit: u64) -> Result<usize, Failed> {
    buf.clear();
    buf.resize(BODY_CHUNK, 0);
    let want = (limit as usize).min(BODY_CHUNK);
    match up.read(&mut buf[..want]).await {
        Ok(0) | Err(_) => Err(Failed::Midway),
        Ok(n) => Ok(n),
    }
}

async fn write_client(client: &mut L4Stream, bytes: &[u8]) -> Result<(), Failed> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match tokio::time::timeout(CLIENT_IO_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Failed::Midway),
    }
}
