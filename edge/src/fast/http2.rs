//! HTTP/2 served by the edge itself, on the `h2` crate: over TLS (ALPN `h2`) and, with
//! `edge.h2c`, in clear text with prior knowledge. Each stream is one request, proxied to an
//! HTTP/1.1 upstream from the same thread-local pool as the HTTP/1.1 fast path, through the same
//! exchange ([`super::upstream`]), the same request policy, the same answer-head rewrite
//! ([`super::head::rewrite_response`] into [`H2Head`]) and the same compression. What Pingora
//! did per stream (a session object, header maps, a body task and channels, its own upstream
//! pool) cost twice NGINX's CPU per request on the bench; this is one task per stream.
//!
//! Bounds: 100 concurrent streams per connection, 64 KiB of header list per request, flow
//! control both ways (a slow client holds at most a window of a body, never a whole one), a
//! client that resets streams faster than it opens them is cut off (the `h2` crate's limit), an
//! idle connection (no stream) closes after `edge.keepalive_timeout`, and on shutdown a GOAWAY
//! lets streams in flight finish.

use super::head::{self, H2Head, ResponseHead, ResponseRules};
use super::upstream::{self, Front};
use super::{Chunks, Failed, FastPath, RequestId, SMALL_BUF, pool};
use crate::compress::{self, Encoder};
use crate::errors::EdgeError;
use crate::metrics::method_index;
use crate::policy::{self, Forward, RequestBody, ResponseBody};
use crate::proxy::{AccessLine, log_access};
use crate::routing::AppEntry;
use crate::routing::drain::{self, EventEnds};
use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use pingora_core::server::ShutdownWatch;
use spinforge_state::now_ms;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Streams one connection may have open at once.
const MAX_STREAMS: u32 = 100;
/// The largest header list a request may have (decoded).
const MAX_HEADER_LIST: u32 = 64 << 10;
/// Flow-control windows: per stream, and for the whole connection (request bodies).
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 1 << 20;
/// Reading an upstream body, at most this much at a time.
const READ_CHUNK: usize = 32 << 10;

/// The client of one HTTP/2 connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    pub tls: bool,
    pub ip: Option<IpAddr>,
    pub addr: Option<std::net::SocketAddr>,
}

impl FastPath {
    /// Serves an HTTP/2 connection (after the TLS handshake chose `h2`, or an h2c preface)
    /// until the client or the edge ends it.
    pub(super) async fn serve_h2<S>(&self, io: S, peer: Peer, shutdown: &ShutdownWatch)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = h2::server::Builder::new();
        builder
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let header_timeout = self.proxy.settings.load().header_timeout;
        let handshake = tokio::time::timeout(header_timeout, builder.handshake(io));
        let mut conn = match handshake.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
            Err(_) => return,
        };
        let open = Arc::new(OpenStreams::default());
        // What every stream of this connection shares, made once (not per stream).
        let shared = Arc::new(StreamShared {
            proxy: self.proxy.clone(),
        });
        let keepalive = self.proxy.settings.load().keepalive;
        let mut shutdown = shutdown.clone();
        let closing = self.closing.clone();
        let mut going_away = false;
        loop {
            let idle = open.count.load(Ordering::Acquire) == 0;
            let next = tokio::select! {
                next = conn.accept() => next,
                // The last stream ended: look again (the keep-alive timeout starts now).
                _ = open.none_left.notified(), if !idle => continue,
                _ = shutdown.wait_for(|s| *s), if !going_away => {
                    conn.graceful_shutdown(); // GOAWAY: streams in flight finish
                    going_away = true;
                    continue;
                }
                _ = closing.cancelled(), if !going_away && idle => {
                    conn.graceful_shutdown();
                    going_away = true;
                    continue;
                }
                _ = tokio::time::sleep(keepalive), if idle && !going_away => {
                    conn.graceful_shutdown(); // idle for the keep-alive timeout
                    going_away = true;
                    continue;
                }
            };
            match next {
                Some(Ok((request, respond))) => {
                    let stream = Stream {
                        fast: shared.clone(),
                        peer,
                        _open: Open::start(&open),
                    };
                    tokio::spawn(stream.serve(request, respond));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return;
                }
                None => return,
            }
        }
    }
}

