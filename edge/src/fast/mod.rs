//! The fast path: HTTP/1.1 requests to a running app, plain or over TLS, proxied without
//! Pingora's per-request machinery (its session objects, body tasks and channels, header maps,
//! per-request allocations), which cost about twice NGINX's CPU per request on the bench.
//!
//! Every HTTP/1 connection starts here. Each request head is read into the connection's buffer
//! (never more than the largest `limits.headers` of any app: a longer head is answered 431 here)
//! and parsed once; the one request policy ([`crate::policy`]) reads it; a request the fast path
//! takes is written to a pooled upstream connection with its head rewritten by that policy, and
//! the answer passed back under the same policy — compressed here when the client and the app's
//! policy call for it ([`crate::compress::decision`], the full path's rule). Anything else
//! ([`head::Unfit`], an unknown host, a stopped app, an ACME token or an HTTPS redirect, a body
//! over the limit) is handed to Pingora with its complete head put back, and that path answers
//! it from the same policy; the connection comes back here after it. Pingora never reads an
//! HTTP/1 request head from the network (only HTTP/2's, which its own limits bound).
//!
//! An upstream connection is reused only when proven clean: its answer was framed and read to
//! its exact end with nothing after it, the policy found no reason to doubt that end, and when
//! taken from the pool it is neither readable nor closed (one non-blocking peek).
//!
//! The same rules hold as on the full path: no lock or store call (the routing snapshot, atomics,
//! a thread-local pool); rate limits, per-upstream load counts, breakers and metrics are shared;
//! a request is retried on another upstream when nothing of it was sent, and one whose bytes
//! went out only when it is idempotent and bodiless (NGINX's `proxy_next_upstream error`).

pub mod head;
mod http2;
mod pool;
pub mod rewound;
mod upstream;

use crate::errors::EdgeError;
use crate::metrics::method_index;
use crate::policy::ResponseBody;
use crate::proxy::{AccessLine, EdgeProxy, log_access};
use crate::routing::drain::{self, EventEnds};
use crate::routing::{AppEntry, normalize_host};
use head::{Chunks, Parsed, RequestHead, ResponseRules};
use pingora_core::protocols::Stream;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use rewound::Rewound;
use spinforge_state::now_ms;
use spinforge_state::stop::CancellationToken;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    /// Its settings (`edge.header_timeout`, `edge.h2c`, …) are read per connection and request
    /// from `proxy.settings`, so that a reload applies to the next one.
    pub proxy: EdgeProxy,
    /// Cancelled when the service's cleanup runs: idle keep-alive connections close.
    pub closing: CancellationToken,
}

/// What reading the next request head found.
enum Next {
    Head(RequestHead),
    /// HTTP/2's prior-knowledge preface: the connection is Pingora's (h2c).
    Http2,
    /// Not a request, or a head longer than any app accepts: answered here, then closed.
    Refuse(EdgeError),
    /// Nothing of a next request for [`crate::park::AFTER`] (plain connections only): to be
    /// parked until its keep-alive deadline.
    Idle(tokio::time::Instant),
}

/// A connection as the fast path finds it.
enum Kind {
    Plain(Box<L4Stream>),
    Tls(Box<Rewound>),
    /// HTTP/2 over TLS (ALPN `h2`): served by [`http2`].
    Http2(Stream),
    Other(Stream),
}

/// How a connection left the fast path.
#[derive(Debug)]
pub enum Served {
    /// Done with: closed, or to be closed.
    Closed,
    /// The next request is the full path's (its bytes are put back into the stream); the
    /// connection comes back afterwards.
    Fallback(Stream),
    /// The connection is the full path's from here on: HTTP/2's prior-knowledge preface.
    Handover(Stream),
    /// Idle, nothing read of a next request (plain TCP only): its socket alone, to be parked
    /// until `until` (its keep-alive deadline).
    Idle {
        socket: std::net::TcpStream,
        until: tokio::time::Instant,
    },
}