/// What every stream of a thread's connections needs (the proxy's shared state).
struct StreamShared {
    proxy: crate::proxy::EdgeProxy,
}

/// A connection's open streams, and a wake-up for its loop when the last one ends (so that
/// the keep-alive timeout and a graceful close apply after a connection's first request too).
#[derive(Default)]
struct OpenStreams {
    count: AtomicUsize,
    none_left: tokio::sync::Notify,
}

/// Counts a stream as open on its connection until dropped.
struct Open(Arc<OpenStreams>);

impl Open {
    fn start(open: &Arc<OpenStreams>) -> Self {
        open.count.fetch_add(1, Ordering::AcqRel);
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit if the loop is not waiting yet: no wake-up is lost.
            self.0.none_left.notify_one();
        }
    }
}

/// One request stream.
struct Stream {
    fast: Arc<StreamShared>,
    peer: Peer,
    _open: Open,
}

/// How a stream's request ended, for metrics and the access log.
struct Outcome {
    status: u16,
    sent: Option<u64>,
    app: Option<Arc<AppEntry>>,
    cold_start: Option<Duration>,
}

impl Stream {
    async fn serve(self, request: http::Request<RecvStream>, respond: SendResponse<Bytes>) {
        let proxy = &self.fast.proxy;
        let _in_flight = proxy.in_flight.token();
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let id = RequestId::for_request(parts.headers.get("x-request-id").map(|v| v.as_bytes()));
        let outcome = self.proxy(&parts, body, respond, &id).await;
        proxy.metrics.fast_path_request();
        let took = started.elapsed();
        match &outcome.app {
            Some(app) => {
                app.runtime.touch(now_ms());
                app.runtime
                    .metrics()
                    .request(method_index(&parts.method), outcome.status, took);
            }
            None => proxy.metrics.unrouted(outcome.status),
        }
        let host = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        log_access(proxy.settings.load().access_log, || AccessLine {
            request_id: id.as_str(),
            app: outcome.app.as_ref().map_or("", |a| &*a.name),
            client: self.peer.addr.as_ref().map(|a| a as &dyn std::fmt::Display),
            host,
            method: &parts.method,
            path: parts.uri.path(),
            status: outcome.status,
            took,
            body_bytes: outcome.sent.unwrap_or(0),
            cold_start: outcome.cold_start,
            error: outcome
                .sent
                .is_none()
                .then_some(&"the answer could not be completed" as &dyn std::fmt::Display),
        });
    }

    /// Everything between the request's head and the end of its answer.
    async fn proxy(
        &self,
        parts: &http::request::Parts,
        body: RecvStream,
        mut respond: SendResponse<Bytes>,
        id: &RequestId,
    ) -> Outcome {
        let proxy = &self.fast.proxy;
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .map(|v| v.as_bytes());
        let mut outcome = Outcome {
            status: 0,
            sent: None,
            app: None,
            cold_start: None,
        };
        macro_rules! refuse {
            ($error:expr) => {{
                let error: EdgeError = $error;
                outcome.status = error.status();
                outcome.sent = answer(&mut respond, error, accept, id);
                return outcome;
            }};
        }
        // The policy reads the head as it reads an HTTP/1.1 one; `:authority` stands for Host.
        let target = parts
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes());
        let authority = (!parts.headers.contains_key(http::header::HOST))
            .then(|| parts.uri.authority())
            .flatten()
            .map(|a| (&b"host"[..], a.as_str().as_bytes()));
        let facts = match policy::read_request(
            parts.method.as_str().as_bytes(),
            target,
            policy::Version::Http2,
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                .chain(authority),
        ) {
            Ok(f) => f,
            Err(e) => refuse!(e),
        };
        let Some(host) = facts.host().map(|h| h.into_owned()) else {
            refuse!(EdgeError::NoHost)
        };
        let trusted = proxy.tls.has_trusted_cert(&host);
        if !self.peer.tls && (facts.is_acme_challenge() || trusted) {
            // h2c: an ACME token or the redirect to HTTPS, as for HTTP/1.1.
            let (status, body, location) =
                crate::challenge::plain_answer(&proxy.tls, &host, &facts.path);
            outcome.status = status;
            outcome.sent = send_plain(&mut respond, status, body, location);
            return outcome;
        }
        let Some(entry) = proxy.snapshot.load().lookup(&host).cloned() else {
            refuse!(EdgeError::UnknownHost)
        };
        outcome.app = Some(entry.clone());
        let policy = entry.policy.clone();
        let head_size = policy::h2_head_size(&parts.uri, &parts.headers);
        if head_size as u64 > policy.max_header_bytes {
            refuse!(EdgeError::HeadersTooLarge)
        }
        if let RequestBody::Length(n) = facts.body
            && n > policy.max_body_bytes
        {
            refuse!(EdgeError::BodyTooLarge)
        }
        if let Some(limit) = &policy.rate_limit
            && let Some(wait) = proxy.rate_limited(self.peer.ip, &entry, limit)
        {
            entry.runtime.metrics().rate_limited();
            refuse!(EdgeError::RateLimited { retry_after: wait })
        }
        entry.runtime.touch(now_ms());
        let app = match proxy.ready_upstream(&host, &entry).await {
            Ok(ready) => {
                outcome.cold_start = ready.cold_start;
                ready.app
            }
            Err(e) => refuse!(e),
        };
        outcome.app = Some(app.clone());

        // The upstream's request head, as the fast path writes it.
        let mut request = Vec::with_capacity(512);
        request.extend_from_slice(parts.method.as_str().as_bytes());
        request.push(b' ');
        request.extend_from_slice(&facts.path);
        request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        request.extend_from_slice(facts.authority);
        request.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if policy::request_header(name.as_str().as_bytes(), &facts.connection) == Forward::Keep
            {
                head::push_header(&mut request, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        let has_body = !body.is_end_stream();
        let chunked = match facts.body {
            RequestBody::Length(n) => {
                let _ = write!(request, "content-length: {n}\r\n");
                false
            }
            _ if has_body => {
                request.extend_from_slice(b"transfer-encoding: chunked\r\n");
                true
            }
            _ => false,
        };
        let proto = if self.peer.tls { "https" } else { "http" };
        head::finish_upstream_request(
            &mut request,
            self.peer.ip,
            proto,
            facts.authority,
            id.as_bytes(),
        );
        let accepted = if policy.compression {
            facts.accept_encoding.and_then(compress::negotiate)
        } else {
            None
        };
        let rules = ResponseRules {
            request_id: id.as_bytes(),
            head_request: parts.method == http::Method::HEAD,
            policy: &app.policy,
            hsts: self.peer.tls && trusted,
            accepted,
            close: false,
        };
        let replayable = facts.replayable(parts.method.as_str().as_bytes()) && !has_body;
        let mut front = H2Front {
            request,
            body: has_body.then_some(body),
            chunked,
            max_body: policy.max_body_bytes,
            too_large: false,
            buf: Vec::with_capacity(SMALL_BUF),
            head: H2Head::default(),
            rules: &rules,
        };
        let answered = upstream::exchange_head(&app, replayable, &mut front).await;
        let mut answered = match answered {
            Ok(a) => a,
            Err(_) if front.too_large => refuse!(EdgeError::BodyTooLarge),
            Err(Failed::BeforeResponse) => {
                app.runtime.metrics().upstream_error();
                refuse!(EdgeError::BadGateway)
            }
            Err(Failed::Midway) => {
                app.runtime.metrics().upstream_error();
                respond.send_reset(h2::Reason::INTERNAL_ERROR);
                return outcome;
            }
        };
        let _stream = answered
            .head
            .event_stream
            .then(|| app.runtime.open_stream(answered.addr));
        outcome.status = answered.head.status;
        if let Some(d) = outcome.cold_start
            && let Ok(v) = http::HeaderValue::from_str(&format!("cold-start;dur={}", d.as_millis()))
        {
            front.head.headers.append("server-timing", v);
        }
        let buf = std::mem::take(&mut front.buf);
        let head = std::mem::take(&mut front.head);
        drop(front);
        let close = drain::close_time(&proxy.snapshot, &app.name, answered.addr);
        let passed = pass_body(&mut answered, buf, head, respond, close).await;
        match passed {
            Ok((sent, clean)) => {
                if clean {
                    pool::put(answered.addr, answered.up);
                }
                outcome.sent = Some(sent);
            }
            Err(()) => app.runtime.metrics().upstream_error(),
        }
        outcome
    }
}

/// The HTTP/2 front end of [`upstream::exchange_head`].
struct H2Front<'a> {
    /// The upstream's request head.
    request: Vec<u8>,
    /// The request body still to send (`None`: none, or sent).
    body: Option<RecvStream>,
    /// Sent with chunked framing (the client gave no length).
    chunked: bool,
    max_body: u64,
    /// The body passed `limits.body` (the exchange then fails; the answer is a 413).
    too_large: bool,
    buf: Vec<u8>,
    head: H2Head,
    rules: &'a ResponseRules<'a>,
}