/// A client connection the fast path serves: read, written, and given bytes back for the full
/// path to read again.
trait Client:
    tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + pingora_core::protocols::GetSocketDigest
    + Unpin
    + Send
    + Sync
    + 'static
{
    /// Whether an idle connection can be held as its socket alone (see [`crate::park`]):
    /// plain TCP, not TLS, whose state is more than the socket.
    const PARKS: bool = false;

    fn put_back(&mut self, bytes: &[u8]);
    fn into_stream(self: Box<Self>) -> Stream;

    /// A second descriptor for the socket of a connection with nothing buffered, to hold it by
    /// once the connection is dropped; only called where [`Client::PARKS`].
    fn socket(&self) -> std::io::Result<std::net::TcpStream> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Plain TCP.
impl Client for L4Stream {
    const PARKS: bool = true;

    fn put_back(&mut self, bytes: &[u8]) {
        self.rewind(bytes);
    }

    fn into_stream(self: Box<Self>) -> Stream {
        self
    }

    /// A duplicate of the socket's descriptor (close-on-exec); dropping the stream then
    /// deregisters and closes the original. Pingora's stream buffers nothing for plain TCP (no
    /// read buffer, writes straight through), and the fast path parks only when it has read
    /// nothing.
    fn socket(&self) -> std::io::Result<std::net::TcpStream> {
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: the descriptor is the stream's, open while `self` is borrowed.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }.try_clone_to_owned()?;
        Ok(std::net::TcpStream::from(fd))
    }
}

/// TLS (HTTP/1.1 over it).
impl Client for Rewound {
    fn put_back(&mut self, bytes: &[u8]) {
        self.rewind(bytes);
    }

    fn into_stream(self: Box<Self>) -> Stream {
        self
    }
}

/// A client connection while the fast path has it.
struct Conn<C> {
    client: Box<C>,
    /// Over TLS (HTTPS).
    tls: bool,
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

impl<C: Client> Conn<C> {
    fn fallback(mut self, whole_connection: bool) -> Served {
        if !self.buf.is_empty() {
            self.client.put_back(&self.buf);
        }
        if whole_connection {
            Served::Handover(self.client.into_stream())
        } else {
            Served::Fallback(self.client.into_stream())
        }
    }
}

/// What to do with one request that the fast path takes.
struct Plan {
    app: Arc<AppEntry>,
    /// Over the app's rate limit: answer 429 after this wait.
    limited: Option<Duration>,
    /// Answers get the app's HSTS header (HTTPS, a trusted certificate).
    hsts: bool,
    /// The encoding the client accepts, when the app compresses.
    accepted: Option<crate::compress::Encoding>,
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
        match Self::classify(stream) {
            Kind::Plain(plain) => self.serve_on(plain, false, shutdown).await,
            Kind::Tls(tls) => self.serve_on(tls, true, shutdown).await,
            Kind::Http2(tls) => {
                let addr = tls
                    .get_socket_digest()
                    .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
                let peer = http2::Peer {
                    tls: true,
                    ip: addr.map(|a| a.ip()),
                    addr,
                };
                // Boxed: HTTP/2's future (~2 KB) would size every HTTP/1.1 connection's too.
                Box::pin(self.serve_h2(tls, peer, shutdown)).await;
                Served::Closed
            }
            Kind::Other(other) => Served::Handover(other),
        }
    }

    /// Plain TCP, or HTTP/1.1 over TLS (wrapped, on its first request, so that it can be put
    /// back into), or something for Pingora alone (HTTP/2 over TLS).
    fn classify(stream: Stream) -> Kind {
        use pingora_core::protocols::ALPN;
        if stream.as_any().is::<L4Stream>() {
            return match stream.into_any().downcast::<L4Stream>() {
                Ok(plain) => Kind::Plain(plain),
                Err(_) => unreachable!("checked just above"),
            };
        }
        if stream.as_any().is::<Rewound>() {
            return match stream.into_any().downcast::<Rewound>() {
                Ok(tls) => Kind::Tls(tls),
                Err(_) => unreachable!("checked just above"),
            };
        }
        if stream.get_ssl_digest().is_some() {
            return match stream.selected_alpn_proto() {
                Some(ALPN::H2) => Kind::Http2(stream),
                _ => Kind::Tls(Box::new(Rewound::new(stream))),
            };
        }
        Kind::Other(stream)
    }

    async fn serve_on<C: Client>(
        &self,
        client: Box<C>,
        tls: bool,
        shutdown: &ShutdownWatch,
    ) -> Served {
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let ip = peer.as_ref().and_then(|a| a.as_inet()).map(|a| a.ip());
        let mut conn = Conn {
            client,
            tls,
            peer,
            ip,
            buf: Vec::new(),
            out: Vec::new(),
            up_buf: Vec::new(),
        };
        let closing = &self.closing;
        loop {
            let head = match self.next_head(&mut conn, closing).await {
                Some(Next::Head(head)) => head,
                Some(Next::Http2) if self.proxy.settings.load().h2c => {
                    // h2c with prior knowledge: the preface read so far is put back.
                    let Conn {
                        mut client,
                        buf,
                        ip,
                        peer,
                        tls,
                        ..
                    } = conn;
                    client.put_back(&buf);
                    let peer = http2::Peer {
                        tls,
                        ip,
                        addr: peer.as_ref().and_then(|a| a.as_inet()).copied(),
                    };
                    // Boxed: rare, and its future would size every HTTP/1.1 connection's.
                    Box::pin(self.serve_h2(client, peer, shutdown)).await;
                    return Served::Closed;
                }
                Some(Next::Http2) => return conn.fallback(true),
                Some(Next::Refuse(error)) => {
                    let id = RequestId::for_request(None);
                    // Boxed: rare, and its future would size every connection's.
                    let sent = Box::pin(self.answer(&mut conn, None, error, &id, true)).await;
                    self.proxy.metrics.unrouted(error.status());
                    if sent.is_none() {
                        tracing::debug!("could not send the error page");
                    }
                    return Served::Closed;
                }
                Some(Next::Idle(until)) => match conn.client.socket() {
                    // Nothing read (`next_head` parks only then), so the socket is all there is;
                    // `conn` goes with this return, and the original descriptor with it.
                    Ok(socket) => return Served::Idle { socket, until },
                    // No descriptor to spare: it goes on waiting here.
                    Err(_) => continue,
                },
                None => return Served::Closed,
            };
            if head.unfit.is_some() {
                return conn.fallback(false);
            }
            let Some(plan) = self.plan(&conn, &head) else {
                return conn.fallback(false);
            };
            // Boxed: a request being proxied is the largest state of this future (~1.6 KB);
            // inline, it would size every connection's future for its whole life, idle
            // keep-alive ones included. One allocation per request is the price.
            match Box::pin(self.proxy_one(&mut conn, &head, plan, shutdown)).await {
                After::KeepAlive => {
                    // An idle keep-alive connection holds no buffers (~9 KiB with the upstream
                    // side's): they come back with its next request.
                    if conn.buf.is_empty() {
                        conn.buf = Vec::new();
                        conn.out = Vec::new();
                        conn.up_buf = Vec::new();
                    }
                }
                After::Close => return Served::Closed,
            }
        }
    }

    /// Reads until the buffer starts with a complete request head. `None`: the connection is
    /// done (closed, idle too long, slow head, or the service is closing while it idles).
    async fn next_head<C: Client>(
        &self,
        conn: &mut Conn<C>,
        closing: &CancellationToken,
    ) -> Option<Next> {
        let mut head_deadline = None;
        // Read once per request head: a reload applies from the next one.
        let (keepalive, header_timeout) = {
            let s = self.proxy.settings.load();
            (s.keepalive, s.header_timeout)
        };
        // No app takes a longer head: reading more would only cost memory.
        let max_head = self.proxy.snapshot.load().max_header_bytes() as usize;
        loop {
            if !conn.buf.is_empty() {
                match head::parse_request(&conn.buf, &mut conn.out) {
                    Parsed::Head(head) if head.len > max_head => {
                        return Some(Next::Refuse(EdgeError::HeadersTooLarge));
                    }
                    Parsed::Head(head) => return Some(Next::Head(head)),
                    Parsed::Partial if conn.buf.len() > max_head => {
                        return Some(Next::Refuse(EdgeError::HeadersTooLarge));
                    }
                    Parsed::Partial => {}
                    Parsed::Unparsable if conn.buf.starts_with(b"PRI * HTTP/2.0") => {
                        return Some(Next::Http2);
                    }
                    Parsed::Unparsable => return Some(Next::Refuse(EdgeError::BadRequest)),
                }
            }
            let deadline = if conn.buf.is_empty() {
                tokio::time::Instant::now() + keepalive
            } else {
                *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + header_timeout)
            };
            let room = (max_head + 1).saturating_sub(conn.buf.len()).max(1);
            let idle = conn.buf.capacity() == 0;
            // Grows only as a head needs it, to one byte past the largest allowed. An idle
            // connection has no buffer: it gets one when its next request's bytes arrive.
            if !idle && conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(SMALL_BUF.min(room));
            }
            let waiting = conn.buf.is_empty();
            // A plain connection with nothing read parks after a short wait: see crate::park.
            // Waiting, the deadline is the keep-alive's from now: no second clock read.
            let parks_at = (C::PARKS && idle && waiting && crate::park::AFTER < keepalive)
                .then(|| deadline - keepalive + crate::park::AFTER);
            let read = async {
                if idle {
                    read_first(&mut *conn.client, &mut conn.buf, room).await
                } else {
                    read_at_most(&mut *conn.client, &mut conn.buf, room).await
                }
            };
            let read = tokio::select! {
                biased;
                r = tokio::time::timeout_at(parks_at.unwrap_or(deadline), read) => r,
                _ = closing.cancelled(), if waiting => return None,
            };
            match read {
                Err(_) if parks_at.is_some() => return Some(Next::Idle(deadline)),
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Whether the fast path takes this request, and for which app.
    fn plan<C: Client>(&self, conn: &Conn<C>, head: &RequestHead) -> Option<Plan> {
        let buf = &conn.buf;
        let host = normalize_host(&buf[head.authority.clone()])?;
        let trusted = self.proxy.tls.has_trusted_cert(&host);
        if !conn.tls && (head.acme || trusted) {
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
        let accepted = if policy.compression {
            head.accept_encoding
                .clone()
                .and_then(|r| crate::compress::negotiate(&buf[r]))
        } else {
            None
        };
        let limited = policy
            .rate_limit
            .as_ref()
            .and_then(|limit| self.proxy.rate_limited(conn.ip, &app, limit));
        Some(Plan {
            app,
            limited,
            hsts: conn.tls && trusted,
            accepted,
        })
    }

    /// Proxies one request (or answers it with 429 or 502).
    async fn proxy_one<C: Client>(
        &self,
        conn: &mut Conn<C>,
        head: &RequestHead,
        plan: Plan,
        shutdown: &ShutdownWatch,
    ) -> After {
        let _in_flight = self.proxy.in_flight.token();
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
            let sent = self.answer(conn, Some(head), error, &id, close).await;
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
        let host = &conn.buf[head.authority.clone()];
        let proto = if conn.tls { "https" } else { "http" };
        head::finish_upstream_request(&mut conn.out, conn.ip, proto, host, id.as_bytes());
        conn.out
            .extend_from_slice(&conn.buf[head.len..head.len + body_here]);
        let rules = ResponseRules {
            request_id: id.as_bytes(),
            head_request: method == http::Method::HEAD,
            policy: &app.policy,
            hsts: plan.hsts,
            accepted: plan.accepted,
            close,
        };
        let replayable = head.replayable;
        let result = self
            .exchange(conn, &app, &rules, body_left, replayable)
            .await;
        let (status, sent, after) = match result {
            Ok((status, sent, keep)) => (status, Some(sent), keep),
            Err(Failed::BeforeResponse) => {
                app.runtime.metrics().upstream_error();
                let sent = self
                    .answer(conn, Some(head), EdgeError::BadGateway, &id, true)
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
    async fn exchange<C: Client>(
        &self,
        conn: &mut Conn<C>,
        app: &AppEntry,
        rules: &ResponseRules<'_>,
        body_left: u64,
        replayable: bool,
    ) -> Result<(u16, u64, bool), Failed> {
        let mut front = H1Front {
            conn: &mut *conn,
            rules,
            body_left,
        };
        let upstream::Answered {
            mut up,
            addr,
            _load,
            head: status_head,
        } = upstream::exchange_head(app, replayable, &mut front).await?;
        let h = status_head;
        let _stream = h.event_stream.then(|| app.runtime.open_stream(addr));
        if let Some(enc) = h.encode {
            let (sent, upstream_reusable) = pass_compressed(conn, &mut up, &h, enc).await?;
            if upstream_reusable {
                pool::put(addr, up);
            }
            if conn.up_buf.capacity() > 2 * SMALL_BUF {
                conn.up_buf = Vec::new();
            }
            // Chunked anew: the client's connection carries on whatever the upstream's framing.
            return Ok((h.status, sent, true));
        }
        if h.event_stream && matches!(h.body, ResponseBody::Chunked | ResponseBody::UntilClose) {
            let close = drain::close_time(&self.proxy.snapshot, &app.name, addr);
            let (sent, upstream_reusable, client_reusable) =
                pass_event_stream(conn, &mut up, &h, close).await?;
            if upstream_reusable {
                pool::put(addr, up);
            }
            if conn.up_buf.capacity() > 2 * SMALL_BUF {
                conn.up_buf = Vec::new();
            }
            return Ok((h.status, sent, client_reusable));
        }
        let body = &conn.up_buf[h.len..];
        let mut sent = 0u64;
        let mut upstream_reusable = h.upstream_keepalive;
        let mut client_reusable = true;
        match h.body {
            ResponseBody::None => {
                upstream_reusable &= body.is_empty();
                write_client(&mut *conn.client, &conn.out).await?;
            }
            ResponseBody::Length(len) => {
                let here = (body.len() as u64).min(len) as usize;
                upstream_reusable &= body.len() as u64 <= len;
                conn.out.extend_from_slice(&body[..here]);
                write_client(&mut *conn.client, &conn.out).await?;
                sent += here as u64;
                let mut left = len - here as u64;
                while left > 0 {
                    let n = read_some(&mut up, &mut conn.up_buf, left).await?;
                    write_client(&mut *conn.client, &conn.up_buf[..n]).await?;
                    left -= n as u64;
                    sent += n as u64;
                }
            }
            ResponseBody::Chunked => {
                let mut chunks = Chunks::new();
                // Nothing was sent yet: a body that starts malformed gets a 502 page.
                let used = chunks
                    .feed(body)
                    .map_err(|head::Malformed| Failed::BeforeResponse)?;
                upstream_reusable &= used == body.len();
                conn.out.extend_from_slice(&body[..used]);
                write_client(&mut *conn.client, &conn.out).await?;
                sent += used as u64;
                while !chunks.done() {
                    let n = read_some(&mut up, &mut conn.up_buf, BODY_CHUNK as u64).await?;
                    let used = chunks
                        .feed(&conn.up_buf[..n])
                        .map_err(|head::Malformed| Failed::Midway)?;
                    upstream_reusable &= used == n;
                    write_client(&mut *conn.client, &conn.up_buf[..used]).await?;
                    sent += used as u64;
                }
            }
            ResponseBody::UntilClose => {
                upstream_reusable = false;
                client_reusable = false;
                conn.out.extend_from_slice(body);
                write_client(&mut *conn.client, &conn.out).await?;
                sent += body.len() as u64;
                loop {
                    conn.up_buf.clear();
                    conn.up_buf.reserve(BODY_CHUNK);
                    match up.read_buf(&mut conn.up_buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            write_client(&mut *conn.client, &conn.up_buf[..n]).await?;
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
    async fn answer<C: Client>(
        &self,
        conn: &mut Conn<C>,
        head: Option<&RequestHead>,
        error: EdgeError,
        id: &RequestId,
        close: bool,
    ) -> Option<u64> {
        let accept = head.and_then(|h| h.accept.clone()).map(|r| &conn.buf[r]);
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
        write_client(&mut *conn.client, &conn.out).await.ok()?;
        Some(body.len() as u64)
    }

    /// Counts and logs a finished request (`sent`: body bytes, `None` when the answer failed).
    #[allow(clippy::too_many_arguments)]
    fn finish<C: Client>(
        &self,
        conn: &Conn<C>,
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
        log_access(self.proxy.settings.load().access_log, || {
            let text = |r: Option<std::ops::Range<usize>>| {
                r.and_then(|r| std::str::from_utf8(&conn.buf[r]).ok())
                    .unwrap_or("")
            };
            AccessLine {
                request_id: id.as_str(),
                app: &app.name,
                client: conn.peer.as_ref().map(|a| a as &dyn std::fmt::Display),
                host: text(Some(head.authority.clone())),
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

/// The HTTP/1.1 front end of [`upstream::exchange_head`]: the request is in `conn.out` (head and
/// the body bytes read with it), the rest of the body comes from the client, the answer head is
/// rewritten into `conn.out` and interim answers are written to the client as they come.
struct H1Front<'a, C> {
    conn: &'a mut Conn<C>,
    rules: &'a ResponseRules<'a>,
    body_left: u64,
}

impl<C: Client> upstream::Front for H1Front<'_, C> {
    fn request(&self) -> &[u8] {
        &self.conn.out
    }

    async fn send_body(&mut self, up: &mut TcpStream) -> Result<(), Failed> {
        if self.body_left > 0 {
            let conn = &mut *self.conn;
            copy_body(&mut *conn.client, up, &mut conn.up_buf, self.body_left).await?;
        }
        Ok(())
    }

    fn answer_buf(&mut self) -> &mut Vec<u8> {
        &mut self.conn.up_buf
    }

    fn read_head(&mut self) -> Result<Option<head::ResponseHead>, head::Malformed> {
        let conn = &mut *self.conn;
        conn.out.clear();
        head::rewrite_response(&conn.up_buf, &mut conn.out, self.rules)
    }

    async fn interim(&mut self, len: usize) -> Result<(), Failed> {
        let conn = &mut *self.conn;
        write_client(&mut *conn.client, &conn.out).await?;
        conn.up_buf.drain(..len);
        Ok(())
    }
}

/// An event stream's body (chunked, or until the upstream closes), passed on as it comes like
/// any other — until its upstream drains: from `close` on, the edge forwards to the end of the
/// current event (and chunk) and ends the body there, with its last chunk (without chunked
/// framing, by closing), so the client sees a complete stream and reconnects — to a spinlet that
/// serves. After [`drain::EVENT_END_GRACE`] without an event end it ends anyway. `Ok((body
/// bytes sent, upstream reusable, client reusable))`.
async fn pass_event_stream<C: Client>(
    conn: &mut Conn<C>,
    up: &mut TcpStream,
    h: &head::ResponseHead,
    close: impl std::future::Future<Output = ()>,
) -> Result<(u64, bool, bool), Failed> {
    let chunked = h.body == ResponseBody::Chunked;
    let mut chunks = Chunks::new();
    let mut events = EventEnds::default();
    let mut close = std::pin::pin!(close);
    // From the close time on: end at the next point between events, by then at the latest.
    let mut ending: Option<tokio::time::Instant> = None;
    let mut head_left = conn.out.len(); // the head is not body
    let mut sent = 0u64;
    let mut start = h.len;
    let mut eof = false;
    loop {
        let bytes = &conn.up_buf[start..];
        let malformed = |_| {
            if head_left > 0 {
                Failed::BeforeResponse // nothing sent yet: a 502 page
            } else {
                Failed::Midway
            }
        };
        let (used, stop) = match ending {
            None if chunked => (
                chunks
                    .feed_with(bytes, |d| events.feed(d))
                    .map_err(malformed)?,
                false,
            ),
            None => {
                events.feed(bytes);
                (bytes.len(), false)
            }
            Some(_) => {
                match end_of_event(&mut chunks, &mut events, bytes, chunked).map_err(malformed)? {
                    Some(n) => (n, true),
                    None => (bytes.len(), false),
                }
            }
        };
        let whole = used == bytes.len();
        conn.out
            .extend_from_slice(&conn.up_buf[start..start + used]);
        let done = chunks.done() || (eof && !chunked);
        if stop && chunked && !done {
            conn.out.extend_from_slice(b"0\r\n\r\n");
        }
        if !conn.out.is_empty() {
            write_client(&mut *conn.client, &conn.out).await?;
            sent += (conn.out.len() - head_left) as u64;
            head_left = 0;
            conn.out.clear();
        }
        if done {
            return Ok((sent, chunked && whole && h.upstream_keepalive, chunked));
        }
        if stop {
            // Ended before the upstream's body did: that connection is done with.
            return Ok((sent, false, chunked));
        }
        conn.up_buf.clear();
        start = 0;
        conn.up_buf.reserve(BODY_CHUNK);
        let give_up = ending.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            read = up.read_buf(&mut conn.up_buf) => match read {
                Ok(0) if !chunked => eof = true,
                Ok(0) | Err(_) => return Err(Failed::Midway),
                Ok(_) => {}
            },
            () = &mut close, if ending.is_none() => {
                ending = Some(tokio::time::Instant::now() + drain::EVENT_END_GRACE);
            }
            () = tokio::time::sleep_until(give_up), if ending.is_some() => {
                // No event end came: the body still ends properly where its framing allows.
                if chunked && chunks == Chunks::new() {
                    write_client(&mut *conn.client, b"0\r\n\r\n").await?;
                    return Ok((sent + 5, false, true));
                }
                return if chunked { Err(Failed::Midway) } else { Ok((sent, false, false)) };
            }
        }
    }
}

/// How much of `bytes` to pass on before the body can end between two events (and, chunked,
/// between two chunks); `None` when there is no such point in them (all of them were fed).
fn end_of_event(
    chunks: &mut Chunks,
    events: &mut EventEnds,
    bytes: &[u8],
    chunked: bool,
) -> Result<Option<usize>, head::Malformed> {
    if !chunked {
        return Ok(events.until_between(bytes));
    }
    let at_end = |c: &Chunks, e: &EventEnds| *c == Chunks::new() && e.between();
    if at_end(chunks, events) {
        return Ok(Some(0));
    }
    let mut i = 0;
    while i < bytes.len() && !chunks.done() {
        // A chunk's data in one step, its framing a byte at a time.
        let step = match *chunks {
            Chunks::Data(left) => (left as usize).min(bytes.len() - i),
            _ => 1,
        };
        chunks.feed_with(&bytes[i..i + step], |d| events.feed(d))?;
        i += step;
        if at_end(chunks, events) {
            return Ok(Some(i));
        }
    }
    Ok(chunks.done().then_some(i))
}

/// Passes an answer's body on compressed with `enc`, as HTTP/1.1 chunks: the head is in
/// `conn.out`, the upstream's bytes so far in `conn.up_buf` (head first). Returns the body bytes
/// sent and whether the upstream connection ended clean (its body ended where its framing said,
/// nothing after it).
async fn pass_compressed<C: Client>(
    conn: &mut Conn<C>,
    up: &mut TcpStream,
    h: &head::ResponseHead,
    enc: crate::compress::Encoding,
) -> Result<(u64, bool), Failed> {
    if let ResponseBody::Length(len) = h.body
        && len <= crate::compress::WHOLE_MAX
    {
        return pass_compressed_whole(conn, up, h, enc, len).await;
    }
    let mut encoder = crate::compress::Encoder::new(enc).map_err(|_| Failed::BeforeResponse)?;
    let mut head_left = conn.out.len(); // not body bytes: not counted as sent
    let mut sent = 0u64;
    let mut reusable = h.upstream_keepalive && !matches!(h.body, ResponseBody::UntilClose);
    let mut chunks = Chunks::new();
    let mut left = match h.body {
        ResponseBody::Length(n) => n,
        _ => 0,
    };
    // What the upstream sent beyond the head, then each read; `eof`: it closed.
    let mut start = h.len;
    let mut eof = false;
    loop {
        let bytes = &conn.up_buf[start..];
        let mut failed = false;
        let end = match h.body {
            ResponseBody::Length(_) => {
                let here = (bytes.len() as u64).min(left) as usize;
                reusable &= bytes.len() == here;
                left -= here as u64;
                failed |= encoder
                    .encode_chunked(&bytes[..here], left == 0, &mut conn.out)
                    .is_err();
                left == 0
            }
            ResponseBody::Chunked => {
                let (out, encoder) = (&mut conn.out, &mut encoder);
                let nothing_sent = sent == 0 && out.len() == head_left;
                let used = chunks
                    .feed_with(bytes, |data| {
                        failed |= encoder.encode_chunked(data, false, out).is_err();
                    })
                    .map_err(|head::Malformed| {
                        if nothing_sent {
                            Failed::BeforeResponse // a 502 page can still be sent
                        } else {
                            Failed::Midway
                        }
                    })?;
                reusable &= used == bytes.len();
                if chunks.done() {
                    failed |= encoder.encode_chunked(b"", true, out).is_err();
                }
                chunks.done()
            }
            ResponseBody::UntilClose => {
                failed |= encoder.encode_chunked(bytes, eof, &mut conn.out).is_err();
                eof
            }
            ResponseBody::None => unreachable!("only answers with a body are compressed"),
        };
        if failed {
            return Err(Failed::Midway);
        }
        if !conn.out.is_empty() {
            write_client(&mut *conn.client, &conn.out).await?;
            sent += (conn.out.len() - head_left) as u64;
            head_left = 0;
            conn.out.clear();
        }
        if end {
            return Ok((sent, reusable));
        }
        conn.up_buf.clear();
        start = 0;
        conn.up_buf.reserve(BODY_CHUNK);
        match up.read_buf(&mut conn.up_buf).await {
            Ok(0) if matches!(h.body, ResponseBody::UntilClose) => eof = true,
            Ok(0) | Err(_) => return Err(Failed::Midway),
            Ok(_) => {}
        }
    }
}

/// [`pass_compressed`] for a body of known length up to [`crate::compress::WHOLE_MAX`]: read
/// whole, compressed in one call, sent with its length in one write.
async fn pass_compressed_whole<C: Client>(
    conn: &mut Conn<C>,
    up: &mut TcpStream,
    h: &head::ResponseHead,
    enc: crate::compress::Encoding,
    len: u64,
) -> Result<(u64, bool), Failed> {
    let end = h.len + len as usize;
    while conn.up_buf.len() < end {
        conn.up_buf.reserve(end - conn.up_buf.len());
        match up.read_buf(&mut conn.up_buf).await {
            Ok(0) | Err(_) => return Err(Failed::BeforeResponse), // nothing sent yet: a 502
            Ok(_) => {}
        }
    }
    let reusable = h.upstream_keepalive && conn.up_buf.len() == end;
    let head_len = conn.out.len();
    crate::compress::compress_whole(enc, &conn.up_buf[h.len..end], &mut conn.out)
        .map_err(|_| Failed::BeforeResponse)?;
    let body = conn.out.split_off(head_len);
    if head::frame_by_length(&mut conn.out, body.len()) {
        conn.out.extend_from_slice(&body);
    } else {
        // (Not reached: the head ends as `rewrite_response` wrote it.) Chunked as announced.
        use std::io::Write as _;
        let _ = write!(conn.out, "{:x}\r\n", body.len());
        conn.out.extend_from_slice(&body);
        conn.out.extend_from_slice(b"\r\n0\r\n\r\n");
    }
    write_client(&mut *conn.client, &conn.out).await?;
    conn.out.clear();
    Ok((body.len() as u64, reusable))
}

/// Moves `len` body bytes from the client to the upstream (never reading past the body).
async fn copy_body<C: Client>(
    client: &mut C,
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

/// Reads at most `limit` more bytes from the client into `buf`'s spare capacity (appended).
async fn read_at_most<C: Client>(
    client: &mut C,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    use bytes::BufMut;
    client.read_buf(&mut buf.limit(limit)).await
}

thread_local! {
    /// Where a thread's idle connections read their next request's first bytes. Borrowed only
    /// within one poll, never across an await, so one per thread serves all its connections.
    static FIRST_READ: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SMALL_BUF].into_boxed_slice());
}

/// [`read_at_most`] for a connection that holds no buffer (idle between requests): it waits
/// without one, reads into the thread's [`FIRST_READ`] and moves what came into `buf`, which is
/// allocated only then. An idle keep-alive connection so costs no read buffer (NGINX too frees
/// its buffers while a connection idles).
async fn read_first<R: tokio::io::AsyncRead + Unpin + ?Sized>(
    client: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<usize> {
    use std::task::Poll;
    std::future::poll_fn(|cx| {
        FIRST_READ.with_borrow_mut(|scratch| {
            let want = limit.min(scratch.len());
            let mut read = tokio::io::ReadBuf::new(&mut scratch[..want]);
            match std::pin::Pin::new(&mut *client).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let got = read.filled();
                    if !got.is_empty() {
                        buf.reserve(SMALL_BUF.min(limit).max(got.len()));
                        buf.extend_from_slice(got);
                    }
                    Poll::Ready(Ok(got.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
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

async fn write_client<C: Client>(client: &mut C, bytes: &[u8]) -> Result<(), Failed> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match tokio::time::timeout(CLIENT_IO_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Failed::Midway),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer_until_bytes_arrive() {
        let (mut client, mut edge) = tokio::io::duplex(1024);
        let mut buf = Vec::new();
        // Nothing sent: the wait ends (as at the keep-alive timeout) with no buffer taken.
        let waited = tokio::time::timeout(
            Duration::from_millis(30),
            read_first(&mut edge, &mut buf, 8192),
        )
        .await;
        assert!(waited.is_err(), "nothing was sent, so nothing was read");
        assert_eq!(buf.capacity(), 0, "an idle connection holds no buffer");

        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let n = read_first(&mut edge, &mut buf, 8192).await.expect("read");
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(n, buf.len());
        assert!(buf.capacity() >= SMALL_BUF, "room for the rest of a head");

        // The limit holds: one byte past the largest head, no more.
        let mut small = Vec::new();
        client.write_all(b"0123456789").await.expect("write");
        assert_eq!(read_first(&mut edge, &mut small, 4).await.expect("read"), 4);
        assert_eq!(&small[..], b"0123");

        // The client left: 0 bytes, and still no buffer.
        drop(client);
        let mut rest = Vec::new();
        while read_first(&mut edge, &mut rest, 8192).await.expect("read") > 0 {}
        assert_eq!(&rest[..], b"456789");
        let mut after = Vec::new();
        assert_eq!(
            read_first(&mut edge, &mut after, 8192).await.expect("read"),
            0
        );
        assert_eq!(after.capacity(), 0);
    }
}