impl Front for H2Front<'_> {
    fn request(&self) -> &[u8] {
        &self.request
    }

    async fn send_body(&mut self, up: &mut TcpStream) -> Result<(), Failed> {
        let Some(mut body) = self.body.take() else {
            return Ok(());
        };
        let mut total = 0u64;
        while let Some(data) = body.data().await {
            let Ok(data) = data else {
                return Err(Failed::Midway); // the client reset the stream
            };
            if data.is_empty() {
                continue; // an empty DATA frame (often the one that ends the stream): no chunk
            }
            let _ = body.flow_control().release_capacity(data.len());
            total += data.len() as u64;
            if total > self.max_body {
                self.too_large = true;
                return Err(Failed::BeforeResponse);
            }
            let written = if self.chunked {
                let mut size = [0u8; 20];
                let n = {
                    let mut w = &mut size[..];
                    let _ = write!(w, "{:x}\r\n", data.len());
                    20 - w.len()
                };
                up.write_all(&size[..n]).await.is_ok()
                    && up.write_all(&data).await.is_ok()
                    && up.write_all(b"\r\n").await.is_ok()
            } else {
                up.write_all(&data).await.is_ok()
            };
            if !written {
                return Err(Failed::BeforeResponse);
            }
        }
        // Trailers are not forwarded (HTTP/1.1 upstreams rarely take them).
        if self.chunked && up.write_all(b"0\r\n\r\n").await.is_err() {
            return Err(Failed::BeforeResponse);
        }
        Ok(())
    }

    fn answer_buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn read_head(&mut self) -> Result<Option<ResponseHead>, head::Malformed> {
        head::rewrite_response(&self.buf, &mut self.head, self.rules)
    }

    async fn interim(&mut self, len: usize) -> Result<(), Failed> {
        self.buf.drain(..len);
        Ok(())
    }
}

/// Sends the answer: its head, then its body from the upstream (decoded from its HTTP/1.1
/// framing, compressed when the rewrite chose to). `Ok((body bytes sent, the upstream
/// connection ended clean))`; `Err`: the answer was cut (the stream is reset).
/// An event stream ends early when its upstream drains: from `close` on, at the end of the
/// current event (see [`drain`]), with END_STREAM.
async fn pass_body(
    answered: &mut upstream::Answered,
    mut buf: Vec<u8>,
    mut head: H2Head,
    mut respond: SendResponse<Bytes>,
    close: impl std::future::Future<Output = ()>,
) -> Result<(u64, bool), ()> {
    let h = &answered.head;
    let up = &mut answered.up;
    let start = h.len;
    // A body of known length up to WHOLE_MAX is compressed whole and sent with its length.
    if let (Some(enc), ResponseBody::Length(len)) = (h.encode, h.body)
        && len <= compress::WHOLE_MAX
    {
        let end = start + len as usize;
        while buf.len() < end {
            buf.reserve(end - buf.len());
            match up.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Err(());
                }
                Ok(_) => {}
            }
        }
        let clean = h.upstream_keepalive && buf.len() == end;
        let mut out = Vec::new();
        if compress::compress_whole(enc, &buf[start..end], &mut out).is_err() {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return Err(());
        }
        head.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(out.len()),
        );
        let n = out.len() as u64;
        let mut stream = send_head(&mut respond, head, false)?;
        send_held(&mut stream, Bytes::from(out))?;
        return Ok((n, clean));
    }
    let no_body = h.body == ResponseBody::None;
    let mut stream = send_head(&mut respond, head, no_body)?;
    if no_body {
        return Ok((0, h.upstream_keepalive && buf.len() == start));
    }
    // A body of known length that came whole with the head (most small answers): handed over
    // as it is, without a copy.
    if let (None, ResponseBody::Length(len), false) = (h.encode, h.body, h.event_stream)
        && (buf.len() - start) as u64 >= len
    {
        let end = start + len as usize;
        let clean = h.upstream_keepalive && buf.len() == end;
        send_held(&mut stream, Bytes::from(buf).slice(start..end))?;
        return Ok((len, clean));
    }
    let mut encoder = match h.encode {
        Some(enc) => {
            Some(Encoder::new(enc).map_err(|_| stream.send_reset(h2::Reason::INTERNAL_ERROR))?)
        }
        None => None,
    };
    let mut clean = h.upstream_keepalive && h.body != ResponseBody::UntilClose;
    let mut chunks = Chunks::new();
    let mut left = match h.body {
        ResponseBody::Length(n) => n,
        _ => 0,
    };
    let mut sent = 0u64;
    let mut pending: &[u8] = &buf[start..];
    let mut read_buf: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut events = h.event_stream.then(EventEnds::default);
    let mut close = std::pin::pin!(close);
    // An event stream whose upstream drains: it ends at the next event end, by then at the latest.
    let mut ending: Option<tokio::time::Instant> = None;
    loop {
        // Decode what arrived into plain body bytes.
        let mut data: Vec<u8> = Vec::new();
        let end = match h.body {
            ResponseBody::Length(_) => {
                let here = (pending.len() as u64).min(left) as usize;
                clean &= pending.len() == here;
                data.extend_from_slice(&pending[..here]);
                left -= here as u64;
                left == 0
            }
            ResponseBody::Chunked => {
                let used = chunks
                    .feed_with(pending, |d| data.extend_from_slice(d))
                    .map_err(|head::Malformed| stream.send_reset(h2::Reason::INTERNAL_ERROR))?;
                clean &= used == pending.len();
                chunks.done()
            }
            ResponseBody::UntilClose => {
                data.extend_from_slice(pending);
                eof
            }
            ResponseBody::None => true,
        };
        let end = match events.as_mut() {
            Some(e) if ending.is_some() && !end => match e.until_between(&data) {
                Some(n) => {
                    data.truncate(n);
                    clean = false;
                    true
                }
                None => false,
            },
            Some(e) => {
                e.feed(&data);
                end
            }
            None => end,
        };
        let out = match encoder.as_mut() {
            Some(e) => e
                .encode(&data, end)
                .map_err(|_| stream.send_reset(h2::Reason::INTERNAL_ERROR))?,
            None => Bytes::from(data),
        };
        sent += out.len() as u64;
        send_all(&mut stream, out, end).await?;
        if end {
            return Ok((sent, clean));
        }
        read_buf.clear();
        read_buf.reserve(READ_CHUNK);
        let give_up = ending.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            read = up.read_buf(&mut read_buf) => match read {
                Ok(0) if h.body == ResponseBody::UntilClose => eof = true,
                Ok(0) | Err(_) => {
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Err(());
                }
                Ok(_) => {}
            },
            () = &mut close, if events.is_some() && ending.is_none() => {
                ending = Some(tokio::time::Instant::now() + drain::EVENT_END_GRACE);
            }
            () = tokio::time::sleep_until(give_up), if ending.is_some() => {
                // No event end came: the stream ends anyway (a client drops a partial event).
                stream.send_data(Bytes::new(), true).map_err(|_| ())?;
                return Ok((sent, false));
            }
        }
        pending = &read_buf;
    }
}

fn send_head(
    respond: &mut SendResponse<Bytes>,
    head: H2Head,
    end: bool,
) -> Result<SendStream<Bytes>, ()> {
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(head.status).map_err(|_| ())?;
    *response.headers_mut() = head.headers;
    respond.send_response(response, end).map_err(|e| {
        tracing::debug!(error = %e, "the client went away before its answer");
    })
}

/// Ends `stream` with `data`, a whole body the edge already holds in memory: h2 takes it at
/// once and sends it as the client's window allows. One call instead of [`send_all`]'s
/// reserve-and-wait per window (each a lock of the connection's state): nothing more is held
/// than already was, and the body is at most [`compress::WHOLE_MAX`] or a read buffer.
fn send_held(stream: &mut SendStream<Bytes>, data: Bytes) -> Result<(), ()> {
    stream.send_data(data, true).map_err(|_| ())
}

/// Sends `data` on `stream` as the client's flow-control window allows (never more buffered
/// than the window: a slow reader holds the edge to that).
async fn send_all(stream: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), ()> {
    if data.is_empty() {
        if end {
            stream.send_data(Bytes::new(), true).map_err(|_| ())?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let capacity = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(_)) | None => return Err(()), // the client reset the stream or left
        };
        if capacity == 0 {
            continue;
        }
        let chunk = data.split_to(capacity.min(data.len()));
        stream
            .send_data(chunk, end && data.is_empty())
            .map_err(|_| ())?;
    }
    Ok(())
}

/// One of the edge's own pages on a stream. `Some(body bytes)` when it was sent.
fn answer(
    respond: &mut SendResponse<Bytes>,
    error: EdgeError,
    accept: Option<&[u8]>,
    id: &RequestId,
) -> Option<u64> {
    let (page, body) = error.render(accept, id.as_str()).ok()?;
    let mut response = http::Response::new(());
    *response.status_mut() = page.status;
    for (name, value) in page.headers.iter() {
        response.headers_mut().append(name.clone(), value.clone());
    }
    if let Ok(v) = http::HeaderValue::from_bytes(id.as_bytes()) {
        response.headers_mut().insert("x-request-id", v);
    }
    let mut stream = respond.send_response(response, false).ok()?;
    let n = body.len() as u64;
    // An error page is small: it fits the initial window.
    stream.send_data(body, true).ok()?;
    Some(n)
}

/// A plain-HTTP duty answered on an h2c stream (an ACME token, a redirect to HTTPS).
fn send_plain(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    body: String,
    location: Option<String>,
) -> Option<u64> {
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(status).ok()?;
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    h.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    if let Some(l) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        h.insert(http::header::LOCATION, l);
    }
    let n = body.len() as u64;
    let mut stream = respond.send_response(response, body.is_empty()).ok()?;
    if !body.is_empty() {
        stream.send_data(Bytes::from(body), true).ok()?;
    }
    Some(n)
}
